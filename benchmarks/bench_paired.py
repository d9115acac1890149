"""The paper's claims, measured like a paper: validation-only tuning, paired seeds, 95 % intervals.

Every method of every setting gets the same protocol:

1. **Tune** (validation only). Each (setting, method) gets the same budget: ``--trials``
   trials over its own knobs (the learning rate and weight decay for every method; the
   weight of its term; for KD the temperature; for OT also the layer pairs, the
   neurons' normalisation, the solver (exact or entropic) and a schedule for
   lambda). Trial 0 is the method's recipe (``otviz.train.recipe``); the others
   are drawn at random (log-uniform for rates and weights) from a generator seeded
   by the setting and method, so a rerun draws the same trials. Each trial trains
   on the tuning seeds (``--tune-seeds``, disjoint from the final seeds) and is
   scored by its mean validation accuracy. Every trial, its options and its
   validation accuracy go to ``results/tuning.csv``.
2. **Final runs**: the chosen options, ``--seeds`` seeds. Seeds are paired: seed
   ``s`` gives every method of a setting the same validation split, the same
   labelled subset, the same student initialisation and the same minibatch order
   (``otviz.train``). The validation split is 20 % of the setting's training
   split, stratified, drawn per seed, disjoint from the labelled examples (in the
   few-label settings it is larger than the labelled set: see the README). Test
   accuracy is computed once, at the end of each final run. One row per run goes to
   ``results/transfer_paired.csv``: ``setting, method, seed, val_accuracy,
   test_accuracy, seconds`` (accuracies as fractions).
3. **The paper's axes**: scratch, the setting's best baseline (highest mean
   *validation* accuracy of the final runs) and OT (and kd+ot in ``distill``),
   with the options tuned at the setting's default point, against labels per class
   ``k`` (``transfer``, ``transfer-small``) and against the student's width
   (``distill``), same seeds: ``results/transfer_axes.csv``.
4. **Report** (``results/transfer_paired.md``): mean and 95 % CI (Student t) per
   method; paired differences of OT (and kd+ot) to the best baseline and to every
   other baseline, with their 95 % CI, the paired t-test and the Wilcoxon
   signed-rank p-value (:mod:`otviz.stats`); the axes table; scratch's mean
   validation accuracy per epoch (does the budget let it flatten?).

Resumable: every run is stored in a run store (``--store``, default
``benchmarks/results/paired-runs.db``, not versioned) under a name that says what it
is (``paired/final/distill/ot/s3``); a completed run with that name and the same
configuration is read back instead of being trained again, so an interrupted
benchmark continues where it stopped. Two worker processes (one torch thread
each) share the machine's two cores.

    python benchmarks/bench_paired.py             # the README's numbers (about 90 min on 2 cores)
    python benchmarks/bench_paired.py --quick     # a smaller protocol (fewer trials, seeds, points)
    python benchmarks/bench_paired.py --stages tune final --settings transfer-small
    python benchmarks/bench_paired.py --stages axes  # the axes from the recorded choices and final runs
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_STORE = RESULTS / "paired-runs.db"

#: Methods per setting: every method that applies (KD needs the teacher's classes,
#: finetune and L2-SP the teacher's architecture).
METHODS: dict[str, list[str]] = {
    "transfer": ["scratch", "finetune", "l2sp", "fitnets", "at", "nst", "sp", "ot"],
    "distill": ["scratch", "kd", "fitnets", "at", "nst", "sp", "ot", "kd+ot"],
    "transfer-small": ["scratch", "fitnets", "at", "nst", "sp", "ot"],
}
#: The methods whose gain is the question; the others are the baselines.
OURS = ("ot", "kd+ot")

#: Training budget per setting, identical for every method and every trial. Long
#: enough for scratch's validation accuracy to flatten (the report shows its curve).
BUDGETS: dict[str, dict[str, Any]] = {
    "transfer": dict(epochs=10, steps_per_epoch=15, batch_size=64),
    "transfer-small": dict(epochs=10, steps_per_epoch=15, batch_size=64),
    "distill": dict(epochs=15, steps_per_epoch=None, batch_size=64),
}
#: Tuning seeds per setting (disjoint from the final seeds). The few-label settings draw
#: another 50-image labelled set per seed, whose luck moves accuracy by several points, so
#: a trial is scored on two; distill trains on the full split (one seed ranks its trials).
TUNE_SEEDS: dict[str, list[int]] = {"transfer": [100, 101], "transfer-small": [100, 101], "distill": [100]}
#: Seeds of the axes' points other than the setting's own (k = 10, width 1/4), whose runs
#: are the final runs (all the final seeds).
AXIS_SEEDS = list(range(5))
QUICK_BUDGETS: dict[str, dict[str, Any]] = {
    "transfer": dict(epochs=6, steps_per_epoch=10, batch_size=64),
    "transfer-small": dict(epochs=6, steps_per_epoch=10, batch_size=64),
    "distill": dict(epochs=3, steps_per_epoch=None, batch_size=64),
}
VAL_SIZE = 0.2

#: The axes: labels per class for the few-label settings, student width for distill.
K_VALUES = (5, 10, 25, 100)
WIDTHS = (0.125, 0.25, 0.5, 1.0)

PAIR_CHOICES = {  # layer pairs OT may be tuned over (the CNN's alignable layers)
    "last": ["features.conv3"],
    "last two": ["features.conv2", "features.conv3"],
    "all": ["features.conv1", "features.conv2", "features.conv3"],
}


# ----------------------------------------------------------------------------- search space
def _log_uniform(rng, low: float, high: float) -> float:
    v = math.exp(rng.uniform(math.log(low), math.log(high)))
    return float(f"{v:.2g}")


def knobs(method: str) -> dict[str, Any]:
    """The method's own knobs: name -> sampler ``rng -> value`` (used for trials 1..T-1)."""
    terms = method.split("+")
    out: dict[str, Any] = {
        "lr": lambda r: _log_uniform(r, 1e-4, 3e-2),
        "weight_decay": lambda r: 0.0 if r.random() < 0.5 else _log_uniform(r, 1e-5, 1e-3),
    }
    if "l2sp" in terms:
        out["l2sp_weight"] = lambda r: _log_uniform(r, 1e-4, 1e-1)
    if "kd" in terms:
        out["kd_weight"] = lambda r: _log_uniform(r, 0.1, 10.0)
        out["temperature"] = lambda r: float(r.choice([1, 2, 4, 8]))
    if "fitnets" in terms:
        out["fitnets_weight"] = lambda r: _log_uniform(r, 0.01, 10.0)
    if "at" in terms:
        out["at_weight"] = lambda r: _log_uniform(r, 1.0, 1000.0)
    if "nst" in terms:
        out["nst_weight"] = lambda r: _log_uniform(r, 1.0, 100.0)
    if "sp" in terms:
        out["sp_weight"] = lambda r: _log_uniform(r, 100.0, 10000.0)
    if "ot" in terms:
        out["lam"] = lambda r: _log_uniform(r, 0.01, 10.0)
        out["pairs"] = lambda r: PAIR_CHOICES[r.choice(list(PAIR_CHOICES))]
        out["normalize"] = lambda r: r.choice(["standardize", "center"])
        out["ot_method"] = lambda r: r.choice(["emd", "sinkhorn"])
        if "lam_schedule" in _config_fields():
            out["lam_schedule"] = lambda r: r.choice(["constant", "linear"])
    return out


