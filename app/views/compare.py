"""Compare: the runs of the store side by side, the store's sweeps, the benchmark tables, CSV export."""

import pandas as pd
import streamlit as st

import json

import dashkit as dk
import runcharts as rc
from otviz import figures
from otviz.runs import RunStoreError

st.title("Compare")
st.caption("Every run of the store: filter them, overlay their test (or validation) accuracy, export "
           "them as CSV.")


@st.cache_resource(show_spinner=False, max_entries=16)
def overlay_figure(path: str, chosen: tuple, names: tuple, state: tuple, options: str, acc_key: str,
                   *, _configs: dict, _opts: dict):
    """The overlaid accuracy curves of the runs ``chosen`` (legend ``names``), kept by the server
    for this ``state`` of the runs (status, step, heartbeat, end) and these ``options``."""
    from otviz.runs import RunStore

    store = RunStore(path)
    try:
        curves = {name: store.metrics(r, [acc_key]) for r, name in zip(chosen, names)}
    finally:
        store.close()
    chance = {name: figures.chance_level(_configs.get(r)) for r, name in zip(chosen, names)}
    title = "Validation accuracy" if acc_key == "val/accuracy" else "Test accuracy"
    return figures.accuracy_curves(curves, key=acc_key, title=title, chance=chance, **_opts)


