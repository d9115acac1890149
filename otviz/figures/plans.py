"""Transport plans: the block-diagonal order of a plan, its heatmap with marginals, epoch snapshots."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from otviz.figures._common import (
    PLAN_COLORSCALE,
    PlanLike,
    STUDENT_COLOR,
    TEACHER_COLOR,
    _LINK_TOL,
    _LOG_DECADES,
    _SPECTRAL_MAX,
    _alignment_status,
    _category_axis,
    _check_order,
    _check_plan,
    _finish,
    _plan_and_weights,
    _singular,
    _title,
)

__all__ = ['plan_order', 'plan_heatmap', 'plan_snapshots', 'auto_height']

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
_MAX_CELLS = 64          # default: at most this many rows / columns drawn; more are summed in blocks
_UNIFORM_RTOL = 1e-3     # marginals within this relative spread are "uniform"


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
        title=dict(text="mass (log)"), tickvals=ticks, ticktext=[f"1e{t}" for t in ticks]))


def _block_size(n: int, max_cells: int | None) -> int:
    return 1 if max_cells is None or n <= max_cells else math.ceil(n / max_cells)


def _block_sum(Z: np.ndarray, r: int, c: int) -> np.ndarray:
    """Sum ``Z`` over consecutive blocks of ``r`` rows and ``c`` columns (last blocks may be short)."""
    m, k = Z.shape
    mp, kp = math.ceil(m / r) * r, math.ceil(k / c) * c
    pad = np.zeros((mp, kp))
    pad[:m, :k] = Z
    return pad.reshape(mp // r, r, kp // c, c).sum(axis=(1, 3))


def _block_labels(labels: list[str], size: int, what: str) -> list[str]:
    if size == 1:
        return labels
    out = []
    for start in range(0, len(labels), size):
        part = labels[start:start + size]
        names = ", ".join(part) if len(part) <= 6 else ", ".join(part[:5]) + f", ... ({len(part)})"
        out.append(f"{what} {names}")
    return out


def plan_cells(P: np.ndarray, rows: np.ndarray, cols: np.ndarray, cost: np.ndarray | None,
               max_cells: int | None) -> dict[str, Any]:
    """The drawn grid of an ordered plan: cells, labels and hover data (shared with the cost panel).

    Returns a dict with ``Z`` (mass per drawn cell), ``C`` (cost per cell:
    mass-weighted mean over a block, plain mean where a block has no mass;
    None without a cost), ``row_labels``, ``col_labels``, ``rb``, ``cb``
    (rows and columns per block), and ``custom`` (per cell: mass, share of
    the row's mass, main partner of the row, cost).
    """
    Zfull = P[rows][:, cols]
    Cfull = None if cost is None else cost[rows][:, cols]
    m, k = Zfull.shape
    rb, cb = _block_size(m, max_cells), _block_size(k, max_cells)
    if rb == 1 and cb == 1:
        Z = Zfull
        C = Cfull
    else:
        Z = _block_sum(Zfull, rb, cb)
        C = None
        if Cfull is not None:
            ones = _block_sum(np.ones_like(Cfull), rb, cb)
            plain = _block_sum(Cfull, rb, cb) / ones
            weighted = np.divide(_block_sum(Cfull * Zfull, rb, cb), Z,
                                 out=np.zeros_like(Z), where=Z > 0)
            C = np.where(Z > 0, weighted, plain)
    row_labels = _block_labels([str(i) for i in rows], rb, "teachers")
    col_labels = _block_labels([str(j) for j in cols], cb, "students")
    row_mass = Z.sum(axis=1, keepdims=True)
    share = np.divide(Z, row_mass, out=np.zeros_like(Z), where=row_mass > 0)
    partner = np.asarray(col_labels, dtype=object)[Z.argmax(axis=1)]
    partner = np.where(row_mass[:, 0] > 0, partner, "none")
    custom = np.empty(Z.shape + (4,), dtype=object)
    custom[..., 0] = Z
    custom[..., 1] = share
    custom[..., 2] = partner[:, None]
    custom[..., 3] = np.nan if C is None else C
    return dict(Z=Z, C=C, row_labels=row_labels, col_labels=col_labels, rb=rb, cb=cb,
                custom=custom)


def _plan_hover(teacher_label: str, student_label: str, blocks: bool, cost_label: str | None,
                ) -> str:
    t, s = _singular(teacher_label), _singular(student_label)
    if blocks:
        head = "%{y}<br>-> %{x}<br>mass %{customdata[0]:.3g} (%{customdata[1]:.0%} of these rows)"
        tail = "<br>main partner block of these rows: %{customdata[2]}"
        cost = f"<br>{cost_label} (mass-weighted mean) %{{customdata[3]:.3g}}" if cost_label else ""
    else:
        head = (f"{t} %{{y}} -> {s} %{{x}}<br>mass %{{customdata[0]:.3g}} "
                f"(%{{customdata[1]:.0%}} of {t} %{{y}}'s mass)")
        tail = f"<br>main partner of {t} %{{y}}: {s} %{{customdata[2]}}"
        cost = f"<br>{cost_label} %{{customdata[3]:.3g}}" if cost_label else ""
    return head + cost + tail + "<extra></extra>"


def _heatmap_trace(Z: np.ndarray, row_labels: list[str], col_labels: list[str], *,
                   log_color: bool, zmax: float | None, teacher_label: str,
                   student_label: str, colorscale: str, custom: np.ndarray | None = None,
                   blocks: bool = False, cost_label: str | None = None) -> go.Heatmap:
    zc, cfg = _plan_z(Z, log_color, zmax)
    if custom is None:
        t, s = _singular(teacher_label), _singular(student_label)
        hover = f"{t} %{{y}}<br>{s} %{{x}}<br>mass %{{customdata:.3g}}<extra></extra>"
        custom = Z
    else:
        hover = _plan_hover(teacher_label, student_label, blocks, cost_label)
    return go.Heatmap(z=zc, x=col_labels, y=row_labels, colorscale=colorscale,
                      hovertemplate=hover, name="plan", customdata=custom, **cfg)


def auto_height(n_rows: int, *, band: float = 0.0, lo: int = 320, hi: int = 900) -> int:
    """Figure height that gives each of ``n_rows`` drawn rows 6-16 px (``band``: share of marginals)."""
    cell = min(16.0, max(6.0, 560.0 / max(n_rows, 1)))
    return int(min(hi, max(lo, n_rows * cell / (1.0 - band) + 150)))


def _is_uniform(x: np.ndarray) -> bool:
    mean = float(x.mean())
    return mean > 0 and float(np.abs(x - mean).max()) <= _UNIFORM_RTOL * mean


def plan_heatmap(
    plan_or_alignment: PlanLike,
    *,
    reorder: bool = True,
    show_marginals: bool | str = "auto",
    title: str | None = None,
    teacher_label: str = "teacher neurons",
    student_label: str = "student neurons",
    log_color: bool = False,
    order: tuple[Sequence[int], Sequence[int]] | None = None,
    zmax: float | None = None,
    colorscale: str = PLAN_COLORSCALE,
    height: int | str | None = "auto",
    cost: Any = None,
    cost_label: str | None = None,
    max_cells: int | None = _MAX_CELLS,
) -> go.Figure:
    r"""Draw a transport plan as a heatmap, ordered as a block diagonal, with its marginals.

    Entry :math:`P_{ij}` is the mass teacher neuron :math:`i` (row) sends to
    student neuron :math:`j` (column). Rows run top to bottom. Hovering a
    cell names the pair, its mass and share of the row's mass, the cost of
    the pair (when known) and the row's main partner (the column receiving
    most of its mass).

    Parameters
    ----------
    plan_or_alignment : array of shape (m, k) or Alignment
        The plan (numpy array or tensor), or an :class:`~otviz.transport.Alignment`,
        whose distance, solver, convergence and cost matrix are used, and
        whose target weights ``a``, ``b`` are drawn beside the marginals.
    reorder : bool, default True
        Reorder rows and columns with :func:`plan_order` so the matching reads
        as a block diagonal. Tick labels and hover text keep the original
        neuron indices.
    show_marginals : bool or "auto", default "auto"
        Bar charts of the row sums :math:`P\mathbf 1` (right) and column sums
        :math:`P^\top\mathbf 1` (top); with an Alignment, the targets ``a`` and
        ``b`` are drawn as ticks over the bars. ``"auto"`` draws them only
        when a side is not uniform (spread above 0.1 % of the mean); uniform
        marginals are stated in the subtitle instead of drawn as flat bars.
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
    height : int, "auto" or None, default "auto"
        ``"auto"`` sizes the figure from the number of drawn rows (6-16 px
        per row, 320-900 px); None leaves it to plotly.
    cost : array of shape (m, k), optional
        The cost matrix the plan was solved on (default: the Alignment's),
        shown in the hover text.
    cost_label : str, optional
        Name of the cost in the hover text (default: the Alignment's cost
        name, else ``"cost"``).
    max_cells : int or None, default 64
        At most this many rows and columns are drawn: a longer side is cut,
        in display order, into consecutive blocks of ``ceil(n / max_cells)``
        neurons whose masses are summed (hover lists the neurons of a block),
        so a 512 x 128 plan draws as 64 x 64 readable cells. None draws every
        neuron.

    Returns
    -------
    plotly.graph_objects.Figure
        The heatmap trace (``name="plan"``) has ``z`` equal to
        ``plan[row_order][:, col_order]`` (block sums when a side exceeds
        ``max_cells``; its log10 with ``log_color``) and ``customdata[..., 0]``
        the mass; the marginal bars are named ``"row sums"`` and
        ``"column sums"``.

    Raises
    ------
    ValueError
        A plan that is not 2-D, is empty, holds NaN/inf or negative entries,
        or is all zeros; an ``order`` that is not a pair of permutations; a
        cost matrix of another shape; ``max_cells`` below 1.
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
    if max_cells is not None and (not isinstance(max_cells, numbers.Integral) or max_cells < 1):
        raise ValueError(f"max_cells must be a positive int or None, got {max_cells!r}")
    if show_marginals not in (True, False, "auto"):
        raise ValueError(f"show_marginals must be True, False or 'auto', got {show_marginals!r}")
    if cost is None and al is not None:
        cost = al.cost_matrix
    C = _check_cost(cost, P.shape)
    if cost_label is None:
        cost_label = (f"cost ({al.cost})" if al is not None else "cost") if C is not None else None
    cells = plan_cells(P, rows, cols, C, max_cells)
    Z, row_labels, col_labels = cells["Z"], cells["row_labels"], cells["col_labels"]
    blocks = cells["rb"] > 1 or cells["cb"] > 1
    heat = _heatmap_trace(Z, row_labels, col_labels, log_color=log_color, zmax=zmax,
                          teacher_label=teacher_label, student_label=student_label,
                          colorscale=colorscale, custom=cells["custom"], blocks=blocks,
                          cost_label=cost_label)

    if title is None:
        title = f"Transport plan ({m} x {k})"
        if al is not None:
            title = f"Transport plan ({m} x {k}): OT distance {al.distance:.4g}"
    notes = []
    if al is not None:
        notes.append(_alignment_status(al))
    elif reorder or order is not None:
        notes.append("rows and columns reordered to show the matching")
    if blocks:
        notes.append(f"cells sum blocks of {cells['rb']} x {cells['cb']} neurons")
    row_sums_full, col_sums_full = P.sum(axis=1), P.sum(axis=0)
    targets_uniform = al is None or (_is_uniform(a) and _is_uniform(b))
    uniform = (_is_uniform(row_sums_full) and _is_uniform(col_sums_full) and targets_uniform)
    if show_marginals == "auto":
        show_marginals = not uniform
        if uniform:
            notes.append("marginals uniform (not drawn): each neuron sends / receives the same mass")
    sub = "<br>".join(notes) or None
    t, s = _singular(teacher_label), _singular(student_label)
    t_axis = teacher_label + (f" (blocks of {cells['rb']})" if cells["rb"] > 1 else "")
    s_axis = student_label + (f" (blocks of {cells['cb']})" if cells["cb"] > 1 else "")
    if height == "auto":
        height = auto_height(len(row_labels), band=0.16 if show_marginals else 0.0)
    elif height is not None and not isinstance(height, numbers.Integral):
        raise ValueError(f"height must be an int, 'auto' or None, got {height!r}")
    if not show_marginals:
        fig = go.Figure(heat)
        fig.update_xaxes(**_category_axis(col_labels, s_axis))
        fig.update_yaxes(**_category_axis(row_labels, t_axis, reverse=True))
        if blocks:
            fig.update_xaxes(showticklabels=cells["cb"] == 1)
            fig.update_yaxes(showticklabels=cells["rb"] == 1)
        fig = _finish(fig, title, sub, height=height)
        fig.update_layout(margin=dict(t=60 + 20 * len(notes)) if title else {})
        return fig

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
    if a is not None and b is not None and not blocks:
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
    fig.update_xaxes(**_category_axis(col_labels, s_axis), row=2, col=1)
    fig.update_yaxes(**_category_axis(row_labels, t_axis, reverse=True), row=2, col=1)
    fig.update_yaxes(**_category_axis(row_labels, reverse=True), row=2, col=2)
    if cells["cb"] > 1:
        fig.update_xaxes(showticklabels=False, row=2, col=1)
    if cells["rb"] > 1:
        fig.update_yaxes(showticklabels=False, row=2, col=1)
    fig.update_yaxes(title=dict(text="mass"), tickformat=".2g", nticks=3, row=1, col=1)
    fig.update_xaxes(title=dict(text="mass"), tickformat=".2g", nticks=3, row=2, col=2)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=2, col=2)
    fig.update_layout(bargap=0.1)
    fig = _finish(fig, title, sub, height=height)
    fig.update_layout(margin=dict(t=60 + 20 * len(notes)) if title else {})
    return fig


def _check_cost(cost: Any, shape: tuple[int, int]) -> np.ndarray | None:
    if cost is None:
        return None
    from otviz.figures._common import _to_numpy

    C = _to_numpy(cost, "cost")
    if C.shape != tuple(shape):
        raise ValueError(f"cost has shape {C.shape} but the plan has shape {tuple(shape)}; pass "
                         f"the cost matrix the plan was solved on (Alignment.cost_matrix)")
    if not np.isfinite(C).all():
        raise ValueError(f"cost holds {int((~np.isfinite(C)).sum())} NaN or infinite value(s)")
    return C


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
