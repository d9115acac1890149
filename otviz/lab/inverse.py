r"""Inverse optimal transport: learn the cost from observed matchings.

Forward OT takes a cost and returns a plan. Inverse OT (Ma, Sun, Ye, Zha and Zhou
2020) goes the other way: given observed couplings :math:`\hat P^{(t)}` between
point sets :math:`x^{(t)}_1, \dots, x^{(t)}_m` and :math:`y^{(t)}_1, \dots, y^{(t)}_k`,
find a cost :math:`c_\theta` whose entropic OT plan reproduces them.

The model
---------
For a cost matrix :math:`C` and the observed marginals :math:`a = \hat P\mathbf{1}`,
:math:`b = \hat P^\top\mathbf{1}`, the entropic plan is

.. math::
    P(C) = \operatorname*{argmin}_{P \in U(a, b)} \langle P, C\rangle
           + \varepsilon\,\mathrm{KL}(P \,|\, a b^\top),
    \qquad P(C)_{ij} = a_i b_j\, e^{(f_i + g_j - C_{ij})/\varepsilon},

with ``eps`` :math:`\varepsilon` **absolute** (in the units of the cost). The cost is
fitted by minimising the Kullback-Leibler divergence of the observed plans from the
model's plans (a maximum-likelihood fit: :math:`P(C)` is a log-linear model of the
observed pairs),

.. math::
    F(\theta) = \frac1T \sum_t \mathrm{KL}\big(\hat P^{(t)} \,\big|\, P(C_\theta^{(t)})\big)
    = \frac1T \sum_t \frac{1}{\varepsilon}\Big(\langle \hat P^{(t)}, C_\theta^{(t)}\rangle
      - \mathrm{OT}_\varepsilon(C_\theta^{(t)})\Big) + \mathrm{const},

where :math:`\mathrm{OT}_\varepsilon(C) = \langle a, f\rangle + \langle b, g\rangle` is the
entropic OT value. :math:`\mathrm{OT}_\varepsilon` is concave in :math:`C` (a minimum of
linear functions), so :math:`F` is **convex in the cost matrix**, and by the envelope
theorem its gradient needs no differentiation through the solver:

.. math::
    \frac{\partial\, \mathrm{KL}(\hat P \,|\, P(C))}{\partial C} = \frac{\hat P - P(C)}{\varepsilon}.

Each step solves one entropic OT problem per observed plan (the library's
stabilised Sinkhorn, :func:`otviz.lab._ot.solve`), holds :math:`P(C)` fixed and lets
torch's autograd carry :math:`(\hat P - P(C))/\varepsilon` to the parameters
(:func:`inverse_ot_loss`). The minimiser is L-BFGS with a strong-Wolfe line search.

Costs learned here
------------------
- :func:`fit_cost`: a **Mahalanobis** cost
  :math:`C_M(x, y) = (x - y)^\top M (x - y)`, :math:`M = LL^\top` symmetric positive
  semi-definite. :math:`C_M` is linear in :math:`M`, so :math:`F` is convex in
  :math:`M` over the PSD cone; it is not convex in :math:`L`, but for this
  factorisation with a square :math:`L` every local minimum is a global one
  (Burer and Monteiro 2005; Journee, Bach, Absil and Sepulchre 2010).
- :func:`fit_cost_mix`: a non-negative combination
  :math:`C_w = \sum_k w_k C_k` of given candidate costs (weights :math:`w_k = \theta_k^2`);
  :func:`explain_matching` uses it to say which of several costs between neurons
  explains an observed matching of two networks' neurons.
- any other parametrised cost: compute :math:`C_\theta` with torch and minimise
  :func:`inverse_ot_loss` in a loop of your own.

Identifiability
---------------
The entropic plan does not change when a function of :math:`i` alone or of
:math:`j` alone is added to the cost (the potentials absorb it). For the
Mahalanobis cost,

.. math::
    (x_i - y_j)^\top M (x_i - y_j) = x_i^\top M x_i + y_j^\top M y_j - 2\, x_i^\top M y_j,

so the plan depends on :math:`M` only through :math:`\bar X M \bar Y^\top/\varepsilon`,
with :math:`\bar X, \bar Y` the points centred by their weighted means. Hence:

- the **scale** of :math:`M` is identified given :math:`\varepsilon` (what the plans
  determine is :math:`M/\varepsilon`: the same plans observed at another
  :math:`\varepsilon` give :math:`M` scaled accordingly);
- :math:`M` is identified when some observed pair of point sets has centred
  points spanning :math:`\mathbb{R}^d` on both sides. When all points lie in a
  subspace :math:`V`, only the block :math:`\Pi_V M \Pi_V` is identified (the rest
  keeps the value it started from); :attr:`CostFit.span` gives :math:`V` and
  :meth:`CostFit.relative_error` can measure the error on it;
- for a mixture, weight :math:`w_k` is identified only as far as the candidate's
  double-centred cost matrix is not a linear combination of the others'
  (:attr:`MatchingExplanation.collinearity`).

Observed plans may be exact couplings, entropic plans or empirical frequencies of
sampled pairs (counts are fine: every plan is rescaled to total mass 1). A point
with no mass in an observed plan is left out of that plan's problem, which is
exact: a point of weight 0 does not change the entropic plan of the others. An
observed plan sharper than any entropic plan (a permutation, an exact OT plan)
pulls the fitted cost towards infinity (the fit stops where the stopping rule says,
at a scale the plan does not set); pass ``reg > 0`` (a ridge penalty on the
parameters) or a larger ``eps`` for such data.

Every iterate's entropic plans are solved to a marginal error of at most 1e-6
(trial points of the line search may be solved more loosely). Sinkhorn converges
slowly when the cost spans a few hundred ``eps`` or more (a nearly hard plan): such a
solve is redone by eps-scaling (from ``eps`` = a tenth of the cost's range, halved stage
by stage, each stage warm-started from the last one's potentials) and finished by
Newton's method on the dual, and that plan's later solves start from its potentials.
A fit whose iterate still cannot be solved to that accuracy raises ``RuntimeError``
saying so; the accuracy of the solves bounds that of the recovered cost (measured:
relative error ~1e-10 at ``eps = 0.5`` on 30 standard-normal points a set, ~1e-3 at
``eps = 0.3`` on 60; 2.5e-4 for a 5 x 5 plan generated at ``eps = 0.01`` and fitted
at ``eps = 0.1``, whose costs span 100 to 1000 ``eps``).

Reference
---------
Shaojun Ma, Haodong Sun, Xiaojing Ye, Hongyuan Zha and Haomin Zhou. *Learning Cost
Functions for Optimal Transport.* arXiv:2002.09650, 2020.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from otviz._device import resolve_device
from otviz.lab._ot import check_eps, coordinate_scale, solve

__all__ = [
    "CostFit",
    "MatchingExplanation",
    "MixFit",
    "ObservedPlans",
    "explain_matching",
    "fit_cost",
    "fit_cost_mix",
    "generate_plans",
    "inverse_ot_loss",
    "mahalanobis_cost",
    "neuron_costs",
    "readout_coupling",
]

REFERENCE = ("Shaojun Ma, Haodong Sun, Xiaojing Ye, Hongyuan Zha and Haomin Zhou. Learning Cost "
             "Functions for Optimal Transport. arXiv:2002.09650, 2020.")
_MARGINAL_RTOL = 1e-6   # observed marginals vs given weights
_SOLVE_TOL = 1e-10      # marginal error the inner entropic solves aim at
_SOLVE_ACCEPT = 1e-6    # ... and the largest one accepted when the solver stops short
_SOLVE_ITER = 10_000    # Sinkhorn iterations of a solve
_ANNEAL_ITER = 1_000    # Sinkhorn iterations of each eps-scaling stage (Newton finishes the last)
_NEWTON_STEPS = 20      # at most, finishing a sharp problem's eps-scaling (each one solve of m + k)
_M_TINY = np.finfo(np.float64).tiny * 2.0 ** 53  # a fitted M's scale below this loses precision
_M_HUGE = np.finfo(np.float64).max * 2.0 ** -53  # ... and above this its costs overflow


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------
def _array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of real numbers, got {type(x).__name__}") from None
    return arr


def _points(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    arr = _array(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (points, dim), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); pass at least one point with at "
                         f"least one coordinate")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has {arr.shape[1]} coordinates but the other point sets have "
                         f"{dim}; every point set must live in the same space")
    return arr


def _plan(p: Any, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    P = _array(p, name)
    if P.ndim != 2 or 0 in P.shape:
        raise ValueError(f"{name} must be a non-empty 2-D coupling of shape (m, k), got shape {P.shape}")
    if shape is not None and P.shape != shape:
        raise ValueError(f"{name} has shape {P.shape} but its point sets give {shape} "
                         f"(rows: the x points, columns: the y points)")
    if not np.isfinite(P).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (P < 0).any():
        raise ValueError(f"{name} has {int((P < 0).sum())} negative entries (smallest "
                         f"{P.min():.3g}); a coupling is a non-negative matrix of masses or counts")
    total = P.sum()
    if total <= 0:
        raise ValueError(f"{name} carries no mass (all zeros); an observed coupling needs at least "
                         f"one positive entry")
    return P / total


def _many(x: Any, name: str) -> list[Any]:
    """One array or a sequence of them -> a list (an ndarray/tensor of ndim 3 is a stack)."""
    if isinstance(x, (np.ndarray, torch.Tensor)):
        if x.ndim == 3:
            return list(x)
        return [x]
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
        if len(x) == 0:
            raise ValueError(f"{name} is empty; pass at least one")
        if all(np.ndim(v) == 0 for v in x):  # a flat list of numbers: one array
            return [x]
        if all(np.ndim(v) == 1 for v in x):  # a nested list of rows: one 2-D array
            return [x]
        return list(x)
    return [x]


def _check_marginal(w: Any, observed: np.ndarray, name: str, t: int) -> None:
    if w is None:
        return
    arr = _array(w, name)
    if arr.shape != observed.shape:
        raise ValueError(f"{name} for plan {t} must have shape {observed.shape} (one weight per "
                         f"point), got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
        raise ValueError(f"{name} for plan {t} must be finite, non-negative, with a positive sum")
    arr = arr / arr.sum()
    err = float(np.abs(arr - observed).max())
    if err > _MARGINAL_RTOL * max(float(observed.max()), 1e-300):
        side = "row" if name == "a" else "column"
        raise ValueError(f"plan {t}'s {side} sums differ from {name} by up to {err:.2e} (after both "
                         f"are scaled to total mass 1): an observed coupling must have the given "
                         f"weights as marginals. Pass {name}=None to use the plan's own marginals")


def _weights_list(w: Any, T: int, name: str) -> list[Any]:
    """None, one weight vector, or one per plan -> a list of T entries."""
    if w is None:
        return [None] * T
    if isinstance(w, (np.ndarray, torch.Tensor)) and w.ndim == 2:
        ws = list(w)
    elif isinstance(w, Sequence) and not isinstance(w, (str, bytes)) and any(np.ndim(v) > 0 for v in w):
        ws = list(w)
    else:
        ws = [w]
    if len(ws) != T:
        raise ValueError(f"{name} must give one weight vector per observed plan ({T}), got {len(ws)}")
    return ws


class _Problem:
    """One observed plan, restricted to its points with mass, on ``device``."""

    def __init__(self, P: np.ndarray, keep_r: np.ndarray, keep_c: np.ndarray, device: torch.device):
        self.keep_r, self.keep_c = keep_r, keep_c
        self.shape = P.shape
        Q = P[np.ix_(keep_r, keep_c)]
        self.P = Q
        self.a, self.b = Q.sum(1), Q.sum(0)
        ab = self.a[:, None] * self.b[None, :]
        nz = Q > 0
        #: KL(P_obs | a b^T): the divergence of the independent coupling (a zero cost)
        self.kl_independent = float(np.sum(Q[nz] * np.log(Q[nz] / ab[nz])))
        self.P_t = torch.as_tensor(Q, dtype=torch.float64, device=device)
        self.last_error = 0.0  # marginal error of the last entropic solve
        self.strict = True  # solve to _SOLVE_ACCEPT or raise (False: a line-search trial point)
        self.warm: tuple[np.ndarray, np.ndarray] | None = None  # potentials, once eps-scaling was needed

    def full(self, Q: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape)
        out[np.ix_(self.keep_r, self.keep_c)] = Q
        return out


def _problems(plans: list[np.ndarray], a: list[Any], b: list[Any], device: torch.device) -> list[_Problem]:
    out = []
    for t, P in enumerate(plans):
        r, c = P.sum(1), P.sum(0)
        _check_marginal(a[t], r, "a", t)
        _check_marginal(b[t], c, "b", t)
        out.append(_Problem(P, np.flatnonzero(r > 0), np.flatnonzero(c > 0), device))
    return out


# ----------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------
_SHARP_HINT = {
    "fit": ("the cost being learned makes the plans nearly deterministic: the observed plans are "
            "probably sharper than an entropic plan at this eps can be (an exact or permutation "
            "coupling). Pass reg > 0 to keep the cost bounded, or a larger eps"),
    "generate": "pass a larger eps, a smaller spread or a smaller M",
    "readout": "the regression weights span too many orders of magnitude; pass a larger ridge",
}


def _entropic(C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, what: str,
              strict: str | None = "fit", problem: "_Problem | None" = None) -> tuple[np.ndarray, float]:
    """The entropic plan (library solver) and its marginal error.

    ``strict`` names the context of the error raised when the solver stops short of
    :data:`_SOLVE_ACCEPT`; ``None`` accepts any finite plan (a trial point of a line
    search, judged by the value it gives). A cost the solver cannot finish from a cold
    start is solved again by eps-scaling (:func:`_annealed`); the ``problem`` it came from
    then keeps its potentials, and its next costs (close ones, along the minimisation)
    start from them by Newton's method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # judged below
        if problem is not None and problem.warm is not None:  # a sharp problem: no cold start
            P, err, pots = _newton(C, a, b, eps, *problem.warm)
            if not err <= _SOLVE_TOL:
                P, err, pots = _annealed(C, a, b, eps)
            problem.warm = pots
            ok = err <= _SOLVE_ACCEPT
        else:
            al = solve(C, a, b, eps=eps, tol=_SOLVE_TOL, max_iter=_SOLVE_ITER)
            P = np.asarray(al.plan, dtype=np.float64)
            err = float(al.marginal_error)
            ok = al.converged or err <= _SOLVE_ACCEPT
            if strict is not None and not ok:
                P, err, pots = _annealed(C, a, b, eps)
                ok = err <= _SOLVE_ACCEPT
                if problem is not None:
                    problem.warm = pots
    if not np.isfinite(P).all():
        raise RuntimeError(f"entropic OT gave a non-finite plan for {what} at eps={eps:g}; "
                           + _SHARP_HINT[strict or "fit"])
    if strict is not None and not ok:
        raise RuntimeError(
            f"entropic OT did not converge for {what} (marginal error {err:.1e} after the solver's "
            f"iterations): the cost is too sharp for eps={eps:g} (its entries span {np.ptp(C) / eps:.3g} "
            f"eps); " + _SHARP_HINT[strict])
    return P, err


