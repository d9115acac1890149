"""Train: launch a training in its own process and follow it live."""

import streamlit as st

import dashkit as dk
import runcharts as rc
from otviz._recipes import SETTINGS, default_pairs, recipe  # plain data: the form needs no torch
from otviz.runs import RunNotFoundError, RunStoreError

st.title("Train")
st.caption("Launch a transfer training and follow it live. Each training runs in its own process and "
           "writes to the run store: closing the tab, a rerun or a second viewer never stops it; "
           "the Stop button does.")

dk.reap_launched()
store = dk.open_store()
if store is None:
    st.stop()
runs = dk.read_store(store, "the runs", store.runs)
if runs is None:
    st.stop()


def start(config: dict) -> None:
    """Launch ``config`` and follow the new run."""
    try:
        with st.spinner("Starting the training process..."):
            launched = dk.launch_training(config)
    except (ValueError, TypeError) as exc:
        dk.show_error(exc, "This configuration cannot be trained")
        return
    except (RuntimeError, OSError, RunStoreError) as exc:
        text = str(exc)
        if "otviz train: error:" in text:  # the child rejected the configuration
            st.error("**This configuration cannot be trained**: "
                     + text.split("otviz train: error:", 1)[1].strip(), icon=":material/error:")
        else:
            dk.show_error(exc, "The training process did not start")
        return
    st.session_state["follow"] = launched.run_id
    st.query_params["run"] = str(launched.run_id)
    st.rerun()


def request_start(config: dict) -> None:
    """Launch ``config``, unless a run of the store already has this configuration: then ask."""
    same = rc.identical_runs(runs, config)
    if not same:
        start(config)
        return
    st.session_state["pending_launch"] = {"config": config, "same": same}
    st.rerun()


def pending_launch() -> None:
    """The warning before launching a configuration that the store already holds."""
    pending = st.session_state.get("pending_launch")
    if not pending:
        return
    labels = {int(r["run_id"]): dk.run_label(r) for _, r in runs.iterrows()}
    same = [r for r in pending["same"] if r in labels]
    if not same:
        st.session_state.pop("pending_launch", None)
        start(pending["config"])
        return
    listed = "; ".join(dk.md_escape(labels[r]) for r in same[:3]) + (f" and {len(same) - 3} more" if len(same) > 3 else "")
    st.warning(f"**This configuration was already trained**: {listed}. The same seed gives the same "
               f"run again; change the seed for another sample.", icon=":material/content_copy:")
    a, b, c = st.columns(3)
    if a.button("Launch anyway", type="primary", icon=":material/play_arrow:", key="dup_launch"):
        st.session_state.pop("pending_launch", None)
        start(pending["config"])
    if b.button(f"Show run #{same[0]}", icon=":material/visibility:", key="dup_show"):
        st.session_state.pop("pending_launch", None)
        st.session_state["follow"] = same[0]
        st.query_params["run"] = str(same[0])
        st.rerun()
    if c.button("Cancel", key="dup_cancel"):
        st.session_state.pop("pending_launch", None)
        st.rerun()


# ----------------------------------------------------------------------------- start here
if runs.empty:
    st.info("The run store is empty. **Run the demo transfer** below: a CNN four times narrower than "
            "its teacher learns the digits 5-9 from 10 labels per class, while the OT regulariser pulls "
            "its last layer's 16 neurons toward the 64 of a teacher that learned the digits 0-4. It "
            "takes about a minute on two CPU cores. Or fill in the form to train any setting and method.",
            icon=":material/rocket_launch:")

with st.expander("Shipped teachers", expanded=runs.empty):
    st.caption("Small teachers trained from fixed seeds, shipped with otviz (`otviz teachers`). "
               "Each setting picks its teacher; the Alignments page compares any two of them.")
    st.markdown(dk.teachers_markdown())

#: Form inputs whose initial value comes from the recipe: widget key -> TrainConfig field.
RECIPE_INPUTS = {"lam": "lam", "pairs": "pairs", "cost": "cost", "normalize": "normalize",
                 "ot_method": "ot_method", "spatial": "spatial", "epochs": "epochs",
                 "steps": "steps_per_epoch", "batch_size": "batch_size", "lr": "lr",
                 "kd_weight": "kd_weight", "temperature": "temperature", "l2sp_weight": "l2sp_weight",
                 "fitnets_weight": "fitnets_weight", "at_weight": "at_weight", "nst_weight": "nst_weight",
                 "sp_weight": "sp_weight"}


