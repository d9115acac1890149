"""The float64 numpy path of align and cost_matrix: the same numbers as the torch path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import otviz
from otviz.transport import _cost, _median, align, cost_matrix, eps_scale

COSTS = ["sqeuclidean", "euclidean", "cosine", "correlation"]
NORMS = [None, "center", "standardize", "unit", "layer"]


def clouds(m=40, k=30, d=64, seed=0, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    T = rng.standard_normal((m, d)) * scale + offset
    S = np.concatenate([T[: k // 2] + 1e-9 * scale * rng.standard_normal((k // 2, d)),
                        rng.standard_normal((k - k // 2, d)) * scale + offset])
    return T, S


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("normalize", NORMS)
def test_numpy_cost_equals_torch_cost(cost, normalize):
    T, S = clouds(offset=5.0)
    C_np = cost_matrix(T, S, cost=cost, normalize=normalize)        # numpy path
    C_t = _cost(torch.from_numpy(T), torch.from_numpy(S), cost, normalize).numpy()
    assert isinstance(C_np, np.ndarray) and C_np.dtype == np.float64
    assert C_np.min() >= 0
    np.testing.assert_allclose(C_np, C_t, rtol=1e-9, atol=1e-12 * float(np.abs(C_t).max()))


@pytest.mark.parametrize("scale", [1e-200, 1e-80, 1.0, 1e80, 1e150])
def test_near_duplicates_are_exact_at_every_scale(scale):
    # half the student neurons are the teacher's within 1e-9 (relative): the Gram
    # formula cannot resolve them; the recomputed entries are exact
    T, S = clouds(scale=scale, offset=3.0 * scale)
    C = cost_matrix(T, S)
    k = S.shape[0] // 2
    exact = ((T[:k] - S[:k]) ** 2).sum(1)
    np.testing.assert_allclose(np.diag(C[:k, :k]), exact, rtol=1e-6)
    E = cost_matrix(T, S, cost="euclidean")
    p = 2.0 ** round(np.log2(scale))  # (the reference itself must not underflow)
    exact_e = np.sqrt((((T[:k] - S[:k]) / p) ** 2).sum(1)) * p
    assert (exact_e > 0).all()
    np.testing.assert_allclose(np.diag(E[:k, :k]), exact_e, rtol=1e-6)
    # and the far entries agree with the direct formula
    direct = ((T[:, None, :] - S[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(C, direct, rtol=1e-6)


def test_overflow_still_raises_and_huge_but_finite_works():
    T, S = clouds(scale=1e155)
    with pytest.raises(ValueError, match="overflows float64"):
        cost_matrix(T, S)
    C = cost_matrix(T, S, cost="euclidean")        # 1e155 * sqrt(2d): finite
    assert np.isfinite(C).all() and C.max() > 1e155


@pytest.mark.parametrize("n", [1, 2, 7, 1 << 16, (1 << 16) + 1, 300_001, 1 << 20])
def test_median_is_numpy_median(n):
    rng = np.random.default_rng(n)
    for x in (rng.random(n), rng.integers(0, 5, n).astype(float),   # many ties
              np.exp(rng.standard_normal(n) * 30)):                 # wide range
        assert _median(x.reshape(1, -1)) == np.median(x)
    const = np.full((n, 1), 2.5)
    assert _median(const) == 2.5


def test_eps_scale_falls_back_when_most_costs_are_zero():
    C = np.zeros((400, 400))
    C[0, :10] = 3.0
    assert eps_scale(C) == 3.0
    assert eps_scale(np.zeros((300, 300))) == 1.0


def test_align_inputs_of_every_kind_give_the_same_alignment():
    T, S = clouds(offset=1.0)
    ref = align(T, S, method="sinkhorn", eps=0.1)
    for t, s in ((torch.from_numpy(T), torch.from_numpy(S)),
                 (torch.from_numpy(T).t().contiguous().t(), np.asfortranarray(S)),
                 (T[:, ::1], torch.from_numpy(S).requires_grad_())):
        al = align(t, s, method="sinkhorn", eps=0.1)
        assert al.distance == pytest.approx(ref.distance, rel=1e-12)
        assert al.reg == pytest.approx(ref.reg, rel=1e-14)
    # float32 / bfloat16 inputs are computed in float64 from their own values
    T32 = torch.from_numpy(T).to(torch.bfloat16)
    al = align(T32, S, method="sinkhorn", eps=0.1)
    al64 = align(T32.double().numpy(), S, method="sinkhorn", eps=0.1)
    assert al.distance == pytest.approx(al64.distance, rel=1e-12)
    # the inputs are not modified
    T0 = T.copy()
    align(T, S, method="sinkhorn", eps=0.1, normalize="standardize")
    np.testing.assert_array_equal(T, T0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_non_finite_inputs_name_the_neurons(bad, normalize):
    T, S = clouds()
    S[3, 5] = bad
    with pytest.raises(ValueError, match=r"student activations contain NaN or infinite values "
                                         r"\(neurons \[3\]"):
        align(T, S, method="sinkhorn", normalize=normalize)
    with pytest.raises(ValueError, match="teacher activations contain NaN"):
        cost_matrix(S, T, normalize=normalize)
    with pytest.raises(ValueError, match="student activations contain NaN"):
        otviz.ot_distance(torch.from_numpy(T), torch.from_numpy(S))


def test_alignment_numbers_are_consistent():
    T, S = clouds(m=64, k=48)
    al = align(T, S, method="sinkhorn", eps=0.05)
    P, C = al.plan, al.cost_matrix
    assert al.distance == pytest.approx(float((P * C).sum()), rel=1e-12)
    assert al.marginal_error == pytest.approx(
        float(np.abs(P.sum(1) - al.a).sum() + np.abs(P.sum(0) - al.b).sum()), rel=1e-9, abs=1e-15)
    assert al.cost_scale == float(np.median(C))
