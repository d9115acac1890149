"""Figures of the OT lab's latent transport (:mod:`otviz.lab.latent`).

The builders take the results of :func:`otviz.lab.latent.class_transport` and
:func:`otviz.lab.latent.push_prior` (read through their attributes: this module
imports neither torch nor the lab) and the VAE's codes and labels as arrays:

- :func:`latent_class_plan`: the codes of every class, the two chosen classes in
  colour, the OT matching (or a random pairing) as segments;
- :func:`latent_path_grid`: decoded images along the paths, one row a pair, one
  column a time;
- :func:`latent_closeness`: a measure of closeness to the data along the paths,
  as a function of t;
- :func:`latent_prior_plan`, :func:`latent_image_grid`, :func:`latent_prior_closeness`:
  the same for prior samples pushed onto the codes;
- :func:`latent_training_curve`: the VAE's ELBO per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from otviz.figures._common import STUDENT_COLOR, TEACHER_COLOR, _check_points, _finish, _to_numpy

__all__ = [
    "PATH_COLORS",
    "latent_class_plan",
    "latent_closeness",
    "latent_image_grid",
    "latent_path_grid",
    "latent_prior_closeness",
    "latent_prior_plan",
    "latent_training_curve",
]

#: colour of each path family of :func:`otviz.lab.latent.class_transport`
PATH_COLORS = {"ot": "#2f6db5", "random": "#e4572e", "means": "#6a6a6a", "pixels": "#9c6ade"}
PATH_NAMES = {"ot": "latent, OT pairs", "random": "latent, random pairs",
              "means": "latent, class mean to class mean", "pixels": "pixels, OT pairs (cross-fade)"}
PATH_DASH = {"ot": "solid", "random": "dash", "means": "dot", "pixels": "dashdot"}
#: ten class colours (Plotly's D3 palette) for the all-class pictures
CLASS_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
OTHER_CODES = "#c9c9c9"
AXIS = {"pixel": "distance to the data (RMS pixel)", "code": "distance to the codes (latent)"}
MEASURES = {
    "pixel": ("RMS pixel distance to the nearest held-out digit", "pixel_distance"),
    "code": ("latent distance to the 10th nearest code", "code_distance"),
}
SHORT = {"ot": "OT pairs", "random": "random", "means": "means", "pixels": "cross-fade"}


# --------------------------------------------------------------------------- helpers
class _Projection:
    """The identity for 2-D codes, else the first two principal axes of the codes."""

    def __init__(self, codes: np.ndarray):
        self.dim = codes.shape[1]
        if self.dim == 2:
            self.mean, self.axes, self.labels = np.zeros(2), np.eye(2), ("latent z1", "latent z2")
            return
        if self.dim == 1:
            raise ValueError("1-D codes cannot be drawn as a plane; train with latent_dim >= 2")
        self.mean = codes.mean(0)
        _, s, vt = np.linalg.svd(codes - self.mean, full_matrices=False)
        self.axes = vt[:2].T
        share = s[:2] ** 2 / (s ** 2).sum()
        self.labels = tuple(f"principal axis {i + 1} of the codes ({100 * v:.0f}% of variance)"
                            for i, v in enumerate(share))

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        return (Z - self.mean) @ self.axes


def _codes_labels(codes: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    C = _check_points(codes, "codes")
    y = np.asarray(labels)
    if y.shape != (len(C),):
        raise ValueError(f"labels must have one entry per code ({len(C)}), got shape {y.shape}")
    return C, y.astype(int)


def _segments(A: np.ndarray, B: np.ndarray) -> tuple[list, list]:
    xs: list = []
    ys: list = []
    for (x0, y0), (x1, y1) in zip(A, B):
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    return xs, ys


def _background(fig: go.Figure, P: np.ndarray, y: np.ndarray, skip: Sequence[int] = ()) -> None:
    keep = ~np.isin(y, list(skip))
    fig.add_trace(go.Scattergl(
        x=P[keep, 0], y=P[keep, 1], mode="markers", name="codes of the other digits",
        marker=dict(color=OTHER_CODES, size=4), text=[f"code of a {c}" for c in y[keep]],
        hoverinfo="text"))


def _class_labels(fig: go.Figure, P: np.ndarray, y: np.ndarray, colors: dict[int, str]) -> None:
    """The digit written at the mean code of each class."""
    for cls in np.unique(y):
        m = P[y == cls].mean(0)
        fig.add_annotation(x=m[0], y=m[1], text=f"<b>{cls}</b>", showarrow=False,
                           font=dict(size=15, color=colors.get(int(cls), "#8a8a8a")),
                           bgcolor="rgba(255,255,255,0.7)")


def _square(fig: go.Figure, proj: _Projection) -> None:
    fig.update_xaxes(title=proj.labels[0], zeroline=False)
    fig.update_yaxes(title=proj.labels[1], zeroline=False, scaleanchor="x", scaleratio=1)


# --------------------------------------------------------------------------- (a) classes
def latent_class_plan(codes: Any, labels: Any, transport: Any, *, pairing: str = "ot",
                      title: str | None = None, height: int | None = 520) -> go.Figure:
    """The codes in the latent plane and the pairs of ``transport`` as segments.

    Parameters
    ----------
    codes, labels : arrays (N, d) and (N,)
        The VAE's codes of its training images and their digits (``vae.codes``,
        ``vae.labels``). Codes of more than two dimensions are drawn on their first
        two principal axes (the axis titles say so).
    transport : ClassTransport
        From :func:`otviz.lab.latent.class_transport`.
    pairing : {"ot", "random"}
        Which pairing to draw: the exact OT matching or the random one.
    """
    if pairing not in ("ot", "random"):
        raise ValueError(f"pairing must be 'ot' (the exact plan) or 'random', got {pairing!r}")
    C, y = _codes_labels(codes, labels)
    proj = _Projection(C)
    P = proj(C)
    X = proj(np.asarray(transport.source_codes, float))
    Y = proj(np.asarray(transport.target_codes, float))
    match = np.asarray(transport.match if pairing == "ot" else transport.random_match)
    s, t = int(transport.source), int(transport.target)
    fig = go.Figure()
    _background(fig, P, y)
    for cls, col in ((s, TEACHER_COLOR), (t, STUDENT_COLOR)):
        Q = P[y == cls]
        fig.add_trace(go.Scattergl(x=Q[:, 0], y=Q[:, 1], mode="markers", name=f"codes of the {cls}s",
                                   marker=dict(color=col, size=4, opacity=0.25), hoverinfo="skip"))
    xs, ys = _segments(X, Y[match])
    name = "OT matching" if pairing == "ot" else "random pairing"
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip",
                             line=dict(color="rgba(40,40,40,0.55)", width=1.2,
                                       dash="solid" if pairing == "ot" else "dash")))
    n = len(X)
    for pts, cls, col, sym, other in ((X, s, TEACHER_COLOR, "circle", Y[match]),
                                      (Y, t, STUDENT_COLOR, "diamond", None)):
        fig.add_trace(go.Scatter(
            x=pts[:, 0], y=pts[:, 1], mode="markers", name=f"the {n} drawn {cls}s",
            marker=dict(color=col, symbol=sym, size=8, line=dict(width=1, color="white")),
            text=[f"{cls} number {i}" for i in range(n)], hoverinfo="text"))
    _class_labels(fig, P, y, {s: TEACHER_COLOR, t: STUDENT_COLOR})
    lengths = np.linalg.norm(np.asarray(transport.source_codes) - np.asarray(transport.target_codes)[match],
                             axis=1)
    sub = (f"{n} pairs from {s} to {t}, mean squared latent length {np.mean(lengths ** 2):.3g}"
           + (" (= W2² of the two sets)" if pairing == "ot" else " (OT: at most this)"))
    if title is None:
        title = (f"Which {s} goes to which {t}: the exact OT plan" if pairing == "ot"
                 else f"The same {s}s and {t}s paired at random")
    _square(fig, proj)
    return _finish(fig, title, sub, height=height,
                   legend=dict(orientation="h", yanchor="top", y=-0.15, x=0, xanchor="left"))


def _mosaic(images: np.ndarray, gap: int = 1) -> np.ndarray:
    rows, cols, h, w = images.shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for i in range(rows):
        for j in range(cols):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = images[i, j]
    return out


def latent_image_grid(images: Any, *, row_labels: Sequence[str] | None = None,
                      col_labels: Sequence[str] | None = None, title: str | None = None,
                      sub: str | None = None, x_title: str | None = None,
                      height: int | None = None) -> go.Figure:
    """A grid of 8x8 grey images (ink dark on white, pixels in [0, 1]).

    ``images`` has shape (rows, cols, 8, 8); ``row_labels`` and ``col_labels`` name
    the rows and columns (tick labels at their centres).
    """
    arr = _to_numpy(images, "images")
    if arr.ndim != 4 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"images must have shape (rows, cols, h, w), got {arr.shape}")
    rows, cols, h, w = arr.shape
    Z = _mosaic(np.clip(arr, 0.0, 1.0))
    fig = go.Figure(go.Heatmap(z=Z, colorscale="Greys", zmin=0.0, zmax=1.0, showscale=False,
                               hovertemplate="pixel value %{z:.2f}<extra></extra>"))
    xt = [j * (w + 1) + (w - 1) / 2 for j in range(cols)]
    yt = [i * (h + 1) + (h - 1) / 2 for i in range(rows)]
    fig.update_xaxes(tickvals=xt, ticktext=list(col_labels) if col_labels is not None else None,
                     showticklabels=col_labels is not None, showgrid=False, zeroline=False,
                     title=x_title, side="bottom", constrain="domain")
    fig.update_yaxes(tickvals=yt, ticktext=list(row_labels) if row_labels is not None else None,
                     showticklabels=row_labels is not None, showgrid=False, zeroline=False,
                     autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain")
    if height is None:
        height = int(min(760, max(280, 150 + 48 * rows)))
    return _finish(fig, title, sub, height=height)


def latent_path_grid(transport: Any, path: str = "ot", *, rows: int = 6, title: str | None = None,
                     height: int | None = None) -> go.Figure:
    """Decoded images along one family of paths: a row per pair, a column per time t.

    ``path`` is ``"ot"``, ``"random"``, ``"means"`` (one row) or ``"pixels"`` (the
    cross-fade of the OT pairs); the first ``rows`` pairs are shown (the same source
    codes in every family, so rows can be compared across figures).
    """
    if path not in transport.images:
        raise ValueError(f"path must be one of {sorted(transport.images)}, got {path!r}")
    imgs = np.asarray(transport.images[path])          # (steps, n, 8, 8)
    n = imgs.shape[1]
    rows = max(1, min(int(rows), n))
    grid = np.transpose(imgs[:, :rows], (1, 0, 2, 3))
    t = np.asarray(transport.t)
    d = np.asarray(transport.pixel_distance[path])[:, :rows]
    inner = (t > 0) & (t < 1)
    mean_d = float(d[inner].mean()) if inner.any() else float(d.mean())
    row_labels = (["class means"] if path == "means" and n == 1 else
                  [f"pair {i + 1}" for i in range(rows)])
    if title is None:
        name = PATH_NAMES.get(path, path)
        title = name[:1].upper() + name[1:]
    sub = f"mean distance to the data (0 < t < 1): {mean_d:.3f}"
    return latent_image_grid(grid, row_labels=row_labels, col_labels=[f"{v:.2g}" for v in t],
                             title=title, sub=sub, x_title="t (0 = the source digit, 1 = its partner)",
                             height=height)


def _band(fig: go.Figure, x: np.ndarray, values: np.ndarray, *, name: str, color: str,
          dash: str = "solid", unit: str = "") -> None:
    """Mean over the columns of ``values`` (shape (len(x), n)) with its 25-75 % band."""
    mean = values.mean(1)
    if values.shape[1] > 1:
        lo, hi = np.percentile(values, 25, axis=1), np.percentile(values, 75, axis=1)
        fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[hi, lo[::-1]], fill="toself",
                                 fillcolor=color, opacity=0.12, line=dict(width=0), mode="lines",
                                 hoverinfo="skip", showlegend=False, legendgroup=name))
    fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=name, legendgroup=name,
                             line=dict(color=color, width=2, dash=dash), marker=dict(size=5),
                             hovertemplate=f"{name}<br>t = %{{x:.2f}}<br>mean %{{y:.4f}}{unit}"
                                           f"<extra></extra>"))


def latent_closeness(transport: Any, measure: str = "pixel", *,
                     paths: Sequence[str] = ("ot", "random", "means", "pixels"),
                     title: str | None = None, height: int | None = 420) -> go.Figure:
    """A measure of closeness to the data along each family of paths, against t.

    ``measure`` is ``"pixel"`` (:func:`otviz.lab.latent.distance_to_data` of the
    images) or ``"code"`` (:func:`otviz.lab.latent.code_distance` of the latent
    points; the cross-fade has none). Lines: the mean over the pairs; bands: their
    25-75 % range. Lower is closer to the data.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {sorted(MEASURES)}, got {measure!r}")
    _, attr = MEASURES[measure]
    table = getattr(transport, attr)
    t = np.asarray(transport.t, float)
    fig = go.Figure()
    summary = []
    inner = (t > 0) & (t < 1)
    for path in paths:
        if path not in table:
            continue
        v = np.asarray(table[path], float)
        _band(fig, t, v, name=PATH_NAMES.get(path, path), color=PATH_COLORS.get(path, "#333"),
              dash=PATH_DASH.get(path, "solid"))
        summary.append(f"{SHORT.get(path, path)} {v[inner].mean() if inner.any() else v.mean():.3f}")
    fig.update_xaxes(title="t (0 = source class, 1 = target class)", range=[-0.02, 1.02])
    fig.update_yaxes(title=AXIS[measure])
    if title is None:
        title = ("How far the decoded images are from real digits" if measure == "pixel"
                 else "How far the latent points are from the codes")
    sub = "mean over 0 < t < 1, lower is closer: " + ", ".join(summary)
    return _finish(fig, title, sub, height=height,
                   legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, xanchor="left"))


