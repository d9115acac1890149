"""Wall time of the paired protocol: ``otviz sweep`` (Optuna + Ray) against the old script.

Not a test. Runs, one after the other on this machine, each with a fresh run store:

1. the old ``benchmarks/bench_paired.py`` (random search over the same knobs, a home-made
   ``multiprocessing`` pool; taken from git at ``--old-commit``) with ``--quick``;
2. ``otviz sweep run benchmarks/paired_quick.toml`` (the same protocol: the same settings,
   methods, trials, seeds, budgets and axis points) with ``--workers 2``;
3. the same sweep with ``--workers 1``.

and writes a table: wall time, runs trained (pruned trials train fewer epochs), training
seconds summed over the runs as recorded in the store, and the ratios. The machine is
shared: the runs are sequential, so a change of load between them shows in the ratios
(say so when quoting them).

    .venv/bin/python benchmarks/bench_sweep.py --out benchmarks/results/sweep.md
    .venv/bin/python benchmarks/bench_sweep.py --only sweep2 sweep1     # skip the old script
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "61c7311"  # the last commit whose bench_paired.py is the random-search script


def _run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return seconds


def _store_facts(db: Path) -> tuple[int, int, float]:
    sys.path.insert(0, str(REPO))
    from otviz.runs import RunStore

    runs = RunStore(db, readonly=True).runs()
    pruned = int(runs.error.fillna("").str.contains("pruned").sum())
    return len(runs), pruned, float(runs.duration.sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=["old", "sweep2", "sweep1"], default=["old", "sweep2", "sweep1"])
    p.add_argument("--old-commit", default=OLD_COMMIT)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="otviz-bench-sweep-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    py = sys.executable
    rows = []
    if "old" in args.only:
        old = tmp / "old" / "bench_paired.py"
        old.parent.mkdir()
        old.write_text(subprocess.run(["git", "show", f"{args.old_commit}:benchmarks/bench_paired.py"], cwd=REPO,
                                      capture_output=True, text=True, check=True).stdout)
        # the old script writes next to itself (results/) and imports otviz from PYTHONPATH
        secs = _run([py, str(old), "--quick", "--workers", "2", "--store", str(tmp / "old.db")], env, tmp / "old.log")
        n, pruned, train = _store_facts(tmp / "old.db")
        rows.append(("old script, random search, multiprocessing pool, 2 workers", secs, n, pruned, train))
        print(rows[-1], flush=True)
    for workers in (2, 1):
        if f"sweep{workers}" not in args.only:
            continue
        db = tmp / f"sweep{workers}.db"
        secs = _run([py, "-m", "otviz", "sweep", "run", "benchmarks/paired_quick.toml", "--store", str(db),
                     "--workers", str(workers)], env, tmp / f"sweep{workers}.log")
        n, pruned, train = _store_facts(db)
        rows.append((f"otviz sweep, TPE + median pruner, Ray, {workers} worker{'s' if workers > 1 else ''}",
                     secs, n, pruned, train))
        print(rows[-1], flush=True)
    base = rows[0][1]
    lines = ["| protocol (benchmarks/paired_quick.toml: 66 tuning, 66 final, 36 axis runs at most) | wall time, min "
             "| runs trained | of them pruned | training time summed over runs, min | wall time / first row |",
             "|---|---|---|---|---|---|"]
    for name, secs, n, pruned, train in rows:
        lines.append(f"| {name} | {secs / 60:.1f} | {n} | {pruned} | {train / 60:.1f} | {secs / base:.2f} |")
    text = "\n".join(lines) + f"\n\nLogs and stores in {tmp}.\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
