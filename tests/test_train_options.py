"""Trainer options of the benchmark protocol: the schedule of lambda, the teacher's cached outputs."""

import math

import pytest
import torch

from otviz import train as tr
from otviz.runs import RunStore
from otviz.train import TrainConfig, lam_factor, train


def _cfg(**kw):
    base = dict(setting="transfer-small", method="ot", epochs=2, steps_per_epoch=3, k=2, seed=0,
                num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_lam_factor_constant_and_linear():
    assert [lam_factor("constant", t, 10) for t in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [lam_factor("linear", t, 10) for t in (0, 5, 9, 10)] == [1.0, 0.5, pytest.approx(0.1), 0.0]
    with pytest.raises(ValueError, match="valid choices are 'constant', 'linear'"):
        lam_factor("cosine", 0, 10)


def test_linear_lam_schedule_weights_the_ot_term_by_the_remaining_fraction(tmp_path):
    res_const = train(_cfg(lam=2.0), store=RunStore(tmp_path / "a.db"), progress=False)
    res_lin = train(_cfg(lam=2.0, lam_schedule="linear"), store=RunStore(tmp_path / "b.db"), progress=False)
    a = RunStore(tmp_path / "a.db").metrics(res_const.run_id, ["loss/ot", "ot/features.conv3->features.conv3"])
    b = RunStore(tmp_path / "b.db").metrics(res_lin.run_id, ["loss/ot", "ot/features.conv3->features.conv3"])
    for df, expect in ((a, lambda t: 2.0), (b, lambda t: 2.0 * (1 - (t - 1) / 6))):
        w = df.pivot_table(index="step", columns="key", values="value")
        ratio = (w["loss/ot"] / w["ot/features.conv3->features.conv3"]).to_numpy()  # weighted term / raw term
        assert ratio == pytest.approx([expect(t) for t in w.index], rel=1e-4)
    assert RunStore(tmp_path / "b.db").run(res_lin.run_id)["config"]["lam_schedule"] == "linear"


def test_unknown_lam_schedule_is_refused_before_a_run_is_recorded(tmp_path):
    with pytest.raises(ValueError, match="unknown lam_schedule 'warmup'"):
        train(_cfg(lam_schedule="warmup"), store=RunStore(tmp_path / "r.db"), progress=False)
    assert RunStore(tmp_path / "r.db").runs().empty


@pytest.mark.parametrize("setting,method", [("distill", "kd+ot"), ("transfer-small", "fitnets")])
def test_cached_teacher_outputs_train_like_the_per_step_forward(tmp_path, monkeypatch, setting, method):
    """The teacher's outputs computed once for the training split give the same steps as running
    it at every step (to float rounding)."""
    kw = dict(setting=setting, method=method, epochs=1, steps_per_epoch=4, k=3, seed=1)
    built = []
    real_build = tr._TeacherCache.build.__func__

    def counting(cls, *a, **k):
        out = real_build(cls, *a, **k)
        built.append(out)
        return out

    monkeypatch.setattr(tr._TeacherCache, "build", classmethod(counting))
    cached = train(_cfg(**kw), store=RunStore(tmp_path / "c.db"), progress=False)
    assert built and built[-1] is not None
    monkeypatch.setattr(tr, "TEACHER_CACHE_BYTES", 0)  # nothing fits: the teacher runs every step
    fresh = train(_cfg(**kw), store=RunStore(tmp_path / "f.db"), progress=False)
    assert built[-1] is None
    ma = RunStore(tmp_path / "c.db").metrics(cached.run_id)
    mb = RunStore(tmp_path / "f.db").metrics(fresh.run_id)
    step_keys = sorted(k for k in set(ma["key"]) if k.startswith("loss/") or k.startswith("ot/"))
    assert step_keys
    for key in step_keys:
        va = ma[ma.key == key].sort_values("step")["value"].to_numpy()
        vb = mb[mb.key == key].sort_values("step")["value"].to_numpy()
        assert va == pytest.approx(vb, rel=1e-4, abs=1e-6), key
    assert cached.train_accuracy == pytest.approx(fresh.train_accuracy, abs=1e-9)


def test_teacher_cache_matches_a_forward_and_keeps_the_neuron_axis():
    from otviz.models import build_model

    torch.manual_seed(0)
    teacher = build_model("cnn", width=0.5, num_classes=5).eval()
    X = torch.rand(37, 1, 28, 28)
    cache = tr._TeacherCache.build(teacher, X, ["features.conv2", "features.conv3"], torch.device("cpu"),
                                   chunk=10)
    idx = torch.tensor([3, 36, 0, 11])
    logits, acts = cache.batch(idx)
    ref_logits, ref = tr._forward(teacher, X[idx], ["features.conv2", "features.conv3"])
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for name in ("features.conv2", "features.conv3"):
        assert torch.allclose(acts[name], ref[name], atol=1e-5)
        assert acts.info[name].channel_axis == 1
    assert tr._TeacherCache.build(teacher, X, ["features.conv3"], torch.device("cpu"), limit=1000) is None
    assert not math.isnan(float(logits.sum()))


def test_deeply_nested_or_huge_config_is_a_short_value_error(tmp_path):
    deep: dict = {}
    cur = deep
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(ValueError, match="more than 64 levels deep"):
        TrainConfig.from_dict({"setting": "transfer-digits", "name": deep})
    # the same config given directly reaches the store, which refuses it as clearly
    with pytest.raises(ValueError, match="more than 64 levels deep"):
        RunStore(tmp_path / "runs.db").create_run({"name": deep})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['k0', .*\] \(100000 items\)") as info:
        TrainConfig.from_dict({f"k{i}": i for i in range(100_000)})
    assert len(str(info.value)) < 1000


def test_reg_m_reaches_the_unbalanced_ot_term_and_is_ignored_by_the_other_solvers():
    import warnings

    from otviz.train import OptionWarning, TrainConfig, _ot_terms, _prepare

    s = _prepare(TrainConfig(setting="transfer-small", method="ot", ot_method="unbalanced", eps=0.1, reg_m=0.05,
                             epochs=1))
    (term,) = _ot_terms(s.loss)
    assert term.method == "unbalanced" and term.solver_options == {"reg_m": 0.05}
    with pytest.warns(OptionWarning, match="reg_m=0.5 is ignored"):
        cfg = TrainConfig(setting="transfer-small", method="ot", reg_m=0.5).resolved()
    assert cfg.reg_m is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="reg_m must be a positive number"):
            _prepare(TrainConfig(setting="transfer-small", method="ot", ot_method="unbalanced", eps=0.1, reg_m=-1.0))
