"""Which Parquet pages carry a CRC (read from the Thrift page headers, which pyarrow does not expose), and
the rewrite that gave the bundled samples written before checksums theirs: ``python -m
tests.capture.pagecrc [CAPTURE ...]`` (default: every capture under samples/) rewrites each segment with a
page lacking one, keeping its rows, schema, key-value metadata, row groups, compression and dictionary
columns, and notes it in the manifest (``sample_rewritten``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
REWRITE_NOTE = ("2026-12-07: segments written before page checksums rewritten with them "
                "(pyarrow write_page_checksum); rows, schemas and segment metadata unchanged (#12)")

# Thrift compact protocol: field types, and PageHeader's fields (parquet.thrift).
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)
_COMPRESSED_SIZE, _CRC = 3, 4


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _skip(data: bytes, i: int, kind: int) -> int:
    if kind in (_BOOL_TRUE, _BOOL_FALSE):
        return i
    if kind == _BYTE:
        return i + 1
    if kind in (_I16, _I32, _I64):
        return _varint(data, i)[1]
    if kind == _DOUBLE:
        return i + 8
    if kind == _BINARY:
        size, i = _varint(data, i)
        return i + size
    if kind in (_LIST, _SET):
        size, element = data[i] >> 4, data[i] & 0x0F
        i += 1
        if size == 15:
            size, i = _varint(data, i)
        for _ in range(size):
            i = _skip(data, i, _BYTE if element in (_BOOL_TRUE, _BOOL_FALSE) else element)
        return i
    if kind == _MAP:
        size, i = _varint(data, i)
        if size:
            types = data[i]
            i += 1
            for _ in range(size):
                i = _skip(data, _skip(data, i, types >> 4), types & 0x0F)
        return i
    if kind == _STRUCT:
        return _struct(data, i)[1]
    raise ValueError(f"unknown Thrift type {kind} at byte {i}")


def _struct(data: bytes, i: int) -> tuple[dict[int, int], int]:
    """The integer fields of the Thrift struct at ``i`` (others skipped) and the offset past it."""
    fields: dict[int, int] = {}
    field = 0
    while True:
        header = data[i]
        i += 1
        if header == 0:
            return fields, i
        kind, delta = header & 0x0F, header >> 4
        if delta:
            field += delta
        else:
            raw, i = _varint(data, i)
            field = (raw >> 1) ^ -(raw & 1)
        if kind in (_I16, _I32, _I64):
            raw, i = _varint(data, i)
            fields[field] = (raw >> 1) ^ -(raw & 1)
        else:
            i = _skip(data, i, kind)


def pages(path: Path) -> list[tuple[str, int, int, bool]]:
    """Every page of every column chunk of the Parquet file ``path``, in order: (its column, the offset
    of its data, its compressed size, whether its header has a CRC)."""
    data = Path(path).read_bytes()
    metadata = pq.ParquetFile(path).metadata
    found = []
    for group in range(metadata.num_row_groups):
        for column in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(column)
            i = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            end = i + chunk.total_compressed_size
            while i < end:
                header, i = _struct(data, i)
                found.append((chunk.path_in_schema, i, header[_COMPRESSED_SIZE], _CRC in header))
                i += header[_COMPRESSED_SIZE]
    return found


def segments_without_crc(capture: Path) -> list[Path]:
    """The segments (part files) of ``capture`` with a page that has no CRC."""
    return [p for p in sorted(Path(capture).glob("*/part-*.parquet")) if not all(crc for *_, crc in pages(p))]


def rewrite_with_crc(segment: Path) -> None:
    """Write ``segment`` again with page checksums: the same rows, schema and key-value metadata, row
    groups, compression and dictionary columns; the file is replaced only if it reads back equal."""
    source = pq.ParquetFile(segment)
    metadata = source.metadata
    table = source.read()
    columns = [metadata.row_group(0).column(c) for c in range(metadata.num_columns)] if metadata.num_row_groups else []
    options = {"compression": {c.path_in_schema: c.compression.lower() for c in columns} or "zstd",
               "use_dictionary": [c.path_in_schema for c in columns if c.has_dictionary_page] or False,
               "write_page_checksum": True}
    tmp = segment.with_name(f".{segment.name}.tmp")
    with pq.ParquetWriter(tmp, table.schema, **options) as writer:
        start = 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            writer.write_table(table.slice(start, rows), row_group_size=rows)
            start += rows
    again = pq.ParquetFile(tmp, page_checksum_verification=True)
    if not (again.read().equals(table, check_metadata=True) and all(crc for *_, crc in pages(tmp))
            and [again.metadata.row_group(g).num_rows for g in range(again.metadata.num_row_groups)]
            == [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]):
        tmp.unlink()
        raise RuntimeError(f"{segment}: the rewrite does not read back equal")
    os.replace(tmp, segment)


def rewrite_capture(capture: Path) -> int:
    """Rewrite the segments of ``capture`` lacking page checksums and note it in its manifest; how many."""
    segments = segments_without_crc(capture)
    if segments:
        for segment in segments:
            rewrite_with_crc(segment)
        manifest_path = capture / "capture.json"
        text = manifest_path.read_text()
        manifest = json.loads(text)
        manifest["sample_rewritten"] = REWRITE_NOTE
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return len(segments)


def bundled_captures() -> list[Path]:
    return sorted({p.parent for p in SAMPLES.rglob("capture.json")})


if __name__ == "__main__":
    for path in [Path(a) for a in sys.argv[1:]] or bundled_captures():
        print(f"{path}: {rewrite_capture(path)} segment(s) rewritten")
