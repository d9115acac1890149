"""Over training: neuron reallocation between plan snapshots, and one score for several runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from otviz.figures._common import TEACHER_COLOR, _empty_figure, _finish
from otviz.matching import reallocation

__all__ = ["reallocation_chart", "compare_runs"]

RUN_COLORS = ("#1b7837", "#8c8c8c", "#762a83", "#e08214", "#2166ac", "#b2182b")
"""One colour per run in :func:`compare_runs`: the first run green, the second grey."""


def reallocation_chart(
    plans_or_frame: Sequence[Any] | pd.DataFrame,
    epochs: Sequence[int] | None = None,
    *,
    title: str | None = None,
    height: int | None = 360,
) -> go.Figure:
    """How many teacher neurons change their main partner between epochs, and how much mass moves.

    Bars: the fraction of teacher neurons whose main student partner changed
    since the previous snapshot; line: the total variation between the two
    plans (the share of the mass that moved to other pairs). Both are
    fractions on one 0-100 % axis; hover gives the counts.

    Parameters
    ----------
    plans_or_frame : sequence of plans, or the DataFrame of :func:`otviz.matching.reallocation`
    epochs : sequence of int, optional
        The snapshots' epochs (with plans only).

    Returns
    -------
    plotly.graph_objects.Figure
        Traces ``"changed partners"`` (bars, ``y`` = fraction) and
        ``"moved mass"`` (line, ``y`` = total variation), x = epoch.
    """
    if isinstance(plans_or_frame, pd.DataFrame):
        need = {"epoch", "previous_epoch", "changed_partners", "fraction", "moved_mass"}
        if not need <= set(plans_or_frame.columns):
            raise ValueError(f"the frame needs the columns of otviz.matching.reallocation "
                             f"{sorted(need)}, got {list(plans_or_frame.columns)}")
        df = plans_or_frame
    else:
        df = reallocation(plans_or_frame, epochs)
    if df.empty:
        return _empty_figure("Reallocation needs at least two plan snapshots.", title)
    custom = np.stack([df["previous_epoch"], df["changed_partners"]], axis=1)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=df["epoch"], y=df["fraction"], name="changed partners",
                         marker_color=TEACHER_COLOR, opacity=0.75, customdata=custom,
                         hovertemplate="epoch %{customdata[0]:d} -> %{x}: %{customdata[1]:d} "
                                       "teacher neurons (%{y:.0%}) changed their main partner"
                                       "<extra></extra>"))
    fig.add_trace(go.Scatter(x=df["epoch"], y=df["moved_mass"], name="moved mass",
                             mode="lines+markers", line=dict(color="#222", width=2),
                             customdata=custom,
                             hovertemplate="epoch %{customdata[0]:d} -> %{x}: %{y:.0%} of the "
                                           "mass moved (total variation)<extra></extra>"))
    top = float(max(df["fraction"].max(), df["moved_mass"].max()))
    fig.update_yaxes(title=dict(text="fraction since previous epoch"), tickformat=".0%",
                     range=[0, max(0.1, min(1.0, top * 1.15))])
    fig.update_xaxes(title=dict(text="epoch"), dtick=1)
    return _finish(fig, title or "Neuron reallocation between epochs",
                   "bars: teacher neurons whose main student partner changed<br>line: share of "
                   "the plan's mass that moved", height=height,
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))


def compare_runs(
    series: pd.DataFrame,
    *,
    value_label: str = "value",
    title: str | None = None,
    runs: Sequence[Any] | None = None,
    log_y: bool = False,
    height: int | None = 380,
) -> go.Figure:
    """One per-epoch series for several runs on one chart: a line per run (and dash per pair).

    Parameters
    ----------
    series : pandas.DataFrame
        Long format with columns ``run`` (a label), ``epoch``, ``pair`` and
        ``value`` (e.g. a layer score per epoch for each run). Several rows
        with the same (run, pair, epoch) are averaged.
    value_label : str
        The y axis title: what the value is and on what scale.
    runs : sequence, optional
        The runs to draw, in this order (default: order of appearance); the
        first gets the first colour of :data:`RUN_COLORS`.
    log_y : bool, default False

    Returns
    -------
    plotly.graph_objects.Figure
        One line per (run, pair), named ``run`` (``"run - pair"`` with
        several pairs), x = epoch, y = mean value.

    Raises
    ------
    ValueError
        Missing columns, or non-finite values.
    """
    if not isinstance(series, pd.DataFrame):
        raise TypeError(f"series must be a pandas DataFrame with columns run, epoch, pair, value; "
                        f"got {type(series).__name__}")
    need = {"run", "epoch", "pair", "value"}
    if not need <= set(series.columns):
        raise ValueError(f"series needs the columns {sorted(need)}, got {list(series.columns)}")
    if series.empty:
        return _empty_figure("No values to compare yet (no epoch has been logged).", title)
    values = pd.to_numeric(series["value"], errors="coerce")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        raise ValueError("series has NaN or infinite values; drop them or say why they are missing")
    df = series.assign(value=values)
    order = list(dict.fromkeys(df["run"])) if runs is None else list(runs)
    missing = [r for r in order if r not in set(df["run"])]
    if missing:
        raise ValueError(f"runs {missing} are not in the series; it has {sorted(set(df['run']))}")
    pairs = list(dict.fromkeys(df["pair"]))
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    fig = go.Figure()
    for i, run in enumerate(order):
        for j, pair in enumerate(pairs):
            sub = df[(df["run"] == run) & (df["pair"] == pair)]
            if sub.empty:
                continue
            g = sub.groupby("epoch", sort=True)["value"].mean()
            name = str(run) if len(pairs) == 1 else f"{run} - {pair}"
            fig.add_trace(go.Scatter(
                x=g.index.to_numpy(), y=g.to_numpy(), mode="lines+markers", name=name,
                line=dict(color=RUN_COLORS[i % len(RUN_COLORS)], dash=dashes[j % len(dashes)],
                          width=2.5), meta=dict(run=str(run), pair=str(pair)),
                hovertemplate=f"{run}<br>{pair}<br>epoch %{{x}}: {value_label} %{{y:.4g}}"
                              "<extra></extra>"))
    fig.update_xaxes(title=dict(text="epoch"), dtick=1 if df["epoch"].nunique() <= 20 else None)
    fig.update_yaxes(title=dict(text=value_label), type="log" if log_y else "linear")
    sub = pairs[0] if len(pairs) == 1 else "line style: layer pair"
    return _finish(fig, title or f"{value_label} per epoch", sub, height=height,
                   legend=dict(orientation="h", yanchor="top", y=-0.22, x=0, xanchor="left"))
