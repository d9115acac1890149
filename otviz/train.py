r"""Short transfer trainings: one loop, one config, every method, logged to the run store.

The student minimises

.. math::
    \mathcal{L} = \mathrm{CE}(f_S(x), y) + \sum_{\text{terms}} \lambda_t\, R_t

on each minibatch, where the terms come from the chosen method
(:func:`otviz.losses.build_loss`): nothing for ``scratch`` and ``finetune``,
L2-SP, KD, FitNets, attention transfer, neuron selectivity transfer (NST),
similarity-preserving distillation (SP), or the OT regulariser
:math:`\lambda \sum_{(l, l')} \mathrm{OT}(\mu_T^{l}, \mu_S^{l'})` over the chosen
(teacher layer, student layer) pairs; ``"kd+ot"`` sums two terms.

Everything is logged to a :class:`otviz.runs.RunStore`: per step the loss terms
and the raw OT term of every chosen pair as the regulariser computes it on the
minibatch (``ot/<pair>``, also for methods that do not train on it), per epoch
the train and test accuracy, and on a fixed probe batch the scale-free OT score
of every pair (``score/<pair>``, :attr:`otviz.Alignment.score`: 0 = the
teacher's layer up to permutation and scale, about 1 = unrelated) and a
snapshot of its transport plan.

With a validation part (``val_size``), the epochs log the validation accuracy
and cross-entropy (``val/accuracy``, ``val/loss``) instead of the test
accuracy, the probe batch comes from the validation part, and the test set is
evaluated once, on the final model (``test/accuracy`` at the last step): the
protocol for choosing options without reading the test set.

Runs are paired by their seed: the seed fixes the validation part, the
labelled subset, the student's initialisation and the minibatch order, each
drawn from a random stream of its own, so every method trained with one seed
sees the same data in the same order from the same starting weights, whatever
random numbers its own terms draw.

Every option not given comes from the benchmark's recipe for the setting and
method (:func:`recipe`, :data:`RECIPES`), the options ``benchmarks/bench_transfer.py``
measured: ``TrainConfig(setting="transfer-small", method="ot")`` reproduces that
benchmark row.

Run it from Python (:func:`train`), from the command line (``otviz train``), or
in its own process (:func:`launch`, used by the dashboard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from otviz._device import resolve_device as _resolve_device

# The settings, recipes and layer pairs are plain data (otviz._recipes, importable without torch);
# they are documented and imported from here.
from otviz._recipes import (  # noqa: F401
    BENCHMARKED_SETTINGS,
    RECIPE_COMMON,
    RECIPES,
    TERM_OPTIONS,
    _TERM_NAMES,
    default_pairs,
    recipe,
    recipe_table,
)

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "StopTraining", "OptionWarning", "LaunchedRun", "train",
           "launch",
           "stop", "default_pairs", "recipe", "recipe_table", "RECIPES", "RECIPE_COMMON", "FROM_RECIPE"]

PROBE_SIZE = 128  # inputs of the fixed probe batch used for the per-epoch plan snapshots

#: The loss terms that look at the teacher on the inputs (and so may see unlabelled ones).
GUIDED_TERMS = ("kd", "fitnets", "at", "nst", "sp", "ot")


class TrainingError(RuntimeError):
    """A training that cannot go on (e.g. the loss became NaN); the run is marked failed."""


class StopTraining(Exception):
    """Raised by an ``on_epoch`` callback of :func:`train` to end the run early (a pruned
    hyper-parameter trial): the run is recorded as ``interrupted`` with the reason, and
    :func:`train` raises it again with ``run_id`` and ``history`` (the epochs done) set.

    Parameters
    ----------
    reason : str
        Why the run stops; stored as the run's error text.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = str(reason)
        self.run_id: int | None = None
        self.history: list[dict[str, float]] = []


class OptionWarning(UserWarning):
    """An option given to a training that the chosen setting or method does not use as given."""


# --------------------------------------------------------------------------
# the benchmark's recipe: the defaults of every training
# --------------------------------------------------------------------------
class _FromRecipe:
    """Default of a :class:`TrainConfig` field that the recipe fills (see :func:`recipe`)."""

    _instance: "_FromRecipe | None" = None

    def __new__(cls) -> "_FromRecipe":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "FROM_RECIPE"

    def __copy__(self) -> "_FromRecipe":
        return self

    def __deepcopy__(self, memo: Any) -> "_FromRecipe":
        return self

    def __reduce__(self) -> str:
        return "FROM_RECIPE"


#: Marks a :class:`TrainConfig` field left to the recipe of its setting and method.
FROM_RECIPE: Any = _FromRecipe()

