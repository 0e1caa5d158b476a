"""``tracekit doctor``: the capability report (:mod:`tracekit.capabilities`) and what each probe family can record."""

from __future__ import annotations

import json
import textwrap

import typer

from tracekit.capabilities import probe_host
from tracekit.host import Host, tracefs_root
from tracekit.recorder.probe_family import RecordOptions
from tracekit.recorder.registry import family_names
from tracekit.recorder.session import plan_families

__all__ = ["register", "doctor", "family_availability", "format_report"]


def family_availability() -> dict[str, dict]:
    """Every probe family the recorder knows, as ``record`` would plan it on this host: whether it can
    record, why not, and the probes that can attach (the recorder's own checks, not a second copy)."""
    names = tuple(family_names())
    chosen, failed, _ = plan_families(names, Host(tracefs_root()), RecordOptions())
    families: dict[str, dict] = {}
    for family, statuses in chosen:
        attached = [st.probe for st in statuses if st.available]
        absent = [st.probe for st in statuses if not st.available]
        reason = f"{len(attached)} probes" + (f"; absent here: {', '.join(absent)}" if absent else "")
        families[family.name] = {"available": True, "reason": reason, "probes": attached}
        if hasattr(family, "resolutions"):  # function probes: how each attaches on this kernel, or why not
            families[family.name]["resolution"] = [r.as_dict() for r in family.resolutions()]
    for entry in failed:
        if entry["probe"].startswith("family:"):
            families[entry["family"]] = {"available": False, "reason": entry["reason"], "probes": []}
    return {name: families[name] for name in names if name in families}


def format_report(data: dict) -> list[str]:
    """80-column lines of a report's JSON form."""
    indent = " " * 22

    def row(ok: bool, name: str, text: str) -> list[str]:
        first = f"  {'ok ' if ok else 'NO '} {name:<15} "
        return textwrap.wrap(text, 80, initial_indent=first, subsequent_indent=indent) or [first]

    lines = ["checks:"]
    for c in data["checks"]:
        lines += row(c["ok"], c["name"], c["detail"])
        if not c["ok"] and c["fix"]:
            lines += textwrap.wrap("fix: " + c["fix"], 80, initial_indent=indent, subsequent_indent=indent + "     ")
    lines.append("probe families:")
    for name, fam in data["families"].items():
        lines += row(fam["available"], name, fam["reason"])
        for res in fam.get("resolution", []):  # function probes: attached with BTF args / by register / ... / absent
            text = f"{res['function']}: {res['attach']}" + (f" ({' '.join(res['fetch'])})" if res["fetch"] else "")
            lines += textwrap.wrap(text if res["symbol"] else res["reason"], 80, initial_indent=indent,
                                   subsequent_indent=indent + "  ")
    return lines


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (docs/cli-json/doctor.md)."),
) -> None:
    """Report what this host lets tracekit trace, and the exact fix for each missing piece.

    Checks privileges, tracefs, BTF, kallsyms, /dev/kvm, bcc (and where it comes from), kernel headers
    (matching or the documented fallback), kprobes and fentry, then says which probe families can attach.
    The exit code is 0 whatever the findings: the report is the output.

    Examples:

      sudo tracekit doctor

      sudo tracekit doctor --json | jq '.families.walk'
    """
    data = {**probe_host().to_json(), "families": family_availability()}
    if as_json:
        typer.echo(json.dumps(data, indent=1))
    else:
        typer.echo("\n".join(format_report(data)))


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
