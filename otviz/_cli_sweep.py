"""Subcommand ``otviz sweep`` (registered in :mod:`otviz.cli`): run and report paired sweeps.

Parsing imports nothing heavy; Optuna and Ray load when a sweep runs (:mod:`otviz.sweep`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .cli import _positive_int

_STAGES = ("tune", "final", "axes")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def add_sweep(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="the paired protocol for any setting: tune every method alike (Optuna), train paired seeds "
             "(Ray), compare with intervals",
        description=(
            "Run a sweep spec (a TOML file, e.g. benchmarks/paired.toml): for each setting, tune every "
            "method with the same number of Optuna trials on the validation accuracy (TPE, a pruner on "
            "the per-epoch validation accuracy, trial 0 the recipe), train each method's best trial on "
            "paired final seeds, then the axis points; report mean test accuracy with 95 % intervals and "
            "the declared comparisons (paired t, Wilcoxon, Holm over the family). Trials run as Ray tasks "
            "on this machine or on a Ray cluster; only this process writes the run store. Run the same "
            "command again to continue a stopped sweep."),
        epilog=(
            "examples:\n"
            "  otviz sweep run benchmarks/paired.toml --store runs.db              (this machine, one trial per core)\n"
            "  otviz sweep run benchmarks/paired.toml --dry-run                    (what it would train)\n"
            "  otviz sweep run spec.toml --address ray://head:10001 --store runs.db (a Ray cluster)\n"
            "  otviz sweep report benchmarks/paired.toml --store runs.db --out results/"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="sweep_command", metavar="<run|report>", title="sweep commands")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    r = sub.add_parser("run", help="run (or continue) a sweep",
                       description="Run (or continue) the sweep of SPEC: tuning, final runs, axes.")
    r.add_argument("spec", metavar="SPEC", help="the sweep spec (.toml; .yaml with PyYAML)")
    r.add_argument("--store", default=None, metavar="PATH",
                   help="run store (SQLite file); default $OTVIZ_STORE, else ~/.otviz/runs.db")
    r.add_argument("--workers", type=_positive_int, default=None,
                   help="CPUs of the local Ray (default: this machine's cores); trials at a time = "
                        "workers / --cpus-per-trial. Ignored with --address (the cluster's CPUs count)")
    r.add_argument("--address", default=None,
                   help="a running Ray cluster (e.g. ray://head:10001 or auto); default $RAY_ADDRESS, else "
                        "a local Ray started for the sweep. The cluster's nodes need otviz installed")
    r.add_argument("--cpus-per-trial", type=_positive_int, default=1,
                   help="CPUs (and torch threads) per trial (default 1)")
    r.add_argument("--gpus-per-trial", type=_non_negative_float, default=None,
                   help="GPUs per trial (default 1 when a setting's options set device = 'cuda', else 0)")
    r.add_argument("--stages", nargs="+", choices=_STAGES, default=list(_STAGES),
                   help="stages to run (default all; final needs tune, axes needs final)")
    r.add_argument("--settings", nargs="+", default=None, metavar="SETTING",
                   help="run only these settings of the spec this time (default all)")
    r.add_argument("--dry-run", action="store_true",
                   help="check the spec and print what the sweep would train, then stop")
    r.set_defaults(func=_run)

    rep = sub.add_parser("report", help="the report of a sweep: intervals, paired comparisons, Holm",
                         description="Print the markdown report of a sweep from the run store (nothing is "
                                     "trained); with --out, also write its CSV tables and report there.")
    rep.add_argument("sweep", metavar="SPEC_OR_NAME", help="the sweep spec file, or the sweep's name in the store")
    rep.add_argument("--store", default=None, metavar="PATH",
                     help="run store (SQLite file); default $OTVIZ_STORE, else ~/.otviz/runs.db")
    rep.add_argument("--out", default=None, metavar="DIR",
                     help="also write tuning.csv, transfer_paired.csv, transfer_axes.csv, "
                          "transfer_scratch_curves.csv, comparisons.csv and transfer_paired.md into DIR")
    rep.set_defaults(func=_report)


def _run(args: argparse.Namespace) -> int:
    from otviz.sweep import load_spec

    spec = load_spec(args.spec)
    counts = spec.run_counts()
    if args.dry_run:
        print(f"sweep {spec.name!r} from {args.spec}: valid")
        for st in spec.settings:
            trials = ", ".join(f"{m} {n}" for m, n in st.trials.items())
            axis = (f"; axis {st.axis.field} = {list(st.axis.values)} for {list(st.axis.methods)} on "
                    f"{len(st.axis.seeds)} seeds" if st.axis else "")
            print(f"  {st.name}: trials per method: {trials}; tuning seeds {list(st.tune_seeds)}; budget "
                  f"{dict(st.budget)}{axis}")
        print(f"  final seeds {list(spec.seeds)}; comparisons: "
              + (", ".join(f"{a} - {b}" for a, b in spec.comparisons) or "none"))
        print(f"  at most {counts['tune']} tuning, {counts['final']} final and {counts['axes']} axis runs "
              "(pruned trials train fewer epochs)")
        return 0
    stages = tuple(s for s in _STAGES if s in args.stages)
    if "final" in stages and "tune" not in stages or "axes" in stages and "final" not in stages:
        from otviz.cli import CommandError

        raise CommandError("--stages: final needs tune (its options come from the tuning) and axes needs final "
                           "(best_baseline and best_ours are chosen on the final runs); finished runs are read "
                           "back from the store, so adding the earlier stages costs nothing when they ran")
    from otviz.sweep import run_sweep

    try:
        summary = run_sweep(spec, args.store, workers=args.workers, address=args.address,
                            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                            stages=stages, settings=args.settings, log=lambda text: print(text, flush=True))
    except KeyboardInterrupt:
        print("otviz sweep: interrupted; the runs in progress are marked interrupted. Run the same command "
              "again to continue (finished runs are read back).", file=sys.stderr)
        return 130
    print(summary)
    print(f"report: otviz sweep report {args.spec}" + (f" --store {args.store}" if args.store else ""))
    return 0


def _report(args: argparse.Namespace) -> int:
    from otviz.runs import RunStore
    from otviz.sweep import export_tables, load_spec, sweep_report

    store = RunStore(args.store, create=False)
    target: Any = args.sweep
    if target.endswith((".toml", ".yaml", ".yml")) or os.path.sep in target or Path(target).is_file():
        target = load_spec(target).name
    print(sweep_report(store, target), end="")
    if args.out:
        paths = export_tables(store, target, args.out)
        print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0
