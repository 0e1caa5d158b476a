"""Benchmark of another checkout (before) against this one (after), alternated in one run (issue #13).

Each round runs both trees' own ``tracekit analyze --json`` on the same captures, before then after,
and prints each run's wall time, CPU time and peak memory (the child's own, from ``wait4``) and the
after / before ratios of the rounds' medians. The captures are a real recording by ``tracekit record``
(``--recording PATH``, or ``--record``) tiled to ``--tiles`` back-to-back copies (every family,
thousands of segments) and, with ``--synthetic N``, a synthetic capture of N events. With
``--recorder``, each round also runs both trees' ``tracekit record`` of the built-in workload and the
count-only BPF program on the same tracepoints (benchmarks/bench_recorder.py): the guest's wall time
and the vCPU threads' CPU time of each tree's recording against count-only.

The other checkout needs its own ``.venv`` (``git worktree add --detach DIR COMMIT``, then
``scripts/install.sh`` in it). Run as root for ``--record`` and ``--recorder``.

Usage: python benchmarks/bench_before_after.py --before DIR [--recording PATH | --record] [--tiles 12]
       [--synthetic 100000000] [--capture PATH] [--rounds 2] [--recorder [--size 256M] [--iterations 4]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def measured(argv: list[str], stdout: Path) -> dict:
    """Run ``argv`` with its output in ``stdout``; its wall time, CPU time (every thread, user and system)
    and peak resident memory (``wait4``: this small process's own peak is far below the child's)."""
    with stdout.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
        start = time.perf_counter()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({proc.returncode}): {err[-500:]}")
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def outcome(path: Path) -> str:
    """What both trees' analyses must agree on: walks counted and the model cross-check's matches."""
    document = json.loads(path.read_text())
    walks = sum(row["walks"] for row in document["tables"].get("walk_paths", []))
    check = document["verdicts"].get("crosscheck", {})
    return f"{walks} walks, cross-check {check.get('matched')} of {check.get('compared')}"


def analyze_round(trees: dict[str, Path], capture: Path, tmp: Path) -> dict[str, dict]:
    runs = {}
    for name, tree in trees.items():
        out = tmp / f"{name}.json"
        runs[name] = measured([str(tree / ".venv/bin/tracekit"), "analyze", str(capture), "--json"], out)
        runs[name]["outcome"] = outcome(out)
        runs[name]["load"] = load()
    return runs


def ratio_line(label: str, rounds: list[dict[str, dict]], key: str, unit: str) -> str:
    before = statistics.median(r["before"][key] for r in rounds)
    after = statistics.median(r["after"][key] for r in rounds)
    return f"  {label}: before {before:,.1f} {unit}, after {after:,.1f} {unit}, after / before {after / before:.3f}x"


def analysis_section(trees: dict[str, Path], captures: list[tuple[str, Path]], rounds: int, tmp: Path) -> None:
    for label, capture in captures:
        print(f"analyze {label} (load average {load()}):", flush=True)
        results = []
        for i in range(rounds):
            result = analyze_round(trees, capture, tmp)
            results.append(result)
            for name, r in result.items():
                print(f"  round {i + 1} {name:<6} {r['seconds']:7.2f} s wall, {r['cpu_seconds']:7.2f} s CPU, "
                      f"peak {r['peak_mb']:6,.0f} MB; {r['outcome']} (load {r['load']})", flush=True)
        same = {r[n]["outcome"] for r in results for n in r}
        print(ratio_line("wall time (median)", results, "seconds", "s"))
        print(ratio_line("CPU time (median)", results, "cpu_seconds", "s"))
        print(ratio_line("peak memory (median)", results, "peak_mb", "MB"))
        print("  outcomes " + ("equal" if len(same) == 1 else "DIFFER: " + " / ".join(sorted(same))), flush=True)


def recorder_section(trees: dict[str, Path], size: str, iterations: int, rounds: int) -> None:
    print(f"record: dirty-log -b {size} -i {iterations}, {rounds} rounds (load average {load()}):", flush=True)
    modes = ["count-only", *trees]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for i in range(rounds):
        for mode in modes:
            argv = [sys.executable, __file__, "--child", "record", mode, str(trees.get(mode, "")), size, str(iterations)]
            out = subprocess.run(argv, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(f"record {mode} failed: {out.stderr.strip()[-500:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode].append(r)
            print(f"  round {i + 1} {mode:<10} guest {r['guest_s']:6.2f} s, vCPU CPU {r['guest_cpu_s']:6.2f} s, "
                  f"delivered {r['delivered']:,}, lost {r['lost']:,}"
                  + (f", recorder CPU {r['cpu_s']:.2f} s, peak {r['peak_rss_kb'] / 1024:,.0f} MB" if "cpu_s" in r else "")
                  + f" (load {load()})", flush=True)
    median = {m: {k: statistics.median(r[k] for r in results[m]) for k in ("guest_s", "guest_cpu_s")} for m in modes}
    for tree in trees:
        print(f"  {tree}: {median[tree]['guest_s'] / median['count-only']['guest_s']:.3f}x guest wall, "
              f"{median[tree]['guest_cpu_s'] / median['count-only']['guest_cpu_s']:.3f}x vCPU CPU vs count-only "
              "(medians)")
    print(f"  after / before: {median['after']['guest_s'] / median['before']['guest_s']:.3f}x guest wall, "
          f"{median['after']['guest_cpu_s'] / median['before']['guest_cpu_s']:.3f}x vCPU CPU", flush=True)


def record_child(mode: str, tree: str, size: str, iterations: int) -> dict:
    """One recorder run: the count-only program, or a tree's ``tracekit record`` of its own workload."""
    sys.path.insert(0, str(HERE))
    import bench_recorder as bench  # late: bcc and numpy only in this child

    if mode == "count-only":
        r = bench.run_count_only(size, iterations)
        return {key: r[key] for key in ("guest_s", "guest_cpu_s", "delivered", "lost")}
    r = bench.run_tracekit(size, iterations, str(Path(tree) / ".venv/bin/tracekit"))
    return {key: r[key] for key in ("guest_s", "guest_cpu_s", "delivered", "lost", "cpu_s", "peak_rss_kb")}


