"""Dashboard latency: `otviz dashboard` to first rendered page, and store write to page update.

Not a test: it prints a table of what it measures, against the targets

* start-up: from launching ``otviz dashboard`` to the Train page rendered in a
  browser, under 5 s, beside a bare Streamlit hello-world launched the same way
  and beside the dashboard without its warm-up imports (``OTVIZ_WARM_IMPORTS=0``)
  (alternated, so all see the same load; the ratios are what to compare across
  machines and loads);
* live update: from a training step written to the run store to that step
  appearing on the Train page (its progress line, and its point in the loss
  chart), under 2 s.

It drives Debian's chromium (``/usr/bin/chromium``) with Playwright. Each
start-up sample starts a fresh server on a free loopback port with an empty
temporary store (the browser is started beforehand and not counted). For the
live samples this process plays the trainer: it creates a run in the store and
logs one step at a time, and the page follows it (it refreshes every second).

    .venv/bin/python benchmarks/bench_dashboard.py            # 3 start-ups, 15 steps
    .venv/bin/python benchmarks/bench_dashboard.py --startups 5 --steps 30

``--umap N`` times instead the Alignments page's UMAP neuron map as the page computes it
(``dashkit.background_embedding`` on the neurons of its default view: the last layers of the
shipped teachers ``cnn-mnist5k`` and ``cnn-mnist5k-0to4`` on 256 probe images, spatial mean):
the first fit of a fresh server process and a second fit on other neurons, in ``N`` fresh
processes with an empty numba cache (a first use on a machine: everything compiles) and ``N``
with numba's on-disk cache left as earlier runs wrote it (a later server start)::

    .venv/bin/python benchmarks/bench_dashboard.py --umap 2
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOTAL_STEPS = 1000

LOSS_POINTS = """(n) => {
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
        // the loss panel: the chart with a loss/total trace (raw values beside the smoothed line)
        const i = (gd.data || []).findIndex(d => d.name === 'loss/total');
        if (i < 0) continue;
        const full = i >= 0 && gd._fullData && gd._fullData[i];
        return ((full && full._length) || 0) >= n;
    }
    return false;
}"""
PROGRESS_SHOWS = """(s) => document.body.innerText.includes('step ' + s + '/' + %d + ' ')""" % TOTAL_STEPS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int, log: Path, *, warm: bool = True) -> subprocess.Popen:
    env = dict(os.environ, OTVIZ_WARM_IMPORTS="1" if warm else "0")
    return subprocess.Popen(
        [sys.executable, "-m", "otviz", "dashboard", "--port", str(port), "--store", str(store)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=env)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_health(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("otviz dashboard exited")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("otviz dashboard did not answer")


def startup_sample(browser, tmp: Path, i: int, *, warm: bool = True) -> tuple[float, float]:
    """Seconds from launch to the health endpoint answering, and to the Train page rendered."""
    store, port = tmp / f"startup-{i}-{warm}.db", free_port()
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    t0 = time.perf_counter()
    proc = start_server(store, port, tmp / f"startup-{i}-{warm}.log", warm=warm)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_health(url, proc)
        t_health = time.perf_counter() - t0
        page.goto(url + "/")
        # rendered: the form's inputs are drawn (not their loading placeholders) and the
        # shipped teachers' table is there
        page.get_by_label("Epochs").wait_for(state="visible", timeout=120_000)
        page.get_by_role("button", name="Start training").wait_for(timeout=120_000)
        page.get_by_role("cell", name="cnn-mnist5k-0to4", exact=True).wait_for(timeout=120_000)
        t_page = time.perf_counter() - t0
    finally:
        page.close()
        stop_server(proc)
    return t_health, t_page


HELLO = 'import streamlit as st\nst.title("hello")\nst.button("ok")\n'


def baseline_sample(browser, tmp: Path, i: int) -> float:
    """Seconds from launching a bare Streamlit hello-world to its page rendered: the floor on this machine now."""
    app, port = tmp / "hello.py", free_port()
    app.write_text(HELLO)
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        stdout=open(tmp / f"hello-{i}.log", "wb"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_health(f"http://127.0.0.1:{port}", proc)
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("button", name="ok").wait_for(timeout=120_000)
        return time.perf_counter() - t0
    finally:
        page.close()
        stop_server(proc)


def live_samples(browser, tmp: Path, n_steps: int) -> tuple[list[float], list[float]]:
    """Seconds from a step written to the store to its progress line and its loss point on the page."""
    from otviz.runs import RunStore

    store_path, port = tmp / "live.db", free_port()
    store = RunStore(store_path)
    run_id = store.create_run({"setting": "transfer", "method": "ot", "epochs": 10},
                              name="latency probe", total_steps=TOTAL_STEPS)
    store.log_metrics(run_id, {"test/accuracy": 0.1, "train/accuracy": 0.1}, step=0, epoch=0)
    proc = start_server(store_path, port, tmp / "live.log")
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    text_lat, chart_lat = [], []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_health(url, proc)
        page.goto(f"{url}/?run={run_id}")
        page.get_by_text("Follow a run").wait_for(timeout=120_000)
        page.get_by_role("button", name="Stop").wait_for(timeout=120_000)
        for step in range(1, n_steps + 1):
            time.sleep(0.37 * (step % 3) + 0.2)  # write at varying phases of the page's 1 s refresh
            t0 = time.perf_counter()
            store.log_metrics(run_id, {"loss/total": 1.0 / step, "loss/ce": 1.0 / step}, step=step, epoch=1)
            store.set_progress(run_id, step=step, epoch=1, message="latency probe")
            page.wait_for_function(PROGRESS_SHOWS, arg=step, polling="raf", timeout=60_000)
            text_lat.append(time.perf_counter() - t0)
            page.wait_for_function(LOSS_POINTS, arg=step, polling="raf", timeout=60_000)
            chart_lat.append(time.perf_counter() - t0)
    finally:
        page.close()
        stop_server(proc)
        store.finish(run_id, "completed")
    return text_lat, chart_lat


def summary(values: list[float]) -> str:
    v = sorted(values)
    p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
    return f"{statistics.median(v):6.2f} {p90:6.2f} {v[-1]:6.2f}"


def umap_child() -> None:
    """One fresh server process's UMAP fits, as the Alignments page runs them; prints JSON."""
    import json

    os.environ.setdefault("STREAMLIT_LOGGER_LEVEL", "error")  # dashkit outside a server
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    import dashkit as dk

    opts = dict(cost="sqeuclidean", normalize="center", method="emd", eps=None, spatial="mean",
                size=None, n_probe=256, seed=0, probe=dk.probe_key("task"))
    t, s = "shipped:cnn-mnist5k", "shipped:cnn-mnist5k-0to4"
    teacher, _ = dk.load_model(t)
    layer = dk.model_layers(teacher)[-1]
    data = dk.alignment_data(t, s, layer, layer, **opts)  # not timed: the page has it already
    out = {"T": list(data["T"].shape), "S": list(data["S"].shape)}
    start = time.perf_counter()
    dk.background_embedding(data["T"], data["S"], "umap").result()
    out["first"] = time.perf_counter() - start
    start = time.perf_counter()  # another pair of layers: a later fit of the same process
    other = dk.alignment_data(t, s, dk.model_layers(teacher)[-2], layer, **opts)
    mid = time.perf_counter()
    dk.background_embedding(other["T"], other["S"], "umap").result()
    out["second"] = time.perf_counter() - mid
    print(json.dumps(out))


