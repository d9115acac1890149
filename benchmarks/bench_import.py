"""Start-up cost: ``import otviz`` and the command line against ``import torch``.

Not a test: it prints a table of what it measures, against the targets

* ``import otviz`` <= 1.3x the time of ``import torch``;
* ``otviz --help`` and an argument or store error answer without importing POT
  (the table also says whether torch, POT, scikit-learn, pandas were imported).

Every sample is a fresh Python process (``python -c ...``, ``python -m otviz
...``), so nothing is cached in memory but the OS file cache; the commands
alternate within each round (round 1: every command once, round 2: again, ...)
so that a change in the machine's load hits them all alike, and the table gives
the median and the spread over the rounds. A warm-up round is not counted.

    .venv/bin/python benchmarks/bench_import.py                   # 9 rounds
    .venv/bin/python benchmarks/bench_import.py --rounds 15 --out benchmarks/results/import.md
    .venv/bin/python benchmarks/bench_import.py --otviz /path/to/other/checkout   # e.g. before a change
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ot", "sklearn", "pandas", "plotly")

# name, argv after the interpreter; {missing} is a store path that does not exist
COMMANDS = [
    ("python -c pass", ["-c", "pass"]),
    ("import torch", ["-c", "import torch"]),
    ("import otviz", ["-c", "import otviz"]),
    ("from otviz import align, ot_distance, capture", ["-c", "from otviz import align, ot_distance, capture"]),
    ("otviz --help", ["-m", "otviz", "--help"]),
    ("otviz align --eps -1 (argument error)", ["-m", "otviz", "align", "--eps", "-1"]),
    ("otviz runs --store MISSING (store error)", ["-m", "otviz", "runs", "--store", "{missing}"]),
]

# The same, in-process, to list which heavy modules each one imports.
PROBE = """
import sys
argv = sys.argv[1:]
try:
    if argv[0] == "-c":
        exec(argv[1])
    else:
        sys.argv = ["otviz"] + argv[2:]
        from otviz.cli import main
        main()
except SystemExit:
    pass
print("MODULES " + " ".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def _run(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def _imports(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], env=env,
                          capture_output=True, text=True, check=False)
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES")]
    names = line[-1].split()[1:] if line else ["?"]
    return ", ".join(names) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="samples per command (default 9)")
    parser.add_argument("--otviz", default=str(REPO), help="the checkout whose otviz is measured "
                        "(default: this repository)")
    parser.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(Path(args.otviz).resolve()))
    env.pop("OTVIZ_DEBUG", None)
    scratch = tempfile.mkdtemp(prefix="otviz-bench-import-")
    missing = str(Path(scratch) / "no-such-dir" / "runs.db")
    commands = [(name, [a.replace("{missing}", missing) for a in argv]) for name, argv in COMMANDS]
    times: dict[str, list[float]] = {name: [] for name, _ in commands}
    for round_ in range(args.rounds + 1):
        for name, argv in commands:
            dt = _run(argv, env)
            if round_:  # round 0 warms the file cache
                times[name].append(dt)
        print(f"round {round_}/{args.rounds}", file=sys.stderr)
    created = Path(missing).parent.exists()

    torch_median = statistics.median(times["import torch"])
    lines = [f"otviz: {Path(args.otviz).resolve()}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
             f"median of {args.rounds} fresh processes per command, alternated", "",
             "| command | median s | min - max s | / import torch | heavy modules imported |",
             "|---|---|---|---|---|"]
    for name, argv in commands:
        ts = times[name]
        med = statistics.median(ts)
        lines.append(f"| `{name}` | {med:.2f} | {min(ts):.2f} - {max(ts):.2f} | {med / torch_median:.2f}x | "
                     f"{_imports(argv, env)} |")
    if created:
        lines += ["", f"Note: `otviz runs --store MISSING` created {Path(missing).parent} (and an empty store): "
                  "from the second round on, it listed that store instead of failing."]
    text = "\n".join(lines)
    shutil.rmtree(scratch, ignore_errors=True)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
