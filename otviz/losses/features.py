r"""Losses on intermediate features: FitNets, attention transfer, neuron selectivity transfer (NST)
and similarity-preserving distillation (SP)."""

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
    _check_weight,
    _layout,
    _PairLoss,
    _resize,
    _zero,
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


class FitNets(_PairLoss):
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
    are discarded after training. :meth:`diagnostics` gives the unweighted
    hint loss per pair, ``"fitnets/<teacher>-><student>"``.

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
        super().__init__(pairs, weight)
        t_ch = _per_pair(teacher_channels, self.pairs, 0, "fitnets")
        s_ch = _per_pair(student_channels, self.pairs, 1, "fitnets")
        self.regressors = nn.ModuleList(
            nn.Conv2d(cs, ct, kernel_size=1) for ct, cs in zip(t_ch, s_ch)
        )

    def extra_parameters(self) -> list[nn.Parameter]:
        """The regressors' weights and biases."""
        return list(self.regressors.parameters())

    def forward(self, ctx: StepContext) -> torch.Tensor:
        total = _zero(ctx)
        last: dict[str, float] = {}
        for (key, tl, sl, t, s), reg in zip(self._paired_features(ctx), self.regressors):
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


class AttentionTransfer(_PairLoss):
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
    :meth:`diagnostics` gives the unweighted mean squared attention distance
    per pair, ``"at/<teacher>-><student>"``.

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
        super().__init__(pairs, weight)
        self.p = _check_weight(p, "at p", allow_zero=False)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        total = _zero(ctx)
        last: dict[str, float] = {}
        for key, _, _, t, s in self._paired_features(ctx):
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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p:g}"


# ----------------------------------------------------------------------------
# neuron selectivity transfer
# ----------------------------------------------------------------------------
_NST_KERNELS = ("polynomial", "linear", "gaussian")


def _channel_maps(x: torch.Tensor, axis: int | None, key: str, side: str) -> torch.Tensor:
    """A feature as channels-first maps ``(n, c, *spatial)`` with one or two spatial axes."""
    if axis is not None and axis % x.ndim != 1:
        x = x.movedim(axis, 1)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"nst: the {side} feature of pair {key!r} has shape {tuple(x.shape)}; neuron "
            "selectivity transfer compares each channel's map over positions, so it needs "
            "(n, c, h, w) or (n, c, length) features. Pair convolutional layers, or use 'sp', "
            "'ot' or 'fitnets' for dense layers."
        )
    return x


def nst_kernel(x: torch.Tensor, y: torch.Tensor, kernel: str = "polynomial", *,
               degree: int = 2, coef: float = 0.0, sigma2: torch.Tensor | float | None = None,
               ) -> torch.Tensor:
    r"""Batched kernel matrix between two sets of vectors.

    ``x`` is ``(n, a, p)`` and ``y`` is ``(n, b, p)``: for each of the ``n``
    samples, ``a`` and ``b`` vectors of dimension ``p``. Returns the
    ``(n, a, b)`` matrices :math:`K_{ij} = k(x_i, y_j)` with

    - ``"polynomial"``: :math:`k(x, y) = (x^\top y + c)^d`,
    - ``"linear"``: :math:`k(x, y) = x^\top y`,
    - ``"gaussian"``: :math:`k(x, y) = \exp(-\|x - y\|^2 / (2\sigma^2))`,
      with ``sigma2`` = :math:`\sigma^2` (a float, or a tensor broadcastable
      to ``(n, 1, 1)``).
    """
    dots = torch.bmm(x, y.transpose(1, 2))
    if kernel == "linear":
        return dots
    if kernel == "polynomial":
        return (dots + coef).pow(degree)
    if kernel == "gaussian":
        if sigma2 is None:
            raise ValueError("nst_kernel: the gaussian kernel needs sigma2, the squared bandwidth.")
        sq = x.pow(2).sum(-1)[:, :, None] + y.pow(2).sum(-1)[:, None, :] - 2 * dots
        return torch.exp(-sq.clamp_min(0) / (2 * sigma2))
    raise ValueError(f"Unknown kernel={kernel!r}. Pass one of {list(_NST_KERNELS)}.")


