"""Regenerate the dashboard screenshots of docs/ (referenced by the README).

Trains the dashboard's demo run (OT transfer to a 4x narrower student) and its scratch twin
(same budget, no OT term) into a temporary run store, serves ``otviz dashboard`` on a free
loopback port, and screenshots with Debian's chromium (Playwright, ``/usr/bin/chromium``):

- ``docs/dashboard-train.png``: Train following the finished demo run, 1400 px wide;
- ``docs/dashboard-alignments.png``: Alignments between two shipped teachers, 1400 px;
- ``docs/dashboard-alignments-800.png``: the same in an 800 px window, where the cells stack
  (down to the plan and the neuron map).
- ``docs/dashboard-compare.png``: Compare with both runs overlaid, 1400 px;
- ``docs/dashboard-lab.png``: the OT lab's first section (document distances), 1400 px, down
  to its HOTT figures.

Each PNG stays under 280 KB (stored with a 256-colour palette when it would be larger). About
three minutes on two CPU cores, mostly the two trainings. Run from the repository root::

    .venv/bin/python scripts/docs_screenshots.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 300_000
MAX_BYTES = 280_000  # each docs PNG stays under this size
STALE = "document.querySelector(\"[data-testid='stElementContainer'][data-stale='true']\") === null"
DRAWN = f"""(n) => {STALE} && Array.from(document.querySelectorAll('.stPlotlyChart'))
    .filter(el => el.getClientRects().length > 0 && el.closest('details:not([open])') === null)
    .filter(el => el.querySelector('.main-svg')).length >= n"""
HEIGHT = """() => { const m = document.querySelector("[data-testid='stMain']");
    return m ? m.scrollHeight : document.body.scrollHeight; }"""


def train(config: dict, store: Path) -> None:
    cmd = [sys.executable, "-m", "otviz", "train", "--config-json", json.dumps(config),
           "--store", str(store), "--no-progress"]
    subprocess.run(cmd, check=True, cwd=ROOT)


def serve(store: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "otviz", "dashboard", "--port", str(port),
                             "--store", str(store)], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("otviz dashboard did not answer:\n" + log.read_text())


def save(pg, width: int, name: str, until: str | None = None) -> None:
    """The whole page (a window as tall as the page), or down to the element showing the text
    ``until``, as a palette PNG."""
    from PIL import Image

    height = min(max(int(pg.evaluate(HEIGHT)) + 40, 900), 4000)
    pg.set_viewport_size({"width": width, "height": height})
    pg.wait_for_timeout(2500)  # plotly redraws at the new size
    pg.mouse.move(0, height - 1)  # no hover effect, no focused widget in the picture
    pg.evaluate("() => document.activeElement && document.activeElement.blur()")
    clip = None
    if until is not None:
        box = pg.get_by_text(until, exact=True).first.bounding_box()
        clip = {"x": 0, "y": 0, "width": width, "height": min(height, box["y"] + box["height"] + 24)}
    raw = Path(tempfile.mkstemp(suffix=".png")[1])
    pg.screenshot(path=str(raw), clip=clip)
    image = Image.open(raw).convert("RGB")
    image.save(DOCS / name, optimize=True)
    if (DOCS / name).stat().st_size > MAX_BYTES:  # a palette keeps it small (colour bars band a little)
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(DOCS / name, optimize=True)
    raw.unlink()
    print(f"docs/{name}: {width} px wide, {(DOCS / name).stat().st_size // 1024} KB")
    pg.set_viewport_size({"width": width, "height": 1000})


def main() -> None:
    os.environ.setdefault("STREAMLIT_LOGGER_LEVEL", "error")  # dashkit outside a server
    sys.path.insert(0, str(ROOT / "app"))
    from dashkit import DEMO_CONFIG
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="otviz-shots-") as tmp:
        store = Path(tmp) / "runs.db"
        demo = dict(DEMO_CONFIG)
        train(demo, store)
        train({**demo, "method": "scratch", "name": "scratch twin of the demo (no OT term)"}, store)
        proc, url = serve(store, Path(tmp) / "dashboard.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                pg = browser.new_page(viewport={"width": 1400, "height": 1000})
                pg.set_default_timeout(WAIT_MS)
                pg.goto(f"{url}/?run=1")
                pg.wait_for_function(DRAWN, arg=3, timeout=WAIT_MS)
                save(pg, 1400, "dashboard-train.png")
                for width, name in ((1400, "dashboard-alignments.png"), (800, "dashboard-alignments-800.png")):
                    pg.set_viewport_size({"width": width, "height": 1000})
                    pg.goto(f"{url}/alignments")
                    pg.wait_for_function(DRAWN, arg=3, timeout=WAIT_MS)
                    save(pg, width, name, until=None if width == 1400 else "Solver summary")
                pg.set_viewport_size({"width": 1400, "height": 1000})
                pg.goto(f"{url}/compare")
                pg.wait_for_function(DRAWN, arg=1, timeout=WAIT_MS)
                save(pg, 1400, "dashboard-compare.png", until="Delete a run")
                pg.set_viewport_size({"width": 1400, "height": 1000})
                pg.goto(f"{url}/lab")
                pg.wait_for_function(DRAWN, arg=4, timeout=WAIT_MS)
                save(pg, 1400, "dashboard-lab.png", until="The 10 topics: their 10 most probable words")
                browser.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
