"""How fast the command line answers ``--help`` and argument errors: two checkouts side by side.

Not a test: it prints a table. Each sample is a fresh ``python -m otviz ...``
process; within each round the commands and the two checkouts alternate
(before, after, before, after, ...), so that a change in the machine's load hits
both alike; the table gives the median over the rounds (a warm-up round is not
counted) and the ratio before / after, and says which heavy modules (torch,
POT, scikit-learn, pandas, numpy) each command imported.

    .venv/bin/python benchmarks/bench_cli.py --before /path/to/old/checkout      # 7 rounds
    .venv/bin/python benchmarks/bench_cli.py --before OLD --rounds 9 --out result.md

A checkout is a folder holding the ``otviz`` package (``git archive COMMIT otviz
| tar -x -C OLD`` makes one); it is put first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ot", "sklearn", "pandas", "numpy")

COMMANDS = [
    ("otviz --help", ["--help"]),
    ("otviz train --help", ["train", "--help"]),
    ("otviz train --bogus", ["train", "--bogus"]),
    ("otviz train --method bogus", ["train", "--method", "bogus"]),
    ("otviz align --help", ["align", "--help"]),
]

PROBE = """
import sys
sys.argv = ["otviz"] + sys.argv[1:]
from otviz.cli import main
try:
    main()
except SystemExit:
    pass
print("MODULES " + " ".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
print("FROM " + sys.modules["otviz"].__file__, file=sys.stderr)
"""


def _env(checkout: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(checkout), OTVIZ_BENCH_CWD=str(checkout))
    env.pop("OTVIZ_DEBUG", None)
    return env


def _run(argv: list[str], env: dict[str, str]) -> float:
    # run in the checkout: `python -m` and `-c` put the working directory first on sys.path
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "otviz", *argv], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False, cwd=env["OTVIZ_BENCH_CWD"])
    return time.perf_counter() - t0


def _imports(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], env=env,
                          capture_output=True, text=True, check=False, cwd=env["OTVIZ_BENCH_CWD"])
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES")]
    names = line[-1].split()[1:] if line else ["?"]
    origin = [x[5:] for x in proc.stderr.splitlines() if x.startswith("FROM ")]
    if not origin or not origin[-1].startswith(env["OTVIZ_BENCH_CWD"]):
        raise SystemExit(f"otviz was imported from {origin}, not from {env['OTVIZ_BENCH_CWD']}")
    return ", ".join(names) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the checkout measured first (e.g. the base commit)")
    parser.add_argument("--after", default=str(REPO), help="the other checkout (default: this repository)")
    parser.add_argument("--rounds", type=int, default=7, help="samples per command and checkout (default 7)")
    parser.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = parser.parse_args()

    sides = {"before": _env(Path(args.before).resolve()), "after": _env(Path(args.after).resolve())}
    times = {(name, side): [] for name, _ in COMMANDS for side in sides}
    for round_ in range(args.rounds + 1):
        for name, argv in COMMANDS:
            for side, env in sides.items():
                dt = _run(argv, env)
                if round_:  # round 0 warms the file cache
                    times[name, side].append(dt)
        print(f"round {round_}/{args.rounds}", file=sys.stderr)

    lines = [f"before: {Path(args.before).resolve()}; after: {Path(args.after).resolve()}; "
             f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; median (min - max) of "
             f"{args.rounds} fresh processes per command and checkout, alternated", "",
             "| command | before s | after s | before / after | imported before | imported after |",
             "|---|---|---|---|---|---|"]
    for name, argv in COMMANDS:
        b, a = times[name, "before"], times[name, "after"]
        mb, ma = statistics.median(b), statistics.median(a)
        lines.append(f"| `{name}` | {mb:.2f} ({min(b):.2f} - {max(b):.2f}) | {ma:.2f} ({min(a):.2f} - "
                     f"{max(a):.2f}) | {mb / ma:.1f}x | {_imports(argv, sides['before'])} | "
                     f"{_imports(argv, sides['after'])} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
