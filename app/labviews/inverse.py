"""OT lab section: inverse OT, learning the cost from observed matchings (Ma et al. 2020)."""

from __future__ import annotations

import numpy as np
import streamlit as st

import dashkit as dk
from otviz.figures import lab_inverse as figs
from otviz.lab import inverse as inv

TEACHER, STUDENT = "cnn-digits", "cnn-digits-0to4"
N_PROBE = 256
LAYERS = ("features.conv1", "features.conv2", "features.conv3")
READOUT = "readout coupling"
PLANTED = "planted (a check)"


def _true_m(ratio: float, angle_deg: float) -> np.ndarray:
    """A 2-D Mahalanobis matrix with eigenvalues sqrt(ratio), 1/sqrt(ratio) (determinant 1),
    its first axis at ``angle_deg``."""
    th = np.deg2rad(angle_deg)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return R @ np.diag([np.sqrt(ratio), 1 / np.sqrt(ratio)]) @ R.T


@st.cache_data(show_spinner="Fitting the cost ...", max_entries=32)
def _recover(ratio: float, angle: float, eps: float, n_plans: int, n_points: int, samples: int | None,
             seed: int):
    M = _true_m(ratio, angle)
    obs = inv.generate_plans(M, n_plans=n_plans, n_points=n_points, eps=eps, n_samples=samples, seed=seed)
    fit = inv.fit_cost(obs.xs, obs.ys, obs.plans, eps=eps)
    return M, obs, fit


@st.cache_resource(show_spinner="Loading the networks and their activations ...")
def _activations():
    import torch

    import otviz
    from otviz.data import load_split
    from otviz.teachers import load_teacher

    teacher, _ = load_teacher(TEACHER)
    student, _ = load_teacher(STUDENT)
    _, _, X_test, y_test = load_split("digits")
    probe = torch.from_numpy(X_test[:N_PROBE])
    acts_t = otviz.capture(teacher, probe, list(LAYERS))
    acts_s = otviz.capture(student, probe, list(LAYERS))
    return acts_t, acts_s, np.asarray(y_test[:N_PROBE])


@st.cache_data(show_spinner="Fitting the candidate costs ...", max_entries=16)
def _explain(layer: str, observed: str, planted: str, planted_weight: float):
    import otviz

    acts_t, acts_s, labels = _activations()
    costs = inv.neuron_costs(acts_t[layer], acts_s[layer], labels=labels)
    if observed == READOUT:
        plan = inv.readout_coupling(otviz.neurons(acts_t[layer]).numpy(), otviz.neurons(acts_s[layer]).numpy())
    else:
        from otviz.lab import solve

        C = costs[planted]
        centred = C - C.mean(0) - C.mean(1)[:, None] + C.mean()
        plan = solve(planted_weight * C / centred.std(), eps=1.0).plan
    return plan, inv.explain_matching(plan, costs)


