r"""The settings, the methods and the recipe of every training: plain data, without torch.

What a training *is* before anything runs: the named settings of the paper
(:data:`SETTINGS`), the method names (:data:`METHODS`, :func:`parse_method`),
the benchmark's recipe of each setting and method (:func:`recipe`) and the
default layer pairs of each model family (:func:`default_pairs`). Nothing here
imports torch, numpy or pandas, so the dashboard's Train form, ``otviz train
--help`` and configuration checks answer without loading them.

The public names stay where they are documented: ``otviz.data.SETTINGS``,
``otviz.losses.parse_method``, ``otviz.train.recipe``, ... are these objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SettingSpec", "SETTINGS", "describe_settings", "METHODS", "parse_method", "ALIGNABLE_LAYERS",
           "default_pairs", "RECIPES", "BENCHMARKED_SETTINGS", "RECIPE_COMMON", "TERM_OPTIONS",
           "recipe", "recipe_table"]


# --------------------------------------------------------------------------
# the named settings
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class SettingSpec:
    """Definition of a named setting (one row of :data:`SETTINGS`).

    Attributes
    ----------
    name : str
        Setting name used on the command line.
    description : str
        One-line description.
    source_classes : tuple of int
        Classes of the teacher's (source) task.
    target_classes : tuple of int
        Original labels of the student's (target) classes; they are relabelled
        ``0..len-1`` in this order.
    default_k : int or None
        Default labelled training images per target class (None: the full
        training split).
    student_width : float
        Width multiplier of the student relative to the teacher (1.0 = same
        architecture).
    student_init : {"teacher", "scratch"}
        ``"teacher"``: the student starts from the teacher's weights with a
        new head (needs ``student_width == 1``); ``"scratch"``: random
        initialisation.
    datasets : tuple of str
        Source datasets the setting accepts; the first is the default.
    target_dataset : str or None
        Dataset of the target task if it differs from the source dataset
        (its images are resized to the source resolution).
    """

    name: str
    description: str
    source_classes: tuple[int, ...]
    target_classes: tuple[int, ...]
    default_k: int | None
    student_width: float
    student_init: str
    datasets: tuple[str, ...] = ("mnist5k", "digits")
    target_dataset: str | None = None


_LOW = tuple(range(5))
_HIGH = tuple(range(5, 10))
_ALL = tuple(range(10))

#: The named settings: name -> :class:`SettingSpec`.
SETTINGS: dict[str, SettingSpec] = {
    s.name: s
    for s in (
        SettingSpec(
            "transfer",
            "inductive transfer: teacher learned digits 0-4; a student of the same CNN starts "
            "from its weights (new head) and learns digits 5-9 from k labels per class",
            _LOW, _HIGH, 10, 1.0, "teacher",
        ),
        SettingSpec(
            "distill",
            "knowledge distillation: teacher learned all 10 digits; a 4x narrower CNN student "
            "learns the same task from scratch on the full training split",
            _ALL, _ALL, None, 0.25, "scratch",
        ),
        SettingSpec(
            "transfer-small",
            "simpler student, new task: teacher learned digits 0-4; a 4x narrower CNN student "
            "learns digits 5-9 from scratch with k labels per class",
            _LOW, _HIGH, 10, 0.25, "scratch",
        ),
        SettingSpec(
            "transfer-digits",
            "cross-dataset transfer: teacher learned all 10 MNIST digits; a student of the same "
            "CNN starts from its weights (new head) and learns scikit-learn's 8x8 digits, "
            "upsampled to 28x28, from k labels per class",
            _ALL, _ALL, 10, 1.0, "teacher",
            datasets=("mnist5k",), target_dataset="digits",
        ),
    )
}


def describe_settings() -> str:
    """The settings with their one-line descriptions, one per line."""
    return "\n".join(f"{name}: {spec.description}" for name, spec in SETTINGS.items())


# --------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------
#: Names accepted by :func:`otviz.losses.build_loss` (alone, or joined with ``"+"``).
METHODS: tuple[str, ...] = ("scratch", "finetune", "l2sp", "kd", "fitnets", "at", "nst", "sp", "ot")


def parse_method(method: str) -> tuple[str, ...]:
    """Split a method string such as ``"kd+ot"`` into validated names.

    Raises
    ------
    ValueError
        An unknown name (the message lists the valid ones), a repeated name,
        or ``"scratch"`` together with ``"finetune"``.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string such as 'kd+ot', got {type(method).__name__}.")
    parts = tuple(p.strip().lower() for p in method.split("+"))
    if not method.strip() or any(not p for p in parts):
        raise ValueError(
            f"Cannot read method={method!r}. Pass one of {list(METHODS)}, or several joined "
            "with '+', e.g. 'kd+ot'."
        )
    unknown = [p for p in parts if p not in METHODS]
    if unknown:
        raise ValueError(
            f"Unknown method {unknown[0]!r} in {method!r}. Valid methods: {list(METHODS)}; "
            "combine them with '+', e.g. 'kd+ot'."
        )
    dup = sorted({p for p in parts if parts.count(p) > 1})
    if dup:
        raise ValueError(f"method={method!r} names {dup} more than once; list each method once.")
    if "scratch" in parts and "finetune" in parts:
        raise ValueError(
            "method combines 'scratch' and 'finetune', which are contradictory initialisations; "
            "keep one."
        )
    return parts


