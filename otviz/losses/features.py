r"""Losses on intermediate features: FitNets and attention transfer."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from otviz.losses._base import (
    LayerPair,
    PairsLike,
    StepContext,
    TransferLoss,
    _check_batches,
    _check_weight,
    _feature,
    _layout,
    _resize,
    _unique,
    _zero,
    layer_pairs,
    pair_key,
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
