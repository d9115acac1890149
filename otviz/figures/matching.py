"""Is the plan a good match? The cost beside the plan, matched against all pair costs, per neuron.

A reordered plan looks like a matching whatever the layers are; these figures
show what the matched pairs cost, which is what separates a student aligned
with its teacher from an unrelated one (see :mod:`otviz.matching`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from otviz import matching
from otviz.figures._common import (
    PLAN_COLORSCALE,
    STUDENT_COLOR,
    TEACHER_COLOR,
    _check_order,
    _finish,
    _plan_and_weights,
    _singular,
)
from otviz.figures.plans import (
    _MAX_CELLS,
    _check_cost,
    _heatmap_trace,
    auto_height,
    plan_cells,
    plan_order,
)

__all__ = ["alignment_panel", "matched_cost_distribution", "match_quality"]

COST_COLORSCALE = "Viridis"
"""Cost matrices: cheap pairs dark, expensive pairs light (viridis), like the plan's heavy cells."""
ALL_PAIRS_COLOR = "#8c8c8c"
MATCHED_COLOR = "#1b7837"


def _plan_cost_inputs(plan_or_alignment: Any, cost: Any, cost_label: str | None
                      ) -> tuple[np.ndarray, np.ndarray, str, Any]:
    P, _, _, al = _plan_and_weights(plan_or_alignment)
    if cost is None and al is not None:
        cost = al.cost_matrix
    if cost is None:
        raise TypeError("cost is required with a plain plan; pass the cost matrix the plan was "
                        "solved on (Alignment.cost_matrix), or pass the Alignment")
    C = _check_cost(cost, P.shape)
    if (C < 0).any():
        raise ValueError(f"cost has negative entries (min {C.min():.3g}); pass a non-negative "
                         f"cost matrix")
    if cost_label is None:
        cost_label = f"cost ({al.cost})" if al is not None else "cost"
    return P, C, cost_label, al