# --------------------------------------------------------------------------
# layer pairs
# --------------------------------------------------------------------------
#: Alignable layers of each model family of :data:`otviz.models.MODELS`, in forward order
#: (the models' ``alignable_layers``; a test checks that the two agree).
ALIGNABLE_LAYERS: dict[str, tuple[str, ...]] = {
    "cnn": ("features.conv1", "features.conv2", "features.conv3"),
    "mlp": ("features.fc1", "features.fc2"),
}


def default_pairs(arch: str) -> list[str]:
    """Default layer pairs of an architecture: all its alignable layers, same name on both sides.

    Raises
    ------
    ValueError
        An unknown architecture (the message lists the families).
    """
    if isinstance(arch, str) and arch in ALIGNABLE_LAYERS:
        return list(ALIGNABLE_LAYERS[arch])
    from otviz.models import build_model  # a family registered later: ask the model itself

    return list(build_model(arch).alignable_layers)


# --------------------------------------------------------------------------
# the benchmark's recipe: the defaults of every training
# --------------------------------------------------------------------------
#: The budget and the OT weight per setting: what ``benchmarks/bench_transfer.py`` runs
#: (results in ``benchmarks/README.md`` and ``benchmarks/results/``). ``steps_per_epoch``
#: None is one pass over the training set. ``transfer-digits`` is not benchmarked: it
#: takes ``transfer``'s recipe (same student, initialised from the teacher, 10 labels
#: per class).
RECIPES: dict[str, dict[str, Any]] = {
    "transfer": dict(epochs=8, steps_per_epoch=15, batch_size=64, lr=1e-3, lam=0.1),
    "distill": dict(epochs=5, steps_per_epoch=None, batch_size=64, lr=1e-2, lam=1.0),
    "transfer-small": dict(epochs=8, steps_per_epoch=15, batch_size=64, lr=1e-2, lam=1.0),
    "transfer-digits": dict(epochs=8, steps_per_epoch=15, batch_size=64, lr=1e-3, lam=0.1),
}

#: Settings whose recipe the benchmark measured (the others borrow one).
BENCHMARKED_SETTINGS: tuple[str, ...] = ("transfer", "distill", "transfer-small")

#: Options shared by every setting's recipe, chosen by the tuning recorded in
#: ``benchmarks/README.md``: the OT term (and the logged OT distance) on the last
#: alignable layer (``"last"``; ``features.conv3`` for the CNN), neurons standardised
#: (cost 2(1 - correlation) per response), exact OT; Adam with cosine decay; the
#: baselines' usual weights, except attention transfer's (100 instead of 1000, far
#: better on these small maps) and neuron selectivity transfer's (15 instead of the
#: CIFAR benchmarks' 50: at 50 the squared-MMD term starts at 3x the cross-entropy and
#: the 4x narrower student of ``transfer-small`` fits only 72-84 % of its 50 training
#: images in the recipe's 120 steps, against 100 % from scratch; at 15 the term starts
#: at about the cross-entropy's size and the student fits 98 %). Similarity-preserving
#: distillation keeps the paper's 3000 (its term starts at 1.7x the cross-entropy).
RECIPE_COMMON: dict[str, Any] = dict(
    schedule="cosine", weight_decay=0.0,
    pairs="last", cost="sqeuclidean", normalize="standardize", ot_method="emd", spatial="flatten",
    feature_scale="mean",
    kd_weight=1.0, temperature=4.0, l2sp_weight=0.01, fitnets_weight=1.0, at_weight=100.0,
    nst_weight=15.0, sp_weight=3000.0,
)

#: Options that weight one term of the objective: name -> the method that has that term.
TERM_OPTIONS: dict[str, str] = dict(lam="ot", kd_weight="kd", temperature="kd", l2sp_weight="l2sp",
                                    fitnets_weight="fitnets", at_weight="at", nst_weight="nst",
                                    sp_weight="sp")

