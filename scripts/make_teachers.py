#!/usr/bin/env python
"""Train the shipped teacher checkpoints from fixed seeds.

Writes ``otviz/teachers/<name>.pt`` for every recipe in
``otviz.teachers.TEACHER_SPECS`` (or the names given), using the fixed
stratified train/test split of each dataset, and prints the test accuracy of
each teacher. Same as ``otviz teachers --rebuild`` and
``otviz.teachers.build_teachers()``.

Usage::

    python scripts/make_teachers.py                  # all teachers, into the package
    python scripts/make_teachers.py --out /tmp/t cnn-mnist5k
    python scripts/make_teachers.py --epochs 1       # quick smoke run

Duration (measured with torch 2.13 on a 2-core CPU, no GPU): 37 s wall time
for all eight teachers, seed 0::

    teacher              test acc  train s
    cnn-mnist5k-0to4       0.9920      7.1
    cnn-mnist5k            0.9780     15.5
    mlp-mnist5k-0to4       0.9840      1.0
    mlp-mnist5k            0.9550      2.0
    cnn-digits-0to4        1.0000      1.5
    cnn-digits             0.9944      3.2
    mlp-digits-0to4        0.9889      0.5
    mlp-digits             0.9667      1.2

(test accuracy on the fixed stratified test split of each dataset; expect
two to five times longer on a machine busy with other work). Rebuilding with
the same seed, torch version and machine reproduces the same weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otviz.teachers import TEACHER_DIR, TEACHER_SPECS, build_teachers  # noqa: E402

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the shipped otviz teachers from fixed seeds.",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME",
        help=f"teachers to build (default: all). Choices: {', '.join(TEACHER_SPECS)}",
    )
    parser.add_argument("--out", type=Path, default=TEACHER_DIR, help=f"output directory (default: {TEACHER_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of every recipe")
    args = parser.parse_args(argv)
    bad = [n for n in args.names if n not in TEACHER_SPECS]
    if bad:
        parser.error(f"unknown teacher(s): {', '.join(bad)}; choices: {', '.join(TEACHER_SPECS)}")
    t0 = time.perf_counter()
    results = build_teachers(args.out, args.names or None, seed=args.seed, epochs=args.epochs)
    print()
    print(f"{'teacher':<20} {'test acc':>8} {'seconds':>8}")
    for r in results:
        print(f"{r['name']:<20} {r['test_accuracy']:>8.4f} {r['train_seconds']:>8.1f}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
