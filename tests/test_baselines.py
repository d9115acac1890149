"""Tests of the two relational baselines: neuron selectivity transfer (NST) and similarity-preserving
distillation (SP): their definitions against direct loops, invariances, gradients, widths, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from otviz.capture import hooked
from otviz.losses import (
    NST,
    SimilarityPreserving,
    StepContext,
    build_loss,
    nst_mmd2,
    parse_method,
    sp_similarity,
)


def ctx_of(t: dict, s: dict, n: int | None = None) -> StepContext:
    n = n or next(iter(s.values())).shape[0]
    logits = torch.zeros(n, 3, requires_grad=True)
    return StepContext(inputs=torch.zeros(n, 1), targets=torch.zeros(n, dtype=torch.long),
                       student_logits=logits, teacher_logits=None, student_features=s,
                       teacher_features=t, student=nn.Linear(1, 1))


# ----------------------------------------------------------------------------
# NST: the definition, by loops in numpy
# ----------------------------------------------------------------------------
def _kernel(x: np.ndarray, y: np.ndarray, kernel: str, degree: int, coef: float, sigma2: float) -> float:
    if kernel == "linear":
        return float(x @ y)
    if kernel == "polynomial":
        return float((x @ y + coef) ** degree)
    return math.exp(-float(((x - y) ** 2).sum()) / (2 * sigma2))


def nst_by_loops(t: np.ndarray, s: np.ndarray, kernel: str = "polynomial", degree: int = 2,
                 coef: float = 0.0, sigma: float | None = None) -> float:
    """mean over samples of MMD^2 between the l2-normalised channel maps, every kernel term a loop."""
    values = []
    for ti, si in zip(t, s):
        ft = [m.ravel() / np.linalg.norm(m.ravel()) for m in ti]
        fs = [m.ravel() / np.linalg.norm(m.ravel()) for m in si]
        if sigma is None:
            both = ft + fs
            sigma2 = np.mean([((a - b) ** 2).sum() for a in both for b in both])
        else:
            sigma2 = sigma**2
        k = lambda a, b: _kernel(a, b, kernel, degree, coef, sigma2)  # noqa: E731
        tt = sum(k(a, b) for a in ft for b in ft) / len(ft) ** 2
        ss = sum(k(a, b) for a in fs for b in fs) / len(fs) ** 2
        ts = sum(k(a, b) for a in ft for b in fs) / (len(ft) * len(fs))
        values.append(tt + ss - 2 * ts)
    return float(np.mean(values))


@pytest.mark.parametrize("kernel,degree,coef,sigma", [
    ("polynomial", 2, 0.0, None), ("polynomial", 3, 0.5, None), ("linear", 2, 0.0, None),
    ("gaussian", 2, 0.0, None), ("gaussian", 2, 0.0, 0.7),
])
def test_nst_matches_loops_with_different_widths(kernel, degree, coef, sigma):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 6, 5, 5, generator=g, dtype=torch.float64)
    s = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    loss = NST(["t:s"], weight=2.5, kernel=kernel, degree=degree, coef=coef, sigma=sigma)
    value = loss(ctx_of({"t": t}, {"s": s}))
    expected = nst_by_loops(t.numpy(), s.numpy(), kernel, degree, coef, sigma)
    assert value.item() == pytest.approx(2.5 * expected, rel=1e-9, abs=1e-12)
    assert loss.diagnostics()["nst/t->s"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert expected > 1e-4  # different maps: the test compares something


def test_nst_polynomial_is_the_distance_of_position_second_moments():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(3, 5, 16, generator=g, dtype=torch.float64), torch.randn(3, 2, 16, generator=g,
                                                                                 dtype=torch.float64)
    ft, fs = torch.nn.functional.normalize(t, dim=2), torch.nn.functional.normalize(s, dim=2)
    mt = ft.transpose(1, 2) @ ft / 5
    ms = fs.transpose(1, 2) @ fs / 2
    torch.testing.assert_close(nst_mmd2(t, s), (mt - ms).pow(2).sum(dim=(1, 2)))


def test_nst_zero_for_the_same_maps_up_to_channel_order_and_scale():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(5, 6, 4, 4, generator=g)
    perm = torch.randperm(6, generator=g)
    scale = torch.rand(5, 6, 1, 1, generator=g) + 0.5  # positive, per sample and channel
    s = (t[:, perm] * scale).requires_grad_(True)
    for kernel in ("polynomial", "linear", "gaussian"):
        value = NST(["x"], kernel=kernel)(ctx_of({"x": t}, {"x": s}))
        assert abs(value.item()) < 1e-4, kernel
    # a real difference is not zero, and permuting either side's channels does not change it
    other = torch.randn(5, 3, 4, 4, generator=g)
    base = NST(["x"])(ctx_of({"x": t}, {"x": other})).item()
    assert base > 1e-3
    shuffled = NST(["x"])(ctx_of({"x": t[:, perm]}, {"x": other[:, [2, 0, 1]]})).item()
    assert shuffled == pytest.approx(base, rel=1e-5)


def test_nst_gradient_flows_to_the_student_only():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(4, 8, 6, 6, generator=g, requires_grad=True)
    s = torch.randn(4, 2, 6, 6, generator=g, requires_grad=True)
    NST(["t:s"])(ctx_of({"t": t}, {"s": s})).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert t.grad is None


def test_nst_pools_the_larger_map_and_handles_sequences():
    g = torch.Generator().manual_seed(4)
    t = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    s = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    value = NST(["t:s"])(ctx_of({"t": t}, {"s": s})).item()
    pooled = torch.nn.functional.adaptive_avg_pool2d(t, (4, 4))
    assert value == pytest.approx(50.0 * nst_by_loops(pooled.numpy(), s.numpy()), rel=1e-9)
    # (n, c, length) maps: one channel's map over the positions of a sequence
    t1, s1 = torch.randn(3, 4, 10, generator=g), torch.randn(3, 6, 10, generator=g)
    assert NST(["a"], weight=1.0)(ctx_of({"a": t1}, {"a": s1})).item() == pytest.approx(
        nst_by_loops(t1.numpy(), s1.numpy()), rel=1e-4)


def test_nst_dead_channels_do_not_make_nan():
    t = torch.relu(torch.randn(2, 4, 3, 3))
    s = torch.zeros(2, 3, 3, 3, requires_grad=True)  # every student channel dead
    value = NST(["x"])(ctx_of({"x": t}, {"x": s}))
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(s.grad).all()


def test_nst_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown kernel"):
        NST(["x"], kernel="rbf")
    with pytest.raises(ValueError, match="degree must be a positive integer"):
        NST(["x"], degree=0)
    with pytest.raises(ValueError, match="needs layer pairs"):
        NST(None)
    dense = {"x": torch.randn(4, 5)}
    with pytest.raises(ValueError, match=r"needs \(n, c, h, w\).*use 'sp', 'ot' or 'fitnets'"):
        NST(["x"])(ctx_of(dense, {"x": torch.randn(4, 5)}))
    with pytest.raises(ValueError, match="same minibatch"):
        NST(["x"])(ctx_of({"x": torch.randn(4, 2, 3, 3)}, {"x": torch.randn(5, 2, 3, 3)}))
    with pytest.raises(ValueError, match="1-d map"):
        NST(["x"])(ctx_of({"x": torch.randn(4, 2, 3, 3)}, {"x": torch.randn(4, 2, 9)}))
    with pytest.raises(ValueError, match="holds only"):
        NST(["x"])(ctx_of({"x": torch.randn(4, 2, 3, 3)}, {"y": torch.randn(4, 2, 3, 3)}))


# ----------------------------------------------------------------------------
# SP
# ----------------------------------------------------------------------------
def sp_by_loops(t: np.ndarray, s: np.ndarray) -> float:
    def sim(x):
        a = x.reshape(len(x), -1)
        g = np.array([[float(a[i] @ a[j]) for j in range(len(a))] for i in range(len(a))])
        return np.array([row / np.sqrt((row**2).sum()) for row in g])

    b = len(t)
    diff = sim(t) - sim(s)
    return float(sum(diff[i, j] ** 2 for i, j in itertools.product(range(b), range(b))) / b**2)


def test_sp_matches_loops_across_widths_sizes_and_kinds():
    g = torch.Generator().manual_seed(5)
    t = torch.randn(6, 8, 7, 7, generator=g, dtype=torch.float64)
    for s in (torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64),  # narrower, smaller
              torch.randn(6, 10, generator=g, dtype=torch.float64)):  # a dense layer
        loss = SimilarityPreserving(["t:s"], weight=7.0)
        value = loss(ctx_of({"t": t}, {"s": s}))
        expected = sp_by_loops(t.numpy(), s.numpy())
        assert expected > 1e-4
        assert value.item() == pytest.approx(7.0 * expected, rel=1e-9)
        assert loss.diagnostics()["sp/t->s"] == pytest.approx(expected, rel=1e-9)


def test_sp_zero_for_the_same_features_and_invariant_to_channel_order_and_scale():
    g = torch.Generator().manual_seed(6)
    t = torch.randn(8, 5, 4, 4, generator=g)
    perm = torch.randperm(5, generator=g)
    same = SimilarityPreserving(["x"])(ctx_of({"x": t}, {"x": 3.0 * t[:, perm]}))
    assert abs(same.item()) < 1e-6 * 3000
    other = torch.randn(8, 3, 4, 4, generator=g)
    base = SimilarityPreserving(["x"])(ctx_of({"x": t}, {"x": other})).item()
    assert base > 1e-2
    moved = SimilarityPreserving(["x"])(ctx_of({"x": 0.1 * t[:, perm]}, {"x": 5.0 * other[:, [1, 2, 0]]}))
    assert moved.item() == pytest.approx(base, rel=1e-5)
    # rows are normalised: G itself is unchanged by a common scale, and each row has norm 1
    G = sp_similarity(t)
    torch.testing.assert_close(G, sp_similarity(4.0 * t))
    torch.testing.assert_close(G.norm(dim=1), torch.ones(8))


def test_sp_gradient_flows_to_the_student_only():
    g = torch.Generator().manual_seed(7)
    t = torch.randn(6, 8, 4, 4, generator=g, requires_grad=True)
    s = torch.randn(6, 2, 4, 4, generator=g, requires_grad=True)
    SimilarityPreserving(["t:s"])(ctx_of({"t": t}, {"s": s})).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_sp_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="same minibatch"):
        SimilarityPreserving(["x"])(ctx_of({"x": torch.randn(4, 3)}, {"x": torch.randn(5, 3)}))
    with pytest.raises(ValueError, match="batch first"):
        sp_similarity(torch.randn(5))
    with pytest.raises(ValueError, match="finite number"):
        SimilarityPreserving(["x"], weight=float("nan"))


# ----------------------------------------------------------------------------
# registry and a real forward pass
# ----------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["nst", "sp", "kd+nst", "nst+sp+ot"])
def test_build_loss_registers_both_and_trains_a_narrower_student(method):
    assert set(parse_method(method)) <= {"kd", "nst", "sp", "ot"}
    torch.manual_seed(0)
    teacher, student = Net(8), Net(2)
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 3, (6,))
    loss = build_loss(method, pairs=["features.0"], nst_weight=10.0, sp_weight=100.0)
    assert loss.names == ["ce", *parse_method(method)]
    assert loss.teacher_layers == ("features.0",)
    if "nst" in method:
        assert loss["nst"].weight == 10.0
    if "sp" in method.split("+"):
        assert loss["sp"].weight == 100.0
    with torch.no_grad(), hooked(teacher, loss.teacher_layers) as tf:
        tl = teacher(x)
    with hooked(student, loss.student_layers) as sf:
        sl = student(x)
    value = loss(StepContext(x, y, sl, tl, sf, tf, student))
    value.backward()
    assert torch.isfinite(value)
    assert student.features[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    diag = loss.diagnostics()
    for part in parse_method(method):
        if part in ("nst", "sp"):
            assert f"{part}/features.0->features.0" in diag and f"loss/{part}" in diag


def test_build_loss_needs_pairs_for_nst_and_sp():
    for method in ("nst", "sp"):
        with pytest.raises(ValueError, match="needs layer pairs"):
            build_loss(method)


# ----------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------
def test_trainer_refuses_nst_on_dense_layers_before_recording_a_run(tmp_path):
    from otviz.runs import RunStore
    from otviz.train import TrainConfig, train

    store = RunStore(tmp_path / "runs.db")
    cfg = TrainConfig(setting="distill", method="nst", arch="mlp", epochs=1, steps_per_epoch=1)
    with pytest.raises(ValueError, match=r"method 'nst' compares each channel's map.*use 'sp'"):
        train(cfg, store=store, progress=False)
    assert store.runs().empty


def test_recipe_weights_of_the_relational_baselines():
    from otviz.train import TrainConfig, recipe

    r = recipe("transfer-small", "nst")
    assert r["nst_weight"] == 15.0 and r["sp_weight"] is None and r["lam"] is None
    r = recipe("distill", "kd+sp")
    assert r["sp_weight"] == 3000.0 and r["kd_weight"] == 1.0 and r["nst_weight"] is None
    cfg = TrainConfig.from_recipe("transfer", "nst", nst_weight=4.0)
    assert cfg.nst_weight == 4.0 and cfg.sp_weight is None
