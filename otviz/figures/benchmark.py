r"""Figures of a paired benchmark: which method wins, by how much, and where.

:func:`search_progress` draws how a sweep's search went (the best validation accuracy
so far against the number of trials, :func:`otviz.sweep.best_so_far`).

They read the long tables that ``benchmarks/bench_paired.py`` writes (one row
per final run): ``setting, method, seed, test_accuracy`` (accuracies as
fractions) and, for the axes, ``axis, value``. Rows without an accuracy (a run
that diverged) are left out; differences pair the seeds both methods finished. Intervals are 95 % Student-t
confidence intervals over seeds (:func:`otviz.stats.mean_ci`); differences are
paired by seed (:func:`otviz.stats.paired_difference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from otviz.figures._common import STUDENT_COLOR, TEACHER_COLOR, TEMPLATE

__all__ = ["method_intervals", "paired_gains", "axis_curves", "budget_curves", "search_progress"]

#: Colours of the methods that recur across the benchmark's figures.
METHOD_COLORS = {"ot": STUDENT_COLOR, "kd+ot": "#9c3d8f", "scratch": "#7f7f7f", "finetune": TEACHER_COLOR,
                 "l2sp": "#5bb5c9", "kd": "#3a9a5b", "fitnets": "#c9a227", "at": "#8c564b",
                 "nst": "#17a2b8", "sp": "#b5b83a"}
_OTHER_COLORS = ("#2f6db5", "#3a9a5b", "#c9a227", "#5bb5c9", "#8c564b", "#17becf", "#bcbd22")
AXIS_TITLES = {"k": "labelled images per class (k, log scale)", "width": "student width (x the teacher's)"}


def _need(df: Any, columns: Sequence[str], what: str) -> Any:
    """``df`` without the rows whose last column (the accuracy) is missing: a diverged run."""
    if not hasattr(df, "columns"):
        raise TypeError(f"{what} needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the table lacks the column(s) {missing}; it has {list(df.columns)} "
                         f"(pass benchmarks/results/transfer_paired.csv or transfer_axes.csv)")
    if len(df) == 0:
        raise ValueError(f"{what}: the table is empty")
    return df.dropna(subset=[columns[-1]])


def _color(method: str, order: Sequence[str]) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    others = [m for m in order if m not in METHOD_COLORS]
    return _OTHER_COLORS[others.index(method) % len(_OTHER_COLORS)] if method in others else TEACHER_COLOR


def _interval(values: np.ndarray) -> tuple[float, float, float]:
    from otviz.stats import mean_ci

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        v = float(values.mean())
        return v, v, v
    return mean_ci(values)


def _curve_with_band(fig: go.Figure, df: Any, x: str, y: str, *, name: str, color: str,
                     hovertemplate: str) -> None:
    """A line through the mean of ``y`` (in %) at each value of ``x``, its 95 % CI over seeds as a band."""
    xs, means, los, his = [], [], [], []
    for v, g in sorted(df.groupby(x), key=lambda t: t[0]):
        mean, lo, hi = _interval(g[y].to_numpy())
        xs.append(float(v))
        means.append(100 * mean)
        los.append(100 * lo)
        his.append(100 * hi)
    fig.add_trace(go.Scatter(x=xs + xs[::-1], y=his + los[::-1], fill="toself", fillcolor=color,
                             mode="lines", opacity=0.15, line=dict(width=0), hoverinfo="skip",
                             showlegend=False, legendgroup=name))
    fig.add_trace(go.Scatter(x=xs, y=means, mode="lines+markers", name=name, legendgroup=name,
                             line=dict(color=color, width=2), customdata=np.stack([los, his], axis=1),
                             hovertemplate=hovertemplate))


def method_intervals(df: Any, setting: str, *, title: str | None = None) -> go.Figure:
    """Test accuracy of every method of ``setting``: mean and 95 % CI over seeds, best on top.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per final run with ``setting, method, seed, test_accuracy``.
    setting : str
        The setting to draw.

    Returns
    -------
    plotly.graph_objects.Figure
        A dot per method at its mean test accuracy (in %), with its interval as
        a horizontal bar; methods sorted by mean.
    """
    df = _need(df, ["setting", "method", "seed", "test_accuracy"], "method_intervals")
    sub = df[df["setting"] == setting]
    if sub.empty:
        raise ValueError(f"no runs of setting {setting!r}; the table has {sorted(set(df['setting']))}")
    order = list(dict.fromkeys(sub["method"]))
    stats = []
    for m in order:
        mean, lo, hi = _interval(sub.loc[sub["method"] == m, "test_accuracy"].to_numpy())
        stats.append((m, 100 * mean, 100 * lo, 100 * hi, int((sub["method"] == m).sum())))
    stats.sort(key=lambda r: r[1])
    fig = go.Figure()
    for m, mean, lo, hi, n in stats:
        fig.add_trace(go.Scatter(
            x=[mean], y=[m], mode="markers", marker=dict(size=11, color=_color(m, order)),
            error_x=dict(type="data", symmetric=False, array=[hi - mean], arrayminus=[mean - lo],
                         thickness=2, width=6, color=_color(m, order)),
            name=m, showlegend=False,
            hovertemplate=f"<b>{m}</b><br>test accuracy {mean:.1f} % [95 % CI {lo:.1f}, {hi:.1f}]"
                          f"<br>{n} seeds<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=90 + 34 * len(stats),
                      title=title or f"{setting}: test accuracy (mean, 95 % CI over seeds)",
                      xaxis_title="test accuracy (%)", margin=dict(l=10, r=20, t=50, b=45))
    return fig


def paired_gains(df: Any, setting: str, *, ours: str = "ot", title: str | None = None) -> go.Figure:
    """Paired difference ``ours - baseline`` in test accuracy for every baseline of ``setting``.

    For each baseline :math:`b` and each seed :math:`s` seen by both methods,
    :math:`d_s = \\mathrm{acc}_{ours}(s) - \\mathrm{acc}_b(s)`; the figure shows the
    mean of :math:`d` with its 95 % CI (Student t over the differences), a
    vertical line at 0: an interval entirely right of it is a gain the seeds
    support, one across it is not.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per final run with ``setting, method, seed, test_accuracy``.
    setting : str
    ours : str, default "ot"
        The method compared with every other one (except ``"ot"`` and ``"kd+ot"``).
    """
    from otviz.stats import paired_difference

    df = _need(df, ["setting", "method", "seed", "test_accuracy"], "paired_gains")
    sub = df[df["setting"] == setting]
    if ours not in set(sub["method"]):
        raise ValueError(f"method {ours!r} has no runs in setting {setting!r}; it has "
                         f"{sorted(set(sub['method']))}")
    mine = dict(zip(sub.loc[sub["method"] == ours, "seed"], sub.loc[sub["method"] == ours, "test_accuracy"]))
    rows = []
    for b in dict.fromkeys(sub["method"]):
        if b in ("ot", "kd+ot", ours):
            continue
        theirs = dict(zip(sub.loc[sub["method"] == b, "seed"], sub.loc[sub["method"] == b, "test_accuracy"]))
        common = sorted(set(mine) & set(theirs))  # seeds both runs finished (a diverged run has none)
        d = paired_difference({k: mine[k] for k in common}, {k: theirs[k] for k in common})
        rows.append((b, 100 * d.mean, 100 * d.low, 100 * d.high, d.p_ttest, d.n))
    if not rows:
        raise ValueError(f"setting {setting!r} has no baseline to compare {ours!r} with")
    rows.sort(key=lambda r: r[1])
    fig = go.Figure()
    fig.add_vline(x=0, line=dict(color="#444", width=1, dash="dot"))
    for b, mean, lo, hi, p, n in rows:
        color = "#3a9a5b" if lo > 0 else ("#c0392b" if hi < 0 else "#7f7f7f")
        fig.add_trace(go.Scatter(
            x=[mean], y=[f"{ours} - {b}"], mode="markers", marker=dict(size=11, color=color),
            error_x=dict(type="data", symmetric=False, array=[hi - mean], arrayminus=[mean - lo],
                         thickness=2, width=6, color=color), showlegend=False,
            hovertemplate=f"<b>{ours} - {b}</b><br>{mean:+.1f} points [95 % CI {lo:+.1f}, {hi:+.1f}]"
                          f"<br>paired t-test p = {p:.3g}, {n} paired seeds<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=90 + 34 * len(rows),
                      title=title or f"{setting}: {ours} minus each baseline, paired by seed",
                      xaxis_title="difference in test accuracy (points); green: CI above 0, red: below",
                      margin=dict(l=10, r=20, t=50, b=45))
    return fig


def axis_curves(df: Any, setting: str, *, title: str | None = None) -> go.Figure:
    """Test accuracy against the setting's axis (labels per class or student width), per method.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per run with ``setting, axis, value, method, seed, test_accuracy``
        (``benchmarks/results/transfer_axes.csv``).
    setting : str

    Returns
    -------
    plotly.graph_objects.Figure
        A line per method through the mean test accuracy (%) at each point, its
        95 % CI as a band; the x axis is logarithmic (k and width are both
        spaced by factors).
    """
    df = _need(df, ["setting", "axis", "value", "method", "seed", "test_accuracy"], "axis_curves")
    sub = df[df["setting"] == setting]
    if sub.empty:
        raise ValueError(f"no axis runs of setting {setting!r}; the table has {sorted(set(df['setting']))}")
    axis = str(sub["axis"].iloc[0])
    order = list(dict.fromkeys(sub["method"]))
    fig = go.Figure()
    for m in order:
        _curve_with_band(fig, sub[sub["method"] == m], "value", "test_accuracy", name=m,
                         color=_color(m, order),
                         hovertemplate=f"<b>{m}</b><br>{axis} = %{{x:g}}<br>test accuracy %{{y:.1f}} % "
                                       f"[95 % CI %{{customdata[0]:.1f}}, %{{customdata[1]:.1f}}]<extra></extra>")
    values = sorted(set(float(v) for v in sub["value"]))
    fig.update_xaxes(type="log", tickvals=values, ticktext=[f"{v:g}" for v in values])
    fig.update_layout(template=TEMPLATE, height=380,
                      title=title or f"{setting}: test accuracy against "
                                     f"{'labels per class' if axis == 'k' else 'student width'}",
                      xaxis_title=AXIS_TITLES.get(axis, axis) + "; mean and 95 % CI over seeds",
                      yaxis_title="test accuracy (%)",
                      legend=dict(orientation="h", y=-0.22), margin=dict(l=10, r=20, t=50, b=80))
    return fig


def budget_curves(df: Any, *, title: str | None = None) -> go.Figure:
    """Validation accuracy per epoch of the scratch baseline, per setting: has it flattened?

    Parameters
    ----------
    df : pandas.DataFrame
        ``setting, epoch, seed, val_accuracy`` (``benchmarks/results/transfer_scratch_curves.csv``).

    Returns
    -------
    plotly.graph_objects.Figure
        A line per setting through the mean validation accuracy (%) at each
        epoch, its 95 % CI over seeds as a band. A budget is long enough when
        the line is flat over its last epochs.
    """
    df = _need(df, ["setting", "epoch", "seed", "val_accuracy"], "budget_curves")
    fig = go.Figure()
    order = list(dict.fromkeys(df["setting"]))
    for i, setting in enumerate(order):
        _curve_with_band(fig, df[df["setting"] == setting], "epoch", "val_accuracy", name=setting,
                         color=_OTHER_COLORS[i % len(_OTHER_COLORS)],
                         hovertemplate=f"<b>{setting}</b>, scratch<br>epoch %{{x}}<br>validation accuracy "
                                       f"%{{y:.1f}} % [95 % CI %{{customdata[0]:.1f}}, "
                                       f"%{{customdata[1]:.1f}}]<extra></extra>")
    fig.update_layout(template=TEMPLATE, height=340,
                      title=title or "Is the budget long enough? Scratch's validation accuracy",
                      xaxis_title="epoch (0 = initialisation); mean and 95 % CI over seeds",
                      yaxis_title="validation accuracy (%)",
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=20, t=50, b=80))
    return fig


def search_progress(df: Any, setting: str, *, title: str | None = None) -> go.Figure:
    """Best validation accuracy so far against the number of trials, per method of ``setting``.

    Answers "is each method's search still improving?": a line still climbing at its
    last trials would gain from more trials, a flat one has found its best options. Every
    method is searched with the same number of trials, so the lines end at the same x
    once the search is over; a method still being searched ends earlier.

    Parameters
    ----------
    df : pandas.DataFrame
        :func:`otviz.sweep.best_so_far` of a sweep's trials: ``setting, method, trials,
        best_val_accuracy`` (a fraction; NaN until a trial of the method completes).
    setting : str
        The setting to draw.
    title : str, optional
        Replaces the default title.

    Returns
    -------
    plotly.graph_objects.Figure
        A step line per method (the method colours of the other benchmark figures)
        through the best mean validation accuracy (in %) of its trials 1 to ``x``; a
        pruned or failed trial counts as a trial and keeps the best so far. A method
        without a complete trial yet is listed in the legend with no line.

    Raises
    ------
    ValueError
        A table without those columns, an empty one, or no row of ``setting``.
    """
    if not hasattr(df, "columns"):
        raise TypeError(f"search_progress needs a pandas DataFrame, got {type(df).__name__}")
    needed = ["setting", "method", "trials", "best_val_accuracy"]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"search_progress: the table lacks the column(s) {missing}; it has {list(df.columns)} "
                         "(pass otviz.sweep.best_so_far(sweep_tables(store, name).trials))")
    if len(df) == 0:
        raise ValueError("search_progress: the table is empty (the sweep has no tuning trial yet)")
    sub = df[df["setting"] == setting]
    if sub.empty:
        raise ValueError(f"search_progress: no trials of setting {setting!r}; the table has "
                         f"{sorted(set(df['setting']))}")
    order = list(dict.fromkeys(sub["method"]))
    fig = go.Figure()
    for m in order:
        g = sub[sub["method"] == m].sort_values("trials")
        best = g["best_val_accuracy"].astype(float)
        y = [None if v != v else 100 * v for v in best]
        done = best.notna().any()
        fig.add_trace(go.Scatter(
            x=[int(t) for t in g["trials"]], y=y, mode="lines+markers", line_shape="hv",
            name=m if done else f"{m} (no complete trial yet)",
            line=dict(color=_color(m, order), width=2), marker=dict(size=6),
            hovertemplate=f"<b>{m}</b><br>after %{{x}} trial(s): best validation accuracy "
                          f"%{{y:.1f}} %<extra></extra>"))
    n = int(sub["trials"].max())
    fig.update_xaxes(tickmode="linear", tick0=1, dtick=1 if n <= 12 else max(1, round(n / 10)),
                     range=[0.7, n + 0.3])
    fig.update_layout(template=TEMPLATE, height=340,
                      title=title or f"{setting}: is each method's search still improving?",
                      xaxis_title="trials run (complete, pruned or failed), in trial order",
                      yaxis_title="best validation accuracy so far (%)",
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=20, t=50, b=80))
    return fig
