"""The OT lab's core (otviz.lab._ot): the library's solvers on a given cost, and the entropic plan
as a differentiable function of the cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ot = pytest.importorskip("ot")

from otviz.lab import entropic_plan, solve  # noqa: E402


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    C = rng.random((7, 4))
    a, b = rng.random(7) + 0.1, rng.random(4) + 0.1
    return C, a / a.sum(), b / b.sum()


def test_exact_solve_equals_pot(problem):
    C, a, b = problem
    al = solve(C, a, b)
    assert al.distance == pytest.approx(ot.emd2(a, b, C), rel=1e-12)
    np.testing.assert_allclose(al.plan.sum(1), a, atol=1e-12)
    np.testing.assert_allclose(al.plan.sum(0), b, atol=1e-12)
    assert al.eps is None and al.converged


def test_entropic_solve_uses_an_absolute_eps(problem):
    C, a, b = problem
    for eps in (0.5, 0.05):
        P = ot.sinkhorn(a, b, C, eps, stopThr=1e-13, numItermax=100_000)
        al = solve(C, a, b, eps=eps)
        np.testing.assert_allclose(al.plan, P, atol=1e-8)
        assert al.reg == pytest.approx(eps)
    # scaling the cost and eps together gives the same plan: eps is in the cost's units
    np.testing.assert_allclose(solve(10 * C, a, b, eps=0.5).plan, solve(C, a, b, eps=0.05).plan, atol=1e-8)


def test_uniform_weights_by_default(problem):
    C, _, _ = problem
    al = solve(C)
    np.testing.assert_allclose(al.plan.sum(1), np.full(7, 1 / 7), atol=1e-12)
    np.testing.assert_allclose(al.plan.sum(0), np.full(4, 1 / 4), atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 4), (3, 6)])
def test_entropic_plan_gradient_matches_finite_differences(shape):
    rng = np.random.default_rng(1)
    C = torch.tensor(rng.random(shape), requires_grad=True)
    a, b = rng.random(shape[0]) + 0.2, rng.random(shape[1]) + 0.2
    W = torch.tensor(rng.normal(size=shape))
    assert torch.autograd.gradcheck(lambda c: (entropic_plan(c, a, b, eps=0.1) * W).sum(), (C,),
                                    eps=1e-6, atol=1e-6)


def test_entropic_plan_forward_equals_pot_and_keeps_the_dtype(problem):
    C, a, b = problem
    P = entropic_plan(torch.tensor(C, dtype=torch.float32), a, b, eps=0.1)
    assert P.dtype == torch.float32
    np.testing.assert_allclose(P.numpy(), ot.sinkhorn(a, b, C, 0.1, stopThr=1e-13), atol=1e-6)


def test_gradient_of_the_plans_cost_is_the_plan_plus_the_implicit_term(problem):
    """d<P(C), C>/dC is not P alone (P moves with C); it equals finite differences."""
    C, a, b = problem
    Ct = torch.tensor(C, requires_grad=True)
    (entropic_plan(Ct, a, b, eps=0.2) * Ct).sum().backward()
    h = 1e-6
    E = np.zeros_like(C)
    E[2, 1] = h
    f = lambda M: float((solve(M, a, b, eps=0.2, tol=1e-13).plan * M).sum())  # noqa: E731
    assert Ct.grad[2, 1].item() == pytest.approx((f(C + E) - f(C - E)) / (2 * h), abs=1e-6)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 3)), "non-empty"),
    (np.ones(3), "2-D"),
    (np.array([[0.0, np.nan]]), "NaN"),
])
def test_bad_costs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        solve(bad)


@pytest.mark.parametrize("eps", [0, -1.0, float("nan"), float("inf")])
def test_bad_eps_is_refused(problem, eps):
    C, a, b = problem
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        solve(C, a, b, eps=eps)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        entropic_plan(torch.tensor(C), a, b, eps=eps)


@pytest.mark.parametrize("opts,error,match", [
    (dict(max_iter=-5), ValueError, "max_iter must be a positive integer .*got -5"),
    (dict(max_iter=0), ValueError, "max_iter must be a positive integer"),
    (dict(max_iter=10.5), TypeError, "max_iter must be a positive integer .*float"),
    (dict(max_iter=True), TypeError, "max_iter must be a positive integer"),
    (dict(tol=float("nan")), ValueError, "tol must be a positive finite number .*got nan"),
    (dict(tol=-1.0), ValueError, "tol must be a positive finite number .*got -1.0"),
    (dict(tol=0.0), ValueError, "tol must be a positive finite number"),
    (dict(tol=float("inf")), ValueError, "tol must be a positive finite number"),
    (dict(tol="1e-9"), TypeError, "tol must be a positive finite number .*str"),
])
def test_bad_stopping_rules_are_refused_up_front(problem, opts, error, match):
    C, a, b = problem
    for eps in (0.1, None):  # also where the exact solver would not use them
        with pytest.raises(error, match=match):
            solve(C, a, b, eps=eps, **opts)
    with pytest.raises(error, match=match):
        entropic_plan(torch.tensor(C), a, b, eps=0.1, **opts)


def test_bad_weights_are_refused(problem):
    C, a, b = problem
    with pytest.raises(ValueError, match=r"a must have shape \(7,\)"):
        solve(C, a[:3], b)
    with pytest.raises(ValueError, match="non-negative"):
        solve(C, -a, b)
    with pytest.raises(ValueError, match="sums to 0"):
        solve(C, np.zeros(7), b)


def test_entropic_plan_needs_a_tensor_and_raises_when_the_solver_does_not_converge(problem):
    C, a, b = problem
    with pytest.raises(TypeError, match="torch tensor"):
        entropic_plan(C, a, b, eps=0.1)
    with pytest.raises(RuntimeError, match="did not converge"):
        entropic_plan(torch.tensor(C), a, b, eps=1e-3, max_iter=2)


def test_a_warm_start_gives_the_same_plan_and_is_checked(problem):
    C, a, b = problem
    al = solve(C, a, b, eps=0.05)
    cold = entropic_plan(torch.tensor(C), a, b, eps=0.05)
    warm = entropic_plan(torch.tensor(C), a, b, eps=0.05, warm_start=al.potentials)
    np.testing.assert_allclose(warm.numpy(), cold.numpy(), atol=1e-9)
    with pytest.raises(ValueError, match=r"shapes \(7,\) and \(4,\)"):
        entropic_plan(torch.tensor(C), a, b, eps=0.05, warm_start=(np.zeros(3), np.zeros(4)))
    with pytest.raises(ValueError, match="finite"):
        entropic_plan(torch.tensor(C), a, b, eps=0.05, warm_start=(np.full(7, np.nan), np.zeros(4)))
    # solve takes the same warm start (the plan is the same, fewer iterations)
    again = solve(C, a, b, eps=0.05, warm_start=al.potentials)
    np.testing.assert_allclose(again.plan, al.plan, atol=1e-9)
    assert again.n_iter < al.n_iter
    with pytest.raises(ValueError, match="warm_start is for the entropic solver"):
        solve(C, a, b, warm_start=al.potentials)
    with pytest.raises(ValueError, match=r"shapes \(7,\) and \(4,\)"):
        solve(C, a, b, eps=0.05, warm_start=(np.zeros(4), np.zeros(7)))
