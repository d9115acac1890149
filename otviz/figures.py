r"""Plotly figures for transport plans, neuron maps, distance tables and training curves.

Every builder validates its input, returns a :class:`plotly.graph_objects.Figure`
and never imports Streamlit, so the same figures serve the dashboard
(``st.plotly_chart(fig)``) and the notebooks (``fig.show()``).

Plans
    :func:`plan_heatmap` draws a transport plan :math:`P` (teacher neurons as
    rows, student neurons as columns) with its marginals; :func:`plan_order`
    gives the row and column order that makes the matching read as a block
    diagonal; :func:`plan_snapshots` animates the epoch snapshots of a run's
    plan in one fixed order.
Neurons
    :func:`embed_neurons` embeds the teacher and student neurons together in
    2-D (PCA or UMAP); :func:`neuron_map` draws them with the strongest plan
    entries as lines; :func:`point_cloud_transport` does the same for two
    small 2-D point clouds, for teaching.
Tables and curves
    :func:`distance_matrix` / :func:`distance_matrices` draw the
    teacher-layer x student-layer tables of :func:`otviz.layers.layer_distances`;
    :func:`training_curves` and :func:`accuracy_curves` plot long-format
    metrics from :meth:`otviz.runs.RunStore.metrics`; :func:`distance_bars`
    compares a few alignments.

Conventions: one template (:data:`TEMPLATE`), teacher in blue and student in
orange (:data:`TEACHER_COLOR`, :data:`STUDENT_COLOR`), plans on a perceptually
uniform light-to-dark scale (:data:`PLAN_COLORSCALE`) with an optional log
colour (``log_color=True``) that shows masses several decades below the
largest. Neurons keep their original indices in tick labels and hover text
whatever the display order.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from otviz.transport import Alignment

__all__ = [
    "PLAN_COLORSCALE",
    "STUDENT_COLOR",
    "TEACHER_COLOR",
    "TEMPLATE",
    "accuracy_curves",
    "distance_bars",
    "distance_matrices",
    "distance_matrix",
    "embed_neurons",
    "neuron_map",
    "plan_heatmap",
    "plan_order",
    "plan_snapshots",
    "point_cloud_transport",
    "training_curves",
]

TEMPLATE = "plotly_white"
"""Plotly template used by every figure (override with ``fig.update_layout(template=...)``)."""
PLAN_COLORSCALE = "dense"
"""Perceptually uniform sequential scale (cmocean *dense*): zero is nearly white."""
SIMILARITY_COLORSCALE = "Viridis"
TEACHER_COLOR = "#2f6db5"
STUDENT_COLOR = "#e4572e"
LINE_COLOR = (70, 70, 70)

_LINK_TOL = 1e-3        # relative strength under which two anchor neurons are not linked
_SPECTRAL_MAX = 4096    # largest connected group ordered spectrally
_LOG_DECADES = 6        # log colour shows this many decades below the largest mass

PlanLike = Union[np.ndarray, Alignment, Any]
Top = Union[float, int]


# ----------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 ndarray (numpy, torch tensors, nested lists)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be an array, got {type(x).__name__} ({exc})") from None
    if arr.dtype == object or np.iscomplexobj(arr) or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype} "
                        f"(type {type(x).__name__})")
    return arr.astype(np.float64, copy=False)


def _check_plan(plan: Any, name: str = "plan") -> np.ndarray:
    """Validate a transport plan: 2-D, non-empty, finite, non-negative, some mass."""
    if isinstance(plan, Alignment):
        plan = plan.plan
    P = _to_numpy(plan, name)
    if P.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix of shape (teacher neurons, student "
                         f"neurons), got shape {P.shape}")
    if P.size == 0:
        raise ValueError(f"{name} is empty (shape {P.shape}); a plan needs at least one row "
                         f"and one column")
    if not np.isfinite(P).all():
        n_bad = int((~np.isfinite(P)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or infinite value(s); a transport plan "
                         f"must be finite (did the solver diverge? try a larger eps)")
    scale = float(np.abs(P).max())
    if (P < -1e-12 * scale).any():
        i, j = np.unravel_index(int(np.argmin(P)), P.shape)
        raise ValueError(f"{name} has negative entries (e.g. {P[i, j]:.3g} at [{i}, {j}]); "
                         f"transported mass must be non-negative")
    if scale == 0:
        raise ValueError(f"{name} is all zeros; nothing is transported")
    return np.clip(P, 0.0, None)


def _plan_and_weights(plan_or_alignment: Any) -> tuple[np.ndarray, np.ndarray | None,
                                                        np.ndarray | None, Alignment | None]:
    if isinstance(plan_or_alignment, Alignment):
        al = plan_or_alignment
        return _check_plan(al.plan), np.asarray(al.a, float), np.asarray(al.b, float), al
    return _check_plan(plan_or_alignment), None, None, None


def _check_weights(w: Any, n: int, name: str) -> np.ndarray:
    arr = _to_numpy(w, name).ravel() if w is not None else None
    if arr is None:
        return np.full(n, 1.0 / n)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one weight per point), got "
                         f"{np.shape(w)}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must hold finite non-negative weights")
    return arr


def _check_points(x: Any, name: str, *, dim: int | None = None) -> np.ndarray:
    """A finite, non-empty 2-D matrix (rows = points/neurons)."""
    arr = _to_numpy(x, name)
    what = "(neurons, features)" if dim is None else f"(points, {dim})"
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix of shape {what}, got shape {arr.shape}"
                         + ("; turn an activation into one with otviz.neurons(activation)"
                            if dim is None else ""))
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); pass at least one "
                         f"{'neuron' if dim is None else 'point'}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns; pass at least one feature")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns (coordinates), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))[:5].tolist()
        raise ValueError(f"{name} contains NaN or infinite values (rows {rows}...)")
    return arr


def _check_top(top: Any) -> Top:
    if isinstance(top, (bool, np.bool_)) or not isinstance(top, numbers.Real):
        raise TypeError(f"top must be a fraction of the plan mass in (0, 1] or an int number "
                        f"of lines, got {top!r}")
    if isinstance(top, numbers.Integral):
        if top < 0:
            raise ValueError(f"top={top} lines is negative; pass 0 or more")
        return int(top)
    top = float(top)
    if not (0.0 < top <= 1.0):
        raise ValueError(f"top={top} as a fraction of the plan mass must lie in (0, 1]; "
                         f"pass an int for a number of lines")
    return top


def _check_order(order: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    try:
        rows, cols = order
    except (TypeError, ValueError):
        raise TypeError("order must be a pair (row_order, col_order), e.g. plan_order(plan)") \
            from None
    out = []
    for side, perm, n in (("row", rows, shape[0]), ("column", cols, shape[1])):
        p = np.asarray(perm)
        if p.shape != (n,) or not np.issubdtype(p.dtype, np.integer) or \
                not np.array_equal(np.sort(p), np.arange(n)):
            raise ValueError(f"{side} order must be a permutation of range({n}) for a plan of "
                             f"shape {shape}, got {p.shape[0] if p.ndim else p!r} entries")
        out.append(p.astype(np.int64))
    return out[0], out[1]


def _title(text: str | None, sub: str | None = None) -> dict:
    if text is None:
        return {}
    if sub:
        text = f"{text}<br><sup>{sub}</sup>"
    return dict(text=text, x=0.02, xanchor="left")


def _finish(fig: go.Figure, title: str | None, sub: str | None = None, **layout: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title=_title(title, sub),
                      margin=dict(l=60, r=30, t=80 if title else 30, b=55),
                      hoverlabel=dict(namelength=-1), **layout)
    return fig


def _empty_figure(message: str, title: str | None) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper",
                       x=0.5, y=0.5, font=dict(size=14, color="#777"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _finish(fig, title)


def _singular(label: str) -> str:
    return label[:-1] if label.endswith(" neurons") else label


# ----------------------------------------------------------------------------
# plan ordering
# ----------------------------------------------------------------------------
def _components(adj: np.ndarray) -> list[np.ndarray]:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n_comp, labels = connected_components(csr_matrix(adj), directed=False)
    return [np.flatnonzero(labels == c) for c in range(n_comp)]


def _fiedler_order(W: np.ndarray) -> np.ndarray:
    """Spectral seriation of a connected weighted graph.

    Sorts the nodes by the Fiedler vector, computed as the eigenvector of the
    second largest eigenvalue of :math:`D^{-1/2} W D^{-1/2}` (dense for small
    graphs, ARPACK otherwise; index order if ARPACK fails).
    """
    n = len(W)
    d = W.sum(axis=1)
    inv_sqrt = 1.0 / np.sqrt(d)
    M = inv_sqrt[:, None] * W * inv_sqrt[None, :]
    if n <= 64:
        _, vecs = np.linalg.eigh(M)
        v = vecs[:, -2]
    else:
        from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

        try:
            vals, vecs = eigsh(M, k=2, which="LA", tol=1e-6, maxiter=50 * n,
                               v0=np.linspace(0.5, 1.5, n))
        except (ArpackError, ArpackNoConvergence):
            return np.arange(n)
        v = vecs[:, int(np.argmin(vals))]
    return np.argsort(v * inv_sqrt, kind="stable")


def _anchor_order(P: np.ndarray) -> np.ndarray:
    """Order the columns of ``P`` so that columns sharing rows sit side by side."""
    n_f, n_a = P.shape
    col_mass = P.sum(axis=0)
    row_mass = P.sum(axis=1)
    inv = np.divide(1.0, row_mass, out=np.zeros_like(row_mass), where=row_mass > 0)
    # S[i, j]: mass that columns i and j receive from the same rows
    S = (P * inv[:, None]).T @ P
    top = float(S.max())
    np.fill_diagonal(S, 0.0)
    S[S <= _LINK_TOL * top] = 0.0
    pieces = []
    for comp in _components(S > 0):
        if len(comp) > 2 and len(comp) <= _SPECTRAL_MAX:
            comp = comp[_fiedler_order(S[np.ix_(comp, comp)])]
            if comp[0] > comp[-1]:
                comp = comp[::-1]
        pieces.append(comp)
    # groups with mass first, then by their smallest original index
    pieces.sort(key=lambda c: (not bool(col_mass[c].sum() > 0), int(c.min())))
    return np.concatenate(pieces)


def _follower_order(P: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Order the rows of ``P``: by the rank of their strongest column, then by mean rank."""
    n_f, n_a = P.shape
    rank = np.empty(n_a, dtype=np.float64)
    rank[anchor] = np.arange(n_a)
    mass = P.sum(axis=1)
    best = rank[P.argmax(axis=1)]
    safe = np.where(mass > 0, mass, 1.0)
    mean_rank = (P @ rank) / safe
    empty = mass <= 0
    # np.lexsort: last key is primary
    return np.lexsort((np.arange(n_f), -P.max(axis=1), mean_rank, best, empty)).astype(np.int64)


