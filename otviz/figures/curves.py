r"""Training curves: loss terms, OT terms and accuracies from the run store's long-format metrics.

A run logs metrics under tags ``"<family>/<name>"`` (:meth:`otviz.runs.RunStore.log_metrics`).
:func:`training_curves` draws them the way TensorBoard groups its tags, one panel per family,
each with its own y axis, so that a term near 0 is never flattened beside a term near 15:

- ``loss/<term>``: one panel per term, since the terms differ in scale by design. Each holds
  the *weighted* value added to the total (``loss/ot`` is :math:`\lambda \sum_\ell
  \mathrm{OT}_\ell`, ``loss/kd`` is the KD weight times the KD loss), and its title says so.
- ``ot/<teacher>-><student>``: one panel, a line per layer pair: the raw OT term of the pair
  as the regulariser optimises it on each minibatch, before the weight :math:`\lambda`.
- ``score/<teacher>-><student>`` (any family whose name ends in ``score``): one panel on a
  linear, 0-based axis: the scale-free OT score (:attr:`otviz.Alignment.score`) logged per
  epoch on a fixed probe batch.
- ``train/<metric>``, ``test/<metric>`` (and ``val/``): one panel per metric with a line per
  split; accuracies are drawn in percent on a fixed 0-100 axis with the chance level
  :math:`100 / n_\text{classes}` marked. A run with a validation part logs ``val/accuracy``
  and ``val/loss`` every epoch and ``test/accuracy`` once, at its last step (one marker).

The horizontal axis is the optimisation step, the epoch (per-step values averaged over the
epoch) or the wall time elapsed since the run's first logged metric. Smoothing is
TensorBoard's: a debiased exponential moving average

.. math::

    m_t = w\,m_{t-1} + (1 - w)\,y_t, \qquad \hat m_t = \frac{m_t}{1 - w^t},
    \qquad m_0 = 0,

with weight :math:`w \in [0, 1)` (0: no smoothing), drawn over the faint raw values.
Evaluation metrics (accuracies) are exact on their data set, not minibatch estimates, so
they are never smoothed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from otviz.figures._common import _empty_figure, _finish

__all__ = ["training_curves", "accuracy_curves", "chance_level", "metric_family", "metric_panels",
           "X_AXES"]

X_AXES = ("step", "epoch", "time")
"""Horizontal axes of the curves: optimisation step, epoch, wall time since the first metric."""

PANELS = ("family", "key", "one")

_SPLITS = ("train", "test", "val", "valid", "validation")
_PALETTE = ("#1f77b4", "#e4572e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f")
_SPLIT_COLORS = {"train": _PALETTE[0], "test": _PALETTE[1], "val": _PALETTE[2],
                 "valid": _PALETTE[2], "validation": _PALETTE[2]}
_CHANCE_COLOR = "#888888"
#: The chance line's label: at the right end of the line, where the curves have left chance (they
#: start there, at the left), on a light box so that a curve passing under it keeps it legible.
_CHANCE_LABEL = dict(font=dict(size=11, color="#555"), bgcolor="rgba(255,255,255,0.85)", borderpad=1)
_RAW_OPACITY = 0.28
_PANEL_HEIGHT = 250


# ----------------------------------------------------------------------------
# what a metric is
# ----------------------------------------------------------------------------
def metric_family(key: str) -> str:
    """The panel a metric belongs to, as TensorBoard groups tags.

    ``"ot/a->b"`` and ``"score/a->b"`` belong to ``"ot"`` and ``"score"`` (the part before
    the first ``/``); a split prefix groups by what follows it, so ``"train/accuracy"`` and
    ``"test/accuracy"`` share the family ``"accuracy"``. A key without ``/`` is its own family.
    """
    head, sep, tail = str(key).partition("/")
    if not sep:
        return head
    return tail if head in _SPLITS and tail else head


def _is_accuracy(family: str) -> bool:
    return "acc" in family.lower()


def _is_score(family: str) -> bool:
    return family.lower().endswith("score")


def chance_level(config: Mapping[str, Any] | None) -> float | None:
    """Accuracy of a uniform random guess on a run's task, :math:`1 / n_\\text{classes}`.

    Read from ``config["num_classes"]`` if present, else from the classes of
    ``config["setting"]`` in :data:`otviz.data.SETTINGS`. ``None`` when neither says
    (a custom task): no chance line is drawn then.
    """
    if not config:
        return None
    n = config.get("num_classes")
    if n is None:
        from otviz.data import SETTINGS

        spec = SETTINGS.get(config.get("setting")) if isinstance(config.get("setting"), str) else None
        n = len(spec.target_classes) if spec is not None else None
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        return None
    return 1.0 / int(n)


def _num(config: Mapping[str, Any], key: str) -> str | None:
    v = config.get(key)
    return f"{v:g}" if isinstance(v, numbers.Real) and not isinstance(v, bool) else None


def _loss_title(key: str, config: Mapping[str, Any]) -> str:
    """What a ``loss/<term>`` value is: the weighted term added to the total."""
    term = key.partition("/")[2]
    lam = _num(config, "lam")
    if term == "total":
        return "total loss (what is minimised)"
    if term == "ce":
        return "cross-entropy (task loss)"
    if term == "ot":
        return f"λ × OT, summed over pairs (λ = {lam})" if lam else "λ × OT, summed over pairs"
    if term == "kd":
        w, t = _num(config, "kd_weight") or "w", _num(config, "temperature")
        return f"{w} × KD" + (f" (T = {t})" if t else "")
    if term == "l2sp":
        return f"{_num(config, 'l2sp_weight') or 'α'} × L2-SP penalty"
    if term == "fitnets":
        return f"{_num(config, 'fitnets_weight') or 'β'} × FitNets hint loss"
    if term == "at":
        return f"{_num(config, 'at_weight') or 'β'} × attention transfer"
    if term == "nst":
        return f"{_num(config, 'nst_weight') or 'w'} × NST (squared MMD of channel maps)"
    if term == "sp":
        return f"{_num(config, 'sp_weight') or 'γ'} × similarity-preserving loss"
    return f"{key} (weighted, as added to the total)"


def _family_title(family: str, config: Mapping[str, Any], chance: float | None) -> str:
    if _is_accuracy(family):
        return f"{family} (%)" + (f", chance {100 * chance:.3g} %" if chance else "")
    if family == "ot":
        method = str(config.get("method", ""))
        if method and "ot" not in method.split("+"):
            return "raw OT term per layer pair (monitored, not in the loss)"
        return "raw OT term per layer pair, as optimised (before λ)"
    if _is_score(family):
        return ("OT score per layer pair (0 = same layer, ~1 = unrelated)" if family == "score"
                else family)
    if family == "loss":  # "val/loss" (the trainer's mean cross-entropy), "train/loss"...
        return "loss per split (mean per image)"
    return family


def _trace_name(key: str, family: str) -> str:
    """Short legend name inside a panel: the split, or the key without its family."""
    head, sep, tail = key.partition("/")
    if not sep:
        return key
    if head in _SPLITS and tail == family:
        return head
    name = tail if head == family else key
    if "->" in name:  # features.conv3->features.conv3 -> conv3->conv3
        name = "->".join(part.removeprefix("features.") for part in name.split("->"))
    return name


# ----------------------------------------------------------------------------
# validation and series
# ----------------------------------------------------------------------------
def _check_x(x: Any) -> str:
    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)} (optimisation step, epoch, or wall "
                         f"time since the first metric), got {x!r}")
    return x


def _check_metrics(metrics: Any, x: str, name: str = "metrics") -> pd.DataFrame:
    if not isinstance(metrics, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame in long format (columns step, "
                        f"epoch, key, value, time), e.g. RunStore.metrics(run_id); got "
                        f"{type(metrics).__name__}")
    missing = [c for c in ("key", "value", x) if c not in metrics.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(metrics.columns)}. "
                         f"Pass long-format metrics (RunStore.metrics), or another x of "
                         f"{list(X_AXES)}")
    return metrics


def _check_smooth(smooth: Any) -> float:
    if smooth is None:
        return 0.0
    if isinstance(smooth, bool) or not isinstance(smooth, numbers.Real) or \
            not (0.0 <= float(smooth) < 1.0):
        raise ValueError(f"smooth is the weight w of an exponential moving average, in [0, 1) "
                         f"(0: raw values; TensorBoard's default is 0.6), got {smooth!r}")
    return float(smooth)


def _check_cols(cols: Any) -> int:
    if isinstance(cols, bool) or not isinstance(cols, numbers.Integral) or cols < 1:
        raise ValueError(f"cols must be a number of panel columns >= 1, got {cols!r}")
    return int(cols)


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 180:
        return 1.0, "s"
    if seconds < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _x_values(metrics: pd.DataFrame, x: str) -> tuple[pd.Series, float]:
    """The x column as floats (elapsed seconds for ``time``), and the largest value."""
    col = metrics[x]
    if x != "time":
        vals = pd.to_numeric(col, errors="coerce").astype(float)
        return vals, float(vals.max()) if vals.notna().any() else 0.0
    if pd.api.types.is_datetime64_any_dtype(col):
        secs = (col - col.min()).dt.total_seconds()
    else:
        num = pd.to_numeric(col, errors="coerce").astype(float)
        secs = num - num.min()
    return secs.astype(float), float(secs.max()) if secs.notna().any() else 0.0


def _series(metrics: pd.DataFrame, xs: pd.Series, key: str, scale: float) -> pd.Series:
    """One key's values against x: NA x dropped, duplicates averaged, sorted."""
    mask = (metrics["key"] == key).to_numpy() & xs.notna().to_numpy()
    if not mask.any():
        return pd.Series(dtype=float)
    sub = pd.DataFrame({"x": xs.to_numpy()[mask] / scale,
                        "value": metrics["value"].to_numpy()[mask].astype(float)})
    return sub.groupby("x", sort=True)["value"].mean()


