r"""Your own training loop, logged like a built-in training.

:func:`otviz.train.train` runs otviz's own settings. Any other model pair --
a transformer student learning from a pretrained one, your own CNNs -- trains
in a plain PyTorch loop that adds the OT regulariser
(:class:`otviz.losses.OTRegularizer`) to its task loss:

.. math::
    \mathcal{L} = \mathcal{L}_\text{task}(f_S(x), y)
        + \lambda \sum_{(T_\ell, S_\ell)} \mathrm{OT}(\mu_{T_\ell}, \mu_{S_\ell}).

The three functions here write what the built-in trainer writes to a
:class:`otviz.runs.RunStore`, so the dashboard follows such a run live (Train
page: progress, curves, latest plan; Compare: the run's final accuracy and
scores; Alignments, *A training run*: its plans epoch by epoch):

- :func:`run_config` -- the run's config: the regulariser's options under the
  names the built-in trainer stores (``lam``, ``pairs``, ``cost``, ...), plus
  your own entries (``setting``, ``teacher``, ``student``, ``num_classes``...);
- :func:`log_step` -- per optimisation step: ``loss/<term>``, ``loss/total``
  and the regulariser's raw OT term of every pair, ``ot/<teacher>-><student>``;
- :func:`log_probe` -- per epoch, on a fixed probe batch: the transport plan of
  every pair (snapshot key ``<teacher>-><student>``) and the cost matrix it
  solved (``cost/<teacher>-><student>``), the scale-free OT score
  ``score/<teacher>-><student>`` (:attr:`otviz.Alignment.score`: 0 = the
  teacher's layer up to permutation and scale, about 1 = unrelated), and any
  metrics you evaluated (``train/accuracy``, ``test/accuracy``).

One epoch of such a loop::

    reg = OTRegularizer([("encoder.layer.5", "bert.encoder.layer.2")], weight=1.0,
                        normalize="standardize")
    with store.track(run_config(reg, setting="my-task", epochs=E),
                     total_steps=E * len(loader)) as rec:
        log_probe(rec, teacher, student, probe, reg, epoch=0, step=0)
        for batch, y in loader:
            with torch.no_grad(), hooked(teacher, reg.teacher_layers) as t_feats:
                teacher(**batch)
            with hooked(student, reg.student_layers) as s_feats:
                logits = student(**batch)
            ce = F.cross_entropy(logits, y)
            ot = reg.between(t_feats, s_feats)
            opt.zero_grad(); (ce + ot).backward(); opt.step()
            step += 1
            log_step(rec, reg, {"ce": ce, "ot": ot}, step=step, epoch=epoch)
        log_probe(rec, teacher, student, probe, reg, epoch=epoch, step=step,
                  metrics={"test/accuracy": accuracy(student)})

``examples/custom_loop.py`` is a complete, runnable version (a small BERT
student learning sentence topics with the all-MiniLM-L6-v2 teacher).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from otviz.losses import OTRegularizer, StepContext, _layout, _pair_neurons, pair_key

__all__ = ["COST_PREFIX", "ProbeResult", "log_probe", "log_step", "probe_alignments", "run_config"]

#: Snapshot key prefix of the cost matrices: ``"cost/" + pair`` beside the plan ``pair``.
COST_PREFIX = "cost/"


def _check_reg(reg: Any, what: str) -> OTRegularizer:
    if not isinstance(reg, OTRegularizer):
        raise TypeError(
            f"{what} needs the OTRegularizer of the loop (otviz.losses.OTRegularizer), got "
            f"{type(reg).__name__}; build one with OTRegularizer(pairs, weight=...) (with "
            "monitor=True to log the OT distance without training on it)."
        )
    return reg


def _check_step(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}.")
    return int(value)


def run_config(reg: OTRegularizer, *, setting: str, method: str | None = None,
               **fields: Any) -> dict[str, Any]:
    """The config of a custom-loop run, as :meth:`otviz.runs.RunStore.track` stores it.

    The regulariser's options are stored under the names the built-in trainer
    uses (:class:`otviz.train.TrainConfig`), so the dashboard titles the
    curves (``λ × OT (λ = ...)``), labels the plans with their cost and finds
    a run's twin (a run of the same setting and options without the OT term)
    as for a built-in run.

    Parameters
    ----------
    reg : OTRegularizer
        The loop's regulariser (``monitor=True`` for a run that logs the OT
        distance without training on it: its ``lam`` is stored as None).
    setting : str
        A short name of the task and model pair, e.g. ``"minilm-topics"``;
        the dashboard lists the run as ``<setting>/<method>``. Runs that
        should be compared share it.
    method : str, optional
        Default ``"ot"``, or ``"scratch"`` when ``reg`` only monitors.
        Name any other objective (``"kd+ot"``...) so the dashboard says
        whether the OT term was trained on (``"ot"`` in the ``+``-joined name).
    **fields
        Anything else worth keeping, JSON-serialisable: ``teacher`` and
        ``student`` (descriptions shown by the Alignments page),
        ``num_classes`` (the accuracy curves then draw the chance level
        1 / num_classes), ``epochs``, ``lr``, ``batch_size``, ``seed``...
        They override the entries derived from ``reg``.

    Returns
    -------
    dict
        ``setting``, ``method``, ``trainer="custom"``, ``lam``, ``pairs``
        (``"teacher_layer:student_layer"`` strings), ``cost``, ``normalize``,
        ``ot_method``, ``eps``, ``spatial``, ``feature_scale``, and
        ``fields``.

    Examples
    --------
    >>> reg = OTRegularizer([("encoder.layer.5", "encoder.layer.2")], weight=0.5)
    >>> cfg = run_config(reg, setting="minilm-topics", num_classes=4)
    >>> cfg["method"], cfg["lam"], cfg["pairs"]
    ('ot', 0.5, ['encoder.layer.5:encoder.layer.2'])
    """
    reg = _check_reg(reg, "run_config")
    if not isinstance(setting, str) or not setting.strip():
        raise ValueError(f"setting must be a non-empty name of the task, got {setting!r}.")
    if method is None:
        method = "scratch" if reg.monitor else "ot"
    if not isinstance(method, str) or not method.strip():
        raise ValueError(f"method must be a non-empty name such as 'ot', got {method!r}.")
    config: dict[str, Any] = dict(
        setting=setting.strip(), method=method.strip(), trainer="custom",
        lam=None if reg.monitor else reg.weight,
        pairs=[f"{t}:{s}" for t, s in reg.pairs], cost=reg.cost, normalize=reg.normalize,
        ot_method=reg.method, eps=reg.eps, spatial=reg.spatial, feature_scale=reg.feature_scale,
    )
    config.update(fields)
    return config


def _number(value: Any, key: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{key} must be a scalar, got a tensor of shape {tuple(value.shape)}.")
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{key} must be a number or a scalar tensor, got {type(value).__name__}.")
    return float(value)


def log_step(rec: Any, reg: OTRegularizer | None, losses: Mapping[str, Any], *, step: int,
             epoch: int | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Log one optimisation step as the built-in trainer does.

    Writes ``loss/<name>`` for each term of ``losses`` (the weighted values
    that were added to the objective), ``loss/total`` (their sum, unless
    ``losses`` has ``"total"``), and the regulariser's last raw OT term of
    every pair, ``ot/<teacher>-><student>`` (:meth:`OTRegularizer.diagnostics`:
    the distance before :math:`\\lambda`, on this step's minibatch).

    Parameters
    ----------
    rec : RunRecorder
        What :meth:`otviz.runs.RunStore.track` yields.
    reg : OTRegularizer or None
        The regulariser called in this step (None: no OT term to log).
    losses : mapping of str to float or scalar tensor
        The terms of the objective, e.g. ``{"ce": ce, "ot": ot}``.
    step : int
        The step's number (the trainer counts from 1 after the first update).
    epoch : int, optional
    extra : mapping, optional
        More scalars to log at this step (``{"lr": ...}``).

    Returns
    -------
    dict of str to float
        What was logged.

    Raises
    ------
    FloatingPointError
        A term is NaN or infinite: nothing is logged, and the message names
        the term. Inside ``store.track(...)`` the run is then marked failed.
    """
    step = _check_step(step, "step")
    if not isinstance(losses, Mapping) or not losses:
        raise ValueError(
            "log_step needs the terms of the objective as a dict, e.g. {'ce': ce, 'ot': ot}."
        )
    out: dict[str, float] = {}
    for name, value in losses.items():
        key = name if str(name).startswith("loss/") else f"loss/{name}"
        out[key] = _number(value, key)
    if "loss/total" not in out:
        out["loss/total"] = math.fsum(out.values())
    if reg is not None:
        out.update(_check_reg(reg, "log_step").diagnostics())
    for key, value in (extra or {}).items():
        out[key] = _number(value, key)
    bad = [f"{k}={v}" for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"non-finite value at step {step}: {', '.join(bad)}. Lower the learning rate or the "
            "weight of the term, or check the inputs; nothing was logged for this step."
        )
    rec.log(out, step=step, epoch=epoch)
    return out