def umap_samples(n: int) -> str:
    """``n`` fresh processes with an empty numba cache and ``n`` with the cache kept, alternated."""
    import json

    rows: dict[str, list[dict]] = {"empty numba cache (first use on a machine)": [],
                                   "numba cache kept (a later server start)": []}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="otviz-bench-umap-") as d:
        for i in range(n):
            for label, cache in zip(rows, (Path(d) / f"numba-{i}", None)):
                env = dict(os.environ)
                if cache is not None:
                    env["NUMBA_CACHE_DIR"] = str(cache)
                proc = subprocess.run([sys.executable, __file__, "--umap-child"], env=env,
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-3000:])
                rows[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                loads.append(os.getloadavg()[0])
    shape = rows[next(iter(rows))][0]
    lines = [f"UMAP neuron map of the Alignments page ({shape['T'][0]} teacher and {shape['S'][0]} "
             f"student neurons, {shape['T'][1]} responses each) on {os.cpu_count()} CPU cores, "
             f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}", "",
             "| fresh process | first fit, s | a second fit, s |", "|---|---|---|"]
    for label, res in rows.items():
        first = ", ".join(f"{r['first']:.1f}" for r in res)
        second = ", ".join(f"{r['second']:.1f}" for r in res)
        lines.append(f"| {label} | {first} | {second} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--startups", type=int, default=3, help="fresh server start-ups to time (default 3)")
    ap.add_argument("--steps", type=int, default=15, help="store writes to time on the live page (default 15)")
    ap.add_argument("--umap", type=int, default=0,
                    help="time the Alignments page's UMAP fits in N fresh processes per numba cache state")
    ap.add_argument("--umap-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.umap_child:
        umap_child()
        return 0
    if args.umap:
        print(umap_samples(args.umap))
        return 0
    if not os.path.exists(CHROMIUM):
        print(f"{CHROMIUM} is missing: apt-get install chromium")
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="otviz-bench-dash-") as d, sync_playwright() as p:
        tmp = Path(d)
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            starts, bare, cold = [], [], []
            for i in range(args.startups):  # alternated, so all three see the same load
                bare.append(baseline_sample(browser, tmp, i))
                starts.append(startup_sample(browser, tmp, i))
                cold.append(startup_sample(browser, tmp, i, warm=False)[1])
            text_lat, chart_lat = live_samples(browser, tmp, args.steps)
        finally:
            browser.close()

    print(f"otviz dashboard latency on {os.cpu_count()} CPU cores "
          f"(load average {os.getloadavg()[0]:.1f})\n")
    print("| measurement | samples | median s | p90 s | max s | target |")
    print("|---|---|---|---|---|---|")
    health = [h for h, _ in starts]
    page = [t for _, t in starts]
    for label, vals, target in (
        ("launch -> server answers (health check)", health, "-"),
        ("server answers -> Train page rendered (browser)", [t - h for h, t in starts], "-"),
        ("launch -> Train page rendered", page, "< 5 s"),
        ("the same without the warm-up imports (OTVIZ_WARM_IMPORTS=0)", cold, "-"),
        ("bare Streamlit hello-world: launch -> page rendered", bare, "-"),
        ("step written -> progress line shows it", text_lat, "< 2 s"),
        ("step written -> loss chart shows it", chart_lat, "< 2 s"),
    ):
        med, p90, mx = summary(vals).split()
        print(f"| {label} | {len(vals)} | {med} | {p90} | {mx} | {target} |")
    print(f"\nlaunch -> Train page rendered, as a multiple of the bare hello-world (median of the "
          f"paired ratios): {statistics.median(t / b for (_, t), b in zip(starts, bare)):.2f}x; "
          f"without the warm-up imports: {statistics.median(c / b for c, b in zip(cold, bare)):.2f}x")
    print("\nstart-ups, one per line (server answers, page rendered): "
          + "; ".join(f"{h:.2f} s, {t:.2f} s" for h, t in starts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
