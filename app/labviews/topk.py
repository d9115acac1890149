"""OT lab, "Soft top-k": a differentiable top-k by entropic OT (Xie et al. 2020), and the k channels of
a trained network that matter most."""

import numpy as np
import streamlit as st

import dashkit as dk

EPS_CHOICES = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
SHARPEN_EPS = (1.0, 0.1, 0.03, 0.01, 0.001)
TEACHERS = {"cnn-digits": "small CNN on 8x8 digits, layer features.conv3 (64 channels)",
            "mlp-digits": "MLP on 8x8 digits, layer features.fc2 (64 units)"}


@st.cache_data(show_spinner=False)
def _scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n)


@st.cache_data(show_spinner=False)
def _transport(n: int, k: int, eps: float, seed: int):
    from otviz.lab.topk import topk_transport

    return topk_transport(_scores(n, seed), k, eps)


@st.cache_data(show_spinner=False, max_entries=32)
def _selection(teacher: str, k: int, seed: int):
    from otviz.lab.topk import select_neurons

    return select_neurons(teacher, k=k, seed=seed, fast=True)


def _toy() -> None:
    from otviz.figures import lab_topk as figs

    c = dk.cells(4, "lab_topk_controls", min_width=dk.CONTROL_MIN_WIDTH, gap="small")
    n = int(c[0].slider("Scores n", 3, 60, 20, key="lab_topk_n",
                        help="How many scores (drawn from a standard normal distribution)."))
    k = int(c[1].slider("Keep k", 1, n, min(5, n), key="lab_topk_k",
                        help="How many of the largest scores to keep; k = n keeps everything."))
    eps = float(c[2].select_slider("eps", EPS_CHOICES, value=0.03, key="lab_topk_eps",
                                   help="Entropic regularisation, in squared units of the scores "
                                        "rescaled to [0, 1]: the soft step is about eps wide."))
    seed = int(c[3].number_input("Seed", 0, 10_000, 0, key="lab_topk_seed"))
    try:
        t = _transport(n, k, eps, seed)
        sharpen = [_transport(n, k, e, seed) for e in SHARPEN_EPS]
    except (ValueError, RuntimeError) as exc:
        dk.show_error(exc, "Could not compute the soft top-k")
        return

    m = dk.cells(4, "lab_topk_metrics", min_width=dk.METRIC_MIN_WIDTH, gap="small")
    m[0].metric("Sum of the weights", f"{t.weights.sum():.6f}",
                help=f"Equals k = {k} up to the solver's tolerance: the 'kept' anchor receives mass k/n.")
    m[1].metric("Largest |soft - hard|", f"{t.max_error:.3f}",
                help="The largest gap between a soft weight and the hard top-k indicator (0 to 1). "
                     "It shrinks as eps decreases.")
    m[2].metric("Weights strictly between", f"{int(((t.weights > 0.01) & (t.weights < 0.99)).sum())} / {n}",
                help="Scores whose weight lies in (0.01, 0.99): the ones the soft top-k is unsure about.")
    m[3].metric("Middle of the step", "-" if not np.isfinite(t.threshold) else f"{t.threshold:.3f}",
                help="The rescaled score (0 = smallest, 1 = largest) whose weight would be 1/2.")

    left, right = dk.cells(2, "lab_topk_figs")
    with left:
        dk.chart(figs.soft_topk_curves([t], title=f"Soft weights at eps = {eps:g} against the hard top-{k}"),
                 key="lab_topk_curve", legend_below=True)
    with right:
        dk.chart(figs.topk_plan(t), key="lab_topk_plan")
    dk.chart(figs.soft_topk_curves(sharpen, title="How the weights sharpen as eps decreases"),
             key="lab_topk_sharpen")