def alignment_panel(
    plan_or_alignment: Any,
    cost: Any = None,
    *,
    cost_label: str | None = None,
    order: tuple[Sequence[int], Sequence[int]] | None = None,
    log_color: bool = False,
    title: str | None = None,
    teacher_label: str = "teacher neurons",
    student_label: str = "student neurons",
    max_cells: int | None = _MAX_CELLS,
    height: int | str | None = "auto",
    cost_range: tuple[float, float] | None = None,
    cost_colorbar: bool = True,
) -> go.Figure:
    r"""The cost matrix beside the plan, in the same row and column order.

    Left: the cost :math:`C_{ij}` of every teacher/student pair (cheap pairs
    dark); right: the plan :math:`P`. Both use :func:`plan_order` of the plan
    (or ``order``), so the user sees whether the plan's mass sits on the dark
    (cheap) cells. An OT plan always looks like a matching; only the cost
    beside it tells a matching of related neurons (a dark diagonal under the
    plan's diagonal) from a matching of unrelated ones (a flat cost matrix).

    Parameters
    ----------
    plan_or_alignment : array of shape (m, k) or Alignment
    cost : array of shape (m, k), optional
        Default: the Alignment's ``cost_matrix``; required with a plain plan.
    cost_label : str, optional
        Name of the cost (colour bar and hover), default from the Alignment.
    order : (row_order, col_order), optional
        Default :func:`plan_order` of the plan.
    log_color : bool, default False
        Plan colours on a log scale (as in :func:`plan_heatmap`).
    max_cells : int or None, default 64
        Longer sides are drawn in blocks (plan: summed mass; cost:
        mass-weighted mean cost of the block, plain mean where the block
        carries no mass), as in :func:`plan_heatmap`.
    height : int, "auto" or None
    cost_range : (low, high), optional
        Costs mapped to the ends of the cost colour scale (default: this cost matrix's own
        range). Give two panels the same range (e.g. the min and max over both cost
        matrices) to compare their costs by colour, as for a run and its twin.
    cost_colorbar : bool, default True
        Draw the cost's colour bar; off for the second of two panels sharing ``cost_range``.

    Returns
    -------
    plotly.graph_objects.Figure
        Two heatmaps: ``name="cost"`` (``z`` = ordered cost) and
        ``name="plan"``, with the same ``x`` and ``y`` labels; the subtitle
        states :func:`otviz.matching.cost_contrast`.
    """
    P, C, cost_label, al = _plan_cost_inputs(plan_or_alignment, cost, cost_label)
    m, k = P.shape
    scale = {}
    if cost_range is not None:
        try:
            lo, hi = (float(v) for v in cost_range)
        except (TypeError, ValueError):
            raise ValueError(f"cost_range must be two numbers (low, high), got {cost_range!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"cost_range must be two finite numbers with low < high, got {cost_range!r}")
        scale = dict(zmin=lo, zmax=hi)
    rows, cols = plan_order(P) if order is None else _check_order(order, P.shape)
    cells = plan_cells(P, rows, cols, C, max_cells)
    blocks = cells["rb"] > 1 or cells["cb"] > 1
    rl, cl = cells["row_labels"], cells["col_labels"]
    t, s = _singular(teacher_label), _singular(student_label)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.12,
                        subplot_titles=(f"cost: {cost_label}", "plan: transported mass"))
    if blocks:
        chover = ("%{y}<br>-> %{x}<br>" + cost_label + " %{z:.3g}"
                  "<br>plan mass %{customdata[0]:.3g}<extra></extra>")
    else:
        chover = (f"{t} %{{y}} -> {s} %{{x}}<br>{cost_label} %{{z:.3g}}"
                  f"<br>plan mass %{{customdata[0]:.3g}}"
                  f"<br>main partner of {t} %{{y}}: {s} %{{customdata[2]}}<extra></extra>")
    fig.add_trace(go.Heatmap(z=cells["C"], x=cl, y=rl, name="cost", colorscale=COST_COLORSCALE,
                             customdata=cells["custom"], hovertemplate=chover, **scale,
                             showscale=bool(cost_colorbar), colorbar=dict(title=dict(text="cost", side="top"), orientation="h",
                                           x=0.22, xanchor="center", y=-0.1, yanchor="top",
                                           len=0.42, thickness=12, tickformat=".2g")),
                  row=1, col=1)
    heat = _heatmap_trace(cells["Z"], rl, cl, log_color=log_color, zmax=None,
                          teacher_label=teacher_label, student_label=student_label,
                          colorscale=PLAN_COLORSCALE, custom=cells["custom"], blocks=blocks,
                          cost_label=cost_label)
    heat.colorbar.update(orientation="h", x=0.78, xanchor="center", y=-0.1, yanchor="top",
                         len=0.42, thickness=12, title=dict(side="top"))
    fig.add_trace(heat, row=1, col=2)
    t_axis = teacher_label + (f" (blocks of {cells['rb']})" if cells["rb"] > 1 else "")
    s_axis = student_label + (f" (blocks of {cells['cb']})" if cells["cb"] > 1 else "")
    for c in (1, 2):
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=cl,
                         title=dict(text=s_axis), showgrid=False,
                         showticklabels=cells["cb"] == 1, row=1, col=c)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=rl,
                     autorange="reversed", showgrid=False, showticklabels=cells["rb"] == 1,
                     row=1, col=1)
    fig.update_yaxes(title=dict(text=t_axis), row=1, col=1)
    fig.update_yaxes(autorange="reversed", showgrid=False, row=1, col=2)
    contrast = matching.cost_contrast(P, C)
    if title is None:
        title = f"Cost beside plan ({m} x {k})"
    sub = (f"matched pairs cost {contrast:.0%} of a random pairing's mean; "
           f"0% = free matches, 100% = chance; same order on both sides")
    if height == "auto":
        height = auto_height(len(rl)) + 110
    fig = _finish(fig, title, sub, height=height)
    fig.update_layout(margin=dict(b=120))
    return fig


def _weighted_ecdf(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values, kind="stable")
    v, w = values[order], np.cumsum(weights[order])
    w /= w[-1]
    # one point per distinct value, at its cumulative weight
    last = np.r_[v[1:] != v[:-1], True]
    return v[last], w[last]


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    v, F = _weighted_ecdf(values, weights)
    return float(v[min(int(np.searchsorted(F, q - 1e-12)), len(v) - 1)])


