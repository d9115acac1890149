"""Figures of the OT lab's document distances (:mod:`otviz.lab.documents`).

:func:`word_transport`
    The words of two documents in 2-D (PCA of their embeddings), WMD's plan as lines.
:func:`word_plan`
    WMD's plan as a heatmap with the words as labels, the cost of each pair on hover.
:func:`topic_proportions`
    Two documents' LDA topic proportions with HOTT's truncation threshold.
:func:`topic_plan`
    HOTT's plan between the topics the two documents keep.
:func:`knn_errors`
    k-NN test error (mean and interval over seeds) and time per distance of each method.
:func:`distance_times`
    Time per distance against words per document, WMD against HOTT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from otviz.figures._common import (
    LINE_COLOR,
    PLAN_COLORSCALE,
    STUDENT_COLOR,
    TEACHER_COLOR,
    TEMPLATE,
    _check_points,
    _finish,
    _plan_and_weights,
)

__all__ = ["distance_times", "knn_errors", "topic_plan", "topic_proportions", "word_plan",
           "word_transport"]

#: one colour per method of otviz.lab.documents.METHODS
METHOD_COLORS = {"nBOW cosine": "#8c8c8c", "tf-idf cosine": "#5b5b5b", "WMD": TEACHER_COLOR,
                 "HOTT": STUDENT_COLOR}


def _labels(words: Sequence[str], n: int, name: str) -> list[str]:
    words = [str(w) for w in words]
    if len(words) != n:
        raise ValueError(f"{name} has {len(words)} labels for {n} rows/columns of the plan")
    return words


def _unique(labels: list[str]) -> list[str]:
    """Category labels must be distinct for plotly: suffix repeats."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


def word_transport(words_a: Sequence[str], emb_a: Any, words_b: Sequence[str], emb_b: Any,
                   alignment: Any, *, label_a: str = "document A", label_b: str = "document B",
                   title: str | None = None, height: int = 520) -> go.Figure:
    """The words of two documents as points, Word Mover's plan as lines between them.

    Both documents' embeddings are projected together on their first two principal
    components (the plan itself uses the full-dimensional distances, so short lines in
    the picture are only roughly short in the embedding). Marker size is the word's weight
    (nBOW); line width and opacity the mass moved; hover a line for the mass and the
    word-to-word distance.

    Parameters
    ----------
    words_a, words_b : sequences of str
    emb_a, emb_b : arrays of shape (m, d) and (k, d)
    alignment : otviz.Alignment or array of shape (m, k)
        From :func:`otviz.lab.word_movers_plan` (its cost matrix is shown on hover).
    """
    A = _check_points(emb_a, "emb_a")
    B = _check_points(emb_b, "emb_b")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"emb_a and emb_b have dimensions {A.shape[1]} and {B.shape[1]}")
    wa_, wb_ = _labels(words_a, len(A), "words_a"), _labels(words_b, len(B), "words_b")
    P, a, b, al = _plan_and_weights(alignment)
    if P.shape != (len(A), len(B)):
        raise ValueError(f"the plan has shape {P.shape} for {len(A)} and {len(B)} words")
    a = P.sum(axis=1) if a is None else a
    b = P.sum(axis=0) if b is None else b
    C = al.cost_matrix if al is not None else np.linalg.norm(A[:, None] - B[None], axis=-1)
    Z = np.vstack([A, B])
    Z = Z - Z.mean(axis=0)
    if len(Z) >= 2 and np.abs(Z).max() > 0:
        _, s, Vt = np.linalg.svd(Z, full_matrices=False)
        Y = Z @ Vt[:2].T
        if Y.shape[1] < 2:
            Y = np.c_[Y, np.zeros(len(Y))]
        var = s ** 2 / max((s ** 2).sum(), 1e-300)
        explained = float(var[:2].sum())
    else:
        Y, explained = np.zeros((len(Z), 2)), 1.0
    Ya, Yb = Y[: len(A)], Y[len(A):]
    fig = go.Figure()
    pmax = P.max() if P.size else 1.0
    for i, j in zip(*np.nonzero(P > 1e-9 * pmax)):
        strength = float(P[i, j] / pmax)
        r, g, bl = LINE_COLOR
        fig.add_trace(go.Scatter(
            x=[Ya[i, 0], Yb[j, 0]], y=[Ya[i, 1], Yb[j, 1]], mode="lines", showlegend=False,
            line=dict(width=1 + 5 * strength, color=f"rgba({r},{g},{bl},{0.25 + 0.6 * strength:.3f})"),
            hoverinfo="text",
            text=f"{wa_[i]} -> {wb_[j]}<br>mass {P[i, j]:.3f}<br>distance {C[i, j]:.3f}"))
    for pts, w, words, lab, col, sym, pos in ((Ya, a, wa_, label_a, TEACHER_COLOR, "circle", "top center"),
                                              (Yb, b, wb_, label_b, STUDENT_COLOR, "diamond",
                                               "bottom center")):
        sizes = 8 + 14 * np.sqrt(np.asarray(w) / max(float(np.max(w)), 1e-300))
        fig.add_trace(go.Scatter(
            x=pts[:, 0], y=pts[:, 1], mode="markers+text", name=f"{lab} ({len(pts)} words)",
            text=words, textposition=pos, textfont=dict(color=col, size=12),
            hovertext=[f"{word}<br>weight {wi:.3f}" for word, wi in zip(words, w)],
            hoverinfo="text",
            marker=dict(symbol=sym, color=col, size=sizes, line=dict(width=1, color="white"))))
    fig.update_yaxes(scaleanchor="x", scaleratio=1, zeroline=False, showticklabels=False,
                     title="PC 2")
    fig.update_xaxes(zeroline=False, showticklabels=False, title="PC 1")
    value = f"WMD {al.distance:.3f}: " if al is not None else ""
    sub = (f"{value}words placed by a 2-D PCA of their embeddings ({100 * explained:.0f} % of "
           f"the variance)<br>lines: the plan, line width = mass moved")
    return _finish(fig, title or "Word Mover's Distance: which word travels to which", sub,
                   height=height,
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))