class ProbeResult(dict):
    """``{pair: plan}`` of :func:`probe_alignments`, with ``.costs`` and ``.scores`` per pair.

    Attributes
    ----------
    costs : dict of str to numpy.ndarray
        The cost matrix each plan solved (the regulariser's geometry), by pair.
    scores : dict of str to float
        The scale-free OT score of each pair (:attr:`otviz.Alignment.score`);
        a pair whose layers are dead on the whole probe batch has none.
    """

    def __init__(self) -> None:
        super().__init__()
        self.costs: dict[str, np.ndarray] = {}
        self.scores: dict[str, float] = {}


def probe_alignments(teacher: nn.Module, student: nn.Module, probe: Any, reg: OTRegularizer,
                     *, student_probe: Any = None) -> ProbeResult:
    """Plans, cost matrices and OT scores of the regulariser's pairs on a probe batch.

    Both models run in eval mode (restored after) without gradients, with
    hooks on the paired layers (:func:`otviz.capture.capture`: a tensor, a
    tuple of positional arguments, or a mapping / ``BatchEncoding`` of keyword
    arguments, whose ``attention_mask`` keeps padding out of the neurons).
    The plans use the regulariser's own options (cost, normalisation, solver;
    no warm start), as :meth:`OTRegularizer.last_alignments` would hold them;
    the scores use the same solver in the score's scale-free geometry
    (:func:`otviz.transport.align` with ``normalize="layer"``), so runs with
    different options compare on them.

    Parameters
    ----------
    teacher, student : torch.nn.Module
    probe
        The probe batch fed to the teacher (and to the student, unless
        ``student_probe`` is given). Keep it fixed over the run.
    reg : OTRegularizer
    student_probe, optional
        The same examples as the student takes them (another tokenizer, other
        preprocessing); with tokens of different lengths, pair the layers
        with ``spatial="mean"`` (one response per example).

    Returns
    -------
    ProbeResult
        ``{pair_key: plan}`` with ``.costs`` and ``.scores``.
    """
    from otviz.capture import capture
    from otviz.transport import align

    reg = _check_reg(reg, "probe_alignments")
    probe_s = probe if student_probe is None else student_probe
    modes = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    try:
        t_acts = capture(teacher, probe, sorted(set(reg.teacher_layers)))
        s_acts = capture(student, probe_s, sorted(set(reg.student_layers)))
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    snap = OTRegularizer(reg.pairs, weight=1.0, cost=reg.cost, normalize=reg.normalize,
                         method=reg.method, eps=reg.eps, spatial=reg.spatial, size=reg.size,
                         feature_scale=reg.feature_scale, warm_start=False,
                         channel_axis=reg.channel_axis, **reg.solver_options)
    any_feat = next(iter(s_acts.values()))
    ctx = StepContext(inputs=any_feat, targets=any_feat, student_logits=any_feat,
                      teacher_logits=None, student_features=s_acts, teacher_features=t_acts)
    with torch.no_grad():
        snap(ctx)
    out = ProbeResult()
    for t, s in reg.pairs:
        key = pair_key(t, s)
        al = snap.last_alignments[key]
        out[key] = np.asarray(al.plan, dtype=np.float32)
        out.costs[key] = np.asarray(al.cost_matrix, dtype=np.float32)
        layouts = (_layout(t_acts, t, "teacher", reg.channel_axis),
                   _layout(s_acts, s, "student", reg.channel_axis))
        tn, sn = _pair_neurons(t_acts[t], s_acts[s], reg.spatial, reg.size, key, layouts)
        try:
            scored = align(tn, sn, normalize="layer", method=reg.method,
                           eps=None if reg.method == "emd" else reg.eps)
        except ValueError:
            continue  # a layer dead on the whole probe batch has no score; its plan is kept
        out.scores[key] = float(scored.score)
    return out