def nst_mmd2(teacher_maps: torch.Tensor, student_maps: torch.Tensor, kernel: str = "polynomial", *,
             degree: int = 2, coef: float = 0.0, sigma: float | None = None) -> torch.Tensor:
    r"""Squared MMD between the teacher's and the student's channel maps, per sample.

    ``teacher_maps`` is ``(n, c_T, p)`` and ``student_maps`` ``(n, c_S, p)``:
    each of the :math:`c` rows of a sample is one channel's map over the
    :math:`p` positions, l2-normalised here. For one sample, with
    :math:`f^i_T` and :math:`f^j_S` the normalised maps,

    .. math::
        \mathrm{MMD}^2 = \frac{1}{c_T^2}\sum_{i,i'} k(f^i_T, f^{i'}_T)
            + \frac{1}{c_S^2}\sum_{j,j'} k(f^j_S, f^{j'}_S)
            - \frac{2}{c_T c_S}\sum_{i,j} k(f^i_T, f^j_S) ,

    the (biased) squared maximum mean discrepancy between the two sets of
    maps seen as samples of two distributions. Returns the ``(n,)`` values.
    For the gaussian kernel, ``sigma=None`` sets :math:`\sigma^2` of each
    sample to the mean squared distance between all its maps (teacher's and
    student's together), a constant.
    """
    ft = F.normalize(teacher_maps, dim=2)
    fs = F.normalize(student_maps, dim=2)
    sigma2: torch.Tensor | float | None = None
    if kernel == "gaussian":
        if sigma is None:
            both = torch.cat([ft, fs], dim=1).detach()
            gram = torch.bmm(both, both.transpose(1, 2))
            norms = gram.diagonal(dim1=1, dim2=2)
            sq = (norms[:, :, None] + norms[:, None, :] - 2 * gram).clamp_min(0)
            sigma2 = sq.mean(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(sq.dtype).tiny)
        else:
            sigma2 = float(sigma) ** 2
    opts = dict(degree=degree, coef=coef, sigma2=sigma2)
    return (nst_kernel(ft, ft, kernel, **opts).mean(dim=(1, 2))
            + nst_kernel(fs, fs, kernel, **opts).mean(dim=(1, 2))
            - 2 * nst_kernel(ft, fs, kernel, **opts).mean(dim=(1, 2)))


class NST(_PairLoss):
    r"""Neuron selectivity transfer (Huang & Wang 2017).

    A layer's channel :math:`i` responds to one input with a map over the
    :math:`hw` positions; flattened and l2-normalised, :math:`f^i \in
    \mathbb{R}^{hw}` is that neuron's *selectivity pattern* on the input,
    and the layer is the set of its :math:`c` patterns. NST matches the
    distribution of the student's patterns to the teacher's by the squared
    maximum mean discrepancy of a kernel :math:`k`, per input:

    .. math::
        \mathcal{R}_{NST} = w \sum_{(T_\ell, S_\ell)} \frac{1}{n}\sum_{k=1}^n
            \mathrm{MMD}^2\big(\{f^i_{T_\ell}(x_k)\}_{i \le c_T},
                               \{f^j_{S_\ell}(x_k)\}_{j \le c_S}\big)

    (see :func:`nst_mmd2`), with the polynomial kernel
    :math:`k(x, y) = (x^\top y + c)^d`, :math:`d = 2`, :math:`c = 0` by
    default (the paper's best; with it the loss is
    :math:`\|F_T^\top F_T / c_T - F_S^\top F_S / c_S\|_F^2`, :math:`F` the
    ``c x hw`` matrix of normalised maps: it matches the layers' position x
    position second moments). ``"linear"`` matches the mean patterns,
    ``"gaussian"`` every moment.

    Like OT, NST compares two *sets of neurons*, so the widths may differ and
    no adapter is trained; unlike OT, a neuron is its map over the positions
    of one input (not its responses over a batch), and the sets are compared
    by MMD, input by input. It is invariant to the order of the channels and
    to a positive rescaling of each channel's map. If the maps have different
    sizes, the larger is average-pooled to the smaller (as the common
    PyTorch implementations do). The teacher's maps are constants. Features
    captured by :func:`otviz.capture.hooked` are first put channels first on
    the axis it recorded (padding tokens are not masked out).
    :meth:`diagnostics` gives the unweighted squared MMD per pair (mean over
    the batch), ``"nst/<teacher>-><student>"``.

    Parameters
    ----------
    pairs : sequence of (str, str)
        ``(teacher_layer, student_layer)`` pairs of layers with spatial maps,
        ``(n, c, h, w)`` or ``(n, c, length)``.
    weight : float, default 50.0
        :math:`w`. The paper writes the term :math:`\frac{\lambda}{2}
        \mathrm{MMD}^2`; 50 is the weight of the common CIFAR benchmark
        implementations of this form. The recipe of ``otviz train`` uses 15
        on its small CNNs (see :data:`otviz.train.RECIPE_COMMON`).
    kernel : {"polynomial", "linear", "gaussian"}, default "polynomial"
    degree : int, default 2
        :math:`d` of the polynomial kernel.
    coef : float, default 0.0
        :math:`c` of the polynomial kernel.
    sigma : float or None, default None
        Bandwidth of the gaussian kernel; None: :math:`\sigma^2` is the mean
        squared distance between the maps of each input (the paper's choice).

    References
    ----------
    Z. Huang, N. Wang. "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer". arXiv:1707.01219, 2017.
    """

    name = "nst"

    def __init__(self, pairs: PairsLike, weight: float = 50.0, kernel: str = "polynomial", *,
                 degree: int = 2, coef: float = 0.0, sigma: float | None = None) -> None:
        super().__init__(pairs, weight)
        if kernel not in _NST_KERNELS:
            raise ValueError(f"nst: unknown kernel={kernel!r}. Pass one of {list(_NST_KERNELS)}.")
        if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or degree < 1:
            raise ValueError(f"nst: degree must be a positive integer, got {degree!r}.")
        self.kernel = kernel
        self.degree = int(degree)
        self.coef = _check_weight(coef, "nst coef")
        self.sigma = None if sigma is None else _check_weight(sigma, "nst sigma", allow_zero=False)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        total = _zero(ctx)
        last: dict[str, float] = {}
        for key, tl, sl, t, s in self._paired_features(ctx):
            t = _channel_maps(t, _layout(ctx.teacher_features, tl, "teacher", None)[0], key, "teacher")
            s = _channel_maps(s, _layout(ctx.student_features, sl, "student", None)[0], key, "student")
            if t.ndim != s.ndim:
                raise ValueError(
                    f"nst: pair {key!r} pairs a {t.ndim - 2}-d map {tuple(t.shape)} with a "
                    f"{s.ndim - 2}-d map {tuple(s.shape)}; pair layers with maps of the same kind."
                )
            common = tuple(min(a, b) for a, b in zip(t.shape[2:], s.shape[2:]))
            t, s = _resize(t, common), _resize(s, common)
            mmd2 = nst_mmd2(t.flatten(2).to(s.dtype), s.flatten(2), self.kernel,
                            degree=self.degree, coef=self.coef, sigma=self.sigma).mean()
            last[f"nst/{key}"] = float(mmd2.detach())
            total = total + mmd2
        self._last = last
        return self.weight * total

    def extra_repr(self) -> str:
        opts = f"kernel={self.kernel!r}"
        if self.kernel == "polynomial":
            opts += f", degree={self.degree}, coef={self.coef:g}"
        elif self.kernel == "gaussian":
            opts += f", sigma={self.sigma!r}"
        return f"{super().extra_repr()}, {opts}"


