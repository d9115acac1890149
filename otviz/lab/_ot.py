r"""The OT core of the lab: the library's solvers on a cost matrix given by the caller.

:func:`otviz.align` builds its cost from two sets of neurons. The lab's methods
bring their own costs (distances between word embeddings, between topics, between
scores and two anchors, a Mahalanobis cost being learned), so they solve

.. math::
    \min_{P \in U(a, b)} \langle P, C \rangle \;[+\ \varepsilon\, \mathrm{KL}(P \,|\, a b^\top)],
    \qquad U(a, b) = \{P \ge 0 : P\mathbf{1} = a,\ P^\top\mathbf{1} = b\},

with the same solvers as :func:`otviz.align` (POT's network simplex for exact OT, the
stabilised Sinkhorn of :mod:`otviz._sinkhorn` for entropic OT): no second copy of
Sinkhorn lives here. Unlike :func:`otviz.align`, ``eps`` is **absolute** (in the
units of ``C``): the lab's costs have a scale of their own that the methods fix
(scores rescaled to [0, 1], a cost being learned), and a relative ``eps`` would move
with the cost.

:func:`entropic_plan` is the entropic plan as a differentiable function of ``C``
(implicit differentiation of the optimality conditions, not backpropagation
through the iterations).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

__all__ = ["check_eps", "check_stopping", "coordinate_scale", "entropic_plan", "solve", "weights"]

#: Rank tolerance of the backward solve: eigenvalues of the Schur complement below this
#: times its largest diagonal entry (the largest column mass) are treated as 0.
_PINV_RTOL = 1e-12


def check_eps(eps: Any, *, name: str = "eps", allow_none: bool = False) -> float | None:
    """``eps`` as a positive finite float (or ``None`` when allowed), else a clear error."""
    if eps is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a positive number, got None")
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {type(eps).__name__}") from None
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {eps!r}; "
                         f"it is the entropic regularisation (larger = smoother plan)")
    return value


def check_stopping(tol: Any, max_iter: Any) -> tuple[float, int]:
    """The entropic solver's stopping rule, ``(tol, max_iter)``, checked up front: ``tol`` a
    positive finite number, ``max_iter`` a positive integer; else a clear error."""
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a positive finite number (the marginal error at which the "
                        f"solver stops), got {type(tol).__name__} {tol!r}")
    if not (math.isfinite(float(tol)) and float(tol) > 0.0):
        raise ValueError(f"tol must be a positive finite number (the marginal error at which the "
                         f"solver stops, e.g. 1e-9), got {tol!r}")
    if isinstance(max_iter, (bool, np.bool_)) or not isinstance(max_iter, numbers.Integral):
        raise TypeError(f"max_iter must be a positive integer (the solver's iteration cap), got "
                        f"{type(max_iter).__name__} {max_iter!r}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be a positive integer (the solver's iteration cap, e.g. "
                         f"10000), got {max_iter!r}")
    return float(tol), int(max_iter)


def coordinate_scale(*arrays: np.ndarray, bits: int = 400) -> float:
    """A power of two ``s`` such that ``arrays / s`` have their squared distances far from
    float64's overflow and underflow: 1 for coordinates within ``2**±bits`` (about 1e±120
    by default), else about the largest ``|value|``. Dividing by a power of two is exact,
    and exact OT plans do not change when the points (so the cost) are scaled: distances
    scale back."""
    top = max(float(np.abs(x).max()) for x in arrays)
    if top == 0.0 or 2.0 ** -bits <= top <= 2.0 ** bits:
        return 1.0
    return math.ldexp(1.0, math.frexp(top)[1] - 1)  # |values / s| < 2


def weights(w: Any, n: int, name: str) -> np.ndarray:
    """Non-negative weights of ``n`` points summing to 1 (uniform when ``w`` is None)."""
    from otviz.transport import _check_weights

    if n <= 0:
        raise ValueError(f"{name}: no points to weigh (0 points); pass at least one")
    arr = _check_weights(w, n, name, normalise=False, what="point")
    return arr / arr.sum()


def _cost(C: Any) -> np.ndarray:
    arr = np.asarray(C.detach().cpu() if isinstance(C, torch.Tensor) else C, dtype=np.float64)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"the cost matrix must be 2-D and non-empty, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the cost matrix contains NaN or infinite values")
    return arr


def solve(C: Any, a: Any = None, b: Any = None, *, eps: float | None = None, tol: float = 1e-9,
          max_iter: int = 10_000, warm_start: tuple[Any, Any] | None = None):
    r"""Exact (``eps=None``) or entropic OT for a given cost matrix.

    .. math::
        \min_{P \in U(a, b)} \langle P, C \rangle \;[+\ \varepsilon\,\mathrm{KL}(P \,|\, a b^\top)]

    Parameters
    ----------
    C : array of shape (m, k)
        The cost, finite.
    a, b : arrays of shape (m,) and (k,), optional
        Weights of the rows and columns, uniform by default; renormalised to sum to 1.
    eps : float, optional
        Absolute entropic regularisation (units of ``C``); ``None`` solves exact OT
        (POT's network simplex).
    tol, max_iter : float, int
        Stopping rule of the entropic solver: marginal error (> 0) and iteration cap (>= 1).
    warm_start : (f, g), optional
        Entropic only: dual potentials to start from (``potentials`` of an earlier
        solve, absolute, shapes (m,) and (k,)); the solver then skips its own
        eps-scaling. The plan is the same; only the number of iterations changes.

    Returns
    -------
    otviz.Alignment
        ``plan``, ``distance`` (:math:`\langle P, C\rangle`, without the entropy term),
        ``potentials``, ``converged``, ``marginal_error``. Its ``score`` is not
        defined (there are no neurons behind ``C``).
    """
    from otviz.transport import _finish_with_plan

    C_ = _cost(C)
    m, k = C_.shape
    a_, b_ = weights(a, m, "a"), weights(b, k, "b")
    eps = check_eps(eps, allow_none=True)
    tol, max_iter = check_stopping(tol, max_iter)
    method = "emd" if eps is None else "sinkhorn"
    warm = None
    if warm_start is not None:
        if eps is None:
            raise ValueError("warm_start is for the entropic solver (pass eps); the exact solver "
                             "starts from scratch")
        warm = _potentials(warm_start, m, k)
    # scale=1: otviz.align's eps is relative to a cost scale; here it is absolute
    return _finish_with_plan(C_, a_, b_, method=method, cost="given", normalize=None, eps=eps,
                             reg_m=1.0, tol=tol, max_iter=max_iter, warm=warm, scale=1.0,
                             _stack=3)[0]


def _potentials(warm_start: Any, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``warm_start`` as two finite float64 arrays of shapes (m,) and (k,), else a clear error."""
    try:
        f, g = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
                for v in warm_start)
    except (TypeError, ValueError):
        raise TypeError("warm_start must be a pair (f, g) of potentials of shapes (m,) and (k,)"
                        ) from None
    if f.shape != (m,) or g.shape != (k,):
        raise ValueError(f"warm_start potentials must have shapes ({m},) and ({k},), got "
                         f"{f.shape} and {g.shape}")
    if not (np.isfinite(f).all() and np.isfinite(g).all()):
        raise ValueError("warm_start potentials must be finite")
    return f, g


