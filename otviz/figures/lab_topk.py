"""Figures of the soft top-k (:mod:`otviz.lab.topk`): how the indicator sharpens with eps, the
transport plan to the two anchors, and the neuron selection it learns.

The builders take the objects :mod:`otviz.lab.topk` returns (:class:`~otviz.lab.topk.TopKTransport`,
:class:`~otviz.lab.topk.NeuronSelection`), read only through their attributes, so this module
imports no torch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from ._common import STUDENT_COLOR, TEACHER_COLOR, _finish

__all__ = ["channel_scores", "neuron_selection", "soft_topk_curves", "topk_plan"]

KEPT_COLOR = TEACHER_COLOR
DROPPED_COLOR = STUDENT_COLOR
RANDOM_COLOR = "#8c8c8c"
FULL_COLOR = "#333333"
_LINE_BINS = 8  # plan lines are drawn in this many opacity groups (one trace each)


def _need(obj: Any, attrs: Sequence[str], what: str) -> None:
    missing = [a for a in attrs if not hasattr(obj, a)]
    if missing:
        raise TypeError(f"{what} needs an object with {', '.join(attrs)} (as returned by "
                        f"otviz.lab.topk); {type(obj).__name__} lacks {', '.join(missing)}")


def soft_topk_curves(transports: Sequence[Any], *, title: str | None = "Soft top-k: the weights sharpen as eps decreases",
                     x_label: str = "score", height: int = 420) -> go.Figure:
    """The soft top-k weight of each score for several ``eps``, against the hard top-k.

    Parameters
    ----------
    transports : sequence of TopKTransport
        :func:`otviz.lab.topk.topk_transport` of the same scores and ``k`` at several
        ``eps`` (drawn from the largest eps, light, to the smallest, dark).
    title, x_label, height : layout.

    Returns
    -------
    plotly.graph_objects.Figure
        The weights (0 to 1) against the scores, one line per ``eps``; the hard top-k
        as a grey step; the weights' sum in each legend entry.
    """
    transports = list(transports)
    if not transports:
        raise ValueError("soft_topk_curves needs at least one TopKTransport (one per eps)")
    for t in transports:
        _need(t, ("scores", "weights", "hard", "eps", "k"), "soft_topk_curves")
    first = transports[0]
    if any(t.k != first.k or np.shape(t.scores) != np.shape(first.scores)
           or not np.array_equal(t.scores, first.scores) for t in transports):
        raise ValueError("soft_topk_curves compares eps values: give it transports of the same scores and k")
    order = np.argsort(first.scores, kind="stable")
    xs = np.asarray(first.scores, float)[order]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=np.asarray(first.hard)[order], mode="lines", line_shape="hv",
                             line=dict(color="#b0b0b0", width=6), name=f"hard top-{first.k}",
                             hovertemplate="score %{x:.3g}<br>hard %{y:.0f}<extra></extra>"))
    ts = sorted(transports, key=lambda t: -t.eps)
    colors = sample_colorscale("Blues", list(np.linspace(0.35, 1.0, len(ts))))
    for t, color in zip(ts, colors):
        w = np.asarray(t.weights, float)[order]
        fig.add_trace(go.Scatter(
            x=xs, y=w, mode="lines+markers", line=dict(color=color, width=2), marker=dict(size=5),
            name=f"eps = {t.eps:g} (sum {w.sum():.4f})",
            hovertemplate=f"eps {t.eps:g}<br>score %{{x:.3g}}<br>weight %{{y:.3f}}<extra></extra>"))
    n = len(xs)
    fig.update_xaxes(title=x_label)
    fig.update_yaxes(title="soft top-k weight", range=[-0.05, 1.05])
    return _finish(fig, title, f"n = {n} scores, k = {first.k}; every curve sums to k; eps in squared "
                               f"units of the rescaled scores", height=height,
                   legend=dict(x=0.01, y=0.99, bgcolor="rgba(255,255,255,0.8)"))


def topk_plan(transport: Any, *, title: str | None = "The transport plan to the two anchors",
              height: int = 420) -> go.Figure:
    """The entropic plan of a soft top-k: each score sends its mass to "kept" and "dropped".

    Top row: the scores at their rescaled position in [0, 1], coloured by their weight.
    Bottom row: the anchors, "dropped" at 0 and "kept" at 1, sized by the mass they
    receive. A line joins each score to each anchor, its opacity the share of the
    score's mass it carries; a dotted line marks the threshold (weight 1/2).

    Parameters
    ----------
    transport : TopKTransport
        :func:`otviz.lab.topk.topk_transport` of one score vector.
    """
    _need(transport, ("scaled", "plan", "weights", "k", "eps", "anchors", "threshold"), "topk_plan")
    s = np.asarray(transport.scaled, float)
    P = np.asarray(transport.plan, float)
    n = len(s)
    share = P * n  # each row sums to 1
    y_scores, y_anchors = 1.0, 0.0
    fig = go.Figure()
    edges = np.linspace(0.0, 1.0, _LINE_BINS + 1)
    for j, (anchor, color) in enumerate(zip(transport.anchors, (DROPPED_COLOR, KEPT_COLOR))):
        for b in range(_LINE_BINS):
            lo, hi = edges[b], edges[b + 1]
            sel = np.flatnonzero((share[:, j] > max(lo, 1e-3)) & (share[:, j] <= hi))
            if sel.size == 0:
                continue
            xs, ys = [], []
            for i in sel:
                xs += [s[i], anchor, None]
                ys += [y_scores, y_anchors, None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     line=dict(color=color, width=1.5), opacity=0.15 + 0.85 * hi))
    fig.add_trace(go.Scatter(
        x=s, y=np.full(n, y_scores), mode="markers", name="scores (rescaled)",
        marker=dict(size=10, color=transport.weights, colorscale=[[0, DROPPED_COLOR], [1, KEPT_COLOR]],
                    cmin=0, cmax=1, line=dict(width=0.5, color="white"),
                    colorbar=dict(title=dict(text="weight"), len=0.6, thickness=12)),
        customdata=np.c_[np.arange(n), transport.weights],
        hovertemplate="score %{customdata[0]:.0f}: rescaled %{x:.3f}<br>weight %{customdata[1]:.3f}"
                      "<extra></extra>"))
    masses = P.sum(0)
    names = ("dropped", "kept")
    fig.add_trace(go.Scatter(
        x=list(transport.anchors), y=[y_anchors, y_anchors], mode="markers+text", showlegend=False,
        marker=dict(size=[14 + 30 * m for m in masses], color=[DROPPED_COLOR, KEPT_COLOR],
                    symbol="diamond"),
        text=[f"{nm} (anchor {a:g}): mass {m:.3f}" for nm, a, m in zip(names, transport.anchors, masses)],
        textposition=["bottom right", "bottom left"],
        hovertemplate="%{text}<extra></extra>"))
    if np.isfinite(transport.threshold):
        fig.add_shape(type="line", x0=transport.threshold, x1=transport.threshold, y0=0.85, y1=1.15,
                      line=dict(color="#555", dash="dot"))
        fig.add_annotation(x=transport.threshold, y=1.17, text="weight 1/2", showarrow=False,
                           font=dict(size=11, color="#555"))
    lo, hi = min(0.0, float(s.min())), max(1.0, float(s.max()))
    pad = 0.12 * (hi - lo)
    fig.update_xaxes(title="position (rescaled score, anchors at 0 and 1)", range=[lo - pad, hi + pad],
                     zeroline=False)
    fig.update_yaxes(tickvals=[y_anchors, y_scores], ticktext=["anchors", "scores"], range=[-0.35, 1.3],
                     showgrid=False, zeroline=False)
    return _finish(fig, title, f"n = {n}, k = {transport.k}, eps = {transport.eps:g}; line opacity = share "
                               f"of a score's mass sent to that anchor", height=height, showlegend=False)


def neuron_selection(selection: Any, *, title: str | None = None, height: int = 340) -> go.Figure:
    """Test accuracy of the network keeping ``k`` channels of a layer, by selection rule.

    Rows: all channels (the reference), the channels learned through the soft top-k,
    the channels of largest mean activation, and each random selection (grey dots,
    their mean as a bar with the min-max range).

    Parameters
    ----------
    selection : NeuronSelection
        :func:`otviz.lab.topk.select_neurons`'s result.
    """
    _need(selection, ("accuracy", "random_accuracy", "k", "n_channels", "layer", "model", "n_test"),
          "neuron_selection")
    acc = selection.accuracy
    r = 100 * np.asarray(selection.random_accuracy, float)
    rows = [f"all {selection.n_channels} channels", f"learned (soft top-{selection.k})",
            "largest mean activation", f"random {selection.k} ({len(r)} draws)"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=r, y=[rows[3]] * len(r), mode="markers", marker=dict(size=8, color=RANDOM_COLOR, opacity=0.6),
        name="a random draw", hovertemplate="random channels: %{x:.1f} %<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[r.mean()], y=[rows[3]], mode="markers+text", text=[f"mean {r.mean():.1f} %"],
        textposition="top center",
        marker=dict(size=16, color=RANDOM_COLOR, symbol="line-ns", line=dict(width=3, color="#555")),
        name="mean of the random draws", hovertemplate="random: mean %{x:.1f} %<extra></extra>"))
    for row, key, color in ((rows[0], "all channels", FULL_COLOR), (rows[1], "learned", KEPT_COLOR),
                            (rows[2], "largest mean activation", DROPPED_COLOR)):
        fig.add_trace(go.Scatter(
            x=[100 * acc[key]], y=[row], mode="markers+text", marker=dict(size=13, color=color),
            text=[f"{100 * acc[key]:.1f} %  "], textposition="middle left", showlegend=False,
            hovertemplate=f"{row}: %{{x:.1f}} %<extra></extra>"))
    lo = min(r.min(), 100 * min(acc.values()))
    fig.update_xaxes(title=f"test accuracy (% of {selection.n_test} images)",
                     range=[max(0.0, lo - 8), 101])
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=rows[::-1])
    title = title if title is not None else f"Keep {selection.k} of {selection.n_channels} channels: which {selection.k}?"
    return _finish(fig, title, f"{selection.model}, layer {selection.layer}; the other channels are zeroed",
                   height=height, showlegend=False)


def channel_scores(selection: Any, *, title: str | None = "Do the channels that matter fire the most?",
                   height: int = 380) -> go.Figure:
    """Each channel's mean activation against the score it learned; the kept ones highlighted.

    Parameters
    ----------
    selection : NeuronSelection
        :func:`otviz.lab.topk.select_neurons`'s result.
    """
    _need(selection, ("scores", "mean_activation", "learned", "largest_mean", "k", "soft_mask"),
          "channel_scores")
    scores = np.asarray(selection.scores, float)
    act = np.asarray(selection.mean_activation, float)
    n = len(scores)
    learned = np.zeros(n, bool)
    learned[np.asarray(selection.learned, int)] = True
    largest = np.zeros(n, bool)
    largest[np.asarray(selection.largest_mean, int)] = True
    fig = go.Figure()
    groups = ((~learned & ~largest, "neither", RANDOM_COLOR, "circle"),
              (learned & ~largest, "learned only", KEPT_COLOR, "circle"),
              (largest & ~learned, "largest mean only", DROPPED_COLOR, "circle"),
              (learned & largest, "both", "#7b3fa0", "star"))
    for sel, name, color, symbol in groups:
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            continue
        fig.add_trace(go.Scatter(
            x=act[idx], y=scores[idx], mode="markers", name=f"{name} ({idx.size})",
            marker=dict(size=9 if name != "neither" else 7, color=color, symbol=symbol,
                        opacity=1.0 if name != "neither" else 0.55),
            customdata=np.c_[idx, np.asarray(selection.soft_mask)[idx]],
            hovertemplate="channel %{customdata[0]:.0f}<br>mean activation %{x:.3g}<br>"
                          "learned score %{y:.3g}<br>soft mask %{customdata[1]:.3f}<extra></extra>"))
    fig.update_xaxes(title="mean activation over the training images")
    fig.update_yaxes(title="learned score")
    return _finish(fig, title, f"{n} channels; the top {selection.k} of each axis are kept by that rule",
                   height=height, legend=dict(x=0.01, y=0.99, bgcolor="rgba(255,255,255,0.8)"))