def matched_cost_distribution(
    plan_or_alignment: Any,
    cost: Any = None,
    *,
    cost_label: str | None = None,
    kind: str = "ecdf",
    title: str | None = None,
    height: int | None = 380,
    log_x: bool = False,
) -> go.Figure:
    r"""The cost of matched pairs against the cost of all pairs.

    Two weighted distributions of the cost :math:`C_{ij}` (see
    :func:`otviz.matching.matched_costs`): *matched pairs*, weighted by the
    plan (:math:`P_{ij}/\sum P`), and *all pairs*, weighted as a random
    pairing with the plan's marginals (:math:`a_i b_j`). For a student
    aligned with its teacher the matched costs sit far left of all pairs;
    for an unrelated student the two curves overlap. The subtitle gives the
    medians and :func:`otviz.matching.cost_contrast`.

    Parameters
    ----------
    plan_or_alignment : array of shape (m, k) or Alignment
    cost : array of shape (m, k), optional
        Default: the Alignment's ``cost_matrix``.
    cost_label : str, optional
        The x axis title (the cost's name).
    kind : {"ecdf", "histogram"}
        Weighted empirical CDFs (steps), or histograms normalised to
        probability on shared bins.
    log_x : bool, default False
        Log x axis (for costs spanning decades; zero costs are left out of
        the axis range).

    Returns
    -------
    plotly.graph_objects.Figure
        Traces ``"all pairs"`` and ``"matched pairs"`` (``meta`` holds the
        weighted median and mean of each).
    """
    if kind not in ("ecdf", "histogram"):
        raise ValueError(f"kind must be 'ecdf' or 'histogram', got {kind!r}")
    P, C, cost_label, _ = _plan_cost_inputs(plan_or_alignment, cost, cost_label)
    d = matching.matched_costs(P, C)
    fig = go.Figure()
    stats = {}
    series = (("all pairs", d["all_cost"], d["all_weight"], ALL_PAIRS_COLOR),
              ("matched pairs", d["matched_cost"], d["matched_weight"], MATCHED_COLOR))
    edges = np.histogram_bin_edges(d["all_cost"], bins=min(60, max(10, d["all_cost"].size // 8)))
    for name, v, w, color in series:
        med = _weighted_quantile(v, w, 0.5)
        mean = float(np.dot(v, w))
        stats[name] = (med, mean)
        meta = dict(median=med, mean=mean)
        if kind == "ecdf":
            x, F = _weighted_ecdf(v, w)
            fig.add_trace(go.Scatter(
                x=np.r_[x[0], x], y=np.r_[0.0, F], mode="lines", line=dict(shape="hv", color=color,
                                                                          width=2.5),
                name=name, meta=meta,
                hovertemplate=f"{name}<br>{cost_label} <= %{{x:.3g}}: %{{y:.0%}} of the mass"
                              "<extra></extra>"))
        else:
            h, _ = np.histogram(v, bins=edges, weights=w)
            centers = 0.5 * (edges[1:] + edges[:-1])
            fig.add_trace(go.Bar(x=centers, y=h, width=np.diff(edges), name=name, meta=meta,
                                 marker_color=color, opacity=0.6,
                                 hovertemplate=f"{name}<br>{cost_label} %{{x:.3g}}: "
                                               f"%{{y:.1%}} of the mass<extra></extra>"))
        fig.add_vline(x=med, line=dict(color=color, dash="dot", width=1.5))
    contrast = matching.cost_contrast(P, C)
    pct = float(np.dot(d["all_weight"], d["all_cost"] < stats["matched pairs"][0]))
    sub = (f"median matched {stats['matched pairs'][0]:.3g} vs all pairs "
           f"{stats['all pairs'][0]:.3g} (dotted)<br>{pct:.0%} of all pairs are cheaper than the "
           f"median match; mean matched / mean random {contrast:.2f}")
    fig.update_xaxes(title=dict(text=cost_label), type="log" if log_x else "linear")
    fig.update_yaxes(title=dict(text="fraction of mass (cumulative)" if kind == "ecdf"
                                else "fraction of mass"), tickformat=".0%",
                     range=[0, 1.02] if kind == "ecdf" else None)
    if kind == "histogram":
        fig.update_layout(barmode="overlay", bargap=0)
    fig = _finish(fig, title or "Matched pairs against all pairs", sub, height=height,
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))
    fig.update_layout(margin=dict(t=fig.layout.margin.t + 26))  # the legend above the axes
    return fig


def match_quality(
    plan_or_alignment: Any,
    cost: Any = None,
    *,
    side: str = "both",
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    r"""Per-neuron match quality: matched cost relative to the neuron's median cost, sorted.

    For each neuron (:func:`otviz.matching.neuron_match_quality`) the bar is
    :math:`r_i = c_i / \operatorname{median}_j C_{ij}`: the plan-weighted
    cost of its matches over its median cost to the other layer's neurons.
    Near 0: the neuron found a partner far closer than a typical one; near
    1 (the dashed line): its match is no better than a random neuron. Bars
    are sorted, best first; hover names the neuron, its main partner, the
    share of its mass that goes there, and its partner's cost rank.

    Parameters
    ----------
    plan_or_alignment : array of shape (m, k) or Alignment
    cost : array of shape (m, k), optional
    side : {"both", "teacher", "student"}
        Teacher neurons (rows), student neurons (columns), or both stacked.

    Returns
    -------
    plotly.graph_objects.Figure
        One bar trace per side, named ``"teacher neurons"`` /
        ``"student neurons"``, ``y`` the sorted relative costs and
        ``customdata[:, 0]`` the neuron indices.
    """
    if side not in ("both", "teacher", "student"):
        raise ValueError(f"side must be 'both', 'teacher' or 'student', got {side!r}")
    P, C, _, _ = _plan_cost_inputs(plan_or_alignment, cost, None)
    sides = ["teacher", "student"] if side == "both" else [side]
    fig = make_subplots(rows=len(sides), cols=1, vertical_spacing=0.2,
                        subplot_titles=[f"{s} neurons" for s in sides])
    medians = []
    for r, sd in enumerate(sides, start=1):
        q = matching.neuron_match_quality(P, C, side=sd).sort_values(
            ["relative_cost", "neuron"], kind="stable")
        other = "student" if sd == "teacher" else "teacher"
        custom = np.stack([q["neuron"], q["partner"], q["partner_share"], q["matched_cost"],
                           q["median_cost"], q["rank"]], axis=1)
        fig.add_trace(go.Bar(
            x=np.arange(len(q)), y=q["relative_cost"], name=f"{sd} neurons",
            marker_color=TEACHER_COLOR if sd == "teacher" else STUDENT_COLOR, customdata=custom,
            showlegend=False,
            hovertemplate=(f"{sd} %{{customdata[0]:d}} -> main partner {other} "
                           f"%{{customdata[1]:d}} (%{{customdata[2]:.0%}} of its mass)"
                           f"<br>matched cost %{{customdata[3]:.3g}}, its median cost "
                           f"%{{customdata[4]:.3g}}<br>relative cost %{{y:.2f}}"
                           f"<br>%{{customdata[5]:.0%}} of {other} neurons are cheaper than "
                           f"its partner<extra></extra>")), row=r, col=1)
        fig.add_hline(y=1.0, line=dict(color="#555", dash="dash", width=1), row=r, col=1)
        fig.update_yaxes(title=dict(text="matched / median cost"), rangemode="tozero",
                         row=r, col=1)
        fig.update_xaxes(title=dict(text=f"{sd} neurons, best matched first"),
                         showticklabels=False, row=r, col=1)
        medians.append(f"{sd} median {float(np.median(q['relative_cost'])):.2f}")
    sub = "; ".join(medians) + "<br>1 (dashed) = no better than a random partner"
    fig = _finish(fig, title or "Match quality per neuron", sub,
                  height=height or 270 * len(sides) + 80, bargap=0.05)
    return fig
