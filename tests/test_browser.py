"""The dashboard in a real browser: Playwright drives Debian's chromium against `otviz dashboard`.

Starts the dashboard on a free loopback port with a temporary run store, opens
Train, starts a short training from the form, waits until the accuracy chart
shows new points, stops it, then opens Alignments and finds a rendered plan
heatmap. It then trains a second, tiny run to completion and, with the same
server, opens every page (Train following the finished run, Alignments between
two models and over the run's epochs, Compare, Learn) at 1400 and at 800 px of
window width: it screenshots each one and checks that no drawn plotly figure is
narrower than 300 px and no select box narrower than 120 px (the layout stacks
its cells instead). Screenshots go to ``$OTVIZ_TEST_ARTIFACTS`` (default
``test-artifacts/``).
The server and every training process it started are killed at teardown.
Skipped only when ``/usr/bin/chromium`` is missing (CI installs it with apt-get).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("OTVIZ_TEST_ARTIFACTS") or ROOT / "test-artifacts")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing (apt-get install chromium)")

# Every wait is generous: the checks are about what appears, never about how fast.
SERVER_START = 180.0
PAGE_READY = 180.0
TRAINING = 600.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_store_runs(store: Path) -> None:
    """Kill the training processes recorded in the store (they run in their own sessions)."""
    if not store.is_file():
        return
    from otviz.runs import RunStore

    try:
        pids = RunStore(store).runs()["pid"].dropna().astype(int).tolist()
    except Exception:  # noqa: BLE001
        return
    for pid in pids:
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture
def dashboard(tmp_path):
    """``(url, store path)`` of an ``otviz dashboard`` serving a fresh store on a free port."""
    store = tmp_path / "runs.db"
    port = free_port()
    log = open(tmp_path / "dashboard.log", "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "otviz", "dashboard", "--port", str(port), "--store", str(store)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START
        while True:
            if proc.poll() is not None:
                pytest.fail("otviz dashboard exited:\n" + (tmp_path / "dashboard.log").read_text())
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("otviz dashboard did not answer:\n" + (tmp_path / "dashboard.log").read_text())
            time.sleep(0.3)
        yield url, store
    finally:
        kill_store_runs(store)
        stop_server(proc)
        log.close()


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 2200})
            pg.set_default_timeout(PAGE_READY * 1000)
            yield pg
        finally:
            browser.close()


# JavaScript run in the page: plotly attaches `data` and `layout` to each chart's div.
POINTS_OF = """([title, trace]) => {
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
        const t = gd.layout && gd.layout.title && gd.layout.title.text || '';
        if (!t.includes(title)) continue;
        // plotly.py sends arrays base64-encoded: count the points plotly.js decoded
        const i = (gd.data || []).findIndex(d => d.name === trace);
        if (i < 0) return 0;
        const full = gd._fullData && gd._fullData[i];
        return (full && full._length) || (Array.isArray(gd.data[i].x) ? gd.data[i].x.length : 0);
    }
    return 0;
}"""
HAS_HEATMAP = """(title) => Array.from(document.querySelectorAll('.js-plotly-plot')).some(gd =>
    (gd.layout && gd.layout.title && gd.layout.title.text || '').includes(title)
    && (gd.data || []).some(d => d.type === 'heatmap')
    && gd.querySelector('.heatmaplayer') !== null)"""


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"))


# The layout checks, at every window width: figures keep a readable width, select boxes a legible one.
WIDTHS = (1400, 800)
MIN_FIGURE_WIDTH = 300
MIN_SELECT_WIDTH = 120
SELECTS = "[data-testid='stSelectbox'], [data-testid='stMultiSelect']"

# The drawn plotly figures that a user can see (not in a closed expander or a hidden tab):
# [title, width of the chart element, width plotly drew at, height plotly drew at].
FIGURES = """() => Array.from(document.querySelectorAll('.stPlotlyChart')).filter(
        el => el.getClientRects().length > 0 && el.closest('details:not([open])') === null)
    .map(el => {
        const gd = el.querySelector('.js-plotly-plot');
        const svg = gd && gd.querySelector('.main-svg');
        const title = gd && gd.layout && gd.layout.title && gd.layout.title.text || '';
        return [title.split('<br>')[0], el.getBoundingClientRect().width,
                svg ? svg.getBoundingClientRect().width : 0, svg ? svg.getBoundingClientRect().height : 0];
    })"""
# Every visible figure has been drawn by plotly at the width of its element (layout settled).
FIGURES_SETTLED = f"""(n) => {{ const f = ({FIGURES})();
    return document.querySelector("[data-testid='stElementContainer'][data-stale='true']") === null
        && f.length >= n && f.every(([t, w, drawn, h]) => drawn > 0 && h > 0 && Math.abs(w - drawn) <= 2); }}"""
SELECT_WIDTHS = f"""() => Array.from(document.querySelectorAll("{SELECTS}")).filter(
        el => el.getClientRects().length > 0 && el.closest('details:not([open])') === null)
    .map(el => [(el.querySelector('label') || {{}}).innerText || '', el.getBoundingClientRect().width])"""
SCROLL_HEIGHT = """() => { const m = document.querySelector("[data-testid='stMain']");
    return m ? m.scrollHeight : document.body.scrollHeight; }"""


def check_layout(pg, name: str, width: int, n_figures: int) -> None:
    """Wait for ``n_figures`` drawn figures, screenshot the whole page, check the widths."""
    pg.wait_for_function(FIGURES_SETTLED, arg=n_figures, timeout=PAGE_READY * 1000, polling=250)
    assert pg.locator("[data-testid='stException']").count() == 0, f"{name}: an exception on the page"
    figures = pg.evaluate(FIGURES)
    selects = pg.evaluate(SELECT_WIDTHS)
    # the whole page in one picture: a window as tall as the page (bounded), then back
    height = min(max(int(pg.evaluate(SCROLL_HEIGHT)) + 40, 900), 8000)
    pg.set_viewport_size({"width": width, "height": height})
    pg.wait_for_function(FIGURES_SETTLED, arg=n_figures, timeout=PAGE_READY * 1000, polling=250)
    shot(pg, f"{name}-{width}")
    pg.set_viewport_size({"width": width, "height": 1000})
    narrow = [(t, round(w)) for t, w, _, _ in figures if w < MIN_FIGURE_WIDTH]
    assert not narrow, f"{name} at {width} px: figures narrower than {MIN_FIGURE_WIDTH} px: {narrow}"
    cramped = [(label, round(w)) for label, w in selects if w < MIN_SELECT_WIDTH]
    assert not cramped, f"{name} at {width} px: select boxes narrower than {MIN_SELECT_WIDTH} px: {cramped}"


def test_train_live_then_alignments_in_chromium(dashboard, page):
    from otviz.runs import RunStore

    url, store = dashboard
    pg = page
    pg.goto(url + "/")
    pg.get_by_role("heading", name="Train").wait_for()
    pg.get_by_text("The run store is empty").wait_for()
    pg.get_by_label("Epochs").wait_for(state="visible")
    pg.get_by_role("cell", name="cnn-mnist5k-0to4", exact=True).wait_for()  # the shipped teachers' table
    shot(pg, "1-train-empty-store")

    # A run long enough to be watched (60 epochs of 2 steps, on one layer pair); the test
    # stops it once the page has shown it progress, so its length costs nothing.
    pg.get_by_label("Epochs").fill("60")
    pg.get_by_label("Steps per epoch (0 = one pass over the training set)").fill("2")
    pg.get_by_role("button", name="Start training").click()

    # the page follows the new run: the accuracy chart appears, then gains points live
    acc = ["accuracy (%)", "test"]
    pg.wait_for_function(f"(a) => ({POINTS_OF})(a) >= 1", arg=acc, timeout=TRAINING * 1000, polling=250)
    first = pg.evaluate(POINTS_OF, acc)
    pg.wait_for_function(f"(a) => ({POINTS_OF})(a) > {first}", arg=acc, timeout=TRAINING * 1000,
                         polling=250)
    pg.wait_for_function(HAS_HEATMAP, arg="Latest transport plan", timeout=PAGE_READY * 1000)
    shot(pg, "2-train-live")
    runs = RunStore(store).runs()
    assert len(runs) == 1 and runs["config.epochs"].iloc[0] == 60
    run_id = int(runs["run_id"].iloc[0])

    # Stop ends that run's process; the page then shows it interrupted
    pg.get_by_role("button", name="Stop").click()
    pg.locator(".otviz-status[data-status='interrupted']").wait_for(timeout=PAGE_READY * 1000)
    pg.get_by_text(re.compile(r"^interrupted · step")).wait_for(timeout=PAGE_READY * 1000)
    pg.get_by_role("button", name="Stop").wait_for(state="detached", timeout=PAGE_READY * 1000)
    assert RunStore(store).run(run_id)["status"] == "interrupted"
    shot(pg, "3-train-stopped")

    # Alignments: a plan between two shipped teachers, drawn as a heatmap
    pg.get_by_role("link", name="Alignments").click()
    pg.get_by_role("heading", name="Alignments").wait_for()
    pg.wait_for_function(HAS_HEATMAP, arg="Cost beside plan", timeout=PAGE_READY * 1000)
    # the number read first is the scale-free OT score, with its scale one hover away
    score = pg.locator("[data-testid='stMetric']").filter(has_text="OT score")
    score.wait_for(timeout=PAGE_READY * 1000)
    assert 0.0 < float(score.locator("[data-testid='stMetricValue']").inner_text()) < 1.0
    shot(pg, "4-alignments")
    assert pg.locator("[data-testid='stException']").count() == 0

    # A tiny run that finishes (3 epochs of 2 steps), for the pages that show a finished run
    pg.get_by_role("link", name="Train").click()
    pg.get_by_role("heading", name="Train").wait_for()
    pg.get_by_text("Start a training").click()
    pg.get_by_label("Epochs").fill("3")
    pg.get_by_label("Steps per epoch (0 = one pass over the training set)").fill("2")
    pg.get_by_role("button", name="Start training").click()
    pg.get_by_text(re.compile(r"^completed · step")).wait_for(timeout=TRAINING * 1000)
    finished = RunStore(store).runs()
    finished = int(finished.loc[finished["status"] == "completed", "run_id"].iloc[0])

    # Every page at both widths, with the same server and the same runs
    for width in WIDTHS:
        pg.set_viewport_size({"width": width, "height": 1000})
        pg.goto(f"{url}/?run={finished}")
        pg.get_by_role("heading", name="Train").wait_for()
        pg.wait_for_function(HAS_HEATMAP, arg="Latest transport plan", timeout=PAGE_READY * 1000)
        check_layout(pg, "5-train-finished", width, 7)  # six curve cards and the plan panel
        # the curve cards share the page's width (that of the plan panel, a whole row): two to a
        # row at 1400 px, one at 800 (fixed 460 px cards left a third of the row empty)
        drawn = pg.evaluate(FIGURES)
        row = max(w for _, w, _, _ in drawn)
        cards = [w for t, w, _, _ in drawn if t.startswith("accuracy (%)")]
        per_row = 2 if width >= 1200 else 1
        assert cards and cards[0] > 0.9 * row / per_row, (width, row, cards)

        pg.goto(f"{url}/alignments")
        pg.get_by_role("heading", name="Alignments").wait_for()
        pg.wait_for_function(HAS_HEATMAP, arg="Cost beside plan", timeout=PAGE_READY * 1000)
        check_layout(pg, "6-alignments-models", width, 5)

        pg.get_by_text("A training run").click()
        pg.wait_for_function(HAS_HEATMAP, arg="Cost beside plan, epoch", timeout=PAGE_READY * 1000)
        check_layout(pg, "7-alignments-run", width, 5)

        pg.goto(f"{url}/compare")
        pg.get_by_role("heading", name="Compare").wait_for()
        check_layout(pg, "8-compare", width, 1)

        pg.goto(f"{url}/learn")
        pg.get_by_role("heading", name="Learn").wait_for()
        check_layout(pg, "9-learn", width, 2)
