"""Every method x the three settings x several seeds, at a small budget.

Writes ``benchmarks/results/transfer.csv`` (one row per run) and
``benchmarks/results/transfer.md`` (mean +- std test accuracy and wall time per
run), the table the README shows. Runs go through ``otviz.train.train`` with a
throw-away run store; two worker processes (one torch thread each) share the
machine's two cores.

Usage::

    python benchmarks/bench_transfer.py                 # the README table (< 30 min on 2 cores)
    python benchmarks/bench_transfer.py --seeds 0 --settings transfer --methods finetune ot
    python benchmarks/bench_transfer.py --set lam=0.5 --set normalize=center   # tuning

Options: every run takes ``otviz.train.recipe(setting, method)``, the recipe that
``otviz train --setting S --method M`` and the dashboard also start from (so they
cannot drift from what this benchmark measured), plus the ``--set`` overrides.
Budgets (identical for every method of a setting, see ``otviz.train.RECIPES``):

* ``transfer`` / ``transfer-small``: k = 10 labelled images per class (50 in
  all), full-batch steps, 8 evaluations x 15 steps.
* ``distill``: the full 4,000-image training split, batch 64, 5 epochs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"

METHODS = {
    "transfer": ["scratch", "finetune", "l2sp", "fitnets", "at", "nst", "sp", "ot"],
    "distill": ["scratch", "kd", "fitnets", "at", "nst", "sp", "ot", "kd+ot"],
    "transfer-small": ["scratch", "fitnets", "at", "nst", "sp", "ot"],
}
# The options of every (setting, method) are otviz.train.recipe(setting, method): the
# budget and lambda per setting (otviz.train.RECIPES) and the OT and baseline options
# chosen by the tuning recorded in benchmarks/README.md (otviz.train.RECIPE_COMMON: the
# last conv block only, neurons standardised (cost 2(1 - correlation)), exact OT;
# attention transfer's weight 100 instead of the usual 1000, far better on these maps).


def _run(job):
    import torch

    from otviz.runs import RunStore
    from otviz.train import TrainConfig, recipe, train

    torch.set_num_threads(1)
    setting, method, seed, extra, db = job
    cfg = dict(recipe(setting, method), setting=setting, method=method, seed=seed, num_threads=1)
    cfg.update(extra)
    t0 = time.perf_counter()
    res = train(TrainConfig(**cfg), store=RunStore(db), progress=False)
    return dict(setting=setting, method=method, seed=seed, test_accuracy=res.test_accuracy,
                train_accuracy=res.train_accuracy, seconds=time.perf_counter() - t0,
                **{k: v for k, v in extra.items()})


def _parse_set(items):
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                pass
        if v == "None":
            v = None
        if k == "pairs" and isinstance(v, str):
            v = v.split(",")
        out[k] = v
    return out


def main(argv=None):
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=list(METHODS))
    p.add_argument("--methods", nargs="+", default=None, help="restrict to these methods")
    p.add_argument("--set", action="append", help="override a TrainConfig field, e.g. lam=0.5")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="basename under benchmarks/results (default transfer)")
    args = p.parse_args(argv)
    extra = _parse_set(args.set)
    db = str(Path(tempfile.mkdtemp(prefix="otviz-bench-")) / "runs.db")
    jobs = [(s, m, seed, extra, db) for s in args.settings for m in METHODS[s]
            if args.methods is None or m in args.methods for seed in args.seeds]
    t0 = time.perf_counter()
    rows = []
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for r in pool.imap_unordered(_run, jobs):
            rows.append(r)
            print(f"{r['setting']:15s} {r['method']:8s} seed {r['seed']}  test acc {r['test_accuracy']:.4f}"
                  f"  ({r['seconds']:.1f} s)", flush=True)
    total = time.perf_counter() - t0
    df = pd.DataFrame(rows)
    g = df.groupby(["setting", "method"], sort=False)
    table = g.agg(mean=("test_accuracy", "mean"), std=("test_accuracy", "std"), n=("seed", "count"),
                  seconds=("seconds", "mean")).reset_index()
    order = {s: i for i, s in enumerate(METHODS)}
    table["_s"] = table.setting.map(order)
    table["_m"] = [METHODS[s].index(m) for s, m in zip(table.setting, table.method)]
    table = table.sort_values(["_s", "_m"]).drop(columns=["_s", "_m"])
    lines = [f"| setting | method | test accuracy (mean +- std, {len(args.seeds)} seeds) | s / run |",
             "|---|---|---|---|"]
    for _, r in table.iterrows():
        best = table[table.setting == r.setting]["mean"].max()
        acc = f"{100 * r['mean']:.1f} +- {100 * (r['std'] if r['n'] > 1 else 0):.1f}"
        if r["mean"] == best:
            acc = f"**{acc}**"
        lines.append(f"| {r.setting} | {r.method} | {acc} | {r.seconds:.1f} |")
    from otviz.train import RECIPE_COMMON, RECIPES

    common = ", ".join(f"{k}={v}" for k, v in RECIPE_COMMON.items())
    lines.append("")
    lines.append(f"Options: otviz.train.recipe(setting, method), i.e. {common} (pairs 'last' = "
                 f"features.conv3; weights of terms a method lacks unused); per setting: "
                 f"{ {s: RECIPES[s] for s in args.settings} }"
                 + (f"; overrides: {extra}" if extra else "")
                 + f". Total wall time {total / 60:.1f} min with {args.workers} workers.")
    md = "\n".join(lines)
    print("\n" + md)
    RESULTS.mkdir(exist_ok=True)
    base = args.out or "transfer"
    df.to_csv(RESULTS / f"{base}.csv", index=False)
    (RESULTS / f"{base}.md").write_text(md + "\n")
    print(f"written {RESULTS / (base + '.csv')} and .md")


if __name__ == "__main__":
    main()
