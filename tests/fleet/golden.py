"""The fleet summary of every sample, by kernel: what DuckDB gives is kept in
``samples_by_kernel.json`` (remade with ``python -m tests.fleet.golden``); the Spark test compares
against the same file."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
GOLDEN = Path(__file__).with_name("samples_by_kernel.json")


def comparable(summary) -> dict:
    """The engine-independent part of a summary (paths, and file:// URLs, made relative to the samples)."""
    def strip(rows):
        return [{k: (str(Path(v.removeprefix("file://")).relative_to(SAMPLES)) if k == "path" else v)
                 for k, v in r.items()} for r in rows]

    return {"by": summary.by, "groups": strip(summary.groups), "captures": strip(summary.captures)}


def load() -> dict:
    return json.loads(GOLDEN.read_text())


if __name__ == "__main__":
    from tracekit.fleet.summary import fleet_summary

    GOLDEN.write_text(json.dumps(comparable(fleet_summary([str(SAMPLES)], by="kernel")), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
