"""Alignments: transport plans between two models' layers, neuron maps, plans over a run's epochs."""

import numpy as np
import streamlit as st

import dashkit as dk
from otviz import figures
from otviz.runs import RunNotFoundError, RunStoreError

st.title("Alignments")
st.caption("Each neuron is its vector of responses to the same probe images; a layer is the set of its "
           "neurons, and two layers are matched by the optimal transport plan between these sets.")

source = st.radio("Compare", ["Two models", "A training run"], horizontal=True, key="al_source",
                  help="Two models: any two shipped teachers or uploaded otviz checkpoints. "
                       "A training run: the plans saved at each epoch of a run in the store.")


# ============================================================================= two models
def model_choices() -> dict[str, tuple[str, bytes | None]]:
    """Label -> (ref, bytes) for the shipped teachers and the valid uploads."""
    choices = {name: (f"shipped:{name}", None) for name in dk.teachers_frame()["name"]}
    with st.expander("Upload checkpoints", icon=":material/upload_file:"):
        st.caption("otviz checkpoints (`otviz.teachers.save_checkpoint`). They are read with "
                   "`torch.load(weights_only=True)`: nothing in the file is executed.")
        files = st.file_uploader("Checkpoint files", type=["pt", "pth"], accept_multiple_files=True,
                                 key="al_uploads")
        for f in files or []:
            data = f.getvalue()
            try:
                meta = dk.check_upload(data)
            except ValueError as exc:
                dk.show_error(exc, f"{f.name} is not usable")
                continue
            label = f"{f.name} (uploaded: {meta.get('arch')}, width {meta['model_config'].get('width')})"
            choices[label] = (dk.upload_ref(data), data)
            st.success(f"{f.name}: {meta.get('name', '')} ({meta.get('arch')}), ready to compare.")
    return choices


def load(label: str, choices):
    ref, data = choices[label]
    try:
        with st.spinner(f"Loading {label}..."):
            return dk.load_model(ref, data)
    except (ValueError, OSError) as exc:
        dk.show_error(exc, f"Could not load {label}")
        return None


def neuron_map_panel(data: dict) -> None:
    T, S, al = data["T"], data["S"], data["alignment"]
    kind = st.radio("Embedding", ["PCA", "UMAP"], horizontal=True, key="al_embed",
                    help="PCA is instant. UMAP's first fit compiles (20-60 s); the PCA map is shown "
                         "until it is ready, and the result is kept for later views.")
    embedding, method, note = None, "pca", None
    if kind == "UMAP":
        fut = dk.background_embedding(T, S, "umap")
        if fut.done():
            try:
                embedding, method = fut.result(), "umap"
            except Exception as exc:  # noqa: BLE001 - shown to the user, PCA stays
                dk.show_error(exc, "UMAP failed; showing PCA")
        else:
            note = "UMAP is computing in the background (its first fit compiles); PCA meanwhile."

            @st.fragment(run_every=1.0)
            def wait_for_umap():
                if fut.done():
                    st.rerun()
                st.info(note, icon=":material/hourglass_top:")

            wait_for_umap()
    fig = figures.neuron_map(T, S, al.plan, embedding=embedding, method=method, top=0.9,
                             title=f"Neuron map ({'UMAP' if method == 'umap' else 'PCA'})")
    dk.chart(fig, key="al_neuron_map", legend_below=True)
    st.caption("Teacher and student neurons embedded together; lines join the pairs that carry 90% "
               "of the plan's mass. Hover a neuron for its index and mass.")