def plan_order(plan: PlanLike) -> tuple[np.ndarray, np.ndarray]:
    r"""Row and column orders that show a transport plan as a block diagonal.

    The wider side is ordered by the narrower one. With :math:`m \ge k`
    (teacher at least as wide as student), the student columns are the
    anchors:

    1. columns are linked when the same teacher rows send mass to both
       (similarity :math:`S = P^\top \mathrm{diag}(P\mathbf 1)^{-1} P`, links
       weaker than ``1e-3 * max(S)`` dropped); each connected group of columns
       is ordered by spectral seriation (the Fiedler vector of its normalised
       Laplacian, for groups of up to 4096 columns), so that columns sharing a
       split teacher neuron are adjacent; groups follow each other by their
       smallest original index, columns without mass last;
    2. each row is placed by the rank of the column that receives most of its
       mass, then by the mass-weighted mean rank of its columns (so a row
       split between two columns sits at their border), then by decreasing
       peak mass, then by index.

    For :math:`m < k` the roles are swapped. A permutation plan becomes the
    identity diagonal (columns keep their order, rows follow); a many-to-one
    plan becomes a staircase in which every row's mass occupies a contiguous
    band of columns moving right as the rows go down (exactly so whenever the
    split rows link the columns in a chain, as in every 1-D plan). Entropic
    plans get their dominant matching on the diagonal with related neurons
    nearby.

    Parameters
    ----------
    plan : array of shape (m, k) or Alignment
        A transport plan (non-negative, finite, not all zero).

    Returns
    -------
    row_order : ndarray of shape (m,)
    col_order : ndarray of shape (k,)
        Permutations: ``plan[row_order][:, col_order]`` is the ordered plan,
        and ``row_order[r]`` is the original index of the teacher neuron shown
        in row ``r``.

    Examples
    --------
    >>> P = np.eye(3)[[2, 0, 1]] / 3
    >>> rows, cols = plan_order(P)
    >>> bool(np.allclose(P[rows][:, cols], np.eye(3) / 3))
    True
    """
    P = _check_plan(plan)
    m, k = P.shape
    if m >= k:
        cols = _anchor_order(P)
        rows = _follower_order(P, cols)
    else:
        rows = _anchor_order(P.T)
        cols = _follower_order(P.T, rows)
    return rows.astype(np.int64), cols.astype(np.int64)


# ----------------------------------------------------------------------------
# plan heatmaps
# ----------------------------------------------------------------------------
def _plan_z(Z: np.ndarray, log_color: bool, zmax: float | None) -> tuple[np.ndarray, dict]:
    """Colour values and colour-bar settings for a (reordered) plan."""
    top = float(Z.max()) if zmax is None else float(zmax)
    if not log_color:
        return Z, dict(zmin=0.0, zmax=top if top > 0 else 1.0,
                       colorbar=dict(title=dict(text="mass"), tickformat=".2g"))
    hi = math.log10(top) if top > 0 else 0.0
    lo = hi - _LOG_DECADES
    with np.errstate(divide="ignore"):
        logz = np.log10(Z)
    logz = np.clip(logz, lo, None)  # zeros and tiny masses at the floor
    ticks = list(range(math.ceil(lo), math.floor(hi) + 1))
    return logz, dict(zmin=lo, zmax=hi, colorbar=dict(
        title=dict(text="mass"), tickvals=ticks, ticktext=[f"1e{t}" for t in ticks]))


def _heatmap_trace(Z: np.ndarray, row_labels: list[str], col_labels: list[str], *,
                   log_color: bool, zmax: float | None, teacher_label: str,
                   student_label: str, colorscale: str) -> go.Heatmap:
    zc, cfg = _plan_z(Z, log_color, zmax)
    t, s = _singular(teacher_label), _singular(student_label)
    if log_color:
        hover = f"{t} %{{y}}<br>{s} %{{x}}<br>mass %{{customdata:.3g}}<extra></extra>"
        extra = dict(customdata=Z)
    else:
        hover = f"{t} %{{y}}<br>{s} %{{x}}<br>mass %{{z:.3g}}<extra></extra>"
        extra = {}
    return go.Heatmap(z=zc, x=col_labels, y=row_labels, colorscale=colorscale,
                      hovertemplate=hover, name="plan", **cfg, **extra)


