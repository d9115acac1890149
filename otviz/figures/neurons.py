"""Neurons in 2-D: joint embeddings (PCA, UMAP), neuron maps with plan lines, point-cloud transport for teaching."""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go

from otviz.figures._common import (
    _is_alignment,
    LINE_COLOR,
    PlanLike,
    STUDENT_COLOR,
    TEACHER_COLOR,
    Top,
    _check_plan,
    _check_points,
    _check_top,
    _check_weights,
    _finish,
    _plan_and_weights,
)

__all__ = ['embed_neurons', 'neuron_map', 'point_cloud_transport']

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
        takes about a minute on two CPU cores, about three the first time on a machine
        (numba's cache empty; ``benchmarks/bench_dashboard.py --umap``), later fits under a
        second, so interactive callers show
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
    if _is_alignment(plan):
        sub = f"{plan.method}{f', eps={plan.eps:g}' if plan.eps is not None else ''}: " \
              f"cost {plan.distance:.4g}"
    return _finish(fig, title, sub, height=height,
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))
