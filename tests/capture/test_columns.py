"""docs/capture-families-*.md and tracekit/capture/columns.py declare the same families, columns, types
and units, both ways."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from tracekit.capture import COMMON_FIELDS
from tracekit.capture.columns import (COMMON_UNITS, FAMILIES, FUNCPROBE_FAMILIES, SCHEMAS, TARGET_FAMILIES,
                                      TRACEPOINT_FAMILIES)

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = {"capture-families-tracepoints.md": TRACEPOINT_FAMILIES, "capture-families-funcprobes.md": FUNCPROBE_FAMILIES,
         "capture-families-target.md": TARGET_FAMILIES}
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def doc_type(type_: pa.DataType) -> str:
    """A type as the docs spell it."""
    if pa.types.is_list(type_):
        return f"list<{type_.value_type}>"
    return str(type_)


def documented(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """family -> column -> (type, unit) from the ``| Column | Type | Unit | Meaning |`` table under each
    heading that names a family in backquotes; a row may name several columns (``a``, ``b``) with one
    type and unit for all or one each."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    family, in_table = None, False
    for line in text.splitlines():
        if line.startswith("#"):
            match = re.match(r"#+ `(\w+)`", line)
            family, in_table = (match.group(1) if match else None), False
        elif family and line.startswith("| Column | Type |"):
            assert line.split("|")[3].strip() == "Unit", f"{family}: the table has no Unit column: {line}"
            in_table = True
            out.setdefault(family, {})
        elif in_table and line.startswith("| `"):
            cells = [c.strip() for c in _CELL_SPLIT.split(line)[1:-1]]
            names = re.findall(r"`(\w+)`", cells[0])
            types, units = [t.strip() for t in cells[1].split(",")], [u.strip() for u in cells[2].split(",")]
            types, units = types * len(names) if len(types) == 1 else types, units * len(names) if len(units) == 1 else units
            assert len(types) == len(names) == len(units), f"{family}: {line}"
            for name, type_, unit in zip(names, types, units):
                assert name not in out[family], f"{family}.{name} documented twice"
                out[family][name] = (type_, unit)
        elif in_table and not line.startswith("|"):
            in_table = False
    return out


def declared(families: dict) -> dict[str, dict[str, tuple[str, str]]]:
    out = {}
    for family, columns in families.items():
        common = {f.name: (doc_type(f.type), COMMON_UNITS[f.name]) for f in COMMON_FIELDS}
        out[family] = {**common, **{c.name: (doc_type(c.type), c.unit) for c in columns}}
    return out


@pytest.mark.parametrize("page", sorted(PAGES))
def test_docs_and_declarations_agree(page):
    """Every documented family and column is declared with that type and unit, and every declared one
    is documented (the common columns may be left to the page's introduction)."""
    docs = documented((DOCS / page).read_text())
    code = declared(PAGES[page])
    assert sorted(docs) == sorted(code)
    for family, columns in docs.items():
        for name, spec in columns.items():
            assert name in code[family], f"{page}: {family}.{name} is documented but not declared"
            assert spec == code[family][name], f"{page}: {family}.{name}: documented {spec}, declared {code[family][name]}"
        missing = set(code[family]) - set(columns) - set(COMMON_UNITS)
        assert not missing, f"{page}: {family} columns declared but not documented: {sorted(missing)}"


def test_a_drifted_page_is_caught():
    """The parser sees a changed type, a changed unit and a column the code lacks."""
    table = "### `walk`: x\n\n| Column | Type | Unit | Meaning |\n|---|---|---|---|\n"
    rows = "| `walk_id` | uint64 | | id \\| with a pipe |\n| `addr`, `pferr` | uint64, uint32 | bytes, | both |\n"
    assert documented(table + rows)["walk"] == {"walk_id": ("uint64", ""), "addr": ("uint64", "bytes"),
                                                "pferr": ("uint32", "")}
    code = declared({"walk": FAMILIES["walk"]})["walk"]
    assert documented(table + rows.replace("uint64, uint32", "uint32, uint32"))["walk"]["addr"] != code["addr"]
    assert documented(table + rows.replace("bytes,", "ns,"))["walk"]["addr"] != code["addr"]
    assert "extra" not in code and "extra" in documented(table + rows + "| `extra` | int8 | | x |\n")["walk"]


def test_schemas_start_with_the_common_fields():
    for family, schema in SCHEMAS.items():
        assert list(schema)[:len(COMMON_FIELDS)] == list(COMMON_FIELDS), family