def _category_axis(labels: list[str], title: str | None = None, *, reverse: bool = False) -> dict:
    ax = dict(type="category", categoryorder="array", categoryarray=labels, showgrid=False,
              zeroline=False)
    if title is not None:
        ax["title"] = dict(text=title)
    if reverse:
        ax["autorange"] = "reversed"
    return ax


def _alignment_status(al: Alignment) -> str:
    if al.method == "emd":
        status = "exact solver" + ("" if al.converged else ", NOT converged")
    elif al.converged:
        status = f"converged in {al.n_iter} iterations"
    else:
        status = f"NOT converged after {al.n_iter} iterations"
    eps = f", eps={al.eps:g}" if al.eps is not None else ""
    return (f"{al.method}{eps}, {al.cost}, normalize={al.normalize}; {status}; "
            f"marginal error {al.marginal_error:.1e}")


def plan_heatmap(
    plan_or_alignment: PlanLike,
    *,
    reorder: bool = True,
    show_marginals: bool = True,
    title: str | None = None,
    teacher_label: str = "teacher neurons",
    student_label: str = "student neurons",
    log_color: bool = False,
    order: tuple[Sequence[int], Sequence[int]] | None = None,
    zmax: float | None = None,
    colorscale: str = PLAN_COLORSCALE,
    height: int | None = 600,
) -> go.Figure:
    r"""Draw a transport plan as a heatmap, ordered as a block diagonal, with its marginals.

    Entry :math:`P_{ij}` is the mass teacher neuron :math:`i` (row) sends to
    student neuron :math:`j` (column). Rows run top to bottom.

    Parameters
    ----------
    plan_or_alignment : array of shape (m, k) or Alignment
        The plan (numpy array or tensor), or an :class:`~otviz.transport.Alignment`,
        whose distance, solver and convergence go in the title and whose
        target weights ``a``, ``b`` are drawn beside the marginals.
    reorder : bool, default True
        Reorder rows and columns with :func:`plan_order` so the matching reads
        as a block diagonal. Tick labels and hover text keep the original
        neuron indices.
    show_marginals : bool, default True
        Bar charts of the row sums :math:`P\mathbf 1` (right) and column sums
        :math:`P^\top\mathbf 1` (top); with an Alignment, the targets ``a`` and
        ``b`` are drawn as ticks over the bars (they differ only for
        unbalanced OT or an unconverged solver).
    title : str, optional
        Default: ``"Transport plan (m x k)"``, with the distance when an
        Alignment is given.
    teacher_label, student_label : str
        Axis titles (hover text uses the singular form).
    log_color : bool, default False
        Colour by :math:`\log_{10}` mass over six decades below the largest
        entry (smaller masses and zeros get the lowest colour), to see small
        masses of entropic plans. Hover always shows the mass itself.
    order : (row_order, col_order), optional
        A fixed order, e.g. :func:`plan_order` of a later snapshot, so a
        sequence of plans shares one layout; overrides ``reorder``.
    zmax : float, optional
        Top of the colour range (default: the largest entry), to compare
        several plans on one scale.
    colorscale : str, default :data:`PLAN_COLORSCALE`
    height : int or None, default 600

    Returns
    -------
    plotly.graph_objects.Figure
        The heatmap trace (``name="plan"``) has ``z`` equal to
        ``plan[row_order][:, col_order]`` (its log10 with ``log_color``);
        the marginal bars are named ``"row sums"`` and ``"column sums"``.

    Raises
    ------
    ValueError
        A plan that is not 2-D, is empty, holds NaN/inf or negative entries,
        or is all zeros; an ``order`` that is not a pair of permutations.
    """
    P, a, b, al = _plan_and_weights(plan_or_alignment)
    m, k = P.shape
    if order is not None:
        rows, cols = _check_order(order, P.shape)
    elif reorder:
        rows, cols = plan_order(P)
    else:
        rows, cols = np.arange(m), np.arange(k)
    if zmax is not None and not (np.isfinite(zmax) and zmax > 0):
        raise ValueError(f"zmax must be a positive finite number, got {zmax!r}")
    Z = P[rows][:, cols]
    row_labels = [str(i) for i in rows]
    col_labels = [str(j) for j in cols]
    heat = _heatmap_trace(Z, row_labels, col_labels, log_color=log_color, zmax=zmax,
                          teacher_label=teacher_label, student_label=student_label,
                          colorscale=colorscale)

    if title is None:
        title = f"Transport plan ({m} x {k})"
        if al is not None:
            title = f"Transport plan ({m} x {k}): OT distance {al.distance:.4g}"
    sub = _alignment_status(al) if al is not None else (
        "rows and columns reordered to show the matching" if (reorder or order is not None)
        else None)

    t, s = _singular(teacher_label), _singular(student_label)
    if not show_marginals:
        fig = go.Figure(heat)
        fig.update_xaxes(**_category_axis(col_labels, student_label))
        fig.update_yaxes(**_category_axis(row_labels, teacher_label, reverse=True))
        return _finish(fig, title, sub, height=height)

    fig = make_subplots(rows=2, cols=2, column_widths=[0.84, 0.16], row_heights=[0.16, 0.84],
                        shared_xaxes=True, shared_yaxes=True, horizontal_spacing=0.015,
                        vertical_spacing=0.02, specs=[[{}, None], [{}, {}]])
    fig.add_trace(heat, row=2, col=1)
    fig.data[0].colorbar.update(len=0.84, y=0.0, yanchor="bottom", x=1.02)
    col_sums, row_sums = Z.sum(axis=0), Z.sum(axis=1)
    fig.add_trace(go.Bar(x=col_labels, y=col_sums, name="column sums",
                         marker_color=STUDENT_COLOR, showlegend=False,
                         hovertemplate=f"{s} %{{x}}<br>received mass %{{y:.3g}}<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Bar(y=row_labels, x=row_sums, orientation="h", name="row sums",
                         marker_color=TEACHER_COLOR, showlegend=False,
                         hovertemplate=f"{t} %{{y}}<br>sent mass %{{x:.3g}}<extra></extra>"),
                  row=2, col=2)
    if a is not None and b is not None:
        fig.add_trace(go.Scatter(x=col_labels, y=b[cols], mode="markers", name="target b",
                                 marker=dict(symbol="line-ew-open", size=10, color="#222",
                                             line=dict(width=2)), showlegend=False,
                                 hovertemplate=f"{s} %{{x}}<br>target b %{{y:.3g}}"
                                               "<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(y=row_labels, x=a[rows], mode="markers", name="target a",
                                 marker=dict(symbol="line-ns-open", size=10, color="#222",
                                             line=dict(width=2)), showlegend=False,
                                 hovertemplate=f"{t} %{{y}}<br>target a %{{x:.3g}}"
                                               "<extra></extra>"),
                      row=2, col=2)
    fig.update_xaxes(**_category_axis(col_labels), row=1, col=1)
    fig.update_xaxes(**_category_axis(col_labels, student_label), row=2, col=1)
    fig.update_yaxes(**_category_axis(row_labels, teacher_label, reverse=True), row=2, col=1)
    fig.update_yaxes(**_category_axis(row_labels, reverse=True), row=2, col=2)
    fig.update_yaxes(title=dict(text="mass"), tickformat=".2g", nticks=3, row=1, col=1)
    fig.update_xaxes(title=dict(text="mass"), tickformat=".2g", nticks=3, row=2, col=2)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=2, col=2)
    fig.update_layout(bargap=0.1)
    return _finish(fig, title, sub, height=height)