# ----------------------------------------------------------------------------
# similarity-preserving distillation
# ----------------------------------------------------------------------------
def sp_similarity(feature: torch.Tensor) -> torch.Tensor:
    r"""Row-normalised batch similarity of a feature (Tung & Mori 2019).

    With :math:`A \in \mathbb{R}^{b \times d}` the feature flattened per
    sample, :math:`\tilde G = A A^\top` (``b x b``) and :math:`G` its rows
    l2-normalised: :math:`G_{[i,:]} = \tilde G_{[i,:]} / \|\tilde G_{[i,:]}\|_2`.
    """
    if feature.ndim < 2:
        raise ValueError(
            f"sp needs features with the batch first, (n, ...); got shape {tuple(feature.shape)}."
        )
    a = feature.flatten(1)
    return F.normalize(a @ a.t(), dim=1)


class SimilarityPreserving(_PairLoss):
    r"""Similarity-preserving knowledge distillation (Tung & Mori 2019).

    Each layer is summarised by how it relates the :math:`b` inputs of the
    minibatch to each other: :math:`G = \mathrm{rownorm}(A A^\top)`, with
    :math:`A` the feature flattened per sample (see :func:`sp_similarity`).
    The student is trained to relate the inputs as the teacher does:

    .. math::
        \mathcal{R}_{SP} = w \sum_{(T_\ell, S_\ell)}
            \frac{1}{b^2} \big\| G_{T_\ell} - G_{S_\ell} \big\|_F^2 .

    :math:`G` is ``b x b`` whatever the layer's shape, so the paired layers
    may differ in width, spatial size and kind (a conv map against a dense
    layer). Like OT it treats a layer through relations (here between
    inputs, in OT between neurons) rather than unit by unit; it is invariant
    to the order of the channels (any orthogonal map of the flattened
    features) and to a common rescaling of a layer's features. The
    teacher's similarities are constants. :meth:`diagnostics` gives the
    unweighted :math:`\|G_T - G_S\|_F^2 / b^2` per pair,
    ``"sp/<teacher>-><student>"``.

    Parameters
    ----------
    pairs : sequence of (str, str)
        ``(teacher_layer, student_layer)`` pairs.
    weight : float, default 3000.0
        :math:`w` (the paper's :math:`\gamma`; 3000 in its CIFAR-10
        experiments).

    References
    ----------
    F. Tung, G. Mori. "Similarity-Preserving Knowledge Distillation".
    ICCV 2019. arXiv:1907.09682.
    """

    name = "sp"

    def __init__(self, pairs: PairsLike, weight: float = 3000.0) -> None:
        super().__init__(pairs, weight)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        total = _zero(ctx)
        last: dict[str, float] = {}
        for key, _, _, t, s in self._paired_features(ctx):
            gs = sp_similarity(s)
            gt = sp_similarity(t.to(gs.dtype))
            b = gs.shape[0]
            term = (gt - gs).pow(2).sum() / (b * b)
            last[f"sp/{key}"] = float(term.detach())
            total = total + term
        self._last = last
        return self.weight * total