@dataclass
class TrainConfig:
    r"""Everything that defines a training run (stored as the run's config).

    Every option of the optimisation and of the loss terms defaults to the
    benchmark's recipe for the config's setting and method (:func:`recipe`,
    table in ``otviz train --help``): ``TrainConfig(setting="transfer-small",
    method="ot")`` trains as ``benchmarks/bench_transfer.py`` does, and an
    option given explicitly wins. Such fields hold :data:`FROM_RECIPE` until
    :meth:`resolved` fills them; :func:`train` and :meth:`to_dict` resolve
    first, so a run's stored config records the values that ran.

    Options that do not apply are ignored with an :class:`OptionWarning` and
    stored as None: the weight of a term the method lacks (``lam`` without
    ``ot``, ``kd_weight``/``temperature`` without ``kd``, ``l2sp_weight``,
    ``fitnets_weight``, ``at_weight``, ``nst_weight``, ``sp_weight``; see
    :data:`TERM_OPTIONS`) and ``eps``
    with the exact solver (``ot_method="emd"``). ``k`` in ``distill`` (a
    full-data setting) is applied, with a warning that the run then departs
    from the setting.

    Attributes
    ----------
    setting : {"transfer", "distill", "transfer-small", "transfer-digits"}
        The task and the student (see :data:`otviz.data.SETTINGS`).
    method : str
        ``scratch``, ``finetune``, ``l2sp``, ``kd``, ``fitnets``, ``at``, ``nst``,
        ``sp``, ``ot`` or a combination with ``+`` such as ``kd+ot``.
    lam : float
        Weight :math:`\lambda` of the OT regulariser (recipe: 0.1 in
        ``transfer``, 1 in ``distill`` and ``transfer-small``).
    lam_schedule : {"constant", "linear"}
        How :math:`\lambda` evolves over the training's :math:`T` steps:
        ``"constant"`` (default), or ``"linear"``: :math:`\lambda_t = \lambda\,
        (1 - t / T)`, a full pull toward the teacher at the start that fades to
        nothing, leaving the last steps to the student's own task. Used only
        by methods with an OT term.
    pairs : list of str or None
        Layer pairs, each ``"teacher_layer:student_layer"`` or one name used on
        both sides; None: every alignable layer of the architecture. Recipe:
        the last alignable layer (``features.conv3`` for the CNN). Used by
        ``ot``, ``fitnets``, ``at``, ``nst``, ``sp`` and for the logged OT
        distances.
    cost, normalize, ot_method, eps, spatial, feature_scale
        Options of the OT regulariser, and of the logged OT distance for
        methods without an OT term (see :func:`otviz.ot_distance` and
        :class:`otviz.losses.OTRegularizer`); ``eps`` is relative to the cost
        scale and only used by the entropic solvers. Recipe: ``sqeuclidean``
        on standardised neurons (``normalize="standardize"``; None for raw
        responses), ``emd``, ``flatten``, ``mean``.
    epochs, batch_size, lr, weight_decay, seed
        Optimisation: Adam on the student's parameters (and FitNets'
        regressors). Recipe: see :data:`RECIPES` (the learning rate differs
        per setting). The seed (a non-negative integer) fixes the validation
        part, the labelled subset, the student's initialisation and the
        minibatch order, each from its own random stream, so that runs of
        different methods with one seed are paired.
    schedule : {"cosine", "constant"}
        Learning-rate schedule over all steps: cosine decay to zero (the
        recipe; the final accuracy then does not depend on where the last
        step happened to land) or a constant rate.
    val_size : float, int or None
        Hold out a stratified validation part of the setting's training
        split: a fraction in (0, 1) of it or a number of images, drawn with
        the seed, disjoint from the labelled examples and the test set (in
        the few-label settings the ``k`` labelled images per class are drawn
        from what remains, so the validation part is larger than the
        labelled set; see :func:`otviz.data.make_task`). Each epoch then
        logs ``val/accuracy`` and ``val/loss`` instead of the test accuracy,
        and the test set is evaluated once, at the end. Default None: no
        validation part, the test accuracy is logged every epoch.
    steps_per_epoch : int or None
        Optimisation steps between two evaluations; None: one pass over the
        training set (the ``distill`` recipe). The few-label settings have
        tiny training sets (50 images for k=10), where one pass is a single
        step; their recipe takes 15 steps per epoch (passes continue with
        fresh shuffles).
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    k : int, optional
        Labelled images per class (default: the setting's, 10 in the
        transfer settings, the full training split in ``distill``).
    dataset, arch, student_width
        Source dataset, model family and student width (defaults: the
        setting's).
    kd_weight, temperature, l2sp_weight, fitnets_weight, at_weight, nst_weight, sp_weight
        Weights of the baseline terms; recipe: 1, 4, 0.01, 1, 100, 15 and
        3000 (see :class:`otviz.losses.NST` and
        :class:`otviz.losses.SimilarityPreserving`).
    reg_m : float, optional
        With ``ot_method="unbalanced"``: the weight of the KL penalties on the
        plan's marginals, relative to the median cost like ``eps`` (small: a
        student neuron may take less or more than its share of the teachers'
        mass; large: balanced OT). Ignored, with an :class:`OptionWarning`, by
        the other solvers. Default None: the solver's default (1.0).
    unlabelled : int or float, optional
        The semi-supervised variant of the few-label settings: each step
        also draws this many images (an int; a float: that multiple of the
        labelled batch size) from the rest of the student's training split,
        whose labels are not used (:attr:`otviz.data.TaskData.X_unlabelled`:
        never a labelled, validation or test image), and the teacher-guided
        terms (``kd``, ``fitnets``, ``at``, ``nst``, ``sp``, ``ot``) see them
        with the labelled batch; the cross-entropy stays on the labelled
        images. Ignored, with an :class:`OptionWarning`, by methods without
        such a term (``scratch``, ``finetune``, ``l2sp``: they train the same
        epochs on the labelled images). Needs ``k`` (a full-data setting has
        no unlabelled images). Default None: labelled images only.
    num_threads : int, optional
        Threads of torch (``torch.set_num_threads``) and of the BLAS/OpenMP
        pools (threadpoolctl) for this run (small models on few cores are often
        faster with 1; several trainings side by side need it).
    ot_gather : bool
        In a training over several processes (``torchrun``, ``otviz train
        --nproc``; see :mod:`otviz._distributed`): gather the paired layers'
        activations of every process before the OT term, so that its plan
        sees the global batch as in one process (an all-gather per layer and
        step, and every process solves the same plan), instead of each
        process aligning its own share of the batch (the default, no extra
        communication). No effect in one process.

    Examples
    --------
    >>> cfg = TrainConfig(setting="transfer-small", method="ot", epochs=2).resolved()
    >>> cfg.lr, cfg.lam, cfg.epochs, cfg.pairs
    (0.01, 1.0, 2, ['features.conv3'])
    """

    setting: str = "distill"
    method: str = "ot"
    lam: float | None = FROM_RECIPE
    lam_schedule: str = "constant"
    pairs: list[str] | None = FROM_RECIPE
    cost: str = FROM_RECIPE
    normalize: str | None = FROM_RECIPE
    ot_method: str = FROM_RECIPE
    eps: float | None = None
    spatial: str = FROM_RECIPE
    feature_scale: str = FROM_RECIPE
    epochs: int = FROM_RECIPE
    steps_per_epoch: int | None = FROM_RECIPE
    batch_size: int = FROM_RECIPE
    lr: float = FROM_RECIPE
    schedule: str = FROM_RECIPE
    weight_decay: float = FROM_RECIPE
    seed: int = 0
    device: str = "cpu"
    k: int | None = None
    val_size: float | int | None = None
    dataset: str | None = None
    arch: str = "cnn"
    student_width: float | None = None
    kd_weight: float | None = FROM_RECIPE
    temperature: float | None = FROM_RECIPE
    l2sp_weight: float | None = FROM_RECIPE
    fitnets_weight: float | None = FROM_RECIPE
    at_weight: float | None = FROM_RECIPE
    nst_weight: float | None = FROM_RECIPE
    sp_weight: float | None = FROM_RECIPE
    reg_m: float | None = None
    unlabelled: int | float | None = None
    num_threads: int | None = None
    ot_gather: bool = False
    name: str | None = None

    @classmethod
    def from_recipe(cls, setting: str, method: str = "ot", **overrides: Any) -> "TrainConfig":
        """The benchmark's config for ``setting`` and ``method``, with ``overrides``, resolved.

        Same as ``TrainConfig(setting=setting, method=method, **overrides).resolved()``:
        every field not in ``overrides`` takes the value of :func:`recipe`.
        """
        return cls.from_dict(dict(overrides, setting=setting, method=method)).resolved()

    def option_notes(self) -> list[str]:
        """Why options given here are not used as given (empty when all apply).

        One sentence per option: the weight of a term the method does not
        have, ``eps`` with the exact solver (both ignored), ``k`` in a
        full-data setting (applied, but the run departs from the setting).
        Fields left to the recipe never appear.
        """
        from otviz.data import SETTINGS
        from otviz.losses import parse_method

        terms = parse_method(self.method)
        notes = []
        for name, term in TERM_OPTIONS.items():
            v = getattr(self, name)
            if v is not FROM_RECIPE and v is not None and term not in terms:
                notes.append(f"{name}={v!r} is ignored: method {self.method!r} has no "
                             f"{_TERM_NAMES[term]} term (add '{term}' to the method to use it)")
        ot_method = self.ot_method
        if ot_method is FROM_RECIPE:
            ot_method = RECIPE_COMMON["ot_method"]
        if self.eps is not None and ot_method == "emd":
            notes.append(f"eps={self.eps!r} is ignored: ot_method 'emd' is exact OT, without entropic "
                         f"regularisation; pass ot_method 'sinkhorn' or 'unbalanced' to use eps")
        if self.reg_m is not None and ot_method != "unbalanced":
            notes.append(f"reg_m={self.reg_m!r} is ignored: it relaxes the marginals of unbalanced OT; pass "
                         f"ot_method 'unbalanced' to use it")
        if self.unlabelled is not None and not set(terms) & set(GUIDED_TERMS):
            notes.append(f"unlabelled={self.unlabelled!r} is ignored: method {self.method!r} has no "
                         f"teacher-guided term to show the unlabelled images to (one of "
                         f"{', '.join(GUIDED_TERMS)}); it trains on the labelled images")
        if self.ot_gather and "ot" not in terms:
            notes.append(f"ot_gather={self.ot_gather!r} is ignored: method {self.method!r} has no "
                         f"OT regulariser term (add 'ot' to the method to use it)")
        spec = SETTINGS.get(self.setting)
        if spec is not None and spec.default_k is None and self.k is not None:
            notes.append(f"k={self.k!r}: setting {self.setting!r} trains on the full training split; "
                         f"k keeps only {self.k} labelled images per class, so the run departs from "
                         f"the setting and its recipe")
        return notes

    def resolved(self, *, warn: bool = True) -> "TrainConfig":
        """A copy with every field left to the recipe filled from :func:`recipe`.

        Options that do not apply (:meth:`option_notes`) are set to None,
        except ``k``, which is applied; with ``warn`` each note is issued as
        an :class:`OptionWarning`.

        Raises
        ------
        ValueError
            An unknown setting or method.
        """
        rec = recipe(self.setting, self.method, arch=self.arch)
        notes = self.option_notes()
        values = {f.name: rec[f.name] if getattr(self, f.name) is FROM_RECIPE else getattr(self, f.name)
                  for f in dataclasses.fields(self)}
        for name in TERM_OPTIONS:
            if rec[name] is None:
                values[name] = None
        if values["ot_method"] == "emd":
            values["eps"] = None
        if values["reg_m"] is not None and values["ot_method"] != "unbalanced":
            values["reg_m"] = None
        if values["unlabelled"] is not None and any(n.startswith("unlabelled=") for n in notes):
            values["unlabelled"] = None
        if warn:
            for note in notes:
                warnings.warn(note, OptionWarning, stacklevel=2)
        return dataclasses.replace(self, **values)

    def given(self) -> dict[str, Any]:
        """The fields set explicitly, i.e. not left to the recipe."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not FROM_RECIPE}

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (recipe values filled in) as a JSON-serialisable dict."""
        return dataclasses.asdict(self.resolved(warn=False))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build a config from a dict, rejecting unknown keys with the valid ones listed.

        Missing keys are left to the recipe (or to the field's plain default).
        """
        from otviz._files import MAX_JSON_DEPTH
        from otviz.data import _preview
        from otviz.runs import _nesting

        if not isinstance(d, Mapping):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names, key=str)
        if unknown:
            raise ValueError(f"unknown config key(s) {_preview(unknown)}; valid keys: {sorted(names)}")
        if _nesting(d, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise ValueError(f"the config nests lists or dicts more than {MAX_JSON_DEPTH} levels deep; "
                             "its values are names, numbers and short lists")
        return cls(**dict(d))


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    run_id : int or None
        The run in the store.
    test_accuracy : float
        Accuracy of the final model on the test set (a fraction).
    train_accuracy : float
        Accuracy of the final model on its (labelled) training set.
    history : list of dict
        One row per epoch (0 = the starting point): the metrics logged at its
        end, with ``epoch`` and ``step``. With a validation part the rows hold
        ``val/accuracy`` and ``val/loss``, and only the last one
        ``test/accuracy``.
    seconds : float
        Wall time of the training, evaluations included.
    val_accuracy : float or None
        Accuracy of the final model on the validation part; None without one.
    """

    run_id: int | None
    test_accuracy: float
    train_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0
    val_accuracy: float | None = None


# --------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------
def _parse_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for p in pairs:
        if not isinstance(p, str) or not p:
            raise ValueError(f"layer pair {p!r} must be a string 'teacher_layer:student_layer' or a layer name")
        t, _, s = p.partition(":")
        out.append((t, s or t))
    return out


def _check_layers(model: nn.Module, layers: Sequence[str], side: str) -> None:
    import difflib

    names = [n for n, _ in model.named_modules() if n]
    for layer in layers:
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f"; closest: {close}" if close else ""
            valid = getattr(model, "alignable_layers", names)
            raise ValueError(f"unknown {side} layer {layer!r}{hint}; alignable layers: {list(valid)}")


#: Schedules of the OT weight (``TrainConfig.lam_schedule``).
LAM_SCHEDULES = ("constant", "linear")


def lam_factor(schedule: str, step: int, total: int) -> float:
    r"""Multiplier of :math:`\lambda` at step ``step`` (0-based) of ``total``: 1, or :math:`1 - t/T`."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - step / max(total, 1))
    raise ValueError(f"unknown lam_schedule {schedule!r}; valid choices are "
                     f"{', '.join(map(repr, LAM_SCHEDULES))}")


def _ot_terms(loss: Any) -> list[Any]:
    """The OT terms of a loss that are trained on (not the monitor that only logs the distance)."""
    terms = list(getattr(loss, "terms", [loss]))
    return [t for t in terms if getattr(t, "name", None) == "ot" and not getattr(t, "monitor", False)]


#: Largest teacher output kept for the whole training set, in bytes (:class:`_TeacherCache`).
TEACHER_CACHE_BYTES = 512 * 2**20


class _TeacherCache:
    """The frozen teacher's logits and paired-layer activations on every training image, computed once.

    The teacher is in eval mode with no gradient and the training images are a
    fixed tensor (no augmentation), so its output on an image is the same at
    every step: computing it once for the whole training split and indexing it
    per minibatch gives the per-step forward's values (to float rounding: the
    convolutions see other batch sizes) and removes the teacher's forward from
    every step, which for a 4x narrower student is most of a step's time
    (``benchmarks/bench_step.py``). Used when the whole output fits in
    :data:`TEACHER_CACHE_BYTES`; otherwise the teacher runs at every step.
    """

    def __init__(self, logits: torch.Tensor | None, feats: dict[str, torch.Tensor], template: Any) -> None:
        self.logits = logits
        self.feats = feats
        self.template = template  # the Activations of a first forward: each layer's neuron axis

    @classmethod
    def build(cls, teacher: nn.Module, X: torch.Tensor, layers: Sequence[str], device: torch.device,
              *, limit: int | None = None, chunk: int = 256) -> "_TeacherCache | None":
        """The cache, or None when it would exceed ``limit`` bytes (default
        :data:`TEACHER_CACHE_BYTES`) or the activations carry a mask."""
        limit = TEACHER_CACHE_BYTES if limit is None else limit
        with torch.no_grad():
            logits, feats = _forward(teacher, X[:1].to(device), layers)
        if getattr(feats, "mask", None) is not None:
            return None
        per_image = logits.numel() * logits.element_size() + sum(
            v.numel() * v.element_size() for v in feats.values())
        if per_image * len(X) > limit:
            return None
        all_logits, all_feats = [], {name: [] for name in layers}
        with torch.no_grad():
            for i in range(0, len(X), chunk):
                lg, ft = _forward(teacher, X[i:i + chunk].to(device), layers)
                all_logits.append(lg)
                for name in layers:
                    all_feats[name].append(ft[name])
        return cls(torch.cat(all_logits), {k: torch.cat(v) for k, v in all_feats.items()}, feats)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Logits and activations (an :class:`otviz.capture.Activations`) of the images ``idx``."""
        import copy

        idx = idx.to(self.logits.device)
        acts = copy.copy(self.template)  # same class and per-layer info, new tensors
        for name, value in self.feats.items():
            dict.__setitem__(acts, name, value[idx])
        return self.logits[idx], acts