def _heatmap(P: np.ndarray, C: np.ndarray | None, rows: list[str], cols: list[str],
             row_title: str, col_title: str, *, annotate: bool = False) -> go.Figure:
    hover = [[f"{rows[i]} -> {cols[j]}<br>mass {P[i, j]:.3f}"
              + (f"<br>cost {C[i, j]:.3f}" if C is not None else "")
              for j in range(P.shape[1])] for i in range(P.shape[0])]
    cells = None
    if annotate:  # small plans: the mass (and cost) written in each cell
        cells = [[f"{P[i, j]:.2f}" + (f"<br>cost {C[i, j]:.2f}" if C is not None else "")
                  for j in range(P.shape[1])] for i in range(P.shape[0])]
    zmax = float(P.max()) if P.max() > 0 else 1.0
    fig = go.Figure(go.Heatmap(
        z=P, x=_unique(cols), y=_unique(rows), colorscale=PLAN_COLORSCALE, zmin=0.0, zmax=zmax,
        hovertext=hover, hoverinfo="text", text=cells,
        texttemplate="%{text}" if annotate else None, textfont=dict(size=12),
        colorbar=dict(title=dict(text="mass", side="right"), thickness=14)))
    fig.update_yaxes(autorange="reversed", title=row_title, type="category", automargin=True)
    fig.update_xaxes(title=col_title, type="category", automargin=True)
    return fig


def word_plan(words_a: Sequence[str], words_b: Sequence[str], alignment: Any, *,
              label_a: str = "document A", label_b: str = "document B",
              title: str | None = None, height: int | None = None) -> go.Figure:
    """WMD's plan as a heatmap: rows the words of A, columns those of B, colour the mass moved.

    Hover a cell for the mass and the distance between the two words.
    """
    P, _, _, al = _plan_and_weights(alignment)
    rows = _labels(words_a, P.shape[0], "words_a")
    cols = _labels(words_b, P.shape[1], "words_b")
    C = al.cost_matrix if al is not None else None
    fig = _heatmap(P, C, rows, cols, f"words of {label_a}", f"words of {label_b}")
    fig.update_xaxes(tickangle=-45)
    sub = (f"WMD {al.distance:.3f}: " if al is not None else "") + \
        "each row sends its word's weight (nBOW), each column receives its word's weight"
    return _finish(fig, title or "Word Mover's plan", sub,
                   height=height or max(360, 150 + 22 * P.shape[0]))


