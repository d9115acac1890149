r"""The common ground of every loss: the step context, the base classes, layer pairs and checks.

Every loss of :mod:`otviz.losses` is a :class:`TransferLoss` called with a
:class:`StepContext`; those summed over (teacher layer, student layer) pairs
derive from :class:`_PairLoss`. The helpers here read the captured features,
check their batches and bring two maps to one spatial size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from otviz.capture import Activations

LayerPair = tuple[str, str]
PairsLike = Union[str, Sequence[Union[str, Sequence[str]]]]


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
    labelled : int, optional
        When set, only the first ``labelled`` inputs carry ``targets``; the
        others are unlabelled images that only the teacher-guided terms use
        (the cross-entropy takes the first ``labelled`` logits). Default None:
        every input is labelled.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    student: nn.Module | None = None
    step: int = 0
    labelled: int | None = None


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


class _PairLoss(TransferLoss):
    r"""Base class of a loss summed over (teacher layer, student layer) pairs.

    .. math::
        \mathcal{R} = w \sum_{(T_\ell, S_\ell)} r(T_\ell, S_\ell)

    Sets up what such a loss shares: ``pairs`` (normalised by
    :func:`layer_pairs`, whose errors name the loss by its ``name``),
    ``teacher_layers`` and ``student_layers`` (the paired layers, each once,
    in order of first appearance) and ``_last``, the per-pair floats of the
    last call that :meth:`diagnostics` returns (a subclass fills it in
    :meth:`forward`). :meth:`_paired_features` walks the pairs with this
    step's features.
    """

    def __init__(self, pairs: PairsLike, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.pairs = layer_pairs(pairs, self.name)
        self.teacher_layers = _unique(p[0] for p in self.pairs)
        self.student_layers = _unique(p[1] for p in self.pairs)
        self._last: dict[str, float] = {}

    def _paired_features(
        self, ctx: StepContext
    ) -> Iterator[tuple[str, str, str, torch.Tensor, torch.Tensor]]:
        """Yield ``(key, teacher_layer, student_layer, t, s)`` for every pair, in order.

        ``key`` is :func:`pair_key` of the pair, ``t`` the teacher's feature
        detached (a constant) and ``s`` the student's, with its graph. Raises
        ``ValueError`` (prefixed with ``name``) when a feature was not
        captured or the two do not hold the same batch.
        """
        for tl, sl in self.pairs:
            key = pair_key(tl, sl)
            t = _feature(ctx, "teacher", tl, self.name).detach()
            s = _feature(ctx, "student", sl, self.name)
            _check_batches(t, s, key, self.name)
            yield key, tl, sl, t, s

    def diagnostics(self) -> dict[str, float]:
        """Per-pair floats of the last call, keyed ``"<name>/<teacher>-><student>"``."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return f"pairs={[pair_key(*p) for p in self.pairs]}, weight={self.weight:g}"