def _config_fields() -> set[str]:
    from otviz.train import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def trials(setting: str, method: str, n: int) -> list[dict[str, Any]]:
    """``n`` option sets for (setting, method): the recipe's (empty: no change), then random draws."""
    import random

    seed = int(hashlib.sha256(f"{setting}/{method}".encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)
    space = knobs(method)
    out: list[dict[str, Any]] = [{}]
    while len(out) < n:
        draw = {name: sample(rng) for name, sample in space.items()}
        if draw.get("ot_method") == "sinkhorn":
            draw["eps"] = 0.05
        out.append(draw)
    return out


# ----------------------------------------------------------------------------- runs
@dataclasses.dataclass
class Job:
    stage: str  # tune / final / axes
    setting: str
    method: str
    seed: int
    options: dict[str, Any]
    trial: int | None = None
    axis: str | None = None  # "k" or "width"
    value: float | None = None

    @property
    def name(self) -> str:
        parts = ["paired", self.stage, self.setting, self.method]
        if self.trial is not None:
            parts.append(f"t{self.trial}")
        if self.axis is not None:
            parts.append(f"{self.axis}={self.value:g}")
        parts.append(f"s{self.seed}")
        return "/".join(parts)

    def config(self, quick: bool) -> dict[str, Any]:
        from otviz.train import recipe

        budget = (QUICK_BUDGETS if quick else BUDGETS)[self.setting]
        cfg = dict(recipe(self.setting, self.method), **budget)
        cfg.update(setting=self.setting, method=self.method, seed=self.seed, val_size=VAL_SIZE,
                   num_threads=1)
        cfg.update(self.options)
        if self.axis == "k":
            cfg["k"] = int(self.value)
        elif self.axis == "width":
            cfg["student_width"] = float(self.value)
        return cfg


def _work(args) -> dict[str, Any]:
    """Train one job in a worker process; its results as a row."""
    import warnings

    import torch

    from otviz.runs import RunStore
    from otviz.train import TrainConfig, train

    from otviz.train import TrainingError

    job, cfg, db = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = train(TrainConfig(**cfg, name=job.name), store=RunStore(db), progress=False)
        except TrainingError as exc:  # diverged (a NaN loss): a failed trial, stored as failed
            print(f"  {job.name} failed: {exc}", flush=True)
            return _row(job, float("nan"), float("nan"), time.perf_counter() - t0)
    return _row(job, res.val_accuracy, res.test_accuracy, time.perf_counter() - t0)


def _row(job: Job, val: float, test: float, seconds: float) -> dict[str, Any]:
    return dict(stage=job.stage, setting=job.setting, method=job.method, seed=job.seed,
                trial=job.trial, axis=job.axis, value=job.value, val_accuracy=float(val),
                test_accuracy=float(test), seconds=float(seconds),
                options=json.dumps(job.options, sort_keys=True))


def stored_results(db: Path, jobs: list[Job], quick: bool) -> dict[str, dict[str, Any]]:
    """Rows of the jobs already completed in the store (same name and configuration)."""
    from otviz.runs import RunStore, matching_runs

    if not db.exists():
        return {}
    store = RunStore(db)
    runs = store.runs()
    if runs.empty:
        return {}
    done = runs[runs["status"].isin(["completed", "failed"])]  # a diverged run fails again
    by_name = {n: g for n, g in done.groupby("name")}
    found: dict[str, int] = {}
    for job in jobs:
        same = by_name.get(job.name)
        if same is None:
            continue
        # the options the job gives (recipe, budget, trial); options left to the trainer (None:
        # k, student width, dataset) are stored resolved, and fields a newer trainer adds with
        # their defaults are not compared
        wanted = {k: v for k, v in job.config(quick).items() if v is not None}
        ids = matching_runs(same, wanted)
        if ids:
            found[job.name] = ids[0]
    if not found:
        return {}
    last = store.last_values(["val/accuracy", "test/accuracy"], run_ids=found.values())
    last = last.set_index("run_id")
    durations = done.set_index("run_id")["duration"]
    out = {}
    status = done.set_index("run_id")["status"]
    for job in jobs:
        rid = found.get(job.name)
        if rid is None:
            continue
        if status[rid] == "failed":
            out[job.name] = _row(job, float("nan"), float("nan"), float(durations.get(rid, float("nan"))))
        elif rid in last.index:
            out[job.name] = _row(job, last.loc[rid, "val/accuracy"], last.loc[rid, "test/accuracy"],
                                 float(durations.get(rid, float("nan"))))
    return out


def run_jobs(jobs: list[Job], db: Path, workers: int, quick: bool, label: str) -> list[dict[str, Any]]:
    """Every job's row: read back from the store when it ran before, else trained now."""
    have = stored_results(db, jobs, quick)
    todo = [j for j in jobs if j.name not in have]
    rows = [have[j.name] for j in jobs if j.name in have]
    print(f"[{label}] {len(jobs)} runs: {len(rows)} read back from {db.name}, {len(todo)} to train",
          flush=True)
    if not todo:
        return rows
    # longest first (distill, wide students, many labels), so the pool's tail is short
    todo.sort(key=lambda j: (j.setting != "distill", -(j.value or 0)))
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        for i, r in enumerate(pool.imap_unordered(_work, [(j, j.config(quick), str(db)) for j in todo]), 1):
            rows.append(r)
            extra = f" t{r['trial']}" if r["trial"] is not None else ""
            extra += f" {r['axis']}={r['value']:g}" if r["axis"] else ""
            print(f"  {i}/{len(todo)} {r['setting']:14s} {r['method']:8s}{extra} s{r['seed']}: "
                  f"val {r['val_accuracy']:.3f} test {r['test_accuracy']:.3f} ({r['seconds']:.0f} s; "
                  f"{(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
    return rows


# ----------------------------------------------------------------------------- stages
def tune(settings, args, db) -> dict[tuple[str, str], dict[str, Any]]:
    """Run every trial; return the chosen options per (setting, method); write tuning.csv."""
    import pandas as pd

    jobs = [Job("tune", s, m, seed, opts, trial=t)
            for s in settings for m in METHODS[s]
            for t, opts in enumerate(trials(s, m, args.trials)) for seed in args.tune_seeds[s]]
    rows = run_jobs(jobs, db, args.workers, args.quick, "tune")
    df = pd.DataFrame(rows)
    per_trial = (df.groupby(["setting", "method", "trial", "options"], sort=False)
                 .agg(val_accuracy=("val_accuracy", lambda v: v.mean(skipna=False)),  # diverged: NaN
                      seeds=("seed", "count"),
                      seconds=("seconds", "mean")).reset_index())
    chosen = {}
    per_trial["chosen"] = False
    for (s, m), g in per_trial.groupby(["setting", "method"], sort=False):
        best = g.sort_values(["val_accuracy", "trial"], ascending=[False, True]).index[0]
        per_trial.loc[best, "chosen"] = True
        chosen[(s, m)] = json.loads(per_trial.loc[best, "options"])
    per_trial.to_csv(RESULTS / f"tuning{args.suffix}.csv", index=False)
    return chosen


def final(settings, chosen, args, db):
    import pandas as pd

    jobs = [Job("final", s, m, seed, chosen[(s, m)]) for s in settings for m in METHODS[s]
            for seed in args.seeds]
    rows = run_jobs(jobs, db, args.workers, args.quick, "final")
    df = pd.DataFrame(rows)[["setting", "method", "seed", "val_accuracy", "test_accuracy", "seconds"]]
    order = {(s, m): (i, j) for i, s in enumerate(METHODS) for j, m in enumerate(METHODS[s])}
    df["_o"] = [order[(s, m)] for s, m in zip(df.setting, df.method)]
    df = df.sort_values(["_o", "seed"]).drop(columns="_o").reset_index(drop=True)
    df.to_csv(RESULTS / f"transfer_paired{args.suffix}.csv", index=False)
    failed = df[df.test_accuracy.isna()]
    if len(failed):
        print(f"[final] {len(failed)} runs diverged and are left out of the statistics: "
              + ", ".join(f"{r.setting}/{r.method}/s{r.seed}" for r in failed.itertuples()), flush=True)
    return df.dropna(subset=["test_accuracy"]).reset_index(drop=True)


def recorded_final(args):
    """The final runs of an earlier final stage, read from ``transfer_paired.csv``.

    Lets ``--stages axes`` run on a machine whose run store does not hold the final runs
    (a fresh clone): the axes need the final runs only for the best baseline, the better
    of OT / kd+ot and each setting's own point.
    """
    import pandas as pd

    path = RESULTS / f"transfer_paired{args.suffix}.csv"
    if not path.exists():
        raise SystemExit(f"{path} not found: run the final stage first (--stages final axes)")
    df = pd.read_csv(path)
    df = df[df.setting.isin(args.settings) & df.seed.isin(args.seeds)]
    missing = [(s, m) for s in args.settings for m in METHODS[s]
               if df[(df.setting == s) & (df.method == m)].empty]
    if missing:
        raise SystemExit(f"{path} has no final runs of {missing}: run the final stage for them")
    return df.dropna(subset=["test_accuracy"]).reset_index(drop=True)


def best_baseline(df, setting: str) -> str:
    """The baseline with the highest mean validation accuracy in the final runs of ``setting``."""
    base = df[(df.setting == setting) & ~df.method.isin(OURS)]
    return base.groupby("method")["val_accuracy"].mean().idxmax()


def axis_methods(final_df, setting: str) -> list[str]:
    """Scratch, the best baseline and the better of OT / kd+ot (by validation accuracy)."""
    sub = final_df[final_df.setting == setting]
    ours = [m for m in OURS if m in METHODS[setting]]
    mine = max(ours, key=lambda m: sub.loc[sub.method == m, "val_accuracy"].mean())
    return list(dict.fromkeys(["scratch", best_baseline(final_df, setting), mine]))


def _own_point(setting: str) -> float:
    """The setting's own point on its axis (width in distill, k elsewhere), whose runs are the
    final runs."""
    from otviz.data import SETTINGS

    st = SETTINGS[setting]
    return float(st.student_width if setting == "distill" else st.default_k)


def axes(settings, chosen, final_df, args, db):
    """The axes' runs; each setting's own point (k = 10, width 1/4) is its final runs."""
    import pandas as pd

    jobs, reused = [], []
    for s in settings:
        methods = axis_methods(final_df, s)
        axis, points = ("width", args.widths) if s == "distill" else ("k", args.k_values)
        own = _own_point(s)
        for v in points:
            for m in methods:
                if v == own:  # the final runs are this point's runs
                    sub = final_df[(final_df.setting == s) & (final_df.method == m)]
                    reused += [dict(r, axis=axis, value=float(v)) for r in sub.to_dict("records")]
                    continue
                for seed in args.axis_seeds:
                    jobs.append(Job("axes", s, m, seed, chosen[(s, m)], axis=axis, value=v))
    rows = run_jobs(jobs, db, args.workers, args.quick, "axes") + reused
    df = pd.DataFrame(rows)[["setting", "axis", "value", "method", "seed", "val_accuracy",
                             "test_accuracy", "seconds"]]
    df = df.sort_values(["setting", "axis", "value", "method", "seed"]).reset_index(drop=True)
    df.to_csv(RESULTS / f"transfer_axes{args.suffix}.csv", index=False)
    return df.dropna(subset=["test_accuracy"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- report
def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report(final_df, axes_df, chosen, args, db, minutes: float) -> str:
    from otviz.stats import mean_ci, paired_difference

    lines = [f"# Paired benchmark ({'quick' if args.quick else 'full'} protocol)", ""]
    tune_text = "; ".join(f"{s}: {v}" for s, v in args.tune_seeds.items())
    lines += [f"{len(args.seeds)} paired seeds per method ({args.seeds[0]}..{args.seeds[-1]}); "
              f"options chosen among {args.trials} trials per method on the validation accuracy of "
              f"the tuning seeds ({tune_text}); test accuracy computed once per final run. Mean and "
              f"95 % confidence interval (Student t), test accuracy in %.", ""]
    lines += ["| setting | method | test accuracy, mean [95 % CI] | validation accuracy | s / run | "
              "chosen options |", "|---|---|---|---|---|---|"]
    for s in METHODS:
        if s not in set(final_df.setting):
            continue
        for m in METHODS[s]:
            g = final_df[(final_df.setting == s) & (final_df.method == m)]
            if g.empty:
                continue
            mean, lo, hi = mean_ci(g.test_accuracy.to_numpy())
            vm = g.val_accuracy.mean()
            opts = ", ".join(f"{k}={v}" for k, v in chosen[(s, m)].items()) or "recipe"
            lines.append(f"| {s} | {m} | {_pct(mean)} [{_pct(lo)}, {_pct(hi)}] | {_pct(vm)} | "
                         f"{g.seconds.mean():.0f} | {opts} |")
    lines += ["", "## Paired differences (test accuracy, percentage points)", "",
              "Each row pairs the two methods' runs seed by seed. The best baseline is the one with "
              "the highest mean validation accuracy.", "",
              "| setting | comparison | mean difference [95 % CI] | paired t p | Wilcoxon p | CI excludes 0 |",
              "|---|---|---|---|---|---|"]
    for s in METHODS:
        sub = final_df[final_df.setting == s]
        if sub.empty:
            continue
        best = best_baseline(final_df, s)
        for ours in [m for m in OURS if m in METHODS[s]]:
            a = dict(zip(sub[sub.method == ours].seed, sub[sub.method == ours].test_accuracy))
            for base in [best] + [b for b in METHODS[s] if b not in OURS and b != best]:
                b = dict(zip(sub[sub.method == base].seed, sub[sub.method == base].test_accuracy))
                d = paired_difference(a, b)
                verdict = "yes, above" if d.low > 0 else ("yes, below" if d.high < 0 else "no")
                tag = " (best baseline)" if base == best else ""
                lines.append(f"| {s} | {ours} - {base}{tag} | {100 * d.mean:+.1f} "
                             f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}] | {d.p_ttest:.3g} | "
                             f"{d.p_wilcoxon:.3g} | {verdict} |")
    if axes_df is not None and not axes_df.empty:
        lines += ["", "## Against scarcity and width (test accuracy %, mean [95 % CI])", ""]
        for (s, axis), g in axes_df.groupby(["setting", "axis"], sort=False):
            methods = list(dict.fromkeys(g.method))
            lines += [f"**{s}**, by {'labels per class k' if axis == 'k' else 'student width'}:", "",
                      f"| {axis} | " + " | ".join(methods) + " | ours - best other, pp [95 % CI] "
                      "| ours - scratch, pp [95 % CI] |",
                      "|---|" + "---|" * (len(methods) + 2)]
            for v, gv in g.groupby("value"):
                cells = []
                for m in methods:
                    acc = gv[gv.method == m].test_accuracy.to_numpy()
                    if len(acc) >= 2:
                        mean, lo, hi = mean_ci(acc)
                        cells.append(f"{_pct(mean)} [{_pct(lo)}, {_pct(hi)}]")
                    else:
                        cells.append("-")
                others = [m for m in methods if m not in OURS]
                means = {m: gv[gv.method == m].test_accuracy.mean() for m in others}
                top = max(means, key=means.get)
                mine = next(m for m in methods if m in OURS)
                ours = gv[gv.method == mine]
                d = paired_difference(dict(zip(ours.seed, ours.test_accuracy)),
                                      dict(zip(gv[gv.method == top].seed, gv[gv.method == top].test_accuracy)))
                cells.append(f"{mine} - {top}: {100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
                sc = gv[gv.method == "scratch"]
                d = paired_difference(dict(zip(ours.seed, ours.test_accuracy)),
                                      dict(zip(sc.seed, sc.test_accuracy)))
                cells.append(f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
                lines.append(f"| {v:g} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += flattening(db, args)
    lines += ["", f"Wall time of the run that wrote this report (stages: {', '.join(args.stages)}): "
              f"{minutes:.0f} min with {args.workers} workers (runs read back from the store count 0)."]
    lines += [stage_times(final_df, axes_df, args)]
    return "\n".join(lines)


def stage_times(final_df, axes_df, args) -> str:
    """Each stage's training time, summed over its runs as recorded (tuning.csv, the final runs,
    the axes' own runs), in minutes of one worker and divided by the workers."""
    import pandas as pd

    parts = []
    tuning = RESULTS / f"tuning{args.suffix}.csv"
    if tuning.exists():
        t = pd.read_csv(tuning)
        parts.append(("tuning", len(t) and int(t.seeds.sum()), float((t.seconds * t.seeds).sum())))
    if final_df is not None:
        parts.append(("final", len(final_df), float(final_df.seconds.sum())))
    if axes_df is not None and not axes_df.empty:
        runs = axes_df[axes_df.value != axes_df.setting.map(_own_point)]  # own point: final runs
        parts.append(("axes", len(runs), float(runs.seconds.sum())))
    text = "; ".join(f"{name} {n} runs, {sec / 60:.0f} min of training ({sec / 60 / args.workers:.0f} min "
                     f"with {args.workers} workers)" for name, n, sec in parts)
    return (f"Training time recorded per stage (machine shared with other jobs while the runs "
            f"ran, so these are upper bounds): {text}.")


def flattening(db: Path, args) -> list[str]:
    """Scratch's validation accuracy per epoch over the final seeds: does the budget let it flatten?

    Writes the per-seed curves to ``results/transfer_scratch_curves.csv`` (``setting, epoch,
    seed, val_accuracy``) and returns the report's lines (the mean per epoch).
    """
    import pandas as pd

    from otviz.runs import RunStore

    store = RunStore(db, readonly=True)
    runs = store.runs()
    lines = ["", "## Is the budget long enough? Scratch's validation accuracy per epoch", "",
             "Mean over the final seeds, in %, from epoch 0 (the initialisation) to the last; then "
             "the gain over the last third of the epochs.", ""]
    rows = []
    for s in METHODS:
        names = {f"paired/final/{s}/scratch/s{seed}": seed for seed in args.seeds}
        done = runs[runs["name"].isin(list(names)) & (runs["status"] == "completed")]
        for rid, name in zip(done["run_id"], done["name"]):
            m = store.metrics(int(rid), "val/accuracy").sort_values("step")
            rows += [dict(setting=s, epoch=int(e), seed=names[name], val_accuracy=float(v))
                     for e, v in zip(m["epoch"], m["value"])]
    curves_csv = RESULTS / f"transfer_scratch_curves{args.suffix}.csv"
    if rows:
        curves, source = pd.DataFrame(rows), ""
        curves.to_csv(curves_csv, index=False)
    elif curves_csv.exists():  # a store without the final runs: the curves recorded with them
        curves, source = pd.read_csv(curves_csv), f"; from {curves_csv.name}"
    else:
        return lines
    for s, g in curves.groupby("setting", sort=False):
        # the epochs every seed reached, averaged over the seeds
        per_epoch = g.groupby("epoch")["val_accuracy"]
        mean = per_epoch.mean()[per_epoch.count() == g.seed.nunique()].to_numpy()
        third = max(1, (len(mean) - 1) // 3)
        lines.append(f"- {s}: " + ", ".join(_pct(v) for v in mean)
                     + f" (last third: {100 * (mean[-1] - mean[-1 - third]):+.1f} pp{source})")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="a smaller protocol: 3 trials, 1 tuning seed, 3 final seeds, shorter budgets, "
                        "two points per axis (under 10 min on 2 cores)")
    p.add_argument("--settings", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--stages", nargs="+", default=["tune", "final", "axes"],
                   choices=["tune", "final", "axes"])
    p.add_argument("--trials", type=int, default=None, help="trials per (setting, method) (default 6)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="final seeds (default 0..9)")
    p.add_argument("--tune-seeds", type=int, nargs="+", default=None,
                   help="tuning seeds of every setting (default 100 101, and 100 in distill)")
    p.add_argument("--axis-seeds", type=int, nargs="+", default=None,
                   help="seeds of the axes' other points (default 0..4)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--store", type=Path, default=None, help=f"run store (default {DEFAULT_STORE})")
    args = p.parse_args(argv)
    q = args.quick
    args.trials = args.trials or (3 if q else 6)
    args.seeds = args.seeds or ([0, 1, 2] if q else list(range(10)))
    args.tune_seeds = ({s: args.tune_seeds for s in METHODS} if args.tune_seeds else
                       {s: [100] for s in METHODS} if q else dict(TUNE_SEEDS))
    args.axis_seeds = args.axis_seeds or ([0, 1] if q else AXIS_SEEDS)
    if set().union(*args.tune_seeds.values()) & set(args.seeds):
        p.error("--tune-seeds and --seeds must be disjoint: tuning on the final seeds would "
                "select options on the runs it then reports")
    if len(args.seeds) < 2:
        p.error("--seeds needs at least 2 seeds for a confidence interval")
    args.k_values = (5, 10, 25) if q else K_VALUES
    args.widths = (0.125, 0.25, 1.0) if q else WIDTHS
    args.suffix = "_quick" if q else ""
    db = args.store or (RESULTS / f"paired-runs{args.suffix}.db")
    RESULTS.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    chosen = {}
    if "tune" in args.stages:
        chosen = tune(args.settings, args, db)
    else:  # the trials recorded by an earlier run of the tuning stage
        import pandas as pd

        rec = pd.read_csv(RESULTS / f"tuning{args.suffix}.csv")
        for _, r in rec[rec.chosen].iterrows():
            chosen[(r.setting, r.method)] = json.loads(r.options)
    final_df = axes_df = None
    if "final" in args.stages:
        final_df = final(args.settings, chosen, args, db)
    elif "axes" in args.stages:  # the final runs recorded by an earlier run of the final stage
        final_df = recorded_final(args)
    if "axes" in args.stages:
        axes_df = axes(args.settings, chosen, final_df, args, db)
    if final_df is not None:
        md = report(final_df, axes_df, chosen, args, db, (time.perf_counter() - t0) / 60)
        print("\n" + md)
        (RESULTS / f"transfer_paired{args.suffix}.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
