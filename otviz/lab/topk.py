r"""A differentiable top-k by entropic optimal transport (Xie et al. 2020).

Picking the :math:`k` largest of :math:`n` scores is a step function of the
scores: its gradient is zero almost everywhere, so scores that decide *what to
keep* cannot be learned by gradient descent through a hard top-k. Xie et al.
write the top-k as an optimal transport problem and smooth it with entropy.

The scores :math:`x_1, \dots, x_n` are first rescaled affinely to
:math:`[0, 1]` (``rescale=True``, the default),
:math:`s_i = (x_i - \min_j x_j) / (\max_j x_j - \min_j x_j)`, so that ``eps``
has one meaning whatever the scores' units. Each score carries mass
:math:`a_i = 1/n`; two anchors :math:`y_0 = 0` ("dropped") and
:math:`y_1 = 1` ("kept") receive :math:`b_0 = (n-k)/n` and :math:`b_1 = k/n`;
the cost is the squared distance :math:`C_{ij} = (s_i - y_j)^2`. The entropic
plan

.. math::
    P^\varepsilon = \operatorname*{argmin}_{P \in U(a, b)} \langle P, C \rangle
    + \varepsilon\, \mathrm{KL}(P \,|\, a b^\top)

sends each score partly to each anchor, and the **soft top-k indicator** is the
share of score :math:`i` sent to the "kept" anchor,

.. math::
    A^\varepsilon_i = \frac{P^\varepsilon_{i1}}{P^\varepsilon_{i0} + P^\varepsilon_{i1}}
    = n\, P^\varepsilon_{i1} \in [0, 1], \qquad \sum_i A^\varepsilon_i = k .

As :math:`\varepsilon \to 0` the plan tends to the exact (monotone, in one
dimension) plan, which sends the :math:`k` largest scores to :math:`y_1`: for
distinct scores :math:`A^\varepsilon` tends to the hard top-k indicator. With
two anchors the plan has a closed form given the dual variables: since
:math:`C_{i0} - C_{i1} = 2 s_i - 1`,

.. math::
    A^\varepsilon_i = \sigma\!\left(\frac{2 s_i - \theta}{\varepsilon}\right),

a logistic of the rescaled score with width :math:`\varepsilon/2` and a
threshold :math:`\theta/2` set by the constraint :math:`\sum_i A_i = k`
(:math:`\sigma` is the logistic function). Equal scores get equal weights, so
scores tied across the top-k boundary share the remaining mass.

:func:`select_neurons` puts the soft top-k to work: it learns which ``k`` channels of
a trained network's layer matter most for its task, by gradient descent on one
score per channel through the soft mask, and compares them with random channels
and with the channels of largest mean activation.

References
----------
Yujia Xie, Hanjun Dai, Minshuo Chen, Bo Dai, Tuo Zhao, Hongyuan Zha, Wei Wei and
Tomas Pfister. *Differentiable Top-k with Optimal Transport.* Advances in Neural
Information Processing Systems 33 (NeurIPS 2020).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from otviz._device import resolve_device

from ._ot import check_eps, check_stopping, entropic_plan

if TYPE_CHECKING:
    from torch import nn

    from otviz.data import TaskData

__all__ = ["NeuronSelection", "TopKTransport", "hard_topk", "select_neurons", "soft_topk",
           "topk_transport"]

#: The anchors of the transport problem: "dropped" at 0, "kept" at 1 (rescaled score units).
ANCHORS: tuple[float, float] = (0.0, 1.0)
_ROOT_STEPS = 200      # Newton steps (safeguarded by bisection) for the threshold
_ROOT_TOL = 1e-14       # ... until the weights' sum is k to this times n


# --------------------------------------------------------------------------- validation
def _as_scores(scores: Any) -> torch.Tensor:
    """Scores as a floating tensor of shape (n,) or (batch, n), finite and non-empty."""
    if isinstance(scores, torch.Tensor):
        x = scores
    else:
        try:
            arr = np.asarray(scores)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"scores must be a 1-D array or tensor of numbers, got "
                            f"{type(scores).__name__} ({exc})") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
                or np.iscomplexobj(arr):
            raise TypeError(f"scores must hold real numbers, got dtype {arr.dtype}")
        x = torch.as_tensor(arr if arr.dtype != np.float16 else arr.astype(np.float32))
    if x.is_complex():
        raise TypeError(f"scores must hold real numbers, got dtype {x.dtype}")
    if not x.dtype.is_floating_point:
        x = x.to(torch.get_default_dtype())
    if x.ndim not in (1, 2):
        raise ValueError(f"scores must be 1-D, shape (n,), or 2-D, shape (batch, n) for a batch of "
                         f"score vectors; got shape {tuple(x.shape)}")
    if x.shape[-1] == 0 or x.numel() == 0:
        raise ValueError(f"scores is empty (shape {tuple(x.shape)}); pass at least one score")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("scores contain NaN or infinite values; the top-k of such scores is not defined")
    return x


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer (how many scores to keep), got {type(k).__name__} {k!r}")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n = {n} (the number of scores), got k = {k}")
    return k


# --------------------------------------------------------------------------- core
def _rescaled(x: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Each row affinely mapped onto [0, 1] (differentiably); a constant row maps to 0."""
    if not rescale:
        return x
    lo = x.min(dim=-1, keepdim=True).values
    span = x.max(dim=-1, keepdim=True).values - lo
    if not bool(torch.isfinite(span).all()):  # scores near the float range: halve first (exact)
        x = 0.5 * x
        lo = 0.5 * lo
        span = x.max(dim=-1, keepdim=True).values - lo
    flat = span == 0
    # a constant row: x - lo is exactly 0, and dividing by 1 keeps its gradient finite
    return (x - lo) / torch.where(flat, torch.ones_like(span), span)


