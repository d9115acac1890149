r"""The whole objective: :class:`CombinedLoss`, :func:`build_loss` and :func:`probe_channels`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from otviz._recipes import parse_method
from otviz.losses._base import PairsLike, StepContext, TransferLoss, _unique, _zero, layer_pairs
from otviz.losses.features import NST, AttentionTransfer, FitNets, SimilarityPreserving
from otviz.losses.logits import KD, CrossEntropy
from otviz.losses.ot import OTRegularizer
from otviz.losses.weights import L2SP

# METHODS, the names accepted by build_loss (alone, or joined with "+"), and parse_method are
# plain data in otviz._recipes (importable without torch).
_NO_TERM = ("scratch", "finetune")



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
    # nst
    nst_weight: float = 50.0,
    nst_kernel: str = "polynomial",
    # sp
    sp_weight: float = 3000.0,
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
        ``"fitnets"``, ``"at"``, ``"nst"``, ``"sp"``, ``"ot"``, or several joined with ``"+"``
        (``"kd+ot"``). ``"scratch"`` and ``"finetune"`` add no term: the
        objective is the task loss alone; they differ in how the student is
        initialised (randomly, or from the teacher's weights), which is the
        trainer's job. Any other name adds its term to the task loss.
    pairs : layer pairs, optional
        ``(teacher_layer, student_layer)`` pairs for ``fitnets``, ``at``,
        ``nst``, ``sp`` and ``ot`` (see :func:`layer_pairs`); required by them.
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
    nst_weight, nst_kernel
        :class:`NST` options (its weight and kernel).
    sp_weight
        :class:`SimilarityPreserving` weight.
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
        elif part == "nst":
            terms.append(NST(layer_pairs(pairs, "nst"), weight=nst_weight, kernel=nst_kernel))
        elif part == "sp":
            terms.append(SimilarityPreserving(layer_pairs(pairs, "sp"), weight=sp_weight))
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
