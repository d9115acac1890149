r"""Optimal transport between two layers seen as sets of neurons.

A layer of :math:`m` neurons, each seen through its responses to the same
probe inputs, is a point cloud :math:`t_1, \dots, t_m \in \mathbb{R}^d`; it is
identified with the discrete distribution
:math:`\mu_T = \sum_i a_i \delta_{t_i}` (uniform weights by default). For a
teacher layer :math:`\mu_T` and a student layer
:math:`\mu_S = \sum_j b_j \delta_{s_j}` of possibly different width :math:`k`,

.. math::
    \mathrm{OT}(\mu_T, \mu_S) = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\, c(t_i, s_j),
    \qquad U(a, b) = \{P \ge 0 : P\mathbf{1} = a,\ P^\top \mathbf{1} = b\}.

The value does not change when the neurons of either layer are permuted, and
no adapter between the widths is needed.

Functions
---------
:func:`cost_matrix`
    :math:`C_{ij} = c(t_i, s_j)` after an optional per-neuron normalisation.
:func:`align`
    Solves the problem (exact, entropic or unbalanced) and returns an
    :class:`Alignment`: plan, distance, matching, convergence information.
:func:`ot_distance`
    The same distance as a differentiable torch scalar, for use as a
    training regulariser.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, Union

import numpy as np
from otviz._lazy import pot as ot  # POT loads on first use (it takes seconds)
import torch
from otviz._lazy import linear_sum_assignment

from otviz._sinkhorn import sinkhorn_solve, sinkhorn_solve_torch

__all__ = [
    "Alignment",
    "COSTS",
    "METHODS",
    "NORMALIZATIONS",
    "align",
    "compute_dtype",
    "cost_matrix",
    "eps_scale",
    "normalize_neurons",
    "ot_distance",
]

ArrayLike = Union[np.ndarray, torch.Tensor]
CostName = Literal["sqeuclidean", "euclidean", "cosine", "correlation"]
NormName = Literal["center", "standardize", "unit", "layer"]
MethodName = Literal["emd", "sinkhorn", "unbalanced"]

COSTS: dict[str, str] = {
    "sqeuclidean": "squared Euclidean distance ||t - s||^2 (the default; OT is then W2^2)",
    "euclidean": "Euclidean distance ||t - s|| (OT is then W1)",
    "cosine": "1 - cosine similarity of the two response vectors",
    "correlation": "1 - Pearson correlation of the two response vectors",
}
NORMALIZATIONS: dict[str | None, str] = {
    None: "no normalisation",
    "center": "subtract each neuron's mean response",
    "standardize": "center, then divide by each neuron's standard deviation",
    "unit": "divide each neuron's response vector by its Euclidean norm",
    "layer": "center each neuron, then divide the whole layer by its root-mean-square response "
             "(one scale per layer: the geometry of the OT score)",
}
METHODS: dict[str, str] = {
    "emd": "exact OT (network simplex, POT's ot.emd)",
    "sinkhorn": "entropic OT, stabilised Sinkhorn with eps-scaling and warm starts",
    "unbalanced": "entropic OT with KL-relaxed marginals (mass may be created or destroyed)",
}
DEFAULT_EPS = 1e-2
_NORM_WORDS = {None: "raw", "center": "centred", "standardize": "standardised", "unit": "unit-norm",
               "layer": "layer-scaled"}
_ZERO_TOL = 1e-12


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def _choice_error(kind: str, value: Any, choices: Sequence[Any]) -> ValueError:
    listed = ", ".join(repr(c) for c in choices)
    return ValueError(f"unknown {kind} {value!r}; valid choices are {listed}")


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor of shape (neurons, features), "
            f"got {type(x).__name__}; use otviz.neurons(activation) to build one")
    if t.dtype.is_complex or t.dtype == torch.bool or not (t.dtype.is_floating_point or
                                                             t.dtype in (torch.int8, torch.int16,
                                                                         torch.int32, torch.int64,
                                                                         torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if not t.dtype.is_floating_point:
        t = t.to(torch.float64)
    return t


def _nonfinite_error(name: str, x: ArrayLike) -> ValueError:
    if isinstance(x, torch.Tensor):
        bad = (~torch.isfinite(x.detach())).any(dim=1).nonzero().flatten()[:5].tolist()
    else:
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))[:5].tolist()
    return ValueError(
        f"{name} activations contain NaN or infinite values (neurons {bad}...); "
        f"check the model and inputs for overflow before aligning")


def _all_finite(x: ArrayLike) -> bool:
    """Whether every entry of ``x`` is finite; on the CPU through numpy (one pass, one thread:
    torch's parallel ``isfinite().all()`` can take 30x longer on a busy machine)."""
    if isinstance(x, np.ndarray):
        return bool(np.isfinite(x).all())
    x = x.detach()
    if x.device.type == "cpu" and x.dtype in (torch.float64, torch.float32, torch.float16):
        try:
            v = x.numpy()
        except (RuntimeError, TypeError):
            pass
        else:
            return bool(np.isfinite(v).all())
    return bool(torch.isfinite(x).all())


def _check_neurons(teacher: ArrayLike, student: ArrayLike, *, finite: bool = True) -> None:
    """Shapes (and, unless ``finite=False``, finiteness: the caller then checks it)."""
    for name, x in (("teacher", teacher), ("student", student)):
        if x.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D matrix of shape (neurons, features), got shape "
                f"{tuple(x.shape)}; turn a layer's activation into one with "
                f"otviz.neurons(activation)")
        if x.shape[0] == 0:
            raise ValueError(f"{name} layer is empty (0 neurons); pass a layer with at least one neuron")
        if x.shape[1] == 0:
            raise ValueError(f"{name} neurons have 0 features; feed at least one probe input")
        if finite and not _all_finite(x):
            raise _nonfinite_error(name, x)
    if teacher.shape[1] != student.shape[1]:
        raise ValueError(
            f"teacher neurons have {teacher.shape[1]} features but student neurons have "
            f"{student.shape[1]}: both layers must be seen through the same probe inputs. "
            f"Feed both models the same batch, and for conv maps of different sizes use "
            f"otviz.neurons(..., size=(h, w)) or spatial='mean'")


def _check_weights(w: Any, n: int, name: str, *, normalise: bool, what: str = "neuron") -> np.ndarray:
    """Weights of ``n`` ``what``s (uniform when ``w`` is None): finite, non-negative, not all 0;
    ``normalise`` renormalises them to sum to 1, with a warning when they did not."""
    if w is None:
        return np.full(n, 1.0 / n)
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().numpy()
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one weight per {what}), got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or infinite weights; pass finite non-negative weights")
    if (w < 0).any():
        raise ValueError(f"{name} has negative weights (e.g. index {int(np.argmin(w))}); "
                         f"{what} weights must be non-negative")
    total = float(w.sum())
    if total <= 0:
        raise ValueError(f"{name} sums to 0; at least one {what} needs a positive weight")
    if normalise and abs(total - 1.0) > 1e-6:
        warnings.warn(f"{name} sums to {total:.6g}, not 1; renormalising it to a probability vector",
                      UserWarning, stacklevel=3)
        w = w / total
    return w


def _check_eps(eps: Any, method: str) -> float | None:
    if method == "emd":
        if eps is not None:
            warnings.warn("eps is ignored by method='emd' (exact OT has no regularisation); "
                          "use method='sinkhorn' for entropic OT", UserWarning, stacklevel=3)
        return None
    if eps is None:
        return DEFAULT_EPS
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a positive number, got {eps!r}") from None
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number (relative to the cost scale, "
                         f"e.g. 1e-2), got {eps}")
    return eps