@torch.no_grad()
def _threshold(gap: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    r"""The column shift :math:`\delta` (one per row of ``gap``) at which the plan's columns
    carry ``(n-k)/n`` and ``k/n``.

    ``gap`` holds :math:`C_{i1} - C_{i0}`; with :math:`g = (0, \delta)` optimal,
    :math:`A_i = \sigma((\delta - \mathrm{gap}_i)/\varepsilon + \log(k/(n-k)))`, and
    :math:`\sum_i A_i` increases with :math:`\delta`: Newton's method on this monotone
    function of one variable, inside a bracket that a bisection step halves whenever a
    Newton step would leave it (the derivative vanishes where the weights are nearly hard).
    """
    n = gap.shape[-1]
    target = math.log(k / (n - k))
    t = -gap / eps + target
    lo = target - t.max(dim=-1).values     # all t_i + w <= logit(k/n): sum <= k
    hi = target - t.min(dim=-1).values     # all t_i + w >= logit(k/n): sum >= k
    w = 0.5 * (lo + hi)
    for _ in range(_ROOT_STEPS):
        p = torch.sigmoid(t + w[..., None])
        f = p.sum(-1) - k
        below = f < 0
        lo = torch.where(below, w, lo)
        hi = torch.where(below, hi, w)
        slope = (p * (1 - p)).sum(-1)
        newton = w - f / slope.clamp_min(1e-300)
        inside = (slope > 0) & (newton > lo) & (newton < hi)
        done = (f.abs() <= _ROOT_TOL * n) | (hi - lo <= 4 * torch.finfo(w.dtype).eps * hi.abs().clamp_min(1.0))
        if bool(done.all()):
            break
        w = torch.where(done, w, torch.where(inside, newton, 0.5 * (lo + hi)))
    return eps * w


def _plans(x: torch.Tensor, k: int, eps: float, rescale: bool, tol: float,
           max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(plans of shape (batch, n, 2), rescaled scores (batch, n)) for scores of shape (batch, n)."""
    n = x.shape[-1]
    s = _rescaled(x, rescale)
    y0, y1 = ANCHORS
    # C_ij = (s_i - y_j)^2, so C_i1 - C_i0 = y1^2 - y0^2 - 2 s_i (y1 - y0) (no overflow for large s)
    gap = (y1 ** 2 - y0 ** 2) - 2.0 * (y1 - y0) * s              # (batch, n)
    if not bool(torch.isfinite(gap / eps).all()):
        raise ValueError(f"the scores are too large for eps = {eps:g} (score / eps overflows); rescale "
                         f"them (rescale=True) or use a larger eps")
    # Sinkhorn converges linearly at the rate 1 - sum_i a_i A_i (1 - A_i) / (b_0 b_1), which is
    # ~1 when the indicator is nearly hard: started from scratch it can stall for 10^5
    # iterations. With two anchors the dual has one free variable: on the cost [0, gap_i]
    # (a constant added to a row changes nothing), the column potentials (0, delta) with
    # delta found by a safeguarded Newton search, and the row potentials their
    # c-transform, are optimal; the solver starts there and stops after one iteration.
    # delta is a constant for autograd: the gradient is entropic_plan's implicit one.
    delta = _threshold(gap.detach(), k, eps)
    b = [(n - k) / n, k / n]
    log_b = torch.log(torch.tensor(b, dtype=torch.float64))
    plans = []
    for row, d in zip(gap.reshape(-1, n), delta.reshape(-1)):
        cost = torch.stack([torch.zeros_like(row), row], dim=1)
        g = torch.stack([torch.zeros((), dtype=torch.float64), d.to(torch.float64)])
        c64 = cost.detach().to(torch.float64).cpu()
        f = -eps * torch.logsumexp(log_b[None, :] + (g[None, :] - c64) / eps, dim=1)
        plans.append(entropic_plan(cost, None, b, eps=eps, tol=tol, max_iter=max_iter,
                                   warm_start=(f, g)))
    return torch.stack(plans).reshape(*x.shape, 2), s


def soft_topk(scores: Any, k: int, eps: float, *, rescale: bool = True, tol: float = 1e-10,
              max_iter: int = 1000) -> torch.Tensor:
    r"""Smoothed top-k indicator of ``scores`` by entropic OT to two anchors (Xie et al. 2020).

    Scores :math:`x \in \mathbb{R}^n` are rescaled to :math:`s \in [0, 1]^n`
    (``rescale=True``), each with mass :math:`1/n`, and transported to the anchors
    :math:`y_0 = 0` (mass :math:`(n-k)/n`) and :math:`y_1 = 1` (mass :math:`k/n`) with
    cost :math:`C_{ij} = (s_i - y_j)^2` and entropic regularisation :math:`\varepsilon`:

    .. math::
        P^\varepsilon = \operatorname*{argmin}_{P \in U(a, b)} \langle P, C \rangle
        + \varepsilon\, \mathrm{KL}(P \,|\, a b^\top), \qquad
        A^\varepsilon_i = n\, P^\varepsilon_{i1} = \sigma\!\left(\frac{2 s_i - \theta}{\varepsilon}\right).

    :math:`A^\varepsilon` lies in :math:`[0, 1]`, sums to :math:`k` and tends to the
    hard top-k indicator as :math:`\varepsilon \to 0` (distinct scores): a logistic
    step of width :math:`\varepsilon/2` in rescaled score units, placed so that
    the weights sum to :math:`k`. Equal scores get equal weights. Weights far from
    the step are 0 or 1 to within about :math:`e^{-50} \approx 2 \cdot 10^{-22}` (see Notes).

    The plan is :func:`otviz.lab.entropic_plan`'s, so the result is differentiable
    with respect to ``scores`` (implicit differentiation of the optimality
    conditions, exact whatever the number of Sinkhorn iterations).

    Parameters
    ----------
    scores : tensor or array of shape (n,) or (batch, n)
        Real, finite scores (a batch of rows is handled row by row). Integer
        scores are converted to torch's default float dtype.
    k : int
        How many scores to keep, ``1 <= k <= n``. ``k = n`` keeps everything: the
        answer is all ones, constant in the scores (zero gradient).
    eps : float
        Entropic regularisation (> 0), in squared rescaled-score units: the
        indicator's step is about ``eps`` wide on the ``[0, 1]`` scale of the
        scores. ``eps = 0.01`` is nearly hard for well-separated scores, ``1`` is
        nearly flat (``k/n`` everywhere).
    rescale : bool, default True
        Map each score vector affinely onto ``[0, 1]`` first (min to 0, max to 1;
        a constant vector maps to 0, whose indicator is ``k/n`` everywhere), so that
        the result does not change when the scores are shifted or scaled. Rescaling
        also magnifies nearly equal scores to the full ``[0, 1]`` range. With
        ``False`` the scores are used as they are, with the same anchors 0 and 1:
        ``eps`` is then in the scores' squared units, and scaling the scores up
        sharpens the indicator.
    tol, max_iter : float, int
        Stopping rule of the solver (marginal error, in mass units). The solver
        starts from the optimal threshold (see Notes) and converges in a few
        iterations; it raises rather than return an unconverged plan.

    Returns
    -------
    torch.Tensor
        The soft indicator, same shape, dtype and device as ``scores`` (float64
        internally).

    Raises
    ------
    ValueError, TypeError
        Empty, non-finite or non-real scores, more than two dimensions, ``k`` not an
        integer in ``1..n``, ``eps`` or ``tol`` not a positive finite number,
        ``max_iter`` not a positive integer.

    Notes
    -----
    With two anchors the dual problem has a single free variable, the threshold
    :math:`\theta`. Sinkhorn's iterations move it at a linear rate
    :math:`1 - \sum_i a_i A_i(1 - A_i)/(b_0 b_1)`, which is close to 1 when the
    indicator is nearly hard. Started from scratch on the cost above, the library's
    solver did not reach its tolerance (1e-10) in 10,000 iterations on 17 of 108
    problems (n from 10 to 200, ``eps`` from 1e-4 to 1, measured here), and after
    3,000 iterations the weights' sum was still off by up to 7e-3. So :math:`\theta` is
    first found by a safeguarded Newton search (the sum of the weights increases
    with it); the column potentials it gives (0 for *dropped*, the threshold's shift for
    *kept*) and their c-transform, the row potentials, are then optimal, and the solver starts from them
    (``warm_start`` of :func:`otviz.lab.entropic_plan`). Measured on 2,772 problems
    (``n`` from 2 to 1,000, ``k`` in {1, n/3, n-1}, ``eps`` from 1e-5 to 10), the
    solver met its tolerance at its first check every time (0 iterations) and the
    weights summed to ``k`` within 1e-11.

    References
    ----------
    Y. Xie, H. Dai, M. Chen, B. Dai, T. Zhao, H. Zha, W. Wei, T. Pfister.
    *Differentiable Top-k with Optimal Transport.* NeurIPS 2020.

    Examples
    --------
    >>> w = soft_topk(torch.tensor([0.1, 2.0, 0.5, 1.5]), k=2, eps=0.01)
    >>> [round(float(v), 3) for v in w], round(float(w.sum()), 6)
    ([0.0, 1.0, 0.0, 1.0], 2.0)
    """
    x = _as_scores(scores)
    n = x.shape[-1]
    k = _check_k(k, n)
    eps = check_eps(eps)
    tol, max_iter = check_stopping(tol, max_iter)
    if k == n:
        return x * 0 + 1  # keep everything: constant, on x's graph, dtype and device
    rows = x.reshape(-1, n).to(torch.float64)
    P, _ = _plans(rows, k, eps, bool(rescale), tol, max_iter)
    weights = P[..., 1] / P.sum(-1)
    return weights.reshape(x.shape).to(x.dtype)


def hard_topk(scores: Any, k: int) -> torch.Tensor:
    """The hard top-k indicator: 1 for the ``k`` largest scores of each row, 0 elsewhere.

    Ties are broken toward the lower index (a stable descending sort), so exactly
    ``k`` ones are set. Same shape, dtype and device as ``scores`` (floating).
    """
    x = _as_scores(scores)
    k = _check_k(k, x.shape[-1])
    order = torch.sort(x.detach(), dim=-1, descending=True, stable=True).indices[..., :k]
    out = torch.zeros_like(x, dtype=x.dtype)
    return out.scatter(-1, order, 1.0)


@dataclass(frozen=True)
class TopKTransport:
    """The transport problem behind :func:`soft_topk`, for one score vector (numpy arrays).

    Attributes
    ----------
    scores : ndarray of shape (n,)
        The scores as given.
    scaled : ndarray of shape (n,)
        The scores mapped onto ``[0, 1]`` (equal to ``scores`` with ``rescale=False``).
    plan : ndarray of shape (n, 2)
        The entropic plan; column 0 goes to the "dropped" anchor, column 1 to "kept".
        Rows sum to ``1/n``, columns to ``(n-k)/n`` and ``k/n``.
    weights : ndarray of shape (n,)
        The soft indicator ``plan[:, 1] / plan.sum(1)`` (what :func:`soft_topk` returns).
    hard : ndarray of shape (n,)
        The hard top-k indicator (:func:`hard_topk`).
    threshold : float
        The rescaled score whose weight is 1/2 (the middle of the logistic step).
    k, eps : the arguments.
    anchors : tuple of float
        The anchors' positions, ``(0.0, 1.0)``.
    """

    scores: np.ndarray
    scaled: np.ndarray
    plan: np.ndarray
    weights: np.ndarray
    hard: np.ndarray
    threshold: float
    k: int
    eps: float
    anchors: tuple[float, float] = ANCHORS

    @property
    def n(self) -> int:
        """Number of scores."""
        return int(self.scores.shape[0])

    @property
    def max_error(self) -> float:
        """Largest gap between the soft and the hard indicator (0 = hard, 1 = one fully wrong)."""
        return float(np.abs(self.weights - self.hard).max())


def topk_transport(scores: Any, k: int, eps: float, *, rescale: bool = True) -> TopKTransport:
    r"""Solve the transport problem of :func:`soft_topk` for one score vector and return
    all of it (the plan, the rescaled scores, the threshold), for figures and teaching.

    Same arguments and errors as :func:`soft_topk` (1-D scores only). ``k = n`` gives
    the plan that sends everything to the "kept" anchor.
    """
    x = _as_scores(scores)
    if x.ndim != 1:
        raise ValueError(f"topk_transport takes one score vector, shape (n,), got {tuple(x.shape)}")
    n = x.shape[0]
    k = _check_k(k, n)
    eps = check_eps(eps)
    with torch.no_grad():
        x64 = x.detach().to(torch.float64).cpu()
        s = _rescaled(x64[None], bool(rescale))[0]
        if k == n:
            P = torch.stack([torch.zeros(n, dtype=torch.float64), torch.full((n,), 1.0 / n,
                                                                              dtype=torch.float64)], 1)
        else:
            P = _plans(x64[None], k, eps, bool(rescale), 1e-10, 1000)[0][0]
        w = P[:, 1] / P.sum(1)
    w_np, s_np = w.numpy(), s.numpy()
    # the middle of the step: A = sigma((2s - theta)/eps) = 1/2 at s = theta/2; from any
    # weight strictly inside (0, 1), theta = 2s - eps logit(A)
    inside = (w_np > 1e-12) & (w_np < 1 - 1e-12)
    if k == n:
        threshold = -math.inf
    elif inside.any():
        i = int(np.argmin(np.abs(w_np - 0.5) + ~inside))
        threshold = float(s_np[i] - 0.5 * eps * math.log(w_np[i] / (1 - w_np[i])))
    else:  # hard to float64 precision: the step lies between the k-th and (k+1)-th score
        srt = np.sort(s_np)[::-1]
        threshold = float(0.5 * (srt[k - 1] + srt[k]))
    return TopKTransport(scores=x64.numpy(), scaled=s_np, plan=P.numpy(), weights=w_np,
                         hard=hard_topk(x64, k).numpy(), threshold=threshold, k=k, eps=eps)


# --------------------------------------------------------------------------- selecting neurons
@dataclass
class NeuronSelection:
    """What :func:`select_neurons` learned and how the selections compare.

    Accuracies are fractions of the test images classified correctly (in [0, 1]) by the
    network whose layer keeps only the selected channels (the others multiplied by 0).

    Attributes
    ----------
    model, layer : str
        The network (a shipped teacher's name, or the class name of a model passed in)
        and the masked layer.
    k, n_channels : int
        Channels kept, out of the layer's ``n_channels``.
    eps, eps_start, steps : float, float, int
        The soft top-k's regularisation at the end and at the start of training (it
        decreases geometrically), and the number of gradient steps.
    scores : ndarray of shape (n_channels,)
        The learned scores; their top ``k`` are the learned selection.
    soft_mask : ndarray of shape (n_channels,)
        ``soft_topk(scores, k, eps)``, the mask the last steps trained with.
    mean_activation : ndarray of shape (n_channels,)
        Each channel's mean output over the training images (and positions).
    learned, largest_mean : ndarray of int, shape (k,)
        Channels kept by the learned scores and by the largest mean activation.
    random : ndarray of int, shape (n_random, k)
        Random selections of ``k`` channels (uniform, without replacement).
    accuracy : dict of str to float
        Test accuracy of ``"all channels"``, ``"learned"`` and ``"largest mean activation"``.
    random_accuracy : ndarray of shape (n_random,)
        Test accuracy of each random selection.
    loss : ndarray of shape (steps,)
        Cross-entropy of the softly masked network on each training minibatch.
    n_test : int
        Test images the accuracies are measured on.
    seconds : float
        Wall-clock time of the whole call.
    device : str
        Where it ran.
    seed : int
        The seed it ran with.
    """

    model: str
    layer: str
    k: int
    n_channels: int
    eps: float
    eps_start: float
    steps: int
    scores: np.ndarray
    soft_mask: np.ndarray
    mean_activation: np.ndarray
    learned: np.ndarray
    largest_mean: np.ndarray
    random: np.ndarray
    accuracy: dict[str, float]
    random_accuracy: np.ndarray
    loss: np.ndarray
    n_test: int
    seconds: float
    device: str = "cpu"
    seed: int = 0

    @property
    def margin_over_random(self) -> float:
        """Learned accuracy minus the mean accuracy of the random selections (fraction)."""
        return float(self.accuracy["learned"] - self.random_accuracy.mean())

    def as_frame(self):
        """One row a selection rule: ``rule``, ``accuracy``, ``channels`` (pandas DataFrame)."""
        import pandas as pd

        r = self.random_accuracy
        rows = [
            {"rule": f"all {self.n_channels} channels", "accuracy": self.accuracy["all channels"],
             "channels": "all"},
            {"rule": f"learned by soft top-{self.k}", "accuracy": self.accuracy["learned"],
             "channels": ", ".join(map(str, self.learned))},
            {"rule": "largest mean activation", "accuracy": self.accuracy["largest mean activation"],
             "channels": ", ".join(map(str, self.largest_mean))},
            {"rule": f"random (mean of {len(r)})", "accuracy": float(r.mean()),
             "channels": f"min {r.min():.3f}, max {r.max():.3f}"},
        ]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """A few lines: the layer, the accuracies, the margin over random channels."""
        r = self.random_accuracy
        return (f"{self.model} {self.layer}: keep {self.k} of {self.n_channels} channels "
                f"(test accuracy on {self.n_test} images)\n"
                f"  all channels             {self.accuracy['all channels']:.3f}\n"
                f"  learned (soft top-k)     {self.accuracy['learned']:.3f}\n"
                f"  largest mean activation  {self.accuracy['largest mean activation']:.3f}\n"
                f"  random, {len(r)} draws       mean {r.mean():.3f} (min {r.min():.3f}, max {r.max():.3f})\n"
                f"  {self.steps} steps, eps {self.eps_start:g} -> {self.eps:g}, {self.seconds:.1f} s on "
                f"{self.device}")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _channel_mask_hook(holder: dict[str, Any]):
    """A forward hook multiplying a layer's output by ``holder["mask"]`` along axis 1."""

    def hook(_module, _inputs, out):
        mask = holder.get("mask")
        if mask is None:
            return out
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[1] != mask.shape[0]:
            raise ValueError(f"the layer's output must be a tensor of shape (batch, {mask.shape[0]}, ...) "
                             f"with its channels on axis 1, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out * mask.to(out.dtype).view(1, -1, *([1] * (out.ndim - 2)))

    return hook


def select_neurons(model: "str | nn.Module" = "cnn-digits", layer: str | None = None, k: int = 8, *,
                   task: "TaskData | None" = None, eps: float = 0.005, eps_start: float = 0.3,
                   steps: int = 200, lr: float = 0.05, batch_size: int = 256, n_random: int = 20,
                   seed: int = 0, device: str | torch.device = "cpu",
                   fast: bool = False) -> NeuronSelection:
    r"""Learn which ``k`` channels of a trained network's layer matter most, with :func:`soft_topk`.

    The network is frozen. One score :math:`\theta_c` per channel of ``layer`` is
    learned: the layer's output :math:`h` is multiplied channel-wise by the soft mask
    :math:`m = \mathrm{soft\_topk}(\theta, k, \varepsilon)` and :math:`\theta` follows
    the gradient of the cross-entropy of the masked network on the training images
    (Adam, minibatches), while :math:`\varepsilon` decreases geometrically from
    ``eps_start`` to ``eps`` so that the mask ends close to a hard one. The learned
    selection, the top ``k`` of :math:`\theta`, is then compared on the test images
    with ``n_random`` random selections of ``k`` channels and with the ``k`` channels of
    largest mean activation (each channel's output averaged over the training images
    and positions), every selection keeping its channels and zeroing the others
    (a hard mask).

    Parameters
    ----------
    model : str or nn.Module, default "cnn-digits"
        A shipped teacher's name (:func:`otviz.teachers.list_teachers`; its own task's
        train and test images are used) or a trained classifier (then pass ``task``).
        A module passed in is copied, never modified.
    layer : str, optional
        Dotted name of the layer to mask, whose output has its channels on axis 1
        (``(batch, channels, ...)``). Default: the model's last alignable layer
        (``"features.conv3"``, 64 channels, for the small CNN).
    k : int, default 8
        Channels to keep, ``1 <= k < channels``.
    task : otviz.data.TaskData, optional
        Train and test images (required for a module, optional for a teacher name).
    eps, eps_start : float, default 0.005 and 0.3
        The soft top-k's regularisation at the last and the first step
        (:func:`soft_topk`, rescaled scores).
    steps, lr, batch_size : int, float, int
        Adam steps on the scores, learning rate and minibatch size.
    n_random : int, default 20
        Random selections to compare with.
    seed : int, default 0
        Seeds the initial scores (Gaussian, tiny), the minibatches and the random selections.
    device : str or torch.device, default "cpu"
        Where the network, the images and the solver run.
    fast : bool, default False
        Half the steps and random selections (the test suite's and the notebooks' fast mode).

    Returns
    -------
    NeuronSelection

    Notes
    -----
    Measured on a shared 2-core CPU, seeds 0-7, test accuracy on the 360 test images:

    - ``cnn-digits``, ``features.conv3``, ``k = 8`` of 64 channels: learned 0.86 to 0.96
      (defaults, 200 steps) and 0.85 to 0.97 (``fast``, 100 steps); random channels 0.61
      to 0.73 on average (their best draw 0.74 to 0.96); largest mean activation 0.71;
      all 64 channels 0.994. The learned channels beat the random ones' mean by 0.19 or
      more at every seed. 2 to 15 s a call, depending on the machine's load.
    - ``mlp-digits``, ``features.fc2``, ``k = 8`` of 64 units: learned 0.74 to 0.88,
      random 0.31 to 0.42 on average, largest mean activation 0.22, all 0.967; about 1 s.

    The search is not convex: seeds find different channel sets, and the best of 20
    random draws sometimes does as well as the learned one.

    References
    ----------
    Y. Xie et al. *Differentiable Top-k with Optimal Transport.* NeurIPS 2020.
    """
    import copy

    from torch import nn
    import torch.nn.functional as F

    from otviz.models import accuracy
    from otviz.teachers import load_teacher, teacher_task

    started = time.perf_counter()
    eps = check_eps(eps)
    eps_start = check_eps(eps_start, name="eps_start")
    if eps_start < eps:
        raise ValueError(f"eps_start ({eps_start:g}) must be at least eps ({eps:g}): eps decreases "
                         f"during training")
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size")
    n_random = _positive_int(n_random, "n_random")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if fast:
        steps, n_random = max(1, steps // 2), max(1, n_random // 2)
    dev = resolve_device(device)
    if isinstance(model, str):
        name = model
        net, info = load_teacher(model, device=dev)
        if task is None:
            task = teacher_task(info)
    elif isinstance(model, nn.Module):
        if task is None:
            raise ValueError("pass task= (an otviz.data.TaskData with train and test images) with a "
                             "model of your own; a shipped teacher's name brings its own task")
        name = type(model).__name__
        net = copy.deepcopy(model).to(dev)
    else:
        raise TypeError(f"model must be a shipped teacher's name or a torch.nn.Module, got "
                        f"{type(model).__name__}")
    modules = dict(net.named_modules())
    if layer is None:
        layers = list(getattr(net, "alignable_layers", []) or [])
        if not layers:
            raise ValueError("this model lists no alignable layers: pass layer= (a name from "
                             "otviz.capture.layer_names(model))")
        layer = layers[-1]
    if layer not in modules or layer == "":
        from otviz.capture import layer_names

        raise ValueError(f"unknown layer {layer!r}; layers of this model: {layer_names(net)}")

    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    X_train, y_train = task.X_train.to(dev), task.y_train.to(dev)
    X_test, y_test = task.X_test, task.y_test

    holder: dict[str, Any] = {}
    seen: list[torch.Tensor] = []

    def record(_module, _inputs, out):
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or not out.dtype.is_floating_point:
            raise ValueError(f"layer {layer!r} must output a float tensor of shape (batch, channels, ...), "
                             f"got {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        # sum over the images of each channel's mean over positions
        seen.append(out.detach().transpose(0, 1).reshape(out.shape[1], -1).mean(1) * out.shape[0])

    probe = modules[layer].register_forward_hook(record)
    try:
        with torch.no_grad():
            for i in range(0, len(X_train), 1000):
                net(X_train[i:i + 1000])
    finally:
        probe.remove()
    mean_activation = torch.stack(seen).sum(0) / len(X_train)
    n_channels = int(mean_activation.shape[0])
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) < n_channels:
        raise ValueError(f"k must be an integer between 1 and {n_channels - 1} (layer {layer!r} has "
                         f"{n_channels} channels), got {k!r}")
    k = int(k)

    handle = modules[layer].register_forward_hook(_channel_mask_hook(holder))
    try:
        gen = torch.Generator().manual_seed(int(seed))
        scores = (1e-3 * torch.randn(n_channels, generator=gen, dtype=torch.float64)).to(dev)
        scores.requires_grad_(True)
        opt = torch.optim.Adam([scores], lr=float(lr))
        losses = []
        for step in range(steps):
            frac = step / (steps - 1) if steps > 1 else 1.0
            e = math.exp(math.log(eps_start) + frac * (math.log(eps) - math.log(eps_start)))
            idx = torch.randint(len(X_train), (min(batch_size, len(X_train)),), generator=gen).to(dev)
            holder["mask"] = soft_topk(scores, k, e)
            loss = F.cross_entropy(net(X_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        holder["mask"] = None
        final = scores.detach()
        soft_mask = soft_topk(final, k, eps)

        def acc(channels: torch.Tensor | None) -> float:
            if channels is None:
                holder["mask"] = None
            else:
                m = torch.zeros(n_channels, dtype=torch.float32, device=dev)
                m[channels.to(dev)] = 1.0
                holder["mask"] = m
            try:
                return accuracy(net, X_test, y_test, device=dev)
            finally:
                holder["mask"] = None

        learned = torch.sort(torch.topk(final, k).indices).values
        largest = torch.sort(torch.topk(mean_activation, k).indices).values
        random = torch.stack([torch.sort(torch.randperm(n_channels, generator=gen)[:k]).values
                              for _ in range(n_random)])
        accs = {"all channels": acc(None), "learned": acc(learned),
                "largest mean activation": acc(largest)}
        random_acc = np.array([acc(r) for r in random])
    finally:
        handle.remove()
    return NeuronSelection(
        model=name, layer=layer, k=k, n_channels=n_channels, eps=eps, eps_start=eps_start,
        steps=steps, scores=final.cpu().numpy(), soft_mask=soft_mask.cpu().numpy(),
        mean_activation=mean_activation.double().cpu().numpy(), learned=learned.cpu().numpy(),
        largest_mean=largest.cpu().numpy(), random=random.numpy(), accuracy=accs,
        random_accuracy=random_acc, loss=np.array(losses), n_test=len(y_test),
        seconds=time.perf_counter() - started, device=str(dev), seed=int(seed))