#: Every input of the form (kept across page switches).
FORM_KEYS = ("arch", "setting", "method", *RECIPE_INPUTS, "eps", "k", "seed", "name")


def load_recipe(rec: dict, setting: str) -> None:
    """Put the recipe's values into the form's inputs (before they are drawn); the labels per
    class are the setting's (what a run of the recipe trains on)."""
    for key, field in RECIPE_INPUTS.items():
        v = rec[field]
        if key == "normalize":
            v = v or "none"
        elif key == "steps":
            v = v or 0
        elif v is None:  # the weight of a term this method does not have: its input is hidden
            st.session_state.pop(key, None)
            continue
        st.session_state[key] = list(v) if isinstance(v, list) else v
    st.session_state.setdefault("eps", 0.01)
    default_k = rec.get("k") or SETTINGS[setting].default_k
    if default_k is not None:  # a setting on the full training split has no k (its input is hidden)
        st.session_state["k"] = int(default_k)
    st.session_state.setdefault("seed", 0)


def not_used(label: str, reason: str) -> None:
    st.caption(f"{label}: not used, {reason}.")


with st.expander("Start a training", expanded=runs.empty or "pending_launch" in st.session_state):
    pending_launch()
    demo_row = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    if demo_row.button("Run the demo transfer", type="primary", icon=":material/play_arrow:",
                       key="demo"):
        request_start(dict(dk.DEMO_CONFIG))
    d = dk.DEMO_CONFIG
    neurons_text = "standardised neurons" if d["normalize"] == "standardize" else f"normalize {d['normalize']}"
    demo_row.caption(
        f"Setting *{d['setting']}*, method *{d['method']}* on "
        f"`{', '.join(p.removeprefix('features.') for p in d['pairs'])}` ({neurons_text}, "
        f"λ = {d['lam']:g}), {d['epochs']} epochs of {d['steps_per_epoch']} steps at learning rate "
        f"{d['lr']:g}: the benchmark's recipe (benchmarks/README.md), the same as "
        f"`otviz train --setting {d['setting']} --method {d['method']}`; about a minute on two CPU cores.")
    st.divider()
    # Streamlit forgets a widget's value while another page is shown: put the form back as the
    # user left it (the copy below is no widget's key, so it survives page switches)
    for key, value in st.session_state.get("form_saved", {}).items():
        if key not in st.session_state:
            st.session_state[key] = value
    st.session_state.setdefault("setting", d["setting"])
    st.session_state.setdefault("method", d["method"])
    top = dk.cells(4, "train_top", min_width=240)  # four in a row at 1400 px, two at 800
    arch = top[0].radio("Model family", ["cnn", "mlp"], key="arch",
                        help="Teacher and student family; the layer pairs follow it.")
    setting = top[1].selectbox("Setting", list(SETTINGS), key="setting",
                               help="\n\n".join(f"**{k}**: {v.description}" for k, v in SETTINGS.items()))
    method = top[2].selectbox("Method", dk.METHOD_CHOICES, key="method",
                              help="ot: the OT regulariser; kd+ot adds Hinton's distillation; the "
                                   "others are the usual baselines (scratch, finetune, L2-SP, KD, "
                                   "FitNets, attention transfer) and the two that, like OT, "
                                   "compare sets of units or relations: nst (neuron selectivity "
                                   "transfer, MMD between channel maps) and sp (similarity-preserving, "
                                   "the batch's similarity matrix).")
    rec = recipe(setting, method, arch=arch)
    if st.session_state.get("recipe_for") != (arch, setting, method):
        load_recipe(rec, setting)
        st.session_state["recipe_for"] = (arch, setting, method)
    ot_method = top[3].selectbox("OT solver", ["emd", "sinkhorn", "unbalanced"], key="ot_method",
                                 help="emd: exact OT (the recipe); sinkhorn / unbalanced: entropic, "
                                      "blurred by eps.")
    terms = set(method.split("+"))
    has_ot = "ot" in terms
    full_data = SETTINGS[setting].default_k is None
    st.caption(f"The form starts from the benchmark's recipe for *{setting}* / *{method}* "
               f"(`otviz train --setting {setting} --method {method}` uses the same); picking another "
               f"setting, method or model family reloads it. Inputs that the method does not use are "
               f"hidden.")
    layers = default_pairs(arch)
    with st.form("train_form"):
        # three columns at 1400 px, two at 800 (the budget's column under the others)
        c1, c2, c3 = dk.cells(3, "train_form", min_width=300)
        if has_ot:
            lam = c1.number_input("λ (weight of the OT term)", min_value=0.0, step=0.05, format="%.3f",
                                  key="lam")
        else:
            lam = None
            with c1:
                not_used("λ", f"method *{method}* has no OT term; the OT distance is logged, not "
                              f"trained on")
        pairs = c1.multiselect("Layer pairs (teacher layer = student layer)", layers, key="pairs",
                               format_func=lambda n: n.removeprefix("features."),
                               help="Layers whose neurons are compared by OT (the OT term, FitNets, "
                                    "attention transfer, NST and SP use them; every method logs "
                                    "their OT distance).")
        if "kd" in terms:
            kd_weight = c1.number_input("KD weight", min_value=0.0, step=0.1, key="kd_weight")
            temperature = c1.number_input("KD temperature", min_value=0.1, step=0.5, key="temperature")
        if "l2sp" in terms:
            l2sp_weight = c1.number_input("L2-SP weight", min_value=0.0, step=0.005, format="%.4f",
                                          key="l2sp_weight")
        if "fitnets" in terms:
            fitnets_weight = c1.number_input("FitNets weight", min_value=0.0, step=0.1,
                                             key="fitnets_weight")
        if "at" in terms:
            at_weight = c1.number_input("Attention-transfer weight", min_value=0.0, step=10.0,
                                        key="at_weight")
        if "nst" in terms:
            nst_weight = c1.number_input("NST weight (× squared MMD)", min_value=0.0, step=5.0,
                                         key="nst_weight")
        if "sp" in terms:
            sp_weight = c1.number_input("SP weight (× similarity loss)", min_value=0.0, step=100.0,
                                        key="sp_weight")
        if not has_ot:
            c2.caption("OT options below: of the OT distance logged for comparison.")
        cost = c2.selectbox("Cost between neurons", ["sqeuclidean", "euclidean", "cosine",
                                                     "correlation"], key="cost")
        normalize = c2.selectbox("Per-neuron normalisation", ["standardize", "none", "center", "unit"],
                                 key="normalize",
                                 help="standardize: each neuron's responses to zero mean and unit "
                                      "variance, so OT compares response shapes, not scales (the "
                                      "recipe).")
        if ot_method != "emd":
            eps = c2.number_input(f"eps ({ot_method}; relative to the cost scale)", min_value=1e-4,
                                  max_value=10.0, step=0.005, format="%.4f", key="eps")
        else:
            eps = None
            with c2:
                not_used("eps", "the exact solver (emd) has no entropic blur")
        spatial = c2.selectbox("Conv neuron", ["flatten", "mean"], key="spatial",
                               help="flatten: one response per image and position; mean: its spatial "
                                    "average per image.")
        epochs = c3.number_input("Epochs", min_value=1, max_value=500, key="epochs")
        steps = c3.number_input("Steps per epoch (0 = one pass over the training set)",
                                min_value=0, max_value=100_000, key="steps")
        if full_data:
            k = 0
            with c3:
                not_used("Labels per class", f"*{setting}* trains on the full training split")
        else:
            k = c3.number_input("Labels per class", min_value=1, max_value=400, key="k",
                                help=f"Labelled training images per class of the student's task "
                                     f"(*{setting}*'s recipe: {SETTINGS[setting].default_k}).")
        batch_size = c3.number_input("Batch size", min_value=2, max_value=1024, key="batch_size")
        lr = c3.number_input("Learning rate", min_value=1e-5, max_value=1.0, format="%.4f", key="lr")
        seed = c3.number_input("Seed", min_value=0, max_value=2**31 - 1, key="seed")
        name = st.text_input("Name (optional)", key="name")
        submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")
    if st.button("Reset the form to the recipe", icon=":material/restart_alt:", key="reset_recipe"):
        st.session_state.pop("recipe_for", None)
        st.session_state.pop("form_saved", None)
        st.rerun()
    st.session_state["form_saved"] = {k: st.session_state[k] for k in FORM_KEYS if k in st.session_state}
    if submitted:
        if not pairs:
            st.error("Pick at least one layer pair.")
        else:
            config = dict(rec, setting=setting, method=method, arch=arch, pairs=list(pairs), cost=cost,
                          normalize=None if normalize == "none" else normalize, ot_method=ot_method,
                          eps=float(eps) if eps is not None else None, spatial=spatial,
                          epochs=int(epochs), steps_per_epoch=int(steps) or None, k=int(k) or None,
                          batch_size=int(batch_size), lr=float(lr), seed=int(seed),
                          name=name.strip() or None)
            if has_ot:
                config["lam"] = float(lam)
            if "kd" in terms:
                config.update(kd_weight=float(kd_weight), temperature=float(temperature))
            if "l2sp" in terms:
                config["l2sp_weight"] = float(l2sp_weight)
            if "fitnets" in terms:
                config["fitnets_weight"] = float(fitnets_weight)
            if "at" in terms:
                config["at_weight"] = float(at_weight)
            if "nst" in terms:
                config["nst_weight"] = float(nst_weight)
            if "sp" in terms:
                config["sp_weight"] = float(sp_weight)
            request_start(config)

