"""The tdp recorder family against a real kernel with kprobes: the x86 lab (QEMU TCG, Debian 6.12, TDP MMU on).

The recorder itself cannot run inside the lab guest (numpy and pyarrow are not in its userland), so
the attachment is proven in two halves, both on one ``tracekit lab x86 --scenario tdp-eager`` run
(about 25 s with a warm cache):

1. the ``kprobe_events`` lines the family writes for the guest's kallsyms define exactly the events the
   guest kernel accepted and fired (the lab wrote them with the same ``kprobe_event_lines``, group ``tk``),
   with the same fetched fields as the kernel's ``format`` files;
2. the guest's raw ``trace_pipe_raw`` pages, cut into two batches, go through the family's numpy
   ``decode_tracefs`` and give the tables the lab wrote (the same decoder over the whole trace as one
   batch: calls open across the cut carry over, walk ids continue), and the in-kernel histogram of
   ``tdp_iter_next`` per level.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from tests import livecheck
from tracekit.capture import open_capture
from tracekit.funcprobes.funcprobe_families import TdpFamily
from tracekit.host import Host
from tracekit.recorder.ftrace_pages import decode_pages, parse_format


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "tdp.tkcap"
    livecheck.run_lab_or_skip("x86", "tdp-eager", out, timeout=300, keep_raw=True)
    return out, out.parent / f"{out.name}.guest"


@pytest.mark.live
@pytest.mark.slow
def test_kprobe_lines_are_the_ones_the_guest_kernel_fired(lab_run, tmp_path):
    _capture, guest = lab_run
    tracefs = tmp_path / "tracing"
    tracefs.mkdir()
    (tracefs / "kprobe_events").write_text("")
    (tracefs / "README").write_text("\t  <argname>[->field[->field|.field...]],\n")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "tdp_mmu").write_text("Y\n")  # the guest's kvm.tdp_mmu (meta.json kvm_params)
    family = TdpFamily()
    family.machine, family.kvm_parameters, family.group = "x86_64", tmp_path / "params", "tk"
    family.btf_paths = (tmp_path / "no-btf",)  # not this host's BTF: the guest's BTF names, as its kernel takes them
    # kallsyms.txt keeps only the KVM-named symbols: add the symbols the guest resolved (npf_interception, ...)
    resolved = json.loads((guest / "meta.json").read_text())["probes"]["resolution"]
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text((guest / "kallsyms.txt").read_text()
                        + "".join(f"ffffffff00000000 t {r['symbol']}\n" for r in resolved if r["symbol"]))
    statuses = family.check(Host(tracefs, kallsyms=kallsyms))
    names = family.tracefs_prepare(tracefs, statuses)
    fired = {p.name.split("__", 1)[1] for p in (guest / "formats").glob("tk__*")}
    assert {n.split(":", 1)[1] for n in names} == fired
    for line in (tracefs / "kprobe_events").read_text().splitlines():
        event = line.split()[0].split("/", 1)[1]
        fetched = [arg.split("=", 1)[0] for arg in line.split()[2:]]
        fmt = parse_format((guest / "formats" / f"tk__{event}").read_text(), "tk")
        assert [f.name for f in fmt.fields if not f.name.startswith(("common_", "__probe_"))] == fetched, line
        guest_fetch = {r["probe"]: r["fetch"] for r in resolved}
        if not event.endswith("_ret"):
            assert line.split()[2:] == guest_fetch[event], line  # the guest resolved the same fetch arguments
    family.tracefs_cleanup(tracefs)


def _events(guest) -> dict[str, np.ndarray]:
    formats = {}
    for path in (guest / "formats").glob("*__*"):
        fmt = parse_format(path.read_text(), path.name.split("__", 1)[0])
        formats[fmt.id] = fmt
    parts: dict[str, list[np.ndarray]] = {}
    for path in sorted((guest / "raw").glob("cpu*.bin")):
        for event_id, rows in decode_pages(path.read_bytes(), formats, cpu=int(path.stem[3:])).events.items():
            if formats[event_id].system == "tk":
                rows["tgid"] = 7
                parts.setdefault(f"tk:{formats[event_id].name}", []).append(rows)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


@pytest.mark.live
@pytest.mark.slow
def test_batch_decode_of_the_guest_pages_equals_the_labs_decoder(lab_run):
    capture, guest = lab_run
    events = _events(guest)
    cut = np.median(np.concatenate([e["ts_ns"] for e in events.values()]))
    family = TdpFamily()
    family.group = "tk"
    tables: dict[str, list[pa.Table]] = {}
    for keep in (lambda ts: ts < cut, lambda ts: ts >= cut):  # two batches: calls open across the cut carry over
        for name, table in family.decode_tracefs({k: v[keep(v["ts_ns"])] for k, v in events.items()}).items():
            tables.setdefault(name, []).append(table)
    for name, table in family.finish_tracefs(0).items():
        tables.setdefault(name, []).append(table)
    mine = {name: pa.concat_tables(parts) for name, parts in tables.items()}
    lab = open_capture(capture)
    assert family.notes["unpaired_returns"] == family.notes["missed_returns"] == 0

    def rows(table, *columns):
        return sorted(zip(*(table.column(c).to_pylist() for c in columns)))

    lab_split = lab.table("split").filter(pa.compute.equal(lab.table("split").column("probe"), "split_huge_page"))
    assert rows(mine["split"], "ts_ns", "addr", "level", "duration_ns", "ret") == rows(
        lab_split, "ts_ns", "addr", "level", "duration_ns", "ret")
    # 64 MiB of THP: 32 huge pages split at enable, each 2 MiB (the size follows from the level)
    assert rows(mine["split"], "level", "size") == rows(lab_split, "level", "size") == [(2, 2 << 20)] * 32
    for name, columns in (("fault", ("ts_ns", "probe", "addr", "duration_ns", "ret")),
                          ("func_call", ("ts_ns", "name", "duration_ns", "ret", "args")),
                          ("stage2_walk", ("ts_ns", "initiator", "addr", "size", "duration_ns"))):  # fmt: skip
        assert rows(mine[name], *columns) == rows(lab.table(name), *columns), name

    hist = (guest / "hist" / "iter_next.txt").read_text()
    in_kernel = {int(level): int(hits) for level, hits in re.findall(r"level:\s+(\d+) \} hitcount:\s+(\d+)", hist)}
    visits = mine["stage2_visit"].to_pandas()
    assert visits.groupby("level")["count"].sum().to_dict() == in_kernel
    lab_visits = lab.table("stage2_visit").to_pandas()
    per_walk = ["walk_id", "level", "kind"]  # a group cut by the batches is two rows: compare the sums
    assert (visits.groupby(per_walk, observed=True)["count"].sum().to_dict()
            == lab_visits.groupby(per_walk, observed=True)["count"].sum().to_dict())  # fmt: skip
    assert rows(mine["stage2_walk"], "walk_id", "ts_ns") == rows(lab.table("stage2_walk"), "walk_id", "ts_ns")
    assert Counter(mine["func_call"].column("name").to_pylist())["clear_dirty_masked"] == 256