def _synthetic() -> None:
    st.subheader("1. Recover a known cost")
    st.markdown(
        "Points $x_i$ and $y_j$ are drawn in the plane, and the *observed* plans are the entropic OT "
        "plans of a Mahalanobis cost $C_M(x, y) = (x - y)^\\top M (x - y)$ that the fit does not see. "
        "Choose $M$ by the ratio of its two eigenvalues (its determinant is 1) and the angle of its "
        "cheap axis. The fit starts from the best **isotropic** cost $s\\,\\|x - y\\|^2$ and moves "
        "$M = LL^\\top$ by L-BFGS. With sampled pairs instead of exact plans the observations are "
        "noisy, as when matched pairs are counted, and the recovery degrades gracefully.")
    c = dk.cells(3, "lab_inverse_mcontrols", min_width=dk.CONTROL_MIN_WIDTH, gap="small")
    ratio = c[0].select_slider("Anisotropy of the true M", [1.0, 1.5, 2.0, 3.0, 5.0, 10.0], value=3.0,
                               key="lab_inverse_ratio",
                               help="Ratio of the eigenvalues of the true M; 1 is the squared Euclidean cost.")
    angle = c[1].slider("Angle of its cheap axis (degrees)", 0, 165, 30, step=15, key="lab_inverse_angle")
    eps = c[2].select_slider("eps", [0.5, 1.0, 2.0], value=0.5, key="lab_inverse_eps",
                             help="Absolute entropic regularisation, in the units of the cost, used both to "
                                  "generate the plans and in the fit. What the plans determine is M / eps.")
    c = dk.cells(4, "lab_inverse_dcontrols", min_width=dk.CONTROL_MIN_WIDTH, gap="small")
    n_plans = c[0].slider("Observed plans", 1, 10, 4, key="lab_inverse_plans")
    n_points = c[1].slider("Points per set", 10, 50, 30, step=5, key="lab_inverse_points")
    obs_kind = c[2].select_slider("Observations", ["exact plans", "5000 pairs", "1000 pairs", "200 pairs"],
                                  value="exact plans", key="lab_inverse_obs",
                                  help="Exact entropic plans, or the frequencies of N pairs sampled from each.")
    seed = c[3].number_input("Seed", 0, 10_000, 0, key="lab_inverse_seed")
    samples = None if obs_kind == "exact plans" else int(obs_kind.split()[0])
    try:
        M, obs, fit = _recover(float(ratio), float(angle), float(eps), int(n_plans), int(n_points), samples,
                               int(seed))
    except (ValueError, RuntimeError) as exc:
        dk.show_error(exc, "Could not fit the cost")
        return

    m = dk.cells(4, "lab_inverse_metrics", min_width=dk.METRIC_MIN_WIDTH, gap="small")
    m[0].metric("Relative error of M", f"{fit.relative_error(M):.1e}",
                help="||M_learned - M_true||_F / ||M_true||_F (0 is a perfect recovery).")
    m[1].metric("Divergence explained", f"{fit.explained:.1%}",
                help="1 - KL(observed | learned cost's plans) / KL(observed | independent coupling), summed "
                     "over the plans: 100% means the learned cost reproduces every observed plan.")
    iso_share = 1 - fit.kl_isotropic / float(np.mean(fit.kl_independent))
    m[2].metric("Best isotropic cost explains", f"{iso_share:.1%}",
                help="The same share for the best cost s ||x - y||^2: what a squared Euclidean cost can do.")
    m[3].metric("L-BFGS iterations", f"{fit.n_iter}", help=f"{fit.seconds:.2f} s; "
                f"{'the stopping rule was met' if fit.converged else 'stopped at max_iter'}.")
    left, right = dk.cells(2, "lab_inverse_fit")
    with left:
        dk.chart(figs.metric_balls(M, fit.M, fit.isotropic_scale * np.eye(2)), key="lab_inverse_balls",
                 legend_below=True)
    with right:
        dk.chart(figs.fit_curve(fit), key="lab_inverse_curve")
    which = 0
    if len(obs.plans) > 1:
        which = st.slider("Plan shown", 1, len(obs.plans), 1, key="lab_inverse_which", width=320) - 1
    left, right = dk.cells(2, "lab_inverse_plans")
    with left:
        dk.chart(figs.plan_pair(obs.plans[which], fit.plans[which],
                                title=f"Observed plan {which + 1} and its reproduction"),
                 key="lab_inverse_planpair")
    with right:
        from otviz import figures

        dk.chart(figures.point_cloud_transport(obs.xs[which], obs.ys[which], fit.plans[which], top=0.8,
                                               title="The reproduced plan on the points", height=400,
                                               x_label="x points", y_label="y points"),
                 key="lab_inverse_cloud", legend_below=True)
    st.caption(
        "Reading: the plans see the cost only through $M/\\varepsilon$, so the scale of $M$ is recovered "
        "because $\\varepsilon$ is known. Exact plans give back $M$ to the solver's accuracy; sampled pairs "
        "leave an error that shrinks as more pairs are observed, and the divergence explained then stays "
        "below 100% because the noise itself is not a cost.")