@dataclass
class _Setup:
    config: TrainConfig
    task: Any
    teacher: nn.Module
    student: nn.Module
    loss: Any
    pairs: list[tuple[str, str]]
    device: torch.device
    probe: torch.Tensor
    from_teacher: bool  # the student starts from the teacher's weights
    order_seed: int = 0  # seed of the minibatch order (_minibatch_indices)
    unlabelled: int = 0  # unlabelled images per step (0: none)


#: The random streams of a run, each seeded from the run's seed by :func:`_stream_seed`.
_STREAMS = {"init": 1, "order": 2, "steps": 3, "unlabelled": 4}


def _stream_seed(seed: int, stream: str) -> int:
    """Seed of one random stream of a run (``"init"``: the student's weights, ``"order"``:
    the minibatch order, ``"steps"``: the global RNG from the first step on, for dropout
    and the like), derived from the run's seed with :class:`numpy.random.SeedSequence`,
    so that the streams are independent of each other and of the global RNG."""
    state = np.random.SeedSequence([int(seed), _STREAMS[stream]]).generate_state(1, np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def _minibatch_indices(n: int, batch_size: int, seed: int):
    """Endless minibatch indices into ``range(n)``: passes over the training set, each in a
    fresh random order from a generator of their own (the last batch of a pass may be
    shorter), so that nothing else a method draws can shift them."""
    gen = torch.Generator().manual_seed(int(seed))
    while True:
        order = torch.randperm(n, generator=gen)
        for pos in range(0, n, batch_size):
            yield order[pos:pos + batch_size]


def _prepare(config: TrainConfig) -> _Setup:
    """Validate the config and build task, models and loss, before any run is recorded."""
    from otviz.data import make_task
    from otviz.losses import build_loss, parse_method, probe_channels
    from otviz.models import build_model, replace_head
    from otviz.teachers import load_teacher

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config = config.resolved(warn=False)
    for name in ("epochs", "batch_size", "steps_per_epoch"):
        v = getattr(config, name)
        if name == "steps_per_epoch" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, (int, np.integer)) or config.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {config.seed!r}")
    terms = parse_method(config.method)
    for name in ("lr", "weight_decay", *TERM_OPTIONS):
        v = getattr(config, name)
        if v is None and name in TERM_OPTIONS and TERM_OPTIONS[name] not in terms:
            continue  # the weight of a term this method does not have
        positive = name in ("lr", "temperature")
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
                or (positive and v == 0)):
            raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {v!r}")
    if config.lam_schedule not in LAM_SCHEDULES:
        raise ValueError(f"unknown lam_schedule {config.lam_schedule!r}; valid choices are "
                         f"{', '.join(map(repr, LAM_SCHEDULES))}")
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {config.schedule!r}; valid choices are 'cosine', 'constant'")
    device = _resolve_device(config.device)
    task = make_task(config.setting, k="default" if config.k is None else config.k, seed=config.seed,
                     dataset=config.dataset, arch=config.arch, student_width=config.student_width,
                     val_size=config.val_size)
    if "kd" in terms and list(task.source.classes) != list(task.target.classes):
        raise ValueError(f"method 'kd' needs teacher and student to share the task (the same classes), "
                         f"but in setting {config.setting!r} the teacher learned classes "
                         f"{list(task.source.classes)} and the student learns {list(task.target.classes)}; "
                         f"use 'ot', 'fitnets', 'at', 'nst' or 'sp', which transfer through the features")
    from_teacher = task.student_init == "teacher" and "scratch" not in terms
    if any(t in terms for t in ("finetune", "l2sp")) and task.student_init != "teacher":
        raise ValueError(f"method {config.method!r} starts the student from the teacher's weights, "
                         f"which needs the teacher's architecture, but in setting {config.setting!r} "
                         f"the student is {task.student_width:g}x as wide; use 'scratch', 'kd', "
                         f"'fitnets', 'at', 'nst', 'sp' or 'ot'")

    torch.manual_seed(config.seed)  # what else draws from the global RNGs (FitNets' regressors...)
    np.random.seed(config.seed)
    teacher, _info = load_teacher(task.teacher, device=device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # the student's weights from a stream of their own, built on the CPU: the same seed gives
    # every method the same starting point, whatever was drawn before
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_stream_seed(config.seed, "init"))
        student = build_model(task.student_arch, width=task.student_width,
                              num_classes=task.source.num_classes if from_teacher else task.num_classes)
        if from_teacher:
            student.load_state_dict(teacher.state_dict())
            if task.num_classes != task.source.num_classes or not same_task_classes(task):
                replace_head(student, task.num_classes)
    student.to(device)

    pairs = _parse_pairs(config.pairs if config.pairs else default_pairs(config.arch))
    _check_layers(teacher, [t for t, _ in pairs], "teacher")
    _check_layers(student, [s for _, s in pairs], "student")
    # the fixed probe batch of the plan snapshots and scores: validation images when there are
    # some (options chosen on validation never see a test image), else test images
    probe_pool = task.target.X_val if task.target.has_validation else task.target.X_test
    probe = probe_pool[:PROBE_SIZE].to(device)
    kwargs: dict[str, Any] = dict(
        pairs=pairs, cost=config.cost, normalize=config.normalize,
        ot_method=config.ot_method, eps=config.eps, spatial=config.spatial,
        feature_scale=config.feature_scale,
    )
    if config.reg_m is not None:
        if (isinstance(config.reg_m, bool) or not isinstance(config.reg_m, (int, float))
                or not math.isfinite(config.reg_m) or config.reg_m <= 0):
            raise ValueError(f"reg_m must be a positive number (relative to the median cost), got {config.reg_m!r}")
        kwargs["reg_m"] = float(config.reg_m)
    # the weights of the method's own terms (the others are None: they do not apply)
    kwargs.update({name: getattr(config, name) for name in TERM_OPTIONS if getattr(config, name) is not None})
    if "l2sp" in terms:
        kwargs["reference"] = student
    if "fitnets" in terms:
        kwargs["teacher_channels"] = probe_channels(teacher, [t for t, _ in pairs], probe[:2])
        kwargs["student_channels"] = probe_channels(student, [s for _, s in pairs], probe[:2])
    if "nst" in terms:
        _check_maps(teacher, student, pairs, probe[:2])
    if "ot" not in terms:
        kwargs["monitor_pairs"] = pairs
    loss = build_loss(config.method, **kwargs).to(device)
    return _Setup(config, task, teacher, student, loss, pairs, device, probe, from_teacher,
                  order_seed=_stream_seed(config.seed, "order"),
                  unlabelled=_unlabelled_per_step(config, task))


