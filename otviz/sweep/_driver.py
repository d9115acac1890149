"""The sweep's driver: plans the jobs, runs them on Ray, and alone writes the run store.

Stages, per setting: **tune** (one Optuna study per method at the setting's own point;
a trial trains on every tuning seed), **final** (each method's best trial by mean
validation accuracy, on every final seed) and **axes** (the axis methods at the axis'
other points, with the options tuned at the own point). A setting's final runs start
when its studies are done, its axes when its final runs are; settings proceed
independently, so the workers stay busy.

Resuming: every run is named ``<sweep>/<stage>/<setting>/[<point>/]<method>/[t<trial>/]s<seed>``
and tagged in its config (``config["sweep"]``: sweep, stage, setting, method, trial,
seed, point, the trial's parameters, the node that trained it). A run recorded as
completed, failed or pruned with the same name and configuration is read back instead
of trained again; the trials of a study are restored into Optuna from these records, a
trial that a killed sweep left unfinished is trained again with the same parameters
(its finished seeds read back).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from otviz.sweep.spec import KEYWORDS, SpecError, SweepSpec

__all__ = ["run_sweep", "SweepSummary", "spec_differences", "PRUNED_PREFIX"]

#: The error text of a pruned run starts with this (status ``interrupted``).
PRUNED_PREFIX = "stopped early: pruned by the sweep"
_HEARTBEAT = 5.0


@dataclass
class SweepSummary:
    """What :func:`run_sweep` did: runs per stage trained now and read back, trials pruned
    and failed, wall time, and the nodes that trained."""

    name: str
    trained: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    read_back: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    pruned: int = 0
    failed: int = 0
    seconds: float = 0.0
    nodes: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        stages = ", ".join(f"{s} {self.trained.get(s, 0)} trained + {self.read_back.get(s, 0)} read back"
                           for s in ("tune", "final", "axes"))
        text = (f"sweep {self.name!r}: {stages}; {self.pruned} tuning runs pruned, {self.failed} runs "
                f"failed; {self.seconds / 60:.1f} min on {len(self.nodes) or 0} node(s)")
        return "\n".join([text, *self.notes])


# ----------------------------------------------------------------------------- the store's side
def spec_differences(old: Any, new: Any, where: str = "") -> list[str]:
    """The fields where two spec dicts differ, as ``path: old -> new`` lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            path = f"{where}.{k}" if where else str(k)
            if k not in new:
                out.append(f"{path}: removed (was {old[k]!r})")
            elif k not in old:
                out.append(f"{path}: added ({new[k]!r})")
            else:
                out += spec_differences(old[k], new[k], path)
        return out
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def _tags(config: Any) -> dict[str, Any] | None:
    tags = config.get("sweep") if isinstance(config, dict) else None
    return tags if isinstance(tags, dict) else None


def _is_pruned(status: str, error: Any) -> bool:
    return status == "interrupted" and isinstance(error, str) and error.startswith(PRUNED_PREFIX)


def _finished(status: str, error: Any) -> bool:
    return status in ("completed", "failed") or _is_pruned(status, error)


def sweep_runs(store: Any, name: str) -> Any:
    """The store's runs of sweep ``name`` (a DataFrame of :meth:`RunStore.runs` rows with
    a ``tags`` column: the ``config["sweep"]`` dict); empty when it has none."""
    import json

    runs = store.runs()
    if runs.empty:
        runs["tags"] = []
        return runs
    tags = []
    for text in runs["config"]:
        try:
            cfg = json.loads(text) if isinstance(text, str) else dict(text)
        except (TypeError, ValueError):
            cfg = None
        t = _tags(cfg)
        tags.append(t if t is not None and t.get("name") == name else None)
    runs = runs.assign(tags=tags)
    return runs[runs["tags"].notna()].reset_index(drop=True)


