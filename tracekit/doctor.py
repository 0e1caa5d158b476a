"""``tracekit doctor``: print the capability report (see tracekit.capabilities)."""

from __future__ import annotations

import json
import textwrap

import typer

from tracekit.capabilities import probe_host

__all__ = ["register", "doctor", "format_report"]


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
    data = probe_host().to_json()
    if as_json:
        typer.echo(json.dumps(data, indent=1))
    else:
        typer.echo("\n".join(format_report(data)))


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
