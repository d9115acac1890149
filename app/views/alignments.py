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
                  help="Two models: any two shipped teachers, uploaded otviz checkpoints or your own "
                       "models (Hugging Face directories, torch.export programs, state dicts). "
                       "A training run: the plans saved at each epoch of a run in the store.")


# ============================================================================= two models
def model_choices() -> dict[str, tuple[str, bytes | None]]:
    """Label -> (ref, bytes) for the shipped teachers, the valid uploads and the models typed as paths."""
    choices = {name: (f"shipped:{name}", None) for name in dk.teachers_frame()["name"]}
    with st.expander("Your own models", icon=":material/folder_open:"):
        st.caption("A Hugging Face model directory (config.json + *.safetensors, with its tokenizer "
                   "files for text), a torch.export program (.pt2), a state dict (.safetensors, .pt) of a "
                   "named architecture, or an otviz checkpoint. Nothing is unpickled: weights are read "
                   "as safetensors or with `torch.load(weights_only=True)`, and no code from the files "
                   "runs. A model whose declared size exceeds the memory limit is refused before "
                   "anything is allocated.")
        c1, c2 = st.columns([3, 1])
        paths = c1.text_area("Model paths on this machine (one per line)", key="al_paths",
                             placeholder="/home/me/models/all-MiniLM-L6-v2\n/home/me/cnn.pt2", height=80)
        c2.number_input("Memory limit (GiB)", min_value=0.01, max_value=1024.0,
                        value=dk.DEFAULT_MEMORY_GIB, step=0.5, key="al_mem_gib",
                        help="Parameters and buffers the declared architecture would need, estimated "
                             "before loading (meta-device build, safetensors headers, archive sizes).")
        arch = c2.text_input("Architecture of a bare state dict", key="al_arch", placeholder="timm:resnet18",
                             help="'timm:NAME', 'torchvision:NAME' (when installed) or an otviz family "
                                  "('cnn', 'mlp'): a state dict alone does not say what it belongs to.")
        for line in [ln.strip() for ln in (paths or "").splitlines() if ln.strip()]:
            try:
                ref = dk.path_ref(line, arch.strip() or None)
                with st.spinner(f"Loading {line}..."):
                    _, info = dk.load_model(ref, None, dk.memory_limit())
            except (ValueError, OSError, ImportError) as exc:
                dk.show_error(exc, f"{line} cannot be loaded")
                continue
            label = f"{info.get('name')} ({info['external'].describe()})"
            choices[label] = (ref, None)
            st.success(f"{dk.md_escape(line)}: {dk.md_escape(info['external'].describe())}, ready to compare.")
        files = st.file_uploader("Or upload files (otviz checkpoints .pt, programs .pt2, state dicts "
                                 ".safetensors)", type=["pt", "pth", "pt2", "safetensors"],
                                 accept_multiple_files=True, key="al_uploads")
        for f in files or []:
            data = f.getvalue()
            try:
                if f.name.lower().endswith((".pt2", ".safetensors")):
                    ref = dk.upload_file_ref(f.name, data, arch.strip() or None)
                    _, info = dk.load_model(ref, None, dk.memory_limit())
                    label = f"{f.name} (uploaded: {info['external'].describe()})"
                    choices[label] = (ref, None)
                    st.success(f"{dk.md_escape(f.name)}: {dk.md_escape(info['external'].describe())}, "
                               "ready to compare.")
                    continue
                meta = dk.check_upload(data, dk.memory_limit())
            except (ValueError, OSError, ImportError) as exc:
                dk.show_error(exc, f"{f.name} is not usable")
                continue
            label = f"{f.name} (uploaded: {meta.get('arch')}, width {meta['model_config'].get('width')})"
            choices[label] = (dk.upload_ref(data), data)
            st.success(f"{dk.md_escape(f.name)}: {dk.md_escape(meta.get('name', ''))} "
                       f"({dk.md_escape(meta.get('arch'))}), ready to compare.")
    return choices


def load(label: str, choices):
    ref, data = choices[label]
    try:
        with st.spinner(f"Loading {label}..."):
            return dk.load_model(ref, data, dk.memory_limit())
    except (ValueError, OSError, ImportError) as exc:
        dk.show_error(exc, f"Could not load {label}")
        return None