def _unlabelled_per_step(config: TrainConfig, task: Any) -> int:
    """Unlabelled images per step for ``config.unlabelled`` (0 when None), checked against the task."""
    u = config.unlabelled
    if u is None:
        return 0
    if isinstance(u, bool) or not isinstance(u, (int, float)) or not math.isfinite(u) or u <= 0:
        raise ValueError(f"unlabelled must be a positive number of images per step (an int) or a multiple "
                         f"of the labelled batch (a float such as 1.0), got {u!r}")
    pool = task.target.X_unlabelled
    if pool is None or not len(pool):
        raise ValueError(f"unlabelled={u!r} needs unlabelled images, but setting {config.setting!r} "
                         f"trains on {'all its' if task.k is None else 'every one of its'} training images "
                         "with their labels; pass k (labelled images per class) to keep the rest unlabelled")
    n = int(u) if isinstance(u, int) else max(1, round(u * min(config.batch_size, len(task.target.X_train))))
    return min(n, len(pool))


def _check_maps(teacher: nn.Module, student: nn.Module, pairs: Sequence[tuple[str, str]],
                x: torch.Tensor) -> None:
    """NST compares channel maps: every paired layer must output (n, c, h, w) or (n, c, length)."""
    from otviz.capture import capture

    for model, side, layers in ((teacher, "teacher", [t for t, _ in pairs]),
                                (student, "student", [s for _, s in pairs])):
        acts = capture(model, x, layers)
        flat = [f"{name} {tuple(acts[name].shape)}" for name in layers if acts[name].ndim < 3]
        if flat:
            raise ValueError(f"method 'nst' compares each channel's map over positions, but the {side}'s "
                             f"paired layer(s) {flat} have none (dense outputs); pair convolutional "
                             f"layers, or use 'sp', 'ot' or 'fitnets'")