def plan_snapshots(
    plans: Sequence[Any],
    labels: Sequence[str],
    *,
    order: tuple[Sequence[int], Sequence[int]] | None = None,
    active: int = 0,
    log_color: bool = False,
    title: str | None = None,
    teacher_label: str = "teacher neurons",
    student_label: str = "student neurons",
    frame_duration: int = 600,
    colorscale: str = PLAN_COLORSCALE,
    height: int | None = 600,
) -> go.Figure:
    """An animated heatmap over the snapshots of a plan, with a slider and a play button.

    All snapshots are drawn in one order and on one colour range, so the
    picture moves only where the neurons are reallocated.

    Parameters
    ----------
    plans : sequence of arrays of shape (m, k) or Alignments
        The snapshots (e.g. one per epoch), all of the same shape.
    labels : sequence of str
        One distinct label per snapshot, e.g. ``"epoch 3"``.
    order : (row_order, col_order), optional
        Default: :func:`plan_order` of the last plan (the most organised one
        in a training run).
    active : int, default 0
        Index of the snapshot shown first (negative counts from the end).
    log_color : bool, default False
        As in :func:`plan_heatmap`.
    title : str, optional
        Default ``"Transport plan"``; the label of the shown snapshot is
        appended.
    frame_duration : int, default 600
        Milliseconds per snapshot when playing.

    Every frame carries its full matrix: 10 snapshots of a 512 x 256 plan
    make a figure of about 17 MB, so thin out the snapshots of wide layers.

    Returns
    -------
    plotly.graph_objects.Figure
        One frame per plan (named by its label), a slider with one step per
        frame and play/pause buttons.

    Raises
    ------
    ValueError
        No plans, a bad plan, plans of different shapes, labels of the wrong
        length or repeated labels, ``active`` out of range.
    """
    if isinstance(plans, (np.ndarray,)) and plans.ndim == 2:
        raise TypeError("plans must be a sequence of plans; wrap a single plan as [plan]")
    plans = list(plans)
    if not plans:
        raise ValueError("plans is empty; pass at least one snapshot")
    mats = [_check_plan(p, f"plans[{i}]") for i, p in enumerate(plans)]
    shape = mats[0].shape
    for i, M in enumerate(mats):
        if M.shape != shape:
            raise ValueError(f"plans[{i}] has shape {M.shape} but plans[0] has shape {shape}; "
                             f"snapshots of one run must have the same shape")
    if isinstance(labels, str):
        raise TypeError("labels must be a sequence of strings, one per plan")
    labels = [str(x) for x in labels]
    if len(labels) != len(mats):
        raise ValueError(f"got {len(labels)} labels for {len(mats)} plans; pass one label "
                         f"per plan")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be distinct (they name the animation frames)")
    if not isinstance(active, numbers.Integral) or not -len(mats) <= active < len(mats):
        raise ValueError(f"active={active!r} is not a valid snapshot index for "
                         f"{len(mats)} plans")
    active = int(active) % len(mats)
    rows, cols = plan_order(mats[-1]) if order is None else _check_order(order, shape)
    Zs = [M[rows][:, cols] for M in mats]
    zmax = max(float(Z.max()) for Z in Zs)
    row_labels = [str(i) for i in rows]
    col_labels = [str(j) for j in cols]
    base = title or "Transport plan"

    def trace(Z: np.ndarray) -> go.Heatmap:
        return _heatmap_trace(Z, row_labels, col_labels, log_color=log_color, zmax=zmax,
                              teacher_label=teacher_label, student_label=student_label,
                              colorscale=colorscale)

    fig = go.Figure(trace(Zs[active]))
    fig.frames = [go.Frame(data=[trace(Z)], name=lab,
                           layout=dict(title=_title(f"{base}: {lab}")))
                  for Z, lab in zip(Zs, labels)]
    steps = [dict(method="animate", label=lab,
                  args=[[lab], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                    transition=dict(duration=0))])
             for lab in labels]
    fig.update_layout(
        sliders=[dict(active=active, steps=steps, x=0.14, len=0.86, y=0, yanchor="top",
                      pad=dict(t=45), currentvalue=dict(visible=False))],
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=0, xanchor="left",
                          yanchor="top", pad=dict(t=50, r=10), showactive=False, buttons=[
                              dict(label="▶", method="animate",
                                   args=[None, dict(frame=dict(duration=frame_duration,
                                                               redraw=True),
                                                    fromcurrent=True,
                                                    transition=dict(duration=0))]),
                              dict(label="❚❚", method="animate",
                                   args=[[None], dict(mode="immediate",
                                                      frame=dict(duration=0, redraw=False),
                                                      transition=dict(duration=0))]),
                          ])])
    fig.update_xaxes(**_category_axis(col_labels, student_label))
    fig.update_yaxes(**_category_axis(row_labels, teacher_label, reverse=True))
    _finish(fig, f"{base}: {labels[active]}", height=height)
    fig.update_layout(margin=dict(b=120))
    return fig


# ----------------------------------------------------------------------------
# neuron embeddings and maps
# ----------------------------------------------------------------------------
_ROW_NORMS = (None, "center", "standardize", "unit")
_NORM_WORDS = {None: "raw", "center": "centred", "standardize": "standardised",
               "unit": "unit-norm"}


def _normalise_rows(X: np.ndarray, how: str | None) -> np.ndarray:
    if how not in _ROW_NORMS:
        raise ValueError(f"unknown normalize={how!r}; pass one of {list(_ROW_NORMS)}")
    if how is None:
        return X
    if how == "unit":
        nrm = np.linalg.norm(X, axis=1, keepdims=True)
        return np.divide(X, nrm, out=np.zeros_like(X), where=nrm > 0)
    C = X - X.mean(axis=1, keepdims=True)
    if how == "center":
        return C
    sd = C.std(axis=1, keepdims=True)
    scale = np.abs(X).max(axis=1, keepdims=True)
    return np.divide(C, sd, out=np.zeros_like(C), where=sd > 1e-12 * np.maximum(scale, 1.0))


def _pca_2d(X: np.ndarray, random_state: int) -> np.ndarray:
    n, d = X.shape
    out = np.zeros((n, 2))
    n_comp = min(2, n, d)
    if n_comp == 0 or n < 2 or not np.any(X - X.mean(axis=0)):
        return out
    from sklearn.decomposition import PCA

    emb = PCA(n_components=n_comp, random_state=random_state).fit_transform(X)
    out[:, :n_comp] = emb
    return out