def runs_section() -> None:
    store, runs = dk.store_runs("No runs yet: start one on the Train page (one click runs the demo).")
    if runs is None:
        return
    f1, f2, f3 = st.columns(3)
    settings = f1.multiselect("Setting", sorted(runs["setting"].dropna().unique()), key="cmp_setting")
    methods = f2.multiselect("Method", sorted(runs["method"].dropna().unique()), key="cmp_method")
    statuses = f3.multiselect("Status", sorted(runs["status"].dropna().unique()), key="cmp_status")
    view = runs
    if settings:
        view = view[view["setting"].isin(settings)]
    if methods:
        view = view[view["method"].isin(methods)]
    if statuses:
        view = view[view["status"].isin(statuses)]
    view = view.sort_values("run_id", ascending=False)
    try:
        finals = dk.final_metrics(store, runs)  # one grouped query, remembered for finished runs
    except (RunStoreError, OSError) as exc:
        dk.show_error(exc, "Could not read the runs' metrics")
        return
    table = view.merge(finals, on="run_id", how="left")
    for key in ("test/accuracy", "val/accuracy", "train/accuracy"):
        table[key] = table[key] * 100
    score_cols = [c for c in table.columns if c.startswith("score/")]
    table = table.drop(columns=[c for c in score_cols if table[c].isna().all()])  # pairs of other runs
    score_cols = [c for c in score_cols if c in table.columns]
    if table["val/accuracy"].isna().all():  # no run holds out a validation part
        table = table.drop(columns=["val/accuracy"])
    cols = (["run_id", "name", "setting", "method", "status", "test/accuracy", "val/accuracy",
             "train/accuracy"]
            + score_cols + ["epoch", "config.lam", "config.epochs", "config.k", "config.seed",
                            "duration", "created_at"])
    table = table[[c for c in cols if c in table.columns]]
    score_help = ("OT score of the teacher's and the student's layer at the last epoch, on a fixed "
                  "probe batch: 0 = the same layer up to permutation and scale, ~1 = unrelated. "
                  "Empty: the run does not pair these layers, or predates the score.")
    table["status"] = table["status"].map(rc.status_text)
    st.dataframe(table, hide_index=True, key="cmp_table", column_config={
        **{c: st.column_config.NumberColumn(
            "OT score " + c[len("score/"):].replace("features.", ""), format="%.3f",
            help=score_help) for c in score_cols},
        "test/accuracy": st.column_config.NumberColumn(
            "test acc", format="%.1f %%",
            help="Accuracy of the run's last model on the test set (a run with a validation "
                 "part evaluates it once, at its end)."),
        "val/accuracy": st.column_config.NumberColumn(
            "val acc", format="%.1f %%",
            help="Accuracy of the run's last model on its validation part, carved from the "
                 "training split (config val_size); empty without one."),
        "train/accuracy": st.column_config.NumberColumn("train acc", format="%.1f %%"),
        "duration": st.column_config.NumberColumn("seconds", format="%.0f"),
        "config.lam": st.column_config.NumberColumn("λ"),
        "config.epochs": "epochs", "config.k": "k", "config.seed": "seed", "created_at": "created",
    })
    st.caption(f"{len(view)} of {len(runs)} runs.")

    label_cols = ["run_id", "name", "setting", "method", "status", "created_at"]
    records = view[label_cols].to_dict("records")
    labels = {int(r["run_id"]): dk.run_label(r) for r in records}
    # keyed on the labels (they carry the status): a status change draws a fresh multiselect
    # that keeps the runs chosen so far
    kept = [r for r in st.session_state.get("cmp_chosen_ids", list(labels)[:6]) if r in labels]
    chosen = st.multiselect("Runs to overlay", list(labels), default=kept, format_func=labels.get,
                            key="cmp_chosen_" + rc.labels_signature(labels))
    st.session_state["cmp_chosen_ids"] = list(chosen)
    if chosen:
        short = {}  # legend names: mark, id, setting/method and the start of the name
        for r in view.loc[view["run_id"].isin(chosen), label_cols].to_dict("records"):
            name = str(r["name"] or "")
            name = f" - {name[:24]}{'…' if len(name) > 24 else ''}" if name else ""
            short[int(r["run_id"])] = (f"{rc.status_text(r['status']).split()[0]} #{int(r['run_id'])} "
                                       f"{dk.run_kind(r)}{name}")
        opts = rc.curve_controls("cmp", x_default="epoch", smoothing=False, log=False)
        picked = view[view["run_id"].isin(chosen)]
        configs = {int(r): json.loads(c) for r, c in zip(picked["run_id"], picked["config"])}
        # runs with a validation part evaluate the test set once, at the end: their curve is
        # the validation accuracy
        acc_key = "test/accuracy"
        if any((configs.get(r) or {}).get("val_size") is not None for r in chosen):
            acc_key = st.segmented_control(
                "Accuracy", ["test/accuracy", "val/accuracy"], default="val/accuracy", required=True,
                format_func={"test/accuracy": "test", "val/accuracy": "validation"}.get,
                key="cmp_acc_key",
                help="Runs with a validation part log its accuracy every epoch and the test "
                     "accuracy once, at their last step.") or "val/accuracy"
        # the figure is built again only when its runs, their state or the options change
        # (a filter click, a second visit or another viewer takes it from the server's cache)
        state = tuple(picked[["run_id", "status", "step", "heartbeat_at", "ended_at"]]
                      .astype(str).itertuples(index=False, name=None))
        try:
            fig = overlay_figure(str(store.path), tuple(chosen), tuple(short[r] for r in chosen),
                                 state, repr(sorted(opts.items())), acc_key, _configs=configs,
                                 _opts=opts)
        except (RunStoreError, OSError) as exc:
            dk.show_error(exc, "Could not read the metrics")
        else:
            dk.chart(fig, key="cmp_curves", legend_below=True)

    st.subheader("Export")
    ids = [int(r) for r in view["run_id"]]
    buttons = st.container(horizontal=True)
    # the files are built when a button is clicked (every metric row of the runs shown: tens
    # of MB on a large store), never at a render
    buttons.download_button("runs.csv", dk.export_csv_callable(store.path, ids, "runs"),
                            file_name="otviz-runs.csv", mime="text/csv",
                            icon=":material/download:", key="cmp_dl_runs",
                            help="The runs shown in the table, with their configuration.")
    buttons.download_button("metrics.csv", dk.export_csv_callable(store.path, ids, "metrics"),
                            file_name="otviz-metrics.csv", mime="text/csv",
                            icon=":material/download:", key="cmp_dl_metrics",
                            help="Every logged metric of the runs shown, long format "
                                 "(one row per run, step and metric; built when clicked).")

    with st.expander("Delete a run"):
        status = dict(zip(view["run_id"].astype(int), view["status"]))
        finished = [r for r in labels if status[r] != "running"]
        if not finished:
            st.caption("Only finished runs can be deleted.")
        else:
            victim = st.selectbox("Run", finished, format_func=labels.get, key="cmp_delete")
            sure = st.checkbox("Yes, delete it with its metrics and plans", key="cmp_delete_sure")
            if st.button("Delete", disabled=not sure, key="cmp_delete_btn"):
                try:
                    store.delete_run(int(victim))
                except (RunStoreError, OSError, ValueError) as exc:
                    dk.show_error(exc, "Could not delete the run")
                else:
                    st.toast(f"Deleted run {victim}.")
                    st.rerun()