def _neurons() -> None:
    from otviz.figures import lab_topk as figs

    st.subheader("The k channels that matter most")
    st.markdown(
        "A trained network is frozen, and one score per channel of a layer is learned: the layer's "
        "output is multiplied by the soft mask $m = \\mathrm{soft\\_topk}(\\theta, k, \\varepsilon)$ and "
        "$\\theta$ follows the gradient of the classification loss, with $\\varepsilon$ decreasing from "
        "0.3 to 0.005 so that the mask ends nearly hard. The network keeping the learned $k$ channels "
        "(the others zeroed) is then compared with $k$ random channels and with the $k$ channels of "
        "largest mean activation, on the teacher's test images.")
    c = dk.cells(3, "lab_topk_sel_controls", min_width=dk.CONTROL_MIN_WIDTH, gap="small")
    teacher = c[0].selectbox("Network", list(TEACHERS), key="lab_topk_teacher",
                             help="; ".join(f"{k}: {v}" for k, v in TEACHERS.items()))
    k = int(c[1].slider("Channels kept", 1, 32, 8, key="lab_topk_sel_k",
                        help="k of the layer's 64 channels."))
    seed = int(c[2].number_input("Seed", 0, 10_000, 0, key="lab_topk_sel_seed",
                                 help="Seeds the initial scores, the minibatches and the random selections."))
    params = (teacher, k, seed)
    if st.button("Learn which channels to keep", key="lab_topk_run", type="primary",
                 help="100 gradient steps on the 64 scores, then 10 random selections: a few seconds."):
        st.session_state["lab_topk_params"] = params
    if st.session_state.get("lab_topk_params") != params:
        st.caption("Press the button to learn the selection for these settings (a few seconds on a CPU; "
                   "results are kept for settings already run).")
        return
    try:
        with st.spinner("Learning the scores..."):
            sel = _selection(*params)
    except (ValueError, RuntimeError) as exc:
        dk.show_error(exc, "Could not select the channels")
        return
    r = sel.random_accuracy
    m = dk.cells(4, "lab_topk_sel_metrics", min_width=dk.METRIC_MIN_WIDTH, gap="small")
    m[0].metric(f"Learned {k} channels", f"{100 * sel.accuracy['learned']:.1f} %",
                delta=f"{100 * sel.margin_over_random:+.1f} points vs random",
                help=f"Test accuracy (% of {sel.n_test} test images) keeping the top {k} learned scores.")
    m[1].metric(f"Random {k} channels", f"{100 * r.mean():.1f} %",
                help=f"Mean test accuracy of {len(r)} random selections "
                     f"(min {100 * r.min():.1f} %, max {100 * r.max():.1f} %).")
    m[2].metric("Largest mean activation", f"{100 * sel.accuracy['largest mean activation']:.1f} %",
                help=f"Test accuracy keeping the {k} channels whose output is largest on average.")
    m[3].metric("All 64 channels", f"{100 * sel.accuracy['all channels']:.1f} %",
                help="The unmasked network, for reference.")
    left, right = dk.cells(2, "lab_topk_sel_figs")
    with left:
        dk.chart(figs.neuron_selection(sel), key="lab_topk_sel_acc")
    with right:
        dk.chart(figs.channel_scores(sel), key="lab_topk_sel_scores", legend_below=True)
    st.caption(f"{sel.steps} steps in {sel.seconds:.1f} s on {sel.device}. One seed is one draw of a "
               "non-convex search: other seeds find other channel sets (on cnn-digits, k = 8, seeds 0-7: "
               "learned 85 to 97 %, random 61 to 71 % on average).")


def render() -> None:
    st.header("Soft top-k: a differentiable top-k by optimal transport")
    st.markdown(
        "Keeping the $k$ largest of $n$ scores is a step function: its gradient is zero almost "
        "everywhere, so scores that decide *what to keep* cannot be learned through it. Xie et al. "
        "write the top-k as a transport problem and smooth it with entropy. The scores, rescaled to "
        "$[0, 1]$, each carry mass $1/n$; two anchors receive them, **dropped** at 0 with mass "
        "$(n-k)/n$ and **kept** at 1 with mass $k/n$; the cost is the squared distance. The soft "
        "top-k weight of a score is the share of its mass sent to *kept*:")
    st.latex(r"P^\varepsilon = \operatorname*{argmin}_{P \in U(a, b)} \sum_{ij} P_{ij} (s_i - y_j)^2 "
             r"+ \varepsilon\,\mathrm{KL}(P\,|\,ab^\top), \qquad A_i = n P^\varepsilon_{i,\mathrm{kept}} "
             r"= \sigma\!\left(\tfrac{2 s_i - \theta}{\varepsilon}\right)")
    st.markdown(
        "The weights lie in $[0, 1]$ and sum to $k$ (the *kept* anchor's mass); as $\\varepsilon \\to 0$ "
        "they become the hard top-k. With two anchors the plan is a logistic step in the score, "
        "$\\varepsilon/2$ wide, placed so that the weights sum to $k$; its gradient is the implicit "
        "derivative of the entropic plan (`otviz.lab.entropic_plan`).")
    _toy()
    _neurons()
    st.subheader("How this connects to aligning neurons")
    st.markdown(
        "Aligning two layers by OT moves each teacher neuron's mass onto student neurons; here each "
        "channel's mass is moved onto just two targets, *kept* and *dropped*, and the plan's soft "
        "assignment is what makes the choice trainable. The same mechanism can pick which teacher "
        "neurons a narrower student should receive (a top-k of the teacher's channels before the "
        "matching), and the comparison above is a warning for such choices: the channels that fire "
        "the most are not the ones the task needs.")
    st.caption("Reference: Yujia Xie, Hanjun Dai, Minshuo Chen, Bo Dai, Tuo Zhao, Hongyuan Zha, Wei Wei, "
               "Tomas Pfister. *Differentiable Top-k with Optimal Transport.* NeurIPS 2020. "
               "Library: `otviz.lab.soft_topk`, `otviz.lab.select_neurons`; notebook "
               "`notebooks/08_lab_soft_topk.ipynb`.")