class _EntropicPlan(torch.autograd.Function):
    """P(C) of balanced entropic OT; backward by implicit differentiation."""

    @staticmethod
    def forward(ctx, C, a, b, eps, tol, max_iter, warm_start):
        from otviz._sinkhorn import sinkhorn_solve_torch

        C64 = C.detach().to(torch.float64)
        res = sinkhorn_solve_torch(a, b, C64, eps, tol=tol, max_iter=max_iter, warm_start=warm_start)
        if not res.converged:
            raise RuntimeError(
                f"entropic OT did not converge in {max_iter} iterations (error {res.error:.2e} > "
                f"tol {tol:g}); increase eps or max_iter")
        P = res.plan
        ctx.eps = eps
        ctx.save_for_backward(P)
        return P.to(C.dtype)

    @staticmethod
    def backward(ctx, grad_P):
        (P,) = ctx.saved_tensors
        eps = ctx.eps
        G = grad_P.to(P.dtype)
        Q = G * P
        q1, q2 = Q.sum(1), Q.sum(0)
        # H [x; y] = [q1; q2] with H = [[diag(P1), P], [P^T, diag(P^T 1)]]. H is singular
        # along the potentials' gauge (x + t, y - t), and also, numerically, once the plan
        # splits into blocks that share (almost) no mass (a nearly hard plan at small eps:
        # each block has its own gauge); [q1; q2] is orthogonal to every such direction.
        # Eliminate the larger block (diagonal) and solve the Schur complement
        # S = diag(c) - P^T diag(1/r) P (symmetric PSD, S 1 = 0) by its pseudo-inverse:
        # directions with an eigenvalue below a rank tolerance only move x_i + y_j where
        # P_ij is as small as that eigenvalue, so dropping them changes the gradient by
        # (tolerance) * |G| / eps at most, and the solve cannot be singular.
        transpose = P.shape[1] > P.shape[0]
        if transpose:
            P, q1, q2 = P.T, q2, q1
        r, c = P.sum(1), P.sum(0)
        r_ = torch.where(r > 0, r, torch.ones_like(r))  # a row without mass: x_i = 0 (P_i. = 0)
        S = torch.diag(c) - P.T @ (P / r_[:, None])
        w, V = torch.linalg.eigh((S + S.T) / 2)
        cutoff = _PINV_RTOL * float(c.max())
        inv = torch.where(w > cutoff, 1.0 / torch.where(w > cutoff, w, torch.ones_like(w)),
                          torch.zeros_like(w))
        y = V @ (inv * (V.T @ (q2 - P.T @ (q1 / r_))))
        x = torch.where(r > 0, (q1 - P @ y) / r_, torch.zeros_like(r))
        if transpose:
            P, x, y = P.T, y, x
        grad_C = P * (x[:, None] + y[None, :] - G) / eps
        return grad_C.to(grad_P.dtype), None, None, None, None, None, None


