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
from otviz.train import (FROM_RECIPE, RECIPE_COMMON, RECIPES, OptionWarning, TrainConfig, TrainingError,
                         launch, recipe, stop, train)

TINY = dict(epochs=2, steps_per_epoch=2, batch_size=16, num_threads=1)


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.db")


@pytest.mark.parametrize("setting,method", [("transfer", "ot"), ("transfer", "l2sp"),
                                            ("distill", "kd+ot"), ("transfer-small", "fitnets"),
                                            ("distill", "at"), ("transfer-digits", "finetune"),
                                            ("transfer-small", "nst"), ("distill", "kd+sp")])
def test_every_setting_trains_and_logs(store, setting, method):
    # pairs=None: every alignable layer (the recipe takes only the last one)
    res = train(TrainConfig(setting=setting, method=method, pairs=None, **TINY), store=store, progress=False)
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


# ----------------------------------------------------------------------------- the recipe
def _benchmark_footer_options(path):
    """The options a benchmark results file says it ran with (its last paragraph)."""
    import ast
    import re

    text = path.read_text()
    lam = ast.literal_eval(re.search(r"lam per setting: (\{.*?\})\.", text).group(1))
    budgets = ast.literal_eval(re.search(r"Budgets: (\{.*\})\. Total", text).group(1))
    opts = dict(kv.split("=", 1) for kv in re.search(r"OT options: (.*?); lam per", text).group(1)
                .replace("pairs=['features.conv3']", "pairs=features.conv3").split(", "))
    return lam, budgets, opts


@pytest.mark.parametrize("results", ["transfer.md", "transfer_heldout.md"])
def test_recipe_is_what_the_benchmark_results_were_measured_with(results):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / results
    lam, budgets, opts = _benchmark_footer_options(path)
    for setting, budget in budgets.items():
        for method in ("scratch", "ot", "kd+ot", "at", "fitnets"):
            if method == "kd+ot" and setting != "distill":
                continue
            r = recipe(setting, method)
            assert {k: r[k] for k in budget} == budget
            assert r["steps_per_epoch"] == budget.get("steps_per_epoch")  # absent = one pass
            assert r["lam"] == (lam[setting] if "ot" in method else None)
            assert r["pairs"] == [opts["pairs"]]
            for key in ("cost", "normalize", "ot_method", "spatial"):
                assert r[key] == opts[key], key
            assert r["at_weight"] == (float(opts["at_weight"]) if method == "at" else None)
            # the baselines' usual weights, as TrainConfig had them when the table was measured
            assert (r["kd_weight"], r["temperature"]) == ((1.0, 4.0) if "kd" in method else (None, None))
            assert r["schedule"] == "cosine" and r["batch_size"] == 64