def same_task_classes(task: Any) -> bool:
    """Whether the student's task is the teacher's (same dataset and classes)."""
    return (list(task.source.classes) == list(task.target.classes)
            and task.source.dataset == task.target.dataset)


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------
def _forward(model: nn.Module, x: torch.Tensor, layers: Sequence[str], call: nn.Module | None = None):
    """``model``'s output and the activations of its ``layers``; ``call`` (a DDP wrapper of
    ``model``) runs the forward when given."""
    from otviz.capture import hooked

    run = model if call is None else call
    if not layers:
        return run(x), {}
    with hooked(model, list(layers)) as feats:
        out = run(x)
    return out, feats  # the Activations themselves: they know each layer's neuron axis


@torch.no_grad()
def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Accuracy and mean cross-entropy (nats) of ``model`` on ``(X, y)``, in eval mode."""
    was = model.training
    model.eval()
    correct, total_ce = 0, 0.0
    for i in range(0, len(X), 512):
        logits = model(X[i:i + 512].to(device))
        yb = y[i:i + 512].to(logits.device)
        correct += int((logits.argmax(1) == yb).sum())
        total_ce += float(torch.nn.functional.cross_entropy(logits.float(), yb, reduction="sum"))
    model.train(was)
    n = max(len(X), 1)
    return correct / n, total_ce / n


def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    return _evaluate(model, X, y, device)[0]


COST_SNAPSHOT_PREFIX = "cost/"
"""Snapshot key prefix of the cost matrices: ``"cost/" + pair`` beside the plan ``pair``."""


def _snapshot_plans(s: _Setup) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Plans, their cost matrices and the OT scores of every pair on the fixed probe batch.

    The plans use the regulariser's options (cost, normalisation, solver) and
    are keyed by the pair, the cost matrix each plan solved by ``cost/<pair>``;
    the scores (:attr:`otviz.Alignment.score`) use the same solver on the same
    neurons, in the score's own scale-free geometry, so that runs of every
    method and option can be compared on them (:func:`otviz.loop.probe_alignments`).
    """
    from otviz.losses import OTRegularizer
    from otviz.loop import probe_alignments

    reg = OTRegularizer(s.pairs, weight=1.0, cost=s.config.cost, normalize=s.config.normalize,
                        method=s.config.ot_method, eps=s.config.eps, spatial=s.config.spatial,
                        feature_scale=s.config.feature_scale, warm_start=False)
    found = probe_alignments(s.teacher, s.student, s.probe, reg)
    plans: dict[str, np.ndarray] = {}
    for key, plan in found.items():
        plans[key] = plan
        plans[COST_SNAPSHOT_PREFIX + key] = found.costs[key]
    return plans, dict(found.scores)