def _annealed(C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float
              ) -> tuple[np.ndarray, float, tuple[np.ndarray, np.ndarray]]:
    """The entropic plan of a cost too sharp for a cold start: eps-scaling, then Newton.

    Sinkhorn's rate degrades as the plan nears a permutation: on a sharp 5 x 5 plan at
    eps = 0.1 (a cost spanning 100 to 1000 eps) it stalls at a marginal error of 1e-6 after
    60,000 iterations. So the problem is solved at ``eps0 = ptp(C) / 10`` (a smooth plan),
    then at ``eps0`` halved stage by stage down to ``eps``, each stage started from the
    previous stage's potentials; the last stage's potentials, already close, are finished
    by Newton's method on the dual (:func:`_newton`). Returns the plan, its marginal error
    and its potentials."""
    e = max(eps, float(np.ptp(C)) / 10.0)
    regs = []
    while e > eps * 1.5:
        regs.append(e)
        e /= 2.0
    regs.append(eps)
    warm = None
    for i, r in enumerate(regs):
        last = i == len(regs) - 1
        al = solve(C, a, b, eps=r, tol=_SOLVE_TOL if last else _SOLVE_ACCEPT, max_iter=_ANNEAL_ITER,
                   warm_start=warm)
        warm = al.potentials
    return _newton(C, a, b, eps, *warm)


