"""Draw the paired benchmark's figures for the README, from its CSV tables.

Reads ``benchmarks/results/transfer_paired.csv``, ``transfer_axes.csv`` and
``transfer_scratch_curves.csv`` (written by ``benchmarks/bench_paired.py``), builds
the same plotly figures as the dashboard's Compare page (:mod:`otviz.figures`)
and renders them with Debian's chromium into

- ``docs/benchmark-gains.png``: per setting, each method's test accuracy with its
  95 % interval and the paired difference of OT (and kd+ot) to every baseline;
- ``docs/benchmark-axes.png``: test accuracy against labels per class
  (``transfer``, ``transfer-small``) and student width (``distill``), and
  scratch's validation curve per setting.

    python scripts/benchmark_figures.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def page(figs: list, columns: int, width: int) -> str:
    """One HTML page with the figures on a grid (plotly.js inlined: no network)."""
    import plotly.io as pio

    cells = []
    for i, fig in enumerate(figs):
        fig.update_layout(width=width // columns - 20)
        cells.append(f'<div class="cell">{pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False)}</div>')
    return ("<html><head><meta charset='utf-8'><style>body{margin:8px;font-family:sans-serif;background:#fff}"
            f".grid{{display:grid;grid-template-columns:repeat({columns},1fr);gap:8px}}</style></head>"
            f"<body><div class='grid'>{''.join(cells)}</div></body></html>")


def render(html: str, out: Path, width: int) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        f = Path(d) / "page.html"
        f.write_text(html, encoding="utf-8")
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": width, "height": 800})
            pg.goto(f.as_uri())
            pg.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
            pg.wait_for_timeout(500)
            pg.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> int:
    import pandas as pd

    from otviz import figures

    final = pd.read_csv(RESULTS / "transfer_paired.csv")
    settings = list(dict.fromkeys(final.dropna(subset=["test_accuracy"])["setting"]))
    gains = []
    for s in settings:
        gains.append(figures.method_intervals(final, s))
        for m in ("ot", "kd+ot"):
            if m in set(final.loc[final.setting == s, "method"]):
                gains.append(figures.paired_gains(final, s, ours=m))
    width = 1400
    render(page(gains, 2, width), DOCS / "benchmark-gains.png", width)
    axes_figs = []
    axes_path = RESULTS / "transfer_axes.csv"
    if axes_path.is_file():
        axes = pd.read_csv(axes_path)
        axes_figs += [figures.axis_curves(axes, s) for s in settings if s in set(axes["setting"])]
    curves = RESULTS / "transfer_scratch_curves.csv"
    if curves.is_file():
        axes_figs.append(figures.budget_curves(pd.read_csv(curves)))
    if axes_figs:
        render(page(axes_figs, 2, width), DOCS / "benchmark-axes.png", width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
