"""Run status, speed, curve controls and the duplicate-run check of the Train and Compare pages.

The figures themselves are :mod:`otviz.figures` builders; this module only turns widget
values into their options and draws the status of a run (colour and word) the same way
on every page.
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd
import streamlit as st

#: Colour and mark of each run status. Select boxes show plain text, so the mark is a shape
#: (one per status, in every common font) beside the word; bars and captions add the colour.
STATUS_STYLE: dict[str, tuple[str, str]] = {
    "running": ("#1c83e1", "●"),
    "completed": ("#1e9e5a", "✓"),
    "failed": ("#d93b3b", "✗"),
    "interrupted": ("#e8870e", "■"),
}
_UNKNOWN = ("#808080", "?")

X_LABELS = {"step": "step", "epoch": "epoch", "time": "wall time"}
SMOOTHING = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99)


def status_text(status: Any) -> str:
    """``"✓ completed"``: the status's mark and its word (plain text, for tables and pickers)."""
    return f"{STATUS_STYLE.get(str(status), _UNKNOWN)[1]} {status}"


def status_markdown(status: Any) -> str:
    """``":green[✓ completed]"``: the status's mark and word in its colour, for captions."""
    color = {"running": "blue", "completed": "green", "failed": "red",
             "interrupted": "orange"}.get(str(status), "gray")
    from dashkit import md_escape

    return f":{color}[{md_escape(status_text(status))}]"


def labels_signature(labels: dict[int, str], *extra: Any) -> str:
    """A short hash of a picker's labels (and ``extra``), for a widget key that changes with them."""
    import hashlib

    text = "\x1f".join([*(f"{k}={v}" for k, v in labels.items()), *map(str, extra)])
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def status_bar(status: str, fraction: float, text: str) -> None:
    """A progress bar in the colour of the run's status, with the status word in its text.

    ``st.progress`` has one colour for every state; a failed or interrupted run must not
    look like one still running, so the bar is drawn here.
    """
    color = STATUS_STYLE.get(status, _UNKNOWN)[0]
    pct = max(0.0, min(1.0, float(fraction))) * 100
    st.html(
        f'<div class="otviz-status" data-status="{html.escape(status)}" role="progressbar" '
        f'aria-valuemin="0" aria-valuemax="100" aria-valuenow="{pct:.0f}" '
        f'aria-label="{html.escape(status)}" style="font-family:inherit">'
        f'<div style="font-size:0.9rem;margin-bottom:4px">'
        f'<span style="color:{color};font-weight:600">{html.escape(status)}</span>'
        f' · {html.escape(text)}</div>'
        f'<div style="background:#e6e9ef;border-radius:4px;height:8px;overflow:hidden">'
        f'<div style="width:{pct:.1f}%;background:{color};height:8px"></div></div></div>')


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def speed_text(run: dict[str, Any], metrics: pd.DataFrame) -> str | None:
    """``"12.3 steps/s over the last 100 steps · ETA 0:45 · last update 2 s ago"`` for a
    running run, ``"1:12 in all, 1.7 steps/s on average"`` for an ended one, or None before
    the second step (:func:`otviz.runs.step_rate`)."""
    from otviz.runs import step_rate

    if metrics.empty:
        return None
    running = run.get("status") == "running"
    rate = step_rate(metrics, total_steps=run.get("total_steps"), window=100 if running else 10**9)
    if rate is None:
        return None
    if not running:
        dur = run.get("duration")
        head = f"{_clock(dur)} in all, " if dur else ""
        return f"{head}{rate.steps_per_second:.3g} steps/s on average"
    parts = [f"{rate.steps_per_second:.3g} steps/s over the last {rate.steps} steps"]
    if rate.eta_seconds is not None:
        parts.append(f"ETA {_clock(rate.eta_seconds)}")
    beat = run.get("heartbeat_at")
    if beat is not None:
        age = (pd.Timestamp.now(tz="UTC") - beat).total_seconds()
        if math.isfinite(age):
            parts.append(f"last sign of life {max(0, age):.0f} s ago")
    return " · ".join(parts)