def entropic_plan(C: torch.Tensor, a: Any = None, b: Any = None, *, eps: float, tol: float = 1e-10,
                  max_iter: int = 10_000, warm_start: tuple[Any, Any] | None = None) -> torch.Tensor:
    r"""The entropic OT plan as a differentiable function of the cost.

    .. math::
        P(C) = \operatorname*{argmin}_{P \in U(a, b)} \langle P, C \rangle
              + \varepsilon\,\mathrm{KL}(P \,|\, a b^\top),
        \qquad P_{ij} = a_i b_j\, e^{(f_i + g_j - C_{ij})/\varepsilon}.

    The forward pass is the library's stabilised Sinkhorn (in float64, on ``C``'s
    device). The backward pass differentiates the optimality conditions
    :math:`P\mathbf{1} = a,\ P^\top\mathbf{1} = b` (implicit function theorem): with
    :math:`G = \partial L/\partial P` and :math:`Q = G \odot P`,

    .. math::
        \frac{\partial L}{\partial C_{ij}} = \frac{P_{ij}}{\varepsilon}\,(x_i + y_j - G_{ij}),
        \qquad \begin{pmatrix} \mathrm{diag}(a) & P \\ P^\top & \mathrm{diag}(b) \end{pmatrix}
        \begin{pmatrix} x \\ y \end{pmatrix} = \begin{pmatrix} Q\mathbf{1} \\ Q^\top\mathbf{1} \end{pmatrix},

    one symmetric solve of size :math:`\min(m, k)` (the Schur complement), whatever the
    number of iterations. The system is singular along the potentials' gauge, and nearly
    so along one more direction for each block of a nearly hard plan (small ``eps``:
    blocks that exchange almost no mass); it is solved by a pseudo-inverse that drops
    eigenvalues below 1e-12 times the largest column mass, which changes the gradient
    only where :math:`P_{ij}` is that small, so the backward pass runs at any ``eps``.
    ``a`` and ``b`` are constants (no gradient).

    Parameters
    ----------
    C : tensor of shape (m, k)
    a, b : weights (uniform by default), renormalised to sum to 1.
    eps : absolute entropic regularisation (> 0).
    tol, max_iter : the solver's stopping rule; a solve that does not converge raises
        (its gradient would be wrong).
    warm_start : (f, g), optional
        Dual potentials to start from (absolute, in the units of ``C``; shapes (m,) and
        (k,)), e.g. a previous solution or potentials known in closed form; the solver
        then skips eps-scaling. The plan is the same; only the number of iterations changes.
    """
    if not isinstance(C, torch.Tensor):
        raise TypeError(f"C must be a torch tensor (the plan is differentiated with respect to it), "
                        f"got {type(C).__name__}")
    _cost(C)
    if not C.dtype.is_floating_point:
        raise TypeError(f"C must be a floating-point tensor, got {C.dtype}")
    eps = check_eps(eps)
    tol, max_iter = check_stopping(tol, max_iter)
    m, k = C.shape
    at = torch.as_tensor(weights(a, m, "a"), dtype=torch.float64, device=C.device)
    bt = torch.as_tensor(weights(b, k, "b"), dtype=torch.float64, device=C.device)
    warm = None
    if warm_start is not None:
        warm = tuple(torch.as_tensor(v, dtype=torch.float64).to(C.device)
                     for v in _potentials(warm_start, m, k))
    return _EntropicPlan.apply(C, at, bt, eps, tol, max_iter, warm)
