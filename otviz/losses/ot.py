r"""Training losses for representation transfer: the OT regulariser and the baselines.

Every method is an :class:`torch.nn.Module` with the same call shape: it is
called once per training step with a :class:`StepContext` (the minibatch,
the logits, the features captured by forward hooks, the student) and returns
a scalar tensor that is already multiplied by its own coefficient. The
trainer sums nothing itself: :func:`build_loss` returns one module (a
:class:`CombinedLoss`) whose output is the whole training objective,

.. math::
    \mathcal{L} = \underbrace{\mathrm{CE}(f_S(x), y)}_{\text{task}}
        + \sum_{m \in \text{method}} \mathcal{R}_m ,

where the regularisers :math:`\mathcal{R}_m` are

- ``scratch``, ``finetune``: none. The objective is the task loss alone; the
  two differ in the student's initialisation (random, or the teacher's
  weights), which is the trainer's job.
- ``l2sp`` (:class:`L2SP`; Li, Grandvalet, Davoine 2018):
  :math:`\frac{\alpha}{2}\|w_S - w_S^0\|^2 + \frac{\beta}{2}\|w_{\bar S}\|^2`.
- ``kd`` (:class:`KD`; Hinton, Vinyals, Dean 2015):
  :math:`T^2\,\mathrm{KL}(\sigma(z_T/T)\,\|\,\sigma(z_S/T))`.
- ``fitnets`` (:class:`FitNets`; Romero et al. 2015):
  :math:`\sum_\ell \mathrm{MSE}(r_\ell(S_\ell), T_\ell)` with learned 1x1
  regressors :math:`r_\ell`.
- ``at`` (:class:`AttentionTransfer`; Zagoruyko & Komodakis 2017):
  :math:`\frac{\beta}{2}\sum_\ell \mathrm{mean}(q_S^\ell - q_T^\ell)^2` on
  normalised spatial attention maps.
- ``ot`` (:class:`OTRegularizer`; Li, Grandvalet, Flamary, Courty, Dou 2020):
  :math:`\lambda \sum_\ell \mathrm{OT}(\mu_{T_\ell}, \mu_{S_\ell})`, the OT
  distance between the teacher's and the student's layers seen as sets of
  neurons, on every minibatch.

Methods combine with ``+`` (``"kd+ot"``): the terms are summed.

Every loss exposes what the trainer needs to know before the first step:

- ``name`` -- the term's name, used as ``"loss/<name>"`` in
  :meth:`CombinedLoss.diagnostics`;
- ``needs_teacher_logits`` -- whether ``StepContext.teacher_logits`` must be
  filled (a teacher forward pass with the full network);
- ``teacher_layers`` / ``student_layers`` -- the module names whose outputs
  must be captured (with :func:`otviz.capture.hooked`) into
  ``StepContext.teacher_features`` (under ``torch.no_grad()``) and
  ``StepContext.student_features`` (with the graph);
- ``extra_parameters()`` -- trainable parameters owned by the loss (the
  FitNets regressors), to be added to the optimiser;
- ``diagnostics()`` -- floats describing the last call, for logging;
- ``needs_teacher`` -- whether the teacher must run at all (logits or
  features); false for ``scratch``, ``finetune`` and ``l2sp``.

A loss that owns parameters or reference tensors must live on the training
device: call ``loss.to(device)`` before building the optimiser.

One training step, as the trainer runs it::

    loss = build_loss("kd+ot", pairs=[("features.conv2", "features.conv2")], lam=0.1)
    loss.to(device)
    opt = torch.optim.Adam([*student.parameters(), *loss.extra_parameters()])
    ...
    with torch.no_grad(), hooked(teacher, loss.teacher_layers) as t_feats:
        t_logits = teacher(x)
    with hooked(student, loss.student_layers) as s_feats:
        s_logits = student(x)
    ctx = StepContext(x, y, s_logits, t_logits, s_feats, t_feats, student, step)
    value = loss(ctx)
    opt.zero_grad(); value.backward(); opt.step()
    log(loss.diagnostics())   # {"loss/ce": ..., "loss/kd": ..., "ot/features.conv2->...": ...}

(:func:`otviz.capture.hooked` refuses an empty list of layers: skip the
hooks when ``loss.student_layers`` is empty, and the teacher's forward pass
when ``loss.needs_teacher`` is false.)
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from otviz import transport as _transport
from otviz._recipes import METHODS, parse_method
from otviz.capture import Activations, neurons

__all__ = [
    "AttentionTransfer",
    "CombinedLoss",
    "CrossEntropy",
    "FitNets",
    "KD",
    "L2SP",
    "METHODS",
    "OTRegularizer",
    "StepContext",
    "TransferLoss",
    "attention_map",
    "build_loss",
    "layer_pairs",
    "ot_layer_distance",
    "pair_key",
    "parse_method",
    "probe_channels",
]

# METHODS, the names accepted by build_loss (alone, or joined with "+"), and parse_method are
# plain data in otviz._recipes (importable without torch).
_NO_TERM = ("scratch", "finetune")

LayerPair = tuple[str, str]
PairsLike = Union[str, Sequence[Union[str, Sequence[str]]]]

_OT_COSTS = ("sqeuclidean", "euclidean", "cosine", "correlation")
_OT_NORMALIZE = (None, "center", "standardize", "unit")
_OT_METHODS = ("emd", "sinkhorn", "unbalanced")
_SPATIAL = ("flatten", "mean")
_FEATURE_SCALES = ("mean", "sum")
_SOLVER_OPTIONS = ("reg_m", "tol", "max_iter")


# ----------------------------------------------------------------------------
# the step context
# ----------------------------------------------------------------------------
@dataclass
class StepContext:
    """Everything a loss may look at during one training step.

    Attributes
    ----------
    inputs : torch.Tensor
        The minibatch, batch on the first axis.
    targets : torch.Tensor
        Class indices of the student's task, shape ``(n,)``.
    student_logits : torch.Tensor
        Student output, shape ``(n, classes)``, with the autograd graph.
    teacher_logits : torch.Tensor or None
        Teacher output on the same inputs, or ``None`` when no loss needs it
        (see ``needs_teacher_logits``).
    student_features : dict of str to torch.Tensor
        Outputs of the student modules listed in ``student_layers``, captured
        by forward hooks during the student's forward pass (with the graph).
        Pass the :class:`otviz.capture.Activations` that
        :func:`otviz.capture.hooked` yields (not a plain ``dict`` copy of
        it): it tells the OT regulariser which axis holds each layer's
        neurons and which tokens are padding.
    teacher_features : dict of str to torch.Tensor
        Outputs of the teacher modules listed in ``teacher_layers``, captured
        under ``torch.no_grad()`` (an :class:`~otviz.capture.Activations` too).
    student : torch.nn.Module
        The student network (L2-SP reads its parameters).
    step : int, default 0
        Global step counter, starting at 0.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    student: nn.Module | None = None
    step: int = 0


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def pair_key(teacher_layer: str, student_layer: str) -> str:
    """Name of a (teacher layer, student layer) pair in diagnostics: ``"teacher->student"``."""
    return f"{teacher_layer}->{student_layer}"


