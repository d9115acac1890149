"""The Compare page on a large run store: first render, interactions and peak memory.

Not a test: it builds a run store of ``--runs`` runs (default 2,000) holding ``--rows`` metric rows
(default 1,000,000), then renders the dashboard's Compare page with Streamlit's ``AppTest`` in a
fresh process and prints one table, against the targets

* first render of the page < 3 s;
* each interaction (a filter, a change of the overlaid runs) < 1 s;
* peak resident memory of the process that renders it < 600 MB.

What a run of the store holds (made up, shaped like ``otviz train``'s output): a setting, a method,
a status (mostly completed, some failed or interrupted), a config as ``otviz train`` records it,
and per run ``rows / runs`` metric rows: ``train/accuracy``, ``test/accuracy`` and the OT score of
one layer pair at every epoch, and the loss terms (``loss/total``, ``loss/task``, ``ot/<pair>``)
at every step. The store is written by direct inserts into the schema of :mod:`otviz.runs` in
one transaction (about 10 s), after :class:`otviz.runs.RunStore` created the file.

Each page run is timed in the rendering process, from ``AppTest.run()`` to its return: the page
script, the store queries, and the serialisation of the table and the figures (not the
browser's drawing). Memory is the process's peak resident set (``ru_maxrss``), read after the
imports, after the first render, after the interactions, and after the CSV export is built (the
export is built when a download button is clicked: it writes every metric row of the runs
shown, so its time is reported apart, with its size). The process of a measurement is started fresh, so the
first render is a cold one (no Streamlit cache).

    .venv/bin/python benchmarks/bench_compare.py                 # 2,000 runs, 1M rows
    .venv/bin/python benchmarks/bench_compare.py --runs 200 --rows 100000
    .venv/bin/python benchmarks/bench_compare.py --store /tmp/big.db --keep   # reuse a store

``--visits N`` measures something else: N visits of the Compare page (each a new session, as a
browser tab opening it; the first one cold), on a small store (``--runs 50 --rows 20000`` unless
given) and the repository's benchmark results, for the page as it is and the page of the git
revision ``--before`` (its ``app/`` and ``benchmarks/results/``, from ``git archive``), in
alternating fresh processes, side by side in one run, with the load average::

    .venv/bin/python benchmarks/bench_compare.py --visits 4 --before 5078911
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "app" / "otviz_app.py"

SETTINGS = ("distill", "transfer", "transfer-small", "transfer-digits")
METHODS = ("ot", "kd+ot", "scratch", "finetune", "l2sp", "kd", "fitnets", "at")
PAIR = "features.conv3->features.conv3"
EPOCHS = 10
TARGETS = {"first render": 3.0, "interaction": 1.0, "memory": 600.0}


# --------------------------------------------------------------------------- the store
def build_store(path: Path, n_runs: int, n_rows: int, seed: int = 0) -> dict[str, int]:
    """Fill a new store at ``path`` with ``n_runs`` finished runs and ``n_rows`` metric rows."""
    from otviz.runs import RunStore

    if path.exists():
        raise SystemExit(f"{path} exists; pass a new path (or --keep to reuse it as it is)")
    RunStore(path).close()  # the schema, as the library writes it
    rng = random.Random(seed)
    per_run = max(1, n_rows // n_runs)
    epoch_rows = 3 * (EPOCHS + 1)  # train/test accuracy and the score at epochs 0..EPOCHS
    steps = max(1, (per_run - epoch_rows) // 3)
    steps_per_epoch = max(1, steps // EPOCHS)
    host = "bench-host"  # not this host: no process check, only the (old) heartbeats decide
    t0 = time.time() - 30 * 86400
    runs, metrics = [], []
    for rid in range(1, n_runs + 1):
        setting, method = rng.choice(SETTINGS), rng.choice(METHODS)
        status = rng.choices(("completed", "failed", "interrupted"), (0.9, 0.05, 0.05))[0]
        seed_ = rid % 5
        config = {"setting": setting, "method": method, "seed": seed_, "epochs": EPOCHS,
                  "lam": rng.choice((0.1, 1.0, 10.0)), "k": rng.choice((10, 100)),
                  "batch_size": 64, "lr": 1e-3, "cost": "sqeuclidean", "normalize": "standardize",
                  "ot_method": "sinkhorn", "eps": 0.05, "pairs": [PAIR], "arch": "cnn",
                  "steps_per_epoch": steps_per_epoch, "teacher": "cnn-mnist5k",
                  "student_width": 0.25, "n_train": 5000, "n_test": 1000}
        start = t0 + rid * 600.0
        end = start + rng.uniform(60, 500)
        runs.append((rid, f"{setting}-{method}-{rid}", setting, method, json.dumps(config), status,
                     start, start, end, end, 10_000 + rid, host, None, None, steps, steps, EPOCHS))
        rows = 0
        final = rng.uniform(0.3, 0.95)
        for epoch in range(EPOCHS + 1):
            step = epoch * steps_per_epoch
            acc = final * (0.2 + 0.8 * epoch / EPOCHS)
            t = start + (end - start) * epoch / EPOCHS
            metrics += [(rid, step, epoch, "test/accuracy", acc, t),
                        (rid, step, epoch, "train/accuracy", min(1.0, acc + 0.05), t),
                        (rid, step, epoch, f"score/{PAIR}", 1.0 - 0.6 * epoch / EPOCHS, t)]
            rows += 3
        step = 0
        while rows < per_run:
            step += 1
            epoch = min(EPOCHS, 1 + (step - 1) // steps_per_epoch)
            t = start + (end - start) * step / (steps + 1)
            loss = 2.0 / (1 + 0.01 * step)
            for key, value in (("loss/total", loss), ("loss/task", 0.8 * loss), (f"ot/{PAIR}", 0.2 * loss)):
                if rows < per_run:
                    metrics.append((rid, step, epoch, key, value, t))
                    rows += 1
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("BEGIN")
    con.executemany(
        "INSERT INTO runs (id, name, setting, method, config, status, created_at, started_at, "
        "ended_at, heartbeat_at, pid, hostname, error, message, step, total_steps, epoch) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", runs)
    con.executemany("INSERT INTO metrics (run_id, step, epoch, key, value, time) VALUES (?, ?, ?, ?, ?, ?)",
                    metrics)
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return {"runs": len(runs), "rows": len(metrics)}


# --------------------------------------------------------------------------- measuring (child)
def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(store: Path) -> dict:
    """Render the Compare page and interact with it; timings in s, peak memory in MB."""
    os.environ["OTVIZ_STORE"] = str(store)
    from streamlit.testing.v1 import AppTest

    import otviz.figures  # noqa: F401  (imports the page needs, counted in the baseline)
    import pandas  # noqa: F401
    import streamlit  # noqa: F401

    # AppTest's own cost: a fresh AppTest discovers Streamlit's components at its first run
    # (about 0.7 s here), and the first run of a process pays one-off checks on top; an
    # empty page run first shows that share and takes the one-off part out of the page's time
    t = time.perf_counter()
    AppTest.from_string("import streamlit as st\nst.write('warm-up')").run()
    out: dict = {"rss_imports": _rss_mb(), "steps": [], "harness_first": time.perf_counter() - t}
    t = time.perf_counter()
    AppTest.from_string("import streamlit as st\nst.write('warm-up')").run()
    out["harness"] = time.perf_counter() - t

    def step(name: str, action) -> AppTest:
        t = time.perf_counter()
        at = action()
        dt = time.perf_counter() - t
        if at.exception:
            raise RuntimeError(f"{name}: the page raised {[e.value for e in at.exception]}")
        if at.error:
            raise RuntimeError(f"{name}: the page shows errors {[e.value for e in at.error]}")
        out["steps"].append({"what": name, "seconds": dt, "rss": _rss_mb()})
        return at

    at = AppTest.from_file(str(ENTRY), default_timeout=900)
    at.switch_page("views/compare.py")  # the first run renders Compare, not the Train page
    at = step("first render", at.run)
    shown = at.dataframe[0].value
    out["table_rows"] = len(shown)
    out["rss_first"] = _rss_mb()
    at = step("filter: one setting", lambda: at.multiselect(key="cmp_setting").set_value(["transfer"]).run())
    out["filtered_rows"] = len(at.dataframe[0].value)
    at = step("filter: + status completed",
              lambda: at.multiselect(key="cmp_status").set_value(["completed"]).run())
    at = step("filter: + two methods", lambda: at.multiselect(key="cmp_method").set_value(["ot", "kd"]).run())
    overlay = [w for w in at.multiselect if w.label == "Runs to overlay"][0]
    others = [int(r) for r in at.dataframe[0].value["run_id"].iloc[6:10]]
    at = step("overlay: four other runs", lambda: overlay.set_value(others).run())
    at = step("filters cleared", lambda: (at.multiselect(key="cmp_setting").set_value([]),
                                          at.multiselect(key="cmp_status").set_value([]),
                                          at.multiselect(key="cmp_method").set_value([]))[0].run())
    out["rss_interactions"] = _rss_mb()
    deferred = [b for b in at.get("download_button") if b.proto.deferred_file_id]
    dk = sys.modules.get("dashkit")
    if deferred and hasattr(dk, "export_csv_callable"):
        # the files are built when a download button is clicked: time what the click runs
        ids = [int(r) for r in at.dataframe[0].value["run_id"]]
        out["export_bytes"] = {}
        for name in ("runs", "metrics"):
            build = dk.export_csv_callable(store, ids, name)
            t = time.perf_counter()
            data = build()
            dt = time.perf_counter() - t
            out["export_bytes"][f"{name}.csv"] = len(data)
            del data
            out["steps"].append({"what": f"export: {name}.csv of {len(ids):,} runs (on click)",
                                 "seconds": dt, "rss": _rss_mb()})
    else:
        out["export_bytes"] = None
    out["rss_export"] = _rss_mb()
    return out


# --------------------------------------------------------------------------- visits, before / after
def measure_visits(app: Path, store: Path, n: int) -> dict:
    """Time ``n`` visits of the Compare page of ``app/otviz_app.py``, each in a new AppTest
    (a new session: only the server's caches carry over)."""
    os.environ["OTVIZ_STORE"] = str(store)
    from streamlit.testing.v1 import AppTest

    import otviz.figures  # noqa: F401  (as in measure(): the imports are not a visit's time)

    AppTest.from_string("import streamlit as st\nst.write('warm-up')").run()
    times, charts = [], 0
    for _ in range(n):
        at = AppTest.from_file(str(app / "otviz_app.py"), default_timeout=900)
        at.switch_page("views/compare.py")
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
        if at.exception:
            raise RuntimeError(f"the page raised {[e.value for e in at.exception]}")
        charts = len(at.get("plotly_chart"))
    return {"times": times, "charts": charts}


def visits(store: Path, n: int, before: str, rounds: int) -> str:
    """The page as it is and at ``before``, in alternating processes; a Markdown table."""
    import statistics

    tmp = Path(tempfile.mkdtemp(prefix="otviz-bench-visits-"))
    old = tmp / "before"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", before, "app", "benchmarks/results"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    res: dict[str, list[dict]] = {"before": [], "after": []}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name, app in (("before", old / "app"), ("after", ROOT / "app")):
            proc = subprocess.run([sys.executable, __file__, "--visit-child", str(app), str(store),
                                   str(n)], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-4000:])
            res[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg()[0])
    lines = [f"Compare page visits, {n} per process, {rounds} processes per version, alternating; "
             f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores",
             "",
             f"| version | figures drawn | first visit (cold process), s | later visits, median s | later visits, range s |",
             "|---|---|---|---|---|"]
    for name, label in (("before", f"before ({before})"), ("after", "after")):
        first = [r["times"][0] for r in res[name]]
        later = [t for r in res[name] for t in r["times"][1:]]
        lines.append(f"| {label} | {res[name][0]['charts']} | "
                     f"{', '.join(f'{t:.2f}' for t in first)} | "
                     f"{statistics.median(later):.2f} | {min(later):.2f}-{max(later):.2f} |")
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return "\n".join(lines)


