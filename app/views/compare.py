"""Compare: the runs of the store side by side, the benchmark table, CSV export."""

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
paired_section()
benchmark_section()
