"""Entropic optimal transport solver used by :func:`otviz.align`.

This module is private: the public entry points are :func:`otviz.align` and
:func:`otviz.ot_distance`. It holds one numpy solver for balanced and
unbalanced entropic OT that is fast where the plain Sinkhorn-Knopp iterations
are fast and stays finite where they underflow.

The problem solved is

.. math::
    \\min_{P \\ge 0} \\langle P, M \\rangle
        + \\varepsilon \\, \\mathrm{KL}(P \\,|\\, a b^\\top)
        + \\rho \\, \\mathrm{KL}(P\\mathbf{1} \\,|\\, a)
        + \\rho \\, \\mathrm{KL}(P^\\top\\mathbf{1} \\,|\\, b)

with :math:`\\rho = \\infty` (hard marginal constraints) in the balanced case.
The optimal plan has the form
:math:`P_{ij} = \\exp((f_i + g_j - M_{ij})/\\varepsilon)\\, a_i b_j` for dual
potentials :math:`f, g`.

How it stays fast and finite
----------------------------
* **Kernel-domain iterations on a stabilised kernel** (Schmitzer 2019). The
  potentials are split as :math:`f = \\bar f + \\varepsilon \\log u`; the matrix
  :math:`K_{ij} = a_i b_j \\exp((\\bar f_i + \\bar g_j - M_{ij})/\\varepsilon)` is
  formed once and the iterations only scale vectors ``u, v`` (two
  matrix-vector products per iteration, as in plain Sinkhorn-Knopp). When
  ``u`` or ``v`` leave ``[1e-50, 1e50]`` they are *absorbed* into
  :math:`\\bar f, \\bar g` and the kernel is rebuilt, so nothing overflows and
  no entry that carries mass underflows.
* **Epsilon scaling.** For small :math:`\\varepsilon` the solver first solves
  the problem at larger :math:`\\varepsilon` (geometrically decreasing) and
  uses each solution's potentials to start the next; the initial potentials
  are the c-transforms of zero, so every row and column of the first kernel
  holds an entry equal to :math:`a_i b_j`.
* **Free convergence checks.** The row marginal :math:`u \\odot (Kv)` is read
  off the product that the next update needs anyway, so checking at every
  iteration costs no extra pass over the matrix.
* **Over-relaxation** (Thibault et al. 2021, "Overrelaxed Sinkhorn-Knopp
  algorithm for regularized optimal transport"). The updates are
  :math:`u \\leftarrow u^{1-\\omega} (a / Kv)^{\\omega}` with
  :math:`\\omega = 2 / (1 + \\sqrt{1 - \\eta})`, where :math:`\\eta` is the
  linear convergence rate observed during the first plain iterations. The
  fixed point is the same as Sinkhorn's; if the error grows, :math:`\\omega`
  is pulled back toward 1.
* **Warm start.** Potentials from a previous, similar problem (the previous
  minibatch of a training run) replace the cold start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SinkhornResult", "TorchSinkhornResult", "sinkhorn_solve", "sinkhorn_solve_torch"]

_BIG = 1e50  # absorption threshold for the scalings u and v
_LOG_BIG = math.log(_BIG)
_WINDOW = 10  # iterations per over-relaxation rate estimate
_OMEGA_MAX = 1.98


@dataclass
class SinkhornResult:
    """Raw output of :func:`sinkhorn_solve` (all arrays float64)."""

    plan: np.ndarray
    f: np.ndarray
    g: np.ndarray
    n_iter: int
    converged: bool
    error: float
    omega: float


def _kernel(M: np.ndarray, f: np.ndarray, g: np.ndarray, loga: np.ndarray,
            logb: np.ndarray, reg: float, out: np.ndarray | None = None) -> np.ndarray:
    """K_ij = exp((f_i + log a_i * reg + g_j + log b_j * reg - M_ij) / reg)."""
    fr = f / reg + loga
    gr = g / reg + logb
    if out is None:
        out = np.empty_like(M)
    # in blocks of rows that stay in cache: one pass over memory instead of four
    step = max(1, _BLOCK // max(M.shape[1], 1))
    for i in range(0, M.shape[0], step):
        o = out[i:i + step]
        np.divide(M[i:i + step], -reg, out=o)
        o += fr[i:i + step, None]
        o += gr[None, :]
        np.exp(o, out=o)
    return out


#: entries per block of the blocked passes over an m x k matrix (512 KiB of float64)
_BLOCK = 1 << 16


def _min_max(M: np.ndarray) -> tuple[float, float]:
    """``(M.min(), M.max())`` in one pass over memory (cache-sized blocks of rows)."""
    step = max(1, _BLOCK // max(M.shape[1], 1))
    lo, hi = math.inf, -math.inf
    for i in range(0, M.shape[0], step):
        o = M[i:i + step]
        lo, hi = min(lo, float(o.min())), max(hi, float(o.max()))
    return lo, hi


def _scale_rows_cols(K: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``K *= u[:, None] * v[None, :]`` in place, in cache-sized blocks of rows."""
    step = max(1, _BLOCK // max(K.shape[1], 1))
    for i in range(0, K.shape[0], step):
        o = K[i:i + step]
        o *= u[i:i + step, None]
        o *= v[None, :]
    return K


def _c_transform_init(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Potentials with f_i + g_j <= M_ij and equality at least once per row and column."""
    f = M.min(axis=1)
    g = (M - f[:, None]).min(axis=0)
    return f, g


def _c_transform_pair(M: np.ndarray, f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make (f, g) c-concave: f_i + g_j <= M_ij with equality once per row and column."""
    g = (M - f[:, None]).min(axis=0)
    f = (M - g[None, :]).min(axis=1)
    return f, g


def _stage(a, b, M, reg, f, g, loga, logb, *, tol, max_iter, fi, omega, K_buf, omega_init=1.0):
    """Run stabilised (over-relaxed) Sinkhorn iterations at one value of reg.

    The scalings are kept in the log domain (``lu = log u``, ``lv = log v``,
    vectors only) so that relaxation never overflows; the matrix work is two
    kernel-domain matrix-vector products per iteration. Returns
    ``(f, g, n_iter, converged, err, omega, K, u, v)`` where ``K`` is the last
    stabilised kernel and ``u, v`` its scalings (plan = u[:, None] * K * v).
    """
    balanced = fi == 1.0
    K = _kernel(M, f, g, loga, logb, reg, out=K_buf)
    m, k = M.shape
    lu = np.zeros(m)
    lv = np.zeros(k)
    u = np.ones(m)
    v = np.ones(k)
    auto = omega == "auto"
    w = float(omega_init) if auto else float(omega)
    err = math.inf
    win_len = 0
    win_start = math.inf
    n_backoff = 0
    f_scale = 1.0 if balanced else max(float(np.abs(M).max()), 1e-300)
    it = 0
    converged = False
    while it < max_iter:
        Kv = K @ v
        if balanced:
            err = float(np.linalg.norm(u * Kv - a))
            if not math.isfinite(err):
                raise FloatingPointError("non-finite marginal")
            if err < tol:
                converged = True
                break
            t = loga - np.log(Kv)
        else:
            t = fi * (loga - np.log(Kv)) - (1.0 - fi) * f / reg
        lu_prev = lu
        lu = t if w == 1.0 else (1.0 - w) * lu + w * t
        if np.abs(lu).max() > _LOG_BIG:
            if not np.isfinite(lu).all():
                raise FloatingPointError("row scaling out of range")
            f = f + reg * lu
            K = _kernel(M, f, g + reg * lv, loga, logb, reg, out=K)
            g = g + reg * lv
            lu_prev = lu_prev - lu
            lu = np.zeros(m)
            lv = np.zeros(k)
            v = np.ones(k)
        u = np.exp(lu)
        KTu = K.T @ u
        if balanced:
            t = logb - np.log(KTu)
        else:
            t = fi * (logb - np.log(KTu)) - (1.0 - fi) * g / reg
        lv_prev = lv
        lv = t if w == 1.0 else (1.0 - w) * lv + w * t
        if not balanced:
            err = max(float(np.abs(lu - lu_prev).max()),
                      float(np.abs(lv - lv_prev).max())) * reg / f_scale
        if np.abs(lv).max() > _LOG_BIG:
            if not np.isfinite(lv).all():
                raise FloatingPointError("column scaling out of range")
            f = f + reg * lu
            g = g + reg * lv
            K = _kernel(M, f, g, loga, logb, reg, out=K)
            lu = np.zeros(m)
            lv = np.zeros(k)
            u = np.ones(m)
        v = np.exp(lv)
        it += 1
        if not balanced:
            if not math.isfinite(err):
                raise FloatingPointError("non-finite potentials")
            if err < tol:
                converged = True
                break
            continue
        # adaptive over-relaxation (balanced only): every _WINDOW iterations
        # at a fixed omega, read the observed rate r and back out the rate
        # eta of plain Sinkhorn with Young's relation for 2-cyclic iterations,
        # (r + w - 1)^2 = r w^2 eta; then move omega toward 2/(1+sqrt(1-eta)).
        if auto:
            win_len += 1
            if win_len == 1:
                win_start = err
            elif win_len > _WINDOW:
                r = (err / win_start) ** (1.0 / (win_len - 1)) if win_start > 0 else 0.0
                win_len = 0
                if r >= 1.0:
                    # error grew over the window: back off toward plain Sinkhorn
                    w = 1.0 + (w - 1.0) / 2.0
                    if w < 1.02:
                        w = 1.0
                    n_backoff += 1
                    if n_backoff > 8:
                        w = 1.0
                        auto = False
                elif r > 0.0:
                    eta = (r + w - 1.0) ** 2 / (r * w * w)
                    if 0.0 < eta < 1.0:
                        w_opt = 2.0 / (1.0 + math.sqrt(1.0 - eta))
                        if w_opt > w:
                            w = min(_OMEGA_MAX, w_opt)
    f = f + reg * lu
    g = g + reg * lv
    return f, g, it, converged, err, w, K, u, v


def sinkhorn_solve(a: np.ndarray, b: np.ndarray, M: np.ndarray, reg: float, *,
                   reg_m: float = math.inf, tol: float = 1e-9, max_iter: int = 10_000,
                   warm_start: tuple[np.ndarray, np.ndarray] | None = None,
                   omega: float | str = "auto", omega_init: float = 1.0,
                   scaling: bool | None = None) -> SinkhornResult:
    """Solve entropic (balanced or unbalanced) OT; see the module docstring.

    Parameters
    ----------
    a, b : (m,), (k,) positive float64 weights.
    M : (m, k) float64 cost matrix.
    reg : absolute entropic regularisation (> 0).
    reg_m : absolute marginal relaxation; ``inf`` for balanced OT.
    tol : stopping threshold. Balanced: L2 norm of the row-marginal violation
        (the column marginal is exact after each update), the same criterion as
        POT's ``ot.sinkhorn``. Unbalanced: largest change of the potentials in
        one iteration, relative to ``max(M)``.
    max_iter : iteration cap for the final stage (each eps-scaling stage gets
        the same cap).
    warm_start : potentials ``(f, g)`` of a previous solution (absolute, in
        cost units); disables eps-scaling.
    omega : over-relaxation factor, or ``"auto"`` (balanced only).
    omega_init : starting factor of ``"auto"`` (e.g. the factor a warm start's
        solve ended with).
    scaling : force eps-scaling on/off; default decides from ``reg / max(M)``.
    """
    m, k = M.shape
    m_min, m_max = _min_max(M)
    scale = m_max - m_min
    if scale <= 0.0:
        scale = max(abs(m_max), 1.0)
    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)
    if not (fi == 1.0):
        omega = 1.0
    loga = np.log(a)
    logb = np.log(b)
    K_buf = np.empty_like(M)

    if warm_start is not None:
        f, g = (np.asarray(x, dtype=np.float64).copy() for x in warm_start)
        regs = [reg]
    else:
        rel = reg / scale
        if scaling is None:
            scaling = rel < 5e-3
        if scaling:
            f, g = _c_transform_init(M)
            regs = []
            r = 5e-2 * scale
            while r > reg * 1.5:
                regs.append(r)
                r /= 3.0
            regs.append(reg)
        else:
            regs = [reg]
            if rel >= 5e-3 and m_max / reg < 600.0:
                # plain kernel is safe: start as Sinkhorn-Knopp does
                f = np.zeros(m)
                g = np.zeros(k)
            else:
                f, g = _c_transform_init(M)

    total = 0
    converged = False
    err = math.inf
    w = 1.0
    for i, r in enumerate(regs):
        last = i == len(regs) - 1
        if last:
            stage_tol = tol
        elif fi == 1.0:
            stage_tol = max(tol, 1e-3 * float(np.sqrt(a @ a)))
        else:
            stage_tol = max(tol, 1e-4)
        try:
            f1, g1, n, converged, err, w, K, u, v = _stage(
                a, b, M, r, f, g, loga, logb, tol=stage_tol, max_iter=max_iter,
                fi=fi, omega=omega, K_buf=K_buf,
                omega_init=omega_init if warm_start is not None and fi == 1.0 else 1.0)
        except FloatingPointError:
            # Over-relaxation overshot (a row or column of the stabilised
            # kernel vanished) or a warm start was too far off: redo this
            # stage with plain Sinkhorn updates from c-transformed potentials.
            f, g = _c_transform_pair(M, f, g)
            f1, g1, n, converged, err, w, K, u, v = _stage(
                a, b, M, r, f, g, loga, logb, tol=stage_tol, max_iter=max_iter,
                fi=fi, omega=1.0, K_buf=K_buf)
        f, g = f1, g1
        total += n
    # plan from the last stabilised kernel and its scalings
    P = _scale_rows_cols(K, u, v)
    return SinkhornResult(plan=P, f=f, g=g, n_iter=total, converged=converged,
                          error=err, omega=w)


# --------------------------------------------------------------------------
# the same solver in torch, on the activations' own device
# --------------------------------------------------------------------------
#: absorption threshold of the torch solver: ``u, v`` stay in [1e-10, 1e10], so
#: in float32 (range 1e-38..3e38) a kernel entry that carries mass neither
#: underflows nor overflows.
_BIG_TORCH = 1e10
_LOG_BIG_TORCH = math.log(_BIG_TORCH)


@dataclass
class TorchSinkhornResult:
    """Raw output of :func:`sinkhorn_solve_torch` (tensors on the solver's device)."""

    plan: "torch.Tensor"
    f: "torch.Tensor"
    g: "torch.Tensor"
    n_iter: int
    converged: bool
    error: float
    omega: float
    tol: float


#: kernel entries below exp(-60) (relative to a_i b_j) are set to 0: they carry no mass
#: worth a float32 bit, and left in they would turn into subnormal numbers, on which
#: CPUs compute tens of times slower
_LOG_KERNEL_FLOOR = -60.0


def _kernel_torch(M, f, g, loga, logb, reg):
    """Stabilised kernel, as :func:`_kernel`; negligible entries are exact zeros."""
    z = (f / reg + loga)[:, None] + (g / reg + logb)[None, :] - M / reg
    floor = _LOG_KERNEL_FLOOR + loga[:, None] + logb[None, :]
    return torch.where(z > floor, torch.exp(z), torch.zeros((), dtype=z.dtype, device=z.device))


def _stage_torch(a, b, M, reg, f, g, loga, logb, *, tol, max_iter, fi, omega, omega_init=1.0):
    """One value of reg: :func:`_stage` in torch (same updates, same absorption rule).

    Scalars that steer the loop (the marginal error, the largest log-scaling)
    are read back once per half-iteration, so on a GPU the loop costs two
    small synchronisations per iteration besides the two matrix-vector products.
    """
    balanced = fi == 1.0
    K = _kernel_torch(M, f, g, loga, logb, reg)
    m, k = M.shape
    lu = torch.zeros(m, dtype=M.dtype, device=M.device)
    lv = torch.zeros(k, dtype=M.dtype, device=M.device)
    u = torch.ones_like(lu)
    v = torch.ones_like(lv)
    auto = omega == "auto"
    w = float(omega_init) if auto else float(omega)
    err = math.inf
    win_len, win_start, n_backoff = 0, math.inf, 0
    f_scale = max(float(M.abs().max()), 1e-300)
    it = 0
    converged = False
    while it < max_iter:
        Kv = K @ v
        if balanced:
            t = loga - torch.log(Kv)
        else:
            t = fi * (loga - torch.log(Kv)) - (1.0 - fi) * f / reg
        lu_prev = lu
        lu = t if w == 1.0 else (1.0 - w) * lu + w * t
        if balanced:
            err_t = torch.linalg.vector_norm(u * Kv - a)
            err, big = torch.stack([err_t, lu.abs().max()]).tolist()
            if not math.isfinite(err):
                raise FloatingPointError("non-finite marginal")
            if err < tol:
                lu = lu_prev  # the marginal was read at the previous scalings
                converged = True
                break
        else:
            big = float(lu.abs().max())
        if big > _LOG_BIG_TORCH:
            if not math.isfinite(big):
                raise FloatingPointError("row scaling out of range")
            f = f + reg * lu
            g = g + reg * lv
            K = _kernel_torch(M, f, g, loga, logb, reg)
            lu_prev = lu_prev - lu
            lu = torch.zeros_like(lu)
            lv = torch.zeros_like(lv)
            v = torch.ones_like(lv)
        u = torch.exp(lu)
        KTu = K.T @ u
        if balanced:
            t = logb - torch.log(KTu)
        else:
            t = fi * (logb - torch.log(KTu)) - (1.0 - fi) * g / reg
        lv_prev = lv
        lv = t if w == 1.0 else (1.0 - w) * lv + w * t
        if balanced:
            big = float(lv.abs().max())
        else:
            err, big = (torch.stack([torch.maximum((lu - lu_prev).abs().max(),
                                                   (lv - lv_prev).abs().max()) * (reg / f_scale),
                                     lv.abs().max()]).tolist())
        if big > _LOG_BIG_TORCH:
            if not math.isfinite(big):
                raise FloatingPointError("column scaling out of range")
            f = f + reg * lu
            g = g + reg * lv
            K = _kernel_torch(M, f, g, loga, logb, reg)
            lu = torch.zeros_like(lu)
            lv = torch.zeros_like(lv)
            u = torch.ones_like(lu)
        v = torch.exp(lv)
        it += 1
        if not balanced:
            if not math.isfinite(err):
                raise FloatingPointError("non-finite potentials")
            if err < tol:
                converged = True
                break
            continue
        if auto:
            win_len += 1
            if win_len == 1:
                win_start = err
            elif win_len > _WINDOW:
                r = (err / win_start) ** (1.0 / (win_len - 1)) if win_start > 0 else 0.0
                win_len = 0
                if r >= 1.0:
                    w = 1.0 + (w - 1.0) / 2.0
                    if w < 1.02:
                        w = 1.0
                    n_backoff += 1
                    if n_backoff > 8:
                        w = 1.0
                        auto = False
                elif r > 0.0:
                    eta = (r + w - 1.0) ** 2 / (r * w * w)
                    if 0.0 < eta < 1.0:
                        w_opt = 2.0 / (1.0 + math.sqrt(1.0 - eta))
                        if w_opt > w:
                            w = min(_OMEGA_MAX, w_opt)
    f = f + reg * lu
    g = g + reg * lv
    return f, g, it, converged, err, w, K, torch.exp(lu), torch.exp(lv)


def torch_tol_floor(a: "torch.Tensor") -> float:
    """Smallest balanced tolerance the torch solver can meet in ``a``'s dtype.

    The row marginal ``u * (K v)`` is a sum of ``k`` rounded products, so its
    L2 error cannot be pushed much below ``dtype eps * ||a||_2``; a tighter
    ``tol`` is raised to ``16 * eps * ||a||_2`` (about ``2e-6 ||a||_2`` in float32).
    """
    return 16.0 * torch.finfo(a.dtype).eps * float(torch.linalg.vector_norm(a))


def sinkhorn_solve_torch(a: "torch.Tensor", b: "torch.Tensor", M: "torch.Tensor", reg: float, *,
                         reg_m: float = math.inf, tol: float = 1e-9, max_iter: int = 10_000,
                         warm_start: tuple | None = None, omega: float | str = "auto",
                         omega_init: float = 1.0,
                         scaling: bool | None = None) -> TorchSinkhornResult:
    """:func:`sinkhorn_solve` in torch, on the device and in the dtype of ``M``.

    The same algorithm as the numpy solver (stabilised kernel with absorption,
    eps-scaling from the c-transformed zero potentials, adaptive
    over-relaxation, warm starts), written with torch operations only, so it
    runs wherever the activations live (CPU, CUDA, ...). It is meant for
    float32: the scalings are absorbed into the potentials as soon as they
    leave ``[1e-10, 1e10]`` (float32 spans 1e-38..3e38), and a balanced
    ``tol`` below what float32 can resolve is raised to
    :func:`torch_tol_floor` (the tolerance actually used is returned).
    ``a``, ``b`` and ``M`` must share a device and a floating dtype;
    ``warm_start`` potentials may be numpy arrays or tensors.
    """
    m, k = M.shape
    dev, dt = M.device, M.dtype
    a = a.to(device=dev, dtype=dt)
    b = b.to(device=dev, dtype=dt)
    mx, mn = float(M.max()), float(M.min())
    scale = mx - mn
    if scale <= 0.0:
        scale = max(abs(mx), 1.0)
    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)
    if not (fi == 1.0):
        omega = 1.0
    else:
        tol = max(tol, torch_tol_floor(a))
    loga, logb = torch.log(a), torch.log(b)

    def c_init(f=None):
        if f is None:
            f = M.min(dim=1).values
            return f, (M - f[:, None]).min(dim=0).values
        g = (M - f[:, None]).min(dim=0).values
        return (M - g[None, :]).min(dim=1).values, g

    if warm_start is not None:
        f, g = (torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
                .to(device=dev, dtype=dt).clone() for x in warm_start)
        regs = [reg]
    else:
        rel = reg / scale
        if scaling is None:
            scaling = rel < 5e-3
        f, g = c_init()
        if scaling:
            regs = []
            r = 5e-2 * scale
            while r > reg * 1.5:
                regs.append(r)
                r /= 3.0
            regs.append(reg)
        else:
            regs = [reg]
            if rel >= 5e-3 and mx / reg < 80.0:
                # exp(-M/reg) stays far from float32 underflow: plain start
                f = torch.zeros(m, dtype=dt, device=dev)
                g = torch.zeros(k, dtype=dt, device=dev)
    total, converged, err, w = 0, False, math.inf, 1.0
    for i, r in enumerate(regs):
        last = i == len(regs) - 1
        if last:
            stage_tol = tol
        elif fi == 1.0:
            stage_tol = max(tol, 1e-3 * float(torch.linalg.vector_norm(a)))
        else:
            stage_tol = max(tol, 1e-4)
        try:
            f1, g1, n, converged, err, w, K, u, v = _stage_torch(
                a, b, M, r, f, g, loga, logb, tol=stage_tol, max_iter=max_iter, fi=fi,
                omega=omega, omega_init=omega_init if warm_start is not None and fi == 1.0 else 1.0)
        except FloatingPointError:
            f, g = c_init(f)
            f1, g1, n, converged, err, w, K, u, v = _stage_torch(
                a, b, M, r, f, g, loga, logb, tol=stage_tol, max_iter=max_iter, fi=fi, omega=1.0)
        f, g = f1, g1
        total += n
    P = u[:, None] * K * v[None, :]
    return TorchSinkhornResult(plan=P, f=f, g=g, n_iter=total, converged=converged, error=err,
                               omega=w, tol=tol)
