"""Tests of otviz.transport: the mathematics of the alignment, and bad input."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import ot
import pytest
import torch

import otviz
from otviz.transport import Alignment, align, cost_matrix, normalize_neurons, ot_distance
from otviz._sinkhorn import sinkhorn_solve


def rand(m, d, seed):
    return np.random.default_rng(seed).normal(size=(m, d))


# ---------------------------------------------------------------- exact OT
@pytest.mark.parametrize("seed", range(5))
def test_emd_equals_brute_force_over_permutations(seed):
    T, S = rand(6, 7, seed), rand(6, 7, seed + 100)
    C = cost_matrix(T, S)
    best = min(C[np.arange(6), list(p)].mean() for p in itertools.permutations(range(6)))
    al = align(T, S)
    assert al.distance == pytest.approx(best, rel=1e-12)
    assert al.converged and al.n_iter is None
    # the optimal plan is a permutation matrix scaled by 1/m, and .permutation is it
    assert np.allclose(al.plan * 6, np.eye(6)[al.permutation])
    assert C[np.arange(6), al.permutation].mean() == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("method", ["emd", "sinkhorn", "unbalanced"])
def test_permuting_student_permutes_plan_columns(method):
    T, S = rand(9, 20, 1), rand(5, 20, 2)
    perm = np.random.default_rng(3).permutation(5)
    a1 = align(T, S, method=method, eps=0.05)
    a2 = align(T, S[perm], method=method, eps=0.05)
    assert a2.distance == pytest.approx(a1.distance, rel=1e-8)
    assert np.allclose(a2.plan, a1.plan[:, perm], atol=1e-10)


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean", "cosine", "correlation"])
def test_identical_layers_have_zero_distance(cost):
    T = rand(12, 30, 4)
    perm = np.random.default_rng(0).permutation(12)
    al = align(T, T[perm], cost=cost)
    assert al.distance == pytest.approx(0.0, abs=1e-9)
    assert np.array_equal(perm[al.permutation], np.arange(12))
    assert np.array_equal(al.permutation, np.argsort(perm))


def test_sinkhorn_tends_to_exact_value_as_eps_shrinks():
    T, S = rand(15, 10, 5), rand(12, 10, 6)
    exact = align(T, S).distance
    gaps = []
    # eps is relative to the median cost
    for eps in [3e-1, 3e-2, 3e-3]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            al = align(T, S, method="sinkhorn", eps=eps, max_iter=20_000)
        assert al.distance >= exact - 1e-9
        gaps.append(al.distance - exact)
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] / exact < 1e-3


@pytest.mark.parametrize("m,k,eps", [(20, 20, 0.05), (25, 11, 0.01), (8, 30, 0.2)])
def test_sinkhorn_agrees_with_pot(m, k, eps):
    T, S = rand(m, 16, m), rand(k, 16, k + 1)
    al = align(T, S, method="sinkhorn", eps=eps, tol=1e-11, max_iter=100_000)
    C = cost_matrix(T, S)
    a, b = np.full(m, 1 / m), np.full(k, 1 / k)
    P = ot.sinkhorn(a, b, C, eps * np.median(C), stopThr=1e-11, numItermax=100_000)
    assert al.converged
    assert np.allclose(al.plan, P, atol=1e-9)
    assert al.distance == pytest.approx(float((P * C).sum()), rel=1e-7)
    assert al.marginal_error < 1e-8


def test_emd_agrees_with_pot_and_unequal_weights():
    T, S = rand(13, 9, 7), rand(7, 9, 8)
    a = np.random.default_rng(0).random(13)
    a /= a.sum()
    b = np.random.default_rng(1).random(7)
    b /= b.sum()
    al = align(T, S, a=a, b=b)
    C = cost_matrix(T, S)
    assert al.distance == pytest.approx(ot.emd2(a, b, C), rel=1e-10)
    assert np.allclose(al.plan.sum(1), a) and np.allclose(al.plan.sum(0), b)
    assert al.permutation is None and al.matching.shape == (13,)


def test_unbalanced_agrees_with_pot():
    T, S = rand(14, 12, 9), rand(10, 12, 10)
    al = align(T, S, method="unbalanced", eps=0.05, reg_m=0.5, tol=1e-12, max_iter=100_000)
    C = cost_matrix(T, S)
    sc = np.median(C)  # eps and reg_m are relative to the median cost
    P = ot.unbalanced.sinkhorn_unbalanced(np.full(14, 1 / 14), np.full(10, 0.1), C, 0.05 * sc,
                                          0.5 * sc, reg_type="kl", stopThr=1e-13,
                                          numItermax=200_000)
    assert np.allclose(al.plan, P, atol=1e-8)
    assert al.mass < 1.0  # mass is destroyed rather than moved far


@pytest.mark.parametrize("eps", [1e-3, 1e-4])
def test_small_eps_stays_finite_and_close_to_exact(eps):
    # at eps=1e-4 the plain kernel exp(-C/reg) underflows to zero on most rows
    T, S = rand(40, 10, 11) * 3, rand(30, 10, 12)
    C = cost_matrix(T, S)
    assert (np.exp(-C / (1e-4 * C.max())).sum(1) == 0).any() or eps == 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        al = align(T, S, method="sinkhorn", eps=eps, max_iter=20_000)
    assert np.isfinite(al.plan).all() and np.isfinite(al.distance)
    exact = align(T, S).distance
    assert abs(al.distance - exact) / exact < 5e-3
    assert al.marginal_error < 1e-3


def test_non_convergence_is_reported():
    T, S = rand(30, 10, 1), rand(20, 10, 2)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        al = align(T, S, method="sinkhorn", eps=1e-3, max_iter=5)
    assert not al.converged and np.isfinite(al.distance)


def test_warm_start_reduces_iterations_on_drifting_problems():
    rng = np.random.default_rng(0)
    T, S = rng.normal(size=(64, 40)), rng.normal(size=(48, 40))
    cold, warm = 0, 0
    prev = None
    for _ in range(20):
        T = T + 1e-3 * rng.normal(size=T.shape)
        S = S + 1e-3 * rng.normal(size=S.shape)
        c = align(T, S, method="sinkhorn", eps=0.01)
        w = align(T, S, method="sinkhorn", eps=0.01, warm_start=prev)
        assert w.distance == pytest.approx(c.distance, rel=1e-6)
        cold += c.n_iter
        warm += w.n_iter
        prev = w
    assert warm < 0.75 * cold  # measured about 0.5 here


def test_sinkhorn_solver_matches_pot_on_large_random_problem():
    rng = np.random.default_rng(0)
    M = rng.random((300, 200))
    a, b = np.full(300, 1 / 300), np.full(200, 1 / 200)
    r = sinkhorn_solve(a, b, M, 0.01, tol=1e-10)
    P = ot.sinkhorn(a, b, M, 0.01, stopThr=1e-10, numItermax=100_000)
    assert r.converged
    assert float((r.plan * M).sum()) == pytest.approx(float((P * M).sum()), rel=1e-8)


# ---------------------------------------------------------------- costs & normalisation
def test_cost_definitions():
    T, S = rand(4, 6, 1), rand(3, 6, 2)
    D = ((T[:, None] - S[None]) ** 2).sum(-1)
    assert np.allclose(cost_matrix(T, S), D)
    assert np.allclose(cost_matrix(T, S, "euclidean"), np.sqrt(D))
    cos = (T @ S.T) / np.linalg.norm(T, axis=1)[:, None] / np.linalg.norm(S, axis=1)
    assert np.allclose(cost_matrix(T, S, "cosine"), 1 - cos)
    corr = np.corrcoef(T, S)[:4, 4:]
    assert np.allclose(cost_matrix(T, S, "correlation"), 1 - corr)
    Ts = (T - T.mean(1, keepdims=True)) / T.std(1, keepdims=True)
    assert np.allclose(normalize_neurons(T, "standardize"), Ts)
    # standardised sqeuclidean is an affine function of correlation: 2d(1 - r)
    assert np.allclose(cost_matrix(T, S, normalize="standardize"), 2 * 6 * (1 - corr))


def test_scale_invariance_with_normalisation():
    T, S = rand(10, 20, 1), rand(6, 20, 2)
    scales = np.random.default_rng(0).uniform(0.1, 10, size=(6, 1))
    for norm in ["standardize", "unit"]:
        assert align(T, S * scales, normalize=norm).distance == pytest.approx(
            align(T, S, normalize=norm).distance, rel=1e-10)


def test_torch_inputs_and_types():
    T, S = rand(5, 8, 1), rand(4, 8, 2)
    al_np = align(T, S)
    al_t = align(torch.tensor(T, dtype=torch.float32), torch.tensor(S, dtype=torch.float32))
    assert al_t.distance == pytest.approx(al_np.distance, rel=1e-5)
    assert isinstance(cost_matrix(torch.tensor(T), S), torch.Tensor)
    assert isinstance(al_np, Alignment) and "Alignment(" in repr(al_np)
    assert "teacher neurons" in al_np.summary()


# ---------------------------------------------------------------- ot_distance
@pytest.mark.parametrize("method,grad", [("emd", "envelope"), ("sinkhorn", "envelope"),
                                         ("sinkhorn", "autodiff"), ("unbalanced", "envelope"),
                                         ("unbalanced", "autodiff"), ("emd", "autodiff")])
def test_ot_distance_gradients_match_finite_differences(method, grad):
    torch.manual_seed(0)
    T = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    S = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    kw = dict(method=method, eps=0.1, tol=1e-12, max_iter=100_000, grad=grad)
    val = ot_distance(T, S, **kw)
    assert val.ndim == 0
    assert val.item() == pytest.approx(align(T, S, method=method, eps=0.1, tol=1e-12,
                                             max_iter=100_000).distance, rel=1e-8)
    gT, gS = torch.autograd.grad(val, (T, S))
    h = 1e-6
    # eps is relative to median(C), a constant of each solve: perturb only neurons
    # that do not hold one of the two middle costs, so finite differences keep reg fixed
    order = np.argsort(cost_matrix(T.detach(), S.detach()).ravel())
    mid = [np.unravel_index(int(order[q]), (6, 4)) for q in (11, 12)]
    for X, G, side in ((T, gT, 0), (S, gS, 1)):
        skip = {int(e[side]) for e in mid}
        rows = [r for r in range(X.shape[0]) if r not in skip]
        for idx in [(rows[0], 0), (rows[1], 3), (rows[-1], 2)]:
            Xp, Xm = X.detach().clone(), X.detach().clone()
            Xp[idx] += h
            Xm[idx] -= h
            args_p = (Xp, S.detach()) if X is T else (T.detach(), Xp)
            args_m = (Xm, S.detach()) if X is T else (T.detach(), Xm)
            if grad == "autodiff" or method == "emd":
                # derivative of the transport cost <P(C), C> itself
                fd = (ot_distance(*args_p, **kw) - ot_distance(*args_m, **kw)).item() / (2 * h)
            else:
                # envelope: derivative of the regularised objective = <P, dC>
                P = torch.as_tensor(align(T.detach(), S.detach(), method=method, eps=0.1,
                                          tol=1e-12, max_iter=100_000).plan)
                fd = ((P * cost_matrix(*args_p)).sum() - (P * cost_matrix(*args_m)).sum()).item() / (2 * h)
            assert G[idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-7)


def test_ot_distance_keeps_device_dtype_and_warm_start():
    T = torch.randn(10, 7)
    S = torch.randn(6, 7, requires_grad=True)
    v, al = ot_distance(T, S, method="sinkhorn", eps=0.05, return_alignment=True)
    assert v.dtype == torch.float32 and v.device == S.device
    v.backward()
    assert S.grad is not None and torch.isfinite(S.grad).all()
    v2, al2 = ot_distance(T, S.detach() + 1e-3, method="sinkhorn", eps=0.05, warm_start=al,
                          return_alignment=True)
    assert al2.n_iter < al.n_iter


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(cost="manhattan"), "unknown cost 'manhattan'.*sqeuclidean"),
    (dict(method="exact"), "unknown method 'exact'.*emd"),
    (dict(normalize="zscore"), "unknown normalize 'zscore'.*standardize"),
    (dict(method="sinkhorn", eps=0.0), "eps must be a positive"),
    (dict(method="sinkhorn", eps=-1.0), "eps must be a positive"),
    (dict(a=-np.ones(4) / 4), "negative weights"),
    (dict(a=np.ones(3) / 3), r"a must have shape \(4,\)"),
    (dict(method="unbalanced", reg_m=0), "reg_m must be"),
    (dict(max_iter=0), "max_iter"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        align(rand(4, 5, 0), rand(3, 5, 1), **kwargs)


def test_bad_arrays_raise():
    T = rand(4, 5, 0)
    bad = T.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        align(bad, T)
    inf = T.copy()
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        ot_distance(torch.tensor(T), torch.tensor(inf))
    with pytest.raises(ValueError, match="empty"):
        align(np.zeros((0, 5)), T)
    with pytest.raises(ValueError, match="same probe inputs"):
        align(T, rand(4, 6, 1))
    with pytest.raises(ValueError, match="2-D matrix"):
        align(T[None], T)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        align(T.tolist(), T)
    dead = T.copy()
    dead[2] = 1.5
    with pytest.raises(ValueError, match=r"neuron\(s\) \[2\].*zero variance"):
        align(dead, T, normalize="standardize")
    with pytest.raises(ValueError, match=r"neuron\(s\) \[2\].*zero variance"):
        align(T, dead, cost="correlation")
    zero = T.copy()
    zero[0] = 0
    with pytest.raises(ValueError, match="zero norm"):
        align(zero, T, cost="cosine")
    with pytest.raises(ValueError, match="unknown grad"):
        ot_distance(torch.tensor(T), torch.tensor(T), grad="implicit")
    with pytest.raises(ValueError, match="warm starts need layers of the same widths"):
        align(T, T, method="sinkhorn", warm_start=(np.zeros(3), np.zeros(4)))


def test_weights_renormalised_with_warning():
    T, S = rand(4, 5, 0), rand(3, 5, 1)
    with pytest.warns(UserWarning, match="renormalising"):
        al = align(T, S, a=np.ones(4))
    assert al.a.sum() == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="eps is ignored"):
        align(T, S, eps=0.1)


def test_public_exports():
    for name in ["align", "ot_distance", "cost_matrix", "Alignment"]:
        assert hasattr(otviz, name)


def test_otviz_align_is_the_function_not_a_module():
    import importlib

    importlib.import_module("otviz.layers")
    assert callable(otviz.align) and otviz.align is align


@pytest.mark.parametrize("method", ["sinkhorn", "unbalanced"])
def test_entropic_solvers_accept_zero_weights(method):
    """A point of weight 0 gets no mass: the entropic plan is the one of the problem without
    that point (same eps scale, taken on the whole cost), with zero rows/columns, finite
    potentials, and a finite gradient; the numpy and torch solvers agree. (Before, the
    log-domain kernels met log 0 and raised 'non-finite marginal'.)"""
    import otviz.lab as lab

    g = torch.Generator().manual_seed(0)
    T = torch.randn(5, 20, dtype=torch.float64, generator=g)
    S = torch.randn(4, 20, dtype=torch.float64, generator=g)
    a = np.array([0.25, 0.25, 0.0, 0.25, 0.25])
    b = np.array([0.0, 0.5, 0.25, 0.25])
    full = align(T, S, method=method, eps=0.1, a=a, b=b, tol=1e-12)
    assert full.converged
    assert np.all(full.plan[2] == 0) and np.all(full.plan[:, 0] == 0)
    assert all(np.isfinite(p).all() for p in full.potentials)
    # the same absolute regularisation on the reduced problem gives the same plan
    keep_a, keep_b = np.flatnonzero(a), np.flatnonzero(b)
    reduced = lab.solve(full.cost_matrix[np.ix_(keep_a, keep_b)], a[keep_a], b[keep_b],
                        eps=full.reg, tol=1e-12) if method == "sinkhorn" else None
    if reduced is not None:
        np.testing.assert_allclose(full.plan[np.ix_(keep_a, keep_b)], reduced.plan, atol=1e-12)
    # the massless point's potential is its Sinkhorn update: one more update changes nothing
    f, gp = full.potentials
    phi = 1.0 if method == "sinkhorn" else full.reg_m * full.cost_scale / (full.reg_m * full.cost_scale + full.reg)
    from scipy.special import logsumexp
    f2 = -phi * full.reg * logsumexp((gp[keep_b][None, :] - full.cost_matrix[2:3, keep_b]) / full.reg,
                                     b=b[keep_b][None, :], axis=1)
    assert f[2] == pytest.approx(f2[0], rel=1e-12)
    Sg = S.clone().requires_grad_(True)
    d = ot_distance(T, Sg, method=method, eps=0.1, a=a, b=b, tol=1e-12)
    d.backward()
    assert torch.isfinite(Sg.grad).all() and float(Sg.grad[0].abs().sum()) == 0.0  # no mass, no pull
    assert d.item() == pytest.approx(full.distance, rel=1e-10)
    dt = ot_distance(T, S, method=method, eps=0.1, a=a, b=b, tol=1e-12, backend="torch")
    assert dt.item() == pytest.approx(full.distance, rel=1e-8)
    # a warm start from these potentials is accepted
    again = align(T, S, method=method, eps=0.1, a=a, b=b, tol=1e-12, warm_start=full)
    np.testing.assert_allclose(again.plan, full.plan, atol=1e-10)
