"""Benchmark of the reference model's scale targets (not a test: prints figures and ratios).

Targets (issue #3): analytic split accounting of a 1.5 TiB memslot well under 1 s; explicit
simulation of 64 GiB of 4 KiB pages under 30 s on the development machine. Each analytic time is
printed as a ratio against the explicit simulation of the same case measured in this run, and the
two results are checked equal where both run.

Usage: python benchmarks/bench_model.py [--quick]   (--quick: 4 GiB instead of 64 GiB explicit)
"""

from __future__ import annotations

import argparse
import time

from tracekit.model.analytic import SplitCase, simulate_split, split_accounting
from tracekit.model.geometry import arm64_stage2, x86_geometry

K, M, G = 1 << 10, 1 << 20, 1 << 30


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="explicit case on 4 GiB instead of 64 GiB")
    args = parser.parse_args()

    explicit_size = 4 * G if args.quick else 64 * G
    a64 = arm64_stage2(4 * K, 44)
    case = SplitCase(a64, G, explicit_size, 4 * K, "enable", 2 * M)
    explicit, t_explicit = timed(simulate_split, case)
    analytic, t_analytic = timed(split_accounting, case)
    assert explicit == analytic, "analytic and explicit disagree"
    print(f"explicit {explicit_size // G} GiB of 4K pages (arm64, 2M chunks): {t_explicit:.2f} s "
          f"({explicit.total('entries'):,} entries) [target < 30 s for 64 GiB]")
    print(f"analytic, same case: {t_analytic * 1e3:.3f} ms = {t_analytic / t_explicit:.2e} x explicit, equal: yes")

    big = 3 << 39  # 1.5 TiB
    cases = {
        "arm64 4K pages, 2M chunks, enable": SplitCase(a64, G, big, 4 * K, "enable", 2 * M),
        "arm64 THP, 2M chunks, enable, SKIP_LEVEL3": SplitCase(a64, G, big, 2 * M, "enable", 2 * M,
                                                               skip_levels=frozenset({3})),
        "arm64 hugetlb-1g, 2M chunks, clear": SplitCase(a64, G, big, G, "clear", 2 * M),
        "arm64 hugetlb-1g, 4K chunks, enable": SplitCase(a64, G, big, G, "enable", 4 * K),
        "x86 hugetlb-1g, clear": SplitCase(x86_geometry(4), G, big, G, "clear"),
        "x86 4K pages, clear": SplitCase(x86_geometry(4), G + 4 * K, big, 4 * K, "clear"),
    }
    for name, c in cases.items():
        stats, t = timed(split_accounting, c)
        print(f"analytic 1.5 TiB, {name}: {t * 1e3:.2f} ms = {t / t_explicit:.2e} x the explicit baseline "
              f"({stats.walks:,} walks, {stats.total('callbacks'):,} callbacks) [target < 1 s]")


if __name__ == "__main__":
    main()
