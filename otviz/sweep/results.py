"""A sweep's results read from the run store: tables, the paired report, CSV files.

:func:`sweep_tables` gathers the sweep's runs into four tables (trials, final runs, axis
points, scratch's validation curves); :func:`sweep_report` writes the markdown report
(mean test accuracy with 95 % intervals per setting and point, the declared comparisons
as paired differences with paired t and Wilcoxon p-values, Holm-adjusted over the
family); :func:`export_tables` writes the CSV files ``bench_paired.py`` has always
written. Only the store is read; nothing is trained.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otviz.sweep.spec import KEYWORDS, SweepSpec

__all__ = ["SweepTables", "sweep_tables", "sweep_report", "export_tables", "comparisons", "best_so_far",
           "sweep_progress"]


@dataclass
class SweepTables:
    """The tables of one sweep (pandas DataFrames; accuracies as fractions).

    Attributes
    ----------
    trials
        One row per tuning trial: ``setting, method, trial, state`` (complete, pruned,
        fail, running), ``val_accuracy`` (mean final validation accuracy over the tuning
        seeds; complete trials only), ``seeds`` (runs recorded), ``epochs_run`` (the
        most epochs one of its runs trained: fewer when pruned), ``seconds`` (mean per
        run), ``options`` (JSON of the trial's values), ``chosen``.
    final
        One row per final run: ``setting, method, seed, val_accuracy, test_accuracy,
        seconds, run_id, status``, and for a method with an OT term ``ot_share_start``
        and ``ot_share_end``: ``loss/ot / loss/total`` averaged over its first and its
        last epoch's steps (NaN without an OT term).
    axes
        One row per run at a point of a setting's axis, the own point's final runs
        included: ``setting, axis, value, method, seed, val_accuracy, test_accuracy,
        seconds``.
    curves
        Scratch's validation accuracy per epoch over the final seeds: ``setting, epoch,
        seed, val_accuracy``.
    """

    spec: SweepSpec
    trials: Any
    final: Any
    axes: Any
    curves: Any


def _spec(store: Any, sweep: str | SweepSpec) -> SweepSpec:
    if isinstance(sweep, SweepSpec):
        return sweep
    specs = store.sweeps()
    if sweep not in specs:
        names = ", ".join(map(repr, specs)) or "none"
        raise ValueError(f"the store {store.path} has no sweep {sweep!r} (its sweeps: {names}); "
                         "run `otviz sweep run SPEC --store ...` first")
    return SweepSpec.from_dict(specs[sweep], source=f"the stored spec of {sweep!r}")


def sweep_tables(store: Any, sweep: str | SweepSpec) -> SweepTables:
    """Read the sweep ``sweep`` (its name, or its spec) from ``store`` (a RunStore or a path)."""
    import pandas as pd

    from otviz.runs import RunStore
    from otviz.sweep._driver import _is_pruned, sweep_runs

    store = store if isinstance(store, RunStore) else RunStore(store, readonly=True)
    spec = _spec(store, sweep)
    runs = sweep_runs(store, spec.name)
    ids = [int(r) for r in runs["run_id"]] if not runs.empty else []
    last = store.last_values(["val/accuracy", "test/accuracy"], run_ids=ids) if ids else pd.DataFrame()
    last = last.set_index("run_id") if not last.empty else last
    rows = []
    for r in runs.to_dict("records"):
        rid = int(r["run_id"])
        t = r["tags"]
        val = float(last.loc[rid, "val/accuracy"]) if rid in getattr(last, "index", ()) and "val/accuracy" in last else math.nan
        test = float(last.loc[rid, "test/accuracy"]) if rid in getattr(last, "index", ()) and "test/accuracy" in last else math.nan
        status = "pruned" if _is_pruned(r["status"], r["error"]) else r["status"]
        dur = r.get("duration")
        seconds = float(dur) if dur is not None and dur == dur else math.nan
        rows.append(dict(run_id=rid, stage=t.get("stage"), setting=t.get("setting"), method=t.get("method"),
                         trial=t.get("trial"), seed=t.get("seed"), point=t.get("point"), params=t.get("params"),
                         status=status, epoch=r.get("epoch"), val_accuracy=val, test_accuracy=test,
                         seconds=seconds, node=t.get("node")))
    df = pd.DataFrame(rows, columns=["run_id", "stage", "setting", "method", "trial", "seed", "point", "params",
                                     "status", "epoch", "val_accuracy", "test_accuracy", "seconds", "node"])
    # a name trained again after an interruption: keep the newest run of each
    df = df.sort_values("run_id", ascending=False)
    df["key"] = df.apply(lambda r: (r.stage, r.setting, r.method, r.trial, r.seed, json.dumps(r.point)), axis=1)
    df = df.drop_duplicates("key").drop(columns="key").sort_values("run_id").reset_index(drop=True)
    trials = _trials(spec, df)
    final = df[df.stage == "final"][["setting", "method", "seed", "val_accuracy", "test_accuracy", "seconds",
                                     "run_id", "status"]].reset_index(drop=True)
    final = final.astype({"seed": int}) if not final.empty else final
    start, end = _ot_shares(store, [int(r) for r in final.run_id]) if not final.empty else ({}, {})
    final["ot_share_start"] = [start.get(int(r), math.nan) for r in final.run_id]
    final["ot_share_end"] = [end.get(int(r), math.nan) for r in final.run_id]
    axes = _axes(spec, df, final)
    curves = _curves(store, final)
    return SweepTables(spec, trials, final, axes, curves)


def _ot_shares(store: Any, run_ids: list[int]) -> tuple[dict[int, float], dict[int, float]]:
    """Each run's OT share of the loss, ``loss/ot / loss/total`` averaged over the steps of its
    first epoch and of its last: is the OT term alive, and how much does it weigh? Runs
    without an OT term are left out."""
    start, end = {}, {}
    for rid in run_ids:
        m = store.metrics(rid, ["loss/ot", "loss/total"])
        if m.empty or "loss/ot" not in set(m.key):
            continue
        wide = m.pivot_table(index=["step", "epoch"], columns="key", values="value").reset_index()
        wide = wide[wide["loss/total"] != 0]
        if wide.empty:
            continue
        share = wide["loss/ot"] / wide["loss/total"]
        epochs = wide["epoch"]
        start[rid] = float(share[epochs == epochs.min()].mean())
        end[rid] = float(share[epochs == epochs.max()].mean())
    return start, end


def _trials(spec: SweepSpec, df: Any) -> Any:
    import pandas as pd

    tune = df[df.stage == "tune"]
    out = []
    for (setting, method, trial), g in tune.groupby(["setting", "method", "trial"], sort=False):
        st = spec.setting(setting)
        statuses = set(g.status)
        if "pruned" in statuses:
            state = "pruned"
        elif "failed" in statuses:
            state = "fail"
        elif statuses == {"completed"} and len(g) == len(st.tune_seeds):
            state = "complete"
        else:
            state = "running"
        space = spec.method_space(method)
        params = g.params.iloc[0] or {}
        options = {n: space[n].decode(v) for n, v in params.items() if n in space}
        out.append(dict(setting=setting, method=method, trial=int(trial), state=state,
                        val_accuracy=float(g.val_accuracy.mean()) if state == "complete" else math.nan,
                        seeds=len(g), epochs_run=int(np.nanmax(g.epoch.astype(float))) if g.epoch.notna().any() else 0,
                        seconds=float(g.seconds.mean()), options=json.dumps(options, sort_keys=True),
                        seed_ids=" ".join(str(int(s)) for s in g.seed)))
    t = pd.DataFrame(out, columns=["setting", "method", "trial", "state", "val_accuracy", "seeds", "epochs_run",
                                   "seconds", "options", "seed_ids"])
    t["chosen"] = False
    for _, g in t.groupby(["setting", "method"], sort=False):
        ok = g[g.state == "complete"]
        if len(ok):
            best = ok.sort_values(["val_accuracy", "trial"], ascending=[False, True]).index[0]
            t.loc[best, "chosen"] = True
    return t.sort_values(["setting", "method", "trial"], key=lambda c: c.map(_order(spec, c.name))).reset_index(drop=True)


def _order(spec: SweepSpec, column: str):
    settings = {s.name: i for i, s in enumerate(spec.settings)}
    methods = {m: i for s in spec.settings for i, m in enumerate(s.methods)}
    if column == "setting":
        return lambda v: settings.get(v, 99)
    if column == "method":
        return lambda v: methods.get(v, 99)
    return lambda v: v


def _own_value(spec: SweepSpec, setting: str, field: str) -> Any:
    from otviz.sweep._driver import own_value

    return own_value(spec, setting)


def _axes(spec: SweepSpec, df: Any, final: Any) -> Any:
    import pandas as pd

    cols = ["setting", "axis", "value", "method", "seed", "val_accuracy", "test_accuracy", "seconds"]
    out = []
    for st in spec.settings:
        if st.axis is None:
            continue
        sub = df[(df.stage == "axes") & (df.setting == st.name)]
        if sub.empty:
            continue
        for r in sub.to_dict("records"):
            out.append(dict(setting=st.name, axis=st.axis.field, value=r["point"]["value"], method=r["method"],
                            seed=int(r["seed"]), val_accuracy=r["val_accuracy"], test_accuracy=r["test_accuracy"],
                            seconds=r["seconds"]))
        own = _own_value(spec, st.name, st.axis.field)
        methods = set(sub.method)
        for r in final[(final.setting == st.name) & final.method.isin(methods)].to_dict("records"):
            out.append(dict(setting=st.name, axis=st.axis.field, value=own, method=r["method"], seed=int(r["seed"]),
                            val_accuracy=r["val_accuracy"], test_accuracy=r["test_accuracy"], seconds=r["seconds"]))
    a = pd.DataFrame(out, columns=cols)
    return a.sort_values(["setting", "axis", "value", "method", "seed"]).reset_index(drop=True) if len(a) else a


def _curves(store: Any, final: Any) -> Any:
    import pandas as pd

    rows = []
    for r in final[(final.method == "scratch") & (final.status == "completed")].to_dict("records"):
        m = store.metrics(int(r["run_id"]), "val/accuracy").sort_values("step")
        rows += [dict(setting=r["setting"], epoch=int(e), seed=int(r["seed"]), val_accuracy=float(v))
                 for e, v in zip(m["epoch"], m["value"])]
    return pd.DataFrame(rows, columns=["setting", "epoch", "seed", "val_accuracy"])


def sweep_progress(store: Any, name: str) -> dict[str, Any]:
    """Where the sweep ``name`` stands, from its runs' rows alone (no metric is read).

    Cheap enough for every rerun of a live view, and its ``state`` tells when the tables
    of :func:`sweep_tables` must be read again.

    Parameters
    ----------
    store : RunStore or path
    name : str
        The sweep's name (its runs need not exist yet).

    Returns
    -------
    dict
        ``runs``: ``{stage: runs recorded}`` (a name trained again counts once),
        ``finished``: ``{stage: runs completed, failed or pruned}``, ``running``: runs
        still running, and ``state``: a tuple that changes whenever a run of the sweep is
        created, logs a step, beats or ends (its count, largest run id, step total, latest
        heartbeat and end, statuses): a cache key.
    """
    from otviz.runs import RunStore
    from otviz.sweep._driver import _finished, sweep_runs

    store = store if isinstance(store, RunStore) else RunStore(store, readonly=True)
    runs = sweep_runs(store, name)
    stages = ("tune", "final", "axes")
    if runs.empty:
        return {"runs": dict.fromkeys(stages, 0), "finished": dict.fromkeys(stages, 0), "running": 0,
                "state": (0,)}
    runs = runs.assign(stage=[t.get("stage") for t in runs["tags"]]).sort_values("run_id")
    newest = runs.drop_duplicates("name", keep="last")
    done = np.array([_finished(s, e) for s, e in zip(newest["status"], newest["error"])], dtype=bool)
    latest = [str(runs[c].max()) if runs[c].notna().any() else "" for c in ("heartbeat_at", "ended_at")]
    state = (len(runs), int(runs["run_id"].max()), int(runs["step"].fillna(0).sum()), *latest,
             tuple(sorted(runs["status"].value_counts().items())))
    return {"runs": {s: int((newest["stage"] == s).sum()) for s in stages},
            "finished": {s: int(((newest["stage"] == s) & done).sum()) for s in stages},
            "running": int((newest["status"] == "running").sum()), "state": state}


# ----------------------------------------------------------------------------- statistics
def resolve(spec: SweepSpec, final: Any, setting: str, name: str) -> str | None:
    """The method a comparison's or an axis' name stands for in ``setting``: itself, or for
    ``best_baseline`` / ``best_ours`` the method of that group (``spec.ours`` or not) with the
    highest mean validation accuracy over its completed final runs (None when none has one)."""
    if name not in KEYWORDS:
        return name if name in spec.setting(setting).methods else None
    sub = final[(final.setting == setting) & (final.status == "completed")]
    pool = [m for m in spec.setting(setting).methods if (m in spec.ours) == (name == "best_ours")]
    means = sub[sub.method.isin(pool)].groupby("method").val_accuracy.mean().dropna()
    return None if means.empty else str(means.idxmax())


def comparisons(tables: SweepTables, confidence: float = 0.95) -> Any:
    """The declared comparisons at every setting and point where both methods ran.

    One row per (setting, point, comparison): ``setting, axis, value`` (None for the
    setting's own point), ``comparison`` (as declared), ``a, b`` (the methods, keywords
    resolved on the final runs' validation accuracy), ``n`` (paired seeds), ``mean, low,
    high`` (difference of test accuracy, fractions), ``p_ttest, p_wilcoxon`` and
    ``p_holm`` (the paired t p-values adjusted by :func:`otviz.stats.holm` over every
    row: the declared family).
    """
    import pandas as pd

    from otviz.stats import holm, paired_difference

    spec, final, axes = tables.spec, tables.final, tables.axes
    rows = []
    for st in spec.settings:
        points: list[tuple[Any, Any, Any]] = [(None, None, final[(final.setting == st.name) & (final.status == "completed")])]
        if st.axis is not None and len(axes):
            sub = axes[axes.setting == st.name]
            own = _own_value(spec, st.name, st.axis.field)
            points += [(st.axis.field, v, g) for v, g in sub.groupby("value") if v != own]
        for a_name, b_name in spec.comparisons:
            a, b = resolve(spec, final, st.name, a_name), resolve(spec, final, st.name, b_name)
            if a is None or b is None or a == b:
                continue
            for axis, value, g in points:
                ga = g[(g.method == a) & g.test_accuracy.notna()]
                gb = g[(g.method == b) & g.test_accuracy.notna()]
                common = set(ga.seed) & set(gb.seed)
                if len(common) < 2:
                    continue
                d = paired_difference(dict(zip(ga.seed, ga.test_accuracy)), dict(zip(gb.seed, gb.test_accuracy)),
                                      confidence=confidence)
                rows.append(dict(setting=st.name, axis=axis, value=value, comparison=f"{a_name} - {b_name}",
                                 a=a, b=b, n=d.n, mean=d.mean, low=d.low, high=d.high, p_ttest=d.p_ttest,
                                 p_wilcoxon=d.p_wilcoxon))
    out = pd.DataFrame(rows, columns=["setting", "axis", "value", "comparison", "a", "b", "n", "mean", "low", "high",
                                      "p_ttest", "p_wilcoxon"])
    out["p_holm"] = holm(out.p_ttest.to_numpy()) if len(out) else []
    return out


def best_so_far(trials: Any) -> Any:
    """Best validation accuracy so far against the trial count, per (setting, method).

    Trials are counted in their order (trial numbers); a pruned or failed trial counts
    and keeps the best so far, a running one is not counted yet. Columns ``setting,
    method, trials, best_val_accuracy``.
    """
    import pandas as pd

    rows = []
    if "state" in trials.columns:
        trials = trials[trials["state"] != "running"]
    for (s, m), g in trials.groupby(["setting", "method"], sort=False):
        best = math.nan
        for i, v in enumerate(g.sort_values("trial").val_accuracy, 1):
            if v == v and not (best == best and best >= v):
                best = float(v)
            rows.append(dict(setting=s, method=m, trials=i, best_val_accuracy=best))
    return pd.DataFrame(rows, columns=["setting", "method", "trials", "best_val_accuracy"])


# ----------------------------------------------------------------------------- report
def _pct(x: float) -> str:
    return f"{100 * x:.1f}" if x == x else "-"


def sweep_report(store: Any, sweep: str | SweepSpec, *, confidence: float = 0.95) -> str:
    """The sweep's markdown report (see the module's documentation)."""
    from otviz.stats import mean_ci

    t = sweep_tables(store, sweep)
    spec, final = t.spec, t.final
    level = f"{100 * confidence:g} %"
    counts = t.trials.groupby("state").size().to_dict() if len(t.trials) else {}
    lines = [f"# Sweep `{spec.name}`", "",
             f"Options chosen per (setting, method) among its Optuna trials (TPE, seed {spec.search['seed']}; "
             f"pruner: {spec.search['pruner']}) on the mean validation accuracy of the tuning seeds; test accuracy "
             f"computed once per run, never used to choose. Final runs on {len(spec.seeds)} paired seeds "
             f"({', '.join(map(str, spec.seeds))}). Test accuracy in %, mean and {level} confidence interval "
             f"(Student t). Trials: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none") + ".", ""]
    lines += ["| setting | method | test accuracy, mean [CI] | validation accuracy | runs | trials (complete / "
              "pruned / failed) | OT share of the loss, first -> last epoch | chosen options |",
              "|---|---|---|---|---|---|---|---|"]
    for st in spec.settings:
        for m in st.methods:
            g = final[(final.setting == st.name) & (final.method == m) & final.test_accuracy.notna()]
            tr = t.trials[(t.trials.setting == st.name) & (t.trials.method == m)]
            chosen = tr[tr.chosen]
            opts = ", ".join(f"{k}={v}" for k, v in json.loads(chosen.options.iloc[0]).items()) if len(chosen) else "-"
            n = {s: int((tr.state == s).sum()) for s in ("complete", "pruned", "fail")}
            if len(g) >= 2:
                mean, lo, hi = mean_ci(g.test_accuracy.to_numpy(), confidence)
                acc = f"{_pct(mean)} [{_pct(lo)}, {_pct(hi)}]"
            else:
                acc = _pct(g.test_accuracy.mean()) if len(g) else "-"
            share = "-"
            if len(g) and g.ot_share_start.notna().any():
                share = f"{_pct(g.ot_share_start.mean())} % -> {_pct(g.ot_share_end.mean())} %"
            lines.append(f"| {st.name} | {m} | {acc} | {_pct(g.val_accuracy.mean()) if len(g) else '-'} | {len(g)} | "
                         f"{n['complete']} / {n['pruned']} / {n['fail']} | {share} | {opts} |")
    comp = comparisons(t, confidence)
    lines += ["", "## Declared comparisons (test accuracy, percentage points)", "",
              f"Each row pairs the two methods' runs seed by seed. `best_baseline` / `best_ours` are resolved per "
              f"setting on the final runs' mean validation accuracy. Holm's adjustment runs over the {len(comp)} "
              "rows below (the declared family), on the paired t-test's p-values.", ""]
    if comp.empty:
        lines.append("No comparison can be made yet (each needs two methods with at least 2 paired seeds).")
    else:
        lines += ["| setting | point | comparison | methods | n | mean difference [CI] | paired t p | Wilcoxon p | "
                  "Holm p | verdict (Holm p < 0.05) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in comp.to_dict("records"):
            own = r["axis"] is None or r["axis"] != r["axis"]
            point = "own" if own else (f"{r['axis']}={r['value']:g}" if isinstance(r["value"], (int, float))
                                       else f"{r['axis']}={r['value']}")
            verdict = ("above" if r["mean"] > 0 else "below") if r["p_holm"] < 0.05 else "no difference shown"
            lines.append(f"| {r['setting']} | {point} | {r['comparison']} | {r['a']} - {r['b']} | {r['n']} | "
                         f"{100 * r['mean']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] | {r['p_ttest']:.3g} | "
                         f"{r['p_wilcoxon']:.3g} | {r['p_holm']:.3g} | {verdict} |")
    if len(t.axes):
        lines += ["", f"## Along each axis (test accuracy %, mean [{level} CI])", ""]
        for (s, axis), g in t.axes.groupby(["setting", "axis"], sort=False):
            methods = list(dict.fromkeys(g.method))
            lines += [f"**{s}**, by {axis}:", "", f"| {axis} | " + " | ".join(methods) + " |",
                      "|---|" + "---|" * len(methods)]
            for v, gv in g.groupby("value"):
                cells = []
                for m in methods:
                    acc = gv[(gv.method == m)].test_accuracy.dropna().to_numpy()
                    if len(acc) >= 2:
                        mean, lo, hi = mean_ci(acc, confidence)
                        cells.append(f"{_pct(mean)} [{_pct(lo)}, {_pct(hi)}]")
                    else:
                        cells.append("-")
                lines.append(f"| {v:g} | " + " | ".join(cells) + " |")
            lines.append("")
    if len(t.trials):
        lines += ["", "## Is the search still improving? Best validation accuracy so far, by trial", ""]
        bsf = best_so_far(t.trials)
        for (s, m), g in bsf.groupby(["setting", "method"], sort=False):
            vals = g.best_val_accuracy.to_numpy()
            half = vals[len(vals) // 2 - 1] if len(vals) >= 2 else math.nan
            gain = vals[-1] - half if vals[-1] == vals[-1] and half == half else math.nan
            lines.append(f"- {s}/{m}: " + ", ".join(_pct(v) for v in vals)
                         + (f" (second half of the trials: {100 * gain:+.1f} pp)" if gain == gain else ""))
    if len(t.curves):
        lines += ["", "## Is the budget long enough? Scratch's validation accuracy per epoch", "",
                  "Mean over the final seeds, in %, from epoch 0 (the initialisation) to the last.", ""]
        for s, g in t.curves.groupby("setting", sort=False):
            per = g.groupby("epoch").val_accuracy
            mean = per.mean()[per.count() == g.seed.nunique()].to_numpy()
            third = max(1, (len(mean) - 1) // 3)
            lines.append(f"- {s}: " + ", ".join(_pct(v) for v in mean)
                         + f" (last third: {100 * (mean[-1] - mean[-1 - third]):+.1f} pp)")
    return "\n".join(lines) + "\n"


def export_tables(store: Any, sweep: str | SweepSpec, directory: str | Path, *, suffix: str = "") -> dict[str, Path]:
    """Write the sweep's tables as CSV files and its report as markdown in ``directory``.

    Files: ``tuning{suffix}.csv``, ``transfer_paired{suffix}.csv``,
    ``transfer_axes{suffix}.csv``, ``transfer_scratch_curves{suffix}.csv``,
    ``comparisons{suffix}.csv`` and ``transfer_paired{suffix}.md``. Returns their paths.
    """
    t = sweep_tables(store, sweep)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"tuning": out / f"tuning{suffix}.csv", "final": out / f"transfer_paired{suffix}.csv",
             "axes": out / f"transfer_axes{suffix}.csv", "curves": out / f"transfer_scratch_curves{suffix}.csv",
             "comparisons": out / f"comparisons{suffix}.csv", "report": out / f"transfer_paired{suffix}.md"}
    t.trials.to_csv(paths["tuning"], index=False)
    t.final.drop(columns=["run_id"]).to_csv(paths["final"], index=False)
    t.axes.to_csv(paths["axes"], index=False)
    t.curves.to_csv(paths["curves"], index=False)
    comparisons(t).to_csv(paths["comparisons"], index=False)
    paths["report"].write_text(sweep_report(store, t.spec))
    return paths
