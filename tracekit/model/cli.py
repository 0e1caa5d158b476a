"""``tracekit model ...``: the reference page-table model on the command line.

:func:`register` adds the ``model`` sub-typer with ``geometry``, ``split``, ``walk`` and
``coalesce``. Every command prints a human table, or with ``--json`` one JSON object documented in
docs/cli-json/model.md. Impossible requests raise :class:`tracekit.errors.ModelError` (one line,
exit code 1 at the CLI edge).
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.analytic import SplitCase, simulate_split, split_accounting
from tracekit.model.coalesce import coalesce as run_coalesce
from tracekit.model.geometry import LAST_LEVEL, arm64_stage2, format_size, parse_size, x86_geometry
from tracekit.model.split import EagerSplitter, split_nr_page_tables
from tracekit.model.stage2 import Stage2PageTable
from tracekit.model.x86 import X86PageTables
from tracekit.render import table_text

__all__ = ["register", "BACKINGS", "backing_size"]

SKIP_RULE = (
    "inferred: SKIP_LEVEL_n keeps the walker from descending into tables whose entries are at "
    "level n (the series is not merged; see docs/model.md)"
)

#: --backing name -> mapping size by granule (arm64) / for x86 (granule 4K).
BACKINGS = {
    "4k": {4096: 4096},
    "16k": {16384: 16384},
    "64k": {65536: 65536},
    "page": {4096: 4096, 16384: 16384, 65536: 65536},
    "thp": {4096: 2 << 20, 16384: 32 << 20, 65536: 512 << 20},
    "hugetlb-2m": {4096: 2 << 20},
    "hugetlb-1g": {4096: 1 << 30},
    "hugetlb-32m": {16384: 32 << 20},
    "hugetlb-512m": {65536: 512 << 20},
}


def backing_size(backing: str, granule: int) -> int:
    """Mapping size of ``backing`` on ``granule``; ModelError for a size the granule lacks."""
    sizes = BACKINGS.get(backing.lower())
    if sizes is None:
        raise ModelError(f"unknown backing {backing!r} (one of {', '.join(BACKINGS)})")
    if granule not in sizes:
        raise ModelError(f"backing {backing} does not exist with the {format_size(granule)} granule")
    return sizes[granule]


def _emit(data: dict, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False) if as_json else text)


def _percent(before: int, after: int) -> Optional[float]:
    return None if before == 0 else round(100.0 * (after - before) / before, 2)


def geometry(
    arch: str = typer.Option("arm64", "--arch", help="arm64 (stage-2) or x86 (guest paging / TDP)."),
    granule: str = typer.Option("4K", "--granule", help="arm64 granule: 4K, 16K or 64K."),
    ipa_bits: int = typer.Option(40, "--ipa-bits", help="arm64 IPA size in bits, 32 to 52."),
    levels: int = typer.Option(4, "--levels", help="x86 paging levels: 4 or 5 (LA57)."),
    hyp_stage1: bool = typer.Option(
        False, "--hyp-stage1", help="arm64: the non-concatenated stage-1/hyp layout (shows LPA2's level -1)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/cli-json/model.md)."),
) -> None:
    """Levels, start level, concatenated root pages and entry sizes, as KVM derives them.

    Examples:

      tracekit model geometry --arch arm64 --granule 4K --ipa-bits 40

      tracekit model geometry --arch arm64 --granule 16K --ipa-bits 48 --json

      tracekit model geometry --arch x86 --levels 5
    """
    if arch == "arm64":
        g = arm64_stage2(parse_size(granule), ipa_bits, hyp_stage1=hyp_stage1)
        data = g.as_dict()
        head = (
            f"arm64 {'stage-1/hyp' if hyp_stage1 else 'stage-2'}, {format_size(g.granule)} granule, "
            f"{g.ipa_bits}-bit IPA: {g.levels} levels from level {g.start_level}, "
            f"{g.pgd_pages} concatenated root page(s), {g.entries_per_table} entries per table"
        )
    elif arch == "x86":
        g = x86_geometry(levels)
        data = g.as_dict()
        head = f"x86-64 {levels}-level paging: {g.va_bits}-bit addresses, KVM levels {levels}..1 (1 = 4K leaf)"
    else:
        raise ModelError(f"unknown architecture {arch!r} (arm64 or x86)")
    rows = [[str(row["level"]), str(row["depth"]), str(row["shift"]), format_size(row["entry_size"]), row["leaf"] or "-"]
            for row in data["per_level"]]
    _emit(data, as_json, table_text(["level", "depth", "shift", "entry maps", "leaf"], rows, title=head,
                                    align=["right", "right", "right", "right", "left"]))


def split(
    arch: str = typer.Option("arm64", "--arch", help="arm64 (kvm_mmu_split_huge_pages) or x86 (TDP MMU)."),
    memslot: str = typer.Option(..., "--memslot", help="Memslot size, e.g. 64G or 1.5T."),
    backing: str = typer.Option(
        "thp", "--backing", help="How the slot is mapped: 4k|page|thp|hugetlb-2m|hugetlb-1g|hugetlb-32m|hugetlb-512m."
    ),
    granule: str = typer.Option("4K", "--granule", help="arm64 granule: 4K, 16K or 64K."),
    ipa_bits: int = typer.Option(40, "--ipa-bits", help="arm64 IPA size in bits (the slot must fit)."),
    levels: int = typer.Option(4, "--levels", help="x86 TDP root level: 4 or 5."),
    base: str = typer.Option("1G", "--base", help="Guest-physical base of the memslot (aligned to the backing)."),
    chunk: Optional[str] = typer.Option(
        None, "--chunk", help="arm64 eager-split chunk (KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE); default the PMD block size."
    ),
    cache: Optional[int] = typer.Option(
        None, "--cache", help="arm64 split memory-cache capacity in pages; default kvm_mmu_split_nr_page_tables(chunk)."
    ),
    mode: str = typer.Option(
        "enable", "--mode", help="enable: split at dirty-log enable; clear: at the first CLEAR with initially-set."
    ),
    skip_levels: bool = typer.Option(
        False, "--skip-levels", help="Also print the SKIP_LEVEL columns and the predicted reduction (inferred rule)."
    ),
    skip_level: List[int] = typer.Option(
        [], "--skip-level", help="arm64 level a SKIP_LEVEL flag skips (repeatable; default the last level, 3)."
    ),
    explicit: bool = typer.Option(
        False, "--explicit", help="Also run the entry-by-entry simulation and check it agrees (small slots only)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/cli-json/model.md)."),
) -> None:
    """Eager-split accounting of a memslot: entries and callbacks per level, walks, and the
    reduction the SKIP_LEVEL walk flags would bring (analytic, exact; any slot size).

    Examples:

      tracekit model split --arch arm64 --memslot 64G --backing thp --skip-levels

      tracekit model split --arch arm64 --memslot 256M --backing thp --chunk 2M --json

      tracekit model split --arch arm64 --memslot 1.5T --ipa-bits 44 --backing 4k --mode clear

      tracekit model split --arch x86 --memslot 1G --backing hugetlb-1g --mode clear
    """
    size = parse_size(memslot)
    base_addr = parse_size(base)
    if arch == "arm64":
        g = arm64_stage2(parse_size(granule), ipa_bits)
        mapping = backing_size(backing, g.granule)
        chunk_size = g.level_size(2) if chunk is None else parse_size(chunk)
        skip = frozenset(skip_level or [LAST_LEVEL])
        bad = [lvl for lvl in skip if not g.start_level < lvl <= LAST_LEVEL]
        if bad:
            raise ModelError(f"SKIP_LEVEL levels must be in {g.start_level + 1}..3 (the start level is never skipped)")
        walk_levels = list(range(g.start_level, LAST_LEVEL + 1))
        base_case = SplitCase(g, base_addr, size, mapping, mode, chunk_size, cache)
        skip_case = SplitCase(g, base_addr, size, mapping, mode, chunk_size, cache, skip)
        setup = {
            "granule": g.granule,
            "ipa_bits": g.ipa_bits,
            "start_level": g.start_level,
            "chunk": chunk_size,
            "cache_capacity": split_nr_page_tables(g, chunk_size) if cache is None else cache,
            "skip_level_flags": sorted(skip),
        }
    elif arch == "x86":
        g = x86_geometry(levels)
        mapping = backing_size(backing, 4096)
        walk_levels = list(range(levels, 0, -1))
        base_case = skip_case = SplitCase(g, base_addr, size, mapping, mode)
        setup = {"levels": levels, "min_level": 2}
    else:
        raise ModelError(f"unknown architecture {arch!r} (arm64 or x86)")
    without = split_accounting(base_case)
    with_skip = split_accounting(skip_case)
    if explicit:
        if size // base_case.page > 1 << 22:
            raise ModelError("--explicit simulates entry by entry: use a memslot of at most 4 Mi pages")
        if simulate_split(base_case) != without or simulate_split(skip_case) != with_skip:
            raise ModelError("internal: the analytic and explicit models disagree; please report this case")
    sections = {"without_skip": without.as_dict(walk_levels), "with_skip": with_skip.as_dict(walk_levels)}
    for section in sections.values():
        for row in section["levels"]:
            row["depth"] = walk_levels.index(row["level"])
    data = {
        "arch": arch,
        "memslot": {"base": base_addr, "size": size},
        "backing": backing,
        "mapping_size": mapping,
        "mode": mode,
        **setup,
        **sections,
        "reduction_percent": {
            "entries": _percent(without.total("entries"), with_skip.total("entries")),
            "callbacks": _percent(without.total("callbacks"), with_skip.total("callbacks")),
        },
        "skip_rule": SKIP_RULE if arch == "arm64" else "x86 TDP iterates with min_level = target + 1: level 1 is never visited",
        "checked_explicitly": explicit,
    }
    _emit(data, as_json, _split_text(data, walk_levels, without, with_skip, skip_levels))


def _split_text(data: dict, walk_levels: list[int], without: WalkStats, with_skip: WalkStats, show_skip: bool) -> str:
    lines = [
        f"{data['arch']} eager split, {data['mode']}: memslot {format_size(data['memslot']['size'])} at "
        f"{data['memslot']['base']:#x}, {data['backing']} ({format_size(data['mapping_size'])} mappings)"
        + (f", chunk {format_size(data['chunk'])}, cache {data['cache_capacity']}" if "chunk" in data else ""),
        f"walks {without.walks}  splits {without.total('splits')}  tables allocated {without.tables}"
        + (f"  iterator restarts {without.restarts}" if without.restarts else "")
        + ("  STOPPED on -ENOMEM" if without.stopped else ""),
    ]
    header = ["level", "entries", "callbacks", "early", "fresh", *(("skip: entries", "skip: callbacks") if show_skip else ())]
    rows = [[str(level), str(without.get("entries", level)), str(without.callbacks(level)), str(without.get("early", level)),
             str(without.get("fresh", level)),
             *((str(with_skip.get("entries", level)), str(with_skip.callbacks(level))) if show_skip else ())]
            for level in walk_levels]
    lines.append(table_text(header, rows))
    if show_skip:
        red = data["reduction_percent"]
        lines.append(
            f"with SKIP_LEVEL{data.get('skip_level_flags', [1])}: entries {red['entries']}%, callbacks "
            f"{red['callbacks']}% (skipped levels {sorted(with_skip.skipped_levels)}; "
            + ("rule inferred, see docs/model.md)" if data["arch"] == "arm64" else "x86 never visits level 1)")
        )
    return "\n".join(lines)


def walk(
    arch: str = typer.Option("x86", "--arch", help="x86 (guest page tables)."),
    levels: int = typer.Option(4, "--levels", help="Paging levels: 4 or 5 (LA57)."),
    gva: str = typer.Option(..., "--gva", help="Guest-virtual address to walk, e.g. 0x40201000."),
    mapping: List[str] = typer.Option(
        [], "--map", help="GVA:GPA:SIZE[:PAGE] to map (repeatable); default 0:0:1G:2M."
    ),
    table_base: str = typer.Option("0x100000", "--table-base", help="Guest-physical address of the first table."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/cli-json/model.md)."),
) -> None:
    """The guest page-table walk of one address in a given layout (what kvm_mmu_paging_element reports).

    Examples:

      tracekit model walk --arch x86 --levels 4 --gva 0x40201234 --map 0x40000000:0x200000:64M:2M

      tracekit model walk --arch x86 --levels 5 --gva 0x1000 --map 0:0x800000:16K:4K --json
    """
    if arch != "x86":
        raise ModelError("model walk covers x86 guest page tables (--arch x86)")
    pt = X86PageTables(levels)
    for spec in mapping or ["0:0:1G:2M"]:
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ModelError(f"--map {spec!r}: expected GVA:GPA:SIZE[:PAGE]")
        v, p, s = (parse_size(x) for x in parts[:3])
        page = parse_size(parts[3]) if len(parts) == 4 else 4096
        pt.map(v, p, s, page)
    address = int(gva, 0)
    root, _ = pt.serialize(int(table_base, 0))
    w = pt.walk(address)
    data = {
        "arch": "x86",
        "levels": levels,
        "gva": address,
        "cr3": root,
        "tables": pt.table_count(),
        "depth": w.depth,
        "leaf_level": w.leaf_level,
        "gpa": w.gpa,
        "fault": w.fault,
        "steps": [
            {"level": s.level, "depth": levels - s.level, "table_gpa": s.table_gpa, "index": s.index, "pte": s.pte}
            for s in w.levels
        ],
    }
    lines = [f"walk of {address:#x} ({levels}-level, CR3 {root:#x}):"]
    lines += [f"  level {s.level}  table {s.table_gpa:#x}[{s.index:>3}]  pte {s.pte:#018x}" for s in w.levels]
    lines.append(f"  -> {'fault: ' + w.fault if w.fault else f'gpa {w.gpa:#x} ({format_size(1 << (12 + 9 * (w.leaf_level - 1)))} page)'}")
    _emit(data, as_json, "\n".join(lines))


def coalesce(
    block: str = typer.Option("1G", "--block", help="Block size to rebuild (1G or 2M with 4K; 32M; 512M)."),
    count: int = typer.Option(1, "--count", help="How many blocks (each split first, then coalesced)."),
    granule: str = typer.Option("4K", "--granule", help="arm64 granule: 4K, 16K or 64K."),
    ipa_bits: int = typer.Option(40, "--ipa-bits", help="arm64 IPA size in bits."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/cli-json/model.md)."),
) -> None:
    """Rebuild blocks from fully split tables in the old order and install-block-first order, and
    count the steps that leave the range unmapped (explicit simulation).

    Examples:

      tracekit model coalesce --block 1G --count 2

      tracekit model coalesce --block 2M --count 512 --json
    """
    g = arm64_stage2(parse_size(granule), ipa_bits)
    size = parse_size(block)
    if count < 1 or count * size > g.ipa_size // 2:
        raise ModelError("--count must be at least 1 and the blocks must fit in half the IPA space")
    if count * size // g.granule > 1 << 22:
        raise ModelError("the explicit coalescing simulation is limited to 4 Mi pages; lower --count")
    walk_levels = list(range(g.start_level, LAST_LEVEL + 1))
    results = {}
    for order in ("old", "new"):
        pgt = Stage2PageTable(g)
        pgt.populate(size, count * size, size)
        EagerSplitter(pgt, g.level_size(LAST_LEVEL)).split_huge_pages(size, size + count * size, WalkStats())
        totals = {"steps": 0, "unmapped_steps": 0, "leaves_put": 0, "tables_freed": 0, "walk_entries": 0, "free_walk_entries": 0}
        for i in range(count):
            r = run_coalesce(pgt, size + i * size, size, order)
            totals["steps"] += r.steps
            totals["unmapped_steps"] += r.unmapped_steps
            totals["leaves_put"] += r.leaves_put
            totals["tables_freed"] += r.tables_freed
            totals["walk_entries"] += r.walk.total("entries")
            totals["free_walk_entries"] += r.free_walk.total("entries")
        results[order] = totals
    data = {"granule": g.granule, "block": size, "count": count, "levels": walk_levels, **results}
    lines = [f"coalescing {count} x {format_size(size)} (4K-split tables) into blocks:"]
    for order, label in (("old", "old (unmap subtree, then block)"), ("new", "new (block first, free after)")):
        t = results[order]
        lines.append(f"  {label:<34} steps {t['steps']:<9} unmapped {t['unmapped_steps']:<9} walk entries {t['walk_entries']}")
    _emit(data, as_json, "\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add the ``model`` sub-typer to the root app."""
    model = typer.Typer(
        name="model",
        help=(
            "The reference page-table model: KVM's arm64 stage-2 and x86 geometry, walks, eager split, "
            "dirty log and coalescing, with per-level walk accounting.\n\n"
            "Examples:\n\n"
            "  tracekit model geometry --arch arm64 --granule 4K --ipa-bits 40\n\n"
            "  tracekit model split --arch arm64 --memslot 64G --backing thp --skip-levels\n\n"
            "  tracekit model walk --arch x86 --levels 4 --gva 0x40201234"
        ),
        no_args_is_help=True,
    )
    model.command("geometry")(geometry)
    model.command("split")(split)
    model.command("walk")(walk)
    model.command("coalesce")(coalesce)
    app.add_typer(model, name="model")