def _closing(layer: str, observed: str, planted: str, weight: float, ex) -> str:
    """The last sentences of the neuron reading, from the numbers."""
    if observed == PLANTED:
        found = float(ex.table.loc[planted, "weight alone"])
        if ex.best == planted and abs(found - weight) <= 0.01 * weight:
            return (f"The planted cost is found, with weight {found:.3f} for the {weight:g} planted: the "
                    "method recovers a cost that is in its candidate set.")
        return (f"The planted cost is not singled out (best: {ex.best}; fitted weight of the planted cost "
                f"{found:.3f} for {weight:g}): its candidates are too alike here to be told apart.")
    text = ("What no candidate explains is the part of the student's readout that is not a matter of "
            "response similarity at all.")
    if layer == LAYERS[0]:
        text = ("The coupling is nearly diagonal because both networks started from the same weights and "
                "their first-layer channels still correspond one to one; in deeper layers the channels "
                "have drifted into mixtures and every cost explains less. " + text)
    return text


def _neurons() -> None:
    st.subheader("2. Which cost explains a matching between two networks?")
    st.markdown(
        f"The teacher `{TEACHER}` and the student `{STUDENT}` (same architecture, trained on the digits "
        "0-4 only, from the same seed and hence the same initial weights) see the same probe batch of 256 "
        "digits. The **observed matching** is the *readout "
        "coupling*: each student channel is regressed on the teacher channels of the same layer (ridge "
        "regression on standardised responses) and the absolute weights, scaled to uniform marginals, "
        "say which teacher neurons each student neuron is made of. No transport cost enters it. Four "
        "candidate costs compare a teacher neuron with a student neuron through different views: its "
        "whole response maps (*pixels*, squared Euclidean or correlation), its mean response per image "
        "(*images*), and its mean response per class (*classes*). Inverse OT fits each alone and all "
        "together; a *planted* matching, the entropic plan of one candidate, checks that the fit finds "
        "the cost that made it.")
    c = dk.cells(4, "lab_inverse_ncontrols", min_width=dk.CONTROL_MIN_WIDTH, gap="small")
    layer = c[0].selectbox("Layer (both networks)", LAYERS, index=0, key="lab_inverse_layer")
    observed = c[1].selectbox("Observed matching", [READOUT, PLANTED], key="lab_inverse_observed",
                              help="Readout coupling: which teacher channels each student channel is "
                                   "regressed on. Planted: the entropic plan of one candidate cost, to "
                                   "check that the fit finds it.")
    names = ["pixels: sq. Euclidean", "pixels: correlation", "images: correlation", "classes: correlation"]
    planted = c[2].selectbox("Planted cost", names, index=3, key="lab_inverse_planted",
                             disabled=observed != PLANTED)
    weight = c[3].select_slider("Planted weight", [0.5, 1.0, 2.0, 3.0], value=3.0,
                                key="lab_inverse_pweight", disabled=observed != PLANTED,
                                help="Inverse temperature of the planted cost (in units of its spread); "
                                     "larger = sharper plan.")
    try:
        plan, ex = _explain(layer, observed, planted, float(weight))
    except (ValueError, RuntimeError) as exc:
        dk.show_error(exc, "Could not explain the matching")
        return
    best = ex.table.iloc[0]
    second = ex.table.iloc[1]
    m = dk.cells(3, "lab_inverse_nmetrics", min_width=dk.METRIC_MIN_WIDTH, gap="small")
    m[0].metric(f"Best single cost: {ex.best}", f"{best['explained alone']:.1%}",
                help="The share of the observed matching's divergence from the independent coupling "
                     "that this cost explains alone: 1 - KL(observed | its best entropic plan) / "
                     "KL(observed | independent coupling).")
    m[1].metric(f"Runner-up: {second.name}", f"{second['explained alone']:.1%}")
    m[2].metric("All four together explain", f"{ex.mix.explained:.1%}",
                help="The same share for the joint fit (non-negative weights on the four costs).")
    left, right = dk.cells(2, "lab_inverse_nfigs")
    with left:
        dk.chart(figs.explanation_bars(ex), key="lab_inverse_bars")
    with right:
        dk.chart(figs.plan_pair(plan, ex.mix.plans[0], title="Observed matching and the joint fit's plan",
                                row_label="teacher neurons", col_label="student neurons"),
                 key="lab_inverse_nplans")
    coll = ex.collinearity.to_numpy()
    off = coll[~np.eye(len(coll), dtype=bool)]
    gap = best["explained alone"] - second["explained alone"]
    st.markdown(
        f"**Reading.** In `{layer}`, the cost that best explains the matching on its own is "
        f"*{ex.best}* ({best['explained alone']:.0%} of the matching's divergence from independence), "
        f"ahead of *{second.name}* by {gap:.1%}. "
        + ("The candidates' double-centred costs, the only part a plan responds to, are strongly "
           f"correlated here (up to {off.max():.3f}), so close scores mean the plan cannot tell those "
           "costs apart; the weights of the joint fit are then poorly determined. "
           if off.max() > 0.95 else
           f"The candidates differ enough here (correlations up to {off.max():.2f}) for their scores to be "
           "compared. ")
        + _closing(layer, observed, planted, float(weight), ex))
    with st.expander("The numbers"):
        st.dataframe(ex.table.style.format({"explained alone": "{:.1%}", "KL alone": "{:.4f}",
                                            "weight alone": "{:.3f}", "weight in mix": "{:.3f}"}))
        st.caption("Weights are inverse temperatures in units of each candidate's spread (eps = 1); KL in nats. "
                   "Correlations between the candidates' double-centred costs:")
        st.dataframe(ex.collinearity.style.format("{:.3f}"))