def test_benchmark_script_reads_its_options_from_the_recipe(monkeypatch, tmp_path):
    import importlib.util
    from pathlib import Path

    import otviz.train as T

    spec = importlib.util.spec_from_file_location(
        "bench_transfer", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_transfer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = []

    def fake_train(cfg, **kw):
        seen.append(cfg)
        return T.TrainResult(run_id=1, test_accuracy=0.5, train_accuracy=0.5)

    monkeypatch.setattr(T, "train", fake_train)
    for setting, methods in bench.METHODS.items():
        for method in methods:
            bench._run((setting, method, 3, {}, str(tmp_path / "b.db")))
    assert len(seen) == sum(len(m) for m in bench.METHODS.values())
    for cfg in seen:
        assert cfg.to_dict() == TrainConfig.from_recipe(cfg.setting, cfg.method, seed=3,
                                                        num_threads=1).to_dict()
    bench._run(("distill", "ot", 0, {"lam": 0.5}, str(tmp_path / "b.db")))
    assert seen[-1].lam == 0.5 and seen[-1].lr == RECIPES["distill"]["lr"]


def test_config_left_to_the_recipe_resolves_to_it_and_given_options_win():
    cfg = TrainConfig(setting="transfer-small", method="ot")
    assert cfg.lr is FROM_RECIPE and cfg.given()["setting"] == "transfer-small"
    r = cfg.resolved()
    assert {k: getattr(r, k) for k in recipe("transfer-small", "ot")} == recipe("transfer-small", "ot")
    assert (r.lr, r.lam, r.epochs, r.steps_per_epoch, r.normalize) == (0.01, 1.0, 8, 15, "standardize")
    # the setting decides: transfer's student starts at the teacher's weights, a smaller lr and lam
    t = TrainConfig(setting="transfer", method="ot").resolved()
    assert (t.lr, t.lam) == (RECIPES["transfer"]["lr"], RECIPES["transfer"]["lam"]) == (1e-3, 0.1)
    assert TrainConfig(setting="distill", method="ot").resolved().steps_per_epoch is None  # one pass
    # explicit values win, including None (all layers, raw responses)
    o = TrainConfig(setting="transfer-small", method="ot", lr=0.05, lam=0.3, pairs=None, normalize=None,
                    epochs=2).resolved()
    assert (o.lr, o.lam, o.pairs, o.normalize, o.epochs, o.steps_per_epoch) == (0.05, 0.3, None, None, 2, 15)
    assert TrainConfig.from_recipe("transfer-small", "ot", lr=0.05).to_dict() == \
        dataclasses_asdict(TrainConfig(setting="transfer-small", method="ot", lr=0.05).resolved())
    # to_dict and from_dict: what a run stores, and back
    d = TrainConfig(setting="distill", method="kd+ot").to_dict()
    assert FROM_RECIPE not in d.values() and d["kd_weight"] == RECIPE_COMMON["kd_weight"]
    assert TrainConfig.from_dict(d).resolved() == TrainConfig.from_dict(d)
    assert TrainConfig.from_dict({"setting": "distill", "method": "kd"}).resolved().lr == 0.01
    # the MLP's recipe takes its own last layer
    assert recipe("distill", "ot", arch="mlp")["pairs"] == ["features.fc2"]
    with pytest.raises(ValueError, match="valid settings"):
        recipe("imagenet", "ot")
    with pytest.raises(ValueError, match="Valid methods"):
        TrainConfig(setting="distill", method="magic").resolved()


def dataclasses_asdict(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)


@pytest.mark.parametrize("kwargs,match,dropped", [
    (dict(setting="distill", method="kd", lam=0.5), r"lam=0.5 is ignored: method 'kd' has no OT term", "lam"),
    (dict(setting="distill", method="ot", kd_weight=2.0), r"kd_weight=2.0 is ignored: .*no KD term", "kd_weight"),
    (dict(setting="distill", method="ot", temperature=2.0), r"temperature=2.0 is ignored", "temperature"),
    (dict(setting="transfer", method="ot", l2sp_weight=0.1), r"no L2-SP term", "l2sp_weight"),
    (dict(setting="transfer", method="scratch", at_weight=10.0), r"no attention-transfer term", "at_weight"),
    (dict(setting="transfer", method="ot", fitnets_weight=3.0), r"no FitNets term", "fitnets_weight"),
    (dict(setting="transfer", method="ot", eps=0.1), r"eps=0.1 is ignored: ot_method 'emd' is exact", "eps"),
    (dict(setting="transfer", method="ot", ot_method="emd", eps=0.1), r"pass ot_method 'sinkhorn'", "eps"),
])
def test_options_that_do_not_apply_are_ignored_with_the_reason(kwargs, match, dropped):
    cfg = TrainConfig(**kwargs)
    with pytest.warns(OptionWarning, match=match):
        r = cfg.resolved()
    assert getattr(r, dropped) is None  # the stored config says it was not used
    assert len(cfg.option_notes()) == 1


def test_options_that_apply_raise_no_warning_and_k_in_distill_is_applied_with_one():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(setting="distill", method="kd+ot", lam=0.5, kd_weight=2.0, temperature=3.0).resolved()
        TrainConfig(setting="transfer", method="ot", ot_method="sinkhorn", eps=0.05).resolved()
        TrainConfig(setting="transfer", method="scratch", normalize=None, cost="cosine").resolved()  # logged OT
        assert TrainConfig(setting="transfer", method="ot", ot_method="sinkhorn", eps=0.05).resolved().eps == 0.05
    with pytest.warns(OptionWarning, match="'distill' trains on the full training split"):
        assert TrainConfig(setting="distill", method="kd", k=50).resolved().k == 50


def test_stored_config_records_the_resolved_recipe(store):
    with pytest.warns(OptionWarning, match="lam"):
        res = train(TrainConfig(setting="transfer-small", method="fitnets", lam=2.0, epochs=1, steps_per_epoch=1,
                                batch_size=16, num_threads=1), store=store, progress=False)
    cfg = store.run(res.run_id)["config"]
    rec = recipe("transfer-small", "fitnets")
    assert cfg["lr"] == rec["lr"] == 0.01 and cfg["pairs"] == ["features.conv3"]
    assert cfg["normalize"] == "standardize" and cfg["fitnets_weight"] == 1.0
    assert cfg["lam"] is None and cfg["kd_weight"] is None  # not used by this method
    assert (cfg["epochs"], cfg["steps_per_epoch"], cfg["batch_size"]) == (1, 1, 16)  # given


# --------------------------------------------------------------------------- validation protocol
def test_validation_split_logs_val_per_epoch_and_test_once(store):
    cfg = TrainConfig(setting="transfer-small", method="ot", val_size=60, **TINY)
    res = train(cfg, store=store, progress=False)
    m = store.metrics_wide(res.run_id)
    val = m.dropna(subset=["val/accuracy"])
    assert val.epoch.tolist() == [0, 1, 2] and val["val/loss"].notna().all() and (val["val/loss"] > 0).all()
    test = m.dropna(subset=["test/accuracy"])
    assert test.epoch.tolist() == [2] and test.step.tolist() == [4]  # once, on the final model
    assert res.test_accuracy == pytest.approx(float(test["test/accuracy"].iloc[0]))
    assert res.val_accuracy == pytest.approx(float(val["val/accuracy"].iloc[-1]))
    # accuracies on 60 validation images are multiples of 1/60
    assert (val["val/accuracy"] * 60).round(6).mod(1).eq(0).all()
    assert [("test/accuracy" in row) for row in res.history] == [False, False, True]
    run = store.run(res.run_id)
    assert run["config"]["val_size"] == 60 and run["config"]["n_val"] == 60 and run["config"]["n_train"] == 50
    assert "val accuracy" in run["message"]


def test_without_validation_the_test_set_is_evaluated_every_epoch(store):
    res = train(TrainConfig(setting="transfer-small", method="scratch", **TINY), store=store, progress=False)
    m = store.metrics_wide(res.run_id)
    assert m.dropna(subset=["test/accuracy"]).epoch.tolist() == [0, 1, 2]
    assert "val/accuracy" not in m.columns and res.val_accuracy is None
    assert store.run(res.run_id)["config"]["val_size"] is None


def test_probe_batch_comes_from_the_validation_part():
    from otviz.train import PROBE_SIZE, _prepare

    s = _prepare(TrainConfig(setting="transfer-small", method="ot", val_size=0.2, **TINY))
    assert torch.equal(s.probe, s.task.target.X_val[:PROBE_SIZE])
    test = {x.numpy().tobytes() for x in s.task.target.X_test}
    assert not any(x.numpy().tobytes() in test for x in s.probe)
    s = _prepare(TrainConfig(setting="transfer-small", method="ot", **TINY))
    assert torch.equal(s.probe, s.task.target.X_test[:PROBE_SIZE])


@pytest.mark.parametrize("val_size,match", [(1.5, "val_size"), (0, "val_size"), (True, "val_size")])
def test_bad_val_size_fails_before_training(store, val_size, match):
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(setting="distill", method="scratch", val_size=val_size, **TINY), store=store,
              progress=False)
    assert store.runs().empty
    with pytest.raises(ValueError, match="val_size must be None, a fraction"):
        launch(TrainConfig(setting="distill", method="scratch", val_size=2.5), store_path=store.path)


