"""A small sweep written straight into a run store, as ``otviz sweep run`` would leave it,
without Ray, Optuna or any training: tuning trials (one pruned per method), final runs on
paired seeds and, optionally, axis runs; with ``running=True`` the sweep is caught midway.

    from _sweep_fixtures import write_fake_sweep
    spec = write_fake_sweep(RunStore(path))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from otviz.runs import RunStore
from otviz.sweep import SweepSpec

#: Mean validation/test accuracy of each method of the fake sweep (ot gains 4 points on scratch).
LEVELS = {"scratch": 0.70, "kd": 0.72, "ot": 0.74}
EPOCHS = 3


def sweep_spec(name: str = "demo", *, settings: tuple[str, ...] = ("transfer-small",),
               methods: tuple[str, ...] = ("scratch", "ot"), trials: int = 3, seeds: tuple[int, ...] = (0, 1, 2),
               axis: bool = False) -> SweepSpec:
    """A valid spec: ``methods`` in each of ``settings``, ``trials`` trials on 2 tuning seeds,
    final runs on ``seeds``; ``axis``: labels per class at k = 5 for every method."""
    data: dict[str, Any] = {
        "name": name, "trials": trials, "tune_seeds": [100, 101], "seeds": list(seeds), "val_size": 0.2,
        "ours": ["ot"], "comparisons": ["ot - best_baseline"],
        "search": {"seed": 0, "pruner": "median", "warmup_epochs": 1, "startup_trials": 1},
        "space": {"common": {"lr": {"log_uniform": [1e-4, 3e-2]}}, "ot": {"lam": {"log_uniform": [0.01, 10.0]}}},
        "settings": {},
    }
    for s in settings:
        d: dict[str, Any] = {"methods": list(methods), "budget": {"epochs": EPOCHS, "steps_per_epoch": 5,
                                                                   "batch_size": 32}}
        if axis:
            d["axis"] = {"field": "k", "values": [5], "methods": list(methods), "seeds": list(seeds)}
        data["settings"][s] = d
    return SweepSpec.from_dict(data)


def _run(store: RunStore, spec: SweepSpec, stage: str, setting: str, method: str, seed: int, *,
         trial: int | None = None, params: dict | None = None, point: dict | None = None,
         val: float, test: float, status: str = "completed", epochs: int = EPOCHS,
         error: str | None = None) -> int:
    tags = dict(name=spec.name, stage=stage, setting=setting, method=method, trial=trial, seed=seed,
                point=point, node="node-0", host="localhost")
    if stage == "tune":
        tags["params"] = params or {}
    where = f"{point['field']}={point['value']}/" if point else ""
    what = f"t{trial}/s{seed}" if stage == "tune" else f"s{seed}"
    name = f"{spec.name}/{stage}/{setting}/{where}{method}/{what}"
    config = dict(setting=setting, method=method, seed=seed, epochs=EPOCHS, val_size=spec.val_size, sweep=tags)
    rid = store.create_run(config, name=name)
    for e in range(epochs + 1):  # epoch 0: the initialisation
        metrics = {"val/accuracy": 0.2 + (val - 0.2) * e / EPOCHS}
        if e == EPOCHS:
            metrics["test/accuracy"] = test
        store.log_metrics(rid, metrics, step=5 * e, epoch=e)
    if status != "running":
        store.finish(rid, status, error)
    return rid


def write_fake_sweep(store: RunStore, spec: SweepSpec | None = None, *, running: bool = False,
                     seed: int = 0) -> SweepSpec:
    """Write the runs of ``spec`` (default :func:`sweep_spec`) and the spec itself into ``store``.

    Per (setting, method): trial 1 is pruned after one epoch, the others complete, the last
    one the best; final runs on every seed share a per-seed effect (so differences pair);
    axis runs at each axis value when the spec has an axis. ``running=True`` leaves the last
    trial of the last method running (this process owns it) and its final runs unwritten.
    """
    from otviz.sweep._driver import PRUNED_PREFIX

    spec = spec or sweep_spec()
    rng = np.random.default_rng(seed)
    store.save_sweep(spec.name, spec.to_dict())
    for st in spec.settings:
        for mi, method in enumerate(st.methods):
            level = LEVELS.get(method, 0.71)
            last = running and mi == len(st.methods) - 1
            n = st.trials[method]
            for trial in range(n):
                params = {"lr": float(10 ** rng.uniform(-4, -1.6))}
                if method == "ot":
                    params["lam"] = float(10 ** rng.uniform(-2, 1))
                val = level - 0.02 * (n - 1 - trial)  # each trial better than the one before
                for s in st.tune_seeds:
                    if trial == 1:
                        _run(store, spec, "tune", st.name, method, s, trial=trial, params=params, val=0.3,
                             test=0.3, status="interrupted", epochs=1,
                             error=f"{PRUNED_PREFIX}: validation accuracy 0.30 below the median at epoch 1")
                    else:
                        _run(store, spec, "tune", st.name, method, s, trial=trial, params=params,
                             val=val + 0.005 * rng.standard_normal(), test=val,
                             status="running" if last and trial == n - 1 else "completed")
            if last:
                continue
            for s in spec.seeds:
                effect = 0.02 * ((s * 7919) % 5 - 2)  # shared by every method at seed s
                _run(store, spec, "final", st.name, method, s, val=level + effect,
                     test=level + effect + 0.004 * rng.standard_normal())
            if st.axis is not None:
                for value in st.axis.values:
                    for s in st.axis.seeds:
                        _run(store, spec, "axes", st.name, method, s, point={"field": st.axis.field, "value": value},
                             val=level - 0.1, test=level - 0.1 + 0.005 * rng.standard_normal())
    return spec
