"""Lock contention with KVM semantics: per lock, KVM operation, vCPU and read/write mode.

Each wait is given the KVM operation it served (from its stack, else the ioctl around it, else the
thread), the VM's ``mmu_lock`` is identified, and waits are summarised per lock, operation, vCPU and
mode; docs/analysis.md ("Lock contention") gives the rules and the scores.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracekit.analysis.common import add_vcpu, latency_summary
from tracekit.analysis.ioctls import MEMSLOT_OPERATIONS, memslot_flag_changes

__all__ = [
    "LCB_F_SPIN", "LCB_F_READ", "LCB_F_WRITE", "LCB_F_RT", "LCB_F_PERCPU", "LCB_F_MUTEX",
    "STACK_OPERATIONS", "IOCTL_OPERATIONS", "MEMSLOT_UPDATE", "LOCK_PRIMITIVE", "KVM_MMU_FRAME",
    "lock_mode", "stack_facts", "known_mmu_locks", "attribute_operations", "lock_scores", "mmu_lock_of",
    "identify_mmu_lock", "lock_names", "contention_summary", "contention_timeline",
]

LCB_F_SPIN, LCB_F_READ, LCB_F_WRITE, LCB_F_RT, LCB_F_PERCPU, LCB_F_MUTEX = 1, 2, 4, 8, 16, 32

#: A memslot update of unknown kind: a wait inside a KVM_SET_USER_MEMORY_REGION(2) call takes the operation of
#: the call's change instead (:data:`.ioctls.MEMSLOT_OPERATIONS`).
MEMSLOT_UPDATE = MEMSLOT_OPERATIONS["same"]

#: (regular expression on a stack frame, operation), first match wins; innermost frames first.
STACK_OPERATIONS = (
    (re.compile(r"split_huge_page|split_huge_pages|stage2_split|tdp_mmu_split"), "split"),
    (re.compile(r"clear_dirty_log"), "dirty-log-clear"),
    (re.compile(r"get_dirty_log"), "dirty-log-get"),
    (re.compile(r"^kvm_mmu_notifier_|^kvm_unmap_gfn_range|^kvm_age_gfn|^kvm_test_age_gfn"), "mmu-notifier"),
    (re.compile(r"slot_enable_log_dirty|slot_apply_flags"), "dirty-log-enable"),
    (re.compile(r"^kvm_vm_ioctl_set_memory_region|^kvm_set_memslot|commit_memory_region"), MEMSLOT_UPDATE),
    (re.compile(r"^kvm_mmu_page_fault|^kvm_mmu_do_page_fault|^paging(32|64|32E)?_page_fault|^ept_page_fault"
                r"|^direct_page_fault|^kvm_tdp_page_fault|^kvm_tdp_mmu_map|^user_mem_abort|^kvm_handle_guest_abort"
                r"|^fast_page_fault|^kvm_handle_page_fault"), "fault"),
)

#: Frames of the locking primitives themselves, skipped to find the function that took the lock.
LOCK_PRIMITIVE = re.compile(r"^(_raw_|__raw_|raw_spin|do_raw_|queued_|__pv_queued|native_queued|__queued"
                            r"|lock_acquire|__mutex|mutex_lock|rwsem|down_|__down|rt_spin|rt_read|rt_write)")

#: A function of KVM's MMU (x86 shadow / TDP MMU, arm64 stage-2) taking the lock.
KVM_MMU_FRAME = re.compile(r"^(kvm_|__kvm_|paging(32|64|32E)?_|ept_|direct_page_fault|tdp_mmu_|__tdp_mmu|mmu_"
                           r"|slot_handle|stage2_|user_mem_abort|handle_access_fault|fast_page_fault)")

#: ioctl name -> operation for waits inside that ioctl's span.
IOCTL_OPERATIONS = {
    "KVM_GET_DIRTY_LOG": "dirty-log-get",
    "KVM_CLEAR_DIRTY_LOG": "dirty-log-clear",
    "KVM_SET_USER_MEMORY_REGION": MEMSLOT_UPDATE,
    "KVM_SET_USER_MEMORY_REGION2": MEMSLOT_UPDATE,
    "KVM_RESET_DIRTY_RINGS": "dirty-log-clear",
    "KVM_RUN": "vcpu-run",
}

_KVM_MMU_OPS = {"split", "dirty-log-clear", "dirty-log-get", "mmu-notifier", "fault", *MEMSLOT_OPERATIONS.values()}


_MODES = np.array(["write", "read", "mutex", "spin"], dtype=object)
_SOURCES = np.array(["stack", "ioctl", "thread", "none"], dtype=object)


def lock_mode(flags: np.ndarray) -> np.ndarray:
    """``read`` / ``write`` / ``mutex`` / ``spin`` from contention_begin flags."""
    flags = np.asarray(flags, dtype=np.int64)
    return _MODES[np.select([flags & LCB_F_WRITE != 0, flags & LCB_F_READ != 0, flags & LCB_F_MUTEX != 0],
                            [0, 1, 2], default=3)]


def _categorical(values: np.ndarray) -> pd.Categorical:
    """Text labels as a categorical with sorted categories (cheap to group; sorts like the text)."""
    codes, uniques = pd.factorize(values, sort=True)
    return pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object))


def _function(frame: str) -> str:
    return str(frame).split("+", 1)[0].strip()


def stack_facts(stack: pd.DataFrame | None) -> dict[int, tuple[str | None, bool]]:
    """``{stack_id: (operation or None, taken by a KVM MMU function)}`` from the stack frames."""
    out: dict[int, tuple[str | None, bool]] = {}
    if stack is None or stack.empty:
        return out
    for sid, frames in zip(stack["stack_id"], stack["frames"]):
        if pd.isna(sid):  # a damaged row: no stack to attribute
            continue
        functions = [_function(f) for f in (list(frames) if frames is not None else [])]
        op = next((name for f in functions for pattern, name in STACK_OPERATIONS if pattern.search(f)), None)
        taker = next((f for f in functions if not LOCK_PRIMITIVE.match(f)), "")
        out[int(sid)] = (op, bool(KVM_MMU_FRAME.match(taker)))
    return out


def _ioctl_operation(lock: pd.DataFrame, ioctl: pd.DataFrame | None) -> np.ndarray:
    """Operation of the ioctl of the same thread whose [ts, ts+duration) contains each wait."""
    result = np.full(len(lock), None, dtype=object)
    if ioctl is None or ioctl.empty or lock.empty:
        return result
    spans = ioctl[ioctl["cmd_name"].isin(IOCTL_OPERATIONS) & ioctl["duration_ns"].notna()]
    span_ops = spans["cmd_name"].astype(object).map(IOCTL_OPERATIONS)
    changes = memslot_flag_changes(spans)
    span_ops.loc[changes.index] = changes["change"].map(MEMSLOT_OPERATIONS)
    spans = spans.assign(operation=span_ops)
    lock_tids = lock["tid"].to_numpy(np.int64)
    lock_ts = lock["ts_ns"].to_numpy(np.int64)
    for tid, group in spans.groupby("tid"):
        group = group.sort_values("ts_ns")
        starts = group["ts_ns"].to_numpy(np.int64)
        ends = starts + group["duration_ns"].to_numpy(np.int64)
        ops = group["operation"].to_numpy(object)
        rows = np.flatnonzero(lock_tids == tid)
        ts = lock_ts[rows]
        pos = np.searchsorted(starts, ts, side="right") - 1
        ok = (pos >= 0)
        ok[ok] = ts[ok] < ends[pos[ok]]
        result[rows[ok]] = ops[pos[ok]]
    return result


def attribute_operations(lock: pd.DataFrame, manifest: dict, stack: pd.DataFrame | None = None,
                         ioctl: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each wait with its vCPU, mode, operation and op_source (see the module docstring)."""
    frame = add_vcpu(lock, manifest)
    frame["mode"] = _categorical(lock_mode(frame["flags"].to_numpy(np.int64)) if len(frame)
                                 else np.array([], object))
    facts = stack_facts(stack)
    sids = frame["stack_id"].fillna(-1).to_numpy(np.int64) if "stack_id" in frame else np.full(len(frame), -1)
    codes, uniques = pd.factorize(sids)
    unique_facts = [facts.get(int(s), (None, False)) if s >= 0 else (None, False) for s in uniques]
    op_stack = np.array([f[0] for f in unique_facts] + [None], dtype=object)[codes]
    frame["has_stack"] = np.array([int(s) in facts and s >= 0 for s in uniques] + [False], dtype=bool)[codes]
    frame["kvm_taker"] = np.array([f[1] for f in unique_facts] + [False], dtype=bool)[codes]
    op_ioctl = _ioctl_operation(frame, ioctl)
    is_vcpu = frame["vcpu"].to_numpy() >= 0
    from_stack = np.array([f[0] is not None for f in unique_facts] + [False], dtype=bool)[codes]
    from_ioctl = ~from_stack & pd.notna(op_ioctl)
    # Pick, in order of precedence, the stack's operation, the ioctl's, then the thread kind.
    operation = np.where(is_vcpu, "vcpu-run", "other").astype(object)
    operation[from_ioctl] = op_ioctl[from_ioctl]
    operation[from_stack] = op_stack[from_stack]
    # A memslot update seen only in the stack is the change of the memslot ioctl around it, where known.
    refine = from_stack & (op_stack == MEMSLOT_UPDATE) & pd.notna(op_ioctl)
    operation[refine] = op_ioctl[refine]
    source = _SOURCES[np.select([from_stack, from_ioctl, is_vcpu], [0, 1, 2], default=3)]
    frame["operation"] = _categorical(operation)
    frame["op_source"] = _categorical(source)
    return frame