def render() -> None:
    st.header("Inverse OT")
    st.markdown(
        "Optimal transport takes a cost and returns a plan. **Inverse OT** goes the other way: given "
        "observed matchings, which cost makes them optimal? For an observed coupling $\\hat P$ with "
        "marginals $a, b$ and a cost $C_\\theta$, the entropic plan $P(C) = \\mathrm{argmin}_{P \\in U(a,b)} "
        "\\langle P, C\\rangle + \\varepsilon\\,\\mathrm{KL}(P\\,|\\,ab^\\top)$ is a model of the observed "
        "pairs, and the cost is fitted by maximum likelihood:")
    st.latex(r"\min_\theta\ \mathrm{KL}\big(\hat P \,\big|\, P(C_\theta)\big) = \frac{1}{\varepsilon}"
             r"\Big(\langle \hat P, C_\theta\rangle - \mathrm{OT}_\varepsilon(C_\theta)\Big) + \text{const},"
             r"\qquad \frac{\partial}{\partial C} = \frac{\hat P - P(C)}{\varepsilon}.")
    st.markdown(
        "The objective is convex in the cost matrix, and its gradient needs one entropic OT solve and no "
        "differentiation through the solver. What a plan cannot see: adding a function of $x$ alone or of "
        "$y$ alone to the cost changes nothing (the dual potentials absorb it), and only $C/\\varepsilon$ "
        "matters.")
    _synthetic()
    _neurons()
    st.subheader("How this connects to aligning neurons")
    st.markdown(
        "Every alignment in otviz starts from a chosen cost between neurons: squared Euclidean on "
        "standardised responses by default, or cosine, or correlation. Inverse OT turns that choice into a "
        "question the data can answer: given a matching the networks themselves express (which teacher "
        "neurons a student neuron is built from, or the plan a distillation run settled on), which cost "
        "makes it optimal, and how much of it does any cost explain? A cost that explains the matching "
        "well is a principled choice for the OT regulariser; a matching that no response-similarity cost "
        "explains says the correspondence between the networks is not neuron-to-neuron.")
    st.caption("Reference: " + inv.REFERENCE)
