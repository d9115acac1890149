"""The paper's claims, measured like a paper: ``otviz sweep`` on ``benchmarks/paired.toml``.

The protocol (validation-only tuning with the same number of Optuna trials per method,
trial 0 the method's recipe, paired final seeds, the paper's axes, 95 % intervals and
the declared comparisons with Holm's adjustment) is :mod:`otviz.sweep`'s; this script
runs the spec and writes its tables into ``benchmarks/results/``:

- ``tuning.csv``: every trial (options, state: complete / pruned / fail, mean validation
  accuracy over the tuning seeds, seed ids, whether chosen);
- ``transfer_paired.csv``: one row per final run (``setting, method, seed,
  val_accuracy, test_accuracy, seconds, status``; accuracies as fractions);
- ``transfer_axes.csv``: the axes' runs (labels per class ``k``, student width), the
  setting's own point being its final runs;
- ``transfer_scratch_curves.csv``: scratch's validation accuracy per epoch (does the
  budget let it flatten?);
- ``comparisons.csv`` and ``transfer_paired.md``: the report.

Resumable: the runs live in a run store (``--store``, default
``benchmarks/results/paired-runs.db``, not versioned); running the script again continues
an interrupted benchmark. It is exactly::

    otviz sweep run benchmarks/paired.toml --store benchmarks/results/paired-runs.db
    otviz sweep report benchmarks/paired.toml --store benchmarks/results/paired-runs.db --out benchmarks/results

    python benchmarks/bench_paired.py                 # the README's protocol
    python benchmarks/bench_paired.py --quick         # benchmarks/paired_quick.toml (files *_quick.*)
    python benchmarks/bench_paired.py --workers 1     # one trial at a time
    python benchmarks/bench_paired.py --settings transfer-small --stages tune final
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="benchmarks/paired_quick.toml (files *_quick.*)")
    p.add_argument("--spec", type=Path, default=None, help="another spec (default benchmarks/paired.toml)")
    p.add_argument("--settings", nargs="+", default=None)
    p.add_argument("--stages", nargs="+", default=["tune", "final", "axes"], choices=["tune", "final", "axes"])
    p.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray (default: the cores)")
    p.add_argument("--address", default=None, help="a Ray cluster (default: a local Ray)")
    p.add_argument("--store", type=Path, default=None, help="run store (default results/paired-runs[_quick].db)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the tables go (default benchmarks/results)")
    args = p.parse_args(argv)

    from otviz.sweep import export_tables, load_spec, run_sweep

    suffix = "_quick" if args.quick else ""
    spec = load_spec(args.spec or HERE / f"paired{suffix}.toml")
    store = args.store or RESULTS / f"paired-runs{suffix}.db"
    t0 = time.perf_counter()
    summary = run_sweep(spec, store, workers=args.workers, address=args.address, stages=tuple(args.stages),
                        settings=args.settings, log=lambda text: print(text, flush=True))
    print(summary)
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    paths = export_tables(store, spec, args.out, suffix=suffix)
    print(paths["report"].read_text())
    print("\n".join(f"wrote {q}" for q in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