def train(config: TrainConfig | Mapping[str, Any], *, store: Any = None, progress: bool = True,
          run_id_file: str | os.PathLike[str] | None = None,
          on_epoch: Callable[[int, Mapping[str, float]], None] | None = None) -> TrainResult:
    """Train a student under a transfer method, logging everything to the run store.

    Parameters
    ----------
    config : TrainConfig or dict
    store : RunStore, path, or None
        Where to log; ``None`` uses the default store
        (:func:`otviz.runs.default_store_path`, overridable with ``OTVIZ_STORE``).
    progress : bool
        Show a tqdm progress bar on stderr.
    run_id_file : path, optional
        Write the run id there as soon as the run exists (used by :func:`launch`).
    on_epoch : callable, optional
        ``on_epoch(epoch, row)``, called after each epoch's evaluation (epoch 0,
        the starting point, included) with the metrics just logged (``row``
        holds ``val/accuracy`` when the task has a validation part). Raising
        :class:`StopTraining` in it ends the run there: the run is recorded as
        ``interrupted`` with the reason, and :func:`train` raises the
        :class:`StopTraining` again, with ``run_id`` and ``history`` set. This is
        how ``otviz sweep`` prunes a trial (:mod:`otviz.sweep`). Called on the
        process that records only (rank 0 of a distributed training).

    Returns
    -------
    TrainResult

    Warns
    -----
    OptionWarning
        For each option given that the method does not use (see
        :meth:`TrainConfig.option_notes`); it is ignored and stored as None.

    Raises
    ------
    ValueError
        For an invalid config (unknown setting, method, layer, device...),
        before any run is recorded.
    TrainingError
        When the loss becomes NaN or infinite; the run is marked ``failed``
        with the step where it happened, and every metric logged before
        stays in the store.

    Notes
    -----
    Started by ``torchrun`` (``WORLD_SIZE > 1`` in the environment; ``otviz
    train --nproc N`` starts it), every process runs this function and they
    train one student with DistributedDataParallel: ``batch_size`` is the
    global batch, split among the processes; only rank 0 opens the store,
    records the run (with ``world_size`` and ``backend`` in its config) and
    evaluates; every process returns the same result. See
    :mod:`otviz._distributed`.
    """
    from otviz import _distributed

    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    config = config.resolved()  # the recipe fills what is not given; warns about options that do not apply
    if not isinstance(config.ot_gather, bool):
        raise ValueError(f"ot_gather must be True or False, got {config.ot_gather!r}")
    _resolve_device(config.device)
    dctx = _distributed.init(config.device)  # joins torchrun's process group; nothing in one process
    try:
        with _thread_limits(config.num_threads):
            result = _train(config, dctx, store=store, progress=progress, run_id_file=run_id_file,
                            on_epoch=on_epoch)
    except BaseException:
        dctx.close()
        raise
    dctx.close(barrier=True)  # every rank finished: leave the group together
    return result


def _thread_limits(num_threads: int | None) -> Any:
    """With ``num_threads``, the BLAS and OpenMP pools (NumPy's OpenBLAS, which POT's solvers
    use) are limited to it for the training, as torch's are: two trainings side by side on two
    cores otherwise each start a BLAS thread per core, and both run about 3x slower
    (benchmarks/results/sweep.md)."""
    if not num_threads:
        return contextlib.nullcontext()
    import ot  # noqa: F401 - loads its OpenMP runtime now: threadpoolctl limits the loaded ones
    import scipy.linalg  # noqa: F401 - and SciPy's BLAS
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(num_threads))


