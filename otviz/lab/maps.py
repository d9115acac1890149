r"""Optimal transport maps learned adversarially: a generator against a critic.

Given two distributions :math:`\mu` (source) and :math:`\nu` (target) on
:math:`\mathbb{R}^d`, the **Monge map** for the squared Euclidean cost is the map
:math:`T` with :math:`T_\#\mu = \nu` that moves mass the least:

.. math::
    T = \operatorname*{argmin}_{S:\ S_\#\mu = \nu}\ \mathbb{E}_{x\sim\mu}\|x - S(x)\|^2,
    \qquad \mathbb{E}_{x\sim\mu}\|x - T(x)\|^2 = W_2^2(\mu, \nu).

Three ways of getting it are side by side here:

- :func:`gaussian_map`: the closed form between two Gaussians (the reference);
- :func:`barycentric_map`: the exact discrete plan between two samples (network
  simplex, :func:`otviz.lab._ot.solve`) and its barycentric projection
  :math:`\hat T(x_i) = \sum_j P_{ij} y_j / a_i`, defined on the samples only;
- :func:`fit_adversarial_map`: a neural map :math:`G` trained against a critic,
  after Leygonie et al. (2019), defined everywhere.

The adversarial method
----------------------
The critic is the **Kantorovich potential of** :math:`\tfrac12 W_2^2`. For the
generated distribution :math:`\rho = G_\#\mu` (semi-dual form)

.. math::
    \tfrac12 W_2^2(\rho, \nu) = \max_{g}\ \mathbb{E}_{z\sim\rho}\, g(z)
        + \mathbb{E}_{y\sim\nu}\, g^c(y), \qquad
    g^c(y) = \min_z \tfrac12\|z - y\|^2 - g(z),

and at the optimum :math:`z - \nabla g(z)` is the OT map from :math:`\rho` to
:math:`\nu`. The critic :math:`g_\phi` is a small MLP; on a minibatch
:math:`z_1..z_n` (generated) and :math:`y_1..y_n` (target) it maximises
:math:`\frac1n\sum_i g_\phi(z_i) + \frac1n\sum_j \min_i [\tfrac12\|z_i - y_j\|^2 - g_\phi(z_i)]`
(the c-transform taken over the batch; this is bounded above by the batch's exact OT
cost, so the critic cannot run away). Moving the generated points along a field
:math:`v` changes :math:`\tfrac12 W_2^2` by :math:`\mathbb{E}_\rho\langle\nabla g, v\rangle`:
the critic's gradient :math:`\nabla g(z) = z - T_\rho(z)` is the generator's
gradient, pointing from each generated point to where it should go.

The generator :math:`G(x) = x + f_\theta(x)` (a residual MLP whose last layer starts
at zero, so :math:`G` starts as the identity) minimises

.. math::
    \frac{1}{1 + \lambda}\ \mathbb{E}_{x\sim\mu}\tfrac12\|x - G(x)\|^2
    \;+\; \frac{\lambda}{1 + \lambda}\ \mathbb{E}_{x\sim\mu}\, g_\phi(G(x)),

i.e. the transport cost plus :math:`\lambda` times the critic's estimate of
:math:`\tfrac12 W_2^2(G_\#\mu, \nu)`, rescaled so that the step size does not
depend on :math:`\lambda`. Its exact minimiser is known: among all :math:`G`,
:math:`\mathbb{E}\|x - G(x)\|^2 \ge W_2^2(\mu, G_\#\mu)` and the triangle inequality
give :math:`G^\star = \mathrm{id} + t\,(T - \mathrm{id})` with :math:`t = \lambda / (1 + \lambda)`,
the point at time :math:`t` of the :math:`W_2` geodesic from :math:`\mu` to :math:`\nu`.
So the learned map undershoots the Monge map by the factor :math:`1/(1+\lambda)`
(a squared error of :math:`W_2^2/(1+\lambda)^2`: 0.23 % of :math:`W_2^2` at the default
:math:`\lambda = 20`), and ``lam=None`` drops the transport-cost term: the pure
:math:`W_2` generator of the paper, which starts at the identity and follows the
geodesic to :math:`T` in the idealised dynamics.

Why this critic and this loss. The paper shows that a :math:`W_2` critic makes the
generator follow the :math:`W_2` geodesic, hence end at the Monge map. A :math:`W_1`
critic (WGAN-GP) does not: its potential is 1-Lipschitz with a gradient of norm 1
wherever the two distributions differ, so the force on a generated point does not
shrink as it approaches its target and carries no information on *which* target
point is the cheapest. The transport-cost term is kept (``lam`` finite) because a
network's gradient steps are not the idealised dynamics: among the many maps that
push :math:`\mu` to :math:`\nu`, the cost term is what selects the cheapest one.
Measured on the two Gaussians of :data:`PAIRS` (1,000 steps, seeds 0-2, CPU): squared
error to the closed form 0.31-0.33 % of :math:`W_2^2` with ``lam=20`` (the objective's
own share is 0.23 %), while the pure generator (``lam=None``) ended at 15 %, 16 % and 3 %.
With ``lam=1`` the map stops half way as predicted: 25.1 % for seeds 0 and 1 after 200
steps (theory 25 %).

Limits, measured too. The critic sees batches (256 points by default): structure finer
than a batch resolves is averaged out, so the thin "Moons" come out thinner
(``batch_size=1024`` keeps more of them, ten times slower). A continuous generator cannot
tear the source where the Monge map does ("One blob to two"): a trail of points stays
between the two targets.

Reference: Jacob Leygonie, Jennifer She, Amjad Almahairi, Sai Rajeswar, Aaron
Courville. *Adversarial Computation of Optimal Transport Maps*. arXiv:1906.09691, 2019.
The closed form between Gaussians: Dowson & Landau (1982), Olkin & Pukelsheim (1982),
Knott & Smith (1984); the batch c-transform critic: Mallasto et al., *(q, p)-Wasserstein
GANs*, 2019.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from otviz._device import cpu_threads, resolve_device
from otviz.lab import _ot

__all__ = [
    "AdversarialMap",
    "BarycentricMap",
    "GaussianMap",
    "GaussianSampler",
    "MapEvaluation",
    "MixtureSampler",
    "MoonSampler",
    "PAIRS",
    "Pair",
    "RingSampler",
    "Sampler",
    "barycentric_map",
    "bures_wasserstein",
    "evaluate_map",
    "fit_adversarial_map",
    "gaussian_map",
    "sample_pair",
    "w2_samples",
]

#: A sampler draws ``n`` points of a distribution: ``sampler(n, rng) -> array (n, d)``.
Sampler = Callable[[int, np.random.Generator], np.ndarray]
#: Points (an array of shape (n, d)) or a sampler.
PointsOrSampler = Union[np.ndarray, torch.Tensor, Sampler]


# --------------------------------------------------------------------------- validation
def _points(x: Any, name: str, *, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 array of shape (n, d), else a clear error."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of points of shape (n, d), got "
                        f"{type(x).__name__}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (points, coordinates), got shape "
                         f"{arr.shape}" + ("; one point? pass it as x[None, :]" if arr.ndim == 1 else ""))
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} has {arr.shape[0]} point(s); pass at least {min_rows}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 coordinates; pass points of at least one dimension")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has points of dimension {arr.shape[1]}, expected {dim} "
                         f"(both distributions must live in the same space)")
    if not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))[:5].tolist()
        raise ValueError(f"{name} contains NaN or infinite values (rows {rows}...)")
    return arr


def _positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _positive_float(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _sym_sqrt(S: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigendecomposition)."""
    w, V = np.linalg.eigh((S + S.T) / 2)
    return (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T


def _check_gaussian(mean: Any, cov: Any, name: str, *, definite: bool) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean, dtype=np.float64)
    S = np.asarray(cov, dtype=np.float64)
    if m.ndim != 1 or m.size == 0:
        raise ValueError(f"mean_{name} must be a vector of shape (d,), got shape {m.shape}")
    d = m.size
    if S.shape != (d, d):
        raise ValueError(f"cov_{name} must be a ({d}, {d}) matrix to go with a mean of dimension {d}, "
                         f"got shape {S.shape}")
    if not (np.isfinite(m).all() and np.isfinite(S).all()):
        raise ValueError(f"mean_{name} / cov_{name} contain NaN or infinite values")
    scale = max(float(np.abs(S).max()), 1e-300)
    if not np.allclose(S, S.T, rtol=0, atol=1e-9 * scale):
        raise ValueError(f"cov_{name} is not symmetric (a covariance is); pass (S + S.T) / 2 if the "
                         f"asymmetry is rounding")
    low = float(np.linalg.eigvalsh((S + S.T) / 2).min())
    if low < -1e-10 * scale:
        raise ValueError(f"cov_{name} is not positive semi-definite (smallest eigenvalue {low:.3g}); "
                         f"a covariance matrix has no negative eigenvalues")
    if definite and low <= 1e-12 * scale:
        raise ValueError(f"cov_{name} is singular (smallest eigenvalue {low:.3g}): a degenerate source "
                         f"Gaussian has no Monge map; add a small multiple of the identity")
    return m, (S + S.T) / 2