def layer_pairs(pairs: PairsLike | None, what: str = "this loss") -> tuple[LayerPair, ...]:
    """Normalise a user's layer pairs to a tuple of ``(teacher_layer, student_layer)``.

    Parameters
    ----------
    pairs : str or sequence
        Each item is a 2-sequence ``(teacher_layer, student_layer)``, a string
        ``"teacher_layer:student_layer"``, or a single module name used on both
        sides (same architecture, or architectures with the same layer names).
        A single string is one pair.
    what : str
        Name of the caller, used in error messages.

    Returns
    -------
    tuple of (str, str)

    Raises
    ------
    ValueError
        No pairs, an empty name, a malformed item or a duplicated pair.

    Examples
    --------
    >>> layer_pairs(["features.conv2", ("features.conv1", "features.conv2")])
    (('features.conv2', 'features.conv2'), ('features.conv1', 'features.conv2'))
    >>> layer_pairs("features.conv2:features.conv1")
    (('features.conv2', 'features.conv1'),)
    """
    example = "pairs=[('features.conv2', 'features.conv2')]"
    if pairs is None:
        raise ValueError(f"{what} needs layer pairs to compare; pass e.g. {example}.")
    if isinstance(pairs, str):
        pairs = [pairs]
    try:
        items = list(pairs)
    except TypeError:
        raise TypeError(
            f"{what}: pairs must be a sequence of (teacher_layer, student_layer) pairs, got "
            f"{type(pairs).__name__}; pass e.g. {example}."
        ) from None
    if not items:
        raise ValueError(f"{what} needs at least one layer pair; pass e.g. {example}.")
    out: list[LayerPair] = []
    for item in items:
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) == 1:
                pair = (item, item)
            elif len(parts) == 2:
                pair = (parts[0], parts[1])
            else:
                raise ValueError(
                    f"{what}: cannot read layer pair {item!r}; write 'teacher_layer:student_layer' "
                    "with a single ':'."
                )
        else:
            try:
                seq = list(item)
            except TypeError:
                seq = []
            if len(seq) != 2 or not all(isinstance(s, str) for s in seq):
                raise ValueError(
                    f"{what}: layer pair {item!r} is not a (teacher_layer, student_layer) pair of "
                    f"strings; pass e.g. {example}."
                )
            pair = (seq[0], seq[1])
        pair = (pair[0].strip(), pair[1].strip())
        if not pair[0] or not pair[1]:
            raise ValueError(f"{what}: layer pair {item!r} has an empty module name.")
        if pair in out:
            raise ValueError(
                f"{what}: layer pair {pair_key(*pair)!r} is given twice; list each pair once."
            )
        out.append(pair)
    return tuple(out)