def prepare_child(kind: str, source: str, target: str, count: str) -> dict:
    """Captures made in a child, so this process stays small (its peak would cap the children's)."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(1, str(AFTER))  # tests/synthetic.py
    if kind == "record":
        from bench_analysis import record_recording  # late: numpy, pandas and pyarrow kept out of this process

        record_recording(Path(target))
    elif kind == "tile":
        from bench_analysis import tile_recording  # late: as above

        tile_recording(Path(source), Path(target), int(count))
    else:
        from tests.synthetic import write_synthetic_capture  # late: as above

        events = int(count)
        write_synthetic_capture(Path(target), events // 4, extra_rows=max(events // 100, 10_000))
    return {"bytes": sum(f.stat().st_size for f in Path(target).rglob("*") if f.is_file())}


def prepare(kind: str, source: Path | None, target: Path, count: int) -> None:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", "prepare", kind, str(source), str(target), str(count)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"preparing {target.name} failed: {out.stderr.strip()[-500:]}")
    size = json.loads(out.stdout.strip().splitlines()[-1])["bytes"]
    print(f"({target.name}: {size / 2**20:,.0f} MB, made in {time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the other checkout (with its .venv)")
    parser.add_argument("--recording", type=Path, help="a capture recorded by tracekit record")
    parser.add_argument("--record", action="store_true", help="record one first (root, KVM, bcc)")
    parser.add_argument("--tiles", default="12", help="copies of the recording analysed (comma-separated)")
    parser.add_argument("--synthetic", type=int, default=0, help="events of a synthetic capture also analysed")
    parser.add_argument("--capture", type=Path, action="append", default=[], help="a capture also analysed as it is")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of before then after")
    parser.add_argument("--recorder", action="store_true", help="also each tree's tracekit record (root, KVM, bcc)")
    parser.add_argument("--size", default="256M", help="workload memory per vCPU for --recorder")
    parser.add_argument("--iterations", type=int, default=4, help="workload dirty passes for --recorder")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        print(json.dumps(record_child(rest[0], rest[1], rest[2], int(rest[3])) if kind == "record"
                         else prepare_child(*rest)))
        return
    if args.before is None or not (args.before / ".venv/bin/tracekit").exists():
        raise SystemExit("--before DIR: a checkout with its .venv (git worktree add --detach DIR COMMIT; "
                         "scripts/install.sh in it)")
    trees = {"before": args.before.resolve(), "after": AFTER}
    for name, tree in trees.items():
        head = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %cs %s"], capture_output=True,
                              text=True, check=False).stdout.strip()
        print(f"{name}: {head[:100]}")
    print(f"load average at start: {load()} on {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="tk-before-after-"))
    try:
        captures = []
        recording = args.recording
        if recording is None and args.record:
            recording = tmp / "recorded.tkcap"
            prepare("record", None, recording, 0)
        for copies in [int(t) for t in args.tiles.split(",")] if recording is not None else []:
            path = recording
            if copies > 1:
                path = tmp / f"tiled-{copies}.tkcap"
                prepare("tile", recording, path, copies)
            captures.append((f"recording x{copies}", path))
        if args.synthetic:
            path = tmp / "synthetic.tkcap"
            prepare("synthetic", None, path, args.synthetic)
            captures.append((f"synthetic {args.synthetic / 1e6:.0f} M events", path))
        captures += [(str(path), path) for path in args.capture]
        analysis_section(trees, captures, args.rounds, tmp)
        if args.recorder:
            recorder_section(trees, args.size, args.iterations, args.rounds)
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
