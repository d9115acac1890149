"""OT lab section: the Monge map learned by a generator against a critic (Leygonie et al. 2019),
next to the closed form between Gaussians and the exact discrete plan."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

import dashkit as dk

TITLE = "Adversarial OT maps"
N_POINTS = 500            # points of each sample drawn, mapped and compared
STEPS = (250, 500, 1000, 2000)
LAMS = (1.0, 3.0, 10.0, 20.0, 50.0, math.inf)
_KEEP = 8                 # trained maps kept in memory (all sessions together)


def _lam_label(lam: float) -> str:
    return "∞ (no cost term)" if math.isinf(lam) else f"{lam:g}"


@st.cache_data(show_spinner=False, max_entries=32)
def _samples_and_plan(pair: str, n: int, seed: int):
    """The two samples, the closed form's images (Gaussians only) and the exact plan's."""
    from otviz.lab.maps import PAIRS, barycentric_map, sample_pair

    X, Y = sample_pair(pair, n, seed)
    T = PAIRS[pair].closed_form
    bary = barycentric_map(X, Y)
    return X, Y, (None if T is None else T(X)), bary.images, bary.w2


@st.cache_resource(show_spinner=False)
def _trained() -> dict:
    """(pair, steps, lam, seed) -> AdversarialMap, shared by all sessions (the fit is deterministic)."""
    return {}


def _fit(pair: str, steps: int, lam: float, seed: int, bar) -> object:
    from otviz.lab.maps import PAIRS, fit_adversarial_map

    key = (pair, steps, lam, seed)
    store = _trained()
    if key in store:
        return store[key]
    p = PAIRS[pair]

    def progress(step: int, losses: dict) -> None:
        if step % 10 == 0 or step == steps:
            bar.progress(step / steps, text=f"Training: step {step} / {steps}, critic's W₂² estimate "
                                            f"{losses['critic_w2sq']:.3f}")

    fitted = fit_adversarial_map(p.source, p.target, steps=steps, lam=None if math.isinf(lam) else lam,
                                 seed=seed, reference=p.closed_form, callback=progress)
    while len(store) >= _KEEP:
        store.pop(next(iter(store)))
    store[key] = fitted
    return fitted


@st.cache_data(show_spinner=False, max_entries=32)
def _evaluate(key: tuple, n: int):
    """The learned map's images of the sample and its scores (the sample of ``_samples_and_plan``)."""
    from otviz.lab.maps import PAIRS, evaluate_map, sample_pair

    pair, _, _, seed = key
    fitted = _trained()[key]
    X, _ = sample_pair(pair, n, seed)
    p = PAIRS[pair]
    # evaluate_map draws the same n-point samples as sample_pair(pair, n, seed)
    ev = evaluate_map(fitted, p.source, p.target, reference=p.closed_form, n=n, seed=seed)
    return fitted(X), ev


def _pct(v: float) -> str:
    return f"{100 * v:.2g} %" if v < 0.1 else f"{100 * v:.0f} %"