# ----------------------------------------------------------------------------- follow a run
if runs.empty:
    st.stop()

st.subheader("Follow a run")
ordered = runs.sort_values("run_id", ascending=False)
labels = {int(r["run_id"]): dk.run_label(r) for _, r in ordered.iterrows()}
ids = list(labels)
if st.session_state.get("follow") not in labels:
    wanted = st.query_params.get("run")
    running = ordered.loc[ordered["status"] == "running", "run_id"]
    if wanted and wanted.isdigit() and int(wanted) in labels:
        st.session_state["follow"] = int(wanted)
    elif len(running):
        st.session_state["follow"] = int(running.iloc[0])
    else:
        st.session_state["follow"] = ids[0]
# The labels carry each run's status; a select box shows the label it was created with, so it is
# keyed on the labels and the followed run: a status change or a followed run set elsewhere
# (a launch, "Show run") draws a fresh one, on the followed run.
picker_key = "follow_pick_" + rc.labels_signature(labels, st.session_state["follow"])
run_id = st.selectbox("Run", ids, index=ids.index(st.session_state["follow"]),
                      format_func=labels.get, key=picker_key)
st.session_state["follow"] = run_id
st.query_params["run"] = str(run_id)
status = ordered.loc[ordered["run_id"] == run_id, "status"].iloc[0]
live = status == "running"
st.session_state["live_mode"] = (run_id, live)


