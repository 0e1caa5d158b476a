"""The query-friendly capture format: plain text columns that plain pyarrow.dataset reads across segments,
a capture id written, uint64 exact in every pandas path, and captures of the older format still read
beside new ones."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tracekit.analysis.common import load
from tracekit.capture import CaptureWriter, open_capture
from tracekit.capture.columns import SCHEMAS
from tracekit.dataset import connect

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
BIG = (1 << 64) - 2  # above 2^53 and 2^63: float64 and int64 both lose it


def _ioctl_rows(names: list[str], first_page: list[int | None]) -> pa.Table:
    n = len(names)
    columns = {f.name: pa.nulls(n, f.type) for f in SCHEMAS["ioctl"]}
    columns.update(ts_ns=pa.array(range(n), pa.int64()), cpu=pa.array([0] * n, pa.int32()),
                   pid=pa.array([7] * n, pa.int32()), tid=pa.array([8] * n, pa.int32()),
                   cmd_name=pa.array(names), first_page=pa.array(first_page, pa.uint64()))
    return pa.table(columns)


def _write(path: Path) -> Path:
    with CaptureWriter(path, manifest={"source": {"kind": "selftest", "description": "test"}}) as writer:
        writer.declare("ioctl", SCHEMAS["ioctl"])
        writer.append("ioctl", _ioctl_rows(["KVM_RUN", "KVM_GET_DIRTY_LOG"], [BIG, None]))
        writer.flush()
        writer.append("ioctl", _ioctl_rows(["KVM_CLEAR_DIRTY_LOG"], [1]))
    return path


def test_plain_pyarrow_dataset_reads_every_segment(tmp_path):
    cap = open_capture(_write(tmp_path / "new.tkcap"))
    assert len(cap.segments("ioctl")) == 2 and cap.schema("ioctl").field("cmd_name").type == pa.string()
    table = pads.dataset(tmp_path / "new.tkcap" / "ioctl").to_table()  # "Unifying differing dictionaries" before
    assert sorted(table.column("cmd_name").to_pylist()) == ["KVM_CLEAR_DIRTY_LOG", "KVM_GET_DIRTY_LOG", "KVM_RUN"]
    # Parquet still dictionary-encodes the text column on disk
    column = pq.ParquetFile(cap.segments("ioctl")[0]).metadata.row_group(0).column(SCHEMAS["ioctl"].names.index("cmd_name"))
    assert any("DICTIONARY" in str(encoding) for encoding in column.encodings)


def test_new_capture_has_an_id(tmp_path):
    first, second = open_capture(_write(tmp_path / "a.tkcap")), open_capture(_write(tmp_path / "b.tkcap"))
    assert first.manifest["capture_id"] == first.capture_id != second.capture_id
    assert len(first.capture_id) == 32 and int(first.capture_id, 16) >= 0


def test_uint64_exact_in_every_pandas_path(tmp_path):
    cap = open_capture(_write(tmp_path / "new.tkcap"))
    frame = cap.dataframe("ioctl")
    assert str(frame["first_page"].dtype) == "UInt64"
    assert frame["first_page"].iloc[0] == BIG and frame["first_page"].isna().iloc[1]
    assert frame["first_page"].isin([BIG]).tolist() == [True, False, False]
    loaded = load(cap, "ioctl", ["first_page"])
    assert loaded["first_page"].iloc[0] == BIG and loaded["first_page"].isna().iloc[1]
    con = connect([tmp_path / "new.tkcap"])
    assert con.execute("SELECT max(first_page) FROM ioctl").fetchone() == (BIG,)
    assert con.execute("SELECT first_page FROM ioctl WHERE cmd_name = 'KVM_RUN'").df()["first_page"].iloc[0] == BIG


def test_old_dictionary_captures_read_beside_new_ones(tmp_path):
    old = SAMPLES / "x86-dirty-log-4k.tkcap"
    assert pa.types.is_dictionary(open_capture(old).schema("ioctl").field("cmd_name").type)
    con = connect([old, _write(tmp_path / "new.tkcap")])
    counts = dict(con.execute("SELECT c.name, count(*) FROM ioctl JOIN captures c USING (capture) "
                              "GROUP BY ALL").fetchall())
    assert counts == {"x86-dirty-log-4k": open_capture(old).rows("ioctl"), "new": 3}
    assert con.execute("SELECT typeof(cmd_name) FROM ioctl LIMIT 1").fetchone() == ("VARCHAR",)
    assert str(open_capture(old).dataframe("ioctl")["cmd_name"].dtype) in ("str", "object", "string")