def topic_proportions(theta_a: Any, theta_b: Any, topic_labels: Sequence[str], *,
                      threshold: float | None = None, label_a: str = "document A",
                      label_b: str = "document B", title: str | None = None,
                      height: int | None = None) -> go.Figure:
    """Two documents' LDA topic proportions side by side, with HOTT's truncation threshold.

    Topics at or under the threshold (dashed line, :math:`1/(K+1)` in the paper) are dropped
    before HOTT's transport.
    """
    ta = np.asarray(theta_a, dtype=float).ravel()
    tb = np.asarray(theta_b, dtype=float).ravel()
    labels = _labels(topic_labels, ta.size, "topic_labels")
    if tb.size != ta.size:
        raise ValueError(f"theta_a and theta_b have {ta.size} and {tb.size} topics")
    if not (np.isfinite(ta).all() and np.isfinite(tb).all()):
        raise ValueError("topic proportions must be finite")
    labels = _unique(labels)
    fig = go.Figure()
    for t, lab, col in ((ta, label_a, TEACHER_COLOR), (tb, label_b, STUDENT_COLOR)):
        fig.add_trace(go.Bar(y=labels, x=t, orientation="h", name=lab, marker_color=col,
                             hovertemplate="%{y}<br>proportion %{x:.3f}<extra>" + lab + "</extra>"))
    if threshold is not None:
        fig.add_vline(x=float(threshold), line=dict(dash="dash", color="#444", width=1))
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="topic proportion (LDA)", range=[0, 1])
    kept = "" if threshold is None else f" ({float(threshold):.3f})"
    return _finish(fig, title or "Topic proportions of the two documents",
                   f"HOTT keeps the topics right of the dashed line{kept}, renormalised",
                   height=height or max(340, 150 + 26 * ta.size),
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))


def topic_plan(alignment: Any, kept_a: Sequence[int], kept_b: Sequence[int],
               topic_labels: Sequence[str], *, label_a: str = "document A",
               label_b: str = "document B", title: str | None = None,
               height: int | None = None) -> go.Figure:
    """HOTT's plan between the topics the two documents keep (from :func:`otviz.lab.hott_plan`).

    Rows: topics of A, columns: topics of B, colour: mass moved; hover for the WMD between
    the two topics (the cost).
    """
    P, _, _, al = _plan_and_weights(alignment)
    kept_a, kept_b = list(map(int, kept_a)), list(map(int, kept_b))
    if P.shape != (len(kept_a), len(kept_b)):
        raise ValueError(f"the plan has shape {P.shape} for {len(kept_a)} and {len(kept_b)} kept topics")
    labels = [str(x) for x in topic_labels]
    if max(kept_a + kept_b) >= len(labels) or min(kept_a + kept_b) < 0:
        raise ValueError(f"kept topics out of range for {len(labels)} topic labels")
    C = al.cost_matrix if al is not None else None
    fig = _heatmap(P, C, [labels[t] for t in kept_a],
                   [labels[t].replace(": ", "<br>", 1) for t in kept_b],
                   f"topics of {label_a}", f"topics of {label_b}", annotate=True)
    fig.update_xaxes(tickangle=0)
    sub = (f"HOTT {al.distance:.3f}: " if al is not None else "") + \
        "mass moved between the topics each document keeps<br>cost of a cell: the WMD between " \
        "the two topics"
    return _finish(fig, title or "HOTT: transport between topics", sub,
                   height=height or max(330, 190 + 40 * P.shape[0]))