def two_models() -> None:
    choices = model_choices()
    labels = list(choices)
    default_t = labels.index("cnn-mnist5k") if "cnn-mnist5k" in labels else 0
    default_s = labels.index("cnn-mnist5k-0to4") if "cnn-mnist5k-0to4" in labels else min(1, len(labels) - 1)
    c1, c2 = st.columns(2)
    t_label = c1.selectbox("Teacher", labels, index=default_t, key="al_teacher")
    s_label = c2.selectbox("Student", labels, index=default_s, key="al_student")
    loaded_t, loaded_s = load(t_label, choices), load(s_label, choices)
    if loaded_t is None or loaded_s is None:
        return
    (teacher, t_info), (student, s_info) = loaded_t, loaded_s
    t_layers = list(getattr(teacher, "alignable_layers", [])) or [n for n, _ in teacher.named_modules() if n]
    s_layers = list(getattr(student, "alignable_layers", [])) or [n for n, _ in student.named_modules() if n]
    t_layer = c1.selectbox("Teacher layer", t_layers, index=len(t_layers) - 1, key="al_t_layer",
                           format_func=lambda n: f"{n} ({teacher.layer_widths.get(n, '?')} neurons)"
                           if hasattr(teacher, "layer_widths") else n)
    s_layer = c2.selectbox("Student layer", s_layers, index=len(s_layers) - 1, key="al_s_layer",
                           format_func=lambda n: f"{n} ({student.layer_widths.get(n, '?')} neurons)"
                           if hasattr(student, "layer_widths") else n)

    o = dk.cells(6, "al_options", min_width=dk.CONTROL_MIN_WIDTH, gap="small")
    cost = o[0].selectbox("Cost", ["sqeuclidean", "euclidean", "cosine", "correlation"], key="al_cost")
    norm = o[1].selectbox("Normalisation", ["center", "standardize", "unit", "none"], key="al_norm",
                          help="center accepts dead (constant) units; standardize makes OT blind to "
                               "each neuron's scale but rejects constant neurons.")
    method = o[2].selectbox("Solver", ["emd", "sinkhorn", "unbalanced"], key="al_method")
    eps = o[3].select_slider("eps (entropic)", [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
                             value=0.01, key="al_eps", disabled=method == "emd",
                             help="Relative to the cost scale: reg = eps * max(cost).")
    spatial = o[4].selectbox("Conv neuron", ["mean", "flatten"], key="al_spatial",
                             help="mean: one response per image; flatten: per image and position.")
    n_probe = o[5].select_slider("Probe images", [64, 128, 256, 500, 1000], value=256, key="al_probe")
    size = None
    if spatial == "flatten":
        size = st.select_slider("Resize maps to (flatten)", [0, 2, 4, 7, 14], value=4, key="al_size",
                                format_func=lambda v: "keep" if not v else f"{v}x{v}",
                                help="Maps of different sizes give neurons of different lengths; "
                                     "resizing both makes them comparable.") or None
    normalize = None if norm == "none" else norm
    opts = dict(cost=cost, normalize=normalize, method=method, eps=None if method == "emd" else eps,
                spatial=spatial, size=size, n_probe=int(n_probe), seed=0)
    t_ref, t_data = choices[t_label]
    s_ref, s_data = choices[s_label]

    st.subheader(f"Transport plan: {t_layer} -> {s_layer}")
    try:
        with st.spinner("Running both models on the probe images and solving the transport..."):
            data = dk.alignment_data(t_ref, s_ref, t_layer, s_layer, _t_data=t_data, _s_data=s_data, **opts)
    except (ValueError, TypeError, RuntimeError) as exc:
        dk.show_error(exc, "These layers cannot be aligned")
        data = None
    if data is not None:
        al = data["alignment"]
        m = dk.cells(5, "al_metrics", min_width=dk.METRIC_MIN_WIDTH, gap="small")
        m[0].metric("OT distance", f"{al.distance:.4g}")
        m[1].metric("Solver", al.method, f"{al.n_iter} iterations" if al.n_iter else None,
                    delta_color="off")
        m[2].metric("Converged", "yes" if al.converged else "no")
        m[3].metric("Marginal error", f"{al.marginal_error:.1e}")
        m[4].metric("Neurons", f"{data['T'].shape[0]} x {data['S'].shape[0]}",
                    f"in R^{data['T'].shape[1]}", delta_color="off")
        st.caption(f"Probe: {data['n_probe']} held-out images of {data['task']}. Teacher activation "
                   f"{data['t_shape']}, student activation {data['s_shape']}.")
        left, right = dk.cells(2, "al_plan_map")
        with left:
            dk.chart(figures.plan_heatmap(al, title=f"Plan {t_layer} -> {s_layer}"),
                            key="al_plan")
        with right:
            neuron_map_panel(data)
        with st.expander("Solver summary"):
            st.code(al.summary())

    st.subheader("Layer x layer: OT distance beside linear CKA")
    try:
        with st.spinner("Comparing every teacher layer with every student layer..."):
            ot_df, cka_df = dk.layer_tables(t_ref, s_ref, _t_data=t_data, _s_data=s_data, **opts)
    except (ValueError, TypeError, RuntimeError) as exc:
        dk.show_error(exc, "The layer x layer table cannot be computed")
    else:
        dk.chart(figures.distance_matrices(ot_df, cka_df), key="al_tables")


# ============================================================================= a run
@st.cache_data(show_spinner=False, max_entries=32)
def run_plans(path: str, run_id: int, pair: str, epochs: tuple[int, ...]) -> list[np.ndarray]:
    """The plan of each finished epoch (these snapshots never change once written)."""
    from otviz.runs import RunStore

    store = RunStore(path)
    return [store.snapshot(run_id, pair, epoch=e) for e in epochs]


def training_run() -> None:
    store, runs = dk.store_runs("No runs in the store yet: start one on the Train page (one click runs the demo).")
    if runs is None:
        return
    ordered = runs.sort_values("run_id", ascending=False)
    labels = {int(r["run_id"]): dk.run_label(r) for _, r in ordered.iterrows()}
    run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="al_run")
    try:
        snaps = store.snapshots(run_id)
        metrics = store.metrics(run_id)
        run = store.run(run_id)
    except (RunStoreError, OSError) as exc:
        dk.show_error(exc, "Could not read the run")
        return
    if snaps.empty:
        st.info("This run has no plan snapshot yet (they are saved at each evaluation).")
        return
    cfg = run["config"]
    st.caption(f"Teacher {cfg.get('teacher', '?')}; student width {cfg.get('student_width', '?')} "
               f"({cfg.get('student_init', '?')} init); method {run['method']}, "
               f"{cfg.get('ot_method', 'emd')} plans with cost {cfg.get('cost')}.")
    st.subheader("Neuron reallocation during training")
    pairs = sorted(snaps["key"].unique())
    pair = st.selectbox("Layer pair", pairs, index=len(pairs) - 1, key="al_run_pair")
    epochs = tuple(int(e) for e in sorted(snaps.loc[snaps["key"] == pair, "epoch"].unique()))
    epoch = epochs[0] if len(epochs) == 1 else st.select_slider(
        "Epoch", epochs, value=epochs[-1], key=f"al_epoch_{run_id}_{pair}")
    try:
        plans = run_plans(str(store.path), run_id, pair, epochs)
    except (RunNotFoundError, RunStoreError) as exc:
        dk.show_error(exc, "Could not read the plans")
        return
    order = figures.plan_order(plans[-1])
    idx = epochs.index(epoch)
    ot = metrics[(metrics["key"] == f"ot/{pair}") & (metrics["epoch"] == epoch)]
    m = dk.cells(3, "al_run_metrics", min_width=dk.METRIC_MIN_WIDTH, gap="small")
    m[0].metric("Epoch", f"{epoch} of {epochs[-1]}")
    m[1].metric("OT distance (last batch of the epoch)", "-" if ot.empty else f"{ot['value'].iloc[-1]:.4g}")
    m[2].metric("Plan size", f"{plans[idx].shape[0]} x {plans[idx].shape[1]}")
    left, right = dk.cells(2, "al_run_plans")
    with left:
        dk.chart(figures.plan_heatmap(plans[idx], order=order, title=f"Plan at epoch {epoch}"),
                 key="al_run_plan")
        st.caption("Rows and columns keep the order of the last epoch, so moving mass shows neurons "
                   "being reallocated.")
    with right:
        dk.chart(figures.plan_snapshots(plans, [f"epoch {e}" for e in epochs], order=order,
                                        active=idx, title="Over the epochs (press play)"),
                 key="al_run_anim")


if source == "Two models":
    two_models()
else:
    training_run()
