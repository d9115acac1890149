"""One sweep job on a worker: train its runs in turn, report epochs, return the records.

A job is one tuning trial (its runs are the tuning seeds, trained one after the other
and stopped together when the pruner says so), or one final or axis run. Each run is
trained by :func:`otviz.train.train` into a throw-away run store in a temporary
directory of the worker's machine; the worker sends each epoch's metrics to the
coordinator as it is logged (so the driver shows the run live and the pruner can
decide), and returns the whole record (every metric, the plan snapshots, the status
and error) for the driver to write into the sweep's store. No file is shared between
machines.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["run_job"]


def _call(coordinator: Any, method: str, *args: Any) -> Any:
    """Call the coordinator, a Ray actor handle or (in-process) a plain object."""
    fn = getattr(coordinator, method)
    if hasattr(fn, "remote"):
        import ray

        return ray.get(fn.remote(*args))
    return fn(*args)


def _node() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - the node id is a label only
        pass
    return socket.gethostname()


def run_job(job: dict[str, Any], coordinator: Any) -> dict[str, Any]:
    """Train the job's runs; return ``{"key", "outcome", "runs", "node", "host"}``.

    ``outcome`` is "complete" (every run completed), "pruned" (the pruner stopped the
    trial; the runs after the stopped one are not trained) or "fail" (a run failed: the
    loss diverged, or an error, whose text is in that run's record).
    """
    import torch

    from otviz.runs import RunStore
    from otviz.train import StopTraining, TrainingError, train

    threads = int(job.get("threads") or 1)
    torch.set_num_threads(threads)
    node, host = _node(), socket.gethostname()
    records: list[dict[str, Any]] = []
    outcome = "complete"
    for run in job["runs"]:
        with tempfile.TemporaryDirectory(prefix="otviz-sweep-") as tmp:
            store = RunStore(Path(tmp) / "run.db")
            id_file = Path(tmp) / "run_id"
            info = {"node": node, "host": host, "pid": os.getpid()}

            def on_epoch(epoch: int, row: Any, run: dict[str, Any] = run, store: Any = store,
                         id_file: Path = id_file) -> None:
                if epoch == 0:  # the stored config (the trainer adds teacher, n_train, ...)
                    cfg = store.run(int(id_file.read_text()))["config"]
                    n, bs = int(cfg["n_train"]), int(cfg["batch_size"])
                    run["steps"] = int(cfg.get("steps_per_epoch") or math.ceil(n / min(bs, n)))
                    extra = dict(info, config=cfg, step=0)
                else:
                    extra = {"step": epoch * run["steps"]}
                stop = _call(coordinator, "report", job["key"], run["index"], epoch, dict(row), extra)
                if stop and job.get("prune"):
                    raise StopTraining(
                        f"pruned by the sweep after epoch {epoch}: validation accuracy "
                        f"{row.get('val/accuracy', float('nan')):.3f} is below the median of the "
                        f"earlier trials at the same seed and epoch")

            status, error, pruned = "completed", None, False
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    train(dict(run["config"], num_threads=threads), store=store, progress=False,
                          run_id_file=id_file, on_epoch=on_epoch)
                except StopTraining:
                    status, pruned = "interrupted", True
                except TrainingError:  # diverged: recorded as failed by train
                    status = "failed"
                except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                    status = "failed"
                    from otviz.runs import _failure_text

                    error = _failure_text(exc)
            rec = _record(store, id_file, run, status, error, time.perf_counter() - t0)
            rec["pruned"] = pruned
            records.append(rec)
        if pruned:
            outcome = "pruned"
            break
        if status == "failed":
            outcome = "fail"
            break
    return {"key": job["key"], "outcome": outcome, "runs": records, "node": node, "host": host}


def _record(store: Any, id_file: Path, run: dict[str, Any], status: str, error: str | None,
            seconds: float) -> dict[str, Any]:
    """What the driver needs to copy the run into the sweep's store."""
    rec: dict[str, Any] = {"index": run["index"], "name": run["name"], "status": status, "error": error,
                           "seconds": seconds, "config": None, "metrics": [], "snapshots": []}
    if not id_file.exists():  # refused before the run existed (a bad option)
        return rec
    rid = int(id_file.read_text())
    row = store.run(rid)
    rec["config"] = row["config"]
    rec["status"] = row["status"]
    rec["error"] = row.get("error") or error
    m = store.metrics(rid)
    if not m.empty:
        times = m["time"].map(lambda t: t.timestamp())
        rec["metrics"] = [(int(s), None if e is None or e != e else int(e), str(k), float(v), float(t))
                          for s, e, k, v, t in zip(m["step"], m["epoch"].astype(object), m["key"],
                                                   m["value"], times)]
    snaps = store.snapshots(rid)
    for key, epoch, step, meta in zip(snaps["key"], snaps["epoch"], snaps["step"], snaps["meta"]):
        rec["snapshots"].append((str(key), int(epoch), int(step), store.snapshot(rid, key, step=int(step)),
                                 meta))
    return rec