def _ema(y: np.ndarray, w: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing), NaN-free input."""
    if w == 0.0 or len(y) == 0:
        return y
    out = np.empty_like(y, dtype=float)
    last, decay = 0.0, 1.0
    for i, v in enumerate(y):
        last = w * last + (1.0 - w) * float(v)
        decay *= w
        out[i] = last / (1.0 - decay)
    return out


def _to_percent(series: Sequence[pd.Series]) -> bool:
    vals = [s.to_numpy() for s in series if len(s)]
    return bool(vals) and all(np.nanmin(v) >= 0 and np.nanmax(v) <= 1 for v in vals)


# ----------------------------------------------------------------------------
# panels
# ----------------------------------------------------------------------------
@dataclass
class _Panel:
    title: str
    family: str
    keys: list[str] = field(default_factory=list)


def _panel_order(family: str, key: str) -> tuple:
    if _is_accuracy(family):
        rank = 0
    elif _is_score(family):
        rank = 1
    elif family == "ot":
        rank = 2
    elif family == "loss":
        rank = 3
    else:
        rank = 4
    term = key.partition("/")[2] if family == "loss" else ""
    return (rank, family, {"total": 0, "ce": 1}.get(term, 2), term)


def _panels(keys: list[str], mode: str, config: Mapping[str, Any],
            chance: float | None) -> list[_Panel]:
    if mode == "one":
        fams = {metric_family(k) for k in keys}
        fam = fams.pop() if len(fams) == 1 else ""
        return [_Panel("", fam, list(keys))]
    out: dict[tuple, _Panel] = {}
    for key in keys:
        fam = metric_family(key)
        split = mode == "key" or key.startswith("loss/")
        ident = (fam, key) if split else (fam,)
        if ident not in out:
            if not split:
                title = _family_title(fam, config, chance)
            elif key.startswith("loss/"):
                title = _loss_title(key, config)
            elif fam == "ot" or _is_score(fam) or _is_accuracy(fam):
                title = f"{_family_title(fam, config, chance)}: {_trace_name(key, fam)}"
            else:
                title = key
            out[ident] = _Panel(title, fam)
        out[ident].keys.append(key)
    return sorted(out.values(), key=lambda p: _panel_order(p.family, p.keys[0]))


def metric_panels(keys: Sequence[str], panels: str = "family") -> list[list[str]]:
    """The keys of each panel of :func:`training_curves`, in its order.

    For drawing each panel as a figure of its own (``training_curves(metrics, group)`` for
    every group), e.g. as cards that wrap on a narrow page. ``panels`` is as in
    :func:`training_curves`.
    """
    if panels not in PANELS:
        raise ValueError(f"panels must be one of {list(PANELS)}, got {panels!r}")
    return [p.keys for p in _panels([str(k) for k in keys], panels, {}, None)]


def _axis_ref(i: int, axis: str) -> str:
    return f"{axis}axis" + ("" if i == 1 else str(i))


def _add_series(fig: go.Figure, s: pd.Series, *, name: str, key: str, color: str, smooth: float,
                x_title: str, row: int | None, col: int | None, legend: str | None,
                show_legend: bool, percent: bool) -> None:
    pos = dict(row=row, col=col) if row is not None else {}
    xv = s.index.to_numpy() if len(s) else np.array([])
    yv = s.to_numpy(dtype=float) * (100.0 if percent else 1.0)
    unit = " %" if percent else ""
    fmt = "%{y:.1f}" if percent else "%{y:.4g}"
    marker = "lines+markers" if 0 < len(s) <= 30 else "lines"
    common = dict(legendgroup=f"{legend or ''}:{key}", cliponaxis=False)
    if legend:
        common["legend"] = legend
    label = name if len(s) else f"{name} (no data yet)"
    if smooth > 0 and len(s) > 1:
        fig.add_trace(go.Scatter(
            x=xv, y=yv, mode="lines", name=f"{label} (raw)", showlegend=False, opacity=_RAW_OPACITY,
            line=dict(color=color, width=1),
            hovertemplate=f"{key} raw<br>{x_title} %{{x}}<br>{fmt}{unit}<extra></extra>",
            **common), **pos)
        yv = _ema(yv, smooth)
        fmt_name = f"{key} smoothed"
    else:
        fmt_name = key
    fig.add_trace(go.Scatter(
        x=xv, y=yv, mode=marker, name=label, showlegend=show_legend,
        line=dict(color=color, width=2), marker=dict(size=5, color=color),
        hovertemplate=f"{fmt_name}<br>{x_title} %{{x}}<br>{fmt}{unit}<extra></extra>",
        **common), **pos)


def training_curves(
    metrics: pd.DataFrame,
    keys: str | Sequence[str] | None = None,
    *,
    x: str = "step",
    smooth: float = 0.0,
    log_y: bool = False,
    panels: str = "family",
    cols: int = 2,
    config: Mapping[str, Any] | None = None,
    chance: float | None = None,
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    r"""A run's metrics, one panel per tag family, each on its own y axis.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Long format, as :meth:`otviz.runs.RunStore.metrics` returns it:
        columns ``step``, ``epoch``, ``key``, ``value`` and ``time``.
    keys : str or sequence of str, optional
        Metrics to draw (default: every key present). A requested key with no rows
        yet gets an empty trace named ``"<name> (no data yet)"``, so live pages keep a
        stable layout.
    x : {"step", "epoch", "time"}, default "step"
        Horizontal axis: the optimisation step; the epoch (several values of a key in
        one epoch, e.g. per-step losses, are averaged); or the wall time elapsed since
        the first metric of ``metrics``, in s, min or h depending on the run's length.
    smooth : float, default 0
        Weight :math:`w \in [0, 1)` of the debiased exponential moving average
        (TensorBoard's smoothing, see the module notes); the raw values stay as a
        faint line. Accuracy panels are never smoothed.
    log_y : bool, default False
        Logarithmic y axis on the loss and distance panels. A panel with a value
        :math:`\le 0` stays linear and says so in its title; accuracy (0-100 %) and
        score (0-based) panels always stay linear.
    panels : {"family", "key", "one"}, default "family"
        ``"family"``: a panel per tag family (:func:`metric_family`), except
        ``loss/<term>``, a panel per term; ``"key"``: a panel per key; ``"one"``: all
        keys on one axis.
    cols : int, default 2
        Panels per row.
    config : mapping, optional
        The run's configuration (``RunStore.run(run_id)["config"]``): panel titles then
        give the weights (``λ × OT, summed over pairs (λ = 1)``) and the chance level
        comes from its setting (:func:`chance_level`).
    chance : float, optional
        Chance accuracy as a fraction (e.g. 0.2); overrides the one read from ``config``.
        Drawn as a dotted line on accuracy panels.
    title : str, optional
    height : int, optional
        Default: 250 px per row of panels.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter`` per key named by its short name (``"train"``, ``"conv3->conv3"``)
        with the full key in its hover, preceded by a faint ``"... (raw)"`` trace when
        smoothed. Accuracies in [0, 1] are drawn in percent on a fixed 0-100 axis. An
        empty ``metrics`` gives a figure that says there is no data yet.

    Raises
    ------
    TypeError
        ``metrics`` is not a DataFrame.
    ValueError
        Missing columns, an unknown ``x`` or ``panels``, a ``smooth`` outside [0, 1),
        ``cols < 1``, a ``chance`` outside (0, 1), or an empty ``keys`` list.
    """
    x = _check_x(x)
    metrics = _check_metrics(metrics, x)
    smooth = _check_smooth(smooth)
    cols = _check_cols(cols)
    if panels not in PANELS:
        raise ValueError(f"panels must be one of {list(PANELS)}, got {panels!r}")
    config = dict(config or {})
    if chance is None:
        chance = chance_level(config)
    elif not (isinstance(chance, numbers.Real) and 0.0 < float(chance) < 1.0):
        raise ValueError(f"chance must be an accuracy fraction in (0, 1), e.g. 0.2 for 5 "
                         f"classes, got {chance!r}")
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

    xs, x_max = _x_values(metrics, x)
    scale, unit = _time_unit(x_max) if x == "time" else (1.0, "")
    x_title = f"wall time ({unit})" if x == "time" else x
    series = {key: _series(metrics, xs, key, scale) for key in keys}
    plist = _panels(keys, panels, config, chance)
    n = len(plist)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    if height is None:
        height = 90 + _PANEL_HEIGHT * rows + (40 if title else 0) + (15 if smooth else 0)
    if n > 1:
        plot_px = max(height - 150, 100)  # height less the margins
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in plist],
                            horizontal_spacing=min(0.1, 0.5 / cols) if cols > 1 else 0.0,
                            vertical_spacing=min(0.3, 75 / plot_px) if rows > 1 else 0.0)
    else:
        fig = go.Figure()

    for i, panel in enumerate(plist):
        row, col = (i // cols + 1, i % cols + 1) if n > 1 else (None, None)
        pos = dict(row=row, col=col) if n > 1 else {}
        ax = i + 1 if n > 1 else 1
        pser = [series[k] for k in panel.keys]
        acc = _is_accuracy(panel.family)
        percent = acc and _to_percent(pser)
        legend = None
        multi = len(panel.keys) > 1
        if multi and n > 1:
            legend = "legend" if ax == 1 else f"legend{ax}"
        for j, key in enumerate(panel.keys):
            short = _trace_name(key, panel.family)
            _add_series(fig, series[key], name=short if n > 1 or multi else key, key=key,
                        color=_SPLIT_COLORS.get(short, _PALETTE[j % len(_PALETTE)]),
                        smooth=0.0 if acc else smooth, x_title=x_title, row=row, col=col,
                        legend=legend, show_legend=multi, percent=percent)
        if not any(len(s) for s in pser):
            xr, yr = _axis_ref(ax, "x"), _axis_ref(ax, "y")
            fig.add_annotation(text="no data yet", showarrow=False, font=dict(color="#999"),
                               xref=f"{xr.replace('axis', '')} domain",
                               yref=f"{yr.replace('axis', '')} domain", x=0.5, y=0.5)
        # y axis of this panel
        yaxis: dict[str, Any] = {}
        values = np.concatenate([s.to_numpy() for s in pser if len(s)]) if any(len(s) for s in pser) \
            else np.array([])
        if percent:
            yaxis.update(range=[0, 100], ticksuffix=" %", dtick=20, title=dict(text="accuracy"))
        elif acc:
            yaxis.update(rangemode="tozero")
        elif _is_score(panel.family):
            yaxis.update(rangemode="tozero")
        elif log_y:
            if len(values) and (values > 0).all():
                yaxis.update(type="log")
            elif len(values):
                note = " (linear: has values ≤ 0)"
                if n > 1:
                    fig.layout.annotations[i].text += note
                else:
                    panel.title += note
        if percent and chance:
            fig.add_hline(y=100 * chance, line=dict(color=_CHANCE_COLOR, dash="dot", width=1.5),
                          annotation=dict(text=f"chance {100 * chance:.3g} %", **_CHANCE_LABEL),
                          annotation_position="top right", **pos)
        fig.update_yaxes(**yaxis, **pos)
        # legend inside the panel (accuracies rise: bottom right; the rest fall: top right)
        if legend is not None:
            xd = fig.layout[_axis_ref(ax, "x")].domain
            yd = fig.layout[_axis_ref(ax, "y")].domain
            top = not acc
            fig.update_layout({legend: dict(
                x=xd[1] - 0.005, xanchor="right", y=yd[1] if top else yd[0] + 0.02,
                yanchor="top" if top else "bottom", bgcolor="rgba(255,255,255,0.75)",
                font=dict(size=11), tracegroupgap=0, borderwidth=0)})
    if n > 1:
        for a in fig.layout.annotations[:n]:
            a.font = dict(size=13)
        fig.update_xaxes(showticklabels=True, matches="x")
        for i in range(n):
            r, c = i // cols + 1, i % cols + 1
            last_in_col = i + cols >= n
            if last_in_col:
                fig.update_xaxes(title=dict(text=x_title, standoff=4), row=r, col=c)
    else:
        fig.update_xaxes(title=dict(text=x_title))
        panel = plist[0]
        if not panel.title:  # panels="one"
            panel.title = (_loss_title(panel.keys[0], config)
                           if len(panel.keys) == 1 and panel.keys[0].startswith("loss/") else "")
        if title is None and panel.title:
            title = panel.title
        only = panel.keys[0]
        y_title = ("accuracy" if percent else (only if only.startswith("loss/")
                                              else _trace_name(only, panel.family))
                   if len(panel.keys) == 1 else panel.family or "value")
        fig.update_yaxes(title=dict(text=y_title))
        fig.update_layout(showlegend=len(panel.keys) > 1,
                          legend=dict(orientation="h", yanchor="top", y=-0.22, x=0, xanchor="left"))
    if x == "epoch":
        fig.update_xaxes(dtick=1 if x_max <= 15 else None, tickformat="d")
    smoothed = smooth > 0 and any(not _is_accuracy(p.family) and len(series[k]) > 1
                                  for p in plist for k in p.keys)
    sub = f"smoothed: EMA weight {smooth:g}, raw values faint" if smoothed else None
    fig = _finish(fig, title, sub, height=height, hovermode="x unified" if n == 1 else "closest")
    if n > 1:  # room for the first row's panel titles under the figure title
        fig.update_layout(margin=dict(t=(100 if sub else 85) if title else 40))
    return fig


# ----------------------------------------------------------------------------
# several runs
# ----------------------------------------------------------------------------
def accuracy_curves(
    runs: Mapping[str, pd.DataFrame],
    *,
    key: str = "test/accuracy",
    x: str = "epoch",
    smooth: float = 0.0,
    log_y: bool = False,
    chance: float | Mapping[str, float | None] | None = None,
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    r"""Overlay one metric of several runs.

    Parameters
    ----------
    runs : mapping of str to pandas.DataFrame
        Run label (legend name) to its long-format metrics
        (:meth:`otviz.runs.RunStore.metrics`).
    key : str, default "test/accuracy"
        The metric to draw. An accuracy (values in [0, 1]) is drawn in percent on a
        fixed 0-100 axis; any other metric on an automatic axis.
    x : {"epoch", "step", "time"}, default "epoch"
        As in :func:`training_curves`; wall time counts from each run's first metric.
    smooth : float, default 0
        EMA weight in [0, 1), as in :func:`training_curves`; not applied to accuracies.
    log_y : bool, default False
        Logarithmic y axis (not for accuracies; linear, with a note, when a value is
        :math:`\le 0`).
    chance : float or mapping of label to float, optional
        Chance accuracy (a fraction), one for all runs or one per run label (e.g. from
        :func:`chance_level` of each run's config); each distinct level is drawn as a
        dotted line.
    title : str, optional
    height : int, optional

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter`` per run in the mapping's order (after a faint ``"... (raw)"``
        trace when smoothed); a run without this key yet gets an empty trace named
        ``"<label> (no data yet)"``. An empty mapping gives a figure asking to select runs.

    Raises
    ------
    TypeError
        ``runs`` is not a mapping of DataFrames.
    ValueError
        A DataFrame without the needed columns, an unknown ``x``, a bad ``smooth`` or
        ``chance``.
    """
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a mapping of run label to metrics DataFrame, got "
                        f"{type(runs).__name__}")
    x = _check_x(x)
    smooth = _check_smooth(smooth)
    if title is None:
        title = f"{key} by run"
    if not runs:
        return _empty_figure("no runs selected", title)
    levels: dict[float, list[str]] = {}
    per_run = chance if isinstance(chance, Mapping) else {label: chance for label in runs}
    for label, c in per_run.items():
        if c is None:
            continue
        if not (isinstance(c, numbers.Real) and 0.0 < float(c) < 1.0):
            raise ValueError(f"chance must be an accuracy fraction in (0, 1) (e.g. 0.2 for 5 "
                             f"classes), got {c!r} for {label!r}")
        levels.setdefault(round(float(c), 12), []).append(str(label))
    prepared = []
    x_max = 0.0
    for label, df in runs.items():
        _check_metrics(df, x, name=f"runs[{label!r}]")
        xs, m = _x_values(df, x)
        x_max = max(x_max, m)
        prepared.append((label, df, xs))
    scale, unit = _time_unit(x_max) if x == "time" else (1.0, "")
    x_title = f"wall time ({unit})" if x == "time" else x
    all_series = [_series(df, xs, key, scale) for _, df, xs in prepared]
    acc = _is_accuracy(metric_family(key))
    percent = acc and _to_percent(all_series)
    fig = go.Figure()
    for j, ((label, _, _), s) in enumerate(zip(prepared, all_series)):
        _add_series(fig, s, name=str(label), key=f"{label}: {key}", color=_PALETTE[j % len(_PALETTE)],
                    smooth=0.0 if acc else smooth, x_title=x_title, row=None, col=None,
                    legend=None, show_legend=True, percent=percent)
    fig.update_xaxes(title=dict(text=x_title))
    if x == "epoch":
        fig.update_xaxes(dtick=1 if x_max <= 15 else None, tickformat="d")
    if percent:
        fig.update_yaxes(range=[0, 100], ticksuffix=" %", dtick=20,
                         title=dict(text=f"{key} (%)"))
        for c, labels in sorted(levels.items()):
            who = "" if len(levels) == 1 else f" ({', '.join(labels)})"
            fig.add_hline(y=100 * c, line=dict(color=_CHANCE_COLOR, dash="dot", width=1.5),
                          annotation=dict(text=f"chance {100 * c:.3g} %{who}", **_CHANCE_LABEL),
                          annotation_position="top right")
    else:
        fig.update_yaxes(title=dict(text=key))
        values = [s.to_numpy() for s in all_series if len(s)]
        if log_y and values:
            if all((v > 0).all() for v in values):
                fig.update_yaxes(type="log")
            else:
                fig.update_yaxes(title=dict(text=f"{key} (linear: has values ≤ 0)"))
    sub = f"smoothed: EMA weight {smooth:g}, raw values faint" if smooth > 0 and not acc else None
    fig = _finish(fig, title, sub, height=height, hovermode="x unified")
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.18, x=0, xanchor="left"))
    return fig
