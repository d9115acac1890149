"""Paired sweeps: tune every method alike on validation, train paired seeds, compare.

``otviz sweep`` runs the protocol of a careful paper for any setting, from a spec file
(:mod:`otviz.sweep.spec`, e.g. ``benchmarks/paired.toml``):

1. **tune** each (setting, method) with Optuna: a seeded TPE sampler over the method's
   search space, the same number of trials for every method, trial 0 its recipe, each
   trial trained on the tuning seeds and scored by its mean validation accuracy; a
   pruner (median or successive halving) stops a trial whose per-epoch validation
   accuracy falls behind;
2. **final**: each method's best trial on the final seeds, paired across methods (seed
   ``s`` gives every method the same validation split, labelled subset, initialisation
   and minibatch order);
3. **axes**: the chosen options at more points of one TrainConfig field (labels per
   class, student width...);
4. **report** (:func:`sweep_report`): mean test accuracy with confidence intervals, and
   each comparison declared in the spec as a paired difference with paired t and
   Wilcoxon p-values, Holm-adjusted over the declared family.

Trials run as Ray tasks, on this machine (``ray.init()``, one task per core) or on a Ray
cluster (``address``); each task reports its epochs to a coordinator actor that holds
the Optuna studies and decides pruning, and returns its records to the driver, which
alone writes the run store. A killed sweep run again with the same spec continues.

Optuna and Ray are imported when a sweep runs, not by ``import otviz``.

Examples
--------
>>> from otviz.sweep import load_spec, run_sweep, sweep_report   # doctest: +SKIP
>>> spec = load_spec("benchmarks/paired.toml")
>>> run_sweep(spec, "runs.db", workers=2)
>>> print(sweep_report("runs.db", spec))
"""

from __future__ import annotations

from otviz._lazy import lazy_attributes
from otviz.sweep.spec import SpecError, SweepSpec, load_spec

__all__ = ["SweepSpec", "SpecError", "load_spec", "run_sweep", "SweepSummary", "sweep_tables", "SweepTables",
           "sweep_report", "export_tables", "comparisons", "best_so_far", "sweep_progress", "PRUNED_PREFIX"]

_LAZY = {
    "run_sweep": "otviz.sweep._driver", "SweepSummary": "otviz.sweep._driver", "PRUNED_PREFIX": "otviz.sweep._driver",
    "sweep_tables": "otviz.sweep.results", "SweepTables": "otviz.sweep.results", "sweep_report": "otviz.sweep.results",
    "export_tables": "otviz.sweep.results", "comparisons": "otviz.sweep.results", "best_so_far": "otviz.sweep.results",
    "sweep_progress": "otviz.sweep.results",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