def plan_panel(plan, cost, run: dict, epoch: int, run_id: int, score: float | None = None) -> None:
    """The latest plan; with its cost matrix, the cost beside it and how much cheaper its matches are."""
    from otviz import figures

    title = f"Latest transport plan (epoch {epoch})"
    if cost is None:
        dk.chart(figures.plan_heatmap(plan, title=title), key=f"plan_{run_id}")
        return
    from otviz.matching import cost_contrast

    cfg = run["config"]
    label = f"{cfg.get('cost', 'sqeuclidean')} cost ({cfg.get('normalize') or 'raw'} neurons)"
    dk.chart(figures.alignment_panel(plan, cost, cost_label=label, title=title),
             key=f"plan_{run_id}")
    score_text = ("" if score is None else
                  f"OT score at epoch {epoch}: **{score:.3f}** (0 = the teacher's layer up to "
                  f"permutation and scale, ~1 = unrelated). ")
    st.caption(f"{score_text}In the training's own geometry, matched pairs cost "
               f"{cost_contrast(plan, cost):.0%} of a random pairing's mean (0% = free matches, "
               f"100% = chance). The Alignments page compares this run with its scratch twin "
               f"epoch by epoch.")


def live_view(run_id: int) -> None:
    """Progress, curves and the latest plan of one run; refreshed every second while it runs."""
    store = dk.open_store()
    if store is None:
        return
    try:
        run = store.run(run_id)
        metrics = store.metrics(run_id)
        snaps = store.snapshots(run_id)
    except RunNotFoundError:
        st.warning(f"Run {run_id} is no longer in the store.")
        return
    except (RunStoreError, OSError) as exc:
        dk.show_error(exc, "Could not read the run from the store")
        return
    if st.session_state.get("live_mode") == (run_id, True) and run["status"] != "running":
        st.rerun()  # the run ended: redraw once without the timer

    step, total = run.get("step") or 0, run.get("total_steps") or 0
    head = st.columns([3, 1], vertical_alignment="center")
    with head[0]:
        frac = min(1.0, step / total) if total else 0.0
        detail = run.get("message") or (f"epoch {run.get('epoch') or 0}/"
                                        f"{run['config'].get('epochs', '?')}")
        rc.status_bar(run["status"], frac, f"step {step}/{total or '?'} · {detail}")
        speed = rc.speed_text(run, metrics)
        if speed:
            st.caption(speed)
    with head[1]:
        if run["status"] == "running":
            if st.button("Stop", icon=":material/stop:", key=f"stop_{run_id}",
                         help="End this run's process only; the run is marked interrupted."):
                st.toast(dk.stop_training(run))
        else:
            st.caption(f"{rc.status_markdown(run['status'])} after {run.get('duration') or 0:.0f} s")
    if run["status"] == "failed" and run.get("error"):
        st.error(f"The run failed: {dk.md_escape(str(run['error']).strip().splitlines()[-1])}")
        with st.expander("Error details"):
            st.code(run["error"])
    elif run["status"] == "interrupted":
        why = str(run.get("error") or "").strip()
        st.warning("The run was interrupted before its last step"
                   + (f": {dk.md_escape(why.splitlines()[-1])}" if why else "") + ". Its curves stop there.")

    opts = rc.curve_controls("tr")
    keys = sorted(metrics["key"].unique().tolist()) if not metrics.empty else []
    # drawn (empty) before any data; a run with a validation part logs its test accuracy once, at the end
    held_out = "val/accuracy" if run["config"].get("val_size") is not None else "test/accuracy"
    wanted = ["train/accuracy", held_out, "loss/total"]
    rc.curve_cards(metrics, sorted(set(keys) | set(wanted)), config=run["config"], options=opts,
                   key=f"curves_{run_id}")
    with st.container():
        pair_keys = dk.plan_keys(snaps)
        if pair_keys:
            pair = st.selectbox("Layer pair", pair_keys, index=len(pair_keys) - 1,
                                key=f"plan_pair_{run_id}")
            latest = snaps[snaps["key"] == pair].iloc[-1]
            try:
                ep = int(latest["epoch"])
                plan = store.snapshot(run_id, pair, epoch=ep)
                has_cost = ((snaps["key"] == dk.COST_PREFIX + pair) & (snaps["epoch"] == ep)).any()
                cost = store.snapshot(run_id, dk.COST_PREFIX + pair, epoch=ep) if has_cost else None
            except (RunStoreError, OSError) as exc:
                dk.show_error(exc, "Could not read the plan")
            else:
                at = metrics[(metrics["key"] == f"score/{pair}") & (metrics["epoch"] == ep)]
                plan_panel(plan, cost, run, ep, run_id,
                           score=None if at.empty else float(at["value"].iloc[-1]))
        else:
            st.caption("The first transport plan appears after the first evaluation.")

    with st.expander("Configuration"):
        st.json(run["config"], expanded=False)


st.fragment(live_view, run_every=1.0 if live else None)(run_id)


def watch_statuses(seen: tuple) -> None:
    """Rerun the page when a run starts or ends, so the run picker shows every status."""
    store = dk.open_store(quiet=True)
    if store is None:
        return
    try:
        now = store.runs()
    except (RunStoreError, OSError):
        return
    if tuple(zip(now["run_id"].tolist(), now["status"].tolist())) != seen:
        st.rerun()


if (runs["status"] == "running").any():
    st.fragment(watch_statuses, run_every=2.0)(tuple(zip(runs["run_id"].tolist(),
                                                         runs["status"].tolist())))
