"""Summary of a capture for ``tracekit info``.

:func:`capture_summary` turns an opened :class:`~tracekit.capture.Capture` into the JSON-ready
dict documented in docs/cli-json/capture.md; :func:`format_summary` renders that dict as lines of at most
80 columns. Reads only segment footers and the manifest, never event data.
"""

from __future__ import annotations

from tracekit.capture.reader import Capture
from tracekit.render import table_text

__all__ = ["capture_summary", "format_summary"]


def capture_summary(cap: Capture) -> dict:
    """The ``tracekit info --json`` document of ``cap``."""
    m = cap.manifest
    families = {}
    for family in cap.families():
        families[family] = {
            "rows": cap.rows(family),
            "segments": len(cap.segments(family)),
            "columns": cap.schema(family).names,
        }
    by_probe: dict[str, int] = {}
    for entry in m.get("lost", []) or []:
        by_probe[entry.get("probe", "?")] = by_probe.get(entry.get("probe", "?"), 0) + int(entry.get("count", 0))
    return {
        "path": str(cap.path),
        "format_version": m.get("format_version"),
        "capture_id": cap.capture_id,
        "tracekit_version": m.get("tracekit_version"),
        "status": m.get("status"),
        "complete": cap.complete,
        "host": {k: m.get(k) for k in ("host", "kernel_release", "arch", "page_size")},
        "kvm_params": m.get("kvm_params", {}),
        "source": m.get("source"),
        "target": m.get("target"),
        "backend": m.get("backend"),
        "command_line": m.get("command_line"),
        "start": m.get("start"),
        "stop": m.get("stop"),
        "duration_s": m.get("duration_s"),
        "probes": m.get("probes"),
        "families": families,
        "lost": {"total": sum(by_probe.values()), "by_probe": by_probe, "entries": m.get("lost", []) or []},
    }


def _wrap(label: str, text: str, width: int = 80) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width - 14:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    lines.append(current)
    return [f"{label if i == 0 else '':<13} {line}" for i, line in enumerate(lines)]


def format_summary(s: dict) -> list[str]:
    """80-column text lines for the summary ``s``."""
    out = [f"{'capture':<13} {s['path']}"]
    out.append(f"{'format':<13} v{s['format_version']} (written by tracekit {s['tracekit_version']})")
    out.append(f"{'capture id':<13} {s['capture_id']}")
    status = s["status"]
    if status == "incomplete":
        status = "incomplete: the writer stopped without closing (killed?); finished segments are readable"
    out += _wrap("status", str(status))
    h = s["host"]
    out.append(f"{'host':<13} {h['host']}  {h['kernel_release']}  {h['arch']}  page {h['page_size']}")
    source = s.get("source") or {}
    if source:
        out += _wrap("source", f"{source.get('kind', '?')}: {source.get('description', '')}")
    target = s.get("target") or {}
    if target:
        threads = target.get("threads") or []
        vcpus = sum(1 for t in threads if t.get("vcpu") is not None)
        out += _wrap("target", f"pid {','.join(map(str, target.get('pids', [])))} ({target.get('comm', '?')}), "
                     f"{len(threads)} threads, {vcpus} vCPUs")
        named = sorted((t for t in threads if isinstance(t.get("vcpu"), int)), key=lambda t: (t["vcpu"], str(t.get("tid"))))
        if named:
            out += _wrap("vcpus", ", ".join(f"{t['vcpu']}: tid {t.get('tid')}"
                                            + (f" (by {t['vcpu_from']})" if t.get("vcpu_from") else "") for t in named))
    if s.get("backend"):
        out.append(f"{'backend':<13} {s['backend']}")
    duration = s.get("duration_s")
    out.append(f"{'time':<13} {s.get('start')} .. {s.get('stop') or '?'}"
               + (f" ({duration:.2f} s)" if isinstance(duration, (int, float)) else ""))
    probes = s.get("probes") or {}
    if probes:
        out += _wrap("probes", "attached: " + (", ".join(probes.get("attached", [])) or "none"))
        for failed in probes.get("failed", []) or []:
            out += _wrap("", f"not attached: {failed.get('probe')}: {failed.get('reason')}")
    out.append("")
    if s["families"]:
        rows = [[name, f"{fam['rows']:,}", str(fam["segments"])] for name, fam in s["families"].items()]
        out += table_text(["family", "rows", "segments"], rows, align=["left", "right", "right"]).splitlines()
    else:
        out.append("(no event families)")
    out.append("")
    lost = s["lost"]
    if lost["total"]:
        detail = ", ".join(f"{p}: {n:,}" for p, n in sorted(lost["by_probe"].items()))
        out += _wrap("lost events", f"{lost['total']:,} ({detail}) — analyses of these families are incomplete")
    else:
        out.append(f"{'lost events':<13} 0")
    return out
