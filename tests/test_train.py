"""Tests of the trainer: validation before training, logging, faults, separate processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from otviz.runs import RunStore
from otviz.train import TrainConfig, TrainingError, launch, stop, train

TINY = dict(epochs=2, steps_per_epoch=2, batch_size=16, num_threads=1)


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.db")


@pytest.mark.parametrize("setting,method", [("transfer", "ot"), ("transfer", "l2sp"),
                                            ("distill", "kd+ot"), ("transfer-small", "fitnets"),
                                            ("distill", "at"), ("transfer-digits", "finetune")])
def test_every_setting_trains_and_logs(store, setting, method):
    res = train(TrainConfig(setting=setting, method=method, **TINY), store=store, progress=False)
    run = store.run(res.run_id)
    assert run["status"] == "completed"
    m = store.metrics_wide(res.run_id)
    # per step: loss terms and the OT distance of every pair (also when not in the loss)
    ot_cols = [c for c in m.columns if c.startswith("ot/")]
    assert len(ot_cols) == 3 and m.loc[m.step == 4, ot_cols].notna().all(axis=None)
    assert "loss/total" in m.columns and "loss/ce" in m.columns
    # per epoch (0 = start, 1, 2): accuracies and one plan snapshot per pair
    acc = m.dropna(subset=["test/accuracy"])
    assert acc.epoch.tolist() == [0, 1, 2]
    assert ((acc["test/accuracy"] >= 0) & (acc["test/accuracy"] <= 1)).all()
    snaps = store.snapshots(res.run_id)
    assert len(snaps) == 2 * 3 * 3  # a plan and its cost matrix per pair and epoch
    cost = store.snapshot(res.run_id, "cost/features.conv2->features.conv2", epoch=2)
    assert cost.shape == store.snapshot(res.run_id, "features.conv2->features.conv2").shape
    assert (cost >= 0).all()
    plan = store.snapshot(res.run_id, "features.conv2->features.conv2", epoch=2)
    assert plan.ndim == 2 and abs(plan.sum() - 1) < 1e-3
    assert 0 <= res.test_accuracy <= 1


def test_student_starts_from_teacher_in_transfer(store):
    from otviz.train import _prepare

    s = _prepare(TrainConfig(setting="transfer", method="ot", **TINY))
    t_sd, s_sd = s.teacher.state_dict(), s.student.state_dict()
    assert torch.equal(t_sd["features.conv1.conv.weight"], s_sd["features.conv1.conv.weight"])
    assert s.student.head.out_features == 5
    s2 = _prepare(TrainConfig(setting="transfer", method="scratch", **TINY))
    assert not torch.equal(t_sd["features.conv1.conv.weight"], s2.student.state_dict()["features.conv1.conv.weight"])


def test_training_improves_accuracy(store):
    res = train(TrainConfig(setting="transfer", method="finetune", epochs=2, steps_per_epoch=15,
                            num_threads=1), store=store, progress=False)
    assert res.history[-1]["test/accuracy"] > res.history[0]["test/accuracy"] + 0.2


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="magic"), "Valid methods"),
    (dict(setting="imagenet"), "valid settings"),
    (dict(pairs=["features.conv9"]), "unknown teacher layer 'features.conv9'.*features.conv1"),
    (dict(pairs=["features.conv1:feature.conv1"]), "unknown student layer.*closest"),
    (dict(setting="distill", method="finetune"), "needs the teacher's architecture"),
    (dict(setting="transfer", method="kd"), "share the task"),
    (dict(device="tpu"), "device"),
    (dict(epochs=0), "epochs must be a positive integer"),
])
def test_bad_config_fails_before_training(store, kwargs, match):
    cfg = dict(TINY, **kwargs)
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(**cfg), store=store, progress=False)
    assert store.runs().empty


def test_unknown_config_key():
    with pytest.raises(ValueError, match="unknown config key.*valid keys"):
        TrainConfig.from_dict({"setting": "distill", "lambda": 0.1})


def test_nan_loss_marks_run_failed(store, monkeypatch):
    import otviz.losses as L

    orig = L.CrossEntropy.forward
    calls = {"n": 0}

    def poisoned(self, ctx):
        calls["n"] += 1
        out = orig(self, ctx)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(L.CrossEntropy, "forward", poisoned)
    with pytest.raises(TrainingError, match="step 3"):
        train(TrainConfig(setting="transfer", method="ot", **TINY), store=store, progress=False)
    runs = store.runs()
    assert runs.status.tolist() == ["failed"]
    assert "step 3" in runs.error.iloc[0]
    m = store.metrics_wide(int(runs.run_id.iloc[0]))
    assert set(m.step) >= {1, 2}
    assert store.integrity_check() == "ok"


def test_cli_train_and_runs(tmp_path, capsys):
    from otviz.cli import main

    db = str(tmp_path / "cli.db")
    rc = main(["train", "--setting", "transfer", "--method", "ot", "--epochs", "1",
               "--steps-per-epoch", "2", "--store", db, "--no-progress", "--threads", "1"])
    assert rc == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["runs", "--store", db]) == 0
    assert "completed" in capsys.readouterr().out
    assert main(["train", "--setting", "distill", "--method", "finetune", "--store", db]) == 2
    assert "teacher's architecture" in capsys.readouterr().err


def test_launch_runs_in_own_process_and_stop_interrupts(tmp_path):
    db = tmp_path / "launch.db"
    run = launch(TrainConfig(setting="distill", method="ot", epochs=50, num_threads=1), store_path=db)
    try:
        assert run.pid != os.getpid()
        st = RunStore(db)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and st.metrics(run.run_id).empty:
            time.sleep(0.2)
        assert not st.metrics(run.run_id).empty
        stop(run)
        run.process.wait(timeout=60)
        assert st.run(run.run_id)["status"] == "interrupted"
    finally:
        if run.process.poll() is None:
            run.process.kill()


def test_killed_training_leaves_consistent_store(tmp_path):
    db = tmp_path / "kill.db"
    run = launch(TrainConfig(setting="distill", method="kd+ot", epochs=50, num_threads=1), store_path=db)
    st = RunStore(db, stale_after=1.0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(st.metrics(run.run_id)) < 20:
        time.sleep(0.1)
    before = st.metrics(run.run_id)
    os.kill(run.pid, signal.SIGKILL)
    run.process.wait(timeout=30)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    after = st.metrics(run.run_id)
    assert len(after) >= len(before)
    assert st.run(run.run_id)["status"] == "interrupted"


def test_launch_rejects_bad_config_in_caller(tmp_path):
    with pytest.raises(ValueError, match="valid settings"):
        launch(TrainConfig(setting="nope"), store_path=tmp_path / "x.db")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_training(store):
    res = train(TrainConfig(setting="transfer", method="ot", device="cuda", **TINY), store=store,
                progress=False)
    assert store.run(res.run_id)["status"] == "completed"