def probe_choice(t_info: dict, s_info: dict) -> str | None:
    """The probe source chosen on the page, as a :func:`dashkit.probe_key` (None after an error)."""
    has_task = any("dataset" in (i.get("task") or {}) and "classes" in (i.get("task") or {})
                   for i in (t_info, s_info))
    ext = [i["external"] for i in (t_info, s_info) if i.get("external") is not None]
    takes_tokens = any(e.input_spec is not None and e.input_spec.kind == "tokens" for e in ext)
    sources = [k for k in dk.PROBE_SOURCES if k != "task" or has_task]
    default = "task" if has_task else ("text" if takes_tokens else "dataset")
    if not ext and has_task:  # two otviz models: their task, as before
        return dk.probe_key("task")
    kind = st.radio("Probe inputs", sources, index=sources.index(default), horizontal=True, key="al_probe_src",
                    format_func=dk.PROBE_SOURCES.get,
                    help="Both models are run on the same inputs; each neuron is its vector of "
                         "responses to them. Images are resized to the input size a model declares.")
    for e in ext:
        if e.input_spec is not None:
            st.caption(f"{dk.md_escape(e.info.get('name'))} takes {dk.md_escape(e.input_spec.describe())}.")
    try:
        if kind == "task":
            return dk.probe_key("task")
        if kind == "dataset":
            from otviz.data import DATASETS

            name = st.selectbox("Dataset", list(DATASETS), key="al_probe_dataset", format_func=lambda d: d,
                                help="\n\n".join(f"**{k}**: {v}" for k, v in DATASETS.items()))
            return dk.probe_key("dataset", name)
        label = {"file": "Path of a .npy, .npz, .safetensors or .pt file",
                 "images": "Path of a folder of images", "text": "Path of a text file (one sentence per line)"}[kind]
        path = st.text_input(label, key=f"al_probe_{kind}")
        if not path.strip():
            st.info(f"Type the {label[0].lower() + label[1:]} to probe the models with it.")
            return None
        if kind == "text":
            max_length = st.select_slider("Tokens per sentence (truncation)", [16, 32, 64, 128, 256, 512],
                                          value=128, key="al_probe_maxlen")
            return dk.probe_key("text", path, int(max_length))
        return dk.probe_key(kind, path)
    except (ValueError, OSError) as exc:
        dk.show_error(exc, "Probe inputs")
        return None


