r"""The OT regulariser: a layer as a uniform distribution over its neurons, compared by optimal transport."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from otviz import transport as _transport
from otviz.capture import neurons
from otviz.losses._base import (
    Layout,
    PairsLike,
    StepContext,
    _check_batches,
    _check_weight,
    _feature,
    _layout,
    _PairLoss,
    _zero,
    pair_key,
)


_OT_COSTS = ("sqeuclidean", "euclidean", "cosine", "correlation")
_OT_NORMALIZE = (None, "center", "standardize", "unit")
_OT_METHODS = ("emd", "sinkhorn", "unbalanced")
_SPATIAL = ("flatten", "mean")
_FEATURE_SCALES = ("mean", "sum")
_SOLVER_OPTIONS = ("reg_m", "tol", "max_iter")



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


class OTRegularizer(_PairLoss):
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
    :meth:`diagnostics` each pair's distance, already divided by its feature
    scale and before ``weight``, keyed ``"ot/<teacher>-><student>"``.

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
        super().__init__(pairs, weight)
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
        self.cost, self.normalize, self.method, self.eps = cost, normalize, method, eps
        self.spatial, self.size, self.feature_scale = spatial, size, feature_scale
        self.monitor = bool(monitor)
        self.use_warm_start = bool(warm_start)
        self.channel_axis = channel_axis
        self.solver_options = dict(solver_options)
        if self.monitor:
            self.name = "ot_monitor"
        self._potentials: dict[str, Any] = {}
        self._alignments: dict[str, Any] = {}

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

    # -- computation --------------------------------------------------------
    def _solve(self, key: str, tn: torch.Tensor, sn: torch.Tensor) -> torch.Tensor:
        warm = self._potentials.get(key) if self.use_warm_start else None
        normalize = self.normalize
        # Mixed precision: features may be bfloat16/float16 (autocast). Everything
        # below runs in otviz.transport.compute_dtype (float64 on the CPU, float32
        # at least elsewhere) with autocast off; the gradient flows back to the
        # student's features in their own dtype, and the value is returned in
        # float32 (or the features' dtype if wider; float64 where float32 would
        # round it to inf or 0, as otviz.ot_distance does).
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
        return _transport._as_out_dtype(value, out_dtype)

    def pair_distances(self, ctx: StepContext, *, grad: bool = True) -> dict[str, torch.Tensor]:
        """Scaled OT distance of every pair on this step's features (unweighted)."""
        out: dict[str, torch.Tensor] = {}
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            # not _paired_features: the batches are checked by _pair_neurons (shared with
            # otviz.loop), after the layouts are read, under the name "ot" in monitor mode too
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
        opts = [super().extra_repr(), f"cost={self.cost!r}", f"normalize={self.normalize!r}",
                f"method={self.method!r}"]
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