# --------------------------------------------------------------------------- closed form
@dataclass(frozen=True)
class GaussianMap:
    r"""The Monge map between :math:`\mathcal N(m_a, \Sigma_a)` and :math:`\mathcal N(m_b, \Sigma_b)`.

    :math:`T(x) = m_b + A (x - m_a)`, see :func:`gaussian_map`. Call it on points
    (numpy array or tensor of shape (n, d)).

    Attributes
    ----------
    mean_a, cov_a, mean_b, cov_b : the two Gaussians.
    A : ndarray (d, d)
        The linear part, symmetric positive definite (the gradient of the convex
        function :math:`\tfrac12 x^\top A x + \dots`, as Brenier's theorem says).
    w2 : float
        :math:`W_2` between the two Gaussians (Bures-Wasserstein), in the units of the
        points; :math:`W_2^2 = \mathbb{E}\|T(x) - x\|^2`.
    """

    mean_a: np.ndarray
    cov_a: np.ndarray
    mean_b: np.ndarray
    cov_b: np.ndarray
    A: np.ndarray
    w2: float

    def __call__(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            A = torch.as_tensor(self.A, dtype=x.dtype, device=x.device)
            ma = torch.as_tensor(self.mean_a, dtype=x.dtype, device=x.device)
            mb = torch.as_tensor(self.mean_b, dtype=x.dtype, device=x.device)
            return mb + (x - ma) @ A.T
        X = _points(x, "x", dim=self.A.shape[0])
        return self.mean_b + (X - self.mean_a) @ self.A.T


def bures_wasserstein(mean_a: Any, cov_a: Any, mean_b: Any, cov_b: Any) -> float:
    r""":math:`W_2` between two Gaussians (the Bures-Wasserstein distance).

    .. math::
        W_2^2 = \|m_a - m_b\|^2 + \operatorname{tr}\Big(\Sigma_a + \Sigma_b
            - 2\big(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}\big)^{1/2}\Big)

    Covariances may be singular (positive semi-definite). Returns :math:`W_2` (not squared).
    """
    ma, Sa = _check_gaussian(mean_a, cov_a, "a", definite=False)
    mb, Sb = _check_gaussian(mean_b, cov_b, "b", definite=False)
    if ma.shape != mb.shape:
        raise ValueError(f"the two Gaussians live in different dimensions ({ma.size} and {mb.size})")
    r = _sym_sqrt(Sa)
    cross = _sym_sqrt(r @ Sb @ r)
    w2sq = float(((ma - mb) ** 2).sum() + np.trace(Sa + Sb - 2 * cross))
    return math.sqrt(max(w2sq, 0.0))


def gaussian_map(mean_a: Any, cov_a: Any, mean_b: Any, cov_b: Any) -> GaussianMap:
    r"""The closed-form Monge map between two Gaussians for the squared Euclidean cost.

    .. math::
        T(x) = m_b + A\,(x - m_a), \qquad
        A = \Sigma_a^{-1/2}\big(\Sigma_a^{1/2}\,\Sigma_b\,\Sigma_a^{1/2}\big)^{1/2}\Sigma_a^{-1/2}.

    :math:`A` is symmetric positive semi-definite, so :math:`T` is the gradient of a
    convex function and, by Brenier's theorem, the optimal map; it satisfies
    :math:`A\Sigma_a A = \Sigma_b`, so :math:`T_\#\mathcal N(m_a, \Sigma_a) = \mathcal N(m_b, \Sigma_b)`.
    Its cost :math:`\mathbb{E}\|T(x) - x\|^2` is :math:`W_2^2` (:func:`bures_wasserstein`).

    Parameters
    ----------
    mean_a, cov_a : the source Gaussian; ``cov_a`` must be positive definite.
    mean_b, cov_b : the target Gaussian; ``cov_b`` positive semi-definite.

    References: Dowson & Landau, *J. Multivariate Anal.* 12 (1982); Olkin & Pukelsheim,
    *Linear Algebra Appl.* 48 (1982); Knott & Smith, *J. Optim. Theory Appl.* 43 (1984).
    """
    ma, Sa = _check_gaussian(mean_a, cov_a, "a", definite=True)
    mb, Sb = _check_gaussian(mean_b, cov_b, "b", definite=False)
    if ma.shape != mb.shape:
        raise ValueError(f"the two Gaussians live in different dimensions ({ma.size} and {mb.size})")
    w, V = np.linalg.eigh(Sa)
    r = (V * np.sqrt(w)) @ V.T
    r_inv = (V / np.sqrt(w)) @ V.T
    A = r_inv @ _sym_sqrt(r @ Sb @ r) @ r_inv
    A = (A + A.T) / 2
    return GaussianMap(ma, Sa, mb, Sb, A, bures_wasserstein(ma, Sa, mb, Sb))


# --------------------------------------------------------------------------- samplers
@dataclass(frozen=True)
class GaussianSampler:
    """:math:`\\mathcal N(\\text{mean}, \\text{cov})`: ``sampler(n, rng)`` draws ``n`` points."""

    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        _check_gaussian(self.mean, self.cov, "sampler", definite=False)

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        L = _sym_sqrt(np.asarray(self.cov, dtype=np.float64))
        return np.asarray(self.mean) + rng.standard_normal((n, len(self.mean))) @ L.T


@dataclass(frozen=True)
class RingSampler:
    """Points on a ring of the given radius and width (a Gaussian radial profile), in 2-D."""

    radius: float = 2.0
    width: float = 0.3
    center: tuple[float, float] = (0.0, 0.0)

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        t = rng.uniform(0.0, 2 * np.pi, n)
        r = self.radius + self.width * rng.standard_normal(n)
        return np.asarray(self.center) + r[:, None] * np.c_[np.cos(t), np.sin(t)]


@dataclass(frozen=True)
class MoonSampler:
    """One of the two interleaved half-circles ("moons"), in 2-D, scaled and shifted.

    ``upper=True``: :math:`(\\cos t, \\sin t)`, else :math:`(1 - \\cos t, \\tfrac12 - \\sin t)`,
    :math:`t \\sim U[0, \\pi]`, plus isotropic Gaussian noise.
    """

    upper: bool = True
    noise: float = 0.08
    scale: float = 2.0
    shift: tuple[float, float] = (0.0, 0.0)

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        t = rng.uniform(0.0, np.pi, n)
        pts = (np.c_[np.cos(t), np.sin(t)] if self.upper
               else np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
        pts = pts + self.noise * rng.standard_normal((n, 2))
        return self.scale * pts + np.asarray(self.shift)


@dataclass(frozen=True)
class MixtureSampler:
    """An equal-weight mixture of samplers (each point drawn from one component at random)."""

    components: tuple[Any, ...]

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        which = rng.integers(len(self.components), size=n)
        out = np.empty((n, 2))
        for k, comp in enumerate(self.components):
            idx = np.flatnonzero(which == k)
            out[idx] = comp(len(idx), rng)
        return out


@dataclass(frozen=True)
class Pair:
    """A source and a target distribution, with the closed-form map when both are Gaussian."""

    name: str
    source: Any
    target: Any
    description: str

    @property
    def closed_form(self) -> GaussianMap | None:
        if isinstance(self.source, GaussianSampler) and isinstance(self.target, GaussianSampler):
            return gaussian_map(self.source.mean, self.source.cov, self.target.mean, self.target.cov)
        return None


#: The lab's pairs of 2-D distributions, by name.
PAIRS: dict[str, Pair] = {p.name: p for p in (
    Pair("Two Gaussians",
         GaussianSampler((0.0, 0.0), ((1.0, 0.6), (0.6, 1.0))),
         GaussianSampler((3.0, 1.0), ((0.5, -0.3), (-0.3, 1.5))),
         "a correlated Gaussian to a shifted one stretched the other way: the Monge map is affine "
         "and known in closed form"),
    Pair("Ring to blob", RingSampler(2.0, 0.3), GaussianSampler((0.0, 0.0), ((0.3, 0.0), (0.0, 0.3))),
         "a ring to a round blob at its centre: the map pulls every point inward along its radius, "
         "the ring's inner edge to the centre"),
    Pair("Moons", MoonSampler(upper=True), MoonSampler(upper=False),
         "the upper half-moon to the lower one: a bent map. The moons are thinner than the spacing "
         "of a 256-point batch resolves, and the learned map thins them (batch_size=1024 helps, "
         "ten times slower)"),
    Pair("One blob to two", GaussianSampler((0.0, 0.0), ((0.6, 0.0), (0.0, 0.6))),
         MixtureSampler((GaussianSampler((-2.5, 0.0), ((0.15, 0.0), (0.0, 0.15))),
                         GaussianSampler((2.5, 0.0), ((0.15, 0.0), (0.0, 0.15))))),
         "one blob split into two: the Monge map tears the source along a line, which a smooth "
         "network can only approximate"),
)}


def _pair(name: str) -> Pair:
    if name not in PAIRS:
        raise ValueError(f"unknown pair {name!r}; choose one of {sorted(PAIRS)}")
    return PAIRS[name]


def sample_pair(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` source and ``n`` target points of the pair ``name`` of :data:`PAIRS`, seeded."""
    pair = _pair(name)
    n = _positive_int(n, "n")
    rs, rt = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    return pair.source(n, rs), pair.target(n, rt)


# --------------------------------------------------------------------------- discrete OT
def _sqdist(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    D = (X ** 2).sum(1)[:, None] + (Y ** 2).sum(1)[None, :] - 2 * X @ Y.T
    return np.maximum(D, 0.0)


def _scaled_sqdist(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, float]:
    """``(D, s)``: the squared distances of ``X / s`` and ``Y / s``, ``s`` a power of two
    (:func:`otviz.lab._ot.coordinate_scale`, 1 for coordinates within about 1e±120), so
    that ``D`` neither overflows nor underflows; the true ones are ``s**2 * D``."""
    s = _ot.coordinate_scale(X, Y)
    return (_sqdist(X, Y) if s == 1.0 else _sqdist(X / s, Y / s)), s


def _overflow_error(X: np.ndarray, Y: np.ndarray, what: str, quantity: str) -> ValueError:
    top = max(float(np.abs(X).max()), float(np.abs(Y).max()))
    return ValueError(
        f"{what} are so large (largest |value| {top:.3g}) that {quantity} float64 "
        f"(largest {np.finfo(np.float64).max:.3g}); divide both by one common scale s first (e.g. "
        f"s = {top:.3g}): the transport plan does not change, and distances are divided by s")


def w2_samples(X: Any, Y: Any) -> float:
    r""":math:`W_2` between two point clouds with uniform weights, by exact OT.

    .. math::
        W_2(\hat\mu, \hat\nu) = \Big(\min_{P \in U(a, b)} \sum_{ij} P_{ij}\|x_i - y_j\|^2\Big)^{1/2}

    (network simplex via :func:`otviz.lab._ot.solve`). Between two samples of the
    *same* distribution this is not 0: it shrinks like :math:`n^{-1/2}` in 2-D (up to a log).
    Points of any finite size are handled (beyond about 1e±120 they are first divided by a
    power of two, which leaves the plan as it is); a ``ValueError`` says so when
    :math:`W_2` itself exceeds float64's range.
    """
    X = _points(X, "X")
    Y = _points(Y, "Y", dim=X.shape[1])
    D, s = _scaled_sqdist(X, Y)  # the plan does not change with the scale; W2 scales with s
    w2 = s * math.sqrt(max(_ot.solve(D).distance, 0.0))
    if not math.isfinite(w2):
        raise _overflow_error(X, Y, "X and Y", "their W2 distance overflows")
    return w2


@dataclass
class BarycentricMap:
    r"""The exact discrete plan between two samples and its barycentric projection.

    Attributes
    ----------
    source, target : ndarray (n, d), (m, d)
    alignment : otviz.Alignment
        The exact plan (``.plan``, ``.distance`` :math:`= W_2^2(\hat\mu, \hat\nu)`).
    images : ndarray (n, d)
        :math:`\hat T(x_i) = \sum_j P_{ij} y_j / a_i`: where each source point sends its mass, on average.
    w2 : float
        :math:`W_2` between the two samples.

    Calling it on points maps each to the image of its nearest source point (the
    projection is defined on the samples only; this is its piecewise-constant extension).
    """

    source: np.ndarray
    target: np.ndarray
    alignment: Any
    images: np.ndarray
    w2: float

    def __call__(self, x: Any) -> np.ndarray:
        X = _points(x, "x", dim=self.source.shape[1])
        return self.images[np.argmin(_scaled_sqdist(X, self.source)[0], axis=1)]


def barycentric_map(source: Any, target: Any, a: Any = None, b: Any = None) -> BarycentricMap:
    r"""Exact OT between two samples and the barycentric projection of its plan.

    .. math::
        P = \operatorname*{argmin}_{P \in U(a, b)} \sum_{ij} P_{ij}\|x_i - y_j\|^2, \qquad
        \hat T(x_i) = \frac{1}{a_i}\sum_j P_{ij}\, y_j .

    With as many source as target points and uniform weights the plan is a
    permutation and :math:`\hat T` sends each :math:`x_i` to one :math:`y_j`. As the
    samples grow, :math:`\hat T` converges to the Monge map (slowly: the samples'
    own noise stays in it).

    Parameters
    ----------
    source, target : arrays (n, d) and (m, d)
    a, b : optional weights (uniform by default).

    Raises
    ------
    ValueError
        Points of different dimensions, not finite, or so large that their squared
        distances (the alignment's cost matrix) overflow float64: divide both by one
        common scale first (the plan does not change).
    """
    X = _points(source, "source")
    Y = _points(target, "target", dim=X.shape[1])
    D, s = _scaled_sqdist(X, Y)
    if s != 1.0:
        with np.errstate(over="ignore"):
            D = D * (s * s)
        if not np.isfinite(D).all():
            raise _overflow_error(X, Y, "source and target", "their squared distances (the "
                                  "alignment's cost matrix and W2 squared, its distance) overflow")
    al = _ot.solve(D, a, b)
    P = np.asarray(al.plan)
    row = P.sum(1)
    images = (P @ Y) / np.where(row > 0, row, 1.0)[:, None]
    return BarycentricMap(X, Y, al, images, math.sqrt(max(al.distance, 0.0)))


# --------------------------------------------------------------------------- the adversarial map
def _mlp(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    # smooth activations: the critic's gradient is the generator's signal, ReLU would make it
    # piecewise constant
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, d_out))


class _Generator(nn.Module):
    """:math:`G(x) = x + f(x)` with the last layer of ``f`` at zero: the identity at the start."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.f = _mlp(dim, dim, hidden)
        nn.init.zeros_(self.f[-1].weight)
        nn.init.zeros_(self.f[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


@dataclass
class AdversarialMap:
    r"""A map learned by :func:`fit_adversarial_map`; call it on points.

    ``fitted(points)``: a numpy array in, a float64 numpy array out; a tensor in, a
    tensor out on the input's device and dtype.

    Attributes
    ----------
    generator : torch.nn.Module
        :math:`G` in normalised coordinates (see ``center`` and ``scale``).
    critic : torch.nn.Module
        The last critic :math:`g` (potential of :math:`\tfrac12 W_2^2`), normalised coordinates.
    center, scale : ndarray (d,), float
        Points are normalised as :math:`(x - \text{center}) / \text{scale}` (one scale for all
        coordinates, so OT maps commute with it).
    history : dict of ndarray
        Per generator step, in the units of the points: ``"transport_cost"``
        :math:`\mathbb{E}\|x - G(x)\|^2` on the batch, ``"critic_w2sq"`` the critic's
        estimate of :math:`W_2^2(G_\#\mu, \nu)` on the batch (the batch c-transform dual,
        which includes the batches' own sampling noise), ``"generator_loss"``; with a
        ``reference``, ``"reference_step"`` and ``"reference_mse"``
        (:math:`\mathbb{E}\|G(x) - T(x)\|^2` on a held-out source sample).
    seconds : float
        Wall time of the training.
    config : dict
        The options used.
    """

    generator: nn.Module
    critic: nn.Module
    center: np.ndarray
    scale: float
    history: dict[str, np.ndarray]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: str | torch.device) -> "AdversarialMap":
        """Move the networks to ``device`` (in place); returns ``self``."""
        self.generator.to(device)
        self.critic.to(device)
        return self

    def __call__(self, x: Any) -> Any:
        dev = self.device
        dim = int(self.center.shape[0])
        c = torch.as_tensor(self.center, dtype=torch.float32, device=dev)
        if isinstance(x, torch.Tensor):
            if x.ndim != 2 or x.shape[1] != dim:
                raise ValueError(f"x must have shape (n, {dim}), got {tuple(x.shape)}")
            with torch.no_grad():
                z = self.generator((x.to(dev, torch.float32) - c) / self.scale) * self.scale + c
            return z.to(x.device, x.dtype)
        X = _points(x, "x", dim=dim)
        with torch.no_grad():
            xt = (torch.as_tensor(X, dtype=torch.float32, device=dev) - c) / self.scale
            z = self.generator(xt) * self.scale + c
        return z.cpu().numpy().astype(np.float64)


def _as_source(obj: Any, name: str) -> tuple[Callable[[int, np.random.Generator], np.ndarray], int]:
    """A batch drawer and the dimension: samplers are called, arrays are resampled (with replacement)."""
    if callable(obj):
        probe = _points(obj(4, np.random.default_rng(0)), f"{name} sampler's output")
        if probe.shape[0] != 4:
            raise ValueError(f"{name} sampler returned {probe.shape[0]} points when asked for 4")
        return (lambda n, rng: obj(n, rng)), probe.shape[1]
    X = _points(obj, name, min_rows=2)
    return (lambda n, rng: X[rng.integers(len(X), size=n)]), X.shape[1]


def fit_adversarial_map(
    source: PointsOrSampler,
    target: PointsOrSampler,
    *,
    steps: int = 1000,
    lam: float | None = 20.0,
    batch_size: int = 256,
    n_critic: int = 5,
    warmup: int = 100,
    hidden: int = 64,
    lr: float = 1e-3,
    critic_lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    reference: Callable[[np.ndarray], np.ndarray] | None = None,
    eval_every: int = 50,
    n_eval: int = 2000,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    average_over: int | None = None,
    num_threads: int | None = 1,
) -> AdversarialMap:
    r"""Learn the Monge map from ``source`` to ``target`` with a generator against a :math:`W_2` critic.

    The method of Leygonie et al. (2019) with the transport cost added (see the
    module's docstring for the math): each step trains the critic (the Kantorovich
    potential :math:`g` of :math:`\tfrac12 W_2^2(G_\#\mu, \nu)`, semi-dual with the
    c-transform over the batch) ``n_critic`` times, then the generator
    :math:`G(x) = x + f(x)` once on

    .. math::
        \frac{1}{1 + \lambda}\,\mathbb{E}\tfrac12\|x - G(x)\|^2
        + \frac{\lambda}{1 + \lambda}\,\mathbb{E}\,g(G(x)),

    whose minimiser is the geodesic point :math:`\mathrm{id} + \tfrac{\lambda}{1+\lambda}(T - \mathrm{id})`,
    the Monge map :math:`T` up to a squared error of :math:`W_2^2/(1+\lambda)^2`.

    Parameters
    ----------
    source, target : sampler or array
        A sampler ``f(n, rng) -> (n, d) array`` (fresh points every batch: the
        continuous problem) or an array of points (batches drawn with replacement).
    steps : int
        Generator steps (> 0), each after ``n_critic`` critic steps. Measured on a 2-core
        CPU shared with other jobs, one thread: 13-32 ms a step with the defaults (300 steps
        3.8-6 s, 500 steps 7-16 s, 1,000 steps 18-30 s).
    lam : float or None
        Weight of the critic's :math:`W_2^2` estimate against the transport cost (> 0);
        ``None``: no transport-cost term (the paper's pure :math:`W_2` generator).
    batch_size, n_critic, warmup : int
        Points per batch; critic steps per generator step; extra critic steps before
        the first generator step.
    hidden : int
        Width of the two hidden layers of both networks (SiLU activations).
    lr, critic_lr : float
        Adam learning rates (betas 0.5, 0.9) of the generator and the critic.
    seed : int
        Seeds the networks' initialisation and every batch (the global torch and
        numpy random states are left alone).
    device : str or torch.device
        Where the networks train (``"cuda"`` works the same way; batches are drawn
        on the CPU and moved).
    reference : callable, optional
        A known map (e.g. :func:`gaussian_map`) to track :math:`\mathbb{E}\|G(x) - T(x)\|^2`
        every ``eval_every`` steps on ``n_eval`` held-out source points.
    callback : callable, optional
        ``callback(step, losses)`` after every generator step (``step`` from 1).
    average_over : int, optional
        The returned generator is an exponential moving average of the iterates over
        about this many steps (decay :math:`1 - 1/\text{average\_over}`), which irons out
        the game's oscillation; default ``min(100, steps // 10)``, 0 or 1 = the last iterate.
    num_threads : int or None
        torch's CPU threads during the training (restored afterwards; ignored on GPU).
        The networks are tiny, so one thread is fastest: 100 steps took 3.5 s with one
        thread and 93 s with two on a loaded 2-core machine. ``None`` leaves torch's setting.

    Returns
    -------
    AdversarialMap
        The learned map (callable on points), the losses per step and the time.
    """
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size", minimum=2)
    n_critic = _positive_int(n_critic, "n_critic")
    warmup = _positive_int(warmup, "warmup", minimum=0)
    hidden = _positive_int(hidden, "hidden")
    eval_every = _positive_int(eval_every, "eval_every")
    if average_over is not None:
        average_over = _positive_int(average_over, "average_over", minimum=0)
    if num_threads is not None:
        num_threads = _positive_int(num_threads, "num_threads")
    n_eval = _positive_int(n_eval, "n_eval")
    lr = _positive_float(lr, "lr")
    critic_lr = _positive_float(critic_lr, "critic_lr")
    if lam is None or (isinstance(lam, (int, float)) and math.isinf(lam) and lam > 0):
        t = 1.0
    else:
        t = _positive_float(lam, "lam")
        t = t / (1.0 + t)
    if reference is not None and not callable(reference):
        raise TypeError(f"reference must be a map (a callable on points), got {type(reference).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    dev = resolve_device(device)

    draw_src, d = _as_source(source, "source")
    draw_tgt, d_t = _as_source(target, "target")
    if d_t != d:
        raise ValueError(f"source points have dimension {d} and target points {d_t}; they must agree")

    seeds = np.random.SeedSequence(int(seed)).spawn(4)
    rng = np.random.default_rng(seeds[0])
    # normalisation: one centre and one scale for both clouds (OT maps commute with it)
    pool = np.concatenate([draw_src(2000, np.random.default_rng(seeds[1])),
                           draw_tgt(2000, np.random.default_rng(seeds[2]))])
    center = pool.mean(0)
    scale = float(np.sqrt(((pool - center) ** 2).sum(1).mean() / d))
    if not scale > 0:
        raise ValueError("all source and target points coincide; there is nothing to transport")
    x_eval = ref_eval = None
    if reference is not None:
        x_eval = draw_src(n_eval, np.random.default_rng(seeds[3]))
        ref_eval = _points(reference(x_eval), "reference(x)", dim=d)

    with cpu_threads(num_threads, dev):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            gen, critic = _Generator(d, hidden), _mlp(d, 1, hidden)
        gen.to(dev)
        critic.to(dev)
        avg = None
        if average_over is None:
            average_over = max(1, min(100, steps // 10))
        if average_over > 1:
            avg = torch.optim.swa_utils.AveragedModel(
                gen, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(1.0 - 1.0 / average_over))
        opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.9))
        opt_c = torch.optim.Adam(critic.parameters(), lr=critic_lr, betas=(0.5, 0.9))
        c_t = torch.as_tensor(center, dtype=torch.float32, device=dev)

        def batch(draw) -> torch.Tensor:
            return (torch.as_tensor(draw(batch_size, rng), dtype=torch.float32, device=dev) - c_t) / scale

        s2 = scale ** 2
        hist: dict[str, list[float]] = {"transport_cost": [], "critic_w2sq": [], "generator_loss": [],
                                        "reference_step": [], "reference_mse": []}

        def record_reference(step: int) -> None:
            hist["reference_step"].append(step)
            hist["reference_mse"].append(float(((_eval_map(x_eval) - ref_eval) ** 2).sum(1).mean()))

        def _eval_map(X: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                xt = (torch.as_tensor(X, dtype=torch.float32, device=dev) - c_t) / scale
                return ((gen if avg is None else avg)(xt) * scale + c_t).cpu().numpy().astype(np.float64)

        start = time.perf_counter()
        if reference is not None:
            record_reference(0)
        for step in range(1, steps + 1):
            for _ in range(n_critic + (warmup if step == 1 else 0)):
                x, y = batch(draw_src), batch(draw_tgt)
                with torch.no_grad():
                    z = gen(x)
                gz = critic(z).squeeze(1)
                cost = 0.5 * torch.cdist(z, y) ** 2
                dual = gz.mean() + (cost - gz[:, None]).min(0).values.mean()
                opt_c.zero_grad(set_to_none=True)
                (-dual).backward()
                opt_c.step()
            x = batch(draw_src)
            z = gen(x)
            transport = 0.5 * ((z - x) ** 2).sum(1).mean()
            loss = (1 - t) * transport + t * critic(z).mean()
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            if avg is not None:
                avg.update_parameters(gen)
            losses = {"transport_cost": 2 * s2 * float(transport.detach()),
                      "critic_w2sq": 2 * s2 * float(dual.detach()), "generator_loss": float(loss.detach())}
            if not all(math.isfinite(v) for v in losses.values()):
                raise FloatingPointError(f"training diverged at step {step} (losses {losses}); "
                                         f"lower lr / critic_lr or raise n_critic")
            for k, v in losses.items():
                hist[k].append(v)
            if reference is not None and (step % eval_every == 0 or step == steps):
                record_reference(step)
                losses["reference_mse"] = hist["reference_mse"][-1]
            if callback is not None:
                callback(step, losses)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    if avg is not None:
        gen = avg.module
    gen.eval()
    critic.eval()
    config = dict(steps=steps, lam=lam, batch_size=batch_size, n_critic=n_critic, warmup=warmup,
                  hidden=hidden, lr=lr, critic_lr=critic_lr, seed=int(seed), device=str(dev),
                  average_over=average_over, num_threads=num_threads)
    return AdversarialMap(gen, critic, center, scale,
                          {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()}, seconds, config)


# --------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class MapEvaluation:
    r"""How well a map pushes a source sample onto a target sample (see :func:`evaluate_map`).

    All in the units of the points, squared where it says so.

    Attributes
    ----------
    transport_cost : float
        :math:`\mathbb{E}\|G(x) - x\|^2`, the map's own cost.
    w2_to_target : float
        :math:`W_2(G_\#\hat\mu, \hat\nu)` by exact OT on the samples.
    w2_noise_floor : float or None
        :math:`W_2` between two independent samples of :math:`\nu` of the same size: what
        even a perfect map scores (only when ``target`` is a sampler).
    reference_mse : float or None
        :math:`\mathbb{E}\|G(x) - T(x)\|^2` against the reference map.
    reference_cost : float or None
        :math:`\mathbb{E}\|T(x) - x\|^2`, the reference's own displacement (its :math:`W_2^2`).
    relative_error : float or None
        ``reference_mse / reference_cost``.
    w2_reference_to_target : float or None
        :math:`W_2(T_\#\hat\mu, \hat\nu)`: the reference map's own score on these samples.
    n : int
        Points in each sample.
    """

    transport_cost: float
    w2_to_target: float
    w2_noise_floor: float | None
    reference_mse: float | None
    reference_cost: float | None
    relative_error: float | None
    w2_reference_to_target: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_map(map_fn: Callable[[np.ndarray], Any], source: PointsOrSampler, target: PointsOrSampler,
                 *, reference: Callable[[np.ndarray], Any] | None = None, n: int = 1000,
                 seed: int = 1) -> MapEvaluation:
    r"""Score a map: its error to a reference map and the :math:`W_2` of its push-forward to the target.

    .. math::
        \mathrm{MSE} = \frac1n\sum_i \|G(x_i) - T(x_i)\|^2, \qquad
        \frac{\mathrm{MSE}}{\frac1n\sum_i\|T(x_i) - x_i\|^2}, \qquad
        W_2\Big(\tfrac1n\sum_i \delta_{G(x_i)},\ \tfrac1n\sum_j \delta_{y_j}\Big).

    Parameters
    ----------
    map_fn : callable
        Points (n, d) -> images (n, d): an :class:`AdversarialMap`, a :class:`GaussianMap`, ...
    source, target : samplers (``n`` fresh points each, seeded by ``seed``) or arrays
        (used as given; ``n`` is then ignored).
    reference : callable, optional
        The true map, e.g. :func:`gaussian_map`'s.
    n : int
        Sample size for samplers; the exact OT on ``n x n`` points takes about a second
        at ``n = 1000`` here.
    """
    n = _positive_int(n, "n")
    rs, rt, rf = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    X = _points(source(n, rs) if callable(source) else source, "source")
    Y = _points(target(n, rt) if callable(target) else target, "target", dim=X.shape[1])
    GX = _points(map_fn(X), "map_fn(source)", dim=X.shape[1])
    if GX.shape[0] != X.shape[0]:
        raise ValueError(f"map_fn returned {GX.shape[0]} points for {X.shape[0]}")
    floor = None
    if callable(target):
        floor = w2_samples(target(len(Y), rf), Y)
    ref_mse = ref_cost = rel = w2_ref = None
    if reference is not None:
        TX = _points(reference(X), "reference(source)", dim=X.shape[1])
        ref_mse = float(((GX - TX) ** 2).sum(1).mean())
        ref_cost = float(((TX - X) ** 2).sum(1).mean())
        rel = ref_mse / ref_cost if ref_cost > 0 else math.inf
        w2_ref = w2_samples(TX, Y)
    return MapEvaluation(float(((GX - X) ** 2).sum(1).mean()), w2_samples(GX, Y), floor,
                         ref_mse, ref_cost, rel, w2_ref, int(X.shape[0]))