def embed_neurons(
    teacher_neurons: Any,
    student_neurons: Any,
    *,
    method: Literal["umap", "pca"] = "umap",
    random_state: int = 0,
    n_neighbors: int = 15,
    normalize: str | None = "standardize",
    min_dist: float = 0.1,
) -> np.ndarray:
    """Embed teacher and student neurons together in 2-D.

    The ``m`` teacher and ``k`` student neurons (rows: responses to the same
    probe inputs) are stacked, each row is normalised (by default
    standardised: its mean response subtracted and divided by its standard
    deviation, so the map shows the *shape* of the responses, as the
    ``normalize="standardize"`` cost does; a neuron with constant response
    becomes the zero vector), and one embedding is fitted on all ``m + k``
    rows, so both layers share the same axes.

    Parameters
    ----------
    teacher_neurons : array of shape (m, d)
    student_neurons : array of shape (k, d)
        Numpy arrays or tensors, e.g. ``otviz.neurons(activation)``.
    method : {"umap", "pca"}, default "umap"
        ``"pca"``: scikit-learn PCA, instant. ``"umap"``: umap-learn, imported
        here on first use; its first fit in a process compiles with numba and
        takes 20-60 s (later fits a few seconds), so interactive callers show
        PCA meanwhile. With fewer than 6 neurons UMAP is replaced by PCA (with
        a warning); with fewer than ``n_neighbors + 2`` it uses
        ``n_neighbors = m + k - 2`` (with a warning).
    random_state : int, default 0
        Seed, for reproducible embeddings.
    n_neighbors : int, default 15
        UMAP neighbourhood size (ignored by PCA).
    normalize : {"standardize", "center", "unit", None}, default "standardize"
        Per-neuron normalisation before embedding.
    min_dist : float, default 0.1
        UMAP's minimum distance between embedded points.

    Returns
    -------
    ndarray of shape (m + k, 2)
        Teacher neurons first, then student neurons. Degenerate inputs (one
        neuron, one feature, all neurons equal) give zeros in the missing
        dimensions.

    Raises
    ------
    ValueError
        Non-2-D, empty or non-finite inputs, different feature counts, an
        unknown method or normalisation, ``n_neighbors < 2``.
    """
    T = _check_points(teacher_neurons, "teacher_neurons")
    S = _check_points(student_neurons, "student_neurons")
    if T.shape[1] != S.shape[1]:
        raise ValueError(f"teacher neurons have {T.shape[1]} features but student neurons have "
                         f"{S.shape[1]}; both must be responses to the same probe inputs")
    if method not in ("umap", "pca"):
        raise ValueError(f"unknown method={method!r}; pass 'umap' or 'pca'")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, numbers.Integral) \
            or n_neighbors < 2:
        raise ValueError(f"n_neighbors must be an int >= 2, got {n_neighbors!r}")
    X = _normalise_rows(np.vstack([T, S]), normalize)
    n = X.shape[0]
    if method == "umap" and n < 6:
        warnings.warn(f"only {n} neurons: too few for UMAP; using PCA instead",
                      UserWarning, stacklevel=2)
        method = "pca"
    if method == "pca":
        return _pca_2d(X, random_state)

    if n < n_neighbors + 2:
        warnings.warn(f"n_neighbors={n_neighbors} is too large for {n} neurons; using "
                      f"n_neighbors={n - 2}", UserWarning, stacklevel=2)
        n_neighbors = n - 2
    import umap  # lazy: importing and first fit are slow (numba)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        warnings.filterwarnings("ignore", message=".*[Ss]pectral initialisation failed.*")
        reducer = umap.UMAP(n_components=2, n_neighbors=int(n_neighbors), min_dist=min_dist,
                            random_state=random_state, init="spectral" if n > 20 else "random")
        emb = reducer.fit_transform(X)
    return np.asarray(emb, dtype=np.float64)


def _select_entries(P: np.ndarray, top: Top, max_lines: int | None) -> tuple[np.ndarray, ...]:
    """Strongest plan entries, as (rows, cols, masses) sorted by decreasing mass."""
    flat = P.ravel()
    nz = np.flatnonzero(flat > 0)
    idx = nz[np.argsort(-flat[nz], kind="stable")]
    if isinstance(top, int):
        idx = idx[:top]
    else:
        cum = np.cumsum(flat[idx])
        n = int(np.searchsorted(cum, top * cum[-1] * (1 - 1e-9))) + 1
        idx = idx[:min(n, len(idx))]
        if max_lines is not None:
            idx = idx[:max_lines]
    r, c = np.unravel_index(idx, P.shape)
    return r, c, flat[idx]


def _line_traces(P: np.ndarray, A: np.ndarray, B: np.ndarray, top: Top,
                 max_lines: int | None, src: str, dst: str,
                 total_note: bool = True) -> list[go.Scatter]:
    """Plan entries as line segments from A[i] to B[j], width and opacity by mass."""
    r, c, w = _select_entries(P, top, max_lines)
    traces: list[go.Scatter] = []
    if len(w) == 0:
        return traces
    rel = w / w.max()
    level = np.minimum((rel * 4).astype(int), 3)  # 4 bands of relative mass
    widths, alphas = (0.8, 1.4, 2.2, 3.2), (0.18, 0.35, 0.55, 0.8)
    share = w.sum() / P.sum()
    name = f"plan: {len(w)} lines, {share:.0%} of the mass"
    shown = False
    for lv in range(3, -1, -1):
        sel = np.flatnonzero(level == lv)
        if len(sel) == 0:
            continue
        xs = np.full(3 * len(sel), None, dtype=object)
        ys = np.full(3 * len(sel), None, dtype=object)
        xs[0::3], xs[1::3] = A[r[sel], 0], B[c[sel], 0]
        ys[0::3], ys[1::3] = A[r[sel], 1], B[c[sel], 1]
        txt = [f"{src} {i} → {dst} {j}<br>mass {m:.3g}" for i, j, m in zip(r[sel], c[sel], w[sel])]
        text = np.full(3 * len(sel), None, dtype=object)
        text[0::3], text[1::3] = txt, txt
        rgba = f"rgba({LINE_COLOR[0]},{LINE_COLOR[1]},{LINE_COLOR[2]},{alphas[lv]})"
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", text=text, hoverinfo="text",
                                 line=dict(width=widths[lv], color=rgba), name=name,
                                 legendgroup="plan", showlegend=not shown,
                                 meta=dict(kind="plan lines", n_lines=int(len(sel)))))
        shown = True
    return traces


def _marker_sizes(mass: np.ndarray, base: float, spread: float) -> np.ndarray:
    top = mass.max()
    if top <= 0 or np.allclose(mass, top):
        return np.full(len(mass), base + spread / 2)
    return base + spread * np.sqrt(mass / top)


