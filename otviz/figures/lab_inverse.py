"""Figures of inverse OT (:mod:`otviz.lab.inverse`): learned vs true costs, observed vs reproduced
plans, the fit's objective, and which candidate cost explains a matching."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import (
    PLAN_COLORSCALE,
    STUDENT_COLOR,
    TEACHER_COLOR,
    _check_plan,
    _finish,
    _to_numpy,
)

__all__ = ["explanation_bars", "fit_curve", "metric_balls", "metric_heatmaps", "plan_pair"]

_GREY = "#8a8a8a"


def _square(M: Any, name: str) -> np.ndarray:
    A = _to_numpy(M, name)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.size == 0:
        raise ValueError(f"{name} must be a square (d, d) matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return (A + A.T) / 2


def _ellipse(M: np.ndarray, n: int = 200, floor: float = 1e-6) -> tuple[np.ndarray, bool]:
    """Points of {z : z^T M z = 1} (2-D); eigenvalues are floored at ``floor * max`` so that a
    singular M (an infinitely long ball) draws as a long, thin one; the flag says so."""
    w, V = np.linalg.eigh(M)
    top = max(float(w.max()), 1e-300)
    clipped = bool((w < floor * top).any())
    w = np.maximum(w, floor * top)
    t = np.linspace(0, 2 * np.pi, n)
    return (V @ (np.stack([np.cos(t), np.sin(t)]) / np.sqrt(w)[:, None])).T, clipped


def metric_balls(M_true: Any, M_fit: Any, M_start: Any = None, *, title: str | None = "Unit balls of the costs",
                 height: int | None = 430) -> go.Figure:
    r"""The unit balls :math:`\{z : z^\top M z = 1\}` of 2-D Mahalanobis costs, true against learned.

    A displacement :math:`z = x - y` on the curve costs 1: the ball is long along the
    directions the cost finds cheap. Equal scales on both axes.

    Parameters
    ----------
    M_true, M_fit : (2, 2) symmetric matrices
    M_start : (2, 2), optional
        The starting point of the fit (e.g. the best isotropic cost), dotted.
    """
    curves = [("true M", _square(M_true, "M_true"), TEACHER_COLOR, "solid", 3),
              ("learned M", _square(M_fit, "M_fit"), STUDENT_COLOR, "dash", 3)]
    if M_start is not None:
        curves.insert(0, ("start (best isotropic)", _square(M_start, "M_start"), _GREY, "dot", 2))
    for name, A, *_ in curves:
        if A.shape != (2, 2):
            raise ValueError(f"metric_balls draws 2-D costs; {name} is {A.shape[0]}-D (use metric_heatmaps)")
    fig = go.Figure()
    reach = 0.0
    notes = []
    for name, A, color, dash, width in curves:
        Z, clipped = _ellipse(A)
        if clipped:
            notes.append(f"{name} is singular (drawn cut off)")
        reach = max(reach, float(np.abs(Z).max()) if not clipped else 0.0)
        fig.add_trace(go.Scatter(x=Z[:, 0], y=Z[:, 1], mode="lines", name=name,
                                 line=dict(color=color, dash=dash, width=width),
                                 hovertemplate=f"{name}<br>z = (%{{x:.3f}}, %{{y:.3f}})<extra></extra>"))
    reach = 1.1 * (reach or 1.0)
    fig.update_xaxes(range=[-reach, reach], title="z<sub>1</sub> = (x - y)<sub>1</sub>", zeroline=True)
    fig.update_yaxes(range=[-reach, reach], title="z<sub>2</sub>", scaleanchor="x", scaleratio=1, zeroline=True)
    sub = "displacements z = x - y of cost 1; longer = cheaper direction"
    if notes:
        sub += "; " + "; ".join(notes)
    return _finish(fig, title, sub, height=height,
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right"))


def metric_heatmaps(M_true: Any, M_fit: Any, *, labels: list[str] | None = None,
                    title: str | None = "True and learned M", height: int | None = 380) -> go.Figure:
    """The entries of the true and the learned matrix side by side, on one diverging colour scale
    centred at 0 (any dimension)."""
    A, B = _square(M_true, "M_true"), _square(M_fit, "M_fit")
    if A.shape != B.shape:
        raise ValueError(f"M_true is {A.shape} but M_fit is {B.shape}")
    d = A.shape[0]
    labels = labels or [f"x{i + 1}" for i in range(d)]
    if len(labels) != d:
        raise ValueError(f"labels must name the {d} coordinates, got {len(labels)}")
    zmax = max(float(np.abs(A).max()), float(np.abs(B).max()), 1e-12)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("true M", "learned M"), horizontal_spacing=0.12)
    for col, (name, X) in enumerate((("true M", A), ("learned M", B)), start=1):
        fig.add_trace(go.Heatmap(z=X, x=labels, y=labels, zmin=-zmax, zmax=zmax, colorscale="RdBu_r",
                                 showscale=col == 2, text=np.round(X, 3), texttemplate="%{text}",
                                 hovertemplate=f"{name}[%{{y}}, %{{x}}] = %{{z:.4f}}<extra></extra>"),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    err = np.linalg.norm(B - A) / max(np.linalg.norm(A), 1e-300)
    return _finish(fig, title, f"relative error ||M_learned - M_true||_F / ||M_true||_F = {err:.2e}",
                   height=height)


def plan_pair(observed: Any, reproduced: Any, *, title: str | None = "Observed and reproduced plan",
              row_label: str = "x points", col_label: str = "y points", height: int | None = 400) -> go.Figure:
    r"""The observed coupling beside the one the learned cost reproduces, on one colour scale.

    Rows and columns are in their original order (the same for both). The subtitle gives
    :math:`\mathrm{KL}(\text{observed} \,|\, \text{reproduced})` in nats and the largest
    entry-wise difference.
    """
    P = _check_plan(observed, "observed")
    Q = _check_plan(reproduced, "reproduced")
    if P.shape != Q.shape:
        raise ValueError(f"observed has shape {P.shape} but reproduced has shape {Q.shape}; "
                         f"pass two plans of the same problem")
    P, Q = P / P.sum(), Q / Q.sum()
    zmax = max(float(P.max()), float(Q.max()))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("observed", "reproduced by the learned cost"),
                        horizontal_spacing=0.1)
    for col, (name, X) in enumerate((("observed", P), ("reproduced", Q)), start=1):
        fig.add_trace(go.Heatmap(z=X, zmin=0, zmax=zmax, colorscale=PLAN_COLORSCALE, showscale=col == 2,
                                 colorbar=dict(title="mass"),
                                 hovertemplate=(f"{name}: {row_label[:-1] if row_label.endswith('s') else row_label}"
                                                " %{y} -> %{x}: mass %{z:.2e}<extra></extra>")),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", title=row_label if col == 1 else None, row=1, col=col)
        fig.update_xaxes(title=col_label, row=1, col=col)
    nz = P > 0
    with np.errstate(divide="ignore"):
        kl = float(np.sum(P[nz] * np.log(P[nz] / Q[nz]))) if (Q[nz] > 0).all() else float("inf")
    sub = f"KL(observed | reproduced) = {max(kl, 0.0):.3g} nats; largest difference {np.abs(P - Q).max():.2e}"
    return _finish(fig, title, sub, height=height)


def fit_curve(fit: Any, *, title: str | None = "The objective during the fit", height: int | None = 360) -> go.Figure:
    r"""The objective (mean :math:`\mathrm{KL}` of the observed plans from the model's, nats) at
    every L-BFGS iterate, on a log axis, with the independent coupling's divergence (a zero
    cost) as a reference line. Accepts a :class:`~otviz.lab.inverse.CostFit` or ``MixFit``."""
    loss = _to_numpy(getattr(fit, "loss", None) if not isinstance(fit, np.ndarray) else fit, "fit.loss").ravel()
    if loss.size == 0 or not np.isfinite(loss).all():
        raise ValueError("the fit's loss must be a non-empty finite sequence")
    floor = 1e-12
    y = np.maximum(loss, floor)
    fig = go.Figure(go.Scatter(x=np.arange(len(y)), y=y, mode="lines+markers", name="objective",
                               line=dict(color=STUDENT_COLOR),
                               hovertemplate="iterate %{x}: %{y:.3e} nats<extra></extra>"))
    ref = getattr(fit, "kl_independent", None)
    if ref is not None:
        level = float(np.mean(ref))
        fig.add_hline(y=max(level, floor), line=dict(color=_GREY, dash="dot"),
                      annotation_text="zero cost (independent coupling)", annotation_position="top right")
    fig.update_yaxes(type="log", title="mean KL(observed | model), nats", exponentformat="power")
    fig.update_xaxes(title="L-BFGS iteration")
    status = (f"{'met' if getattr(fit, 'converged', True) else 'NOT met'} the stopping rule after "
              f"{getattr(fit, 'n_iter', len(y) - 1)} iterations")
    if (loss < floor).any():
        status += f"; values below {floor:g} (solver accuracy) drawn at {floor:g}"
    return _finish(fig, title, status, height=height, showlegend=False)


def explanation_bars(explanation: Any, *, title: str | None = "Which cost explains the matching?",
                     height: int | None = 380) -> go.Figure:
    """Per candidate cost: the share of the observed plan's divergence from independence it explains
    alone (left) and its weight in the joint fit (right), from
    :func:`otviz.lab.inverse.explain_matching`; the joint fit's share as a dotted line."""
    table = getattr(explanation, "table", None)
    if table is None or not {"explained alone", "weight in mix"} <= set(table.columns):
        raise TypeError("explanation must be the result of otviz.lab.inverse.explain_matching")
    names = [str(n) for n in table.index][::-1]
    share = table["explained alone"].to_numpy()[::-1]
    weight = table["weight in mix"].to_numpy()[::-1]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.08,
                        subplot_titles=("share explained, each cost alone", "weight in the joint fit"))
    fig.add_trace(go.Bar(y=names, x=share, orientation="h", marker_color=TEACHER_COLOR,
                         text=[f"{v:.0%}" for v in share], textposition="auto",
                         hovertemplate="%{y}: explains %{x:.1%} alone<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(y=names, x=weight, orientation="h", marker_color=STUDENT_COLOR,
                         text=[f"{v:.2f}" for v in weight], textposition="auto",
                         hovertemplate="%{y}: weight %{x:.3f} (per unit of spread)<extra></extra>"),
                  row=1, col=2)
    mix = getattr(explanation, "mix", None)
    sub = "share = 1 - KL(fit) / KL(independent coupling)"
    if mix is not None:
        fig.add_vline(x=float(mix.explained), line=dict(color=_GREY, dash="dot"), row=1, col=1)
        sub += f"; all costs together explain {mix.explained:.0%} (dotted)"
    fig.update_xaxes(range=[0, 1], tickformat=".0%", row=1, col=1)
    fig.update_xaxes(rangemode="tozero", row=1, col=2)
    return _finish(fig, title, sub, height=height, showlegend=False)
