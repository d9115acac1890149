"""Layer x layer tables (OT beside CKA) and bar charts of a few alignments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from otviz.figures._common import (
    _is_alignment,
    SIMILARITY_COLORSCALE,
    TEACHER_COLOR,
    _alignment_status,
    _category_axis,
    _finish,
)

if TYPE_CHECKING:
    from otviz.transport import Alignment

__all__ = ['distance_matrix', 'distance_matrices', 'distance_bars']

# ----------------------------------------------------------------------------
# layer x layer tables
# ----------------------------------------------------------------------------
_MEASURE_INFO = {
    "ot": ("OT score", "0 = same layer up to permutation and scale, ~1 = unrelated; lower = more similar",
           True),
    "ot-raw": ("raw OT cost", "in the units of the activations; lower = more similar", True),
    "cka": ("linear CKA", "1 = same up to rotation and scale; higher = more similar", False),
}
_MEASURE_FORMAT = {"ot": ".3f", "cka": ".3f", "ot-raw": ".3g"}


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
    fmt = _MEASURE_FORMAT.get(str(df.attrs.get("measure")), ".3g")
    t_name = df.index.name or "teacher"
    s_name = df.columns.name or "student"
    return go.Heatmap(
        z=df.to_numpy(dtype=np.float64), x=[str(c) for c in df.columns],
        y=[str(i) for i in df.index], colorscale=SIMILARITY_COLORSCALE,
        reversescale=not low_is_close, texttemplate=f"%{{z:{fmt}}}", name=label,
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
        ``"ot"`` (the OT score), ``"ot-raw"`` or ``"cka"`` (default:
        ``df.attrs["measure"]``); sets the colour-bar label and direction: the
        most similar pairs are dark in all (low OT score, high CKA).

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
    ot_key = "ot-raw" if ot_df.attrs.get("measure") == "ot-raw" else "ot"
    ot_label, ot_hint, ot_low = _MEASURE_INFO[ot_key]
    cka_label, cka_hint, cka_low = _MEASURE_INFO["cka"]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.2,
                        subplot_titles=[f"{ot_label} (lower = closer)",
                                        f"{cka_label} (higher = closer)"])
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
    # both tables have the same rows in the same order: label them once, on the left, so the
    # right table's labels never run into the OT colour bar when the figure is narrow
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    sub = (f"{ot_label}: 0 = same layer, ~1 = unrelated; " if ot_key == "ot"
           else f"{ot_label}: in the units of the activations; ") + \
        f"{cka_label}: 1 = same up to rotation and scale"
    return _finish(fig, title or "Layer similarity: OT beside CKA", sub, height=height)


def distance_bars(alignments: Mapping[str, Alignment], *, title: str | None = None,
                  height: int | None = None, value: str = "score") -> go.Figure:
    """OT scores (or raw distances) of a few alignments as horizontal bars.

    Parameters
    ----------
    alignments : mapping of str to Alignment
        Label (e.g. ``"conv1 -> conv1"`` or ``"eps=0.01"``) to alignment.
    title : str, optional
    value : {"score", "distance"}, default "score"
        :attr:`~otviz.transport.Alignment.score` (0 = same layer, ~1 =
        unrelated) or the raw :attr:`~otviz.transport.Alignment.distance`.

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
        if not _is_alignment(al):
            raise TypeError(f"alignments[{lab!r}] is a {type(al).__name__}, not an Alignment "
                            f"(use otviz.align(...))")
    if value not in ("score", "distance"):
        raise ValueError(f"value must be 'score' or 'distance', got {value!r}")
    labels = [str(k) for k in alignments]
    als = list(alignments.values())
    if value == "score":
        xs = [al.score for al in als]
        ok = [al.converged and al.score_details["converged"] for al in als]
        name, sub = "OT score", "0 = same layer up to permutation and scale, ~1 = unrelated"
    else:
        xs, ok = [al.distance for al in als], [al.converged for al in als]
        name, sub = "raw OT distance", "in the units of the cost matrix"
    fig = go.Figure(go.Bar(
        y=labels, x=xs, orientation="h", name=name,
        marker_color=[TEACHER_COLOR if c else "#aaaaaa" for c in ok],
        text=[f"{x:.3f}" if value == "score" else f"{x:.3g}" for x in xs], textposition="auto",
        hovertext=[f"{lab}<br>{al.plan.shape[0]} x {al.plan.shape[1]} neurons<br>"
                   f"{_alignment_status(al)}" + ("" if c else "<br>NOT CONVERGED: approximate")
                   for lab, al, c in zip(labels, als, ok)],
        hoverinfo="text+x"))
    fig.update_yaxes(**_category_axis(labels, reverse=True))
    fig.update_xaxes(title=dict(text=name), rangemode="tozero")
    if not all(ok):
        sub += "; grey bars: the solver did not converge (approximate)"
    return _finish(fig, title or f"{name}s", sub, height=height)