def _train(config: TrainConfig, dctx: Any, *, store: Any, progress: bool,
           run_id_file: str | os.PathLike[str] | None,
           on_epoch: Callable[[int, Mapping[str, float]], None] | None = None) -> TrainResult:
    """:func:`train` in this process, one of ``dctx.world_size`` (a :class:`otviz._distributed.DistContext`)."""
    from tqdm.auto import tqdm

    from otviz import _distributed
    from otviz.losses import StepContext
    from otviz.runs import RunStore

    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    s = _prepare(dataclasses.replace(config, device=dctx.device) if dctx.active else config)
    if dctx.active:  # batch statistics over the global batch, as in one process
        s.student = _distributed.convert_sync_batchnorm(s.student, dctx.device)
    if store is None or isinstance(store, (str, os.PathLike)):
        path = store
        open_store = lambda: RunStore(path)  # noqa: E731 - on rank 0 only
    else:
        open_store = lambda: store  # noqa: E731
    task, device = s.task, s.device
    X, y = task.target.X_train, task.target.y_train
    n = len(X)
    bs = min(config.batch_size, n)
    steps_per_epoch = config.steps_per_epoch or math.ceil(n / bs)
    total = steps_per_epoch * config.epochs
    params = list(s.student.parameters()) + list(s.loss.extra_parameters())
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
             if config.schedule == "cosine" else None)
    batches = _minibatch_indices(n, bs, s.order_seed)  # the global batches; each rank keeps its share
    model = dctx.wrap(s.student, s.loss.extra_parameters())  # DDP over the ranks, or the student
    needs_teacher = s.loss.needs_teacher
    t_layers = list(s.loss.teacher_layers)
    s_layers = list(s.loss.student_layers)
    ot_terms = _ot_terms(s.loss)
    base_lam = [t.weight for t in ot_terms]
    if config.ot_gather:
        dctx.gather_features(ot_terms)  # the OT plans see the global batch
    # the unlabelled images of the semi-supervised variant: indices n.. of X_all, drawn per step
    # from a stream of their own (the labelled batches are the same with or without them)
    if s.unlabelled and dctx.active:
        raise ValueError("unlabelled is not supported in a training over several processes yet; "
                         "train in one process (no --nproc)")
    X_all = torch.cat([X, task.target.X_unlabelled]) if s.unlabelled else X
    u_batches = (_minibatch_indices(len(X_all) - n, s.unlabelled, _stream_seed(config.seed, "unlabelled"))
                 if s.unlabelled else None)
    cache = _TeacherCache.build(s.teacher, X_all, t_layers, device) if needs_teacher else None
    run_config = dict(config.to_dict(), teacher=task.teacher, student_width=task.student_width,
                      student_init="teacher" if s.from_teacher else "scratch",
                      k=task.k, n_train=n, n_test=len(task.target.X_test),
                      n_unlabelled=len(X_all) - n if s.unlabelled else None,
                      n_val=len(task.target.X_val) if task.target.has_validation else None,
                      world_size=dctx.world_size, backend=dctx.backend)
    history: list[dict[str, float]] = []

    def log_epoch(epoch: int, step: int, final: bool) -> dict[str, float]:
        # rank 0 evaluates and logs; the other ranks receive its row
        row = dctx.from_main(lambda: _log_epoch(s, rec, epoch=epoch, step=step, history=history,
                                                final=final))
        if not dctx.is_main:
            history.append(dict(row, epoch=epoch, step=step))
        elif on_epoch is not None:
            on_epoch(epoch, dict(row))
        return row

    t_start = time.perf_counter()
    stopped: StopTraining | None = None
    with _distributed.track(dctx, open_store, run_config, name=config.name, total_steps=total) as rec:
        if run_id_file is not None and dctx.is_main:
            Path(run_id_file).write_text(str(rec.run_id))
        step = 0
        bar = tqdm(total=total, disable=not progress or not dctx.is_main,
                   desc=f"{config.setting}/{config.method}", unit="step", leave=False)
        try:
            # epoch 0: the starting point
            log_epoch(0, 0, False)
            # what the steps draw from the global RNG (dropout...) starts from the same state
            # for every method, whatever the set-up drew (FitNets' regressors...); rank r > 0 of
            # a training over several processes from its own state
            torch.manual_seed(_stream_seed(config.seed, "steps") + dctx.rank)
            s.student.train()
            for epoch in range(1, config.epochs + 1):
                for _ in range(steps_per_epoch):
                    idx = dctx.shard(next(batches))
                    yb = y[idx].to(device)
                    if u_batches is not None:  # labelled first, then the unlabelled ones
                        idx = torch.cat([idx, next(u_batches) + n])
                    xb = X_all[idx].to(device)
                    if cache is not None:
                        t_logits, t_feats = cache.batch(idx)
                    elif needs_teacher:
                        with torch.no_grad():
                            t_logits, t_feats = _forward(s.teacher, xb, t_layers)
                    else:
                        t_logits, t_feats = None, {}
                    s_logits, s_feats = _forward(s.student, xb, s_layers, call=model)
                    factor = lam_factor(config.lam_schedule, step, total)
                    for term, lam in zip(ot_terms, base_lam):
                        term.weight = lam * factor
                    ctx = StepContext(inputs=xb, targets=yb, student_logits=s_logits,
                                      teacher_logits=t_logits, student_features=s_feats,
                                      teacher_features=t_feats, student=s.student, step=step,
                                      labelled=len(yb) if u_batches is not None else None)
                    loss = s.loss(ctx)
                    step += 1
                    values = {k: float(v) for k, v in s.loss.diagnostics().items()
                              if isinstance(v, (int, float))}
                    values["loss/total"] = float(loss.detach())
                    values = dctx.mean(values)  # over the ranks: each logged value is the global batch's
                    if not math.isfinite(values["loss/total"]):  # seen by every rank at the same step
                        msg = (f"loss became {values['loss/total']} at step {step} (epoch {epoch}); "
                               f"lower lr or lam, or check the inputs")
                        rec.finish("failed", msg)
                        raise TrainingError(msg)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    metrics = {k: v for k, v in values.items() if math.isfinite(v)}
                    rec.log(metrics, step=step, epoch=epoch)
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss/total']:.3f}")
                row = log_epoch(epoch, step, epoch == config.epochs)
                split = "val" if task.target.has_validation else "test"
                rec.progress(step=step, total_steps=total, epoch=epoch,
                             message=f"epoch {epoch}/{config.epochs}: {split} accuracy "
                                     f"{row[f'{split}/accuracy']:.3f}")
                bar.set_postfix({f"{split}_acc": f"{row[f'{split}/accuracy']:.3f}"})
        except StopTraining as exc:  # asked by on_epoch: the run ends here, recorded as stopped
            if dctx.active:
                raise TypeError("on_epoch cannot stop a training over several processes") from exc
            rec.finish("interrupted", f"stopped early: {exc.reason}")
            stopped = exc
        finally:
            bar.close()
        run_id = rec.run_id
    if stopped is not None:
        stopped.run_id, stopped.history = run_id, history
        raise stopped
    last = history[-1]
    return TrainResult(run_id=run_id, test_accuracy=last["test/accuracy"],
                       train_accuracy=last["train/accuracy"], history=history,
                       seconds=time.perf_counter() - t_start, val_accuracy=last.get("val/accuracy"))


