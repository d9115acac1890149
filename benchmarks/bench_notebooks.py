"""Wall time of the notebooks, cell by cell, in the mode a user runs them.

Not a test: it executes each notebook of ``notebooks/`` top to bottom with
nbclient, as ``tests/test_notebooks.py`` does, but in the notebooks' DEFAULT
mode (``OTVIZ_FAST`` removed from the kernel's environment, so the budgets are
the ones a user gets), and prints per notebook its total wall time and its
slowest cells (first line of their source, seconds).

The kernel runs this interpreter (a kernel spec written to a temporary
directory), with ``PLOTLY_RENDERER=json`` (figures become JSON outputs, nothing
opens a browser) and ``MPLBACKEND=Agg``. Notebooks run one after the other,
never two at once. The machine's load average (1 min) is recorded before and
after each notebook: on a shared machine, wall times scale with the load, so
read them with it.

    .venv/bin/python benchmarks/bench_notebooks.py                 # 01..04, default mode
    .venv/bin/python benchmarks/bench_notebooks.py --only 03       # one notebook (repeatable)
    .venv/bin/python benchmarks/bench_notebooks.py --fast          # OTVIZ_FAST=1, as the tests run them
    .venv/bin/python benchmarks/bench_notebooks.py --out benchmarks/results/notebooks.md
    .venv/bin/python benchmarks/bench_notebooks.py --only 03 --save-executed /tmp/executed   # keep the outputs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
KERNEL_NAME = "otviz-bench-python"


@dataclass
class NotebookTiming:
    name: str
    mode: str
    total_s: float
    cells: list[tuple[int, str, float]] = field(default_factory=list)   # (index, first line, seconds)
    load_before: float = float("nan")
    load_after: float = float("nan")
    error: str | None = None

    def slowest(self, n: int = 3) -> list[tuple[int, str, float]]:
        return sorted(self.cells, key=lambda c: -c[2])[:n]


def _first_line(source: str) -> str:
    for line in source.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line if len(line) <= 70 else line[:67] + "..."
    return "(empty)"


def _kernel_manager(kernel_dir: Path) -> KernelManager:
    spec_dir = kernel_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "otviz bench kernel",
        "language": "python",
    }))
    ksm = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def run_notebook(path: Path, fast: bool, cell_timeout: int, save_to: Path | None = None) -> NotebookTiming:
    """Execute one notebook in a fresh kernel; time every code cell (wall clock, seconds).

    With ``save_to``, the executed notebook (with its outputs) is written into that directory.
    """
    nb = nbformat.read(path, as_version=4)
    timing = NotebookTiming(path.name, "fast" if fast else "default", 0.0)
    saved = {k: os.environ.get(k) for k in ("OTVIZ_FAST", "PLOTLY_RENDERER", "MPLBACKEND", "OTVIZ_STORE")}
    with tempfile.TemporaryDirectory(prefix="otviz-bench-nb-") as tmp:
        # the kernel inherits this process's environment
        os.environ.pop("OTVIZ_FAST", None)
        if fast:
            os.environ["OTVIZ_FAST"] = "1"
        os.environ["PLOTLY_RENDERER"] = "json"
        os.environ["MPLBACKEND"] = "Agg"
        os.environ["OTVIZ_STORE"] = str(Path(tmp) / "unused-store" / "runs.db")
        try:
            km = _kernel_manager(Path(tmp) / "kernels")
            client = NotebookClient(nb, km=km, timeout=cell_timeout, allow_errors=False,
                                    resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
            starts: dict[int, float] = {}

            def on_execute(cell, cell_index, **_):
                starts[cell_index] = time.perf_counter()

            def on_complete(cell, cell_index, **_):
                timing.cells.append((cell_index, _first_line(cell.source),
                                     time.perf_counter() - starts[cell_index]))

            client.on_cell_execute = on_execute
            client.on_cell_executed = on_complete
            timing.load_before = os.getloadavg()[0]
            started = time.perf_counter()
            try:
                client.execute()
            except Exception as exc:  # CellExecutionError, CellTimeoutError, DeadKernelError
                timing.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            timing.total_s = time.perf_counter() - started
            timing.load_after = os.getloadavg()[0]
            if save_to is not None:
                save_to.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, save_to / path.name)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return timing


def format_timing(t: NotebookTiming, slowest: int) -> str:
    status = "" if t.error is None else f"  FAILED ({t.error})"
    lines = [f"### {t.name}, {t.mode} mode: {t.total_s:.0f} s ({t.total_s / 60:.1f} min) wall, "
             f"{len(t.cells)} code cells; load average (1 min) {t.load_before:.1f} before, "
             f"{t.load_after:.1f} after{status}", "",
             "| cell | first line | wall s | share |", "|---|---|---|---|"]
    for idx, line, s in t.slowest(slowest):
        share = s / t.total_s if t.total_s else float("nan")
        lines.append(f"| {idx} | `{line.replace('|', '/')}` | {s:.1f} | {share:.0%} |")
    rest = t.total_s - sum(s for _, _, s in t.slowest(slowest))
    lines.append(f"| | all other cells and the kernel's start | {rest:.1f} | "
                 f"{rest / t.total_s if t.total_s else float('nan'):.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], metavar="NN",
                        help="run only the notebook whose name starts with NN (e.g. 03); repeatable")
    parser.add_argument("--fast", action="store_true",
                        help="set OTVIZ_FAST=1 (the small budgets of the test suite) instead of the default mode")
    parser.add_argument("--slowest", type=int, default=3, help="cells listed per notebook (default 3)")
    parser.add_argument("--cell-timeout", type=int, default=3600,
                        help="seconds before a single cell is abandoned (default 3600)")
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) to this file")
    parser.add_argument("--save-executed", type=Path, metavar="DIR",
                        help="write the executed notebooks, with their outputs, into DIR (to read their numbers)")
    args = parser.parse_args(argv)

    paths = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if args.only:
        chosen = [p for p in paths if any(p.name.startswith(o) for o in args.only)]
        missing = [o for o in args.only if not any(p.name.startswith(o) for p in paths)]
        if missing:
            names = ", ".join(p.name for p in paths)
            parser.error(f"no notebook starts with {', '.join(missing)}; the notebooks are {names}")
        paths = chosen
    if args.slowest < 1:
        parser.error(f"--slowest must be at least 1, got {args.slowest}")

    header = (f"otviz: {REPO}; Python {platform.python_version()}; {os.cpu_count()} CPUs; "
              f"{'OTVIZ_FAST=1' if args.fast else 'default mode (OTVIZ_FAST unset)'}; "
              f"wall-clock seconds per cell, nbclient, one notebook at a time")
    print(header, flush=True)
    results = []
    for path in paths:
        print(f"\nrunning {path.name} ...", flush=True)
        t = run_notebook(path, args.fast, args.cell_timeout, args.save_executed)
        results.append(t)
        print(format_timing(t, args.slowest), flush=True)

    summary = ["", "| notebook | mode | wall min | slowest cell (s) | load avg before / after |",
               "|---|---|---|---|---|"]
    for t in results:
        idx, line, s = t.slowest(1)[0] if t.cells else (-1, "-", float("nan"))
        summary.append(f"| {t.name} | {t.mode}{' FAILED' if t.error else ''} | {t.total_s / 60:.1f} | "
                       f"{s:.0f} (cell {idx}) | {t.load_before:.1f} / {t.load_after:.1f} |")
    print("\n".join(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n\n".join([header] + [format_timing(t, args.slowest) for t in results])
                            + "\n" + "\n".join(summary) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 1 if any(t.error for t in results) else 0


if __name__ == "__main__":
    sys.exit(main())