def _check_weight(weight: Any, what: str, *, allow_zero: bool = True) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {weight!r}.")
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0 or (weight == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be a finite number {bound}, got {weight!r}.")
    return weight


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _feature(ctx: StepContext, side: str, layer: str, owner: str) -> torch.Tensor:
    store = ctx.teacher_features if side == "teacher" else ctx.student_features
    if store is None or layer not in store:
        have = sorted(store) if store else []
        raise ValueError(
            f"{owner} needs the {side} feature {layer!r}, but the step context holds only "
            f"{have}. Capture every module listed in loss.{side}_layers with "
            f"otviz.hooked() and put the outputs in ctx.{side}_features."
        )
    feat = store[layer]
    if not isinstance(feat, torch.Tensor):
        raise TypeError(
            f"{owner}: ctx.{side}_features[{layer!r}] is a {type(feat).__name__}, not a tensor."
        )
    return feat


def _check_batches(t: torch.Tensor, s: torch.Tensor, key: str, owner: str) -> None:
    if t.ndim < 2 or s.ndim < 2:
        raise ValueError(
            f"{owner}: pair {key!r} has features of shapes {tuple(t.shape)} (teacher) and "
            f"{tuple(s.shape)} (student); expected (n, units) or (n, channels, ...) with the "
            "batch first."
        )
    if t.shape[0] != s.shape[0]:
        raise ValueError(
            f"{owner}: pair {key!r} has {t.shape[0]} teacher samples but {s.shape[0]} student "
            "samples. Feed teacher and student the same minibatch."
        )


def _zero(ctx: StepContext) -> torch.Tensor:
    ref = ctx.student_logits
    return ref.new_zeros(()) if ref.is_floating_point() else torch.zeros((), device=ref.device)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the spatial axes of ``x`` (n, c, *spatial) to ``size``.

    Shrinking (or keeping) every axis uses adaptive average pooling (each
    output value is the mean of a window of the input); growing any axis uses
    (bi)linear interpolation.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    spatial = x.ndim - 2
    if all(a >= b for a, b in zip(x.shape[2:], size)):
        pool = F.adaptive_avg_pool1d if spatial == 1 else F.adaptive_avg_pool2d
        return pool(x, size)
    mode = "linear" if spatial == 1 else "bilinear"
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


# ----------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------
class TransferLoss(nn.Module):
    """Base class of every loss: one call shape, ``forward(ctx) -> scalar``.

    Subclasses set ``name``, ``needs_teacher_logits``, ``teacher_layers`` and
    ``student_layers``, and implement :meth:`forward`. The returned scalar is
    already multiplied by the loss's own coefficient ``weight``.
    """

    name: str = "loss"
    needs_teacher_logits: bool = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = _check_weight(weight, f"{type(self).__name__} weight")
        self.teacher_layers: tuple[str, ...] = ()
        self.student_layers: tuple[str, ...] = ()

    @property
    def needs_teacher(self) -> bool:
        """Whether the teacher must be run at all (logits or features)."""
        return bool(self.needs_teacher_logits or self.teacher_layers)

    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters owned by the loss, to add to the optimiser (none by default)."""
        return []

    def diagnostics(self) -> dict[str, float]:
        """Floats describing the last call, for logging (none by default)."""
        return {}

    def forward(self, ctx: StepContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


# ----------------------------------------------------------------------------
# task loss
# ----------------------------------------------------------------------------
class CrossEntropy(TransferLoss):
    r"""The task loss: mean cross-entropy of the student's logits.

    .. math::
        \mathrm{CE} = -\frac{1}{n}\sum_{k=1}^n \log \sigma(z_S(x_k))_{y_k}

    Parameters
    ----------
    weight : float, default 1.0
        Coefficient of the term.
    label_smoothing : float, default 0.0
        Passed to :func:`torch.nn.functional.cross_entropy`.
    """

    name = "ce"

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        ls = _check_weight(label_smoothing, "label_smoothing")
        if ls >= 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        self.label_smoothing = ls

    def forward(self, ctx: StepContext) -> torch.Tensor:
        logits, targets = ctx.student_logits, ctx.targets
        if logits.ndim != 2:
            raise ValueError(
                f"ce: student logits have shape {tuple(logits.shape)}; expected (n, classes)."
            )
        if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"ce: targets have shape {tuple(targets.shape)} but the logits are "
                f"{tuple(logits.shape)}; pass one class index per sample, shape ({logits.shape[0]},)."
            )
        ce = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return self.weight * ce


# ----------------------------------------------------------------------------
# KD
# ----------------------------------------------------------------------------
class KD(TransferLoss):
    r"""Knowledge distillation (Hinton, Vinyals, Dean 2015).

    .. math::
        \mathcal{R}_{KD} = w \, T^2 \,
        \frac{1}{n}\sum_{k=1}^n \mathrm{KL}\big(\sigma(z_T(x_k)/T) \,\big\|\,
        \sigma(z_S(x_k)/T)\big)

    with :math:`\sigma` the softmax, :math:`z_T, z_S` the teacher and student
    logits and :math:`T` the temperature. The factor :math:`T^2` keeps the
    gradient magnitude independent of :math:`T`. The teacher's logits are
    treated as constants.

    Parameters
    ----------
    temperature : float, default 4.0
        Softening temperature :math:`T > 0`.
    weight : float, default 1.0
        Coefficient :math:`w`.

    References
    ----------
    G. Hinton, O. Vinyals, J. Dean. "Distilling the Knowledge in a Neural
    Network". NIPS Deep Learning Workshop, 2015. arXiv:1503.02531.
    """

    name = "kd"
    needs_teacher_logits = True

    def __init__(self, temperature: float = 4.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.temperature = _check_weight(temperature, "kd temperature", allow_zero=False)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        t, s = ctx.teacher_logits, ctx.student_logits
        if t is None:
            raise ValueError(
                "kd needs the teacher's logits but ctx.teacher_logits is None; run the teacher "
                "on the minibatch (loss.needs_teacher_logits is True)."
            )
        if t.ndim != 2 or s.ndim != 2:
            raise ValueError(
                f"kd: logits must have shape (n, classes); got teacher {tuple(t.shape)}, "
                f"student {tuple(s.shape)}."
            )
        if t.shape[1] != s.shape[1]:
            raise ValueError(
                f"kd needs teacher and student to share the task: the teacher has {t.shape[1]} "
                f"classes, the student {s.shape[1]}. Use a feature-level method for a new task "
                "('ot', 'fitnets', 'at', 'l2sp'), or a teacher trained on the student's classes."
            )
        if t.shape[0] != s.shape[0]:
            raise ValueError(
                f"kd: {t.shape[0]} teacher logits but {s.shape[0]} student logits; feed both "
                "networks the same minibatch."
            )
        T = self.temperature
        log_p_s = F.log_softmax(s / T, dim=1)
        log_p_t = F.log_softmax(t.detach().to(s.dtype) / T, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return self.weight * (T * T) * kl

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, weight={self.weight:g}"


# ----------------------------------------------------------------------------
# L2-SP
# ----------------------------------------------------------------------------
class L2SP(TransferLoss):
    r"""L2-SP: weight decay toward the starting point (Li, Grandvalet, Davoine 2018).

    .. math::
        \mathcal{R}_{L2SP} = \frac{\alpha}{2}\,\|w_S - w_S^0\|_2^2
            + \frac{\beta}{2}\,\|w_{\bar S}\|_2^2

    :math:`w_S` are the student's parameters shared with the source network
    (every trainable parameter whose name does not start with
    ``head_prefix``), :math:`w_S^0` their values at the start of training,
    and :math:`w_{\bar S}` the parameters of the new head, which get plain
    weight decay.

    Parameters
    ----------
    reference : torch.nn.Module or dict of str to torch.Tensor
        The starting point :math:`w^0`: the student at initialisation (before
        the first step) or a ``state_dict``-like mapping from parameter names
        to tensors. Detached copies are stored (as buffers, so
        ``loss.to(device)`` moves them); entries for the head, and entries
        that are not parameters of the student (batch-norm statistics), are
        ignored.
    weight : float, default 0.1
        :math:`\alpha`.
    head_weight : float, default 0.01
        :math:`\beta`; 0 leaves the head unregularised.
    head_prefix : str or None, default "head"
        Parameters named ``head_prefix`` or ``head_prefix + ".*"`` form the
        head :math:`\bar S`. ``None``: no head, every parameter is shared.

    Raises
    ------
    ValueError
        (at the first call) a shared student parameter with no starting value
        or with a different shape -- the message names them and the fix.

    References
    ----------
    X. Li, Y. Grandvalet, F. Davoine. "Explicit Inductive Bias for Transfer
    Learning with Convolutional Networks". ICML 2018. arXiv:1802.01483.
    """

    name = "l2sp"

    def __init__(
        self,
        reference: nn.Module | Mapping[str, torch.Tensor],
        weight: float = 0.1,
        head_weight: float = 0.01,
        head_prefix: str | None = "head",
    ) -> None:
        super().__init__(weight)
        self.head_weight = _check_weight(head_weight, "l2sp head_weight")
        if head_prefix is not None and (not isinstance(head_prefix, str) or not head_prefix):
            raise ValueError(
                f"head_prefix must be a non-empty module name or None, got {head_prefix!r}."
            )
        self.head_prefix = head_prefix
        if isinstance(reference, nn.Module):
            items = list(reference.named_parameters())
        elif isinstance(reference, Mapping):
            items = list(reference.items())
        else:
            raise TypeError(
                "l2sp reference must be the student at initialisation (an nn.Module) or a "
                f"mapping of parameter names to tensors, got {type(reference).__name__}."
            )
        self._ref_names: dict[str, str] = {}
        for i, (pname, value) in enumerate(items):
            if not isinstance(pname, str):
                raise TypeError(f"l2sp reference keys must be parameter names, got {pname!r}.")
            if self._is_head(pname):
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"l2sp reference[{pname!r}] is a {type(value).__name__}; pass tensors "
                    "(e.g. model.state_dict())."
                )
            if not value.is_floating_point():
                continue  # integer buffers such as num_batches_tracked
            value = value.detach().clone()
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"l2sp reference[{pname!r}] contains NaN or inf.")
            buf = f"ref_{i}"
            self.register_buffer(buf, value, persistent=False)
            self._ref_names[pname] = buf
        if not self._ref_names:
            raise ValueError(
                "l2sp reference holds no shared parameters (all were empty or under "
                f"head_prefix={head_prefix!r}); pass the student at initialisation."
            )
        self._checked: set[int] = set()
        self._last: dict[str, float] = {}

    def _is_head(self, name: str) -> bool:
        p = self.head_prefix
        return p is not None and (name == p or name.startswith(p + "."))

    def _check(self, student: nn.Module) -> None:
        missing, mismatched = [], []
        for pname, p in student.named_parameters():
            if not p.requires_grad or self._is_head(pname):
                continue
            buf = self._ref_names.get(pname)
            if buf is None:
                missing.append(pname)
            elif getattr(self, buf).shape != p.shape:
                mismatched.append(f"{pname}: {tuple(getattr(self, buf).shape)} -> {tuple(p.shape)}")
        if missing:
            raise ValueError(
                f"l2sp has no starting value for student parameter(s) {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}. Pass reference=<the student at "
                "initialisation> (or its state_dict); new layers belong under "
                f"head_prefix={self.head_prefix!r} to be decayed toward zero instead."
            )
        if mismatched:
            raise ValueError(
                f"l2sp reference and student disagree on shapes: {mismatched[:8]}. The reference "
                "must be the student's own starting weights; put layers that changed shape "
                f"under head_prefix={self.head_prefix!r}."
            )
        self._checked.add(id(student))

    def forward(self, ctx: StepContext) -> torch.Tensor:
        student = ctx.student
        if not isinstance(student, nn.Module):
            raise ValueError("l2sp needs ctx.student, the network being trained; it is missing.")
        if id(student) not in self._checked:
            self._check(student)
        shared = _zero(ctx)
        head = _zero(ctx)
        for pname, p in student.named_parameters():
            if not p.requires_grad:
                continue
            if self._is_head(pname):
                if self.head_weight > 0:
                    head = head + p.pow(2).sum()
                continue
            buf = self._ref_names[pname]
            ref = getattr(self, buf)
            if ref.device != p.device or ref.dtype != p.dtype:
                ref = ref.to(device=p.device, dtype=p.dtype)
                setattr(self, buf, ref)  # move once, not at every step
            shared = shared + (p - ref).pow(2).sum()
        self._last = {
            "l2sp/sq_distance": float(shared.detach()),
            "l2sp/head_sq_norm": float(head.detach()),
        }
        return 0.5 * self.weight * shared + 0.5 * self.head_weight * head

    def diagnostics(self) -> dict[str, float]:
        """``l2sp/sq_distance`` = :math:`\\|w_S - w_S^0\\|^2`, ``l2sp/head_sq_norm``."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, head_weight={self.head_weight:g}, "
            f"head_prefix={self.head_prefix!r}, shared_tensors={len(self._ref_names)}"
        )


# ----------------------------------------------------------------------------
# FitNets
# ----------------------------------------------------------------------------
def _per_pair(value: Any, pairs: Sequence[LayerPair], side: int, what: str) -> list[int]:
    """Channel counts per pair from an int, a sequence aligned with pairs, or a {layer: int} map."""
    side_name = ("teacher", "student")[side]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out = [int(value)] * len(pairs)
    elif isinstance(value, Mapping):
        missing = [p[side] for p in pairs if p[side] not in value]
        if missing:
            raise ValueError(
                f"{what}: {side_name}_channels has no entry for layer(s) {missing}; give the "
                "number of channels of every paired layer (otviz.losses.probe_channels finds them)."
            )
        out = [value[p[side]] for p in pairs]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(pairs):
            raise ValueError(
                f"{what}: {side_name}_channels has {len(value)} entries for {len(pairs)} pairs; "
                "give one per pair, or a {layer: channels} mapping."
            )
        out = list(value)
    else:
        raise TypeError(
            f"{what}: {side_name}_channels must be an int, a sequence with one int per pair, or "
            f"a mapping from layer name to int; got {value!r}."
        )
    for c in out:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1:
            raise ValueError(f"{what}: channel counts must be positive integers, got {c!r}.")
    return [int(c) for c in out]


def _as_maps(x: torch.Tensor) -> torch.Tensor:
    """(n, c) -> (n, c, 1, 1); (n, c, L) -> (n, c, L, 1); (n, c, h, w) unchanged."""
    if x.ndim == 2:
        return x[:, :, None, None]
    if x.ndim == 3:
        return x[:, :, :, None]
    return x