# ----------------------------------------------------------------------------- planning
def _base_config(spec: SweepSpec, setting: str, method: str, seed: int) -> dict[str, Any]:
    st = spec.setting(setting)
    cfg = dict(st.budget)
    cfg.update(st.options)
    cfg.update(setting=st.setting, method=method, seed=seed, val_size=spec.val_size)
    for name, p in spec.method_space(method).items():
        if p.kind == "fixed":
            cfg[name] = p.value
    return cfg


def _resolved(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as the trainer stores it (recipe filled in, options that do not apply None)."""
    import warnings

    from otviz.train import TrainConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = TrainConfig.from_dict(cfg).to_dict()
    out.pop("name", None)
    out.pop("num_threads", None)
    return out


def own_value(spec: SweepSpec, label: str) -> Any:
    """The value of the axis' field at the setting's own point (whose runs are its final runs)."""
    from otviz._recipes import SETTINGS

    st = spec.setting(label)
    field_ = st.axis.field
    if field_ in st.options:
        return st.options[field_]
    if field_ == "k":
        return SETTINGS[st.setting].default_k
    if field_ == "student_width":
        return SETTINGS[st.setting].student_width
    return _resolved(_base_config(spec, label, st.methods[0], 0)).get(field_)


def _decode(spec: SweepSpec, method: str, labels: dict[str, Any]) -> dict[str, Any]:
    space = spec.method_space(method)
    return {n: space[n].decode(v) for n, v in labels.items() if n in space}


def _recipe_labels(spec: SweepSpec, setting: str, method: str) -> dict[str, Any]:
    """Trial 0: the method's recipe, for every searched knob whose recipe value is in its range."""
    from otviz.sweep.spec import _label

    resolved = _resolved(_base_config(spec, setting, method, 0))
    out = {}
    for n, p in spec.method_space(method).items():
        if p.kind != "fixed" and n in resolved and resolved[n] is not None and p.contains(resolved[n]):
            out[n] = _label(resolved[n]) if p.kind == "choice" else resolved[n]
    return out


@dataclass
class _Study:
    setting: str
    method: str
    total: int
    finished: dict[int, dict[str, Any]] = field(default_factory=dict)  # trial -> record
    pending: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # unfinished: (trial, labels)
    running: int = 0
    next_trial: int = 0

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.method}"

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.total and self.running == 0

    def best(self) -> tuple[int, dict[str, Any]] | None:
        ok = [(t, r) for t, r in self.finished.items() if r["state"] == "complete"]
        if not ok:
            return None
        return max(ok, key=lambda tr: (tr[1]["value"], -tr[0]))


