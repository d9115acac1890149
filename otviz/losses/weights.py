r"""Losses on the weights: L2-SP, the penalty toward the starting point (:class:`L2SP`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from otviz.losses._base import StepContext, TransferLoss, _check_weight, _zero


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