class FitNets(TransferLoss):
    r"""FitNets hint loss through learned regressors (Romero et al. 2015).

    .. math::
        \mathcal{R}_{FitNets} = w \sum_{(T_\ell, S_\ell)}
            \mathrm{mean}\big( (r_\ell(S_\ell) - T_\ell)^2 \big)

    where :math:`r_\ell` is a learned 1x1 convolution from the student's
    :math:`c_S` channels to the teacher's :math:`c_T` channels, and the mean
    runs over samples, channels and positions. Dense features ``(n, units)``
    are treated as ``(n, units, 1, 1)`` maps, for which a 1x1 convolution is
    exactly a linear layer; ``(n, c, L)`` features as ``(n, c, L, 1)``.
    Features captured by :func:`otviz.capture.hooked` are first put channels
    first on the axis it recorded (a transformer's ``(n, tokens, d)`` becomes
    ``(n, d, tokens)``; padding tokens are not masked out of the mean).
    The teacher's features are constants.

    If the spatial sizes differ, the student's map is resized to the
    teacher's before the regressor (adaptive average pooling when it is
    larger, bilinear interpolation when it is smaller; a 1x1 convolution
    commutes with both). A dense teacher feature paired with a student map
    thus compares with the student's global average pool.

    The regressors are submodules (moved by ``loss.to(device)``) and are
    returned by :meth:`extra_parameters`, to be added to the optimiser. They
    are discarded after training.

    Parameters
    ----------
    pairs : sequence of (str, str)
        ``(teacher_layer, student_layer)`` pairs (see :func:`layer_pairs`).
    teacher_channels, student_channels : int or sequence of int or dict of str to int
        Channels (units) of the paired layers: one int for all pairs, one per
        pair, or a ``{layer name: channels}`` mapping.
        :func:`probe_channels` reads them off a model.
    weight : float, default 1.0
        Coefficient :math:`w`.

    Notes
    -----
    The original FitNets trains the hint in a separate first stage with a
    convolutional regressor whose kernel matches the spatial sizes; here the
    hint is a term added to the training objective (as in most later
    comparisons), with a 1x1 regressor and explicit resizing.

    References
    ----------
    A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio.
    "FitNets: Hints for Thin Deep Nets". ICLR 2015. arXiv:1412.6550.
    """

    name = "fitnets"

    def __init__(
        self,
        pairs: PairsLike,
        teacher_channels: int | Sequence[int] | Mapping[str, int],
        student_channels: int | Sequence[int] | Mapping[str, int],
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.pairs = layer_pairs(pairs, "fitnets")
        t_ch = _per_pair(teacher_channels, self.pairs, 0, "fitnets")
        s_ch = _per_pair(student_channels, self.pairs, 1, "fitnets")
        self.teacher_layers = _unique(p[0] for p in self.pairs)
        self.student_layers = _unique(p[1] for p in self.pairs)
        self.regressors = nn.ModuleList(
            nn.Conv2d(cs, ct, kernel_size=1) for ct, cs in zip(t_ch, s_ch)
        )
        self._last: dict[str, float] = {}

    def extra_parameters(self) -> list[nn.Parameter]:
        """The regressors' weights and biases."""
        return list(self.regressors.parameters())

    def forward(self, ctx: StepContext) -> torch.Tensor:
        total = _zero(ctx)
        last: dict[str, float] = {}
        for (tl, sl), reg in zip(self.pairs, self.regressors):
            key = pair_key(tl, sl)
            t = _feature(ctx, "teacher", tl, "fitnets").detach()
            s = _feature(ctx, "student", sl, "fitnets")
            _check_batches(t, s, key, "fitnets")
            # channels first, as capture recorded them: a transformer's (n, tokens, d) -> (n, d, tokens)
            t_axis = _layout(ctx.teacher_features, tl, "teacher", None)[0]
            s_axis = _layout(ctx.student_features, sl, "student", None)[0]
            t = t if t_axis is None or t_axis % t.ndim == 1 else t.movedim(t_axis, 1)
            s = s if s_axis is None or s_axis % s.ndim == 1 else s.movedim(s_axis, 1)
            if t.ndim > 4 or s.ndim > 4:
                raise ValueError(
                    f"fitnets: pair {key!r} has features of {t.ndim} and {s.ndim} dimensions; "
                    "only (n, units), (n, c, L) and (n, c, h, w) are supported."
                )
            t4, s4 = _as_maps(t), _as_maps(s)
            if s4.shape[1] != reg.in_channels or t4.shape[1] != reg.out_channels:
                raise ValueError(
                    f"fitnets: pair {key!r} was built for {reg.out_channels} teacher and "
                    f"{reg.in_channels} student channels but the features have {t4.shape[1]} and "
                    f"{s4.shape[1]}. Pass the right teacher_channels/student_channels "
                    "(otviz.losses.probe_channels reads them off the models)."
                )
            if reg.weight.device != s4.device:
                raise ValueError(
                    f"fitnets: the regressors are on {reg.weight.device} but the features on "
                    f"{s4.device}. Call loss.to(device) before building the optimiser."
                )
            s4 = _resize(s4, t4.shape[2:])
            term = F.mse_loss(reg(s4), t4.to(s4.dtype))
            last[f"fitnets/{key}"] = float(term.detach())
            total = total + term
        self._last = last
        return self.weight * total

    def diagnostics(self) -> dict[str, float]:
        """Unweighted hint loss per pair, ``"fitnets/<teacher>-><student>"``."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return f"pairs={[pair_key(*p) for p in self.pairs]}, weight={self.weight:g}"


# ----------------------------------------------------------------------------
# attention transfer
# ----------------------------------------------------------------------------
def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""Spatial attention map of a conv feature, unnormalised.

    :math:`Q(A) = \frac{1}{c}\sum_{i=1}^c |A_i|^p`, shape ``(n, h, w)``.
    """
    if feature.ndim != 4:
        raise ValueError(
            f"attention transfer needs convolutional maps (n, c, h, w); got shape "
            f"{tuple(feature.shape)}. Pair conv layers, or use 'ot' / 'fitnets' for dense layers."
        )
    return feature.abs().pow(p).mean(dim=1)


class AttentionTransfer(TransferLoss):
    r"""Activation-based attention transfer (Zagoruyko & Komodakis 2017).

    For a feature map :math:`A \in \mathbb{R}^{c \times h \times w}` of one
    sample, the attention map is :math:`Q(A) = \frac{1}{c}\sum_i |A_i|^p`,
    flattened to :math:`\mathbb{R}^{hw}` and normalised,
    :math:`q = Q / \|Q\|_2`. The loss is

    .. math::
        \mathcal{R}_{AT} = \frac{\beta}{2} \sum_{(T_\ell, S_\ell)}
            \frac{1}{n\,hw} \sum_{k=1}^n \big\| q_S^\ell(x_k) - q_T^\ell(x_k) \big\|_2^2 ,

    i.e. the squared distance between the normalised maps averaged over
    samples and positions, with :math:`\beta = 1000` by default -- the form
    and the scale of the authors' reference implementation (the paper writes
    the unsquared :math:`p`-norm; :math:`\beta` was tuned for this form).
    It is invariant to the scale of either network's features and to the
    number of channels (no adapter is needed between widths). If the maps
    have different sizes, the larger attention map is average-pooled to the
    smaller size before normalisation. The teacher's maps are constants.

    Parameters
    ----------
    pairs : sequence of (str, str)
        ``(teacher_layer, student_layer)`` pairs of convolutional layers.
    weight : float, default 1000.0
        :math:`\beta`.
    p : float, default 2
        Exponent of the attention map.

    References
    ----------
    S. Zagoruyko, N. Komodakis. "Paying More Attention to Attention:
    Improving the Performance of Convolutional Neural Networks via Attention
    Transfer". ICLR 2017. arXiv:1612.03928.
    """

    name = "at"

    def __init__(self, pairs: PairsLike, weight: float = 1000.0, p: float = 2.0) -> None:
        super().__init__(weight)
        self.pairs = layer_pairs(pairs, "at")
        self.p = _check_weight(p, "at p", allow_zero=False)
        self.teacher_layers = _unique(q[0] for q in self.pairs)
        self.student_layers = _unique(q[1] for q in self.pairs)
        self._last: dict[str, float] = {}

    def forward(self, ctx: StepContext) -> torch.Tensor:
        total = _zero(ctx)
        last: dict[str, float] = {}
        for tl, sl in self.pairs:
            key = pair_key(tl, sl)
            t = _feature(ctx, "teacher", tl, "at").detach()
            s = _feature(ctx, "student", sl, "at")
            _check_batches(t, s, key, "at")
            qt = attention_map(t, self.p)[:, None]
            qs = attention_map(s, self.p)[:, None]
            common = tuple(min(a, b) for a, b in zip(qt.shape[2:], qs.shape[2:]))
            qt, qs = _resize(qt, common), _resize(qs, common)
            qt = F.normalize(qt.flatten(1), dim=1).to(qs.dtype)
            qs = F.normalize(qs.flatten(1), dim=1)
            term = (qs - qt).pow(2).mean()
            last[f"at/{key}"] = float(term.detach())
            total = total + term
        self._last = last
        return 0.5 * self.weight * total

    def diagnostics(self) -> dict[str, float]:
        """Unweighted mean squared attention distance per pair, ``"at/<teacher>-><student>"``."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return f"pairs={[pair_key(*q) for q in self.pairs]}, weight={self.weight:g}, p={self.p:g}"


# ----------------------------------------------------------------------------
# optimal transport
# ----------------------------------------------------------------------------
def _check_ot_options(cost: str, normalize: str | None, method: str, eps: float | None,
                      spatial: str, feature_scale: str) -> None:
    if cost not in _OT_COSTS:
        raise ValueError(f"Unknown cost={cost!r}. Pass one of {list(_OT_COSTS)}.")
    if normalize not in _OT_NORMALIZE:
        raise ValueError(f"Unknown normalize={normalize!r}. Pass one of {list(_OT_NORMALIZE)}.")
    if method not in _OT_METHODS:
        raise ValueError(f"Unknown OT method={method!r}. Pass one of {list(_OT_METHODS)}.")
    if eps is not None:
        _check_weight(eps, "eps", allow_zero=False)
    if spatial not in _SPATIAL:
        raise ValueError(f"Unknown spatial={spatial!r}. Pass one of {list(_SPATIAL)}.")
    if feature_scale not in _FEATURE_SCALES:
        raise ValueError(
            f"Unknown feature_scale={feature_scale!r}. Pass one of {list(_FEATURE_SCALES)}."
        )


Layout = tuple[Union[int, None], Union[torch.Tensor, None]]
"""(neuron axis, token mask) of one feature; ``(None, None)``: channel-first, no mask."""


def _layout(store: Any, layer: str, side: str, given: Any) -> Layout:
    """Neuron axis and mask of a captured feature: the option given, else what capture recorded."""
    axis = None
    if isinstance(given, tuple):
        given = given[0] if side == "teacher" else given[1]
    if isinstance(given, Mapping):
        given = given.get(layer)
    if given is not None:
        axis = int(given)
    mask = None
    if isinstance(store, Activations) and layer in store.info:
        if axis is None:
            axis = store.info[layer].channel_axis
        mask = store.mask_for(layer)
    return axis, mask


def _channel_first(x: torch.Tensor, axis: int | None, key: str, side: str) -> torch.Tensor:
    if axis is None:
        if x.ndim == 3:
            raise ValueError(
                f"ot: the {side} feature of pair {key!r} has shape {tuple(x.shape)}, which is "
                "ambiguous: neurons on axis 1 (n, channels, length) or on the last axis (n, tokens, "
                "features)? Capture the features with otviz.capture.hooked (it decides from the "
                "module) and pass its result itself, not a dict copy, or pass "
                "channel_axis=1 / -1 to the regulariser."
            )
        return x
    axis = axis % x.ndim
    return x if axis == 1 else x.movedim(axis, 1)


def _pair_neurons(t: torch.Tensor, s: torch.Tensor, spatial: str, size: Any, key: str,
                  layouts: tuple[Layout, Layout] = ((None, None), (None, None)),
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Neuron matrices of a pair, in a common response space.

    ``layouts`` gives each side's neuron axis and token mask (see :func:`_layout`).
    """
    _check_batches(t, s, key, "ot")
    (t_axis, t_mask), (s_axis, s_mask) = layouts
    t = _channel_first(t, t_axis, key, "teacher")
    s = _channel_first(s, s_axis, key, "student")
    if t_mask is not None or s_mask is not None:
        # token positions: averaged over, or one response per, real token
        how = spatial if t_mask is not None and s_mask is not None else "mean"
        return (neurons(t, how, channel_axis=1, mask=t_mask),
                neurons(s, how, channel_axis=1, mask=s_mask))
    if spatial == "mean" or (t.ndim == 2 and s.ndim == 2):
        return neurons(t, spatial=spatial, channel_axis=1), neurons(s, spatial=spatial, channel_axis=1)
    if size is not None:
        return (neurons(t, spatial="flatten", size=size if t.ndim > 2 else None, channel_axis=1),
                neurons(s, spatial="flatten", size=size if s.ndim > 2 else None, channel_axis=1))
    if t.ndim == 2 or s.ndim == 2:
        # a dense layer against a conv map: the common space is one response per input
        return neurons(t, spatial="mean", channel_axis=1), neurons(s, spatial="mean", channel_axis=1)
    if t.ndim != s.ndim:
        raise ValueError(
            f"ot: pair {key!r} pairs a {t.ndim - 2}-d map with a {s.ndim - 2}-d map; pass "
            "spatial='mean' to compare one response per input."
        )
    common = tuple(min(a, b) for a, b in zip(t.shape[2:], s.shape[2:]))
    return (neurons(t, spatial="flatten", size=common, channel_axis=1),
            neurons(s, spatial="flatten", size=common, channel_axis=1))


def _floored_normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    """Per-neuron standardisation or unit norm with a floor on the divisor (see OTRegularizer)."""
    if how == "standardize":
        x = x - x.mean(dim=1, keepdim=True)
        sq = x.pow(2).mean(dim=1, keepdim=True)
    else:
        sq = x.pow(2).sum(dim=1, keepdim=True)
    # clamp the square before the square root: no infinite derivative at 0
    floor = 1e-12 * sq.detach().max().clamp_min(torch.finfo(x.dtype).tiny)
    return x / sq.clamp_min(floor).sqrt()


def _scale_factor(cost: str, normalize: str | None, feature_scale: str, d: int) -> float:
    """Factor applied to the distance so that it is a per-feature mean (see OTRegularizer)."""
    if feature_scale == "sum" or normalize == "unit":
        return 1.0
    if cost == "sqeuclidean":
        return 1.0 / d
    if cost == "euclidean":
        return 1.0 / math.sqrt(d)
    return 1.0  # cosine, correlation: already scale-free


def _power_of_two_scaled(x: torch.Tensor) -> torch.Tensor:
    """``x`` divided by the largest power of two <= max |x| (exact; a constant, no gradient)."""
    amax = float(x.detach().abs().max()) if x.numel() else 0.0
    return x / _transport._pow2(amax) if 0.0 < amax < math.inf else x


class OTRegularizer(TransferLoss):
    r"""The OT regulariser of representation transfer by optimal transport.

    For each chosen (teacher layer, student layer) pair, the minibatch of
    :math:`n` inputs gives the teacher's neurons :math:`t_1..t_m` and the
    student's :math:`s_1..s_k` in the same response space
    :math:`\mathbb{R}^d` (:func:`otviz.capture.neurons`; ``d = n h w`` for a
    flattened conv map, ``d = n`` for a dense layer or ``spatial="mean"``).
    Each layer is a uniform distribution over its neurons and the term is

    .. math::
        \mathcal{R}_{OT} = \lambda \sum_{(T_\ell, S_\ell)} \frac{1}{\kappa_\ell}
            \min_{P \in U(\frac{1}{m}\mathbf 1, \frac{1}{k}\mathbf 1)}
            \sum_{ij} P_{ij}\, c(t_i, s_j),

    with :math:`c` the squared Euclidean distance by default, after an
    optional per-neuron normalisation. Widths may differ (``m != k``): no
    adapter is learned, and the term is invariant to permutations of the
    neurons on either side. The teacher's neurons are constants; the gradient
    reaches the student through the cost matrix with the plan held fixed
    (envelope theorem, ``grad="envelope"``), so the solver is not
    differentiated. Each pair's solver is warm-started from the previous
    step's dual potentials.

    **Feature scale.** With ``feature_scale="mean"`` the squared Euclidean
    cost is divided by :math:`\kappa_\ell = d` (and the Euclidean cost by
    :math:`\sqrt d`), so the cost is the *mean* squared difference of two
    neurons' responses and :math:`\lambda` does not depend on the batch size
    or the map size. It is applied to the distance: since ``eps`` and
    ``reg_m`` of :func:`otviz.transport.ot_distance` are relative to the
    median cost, the plan does not change when the cost is multiplied by a
    constant, so this equals solving with the rescaled cost, for every
    method. With ``normalize="standardize"`` the rescaled cost is 2(1 - r)
    for two neurons of correlation r. Costs that are already scale-free
    (``cosine``, ``correlation``, or ``normalize="unit"``) are left as they
    are. ``feature_scale="sum"`` uses the raw cost, :math:`\kappa_\ell = 1`.

    **Normalisation and dead units.** ``normalize="standardize"`` or
    ``"unit"`` is undefined for a neuron whose responses on the minibatch are
    constant (``"unit"``: all zero), e.g. a ReLU channel silent on the whole
    batch. :func:`otviz.align` rejects such neurons; the regulariser instead
    divides by ``max(scale, 1e-6 * largest scale)``, so a dead neuron becomes
    the zero vector and training goes on. The ``cosine``/``correlation``
    costs have no such floor and raise ``ValueError`` on a dead neuron; use
    ``normalize="standardize"`` with the squared Euclidean cost (its cost is
    2(1 - r), an affine function of the correlation r) for training.

    Parameters
    ----------
    pairs : sequence of (str, str)
        ``(teacher_layer, student_layer)`` pairs (see :func:`layer_pairs`).
    weight : float, default 0.1
        :math:`\lambda`.
    cost : {"sqeuclidean", "euclidean", "cosine", "correlation"}, default "sqeuclidean"
    normalize : {None, "center", "standardize", "unit"}, default None
        Per-neuron normalisation before the cost (see :mod:`otviz.transport`).
    method : {"emd", "sinkhorn", "unbalanced"}, default "emd"
        Exact OT, entropic OT, or unbalanced entropic OT.
    eps : float, optional
        Entropic regularisation, relative to the median cost, for
        ``"sinkhorn"`` and ``"unbalanced"`` (``None``: the transport module's
        default, 1e-2). Ignored by ``"emd"`` (a warning is issued once, at
        construction).
    spatial : {"flatten", "mean"}, default "flatten"
        How a conv channel becomes a vector (:func:`otviz.capture.neurons`).
        With ``"flatten"``, maps of different sizes are average-pooled to the
        smaller size of each axis (unless ``size`` is given), and a dense
        layer paired with a conv layer is compared through the map's spatial
        mean.
    size : int or tuple of int, optional
        Resize every conv map to this size before flattening.
    feature_scale : {"mean", "sum"}, default "mean"
        See above.
    monitor : bool, default False
        Compute the distances without a graph and return zero: for logging
        the OT distance of methods that do not train with it.
    warm_start : bool, default True
        Start each pair's entropic solver from the dual potentials of its
        previous call (the previous minibatch); the exact solver ignores them.
    channel_axis : int, dict or (teacher, student) pair, optional
        The axis of each feature that holds the neurons. By default it is the
        one :func:`otviz.capture.hooked` recorded in the
        :class:`~otviz.capture.Activations` put in the step context (axis 1
        for conv maps, the last axis of a transformer's ``(n, tokens,
        features)``), and axis 1 for plain tensors; a 3-d plain tensor is
        refused as ambiguous. When the features carry an attention mask
        (``hooked`` finds the forward call's ``attention_mask``), padding tokens
        are left out of every neuron's responses.
    **solver_options
        ``reg_m``, ``tol`` or ``max_iter``, passed on to
        :func:`otviz.transport.ot_distance`.

    Notes
    -----
    After each call, :attr:`last_alignments` holds each pair's
    :class:`otviz.transport.Alignment` (plan, cost matrix, convergence) and
    :meth:`diagnostics` the scaled distances ``"ot/<teacher>-><student>"``.

    References
    ----------
    X. Li, Y. Grandvalet, R. Flamary, N. Courty, D. Dou. "Representation
    Transfer by Optimal Transport". arXiv:2007.06737, 2020.
    """

    name = "ot"

    def __init__(
        self,
        pairs: PairsLike,
        weight: float = 0.1,
        cost: str = "sqeuclidean",
        normalize: str | None = None,
        method: str = "emd",
        eps: float | None = None,
        spatial: str = "flatten",
        size: int | tuple[int, ...] | None = None,
        feature_scale: str = "mean",
        monitor: bool = False,
        warm_start: bool = True,
        channel_axis: Any = None,
        **solver_options: Any,
    ) -> None:
        super().__init__(weight)
        _check_ot_options(cost, normalize, method, eps, spatial, feature_scale)
        if size is not None and spatial != "flatten":
            raise ValueError(
                f"size={size!r} only has an effect with spatial='flatten'; pass size=None, or "
                "spatial='flatten'."
            )
        unknown = sorted(set(solver_options) - set(_SOLVER_OPTIONS))
        if unknown:
            raise TypeError(
                f"OTRegularizer got unknown option(s) {unknown}; solver options accepted are "
                f"{list(_SOLVER_OPTIONS)} (see otviz.transport.ot_distance)."
            )
        if method == "emd" and eps is not None:
            warnings.warn(
                f"eps={eps!r} is ignored by the exact solver (method='emd'); pass "
                "method='sinkhorn' for entropic OT.", UserWarning, stacklevel=2,
            )
            eps = None
        self.pairs = layer_pairs(pairs, "ot")
        self.cost, self.normalize, self.method, self.eps = cost, normalize, method, eps
        self.spatial, self.size, self.feature_scale = spatial, size, feature_scale
        self.monitor = bool(monitor)
        self.use_warm_start = bool(warm_start)
        self.channel_axis = channel_axis
        self.solver_options = dict(solver_options)
        self.teacher_layers = _unique(p[0] for p in self.pairs)
        self.student_layers = _unique(p[1] for p in self.pairs)
        if self.monitor:
            self.name = "ot_monitor"
        self._potentials: dict[str, Any] = {}
        self._alignments: dict[str, Any] = {}
        self._last: dict[str, float] = {}

    # -- state --------------------------------------------------------------
    def reset(self) -> None:
        """Forget the warm-start potentials and the last diagnostics."""
        self._potentials.clear()
        self._alignments.clear()
        self._last = {}

    @property
    def last_alignments(self) -> dict[str, Any]:
        """The last :class:`otviz.transport.Alignment` of each pair, keyed by :func:`pair_key`.

        Holds the plan (``.plan``), the cost matrix and the solver's convergence
        information of the last call, e.g. for plan snapshots.
        """
        return dict(self._alignments)

    def diagnostics(self) -> dict[str, float]:
        """Last distance of each pair (already divided by its feature scale, before ``weight``).

        Keys ``"ot/<teacher>-><student>"``.
        """
        return dict(self._last)

    # -- computation --------------------------------------------------------
    def _solve(self, key: str, tn: torch.Tensor, sn: torch.Tensor) -> torch.Tensor:
        warm = self._potentials.get(key) if self.use_warm_start else None
        normalize = self.normalize
        # Mixed precision: features may be bfloat16/float16 (autocast). Everything
        # below runs in otviz.transport.compute_dtype (float64 on the CPU, float32
        # at least elsewhere) with autocast off; the gradient flows back to the
        # student's features in their own dtype, and the value is returned in
        # float32 (or the features' dtype if wider).
        out_dtype = torch.promote_types(sn.dtype, torch.float32)
        with _transport._no_autocast(sn.device):
            dtype = _transport.compute_dtype(tn, sn)
            tn, sn = tn.to(dtype), sn.to(dtype)
            if normalize in ("standardize", "unit"):
                # A ReLU channel can be silent on a whole minibatch; otviz.align
                # rejects such a neuron, but a training step must go on: normalise
                # here with a floor on the scale, so a dead neuron becomes the zero
                # vector (mean response) instead of a division by zero. Each layer
                # is first divided by a power of two near its largest response (exact,
                # scale-free for these normalisations), so squares cannot overflow.
                tn = _floored_normalize(_power_of_two_scaled(tn), normalize)
                sn = _floored_normalize(_power_of_two_scaled(sn), normalize)
                normalize = None
            value, alignment = _transport.ot_distance(
                tn, sn, cost=self.cost, normalize=normalize, method=self.method, eps=self.eps,
                grad="envelope", warm_start=warm, return_alignment=True, **self.solver_options,
            )
        self._alignments[key] = alignment
        if alignment.potentials is not None:
            self._potentials[key] = alignment.potentials
        return value.to(out_dtype)

    def pair_distances(self, ctx: StepContext, *, grad: bool = True) -> dict[str, torch.Tensor]:
        """Scaled OT distance of every pair on this step's features (unweighted)."""
        out: dict[str, torch.Tensor] = {}
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for tl, sl in self.pairs:
                key = pair_key(tl, sl)
                t = _feature(ctx, "teacher", tl, self.name).detach()
                s = _feature(ctx, "student", sl, self.name)
                if not grad:
                    s = s.detach()
                layouts = (_layout(ctx.teacher_features, tl, "teacher", self.channel_axis),
                           _layout(ctx.student_features, sl, "student", self.channel_axis))
                tn, sn = _pair_neurons(t, s, self.spatial, self.size, key, layouts)
                if tn.shape[1] != sn.shape[1]:
                    raise ValueError(
                        f"{self.name}: pair {key!r} gives teacher neurons of {tn.shape[1]} "
                        f"responses and student neurons of {sn.shape[1]} (features "
                        f"{tuple(t.shape)} and {tuple(s.shape)}), so they live in different "
                        "spaces. Pass spatial='mean', or pair layers of the same kind."
                    )
                scale = _scale_factor(self.cost, self.normalize, self.feature_scale, sn.shape[1])
                out[key] = self._solve(key, tn, sn) * scale
        return out

    def between(self, teacher_features: Mapping[str, torch.Tensor],
                student_features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        r"""The weighted term on two captured feature sets, without a :class:`StepContext`.

        For a training loop of your own: capture the paired layers with
        :func:`otviz.capture.hooked` (the teacher under ``torch.no_grad()``,
        the student with the graph) and pass the two
        :class:`~otviz.capture.Activations` themselves (they carry each
        layer's neuron axis and attention mask)::

            with torch.no_grad(), hooked(teacher, reg.teacher_layers) as t_feats:
                teacher(**batch)
            with hooked(student, reg.student_layers) as s_feats:
                logits = student(**batch)
            loss = F.cross_entropy(logits, y) + reg.between(t_feats, s_feats)

        Same value, gradient, :meth:`diagnostics` and :attr:`last_alignments`
        as calling the regulariser with a step context holding these features:
        :math:`\lambda \sum_\ell \mathrm{OT}_\ell` (zero, without a graph, in
        monitor mode).

        Parameters
        ----------
        teacher_features, student_features : mapping of str to torch.Tensor
            The outputs of ``teacher_layers`` and ``student_layers`` on the
            same minibatch, batch first.

        Returns
        -------
        torch.Tensor
            A scalar, already multiplied by ``weight``.

        Raises
        ------
        TypeError
            A feature set that is not a mapping of layer names to tensors.
        ValueError
            A paired layer missing from a feature set (the message lists what
            was captured), or features that cannot be compared (see
            :meth:`pair_distances`).
        """
        for side, feats in (("teacher", teacher_features), ("student", student_features)):
            if not isinstance(feats, Mapping):
                raise TypeError(
                    f"{self.name}.between: {side}_features must be the Activations that "
                    f"otviz.hooked yields (a mapping layer -> tensor), got "
                    f"{type(feats).__name__}."
                )
        ref = next((v for v in student_features.values() if isinstance(v, torch.Tensor)), None)
        if ref is None:
            raise ValueError(
                f"{self.name}.between: student_features holds no tensor; capture "
                f"{list(self.student_layers)} with otviz.hooked(student, "
                "reg.student_layers) during the student's forward pass."
            )
        ctx = StepContext(inputs=ref, targets=ref, student_logits=ref, teacher_logits=None,
                          student_features=student_features,  # type: ignore[arg-type]
                          teacher_features=teacher_features)  # type: ignore[arg-type]
        return self(ctx)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        distances = self.pair_distances(ctx, grad=not self.monitor)
        self._last = {f"ot/{k}": float(v.detach()) for k, v in distances.items()}
        if self.monitor:
            return _zero(ctx)
        total = _zero(ctx)
        for v in distances.values():
            total = total + v
        return self.weight * total

    def extra_repr(self) -> str:
        opts = [f"pairs={[pair_key(*p) for p in self.pairs]}", f"weight={self.weight:g}",
                f"cost={self.cost!r}", f"normalize={self.normalize!r}", f"method={self.method!r}"]
        if self.eps is not None:
            opts.append(f"eps={self.eps:g}")
        opts += [f"spatial={self.spatial!r}", f"feature_scale={self.feature_scale!r}"]
        if self.size is not None:
            opts.append(f"size={self.size!r}")
        if self.monitor:
            opts.append("monitor=True")
        return ", ".join(opts)


def ot_layer_distance(
    teacher_features: Mapping[str, torch.Tensor],
    student_features: Mapping[str, torch.Tensor],
    pairs: PairsLike,
    *,
    cost: str = "sqeuclidean",
    normalize: str | None = None,
    method: str = "emd",
    eps: float | None = None,
    spatial: str = "flatten",
    size: int | tuple[int, ...] | None = None,
    feature_scale: str = "mean",
    **solver_options: Any,
) -> dict[str, float]:
    """OT distance of chosen layer pairs on captured features, without gradients.

    For logging the distance that :class:`OTRegularizer` would penalise
    (same options, same scaling) under methods that do not train with it.

    Parameters
    ----------
    teacher_features, student_features : dict of str to torch.Tensor
        Captured outputs of the two networks on the same inputs.
    pairs, cost, normalize, method, eps, spatial, size, feature_scale, **solver_options
        As for :class:`OTRegularizer`.

    Returns
    -------
    dict of str to float
        ``{pair_key(teacher_layer, student_layer): distance}``.

    Examples
    --------
    >>> t = {"fc": torch.randn(16, 8)}
    >>> s = {"fc": torch.randn(16, 4)}
    >>> list(ot_layer_distance(t, s, ["fc"]))
    ['fc->fc']
    """
    reg = OTRegularizer(pairs, weight=1.0, cost=cost, normalize=normalize, method=method,
                        eps=eps, spatial=spatial, size=size, feature_scale=feature_scale,
                        monitor=True, warm_start=False, **solver_options)
    any_feat = next(iter(student_features.values()), None)
    if any_feat is None:
        raise ValueError("ot_layer_distance: student_features is empty; capture the paired layers.")
    ctx = StepContext(inputs=any_feat, targets=any_feat, student_logits=any_feat.detach(),
                      teacher_logits=None, student_features=dict(student_features),
                      teacher_features=dict(teacher_features), student=None)
    with torch.no_grad():
        values = reg.pair_distances(ctx, grad=False)
    return {k: float(v) for k, v in values.items()}


# ----------------------------------------------------------------------------
# combination and registry
# ----------------------------------------------------------------------------
class CombinedLoss(TransferLoss):
    """Sum of losses, with one call shape.

    ``forward`` returns the sum of the terms (each already weighted). The
    trainer-facing attributes are merged: ``needs_teacher_logits`` is true if
    any term needs the logits, ``teacher_layers``/``student_layers`` are the
    unions (in order), ``extra_parameters()`` the concatenation, and
    ``diagnostics()`` holds ``"loss/<name>"`` (each term's weighted value at
    the last call) and ``"loss/total"``, plus every term's own diagnostics.

    Parameters
    ----------
    terms : sequence of TransferLoss
        The terms; their names must be distinct.
    """

    name = "total"

    def __init__(self, terms: Sequence[TransferLoss]) -> None:
        super().__init__(1.0)
        terms = list(terms)
        for term in terms:
            if not isinstance(term, TransferLoss):
                raise TypeError(
                    f"CombinedLoss terms must be TransferLoss modules, got {type(term).__name__}."
                )
        names = [t.name for t in terms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"CombinedLoss got several terms named {dup}; combine each method once.")
        self.terms = nn.ModuleList(terms)
        self.needs_teacher_logits = any(t.needs_teacher_logits for t in terms)
        self.teacher_layers = _unique(n for t in terms for n in t.teacher_layers)
        self.student_layers = _unique(n for t in terms for n in t.student_layers)
        self._last: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        """Names of the terms, in order."""
        return [t.name for t in self.terms]

    def __getitem__(self, name: str) -> TransferLoss:
        for term in self.terms:
            if term.name == name:
                return term
        raise KeyError(f"No term named {name!r}; terms are {self.names}.")

    def extra_parameters(self) -> list[nn.Parameter]:
        return [p for t in self.terms for p in t.extra_parameters()]

    def forward(self, ctx: StepContext) -> torch.Tensor:
        total = _zero(ctx)
        last: dict[str, float] = {}
        for term in self.terms:
            value = term(ctx)
            if not getattr(term, "monitor", False):
                last[f"loss/{term.name}"] = float(value.detach())
            total = total + value
        last["loss/total"] = float(total.detach())
        self._last = last
        return total

    def diagnostics(self) -> dict[str, float]:
        out = dict(self._last)
        for term in self.terms:
            out.update(term.diagnostics())
        return out

    def extra_repr(self) -> str:
        return f"names={self.names}"


def probe_channels(model: nn.Module, layers: Iterable[str], inputs: torch.Tensor) -> dict[str, int]:
    """Number of channels (units) of named layers, read off one forward pass.

    Runs ``model(inputs)`` under ``torch.no_grad()`` with forward hooks on
    ``layers`` and returns ``{layer: number of neurons}`` (the size of the
    axis :func:`otviz.capture.capture` decides holds them); useful for
    :class:`FitNets`. ``inputs`` can be a single example batch.
    """
    from otviz.capture import capture

    acts = capture(model, inputs, list(layers))
    out = {}
    for name, act in acts.items():
        if act.ndim < 2:
            raise ValueError(
                f"Layer {name!r} outputs shape {tuple(act.shape)}; expected (n, channels, ...)."
            )
        axis = acts.info[name].channel_axis
        out[name] = int(act.shape[1 if axis is None else axis])
    return out


def build_loss(
    method: str,
    *,
    pairs: PairsLike | None = None,
    task_loss: bool = True,
    ce_weight: float = 1.0,
    # kd
    temperature: float = 4.0,
    kd_weight: float = 1.0,
    # l2sp
    reference: nn.Module | Mapping[str, torch.Tensor] | None = None,
    l2sp_weight: float = 0.1,
    head_weight: float = 0.01,
    head_prefix: str | None = "head",
    # fitnets
    teacher_channels: int | Sequence[int] | Mapping[str, int] | None = None,
    student_channels: int | Sequence[int] | Mapping[str, int] | None = None,
    fitnets_weight: float = 1.0,
    # at
    at_weight: float = 1000.0,
    at_p: float = 2.0,
    # ot
    lam: float = 0.1,
    cost: str = "sqeuclidean",
    normalize: str | None = None,
    ot_method: str = "emd",
    eps: float | None = None,
    spatial: str = "flatten",
    size: int | tuple[int, ...] | None = None,
    feature_scale: str = "mean",
    monitor_pairs: PairsLike | None = None,
    **solver_options: Any,
) -> CombinedLoss:
    """Build the training objective of a method, as one :class:`CombinedLoss`.

    Parameters
    ----------
    method : str
        One of ``"scratch"``, ``"finetune"``, ``"l2sp"``, ``"kd"``,
        ``"fitnets"``, ``"at"``, ``"ot"``, or several joined with ``"+"``
        (``"kd+ot"``). ``"scratch"`` and ``"finetune"`` add no term: the
        objective is the task loss alone; they differ in how the student is
        initialised (randomly, or from the teacher's weights), which is the
        trainer's job. Any other name adds its term to the task loss.
    pairs : layer pairs, optional
        ``(teacher_layer, student_layer)`` pairs for ``fitnets``, ``at`` and
        ``ot`` (see :func:`layer_pairs`); required by them.
    task_loss : bool, default True
        Include :class:`CrossEntropy` (named ``"ce"``) as the first term.
    ce_weight : float, default 1.0
        Weight of the task loss.
    temperature, kd_weight
        :class:`KD` options.
    reference, l2sp_weight, head_weight, head_prefix
        :class:`L2SP` options; ``reference`` (the student at initialisation)
        is required by ``l2sp``.
    teacher_channels, student_channels, fitnets_weight
        :class:`FitNets` options; the channel counts are required by ``fitnets``.
    at_weight, at_p
        :class:`AttentionTransfer` options.
    lam, cost, normalize, ot_method, eps, spatial, size, feature_scale, **solver_options
        :class:`OTRegularizer` options (``lam`` is its weight, ``ot_method``
        its ``method``).
    monitor_pairs : layer pairs, optional
        If given and ``"ot"`` is not part of ``method``, append an
        :class:`OTRegularizer` in monitor mode (named ``"ot_monitor"``) on
        these pairs with the OT options above: it adds nothing to the loss
        but reports ``"ot/<pair>"`` in ``diagnostics()``, so every method can
        be compared on the OT distance. With ``"ot"`` in ``method`` the
        regulariser already reports it (for its own pairs).

    Options of methods that are not selected are ignored, so one
    configuration can drive every method.

    Returns
    -------
    CombinedLoss

    Raises
    ------
    ValueError
        Unknown method (the valid names are listed), or a required option
        missing for the selected method.

    Examples
    --------
    >>> loss = build_loss("kd")
    >>> loss.names, loss.needs_teacher_logits
    (['ce', 'kd'], True)
    >>> build_loss("finetune").names
    ['ce']
    """
    parts = parse_method(method)
    terms: list[TransferLoss] = []
    if task_loss:
        terms.append(CrossEntropy(weight=ce_weight))
    ot_opts = dict(cost=cost, normalize=normalize, method=ot_method, eps=eps, spatial=spatial,
                   size=size, feature_scale=feature_scale, **solver_options)
    for part in parts:
        if part in _NO_TERM:
            continue
        if part == "kd":
            terms.append(KD(temperature=temperature, weight=kd_weight))
        elif part == "l2sp":
            if reference is None:
                raise ValueError(
                    "l2sp needs reference=<the student at initialisation> (or its state_dict): "
                    "the starting point the weights are pulled toward."
                )
            terms.append(L2SP(reference, weight=l2sp_weight, head_weight=head_weight,
                              head_prefix=head_prefix))
        elif part == "fitnets":
            if teacher_channels is None or student_channels is None:
                raise ValueError(
                    "fitnets needs teacher_channels and student_channels (channels of each paired "
                    "layer) to build its regressors; otviz.losses.probe_channels reads them off "
                    "the models."
                )
            terms.append(FitNets(layer_pairs(pairs, "fitnets"), teacher_channels,
                                 student_channels, weight=fitnets_weight))
        elif part == "at":
            terms.append(AttentionTransfer(layer_pairs(pairs, "at"), weight=at_weight, p=at_p))
        elif part == "ot":
            terms.append(OTRegularizer(layer_pairs(pairs, "ot"), weight=lam, **ot_opts))
    if monitor_pairs is not None and "ot" not in parts:
        terms.append(OTRegularizer(layer_pairs(monitor_pairs, "monitor_pairs"), weight=1.0,
                                   monitor=True, **ot_opts))
    if not terms:
        raise ValueError(
            f"method={method!r} with task_loss=False has no term to train with; pass "
            "task_loss=True or add a regulariser."
        )
    return CombinedLoss(terms)