def _log_epoch(s: _Setup, rec: Any, *, epoch: int, step: int, history: list,
               final: bool) -> dict[str, float]:
    """Evaluate and log the end of an epoch: train accuracy, then the validation accuracy and
    loss when the task has a validation part (the test accuracy only at the ``final`` one),
    else the test accuracy; OT scores and plans on the probe batch."""
    target = s.task.target
    row = {"train/accuracy": _accuracy(s.student, target.X_train, target.y_train, s.device)}
    if target.has_validation:
        row["val/accuracy"], row["val/loss"] = _evaluate(s.student, target.X_val, target.y_val, s.device)
    if final or not target.has_validation:
        row["test/accuracy"] = _accuracy(s.student, target.X_test, target.y_test, s.device)
    plans, scores = _snapshot_plans(s)
    for key, plan in plans.items():
        rec.snapshot(key, plan, epoch=epoch, step=step)
    row.update({f"score/{key}": value for key, value in scores.items()})
    rec.log(row, step=step, epoch=epoch)
    history.append(dict(row, epoch=epoch, step=step))
    return row


# --------------------------------------------------------------------------
# separate processes
# --------------------------------------------------------------------------
@dataclass
class LaunchedRun:
    """A training running in its own process (see :func:`launch`).

    ``log`` is an anonymous temporary file (no name on disk) holding the process's
    standard output and error; :meth:`output` reads it.
    """

    process: subprocess.Popen
    run_id: int
    log: Any = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self, limit: int | None = None) -> str:
        """What the process printed so far (its last ``limit`` characters, if given)."""
        return _read_log(self.log, limit)


def _read_log(log: Any, limit: int | None = None) -> str:
    try:
        log.flush()
        with open(os.dup(log.fileno()), "rb") as fh:  # own offset: the child keeps appending
            fh.seek(0)
            text = fh.read().decode(errors="replace")
    except (OSError, ValueError):  # closed
        return ""
    return text if limit is None else text[-limit:]


def launch(config: TrainConfig | Mapping[str, Any], *, store_path: str | os.PathLike[str],
           timeout: float = 120.0) -> LaunchedRun:
    """Start :func:`train` in its own process and return once its run exists.

    The child runs ``python -m otviz train --config-json ... --store ...`` in a
    new session, so a closed browser tab, a Streamlit rerun or the dashboard's
    own exit does not stop it; it talks to the caller only through the run
    store. The config is validated here first, so an invalid one raises
    ``ValueError`` at once instead of failing in the child.

    Nothing is left on disk: the child's output goes to an anonymous temporary
    file (:attr:`LaunchedRun.log`), and the ``otviz-run-*`` folder through which
    the child tells its run id is removed as soon as the id is read (or the start
    failed).

    Raises
    ------
    RuntimeError
        If the child exits or creates no run within ``timeout`` seconds; the
        message includes the end of its log.
    """
    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    _validate_quick(config)
    config = config.resolved()  # warns here, in the caller, about options that do not apply
    log = tempfile.TemporaryFile(prefix="otviz-train-log-")
    tmp = Path(tempfile.mkdtemp(prefix="otviz-run-"))
    try:
        id_file = tmp / "run_id"
        cmd = [sys.executable, "-m", "otviz", "train", "--config-json", json.dumps(config.to_dict()),
               "--store", str(store_path), "--run-id-file", str(id_file), "--no-progress"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = id_file.read_text().strip() if id_file.exists() else ""
            if text.isdigit():
                return LaunchedRun(proc, int(text), log)
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tail = _read_log(log, 2000)
        log.close()
        raise RuntimeError(f"the training process did not start a run (exit code {proc.poll()}):\n{tail}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _validate_quick(config: TrainConfig) -> None:
    """Cheap checks of names, so that launch() fails fast in the caller."""
    from otviz.data import SETTINGS
    from otviz.losses import parse_method

    if config.setting not in SETTINGS:
        raise ValueError(f"unknown setting {config.setting!r}; valid settings: {list(SETTINGS)}")
    parse_method(config.method)
    _resolve_device(config.device)
    v = config.val_size
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                          or (isinstance(v, int) and v < 1)
                          or (isinstance(v, float) and not 0.0 < v < 1.0)):
        raise ValueError(f"val_size must be None, a fraction strictly between 0 and 1 (e.g. 0.2) or a "
                         f"positive number of images, got {v!r}")


def stop(run: LaunchedRun | int) -> None:
    """Stop a launched training (SIGTERM); the run store marks the run ``interrupted``.

    A :class:`LaunchedRun` is signalled only while its process has not been waited for
    (its id cannot have been reused). An ``int`` is a process id, signalled as given:
    to stop a run from its store row, use :meth:`otviz.runs.RunStore.stop_run`, which
    checks that the process is that run's training first.
    """
    if isinstance(run, LaunchedRun):
        if run.process.poll() is None:
            try:
                run.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        return
    try:
        os.kill(int(run), signal.SIGTERM)
    except ProcessLookupError:
        pass