# --------------------------------------------------------------------------- report
def report(res: dict, info: dict) -> str:
    lines = [f"Compare page on {info['runs']:,} runs and {info['rows']:,} metric rows "
             f"({info['mb']:.0f} MB store); one cold process, Streamlit AppTest",
             "",
             "| step | seconds | target | peak RSS (MB) |",
             "|---|---|---|---|"]
    for s in res["steps"]:
        if s["what"] == "first render":
            target = f"< {TARGETS['first render']:g} s"
            ok = s["seconds"] < TARGETS["first render"]
        elif s["what"].startswith("export"):
            target, ok = "(on request)", None
        else:
            target = f"< {TARGETS['interaction']:g} s"
            ok = s["seconds"] < TARGETS["interaction"]
        mark = "" if ok is None else (" ok" if ok else " MISSED")
        lines.append(f"| {s['what']} | {s['seconds']:.2f} | {target}{mark} | {s['rss']:.0f} |")
    peak = max(res["rss_interactions"], res["rss_first"])
    lines += ["",
              f"AppTest's own share of a first render (an empty page in a new AppTest): "
              f"{res['harness']:.2f} s ({res['harness_first']:.2f} s for the first one of the "
              f"process, run before the measurements).",
              f"Rows in the table: {res['table_rows']:,} at first render, {res['filtered_rows']:,} "
              f"with one setting.",
              f"Peak RSS: {res['rss_imports']:.0f} MB after the imports (Streamlit, pandas, torch, "
              f"otviz.figures), {res['rss_first']:.0f} MB after the first render, "
              f"{res['rss_interactions']:.0f} MB after the interactions "
              f"(target < {TARGETS['memory']:g} MB: {'ok' if peak < TARGETS['memory'] else 'MISSED'}), "
              f"{res['rss_export']:.0f} MB after the export."]
    if res.get("export_bytes"):
        lines.append("Export files: " + ", ".join(f"{k} {v / 1e6:.1f} MB"
                                               for k, v in res["export_bytes"].items())
                     + "; built when their download button is clicked, not at a render.")
    else:
        lines.append("Export: the page builds both CSV files at every render (included in the times above).")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--store", type=Path, default=None,
                    help="where to build the store (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="reuse --store if it exists, keep it afterwards")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--visits", type=int, default=0,
                    help="time N visits of the page as it is and at --before, side by side")
    ap.add_argument("--before", default="5078911", help="git revision of the page to compare with")
    ap.add_argument("--rounds", type=int, default=2, help="processes per version (--visits)")
    ap.add_argument("--visit-child", nargs=3, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare.md",
                    help="also write the table to this file (default benchmarks/results/compare.md)")
    args = ap.parse_args()
    if args.child is not None:  # the measuring process
        print(json.dumps(measure(args.child)))
        return 0
    if args.visit_child is not None:
        app, store, n = args.visit_child
        print(json.dumps(measure_visits(Path(app), Path(store), int(n))))
        return 0
    if args.visits and "--runs" not in sys.argv and "--rows" not in sys.argv:
        args.runs, args.rows = 50, 20_000
    tmp = tempfile.TemporaryDirectory(prefix="otviz-bench-compare-")
    store = args.store or Path(tmp.name) / "runs.db"
    try:
        if args.keep and store.exists():
            con = sqlite3.connect(store)
            info = {"runs": con.execute("SELECT count(*) FROM runs").fetchone()[0],
                    "rows": con.execute("SELECT count(*) FROM metrics").fetchone()[0]}
            con.close()
            print(f"reusing {store}", file=sys.stderr)
        else:
            t = time.perf_counter()
            info = build_store(store, args.runs, args.rows)
            print(f"built {store}: {info['runs']} runs, {info['rows']} metric rows in "
                  f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        info["mb"] = store.stat().st_size / 1e6
        if args.visits:
            text = (f"{info['runs']:,} runs, {info['rows']:,} metric rows\n\n"
                    + visits(store, args.visits, args.before, args.rounds))
            print(text)
            out = args.out if "--out" in sys.argv else args.out.with_name("compare_visits.md")
            out.write_text(text + "\n")
            return 0
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        proc = subprocess.run([sys.executable, __file__, "--child", str(store)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        text = report(res, info)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    finally:
        if not args.keep:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