# --------------------------------------------------------------------------
# cost matrices
# --------------------------------------------------------------------------
def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype otviz computes costs in for these tensors, whatever their own dtype.

    float64 on the CPU; on other devices float32, or float64 if an input is
    float64. bfloat16 and float16 inputs (and autocast) are never computed
    in: their 8 or 11 significant bits turn the cost of two close neurons,
    a difference of large numbers, into 0.
    """
    if all(t.device.type == "cpu" for t in tensors):
        return torch.float64
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _no_autocast(device: torch.device):
    """A context that turns autocast off on ``device`` (matmuls stay in the tensors' dtype)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        return contextlib.nullcontext()


def _pow2(x: float) -> float:
    """The largest power of two <= ``x`` (> 0): dividing by it is exact."""
    return math.ldexp(1.0, math.frexp(x)[1] - 1)


def _row_prescale(t: torch.Tensor) -> torch.Tensor:
    """Divide each row by a power of two near its largest magnitude (a constant: no gradient).

    Standardisation and unit norm do not depend on a neuron's scale; taking
    it out first keeps the squares of huge (>= 1e19 in float32) or tiny
    responses from overflowing or underflowing.
    """
    amax = t.detach().abs().amax(dim=1, keepdim=True)
    tiny = torch.finfo(t.dtype).tiny
    e = torch.frexp(amax.clamp_min(tiny))[1]
    return t * torch.ldexp(torch.ones_like(amax), -e)


def normalize_neurons(x: ArrayLike, how: NormName | None, *, name: str = "neurons") -> ArrayLike:
    r"""Normalise each neuron (row) of ``x``.

    ``"center"``: :math:`x_i - \bar x_i`; ``"standardize"``:
    :math:`(x_i - \bar x_i)/\sigma_i`; ``"unit"``: :math:`x_i / \|x_i\|_2`;
    ``"layer"``: :math:`(x_i - \bar x_i)/\sigma` with
    :math:`\sigma^2 = \frac{1}{md}\sum_i \|x_i - \bar x_i\|^2` one scale for the
    whole layer (the geometry of :attr:`Alignment.score`); ``None``:
    unchanged. The mean and standard deviation are taken over the features
    (the probe responses) of each neuron. A neuron with zero variance
    (``"standardize"``) or zero norm (``"unit"``) has no direction and raises
    ``ValueError``; ``"layer"`` keeps such a neuron (it becomes the zero
    vector) and raises only when every neuron of the layer is constant.

    The result is computed in :func:`compute_dtype` (float64 on the CPU,
    float32 at least elsewhere) with autocast off, and the scale of each
    neuron (of the layer for ``"layer"``) is divided out before squaring,
    so bfloat16/float16 inputs and responses of any magnitude normalise as
    well as float64 ones; gradients flow back to ``x`` in its own dtype.
    A numpy input gives a float64 numpy result.
    """
    if how not in NORMALIZATIONS:
        raise _choice_error("normalize", how, list(NORMALIZATIONS))
    is_np = isinstance(x, np.ndarray)
    t = _as_tensor(x, name)
    with _no_autocast(t.device):
        out = _normalize(t.to(compute_dtype(t)), how, name)
    return out.numpy() if is_np else out


def _normalize(t: torch.Tensor, how: str | None, name: str) -> torch.Tensor:
    if how is None:
        return t
    if how == "center":
        return t - t.mean(dim=1, keepdim=True)
    if how == "standardize":
        t = _row_prescale(t)
        c = t - t.mean(dim=1, keepdim=True)
        sd = c.pow(2).mean(dim=1, keepdim=True).sqrt()
        _check_nonzero(sd, t, name, "a constant response (zero variance)",
                       "drop dead neurons or use normalize='center' or None")
        return c / sd
    if how == "layer":
        amax = float(t.detach().abs().max())
        if amax > 0:
            t = t / _pow2(amax)
        c = t - t.mean(dim=1, keepdim=True)
        sd = c.pow(2).mean().sqrt()
        # the layer is now of magnitude 1..2: a relative test of its variance
        if not (amax > 0 and bool(sd.detach() > _ZERO_TOL)):
            raise ValueError(f"all {t.shape[0]} {name} neurons have a constant response (zero "
                             f"variance), so normalize='layer' (the geometry of the OT score) is "
                             f"undefined; feed more varied probe inputs or pick a layer whose "
                             f"neurons vary; the raw cost (normalize=None, measure='ot-raw') is "
                             f"still defined")
        return c / sd
    # unit
    t = _row_prescale(t)
    nrm = t.norm(dim=1, keepdim=True)
    _check_nonzero(nrm, t, name, "an all-zero response (zero norm)",
                   "drop dead neurons or use normalize=None")
    return t / nrm


def _check_nonzero(v: ArrayLike, x: ArrayLike, name: str, what: str, fix: str) -> None:
    if isinstance(x, np.ndarray):
        scale = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1.0)
        bad = (v <= _ZERO_TOL * scale).ravel()
        idx = np.flatnonzero(bad)[:5].tolist() if bad.any() else []
    else:
        scale = x.detach().abs().amax(dim=1, keepdim=True).clamp_min(1.0)
        bad = (v.detach() <= _ZERO_TOL * scale).flatten()
        idx = bad.nonzero().flatten()[:5].tolist() if bool(bad.any()) else []
    if idx:
        raise ValueError(f"{name} neuron(s) {idx} have {what}, so the requested "
                         f"normalisation/cost is undefined for them; {fix} (remove them with "
                         "otviz.capture's dead_neurons(matrix), acts.neurons(layer, drop_dead=True) "
                         "or layer_distances(..., drop_dead=True))")


#: Entries per block of the blocked passes over an m x k matrix (512 KiB of float64).
_BLOCK = 1 << 16

#: Largest number of (neuron, neuron, feature) products one refinement chunk holds.
_REFINE_CHUNK = 1 << 22


def _sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`\|x_i - y_j\|^2`, accurate to a few ulps.

    The Gram form :math:`\|x\|^2 + \|y\|^2 - 2\langle x, y\rangle` is a matrix
    product (fast) but loses every digit of a small distance between two large
    vectors. Both clouds are first shifted by their common mean (a translation:
    distances do not change), then the entries whose Gram value is below the
    formula's rounding error times :math:`1/\rho` (:math:`\rho` = 1e-6 in
    float64, about 1e-4 in float32) are recomputed from the differences
    :math:`x_i - y_j` themselves, in chunks. Gradients are exact (the shift is
    a constant).
    """
    d = x.shape[1]
    shift = (x.detach().sum(dim=0) + y.detach().sum(dim=0)) / (x.shape[0] + y.shape[0])
    x, y = x - shift, y - shift
    nn = x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :]
    C = torch.addmm(nn, x, y.T, alpha=-2.0).clamp_min(0.0)
    feps = torch.finfo(x.dtype).eps
    rho = max(1e-6, 1e3 * feps)
    thr = min(0.25, 2.0 * feps * math.sqrt(d) / rho)
    idx = (C.detach() <= thr * nn.detach()).nonzero()
    if idx.shape[0]:
        step = max(1, _REFINE_CHUNK // max(d, 1))
        exact = torch.cat([(x[idx[c:c + step, 0]] - y[idx[c:c + step, 1]]).pow(2).sum(1)
                           for c in range(0, idx.shape[0], step)])
        C = C.index_put((idx[:, 0], idx[:, 1]), exact)
    return C


def _safe_sqrt(C: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not NaN or inf) at 0."""
    pos = C > 0
    return torch.where(pos, torch.where(pos, C, torch.ones_like(C)).sqrt(), torch.zeros_like(C))


def _overflow_error(cost: str, amax: float) -> ValueError:
    return ValueError(
        f"the {cost} cost overflows float64: the neurons' responses reach {amax:.3g}, so a "
        f"{'squared ' if cost == 'sqeuclidean' else ''}distance between two neurons exceeds "
        f"1.8e308. Pass normalize='standardize', 'layer' or 'unit' (scale-free costs), use "
        f"cost='euclidean' or 'correlation', or divide the activations by a constant first")


def _fits_float32(amax: float, d: int, power: float) -> bool:
    """Whether Euclidean (``power`` 1) or squared Euclidean (2) costs of neurons whose
    responses reach ``amax`` (> 0) stay in float32's normal range: the largest possible
    cost below 2^126 and the scale ``amax ** power`` above 2^-100 (so a typical cost
    keeps float32's 24 bits instead of rounding to a subnormal or to 0)."""
    e = math.log2(amax)
    top = power * (e + 1.0 + 0.5 * math.log2(d))  # log2 of (2 sqrt(d) amax) ** power
    return top < 126.0 and power * e > -100.0


