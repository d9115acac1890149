"""Figures of the OT lab's transport maps (:mod:`otviz.lab.maps`): where a map sends each point,
how its training went, and how the transport-cost weight shortens it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from otviz.figures._common import STUDENT_COLOR, TEACHER_COLOR, _check_points, _finish, _to_numpy

__all__ = ["lambda_sweep", "map_comparison", "map_figure", "training_curves"]

MAPPED_COLOR = "#2a9d55"
ARROW_COLOR = "rgba(60, 60, 60, 0.45)"


def _bounds(*arrays: np.ndarray, pad: float = 0.06) -> tuple[list[float], list[float]]:
    pts = np.concatenate(arrays)
    lo, hi = pts.min(0), pts.max(0)
    span = float(max(hi - lo)) or 1.0
    mid = (lo + hi) / 2
    half = span / 2 * (1 + 2 * pad)
    # one span for both axes (equal aspect), centred on each axis' data
    return [mid[0] - half, mid[0] + half], [mid[1] - half, mid[1] + half]


def _arrow_idx(n: int, n_arrows: int, seed: int) -> np.ndarray:
    if not isinstance(n_arrows, (int, np.integer)) or isinstance(n_arrows, bool) or n_arrows < 0:
        raise ValueError(f"n_arrows must be a non-negative int, got {n_arrows!r}")
    if n_arrows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=n_arrows, replace=False))


def _traces(X: np.ndarray, Y: np.ndarray, GX: np.ndarray, idx: np.ndarray, *,
            mapped_name: str, legend: bool, marker_size: int) -> list[go.Scatter]:
    seg_x = np.full(3 * len(idx), np.nan)
    seg_y = np.full(3 * len(idx), np.nan)
    seg_x[0::3], seg_x[1::3] = X[idx, 0], GX[idx, 0]
    seg_y[0::3], seg_y[1::3] = X[idx, 1], GX[idx, 1]
    return [
        go.Scatter(x=Y[:, 0], y=Y[:, 1], mode="markers", name="target sample (ν)", legendgroup="t",
                   showlegend=legend, hoverinfo="skip",
                   marker=dict(color=STUDENT_COLOR, size=marker_size, opacity=0.35)),
        go.Scatter(x=X[:, 0], y=X[:, 1], mode="markers", name="source sample (μ)", legendgroup="s",
                   showlegend=legend, hoverinfo="skip",
                   marker=dict(color=TEACHER_COLOR, size=marker_size, opacity=0.45)),
        go.Scatter(x=seg_x, y=seg_y, mode="lines", name="displacement x → map(x)", legendgroup="a",
                   showlegend=legend, hoverinfo="skip", line=dict(color=ARROW_COLOR, width=1)),
        go.Scatter(x=GX[:, 0], y=GX[:, 1], mode="markers", name=mapped_name, legendgroup="m",
                   showlegend=legend, marker=dict(color=MAPPED_COLOR, size=marker_size + 1, opacity=0.8),
                   hovertemplate="map(x) = (%{x:.2f}, %{y:.2f})<extra></extra>"),
    ]


def _check_images(images: Any, X: np.ndarray, name: str) -> np.ndarray:
    GX = _check_points(images, name, dim=2)
    if GX.shape != X.shape:
        raise ValueError(f"{name} must hold one image per source point, shape {X.shape}, got {GX.shape}")
    return GX


def map_figure(source: Any, target: Any, images: Any, *, title: str | None = None,
               subtitle: str | None = None, n_arrows: int = 150, seed: int = 0,
               ranges: tuple[Sequence[float], Sequence[float]] | None = None,
               mapped_name: str = "mapped points map(x)", showlegend: bool = True,
               height: int = 430) -> go.Figure:
    """Where a map sends the points of a 2-D source sample.

    Blue: the source sample, orange: the target sample, green: the images of the source
    points; grey segments join ``n_arrows`` source points (picked at random with
    ``seed``) to their images. A good OT map lays green over orange with short,
    non-crossing segments.

    Parameters
    ----------
    source, target : arrays (n, 2) and (m, 2)
    images : array (n, 2), the map applied to ``source``.
    ranges : ``(x_range, y_range)`` to share axes between figures; by default the data's.
        Both axes keep the same scale (the plot area shrinks to fit, the ranges stay).
    showlegend : whether to draw the legend (off for the second of two figures side by side).
    """
    X = _check_points(source, "source", dim=2)
    Y = _check_points(target, "target", dim=2)
    GX = _check_images(images, X, "images")
    fig = go.Figure(_traces(X, Y, GX, _arrow_idx(len(X), n_arrows, seed), mapped_name=mapped_name,
                            legend=bool(showlegend), marker_size=4))
    xr, yr = ranges if ranges is not None else _bounds(X, Y, GX)
    fig.update_xaxes(range=[float(v) for v in xr], title="x₁", zeroline=False, constrain="domain")
    fig.update_yaxes(range=[float(v) for v in yr], title="x₂", zeroline=False, scaleanchor="x",
                     scaleratio=1, constrain="domain")
    if not showlegend:
        return _finish(fig, title, subtitle, height=height, showlegend=False)
    fig = _finish(fig, title, subtitle, height=height + _LEGEND_ROOM, legend=_LEGEND_BELOW)
    fig.update_layout(margin=dict(b=_LEGEND_ROOM + 45))  # the legend under the x₁ title
    return fig


def map_comparison(source: Any, target: Any, maps: Mapping[str, Any], *, title: str | None = None,
                   subtitle: str | None = None, n_arrows: int = 150, seed: int = 0,
                   height: int = 430) -> go.Figure:
    """Several maps of the same source sample side by side, on shared axes (see :func:`map_figure`).

    ``maps``: panel title -> images of ``source`` (arrays (n, 2)), e.g. ``{"learned": G(X),
    "closed form": T(X), "discrete plan": bary.images}``.
    """
    X = _check_points(source, "source", dim=2)
    Y = _check_points(target, "target", dim=2)
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError("maps must be a non-empty mapping of panel title -> images of source")
    imgs = {str(k): _check_images(v, X, f"maps[{k!r}]") for k, v in maps.items()}
    xr, yr = _bounds(X, Y, *imgs.values())
    idx = _arrow_idx(len(X), n_arrows, seed)
    fig = make_subplots(rows=1, cols=len(imgs), subplot_titles=list(imgs), horizontal_spacing=0.04)
    for c, GX in enumerate(imgs.values(), start=1):
        for tr in _traces(X, Y, GX, idx, mapped_name="mapped points map(x)", legend=c == 1, marker_size=3):
            fig.add_trace(tr, row=1, col=c)
        fig.update_xaxes(range=xr, zeroline=False, constrain="domain", row=1, col=c)
        fig.update_yaxes(range=yr, zeroline=False, scaleanchor=f"x{'' if c == 1 else c}", scaleratio=1,
                         constrain="domain", showticklabels=c == 1, row=1, col=c)
    return _finish(fig, title, subtitle, height=height,
                   legend=dict(orientation="h", yanchor="top", y=-0.12, x=0, xanchor="left"))


#: Legend of the curve figures: under the axis titles, anchored to the figure's bottom edge (not
#: to the plot, whose distance to the axis title varies with the height), in a bottom margin of
#: its own that holds two rows of entries (a narrow window wraps them).
_LEGEND_ROOM = 50
_LEGEND_BELOW = dict(orientation="h", yref="container", y=0.0, yanchor="bottom", x=0, xanchor="left")


def _smooth(v: np.ndarray, window: int) -> np.ndarray:
    if len(v) < 2 or window <= 1:
        return v
    window = min(window, len(v))
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    out[window - 1:] = (c[window:] - c[:-window]) / window
    out[:window - 1] = c[1:window] / np.arange(1, window)
    return out


def training_curves(fitted: Any, *, reference_w2sq: float | None = None, title: str | None = None,
                    subtitle: str | None = None, smooth: int = 25, height: int = 380) -> go.Figure:
    """How an adversarial map trained (an :class:`otviz.lab.maps.AdversarialMap`).

    Left: per generator step, the map's transport cost :math:`\\mathbb{E}\\|x - G(x)\\|^2`
    and the critic's estimate of :math:`W_2^2(G_\\#\\mu, \\nu)` (faint: every step; solid:
    a moving average over ``smooth`` steps), with the closed form's :math:`W_2^2` as a
    dashed line when given: the cost climbs to it while the critic's estimate falls
    to the batches' noise level. Right (when the fit tracked a reference map): the mean
    squared distance to it, :math:`\\mathbb{E}\\|G(x) - T(x)\\|^2`, on a log scale.
    """
    hist = getattr(fitted, "history", None)
    if not isinstance(hist, Mapping) or "transport_cost" not in hist:
        raise TypeError("fitted must be the result of otviz.lab.maps.fit_adversarial_map "
                        f"(with a .history), got {type(fitted).__name__}")
    cost = _to_numpy(hist["transport_cost"], "transport_cost")
    w2 = _to_numpy(hist["critic_w2sq"], "critic_w2sq")
    ref_steps = np.asarray(hist.get("reference_step", []), float)
    ref_mse = np.asarray(hist.get("reference_mse", []), float)
    has_ref = len(ref_mse) > 0
    fig = make_subplots(rows=1, cols=2 if has_ref else 1, horizontal_spacing=0.12,
                        subplot_titles=(["Transport cost and critic", "Distance to the closed form"]
                                        if has_ref else None))
    steps = np.arange(1, len(cost) + 1)
    for v, name, color in ((cost, "transport cost E‖x − G(x)‖²", MAPPED_COLOR),
                           (w2, "critic's W₂²(G#μ, ν) estimate", STUDENT_COLOR)):
        fig.add_trace(go.Scatter(x=steps, y=v, mode="lines", line=dict(color=color, width=1),
                                 opacity=0.25, showlegend=False, hoverinfo="skip"), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=_smooth(v, smooth), mode="lines", name=name,
                                 line=dict(color=color, width=2),
                                 hovertemplate="step %{x}: %{y:.3f}<extra></extra>"), row=1, col=1)
    if reference_w2sq is not None:
        fig.add_trace(go.Scatter(x=[steps[0], steps[-1]], y=[reference_w2sq] * 2, mode="lines",
                                 name="closed-form W₂²(μ, ν)", line=dict(color="#555", dash="dash"),
                                 hoverinfo="skip"), row=1, col=1)
    fig.update_xaxes(title="generator step", row=1, col=1)
    fig.update_yaxes(title="squared distance (data units²)", rangemode="tozero", row=1, col=1)
    if has_ref:
        fig.add_trace(go.Scatter(x=ref_steps, y=ref_mse, mode="lines+markers", marker=dict(size=4),
                                 name="E‖G(x) − T(x)‖²", line=dict(color=TEACHER_COLOR, width=2),
                                 hovertemplate="step %{x}: %{y:.4f}<extra></extra>"), row=1, col=2)
        fig.update_xaxes(title="generator step", row=1, col=2)
        fig.update_yaxes(title="mean squared error (data units²)", type="log", dtick=1,
                         tickformat="~g", row=1, col=2)  # one labelled tick per decade: 0.01, 0.1, 1
    fig = _finish(fig, title, subtitle, height=height + _LEGEND_ROOM, legend=_LEGEND_BELOW)
    fig.update_layout(margin=dict(b=_LEGEND_ROOM + 45))
    return fig


def lambda_sweep(lams: Sequence[float], relative_errors: Sequence[float], *, title: str | None = None,
                 subtitle: str | None = None, height: int = 380) -> go.Figure:
    """The learned map's relative squared error to the Monge map against the weight ``lam``.

    Markers: measured :math:`\\mathbb{E}\\|G(x) - T(x)\\|^2 / \\mathbb{E}\\|T(x) - x\\|^2`;
    dashed: the exact minimiser's :math:`1/(1+\\lambda)^2` (the geodesic point at
    :math:`t = \\lambda/(1+\\lambda)`). Where the markers leave the line, training error
    dominates the bias of the objective.
    """
    lam = _to_numpy(lams, "lams").ravel()
    err = _to_numpy(relative_errors, "relative_errors").ravel()
    if lam.shape != err.shape or lam.size == 0:
        raise ValueError(f"lams and relative_errors must be non-empty and of the same length, got "
                         f"{lam.size} and {err.size}")
    if (lam <= 0).any() or not np.isfinite(lam).all():
        raise ValueError("lams must be positive and finite")
    grid = np.geomspace(lam.min(), lam.max(), 100) if lam.min() < lam.max() else lam
    fig = go.Figure([
        go.Scatter(x=grid, y=1 / (1 + grid) ** 2, mode="lines", name="objective's bias 1/(1+λ)²",
                   line=dict(color="#555", dash="dash"), hoverinfo="skip"),
        go.Scatter(x=lam, y=err, mode="markers", name="learned map", marker=dict(color=MAPPED_COLOR, size=9),
                   hovertemplate="λ = %{x:g}: %{y:.4f}<extra></extra>"),
    ])
    # one labelled tick per decade, the error as a share of the closed form's displacement
    fig.update_xaxes(type="log", dtick=1, tickformat="~g",
                     title="λ (weight of the critic's W₂² against the transport cost)")
    fig.update_yaxes(type="log", dtick=1, tickformat="~%",
                     title="E‖G(x) − T(x)‖² / E‖T(x) − x‖² (%)")
    fig = _finish(fig, title, subtitle, height=height + _LEGEND_ROOM, legend=_LEGEND_BELOW)
    fig.update_layout(margin=dict(b=_LEGEND_ROOM + 45))
    return fig