def neuron_map_panel(data: dict) -> None:
    T, S, al = data["T"], data["S"], data["alignment"]
    kind = st.radio("Embedding", ["PCA", "UMAP"], horizontal=True, key="al_embed",
                    help="PCA is instant. UMAP's first fit in a server process takes about a minute "
                         "on two CPU cores (about three the first time on a machine, while numba "
                         "compiles), later ones under a second; the PCA map is shown "
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
            note = ("UMAP is computing in the background (its first fit in a server process takes "
                    "about a minute on two CPU cores, about three the first time on a machine); "
                    "PCA meanwhile.")

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


def match_panels(plan: np.ndarray, cost: np.ndarray, cost_label: str, key: str,
                 *, log_color: bool | None = None, order=None, compact: bool = False) -> None:
    """The cost beside the plan, matched against all pair costs, and per-neuron match quality."""
    if log_color is None:
        log_color = st.toggle("Log colour for the plan", key=f"{key}_log",
                              help="Colour the plan by log10 mass (six decades), to see the small "
                                   "masses of entropic plans.")
    dk.chart(figures.alignment_panel(plan, cost, cost_label=cost_label, log_color=log_color,
                                     order=order, title="Cost beside plan"), key=f"{key}_panel")
    st.caption("Left, the cost of every teacher/student pair (dark = cheap); right, the plan in the "
               "same order. A plan always looks like a matching: what tells a real alignment is "
               "whether its mass sits on dark cells. Hover a cell for the pair, its mass and cost.")
    cols = [st.container()] * 2 if compact else dk.cells(2, f"{key}_match")
    with cols[0]:
        dk.chart(figures.matched_cost_distribution(plan, cost, cost_label=cost_label),
                 key=f"{key}_ecdf", legend_below=True)
    with cols[1]:
        dk.chart(figures.match_quality(plan, cost), key=f"{key}_quality")
    st.caption("Matched pairs far left of all pairs, and neurons far below the dashed line, mean "
               "the student's neurons found close teacher partners; curves that overlap and bars "
               "near 1 mean the matching is no better than chance.")


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
    t_layers, s_layers = dk.model_layers(teacher), dk.model_layers(student)
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
                             value=0.1, key="al_eps", disabled=method == "emd",
                             help="Relative to the typical cost: reg = eps * median(cost), so "
                                  "one eps means the same blur in every layer. Below 0.1, "
                                  "layers whose neurons pair off one to one (similar layers) can "
                                  "leave Sinkhorn short of convergence at its iteration cap.")
    spatial = o[4].selectbox("Positions", ["mean", "flatten"], key="al_spatial",
                             help="How a neuron with a map (a conv channel) or a token sequence (a "
                                  "transformer unit) responds: mean, one response per input (the "
                                  "average over positions, over real tokens for text); flatten, one "
                                  "response per input and position (per real token for text).")
    n_probe = o[5].select_slider("Probe inputs (at most)", [16, 64, 128, 256, 500, 1000], value=256,
                                 key="al_probe")
    size = None
    if spatial == "flatten":
        size = st.select_slider("Resize image maps to (flatten)", [0, 2, 4, 7, 14], value=4,
                                key="al_size", format_func=lambda v: "keep" if not v else f"{v}x{v}",
                                help="Maps of different sizes give neurons of different lengths; "
                                     "resizing both makes them comparable. Token sequences are "
                                     "never resized: each real token is one response.") or None
    normalize = None if norm == "none" else norm
    probe = probe_choice(t_info, s_info)
    if probe is None:
        return
    opts = dict(cost=cost, normalize=normalize, method=method, eps=None if method == "emd" else eps,
                spatial=spatial, size=size, n_probe=int(n_probe), seed=0, probe=probe,
                max_bytes=dk.memory_limit())
    t_ref, t_data = choices[t_label]
    s_ref, s_data = choices[s_label]

    st.subheader(f"Transport plan: {t_layer} -> {s_layer}")
    try:
        with st.spinner("Running both models on the probe images and solving the transport..."):
            data = dk.alignment_data(t_ref, s_ref, t_layer, s_layer, _t_data=t_data, _s_data=s_data, **opts)
    except dk.ProbeError as exc:  # shown once: the layer table would need the same probe
        dk.show_error(exc, "Probe inputs")
        return
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:  # e.g. a probe file refused
        dk.show_error(exc, "These layers cannot be aligned")
        data = None
    if data is not None:
        al = data["alignment"]
        try:
            det = al.score_details
        except ValueError as exc:
            det = None
            st.warning(f"**OT score undefined**: {exc}", icon=":material/warning:")
        m = dk.cells(5, "al_metrics", min_width=dk.METRIC_MIN_WIDTH, gap="small")
        if det is not None:
            m[0].metric("OT score", f"{det['score']:.3f}",
                        None if det["converged"] else "not converged: approximate",
                        delta_color="off" if det["converged"] else "inverse",
                        help="Scale-free: 0 = the student layer is the teacher layer up to a "
                             "permutation of neurons and a scale, ~1 = unrelated layers (two random "
                             "layers score 0.8-0.95 depending on the number of probe responses). "
                             "Comparable across layers, models and probe sets. Raw OT cost in the "
                             f"units of the activations: {al.distance:.4g}.")
        m[1].metric("Solver", al.method, f"{al.n_iter} iterations" if al.n_iter else None,
                    delta_color="off")
        m[2].metric("Converged", "yes" if al.converged else "no")
        m[3].metric("Marginal error", f"{al.marginal_error:.1e}")
        m[4].metric("Neurons", f"{data['T'].shape[0]} x {data['S'].shape[0]}",
                    f"in R^{data['T'].shape[1]}", delta_color="off")
        st.caption(f"Probe: {data['n_probe']} inputs, {dk.md_escape(data['task'])}. Teacher activation "
                   f"{data['t_shape']}, student activation {data['s_shape']}.")
        match_panels(al.plan, al.cost_matrix, f"{al.cost} cost", key="al")
        neuron_map_panel(data)
        with st.expander("Solver summary"):
            st.code(al.summary())

    st.subheader("Layer x layer: OT score beside linear CKA")
    raw = st.toggle("Raw OT cost instead of the score", key="al_raw",
                    help="The raw cost uses the cost and normalisation chosen above and keeps the "
                         "units of the activations, so it grows with their scale and with the number "
                         "of responses: compare layers with the score.")
    try:
        with st.spinner("Comparing every teacher layer with every student layer..."):
            ot_df, cka_df = dk.layer_tables(t_ref, s_ref, _t_data=t_data, _s_data=s_data,
                                            measure="ot-raw" if raw else "ot", **opts)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        dk.show_error(exc, "The layer x layer table cannot be computed")
    else:
        dk.chart(figures.distance_matrices(ot_df, cka_df), key="al_tables")
        cut = [m for m, full in ((t_label, t_layers), (s_label, s_layers)) if len(full) > dk.MAX_TABLE_LAYERS]
        if cut:
            st.caption(f"{' and '.join(cut)} list more than {dk.MAX_TABLE_LAYERS} layers: the table shows "
                       f"{dk.MAX_TABLE_LAYERS} of them, evenly spread from input to output.")
        bad = ot_df.attrs.get("converged")
        if bad is not None and not bad.all():
            st.warning(f"The solver did not converge for {int((~bad).sum())} of {bad.size} layer "
                       "pairs: their values are approximate (use the exact solver or a larger eps).",
                       icon=":material/warning:")