def known_mmu_locks(manifest: dict) -> list[int]:
    """``kvm->mmu_lock`` addresses a capture's manifest records (``mmu_lock_addrs`` at the top or under
    ``lab``: the ``struct kvm`` address plus the field offset from BTF, found by the recorder or lab)."""
    out = []
    for source in (manifest, manifest.get("lab") or {}):
        for addr in source.get("mmu_lock_addrs") or []:
            if isinstance(addr, int):
                out.append(addr)
    return out


def lock_scores(waits: pd.DataFrame) -> pd.DataFrame:
    """Per ``lock_addr`` of attributed waits: ``waits``, ``score``, ``stack`` and ``span`` (the evidence
    :func:`identify_mmu_lock` weighs); the tables of several batches of one family add up (:func:`pd.concat`
    then a sum by address)."""
    rw = (waits["flags"].to_numpy(np.int64) & (LCB_F_READ | LCB_F_WRITE)) != 0
    kvm_stack = waits["kvm_taker"].to_numpy(bool)
    kvm_span = (~waits["has_stack"].to_numpy(bool)) & waits["operation"].isin(_KVM_MMU_OPS | {"vcpu-run"}).to_numpy()
    score = np.where(kvm_stack, 3, np.where(kvm_span & rw, 1, 0))
    scored = pd.DataFrame({"lock_addr": waits["lock_addr"], "waits": 1, "score": score, "stack": kvm_stack,
                           "span": kvm_span & rw})
    return scored.groupby("lock_addr").agg(waits=("waits", "sum"), score=("score", "sum"), stack=("stack", "sum"),
                                           span=("span", "sum"))


