"""The arithmetic and rendering of ``tracekit top``: two counter readings -> rows per VM and per vCPU.

:func:`make_view` turns two readings into a :class:`TopView` of the interval's rates, walk depth, mmu_lock
waits, dirty-log ioctl latency and KVM_RUN share; :func:`sort_vms`, :func:`render_text`, :func:`view_json`
(docs/cli-json/top.md) and :func:`summary_table` (printed when top ends) present it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracekit.errors import UsageError
from tracekit.render import table_text
from tracekit.top.counters import COUNTER_FIELDS, DEPTH_BUCKETS, IoctlCounters, Reading, ThreadCounters

__all__ = ["TopView", "make_view", "sort_vms", "render_text", "view_json", "summary_table", "log2_percentile",
           "SORT_KEYS"]

SORT_KEYS = {"walks": "walks_s", "wp": "wp_faults_s", "spte": "spte_s", "splits": "splits_s", "zaps": "zaps_s",
             "lock": "lock_wait_ns", "run": "run_share", "get": "get_count", "clear": "clear_count", "pid": "pid"}


def log2_percentile(hist: list[int], q: int) -> int | None:
    """Upper edge (ns) of the log2 slot holding the nearest-rank ``q``-th percentile (rank
    ``ceil(q * n / 100)``); None when the histogram is empty."""
    n = sum(hist)
    if n <= 0:
        return None
    rank = max(1, -(-q * n // 100))
    seen = 0
    for slot, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return 1 << (slot + 1)
    return 1 << len(hist)


@dataclass
class TopView:
    interval_s: float
    t_ns: int
    vms: list[dict] = field(default_factory=list)


def _delta(cur: ThreadCounters, prev: ThreadCounters | None) -> dict[str, int]:
    out = {name: getattr(cur, name) - (getattr(prev, name) if prev else 0) for name in COUNTER_FIELDS}
    out["depth_hist"] = [c - (p if prev else 0) for c, p in zip(cur.depth_hist, prev.depth_hist if prev else
                                                                 [0] * DEPTH_BUCKETS)]
    return out


def _rates(d: dict, seconds: float) -> dict:
    walks = d["walks"]
    hist = d["depth_hist"]
    deepest = max((i for i, c in enumerate(hist) if c > 0), default=None)
    return {"walks_s": walks / seconds, "depth": d["elements"] / walks if walks else None, "depth_max": deepest,
            "wp_faults_s": d["wp_faults"] / seconds, "spte_s": d["spte_installs"] / seconds,
            "splits_s": d["splits"] / seconds, "zaps_s": d["zaps"] / seconds,
            "read_waits": d["lock_read_waits"], "read_wait_ns": d["lock_read_ns"],
            "write_waits": d["lock_write_waits"], "write_wait_ns": d["lock_write_ns"],
            "lock_wait_ns": d["lock_read_ns"] + d["lock_write_ns"]}


def _ioctl(cur: IoctlCounters | None, prev: IoctlCounters | None) -> dict:
    if cur is None:
        return {"count": 0, "errors": 0, "p50_ns": None, "p99_ns": None}
    hist = [c - (p if prev else 0) for c, p in zip(cur.hist, prev.hist if prev else [0] * len(cur.hist))]
    return {"count": cur.count - (prev.count if prev else 0), "errors": cur.errors - (prev.errors if prev else 0),
            "p50_ns": log2_percentile(hist, 50), "p99_ns": log2_percentile(hist, 99)}


def make_view(prev: Reading | None, cur: Reading, vms: list[dict], vcpu_of: dict[int, int | None]) -> TopView:
    """The rows of the interval from ``prev`` (None: from the start of counting) to ``cur``.

    ``vms`` are the watched VMs (``{"pid", "comm", "name"}``), ``vcpu_of`` each thread's vCPU index (None for
    other threads). Per VM (and per vCPU thread): the interval's rates (``walks_s``, ``wp_faults_s``, ``spte_s``,
    ``splits_s``, ``zaps_s``), ``depth`` (paging elements per walk), ``depth_max`` (deepest depth bucket hit, 7
    meaning 7 or more), ``mmu_lock`` waits by mode (``read_waits``, ``read_wait_ns``, ``write_waits``,
    ``write_wait_ns``), dirty-log ioctls per VM (``get``/``clear``: ``count``, ``errors``, ``p50_ns``, ``p99_ns``
    from the interval's log2 histogram: the upper edge ``2^(k+1)`` ns of the slot holding the nearest rank, so
    within a factor of 2) and ``run_share`` (KVM_RUN time / interval per vCPU thread; per VM the mean over its
    vCPU threads, a KVM_RUN in flight counted up to the reading).
    """
    start = prev.t_ns if prev is not None else cur.t_ns
    seconds = max((cur.t_ns - start) / 1e9, 1e-9)
    view = TopView(interval_s=seconds, t_ns=cur.t_ns)
    for vm in vms:
        pid = vm["pid"]
        total = {name: 0 for name in COUNTER_FIELDS} | {"depth_hist": [0] * DEPTH_BUCKETS}
        vcpus, shares = [], []
        for tid in sorted(t for t, c in cur.threads.items() if c.tgid == pid):
            now, before = cur.threads[tid], prev.threads.get(tid) if prev else None
            d = _delta(now, before)
            for name in COUNTER_FIELDS:
                total[name] += d[name]
            total["depth_hist"] = [a + b for a, b in zip(total["depth_hist"], d["depth_hist"])]
            run = now.run_total(cur.t_ns) - (before.run_total(start) if before else 0)
            if vcpu_of.get(tid) is None and not now.runs and not now.run_start:
                continue  # not a vCPU thread: counted in the VM's row only
            share = min(run / (seconds * 1e9), 1.0)
            shares.append(share)
            vcpus.append({"tid": tid, "vcpu": vcpu_of.get(tid), **_rates(d, seconds), "run_share": share})
        ioctls = {kind: _ioctl(cur.ioctls.get((pid, k)), prev.ioctls.get((pid, k)) if prev else None)
                  for k, kind in ((1, "get"), (2, "clear"))}
        row = {"pid": pid, "comm": vm.get("comm") or "", "name": vm.get("name") or "", **_rates(total, seconds),
               "run_share": sum(shares) / len(shares) if shares else 0.0, "get": ioctls["get"],
               "clear": ioctls["clear"], "get_count": ioctls["get"]["count"], "clear_count": ioctls["clear"]["count"],
               "vcpus": sorted(vcpus, key=lambda v: (v["vcpu"] is None, v["vcpu"] or 0, v["tid"]))}
        view.vms.append(row)
    return view


def sort_vms(view: TopView, key: str) -> TopView:
    """``view`` with VMs (and each VM's vCPUs) ordered by ``key`` (largest first; pid ascending)."""
    if key not in SORT_KEYS:
        raise UsageError(f"unknown sort key {key!r} (use {', '.join(SORT_KEYS)})")
    column = SORT_KEYS[key]
    descending = key != "pid"

    def order(rows: list[dict], col: str) -> list[dict]:
        return sorted(rows, key=lambda r: (r.get(col) or 0), reverse=descending)

    for vm in view.vms:
        if key != "pid" and column in ("walks_s", "wp_faults_s", "spte_s", "splits_s", "zaps_s", "lock_wait_ns",
                                       "run_share"):
            vm["vcpus"] = order(vm["vcpus"], column)
    view.vms = order(view.vms, column)
    return view


def _si(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}" if v == int(v) or abs(v) >= 10 else f"{v:.1f}"


def _ns(v: int | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v}ns"


_VM_COLUMNS = ("VM", "walks/s", "depth", "wp/s", "spte/s", "split/s", "zap/s", "lock r", "lock w", "GET p50/p99",
               "CLEAR p50/p99", "run")
_VCPU_COLUMNS = ("vCPU", "tid", "walks/s", "depth", "wp/s", "spte/s", "split/s", "zap/s", "lock r", "lock w", "run")


def _lock(n: int, ns: int) -> str:
    return f"{n}/{_ns(ns)}" if n else "-"


def _vm_cells(vm: dict) -> list[str]:
    name = f"{vm['pid']} {vm['name'] or vm['comm']}"
    return [name, _si(vm["walks_s"]), "-" if vm["depth"] is None else f"{vm['depth']:.2f}", _si(vm["wp_faults_s"]),
            _si(vm["spte_s"]), _si(vm["splits_s"]), _si(vm["zaps_s"]), _lock(vm["read_waits"], vm["read_wait_ns"]),
            _lock(vm["write_waits"], vm["write_wait_ns"]),
            f"{vm['get']['count']}x {_ns(vm['get']['p50_ns'])}/{_ns(vm['get']['p99_ns'])}" if vm["get"]["count"] else "-",
            f"{vm['clear']['count']}x {_ns(vm['clear']['p50_ns'])}/{_ns(vm['clear']['p99_ns'])}"
            if vm["clear"]["count"] else "-", f"{vm['run_share']:.0%}"]


def _vcpu_cells(v: dict) -> list[str]:
    return ["-" if v["vcpu"] is None else str(v["vcpu"]), str(v["tid"]), _si(v["walks_s"]),
            "-" if v["depth"] is None else f"{v['depth']:.2f}", _si(v["wp_faults_s"]), _si(v["spte_s"]),
            _si(v["splits_s"]), _si(v["zaps_s"]), _lock(v["read_waits"], v["read_wait_ns"]),
            _lock(v["write_waits"], v["write_wait_ns"]), f"{v['run_share']:.0%}"]


def _grid(header: tuple[str, ...], rows: list[list[str]], width: int) -> list[str]:
    """The rows under their header, every column kept (:func:`tracekit.render.table_text` at ``width``)."""
    return table_text(header, rows, width=width, colour=False,
                      align=["left", *("right" for _ in header[1:])]).splitlines()


def render_text(view: TopView, *, backend: str, sort: str, width: int = 120, height: int | None = None) -> str:
    """The screen: a title line, one row per VM, then each VM's vCPU rows (cut to ``height`` lines)."""
    lines = [f"tracekit top - {len(view.vms)} VM(s), interval {view.interval_s:.2f} s, {backend}, sorted by {sort}"
             " (q quits)"[:width], ""]
    lines += _grid(_VM_COLUMNS, [_vm_cells(vm) for vm in view.vms], width)
    for vm in view.vms:
        if not vm["vcpus"]:
            continue
        lines += ["", f"VM {vm['pid']} {vm['name'] or vm['comm']}"[:width]]
        lines += _grid(_VCPU_COLUMNS, [_vcpu_cells(v) for v in vm["vcpus"]], width)
    if height is not None:
        lines = lines[:height]
    return "\n".join(lines)


def view_json(view: TopView, *, backend: str, sort: str) -> dict:
    """The ``tracekit top --once --json`` document (docs/cli-json/top.md)."""
    keep = ("get_count", "clear_count")
    return {"schema": "tracekit.top/1", "backend": backend, "sort": sort, "interval_s": round(view.interval_s, 6),
            "t_ns": view.t_ns, "vms": [{k: v for k, v in vm.items() if k not in keep} for vm in view.vms]}


def summary_table(first: Reading, last: Reading, vms: list[dict], vcpu_of: dict[int, int | None], *,
                  width: int = 120) -> str:
    """The whole run's totals per VM (the table printed when top or record ends, like bcc tools)."""
    view = make_view(first, last, vms, vcpu_of)
    seconds = view.interval_s
    header = ("VM", "walks", "depth", "wp faults", "spte", "splits", "zaps", "lock r", "lock w", "GET", "CLEAR", "run")
    rows = []
    for vm in view.vms:
        rows.append([f"{vm['pid']} {vm['name'] or vm['comm']}", f"{vm['walks_s'] * seconds:,.0f}",
                     "-" if vm["depth"] is None else f"{vm['depth']:.2f}", f"{vm['wp_faults_s'] * seconds:,.0f}",
                     f"{vm['spte_s'] * seconds:,.0f}", f"{vm['splits_s'] * seconds:,.0f}",
                     f"{vm['zaps_s'] * seconds:,.0f}", _lock(vm["read_waits"], vm["read_wait_ns"]),
                     _lock(vm["write_waits"], vm["write_wait_ns"]),
                     f"{vm['get']['count']} p99 {_ns(vm['get']['p99_ns'])}" if vm["get"]["count"] else "-",
                     f"{vm['clear']['count']} p99 {_ns(vm['clear']['p99_ns'])}" if vm["clear"]["count"] else "-",
                     f"{vm['run_share']:.0%}"])
    return "\n".join([f"Totals over {seconds:.1f} s:"] + _grid(header, rows, width))