def knn_errors(summary: Any, *, title: str | None = None, height: int = 380) -> go.Figure:
    """k-NN test error of each method (mean, interval over seeds) and its time per distance.

    Parameters
    ----------
    summary : pandas.DataFrame
        :meth:`otviz.lab.documents.KnnComparison.summary`: columns ``method``, ``error %``,
        ``low``, ``high``, ``per distance ms``, ``seeds``.
    """
    from plotly.subplots import make_subplots

    need = ["method", "error %", "low", "high", "per distance ms", "seeds"]
    missing = [c for c in need if c not in getattr(summary, "columns", [])]
    if missing:
        raise ValueError(f"summary lacks the columns {missing}; pass KnnComparison.summary()")
    if len(summary) == 0:
        raise ValueError("summary is empty")
    df = summary.reset_index(drop=True)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.2,
                        subplot_titles=("test error (%), lower is better",
                                        "time per distance (ms, log scale)"))
    methods = list(df["method"])
    for _, r in df.iterrows():
        col = METHOD_COLORS.get(r["method"], "#333")
        lo, hi = r["low"], r["high"]
        has_ci = np.isfinite(lo) and np.isfinite(hi)
        ci = f" [95 % CI {lo:.1f}, {hi:.1f}]" if has_ci else ""
        if has_ci:  # an error rate lies in [0, 100]: draw the interval's part that can happen
            lo, hi = max(lo, 0.0), min(hi, 100.0)
        fig.add_trace(go.Scatter(
            x=[r["error %"]], y=[r["method"]], mode="markers", marker=dict(size=11, color=col),
            error_x=dict(type="data", symmetric=False, array=[hi - r["error %"] if has_ci else 0],
                         arrayminus=[r["error %"] - lo if has_ci else 0], thickness=2, width=6,
                         color=col),
            showlegend=False,
            hovertemplate=f"<b>{r['method']}</b><br>error {r['error %']:.1f} %{ci}"
                          f"<br>{int(r['seeds'])} seeds<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Bar(
            x=[max(r["per distance ms"], 1e-6)], y=[r["method"]], orientation="h",
            marker_color=col, showlegend=False,
            hovertemplate=f"<b>{r['method']}</b><br>{r['per distance ms']:.4f} ms per distance"
                          "<extra></extra>"), row=1, col=2)
    upper = float(np.nanmax(np.r_[np.minimum(df["high"].to_numpy(float), 100.0),
                                  df["error %"].to_numpy(float)]))
    fig.update_xaxes(range=[0, max(5.0, 1.08 * upper)], title="k-NN test error (%)", row=1, col=1)
    fig.update_xaxes(type="log", title="ms per distance", row=1, col=2)
    for c in (1, 2):
        fig.update_yaxes(type="category", categoryorder="array", categoryarray=methods[::-1],
                         row=1, col=c)
    seeds = int(df["seeds"].max())
    return _finish(fig, title or "k-NN classification: error and cost of each distance",
                   f"mean over {seeds} seeds (corpus and split); bars: 95 % interval, cut to [0, 100]",
                   height=height)


def distance_times(df: Any, *, title: str | None = None, height: int = 380) -> go.Figure:
    """Time per distance against the number of words per document, one line per method.

    Parameters
    ----------
    df : pandas.DataFrame
        Columns ``method``, ``words`` (mean distinct words per document) and ``ms``
        (milliseconds per distance).
    """
    missing = [c for c in ("method", "words", "ms") if c not in getattr(df, "columns", [])]
    if missing:
        raise ValueError(f"df lacks the columns {missing}")
    fig = go.Figure()
    for method, g in df.groupby("method", sort=False):
        g = g.sort_values("words")
        fig.add_trace(go.Scatter(x=g["words"], y=g["ms"], mode="lines+markers", name=method,
                                 line=dict(color=METHOD_COLORS.get(method, "#333")),
                                 hovertemplate=f"{method}<br>%{{x:.0f}} distinct words per document"
                                               "<br>%{y:.3f} ms per distance<extra></extra>"))
    fig.update_xaxes(type="log", title="distinct words per document")
    fig.update_yaxes(type="log", title="ms per distance")
    fig.update_layout(template=TEMPLATE)
    return _finish(fig, title or "Time per distance as documents grow",
                   "WMD solves an OT problem over the words, HOTT one over a few topics",
                   height=height,
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))
