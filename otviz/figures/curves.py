"""Training curves: loss terms and accuracies from the run store's long-format metrics."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from otviz.figures._common import (
    _empty_figure,
    _finish,
)

__all__ = ['training_curves', 'accuracy_curves']

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