# ----------------------------------------------------------------------------- sweeps
STAGE_NAMES = {"tune": "tuning", "final": "final", "axes": "axes"}


@st.cache_resource(show_spinner=False, max_entries=8)
def sweep_data(path: str, name: str, state: tuple, spec_text: str) -> dict:
    """A sweep's tables, comparisons, search progress and report (:mod:`otviz.sweep.results`),
    read once per server for each ``state`` of its runs (:func:`otviz.sweep.results.sweep_progress`)
    and spec, and shared read-only by every session."""
    from otviz.sweep.results import best_so_far, comparisons, sweep_report, sweep_tables

    tables = sweep_tables(path, name)
    return {"tables": tables, "comparisons": comparisons(tables), "best": best_so_far(tables.trials),
            "report": sweep_report(path, tables.spec)}


@st.cache_resource(show_spinner=False, max_entries=32)
def sweep_figures(path: str, name: str, state: tuple, spec_text: str, setting: str,
                  _data: dict) -> list[tuple[str, object]]:
    """One setting's figures of a sweep: the search, then (once final runs exist) each method's
    interval, the paired gains of each of ``ours`` and the axis; a caption where one cannot be
    drawn yet. Kept like :func:`sweep_data`."""
    tables = _data["tables"]
    out: list[tuple[str, object]] = []
    best = _data["best"]
    if setting in set(best["setting"]):
        out.append(("sp", figures.search_progress(best, setting)))
    else:
        out.append(("note", "The search's progress appears here once a tuning trial has finished."))
    final = tables.final
    final = final[(final["setting"] == setting) & (final["status"] == "completed")
                  & final["test_accuracy"].notna()]
    if final.empty:
        out.append(("note", "The final runs' figures appear here once the first final run has finished."))
        return out
    out.append(("pi", figures.method_intervals(final, setting)))
    seeds = {m: set(g["seed"]) for m, g in final.groupby("method")}
    waiting = [m for m in tables.spec.setting(setting).methods if m not in seeds]
    if waiting:
        out.append(("note", "No finished final run yet: " + ", ".join(map(dk.md_escape, waiting)) + "."))
    for m in [m for m in tables.spec.ours if m in tables.spec.setting(setting).methods]:
        # the baselines with two seeds in common with m so far (a running sweep fills the rest)
        paired = [b for b in seeds if b not in (*tables.spec.ours, m) and len(seeds[b] & seeds.get(m, set())) >= 2]
        if paired:
            out.append((f"pg_{m}", figures.paired_gains(final[final["method"].isin([m, *paired])], setting,
                                                        ours=m)))
        else:
            out.append(("note", f"The paired gains of {dk.md_escape(m)} appear once it and a baseline "
                                "share two finished final seeds."))
    axes = tables.axes
    if len(axes) and (axes.loc[axes["setting"] == setting, "test_accuracy"].notna()).any():
        out.append(("ax", figures.axis_curves(axes, setting)))
    return out


def _point(row: dict) -> str:
    axis, value = row["axis"], row["value"]
    if axis is None or axis != axis:
        return "own"
    return f"{axis}={value:g}" if isinstance(value, (int, float)) else f"{axis}={value}"