def _cost(t: torch.Tensor, s: torch.Tensor, cost: str, normalize: str | None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Cost matrix in :func:`compute_dtype` (or ``dtype``), autocast off (see :func:`cost_matrix`).

    A float32 computation is promoted to float64 when the Euclidean costs of these
    neurons could overflow float32 or come near its smallest normal numbers (for the
    squared Euclidean cost, responses above about 1e18 / sqrt(d) or below about 4e-16,
    without a scale-free normalisation): the costs are then computed, not rounded to
    inf or 0.
    """
    if cost not in COSTS:
        raise _choice_error("cost", cost, list(COSTS))
    if normalize not in NORMALIZATIONS:
        raise _choice_error("normalize", normalize, list(NORMALIZATIONS))
    if dtype is None:
        dtype = compute_dtype(t, s)
    if dtype != torch.float64 and cost in ("sqeuclidean", "euclidean") and normalize in (None, "center"):
        amax = max(float(t.detach().abs().max()), float(s.detach().abs().max()))
        if amax > 0 and not _fits_float32(2.0 * amax, t.shape[1], 2.0 if cost == "sqeuclidean" else 1.0):
            dtype = torch.float64
    with _no_autocast(t.device):
        t = _normalize(t.to(dtype), normalize, "teacher")
        s = _normalize(s.to(dtype), normalize, "student")
        if cost in ("sqeuclidean", "euclidean"):
            # distances of the clouds divided by a power of two near their
            # largest magnitude (exact), so no square overflows or underflows
            amax = max(float(t.detach().abs().max()), float(s.detach().abs().max()))
            lam = _pow2(amax) if amax > 0 else 1.0
            C = _sqdist(t / lam, s / lam)
            power = 1.0 if cost == "euclidean" else 2.0
            if cost == "euclidean":
                C = _safe_sqrt(C)
            cmax = float(C.detach().max())
            if cmax > 0 and math.log2(cmax) + power * math.log2(lam) >= 1023.0:
                raise _overflow_error(cost, amax)
            return C if lam == 1.0 else (C * lam * lam if power == 2.0 else C * lam)
        if cost == "correlation":
            t = t - t.mean(1, keepdim=True)
            s = s - s.mean(1, keepdim=True)
            what, fix = "a constant response (zero variance)", "drop dead neurons or use cost='cosine'"
        else:
            what, fix = "an all-zero response (zero norm)", "drop dead neurons or use cost='sqeuclidean'"
        t, s = _row_prescale(t), _row_prescale(s)
        nt, ns = t.norm(dim=1, keepdim=True), s.norm(dim=1, keepdim=True)
        _check_nonzero(nt, t, "teacher", what, fix)
        _check_nonzero(ns, s, "student", what, fix)
        # 1 - cos = ||t/|t| - s/|s| ||^2 / 2: no cancellation for close neurons
        return (0.5 * _sqdist(t / nt, s / ns)).clamp(0.0, 2.0)


# --------------------------------------------------------------------------
# the same cost in numpy: the float64 CPU path of align and cost_matrix
# --------------------------------------------------------------------------
# align solves in float64 on the CPU and needs no gradient, so it computes the
# cost with numpy, single-threaded for elementwise work, in as few passes over
# the m x k matrix as the guarantees of _cost allow (same normalisations, same
# shift, same power-of-two scalings, same exact recomputation of the entries
# the Gram formula cannot resolve, same errors).
def _as_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array (no copy when it already is one); the checks of
    :func:`_as_tensor`."""
    t = _as_tensor(x, name)
    if isinstance(x, np.ndarray) and x.dtype == np.float64:
        return x
    t = t.detach()
    if t.device.type == "cpu" and t.dtype in (torch.float64, torch.float32, torch.float16):
        try:
            return t.numpy().astype(np.float64, copy=False)
        except (RuntimeError, TypeError):  # e.g. a tensor with a pending negation bit
            pass
    return t.to("cpu", torch.float64).numpy()


def _range_np(x: np.ndarray, name: str) -> float:
    """max |x|, and the finiteness check of ``x`` in the same two reductions (NaN propagates)."""
    hi, lo = float(x.max()), float(x.min())
    if not (math.isfinite(hi) and math.isfinite(lo)):
        raise _nonfinite_error(name, x)
    return max(hi, -lo)


def _row_prescale_np(t: np.ndarray) -> np.ndarray:
    """:func:`_row_prescale` in numpy."""
    amax = np.abs(t).max(axis=1, keepdims=True)
    e = np.frexp(np.maximum(amax, np.finfo(np.float64).tiny))[1]
    return t * np.ldexp(1.0, -e)


def _normalize_np(t: np.ndarray, how: str | None, name: str) -> np.ndarray:
    """:func:`_normalize` in numpy (float64)."""
    if how is None:
        return t
    if how == "center":
        return t - t.mean(axis=1, keepdims=True)
    if how == "standardize":
        t = _row_prescale_np(t)
        c = t - t.mean(axis=1, keepdims=True)
        sd = np.sqrt(np.einsum("ij,ij->i", c, c) / c.shape[1])[:, None]
        _check_nonzero(sd, t, name, "a constant response (zero variance)",
                       "drop dead neurons or use normalize='center' or None")
        c /= sd
        return c
    if how == "layer":
        amax = float(np.abs(t).max())
        if amax > 0:
            t = t / _pow2(amax)
        c = t - t.mean(axis=1, keepdims=True)
        sd = math.sqrt(float(np.einsum("ij,ij->", c, c)) / c.size)
        if not (amax > 0 and sd > _ZERO_TOL):
            raise ValueError(f"all {t.shape[0]} {name} neurons have a constant response (zero "
                             f"variance), so normalize='layer' (the geometry of the OT score) is "
                             f"undefined; feed more varied probe inputs or pick a layer whose "
                             f"neurons vary; the raw cost (normalize=None, measure='ot-raw') is "
                             f"still defined")
        c /= sd
        return c
    # unit
    t = _row_prescale_np(t)
    nrm = np.sqrt(np.einsum("ij,ij->i", t, t))[:, None]
    _check_nonzero(nrm, t, name, "an all-zero response (zero norm)",
                   "drop dead neurons or use normalize=None")
    return t / nrm


def _sqdist_np(x: np.ndarray, y: np.ndarray, f2: float = 1.0,
               lam: float = 1.0) -> tuple[np.ndarray, float]:
    r"""``f2`` times :func:`_sqdist` of ``x / lam`` and ``y / lam`` in numpy, ``f2`` and
    ``lam`` powers of two (so the scalings are exact).

    Returns ``(C, ub)`` with ``ub`` an upper bound of :math:`\|x_i - y_j\|^2`
    (unscaled). Passes over the m x k matrix: the matrix product, two
    in-place additions and one row-wise minimum, which finds the rows that
    may hold an entry below the resolution threshold; only those rows are
    compared entry by entry, and only those entries recomputed.
    """
    m, d = x.shape
    k = y.shape[0]
    shift = (x.sum(axis=0) + y.sum(axis=0)) / (m + k)
    x = x - shift  # (x - shift) / lam = x / lam - shift / lam exactly: lam is a power of two
    y = y - shift
    if lam != 1.0:
        x /= lam
        y /= lam
    nx = np.einsum("ij,ij->i", x, x)
    ny = np.einsum("ij,ij->i", y, y)
    ub = (math.sqrt(float(nx.max())) + math.sqrt(float(ny.max()))) ** 2
    # -2 f2 <x, y> (the factor, a power of two, goes on the smaller matrix: exact)
    C = (x * (-2.0 * f2)) @ y.T if m <= k else x @ (y * (-2.0 * f2)).T
    if f2 != 1.0:
        nx *= f2
        ny *= f2
    rmin = np.empty(m)
    step_b = max(1, _BLOCK // max(k, 1))
    for i in range(0, m, step_b):  # cache-sized blocks of rows: one pass over memory
        o = C[i:i + step_b]
        o += nx[i:i + step_b, None]
        o += ny[None, :]
        o.min(axis=1, out=rmin[i:i + step_b])
    feps = float(np.finfo(np.float64).eps)
    rho = max(1e-6, 1e3 * feps)
    thr = min(0.25, 2.0 * feps * math.sqrt(d) / rho)
    # an entry is recomputed when C_ij <= thr (nx_i + ny_j) (this also catches every
    # negative entry, so no clamping pass is needed); a row can hold one only if its
    # minimum is <= thr (nx_i + max ny)
    rows = np.flatnonzero(rmin <= thr * (nx + ny.max()))
    if rows.size:
        step_r = max(1, _REFINE_CHUNK // max(k, 1))
        step = max(1, _REFINE_CHUNK // max(d, 1))
        for r0 in range(0, rows.size, step_r):
            rr = rows[r0:r0 + step_r]
            ii, jj = np.nonzero(C[rr] <= thr * (nx[rr, None] + ny[None, :]))
            ii = rr[ii]
            for c in range(0, ii.size, step):
                i, j = ii[c:c + step], jj[c:c + step]
                diff = x[i] - y[j]
                C[i, j] = np.einsum("ij,ij->i", diff, diff) * f2
    return C, ub


def _cost_np(t: np.ndarray, s: np.ndarray, cost: str, normalize: str | None) -> np.ndarray:
    """:func:`_cost` in numpy for float64 CPU inputs (checks their finiteness too)."""
    if cost not in COSTS:
        raise _choice_error("cost", cost, list(COSTS))
    if normalize not in NORMALIZATIONS:
        raise _choice_error("normalize", normalize, list(NORMALIZATIONS))
    amax_t, amax_s = _range_np(t, "teacher"), _range_np(s, "student")
    t = _normalize_np(t, normalize, "teacher")
    s = _normalize_np(s, normalize, "student")
    if cost in ("sqeuclidean", "euclidean"):
        if normalize is not None:
            amax_t, amax_s = float(np.abs(t).max()), float(np.abs(s).max())
        amax = max(amax_t, amax_s)
        lam = _pow2(amax) if amax > 0 else 1.0
        power = 2.0 if cost == "sqeuclidean" else 1.0
        # fold lam^2 into the product when no scaled entry can overflow or lose bits
        fold = 2.0 ** -200 <= lam <= 2.0 ** 200
        C, ub = _sqdist_np(t, s, lam * lam if fold else 1.0, lam)
        if ub > 0 and 0.5 * power * math.log2(ub) + power * math.log2(lam) >= 1022.0:
            # the bound says it might overflow: the exact test of _cost
            cmax = float(C.max()) / (lam * lam if fold else 1.0)
            if cmax > 0 and 0.5 * power * math.log2(cmax) + power * math.log2(lam) >= 1023.0:
                raise _overflow_error(cost, amax)
        if cost == "euclidean":
            np.sqrt(C, out=C)  # sqrt(lam^2 c) = lam sqrt(c) exactly
            if not fold and lam != 1.0:
                C *= lam
        elif not fold and lam != 1.0:
            C *= lam
            C *= lam
        return C
    if cost == "correlation":
        t = t - t.mean(axis=1, keepdims=True)
        s = s - s.mean(axis=1, keepdims=True)
        what, fix = "a constant response (zero variance)", "drop dead neurons or use cost='cosine'"
    else:
        what, fix = "an all-zero response (zero norm)", "drop dead neurons or use cost='sqeuclidean'"
    t, s = _row_prescale_np(t), _row_prescale_np(s)
    nt = np.sqrt(np.einsum("ij,ij->i", t, t))[:, None]
    ns = np.sqrt(np.einsum("ij,ij->i", s, s))[:, None]
    _check_nonzero(nt, t, "teacher", what, fix)
    _check_nonzero(ns, s, "student", what, fix)
    # 1 - cos = ||t/|t| - s/|s| ||^2 / 2 (the 1/2 is folded into the product: exact)
    C = _sqdist_np(t / nt, s / ns, 0.5)[0]
    np.minimum(C, 2.0, out=C)
    return C


def cost_matrix(teacher: ArrayLike, student: ArrayLike, cost: CostName = "sqeuclidean",
                normalize: NormName | None = None) -> ArrayLike:
    r"""Cost between every teacher neuron and every student neuron.

    .. math::
        C_{ij} = c(\tilde t_i, \tilde s_j)

    where :math:`\tilde t, \tilde s` are the neurons after ``normalize`` and
    ``c`` is one of :data:`COSTS`: squared Euclidean
    :math:`\|t - s\|^2`, Euclidean :math:`\|t - s\|`, cosine
    :math:`1 - \langle t, s\rangle / (\|t\|\|s\|)`, correlation (cosine of the
    centred vectors).

    Parameters
    ----------
    teacher : array of shape (m, d)
    student : array of shape (k, d)
        Neurons as rows, features (responses to the same probe inputs) as
        columns; numpy arrays or torch tensors (gradients are kept).
    cost, normalize : see :data:`COSTS` and :data:`NORMALIZATIONS`.

    Returns
    -------
    C : array of shape (m, k), numpy if both inputs are numpy, else torch.
        Computed in :func:`compute_dtype` (float64 on the CPU, float32 at
        least on other devices) with autocast off, whatever the inputs'
        dtype; the Euclidean costs are accurate to a few ulps even for two
        nearly equal neurons (small entries are recomputed from the
        differences), and a cost too large for float64 raises ``ValueError``.
    """
    both_np = isinstance(teacher, np.ndarray) and isinstance(student, np.ndarray)
    if both_np:
        t, s = _as_array(teacher, "teacher"), _as_array(student, "student")
        _check_neurons(t, s, finite=False)
        return _cost_np(t, s, cost, normalize)
    t, s = _as_tensor(teacher, "teacher"), _as_tensor(student, "student")
    if t.device != s.device:
        raise ValueError(f"teacher is on {t.device} but student is on {s.device}; "
                         f"move both to the same device")
    _check_neurons(t, s)
    return _cost(t, s, cost, normalize)


# --------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class Alignment:
    r"""An OT alignment between a teacher layer (rows) and a student layer (columns).

    Attributes
    ----------
    plan : ndarray of shape (m, k)
        Transport plan :math:`P`; :math:`P_{ij}` is the mass of teacher neuron
        ``i`` sent to student neuron ``j``.
    cost_matrix : ndarray of shape (m, k)
        :math:`C`, see :func:`cost_matrix`.
    distance : float
        :math:`\sum_{ij} P_{ij} C_{ij}`, the raw transport cost without any
        entropy term (for ``cost="sqeuclidean"`` and ``method="emd"`` this is
        :math:`W_2^2`), in the units of ``C``: it grows with the activations'
        scale and the number of probe responses, so compare layers with
        :attr:`score` instead.
    a, b : ndarray
        Neuron weights of the teacher and the student.
    method, cost, normalize : str
        The options used.
    score : float
        The scale-free OT score, 0 = the same layer, about 1 = unrelated
        layers (see :attr:`score`): the number to read and compare.
    eps : float or None
        Relative regularisation; the absolute one is ``reg = eps * cost_scale``.
    reg : float or None
        Absolute entropic regularisation used by the solver.
    cost_scale : float
        The median of ``C`` (see :func:`eps_scale`); ``eps`` and ``reg_m`` are
        relative to it.
    n_iter : int or None
        Solver iterations (summed over eps-scaling stages); ``None`` for the
        exact solver, which does not report them.
    converged : bool
        Whether the solver met its tolerance within its iteration cap.
    marginal_error : float
        :math:`\|P\mathbf{1} - a\|_1 + \|P^\top\mathbf{1} - b\|_1` (for
        ``"unbalanced"`` this measures how far the relaxed marginals moved).
    potentials : tuple (f, g) or None
        Dual potentials in cost units; pass the alignment (or this tuple) as
        ``warm_start`` to a later, similar problem.
    omega : float
        Over-relaxation factor the entropic solver ended with (1 for plain
        Sinkhorn updates); a warm start from this alignment starts from it.
    """

    plan: np.ndarray
    cost_matrix: np.ndarray
    distance: float
    a: np.ndarray
    b: np.ndarray
    method: str
    cost: str
    normalize: str | None
    eps: float | None
    reg: float | None
    cost_scale: float
    n_iter: int | None
    converged: bool
    marginal_error: float
    potentials: tuple[np.ndarray, np.ndarray] | None = None
    reg_m: float | None = None
    omega: float = 1.0
    tol: float = 1e-9
    max_iter: int = 10_000
    _neurons: tuple[Any, Any] | None = field(default=None, compare=False)
    _cache: dict = field(default_factory=dict, compare=False)

    @property
    def score(self) -> float:
        r"""The scale-free OT score of the two layers: 0 = the same layer, about 1 = unrelated.

        .. math::
            \mathrm{score} = \min_{P \in U(a, b)} \sum_{ij} P_{ij}
                \frac{\|\hat t_i - \hat s_j\|^2}{2d}
              = 1 - \max_{P \in U(a, b)} \sum_{ij} P_{ij}
                \frac{\langle \hat t_i, \hat s_j \rangle}{d}

        where :math:`\hat t_i` is teacher neuron ``i`` centred over its ``d``
        responses and divided by the teacher layer's root-mean-square
        response (one scale per layer; same for the student). It reads as 1
        minus how much matched neurons co-vary, in units of their layers'
        mean variance: 0 when the student layer is the teacher layer up to a
        permutation of neurons, a global scale, per-neuron offsets or a
        duplication of neurons; about 1 for unrelated layers (two independent
        random layers of 64 neurons score 0.78 at 100 responses, 0.90 at 500,
        0.95 at 2,000, and 64 against 16 neurons 0.83, 0.92, 0.96: the best
        matching finds some covariance by chance); up to 2 for
        anti-correlated matches.

        It is computed with this alignment's solver (``method``, ``eps``,
        weights) but in its own geometry, whatever ``cost`` and ``normalize``
        were used for :attr:`distance` (the raw cost, which keeps the units of
        the activations). Entropic solvers are debiased (Sinkhorn divergence:
        :math:`\mathrm{OT}_\varepsilon(T,S) - \frac12\mathrm{OT}_\varepsilon(T,T) -
        \frac12\mathrm{OT}_\varepsilon(S,S)`), so a layer against itself scores
        0 at any ``eps``; a larger ``eps`` also lowers the score of different
        layers, so compare scores obtained with the same solver and ``eps``. Computed on first access (one more solve, three for
        the entropic methods) and cached; see :attr:`score_details`.

        Raises
        ------
        ValueError
            If every neuron of one layer is constant on the probe batch (the
            score is undefined; the message says what to do).
        """
        return float(self.score_details["score"])

    @property
    def score_details(self) -> dict[str, Any]:
        """How :attr:`score` was obtained.

        A dict with ``score``; ``cross``, ``self_teacher`` and ``self_student``
        (the regularised OT values whose debiased combination is the score;
        the self terms are 0 for ``method="emd"``); ``reg`` (the absolute
        entropic regularisation, ``None`` for exact OT); ``cost_scale`` (the
        median cost of the score's geometry, which ``eps`` is relative to);
        ``converged`` (whether every solve met its tolerance) and ``plan``
        (the teacher x student plan in the score's geometry).
        """
        if "score" not in self._cache:
            if self._neurons is None:
                raise ValueError("this Alignment was built without its neurons, so its score cannot "
                                 "be computed; use otviz.align(teacher, student, ...)")
            from otviz._score import score_details

            t, s = (np.asarray(x.detach().to("cpu", torch.float64).numpy()
                               if isinstance(x, torch.Tensor) else x, dtype=np.float64)
                    for x in self._neurons)
            m, k = self.plan.shape
            # an alignment in the score's geometry (uniform weights) already solved its problem
            own = (self.cost == "sqeuclidean" and self.normalize == "layer"
                   and np.allclose(self.a, 1.0 / m) and np.allclose(self.b, 1.0 / k))
            self._cache["score"] = score_details(
                t, s, np.asarray(self.a, dtype=np.float64), np.asarray(self.b, dtype=np.float64),
                method=self.method, eps=self.eps, reg_m=self.reg_m or 1.0, tol=self.tol,
                max_iter=self.max_iter, solved=self if own else None)
        return self._cache["score"]

    @property
    def shape(self) -> tuple[int, int]:
        """(number of teacher neurons, number of student neurons)."""
        return self.plan.shape  # type: ignore[return-value]

    @property
    def matching(self) -> np.ndarray:
        """For each teacher neuron, the student neuron that receives most of its mass."""
        return self.plan.argmax(axis=1)

    @property
    def permutation(self) -> np.ndarray | None:
        """For equal widths, the one-to-one assignment carrying the most plan mass.

        ``permutation[i]`` is the student neuron assigned to teacher neuron
        ``i`` by :func:`scipy.optimize.linear_sum_assignment` on the plan
        (maximising the transported mass). For ``method="emd"`` with uniform
        weights the exact plan is itself a permutation matrix, and this is it.
        ``None`` when the widths differ.
        """
        m, k = self.plan.shape
        if m != k:
            return None
        if "perm" not in self._cache:
            rows, cols = linear_sum_assignment(self.plan, maximize=True)
            perm = np.empty(m, dtype=np.int64)
            perm[rows] = cols
            self._cache["perm"] = perm
        return self._cache["perm"]

    @property
    def mass(self) -> float:
        """Total mass of the plan (1 for balanced methods)."""
        return float(self.plan.sum())

    def summary(self) -> str:
        """A readable multi-line summary of the alignment."""
        m, k = self.plan.shape
        opts = f"method={self.method}, cost={self.cost}, normalize={self.normalize}"
        if self.eps is not None:
            opts += f", eps={self.eps:g} (reg={self.reg:.3g})"
        if self.reg_m is not None:
            opts += f", reg_m={self.reg_m:g}"
        iters = "n/a (exact solver)" if self.n_iter is None else str(self.n_iter)
        counts = np.bincount(self.matching, minlength=k)
        try:
            det = self.score_details
            score = (f"{det['score']:.3f}   (0 = same layer up to permutation and scale, "
                     f"~1 = unrelated{'' if det['converged'] else '; NOT CONVERGED: approximate'})")
        except ValueError as exc:
            score = f"undefined: {exc}"
        lines = [
            f"OT alignment of {m} teacher neurons with {k} student neurons",
            f"  {opts}",
            f"  score           {score}",
            f"  raw distance    {self.distance:.6g}   ({self.cost} cost of the "
            f"{_NORM_WORDS.get(self.normalize, self.normalize)} neurons; median cost "
            f"{self.cost_scale:.4g})",
            f"  converged       {self.converged}   iterations {iters}   "
            f"marginal error {self.marginal_error:.2e}",
            f"  matching        each student neuron receives the bulk of "
            f"{counts.min()}..{counts.max()} teacher neurons "
            f"({int((counts == 0).sum())} receive none)",
        ]
        if self.method == "unbalanced":
            lines.append(f"  plan mass       {self.mass:.4f}")
        if self.permutation is not None:
            lines.append(f"  permutation     first entries {self.permutation[:8].tolist()}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        m, k = self.plan.shape
        eps = "" if self.eps is None else f", eps={self.eps:g}"
        return (f"Alignment(method={self.method!r}, cost={self.cost!r}, shape=({m}, {k}){eps}, "
                f"distance={self.distance:.6g}, converged={self.converged})")

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------
# solving
# --------------------------------------------------------------------------
def _warm_potentials(warm_start: Any, m: int, k: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    if warm_start is None:
        return None
    omega = 1.0
    if isinstance(warm_start, Alignment):
        omega = warm_start.omega
        warm_start = warm_start.potentials
        if warm_start is None:
            return None
    try:
        f, g = warm_start
    except (TypeError, ValueError):
        raise TypeError("warm_start must be a previous Alignment or a tuple (f, g) of potentials") from None
    f = np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f, dtype=np.float64)
    g = np.asarray(g.detach().cpu() if isinstance(g, torch.Tensor) else g, dtype=np.float64)
    if f.shape != (m,) or g.shape != (k,):
        raise ValueError(f"warm_start potentials have shapes {f.shape} and {g.shape}, but this "
                         f"problem is {m} x {k}; warm starts need layers of the same widths")
    if not (np.isfinite(f).all() and np.isfinite(g).all()):
        raise ValueError("warm_start potentials contain NaN or infinite values")
    return f, g, omega


def eps_scale(C: np.ndarray) -> float:
    r"""The cost scale that ``eps`` and ``reg_m`` are relative to: the median of ``C``.

    The median cost between a teacher neuron and a student neuron is a typical
    cost that a few outlier neurons cannot move (``max(C)`` can be 50x larger
    in a transformer block with a few high-norm units), so one ``eps`` means
    the same blur in every layer. If more than half the entries are 0, the mean
    of the positive entries is used; 1.0 if ``C`` is all zeros.
    """
    C = np.asarray(C)
    med = _median(C)
    if med > 0 and math.isfinite(med):
        return med
    pos = C[C > 0]
    return float(pos.mean()) if pos.size else 1.0


def _median(C: np.ndarray) -> float:
    """``np.median(C)``, exactly, in fewer passes over a large ``C`` (Floyd-Rivest selection).

    The two middle order statistics are bracketed by order statistics of a
    random sample of 16,384 entries (about 4 standard deviations of the
    sample rank on each side); one pass counts the entries below the
    bracket, another gathers the few inside it, and only those are
    partitioned. If the bracket misses (probability ~1e-4), the full
    ``np.median`` is used. (``C`` holds no NaN: align checks its inputs.)
    """
    flat = C.ravel()
    n = flat.size
    if n < 1 << 16:
        return float(np.median(flat))
    k1, k2 = (n - 1) // 2, n // 2
    s = 1 << 14
    sample = np.sort(flat[np.random.default_rng(n).integers(0, n, s)])
    q, half = k1 / n * s, 4.0 * math.sqrt(s)
    lo, hi = sample[max(int(q - half), 0)], sample[min(int(q + half) + 1, s - 1)]
    # one pass over memory: blocks that stay in cache are counted, then gathered
    below, parts = 0, []
    blk = 1 << 16
    for i in range(0, n, blk):
        x = flat[i:i + blk]
        mask = x >= lo
        below += x.size - int(np.count_nonzero(mask))
        mask &= x <= hi
        parts.append(x[mask])
    inside = np.concatenate(parts)
    if not (below <= k1 and below + inside.size > k2):
        return float(np.median(flat))
    j1, j2 = k1 - below, k2 - below
    part = np.partition(inside, [j1, j2] if j2 != j1 else j1)
    return float(0.5 * (part[j1] + part[j2])) if j2 != j1 else float(part[j1])


def _median_torch(C: torch.Tensor) -> float:
    """:func:`eps_scale` of a torch cost matrix, on its device (numpy's median convention)."""
    flat = C.detach().flatten()
    n = flat.numel()
    med = flat.kthvalue((n + 1) // 2).values
    if n % 2 == 0:
        med = 0.5 * (med + flat.kthvalue(n // 2 + 1).values)
    med = float(med)
    if med > 0 and math.isfinite(med):
        return med
    pos = flat[flat > 0]
    return float(pos.mean()) if pos.numel() else 1.0


def _solve(C: np.ndarray, a: np.ndarray, b: np.ndarray, method: str, eps: float | None,
           reg_m: float, tol: float, max_iter: int, warm: tuple | None,
           scale: float | None = None) -> dict[str, Any]:
    if method != "emd" and not (a.all() and b.all()):
        return _solve_on_support(C, a, b, method, eps, reg_m, tol, max_iter, warm, scale)
    if isinstance(C, torch.Tensor):
        return _solve_torch(C, a, b, method, eps, reg_m, tol, max_iter, warm, scale)
    if scale is None:
        scale = eps_scale(C)
    if method == "emd":
        # The network simplex compares reduced costs with absolute thresholds,
        # so costs of 1e-10 come back with a plan 10 % above the optimum. Solve
        # C / unit, unit a power of two near max |C| (an exact division), and
        # scale the dual potentials back.
        cmax = float(np.abs(C).max())
        unit = _pow2(cmax) if 0 < cmax < math.inf else 1.0
        n_emd = max(100_000, 20 * C.shape[0] * C.shape[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            P, log = ot.emd(a, b, np.ascontiguousarray(C / unit), numItermax=n_emd, log=True)
        converged = log.get("result_code", 1) == 1 and not log.get("warning")
        for w in caught:
            if "numItermax" in str(w.message) or "not converge" in str(w.message).lower():
                converged = False
        return dict(plan=P, reg=None, n_iter=None, converged=converged, scale=scale,
                    potentials=(np.asarray(log["u"], dtype=np.float64) * unit,
                                np.asarray(log["v"], dtype=np.float64) * unit))
    reg = eps * scale
    rm = math.inf if method == "sinkhorn" else reg_m * scale
    pots = None if warm is None else warm[:2]
    omega0 = warm[2] if warm is not None and len(warm) > 2 else 1.0
    res = sinkhorn_solve(a, b, C, reg, reg_m=rm, tol=tol, max_iter=max_iter, warm_start=pots,
                         omega_init=omega0)
    return dict(plan=res.plan, reg=reg, n_iter=res.n_iter, converged=res.converged, scale=scale,
                potentials=(res.f, res.g), omega=res.omega)


def _solve_on_support(C: np.ndarray | torch.Tensor, a: np.ndarray, b: np.ndarray, method: str,
                      eps: float | None, reg_m: float, tol: float, max_iter: int, warm: tuple | None,
                      scale: float | None) -> dict[str, Any]:
    r"""The entropic solve when some weights are 0: points without mass carry no plan entry, so
    the problem is solved on the rows and columns of positive weight (the scaling kernels'
    logarithms would be :math:`-\infty` there) and the plan is embedded back with zeros. The
    eps scale is taken on the whole cost, as without zeros. A massless point's potential is
    the value the Sinkhorn update gives it,

    .. math:: f_i = -\varphi\, \varepsilon \log \sum_{j: b_j > 0} b_j\, e^{(g_j - C_{ij})/\varepsilon},
              \qquad \varphi = \rho / (\rho + \varepsilon) \ (1 \text{ for balanced OT}),

    (the same for :math:`g_j`), so that the potentials stay finite and can warm-start a
    problem whose weights change."""
    from scipy.special import logsumexp

    on_torch = isinstance(C, torch.Tensor)
    if scale is None:
        scale = _median_torch(C) if on_torch else eps_scale(C)
    ia, ib = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
    if on_torch:
        ta, tb = (torch.as_tensor(i, device=C.device) for i in (ia, ib))
        sub = C.index_select(0, ta).index_select(1, tb)
    else:
        sub = C[np.ix_(ia, ib)]
    if warm is not None:
        warm = (np.asarray(warm[0])[ia], np.asarray(warm[1])[ib], *warm[2:])
    sol = _solve(sub, a[ia], b[ib], method, eps, reg_m, tol, max_iter, warm, scale)
    if on_torch:
        plan = torch.zeros(C.shape, dtype=sol["plan"].dtype, device=C.device)
        plan[ta[:, None], tb[None, :]] = sol["plan"]
        C64 = C.detach().to("cpu", torch.float64).numpy()
    else:
        plan = np.zeros(C.shape, dtype=np.float64)
        plan[np.ix_(ia, ib)] = sol["plan"]
        C64 = C
    reg = sol["reg"]
    phi = 1.0 if method == "sinkhorn" else reg_m * scale / (reg_m * scale + reg)
    fs, gs = sol["potentials"]
    f = -phi * reg * logsumexp((gs[None, :] - C64[:, ib]) / reg, b=b[ib][None, :], axis=1)
    g = -phi * reg * logsumexp((fs[:, None] - C64[ia, :]) / reg, b=a[ia][:, None], axis=0)
    f[ia], g[ib] = fs, gs
    return dict(sol, plan=plan, potentials=(f, g))


def _solve_torch(C: torch.Tensor, a: np.ndarray, b: np.ndarray, method: str, eps: float | None,
                 reg_m: float, tol: float, max_iter: int, warm: tuple | None,
                 scale: float | None = None) -> dict[str, Any]:
    """The entropic solve on ``C``'s device and dtype (:func:`sinkhorn_solve_torch`)."""
    if method == "emd":
        raise ValueError("the exact solver runs on the CPU (POT's network simplex); "
                         "use backend='numpy' with method='emd'")
    if scale is None:
        scale = _median_torch(C)
    reg = eps * scale
    rm = math.inf if method == "sinkhorn" else reg_m * scale
    pots = None if warm is None else warm[:2]
    omega0 = warm[2] if warm is not None and len(warm) > 2 else 1.0
    at = torch.as_tensor(a, dtype=C.dtype, device=C.device)
    bt = torch.as_tensor(b, dtype=C.dtype, device=C.device)
    res = sinkhorn_solve_torch(at, bt, C, reg, reg_m=rm, tol=tol, max_iter=max_iter,
                               warm_start=pots, omega_init=omega0)
    return dict(plan=res.plan, reg=reg, n_iter=res.n_iter, converged=res.converged, scale=scale,
                potentials=(res.f.detach().to("cpu", torch.float64).numpy(),
                            res.g.detach().to("cpu", torch.float64).numpy()),
                omega=res.omega)


def _check_options(method: str, tol: float, max_iter: int, reg_m: float) -> None:
    if method not in METHODS:
        raise _choice_error("method", method, list(METHODS))
    if not (isinstance(max_iter, (int, np.integer)) and max_iter > 0):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if method == "unbalanced" and not (isinstance(reg_m, (int, float)) and reg_m > 0
                                       and math.isfinite(reg_m)):
        raise ValueError(f"reg_m must be a positive finite number (relative to the cost scale), "
                         f"got {reg_m!r}; use method='sinkhorn' for hard marginals")


def align(teacher: ArrayLike, student: ArrayLike, *, cost: CostName = "sqeuclidean",
          normalize: NormName | None = None, method: MethodName = "emd",
          eps: float | None = None, a: ArrayLike | None = None, b: ArrayLike | None = None,
          reg_m: float = 1.0, tol: float = 1e-9, max_iter: int = 10_000,
          warm_start: Alignment | tuple | None = None) -> Alignment:
    r"""Align a teacher layer with a student layer by optimal transport.

    Solves

    .. math::
        \min_{P \in U(a, b)} \langle P, C \rangle
        \;[+\ \varepsilon\, \mathrm{KL}(P \,|\, a b^\top)]

    where :math:`C` is :func:`cost_matrix` of the two neuron sets and
    :math:`U(a, b)` the plans with marginals ``a`` and ``b``. With
    ``method="unbalanced"`` the marginal constraints are replaced by penalties
    :math:`\rho\,\mathrm{KL}(P\mathbf{1} | a) + \rho\,\mathrm{KL}(P^\top\mathbf{1} | b)`.

    Parameters
    ----------
    teacher : array of shape (m, d)
    student : array of shape (k, d)
        Neurons as rows (see :func:`otviz.neurons`); numpy or torch (detached),
        of any real dtype on any device: they are copied to the CPU and
        everything is computed in float64, with autocast off. Both must have
        the same number ``d`` of features, i.e. be responses to the same probe
        inputs. The widths ``m`` and ``k`` may differ.
    cost : {"sqeuclidean", "euclidean", "cosine", "correlation"}
    normalize : {None, "center", "standardize", "unit"}
        Per-neuron normalisation applied before the cost.
    method : {"emd", "sinkhorn", "unbalanced"}
        ``"emd"``: exact OT (POT's network simplex), fine up to a few thousand
        neurons per side. ``"sinkhorn"``: entropic OT with a stabilised solver
        that stays finite down to very small ``eps``. ``"unbalanced"``:
        entropic OT with KL-relaxed marginals.
    eps : float, optional
        Entropic regularisation **relative to the typical cost**: the solver
        uses :math:`\varepsilon = \mathrm{eps} \cdot \mathrm{median}_{ij}\, C_{ij}`
        (:func:`eps_scale`), so the same ``eps`` means the same blur whatever
        the layer's magnitude, and a few outlier neurons with a huge cost
        cannot change it. Default ``1e-2`` for the entropic methods; ignored
        (with a warning) by ``"emd"``.
    a, b : arrays of shape (m,) and (k,), optional
        Neuron weights, uniform by default. Must be non-negative; for the
        balanced methods they are renormalised (with a warning) if they do not
        sum to 1.
    reg_m : float
        Marginal relaxation of ``"unbalanced"``, relative to the median cost
        like ``eps`` (larger is closer to balanced OT).
    tol : float
        Entropic solvers stop when the L2 norm of the row-marginal violation
        (balanced) or the largest change of the potentials relative to the
        cost scale (unbalanced) falls below ``tol``.
    max_iter : int
        Iteration cap of the entropic solvers (per eps-scaling stage). When it
        is reached, the result has ``converged=False`` and a warning is issued.
    warm_start : Alignment or (f, g), optional
        Potentials of a previous alignment of layers of the same widths (e.g.
        the previous minibatch); the entropic solvers start from them. Ignored
        by ``"emd"``.

    Returns
    -------
    Alignment

    Examples
    --------
    >>> import numpy as np, otviz
    >>> t = np.random.default_rng(0).normal(size=(8, 50))
    >>> al = otviz.align(t, t[::-1])           # the student is the teacher, reversed
    >>> round(al.distance, 12), al.permutation[:3].tolist()
    (0.0, [7, 6, 5])
    """
    _check_options(method, tol, max_iter, reg_m)
    eps = _check_eps(eps, method)
    t, s = _as_array(teacher, "teacher"), _as_array(student, "student")
    _check_neurons(t, s, finite=False)  # _cost_np checks finiteness in its first pass
    m, k = t.shape[0], s.shape[0]
    a_ = _check_weights(a, m, "a", normalise=method != "unbalanced")
    b_ = _check_weights(b, k, "b", normalise=method != "unbalanced")
    C = _cost_np(t, s, cost, normalize)
    warm = _warm_potentials(warm_start, m, k) if method != "emd" else None
    return _finish(C, a_, b_, method=method, cost=cost, normalize=normalize, eps=eps,
                   reg_m=reg_m, tol=tol, max_iter=max_iter, warm=warm, neurons=(t, s))


def _plan_sums(P: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Row sums and column sums of ``P`` and :math:`\\sum_{ij} P_{ij} C_{ij}`, in one pass
    over memory (cache-sized blocks of rows)."""
    m, k = P.shape
    rows = np.empty(m)
    cols = np.zeros(k)
    dist = 0.0
    step = max(1, _BLOCK // max(k, 1))
    for i in range(0, m, step):
        p = P[i:i + step]
        p.sum(axis=1, out=rows[i:i + step])
        cols += p.sum(axis=0)
        dist += float(np.einsum("ij,ij->", p, C[i:i + step]))
    return rows, cols, dist


def _finish(C: np.ndarray, a: np.ndarray, b: np.ndarray, *, method: str, cost: str,
            normalize: str | None, eps: float | None, reg_m: float, tol: float,
            max_iter: int, warm: tuple | None, scale: float | None = None,
            neurons: tuple[np.ndarray, np.ndarray] | None = None) -> Alignment:
    return _finish_with_plan(C, a, b, method=method, cost=cost, normalize=normalize, eps=eps,
                             reg_m=reg_m, tol=tol, max_iter=max_iter, warm=warm, scale=scale,
                             neurons=neurons)[0]


def _finish_with_plan(C: np.ndarray | torch.Tensor, a: np.ndarray, b: np.ndarray, *, method: str,
                      cost: str, normalize: str | None, eps: float | None, reg_m: float,
                      tol: float, max_iter: int, warm: tuple | None, scale: float | None = None,
                      neurons: tuple[np.ndarray, np.ndarray] | None = None, _stack: int = 4
                      ) -> tuple[Alignment, torch.Tensor | None]:
    """Solve and build the :class:`Alignment`; a torch ``C`` is solved on its device, and its
    plan is also returned there (``None`` for a numpy ``C``)."""
    sol = _solve(C, a, b, method, eps, reg_m, tol, max_iter, warm, scale)
    P_dev = None
    if isinstance(C, torch.Tensor):
        P_dev = sol["plan"]
        if not bool(torch.isfinite(P_dev).all()):
            raise FloatingPointError(
                f"the {method} solver produced a non-finite plan on {C.device} (eps={eps}); "
                f"use backend='numpy' (float64 on the CPU) for this problem")
        P = P_dev.detach().to("cpu", torch.float64).numpy()
        C = C.detach().to("cpu", torch.float64).numpy()
    else:
        P = sol["plan"]
    # P >= 0, so its row sums are finite exactly when all its entries are; row sums,
    # column sums and <P, C> in one blocked pass
    rows, cols, distance = _plan_sums(P, C)
    if not np.isfinite(rows).all():
        raise FloatingPointError(
            f"the {method} solver produced a non-finite plan (eps={eps}); this should not "
            f"happen, please report it with the cost matrix")
    marg = float(np.abs(rows - a).sum() + np.abs(cols - b).sum())
    if not sol["converged"]:
        what = ("the exact solver hit its iteration cap" if method == "emd" else
                f"the {method} solver did not reach tol={tol:g} in max_iter={max_iter} "
                f"iterations (marginal error {marg:.2e})")
        warnings.warn(f"OT did not converge: {what}; increase max_iter or eps, or loosen tol",
                      RuntimeWarning, stacklevel=_stack)
    al = Alignment(plan=P, cost_matrix=C, distance=distance, a=a, b=b,
                   method=method, cost=cost, normalize=normalize, eps=eps, reg=sol["reg"],
                   cost_scale=sol["scale"], n_iter=sol["n_iter"],
                   converged=bool(sol["converged"]), marginal_error=marg,
                   potentials=sol["potentials"],
                   reg_m=reg_m if method == "unbalanced" else None,
                   omega=float(sol.get("omega", 1.0)), tol=tol, max_iter=max_iter,
                   _neurons=neurons)
    return al, P_dev


# --------------------------------------------------------------------------
# differentiable distance
# --------------------------------------------------------------------------
BackendName = Literal["auto", "numpy", "torch"]


def _pick_backend(backend: str, method: str, device: torch.device) -> str:
    if backend not in ("auto", "numpy", "torch"):
        raise _choice_error("backend", backend, ["auto", "numpy", "torch"])
    if backend == "torch" and method == "emd":
        raise ValueError("backend='torch' has no exact solver (POT's network simplex runs on the "
                         "CPU); use method='sinkhorn' or 'unbalanced' with backend='torch', or "
                         "backend='auto' for method='emd'")
    if backend == "auto":
        return "torch" if method != "emd" and device.type != "cpu" else "numpy"
    return backend


def ot_distance(teacher: ArrayLike, student: ArrayLike, *, cost: CostName = "sqeuclidean",
                normalize: NormName | None = None, method: MethodName = "emd",
                eps: float | None = None, a: ArrayLike | None = None,
                b: ArrayLike | None = None, reg_m: float = 1.0, tol: float = 1e-9,
                max_iter: int = 10_000, grad: Literal["envelope", "autodiff"] = "envelope",
                warm_start: Alignment | tuple | None = None,
                return_alignment: bool = False,
                backend: BackendName = "auto") -> torch.Tensor | tuple[torch.Tensor, Alignment]:
    r"""The OT distance between two layers as a differentiable torch scalar.

    .. math::
        \mathrm{OT}(T, S) = \sum_{ij} P^\star_{ij}\, C_{ij}(T, S)

    with :math:`P^\star` the plan of :func:`align` (same options). Gradients
    flow to ``teacher`` and ``student`` through the cost matrix :math:`C`.

    Parameters
    ----------
    teacher, student, cost, normalize, method, eps, a, b, reg_m, tol, max_iter, warm_start
        As in :func:`align`. Tensors may live on any device and have any
        floating dtype; the cost matrix and the returned scalar stay on
        their device.
    grad : {"envelope", "autodiff"}
        ``"envelope"`` (default, for training): the plan is computed on a
        detached copy of the cost and held fixed, so the gradient is
        :math:`\partial \mathrm{OT} / \partial C = P^\star` (Danskin's envelope
        theorem; exact for ``"emd"`` and for the regularised objective of the
        entropic methods). No backpropagation through solver iterations.
        In both modes the absolute regularisation ``eps * median(C)`` is a
        constant of the call (no gradient flows through the cost scale).
        ``"autodiff"``: the entropic solvers are unrolled in torch on the
        inputs' device (POT's log-domain Sinkhorn with the torch backend) and
        differentiated through their iterations; for ``"emd"``, whose plan is
        piecewise constant in :math:`C`, this is the same as ``"envelope"``.
        The unrolled solver has no eps-scaling: when its value is more than
        1e-4 (relative) away from the stabilised solver's, as happens at
        ``eps`` of about 1e-4 and below, a ``RuntimeWarning`` says so.
    return_alignment : bool
        Also return the :class:`Alignment` (e.g. to warm-start the next call).
    backend : {"auto", "numpy", "torch"}
        Where the entropic methods solve. ``"numpy"``: the float64 CPU solver
        (:func:`otviz._sinkhorn.sinkhorn_solve`); the cost matrix is copied to
        the CPU. ``"torch"``: the same stabilised algorithm in torch on the
        inputs' device, in float32 (float64 if both inputs are float64), with
        a balanced ``tol`` no tighter than float32 resolves (about
        ``2e-6 * ||a||_2``). ``"auto"`` (default): ``"torch"`` for
        ``"sinkhorn"``/``"unbalanced"`` when the inputs are on an accelerator
        (CUDA, ...), ``"numpy"`` otherwise. ``"emd"`` always solves on the CPU.

    Returns
    -------
    torch.Tensor (scalar), or (scalar, Alignment) if ``return_alignment``.
    Its dtype is the inputs' dtype promoted to at least float32, except when
    that dtype cannot hold the distance (float32 inputs of magnitude about
    1e19 and above, or 1e-19 and below, without a scale-free normalisation:
    the squared distances exceed float32's range or fall below its normal
    numbers): the scalar is then float64, never rounded to inf or 0.

    Notes
    -----
    **Precision.** Whatever the inputs' dtype (bfloat16, float16, float32,
    float64) and whether or not autocast is on, normalisation and cost are
    computed in :func:`compute_dtype` (float64 on the CPU, float32 at least
    elsewhere) with autocast off, so a bfloat16 layer gives the distance of
    its values computed in float64 (within 1e-3 relative of the float64
    inputs' result when the rounding of the inputs themselves does not move
    it); the gradient flows back to the inputs in their own dtype. On
    accelerators, a float32 cost that would overflow or underflow float32
    is computed in float64 instead (and solved in float64).

    **CPU.** With the numpy backend on the CPU (and ``grad="envelope"`` or
    ``"emd"``), the cost matrix is computed as in :func:`align` (numpy,
    float64, no copy of float64 inputs) and the gradient
    :math:`\langle P^\star, \partial C \rangle` is attached to the inputs
    directly (two matrix products in the backward pass), so no m x k matrix is
    built in torch.
    """
    if grad not in ("envelope", "autodiff"):
        raise _choice_error("grad", grad, ["envelope", "autodiff"])
    _check_options(method, tol, max_iter, reg_m)
    eps = _check_eps(eps, method)
    t, s = _as_tensor(teacher, "teacher"), _as_tensor(student, "student")
    if t.device != s.device:
        raise ValueError(f"teacher is on {t.device} but student is on {s.device}; "
                         f"move both to the same device")
    backend = _pick_backend(backend, method, t.device)
    fast = backend == "numpy" and t.device.type == "cpu" and (grad == "envelope" or method == "emd")
    _check_neurons(t, s, finite=not fast)  # the fast path's cost checks finiteness in its first pass
    m, k = t.shape[0], s.shape[0]
    a_ = _check_weights(a, m, "a", normalise=method != "unbalanced")
    b_ = _check_weights(b, k, "b", normalise=method != "unbalanced")
    out_dtype = torch.promote_types(torch.promote_types(t.dtype, s.dtype), torch.float32)
    warm = _warm_potentials(warm_start, m, k) if method != "emd" else None
    if fast:
        # The float64 CPU path of align (numpy cost in few passes, no torch m x k work),
        # with the envelope gradient <P, dC> attached to the inputs (_PlanCost).
        tn, sn = _as_array(t, "teacher"), _as_array(s, "student")
        al, _ = _finish_with_plan(_cost_np(tn, sn, cost, normalize), a_, b_, method=method,
                                  cost=cost, normalize=normalize, eps=eps, reg_m=reg_m, tol=tol,
                                  max_iter=max_iter, warm=warm, neurons=(t.detach(), s.detach()),
                                  _stack=3)
        value = _envelope_value(t, s, al, cost, normalize)
        value = _as_out_dtype(value, out_dtype)
        return (value, al) if return_alignment else value
    with _no_autocast(t.device):
        C = _cost(t, s, cost, normalize)
        if backend == "torch":
            solver_dtype = torch.float64 if t.dtype == s.dtype == torch.float64 else torch.float32
            if solver_dtype == torch.float32 and C.dtype == torch.float64:
                cmax = float(C.detach().max())
                if cmax > 2.0 ** 100 or 0.0 < cmax < 2.0 ** -90:  # beyond float32's range
                    solver_dtype = torch.float64
            Cs = C.detach().to(solver_dtype)
        else:
            Cs = C.detach().to("cpu", torch.float64).numpy()
        al, P = _finish_with_plan(Cs, a_, b_, method=method, cost=cost, normalize=normalize,
                                  eps=eps, reg_m=reg_m, tol=tol, max_iter=max_iter, warm=warm,
                                  neurons=(t.detach(), s.detach()), _stack=3)
        if grad == "envelope" or method == "emd":
            if P is None:
                P = torch.as_tensor(al.plan)
            value = (P.to(device=C.device, dtype=C.dtype) * C).sum()
        else:
            value = _autodiff_value(C, a_, b_, method, al.reg, reg_m * al.cost_scale, tol, max_iter)
            ref = al.distance
            gap = abs(float(value.detach()) - ref) / max(abs(ref), 1e-300)
            if gap > 1e-4:
                warnings.warn(
                    f"grad='autodiff': the unrolled log-domain Sinkhorn (no eps-scaling) did not "
                    f"converge at eps={eps:g} in max_iter={max_iter} iterations; its value is "
                    f"{100 * gap:.3g} % away from the stabilised solver's ({ref:.6g}). Use "
                    f"grad='envelope' (the exact gradient of the regularised objective, with no "
                    f"unrolling), a larger eps, or a larger max_iter", RuntimeWarning, stacklevel=2)
    if not bool(torch.isfinite(value.detach())):
        raise FloatingPointError(f"OT distance is not finite ({value.item()}); "
                                 f"try a larger eps or grad='envelope'")
    value = _as_out_dtype(value, out_dtype)
    return (value, al) if return_alignment else value


def _as_out_dtype(value: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``value`` in ``out_dtype``, unless that would round it to inf or to a subnormal or 0
    (a float32 distance of responses of magnitude 1e20 or 1e-20): it then stays in its own,
    wider dtype."""
    if value.dtype == out_dtype or torch.finfo(value.dtype).bits <= torch.finfo(out_dtype).bits:
        return value.to(out_dtype)
    v = abs(float(value.detach()))
    fi = torch.finfo(out_dtype)
    if v > fi.max or 0.0 < v < fi.tiny:
        return value
    return value.to(out_dtype)


class _PlanCost(torch.autograd.Function):
    r""":math:`\langle W, D(x, y) \rangle` with :math:`D_{ij} = f_2 \|x_i - y_j\|^2` and a
    fixed weight matrix ``W``: the value is given (computed in numpy), the backward pass is
    :math:`\partial/\partial x_i = 2 f_2 (w_{i\cdot} x_i - (W y)_i)` and its transpose
    for ``y`` (two matrix products, no m x k work in torch)."""

    @staticmethod
    def forward(ctx, x, y, W, rw, cw, f2, value):  # noqa: D102
        ctx.save_for_backward(x, y, W, rw, cw)
        ctx.f2 = f2
        return torch.tensor(value, dtype=x.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        x, y, W, rw, cw = ctx.saved_tensors
        c = 2.0 * ctx.f2 * g
        gx = (rw[:, None] * x - W @ y) * c if ctx.needs_input_grad[0] else None
        gy = (cw[:, None] * y - W.T @ x) * c if ctx.needs_input_grad[1] else None
        return gx, gy, None, None, None, None, None


def _envelope_value(t: torch.Tensor, s: torch.Tensor, al: "Alignment", cost: str,
                    normalize: str | None) -> torch.Tensor:
    r"""The float64 scalar :math:`\langle P, C(t, s) \rangle` of a CPU alignment, with the
    envelope gradient :math:`\langle P, \partial C \rangle` to ``t`` and ``s`` when one of
    them requires it (the same gradient as autograd through :func:`_cost`, without
    building ``C`` in torch)."""
    if not (torch.is_grad_enabled() and (t.requires_grad or s.requires_grad)):
        return torch.tensor(al.distance, dtype=torch.float64)
    P, C = al.plan, al.cost_matrix
    with _no_autocast(t.device):
        x = _normalize(t.to(torch.float64), normalize, "teacher")
        y = _normalize(s.to(torch.float64), normalize, "student")
        f2 = 1.0
        if cost in ("cosine", "correlation"):
            if cost == "correlation":
                x = x - x.mean(1, keepdim=True)
                y = y - y.mean(1, keepdim=True)
            x, y = _row_prescale(x), _row_prescale(y)
            x = x / x.norm(dim=1, keepdim=True)  # no zero norm: _cost_np checked
            y = y / y.norm(dim=1, keepdim=True)
            f2 = 0.5
        # a constant shift (no gradient) keeps x_i - y_j's digits in the products
        shift = (x.detach().sum(0) + y.detach().sum(0)) / (x.shape[0] + y.shape[0])
        x, y = x - shift, y - shift
    if cost == "euclidean":  # d sqrt(D) = dD / (2 sqrt(D)); 0 at D = 0, as _safe_sqrt
        W = np.zeros_like(P)
        np.divide(P, 2.0 * C, out=W, where=C > 0)
    else:
        W = P
    return _PlanCost.apply(x, y, torch.from_numpy(W), torch.from_numpy(W.sum(axis=1)),
                           torch.from_numpy(W.sum(axis=0)), f2, al.distance)


def _autodiff_value(C: torch.Tensor, a: np.ndarray, b: np.ndarray, method: str, reg: float,
                    reg_m: float, tol: float, max_iter: int) -> torch.Tensor:
    """<P(C), C> with P computed by differentiable torch iterations (POT backend)."""
    dtype = C.dtype
    at = torch.as_tensor(a, dtype=dtype, device=C.device)
    bt = torch.as_tensor(b, dtype=dtype, device=C.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "sinkhorn":
            P = ot.sinkhorn(at, bt, C, reg, method="sinkhorn_log", numItermax=max_iter,
                            stopThr=tol)
        else:
            P = ot.unbalanced.sinkhorn_unbalanced(at, bt, C, reg, reg_m, method="sinkhorn_stabilized",
                                                  reg_type="kl", numItermax=max_iter, stopThr=tol)
    return (P * C).sum()