class _Sweep:
    """The jobs of one sweep, their state, and the store writes."""

    def __init__(self, spec: SweepSpec, store: Any, *, threads: int, stages: tuple[str, ...],
                 log: Callable[[str], None], settings: tuple[str, ...] | None = None) -> None:
        self.spec, self.store, self.threads, self.stages, self.log = spec, store, threads, stages, log
        self.settings = [st for st in spec.settings if settings is None or st.name in settings]
        self.summary = SweepSummary(spec.name)
        self.existing = sweep_runs(store, spec.name)
        self.by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.existing.to_dict("records"):  # newest first within a name
            self.by_name[row["name"]].append(row)
        for rows in self.by_name.values():
            rows.sort(key=lambda r: -int(r["run_id"]))
        self.studies: dict[str, _Study] = {}
        self.chosen: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.final_values: dict[tuple[str, str, int], tuple[float, float]] = {}
        self.stage_of: dict[str, str] = {s.name: "tune" for s in self.settings}
        self.ready: list[dict[str, Any]] = []  # final / axes jobs to submit
        self.outstanding: dict[str, int] = defaultdict(int)  # setting -> final/axes jobs not finished
        self.live: dict[tuple[str, int], int] = {}  # (job key, run index) -> run id being written
        self.jobs: dict[str, dict[str, Any]] = {}
        for st in self.settings:
            for m in st.methods:
                self.studies[f"{st.name}/{m}"] = _Study(st.name, m, st.trials[m])

    # -------------------------------------------------------------- reading back
    def stored(self, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """The newest finished run of that name and configuration, or None."""
        from otviz.runs import matching_runs

        rows = [r for r in self.by_name.get(name, ()) if _finished(r["status"], r["error"])]
        if not rows:
            return None
        import pandas as pd

        # the options the sweep gives; those left to the trainer (None: k, student width...) are
        # stored resolved, so they are not compared
        wanted = {k: v for k, v in config.items() if v is not None}
        ids = matching_runs(pd.DataFrame(rows), wanted, ignore=("name", "num_threads", "device"))
        if not ids:
            return None
        return next(r for r in rows if int(r["run_id"]) == ids[0])

    def _values(self, run_id: int) -> tuple[float, float]:
        last = self.store.last_values(["val/accuracy", "test/accuracy"], run_ids=[run_id])
        if last.empty:
            return float("nan"), float("nan")
        row = last.iloc[0]
        return (float(row.get("val/accuracy", float("nan"))), float(row.get("test/accuracy", float("nan"))))

    def restore(self, coordinator: Any) -> None:
        """Rebuild each study from the tuning runs in the store."""
        from otviz.sweep._worker import _call

        for key, study in self.studies.items():
            st = self.spec.setting(study.setting)
            trials: dict[int, dict[str, Any]] = {}
            for row in self.existing.to_dict("records"):
                t = row["tags"]
                if t.get("stage") == "tune" and t.get("setting") == study.setting and t.get("method") == study.method:
                    trials.setdefault(int(t["trial"]), t.get("params") or {})
            records = []
            for trial, labels in sorted(trials.items()):
                outcome, values, inter = self._trial_state(study, trial, labels, st.tune_seeds)
                study.next_trial = max(study.next_trial, trial + 1)
                if outcome is None:
                    study.pending.append((trial, labels))
                    continue
                rec = {"params": labels, "state": outcome, "intermediate": inter,
                       "value": sum(values) / len(values) if outcome == "complete" else None}
                study.finished[trial] = rec
                records.append(rec)
            if records:
                _call(coordinator, "restore", key, records)
            if len(study.finished) > study.total:  # cannot happen under the same spec; be safe
                study.total = len(study.finished)

    def _trial_state(self, study: _Study, trial: int, labels: dict[str, Any],
                     seeds: tuple[int, ...]) -> tuple[str | None, list[float], dict[int, float]]:
        values, inter = [], {}
        epochs = int(self.spec.setting(study.setting).budget["epochs"])
        for i, seed in enumerate(seeds):
            name, cfg = self._tune_run(study, trial, labels, seed)
            row = self.stored(name, cfg)
            if row is None:
                return None, values, inter
            self.summary.read_back["tune"] += 1
            rid = int(row["run_id"])
            m = self.store.metrics(rid, "val/accuracy")
            for e, v in zip(m["epoch"], m["value"]):
                if e is not None and e == e and int(e) > 0:
                    inter[i * epochs + int(e)] = float(v)
            if _is_pruned(row["status"], row["error"]):
                return "pruned", values, inter
            if row["status"] == "failed":
                return "fail", values, inter
            values.append(self._values(rid)[0])
        return "complete", values, inter

    # -------------------------------------------------------------- job building
    def _tune_run(self, study: _Study, trial: int, labels: dict[str, Any], seed: int) -> tuple[str, dict]:
        cfg = _base_config(self.spec, study.setting, study.method, seed)
        cfg.update(_decode(self.spec, study.method, labels))
        return (f"{self.spec.name}/tune/{study.setting}/{study.method}/t{trial}/s{seed}", _resolved(cfg))

    def tune_job(self, study: _Study, trial: int, labels: dict[str, Any]) -> dict[str, Any]:
        st = self.spec.setting(study.setting)
        runs = []
        for i, seed in enumerate(st.tune_seeds):
            name, cfg = self._tune_run(study, trial, labels, seed)
            tags = dict(name=self.spec.name, stage="tune", setting=study.setting, method=study.method,
                        trial=trial, seed=seed, point=None, params=labels)
            row = self.stored(name, cfg)
            if row is not None:  # a finished seed of a trial a killed sweep left unfinished
                runs.append({"index": i, "name": name, "config": cfg, "tags": tags, "stored": int(row["run_id"])})
            else:
                runs.append({"index": i, "name": name, "config": cfg, "tags": tags})
        key = f"tune/{study.key}/t{trial}"
        return {"key": key, "stage": "tune", "study": study.key, "trial": trial, "runs": runs,
                "prune": self.spec.search["pruner"] != "none", "threads": self.threads}

    def _single_job(self, stage: str, setting: str, method: str, seed: int, options: dict[str, Any],
                    point: tuple[str, Any] | None) -> dict[str, Any] | None:
        cfg = _base_config(self.spec, setting, method, seed)
        cfg.update(options)
        where = ""
        if point is not None:
            cfg[point[0]] = point[1]
            where = f"{point[0]}={point[1]}/"
        cfg = _resolved(cfg)
        name = f"{self.spec.name}/{stage}/{setting}/{where}{method}/s{seed}"
        tags = dict(name=self.spec.name, stage=stage, setting=setting, method=method, trial=None, seed=seed,
                    point=None if point is None else {"field": point[0], "value": point[1]})
        row = self.stored(name, cfg)
        if row is not None:
            self.summary.read_back[stage] += 1
            if stage == "final":
                self.final_values[(setting, method, seed)] = self._values(int(row["run_id"]))
            return None
        return {"key": name, "stage": stage, "setting": setting, "runs": [
            {"index": 0, "name": name, "config": cfg, "tags": tags}], "prune": False, "threads": self.threads}

    def advance(self) -> None:
        """Move each setting to its next stage when the current one is done."""
        for st in self.settings:
            s = st.name
            if self.stage_of[s] == "tune" and all(self.studies[f"{s}/{m}"].done for m in st.methods):
                for m in st.methods:
                    best = self.studies[f"{s}/{m}"].best()
                    self.chosen[(s, m)] = None if best is None else _decode(self.spec, m, best[1]["params"])
                    if best is None:
                        self.summary.notes.append(f"{s}/{m}: no tuning trial completed (all pruned or "
                                                  "failed): no final runs")
                self.stage_of[s] = "final"
                if "final" in self.stages:
                    for m in st.methods:
                        if self.chosen[(s, m)] is None:
                            continue
                        for seed in self.spec.seeds:
                            job = self._single_job("final", s, m, seed, self.chosen[(s, m)], None)
                            if job is not None:
                                self.ready.append(job)
                                self.outstanding[s] += 1
            if self.stage_of[s] == "final" and self.outstanding[s] == 0:
                self.stage_of[s] = "axes"
                if "axes" in self.stages and "final" in self.stages and st.axis is not None:
                    for job in self._axis_jobs(st):
                        self.ready.append(job)
                        self.outstanding[s] += 1
            if self.stage_of[s] == "axes" and self.outstanding[s] == 0:
                self.stage_of[s] = "done"

    def resolve(self, setting: str, keyword: str) -> str | None:
        """best_baseline / best_ours of a setting, from the final runs done (see
        :func:`otviz.sweep.results.resolve`)."""
        import pandas as pd

        from otviz.sweep.results import resolve

        final = pd.DataFrame([dict(setting=s, method=m, seed=seed, val_accuracy=v, status="completed")
                              for (s, m, seed), (v, _) in self.final_values.items()],
                             columns=["setting", "method", "seed", "val_accuracy", "status"])
        return resolve(self.spec, final, setting, keyword)

    def _axis_jobs(self, st: Any) -> list[dict[str, Any]]:
        methods = []
        for m in st.axis.methods:
            m = self.resolve(st.name, m) if m in KEYWORDS else m
            if m is not None and m not in methods and self.chosen.get((st.name, m)) is not None:
                methods.append(m)
        own = self._own_value(st)
        jobs = []
        for v in st.axis.values:
            if own is not None and v == own:
                continue  # the final runs are this point's runs
            for m in methods:
                for seed in st.axis.seeds:
                    job = self._single_job("axes", st.name, m, seed, self.chosen[(st.name, m)], (st.axis.field, v))
                    if job is not None:
                        jobs.append(job)
        return jobs

    def _own_value(self, st: Any) -> Any:
        return own_value(self.spec, st.name)

    # -------------------------------------------------------------- store writes
    def _create(self, job: dict[str, Any], run: dict[str, Any], config: dict[str, Any] | None,
                info: dict[str, Any] | None) -> int:
        cfg = dict(config or dict(run["config"], name=run["name"]))
        tags = dict(run["tags"])
        if info:
            tags.update(node=info.get("node"), host=info.get("host"))
        cfg["sweep"] = tags
        cfg["name"] = run["name"]
        total = None
        if cfg.get("steps_per_epoch") and cfg.get("epochs"):
            total = int(cfg["steps_per_epoch"]) * int(cfg["epochs"])
        elif cfg.get("n_train") and cfg.get("batch_size") and cfg.get("epochs"):
            n = int(cfg["n_train"])
            total = math.ceil(n / min(int(cfg["batch_size"]), n)) * int(cfg["epochs"])
        return self.store.create_run(cfg, name=run["name"], total_steps=total)

    def on_epoch(self, job_key: str, index: int, epoch: int, row: dict[str, float],
                 info: dict[str, Any] | None) -> None:
        job = self.jobs.get(job_key)
        if job is None:
            return
        run = next(r for r in job["runs"] if r["index"] == index)
        rid = self.live.get((job_key, index))
        if rid is None:
            rid = self.live[(job_key, index)] = self._create(job, run, (info or {}).get("config"), info)
            self.summary.nodes.add(str((info or {}).get("node")))
        cfg = run["config"]
        step = int((info or {}).get("step", epoch))
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if metrics:
            self.store.log_metrics(rid, metrics, step=step, epoch=epoch)
        split = "val" if "val/accuracy" in row else "test"
        if f"{split}/accuracy" in row:
            self.store.set_progress(rid, step=step, epoch=epoch,
                                    message=f"epoch {epoch}/{cfg.get('epochs')}: {split} accuracy "
                                            f"{row[f'{split}/accuracy']:.3f}")

    def write_record(self, job: dict[str, Any], rec: dict[str, Any], node: str | None) -> int:
        """Copy one run's record into the store; return its run id."""
        run = next(r for r in job["runs"] if r["index"] == rec["index"])
        rid = self.live.pop((job["key"], rec["index"]), None)
        if rid is None:
            rid = self._create(job, run, rec.get("config"), {"node": node})
        by_step: dict[tuple[int, Any], dict[str, float]] = defaultdict(dict)
        when: dict[tuple[int, Any], float] = {}
        for step, epoch, key, value, t in rec["metrics"]:
            by_step[(step, epoch)][key] = value
            when.setdefault((step, epoch), t)
        for (step, epoch), metrics in sorted(by_step.items(), key=lambda kv: kv[0][0]):
            self.store.log_metrics(rid, metrics, step=step, epoch=epoch, at=when[(step, epoch)])
        for key, epoch, step, array, meta in rec["snapshots"]:
            self.store.log_snapshot(rid, key, array, epoch=epoch, step=step, meta=meta)
        error = rec.get("error")
        if rec.get("pruned"):
            detail = error[len("stopped early: "):] if isinstance(error, str) and error.startswith("stopped early: ") else ""
            error = PRUNED_PREFIX + (detail[len("pruned by the sweep"):] if detail.startswith("pruned by the sweep")
                                     else (": " + detail if detail else ""))
        status = rec["status"] if rec["status"] in ("completed", "failed", "interrupted") else "failed"
        self.store.finish(rid, status, error)
        return rid

    def abandon(self, reason: str) -> None:
        """Mark the runs being written as interrupted (Ctrl-C, a lost worker)."""
        for rid in list(self.live.values()):
            try:
                self.store.finish(rid, "interrupted", reason)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.live.clear()

    def heartbeat(self) -> None:
        for rid in list(self.live.values()):
            self.store.heartbeat(rid)


# ----------------------------------------------------------------------------- Ray
def _init_ray(address: str | None, workers: int | None, gpus: float) -> bool:
    """Connect to (``address``) or start a local Ray; whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, **kwargs)
    else:
        import otviz

        root = str(Path(otviz.__file__).resolve().parents[1])
        path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        ray.init(num_cpus=workers or os.cpu_count() or 1, num_gpus=None if gpus else 0,
                 runtime_env={"env_vars": {"PYTHONPATH": path}}, **kwargs)
    return True


def run_sweep(spec: SweepSpec, store: Any = None, *, workers: int | None = None, address: str | None = None,
              cpus_per_trial: int = 1, gpus_per_trial: float | None = None,
              stages: tuple[str, ...] = ("tune", "final", "axes"), settings: Any = None,
              log: Callable[[str], None] | None = None) -> SweepSummary:
    r"""Run (or continue) a sweep on Ray: tune, final runs, axes (see :mod:`otviz.sweep`).

    Parameters
    ----------
    spec : SweepSpec
        From :func:`otviz.sweep.load_spec`.
    store : RunStore, path or None
        The run store the driver writes (default: :func:`otviz.runs.default_store_path`).
        It records the spec; a later call with the same sweep name and another spec is
        refused, with the fields that differ.
    workers : int, optional
        CPUs of the local Ray started for the sweep (default: the machine's cores).
    address : str, optional
        A running Ray cluster (``ray://host:10001``, ``auto``); default ``$RAY_ADDRESS``,
        else a local Ray is started, and shut down at the end.
    cpus_per_trial : int, default 1
        CPUs (and torch threads) each task asks Ray for.
    gpus_per_trial : float, optional
        GPUs per task; default 1 when a setting's options set ``device`` to CUDA, else 0.
    stages : tuple of str, default ("tune", "final", "axes")
    settings : sequence of str, optional
        Run only these settings of the spec this time (the spec itself is unchanged).
    log : callable, optional
        Receives one line per event (default: print to stderr).

    Returns
    -------
    SweepSummary
        Runs trained and read back per stage, trials pruned, runs failed, wall time,
        nodes.

    Raises
    ------
    SpecError
        The store holds this sweep with another spec.
    KeyboardInterrupt
        Ctrl-C: the tasks are cancelled, the runs in progress are marked interrupted;
        running the same call again continues the sweep.

    Notes
    -----
    A trial of (setting, method) trains on each tuning seed :math:`s \in S` in turn; its
    value is :math:`\frac{1}{|S|}\sum_{s \in S} \mathrm{acc}_{val}(s)` at the last
    epoch. The pruner sees :math:`\mathrm{acc}_{val}` of the :math:`i`-th tuning seed
    after epoch :math:`e` at step :math:`i E + e` (:math:`E` epochs), and stops the trial
    when it falls below the median of the completed trials at that step (``median``)
    or out of the top rung (``halving``), never before ``warmup_epochs``. The final runs
    use each method's best complete trial (ties: the earlier trial); pruned and failed
    trials are never chosen.
    """
    import ray

    from otviz.runs import RunStore
    from otviz.sweep._search import Coordinator
    from otviz.sweep._worker import _call, run_job

    if not isinstance(spec, SweepSpec):
        raise TypeError(f"spec must be a SweepSpec (otviz.sweep.load_spec), got {type(spec).__name__}")
    bad = [s for s in stages if s not in ("tune", "final", "axes")]
    if bad or not stages:
        raise ValueError(f"stages must be among 'tune', 'final', 'axes', got {list(stages)}")
    if isinstance(cpus_per_trial, bool) or not isinstance(cpus_per_trial, int) or cpus_per_trial < 1:
        raise ValueError(f"cpus_per_trial must be an integer >= 1, got {cpus_per_trial!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    devices = {str(st.options.get("device", "cpu")) for st in spec.settings}
    gpus = gpus_per_trial if gpus_per_trial is not None else (1.0 if any(d.startswith("cuda") for d in devices) else 0.0)
    if gpus < 0:
        raise ValueError(f"gpus_per_trial must be >= 0, got {gpus_per_trial!r}")
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    store = store if isinstance(store, RunStore) else RunStore(store)

    recorded = store.sweeps().get(spec.name)
    wanted = spec.to_dict()
    if recorded is not None and recorded != wanted:
        diff = spec_differences(recorded, wanted)
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise SpecError(
            f"the store {store.path} holds sweep {spec.name!r} with another spec ({shown}). Its runs "
            "were trained under the old one: give the new spec another name, or use another store "
            "(--store), or restore the old spec to continue it")
    store.save_sweep(spec.name, wanted)

    t0 = time.perf_counter()
    if settings is not None:
        settings = tuple(settings)
        unknown = [s for s in settings if s not in {st.name for st in spec.settings}]
        if unknown:
            raise ValueError(f"settings: {unknown[0]!r} is not a setting of the sweep {spec.name!r} "
                             f"({[st.name for st in spec.settings]})")
    sweep = _Sweep(spec, store, threads=cpus_per_trial, stages=stages, log=say, settings=settings)
    started = _init_ray(address, workers if not address else None, gpus)
    refs: dict[Any, dict[str, Any]] = {}
    # Ctrl-C sets a flag that the loop checks between Ray calls: a KeyboardInterrupt raised
    # inside one of Ray's calls can leave its core worker in a broken state
    interrupted: list[int] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        coordinator = ray.remote(num_cpus=0)(Coordinator).options(max_concurrency=1).remote(wanted)
        task = ray.remote(run_job).options(num_cpus=cpus_per_trial, num_gpus=gpus, max_retries=0)
        sweep.restore(coordinator)
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // cpus_per_trial)
        if gpus:
            slots = min(slots, int(resources.get("GPU", 0) // gpus))
        if slots < 1:
            raise RuntimeError(f"the Ray cluster has {resources.get('CPU', 0)} CPUs and {resources.get('GPU', 0)} "
                               f"GPUs: too few for one trial ({cpus_per_trial} CPU, {gpus} GPU)")
        counts = spec.run_counts()
        say(f"sweep {spec.name!r}: up to {counts['tune']} tuning, {counts['final']} final and {counts['axes']} "
            f"axis runs; {sweep.summary.read_back['tune']} tuning runs read back from {store.path}; "
            f"{slots} trial(s) at a time on {len(ray.nodes())} node(s)")
        last_beat = time.monotonic()
        while True:
            if interrupted:
                raise KeyboardInterrupt("Ctrl-C")
            sweep.advance()
            while len(refs) < slots:
                job = _next_job(sweep, coordinator, _call)
                if job is None:
                    break
                sweep.jobs[job["key"]] = job
                refs[task.remote(job, coordinator)] = job
            if not refs:
                break
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            for ev in _call(coordinator, "drain"):
                sweep.on_epoch(*ev)
            for ref in done:
                job = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except (ray.exceptions.RayError, Exception) as exc:  # noqa: BLE001 - a lost worker
                    result = _lost(job, exc)
                for ev in _call(coordinator, "drain"):
                    sweep.on_epoch(*ev)
                _finish_job(sweep, coordinator, job, result, say, _call)
            if time.monotonic() - last_beat > _HEARTBEAT:
                sweep.heartbeat()
                last_beat = time.monotonic()
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)
        sweep.abandon("the sweep was stopped (Ctrl-C); run the same command again to continue it")
        raise
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        sweep.abandon("the sweep's driver stopped on an error; run the same command again to continue")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if started:
            ray.shutdown()
    sweep.summary.seconds = time.perf_counter() - t0
    return sweep.summary


def _next_job(sweep: _Sweep, coordinator: Any, call: Any) -> dict[str, Any] | None:
    """The next job to start: a final or axis run first, else a trial of the study with
    the fewest trials running (so each study's sampler sees as many results as possible)."""
    if sweep.ready:
        return sweep.ready.pop(0)
    if "tune" not in sweep.stages:
        return None
    open_ = [s for s in sweep.studies.values()
             if len(s.finished) + s.running < s.total]
    if not open_:
        return None
    study = min(open_, key=lambda s: (s.running, len(s.finished) + s.running, list(sweep.studies).index(s.key)))
    if study.pending:
        trial, labels = study.pending.pop(0)
        fixed = labels
    else:
        trial = study.next_trial
        study.next_trial += 1
        fixed = _recipe_labels(sweep.spec, study.setting, study.method) if (
            trial == 0 and sweep.spec.start_from_recipe) else None
    job_key = f"tune/{study.key}/t{trial}"
    labels = call(coordinator, "ask", study.key, job_key, fixed)
    study.running += 1
    job = sweep.tune_job(study, trial, labels)
    todo = [r for r in job["runs"] if "stored" not in r]
    if not todo:  # every seed read back: the trial is finished
        study.running -= 1
        outcome, values, _ = sweep._trial_state(study, trial, labels, sweep.spec.setting(study.setting).tune_seeds)
        value = sum(values) / len(values) if outcome == "complete" and values else None
        study.finished[trial] = {"params": labels, "state": outcome or "fail", "value": value}
        call(coordinator, "tell", job_key, outcome or "fail", value)
        return _next_job(sweep, coordinator, call)
    job["stored_values"] = [sweep._values(r["stored"])[0] for r in job["runs"] if "stored" in r]
    job["runs"] = todo
    return job


def _lost(job: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    text = " ".join(str(exc).split())[:300]
    return {"key": job["key"], "outcome": "fail", "node": None, "runs": [
        {"index": job["runs"][0]["index"], "name": job["runs"][0]["name"], "status": "failed",
         "error": f"the worker was lost: {type(exc).__name__}: {text}", "seconds": 0.0, "config": None,
         "metrics": [], "snapshots": [], "pruned": False}]}


def _finish_job(sweep: _Sweep, coordinator: Any, job: dict[str, Any], result: dict[str, Any],
                say: Callable[[str], None], call: Any) -> None:
    stage = job["stage"]
    vals = []
    for rec in result["runs"]:
        rid = sweep.write_record(job, rec, result.get("node"))
        sweep.summary.trained[stage] += 1
        if result.get("node"):
            sweep.summary.nodes.add(str(result["node"]))
        val, test = sweep._values(rid)
        tags = next(r for r in job["runs"] if r["index"] == rec["index"])["tags"]
        what = "pruned" if rec.get("pruned") else rec["status"]
        if rec.get("pruned"):
            sweep.summary.pruned += 1
        elif rec["status"] != "completed":
            sweep.summary.failed += 1
        trial = f" t{tags['trial']}" if tags.get("trial") is not None else ""
        point = f" {tags['point']['field']}={tags['point']['value']}" if tags.get("point") else ""
        detail = f"val {val:.3f}" + (f" test {test:.3f}" if math.isfinite(test) else "")
        if rec["status"] == "failed":
            detail = (rec.get("error") or "failed").splitlines()[0][:160]
        say(f"  [{stage}] {tags['setting']}/{tags['method']}{trial}{point} s{tags['seed']}: {what}, {detail} "
            f"({rec['seconds']:.0f} s)")
        if rec["status"] == "completed":
            vals.append(val)
        if stage == "final":
            sweep.final_values[(tags["setting"], tags["method"], tags["seed"])] = (val, test)
    if stage == "tune":
        study = sweep.studies[job["study"]]
        study.running -= 1
        outcome = result["outcome"]
        values = job.get("stored_values", []) + vals
        value = sum(values) / len(values) if outcome == "complete" and values else None
        labels = job["runs"][0]["tags"]["params"]
        study.finished[job["trial"]] = {"params": labels, "state": outcome, "value": value}
        call(coordinator, "tell", job["key"], outcome, value)
    else:
        sweep.outstanding[job["setting"]] -= 1