def test_cli_val_size_option(tmp_path, capsys):
    from otviz._cli_train import config_from_args
    from otviz.cli import build_parser, main

    parser = build_parser()
    assert config_from_args(parser.parse_args(["train", "--val-size", "0.2"])).val_size == 0.2
    assert config_from_args(parser.parse_args(["train", "--val-size", "400"])).val_size == 400
    assert config_from_args(parser.parse_args(["train", "--val-size", "none"])).val_size is None
    assert config_from_args(parser.parse_args(["train"])).val_size is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--val-size", "1.5"])
    assert "whole number of images" in capsys.readouterr().err
    db = str(tmp_path / "cli.db")
    assert main(["train", "--setting", "transfer-small", "--method", "scratch", "--epochs", "1",
                 "--steps-per-epoch", "1", "--val-size", "50", "--store", db, "--no-progress",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "val-size 50*" in out and "validation" in out and "test accuracy" in out


# --------------------------------------------------------------------------- paired seeds
PAIRED_METHODS = ("scratch", "fitnets", "ot", "at")


def test_same_seed_gives_every_method_the_same_split_and_student(monkeypatch):
    import otviz.teachers
    from otviz.train import _prepare

    real_load = otviz.teachers.load_teacher
    draws = {"n": 0}

    def load_and_draw(*args, **kwargs):  # something drawing a method-dependent amount of random numbers
        out = real_load(*args, **kwargs)
        torch.rand(draws["n"])
        return out

    monkeypatch.setattr(otviz.teachers, "load_teacher", load_and_draw)
    setups = {}
    for i, method in enumerate(PAIRED_METHODS):
        draws["n"] = 100 * (i + 1)  # whatever was drawn before must not matter
        setups[method] = _prepare(TrainConfig(setting="transfer-small", method=method, val_size=0.2, seed=4,
                                              **TINY))
    ref = setups["scratch"]
    ref_sd = ref.student.state_dict()
    for method, s in setups.items():
        assert torch.equal(s.task.target.X_train, ref.task.target.X_train), method
        assert torch.equal(s.task.target.X_val, ref.task.target.X_val), method
        sd = s.student.state_dict()
        assert sd.keys() == ref_sd.keys()
        assert all(torch.equal(sd[k], ref_sd[k]) for k in sd), method
        assert s.order_seed == ref.order_seed
    other = _prepare(TrainConfig(setting="transfer-small", method="ot", val_size=0.2, seed=5, **TINY))
    assert not torch.equal(other.student.state_dict()["head.weight"], ref_sd["head.weight"])
    assert not torch.equal(other.task.target.X_val, ref.task.target.X_val)
    assert other.order_seed != ref.order_seed


def test_same_seed_gives_the_same_new_head_to_every_method_that_starts_from_the_teacher():
    from otviz.train import _prepare

    heads = []
    for method in ("finetune", "l2sp", "fitnets", "at", "ot"):
        torch.rand(7)
        s = _prepare(TrainConfig(setting="transfer", method=method, seed=2, **TINY))
        heads.append(s.student.head.weight.detach().clone())
    assert all(torch.equal(h, heads[0]) for h in heads)


def test_same_seed_gives_every_method_the_same_minibatches(store, monkeypatch):
    import otviz.train as tr

    real = tr._minibatch_indices
    seen: dict[str, list[list[int]]] = {}

    rng_at_first_step: dict[str, torch.Tensor] = {}

    def recording(n, batch_size, seed):
        out = seen.setdefault(current, [])
        for idx in real(n, batch_size, seed):
            if not out:  # the global RNG as the first step starts (dropout would draw from it)
                rng_at_first_step[current] = torch.random.get_rng_state()
            out.append(idx.tolist())
            yield idx

    monkeypatch.setattr(tr, "_minibatch_indices", recording)
    for current in PAIRED_METHODS:
        train(TrainConfig(setting="transfer-small", method=current, val_size=50, seed=1, epochs=1,
                          steps_per_epoch=5, batch_size=16, num_threads=1), store=store, progress=False)
    ref = seen["scratch"]
    assert len(ref) == 5 and [len(b) for b in ref] == [16, 16, 16, 2, 16]  # passes over 50 images
    assert sorted(sum(ref[:4], [])) == list(range(50))
    assert all(seen[m] == ref for m in PAIRED_METHODS)
    assert all(torch.equal(rng_at_first_step[m], rng_at_first_step["scratch"]) for m in PAIRED_METHODS)
    # another seed, another order
    current = "seed 2"
    train(TrainConfig(setting="transfer-small", method="scratch", val_size=50, seed=2, epochs=1,
                      steps_per_epoch=1, batch_size=16, num_threads=1), store=store, progress=False)
    assert seen["seed 2"][0] != ref[0]


def test_seed_must_be_a_non_negative_integer(store):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        train(TrainConfig(setting="distill", method="scratch", seed=-1, **TINY), store=store, progress=False)
