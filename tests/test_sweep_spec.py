"""Sweep specs (otviz.sweep.spec), Holm's adjustment, the Optuna coordinator and one job on a
worker, without Ray (tests/test_sweep.py runs sweeps on Ray)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from otviz.stats import holm
from otviz.sweep import SpecError, SweepSpec, load_spec
from otviz.sweep.spec import Param

ROOT = Path(__file__).resolve().parents[1]
PAIRED = ROOT / "benchmarks" / "paired.toml"
QUICK = ROOT / "benchmarks" / "paired_quick.toml"

TINY = {
    "name": "tiny", "trials": 2, "tune_seeds": [100], "seeds": [0, 1], "ours": ["ot"],
    "comparisons": ["ot - scratch", "ot - best_baseline"],
    "search": {"pruner": "median", "warmup_epochs": 1, "startup_trials": 1},
    "space": {"common": {"lr": {"log_uniform": [1e-3, 3e-2]}}, "ot": {"lam": {"log_uniform": [0.1, 3.0]}}},
    "settings": {"transfer-small": {"methods": ["scratch", "ot"],
                                    "budget": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 32}}},
}


def tiny(**changes):
    d = copy.deepcopy(TINY)
    d.update(changes)
    return d


# ----------------------------------------------------------------------------- the benchmark's specs
def test_the_benchmark_specs_hold_the_old_protocol():
    full, quick = load_spec(PAIRED), load_spec(QUICK)
    # bench_paired.py's protocol: 6 trials on 2 tuning seeds (1 in distill), 10 final seeds, 3 axis
    # points of 3 methods on 5 seeds per setting; --quick: 3 trials, 1 tuning seed, 3 seeds, 2 points
    assert full.run_counts() == {"tune": 216, "final": 220, "axes": 135}
    assert quick.run_counts() == {"tune": 66, "final": 66, "axes": 36}
    assert [s.name for s in full.settings] == ["transfer", "distill", "transfer-small"]
    assert full.setting("distill").methods == ("scratch", "kd", "fitnets", "at", "nst", "sp", "ot", "kd+ot")
    assert full.setting("distill").axis.field == "student_width"
    assert not set(full.seeds) & {s for st in full.settings for s in st.tune_seeds}


def test_a_spec_round_trips_through_its_canonical_dict():
    spec = load_spec(PAIRED)
    again = SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.to_dict() == spec.to_dict()


def test_a_methods_space_is_common_then_each_term_then_its_own():
    d = tiny()
    d["space"]["kd"] = {"kd_weight": {"log_uniform": [0.1, 10.0]}, "lr": 0.5}
    d["space"]["kd+ot"] = {"lam": 2.0}
    d["settings"]["distill"] = {"methods": ["kd+ot"], "budget": {"epochs": 1}}
    spec = SweepSpec.from_dict(d)
    space = spec.method_space("kd+ot")
    assert list(space) == ["lr", "kd_weight", "lam"]
    assert space["lr"].kind == "fixed" and space["lr"].value == 0.5  # kd's entry wins over common
    assert space["lam"].kind == "fixed" and space["lam"].value == 2.0  # the method's own entry wins last
    assert spec.method_space("scratch")["lr"].kind == "log_uniform"


def test_choices_may_be_lists_and_decode_back():
    p = Param("pairs", "choice", choices=(["features.conv3"], ["features.conv2", "features.conv3"]))
    assert p.labels() == ('["features.conv3"]', '["features.conv2", "features.conv3"]')
    assert p.decode('["features.conv2", "features.conv3"]') == ["features.conv2", "features.conv3"]
    assert p.contains(["features.conv3"]) and not p.contains(["features.conv1"])
    lr = Param("lr", "log_uniform", low=1e-4, high=1e-2)
    assert lr.contains(1e-3) and not lr.contains(0.1) and not lr.contains("0.001") and not lr.contains(True)


def _set(d, path, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[k]
    if value is KeyError:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


BAD = [
    ("name", KeyError, "name is missing"),
    ("name", "a b", "name: must be 1-64 letters"),
    ("trials", 0, "trials: must be an integer >= 1"),
    ("seeds", [0], "seeds: needs at least 2 seed"),
    ("seeds", [0, 0, 1], "seeds: lists a seed twice"),
    ("tune_seeds", [0, 100], "tune_seeds: shares seeds [0] with the final seeds"),
    ("val_size", 0.0, "val_size: must be a fraction in (0, 1)"),
    ("colour", "red", "unknown field colour"),
    ("search.pruner", "hyperband", "search.pruner: must be one of ['median', 'halving', 'none']"),
    ("search.startup", 2, "unknown field search.startup"),
    ("space.common.lr", {"log_uniform": [0, 1]}, "space.common.lr: log_uniform needs low > 0"),
    ("space.common.lr", {"uniform": [1, 1]}, "space.common.lr: uniform must be [low, high] with low < high"),
    ("space.common.lr", {"normal": [0, 1]}, "space.common.lr: must be a plain value or a table with one of"),
    ("space.common.lr", {"choice": []}, "space.common.lr: choice must be a non-empty list"),
    ("space.common.epochs", {"int": [1.5, 3]}, "space.common.epochs: int must be [low, high] of integers"),
    ("space.common.learning_rate", 0.1, "space.common.learning_rate: is not a TrainConfig field"),
    ("space.common.seed", 3, "space.common.seed: is set by the sweep itself"),
    ("space.dropout", {}, "space.dropout: is not 'common', a method or a loss term"),
    ("settings.mnist", {"methods": ["ot"], "budget": {"epochs": 1}}, "settings.mnist: is not a setting"),
    ("settings.transfer-small.methods", ["ot", "magic"], "Unknown method 'magic'"),
    ("settings.transfer-small.methods", [], "settings.transfer-small.methods: is empty"),
    ("settings.transfer-small.budget", {"steps_per_epoch": 3}, "settings.transfer-small.budget: needs epochs"),
    ("settings.transfer-small.budget.epochs", 0, "settings.transfer-small.budget.epochs: must be an integer >= 1"),
    ("settings.transfer-small.budget.epoch", 2, "settings.transfer-small.budget.epoch: is not a TrainConfig field"),
    ("settings.transfer-small.options", {"method": "kd"}, "settings.transfer-small.options.method: is set by the sweep"),
    ("settings.transfer-small.trials", {"kd": 3}, "settings.transfer-small.trials: names 'kd', not a method"),
    ("settings.transfer-small.axis", {"field": "colour", "values": [1]}, "settings.transfer-small.axis.field: must be"),
    ("settings.transfer-small.axis", {"field": "k", "values": []}, "settings.transfer-small.axis.values: must be a non-empty"),
    ("settings.transfer-small.axis", {"field": "k", "values": [5], "methods": ["kd"]},
     "settings.transfer-small.axis.methods: 'kd' is neither a method"),
    ("comparisons", ["ot-scratch"], "comparisons: 'ot-scratch' is not 'A - B'"),
    ("comparisons", ["ot - kd"], "comparisons: 'ot - kd' names 'kd'"),
    ("comparisons", ["ot - ot"], "compares a method with itself"),
    ("ours", ["kd"], "ours: 'kd' is not a method of any setting"),
    ("settings", {}, "settings: is empty"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD])
def test_a_bad_spec_is_refused_naming_the_field(path, value, message):
    d = tiny()
    _set(d, path, value)
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict(d)
    assert message in str(info.value)


def test_spec_files_are_read_as_untrusted_regular_files(tmp_path):
    good = tmp_path / "s.toml"
    good.write_text('name = "x"\ntrials = 1\nseeds = [0, 1]\n[settings.distill]\nmethods = ["scratch"]\n'
                    'budget = { epochs = 1 }\n')
    assert load_spec(good).name == "x"
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ntrials = \n')
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML"):
        load_spec(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(latin)
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    with pytest.raises(ValueError, match="sweep spec"):
        load_spec(big)
    array = tmp_path / "array.yaml"
    array.write_text("- 1\n- 2\n")
    pytest.importorskip("yaml")
    with pytest.raises(SpecError, match="must be a table"):
        load_spec(array)


def test_a_fifo_spec_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)
    script = f"from otviz.sweep import load_spec\ntry:\n    load_spec({str(fifo)!r})\nexcept ValueError as e:\n    print('refused', e)\n"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "refused" in out.stdout, out.stderr[-1500:]
    assert time.perf_counter() - t0 < 30


# ----------------------------------------------------------------------------- Holm
def test_holm_matches_its_definition():
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") = 0.05 0.08 0.09 0.09 0.09
    assert np.allclose(holm([0.01, 0.02, 0.03, 0.04, 0.05]), [0.05, 0.08, 0.09, 0.09, 0.09])
    assert np.allclose(holm([0.04, 0.01, 0.03]), [0.06, 0.03, 0.06])  # input order kept
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.3, size=rng.integers(1, 9))
        order = np.argsort(p, kind="stable")
        m = len(p)
        expected = np.empty(m)
        running = 0.0
        for i, j in enumerate(order):
            running = max(running, min(1.0, (m - i) * p[j]))
            expected[j] = running
        assert np.allclose(holm(p), expected)
        assert np.all(holm(p) >= p)


def test_holm_keeps_nan_out_of_the_family_and_refuses_non_p_values():
    out = holm([np.nan, 0.2, 0.01])
    assert math.isnan(out[0]) and np.allclose(out[1:], [0.2, 0.02])  # m = 2, not 3
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        holm([0.5, 1.5])
    with pytest.raises(ValueError, match="1-d"):
        holm([[0.1]])


# ----------------------------------------------------------------------------- the coordinator (Optuna)
def test_trials_are_drawn_from_the_space_and_trial_zero_can_be_the_recipe():
    pytest.importorskip("optuna")
    from otviz.sweep._driver import _recipe_labels
    from otviz.sweep._search import Coordinator

    spec = load_spec(PAIRED)
    c = Coordinator(spec.to_dict())
    fixed = _recipe_labels(spec, "distill", "kd+ot")
    # the recipe of kd+ot in distill: lr 1e-2, kd_weight 1, temperature 4, lam 1, last layer, standardize, emd
    assert fixed == {"lr": 0.01, "weight_decay": 0.0, "kd_weight": 1.0, "temperature": 4.0, "lam": 1.0,
                     "pairs": '["features.conv3"]', "normalize": "standardize", "ot_method": "emd",
                     "lam_schedule": "constant"}
    assert c.ask("distill/kd+ot", "j0", fixed) == fixed
    space = spec.method_space("kd+ot")
    for i in range(1, 6):
        params = c.ask("distill/kd+ot", f"j{i}")
        assert set(params) == {n for n, p in space.items() if p.kind != "fixed"}
        for n, v in params.items():
            assert space[n].contains(space[n].decode(v)), (n, v)
    # seeded: another coordinator draws the same trials
    a, b = Coordinator(spec.to_dict()), Coordinator(spec.to_dict())
    assert [a.ask("transfer/ot", f"k{i}") for i in range(3)] == [b.ask("transfer/ot", f"k{i}") for i in range(3)]


def test_the_median_pruner_stops_a_trial_behind_the_completed_ones_after_the_warmup():
    pytest.importorskip("optuna")
    from otviz.sweep._search import Coordinator

    d = tiny(search={"pruner": "median", "warmup_epochs": 2, "startup_trials": 2})
    d["settings"]["transfer-small"]["budget"]["epochs"] = 3
    c = Coordinator(SweepSpec.from_dict(d).to_dict())
    good = {"params": {"lr": 0.01}, "state": "complete", "value": 0.8, "intermediate": {1: 0.7, 2: 0.8}}
    c.restore("transfer-small/scratch", [good, dict(good, params={"lr": 0.02})])
    c.ask("transfer-small/scratch", "bad")
    c.ask("transfer-small/scratch", "fine")
    assert c.report("bad", 0, 0, {"val/accuracy": 0.1}) is False  # epoch 0: never
    assert c.report("bad", 0, 1, {"val/accuracy": 0.2}) is False  # within the warm-up (2 epochs)
    assert c.report("bad", 0, 2, {"val/accuracy": 0.2}) is True   # behind the median (0.8) after epoch 2
    assert c.report("fine", 0, 1, {"val/accuracy": 0.75}) is False
    assert c.report("fine", 0, 2, {"val/accuracy": 0.9}) is False
    assert c.report("fine", 0, 3, {"val/accuracy": 0.1}) is False  # the last epoch: the run is done anyway
    events = c.drain()
    assert [(e[0], e[2]) for e in events] == [("bad", 0), ("bad", 1), ("bad", 2), ("fine", 1), ("fine", 2),
                                              ("fine", 3)]
    assert c.drain() == []
    c.tell("bad", "pruned")
    c.tell("fine", "complete", 0.9)
    study = c.studies["transfer-small/scratch"]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]


def test_spec_differences_name_each_changed_field():
    from otviz.sweep._driver import spec_differences

    a = SweepSpec.from_dict(tiny()).to_dict()
    b = SweepSpec.from_dict(tiny(trials=3, seeds=[0, 1, 2])).to_dict()
    diff = spec_differences(a, b)
    assert "seeds: [0, 1] -> [0, 1, 2]" in diff
    assert "settings.transfer-small.trials.scratch: 2 -> 3" in diff


# ----------------------------------------------------------------------------- train(on_epoch=)
def test_on_epoch_can_stop_a_training_which_is_recorded_as_stopped(tmp_path):
    from otviz.runs import RunStore
    from otviz.train import StopTraining, TrainConfig, train

    store = RunStore(tmp_path / "r.db")
    seen = []

    def on_epoch(epoch, row):
        seen.append((epoch, sorted(row)))
        if epoch == 2:
            raise StopTraining("behind the others")

    with pytest.raises(StopTraining) as info:
        train(TrainConfig(setting="transfer-small", method="scratch", epochs=4, steps_per_epoch=2, val_size=0.2),
              store=store, progress=False, on_epoch=on_epoch)
    assert [e for e, _ in seen] == [0, 1, 2]
    assert "val/accuracy" in seen[0][1]
    assert info.value.run_id is not None and len(info.value.history) == 3
    run = store.run(info.value.run_id)
    assert run["status"] == "interrupted" and run["error"] == "stopped early: behind the others"
    assert store.metrics(info.value.run_id, "val/accuracy")["epoch"].tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- one job, in this process
@pytest.fixture
def sweep_parts(tmp_path):
    pytest.importorskip("optuna")
    from otviz.runs import RunStore
    from otviz.sweep._driver import _Sweep
    from otviz.sweep._search import Coordinator

    def make(d):
        spec = SweepSpec.from_dict(d)
        return spec, Coordinator(spec.to_dict()), _Sweep(spec, RunStore(tmp_path / "s.db"), threads=1,
                                                          stages=("tune", "final", "axes"), log=lambda t: None)
    return make


def test_a_pruned_trial_stops_before_its_last_epoch_and_skips_its_other_seeds(sweep_parts):
    from otviz.sweep._worker import run_job

    d = tiny(tune_seeds=[100, 101], search={"pruner": "median", "warmup_epochs": 2, "startup_trials": 2})
    d["settings"]["transfer-small"]["budget"] = {"epochs": 4, "steps_per_epoch": 2, "batch_size": 32}
    spec, coord, sweep = sweep_parts(d)
    # two completed trials that were far better at every step (seed 100: steps 1-4)
    good = {"state": "complete", "value": 0.95, "intermediate": {s: 0.95 for s in range(1, 9)}}
    coord.restore("transfer-small/scratch", [dict(good, params={"lr": 0.01}), dict(good, params={"lr": 0.02})])
    study = sweep.studies["transfer-small/scratch"]
    labels = coord.ask(study.key, "tune/transfer-small/scratch/t2", {"lr": 0.001})
    job = sweep.tune_job(study, 2, labels)
    result = run_job(job, coord)
    assert result["outcome"] == "pruned"
    assert len(result["runs"]) == 1  # seed 101 was not trained
    rec = result["runs"][0]
    assert rec["pruned"] and rec["status"] == "interrupted"
    epochs = sorted({e for _, e, k, _, _ in rec["metrics"] if k == "val/accuracy"})
    assert epochs == [0, 1, 2]  # stopped after epoch 2 of 4 (the end of the warm-up)
    # the driver writes it as pruned
    rid = sweep.write_record(job, rec, result["node"])
    from otviz.sweep._driver import PRUNED_PREFIX, _is_pruned

    row = sweep.store.run(rid)
    assert _is_pruned(row["status"], row["error"]) and row["error"].startswith(PRUNED_PREFIX)
    assert "after epoch 2" in row["error"]
    assert row["config"]["sweep"]["trial"] == 2 and row["config"]["sweep"]["params"] == {"lr": 0.001}


def test_a_diverging_trial_fails_with_its_error_recorded(sweep_parts):
    from otviz.sweep._worker import run_job

    d = tiny()
    d["space"]["ot"] = {"lr": {"choice": [1e9]}}
    spec, coord, sweep = sweep_parts(d)
    study = sweep.studies["transfer-small/ot"]
    labels = coord.ask(study.key, "tune/transfer-small/ot/t0")
    job = sweep.tune_job(study, 0, labels)
    result = run_job(job, coord)
    assert result["outcome"] == "fail"
    rec = result["runs"][0]
    assert rec["status"] == "failed" and "non-finite" in rec["error"]
    rid = sweep.write_record(job, rec, result["node"])
    assert sweep.store.run(rid)["status"] == "failed"
    assert "non-finite" in sweep.store.run(rid)["error"]


# ----------------------------------------------------------------------------- the command (no training)
def test_sweep_run_dry_run_checks_the_spec_and_says_what_it_would_train(capsys):
    from otviz.cli import main

    assert main(["sweep", "run", str(PAIRED), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep 'paired'" in out and "valid" in out
    assert "at most 216 tuning, 220 final and 135 axis runs" in out
    assert "distill: trials per method: scratch 6, kd 6" in out


def test_sweep_command_errors_are_one_line(tmp_path, capsys):
    from otviz.cli import main
    from otviz.runs import RunStore

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ntrials = 0\nseeds = [0, 1]\n')
    assert main(["sweep", "run", str(bad)]) == 2
    assert "otviz sweep: error: " in capsys.readouterr().err
    assert main(["sweep", "run", str(PAIRED), "--stages", "final"]) == 2
    assert "final needs tune" in capsys.readouterr().err
    db = tmp_path / "runs.db"
    RunStore(db).create_run({"setting": "distill"})
    assert main(["sweep", "report", "paired", "--store", str(db)]) == 2
    err = capsys.readouterr().err
    assert "has no sweep 'paired'" in err and "otviz sweep run SPEC" in err
    assert main(["sweep", "report", "paired", "--store", str(tmp_path / "missing.db")]) == 2
    assert "no run store" in capsys.readouterr().err


def test_num_threads_limits_the_blas_pools_during_the_training(tmp_path):
    from threadpoolctl import threadpool_info

    from otviz.runs import RunStore
    from otviz.train import TrainConfig, train

    seen = []
    train(TrainConfig(setting="transfer-small", method="ot", epochs=1, steps_per_epoch=1, num_threads=1),
          store=RunStore(tmp_path / "r.db"), progress=False,
          on_epoch=lambda e, row: seen.append({p["filepath"]: p["num_threads"] for p in threadpool_info()}))
    assert seen and all(v == 1 for threads in seen for v in threads.values()), seen
    assert any(threads for threads in seen)  # NumPy's BLAS was seen
    after = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
    assert after != seen[0] or os.cpu_count() == 1  # restored afterwards


def test_a_variant_of_a_setting_is_tuned_on_its_own_with_its_options(sweep_parts):
    d = tiny()
    d["settings"]["small-k5-unlabelled"] = {"setting": "transfer-small", "methods": ["scratch", "ot"],
                                            "budget": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 32},
                                            "options": {"k": 5, "unlabelled": 1.0}}
    spec, coord, sweep = sweep_parts(d)
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    st = spec.setting("small-k5-unlabelled")
    assert st.setting == "transfer-small" and spec.setting("transfer-small").setting == "transfer-small"
    assert "small-k5-unlabelled/ot" in sweep.studies and "transfer-small/ot" in sweep.studies
    study = sweep.studies["small-k5-unlabelled/ot"]
    job = sweep.tune_job(study, 0, coord.ask(study.key, "j"))
    run = job["runs"][0]
    assert run["name"] == "tiny/tune/small-k5-unlabelled/ot/t0/s100"
    assert run["config"]["setting"] == "transfer-small" and run["config"]["k"] == 5
    assert run["config"]["unlabelled"] == 1.0 and run["tags"]["setting"] == "small-k5-unlabelled"
    bad = tiny()
    bad["settings"]["odd"] = {"setting": "mnist", "methods": ["ot"], "budget": {"epochs": 1}}
    with pytest.raises(SpecError, match=r"settings\.odd\.setting: is not a setting"):
        SweepSpec.from_dict(bad)