def neuron_map(
    teacher_neurons: Any,
    student_neurons: Any,
    plan: PlanLike | None = None,
    *,
    embedding: Any | None = None,
    method: Literal["umap", "pca"] = "pca",
    top: Top = 0.9,
    title: str | None = None,
    max_lines: int | None = 5000,
    random_state: int = 0,
    n_neighbors: int = 15,
    normalize: str | None = "standardize",
    teacher_label: str = "teacher",
    student_label: str = "student",
    height: int | None = 560,
) -> go.Figure:
    """Teacher and student neurons in one 2-D map, the strongest plan entries as lines.

    Parameters
    ----------
    teacher_neurons : array of shape (m, d)
    student_neurons : array of shape (k, d)
        The neurons (rows), as given to :func:`otviz.transport.align`.
    plan : array of shape (m, k) or Alignment, optional
        Transport plan; its strongest entries are drawn as segments from
        teacher to student neuron, wider and darker for more mass, and the
        hover text of each neuron shows the mass it sends or receives.
    embedding : array of shape (m + k, 2), optional
        Precomputed coordinates (teacher rows first), e.g. a cached
        :func:`embed_neurons` result; otherwise computed with ``method``.
    method : {"pca", "umap"}, default "pca"
        See :func:`embed_neurons` (UMAP's first use in a process is slow).
    top : float in (0, 1] or int, default 0.9
        A float draws the fewest strongest entries that carry this fraction
        of the plan's mass (at most ``max_lines``); an int draws that many
        strongest entries (or all non-zero ones if fewer). Note ``top=1.0``
        draws the whole plan and ``top=1`` a single line.
    title : str, optional
    max_lines : int or None, default 5000
        Cap on lines for a fractional ``top`` (dense entropic plans of wide
        layers would otherwise draw hundreds of thousands).
    random_state, n_neighbors, normalize
        Passed to :func:`embed_neurons`.
    teacher_label, student_label : str
        Names of the two marker sets.

    Returns
    -------
    plotly.graph_objects.Figure
        Line traces first (``meta["kind"] == "plan lines"``, segments
        separated by ``None``), then the teacher markers (``m`` points) and
        the student markers (``k`` points).

    Raises
    ------
    ValueError
        Bad neurons (see :func:`embed_neurons`), a plan whose shape is not
        ``(m, k)``, an embedding whose shape is not ``(m + k, 2)``, a bad
        ``top``.
    """
    T = _check_points(teacher_neurons, "teacher_neurons")
    S = _check_points(student_neurons, "student_neurons")
    m, k = T.shape[0], S.shape[0]
    top = _check_top(top)
    P = None
    if plan is not None:
        P = _check_plan(plan)
        if P.shape != (m, k):
            raise ValueError(f"plan has shape {P.shape} but there are {m} teacher and {k} "
                             f"student neurons; pass the plan of these two layers")
    if embedding is None:
        E = embed_neurons(T, S, method=method, random_state=random_state,
                          n_neighbors=n_neighbors, normalize=normalize)
        axis = {"pca": "PC", "umap": "UMAP"}[method]
        how = f"{'PCA' if method == 'pca' else 'UMAP'} of {_NORM_WORDS[normalize]} responses"
    else:
        E = _check_points(embedding, "embedding", dim=2)
        if E.shape[0] != m + k:
            raise ValueError(f"embedding has {E.shape[0]} rows; expected m + k = {m + k} "
                             f"(teacher neurons first, then student neurons)")
        axis, how = "dim", "precomputed embedding"
    A, B = E[:m], E[m:]

    fig = go.Figure()
    if P is not None:
        send, recv = P.sum(axis=1), P.sum(axis=0)
        for tr in _line_traces(P, A, B, top, max_lines, teacher_label, student_label):
            fig.add_trace(tr)
        best_t, best_s = P.argmax(axis=1), P.argmax(axis=0)
        t_text = [f"{teacher_label} neuron {i}<br>mass sent {send[i]:.3g}<br>"
                  f"mostly to {student_label} {best_t[i]}" for i in range(m)]
        s_text = [f"{student_label} neuron {j}<br>mass received {recv[j]:.3g}<br>"
                  f"mostly from {teacher_label} {best_s[j]}" for j in range(k)]
    else:
        send, recv = np.full(m, 1.0 / m), np.full(k, 1.0 / k)
        t_text = [f"{teacher_label} neuron {i}<br>weight {send[i]:.3g}" for i in range(m)]
        s_text = [f"{student_label} neuron {j}<br>weight {recv[j]:.3g}" for j in range(k)]
    fig.add_trace(go.Scatter(
        x=A[:, 0], y=A[:, 1], mode="markers", name=f"{teacher_label} ({m} neurons)",
        text=t_text, hoverinfo="text", customdata=np.arange(m),
        marker=dict(symbol="circle", color=TEACHER_COLOR, size=_marker_sizes(send, 7, 8),
                    line=dict(width=1, color="white"), opacity=0.9)))
    fig.add_trace(go.Scatter(
        x=B[:, 0], y=B[:, 1], mode="markers", name=f"{student_label} ({k} neurons)",
        text=s_text, hoverinfo="text", customdata=np.arange(k),
        marker=dict(symbol="diamond", color=STUDENT_COLOR, size=_marker_sizes(recv, 8, 8),
                    line=dict(width=1, color="white"), opacity=0.9)))
    if title is None:
        title = f"Neuron map: {m} {teacher_label} and {k} {student_label} neurons"
    fig.update_xaxes(title=dict(text=f"{axis} 1"), zeroline=False)
    fig.update_yaxes(title=dict(text=f"{axis} 2"), zeroline=False)
    return _finish(fig, title, how, height=height,
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))


def point_cloud_transport(
    X: Any,
    Y: Any,
    plan: PlanLike | None,
    *,
    top: Top = 0.95,
    title: str | None = None,
    a: Any | None = None,
    b: Any | None = None,
    max_lines: int | None = 5000,
    x_label: str = "source",
    y_label: str = "target",
    height: int | None = 520,
) -> go.Figure:
    """Two 2-D point clouds, marker size by weight, the transport plan as lines.

    For teaching: draw the exact plan (a sparse set of lines) next to
    entropic ones (more, fainter lines as eps grows).

    Parameters
    ----------
    X : array of shape (n, 2)
    Y : array of shape (p, 2)
        The two clouds.
    plan : array of shape (n, p), Alignment, or None
        The plan (None: only the clouds).
    top : float in (0, 1] or int, default 0.95
        Fraction of the plan mass drawn (strongest entries first) or number
        of lines, as in :func:`neuron_map`.
    a, b : arrays of shape (n,) and (p,), optional
        Point weights for the marker sizes. Default: the Alignment's weights,
        else the plan's row and column sums, else uniform.
    x_label, y_label : str
        Names of the two clouds.

    Returns
    -------
    plotly.graph_objects.Figure
        Line traces (as in :func:`neuron_map`), then the two marker sets;
        equal scales on both axes.

    Raises
    ------
    ValueError
        Clouds that are not ``(n, 2)`` finite arrays, a plan of the wrong
        shape, bad weights or ``top``.
    """
    Xa = _check_points(X, "X", dim=2)
    Ya = _check_points(Y, "Y", dim=2)
    n, p = len(Xa), len(Ya)
    top = _check_top(top)
    P = None
    if plan is not None:
        P, pa, pb, _ = _plan_and_weights(plan)
        if P.shape != (n, p):
            raise ValueError(f"plan has shape {P.shape} but the clouds have {n} and {p} "
                             f"points; expected ({n}, {p})")
        if a is None:
            a = pa if pa is not None else P.sum(axis=1)
        if b is None:
            b = pb if pb is not None else P.sum(axis=0)
    wa, wb = _check_weights(a, n, "a"), _check_weights(b, p, "b")
    fig = go.Figure()
    if P is not None:
        for tr in _line_traces(P, Xa, Ya, top, max_lines, x_label, y_label):
            fig.add_trace(tr)
    for pts, w, lab, col, sym in ((Xa, wa, x_label, TEACHER_COLOR, "circle"),
                                  (Ya, wb, y_label, STUDENT_COLOR, "diamond")):
        fig.add_trace(go.Scatter(
            x=pts[:, 0], y=pts[:, 1], mode="markers", name=f"{lab} ({len(pts)} points)",
            text=[f"{lab} point {i}<br>weight {wi:.3g}" for i, wi in enumerate(w)],
            hoverinfo="text",
            marker=dict(symbol=sym, color=col, size=_marker_sizes(w, 6, 14),
                        line=dict(width=1, color="white"), opacity=0.9)))
    fig.update_yaxes(scaleanchor="x", scaleratio=1, zeroline=False)
    fig.update_xaxes(zeroline=False)
    if title is None:
        title = "Optimal transport between two point clouds"
    sub = None
    if isinstance(plan, Alignment):
        sub = f"{plan.method}{f', eps={plan.eps:g}' if plan.eps is not None else ''}: " \
              f"cost {plan.distance:.4g}"
    return _finish(fig, title, sub, height=height,
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))


# ----------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------
def _check_metrics(metrics: Any, x: str, name: str = "metrics") -> pd.DataFrame:
    if not isinstance(metrics, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame in long format (columns step, "
                        f"epoch, key, value), e.g. RunStore.metrics(run_id); got "
                        f"{type(metrics).__name__}")
    missing = [c for c in ("key", "value", x) if c not in metrics.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(metrics.columns)}. "
                         f"Pass long-format metrics (RunStore.metrics) and x='step', 'epoch' "
                         f"or 'time'")
    return metrics