_TERM_NAMES = {"ot": "OT", "kd": "KD", "l2sp": "L2-SP", "fitnets": "FitNets", "at": "attention-transfer",
               "nst": "NST", "sp": "SP"}


def recipe(setting: str, method: str = "ot", *, arch: str = "cnn") -> dict[str, Any]:
    r"""The benchmark's options for a setting and method: the defaults of every training.

    ``otviz train --setting S --method M``, ``TrainConfig(setting=S, method=M)``,
    the dashboard's Train form and ``benchmarks/bench_transfer.py`` all start
    from this dict; any option given explicitly replaces its entry.

    It is :data:`RECIPES` ``[setting]`` (budget, learning rate and the OT
    weight :math:`\lambda`) merged with :data:`RECIPE_COMMON`, with
    ``pairs="last"`` resolved to the architecture's last alignable layer. The
    weight of a term the method does not have (``lam`` without ``ot``,
    ``kd_weight`` and ``temperature`` without ``kd``, ...; see
    :data:`TERM_OPTIONS`) is None: it does not apply. The OT options (``pairs``,
    ``cost``, ``normalize``, ``ot_method``, ``spatial``) apply to every method:
    without an OT term they define the OT distance that is logged, not trained on.

    Parameters
    ----------
    setting : str
        A key of :data:`otviz.data.SETTINGS`.
    method : str
        A method such as ``"ot"``, ``"scratch"`` or ``"kd+ot"``.
    arch : {"cnn", "mlp"}
        Model family (fixes the layer pairs). The benchmark measured the CNN.

    Returns
    -------
    dict
        Field name -> value for the :class:`TrainConfig` fields that default
        to the recipe.

    Raises
    ------
    ValueError
        An unknown setting or method (the message lists the valid ones).

    Examples
    --------
    >>> r = recipe("transfer-small", "ot")
    >>> r["lr"], r["lam"], r["epochs"], r["steps_per_epoch"], r["pairs"]
    (0.01, 1.0, 8, 15, ['features.conv3'])
    >>> recipe("distill", "kd")["lam"] is None
    True
    """
    if not isinstance(setting, str) or setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; valid settings: {list(SETTINGS)}")
    terms = parse_method(method)
    out = dict(RECIPE_COMMON, **RECIPES[setting])
    if out["pairs"] == "last":
        out["pairs"] = default_pairs(arch)[-1:]
    for name, term in TERM_OPTIONS.items():
        if term not in terms:
            out[name] = None
    return out


def recipe_table(markdown: bool = False) -> str:
    r"""The recipe of every setting as a small table (``otviz train --help``, the README).

    One row per setting (budget, batch size, learning rate, :math:`\lambda`)
    and one line for the options every setting shares; generated from
    :data:`RECIPES` and :data:`RECIPE_COMMON`, so it cannot drift from them.
    """
    rows = []
    for name in SETTINGS:
        r = RECIPES[name]
        steps = "one pass" if r["steps_per_epoch"] is None else f"{r['steps_per_epoch']} steps"
        note = "" if name in BENCHMARKED_SETTINGS else "not benchmarked (transfer's recipe)"
        rows.append((name, f"{r['epochs']} x {steps}", str(r["batch_size"]), f"{r['lr']:g}",
                     f"{r['lam']:g}", note))
    head = ("setting", "epochs x steps", "batch", "lr", "lam (ot)", "")
    c = RECIPE_COMMON
    common = (f"pairs = the last alignable layer (features.conv3 for the CNN), normalize {c['normalize']}, "
              f"cost {c['cost']}, ot-method {c['ot_method']}, spatial {c['spatial']}, "
              f"schedule {c['schedule']} (Adam); kd-weight {c['kd_weight']:g} and temperature "
              f"{c['temperature']:g} (kd), l2sp-weight {c['l2sp_weight']:g}, fitnets-weight "
              f"{c['fitnets_weight']:g}, at-weight {c['at_weight']:g}, nst-weight {c['nst_weight']:g}, "
              f"sp-weight {c['sp_weight']:g}")
    if markdown:
        lines = ["| " + " | ".join(head[:-1]) + " | note |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(f"`{r[0]}`" if i == 0 else r[i] for i in range(len(r))) + " |"
                  for r in rows]
        return "\n".join(lines) + "\n\nEvery setting: " + common + "."
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head).rstrip()] + [fmt.format(*r).rstrip() for r in rows]
    import textwrap

    return "\n".join(lines) + "\n" + textwrap.fill("every setting: " + common, width=len(lines[0]) + 20,
                                                   break_on_hyphens=False)
