"""Numbers in every precision: dtypes, autocast, tiny and huge scales, the torch solver."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from torch import nn

from otviz._sinkhorn import sinkhorn_solve, sinkhorn_solve_torch
from otviz.losses import OTRegularizer, StepContext
from otviz.transport import _solve, align, compute_dtype, cost_matrix, ot_distance

LOW = [torch.float32, torch.float16, torch.bfloat16]


def layers(m=48, k=40, d=256, noise=0.05, seed=0, offset=1.0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(m, d, generator=g, dtype=torch.float64) * scale + offset
    idx = torch.randperm(m, generator=g)[:k]
    if k > m:
        idx = torch.cat([idx, torch.randint(0, m, (k - m,), generator=g)])
    S = T[idx] + noise * torch.randn(k, d, generator=g,
                                                                    dtype=torch.float64)
    return T, S


def rel(x, ref):
    return abs(float(x) - float(ref)) / abs(float(ref))


# ------------------------------------------------------------ dtypes and autocast
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("normalize,cost,noise", [
    ("standardize", "sqeuclidean", 1.0),  # was 0 in bfloat16 and float16
    (None, "sqeuclidean", 0.05),          # float16: 0 for a student at 0.05 noise
    ("center", "euclidean", 0.05),
    ("unit", "sqeuclidean", 0.05),
    (None, "correlation", 0.05),
])
def test_low_precision_inputs_agree_with_float64(dtype, normalize, cost, noise):
    T, S = layers(noise=noise)
    Tl, Sl = T.to(dtype), S.to(dtype).requires_grad_()
    # the float64 result of the same (rounded) values
    T64, S64 = Tl.detach().double(), Sl.detach().double().requires_grad_()
    ref = ot_distance(T64, S64, cost=cost, normalize=normalize)
    val = ot_distance(Tl, Sl, cost=cost, normalize=normalize)
    assert ref.item() > 0
    assert val.dtype == torch.float32
    assert rel(val, ref) < 1e-3
    # and the rounding of the inputs themselves moves the value little
    full = ot_distance(T, S, cost=cost, normalize=normalize)
    assert rel(val, full) < (3e-2 if dtype == torch.bfloat16 else 5e-3)
    # gradients reach the low-precision student, in its dtype, and match float64
    (g,) = torch.autograd.grad(val, Sl)
    (g64,) = torch.autograd.grad(ref, S64)
    assert g.dtype == dtype and torch.isfinite(g).all()
    # (the gradient is held in the input's dtype: compare with float64's, rounded to it)
    g64 = g64.to(dtype).double()
    assert torch.linalg.vector_norm(g.double() - g64) <= 1e-3 * torch.linalg.vector_norm(g64)


@pytest.mark.parametrize("normalize", ["standardize", None])
def test_autocast_does_not_change_the_distance(normalize):
    T, S = layers()
    T, S = T.float(), S.float()
    ref = ot_distance(T.double(), S.double(), normalize=normalize)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        val = ot_distance(T, S, normalize=normalize)
        al = align(T, S, normalize=normalize)
    assert rel(val, ref) < 1e-6
    assert rel(al.distance, ref) < 1e-6


def test_align_agrees_across_dtypes():
    T, S = layers(noise=0.05)
    for dtype in LOW:
        Tl, Sl = T.to(dtype), S.to(dtype)
        ref = align(Tl.double(), Sl.double(), normalize="standardize").distance
        assert rel(align(Tl, Sl, normalize="standardize").distance, ref) < 1e-3


def test_compute_dtype():
    x = torch.zeros(2, 2, dtype=torch.bfloat16)
    assert compute_dtype(x) == torch.float64
    meta = torch.zeros(2, 2, dtype=torch.bfloat16, device="meta")
    assert compute_dtype(meta) == torch.float32
    assert compute_dtype(meta.double()) == torch.float64


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 24))
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        h = self.body(x)
        return self.head(torch.tanh(h)), h


@pytest.mark.parametrize("normalize,method", [("standardize", "emd"), (None, "emd"),
                                              ("standardize", "sinkhorn")])
def test_regularizer_under_autocast_matches_float32(normalize, method):
    torch.manual_seed(0)
    teacher, student = Net(), Net()
    with torch.no_grad():  # a student related to its teacher, as in transfer
        for pt, ps in zip(teacher.parameters(), student.parameters()):
            ps.copy_(pt + 0.3 * torch.randn_like(pt))
    x = torch.randn(64, 12)
    reg = OTRegularizer([("body", "body")], weight=1.0, normalize=normalize, method=method,
                        eps=None if method == "emd" else 0.05, spatial="mean", warm_start=False)

    def step(autocast):
        student.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                t_logits, t_feat = teacher(x)
            s_logits, s_feat = student(x)
            ctx = StepContext(inputs=x, targets=torch.zeros(64, dtype=torch.long),
                              student_logits=s_logits, teacher_logits=t_logits,
                              student_features={"body": s_feat},
                              teacher_features={"body": t_feat})
            loss = reg(ctx)
        loss.backward()
        return loss, s_feat, [p.grad.clone() for p in student.body.parameters()]

    v32, f32, g32 = step(False)
    vbf, fbf, gbf = step(True)
    assert fbf.dtype == torch.bfloat16  # the features really are bfloat16
    assert vbf.dtype == torch.float32
    assert v32.item() > 0
    # the only difference left is the model's own bfloat16 rounding of the features
    assert rel(vbf, v32) < 3e-2
    ga = torch.cat([g.flatten() for g in gbf]).double()
    gb = torch.cat([g.flatten() for g in g32]).double()
    assert torch.isfinite(ga).all()
    if method == "sinkhorn" or normalize is None:
        # (the exact plan of standardised neurons is piecewise constant: the model's
        # bfloat16 rounding may flip a match, so only its value is compared)
        assert torch.linalg.vector_norm(ga - gb) <= 0.05 * torch.linalg.vector_norm(gb)
    # and on the bfloat16 features themselves, the regulariser is their float64 distance
    ref = OTRegularizer([("body", "body")], weight=1.0, normalize=normalize, method=method,
                        eps=None if method == "emd" else 0.05, spatial="mean", warm_start=False)
    ctx = StepContext(inputs=x, targets=torch.zeros(64, dtype=torch.long),
                      student_logits=torch.zeros(64, 3), teacher_logits=None,
                      student_features={"body": fbf.detach().double()},
                      teacher_features={"body": teacher(x)[1].detach().to(torch.bfloat16).double()})
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tb = teacher(x)[1]
    ctx.teacher_features = {"body": tb.detach().double()}
    assert rel(vbf, ref(ctx)) < 1e-3


# ------------------------------------------------------------ Euclidean cancellation
def test_euclidean_cost_of_close_neurons_in_float32():
    g = torch.Generator().manual_seed(0)
    T = torch.randn(32, 64, generator=g, dtype=torch.float64) * 10
    S = T + 1e-3 * torch.randn(32, 64, generator=g, dtype=torch.float64)
    ref = ot_distance(T, S, cost="euclidean")
    assert 0.005 < ref.item() < 0.02  # true W1 about 0.008
    Sf = S.float().requires_grad_()
    val = ot_distance(T.float(), Sf, cost="euclidean")
    assert rel(val, ref) < 1e-3  # was exactly 0
    (g32,) = torch.autograd.grad(val, Sf)
    S64 = S.clone().requires_grad_()
    (g64,) = torch.autograd.grad(ot_distance(T, S64, cost="euclidean"), S64)
    assert torch.linalg.vector_norm(g32.double() - g64) < 1e-3 * torch.linalg.vector_norm(g64)


def test_small_costs_are_exact_and_sqrt_at_zero_has_no_nan():
    T = torch.randn(10, 30, dtype=torch.float64) * 1e3
    S = T.clone()
    S[3] += 1e-9
    C = cost_matrix(T, S)
    assert C[3, 3].item() == pytest.approx(30 * 1e-18, rel=1e-6)
    assert (torch.diagonal(C)[torch.arange(10) != 3] == 0).all()
    for cost in ("euclidean", "sqeuclidean", "cosine", "correlation"):
        Sg = T.clone().requires_grad_()
        v = ot_distance(T, Sg, cost=cost)
        v.backward()
        assert v.item() == 0.0
        assert torch.isfinite(Sg.grad).all()
    # a cosine cost of nearly parallel neurons keeps its digits in float32
    U = torch.randn(8, 50, dtype=torch.float64)
    V = U + 1e-4 * torch.randn(8, 50, dtype=torch.float64)
    c64 = cost_matrix(U, V, cost="cosine")
    c32 = cost_matrix(U.float(), V.float(), cost="cosine")
    assert torch.allclose(torch.diagonal(c32), torch.diagonal(c64), rtol=1e-3)


# ------------------------------------------------------------ scales
@pytest.mark.parametrize("scale", [1e-14, 1e-12, 1e-10, 1e-8, 1e8, 1e100])
def test_exact_solver_is_scale_free(scale):
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(300, 50)), rng.normal(size=(200, 50))
    C = ot.dist(X, Y)
    C /= np.median(C)
    a, b = np.full(300, 1 / 300), np.full(200, 1 / 200)
    unit = _solve(C, a, b, "emd", None, 1.0, 1e-9, 10_000, None)
    scaled = _solve(C * scale, a, b, "emd", None, 1.0, 1e-9, 10_000, None)
    v1, v2 = float((unit["plan"] * C).sum()), float((scaled["plan"] * C).sum())
    assert scaled["converged"]
    assert v2 == pytest.approx(v1, rel=1e-10)  # POT alone: +5.9 % at 1e-12
    f, g = scaled["potentials"]
    assert float(a @ f + b @ g) == pytest.approx(v1 * scale, rel=1e-8)


@pytest.mark.parametrize("scale", [1e-150, 1e150])
@pytest.mark.parametrize("method", ["emd", "sinkhorn"])
def test_align_at_extreme_scales(scale, method):
    T, S = layers(m=20, k=15, d=30, noise=0.5)
    kw = dict(method=method, eps=None if method == "emd" else 0.05)
    ref = align(T, S, cost="euclidean", **kw)
    al = align(T * scale, S * scale, cost="euclidean", **kw)
    assert al.converged
    assert al.distance == pytest.approx(ref.distance * scale, rel=1e-8)


def test_overflowing_cost_is_a_clear_error():
    T, S = layers(m=8, k=6, d=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no misleading "increase max_iter" warning
        with pytest.raises(ValueError, match="overflows float64.*normalize='standardize'"):
            align(T * 1e200, S * 1e200)
        # the scale-free and Euclidean costs of the same layers are fine
        assert math.isfinite(align(T * 1e200, S * 1e200, normalize="standardize").distance)
        assert math.isfinite(align(T * 1e200, S * 1e200, cost="euclidean").distance)


@pytest.mark.parametrize("big", [1e18, 1e19, 1e25, 1e35])
def test_standardize_huge_float32_values(big):
    T, S = layers(m=30, k=30, d=40, noise=0.3)
    ref = ot_distance(T, S, normalize="standardize").item()
    Tf, Sf = (T * big).float(), (S * big).float()
    assert torch.isfinite(Tf).all()
    assert ot_distance(Tf, Sf, normalize="standardize").item() == pytest.approx(ref, rel=1e-5)
    assert align(Tf, Sf, normalize="unit").distance == pytest.approx(
        align(T, S, normalize="unit").distance, rel=1e-5)
    # the regulariser's own floored normalisation, too
    reg = OTRegularizer([("x", "x")], weight=1.0, normalize="standardize", feature_scale="sum")
    ctx = StepContext(inputs=Tf, targets=torch.zeros(40, dtype=torch.long),
                      student_logits=torch.zeros(40, 2), teacher_logits=None,
                      student_features={"x": Sf.T.contiguous()},
                      teacher_features={"x": Tf.T.contiguous()})
    assert reg(ctx).item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_regularizer_of_float32_features_at_extreme_scales_is_the_float64_value(scale):
    """Unnormalised float32 features whose distance float32 cannot hold: the term stays finite and
    nonzero (returned in float64, as ot_distance does), and its gradient reaches the student."""
    T, S = layers(m=30, k=20, d=40, noise=0.3)
    reg = OTRegularizer([("x", "x")], weight=1.0, normalize=None, feature_scale="sum")

    def term(t, s):
        ctx = StepContext(inputs=t, targets=torch.zeros(40, dtype=torch.long),
                          student_logits=torch.zeros(40, 2), teacher_logits=None,
                          student_features={"x": s}, teacher_features={"x": t})
        return reg(ctx)

    ref = term(T.T.contiguous() * scale, S.T.contiguous() * scale)  # float64 features
    sf = (S.T * scale).float().requires_grad_(True)
    value = term((T.T * scale).float(), sf)
    assert torch.isfinite(value) and value.item() > 0
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    value.backward()
    assert torch.isfinite(sf.grad).all() and sf.grad.abs().sum() > 0


def test_autodiff_at_tiny_eps_warns_with_the_fix():
    T, S = layers(m=20, k=15, d=20, noise=1.0)
    with pytest.warns(RuntimeWarning, match="grad='envelope'"):
        ot_distance(T, S, method="sinkhorn", eps=1e-8, grad="autodiff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ot_distance(T, S, method="sinkhorn", eps=0.1, grad="autodiff")


SCALES = [1e30, 1e-30, 1e20, 1e-20]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method,cost", [("emd", "sqeuclidean"), ("sinkhorn", "sqeuclidean"),
                                         ("sinkhorn", "euclidean"), ("unbalanced", "sqeuclidean")])
def test_ot_distance_at_extreme_scales_is_the_float64_value(scale, dtype, method, cost):
    # float32 used to give inf at 1e20 and 1e30 (the squared distances, ~1e40 and ~1e60, were
    # cast to float32) and 0 or a subnormal at 1e-20 and 1e-30
    T, S = layers(m=20, k=15, d=30, noise=0.5)
    kw = dict(method=method, cost=cost, eps=None if method == "emd" else 0.05)
    Tx, Sx = (T * scale).to(dtype), (S * scale).to(dtype).requires_grad_()
    T64, S64 = Tx.detach().double(), Sx.detach().double().requires_grad_()  # same values
    ref = ot_distance(T64, S64, **kw)
    val = ot_distance(Tx, Sx, **kw)
    assert math.isfinite(val.item()) and val.item() > 0
    assert rel(val, ref) < 1e-5
    power = 2 if cost == "sqeuclidean" else 1
    unit = ot_distance(T, S, **kw).item()
    assert ref.item() == pytest.approx(unit * scale ** power, rel=1e-5)  # OT scales by s^p
    # the float32 value when float32 holds it, else float64
    fits = torch.finfo(torch.float32).tiny < abs(ref.item()) < torch.finfo(torch.float32).max
    assert val.dtype == (torch.float32 if dtype == torch.float32 and fits else torch.float64)
    (g,) = torch.autograd.grad(val, Sx)
    (g64,) = torch.autograd.grad(ref, S64)
    assert g.dtype == dtype and torch.isfinite(g).all()
    g64 = g64.to(dtype).double()
    assert torch.linalg.vector_norm(g.double() - g64) <= 1e-5 * torch.linalg.vector_norm(g64)


@pytest.mark.parametrize("scale", SCALES)
def test_torch_backend_and_float32_cost_at_extreme_scales(scale):
    from otviz.transport import _cost

    T, S = layers(m=20, k=15, d=30, noise=0.5)
    Tf, Sf = (T * scale).float(), (S * scale).float()
    T64, S64 = Tf.double(), Sf.double()
    ref = ot_distance(T64, S64, method="sinkhorn", eps=0.05)
    # the float32 torch solver (the default on accelerators) promotes to float64 when the
    # cost does not fit float32: inf or 0 costs used to reach the solver
    val, al = ot_distance(Tf, Sf, method="sinkhorn", eps=0.05, backend="torch",
                          return_alignment=True)
    assert al.converged and rel(val, ref) < 1e-5
    # a float32 cost matrix (on accelerators) is computed in float64 at these scales
    C = _cost(Tf, Sf, "sqeuclidean", None, dtype=torch.float32)
    C64 = cost_matrix(T64, S64)
    assert C.dtype == torch.float64 and torch.isfinite(C).all()
    assert torch.allclose(C, C64, rtol=1e-9, atol=0)
    assert _cost(Tf / scale, Sf / scale, "sqeuclidean", None, dtype=torch.float32).dtype == torch.float32
    # align and cost_matrix of float32 inputs compute in float64 already
    assert align(Tf, Sf).distance == pytest.approx(ot_distance(T64, S64).item(), rel=1e-12)
    assert torch.isfinite(cost_matrix(Tf, Sf)).all()


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean", "cosine", "correlation"])
@pytest.mark.parametrize("normalize", [None, "center", "standardize", "unit", "layer"])
def test_cpu_envelope_gradient_equals_autograd_through_the_cost(cost, normalize, monkeypatch):
    # ot_distance on the CPU computes the cost in numpy and attaches the envelope gradient
    # <P, dC> itself (no m x k torch work): the same gradient as autograd through the torch cost
    from otviz import transport

    T, S = layers(m=30, k=25, d=40, noise=0.3)
    T, S = T.requires_grad_(), S.requires_grad_()
    val, al = ot_distance(T, S, cost=cost, normalize=normalize, method="sinkhorn", eps=0.05,
                          return_alignment=True)
    gT, gS = torch.autograd.grad(val, (T, S))
    ref = (torch.as_tensor(al.plan) * cost_matrix(T, S, cost=cost, normalize=normalize)).sum()
    rT, rS = torch.autograd.grad(ref, (T, S))
    assert val.item() == pytest.approx(ref.item(), rel=1e-12)
    assert val.item() == al.distance
    for g, r in ((gT, rT), (gS, rS)):
        assert torch.linalg.vector_norm(g - r) <= 1e-9 * torch.linalg.vector_norm(r)
    # and it builds no torch cost matrix
    monkeypatch.setattr(transport, "_cost", None)
    v2 = ot_distance(T, S, cost=cost, normalize=normalize, method="sinkhorn", eps=0.05)
    assert v2.item() == val.item()
    v2.backward()


# ------------------------------------------------------------ torch solver
@pytest.mark.parametrize("m,k,eps,method", [(64, 64, 1e-2, "sinkhorn"), (120, 40, 1e-3, "sinkhorn"),
                                            (300, 300, 1e-4, "sinkhorn"),
                                            (100, 80, 5e-2, "unbalanced"),
                                            (40, 70, 1e-2, "unbalanced")])
def test_torch_solver_agrees_with_float64_solver(m, k, eps, method):
    T, S = layers(m=m, k=k, d=128, noise=0.5, seed=m + k)
    T, S = T.float(), S.float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float64 may hit max_iter at tol=1e-9
        ref, al64 = ot_distance(T.double(), S.double(), method=method, eps=eps,
                                backend="numpy", return_alignment=True, max_iter=20_000)
    Sg = S.clone().requires_grad_()
    val, al32 = ot_distance(T, Sg, method=method, eps=eps, backend="torch",
                            return_alignment=True, max_iter=20_000)
    assert al32.converged
    assert val.dtype == torch.float32
    assert rel(val, ref) < 1e-4
    assert al32.reg == pytest.approx(al64.reg, rel=1e-6)
    assert np.abs(al32.plan - al64.plan).sum() < 1e-3
    if method == "sinkhorn":
        assert al32.marginal_error < 1e-4
    val.backward()
    S64 = S.double().requires_grad_()
    ot_distance(T.double(), S64, method=method, eps=eps, backend="numpy",
                max_iter=20_000).backward()
    assert torch.linalg.vector_norm(Sg.grad.double() - S64.grad) < 1e-3 * torch.linalg.vector_norm(S64.grad)


def test_torch_solver_warm_start_and_stability():
    T, S = layers(m=80, k=60, d=64, noise=0.5)
    T, S = T.float(), S.float()
    v1, al1 = ot_distance(T, S, method="sinkhorn", eps=1e-2, backend="torch", return_alignment=True)
    v2, al2 = ot_distance(T, S + 1e-3, method="sinkhorn", eps=1e-2, backend="torch",
                          warm_start=al1, return_alignment=True)
    assert al2.n_iter < al1.n_iter
    # a regularisation far below what a plain float32 kernel can hold (exp(-C/reg) = 0)
    C = cost_matrix(T, S).float()
    a, b = torch.full((80,), 1 / 80), torch.full((60,), 1 / 60)
    reg = 1e-4 * float(C.median())
    res = sinkhorn_solve_torch(a, b, C, reg, max_iter=20_000)
    assert torch.isfinite(res.plan).all() and res.converged
    ref = sinkhorn_solve(a.double().numpy(), b.double().numpy(), C.double().numpy(), reg,
                         max_iter=20_000)
    assert float((res.plan.double() * C.double()).sum()) == pytest.approx(
        float((ref.plan * C.double().numpy()).sum()), rel=1e-5)


def test_backend_choice():
    T, S = layers(m=6, k=5, d=8)
    with pytest.raises(ValueError, match="unknown backend"):
        ot_distance(T, S, backend="jax")
    with pytest.raises(ValueError, match="no exact solver"):
        ot_distance(T, S, backend="torch")
    # auto: CPU tensors keep the float64 numpy solver (same value as backend="numpy")
    a1 = ot_distance(T, S, method="sinkhorn", eps=0.1)
    a2 = ot_distance(T, S, method="sinkhorn", eps=0.1, backend="numpy")
    assert a1.item() == a2.item()


def test_auto_backend_follows_the_device():
    from otviz.transport import _no_autocast, _pick_backend

    assert _pick_backend("auto", "sinkhorn", torch.device("cuda")) == "torch"
    assert _pick_backend("auto", "unbalanced", torch.device("cuda", 1)) == "torch"
    assert _pick_backend("auto", "emd", torch.device("cuda")) == "numpy"  # POT's simplex: CPU
    assert _pick_backend("auto", "sinkhorn", torch.device("cpu")) == "numpy"
    # turning autocast off works for any device type, built for it or not
    for dev in ("cpu", "cuda", "meta"):
        with _no_autocast(torch.device(dev)):
            pass