def sweep_view(path: str, names: list[str], specs: dict) -> None:
    """The chosen sweep, one setting at a time (a fragment: it reruns alone while the sweep runs)."""
    from otviz.sweep.results import sweep_progress

    name = names[0] if len(names) == 1 else st.selectbox(
        "Sweep", names, index=len(names) - 1, key="cmp_sweep",
        help="The sweeps recorded in the run store, oldest first.")
    spec_text = json.dumps(specs[name], sort_keys=True)
    try:
        progress = sweep_progress(path, name)
        data = sweep_data(path, name, progress["state"], spec_text)
    except (RunStoreError, OSError, ValueError, KeyError) as exc:
        dk.show_error(exc, f"Could not read the sweep {dk.md_escape(name)}")
        return
    tables = data["tables"]
    spec = tables.spec
    planned = spec.run_counts()
    done = ", ".join(f"{STAGE_NAMES[s]} {progress['finished'][s]} of {'at most ' if s == 'tune' else ''}"
                     f"{planned[s]}" for s in ("tune", "final", "axes") if planned[s])
    live = f"; {progress['running']} running (this view follows them)" if progress["running"] else ""
    st.caption(f"Sweep **{dk.md_escape(name)}**: every method tuned by Optuna with the same number of trials "
               f"on the mean validation accuracy of its tuning seeds, then trained on "
               f"{len(spec.seeds)} paired seeds. Runs finished: {done}{live}.")
    settings = [s.name for s in spec.settings]
    setting = st.segmented_control("Setting shown", settings, default=settings[0], required=True,
                                   key=f"cmp_sweep_setting_{name}") or settings[0]
    if setting not in settings:  # the spec changed under a kept choice
        setting = settings[0]
    trials = tables.trials[tables.trials["setting"] == setting]
    per_method = []
    for m in spec.setting(setting).methods:
        counts = trials.loc[trials["method"] == m, "state"].value_counts()
        words = [f"{counts[s]} {s if s != 'fail' else 'failed'}" for s in ("complete", "pruned", "fail", "running")
                 if counts.get(s, 0)]
        per_method.append(f"{dk.md_escape(m)} {', '.join(words) or 'none yet'}"
                          f" (of {spec.setting(setting).trials[m]})")
    st.caption("Trials per method: " + "; ".join(per_method) + ". A pruned trial was stopped early by the "
               "pruner, its validation accuracy behind the other trials' at the same epoch.")
    try:
        shown = sweep_figures(path, name, progress["state"], spec_text, setting, data)
    except (ValueError, KeyError) as exc:
        dk.show_error(exc, "Could not draw the sweep")
        shown = []
    for key, item in shown:
        if isinstance(item, str):
            st.caption(item)
        else:
            dk.chart(item, key=f"cmp_sweep_{key}_{setting}")
    comp = data["comparisons"]
    comp = comp[comp["setting"] == setting]
    st.markdown("**Declared comparisons** (test accuracy, paired by seed)")
    if comp.empty:
        st.caption("None yet: a comparison needs both of its methods finished on at least 2 common final seeds.")
    else:
        records = comp.to_dict("records")
        table = pd.DataFrame({
            "point": [_point(r) for r in records],
            "comparison": [r["comparison"] if r["comparison"] == f"{r['a']} - {r['b']}"
                           else f"{r['comparison']}: {r['a']} - {r['b']}" for r in records],
            "n": comp["n"], "mean": 100 * comp["mean"],
            "ci": [f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]" for r in records],
            "p_ttest": comp["p_ttest"], "p_wilcoxon": comp["p_wilcoxon"], "p_holm": comp["p_holm"],
            "verdict": [("above" if r["mean"] > 0 else "below") if r["p_holm"] < 0.05 else "no difference shown"
                        for r in records]})
        st.dataframe(table, hide_index=True, key=f"cmp_sweep_comparisons_{setting}", column_config={
            "point": st.column_config.TextColumn(help="own: the setting's final runs; field=value: a point of "
                                                      "its axis."),
            "comparison": st.column_config.TextColumn(help="As declared in the spec, then the two methods "
                                                           "when a keyword (best_baseline, best_ours) was "
                                                           "resolved, on the final runs' validation accuracy."),
            "n": st.column_config.NumberColumn("seeds", help="Seeds both methods finished: the pairs."),
            "mean": st.column_config.NumberColumn("difference", format="%+.1f pp",
                                                  help="Mean of the paired differences in test accuracy, "
                                                       "percentage points."),
            "ci": st.column_config.TextColumn("95 % CI (pp)", help="Student t interval of the mean difference."),
            "p_ttest": st.column_config.NumberColumn("paired t p", format="%.3g"),
            "p_wilcoxon": st.column_config.NumberColumn("Wilcoxon p", format="%.3g",
                                                        help="Cannot go below 2/2^n: 0.25 for 3 seeds."),
            "p_holm": st.column_config.NumberColumn("Holm p", format="%.3g",
                                                    help="The paired t p-value adjusted by Holm over every "
                                                         "declared comparison of the sweep (all settings "
                                                         "and points)."),
            "verdict": st.column_config.TextColumn("Holm p < 0.05", help="above / below: the sign of the "
                                                   "difference where Holm p < 0.05."),
        })
    with st.expander("The sweep's report (every setting: tables, p-values, chosen options)"):
        st.markdown(data["report"])


