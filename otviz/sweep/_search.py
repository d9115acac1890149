"""The sweep's Optuna studies, held by one coordinator (a Ray actor while a sweep runs).

One study per (setting, method), tuned at the setting's own point: a seeded TPE sampler
(``constant_liar`` so that trials running at the same time spread out) and a pruner on
the per-epoch validation accuracy. A trial trains on every tuning seed in turn; its
intermediate value at step ``i * epochs + e`` is the validation accuracy of its ``i``-th
tuning seed after epoch ``e`` (so a trial is compared with the others on the same seed
and epoch), and its value is the mean final validation accuracy over the tuning seeds.

The coordinator is the only place that touches the studies: the driver asks it for
trials and tells it outcomes, the workers report epochs to it and learn whether to
stop. It also queues every reported epoch for the driver, which alone writes the run
store.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from otviz.sweep.spec import Param, SweepSpec

__all__ = ["Coordinator", "distribution"]


def distribution(p: Param) -> Any:
    """The Optuna distribution of a searched knob."""
    import optuna

    if p.kind == "log_uniform":
        return optuna.distributions.FloatDistribution(p.low, p.high, log=True)
    if p.kind == "uniform":
        return optuna.distributions.FloatDistribution(p.low, p.high)
    if p.kind == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high))
    if p.kind == "choice":
        return optuna.distributions.CategoricalDistribution(p.labels())
    raise ValueError(f"{p.name} is fixed, not searched")


def _study_seed(seed: int, key: str) -> int:
    return (int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) + 1_000_003 * seed) % (2**31)


class Coordinator:
    """Optuna studies of one sweep, and the queue of epochs reported by the workers.

    Parameters
    ----------
    spec : dict
        :meth:`SweepSpec.to_dict` of the sweep.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec = SweepSpec.from_dict(spec)
        self.studies: dict[str, Any] = {}
        self.epochs: dict[str, int] = {}
        self.trials: dict[str, Any] = {}  # job key -> optuna Trial
        self.events: list[tuple[Any, ...]] = []

    # ------------------------------------------------------------------ studies
    def _space(self, key: str) -> dict[str, Any]:
        setting, method = key.split("/", 1)
        return {n: distribution(p) for n, p in self.spec.method_space(method).items() if p.kind != "fixed"}

    def _study(self, key: str) -> Any:
        study = self.studies.get(key)
        if study is None:
            import warnings

            import optuna

            s = self.spec.search
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = optuna.samplers.TPESampler(
                    seed=_study_seed(s["seed"], key), n_startup_trials=max(1, s["startup_trials"]),
                    constant_liar=True)
            if s["pruner"] == "median":
                pruner: Any = optuna.pruners.MedianPruner(n_startup_trials=s["startup_trials"],
                                                          n_warmup_steps=s["warmup_epochs"])
            elif s["pruner"] == "halving":
                pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, s["warmup_epochs"]))
            else:
                pruner = optuna.pruners.NopPruner()
            study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner,
                                        study_name=f"{self.spec.name}/{key}")
            self.studies[key] = study
            setting = key.split("/", 1)[0]
            self.epochs[key] = int(self.spec.setting(setting).budget["epochs"])
        return study

    def restore(self, key: str, records: list[dict[str, Any]]) -> int:
        """Add finished trials read back from the run store to the study ``key``.

        Each record has ``params`` (the labels Optuna stores), ``state`` ("complete",
        "pruned" or "fail"), ``value`` and ``intermediate`` (``{step: value}``).
        Returns the number added.
        """
        import optuna

        study = self._study(key)
        space = self._space(key)
        states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                  "fail": optuna.trial.TrialState.FAIL}
        for r in records:
            params = {n: v for n, v in r["params"].items() if n in space}
            if set(params) != set(space):  # another space (cannot happen under the same spec)
                continue
            value = r.get("value") if r["state"] == "complete" else None
            if r["state"] == "complete" and (value is None or not math.isfinite(value)):
                continue
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={n: space[n] for n in params}, value=value,
                intermediate_values={int(k): float(v) for k, v in r.get("intermediate", {}).items()},
                state=states[r["state"]]))
        return len(records)

    def ask(self, key: str, job: str, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new trial of study ``key`` for the job ``job``: its parameters (Optuna's labels).

        ``fixed`` (labels) pins parameters: the recipe of trial 0, or the parameters of a
        trial that a killed sweep left unfinished.
        """
        study = self._study(key)
        if fixed:
            study.enqueue_trial(fixed, skip_if_exists=False)
        trial = study.ask(self._space(key))
        self.trials[job] = trial
        return dict(trial.params)

    def report(self, job: str, index: int, epoch: int, row: dict[str, float],
               info: dict[str, Any] | None = None) -> bool:
        """A worker's epoch: queue it for the driver; whether the trial should stop now.

        ``index`` is the position of the run's seed among the trial's tuning seeds.
        """
        self.events.append((job, index, epoch, dict(row), info))
        trial = self.trials.get(job)
        value = row.get("val/accuracy")
        if trial is None or epoch == 0 or value is None or not math.isfinite(value):
            return False
        key = trial.study.study_name.split("/", 1)[1]
        if epoch >= self.epochs[key]:  # the run is done: stopping it would save nothing
            trial.report(float(value), index * self.epochs[key] + epoch)
            return False
        step = index * self.epochs[key] + epoch
        trial.report(float(value), step)
        return bool(trial.should_prune())

    def tell(self, job: str, state: str, value: float | None = None) -> None:
        """The outcome of the job's trial: "complete" (with its value), "pruned" or "fail"."""
        import optuna

        trial = self.trials.pop(job, None)
        if trial is None:
            return
        states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                  "fail": optuna.trial.TrialState.FAIL}
        if state == "complete" and (value is None or not math.isfinite(value)):
            state = "fail"
        trial.study.tell(trial, value if state == "complete" else None, state=states[state])

    def drain(self) -> list[tuple[Any, ...]]:
        """The epochs reported since the last call, oldest first."""
        out, self.events = self.events, []
        return out

    def ping(self) -> bool:
        return True
