"""Concurrent creation of one run store: failures and timings.

Not a test: it prints a table of what it measures, against the target

* 0 failures in 200 rounds of 2 and of 6 processes creating one store.

Each round, N worker processes (multiprocessing, spawn; started once and reused)
wait at a barrier, then open the same brand-new store file at the same moment
(``RunStore(path)``: it creates the file, switches it to WAL mode and creates the
schema), then each adds a run. A round's store must end up valid, holding N runs.
An open or a write that raises is a failure; the table groups them by message.

    .venv/bin/python benchmarks/bench_store.py                    # 200 rounds of 2 and of 6
    .venv/bin/python benchmarks/bench_store.py --rounds 50 --procs 2,4
    .venv/bin/python benchmarks/bench_store.py --out benchmarks/results/store.md

To measure another checkout (e.g. the code before a change), put it first on
``PYTHONPATH``; the table names the ``otviz`` it ran.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

TIMEOUT = 10.0  # RunStore's default lock timeout


def _worker(directory: str, rounds: int, barrier, queue) -> None:
    from otviz.runs import RunStore

    for r in range(rounds):
        path = os.path.join(directory, f"store-{r}.db")
        barrier.wait()
        t0 = time.perf_counter()
        store = None
        try:
            store = RunStore(path, timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            queue.put((r, "open", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0))
            continue
        opened = time.perf_counter() - t0
        try:
            store.create_run({"round": r, "pid": os.getpid()})
            queue.put((r, None, None, opened))
        except Exception as exc:  # noqa: BLE001
            queue.put((r, "write", f"{type(exc).__name__}: {exc}", opened))
        finally:
            store.close()


def _short(message: str) -> str:
    """A failure message with its paths and numbers generalised, to group them."""
    message = re.sub(r"/\S+?store-\d+\.db", "<store>", message)
    message = re.sub(r"\d+(\.\d+)?", "N", message)
    return message[:150]


def race(n: int, rounds: int) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="otviz-bench-store-") as directory:
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(directory, rounds, barrier, queue)) for _ in range(n)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=600) for _ in range(n * rounds)]
        for p in procs:
            p.join()
        bad_stores = 0  # checked with sqlite3 itself: any otviz version can be measured
        for r in range(rounds):
            try:
                con = sqlite3.connect(Path(directory) / f"store-{r}.db")
                ok = (con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                      and con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                      and con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == n)
                con.close()
            except sqlite3.Error:
                ok = False
            bad_stores += not ok
    failed_locked_fast = [dt for _, kind, msg, dt in results if kind and "locked" in msg and dt < TIMEOUT / 2]
    times = sorted(dt for _, kind, _, dt in results if kind != "open")
    return {
        "n": n, "rounds": rounds, "opens": len(results),
        "open_failures": sum(kind == "open" for _, kind, _, _ in results),
        "write_failures": sum(kind == "write" for _, kind, _, _ in results),
        "locked_fast": len(failed_locked_fast),
        "bad_stores": bad_stores,  # a failed open leaves its run out: the store then counts too
        "messages": collections.Counter(_short(msg) for _, kind, msg, _ in results if kind),
        "median_ms": 1000 * statistics.median(times) if times else float("nan"),
        "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))] if times else float("nan"),
        "max_ms": 1000 * times[-1] if times else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="rounds per process count (default 200)")
    parser.add_argument("--procs", default="2,6", help="comma-separated process counts (default 2,6)")
    parser.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = parser.parse_args()
    import otviz.runs

    lines = [f"otviz: {Path(otviz.runs.__file__).resolve().parent}; SQLite {sqlite3.sqlite_version}; "
             f"lock timeout {TIMEOUT:g} s; {os.cpu_count()} CPUs", "",
             "| processes | rounds | opens | failed opens | failed writes | 'locked' raised before the timeout "
             "| invalid stores | open time median / p95 / max (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for n in (int(x) for x in args.procs.split(",")):
        t0 = time.perf_counter()
        res = race(n, args.rounds)
        lines.append(f"| {n} | {res['rounds']} | {res['opens']} | {res['open_failures']} | "
                     f"{res['write_failures']} | {res['locked_fast']} | {res['bad_stores']} | "
                     f"{res['median_ms']:.1f} / {res['p95_ms']:.1f} / {res['max_ms']:.1f} |")
        for msg, count in res["messages"].most_common():
            notes.append(f"- {n} processes, {count}x: {msg}")
        print(f"{n} processes: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    text = "\n".join(lines + ([""] + ["Failures:"] + notes if notes else ["", "No failures."]))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
