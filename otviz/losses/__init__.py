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
- ``nst`` (:class:`NST`; Huang & Wang 2017):
  :math:`w \sum_\ell \mathrm{mean}_k\, \mathrm{MMD}^2(\{f^i_{T_\ell}\}, \{f^j_{S_\ell}\})`,
  the squared MMD between the teacher's and the student's sets of
  l2-normalised channel maps, input by input.
- ``sp`` (:class:`SimilarityPreserving`; Tung & Mori 2019):
  :math:`w \sum_\ell \|G_{T_\ell} - G_{S_\ell}\|_F^2 / b^2` with
  :math:`G` the row-normalised ``b x b`` similarity of the minibatch's
  features.
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

The package is laid out by level, as the losses act:

- :mod:`otviz.losses._base` -- :class:`StepContext`, :class:`TransferLoss`
  (and ``_PairLoss``, the base of the losses summed over layer pairs),
  layer pairs and the checks every loss shares;
- :mod:`otviz.losses.logits` -- :class:`CrossEntropy` and :class:`KD`;
- :mod:`otviz.losses.weights` -- :class:`L2SP`;
- :mod:`otviz.losses.features` -- :class:`FitNets`,
  :class:`AttentionTransfer`, :class:`NST` and :class:`SimilarityPreserving`;
- :mod:`otviz.losses.ot` -- :class:`OTRegularizer` and
  :func:`ot_layer_distance`;
- :mod:`otviz.losses.combined` -- :class:`CombinedLoss`, :func:`build_loss`
  and :func:`probe_channels`.

Every public name is importable from :mod:`otviz.losses` itself.
"""

from __future__ import annotations

from otviz._recipes import METHODS, parse_method
from otviz.losses._base import (
    LayerPair,
    Layout,
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
from otviz.losses.combined import _NO_TERM, CombinedLoss, build_loss, probe_channels
from otviz.losses.features import (
    NST,
    AttentionTransfer,
    FitNets,
    SimilarityPreserving,
    _as_maps,
    _per_pair,
    attention_map,
    nst_kernel,
    nst_mmd2,
    sp_similarity,
)
from otviz.losses.logits import KD, CrossEntropy
from otviz.losses.ot import (
    OTRegularizer,
    _channel_first,
    _check_ot_options,
    _floored_normalize,
    _pair_neurons,
    _power_of_two_scaled,
    _scale_factor,
    ot_layer_distance,
)
from otviz.losses.weights import L2SP

__all__ = [
    "AttentionTransfer",
    "CombinedLoss",
    "CrossEntropy",
    "FitNets",
    "KD",
    "L2SP",
    "METHODS",
    "NST",
    "OTRegularizer",
    "SimilarityPreserving",
    "StepContext",
    "TransferLoss",
    "attention_map",
    "build_loss",
    "layer_pairs",
    "nst_kernel",
    "nst_mmd2",
    "ot_layer_distance",
    "pair_key",
    "parse_method",
    "probe_channels",
    "sp_similarity",
]

# private helpers that otviz.loop and older code import from here
_PRIVATE = (LayerPair, Layout, PairsLike, _check_batches, _check_weight, _feature, _layout, _resize,
            _unique, _zero, _NO_TERM, _as_maps, _per_pair, _channel_first, _check_ot_options,
            _floored_normalize, _pair_neurons, _power_of_two_scaled, _scale_factor)
