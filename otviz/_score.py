r"""The scale-free OT score of two layers (implementation of :attr:`otviz.Alignment.score`).

Definition
----------
Teacher neurons :math:`t_1..t_m` and student neurons :math:`s_1..s_k` are
response vectors in :math:`\mathbb{R}^d` (the same ``d`` probe responses), with
weights :math:`a` and :math:`b` (uniform by default). Each layer is brought to
a common, dimensionless scale: every neuron is centred over its responses and
the whole layer is divided by its root-mean-square response,

.. math::
    \hat t_i = \frac{t_i - \bar t_i \mathbf 1}{\sigma_T}, \qquad
    \sigma_T^2 = \frac{1}{d} \sum_i a_i \, \|t_i - \bar t_i \mathbf 1\|^2,

(same for the student), so that the neurons have mean squared response 1 on
average over the layer. The cost between two neurons is half their mean
squared difference, and the score is the optimal transport cost

.. math::
    c_{ij} = \frac{\|\hat t_i - \hat s_j\|^2}{2d}, \qquad
    \mathrm{score}(T, S) = \min_{P \in U(a, b)} \sum_{ij} P_{ij} c_{ij}
                         = 1 - \max_{P \in U(a, b)} \sum_{ij} P_{ij} \rho_{ij},

where :math:`\rho_{ij} = \langle \hat t_i, \hat s_j \rangle / d` is the
covariance of the two neurons' responses in units of their layers' mean
variance (the second form holds because the marginals of every admissible
plan average :math:`\|\hat t_i\|^2/d` and :math:`\|\hat s_j\|^2/d` to 1).
The score therefore reads as *1 minus how much matched neurons co-vary*:

- 0: the student layer is the teacher layer up to a permutation of its
  neurons, a global scale, per-neuron offsets and (with uniform weights) a
  duplication of neurons;
- about 1: unrelated layers (matched neurons do not co-vary). On a finite
  probe set the best matching finds some covariance by chance: two
  independent random layers of 64 neurons score 0.78 at 100 probe
  responses, 0.90 at 500 and 0.95 at 2,000 (64 against 16 neurons: 0.83,
  0.92, 0.96);
- up to 2: matched neurons are anti-correlated.

It is invariant to multiplying either network's activations by a constant, to
permuting neurons, and to duplicating every neuron; it is a per-response mean,
so its expected value does not depend on the number of probes. Neurons with
larger variance weigh more (as in linear CKA); a dead neuron (constant
response) is the zero vector. The score is undefined only for a layer whose
neurons are all constant.

With an entropic solver the score is debiased (the Sinkhorn divergence of
Genevay et al. 2018, Feydy et al. 2019), so a layer against itself scores 0:

.. math::
    \mathrm{score}_\varepsilon(T, S) = \mathrm{OT}_\varepsilon(T, S)
        - \tfrac12 \mathrm{OT}_\varepsilon(T, T) - \tfrac12 \mathrm{OT}_\varepsilon(S, S),

with :math:`\mathrm{OT}_\varepsilon` the regularised objective
:math:`\langle P, C\rangle + \varepsilon \mathrm{KL}(P | a b^\top)` (plus the
marginal penalties for unbalanced OT), the same absolute
:math:`\varepsilon = \mathrm{eps} \cdot \mathrm{median}(c)` in all three.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = ["layer_scale", "score_geometry", "score_details"]


def layer_scale(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre each neuron (row) of ``x``; return it and the layer's RMS response ``sigma``."""
    c = x - x.mean(axis=1, keepdims=True)
    var = float(w @ np.einsum("ij,ij->i", c, c)) / x.shape[1]
    return c, math.sqrt(max(var, 0.0))


def _dead_layer_error(side: str, x: np.ndarray) -> ValueError:
    m = x.shape[0]
    return ValueError(
        f"the OT score is undefined: all {m} {side} neurons are constant on this probe batch "
        f"(every response of each neuron is the same, e.g. a ReLU layer that never fires), so the "
        f"layer has no variance to compare. Feed more varied probe inputs, check that the layer "
        f"is alive (e.g. its activations before the ReLU), or pick another layer; the raw cost "
        f"(Alignment.distance, measure='ot-raw') is still defined")