def _series(metrics: pd.DataFrame, key: str, x: str, smooth: int | None) -> pd.Series:
    """One key's values against ``x``: NA x dropped, duplicates averaged, sorted."""
    sub = metrics.loc[metrics["key"] == key, [x, "value"]].dropna(subset=[x])
    if sub.empty:
        return pd.Series(dtype=float)
    if x in ("step", "epoch"):
        sub = sub.assign(**{x: sub[x].astype("int64")})
    s = sub.groupby(x, sort=True)["value"].mean().astype(float)
    if smooth is not None and smooth > 1:
        s = s.rolling(window=smooth, min_periods=1).mean()
    return s


def _check_smooth(smooth: Any) -> int | None:
    if smooth is None:
        return None
    if isinstance(smooth, bool) or not isinstance(smooth, numbers.Integral) or smooth < 1:
        raise ValueError(f"smooth must be None or a window of at least 1 point, got {smooth!r}")
    return int(smooth)


def _integer_ticks(fig: go.Figure, x: str, series: Any) -> None:
    """One tick per epoch when there are few epochs (no 1.5 epochs on the axis)."""
    if x != "epoch":
        return
    values = set()
    for s in series:
        values.update(s.index.tolist())
    if len(values) <= 15:
        fig.update_xaxes(dtick=1)
    else:
        fig.update_xaxes(tickformat="d")


def _axis_name(x: str) -> str:
    return {"step": "step", "epoch": "epoch", "time": "time"}.get(x, x)


def _is_fraction_key(key: str, values: Sequence[pd.Series]) -> bool:
    vals = [s.to_numpy() for s in values if len(s)]
    return ("acc" in key.lower() and bool(vals)
            and all(np.nanmin(v) >= 0 and np.nanmax(v) <= 1 for v in vals))


def training_curves(
    metrics: pd.DataFrame,
    keys: str | Sequence[str] | None = None,
    *,
    x: str = "step",
    title: str | None = None,
    smooth: int | None = None,
    facet: bool = False,
    log_y: bool = False,
    height: int | None = None,
) -> go.Figure:
    """Line plot of a run's metrics, one trace per key.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Long format, as :meth:`otviz.runs.RunStore.metrics` returns it:
        columns ``step``, ``epoch``, ``key``, ``value`` (and ``time``).
    keys : str or sequence of str, optional
        Metrics to draw (default: every key present, sorted). A requested key
        with no rows yet still gets its trace (empty, ``"(no data yet)"`` in
        its legend name), so live pages keep a stable legend.
    x : {"step", "epoch", "time"}, default "step"
        Column for the horizontal axis. Rows where it is missing are dropped;
        several values of one key at the same ``x`` (e.g. per-step losses
        against ``x="epoch"``) are averaged.
    title : str, optional
    smooth : int, optional
        Rolling-mean window (in points, trailing); ``None`` or 1 draws the
        raw values.
    facet : bool, default False
        One panel per key (shared ``x``) instead of one shared axis, for keys
        of different scales.
    log_y : bool, default False
        Logarithmic vertical axis.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter`` per key, named by the key. An empty ``metrics`` gives
        a figure that says there is no data yet.

    Raises
    ------
    TypeError
        ``metrics`` is not a DataFrame.
    ValueError
        Missing columns, a bad ``smooth`` or an empty ``keys`` list.
    """
    metrics = _check_metrics(metrics, x)
    smooth = _check_smooth(smooth)
    if keys is None:
        keys = sorted(metrics["key"].dropna().unique().tolist())
    elif isinstance(keys, str):
        keys = [keys]
    else:
        keys = list(keys)
        if not keys:
            raise ValueError("keys is an empty list; pass None for all metrics")
    if not keys:
        return _empty_figure("no metrics logged yet", title)
    series = {key: _series(metrics, key, x, smooth) for key in keys}
    n = len(keys)
    if facet and n > 1:
        fig = make_subplots(rows=n, cols=1, shared_xaxes=True,
                            vertical_spacing=min(0.1, 0.3 / n), subplot_titles=keys)
    else:
        fig = go.Figure()
        facet = False
    note = f" (rolling mean of {smooth})" if smooth and smooth > 1 else ""
    for i, key in enumerate(keys):
        s = series[key]
        mode = "lines+markers" if 0 < len(s) <= 30 else "lines"
        tr = go.Scatter(x=s.index.to_numpy() if len(s) else [], y=s.to_numpy(), mode=mode,
                        name=key if len(s) else f"{key} (no data yet)",
                        hovertemplate=f"{key}<br>{x} %{{x}}<br>value %{{y:.4g}}"
                                      f"<extra></extra>")
        if facet:
            fig.add_trace(tr, row=i + 1, col=1)
            if _is_fraction_key(key, [s]):
                fig.update_yaxes(tickformat=".0%", row=i + 1, col=1)
        else:
            fig.add_trace(tr)
    if facet:
        fig.update_layout(showlegend=False)
    fig.update_xaxes(title=dict(text=_axis_name(x)), row=n if facet else None,
                     col=1 if facet else None)
    _integer_ticks(fig, x, series.values())
    if log_y:
        fig.update_yaxes(type="log")
    if not facet:
        fig.update_yaxes(title=dict(text=keys[0] if n == 1 else "value"))
        if n == 1 and _is_fraction_key(keys[0], list(series.values())):
            fig.update_yaxes(tickformat=".0%")
    if height is None and facet:
        height = max(300, 170 * n)
    return _finish(fig, title if title is not None else ("Training curves" + note),
                   height=height, hovermode="x unified" if not facet else "closest")


def accuracy_curves(
    runs: Mapping[str, pd.DataFrame],
    *,
    key: str = "test/accuracy",
    x: str = "epoch",
    title: str | None = None,
    smooth: int | None = None,
    height: int | None = None,
) -> go.Figure:
    """Overlay one metric of several runs.

    Parameters
    ----------
    runs : mapping of str to pandas.DataFrame
        Run label (legend name) to its long-format metrics
        (:meth:`otviz.runs.RunStore.metrics`).
    key : str, default "test/accuracy"
        The metric to draw.
    x : {"epoch", "step", "time"}, default "epoch"
    title : str, optional
    smooth : int, optional
        Rolling-mean window, as in :func:`training_curves`.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter`` per run, in the mapping's order; a run without this
        key yet gets an empty trace named ``"<label> (no data yet)"``. An
        empty mapping gives a figure asking to select runs. Accuracies in
        [0, 1] are shown as percentages.

    Raises
    ------
    TypeError
        ``runs`` is not a mapping of DataFrames.
    ValueError
        A DataFrame without the needed columns, a bad ``smooth``.
    """
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a mapping of run label to metrics DataFrame, got "
                        f"{type(runs).__name__}")
    smooth = _check_smooth(smooth)
    if title is None:
        title = f"{key} by run"
    if not runs:
        return _empty_figure("no runs selected", title)
    fig = go.Figure()
    all_series = []
    for label, df in runs.items():
        _check_metrics(df, x, name=f"runs[{label!r}]")
        s = _series(df, key, x, smooth)
        all_series.append(s)
        fig.add_trace(go.Scatter(
            x=s.index.to_numpy() if len(s) else [], y=s.to_numpy(),
            mode="lines+markers" if 0 < len(s) <= 50 else "lines",
            name=str(label) if len(s) else f"{label} (no data yet)",
            hovertemplate=f"{label}<br>{x} %{{x}}<br>{key} %{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title=dict(text=_axis_name(x)))
    _integer_ticks(fig, x, all_series)
    fig.update_yaxes(title=dict(text=key))
    if _is_fraction_key(key, all_series):
        fig.update_yaxes(tickformat=".0%")
    return _finish(fig, title, height=height, hovermode="x unified")


# ----------------------------------------------------------------------------
# layer x layer tables
# ----------------------------------------------------------------------------
_MEASURE_INFO = {
    "ot": ("OT distance", "lower = more similar", True),
    "cka": ("linear CKA", "higher = more similar", False),
}


def _check_table(df: Any, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame (teacher layers x student layers), "
                        f"as otviz.layer_distances returns; got {type(df).__name__}")
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {df.shape}); it needs at least one teacher "
                         f"and one student layer")
    try:
        vals = df.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers only") from None
    if not np.isfinite(vals).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(vals)).sum())} NaN or infinite "
                         f"value(s)")
    return df


