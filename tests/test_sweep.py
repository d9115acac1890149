"""Sweeps on Ray: a tiny sweep on a local Ray of 2 CPUs, resuming after kill -9 and Ctrl-C, a
changed spec refused, and a two-node cluster on this machine (ray.cluster_utils.Cluster).

Each test starts Ray with 2 CPUs at most and shuts it down."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")

from otviz.runs import RunStore  # noqa: E402
from otviz.sweep import SpecError, SweepSpec, load_spec, run_sweep, sweep_report, sweep_tables  # noqa: E402
from otviz.sweep._driver import PRUNED_PREFIX, sweep_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: 2 methods x 2 trials x 2 final seeds, one tuning seed, 2 epochs of 3 steps
TINY = {
    "name": "tiny", "trials": 2, "tune_seeds": [100], "seeds": [0, 1], "ours": ["ot"],
    "comparisons": ["ot - scratch"],
    "search": {"pruner": "median", "warmup_epochs": 1, "startup_trials": 1},
    "space": {"common": {"lr": {"log_uniform": [1e-3, 3e-2]}}, "ot": {"lam": {"log_uniform": [0.1, 3.0]}}},
    "settings": {"transfer-small": {"methods": ["scratch", "ot"],
                                    "budget": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 32}}},
}


TINY_TOML = """
name = "tiny"
trials = 3
tune_seeds = [100]
seeds = [0, 1]
ours = ["ot"]
comparisons = ["ot - scratch"]
[search]
pruner = "median"
warmup_epochs = 1
startup_trials = 1
[space.common]
lr = { log_uniform = [1e-3, 3e-2] }
[space.ot]
lam = { log_uniform = [0.1, 3.0] }
[settings.transfer-small]
methods = ["scratch", "ot"]
budget = { epochs = 3, steps_per_epoch = 25, batch_size = 32 }
"""


@pytest.fixture(autouse=True)
def _no_ray_left():
    yield
    if ray.is_initialized():
        ray.shutdown()


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "OTVIZ_STORE": ""}


def test_a_tiny_sweep_on_a_local_ray_tunes_trains_paired_seeds_and_reports(tmp_path):
    d = copy.deepcopy(TINY)
    d["settings"]["transfer-small"]["axis"] = {"field": "k", "values": [5], "methods": ["scratch", "best_ours"],
                                               "seeds": [0, 1]}
    spec = SweepSpec.from_dict(d)
    db = tmp_path / "runs.db"
    lines = []
    summary = run_sweep(spec, db, workers=2, log=lines.append)
    assert not ray.is_initialized()  # the sweep started its own Ray and shut it down
    assert dict(summary.trained) == {"tune": 4, "final": 4, "axes": 4}
    assert summary.failed == 0 and len(summary.nodes) == 1
    store = RunStore(db)
    runs = sweep_runs(store, "tiny")
    assert len(runs) == 12 and set(runs.status) == {"completed"}
    assert sorted(runs.name) == sorted(
        [f"tiny/tune/transfer-small/{m}/t{t}/s100" for m in ("scratch", "ot") for t in (0, 1)]
        + [f"tiny/final/transfer-small/{m}/s{s}" for m in ("scratch", "ot") for s in (0, 1)]
        + [f"tiny/axes/transfer-small/k=5/{m}/s{s}" for m in ("scratch", "ot") for s in (0, 1)])
    axis_cfg = json.loads(runs[runs.name == "tiny/axes/transfer-small/k=5/ot/s0"].config.iloc[0])
    assert axis_cfg["k"] == 5 and axis_cfg["n_train"] == 25
    tags = {r["name"]: r["tags"] for r in runs.to_dict("records")}
    # trial 0 is the recipe (transfer-small: lr 1e-2, lam 1); trial 1 drawn by TPE within the space
    assert tags["tiny/tune/transfer-small/ot/t0/s100"]["params"] == {"lr": 0.01, "lam": 1.0}
    t1 = tags["tiny/tune/transfer-small/ot/t1/s100"]["params"]
    assert 1e-3 <= t1["lr"] <= 3e-2 and 0.1 <= t1["lam"] <= 3.0 and t1 != {"lr": 0.01, "lam": 1.0}
    # every run's epochs are in the store, as train() logs them (the driver copied the worker's record)
    for rid in runs.run_id:
        m = store.metrics(int(rid), "val/accuracy")
        assert m["epoch"].tolist() == [0, 1, 2]
        assert not store.snapshots(int(rid)).empty  # the OT plans per epoch
    tables = sweep_tables(store, "tiny")
    assert len(tables.trials) == 4 and set(tables.trials.state) == {"complete"}
    # the axis: k = 5 trained, k = 10 (the setting's own point) is the final runs
    assert sorted(set(tables.axes.value)) == [5, 10] and len(tables.axes) == 8
    assert tables.trials.groupby("method").chosen.sum().to_dict() == {"ot": 1, "scratch": 1}
    chosen = tables.trials[tables.trials.chosen & (tables.trials.method == "ot")].iloc[0]
    # the final runs use the chosen trial's options, on the paired seeds
    final_ot = [r for r in runs.to_dict("records") if r["tags"]["stage"] == "final" and r["method"] == "ot"]
    cfg = json.loads(final_ot[0]["config"])
    assert {k: cfg[k] for k in ("lr", "lam")} == json.loads(chosen.options)
    assert sorted(tables.final.seed[tables.final.method == "ot"]) == [0, 1]
    # the OT term's share of the loss, first and last epoch: alive in ot, absent from scratch
    shares = tables.final.set_index("method")
    assert shares.loc["ot", "ot_share_start"].between(0.01, 0.99).all()
    assert shares.loc["ot", "ot_share_end"].between(0.0, 0.99).all()
    assert shares.loc["scratch", "ot_share_start"].isna().all()
    report = sweep_report(store, "tiny")
    assert "| transfer-small | ot |" in report and " % -> " in report
    assert "| transfer-small | own | ot - scratch | ot - scratch | 2 |" in report
    # run again: everything is read back, nothing trained
    again = run_sweep(spec, db, workers=2, log=lines.append)
    assert dict(again.trained) == {} and again.read_back["tune"] == 4 and again.read_back["final"] == 4
    assert again.read_back["axes"] == 4
    assert len(sweep_runs(RunStore(db), "tiny")) == 12


def test_a_changed_spec_is_refused_with_the_difference_named(tmp_path):
    db = tmp_path / "runs.db"
    store = RunStore(db)
    store.save_sweep("tiny", SweepSpec.from_dict(TINY).to_dict())
    changed = copy.deepcopy(TINY)
    changed["trials"] = 3
    with pytest.raises(SpecError, match=r"holds sweep 'tiny' with another spec \(.*trials\.scratch: 2 -> 3"):
        run_sweep(SweepSpec.from_dict(changed), db, workers=1)
    assert not ray.is_initialized()  # refused before Ray started


def _wait_for(predicate, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _completed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        runs = RunStore(db, readonly=True).runs()
    except Exception:  # noqa: BLE001 - the store is being created
        return 0
    return int((runs.status == "completed").sum()) if not runs.empty else 0


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_a_stopped_sweep_continues_where_it_stopped(tmp_path, how):
    spec_file = tmp_path / "tiny.toml"
    d = copy.deepcopy(TINY)
    d["trials"] = 3
    d["settings"]["transfer-small"]["budget"] = {"epochs": 3, "steps_per_epoch": 25, "batch_size": 32}
    spec_file.write_text(TINY_TOML)
    assert load_spec(spec_file).to_dict() == SweepSpec.from_dict(d).to_dict()
    db = tmp_path / "runs.db"
    proc = subprocess.Popen([sys.executable, "-m", "otviz", "sweep", "run", str(spec_file), "--store", str(db),
                             "--workers", "2"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        _wait_for(lambda: _completed(db) >= 2 or proc.poll() is not None, 240, "two finished runs")
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        if how == "kill -9":
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            proc.wait(30)
        else:
            os.kill(proc.pid, signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 130, out[-3000:]
            assert "Run the same command again to continue" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what Ray may have left behind
        except ProcessLookupError:
            pass
    store = RunStore(db)
    before = sweep_runs(store, "tiny")
    done_before = int((before.status == "completed").sum())
    assert done_before >= 2
    if how == "Ctrl-C":  # nothing is left looking alive: the runs in progress were marked interrupted
        assert "running" not in set(before.status)
        interrupted = before[(before.status == "interrupted") & ~before.error.fillna("").str.startswith(PRUNED_PREFIX)]
        assert all("stopped (Ctrl-C)" in e for e in interrupted.error), list(interrupted.error)
    summary = run_sweep(load_spec(spec_file), db, workers=2, log=lambda t: None)
    assert summary.read_back["tune"] + summary.read_back["final"] >= done_before
    after = sweep_runs(RunStore(db), "tiny")
    finished = after[(after.status == "completed") | after.error.fillna("").str.startswith(PRUNED_PREFIX)]
    # every planned run once: 2 methods x 3 trials (completed, or pruned) + 2 methods x 2 final seeds
    assert len(finished) == 10 and finished.name.is_unique
    tables = sweep_tables(RunStore(db), "tiny")
    assert len(tables.trials) == 6 and set(tables.trials.state) <= {"complete", "pruned"}
    assert tables.trials.groupby("method").chosen.sum().to_dict() == {"ot": 1, "scratch": 1}
    assert len(tables.final) == 4 and set(tables.final.status) == {"completed"}


def test_a_two_node_cluster_trains_on_both_nodes_and_one_store_holds_the_results(tmp_path):
    from ray.cluster_utils import Cluster

    os.environ.setdefault("PYTHONPATH", str(ROOT))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        d = copy.deepcopy(TINY)
        d["trials"] = 3
        db = tmp_path / "runs.db"
        summary = run_sweep(SweepSpec.from_dict(d), db, address=cluster.address, log=lambda t: None)
        runs = sweep_runs(RunStore(db), "tiny")
        assert len(runs) == 10 and set(runs.status) == {"completed"}
        nodes = {r["node"] for r in runs.tags}
        assert len(nodes) == 2 and nodes == summary.nodes  # trials ran on both nodes
        assert {n.node_id for n in cluster.list_all_nodes()} == nodes
        # the sweep disconnected from the cluster, which still runs
        assert not ray.is_initialized()
        ray.init(address=cluster.address)
        assert sum(n["Alive"] for n in ray.nodes()) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