# --------------------------------------------------------------------------- (b) prior
def latent_prior_plan(codes: Any, labels: Any, transport: Any, *, title: str | None = None,
                      height: int | None = 520) -> go.Figure:
    """Prior samples, the codes, and where the OT plan's barycentric map sends each sample.

    ``transport`` is a PriorTransport from :func:`otviz.lab.latent.push_prior`.
    Codes of more than two dimensions are drawn on their first two principal axes.
    """
    C, y = _codes_labels(codes, labels)
    proj = _Projection(C)
    P = proj(C)
    Z = proj(np.asarray(transport.prior, float))
    T = proj(np.asarray(transport.pushed, float))
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=P[:, 0], y=P[:, 1], mode="markers", name="codes (colour = digit)",
                               marker=dict(color=[CLASS_COLORS[int(c) % 10] for c in y], size=4,
                                           opacity=0.45),
                               text=[f"code of a {c}" for c in y], hoverinfo="text"))
    _class_labels(fig, P, y, {int(c): CLASS_COLORS[int(c) % 10] for c in np.unique(y)})
    xs, ys = _segments(Z, T)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="sample -> pushed point",
                             line=dict(color="rgba(30,30,30,0.45)", width=1), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=Z[:, 0], y=Z[:, 1], mode="markers", name="prior samples z ~ N(0, I)",
                             marker=dict(symbol="x", color="#222", size=7),
                             text=[f"prior sample {i}" for i in range(len(Z))], hoverinfo="text"))
    fig.add_trace(go.Scatter(x=T[:, 0], y=T[:, 1], mode="markers", name="pushed by the OT plan",
                             marker=dict(symbol="circle-open", color="#222", size=8, line=dict(width=2)),
                             text=[f"pushed sample {i}" for i in range(len(T))], hoverinfo="text"))
    n, N = len(Z), len(C)
    al = transport.alignment
    sub = (f"{n} prior samples to {N} codes by the exact plan (W2² = {al.distance:.3g}), "
           f"each moved to the mean of the ~{N / n:.0f} codes it is sent to")
    _square(fig, proj)
    return _finish(fig, title or "Prior samples pushed onto the codes", sub, height=height,
                   legend=dict(orientation="h", yanchor="top", y=-0.15, x=0, xanchor="left"))