def score_geometry(t: np.ndarray, s: np.ndarray, a: np.ndarray, b: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cost matrices of the score: teacher x student, teacher x teacher, student x student."""
    tc, st = layer_scale(t, a)
    sc, ss = layer_scale(s, b)
    # a dead layer: no neuron varies (up to rounding of the mean)
    for side, x, c, sig in (("teacher", t, tc, st), ("student", s, sc, ss)):
        ref = float(np.abs(x).max()) if x.size else 0.0
        if not sig > 1e-12 * max(ref, np.finfo(np.float64).tiny):
            raise _dead_layer_error(side, x)
    d = t.shape[1]
    th, sh = tc / st, sc / ss

    def sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        nx, ny = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        nn = nx[:, None] + ny[None, :]
        C = nn - 2.0 * (x @ y.T)
        # entries below the rounding error of this formula are exact zeros
        C[C <= 8.0 * np.finfo(np.float64).eps * math.sqrt(d) * nn] = 0.0
        return C / (2.0 * d)

    return sqdist(th, sh), sqdist(th, th), sqdist(sh, sh)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """Generalised KL(p | q) = sum p log(p / q) - p + q (0 log 0 = 0)."""
    p, q = p.ravel(), q.ravel()
    pos = p > 0
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])) - p.sum() + q.sum())


def _objective(al: Any, C: np.ndarray) -> float:
    """Regularised objective of an alignment's plan: <P, C> + reg KL(P|ab^T) [+ marginal KLs]."""
    P = al.plan
    value = float((P * C).sum())
    if al.reg is None:
        return value
    value += al.reg * _kl(P, np.outer(al.a, al.b))
    if al.method == "unbalanced":
        rho = al.reg_m * al.cost_scale
        value += rho * (_kl(P.sum(1), al.a) + _kl(P.sum(0), al.b))
    return value


def symmetric_ot(C: np.ndarray, a: np.ndarray, reg: float, rho: float, *, tol: float,
                 max_iter: int) -> tuple[float, bool]:
    r"""Regularised OT of a measure with itself, :math:`\mathrm{OT}_\varepsilon(\alpha, \alpha)`.

    The self problem has a symmetric optimum :math:`f = g`; the averaged
    fixed-point iteration :math:`f \leftarrow \frac12 (f + \lambda\, S_\varepsilon(f))`
    with the soft-min :math:`S_\varepsilon(f)_i = -\varepsilon \log \sum_j a_j
    e^{(f_j - C_{ij})/\varepsilon}` and :math:`\lambda = \rho / (\rho + \varepsilon)`
    (1 for balanced OT) converges in a few tens of iterations where plain
    Sinkhorn crawls (the self plan is nearly a permutation), as in geomloss
    (Feydy et al. 2019). It runs in the log domain with
    :math:`\varepsilon`-annealing from the cost scale. Returns the dual value,
    equal to the primal at the optimum, and whether ``tol`` was met.
    """
    from scipy.special import logsumexp

    loga = np.log(a)
    f = np.zeros(len(a))
    start = max(float(C.max()), reg)
    stages = [start * 0.5 ** k for k in range(64) if start * 0.5 ** k > reg] + [reg]
    converged = False
    for e in stages:
        lam_e = 1.0 if math.isinf(rho) else rho / (rho + e)
        # annealing stages only warm the potentials: a few updates each (as in geomloss)
        for _ in range(max_iter if e == reg else 3):
            soft = -e * logsumexp(loga[None, :] + (f[None, :] - C) / e, axis=1)
            new = 0.5 * (f + lam_e * soft)
            delta = float(np.abs(new - f).max())
            f = new
            if delta < tol:
                converged = e == reg
                break
    # dual objective at f = g
    K = np.exp((f[:, None] + f[None, :] - C) / reg) - 1.0
    if math.isinf(rho):
        value = 2.0 * float(a @ f)
    else:
        value = -2.0 * rho * float(a @ (np.exp(-f / rho) - 1.0))
    value -= reg * float(a @ K @ a)
    return value, converged


def score_details(t: np.ndarray, s: np.ndarray, a: np.ndarray, b: np.ndarray, *, method: str,
                  eps: float | None, reg_m: float, tol: float, max_iter: int,
                  solved: Any = None) -> dict[str, Any]:
    """Score of two neuron sets (float64 numpy, rows = neurons) and how it was obtained.

    ``solved``: an alignment of the same neurons already in the score's geometry
    (``cost="sqeuclidean"``, ``normalize="layer"``, uniform weights, same solver),
    whose cost matrix is the score's times ``2 d``: its plan is reused instead of
    solving the cross problem again.

    Returns a dict with ``score``, ``cross`` / ``self_teacher`` / ``self_student``
    (the three regularised OT values; the self terms are 0 for the exact
    solver), ``reg`` (absolute entropic regularisation, ``None`` for exact
    OT), ``cost_scale`` (median score cost), ``converged`` and ``plan``
    (the teacher x student plan in the score's geometry).
    """
    from otviz.transport import _finish

    C, Ctt, Css = score_geometry(t, s, a, b)
    if solved is not None:
        # the same problem with every cost times 2d: same plan, values and eps scale / 2d
        unit = 2.0 * t.shape[1]
        cross = solved
        v_ts = _objective(solved, solved.cost_matrix) / unit
        reg = None if solved.reg is None else solved.reg / unit
        scale = solved.cost_scale / unit
    else:
        opts = dict(method=method, cost="sqeuclidean", normalize="layer", eps=eps, reg_m=reg_m,
                    tol=tol, max_iter=max_iter, warm=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning below, for the three solves
            cross = _finish(C, a, b, **opts)
        v_ts = _objective(cross, C)
        reg, scale = cross.reg, cross.cost_scale
    v_tt = v_ss = 0.0
    converged = cross.converged
    if method != "emd":
        # the same absolute regularisation (and marginal penalty) in the three problems
        rho = math.inf if method == "sinkhorn" else reg_m * scale
        v_tt, ok_t = symmetric_ot(Ctt, a, reg, rho, tol=tol * scale, max_iter=max_iter)
        v_ss, ok_s = symmetric_ot(Css, b, reg, rho, tol=tol * scale, max_iter=max_iter)
        converged = converged and ok_t and ok_s
    value = v_ts - 0.5 * v_tt - 0.5 * v_ss
    # a divergence is >= 0; rounding (or an unconverged solve) may leave a tiny negative
    value = max(value, 0.0)
    if not math.isfinite(value):
        raise FloatingPointError(f"the OT score is not finite ({value}); please report it")
    if not converged:
        warnings.warn(f"the OT score's {method} solves did not converge within max_iter={max_iter} "
                      f"(tol={tol:g}); the score is approximate: raise max_iter or eps",
                      RuntimeWarning, stacklevel=4)
    return dict(score=value, cross=v_ts, self_teacher=v_tt, self_student=v_ss, reg=reg,
                cost_scale=scale, converged=converged, plan=cross.plan)
