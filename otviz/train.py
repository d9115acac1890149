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

Every option not given comes from the benchmark's recipe for the setting and
method (:func:`recipe`, :data:`RECIPES`), the options ``benchmarks/bench_transfer.py``
measured: ``TrainConfig(setting="transfer-small", method="ot")`` reproduces that
benchmark row.

Run it from Python (:func:`train`), from the command line (``otviz train``), or
in its own process (:func:`launch`, used by the dashboard).
"""

from __future__ import annotations

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
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

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

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "OptionWarning", "LaunchedRun", "train", "launch",
           "stop", "default_pairs", "recipe", "recipe_table", "RECIPES", "RECIPE_COMMON", "FROM_RECIPE"]

PROBE_SIZE = 128  # inputs of the fixed probe batch used for the per-epoch plan snapshots


class TrainingError(RuntimeError):
    """A training that cannot go on (e.g. the loss became NaN); the run is marked failed."""


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
        regressors), minibatches drawn with the seed. Recipe: see
        :data:`RECIPES` (the learning rate differs per setting).
    schedule : {"cosine", "constant"}
        Learning-rate schedule over all steps: cosine decay to zero (the
        recipe; the final accuracy then does not depend on where the last
        step happened to land) or a constant rate.
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
    num_threads : int, optional
        ``torch.set_num_threads`` for this run (small models on few cores are
        often faster with 1).

    Examples
    --------
    >>> cfg = TrainConfig(setting="transfer-small", method="ot", epochs=2).resolved()
    >>> cfg.lr, cfg.lam, cfg.epochs, cfg.pairs
    (0.01, 1.0, 2, ['features.conv3'])
    """

    setting: str = "distill"
    method: str = "ot"
    lam: float | None = FROM_RECIPE
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
    num_threads: int | None = None
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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(d))


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    run_id: int | None
    test_accuracy: float
    train_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0


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


def _resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


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
    terms = parse_method(config.method)
    for name in ("lr", "weight_decay", *TERM_OPTIONS):
        v = getattr(config, name)
        if v is None and name in TERM_OPTIONS and TERM_OPTIONS[name] not in terms:
            continue  # the weight of a term this method does not have
        positive = name in ("lr", "temperature")
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
                or (positive and v == 0)):
            raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {v!r}")
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {config.schedule!r}; valid choices are 'cosine', 'constant'")
    device = _resolve_device(config.device)
    task = make_task(config.setting, k="default" if config.k is None else config.k, seed=config.seed,
                     dataset=config.dataset, arch=config.arch, student_width=config.student_width)
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

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    teacher, _info = load_teacher(task.teacher, device=device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
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
    probe = task.target.X_test[:PROBE_SIZE].to(device)
    kwargs: dict[str, Any] = dict(
        pairs=pairs, cost=config.cost, normalize=config.normalize,
        ot_method=config.ot_method, eps=config.eps, spatial=config.spatial,
        feature_scale=config.feature_scale,
    )
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
    return _Setup(config, task, teacher, student, loss, pairs, device, probe, from_teacher)


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
def _forward(model: nn.Module, x: torch.Tensor, layers: Sequence[str]):
    from otviz.capture import hooked

    if not layers:
        return model(x), {}
    with hooked(model, list(layers)) as feats:
        out = model(x)
    return out, feats  # the Activations themselves: they know each layer's neuron axis


@torch.no_grad()
def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(X), 512):
        correct += int((model(X[i:i + 512].to(device)).argmax(1).cpu() == y[i:i + 512]).sum())
    model.train(was)
    return correct / max(len(X), 1)


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
          run_id_file: str | os.PathLike[str] | None = None) -> TrainResult:
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
    """
    from tqdm.auto import tqdm

    from otviz.losses import StepContext
    from otviz.runs import RunStore

    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    config = config.resolved()  # the recipe fills what is not given; warns about options that do not apply
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    s = _prepare(config)
    if store is None or isinstance(store, (str, os.PathLike)):
        store = RunStore(store)
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
    gen = torch.Generator().manual_seed(config.seed)
    needs_teacher = s.loss.needs_teacher
    t_layers = list(s.loss.teacher_layers)
    s_layers = list(s.loss.student_layers)
    run_config = dict(config.to_dict(), teacher=task.teacher, student_width=task.student_width,
                      student_init="teacher" if s.from_teacher else "scratch",
                      k=task.k, n_train=n, n_test=len(task.target.X_test))
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    with store.track(run_config, name=config.name, total_steps=total) as rec:
        if run_id_file is not None:
            Path(run_id_file).write_text(str(rec.run_id))
        step = 0
        bar = tqdm(total=total, disable=not progress, desc=f"{config.setting}/{config.method}",
                   unit="step", leave=False)
        try:
            # epoch 0: the starting point
            _log_epoch(s, rec, epoch=0, step=0, history=history)
            s.student.train()
            order = torch.randperm(n, generator=gen)
            pos = 0
            for epoch in range(1, config.epochs + 1):
                for _ in range(steps_per_epoch):
                    if pos >= n:
                        order = torch.randperm(n, generator=gen)
                        pos = 0
                    idx = order[pos:pos + bs]
                    pos += bs
                    xb, yb = X[idx].to(device), y[idx].to(device)
                    if needs_teacher:
                        with torch.no_grad():
                            t_logits, t_feats = _forward(s.teacher, xb, t_layers)
                    else:
                        t_logits, t_feats = None, {}
                    s_logits, s_feats = _forward(s.student, xb, s_layers)
                    ctx = StepContext(inputs=xb, targets=yb, student_logits=s_logits,
                                      teacher_logits=t_logits, student_features=s_feats,
                                      teacher_features=t_feats, student=s.student, step=step)
                    loss = s.loss(ctx)
                    step += 1
                    if not bool(torch.isfinite(loss.detach())):
                        msg = (f"loss became {loss.item()} at step {step} (epoch {epoch}); "
                               f"lower lr or lam, or check the inputs")
                        rec.finish("failed", msg)
                        raise TrainingError(msg)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    metrics = {k: float(v) for k, v in s.loss.diagnostics().items()
                               if isinstance(v, (int, float)) and math.isfinite(float(v))}
                    metrics["loss/total"] = float(loss.detach())
                    rec.log(metrics, step=step, epoch=epoch)
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss/total']:.3f}")
                row = _log_epoch(s, rec, epoch=epoch, step=step, history=history)
                rec.progress(step=step, total_steps=total, epoch=epoch,
                             message=f"epoch {epoch}/{config.epochs}: test accuracy {row['test/accuracy']:.3f}")
                bar.set_postfix(test_acc=f"{row['test/accuracy']:.3f}")
        finally:
            bar.close()
        run_id = rec.run_id
    last = history[-1]
    return TrainResult(run_id=run_id, test_accuracy=last["test/accuracy"],
                       train_accuracy=last["train/accuracy"], history=history,
                       seconds=time.perf_counter() - t_start)


def _log_epoch(s: _Setup, rec: Any, *, epoch: int, step: int, history: list) -> dict[str, float]:
    task = s.task
    row = {
        "train/accuracy": _accuracy(s.student, task.target.X_train, task.target.y_train, s.device),
        "test/accuracy": _accuracy(s.student, task.target.X_test, task.target.y_test, s.device),
    }
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