def latent_prior_closeness(transport: Any, measure: str = "pixel", *, title: str | None = None,
                           height: int | None = 400) -> go.Figure:
    """The measure along the segments from each prior sample (t = 0) to its pushed point (t = 1).

    For ``measure="pixel"`` a horizontal line marks the decoded codes of training
    images (the aggregated posterior itself).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {sorted(MEASURES)}, got {measure!r}")
    label, _ = MEASURES[measure]
    v = np.asarray(transport.path_pixel_distance if measure == "pixel" else transport.path_code_distance,
                   float)
    t = np.asarray(transport.t, float)
    fig = go.Figure()
    _band(fig, t, v, name="prior sample -> pushed point", color=PATH_COLORS["ot"])
    if measure == "pixel":
        ref = float(np.mean(transport.reference_pixel_distance))
        fig.add_hline(y=ref, line=dict(color="#6a6a6a", dash="dot"),
                      annotation_text=f"decoded codes of training images: {ref:.3f}",
                      annotation_position="top left")
    fig.update_xaxes(title="t (0 = raw prior sample, 1 = pushed by the OT plan)", range=[-0.02, 1.02])
    fig.update_yaxes(title=AXIS[measure])
    sub = f"{label}; lower is closer: raw {v[0].mean():.3f}, pushed {v[-1].mean():.3f}"
    if title is None:
        title = ("Decoded samples: raw prior vs pushed" if measure == "pixel"
                 else "Latent samples: raw prior vs pushed")
    return _finish(fig, title, sub, height=height, showlegend=False)


def latent_training_curve(history: dict, *, title: str | None = None, height: int | None = 340
                          ) -> go.Figure:
    """The VAE's ELBO (nats per image, higher is better) per epoch, training and held-out."""
    fig = go.Figure()
    train = np.asarray(history.get("train_elbo", []), float)
    test = np.asarray(history.get("test_elbo", []), float)
    if len(train):
        fig.add_trace(go.Scatter(x=np.arange(1, len(train) + 1), y=train, mode="lines",
                                 name="training (minibatches as seen)",
                                 line=dict(color=TEACHER_COLOR, width=2)))
    if len(test):
        fig.add_trace(go.Scatter(x=np.arange(len(test)), y=test, mode="lines",
                                 name="held-out (fixed noise)", line=dict(color=STUDENT_COLOR, width=2)))
    fig.update_xaxes(title="epoch (0 = before training)")
    fig.update_yaxes(title="ELBO, nats per image")
    sub = (f"held-out ELBO {test[0]:.1f} before training, {test[-1]:.1f} after"
           if len(test) else None)
    return _finish(fig, title or "Training the VAE", sub, height=height,
                   legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, xanchor="left"))