def sweeps_section() -> None:
    """The sweeps recorded in the store (``otviz sweep run``), live while one runs."""
    store = dk.open_store(quiet=True)  # runs_section has said why when it cannot be opened
    if store is None:
        return
    specs = dk.read_store(store, "the sweeps", store.sweeps)
    if not specs:
        return
    st.subheader("Sweeps: tuned on validation, paired seeds")
    path = str(store.path)
    names = list(specs)
    try:
        from otviz.sweep.results import sweep_progress

        live = any(sweep_progress(path, n)["running"] for n in names)
    except (RunStoreError, OSError, ValueError) as exc:
        dk.show_error(exc, "Could not read the sweeps' runs")
        return
    st.fragment(sweep_view, run_every=5.0 if live else None)(path, names, specs)


BENCHMARK_TABS = {"transfer": "Seeds 0-2 (options tuned on them)", "transfer_heldout": "Held-out seeds 3-5"}


def benchmark_table(files: dict, key: str) -> None:
    if "md" in files:
        st.markdown(files["md"].read_text(encoding="utf-8", errors="replace"))
    if "csv" in files:
        try:
            per_run = pd.read_csv(files["csv"])
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            dk.show_error(exc, f"Could not read {files['csv']}")
            return
        with st.expander(f"Every run ({len(per_run)} rows)", expanded="md" not in files):
            st.dataframe(per_run, hide_index=True, key=f"cmp_bench_{key}")
    st.caption("From " + ", ".join(f"`{dk.shown_path(p)}`" for p in files.values()))


def benchmark_section() -> None:
    st.subheader("Earlier benchmark: the recipes on 3 seeds")
    results = dk.benchmark_files()
    if not results:
        st.info("No benchmark results yet. They appear here once the transfer benchmark "
                "(`benchmarks/bench_transfer.py`) has written `benchmarks/results/transfer.md` "
                "and `transfer.csv`.")
        return
    st.caption("Final test accuracy (%) of every method with its recipe under one small budget per "
               "setting, options chosen on the test accuracy of seeds 0-2 and measured before seeds "
               "were paired: superseded by the paired benchmark above, kept as the record of how the "
               "recipes were chosen (`benchmarks/README.md`).")
    tabs = st.tabs([BENCHMARK_TABS.get(k, k) for k in results])
    for tab, (key, files) in zip(tabs, results.items()):
        with tab:
            benchmark_table(files, key)


