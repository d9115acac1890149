"""The sweep specification: what a paired sweep trains, searches and compares.

A spec is a TOML file (YAML too, when PyYAML is installed) read by :func:`load_spec`
and validated into a :class:`SweepSpec`; every message names the field at fault
(``settings.distill.budget.epochs: ...``). ``benchmarks/paired.toml`` is the
reference: the paper's three settings, their methods, budgets and axes.

Top level::

    name = "paired"              # the sweep's name in the run store (runs are named name/stage/...)
    trials = 6                   # Optuna trials per (setting, method): the same for every method
    tune_seeds = [100, 101]      # seeds of the tuning runs (each trial trains on all of them)
    seeds = [0, 1, 2, 3, 4]      # seeds of the final runs, paired across methods (disjoint from tune_seeds)
    val_size = 0.2               # validation part of the training split, drawn per seed
    ours = ["ot", "kd+ot"]       # the methods whose gain is the question; the others are baselines
    comparisons = ["ot - best_baseline", "kd+ot - kd"]   # the declared family (paired, Holm-adjusted)
    start_from_recipe = true     # trial 0 of each method is its recipe (otviz.train.recipe)

    [search]                     # Optuna: TPE sampler, pruner on the per-epoch validation accuracy
    seed = 0
    pruner = "median"            # "median", "halving" or "none"
    warmup_epochs = 3            # epochs a run trains before the pruner may stop it (after epoch 3 at the earliest)
    startup_trials = 3           # completed trials per method before TPE models and the pruner prunes

    [space.common]               # every method's knobs; [space.<term>] those of a loss term
    lr = { log_uniform = [1e-4, 3e-2] }
    [space.ot]
    lam = { log_uniform = [0.01, 10.0] }
    normalize = { choice = ["standardize", "center"] }
    eps = 0.05                   # a plain value is fixed, not searched

    [settings.transfer]          # a setting of otviz.data.SETTINGS
    methods = ["scratch", "finetune", "ot"]
    budget = { epochs = 10, steps_per_epoch = 15, batch_size = 64 }
    options = {}                 # other TrainConfig fields, fixed for every run of the setting
    tune_seeds = [100, 101]      # optional: overrides the top-level list
    [settings.transfer-k5]       # a variant: another label, the otviz setting named inside,
    setting = "transfer"         # tuned on its own (e.g. at k = 5, or with unlabelled images)
    methods = ["scratch", "ot"]
    budget = { epochs = 10, steps_per_epoch = 15, batch_size = 64 }
    options = { k = 5, unlabelled = 1.0 }
    [settings.transfer.axis]     # optional: more points on one TrainConfig field
    field = "k"
    values = [5, 25, 100]        # the setting's own point (k = 10 here) is its final runs
    methods = ["scratch", "best_baseline", "best_ours"]
    seeds = [0, 1, 2]

A method's search space is ``space.common``, then the space of each of its terms
(``kd+ot``: ``space.kd`` and ``space.ot``), then ``space."kd+ot"`` if given; a later
entry of the same name wins. Distributions: ``{ log_uniform = [low, high] }``,
``{ uniform = [low, high] }``, ``{ int = [low, high] }`` and ``{ choice = [...] }``
(choices may be lists, e.g. layer pairs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SweepSpec", "SettingSpec", "Axis", "Param", "SpecError", "load_spec", "KEYWORDS", "PRUNERS"]

#: Method names a comparison or an axis may use besides the methods themselves, resolved per
#: setting on the final runs' mean *validation* accuracy.
KEYWORDS = ("best_baseline", "best_ours")
PRUNERS = ("median", "halving", "none")
KINDS = ("log_uniform", "uniform", "int", "choice")

#: TrainConfig fields the sweep sets itself: a spec may not fix or search them.
_OWN_FIELDS = ("setting", "method", "seed", "val_size", "name", "num_threads")
_MAX_SPEC_BYTES = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SpecError(ValueError):
    """A sweep spec that cannot be run; the message names the field and the fix."""


@dataclass(frozen=True)
class Param:
    """One knob of a search space: a distribution, or a fixed ``value`` (``kind="fixed"``)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def labels(self) -> tuple[Any, ...]:
        """The choices as Optuna stores them (lists and dicts as JSON text)."""
        return tuple(_label(c) for c in self.choices)

    def decode(self, label: Any) -> Any:
        """The value a trial's parameter ``label`` stands for."""
        if self.kind == "choice":
            return self.choices[self.labels().index(label)]
        if self.kind == "int":
            return int(label)
        return label

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the distribution (the recipe's value for trial 0)."""
        if self.kind == "choice":
            return _label(value) in self.labels()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def to_dict(self) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        return {self.kind: [self.low, self.high]}


def _label(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


@dataclass(frozen=True)
class Axis:
    """Points of a setting on one TrainConfig field, beside the setting's own point."""

    field: str
    values: tuple[Any, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class SettingSpec:
    """One setting of a sweep: its methods, budget, fixed options, tuning seeds and axis.

    ``name`` is the label in the spec (and in run names and reports); ``setting`` the otviz
    setting it trains (the same unless the table names one, e.g. two variants of
    ``transfer-small`` at k = 5 and k = 10, each tuned on its own).
    """

    name: str
    methods: tuple[str, ...]
    budget: Mapping[str, Any]
    options: Mapping[str, Any]
    tune_seeds: tuple[int, ...]
    trials: Mapping[str, int]
    axis: Axis | None = None
    setting: str = ""

    def __post_init__(self) -> None:
        if not self.setting:
            object.__setattr__(self, "setting", self.name)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep specification (see the module's documentation for the file format).

    Build one with :func:`load_spec` (a file) or :meth:`from_dict`; :meth:`to_dict` gives
    the canonical form stored with the sweep's runs, compared when a sweep resumes.
    """

    name: str
    settings: tuple[SettingSpec, ...]
    space: Mapping[str, tuple[Param, ...]]
    seeds: tuple[int, ...]
    ours: tuple[str, ...]
    comparisons: tuple[tuple[str, str], ...]
    val_size: float = 0.2
    start_from_recipe: bool = True
    search: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "the spec") -> "SweepSpec":
        """Validate ``data`` (a parsed spec file); raise :class:`SpecError` naming the field."""
        return _parse(data, source)

    def to_dict(self) -> dict[str, Any]:
        """The canonical, JSON-serialisable form (what :meth:`from_dict` reads back)."""
        out: dict[str, Any] = {
            "name": self.name, "seeds": list(self.seeds), "val_size": self.val_size,
            # every setting below gives its own trials and tuning seeds; these defaults are unused
            "trials": max(n for st in self.settings for n in st.trials.values()),
            "tune_seeds": list(self.settings[0].tune_seeds),
            "ours": list(self.ours), "comparisons": [f"{a} - {b}" for a, b in self.comparisons],
            "start_from_recipe": self.start_from_recipe, "search": dict(self.search),
            "space": {term: {p.name: p.to_dict() for p in params} for term, params in self.space.items()},
            "settings": {},
        }
        for st in self.settings:
            d: dict[str, Any] = {} if st.setting == st.name else {"setting": st.setting}
            d |= {"methods": list(st.methods), "budget": dict(st.budget),
                                 "options": dict(st.options), "tune_seeds": list(st.tune_seeds),
                                 "trials": dict(st.trials)}
            if st.axis is not None:
                d["axis"] = {"field": st.axis.field, "values": list(st.axis.values),
                             "methods": list(st.axis.methods), "seeds": list(st.axis.seeds)}
            out["settings"][st.name] = d
        return json.loads(json.dumps(out))

    # ------------------------------------------------------------------ derived
    def setting(self, name: str) -> SettingSpec:
        for st in self.settings:
            if st.name == name:
                return st
        raise KeyError(f"the sweep {self.name!r} has no setting {name!r}; it has "
                       f"{[s.name for s in self.settings]}")

    def method_space(self, method: str) -> dict[str, Param]:
        """The knobs of ``method``: ``space.common``, its terms' spaces, then its own entry."""
        out: dict[str, Param] = {}
        for key in ("common", *method.split("+"), method):
            for p in self.space.get(key, ()):
                out[p.name] = p
        return out

    def run_counts(self) -> dict[str, int]:
        """How many training runs each stage holds at most (pruned trials train fewer epochs)."""
        tune = sum(n * len(st.tune_seeds) for st in self.settings for n in st.trials.values())
        final = sum(len(st.methods) * len(self.seeds) for st in self.settings)
        axes = sum(len(st.axis.values) * len(st.axis.methods) * len(st.axis.seeds)
                   for st in self.settings if st.axis is not None)
        return {"tune": tune, "final": final, "axes": axes}


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec file (``.toml``; ``.yaml``/``.yml`` with PyYAML).

    The file is opened as a regular file of at most 1 MiB (:mod:`otviz._files`).

    Raises
    ------
    SpecError
        A field is missing, unknown or out of range (the message names it), or the file
        is not valid TOML/YAML.
    OSError
        The file cannot be read.
    """
    from otviz._files import read_bytes

    path = Path(path)
    raw = read_bytes(path, "sweep spec", max_bytes=_MAX_SPEC_BYTES)
    suffix = path.suffix.lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc}); a sweep spec is a TOML file") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SpecError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write "
                            "the spec in TOML (.toml)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: not valid TOML: {exc}") from None
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: the spec must be a table of fields (name, trials, settings...)")
    return _parse(data, str(path))


# ----------------------------------------------------------------------------- validation
class _Reader:
    """Reads fields of one table, naming each in its errors; complains about unknown fields."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: {where or 'the spec'} must be a table, got {_show(data)}")
        self.data, self.where, self.source = data, where, source
        self.used: set[str] = set()

    def path(self, key: str) -> str:
        if not key:
            return self.where
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, msg: str) -> SpecError:
        return SpecError(f"{self.source}: {self.path(key)}: {msg}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = ..., *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required or default is ...:
                raise SpecError(f"{self.source}: {self.path(key)} is missing")
            return default
        return self.data[key]

    def int_(self, key: str, default: Any = ..., *, minimum: int = 0) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {_show(v)}")
        return v

    def seeds(self, key: str, default: Any = ..., *, at_least: int = 1) -> tuple[int, ...]:
        v = self.get(key, default)
        if (not isinstance(v, Sequence) or isinstance(v, str)
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in v)):
            raise self.fail(key, f"must be a list of non-negative integers, got {_show(v)}")
        if len(set(v)) != len(v):
            raise self.fail(key, f"lists a seed twice: {list(v)}")
        if len(v) < at_least:
            raise self.fail(key, f"needs at least {at_least} seed(s), got {len(v)}")
        return tuple(int(s) for s in v)

    def names(self, key: str, default: Any = ...) -> tuple[str, ...]:
        v = self.get(key, default)
        if not isinstance(v, Sequence) or isinstance(v, str) or not all(isinstance(x, str) for x in v):
            raise self.fail(key, f"must be a list of names, got {_show(v)}")
        if len(set(v)) != len(v):
            raise self.fail(key, f"lists a name twice: {list(v)}")
        return tuple(v)

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            raise SpecError(f"{self.source}: unknown field {self.path(str(unknown[0]))}; the fields of "
                            f"{self.where or 'the top level'} are {sorted(self.used)}")


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _config_fields() -> dict[str, Any]:
    from otviz.train import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _parse(data: Mapping[str, Any], source: str) -> SweepSpec:
    from otviz._recipes import SETTINGS, parse_method

    top = _Reader(data, "", source)
    name = top.get("name", required=True)
    if not isinstance(name, str) or not _NAME.match(name):
        raise top.fail("name", f"must be 1-64 letters, digits, '_', '-' or '.', starting with a letter "
                               f"or digit (it prefixes the run names), got {_show(name)}")
    trials_default = top.int_("trials", minimum=1)
    tune_default = top.seeds("tune_seeds", (100,))
    seeds = top.seeds("seeds", at_least=2)
    val_size = top.get("val_size", 0.2)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or not 0 < val_size < 1:
        raise top.fail("val_size", f"must be a fraction in (0, 1): tuning needs a validation part, "
                                   f"got {_show(val_size)}")
    start = top.get("start_from_recipe", True)
    if not isinstance(start, bool):
        raise top.fail("start_from_recipe", f"must be true or false, got {_show(start)}")
    ours_given = top.has("ours")
    ours = top.names("ours", ("ot", "kd+ot"))
    fields = _config_fields()

    # search
    sr = _Reader(top.get("search", {}), "search", source)
    search = {"seed": sr.int_("seed", 0), "pruner": sr.get("pruner", "median"),
              "warmup_epochs": sr.int_("warmup_epochs", 3), "startup_trials": sr.int_("startup_trials", 3)}
    if search["pruner"] not in PRUNERS:
        raise sr.fail("pruner", f"must be one of {list(PRUNERS)}, got {_show(search['pruner'])}")
    sr.done()

    # space
    space_data = top.get("space", {})
    sp = _Reader(space_data, "space", source)
    space: dict[str, tuple[Param, ...]] = {}
    for term in list(space_data):
        if term != "common":
            try:
                parse_method(term)
            except ValueError as exc:
                raise sp.fail(term, f"is not 'common', a method or a loss term: {exc}") from None
        tr = _Reader(sp.get(term), f"space.{term}", source)
        params = []
        for knob in list(tr.data):
            params.append(_param(tr, knob, fields))
        tr.done()
        space[term] = tuple(params)
    sp.done()

    # settings
    settings_data = top.get("settings", required=True)
    sets = _Reader(settings_data, "settings", source)
    if not settings_data:
        raise sets.fail("", "is empty: name at least one setting, e.g. [settings.transfer-small]")
    settings = []
    for sname in list(settings_data):
        table = sets.get(sname)
        named = isinstance(table, Mapping) and "setting" in table
        if not named and sname not in SETTINGS:
            raise sets.fail(sname, f"is not a setting; the settings are {list(SETTINGS)} (or give the table "
                                   f"a setting = \"...\" to make it a variant of one, e.g. at another k)")
        if named and not _NAME.match(str(sname)):
            raise sets.fail(sname, "a variant's label must be 1-64 letters, digits, '_', '-' or '.'")
        settings.append(_setting(_Reader(table, f"settings.{sname}", source), sname,
                                 trials_default, tune_default, seeds, fields, ours))
    sets.done()

    # comparisons
    methods_anywhere = {m for st in settings for m in st.methods}
    comparisons = []
    for text in top.names("comparisons", ()):
        parts = [p.strip() for p in text.split(" - ")]
        if len(parts) != 2 or not all(parts):
            raise top.fail("comparisons", f"{text!r} is not 'A - B' (spaces around the minus), e.g. "
                                          "'ot - best_baseline'")
        for p in parts:
            if p not in methods_anywhere and p not in KEYWORDS:
                raise top.fail("comparisons", f"{text!r} names {p!r}, which is neither a method of a "
                                              f"setting nor one of {list(KEYWORDS)}")
        if parts[0] == parts[1]:
            raise top.fail("comparisons", f"{text!r} compares a method with itself")
        comparisons.append((parts[0], parts[1]))
    if not ours_given:  # the default: OT and KD+OT where the sweep has them
        ours = tuple(m for m in ours if m in methods_anywhere)
    for m in ours:
        if m not in methods_anywhere:
            raise top.fail("ours", f"{m!r} is not a method of any setting")
    top.done()
    return SweepSpec(name=name, settings=tuple(settings), space=space, seeds=seeds, ours=ours,
                     comparisons=tuple(comparisons), val_size=float(val_size), start_from_recipe=start,
                     search=search)


def _param(tr: _Reader, knob: str, fields: Mapping[str, Any]) -> Param:
    if knob not in fields:
        raise tr.fail(knob, "is not a TrainConfig field; see `otviz train --help` for the options")
    if knob in _OWN_FIELDS:
        raise tr.fail(knob, "is set by the sweep itself (per run); it cannot be searched or fixed")
    v = tr.get(knob)
    if not isinstance(v, Mapping):
        return Param(knob, "fixed", value=v)
    kinds = [k for k in v if k in KINDS]
    extra = [k for k in v if k not in KINDS]
    if len(kinds) != 1 or extra:
        raise tr.fail(knob, f"must be a plain value or a table with one of {list(KINDS)}, "
                            f"e.g. {{ log_uniform = [1e-4, 1e-2] }}; got {_show(dict(v))}")
    kind = kinds[0]
    arg = v[kind]
    if kind == "choice":
        if not isinstance(arg, Sequence) or isinstance(arg, str) or len(arg) < 1:
            raise tr.fail(knob, f"choice must be a non-empty list, got {_show(arg)}")
        labels = [_label(c) for c in arg]
        if len(set(map(repr, labels))) != len(labels):
            raise tr.fail(knob, f"choice lists a value twice: {_show(list(arg))}")
        return Param(knob, "choice", choices=tuple(json.loads(json.dumps(c)) for c in arg))
    ok = (isinstance(arg, Sequence) and not isinstance(arg, str) and len(arg) == 2
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in arg))
    if not ok or not arg[0] < arg[1]:
        raise tr.fail(knob, f"{kind} must be [low, high] with low < high, got {_show(arg)}")
    if kind == "log_uniform" and arg[0] <= 0:
        raise tr.fail(knob, f"log_uniform needs low > 0, got {_show(arg)}")
    if kind == "int" and not all(isinstance(x, int) for x in arg):
        raise tr.fail(knob, f"int must be [low, high] of integers, got {_show(arg)}")
    return Param(knob, kind, low=arg[0], high=arg[1])


def _setting(r: _Reader, name: str, trials_default: int, tune_default: tuple[int, ...],
             seeds: tuple[int, ...], fields: Mapping[str, Any], ours: tuple[str, ...]) -> SettingSpec:
    from otviz._recipes import SETTINGS, parse_method

    setting = r.get("setting", name)
    if setting not in SETTINGS:
        raise r.fail("setting", f"is not a setting; the settings are {list(SETTINGS)}")
    methods = r.names("methods")
    if not methods:
        raise r.fail("methods", "is empty: list the methods to compare, e.g. ['scratch', 'ot']")
    for m in methods:
        try:
            parse_method(m)
        except ValueError as exc:
            raise r.fail("methods", str(exc)) from None
    budget = dict(r.get("budget", required=True))
    if not isinstance(r.data["budget"], Mapping):
        raise r.fail("budget", "must be a table, e.g. { epochs = 10, steps_per_epoch = 15, batch_size = 64 }")
    if "epochs" not in budget:
        raise r.fail("budget", "needs epochs (and usually steps_per_epoch and batch_size)")
    options = r.get("options", {})
    if not isinstance(options, Mapping):
        raise r.fail("options", f"must be a table of TrainConfig fields, got {_show(options)}")
    for where, table in (("budget", budget), ("options", options)):
        for key, value in table.items():
            if key not in fields:
                raise r.fail(f"{where}.{key}", "is not a TrainConfig field; see `otviz train --help`")
            if key in _OWN_FIELDS:
                raise r.fail(f"{where}.{key}", "is set by the sweep itself (per run)")
    for key in ("epochs", "batch_size"):
        v = budget.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise r.fail(f"budget.{key}", f"must be an integer >= 1, got {_show(v)}")
    tune_seeds = r.seeds("tune_seeds", tune_default)
    overlap = sorted(set(tune_seeds) & set(seeds))
    if overlap:
        raise r.fail("tune_seeds", f"shares seeds {overlap} with the final seeds: tuning on the final "
                                   "seeds would select options on the runs it then reports")
    trials_v = r.get("trials", trials_default)
    if isinstance(trials_v, Mapping):
        unknown = [m for m in trials_v if m not in methods]
        if unknown:
            raise r.fail("trials", f"names {unknown[0]!r}, not a method of this setting")
        trials = {m: trials_v.get(m, trials_default) for m in methods}
    else:
        trials = {m: trials_v for m in methods}
    for m, n in trials.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise r.fail("trials", f"must be an integer >= 1 (or a table of them per method), got {_show(n)}")
    axis = None
    if r.has("axis"):
        a = _Reader(r.get("axis"), f"{r.where}.axis", r.source)
        fld = a.get("field", required=True)
        if fld not in fields or fld in _OWN_FIELDS:
            raise a.fail("field", f"must be a TrainConfig field the sweep does not set itself "
                                  f"(e.g. 'k' or 'student_width'), got {_show(fld)}")
        values = a.get("values", required=True)
        if not isinstance(values, Sequence) or isinstance(values, str) or not values:
            raise a.fail("values", f"must be a non-empty list, got {_show(values)}")
        amethods = a.names("methods", ("scratch", "best_baseline", "best_ours"))
        for m in amethods:
            if m not in methods and m not in KEYWORDS:
                raise a.fail("methods", f"{m!r} is neither a method of the setting nor one of {list(KEYWORDS)}")
        if "best_ours" in amethods and not any(m in ours for m in methods):
            raise a.fail("methods", "best_ours needs one of the setting's methods in ours")
        aseeds = a.seeds("seeds", seeds, at_least=2)
        a.done()
        axis = Axis(fld, tuple(values), amethods, aseeds)
    r.done()
    return SettingSpec(name=name, methods=tuple(methods), budget=budget, options=dict(options),
                       tune_seeds=tune_seeds, trials=trials, axis=axis, setting=setting)
