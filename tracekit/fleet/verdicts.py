"""The analysis verdicts a capture keeps for the fleet summary: ``verdicts.json`` beside its manifest.

:func:`store_verdicts` runs ``tracekit analyze``'s analyses once (:func:`analyze_capture`, whole capture)
and writes the verdicts (:data:`VERDICT_COLUMNS`); :func:`stored_verdicts` reads them back, or None when
the capture has none or they were taken of other rows (capture id or the analysed families' row counts
differ). A file
that is not a verdicts record is one-line CaptureFormatError naming it. Fields: docs/capture-format.md.
"""

from __future__ import annotations

import json
from typing import Any

from tracekit import __version__
from tracekit.analysis.analyze import ANALYSED_FAMILIES
from tracekit.capture.format import shown_path
from tracekit.capture.manifest import COUNT, TEXT, Int, Map, Obj, Str, manifest_violations, nullable
from tracekit.capture.reader import Capture
from tracekit.capture.remote import is_url, write_url_file
from tracekit.capture.writer import CaptureWriteError, json_bytes, write_json_atomic
from tracekit.errors import CaptureFormatError

__all__ = ["VERDICTS_NAME", "VERDICTS_SCHEMA", "VERDICT_COLUMNS", "VERDICT_FAMILIES", "verdict_values", "store_verdicts",
           "stored_verdicts"]

#: The file, in the capture directory.
VERDICTS_NAME = "verdicts.json"
VERDICTS_SCHEMA = "tracekit.verdicts/1"
#: Largest verdicts file read (one is a few hundred bytes).
MAX_VERDICTS_BYTES = 1 << 16

#: The families the verdicts come from (those ``analyze`` reads): stored verdicts hold while their row
#: counts are the capture's, and the fleet summary reads these families' footers.
VERDICT_FAMILIES = frozenset((*ANALYSED_FAMILIES, "stack"))

#: The verdicts kept, as the fleet summary shows them per capture: ``crosscheck`` (match, mismatch, cut
#: short, no walks, no model), ``skip_levels`` (yes, no, not enough data), ``mmu_lock`` (found, not found),
#: and the walks per cause; None where ``analyze`` gives no such verdict (the families are absent).
VERDICT_COLUMNS = ("crosscheck", "skip_levels", "mmu_lock", "walks_fault", "walks_emulation", "walks_unknown")

class _Word(Str):
    """One of the given strings."""

    def __init__(self, *choices: str):
        self.choices = choices
        self.expected = "one of " + ", ".join(repr(c) for c in choices)

    def accepts(self, value: Any) -> bool:
        return value in self.choices


_RECORD = Obj({"schema": Str(), "capture_id": TEXT, "tracekit_version": TEXT, "family_rows": Map(COUNT),
               "verdicts": Obj({"crosscheck": nullable(_Word("match", "mismatch", "cut short", "no walks",
                                                                           "no model")),
                                "skip_levels": nullable(_Word("yes", "no", "not enough data")),
                                "mmu_lock": nullable(_Word("found", "not found")),
                                **{name: nullable(Int(0)) for name in VERDICT_COLUMNS[3:]}},
                               required=VERDICT_COLUMNS)},
              required=("schema", "capture_id", "family_rows", "verdicts"))


def verdict_values(verdicts: dict[str, dict]) -> dict[str, Any]:
    """:data:`VERDICT_COLUMNS` from an :class:`~tracekit.analysis.analyze.Analysis`'s ``verdicts``."""
    causes = verdicts.get("walk_causes")
    mmu_lock = verdicts.get("mmu_lock")
    return {"crosscheck": (verdicts.get("crosscheck") or {}).get("verdict"),
            "skip_levels": (verdicts.get("skip_levels") or {}).get("verdict"),
            "mmu_lock": None if mmu_lock is None else "found" if mmu_lock.get("lock_addr") is not None else "not found",
            **{f"walks_{cause}": None if causes is None else int(causes[cause])
               for cause in ("fault", "emulation", "unknown")}}


def _analysed_rows(rows: dict[str, int | None]) -> dict[str, int | None]:
    """The row counts of the families the verdicts come from (:data:`VERDICT_FAMILIES`)."""
    return {family: count for family, count in rows.items() if family in VERDICT_FAMILIES}


def _present_rows(cap: Capture) -> dict[str, int | None]:
    """``cap``'s row count of each family: its footers', or where they were not read (the fleet summary on
    DuckDB opens captures so; only families the manifest records) its manifest's, which the writer
    records as it closes each segment."""
    recorded = cap.manifest.get("families") or {}
    return {family: rows if rows is not None else (recorded.get(family) or {}).get("rows")
            for family, rows in cap.family_rows().items()}


def store_verdicts(cap: Capture) -> dict[str, Any]:
    """Analyse ``cap`` and write its verdicts file (replacing one); returns the verdicts. CaptureWriteError
    when the directory cannot be written."""
    from tracekit.analysis.analyze import analyze_capture  # late: the analyses load numpy and pandas

    analysed = set(cap.families()) & set(ANALYSED_FAMILIES)  # none: analyze has nothing to say of it
    values = verdict_values(analyze_capture(cap).verdicts if analysed else {})
    record = {"schema": VERDICTS_SCHEMA, "capture_id": cap.capture_id, "tracekit_version": __version__,
              "family_rows": cap.family_rows(), "verdicts": values}
    path = cap.path / VERDICTS_NAME
    if is_url(path):  # a capture at a URL: through its file system
        write_url_file(path, json_bytes(record))
        return values
    if path.is_symlink():
        raise CaptureWriteError(f"{shown_path(path)}: a symbolic link; refusing to write through it")
    write_json_atomic(path, record)
    return values


def stored_verdicts(cap: Capture) -> dict[str, Any] | None:
    """``cap``'s stored verdicts (:data:`VERDICT_COLUMNS`), None when it has none or they are stale (of
    another capture id, or of other rows than it has now: :func:`_present_rows`)."""
    path = cap.path / VERDICTS_NAME
    opened = cap.open_file(VERDICTS_NAME)  # through the capture's file system where it is at a URL
    if opened is None:
        return None
    where = shown_path(path)
    with opened as f:
        try:
            data = f.read(MAX_VERDICTS_BYTES + 1)
        except OSError as error:
            raise CaptureFormatError(f"{where}: unreadable ({error.strerror or error})") from None
    if len(data) > MAX_VERDICTS_BYTES:
        raise CaptureFormatError(f"{where}: larger than {MAX_VERDICTS_BYTES >> 10} KiB, not a verdicts record")
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CaptureFormatError(f"{where}: not a verdicts record (not JSON text)") from None
    found = manifest_violations(record, _RECORD)
    if found:
        raise CaptureFormatError(f"{where}: invalid verdicts field {found[0]}")
    if record["schema"] != VERDICTS_SCHEMA:
        raise CaptureFormatError(f"{where}: verdicts schema {record['schema']!r}, this tracekit reads "
                                 f"{VERDICTS_SCHEMA!r}; store them again with tracekit fleet verdicts")
    if record["capture_id"] != cap.capture_id or _analysed_rows(record["family_rows"]) != _analysed_rows(_present_rows(cap)):
        return None  # taken of other rows (a capture copied over, a recording that went on): not this one's
    return {name: record["verdicts"][name] for name in VERDICT_COLUMNS}
