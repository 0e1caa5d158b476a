"""Write the model-generated arm64 samples (no real arm64 capture exists yet).

Contract: ``python samples/make_model_samples.py [OUTDIR]`` (default: this directory) writes, for each
entry of :data:`VARIANTS`, a capture ``NAME.tkcap`` whose ``stage2_walk``, ``stage2_visit`` and
``split`` families are what the reference model (:mod:`tracekit.model.split`) predicts for eager
splitting of a memslot faulted in as 2 MiB blocks, one ``kvm_pgtable_stage2_split`` walk per chunk,
with the schemas of :mod:`tracekit.capture.columns`. The manifest says
``source.kind = "model-generated"``, carries the ``model_scenario`` the analyses replay, and names
the skip levels the generating walker used. Timestamps are synthetic (one walk per 10 us from 1 s)
and durations are -1 (not modelled). Existing outputs are replaced. Raises TracekitError subclasses
from the model or the capture writer.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow as pa

from tracekit.capture import CaptureWriter
from tracekit.capture.columns import FUNCPROBE_SCHEMAS as SCHEMAS
from tracekit.model.accounting import WalkStats
from tracekit.model.geometry import arm64_stage2
from tracekit.model.split import EagerSplitter, range_addr_end
from tracekit.model.stage2 import Stage2PageTable

SCENARIO = {"granule": 4096, "ipa_bits": 40, "chunk_size": 2 << 20,
            "memslots": [{"ipa": 1 << 30, "size": 32 << 20, "mapping_size": 2 << 20}]}

#: Sample name -> levels the generating split walker skips.
VARIANTS = {"arm64-eager-split-skip3-model": (3,)}  # no-skip: see the real lab-arm64-* captures
PID, TID = 4242, 4242
WALK_LEAF = 1


def per_chunk_stats(skip: tuple[int, ...]) -> list[tuple[int, int, WalkStats]]:
    """(addr, size, stats) of every chunk walk of kvm_mmu_split_huge_pages over the memslot."""
    pgt = Stage2PageTable(arm64_stage2(SCENARIO["granule"], SCENARIO["ipa_bits"]))
    slot = SCENARIO["memslots"][0]
    pgt.populate(slot["ipa"], slot["size"], slot["mapping_size"])
    splitter = EagerSplitter(pgt, SCENARIO["chunk_size"], skip_levels=frozenset(skip))
    out = []
    addr, end = slot["ipa"], slot["ipa"] + slot["size"]
    while addr < end:
        if splitter.nobjs < splitter.capacity:
            splitter.nobjs = splitter.capacity
        nxt = range_addr_end(addr, end, SCENARIO["chunk_size"])
        stats = WalkStats()
        splitter.stage2_split(addr, nxt - addr, stats)
        out.append((addr, nxt - addr, stats))
        addr = nxt
    return out


def _common(ts: list[int]) -> dict:
    n = len(ts)
    return {"ts_ns": ts, "cpu": [0] * n, "pid": [PID] * n, "tid": [TID] * n}


def write_sample(path: Path, skip: tuple[int, ...]) -> None:
    chunks = per_chunk_stats(skip)
    walks, visits, splits = [], [], []
    for walk_id, (addr, size, stats) in enumerate(chunks):
        ts = 10**9 + walk_id * 10_000
        walks.append((ts, walk_id, addr, size))
        splits.append((ts, addr, size))
        for level in range(-1, 4):
            leaf = stats.get("leaf", level)
            if leaf:
                kind = "leaf:page" if level == 3 else "leaf:block"
                visits.append((ts + 1, walk_id, level, kind, leaf))
    manifest = {
        "source": {"kind": "model-generated",
                   "description": "tracekit.model eager split of 32 MiB of 2 MiB blocks, 2 MiB chunks"
                                  + (f", split walker skipping level(s) {list(skip)}" if skip else "")},
        "arch": "aarch64", "kernel_release": "model", "page_size": 4096,
        "model_scenario": SCENARIO, "model_generated": {"skip_levels": list(skip), "generator": "samples/make_model_samples.py"},
        "target": {"pids": [PID], "comm": "model", "threads": [{"tid": TID, "comm": "model-vmm", "vcpu": None}]},
    }
    if path.exists():
        shutil.rmtree(path)
    with CaptureWriter(path, manifest=manifest) as writer:
        for family in ("stage2_walk", "stage2_visit", "split"):
            writer.declare(family, SCHEMAS[family])
        writer.append("stage2_walk", pa.table({
            **_common([w[0] for w in walks]), "walk_id": [w[1] for w in walks], "addr": [w[2] for w in walks],
            "size": [w[3] for w in walks], "flags": [WALK_LEAF] * len(walks), "start_level": [1] * len(walks),
            "initiator": ["stage2_split_walker"] * len(walks), "duration_ns": [-1] * len(walks),
            "ret": [0] * len(walks)}, schema=SCHEMAS["stage2_walk"]))
        writer.append("stage2_visit", pa.table({
            **_common([v[0] for v in visits]), "walk_id": [v[1] for v in visits],
            "visitor": ["split_walker"] * len(visits), "level": [v[2] for v in visits],
            "kind": [v[3] for v in visits], "count": [v[4] for v in visits]}, schema=SCHEMAS["stage2_visit"]))
        writer.append("split", pa.table({
            **_common([s[0] for s in splits]), "probe": ["stage2_split"] * len(splits), "addr": [s[1] for s in splits],
            "size": [s[2] for s in splits], "level": [None] * len(splits), "duration_ns": [-1] * len(splits),
            "ret": [0] * len(splits)}, schema=SCHEMAS["split"]))


def main(argv: list[str]) -> None:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    for name, skip in VARIANTS.items():
        write_sample(outdir / f"{name}.tkcap", skip)
        print(f"wrote {outdir / (name + '.tkcap')}")


if __name__ == "__main__":
    main(sys.argv)