def file_state(path) -> tuple[str, int, int]:
    """``(path, mtime in ns, size)``: the key under which a file's figures are remembered."""
    st_ = path.stat()
    return str(path), st_.st_mtime_ns, st_.st_size


@st.cache_resource(show_spinner=False, max_entries=32)
def paired_figures(sources: tuple, setting: str, _final: pd.DataFrame,
                   _axes: pd.DataFrame | None) -> list[tuple[str, object]]:
    """The paired benchmark's figures of one setting: intervals, paired gains, axes.

    Built once per server for each state of the result files (``sources``: :func:`file_state`
    of each) and kept: every later visit draws them without building them. The figures are
    shared by every session and never modified.
    """
    out = [("pi", figures.method_intervals(_final, setting))]
    for m in [m for m in ("ot", "kd+ot") if m in set(_final.loc[_final.setting == setting, "method"])]:
        out.append((f"pg_{m}", figures.paired_gains(_final, setting, ours=m)))
    if _axes is not None and setting in set(_axes["setting"]):
        out.append(("ax", figures.axis_curves(_axes, setting)))
    return out


@st.cache_resource(show_spinner=False, max_entries=4)
def budget_figure(source: tuple, _budget: pd.DataFrame):
    """Scratch's validation curves (:func:`otviz.figures.budget_curves`), kept per file state."""
    return figures.budget_curves(_budget)


def paired_section() -> None:
    """The paired benchmark: per setting, each method's interval, OT's paired gains, the axes."""
    files = dk.paired_files()
    st.subheader("Benchmark: paired seeds, validation-only tuning")
    if "final" not in files:
        st.info("No paired benchmark results yet. `python benchmarks/bench_paired.py` writes "
                "`benchmarks/results/transfer_paired.csv` (one row per final run) and "
                "`transfer_axes.csv`; this section draws them.")
        return
    try:
        final = pd.read_csv(files["final"])
        axes = pd.read_csv(files["axes"]) if "axes" in files else None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        dk.show_error(exc, "Could not read the benchmark's tables")
        return
    needed = {"setting", "method", "seed", "test_accuracy"}
    if not needed <= set(final.columns):
        st.error(f"`{dk.shown_path(files['final'])}` lacks the columns {sorted(needed - set(final.columns))}.")
        return
    final = final.dropna(subset=["test_accuracy"])  # a diverged run has no accuracy (the figures skip it too)
    seeds = final.groupby(["setting", "method"])["seed"].nunique()
    n_seeds = str(seeds.min()) if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    st.caption(f"Every method tuned on validation accuracy with the same number of trials, then "
               f"{n_seeds} paired seeds per method (a seed gives every method the "
               f"same split, labelled images, initialisation and batch order). Intervals are 95 % "
               f"confidence intervals over seeds; differences are paired by seed.")
    settings = list(dict.fromkeys(final["setting"]))
    # one setting's figures at a time: a visit builds (or takes from the server's cache) only
    # the figures of the setting shown, never those of hidden tabs
    setting = st.segmented_control("Setting shown", settings, default=settings[0], required=True,
                                   key="cmp_paired_setting") or settings[0]
    if setting not in settings:  # the results changed under a kept choice
        setting = settings[0]
    sources = tuple(file_state(files[k]) for k in ("final", "axes") if k in files)
    for key, fig in paired_figures(sources, setting, final, axes):
        dk.chart(fig, key=f"cmp_{key}_{setting}")
    if "budget" in files:
        try:
            budget = pd.read_csv(files["budget"])
            dk.chart(budget_figure(file_state(files["budget"]), budget), key="cmp_budget")
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            dk.show_error(exc, "Could not read the scratch curves")
    if "report" in files:
        with st.expander("The benchmark's report (tables, p-values, chosen options)"):
            st.markdown(files["report"].read_text(encoding="utf-8", errors="replace"))
    st.caption("From " + ", ".join(f"`{dk.shown_path(p)}`" for p in files.values()))


runs_section()
sweeps_section()
paired_section()
benchmark_section()