# ============================================================================= a run
@st.cache_data(show_spinner=False, max_entries=32)
def run_plans(path: str, run_id: int, pair: str, epochs: tuple[int, ...]) -> list[np.ndarray]:
    """The snapshots ``pair`` (a plan, or ``cost/<pair>``) of each finished epoch (never rewritten)."""
    from otviz.runs import RunStore

    store = RunStore(path)
    return [store.snapshot(run_id, pair, epoch=e) for e in epochs]


def run_view(store, run_id: int, label: str) -> dict | None:
    """Snapshots, metrics and config of one run, or None after saying why."""
    try:
        snaps = store.snapshots(run_id)
        metrics = store.metrics(run_id)
        run = store.run(run_id)
    except (RunStoreError, OSError) as exc:
        dk.show_error(exc, f"Could not read {label}")
        return None
    return dict(snaps=snaps, metrics=metrics, run=run, label=label, run_id=run_id)


def load_series(store, view: dict, pair: str) -> dict | None:
    """Plans (and costs, when the run stored them) of every epoch of ``pair``."""
    snaps = view["snaps"]
    epochs = tuple(int(e) for e in sorted(snaps.loc[snaps["key"] == pair, "epoch"].unique()))
    if not epochs:
        return None
    try:
        plans = run_plans(str(store.path), view["run_id"], pair, epochs)
        ckey = dk.COST_PREFIX + pair
        c_epochs = tuple(int(e) for e in sorted(snaps.loc[snaps["key"] == ckey, "epoch"].unique()))
        costs = run_plans(str(store.path), view["run_id"], ckey, epochs) if c_epochs == epochs else None
    except (RunNotFoundError, RunStoreError) as exc:
        dk.show_error(exc, f"Could not read the plans of {view['label']}")
        return None
    return dict(epochs=epochs, plans=plans, costs=costs)


def epoch_series(views: list[dict], series: dict[int, dict], pair: str, measure: str):
    """Long frame (run, epoch, pair, value) of the chosen per-epoch measure for each run."""
    import pandas as pd

    from otviz.matching import cost_contrast

    rows = []
    for v in views:
        if measure == "matched / random cost":
            s = series.get(v["run_id"])
            if s is None or s["costs"] is None:
                continue
            rows += [dict(run=v["label"], epoch=e, pair=pair, value=cost_contrast(P, C))
                     for e, P, C in zip(s["epochs"], s["plans"], s["costs"])]
        else:
            m = v["metrics"]
            key = f"{'score' if measure == 'score' else 'ot'}/{pair}"
            m = m[(m["key"] == key) & m["epoch"].notna()]
            rows += [dict(run=v["label"], epoch=int(e), pair=pair, value=float(val))
                     for e, val in m.groupby("epoch")["value"].mean().items()]
    return pd.DataFrame(rows, columns=["run", "epoch", "pair", "value"])


MEASURES = {
    "score": "OT score on the fixed probe batch (scale-free: 0 = the teacher's layer up to "
             "permutation and scale, ~1 = unrelated; see README, Reading the numbers)",
    "matched / random cost": "matched / random-pairing cost of the run's own plan on the probe "
                             "batch (0 = free matches, 1 = no better than chance)",
    "raw OT": "raw OT term as optimised (mean over the epoch's minibatches; in the units of the "
              "training's cost)",
}


