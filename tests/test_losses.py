"""Tests of otviz.losses: each method's math, its invariances, gradients, and the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from otviz.losses import (
    KD,
    L2SP,
    METHODS,
    AttentionTransfer,
    CombinedLoss,
    CrossEntropy,
    FitNets,
    OTRegularizer,
    StepContext,
    build_loss,
    layer_pairs,
    ot_layer_distance,
    pair_key,
    parse_method,
    probe_channels,
)


def make_ctx(
    *,
    n: int = 8,
    classes: int = 5,
    student_logits: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    student_features: dict | None = None,
    teacher_features: dict | None = None,
    student: nn.Module | None = None,
    seed: int = 0,
) -> StepContext:
    g = torch.Generator().manual_seed(seed)
    if student_logits is None:
        student_logits = torch.randn(n, classes, generator=g, requires_grad=True)
    n = student_logits.shape[0]
    return StepContext(
        inputs=torch.randn(n, 1, 8, 8, generator=g),
        targets=torch.randint(0, student_logits.shape[1], (n,), generator=g),
        student_logits=student_logits,
        teacher_logits=teacher_logits,
        student_features=student_features or {},
        teacher_features=teacher_features or {},
        student=student if student is not None else nn.Linear(2, 2),
    )


class TinyNet(nn.Module):
    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


# ----------------------------------------------------------------------------
# pairs, CE
# ----------------------------------------------------------------------------
def test_layer_pairs_forms_and_errors():
    assert layer_pairs("a") == (("a", "a"),)
    assert layer_pairs(["a:b", ("c", "d")]) == (("a", "b"), ("c", "d"))
    with pytest.raises(ValueError, match="at least one"):
        layer_pairs([])
    with pytest.raises(ValueError, match="twice"):
        layer_pairs(["a", ("a", "a")])
    with pytest.raises(ValueError, match="pair"):
        layer_pairs([("a", "b", "c")])
    with pytest.raises(ValueError, match="needs layer pairs"):
        layer_pairs(None, "ot")
    assert pair_key("t", "s") == "t->s"


def test_cross_entropy_matches_torch():
    ctx = make_ctx()
    ce = CrossEntropy(weight=2.0)
    expected = 2.0 * F.cross_entropy(ctx.student_logits, ctx.targets)
    torch.testing.assert_close(ce(ctx), expected)
    bad = make_ctx(student_logits=torch.randn(4, 3))
    bad.targets = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="targets"):
        ce(bad)


# ----------------------------------------------------------------------------
# KD
# ----------------------------------------------------------------------------
def test_kd_zero_for_equal_logits_positive_otherwise():
    s = torch.randn(6, 4, requires_grad=True)
    kd = KD(temperature=3.0)
    assert kd(make_ctx(student_logits=s, teacher_logits=s.detach().clone())).abs().item() < 1e-6
    other = torch.randn(6, 4)
    assert kd(make_ctx(student_logits=s, teacher_logits=other)).item() > 1e-4


def test_kd_matches_manual_formula_and_gradient_goes_to_student_only():
    torch.manual_seed(1)
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    T, w = 2.5, 0.7
    value = KD(temperature=T, weight=w)(make_ctx(student_logits=s, teacher_logits=t))
    p_t = torch.softmax(t.detach() / T, dim=1)
    p_s = torch.softmax(s.detach() / T, dim=1)
    manual = w * T**2 * (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean()
    torch.testing.assert_close(value.detach(), manual)
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kd_errors_name_the_problem():
    kd = KD()
    with pytest.raises(ValueError, match="share the task"):
        kd(make_ctx(student_logits=torch.randn(4, 3), teacher_logits=torch.randn(4, 5)))
    with pytest.raises(ValueError, match="teacher_logits is None"):
        kd(make_ctx(student_logits=torch.randn(4, 3), teacher_logits=None))
    with pytest.raises(ValueError, match="temperature"):
        KD(temperature=0)
    assert kd.needs_teacher_logits and kd.needs_teacher
    assert kd.teacher_layers == () and kd.extra_parameters() == []


# ----------------------------------------------------------------------------
# L2-SP
# ----------------------------------------------------------------------------
def test_l2sp_zero_at_start_grows_and_gradient_points_back():
    torch.manual_seed(0)
    net = TinyNet()
    reg = L2SP(net, weight=0.5, head_weight=0.0)
    ctx = make_ctx(student=net)
    assert reg(ctx).item() == 0.0

    w0 = net.features[0].weight.detach().clone()
    with torch.no_grad():
        net.features[0].weight.add_(0.1)
    v1 = reg(ctx)
    n_w = net.features[0].weight.numel()
    assert v1.item() == pytest.approx(0.5 / 2 * 0.01 * n_w, rel=1e-5)
    with torch.no_grad():
        net.features[0].weight.add_(0.1)
    v2 = reg(ctx)
    assert v2.item() > v1.item()

    net.zero_grad()
    v2.backward()
    grad = net.features[0].weight.grad
    # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0): points away from the start
    torch.testing.assert_close(grad, 0.5 * (net.features[0].weight.detach() - w0))
    assert net.head.weight.grad is None or net.head.weight.grad.abs().sum() == 0


def test_l2sp_head_gets_plain_weight_decay_and_reference_is_a_copy():
    torch.manual_seed(0)
    net = TinyNet()
    reg = L2SP(net.state_dict(), weight=1.0, head_weight=0.2)
    value = reg(make_ctx(student=net))
    expected = 0.1 * (net.head.weight.pow(2).sum() + net.head.bias.pow(2).sum())
    torch.testing.assert_close(value.detach(), expected.detach())
    d = reg.diagnostics()
    assert d["l2sp/sq_distance"] == 0.0 and d["l2sp/head_sq_norm"] > 0


def test_l2sp_reference_missing_parameters_is_an_error():
    net = TinyNet()
    reg = L2SP({"features.0.weight": net.features[0].weight}, head_prefix="head")
    with pytest.raises(ValueError, match="features.0.bias"):
        reg(make_ctx(student=net))
    bigger = TinyNet(width=6)
    with pytest.raises(ValueError, match="shapes"):
        L2SP(net)(make_ctx(student=bigger))
    with pytest.raises(TypeError, match="reference"):
        L2SP([1, 2, 3])


# ----------------------------------------------------------------------------
# FitNets
# ----------------------------------------------------------------------------
def test_fitnets_regressors_get_gradients_and_are_extra_parameters():
    torch.manual_seed(0)
    t = torch.randn(4, 8, 5, 5)
    s = torch.randn(4, 3, 5, 5, requires_grad=True)
    fit = FitNets([("t", "s")], teacher_channels=8, student_channels={"s": 3}, weight=2.0)
    params = fit.extra_parameters()
    assert len(params) == 2 and {tuple(p.shape) for p in params} == {(8, 3, 1, 1), (8,)}
    assert set(map(id, params)) == set(map(id, fit.parameters()))
    ctx = make_ctx(n=4, teacher_features={"t": t}, student_features={"s": s})
    value = fit(ctx)
    reg = fit.regressors[0]
    torch.testing.assert_close(value, 2.0 * F.mse_loss(reg(s), t))
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert s.grad is not None
    assert fit.teacher_layers == ("t",) and fit.student_layers == ("s",)
    assert set(fit.diagnostics()) == {"fitnets/t->s"}


def test_fitnets_resizes_student_and_handles_dense_features():
    torch.manual_seed(0)
    t = torch.randn(4, 6, 4, 4)
    s = torch.randn(4, 2, 8, 8, requires_grad=True)
    fit = FitNets(["x:y"], [6], [2])
    value = fit(make_ctx(n=4, teacher_features={"x": t}, student_features={"y": s}))
    expected = F.mse_loss(fit.regressors[0](F.adaptive_avg_pool2d(s, 4)), t)
    torch.testing.assert_close(value, expected)
    dense = FitNets(["fc"], 5, 3)
    v = dense(make_ctx(n=4, teacher_features={"fc": torch.randn(4, 5)},
                       student_features={"fc": torch.randn(4, 3)}))
    assert v.ndim == 0 and v.item() > 0
    with pytest.raises(ValueError, match="student_channels"):
        dense(make_ctx(n=4, teacher_features={"fc": torch.randn(4, 5)},
                       student_features={"fc": torch.randn(4, 7)}))
    with pytest.raises(ValueError, match="student feature 'fc'"):
        dense(make_ctx(n=4, teacher_features={"fc": torch.randn(4, 5)}))


def test_probe_channels_reads_widths():
    net = TinyNet(width=7)
    assert probe_channels(net, ["features.0", "head"], torch.zeros(2, 1, 6, 6)) == {
        "features.0": 7, "head": 3}


# ----------------------------------------------------------------------------
# attention transfer
# ----------------------------------------------------------------------------
def test_at_zero_for_identical_features_and_scale_invariant():
    torch.manual_seed(0)
    t = torch.randn(4, 8, 6, 6)
    at = AttentionTransfer(["a"], weight=1000.0)
    same = at(make_ctx(n=4, teacher_features={"a": t}, student_features={"a": t.clone()}))
    assert same.item() == pytest.approx(0.0, abs=1e-9)

    s = torch.randn(4, 3, 6, 6)
    base = at(make_ctx(n=4, teacher_features={"a": t}, student_features={"a": s}))
    scaled = at(make_ctx(n=4, teacher_features={"a": 5 * t}, student_features={"a": 0.01 * s}))
    assert base.item() > 0
    assert scaled.item() == pytest.approx(base.item(), rel=1e-4)


def test_at_matches_reference_formula_resizes_and_flows_gradient():
    torch.manual_seed(0)
    t = torch.randn(4, 8, 8, 8)
    s = torch.randn(4, 3, 4, 4, requires_grad=True)
    at = AttentionTransfer([("t", "s")], weight=10.0)
    value = at(make_ctx(n=4, teacher_features={"t": t}, student_features={"s": s}))
    qt = F.normalize(F.adaptive_avg_pool2d(t.pow(2).mean(1, keepdim=True), 4).flatten(1))
    qs = F.normalize(s.pow(2).mean(1).flatten(1))
    torch.testing.assert_close(value, 10.0 / 2 * (qs - qt).pow(2).mean())
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="convolutional maps"):
        at(make_ctx(n=4, teacher_features={"t": torch.randn(4, 8)},
                    student_features={"s": torch.randn(4, 3)}))


# ----------------------------------------------------------------------------
# OT regulariser (needs otviz.transport)
# ----------------------------------------------------------------------------
def _ot_ctx(t: torch.Tensor, s: torch.Tensor, layer: str = "f") -> StepContext:
    return make_ctx(n=t.shape[0], teacher_features={layer: t}, student_features={layer: s})


def test_ot_zero_when_student_equals_teacher_and_permutation_invariant():
    torch.manual_seed(0)
    t = torch.randn(6, 5, 4, 4)
    reg = OTRegularizer(["f"], weight=1.0)
    assert reg(_ot_ctx(t, t.clone().requires_grad_())).item() == pytest.approx(0.0, abs=1e-6)

    s = torch.randn(6, 5, 4, 4)
    base = reg(_ot_ctx(t, s)).item()
    perm = torch.randperm(5)
    permuted = OTRegularizer(["f"], weight=1.0)(_ot_ctx(t, s[:, perm])).item()
    assert base > 0.1
    assert permuted == pytest.approx(base, rel=1e-6)
    # a permuted copy of the teacher is at distance zero: no adapter is needed
    assert OTRegularizer(["f"])(_ot_ctx(t, t[:, perm])).item() == pytest.approx(0.0, abs=1e-6)


def test_ot_feature_scale_mean_divides_by_the_number_of_features():
    torch.manual_seed(0)
    t, s = torch.randn(6, 5, 3, 3), torch.randn(6, 4, 3, 3)
    mean = OTRegularizer(["f"], weight=1.0)(_ot_ctx(t, s)).item()
    total = OTRegularizer(["f"], weight=1.0, feature_scale="sum")(_ot_ctx(t, s)).item()
    assert total == pytest.approx(mean * 6 * 3 * 3, rel=1e-6)
    # the per-feature mean does not grow with the batch size
    t2, s2 = t.repeat(3, 1, 1, 1), s.repeat(3, 1, 1, 1)
    assert OTRegularizer(["f"], weight=1.0)(_ot_ctx(t2, s2)).item() == pytest.approx(mean, rel=1e-6)


def test_ot_gradient_flows_to_student_only_and_matches_envelope():
    torch.manual_seed(0)
    t = torch.randn(8, 6, requires_grad=True)
    s = torch.randn(8, 6, requires_grad=True)
    reg = OTRegularizer([("t", "s")], weight=0.5)
    ctx = make_ctx(n=8, teacher_features={"t": t}, student_features={"s": s})
    value = reg(ctx)
    value.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    # equal widths + exact OT: the plan is a permutation / m; the envelope gradient is
    # 0.5 * (1/d) * (2/m) * (s_j - t_sigma(j)) for neurons as columns
    tn, sn = t.detach().T, s.detach().T
    cost = torch.cdist(tn, sn) ** 2
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.numpy())
    expected = torch.zeros_like(sn)
    expected[cols] = 0.5 * (1 / 8) * (2 / 6) * (sn[cols] - tn[rows])
    torch.testing.assert_close(s.grad.T, expected, atol=1e-5, rtol=1e-4)


def test_ot_different_widths_without_adapter():
    torch.manual_seed(0)
    t = torch.randn(6, 8, 4, 4)
    s = torch.randn(6, 4, 4, 4, requires_grad=True)
    reg = OTRegularizer(["f"], weight=1.0)
    value = reg(_ot_ctx(t, s))
    value.backward()
    assert value.item() > 0 and s.grad is not None
    assert reg.extra_parameters() == [] and list(reg.parameters()) == []
    # student = half of the teacher's channels, twice each: a perfect match of widths 8 -> 4
    # is impossible unless teacher channels come in equal pairs
    t_pairs = torch.cat([s.detach(), s.detach()], dim=1)
    assert reg(_ot_ctx(t_pairs, s.detach())).item() == pytest.approx(0.0, abs=1e-6)
    assert set(reg.diagnostics()) == {"ot/f->f"}


def test_ot_different_map_sizes_are_pooled_to_the_smaller():
    torch.manual_seed(0)
    t = torch.randn(4, 3, 8, 8)
    s = F.adaptive_avg_pool2d(t, 4).clone().requires_grad_()
    reg = OTRegularizer(["f"], weight=1.0)
    assert reg(_ot_ctx(t, s)).item() == pytest.approx(0.0, abs=1e-6)


def test_ot_spatial_options_and_dense_against_conv():
    torch.manual_seed(0)
    t = torch.randn(6, 5, 4, 4)
    s = torch.randn(6, 3, 4, 4)
    mean = OTRegularizer(["f"], weight=1.0, spatial="mean")(_ot_ctx(t, s)).item()
    pooled = OTRegularizer(["f"], weight=1.0, size=1)(_ot_ctx(t, s)).item()
    assert mean == pytest.approx(pooled, rel=1e-5)  # a 1x1 map is the spatial mean
    # a dense student layer against a conv teacher map: compared through the map's mean
    dense = t.mean(dim=(2, 3))[:, :3].clone().requires_grad_()
    reg = OTRegularizer([("t", "s")], weight=1.0)
    ctx = make_ctx(n=6, teacher_features={"t": t}, student_features={"s": dense})
    assert reg(ctx).item() < OTRegularizer([("t", "s")], weight=1.0)(
        make_ctx(n=6, teacher_features={"t": t}, student_features={"s": torch.randn(6, 3)})).item()
    with pytest.raises(ValueError, match="different spaces"):
        OTRegularizer([("t", "s")], size=2)(ctx)
    # standardised neurons: the mean-scaled cost is 2 (1 - correlation), in [0, 4]
    std = OTRegularizer(["f"], weight=1.0, normalize="standardize")(_ot_ctx(t, s)).item()
    assert 0.0 < std <= 4.0
    assert OTRegularizer(["f"], weight=1.0, normalize="standardize")(
        _ot_ctx(t, 3 * t + 1)).item() == pytest.approx(0.0, abs=1e-5)


def test_ot_warm_start_is_used_on_the_second_call(monkeypatch):
    import otviz.transport as transport

    calls = []
    real = transport.ot_distance

    def spy(*args, **kwargs):
        calls.append(kwargs.get("warm_start"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transport, "ot_distance", spy)
    torch.manual_seed(0)
    t, s = torch.randn(16, 6), torch.randn(16, 5)
    reg = OTRegularizer(["f"], weight=1.0, method="sinkhorn", eps=0.05)
    v1 = reg(_ot_ctx(t, s)).item()
    cold_iters = reg.last_alignments["f->f"].n_iter
    v2 = reg(_ot_ctx(t, s)).item()
    assert calls[0] is None and calls[1] is not None
    f, g = calls[1]
    assert f.shape == (6,) and g.shape == (5,)  # one potential per teacher / student neuron
    # the same minibatch again: started from its own optimum, the solver has nothing to do
    assert reg.last_alignments["f->f"].n_iter < cold_iters
    assert v2 == pytest.approx(v1, rel=1e-6)
    reg.reset()
    reg(_ot_ctx(t, s))
    assert calls[2] is None


def test_ot_monitor_mode_and_layer_distance_log_without_grad():
    torch.manual_seed(0)
    t, s = torch.randn(6, 5), torch.randn(6, 3, requires_grad=True)
    monitor = OTRegularizer(["f"], monitor=True)
    assert monitor.name == "ot_monitor"
    out = monitor(_ot_ctx(t, s))
    assert out.item() == 0.0 and not out.requires_grad
    logged = ot_layer_distance({"f": t}, {"f": s}, ["f"])
    assert list(logged) == ["f->f"]
    assert logged["f->f"] == pytest.approx(monitor.diagnostics()["ot/f->f"], rel=1e-6)
    trained = OTRegularizer(["f"], weight=1.0)(_ot_ctx(t, s)).item()
    assert logged["f->f"] == pytest.approx(trained, rel=1e-6)


def test_ot_option_errors():
    with pytest.raises(ValueError, match="cost"):
        OTRegularizer(["f"], cost="manhattan")
    with pytest.warns(UserWarning, match="ignored"):
        assert OTRegularizer(["f"], method="emd", eps=0.1).eps is None
    with pytest.raises(TypeError, match="max_iter"):
        OTRegularizer(["f"], maxiter=10)
    with pytest.raises(ValueError, match="normalize"):
        OTRegularizer(["f"], normalize="zscore")
    with pytest.raises(ValueError, match="feature_scale"):
        OTRegularizer(["f"], feature_scale="max")
    reg = OTRegularizer(["f"])
    with pytest.raises(ValueError, match="same minibatch"):
        reg(make_ctx(teacher_features={"f": torch.randn(4, 3)},
                     student_features={"f": torch.randn(5, 3)}))


# ----------------------------------------------------------------------------
# registry and combination
# ----------------------------------------------------------------------------
def test_build_loss_known_methods_and_terms():
    net = TinyNet()
    common = dict(pairs=["features.0"], reference=net, teacher_channels=4, student_channels=4)
    expected = {
        "scratch": ["ce"], "finetune": ["ce"], "l2sp": ["ce", "l2sp"], "kd": ["ce", "kd"],
        "fitnets": ["ce", "fitnets"], "at": ["ce", "at"], "nst": ["ce", "nst"], "sp": ["ce", "sp"],
        "ot": ["ce", "ot"],
    }
    assert set(expected) == set(METHODS)
    for method, names in expected.items():
        loss = build_loss(method, **common)
        assert loss.names == names, method
    assert build_loss("KD + OT", **common).names == ["ce", "kd", "ot"]
    assert parse_method("finetune+ot") == ("finetune", "ot")
    loss = build_loss("fitnets+at", **common)
    assert loss.teacher_layers == ("features.0",) and len(loss.extra_parameters()) == 2


def test_build_loss_errors_list_valid_choices():
    with pytest.raises(ValueError, match="Valid methods") as err:
        build_loss("dist")
    for name in METHODS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="Valid methods"):
        build_loss("kd+foo")
    with pytest.raises(ValueError, match="more than once"):
        build_loss("kd+kd")
    with pytest.raises(ValueError, match="contradictory"):
        build_loss("scratch+finetune")
    with pytest.raises(ValueError, match="layer pairs"):
        build_loss("ot")
    with pytest.raises(ValueError, match="reference"):
        build_loss("l2sp")
    with pytest.raises(ValueError, match="teacher_channels"):
        build_loss("fitnets", pairs=["a"])


def test_combined_kd_plus_ot_sums_terms_and_merges_diagnostics():
    torch.manual_seed(0)
    s_logits = torch.randn(6, 4, requires_grad=True)
    t_logits = torch.randn(6, 4)
    t_feat = torch.randn(6, 5, 3, 3)
    s_feat = torch.randn(6, 3, 3, 3, requires_grad=True)
    ctx = make_ctx(student_logits=s_logits, teacher_logits=t_logits,
                   teacher_features={"c": t_feat}, student_features={"c": s_feat})
    loss = build_loss("kd+ot", pairs=["c"], lam=0.3, temperature=2.0)
    assert loss.needs_teacher_logits and loss.teacher_layers == ("c",)
    assert loss.student_layers == ("c",)
    total = loss(ctx)
    parts = (CrossEntropy()(ctx) + KD(temperature=2.0)(ctx)
             + OTRegularizer(["c"], weight=0.3)(ctx))
    torch.testing.assert_close(total, parts)
    diag = loss.diagnostics()
    assert set(diag) == {"loss/ce", "loss/kd", "loss/ot", "loss/total", "ot/c->c"}
    assert diag["loss/total"] == pytest.approx(diag["loss/ce"] + diag["loss/kd"] + diag["loss/ot"],
                                              rel=1e-6)
    assert diag["loss/ot"] == pytest.approx(0.3 * diag["ot/c->c"], rel=1e-6)
    total.backward()
    assert s_logits.grad is not None and s_feat.grad is not None


def test_build_loss_monitor_pairs_log_ot_for_other_methods():
    torch.manual_seed(0)
    ctx = make_ctx(student_logits=torch.randn(6, 4, requires_grad=True),
                   teacher_logits=torch.randn(6, 4),
                   teacher_features={"c": torch.randn(6, 5)},
                   student_features={"c": torch.randn(6, 3)})
    loss = build_loss("kd", monitor_pairs=["c"])
    assert loss.names == ["ce", "kd", "ot_monitor"] and loss.teacher_layers == ("c",)
    total = loss(ctx)
    diag = loss.diagnostics()
    assert "ot/c->c" in diag and diag["ot/c->c"] > 0
    assert "loss/ot_monitor" not in diag
    assert total.item() == pytest.approx(diag["loss/ce"] + diag["loss/kd"], rel=1e-6)
    scratch = build_loss("scratch")
    assert not scratch.needs_teacher and scratch.extra_parameters() == []


def test_losses_follow_the_device_of_their_inputs():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = TinyNet().to(device)
    loss = build_loss("l2sp+fitnets+at+kd", pairs=["features.0"], reference=net,
                      teacher_channels=4, student_channels=4).to(device)
    x = torch.randn(4, 1, 6, 6, device=device)
    feats = {"features.0": net.features[0](x)}
    ctx = StepContext(inputs=x, targets=torch.zeros(4, dtype=torch.long, device=device),
                      student_logits=net(x), teacher_logits=net(x).detach(),
                      student_features=feats,
                      teacher_features={k: v.detach() for k, v in feats.items()}, student=net)
    value = loss(ctx)
    assert value.device.type == device and math.isfinite(value.item())
    assert isinstance(loss, CombinedLoss)


# ----------------------------------------------------------------------------
# a real training step: hooks on two networks of different widths
# ----------------------------------------------------------------------------
def _step_ctx(teacher: nn.Module, student: nn.Module, loss: CombinedLoss, x, y) -> StepContext:
    from contextlib import nullcontext

    from otviz.capture import hooked

    def hooks(model, layers):  # hooked() refuses an empty list of layers
        return hooked(model, layers) if layers else nullcontext({})

    with torch.no_grad(), hooks(teacher, loss.teacher_layers) as t_feats:
        t_logits = teacher(x)
    with hooks(student, loss.student_layers) as s_feats:
        s_logits = student(x)
    return StepContext(inputs=x, targets=y, student_logits=s_logits,
                       teacher_logits=t_logits if loss.needs_teacher_logits else None,
                       student_features=dict(s_feats), teacher_features=dict(t_feats),
                       student=student)


@pytest.fixture
def one_thread():
    # tiny convolutions run much faster on one intra-op thread than on two
    # contended ones; restore the setting for the other tests
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ot_training_step_on_real_networks_pulls_the_student_toward_the_teacher(one_thread):
    from otviz.models import SmallCNN

    torch.manual_seed(0)
    teacher, student = SmallCNN(width=1.0).eval(), SmallCNN(width=0.5)
    for p in teacher.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    pairs = [("features.conv2", "features.conv2"), ("features.conv3", "features.conv2")]

    loss = build_loss("kd+ot", pairs=pairs, lam=1.0)
    assert loss.teacher_layers == ("features.conv2", "features.conv3")
    assert loss.student_layers == ("features.conv2",)
    loss(_step_ctx(teacher, student, loss, x, y)).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.features.conv1.conv.weight.grad.abs().sum() > 0
    assert student.head.weight.grad.abs().sum() > 0  # from CE and KD

    # descending the OT term alone decreases it (conv3 maps 2x2 vs conv2 4x4: pooled)
    student.zero_grad()
    ot_only = build_loss("ot", pairs=pairs, lam=1.0, task_loss=False)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    values = []
    for _ in range(15):
        opt.zero_grad()
        value = ot_only(_step_ctx(teacher, student, ot_only, x, y))
        value.backward()
        opt.step()
        values.append(value.item())
    assert values[-1] < 0.5 * values[0]
    assert set(ot_only.diagnostics()) >= {"ot/features.conv2->features.conv2",
                                          "ot/features.conv3->features.conv2"}


def test_ot_regularizer_survives_dead_channel_under_standardize():
    from otviz.losses import OTRegularizer, StepContext

    torch.manual_seed(0)
    t = torch.relu(torch.randn(8, 6, 5, 5))
    s = torch.relu(torch.randn(8, 3, 5, 5)).requires_grad_(True)
    s_dead = s * torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)  # channel 1 silent on the batch
    reg = OTRegularizer([("a", "b")], weight=1.0, normalize="standardize")
    ctx = StepContext(inputs=t, targets=torch.zeros(8, dtype=torch.long), student_logits=torch.zeros(8, 2),
                      teacher_logits=None, student_features={"b": s_dead}, teacher_features={"a": t})
    value = reg(ctx)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="zero variance"):
        from otviz import align as otviz_align
        from otviz.capture import neurons
        otviz_align(neurons(t), neurons(s_dead.detach()), normalize="standardize")