def render() -> None:
    from otviz.figures.lab_maps import map_figure, training_curves
    from otviz.lab.maps import PAIRS

    st.header(TITLE)
    st.markdown(
        "Two distributions $\\mu$ (blue) and $\\nu$ (orange). The **Monge map** is the way of moving "
        "$\\mu$ onto $\\nu$ that moves mass the least, and its cost is the squared Wasserstein "
        "distance:")
    st.latex(r"T = \operatorname*{argmin}_{S:\; S_\#\mu = \nu}\ \mathbb{E}_{x\sim\mu}\|x - S(x)\|^2,"
             r"\qquad \mathbb{E}\|x - T(x)\|^2 = W_2^2(\mu, \nu).")
    st.markdown(
        "A **generator** $G(x) = x + f_\\theta(x)$, a small network that starts as the identity, "
        "learns it against a **critic** $g$, the Kantorovich potential of $\\tfrac12 W_2^2(G_\\#\\mu, "
        "\\nu)$: its gradient $\\nabla g(z) = z - T_{G_\\#\\mu\\to\\nu}(z)$ points each generated point "
        "back from where it should go, so descending it moves every point toward its target. The "
        "generator minimises the transport cost plus $\\lambda$ times the critic's estimate:")
    st.latex(r"\min_G\ \mathbb{E}\,\tfrac12\|x - G(x)\|^2 + \lambda\,\tfrac12 W_2^2(G_\#\mu, \nu)"
             r"\quad\Longrightarrow\quad G^\star = x + \tfrac{\lambda}{1+\lambda}\,\big(T(x) - x\big).")
    st.markdown(
        "The minimiser stops at the fraction $\\lambda/(1+\\lambda)$ of the way (a point of the "
        "$W_2$ geodesic): small $\\lambda$ shortens every arrow, large $\\lambda$ reaches $T$ but "
        "leaves less to choose the *cheapest* of the maps that push $\\mu$ onto $\\nu$. It is "
        "compared with the **closed form** between Gaussians, $T(x) = m_b + A(x - m_a)$, and the "
        "**exact discrete plan** between the two samples, turned into a map by sending each point to "
        "the average of where its mass goes (its barycentric projection).")

    c = dk.cells(4, "lab_maps_controls", min_width=dk.CONTROL_MIN_WIDTH, gap="small")
    pair = c[0].selectbox("Distributions", list(PAIRS), key="lab_maps_pair",
                          help="; ".join(f"{k}: {v.description}" for k, v in PAIRS.items()))
    steps = c[1].select_slider("Generator steps", STEPS, value=500, key="lab_maps_steps",
                               help="Each step: 5 critic updates, then one generator update, on "
                                    "batches of 256 fresh points.")
    lam = c[2].select_slider("λ (critic's weight)", LAMS, value=20.0, key="lab_maps_lam",
                             format_func=_lam_label,
                             help="Weight of the critic's W₂² estimate against the transport cost. "
                                  "∞ drops the cost term: the pure W₂ generator of the paper.")
    seed = int(c[3].number_input("Seed", 0, 10_000, 0, key="lab_maps_seed"))
    st.caption(PAIRS[pair].description[:1].upper() + PAIRS[pair].description[1:] + ".")

    try:
        X, Y, TX, BX, w2_hat = _samples_and_plan(pair, N_POINTS, seed)
    except ValueError as exc:
        dk.show_error(exc, "Could not draw the samples")
        return
    closed = PAIRS[pair].closed_form

    key = (pair, int(steps), float(lam), seed)
    if st.button("Train the map", type="primary", key="lab_maps_train",
                 help="Measured on a shared 2-core CPU: 500 steps in 7-16 s. A result is kept for "
                      "the same settings."):
        st.session_state["lab_maps_key"] = key
    fitted = None
    if st.session_state.get("lab_maps_key") == key:
        bar = st.progress(0.0, text="Training...")
        try:
            fitted = _fit(*key, bar)
        except (ValueError, FloatingPointError) as exc:
            dk.show_error(exc, "Training failed")
        bar.empty()

    GX = ev = None
    if fitted is not None:
        GX, ev = _evaluate(key, N_POINTS)

    panels = [("Learned map G (adversarial)", GX), ("Closed form T", TX),
              ("Exact discrete plan (barycentric)", BX)]
    panels = [(t, v) for t, v in panels if v is not None or t.startswith("Learned")]
    everything = np.concatenate([X, Y, BX] + [v for _, v in panels if v is not None])
    lo, hi = everything.min(0), everything.max(0)
    half = float(max(hi - lo)) * 0.56
    mid = (lo + hi) / 2
    ranges = ([mid[0] - half, mid[0] + half], [mid[1] - half, mid[1] + half])
    st.caption(f"Blue: {N_POINTS} points of the source μ; orange: {N_POINTS} of the target ν; green: "
               "where each map sends the blue points; grey: the displacement of 120 of them. A good "
               "map lays green over orange with short segments that do not cross. Same axes in every "
               "panel.")
    cells = dk.cells(len(panels), "lab_maps_panels", min_width=340)
    subtitles = {
        "Learned map G (adversarial)": (f"{int(steps)} steps, λ = {_lam_label(float(lam))}"
                                        + (f", {fitted.seconds:.1f} s" if fitted is not None else "")),
        "Closed form T": "T(x) = m_b + A (x - m_a)",
        "Exact discrete plan (barycentric)": f"{N_POINTS} x {N_POINTS} points, network simplex",
    }
    for cell, (title, images) in zip(cells, panels):
        with cell:
            if images is None:
                st.subheader(title, anchor=False)
                st.info("Press **Train the map** to learn it (the panels beside it need no training).",
                        icon=":material/play_arrow:")
                continue
            dk.chart(map_figure(X, Y, images, title=title, subtitle=subtitles[title], ranges=ranges,
                                height=400, n_arrows=120, showlegend=False),
                     key=f"lab_maps_fig_{title[:8]}")

    if ev is not None:
        st.markdown(f"**How good is the learned map?** On {N_POINTS} fresh points of each distribution "
                    "(the ones drawn above); distances in the units of the plot, squared where marked ².")
        m = dk.cells(4, "lab_maps_metrics", min_width=dk.METRIC_MIN_WIDTH, gap="small")
        if ev.reference_mse is not None:
            m[0].metric("Error to the closed form", _pct(ev.relative_error),
                        help=f"E‖G(x) − T(x)‖² = {ev.reference_mse:.4f}, relative to the closed form's "
                             f"own displacement E‖T(x) − x‖² = W₂² = {ev.reference_cost:.2f}. The "
                             f"objective alone accounts for 1/(1+λ)² = "
                             f"{_pct(0.0 if math.isinf(lam) else 1 / (1 + lam) ** 2)}.")
            disc = float(((BX - TX) ** 2).sum(1).mean()) / ev.reference_cost
            m[1].metric("Discrete plan's error", _pct(disc),
                        help="The same measure for the barycentric map of the exact plan between the "
                             f"two {N_POINTS}-point samples: it carries the samples' own noise.")
        else:
            m[0].metric("Transport cost E‖x − G(x)‖²", f"{ev.transport_cost:.3f}",
                        help="What the learned map pays to move the source sample.")
            m[1].metric("Exact W₂² of the samples", f"{w2_hat ** 2:.3f}",
                        help="The discrete plan's cost: the cheapest way to move the source sample "
                             "onto the target sample. A map that reaches ν cannot pay much less.")
        m[2].metric("W₂(G#μ, ν) on samples", f"{ev.w2_to_target:.3f}",
                    help="Exact OT between the mapped source sample and the target sample, in plot "
                         "units. Read it against the noise floor: two independent samples of ν "
                         "are that far apart already.")
        m[3].metric("Noise floor W₂(ν̂, ν̂′)", f"{ev.w2_noise_floor:.3f}",
                    help=f"W₂ between two independent {N_POINTS}-point samples of the target.")
        if ev.reference_mse is not None:
            bias = 0.0 if math.isinf(lam) else 1 / (1 + lam) ** 2
            st.caption(f"Errors: E‖map(x) − T(x)‖² as a share of the closed form's own displacement "
                       f"E‖T(x) − x‖² ≈ W₂² = {ev.reference_cost:.2f} on this sample (plot units²); "
                       f"0 % is the closed form. With λ = {_lam_label(float(lam))} the objective "
                       f"itself stops short by {_pct(bias)}. W₂ in plot units: the closed form scores "
                       f"{ev.w2_reference_to_target:.3f} on the same samples.")
        else:
            st.caption("No closed form for this pair: the learned map is judged by how close its "
                       "push-forward comes to the target (W₂, against the noise floor) and by what it "
                       "pays to get there (against the exact plan's cost).")
        ref = None if closed is None else closed.w2 ** 2
        dk.chart(training_curves(fitted, reference_w2sq=ref, title="Training",
                                 subtitle="the cost climbs toward W₂²(μ, ν) while the critic's estimate "
                                          "falls to the batches' noise level"),
                 key="lab_maps_curves")

    st.subheader("How this connects to aligning neurons", anchor=False)
    st.markdown(
        "otviz matches the neurons of a teacher and a student with a discrete plan, re-solved on "
        "every batch, and its regulariser pulls each student neuron toward the barycentre of the "
        "teacher neurons it is matched with: the barycentric projection of the discrete-plan panel. "
        "The gradient of that OT term (by the envelope theorem) is the same force as the critic's "
        "$\\nabla g$ here, a displacement toward where the mass should go. A learned map goes one "
        "step further: it is a function, defined between the samples as well, so a map fitted "
        "from one layer's neurons to another's would place neurons it has never seen, where a plan "
        "only pairs the ones it was given; and the $\\lambda$ trade-off above is the same one as "
        "the OT regulariser's weight against the task loss.")
    st.caption("Jacob Leygonie, Jennifer She, Amjad Almahairi, Sai Rajeswar, Aaron Courville. "
               "*Adversarial Computation of Optimal Transport Maps*. arXiv:1906.09691, 2019.")