def twin_cost_range(series: list[dict], epoch: int) -> tuple[float, float] | None:
    """One cost colour range for the runs compared at ``epoch``: the min and max over their cost
    matrices, or None for a single run or runs without costs (each panel keeps its own)."""
    costs = [s["costs"][s["epochs"].index(epoch)] for s in series
             if s["costs"] is not None and epoch in s["epochs"]]
    if len(costs) < 2:
        return None
    lo = min(float(np.min(c)) for c in costs)
    hi = max(float(np.max(c)) for c in costs)
    return (lo, hi) if hi > lo else None


def training_run() -> None:
    store, runs = dk.store_runs("No runs in the store yet: start one on the Train page (one click runs the demo).")
    if runs is None:
        return
    ordered = runs.sort_values("run_id", ascending=False)
    labels = {int(r["run_id"]): dk.run_label(r) for _, r in ordered.iterrows()}
    c1, c2 = st.columns(2)
    run_id = c1.selectbox("Run", list(labels), format_func=labels.get, key="al_run")
    twin = dk.twin_run(runs, run_id)
    others = [None] + [r for r in labels if r != run_id]
    other_id = c2.selectbox(
        "Compare with", others, index=others.index(twin) if twin in others else 0,
        format_func=lambda r: "(no second run)" if r is None else labels[r] + (
            " (twin: same setting and budget)" if r == twin else ""),
        key=f"al_run_other_{run_id}",
        help="Default: the run of the same setting, student and budget trained without the "
             "transfer term (its scratch twin), when the store has one.")
    if twin is None:
        c2.caption("No twin in the store (a scratch run with the same setting, student and budget).")
    views = [v for v in (run_view(store, run_id, f"#{run_id} {runs.loc[runs.run_id == run_id, 'method'].iloc[0] or 'run'}"),
                         None if other_id is None else run_view(
                             store, other_id, f"#{other_id} {runs.loc[runs.run_id == other_id, 'method'].iloc[0] or 'run'}"))
             if v is not None]
    if not views:
        return
    main = views[0]
    if main["snaps"].empty:
        st.info("This run has no plan snapshot yet (they are saved at each evaluation).")
        return
    cfg = main["run"]["config"]
    if "student" in cfg or cfg.get("trainer") == "custom":  # a loop of its own (otviz.loop.run_config)
        who = (f"Trained by its own loop: teacher {dk.md_escape(cfg.get('teacher', 'not recorded'))}; "
               f"student {dk.md_escape(cfg.get('student', 'not recorded'))}")
    else:
        who = (f"Teacher {dk.md_escape(cfg.get('teacher', '?'))}; student width "
               f"{dk.md_escape(cfg.get('student_width', '?'))} "
               f"({dk.md_escape(cfg.get('student_init', '?'))} init)")
    st.caption(f"{who}; method {dk.md_escape(main['run']['method'])}, "
               f"{dk.md_escape(cfg.get('ot_method', 'emd'))} plans with cost "
               f"{dk.md_escape(cfg.get('cost'))}, normalize={dk.md_escape(cfg.get('normalize'))}.")
    pairs = dk.plan_keys(main["snaps"])
    pair = st.selectbox("Layer pair", pairs, index=len(pairs) - 1, key="al_run_pair")
    series = {}
    for v in views:
        s = load_series(store, v, pair)
        if s is None:
            st.info(f"{dk.md_escape(v['label'])} has no plan of {dk.md_escape(pair)}.")
        else:
            series[v["run_id"]] = s
    if run_id not in series:
        return
    epochs = series[run_id]["epochs"]
    epoch = epochs[0] if len(epochs) == 1 else st.select_slider(
        "Epoch", epochs, value=epochs[-1], key=f"al_epoch_{run_id}_{pair}")
    cost_label = f"{cfg.get('cost', 'sqeuclidean')} cost ({cfg.get('normalize') or 'raw'} neurons)"

    st.subheader("Score per epoch" + (" for both runs" if len(series) > 1 else ""))
    have_score = any((v["metrics"]["key"] == f"score/{pair}").any() for v in views if not v["metrics"].empty)
    have_cost = all(s["costs"] is not None for s in series.values())
    choices = [m for m in MEASURES if (m != "score" or have_score)
               and (m != "matched / random cost" or have_cost)]
    measure = st.radio("Measure", choices, horizontal=True, key="al_run_measure",
                       help="\n\n".join(f"**{k}**: {MEASURES[k]}" for k in choices))
    frame = epoch_series([v for v in views if v["run_id"] in series], series, pair, measure)
    value_label = {"score": "OT score (0 = same layer, ~1 = unrelated)"}.get(measure, measure)
    fig = figures.compare_runs(frame, value_label=value_label, title=f"{measure} per epoch")
    if measure != "raw OT":  # both are read against 0 (free / the same layer)
        fig.update_yaxes(rangemode="tozero")
    dk.chart(fig, key="al_run_compare")
    if not have_cost:
        st.caption("A run recorded before cost matrices were stored has only its plans: the "
                   "cost-based views are shown for runs that have them.")

    st.subheader(f"Epoch {epoch}: cost beside plan")
    log_color = st.toggle("Log colour for the plans", key="al_run_log")
    shown = [v for v in views if v["run_id"] in series]
    cost_range = twin_cost_range([series[v["run_id"]] for v in shown], epoch)
    cols = dk.cells(len(series), "al_run_side1")
    for n_panel, (col, v) in enumerate(zip(cols, shown)):
        s = series[v["run_id"]]
        with col:
            st.markdown(f"**{dk.md_escape(v['label'])}**")
            if epoch not in s["epochs"]:
                st.info(f"{dk.md_escape(v['label'])} has no plan at epoch {epoch} (it has "
                        f"{list(s['epochs'])}).")
                continue
            i = s["epochs"].index(epoch)
            P = s["plans"][i]
            if s["costs"] is None:
                dk.chart(figures.plan_heatmap(P, order=figures.plan_order(s["plans"][-1]),
                                              log_color=log_color, title=f"Plan at epoch {epoch}"),
                         key=f"al_run_plan_{v['run_id']}")
                st.caption("This run stored no cost matrices, so the plan cannot be judged here.")
                continue
            C = s["costs"][i]
            dk.chart(figures.alignment_panel(P, C, cost_label=cost_label, log_color=log_color,
                                             title=f"Cost beside plan, epoch {epoch}",
                                             cost_range=cost_range, cost_colorbar=n_panel == 0),
                     key=f"al_run_panel_{v['run_id']}")
            if n_panel > 0 and cost_range is not None:
                st.caption(f"Cost colours on the same scale as {dk.md_escape(shown[0]['label'])}'s "
                           f"({cost_range[0]:.3g} to {cost_range[1]:.3g}).")
            dk.chart(figures.matched_cost_distribution(P, C, cost_label=cost_label),
                     key=f"al_run_ecdf_{v['run_id']}", legend_below=True)
            dk.chart(figures.match_quality(P, C), key=f"al_run_quality_{v['run_id']}")
    st.caption("The same probe images for both runs. Mass on dark (cheap) cells, matched costs far "
               "left of all pairs and bars far below 1 mark a student whose neurons found their "
               "teacher partners; a scratch student's plan looks just as diagonal, but on costs no "
               "lower than chance.")

    st.subheader("Neuron reallocation during training")
    cols = dk.cells(len(series), "al_run_side2")
    for col, v in zip(cols, [v for v in views if v["run_id"] in series]):
        s = series[v["run_id"]]
        with col:
            st.markdown(f"**{dk.md_escape(v['label'])}**")
            if len(s["epochs"]) < 2:
                st.info("Reallocation needs plans of at least two epochs.")
                continue
            dk.chart(figures.reallocation_chart(s["plans"], s["epochs"]),
                     key=f"al_run_realloc_{v['run_id']}", legend_below=True)
    with st.expander("The plans over the epochs (animation)"):
        s = series[run_id]
        order = figures.plan_order(s["plans"][-1])
        dk.chart(figures.plan_snapshots(s["plans"], [f"epoch {e}" for e in s["epochs"]], order=order,
                                        active=s["epochs"].index(epoch), log_color=log_color,
                                        title=f"{main['label']} (press play)"),
                 key="al_run_anim")
        st.caption("Rows and columns keep the order of the last epoch, so moving mass shows neurons "
                   "being reallocated.")


if source == "Two models":
    two_models()
else:
    training_run()
