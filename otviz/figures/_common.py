"""Shared conventions and input validation of the figure builders."""

from __future__ import annotations

import sys

import numbers
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import plotly.graph_objects as go


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

if TYPE_CHECKING:  # the figures import no torch until an Alignment reaches them
    from otviz.transport import Alignment


def _is_alignment(obj: Any) -> bool:
    """Whether ``obj`` is an :class:`otviz.transport.Alignment` (without importing torch for a plain array)."""
    transport = sys.modules.get("otviz.transport")
    return transport is not None and isinstance(obj, transport.Alignment)


PlanLike = Union[np.ndarray, "Alignment", Any]
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
    if _is_alignment(plan):
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
    from otviz.matching import nonnegative_mass

    return nonnegative_mass(P, name)


def _plan_and_weights(plan_or_alignment: Any) -> tuple[np.ndarray, np.ndarray | None,
                                                        np.ndarray | None, Alignment | None]:
    if _is_alignment(plan_or_alignment):
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


_SUB_LINE = 64          # characters per subtitle line: fits a figure 440 px wide (plotly never wraps)


def _wrap(text: str, width: int = _SUB_LINE) -> list[str]:
    """Break a subtitle into lines of at most ``width`` characters: between its ``"; "``-separated
    clauses where it can (a clause such as "NOT converged after 200 iterations" stays on one
    line), at spaces inside a clause longer than a line."""
    if "<br>" in text:  # explicit breaks first, then each part wrapped
        return [line for part in text.split("<br>") for line in _wrap(part, width)]
    lines: list[str] = []
    for clause in text.split("; "):
        words = clause.split(" ")
        if lines and len(lines[-1]) + 2 + len(clause) <= width:
            lines[-1] += "; " + clause
            continue
        if lines:
            lines[-1] += ";"
        lines.append(words[0])
        for word in words[1:]:
            if len(lines[-1]) + 1 + len(word) <= width:
                lines[-1] += " " + word
            else:
                lines.append(word)
    return lines


def _title(text: str | None, sub: str | None = None) -> dict:
    if text is None:
        return {}
    if sub:
        text = f"{text}<br>" + "<br>".join(f"<sup>{line}</sup>" for line in _wrap(sub))
    return dict(text=text, x=0.02, xanchor="left")


def _finish(fig: go.Figure, title: str | None, sub: str | None = None, **layout: Any) -> go.Figure:
    extra = 22 * (len(_wrap(sub)) - 1) if title and sub else 0   # room for a wrapped subtitle
    # subplot titles sit just above the plotting area: keep them clear of the subtitle
    if title and any(getattr(a, "yref", None) == "paper" and (a.y or 0) >= 0.99
                     for a in fig.layout.annotations):
        extra += 30
    fig.update_layout(template=TEMPLATE, title=_title(title, sub),
                      margin=dict(l=60, r=30, t=(80 if title else 30) + extra, b=55),
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