def mmu_lock_of(scores: pd.DataFrame, known: list[int] | tuple[int, ...] = ()) -> dict | None:
    """The ``kvm->mmu_lock`` that :func:`lock_scores` (summed over every wait) points to (see
    :func:`identify_mmu_lock`)."""
    for addr in known:
        hits = int(scores["waits"].get(addr, 0))
        if hits:
            return {"lock_addr": int(addr), "name": "mmu_lock",
                    "evidence": f"{hits} waits on the address the capture records for kvm->mmu_lock "
                                "(struct kvm + offsetof(mmu_lock))"}
    totals = scores[scores["score"] > 0].sort_values("score", ascending=False, kind="stable")
    if totals.empty:
        return None
    addr = int(totals.index[0])
    best = totals.iloc[0]
    evidence = (f"{int(best['stack'])} waits taken by KVM MMU functions (stacks), {int(best['span'])} "
                f"stackless rwlock waits inside dirty-log ioctls or by vCPU threads")
    if len(totals) > 1:
        evidence += f"; runner-up {int(totals.index[1]):#x} scored {int(totals.iloc[1]['score'])} vs {int(best['score'])}"
    return {"lock_addr": addr, "name": "mmu_lock", "evidence": evidence}


def identify_mmu_lock(waits: pd.DataFrame, known: list[int] | tuple[int, ...] = ()) -> dict | None:
    """The most likely ``kvm->mmu_lock`` address among the contended locks (see the module docstring);
    an address in ``known`` (:func:`known_mmu_locks`) that has waits wins outright."""
    if waits.empty:
        return None
    return mmu_lock_of(lock_scores(waits), known)


def lock_names(waits: pd.DataFrame, mmu: dict | None) -> np.ndarray:
    """Each wait's lock as the tables name it: ``mmu_lock`` for ``mmu``'s address, else the address in hex
    (``?`` when unknown)."""
    codes, uniques = pd.factorize(waits["lock_addr"])
    names = np.array([("mmu_lock" if mmu and int(a) == mmu["lock_addr"] else f"{int(a):#x}") for a in uniques]
                     + ["?"], dtype=object)
    return names[codes]


def contention_summary(waits: pd.DataFrame, mmu: dict | None = None) -> pd.DataFrame:
    """Wait statistics per (lock, lock_addr, operation, vcpu, mode); mmu_lock rows first."""
    frame = waits.assign(lock=_categorical(lock_names(waits, mmu))) if len(waits) \
        else waits.assign(lock=pd.Series(dtype=object))
    table = latency_summary(frame, ["lock", "lock_addr", "operation", "vcpu", "mode"], value="wait_ns")
    for column in ("lock", "operation", "mode"):  # plain text in the (small) table
        if isinstance(table[column].dtype, pd.CategoricalDtype):
            table[column] = np.asarray(table[column], dtype=object)
    if len(table):
        table = table.assign(_mmu=table["lock"] != "mmu_lock").sort_values(
            ["_mmu", "total_ns"], ascending=[True, False], kind="stable").drop(columns="_mmu")
    return table.reset_index(drop=True)


def contention_timeline(waits: pd.DataFrame, mmu: dict | None = None, bin_ns: int = 10_000_000) -> pd.DataFrame:
    """Waits and wait time per ``bin_ns`` bin and lock."""
    if waits.empty:
        return pd.DataFrame({"t_ns": pd.Series(dtype="int64"), "lock": pd.Series(dtype=object),
                             "waits": pd.Series(dtype="int64"), "wait_ns": pd.Series(dtype="int64")})
    frame = waits.assign(lock=lock_names(waits, mmu), t_ns=(waits["ts_ns"] // bin_ns) * bin_ns)
    out = frame.groupby(["t_ns", "lock"], sort=True).agg(waits=("wait_ns", "size"), wait_ns=("wait_ns", "sum"))
    return out.reset_index()