def log_probe(rec: Any, teacher: nn.Module, student: nn.Module, probe: Any, reg: OTRegularizer,
              *, epoch: int, step: int, metrics: Mapping[str, Any] | None = None,
              student_probe: Any = None) -> dict[str, float]:
    """Log one evaluation as the built-in trainer does at the end of each epoch.

    Stores, for every pair of ``reg``, the plan on the probe batch (snapshot
    key ``<teacher>-><student>``) and its cost matrix (``cost/<teacher>-><student>``),
    and logs ``score/<teacher>-><student>`` and ``metrics`` at ``step``
    (see :func:`probe_alignments`). Call it once before training (``epoch=0,
    step=0``: the starting point) and after each epoch; the Alignments page
    shows the plans epoch by epoch.

    Parameters
    ----------
    rec : RunRecorder
    teacher, student : torch.nn.Module
    probe
        A fixed probe batch (e.g. a tokenizer's output for held-out sentences).
    reg : OTRegularizer
    epoch, step : int
    metrics : mapping, optional
        Evaluations of this epoch, e.g. ``{"train/accuracy": 0.9, "test/accuracy": 0.8}``
        (fractions in [0, 1]: the dashboard draws them in %).
    student_probe, optional
        See :func:`probe_alignments`.

    Returns
    -------
    dict of str to float
        The scalars logged (scores and ``metrics``).
    """
    epoch = _check_step(epoch, "epoch")
    step = _check_step(step, "step")
    found = probe_alignments(teacher, student, probe, reg, student_probe=student_probe)
    for key, plan in found.items():
        rec.snapshot(key, plan, epoch=epoch, step=step)
        rec.snapshot(COST_PREFIX + key, found.costs[key], epoch=epoch, step=step)
    row = {f"score/{k}": v for k, v in found.scores.items()}
    for key, value in (metrics or {}).items():
        row[key] = _number(value, key)
    bad = [f"{k}={v}" for k, v in row.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite value at epoch {epoch}: {', '.join(bad)}.")
    if row:
        rec.log(row, step=step, epoch=epoch)
    return row