def _measure(df: pd.DataFrame, measure: str | None) -> tuple[str, str, str, bool]:
    key = measure if measure is not None else df.attrs.get("measure")
    if key in _MEASURE_INFO:
        label, hint, low_is_close = _MEASURE_INFO[key]
    else:
        label, hint, low_is_close = (str(key) if key else "value"), "", False
    return str(key), label, hint, low_is_close


def _matrix_trace(df: pd.DataFrame, label: str, low_is_close: bool, **extra: Any) -> go.Heatmap:
    t_name = df.index.name or "teacher"
    s_name = df.columns.name or "student"
    return go.Heatmap(
        z=df.to_numpy(dtype=np.float64), x=[str(c) for c in df.columns],
        y=[str(i) for i in df.index], colorscale=SIMILARITY_COLORSCALE,
        reversescale=not low_is_close, texttemplate="%{z:.3g}", name=label,
        hovertemplate=f"{t_name} layer %{{y}}<br>{s_name} layer %{{x}}<br>{label} "
                      f"%{{z:.4g}}<extra></extra>", **extra)


def distance_matrix(df: pd.DataFrame, *, title: str | None = None,
                    measure: str | None = None, height: int | None = None) -> go.Figure:
    """Heatmap of a teacher-layer x student-layer table, values written in the cells.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`otviz.layers.layer_distances`: index teacher layers,
        columns student layers.
    title : str, optional
    measure : str, optional
        ``"ot"`` or ``"cka"`` (default: ``df.attrs["measure"]``); sets the
        colour-bar label and direction: the most similar pairs are dark in
        both (low OT distance, high CKA).

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Heatmap`` whose ``z`` is ``df.to_numpy()``, first teacher layer
        at the top.

    Raises
    ------
    TypeError
        ``df`` is not a DataFrame.
    ValueError
        An empty table or non-finite / non-numeric values.
    """
    df = _check_table(df, "df")
    _, label, hint, low = _measure(df, measure)
    fig = go.Figure(_matrix_trace(df, label, low, colorbar=dict(title=dict(text=label))))
    fig.update_xaxes(**_category_axis([str(c) for c in df.columns],
                                      f"{df.columns.name or 'student'} layer"))
    fig.update_yaxes(**_category_axis([str(i) for i in df.index],
                                      f"{df.index.name or 'teacher'} layer", reverse=True))
    if title is None:
        title = f"{label} between layers"
    return _finish(fig, title, hint or None, height=height)


def distance_matrices(ot_df: pd.DataFrame, cka_df: pd.DataFrame, *,
                      title: str | None = None, height: int | None = None) -> go.Figure:
    """OT distances beside linear CKA for the same pairs of layers.

    Parameters
    ----------
    ot_df, cka_df : pandas.DataFrame
        ``layer_distances(..., measure="ot")`` and
        ``layer_distances(..., measure="cka")``.
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        Two heatmaps side by side (OT left, CKA right), each with its colour
        bar; dark marks the most similar pairs in both.

    Raises
    ------
    ValueError
        A bad table, or tables whose ``attrs["measure"]`` says they are
        swapped.
    """
    ot_df = _check_table(ot_df, "ot_df")
    cka_df = _check_table(cka_df, "cka_df")
    if ot_df.attrs.get("measure") == "cka" or cka_df.attrs.get("measure") == "ot":
        raise ValueError("ot_df and cka_df look swapped (see their attrs['measure']); pass the "
                         "OT table first")
    ot_label, ot_hint, ot_low = _MEASURE_INFO["ot"]
    cka_label, cka_hint, cka_low = _MEASURE_INFO["cka"]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.2,
                        subplot_titles=[f"{ot_label} ({ot_hint})", f"{cka_label} ({cka_hint})"])
    fig.add_trace(_matrix_trace(ot_df, ot_label, ot_low, coloraxis="coloraxis"), row=1, col=1)
    fig.add_trace(_matrix_trace(cka_df, cka_label, cka_low, coloraxis="coloraxis2"),
                  row=1, col=2)
    fig.update_layout(
        coloraxis=dict(colorscale=SIMILARITY_COLORSCALE, reversescale=not ot_low,
                       colorbar=dict(x=0.41, len=0.9, title=dict(text="OT"))),
        coloraxis2=dict(colorscale=SIMILARITY_COLORSCALE, reversescale=not cka_low,
                        colorbar=dict(x=1.0, len=0.9, title=dict(text="CKA"))))
    for col, df in ((1, ot_df), (2, cka_df)):
        fig.update_xaxes(**_category_axis([str(c) for c in df.columns],
                                          f"{df.columns.name or 'student'} layer"),
                         row=1, col=col)
        fig.update_yaxes(**_category_axis([str(i) for i in df.index],
                                          f"{df.index.name or 'teacher'} layer" if col == 1
                                          else None, reverse=True),
                         row=1, col=col)
    return _finish(fig, title or "Layer similarity: OT beside CKA", height=height)


def distance_bars(alignments: Mapping[str, Alignment], *, title: str | None = None,
                  height: int | None = None) -> go.Figure:
    """OT distances of a few alignments as horizontal bars.

    Parameters
    ----------
    alignments : mapping of str to Alignment
        Label (e.g. ``"conv1 -> conv1"`` or ``"eps=0.01"``) to alignment.
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Bar`` trace, one bar per alignment in the mapping's order; bars
        of solvers that did not converge are grey and say so in their hover.

    Raises
    ------
    TypeError
        Not a mapping of :class:`~otviz.transport.Alignment`.
    ValueError
        An empty mapping.
    """
    if not isinstance(alignments, Mapping):
        raise TypeError(f"alignments must be a mapping of label to Alignment, got "
                        f"{type(alignments).__name__}")
    if not alignments:
        raise ValueError("alignments is empty; pass at least one labelled Alignment")
    for lab, al in alignments.items():
        if not isinstance(al, Alignment):
            raise TypeError(f"alignments[{lab!r}] is a {type(al).__name__}, not an Alignment "
                            f"(use otviz.align(...))")
    labels = [str(k) for k in alignments]
    als = list(alignments.values())
    fig = go.Figure(go.Bar(
        y=labels, x=[al.distance for al in als], orientation="h", name="OT distance",
        marker_color=[TEACHER_COLOR if al.converged else "#aaaaaa" for al in als],
        text=[f"{al.distance:.3g}" for al in als], textposition="auto",
        hovertext=[f"{lab}<br>{al.plan.shape[0]} x {al.plan.shape[1]} neurons<br>"
                   f"{_alignment_status(al)}" for lab, al in zip(labels, als)],
        hoverinfo="text+x"))
    fig.update_yaxes(**_category_axis(labels, reverse=True))
    fig.update_xaxes(title=dict(text="OT distance"))
    return _finish(fig, title or "OT distances", height=height)