def _newton(C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, f: np.ndarray, g: np.ndarray
            ) -> tuple[np.ndarray, float, tuple[np.ndarray, np.ndarray]]:
    r"""Newton's method on the entropic dual from potentials ``(f, g)`` (absolute), damped,
    until the marginal error is :data:`_SOLVE_TOL` or no step lowers it.

    With :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`, a step solves
    :math:`[\mathrm{diag}(P1), P; P^\top, \mathrm{diag}(P^\top 1)]\,(\delta f, \delta g)
    = \varepsilon\,(a - P1, b - P^\top 1)` (least squares: the system is singular along the
    potentials' gauge). It converges quadratically where Sinkhorn crawls (nearly hard plans)."""
    f, g = np.asarray(f, dtype=np.float64), np.asarray(g, dtype=np.float64)
    la, lb = np.log(a), np.log(b)
    m = C.shape[0]

    def state(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        with np.errstate(over="ignore"):
            P = np.exp((f[:, None] + g[None, :] - C) / eps + la[:, None] + lb[None, :])
        rows, cols = P.sum(1), P.sum(0)
        err = float(np.abs(rows - a).sum() + np.abs(cols - b).sum())
        return P, rows, cols, err if np.isfinite(err) else math.inf

    P, rows, cols, err = state(f, g)
    for _ in range(_NEWTON_STEPS):
        if err <= _SOLVE_TOL:
            break
        H = np.block([[np.diag(rows), P], [P.T, np.diag(cols)]])
        step = np.linalg.lstsq(H, eps * np.concatenate([a - rows, b - cols]), rcond=1e-13)[0]
        t = 1.0
        while t >= 1.0 / 64:  # damped: the full step once close, shorter ones before
            trial = state(f + t * step[:m], g + t * step[m:])
            if trial[3] < err:
                break
            t /= 2.0
        else:
            break  # no step lowers the error: as accurate as float64 allows here
        f, g = f + t * step[:m], g + t * step[m:]
        P, rows, cols, err = trial
    return P, err, (f, g)


def _kl_terms(P_obs: np.ndarray, P_model: np.ndarray, C: np.ndarray, a: np.ndarray, b: np.ndarray,
              eps: float, kl_independent: float) -> float:
    r"""KL(P_obs | P(C)) = KL(P_obs | ab^T) + <P_obs - P(C), C>/eps - KL(P(C) | ab^T).

    Exact when P(C) is the entropic plan with marginals (a, b) (its log is
    ``log a_i + log b_j + (f_i + g_j - C_ij)/eps``), and finite even where P(C)
    underflows to 0."""
    ab = a[:, None] * b[None, :]
    nz = P_model > 0
    kl_model = float(np.sum(P_model[nz] * np.log(P_model[nz] / ab[nz])))
    return kl_independent + float(np.sum((P_obs - P_model) * C)) / eps - kl_model


class _InverseKL(torch.autograd.Function):
    """KL(P_obs | P(C)) with gradient (P_obs - P(C)) / eps (envelope theorem)."""

    @staticmethod
    def forward(ctx, C, problem, eps, what):
        C_np = C.detach().to("cpu", torch.float64).numpy()
        P_model, problem.last_error = _entropic(C_np, problem.a, problem.b, eps, what,
                                                strict="fit" if problem.strict else None,
                                                problem=problem)
        value = _kl_terms(problem.P, P_model, C_np, problem.a, problem.b, eps, problem.kl_independent)
        G = (problem.P_t - torch.as_tensor(P_model, dtype=torch.float64, device=C.device)) / eps
        ctx.save_for_backward(G)
        problem.last_plan = P_model
        return torch.as_tensor(value, dtype=C.dtype, device=C.device)

    @staticmethod
    def backward(ctx, grad):
        (G,) = ctx.saved_tensors
        return (grad * G).to(grad.dtype), None, None, None


def inverse_ot_loss(C: torch.Tensor, plan: Any, *, eps: float) -> torch.Tensor:
    r"""The inverse-OT objective for one observed plan: :math:`\mathrm{KL}(\hat P \,|\, P(C))`.

    .. math::
        \mathrm{KL}(\hat P \,|\, P(C)) = \sum_{ij} \hat P_{ij} \log\frac{\hat P_{ij}}{P(C)_{ij}},
        \qquad \frac{\partial}{\partial C} = \frac{\hat P - P(C)}{\varepsilon},

    where :math:`P(C)` is the entropic OT plan of cost ``C`` at absolute ``eps`` with the
    observed plan's marginals (rows or columns without mass left out). Convex in
    ``C``; its gradient comes from the envelope theorem (one entropic solve, no
    differentiation through the solver), so any cost computed from parameters with
    torch can be learned by minimising this (Ma et al. 2020, arXiv:2002.09650).

    Parameters
    ----------
    C : tensor of shape (m, k)
        The cost, a floating-point torch tensor (any device; the OT solve runs on the CPU).
    plan : array of shape (m, k)
        The observed coupling, non-negative (masses or counts, rescaled to total mass 1).
    eps : float
        Absolute entropic regularisation (> 0), in the units of ``C``.

    Returns
    -------
    torch scalar, in nats, on ``C``'s device.
    """
    if not isinstance(C, torch.Tensor) or not C.dtype.is_floating_point:
        raise TypeError(f"C must be a floating-point torch tensor, got "
                        f"{getattr(C, 'dtype', type(C).__name__)}")
    if C.ndim != 2 or 0 in C.shape:
        raise ValueError(f"C must be a non-empty 2-D cost matrix, got shape {tuple(C.shape)}")
    if not torch.isfinite(C).all():
        raise ValueError("C contains NaN or infinite values")
    eps = check_eps(eps)
    P = _plan(plan, "plan", tuple(C.shape))
    (problem,) = _problems([P], [None], [None], C.device)
    Cr = C[torch.as_tensor(problem.keep_r, device=C.device)][:, torch.as_tensor(problem.keep_c, device=C.device)]
    return _InverseKL.apply(Cr, problem, eps, "the observed plan")


def _objective(costs: list[torch.Tensor], problems: list[_Problem], eps: float) -> torch.Tensor:
    total = 0.0
    for t, (C, pb) in enumerate(zip(costs, problems)):
        dev = C.device
        Cr = C[torch.as_tensor(pb.keep_r, device=dev)][:, torch.as_tensor(pb.keep_c, device=dev)]
        total = total + _InverseKL.apply(Cr, pb, eps, f"observed plan {t}")
    return total / len(problems)


def _minimise(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], problems: list[_Problem],
              eps: float, *, max_iter: int, tol: float) -> tuple[list[float], int, bool]:
    """L-BFGS (strong Wolfe) until the objective decreases by less than ``tol * (1 + |F|)``
    over one iteration; returns the objective at every iterate, the iterations and
    whether the rule was met.

    Trial points of the line search may be solved loosely (a sharp overshoot is judged
    by its large value); every iterate must be solved to :data:`_SOLVE_ACCEPT`."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=1, max_eval=25, tolerance_grad=0.0,
                            tolerance_change=0.0, history_size=20, line_search_fn="strong_wolfe")
    at_iterate = [False]

    def closure():
        opt.zero_grad()
        for pb in problems:  # step() evaluates the current iterate first: solve it accurately
            pb.strict = at_iterate[0]
        at_iterate[0] = False
        try:
            loss = loss_fn()
        finally:
            for pb in problems:
                pb.strict = True
        loss.backward()
        return loss

    history: list[float] = []
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        at_iterate[0] = True
        history.append(float(opt.step(closure).detach()))  # the objective at the iterate, then one step
        if len(history) >= 2 and history[-2] - history[-1] <= tol * (1.0 + abs(history[-1])):
            converged = True
            break
    with torch.no_grad():
        history.append(float(loss_fn()))  # at the returned parameters
    return history, n_iter, converged


def _check_iter(max_iter: Any, tol: Any, reg: Any) -> tuple[int, float, float]:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a non-negative finite number, got {type(tol).__name__} {tol!r}")
    tol = float(tol)
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a non-negative finite number, got {tol!r}")
    reg = float(reg)
    if not (reg >= 0 and math.isfinite(reg)):
        raise ValueError(f"reg must be a non-negative finite number (a ridge penalty), got {reg!r}")
    return int(max_iter), tol, reg


# ----------------------------------------------------------------------------
# Mahalanobis costs
# ----------------------------------------------------------------------------
def _check_psd(M: Any, name: str = "M") -> np.ndarray:
    A = _array(M, name)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"{name} must be a square (d, d) matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    scale = max(float(np.abs(A).max()), 1e-300)
    if np.abs(A - A.T).max() > 1e-8 * scale:
        raise ValueError(f"{name} must be symmetric (it defines (x - y)^T M (x - y)); pass (M + M.T) / 2")
    A = (A + A.T) / 2
    low = float(np.linalg.eigvalsh(A).min())
    if low < -1e-10 * scale:
        raise ValueError(f"{name} must be positive semi-definite, its smallest eigenvalue is {low:.3g}; "
                         f"a Mahalanobis cost needs M = L L^T")
    return A


def mahalanobis_cost(x: Any, y: Any, M: Any) -> np.ndarray:
    r"""The Mahalanobis cost matrix :math:`C_{ij} = (x_i - y_j)^\top M (x_i - y_j)`.

    Parameters
    ----------
    x : array of shape (m, d)
    y : array of shape (k, d)
    M : array of shape (d, d), symmetric positive semi-definite.
        ``M = np.eye(d)`` gives the squared Euclidean cost.

    Returns
    -------
    ndarray of shape (m, k), float64, non-negative.
    """
    X = _points(x, "x")
    Y = _points(y, "y", X.shape[1])
    A = _check_psd(M)
    if A.shape[0] != X.shape[1]:
        raise ValueError(f"M is {A.shape[0]}x{A.shape[0]} but the points have {X.shape[1]} coordinates")
    D = X[:, None, :] - Y[None, :, :]
    with np.errstate(over="ignore", invalid="ignore"):
        C = np.maximum(np.einsum("ijk,kl,ijl->ij", D, A, D), 0.0)
    if not np.isfinite(C).all():
        top = max(np.abs(X).max(), np.abs(Y).max())
        raise ValueError(f"the cost overflows float64 (points up to |{top:.3g}|, "
                         f"M up to |{np.abs(A).max():.3g}|); divide the points by a common scale s "
                         f"(and multiply M by s**2 for the same cost)")
    return C


def _mahalanobis_t(X: torch.Tensor, Y: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    D = (X[:, None, :] - Y[None, :, :]) @ L
    return (D * D).sum(-1)


class ObservedPlans(NamedTuple):
    """Point sets and the couplings observed between them (``xs[t]``, ``ys[t]``, ``plans[t]``)."""

    xs: list[np.ndarray]
    ys: list[np.ndarray]
    plans: list[np.ndarray]


def generate_plans(M: Any, *, n_plans: int = 5, n_points: int = 30, n_targets: int | None = None,
                   eps: float = 0.5, n_samples: int | None = None, spread: float = 1.0,
                   seed: int = 0) -> ObservedPlans:
    r"""Synthetic observed plans from a known Mahalanobis cost.

    For each of ``n_plans`` problems, ``n_points`` points :math:`x_i` and ``n_targets``
    points :math:`y_j` are drawn from :math:`\mathcal N(0, \mathrm{spread}^2 I_d)`, and the
    observed plan is the entropic OT plan of :math:`C_M` at absolute ``eps`` with
    uniform weights (the library's Sinkhorn). With ``n_samples`` it is instead the
    empirical coupling of ``n_samples`` pairs drawn from that plan (counts divided by
    ``n_samples``): noisy observations, as when matched pairs are counted.

    Returns
    -------
    ObservedPlans
        ``(xs, ys, plans)``, lists of ``n_plans`` arrays of shapes (m, d), (k, d), (m, k).
    """
    A = _check_psd(M)
    for name, v in (("n_plans", n_plans), ("n_points", n_points)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    k = n_points if n_targets is None else n_targets
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"n_targets must be a positive integer, got {n_targets!r}")
    if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer))
                                  or n_samples < 1):
        raise ValueError(f"n_samples must be a positive integer or None (exact plans), got {n_samples!r}")
    eps = check_eps(eps)
    spread = float(spread)
    if not (spread > 0 and math.isfinite(spread)):
        raise ValueError(f"spread must be a positive number, got {spread!r}")
    rng = np.random.default_rng(seed)
    d = A.shape[0]
    xs, ys, plans = [], [], []
    for t in range(int(n_plans)):
        x = rng.normal(scale=spread, size=(int(n_points), d))
        y = rng.normal(scale=spread, size=(int(k), d))
        P, _ = _entropic(mahalanobis_cost(x, y, A), np.full(len(x), 1 / len(x)),
                         np.full(len(y), 1 / len(y)), eps, f"generated plan {t}", strict="generate")
        if n_samples is not None:
            counts = rng.multinomial(int(n_samples), P.ravel() / P.sum()).reshape(P.shape)
            P = counts / float(n_samples)
        xs.append(x)
        ys.append(y)
        plans.append(P)
    return ObservedPlans(xs, ys, plans)


@dataclass(frozen=True)
class CostFit:
    r"""A Mahalanobis cost learned from observed plans (:func:`fit_cost`).

    Attributes
    ----------
    M : ndarray (d, d)
        The learned matrix, :math:`M = LL^\top`.
    L : ndarray (d, d)
    eps : float
        The absolute entropic regularisation the plans were modelled with.
    loss : ndarray
        The objective (mean KL over plans, nats, plus the ridge term when ``reg > 0``)
        at every iterate; ``loss[0]`` at the start (the best isotropic cost, unless
        ``init`` was given) and ``loss[-1]`` at :attr:`M`.
    kl : ndarray (T,)
        :math:`\mathrm{KL}(\hat P^{(t)} \,|\, P(C_M^{(t)}))` per observed plan, nats.
    kl_independent : ndarray (T,)
        :math:`\mathrm{KL}(\hat P^{(t)} \,|\, ab^\top)`: the divergence left by a zero cost
        (the independent coupling), the reference for :attr:`explained`.
    explained : float
        :math:`1 - \sum_t \mathrm{KL}_t / \sum_t \mathrm{KL}^{\mathrm{indep}}_t`: the share
        of the observed plans' divergence from independence that the cost explains (1 for
        a perfect fit; the deviance explained of a log-linear model). NaN when every observed
        plan *is* the independent coupling :math:`ab^\top`: there is nothing to explain.
    plans : list of ndarray
        The reproduced plans :math:`P(C_M^{(t)})`.
    marginal_error : float
        Largest marginal error of the reproduced plans (solver accuracy).
    isotropic_scale, kl_isotropic : float
        The best isotropic cost :math:`s\,\|x - y\|^2` (the default starting point) and its
        objective (mean KL, plus the ridge term when ``reg > 0``).
    span : ndarray (d, r)
        Orthonormal basis of the span of the centred points: :math:`M` is identified on it.
    n_iter, converged, seconds : the minimisation's iterations, whether the stopping rule
        was met within ``max_iter``, and its wall time.
    """

    M: np.ndarray
    L: np.ndarray
    eps: float
    loss: np.ndarray
    kl: np.ndarray
    kl_independent: np.ndarray
    explained: float
    plans: list[np.ndarray] = field(repr=False)
    marginal_error: float
    isotropic_scale: float
    kl_isotropic: float
    span: np.ndarray = field(repr=False)
    n_iter: int
    converged: bool
    seconds: float

    def relative_error(self, M_true: Any, *, on_span: bool = False) -> float:
        r""":math:`\|\hat M - M\|_F / \|M\|_F`; with ``on_span=True`` both matrices are first
        restricted to :attr:`span` (:math:`\Pi \hat M \Pi` vs :math:`\Pi M \Pi`), the part
        the plans identify."""
        A = _check_psd(M_true, "M_true")
        if A.shape != self.M.shape:
            raise ValueError(f"M_true has shape {A.shape}, the fit {self.M.shape}")
        Mh = self.M
        if on_span:
            Pi = self.span @ self.span.T
            A, Mh = Pi @ A @ Pi, Pi @ Mh @ Pi
        c = float(np.abs(A).max())  # both divided by one number (norms of 1e±200 entries overflow)
        if c == 0:
            raise ValueError("M_true is zero (on the span): the relative error is undefined")
        return float(np.linalg.norm(Mh / c - A / c) / np.linalg.norm(A / c))


def _span(xs: list[np.ndarray], ys: list[np.ndarray], problems: list[_Problem]) -> np.ndarray:
    rows = []
    for x, y, pb in zip(xs, ys, problems):
        X, Y = x[pb.keep_r], y[pb.keep_c]
        rows += [X - pb.a @ X, Y - pb.b @ Y]
    Z = np.concatenate(rows)
    _, s, Vt = np.linalg.svd(Z, full_matrices=False)
    r = int((s > 1e-10 * max(s.max(), 1e-300)).sum())
    return Vt[:r].T


def fit_cost(xs: Any, ys: Any, plans: Any, *, eps: float, a: Any = None, b: Any = None,
             init: Any = None, reg: float = 0.0, max_iter: int = 200, tol: float = 1e-9,
             device: str | torch.device = "cpu") -> CostFit:
    r"""Learn a Mahalanobis cost whose entropic OT plans reproduce observed plans.

    Minimises, over :math:`M = LL^\top`,

    .. math::
        F(M) = \frac1T \sum_{t=1}^T \mathrm{KL}\big(\hat P^{(t)} \,\big|\, P(C_M^{(t)})\big)
               + \mathrm{reg}\,\|M\|_F^2,
        \qquad C^{(t)}_{M,ij} = (x^{(t)}_i - y^{(t)}_j)^\top M (x^{(t)}_i - y^{(t)}_j),

    where :math:`P(C)` is the entropic plan at absolute ``eps`` with the observed
    marginals. :math:`F` is convex in :math:`M`; its gradient in each cost matrix is
    :math:`(\hat P - P(C))/\varepsilon` (envelope theorem), carried to :math:`L` by
    autograd. The start is the best isotropic cost :math:`s\,\|x - y\|^2` (a
    one-parameter fit, also reported as a baseline) unless ``init`` is given.

    **Stopping rule**: L-BFGS iterations (strong-Wolfe line search, each evaluation one
    entropic solve per plan) until :math:`F` decreases by at most
    ``tol * (1 + |F|)`` over one iteration, or ``max_iter`` iterations.

    **Identifiability**: the plans determine :math:`M/\varepsilon` (so :math:`M` given
    ``eps``), and only on the span of the centred points (:attr:`CostFit.span`); see
    the module's documentation.

    **Units**: points far from unit size (beyond about 1e±18) are divided by a power of two
    for the fit (the same problem, with ``reg`` and ``init`` converted) and :math:`M` is
    converted back; points so large or small that :math:`M` (of the order of ``eps`` over
    their squared distances) leaves the range float64 holds to full precision are refused
    with a ``ValueError`` that says how to rescale them.

    Parameters
    ----------
    xs, ys : array (m, d) and (k, d), or sequences of T such arrays
        The point sets of each observed plan (same ``d`` everywhere).
    plans : array (m, k) or sequence of T arrays
        Observed couplings: non-negative masses or counts (each rescaled to total mass 1).
    eps : float
        Absolute entropic regularisation of the model, in the units of the cost (> 0).
    a, b : optional weights (or one per plan)
        When given, each plan's row (column) sums must equal them (up to scale), else
        ``ValueError``; by default the plans' own marginals are used.
    init : array (d, d), optional
        Starting :math:`M` (PSD); default the best isotropic cost.
    reg : float
        Ridge penalty on :math:`M` (0 by default); use it for plans sharper than
        entropic plans (exact or permutation couplings): without it their cost grows until
        the stopping rule stops it, reproducing the plan with a scale the plan does not set.
        Sharp entropic plans (costs spanning hundreds of ``eps``) need no ``reg``: a solve
        that Sinkhorn cannot finish from a cold start is redone by eps-scaling and
        finished by Newton's method on the dual.
    max_iter, tol : the stopping rule.
    device : where the costs and gradients are computed (the OT solves run on the CPU).

    Returns
    -------
    CostFit

    References
    ----------
    Shaojun Ma, Haodong Sun, Xiaojing Ye, Hongyuan Zha and Haomin Zhou. Learning Cost
    Functions for Optimal Transport. arXiv:2002.09650, 2020.

    Examples
    --------
    >>> M = np.array([[2.0, 0.6], [0.6, 0.5]])
    >>> xs, ys, plans = generate_plans(M, n_plans=3, eps=0.5)
    >>> fit = fit_cost(xs, ys, plans, eps=0.5)
    >>> fit.relative_error(M) < 1e-4
    True
    """
    t0 = time.perf_counter()
    eps = check_eps(eps)
    max_iter, tol, reg = _check_iter(max_iter, tol, reg)
    dev = resolve_device(device)
    X_list, Y_list, P_list = _many(xs, "xs"), _many(ys, "ys"), _many(plans, "plans")
    T = len(P_list)
    if not (len(X_list) == len(Y_list) == T):
        raise ValueError(f"got {len(X_list)} x point sets, {len(Y_list)} y point sets and {T} plans; "
                         f"pass one of each per observed plan")
    X_np = [_points(x, f"xs[{t}]") for t, x in enumerate(X_list)]
    d = X_np[0].shape[1]
    X_np = [_points(x, f"xs[{t}]", d) for t, x in enumerate(X_np)]
    Y_np = [_points(y, f"ys[{t}]", d) for t, y in enumerate(Y_list)]
    P_np = [_plan(p, f"plans[{t}]", (len(x), len(y))) for t, (p, x, y) in enumerate(zip(P_list, X_np, Y_np))]
    problems = _problems(P_np, _weights_list(a, T, "a"), _weights_list(b, T, "b"), dev)
    # Points far from unit size (beyond about 1e±18) are divided by a power of two u (exact):
    # the cost (x - y)^T M (x - y) is unchanged with M u^2 for the points / u, whose squared
    # distances (and their squares, in the objective's scale) stay far from overflow. The fit
    # is the same problem (reg scales by u^-4, init by u^2); M, L and the isotropic scale are
    # scaled back at the end.
    u = coordinate_scale(*X_np, *Y_np, bits=60)
    top = max(float(np.abs(v).max()) for v in X_np + Y_np)
    e = math.frexp(u)[1] - 1  # u = 2**e
    if u != 1.0:
        X_np, Y_np = [x / u for x in X_np], [y / u for y in Y_np]
        try:
            reg = math.ldexp(reg, -4 * e)
        except OverflowError:
            raise ValueError(f"reg = {reg:g} is too large for points this small (largest |coordinate| "
                             f"{top:.3g}): the ridge reg * ||M||^2 overflows; pass a smaller reg or "
                             f"divide the points by a common scale") from None
    span = _span(X_np, Y_np, problems)
    Xs = [torch.as_tensor(x, dtype=torch.float64, device=dev) for x in X_np]
    Ys = [torch.as_tensor(y, dtype=torch.float64, device=dev) for y in Y_np]

    def costs(L: torch.Tensor) -> list[torch.Tensor]:
        return [_mahalanobis_t(X, Y, L) for X, Y in zip(Xs, Ys)]

    # 1. the best isotropic cost s ||x - y||^2, s = theta^2 (one parameter)
    sq = [C.detach() for C in costs(torch.eye(d, dtype=torch.float64, device=dev))]
    spread = float(np.mean([float(C.std()) for C in sq])) or 1.0
    theta = torch.tensor(math.sqrt(eps / spread), dtype=torch.float64, device=dev, requires_grad=True)

    def iso_loss() -> torch.Tensor:
        s = theta * theta
        return _objective([s * C for C in sq], problems, eps) + reg * d * s * s

    iso_hist, _, _ = _minimise([theta], iso_loss, problems, eps, max_iter=50, tol=tol)
    s_iso = float(theta.detach() ** 2)
    if u != 1.0 and s_iso > 0.0:
        try:
            m_scale = math.ldexp(s_iso, -2 * e)
        except OverflowError:
            m_scale = math.inf
        if not _M_TINY <= m_scale <= _M_HUGE:
            raise ValueError(
                f"xs and ys are so {'large' if u > 1.0 else 'small'} (largest |coordinate| {top:.3g}) "
                f"that the fitted M, of the order of eps over their squared distances (here about "
                f"1e{math.log10(s_iso) - 2 * e * math.log10(2.0):.0f}), is outside the range float64 "
                f"holds to full precision ({_M_TINY:.3g} to {_M_HUGE:.3g}); divide every point set by one common scale s "
                f"first (e.g. s = {top:.3g}): the observed plans stay the same, and the M fitted to "
                f"the points divided by s is s**2 times the M of the points as given")
    # 2. the full matrix
    if init is None:
        L0 = math.sqrt(s_iso) * np.eye(d)
    else:
        A0 = _check_psd(init, "init")
        if A0.shape != (d, d):
            raise ValueError(f"init must be a ({d}, {d}) matrix, got {A0.shape}")
        A0 = A0 * (u * u)  # in the units of the rescaled points
        if not np.isfinite(A0).all():
            raise ValueError(f"init times the points' squared scale overflows float64; pass a "
                             f"smaller init (about eps over the points' squared distances)")
        w, V = np.linalg.eigh(A0)
        L0 = V * np.sqrt(np.maximum(w, 0.0))
    L = torch.as_tensor(L0, dtype=torch.float64, device=dev).clone().requires_grad_(True)

    def loss() -> torch.Tensor:
        M = L @ L.T
        return _objective(costs(L), problems, eps) + reg * (M * M).sum()

    history, n_iter, converged = _minimise([L], loss, problems, eps, max_iter=max_iter, tol=tol)
    L_np = L.detach().cpu().numpy()
    # the final plans and divergences (the last evaluation was at L)
    kl, fitted, merr = [], [], 0.0
    with torch.no_grad():
        for t, (C, pb) in enumerate(zip(costs(L), problems)):
            C_np = C.cpu().numpy()[np.ix_(pb.keep_r, pb.keep_c)]
            P_model, _ = _entropic(C_np, pb.a, pb.b, eps, f"observed plan {t}")
            kl.append(_kl_terms(pb.P, P_model, C_np, pb.a, pb.b, eps, pb.kl_independent))
            merr = max(merr, float(np.abs(P_model.sum(1) - pb.a).max()), float(np.abs(P_model.sum(0) - pb.b).max()))
            fitted.append(pb.full(P_model))
    kl_arr = np.maximum(np.asarray(kl), 0.0)  # the formula is exact up to the solver's accuracy
    kl_ind = np.asarray([pb.kl_independent for pb in problems])
    if u != 1.0:  # back to the units of the points as given (exact: u is a power of two)
        L_np, s_iso = np.ldexp(L_np, -e), math.ldexp(s_iso, -2 * e)
    return CostFit(M=L_np @ L_np.T, L=L_np, eps=eps, loss=np.asarray(history), kl=kl_arr,
                   kl_independent=kl_ind, explained=_explained(kl_arr, kl_ind), plans=fitted,
                   marginal_error=merr, isotropic_scale=s_iso, kl_isotropic=float(iso_hist[-1]),
                   span=span, n_iter=n_iter, converged=converged, seconds=time.perf_counter() - t0)


def _explained(kl: np.ndarray, kl_ind: np.ndarray) -> float:
    """1 - sum KL / sum KL(independent); NaN when the plans are the independent coupling (up to
    the solver's accuracy, 1e-9 nats a plan): there is nothing to explain."""
    den = float(kl_ind.sum())
    return float("nan") if den <= 1e-9 * len(kl_ind) else 1.0 - float(kl.sum()) / den


# ----------------------------------------------------------------------------
# mixtures of candidate costs
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MixFit:
    r"""A non-negative combination of candidate costs fitted to observed plans (:func:`fit_cost_mix`).

    ``weights[k]`` multiplies candidate ``names[k]``; the plan model is the entropic plan
    of :math:`\sum_k w_k C_k` at :attr:`eps`, so only :math:`w/\varepsilon` is identified.
    ``loss``, ``kl``, ``kl_independent``, ``explained``, ``plans``, ``marginal_error``,
    ``n_iter``, ``converged``, ``seconds`` as in :class:`CostFit`.
    """

    names: list[str]
    weights: np.ndarray
    eps: float
    loss: np.ndarray
    kl: np.ndarray
    kl_independent: np.ndarray
    explained: float
    plans: list[np.ndarray] = field(repr=False)
    marginal_error: float
    n_iter: int
    converged: bool
    seconds: float


def _candidates(costs: Any, T: int, shapes: list[tuple[int, int]]) -> tuple[list[str], list[list[np.ndarray]]]:
    """-> names, and per candidate one (m_t, k_t) cost matrix per plan."""
    if isinstance(costs, Mapping):
        names, values = [str(n) for n in costs], list(costs.values())
    elif isinstance(costs, (np.ndarray, torch.Tensor)) and costs.ndim == 3 and T == 1:
        values = list(costs)
        names = [f"cost {i}" for i in range(len(values))]
    elif isinstance(costs, Sequence) and not isinstance(costs, (str, bytes)):
        values = list(costs)
        names = [f"cost {i}" for i in range(len(values))]
    else:
        raise TypeError("costs must be a dict {name: cost matrix (or one per plan)} or a list of them")
    if not values:
        raise ValueError("costs is empty; pass at least one candidate cost")
    out = []
    for name, v in zip(names, values):
        per_plan = [v] if T == 1 else _many(v, f"costs[{name!r}]")
        if len(per_plan) != T:
            raise ValueError(f"candidate {name!r} gives {len(per_plan)} cost matrices for {T} plans")
        mats = []
        for t, (C, shape) in enumerate(zip(per_plan, shapes)):
            arr = _array(C, f"costs[{name!r}]")
            if arr.shape != shape:
                raise ValueError(f"candidate {name!r} for plan {t} has shape {arr.shape}, the plan {shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"candidate {name!r} for plan {t} contains NaN or infinite values")
            mats.append(arr)
        out.append(mats)
    return names, out


def fit_cost_mix(costs: Any, plans: Any, *, eps: float = 1.0, a: Any = None, b: Any = None,
                 reg: float = 0.0, max_iter: int = 200, tol: float = 1e-9,
                 device: str | torch.device = "cpu") -> MixFit:
    r"""Learn non-negative weights of candidate costs whose entropic OT reproduces observed plans.

    .. math::
        \min_{w \ge 0}\ \frac1T \sum_t \mathrm{KL}\Big(\hat P^{(t)} \,\Big|\,
        P\big(\textstyle\sum_k w_k C_k^{(t)}\big)\Big) + \mathrm{reg}\,\|w\|^2,

    convex in :math:`w` (the cost is linear in it); solved with :math:`w_k = \theta_k^2`
    by L-BFGS from :math:`w = 0`'s neighbourhood (all :math:`w_k` equal), with the
    stopping rule of :func:`fit_cost`. Only :math:`w/\varepsilon` is identified, so
    ``eps`` can stay at 1 and the weights read as inverse temperatures; a candidate
    whose double-centred matrix is close to a combination of the others' has a
    poorly determined weight.

    Parameters
    ----------
    costs : dict {name: array (m, k)} for one plan, {name: [array (m_t, k_t), ...]} for
        several; or a list of them (named ``"cost 0"``, ...).
    plans : array (m, k) or sequence of T arrays
    eps, a, b, reg, max_iter, tol, device : as in :func:`fit_cost`.

    Returns
    -------
    MixFit

    References
    ----------
    Ma, Sun, Ye, Zha and Zhou. Learning Cost Functions for Optimal Transport.
    arXiv:2002.09650, 2020.
    """
    t0 = time.perf_counter()
    eps = check_eps(eps)
    max_iter, tol, reg = _check_iter(max_iter, tol, reg)
    dev = resolve_device(device)
    P_list = _many(plans, "plans")
    T = len(P_list)
    P_np = [_plan(p, f"plans[{t}]") for t, p in enumerate(P_list)]
    names, cands = _candidates(costs, T, [P.shape for P in P_np])
    problems = _problems(P_np, _weights_list(a, T, "a"), _weights_list(b, T, "b"), dev)
    K = len(names)
    stacks = [torch.as_tensor(np.stack([cands[c][t] for c in range(K)]), dtype=torch.float64, device=dev)
              for t in range(T)]
    spread = float(np.mean([float(S.std(dim=(1, 2)).mean()) for S in stacks])) or 1.0
    theta = torch.full((K,), math.sqrt(eps / (K * spread)), dtype=torch.float64, device=dev,
                       requires_grad=True)

    def mixed(w: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tensordot(w, S, dims=1) for S in stacks]

    def loss() -> torch.Tensor:
        w = theta * theta
        return _objective(mixed(w), problems, eps) + reg * (w * w).sum()

    history, n_iter, converged = _minimise([theta], loss, problems, eps, max_iter=max_iter, tol=tol)
    w = (theta.detach() ** 2)
    kl, fitted, merr = [], [], 0.0
    for t, (C, pb) in enumerate(zip(mixed(w), problems)):
        C_np = C.cpu().numpy()[np.ix_(pb.keep_r, pb.keep_c)]
        P_model, _ = _entropic(C_np, pb.a, pb.b, eps, f"observed plan {t}")
        kl.append(_kl_terms(pb.P, P_model, C_np, pb.a, pb.b, eps, pb.kl_independent))
        merr = max(merr, float(np.abs(P_model.sum(1) - pb.a).max()), float(np.abs(P_model.sum(0) - pb.b).max()))
        fitted.append(pb.full(P_model))
    kl_arr = np.maximum(np.asarray(kl), 0.0)
    kl_ind = np.asarray([pb.kl_independent for pb in problems])
    return MixFit(names=names, weights=w.cpu().numpy(), eps=eps, loss=np.asarray(history), kl=kl_arr,
                  kl_independent=kl_ind, explained=_explained(kl_arr, kl_ind), plans=fitted,
                  marginal_error=merr, n_iter=n_iter, converged=converged,
                  seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------
# neurons: which cost explains an observed matching?
# ----------------------------------------------------------------------------
def _double_centre(C: np.ndarray) -> np.ndarray:
    return C - C.mean(0, keepdims=True) - C.mean(1, keepdims=True) + C.mean()


@dataclass(frozen=True)
class MatchingExplanation:
    r"""Which candidate cost explains an observed matching (:func:`explain_matching`).

    Attributes
    ----------
    table : pandas.DataFrame
        One row per candidate: ``explained alone`` (the share of the plan's divergence
        from independence explained by that cost alone, at its best scale),
        ``KL alone`` (nats), ``weight alone``, and ``weight in mix`` (the joint fit's
        weight, in units of the candidate's spread), sorted by ``explained alone``.
    best : str
        The candidate that explains most on its own.
    mix : MixFit
        The joint fit of all candidates.
    alone : dict {name: MixFit}
        One fit per candidate.
    collinearity : pandas.DataFrame
        Correlations between the candidates' double-centred cost matrices (the only part
        a plan sees): near +-1 means the plans cannot tell the two costs apart.
    scales : dict {name: float}
        The standard deviation of each candidate's double-centred matrix; every candidate
        is divided by it before fitting, so the weights are comparable.
    """

    table: Any
    best: str
    mix: MixFit
    alone: dict[str, MixFit]
    collinearity: Any
    scales: dict[str, float]


def explain_matching(plan: Any, costs: Mapping[str, Any], *, eps: float = 1.0, reg: float = 0.0,
                     max_iter: int = 200, tol: float = 1e-9) -> MatchingExplanation:
    r"""Which of several candidate costs explains an observed matching?

    Each candidate :math:`C_k` is rescaled to unit spread (divided by the standard
    deviation of its double-centred matrix, the part an entropic plan responds to),
    then (1) fitted alone, :math:`\min_{s \ge 0} \mathrm{KL}(\hat P \,|\, P(s\,C_k))`, and
    (2) jointly, :math:`\min_{w \ge 0} \mathrm{KL}(\hat P \,|\, P(\sum_k w_k C_k))`
    (:func:`fit_cost_mix`). The share of the observed plan's divergence from the
    independent coupling that a fit removes, :math:`1 - \mathrm{KL}_{\text{fit}} /
    \mathrm{KL}(\hat P \,|\, ab^\top)`, says how much of the matching the cost explains.

    Parameters
    ----------
    plan : array (m, k)
        The observed matching (non-negative; rows and columns without mass are left out).
    costs : dict {name: array (m, k)}
        Candidate costs between the same rows and columns (e.g. :func:`neuron_costs`).
        Constant candidates (no spread) are refused.
    eps, reg, max_iter, tol : as in :func:`fit_cost_mix`.

    Returns
    -------
    MatchingExplanation

    References
    ----------
    Ma, Sun, Ye, Zha and Zhou. Learning Cost Functions for Optimal Transport.
    arXiv:2002.09650, 2020.
    """
    import pandas as pd

    if not isinstance(costs, Mapping) or not costs:
        raise TypeError("costs must be a non-empty dict {name: cost matrix of shape (m, k)}")
    P = _plan(plan, "plan")
    scaled, scales, centred = {}, {}, {}
    for name, C in costs.items():
        arr = _array(C, f"costs[{name!r}]")
        if arr.shape != P.shape:
            raise ValueError(f"candidate {name!r} has shape {arr.shape}, the plan {P.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"candidate {name!r} contains NaN or infinite values")
        Z = _double_centre(arr)
        sd = float(Z.std())
        if not sd > 1e-12 * max(float(np.abs(arr).max()), 1e-300):
            raise ValueError(f"candidate {name!r} is a sum of a row and a column term (no spread "
                             f"once double-centred): every plan is the same under it; drop it")
        scaled[str(name)], scales[str(name)], centred[str(name)] = arr / sd, sd, Z.ravel() / sd
    names = list(scaled)
    opts = dict(eps=eps, reg=reg, max_iter=max_iter, tol=tol)
    alone = {n: fit_cost_mix({n: scaled[n]}, P, **opts) for n in names}
    mix = fit_cost_mix(scaled, P, **opts) if len(names) > 1 else alone[names[0]]
    table = pd.DataFrame({
        "explained alone": [alone[n].explained for n in names],
        "KL alone": [float(alone[n].kl[0]) for n in names],
        "weight alone": [float(alone[n].weights[0]) for n in names],
        "weight in mix": [float(w) for w in mix.weights],
    }, index=pd.Index(names, name="candidate cost")).sort_values("explained alone", ascending=False)
    Z = np.stack([centred[n] for n in names])
    coll = pd.DataFrame(np.corrcoef(Z) if len(names) > 1 else np.ones((1, 1)), index=names, columns=names)
    return MatchingExplanation(table=table, best=str(table.index[0]), mix=mix, alone=alone,
                               collinearity=coll, scales=scales)


def neuron_costs(teacher: Any, student: Any, *, labels: Any = None) -> dict[str, np.ndarray]:
    r"""Candidate costs between the neurons of two layers, each from a different view of a neuron.

    ``teacher`` and ``student`` are activations on the same probe batch, of shape
    (n, channels, ...) (a conv layer) or (n, units); neuron :math:`i` is seen as

    - ``"pixels: sq. Euclidean"``: its whole response map over the batch
      (:func:`otviz.neurons` with ``spatial="flatten"``), squared Euclidean cost on the raw
      responses (sensitive to their scale);
    - ``"pixels: correlation"``: the same vectors, :math:`1 - \text{Pearson correlation}`;
    - ``"images: correlation"``: its mean response to each image (``spatial="mean"``),
      correlation cost: which images excite it, wherever in the image;
    - ``"classes: correlation"`` (when ``labels`` are given): its mean response to each
      class, correlation cost: which classes it prefers.

    Returns
    -------
    dict {name: ndarray (m, k)}
    """
    import otviz

    def mat(act: Any, spatial: str) -> np.ndarray:
        t = torch.as_tensor(act.detach() if isinstance(act, torch.Tensor) else np.asarray(act))
        if t.ndim < 2 or t.shape[0] < 2:
            raise ValueError(f"activations must have shape (n, neurons, ...) with n >= 2 probe inputs, "
                             f"got {tuple(t.shape)}")
        if t.ndim == 2 and spatial == "mean":
            spatial = "flatten"
        return otviz.neurons(t.to(torch.float64), spatial=spatial).cpu().numpy()

    from otviz.capture import dead_neurons

    T_flat, S_flat = mat(teacher, "flatten"), mat(student, "flatten")
    T_img, S_img = mat(teacher, "mean"), mat(student, "mean")
    for side, M in (("teacher", T_img), ("student", S_img)):
        dead = dead_neurons(M)
        if dead.size:
            raise ValueError(f"the {side} has neurons with a constant response over the probe batch "
                             f"(rows {dead[:8].tolist()}); the correlation costs are undefined for them. "
                             f"Drop them first (otviz.capture(...).neurons(layer, drop_dead=True))")
    out = {
        "pixels: sq. Euclidean": np.asarray(otviz.cost_matrix(T_flat, S_flat, "sqeuclidean", None)),
        "pixels: correlation": np.asarray(otviz.cost_matrix(T_flat, S_flat, "correlation", None)),
        "images: correlation": np.asarray(otviz.cost_matrix(T_img, S_img, "correlation", None)),
    }
    if labels is not None:
        y = _array(labels, "labels").ravel()
        if y.shape[0] != T_img.shape[1]:
            raise ValueError(f"labels must give one class per probe input ({T_img.shape[1]}), got {y.shape[0]}")
        classes = np.unique(y)
        if len(classes) < 3:
            raise ValueError(f"labels hold {len(classes)} classes; a class profile needs at least 3")
        T_cls = np.stack([T_img[:, y == c].mean(1) for c in classes], 1)
        S_cls = np.stack([S_img[:, y == c].mean(1) for c in classes], 1)
        out["classes: correlation"] = np.asarray(otviz.cost_matrix(T_cls, S_cls, "correlation", None))
    return out


def readout_coupling(teacher: Any, student: Any, *, ridge: float = 1e-2) -> np.ndarray:
    r"""A matching read from function: which teacher neurons each student neuron is made of.

    With every neuron's responses standardised (rows of ``teacher`` (m, d) and
    ``student`` (k, d), :func:`otviz.neurons` matrices on the same probe batch), each
    student neuron is regressed on the teacher neurons,

    .. math::
        W = \operatorname*{argmin}_W \tfrac1d\|S - W^\top T\|_F^2 + \mathrm{ridge}\,\|W\|_F^2
          = (TT^\top/d + \mathrm{ridge}\, I)^{-1}\, T S^\top / d,

    and the coupling is :math:`|W|` scaled to uniform marginals,
    :math:`P = \operatorname{diag}(u)\,|W|\,\operatorname{diag}(v) \in U(\frac1m, \frac1k)`
    (Sinkhorn's matrix scaling, the entropic plan of the cost :math:`-\log|W|` at
    :math:`\varepsilon = 1`, computed by the library's solver). No transport cost
    between neurons enters it, so it is a fair observation for :func:`explain_matching`.

    Returns
    -------
    ndarray (m, k), non-negative, rows summing to 1/m and columns to 1/k.
    """
    T = _points(teacher, "teacher")
    S = _points(student, "student", T.shape[1])
    ridge = float(ridge)
    if not (ridge > 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be a positive number (it keeps the regression well posed), got {ridge!r}")
    if T.shape[1] < 2:
        raise ValueError("the neurons need at least 2 responses to be standardised")
    sd_t, sd_s = T.std(1, keepdims=True), S.std(1, keepdims=True)
    for side, sd in (("teacher", sd_t), ("student", sd_s)):
        if (sd <= 1e-12 * max(float(sd.max()), 1e-300)).any():
            rows = np.flatnonzero(sd.ravel() <= 1e-12 * max(float(sd.max()), 1e-300))[:8].tolist()
            raise ValueError(f"{side} neurons {rows} have a constant response; drop them first")
    Tz = (T - T.mean(1, keepdims=True)) / sd_t
    Sz = (S - S.mean(1, keepdims=True)) / sd_s
    d = T.shape[1]
    W = np.linalg.solve(Tz @ Tz.T / d + ridge * np.eye(len(Tz)), Tz @ Sz.T / d)
    K = np.abs(W)
    K = K / K.max() + 1e-12
    return _entropic(-np.log(K), np.full(len(T), 1 / len(T)), np.full(len(S), 1 / len(S)), 1.0,
                     "the readout coupling", strict="readout")[0]