def curve_controls(prefix: str, *, x_default: str = "step", smooth_default: float = 0.6,
                   smoothing: bool = True, log: bool = True) -> dict[str, Any]:
    """Horizontal axis, smoothing and log-scale widgets; returns figure options.

    The returned dict holds ``x`` and, when their widget is shown, ``smooth`` and ``log_y``,
    for :func:`otviz.figures.training_curves` / :func:`otviz.figures.accuracy_curves`.
    """
    row = st.container(horizontal=True, vertical_alignment="bottom", gap="medium")
    out: dict[str, Any] = {}
    x = row.segmented_control(
        "X axis", list(X_LABELS), default=x_default, required=True, format_func=X_LABELS.get,
        key=f"{prefix}_x", help="Optimisation step, epoch (per-step values averaged over the "
                                "epoch), or wall time since the run's first metric.")
    out["x"] = x or x_default
    if smoothing:
        out["smooth"] = float(row.select_slider(
            "Smoothing", SMOOTHING, value=smooth_default, key=f"{prefix}_smooth",
            format_func=lambda w: "off" if w == 0 else f"{w:g}", width=260,
            help="Weight w of an exponential moving average, as in TensorBoard (0: raw "
                 "values). The raw values stay as a faint line; accuracies are evaluations, "
                 "never smoothed."))
    if log:
        out["log_y"] = bool(row.toggle(
            "Log scale", value=False, key=f"{prefix}_log",
            help="Logarithmic y axis for the loss and distance panels (accuracies keep "
                 "0-100 %, scores their 0-based axis)."))
    return out


CARD_WIDTH = 440
"""Narrowest a curve card gets, in px: two side by side sharing a 1400 px window, one per row
filling an 800 px one."""


def curve_cards(metrics: pd.DataFrame, keys: list[str], *, config: dict[str, Any],
                options: dict[str, Any], key: str, height: int = 330) -> None:
    """One figure per panel of :func:`otviz.figures.training_curves`, as cards that wrap.

    Like TensorBoard's cards: each tag family (each loss term) gets a chart, as many per row
    as fit at :data:`CARD_WIDTH` px or more, sharing the row's whole width
    (:func:`dashkit.cells`), so no chart gets narrower than the card on a narrow window and
    none leaves the page's width unused on a wide one.
    """
    import dashkit as dk
    from otviz import figures

    groups = figures.metric_panels(keys)
    if not groups:
        return
    for group, cell in zip(groups, dk.cells(len(groups), key, min_width=CARD_WIDTH, gap="small")):
        with cell:
            fig = figures.training_curves(metrics, group, config=config, height=height, **options)
            dk.chart(fig, key=f"{key}_{'_'.join(group)}", legend_below=len(group) > 1)


# --------------------------------------------------------------------------- identical runs
def resolved_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """``config`` with every default the trainer fills in, or None if it is not a valid one.

    Defaults come from :class:`otviz.train.TrainConfig`, and the setting's labels per class
    and student width from :data:`otviz.data.SETTINGS` (what the stored config records).
    """
    from otviz.data import SETTINGS
    from otviz.train import TrainConfig

    try:
        full = TrainConfig.from_dict(config).to_dict()
    except (TypeError, ValueError):
        return None
    spec = SETTINGS.get(full.get("setting"))
    if spec is not None:
        if full.get("k") is None:
            full["k"] = spec.default_k
        if full.get("student_width") is None:
            full["student_width"] = spec.student_width
    return full


def identical_runs(runs: pd.DataFrame, config: dict[str, Any]) -> list[int]:
    """Run ids of the store trained with the same resolved configuration (name aside)."""
    from otviz.runs import matching_runs

    if runs is None or runs.empty:
        return []
    full = resolved_config(config)
    if full is None:  # the launch itself reports what is wrong with it
        return []
    return matching_runs(runs, full, ignore=("name", "num_threads", "device"))
