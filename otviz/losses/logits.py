r"""Losses on the logits: the task loss (:class:`CrossEntropy`) and knowledge distillation (:class:`KD`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otviz.losses._base import StepContext, TransferLoss, _check_weight


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
        labelled = ctx.labelled
        if labelled is not None:  # the inputs after the first `labelled` are unlabelled
            if isinstance(labelled, bool) or not isinstance(labelled, int) or not 0 < labelled <= logits.shape[0]:
                raise ValueError(f"ce: labelled={labelled!r} must be a count between 1 and the "
                                 f"{logits.shape[0]} inputs")
            logits = logits[:labelled]
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
