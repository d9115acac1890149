"""Inverse OT (otviz.lab.inverse): a known cost is recovered from the plans it generated, the
objective and its gradient are right, bad input is refused, and the page section renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from otviz.lab import inverse as inv
from otviz.lab._ot import solve

ot = pytest.importorskip("ot")

ROOT = Path(__file__).resolve().parents[1]


def rotated(ratio: float, angle_deg: float) -> np.ndarray:
    th = np.deg2rad(angle_deg)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return R @ np.diag([np.sqrt(ratio), 1 / np.sqrt(ratio)]) @ R.T


M_TRUE = rotated(3.0, 30.0)


# ----------------------------------------------------------------------------- the cost
def test_mahalanobis_cost_matches_its_definition_and_identity_is_squared_euclidean():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    A = rng.normal(size=(3, 3))
    M = A @ A.T
    C = inv.mahalanobis_cost(x, y, M)
    i, j = 4, 2
    assert C[i, j] == pytest.approx((x[i] - y[j]) @ M @ (x[i] - y[j]), rel=1e-12)
    np.testing.assert_allclose(inv.mahalanobis_cost(x, y, np.eye(3)), ot.dist(x, y), rtol=1e-12, atol=1e-12)


def test_identity_m_generates_the_squared_euclidean_entropic_plans():
    xs, ys, plans = inv.generate_plans(np.eye(2), n_plans=2, n_points=12, n_targets=9, eps=0.3, seed=3)
    for x, y, P in zip(xs, ys, plans):
        assert P.shape == (12, 9)
        ref = solve(ot.dist(x, y), eps=0.3).plan
        np.testing.assert_allclose(P, ref, atol=1e-12)
        np.testing.assert_allclose(P.sum(1), 1 / 12, atol=1e-9)


def test_isotropic_plans_give_back_a_multiple_of_the_identity():
    xs, ys, plans = inv.generate_plans(2.0 * np.eye(2), n_plans=3, n_points=20, eps=0.5, seed=1)
    fit = inv.fit_cost(xs, ys, plans, eps=0.5)
    np.testing.assert_allclose(fit.M, 2.0 * np.eye(2), atol=1e-5)
    assert fit.isotropic_scale == pytest.approx(2.0, rel=1e-5)


# ----------------------------------------------------------------------------- recovery
def test_a_known_mahalanobis_cost_is_recovered_from_exact_plans():
    """Measured: relative Frobenius error ~1e-8 (4 plans of 30 x 30 points, eps = 0.5)."""
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=4, n_points=30, eps=0.5, seed=0)
    fit = inv.fit_cost(xs, ys, plans, eps=0.5)
    err = fit.relative_error(M_TRUE)
    print(f"relative error from exact plans: {err:.2e} in {fit.n_iter} iterations, {fit.seconds:.2f} s")
    assert err < 1e-5
    assert fit.converged
    assert fit.explained > 1 - 1e-6
    assert fit.kl.max() < 1e-7
    # the learned cost is not the isotropic one: the isotropic start explains visibly less
    assert fit.kl_isotropic > 1e-2
    for P, Q in zip(plans, fit.plans):
        np.testing.assert_allclose(Q, P, atol=1e-7)


def test_recovery_from_sampled_pairs_degrades_with_fewer_samples():
    """Measured (seed 1, 5 plans of 30 x 30): ~1.7e-2 with 2000 pairs a plan, ~8e-2 with 200."""
    errors = {}
    for n in (200, 2000, 20000):
        xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=5, n_points=30, eps=0.5, n_samples=n, seed=1)
        fit = inv.fit_cost(xs, ys, plans, eps=0.5)
        errors[n] = fit.relative_error(M_TRUE)
    print("relative error by pairs observed:", errors)
    assert errors[20000] < errors[2000] < errors[200]
    assert errors[2000] < 0.05
    assert errors[200] < 0.25


def test_the_scale_of_m_is_tied_to_eps():
    """Only M / eps is identified: the same plans read at twice the eps give twice the M."""
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=3, n_points=25, eps=0.5, seed=2)
    fit = inv.fit_cost(xs, ys, plans, eps=1.0)
    np.testing.assert_allclose(fit.M, 2 * M_TRUE, rtol=1e-4, atol=1e-5)


def test_points_on_a_line_identify_m_only_on_that_line():
    rng = np.random.default_rng(0)
    u = np.array([np.cos(0.4), np.sin(0.4)])
    xs = [np.outer(rng.normal(size=20), u) for _ in range(3)]
    ys = [np.outer(rng.normal(size=20), u) for _ in range(3)]
    plans = [solve(inv.mahalanobis_cost(x, y, M_TRUE), eps=0.5).plan for x, y in zip(xs, ys)]
    fit = inv.fit_cost(xs, ys, plans, eps=0.5)
    assert fit.span.shape == (2, 1)
    assert abs(abs(fit.span[:, 0] @ u) - 1) < 1e-12
    assert fit.relative_error(M_TRUE, on_span=True) < 1e-5
    assert fit.relative_error(M_TRUE) > 0.1  # the orthogonal direction is not seen


def test_zero_mass_points_are_left_out_exactly():
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=1, n_points=15, eps=0.5, seed=4)
    x, y, P = xs[0], ys[0], plans[0]
    x2 = np.vstack([x, [[50.0, -50.0]]])  # a far point of no mass
    P2 = np.vstack([P, np.zeros((1, P.shape[1]))])
    a = inv.fit_cost(x, y, P, eps=0.5)
    b = inv.fit_cost(x2, y, P2, eps=0.5)
    np.testing.assert_allclose(a.M, b.M, atol=1e-7)
    assert b.plans[0].shape == P2.shape and b.plans[0][-1].sum() == 0


@pytest.mark.parametrize("scale", [1e100, 1e-100])
def test_points_far_from_unit_size_give_the_scaled_cost(scale):
    # the cost fitted to x * scale is M / scale**2: at 1e100 the points' squared distances
    # (1e200) and their spread (1e400) used to overflow and the fit failed or returned M = 0
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=2, n_points=12, eps=0.5, seed=6)
    ref = inv.fit_cost(xs, ys, plans, eps=0.5)
    fit = inv.fit_cost([x * scale for x in xs], [y * scale for y in ys], plans, eps=0.5)
    np.testing.assert_allclose(fit.M * scale ** 2, ref.M, rtol=1e-5, atol=1e-6 * np.abs(ref.M).max())
    assert fit.isotropic_scale * scale ** 2 == pytest.approx(ref.isotropic_scale, rel=1e-6)
    np.testing.assert_allclose(fit.kl, ref.kl, atol=1e-8)
    assert fit.relative_error(M_TRUE / scale ** 2) < 1e-5


def test_points_whose_cost_leaves_float64_are_refused_with_what_to_do():
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=1, n_points=6, eps=0.5, seed=6)
    # 1e200 points were reported as "NaN or infinite"; M would be about 1e-400
    with pytest.raises(ValueError, match=r"xs and ys are so large \(largest \|coordinate\| .*e\+200\) that the "
                                         r"fitted M.*about 1e-400.*divide every point set by one common scale"):
        inv.fit_cost([x * 1e200 for x in xs], [y * 1e200 for y in ys], plans, eps=0.5)
    with pytest.raises(ValueError, match="xs and ys are so small"):
        inv.fit_cost([x * 1e-200 for x in xs], [y * 1e-200 for y in ys], plans, eps=0.5)
    with pytest.raises(ValueError, match="the cost overflows float64"):
        inv.mahalanobis_cost(xs[0] * 1e200, ys[0], np.eye(2))


# ----------------------------------------------------------------------------- objective
def test_the_loss_curve_decreases_and_ends_at_the_reported_fit():
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=2, n_points=20, eps=0.5, n_samples=500, seed=5)
    fit = inv.fit_cost(xs, ys, plans, eps=0.5)
    assert np.all(np.diff(fit.loss) <= 1e-10)  # monotone (strong-Wolfe line search)
    assert fit.loss[-1] < fit.loss[0]
    assert fit.loss[-1] == pytest.approx(float(fit.kl.mean()), abs=1e-9)
    assert fit.loss[0] == pytest.approx(fit.kl_isotropic, abs=1e-9)


def _kl_direct(P_obs: np.ndarray, C: np.ndarray, eps: float) -> float:
    Q = solve(C, P_obs.sum(1), P_obs.sum(0), eps=eps, tol=1e-12).plan
    nz = P_obs > 0
    return float(np.sum(P_obs[nz] * np.log(P_obs[nz] / Q[nz])))


def test_inverse_ot_loss_value_and_gradient_match_finite_differences():
    rng = np.random.default_rng(0)
    m, k, eps = 6, 5, 0.7
    P_obs = rng.random((m, k)) + 0.05
    P_obs /= P_obs.sum()
    C0 = rng.random((m, k))
    C = torch.tensor(C0, dtype=torch.float64, requires_grad=True)
    loss = inv.inverse_ot_loss(C, P_obs, eps=eps)
    assert float(loss.detach()) == pytest.approx(_kl_direct(P_obs, C0, eps), abs=1e-9)
    loss.backward()
    G = C.grad.numpy()
    h = 1e-5
    for i, j in [(0, 0), (2, 3), (5, 4), (3, 1)]:
        E = np.zeros_like(C0)
        E[i, j] = h
        fd = (_kl_direct(P_obs, C0 + E, eps) - _kl_direct(P_obs, C0 - E, eps)) / (2 * h)
        assert G[i, j] == pytest.approx(fd, abs=1e-6)
    # the gradient is (P_obs - P(C)) / eps
    Q = solve(C0, P_obs.sum(1), P_obs.sum(0), eps=eps, tol=1e-12).plan
    np.testing.assert_allclose(G, (P_obs - Q) / eps, atol=1e-8)


def test_gradient_in_m_matches_finite_differences_of_the_kl():
    """The chain through C_M = (x - y)^T M (x - y): d KL / d M by autograd vs central differences."""
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=1, n_points=10, eps=0.5, n_samples=300, seed=6)
    x, y, P = xs[0], ys[0], plans[0]
    M0 = np.array([[1.2, 0.1], [0.1, 0.8]])
    Mt = torch.tensor(M0, requires_grad=True)
    D = torch.as_tensor(x)[:, None, :] - torch.as_tensor(y)[None, :, :]
    C = torch.einsum("ijk,kl,ijl->ij", D, Mt, D)
    inv.inverse_ot_loss(C, P, eps=0.5).backward()
    h = 1e-5
    for (i, j) in [(0, 0), (0, 1), (1, 1)]:
        E = np.zeros((2, 2))
        E[i, j] = E[j, i] = h  # a symmetric perturbation: both (i, j) and (j, i)
        fd = (_kl_direct(P, inv.mahalanobis_cost(x, y, M0 + E), 0.5)
              - _kl_direct(P, inv.mahalanobis_cost(x, y, M0 - E), 0.5)) / (2 * h)
        g = Mt.grad[i, j] + (Mt.grad[j, i] if i != j else 0)
        assert float(g) == pytest.approx(fd, rel=1e-5, abs=1e-7)


# ----------------------------------------------------------------------------- mixtures, neurons
def test_a_planted_candidate_cost_and_its_weight_are_found():
    rng = np.random.default_rng(0)
    m, k = 14, 11
    cands = {name: rng.random((m, k)) for name in ("a", "b", "c")}
    plan = solve(2.5 * cands["b"], eps=1.0).plan
    fit = inv.fit_cost_mix(cands, plan)
    np.testing.assert_allclose(fit.weights, [0.0, 2.5, 0.0], atol=1e-4)
    assert fit.explained > 1 - 1e-6
    ex = inv.explain_matching(plan, cands)
    assert ex.best == "b"
    assert ex.table.loc["b", "explained alone"] > 1 - 1e-6
    assert ex.table.loc["a", "explained alone"] < 0.5
    # weights are in units of each candidate's spread
    sd = ex.scales["b"]
    assert ex.table.loc["b", "weight in mix"] == pytest.approx(2.5 * sd, rel=1e-4)


def test_readout_coupling_is_a_coupling_of_the_regression_weights():
    rng = np.random.default_rng(0)
    T = rng.normal(size=(6, 200))
    S = np.vstack([T[[2]] * 2 + 0.01 * rng.normal(size=(1, 200)), T[[0]] - T[[4]]])  # 2 student neurons
    P = inv.readout_coupling(T, S, ridge=1e-4)
    np.testing.assert_allclose(P.sum(1), 1 / 6, atol=1e-8)
    np.testing.assert_allclose(P.sum(0), 1 / 2, atol=1e-8)
    # student 0 is teacher 2: the readout puts its column's weight there, relative to the rows' scaling
    assert P[:, 0].argmax() == 2
    assert set(np.argsort(P[:, 1])[-2:]) == {0, 4}


def test_neuron_costs_on_a_shipped_teacher_and_student():
    import otviz
    from otviz.data import load_split
    from otviz.teachers import load_teacher

    teacher, _ = load_teacher("cnn-digits")
    student, _ = load_teacher("cnn-digits-0to4")
    _, _, X, y = load_split("digits")
    probe = torch.from_numpy(X[:96])
    layer = "features.conv1"
    at, as_ = otviz.capture(teacher, probe, [layer]), otviz.capture(student, probe, [layer])
    costs = inv.neuron_costs(at[layer], as_[layer], labels=y[:96])
    assert set(costs) == {"pixels: sq. Euclidean", "pixels: correlation", "images: correlation",
                          "classes: correlation"}
    for C in costs.values():
        assert C.shape == (16, 16) and np.isfinite(C).all()
    T = otviz.neurons(at[layer]).numpy()
    S = otviz.neurons(as_[layer]).numpy()
    np.testing.assert_allclose(costs["pixels: correlation"], otviz.cost_matrix(T, S, "correlation"), atol=1e-12)
    plan = inv.readout_coupling(T, S)
    ex = inv.explain_matching(plan, costs)
    assert 0 < ex.mix.explained <= 1
    assert ex.mix.explained >= ex.table["explained alone"].max() - 1e-6  # the mix contains every single cost


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    x, y = np.zeros((4, 2)) + np.arange(4)[:, None], np.ones((3, 2))
    P = np.full((4, 3), 1 / 12)
    with pytest.raises(ValueError, match="eps"):
        inv.fit_cost(x, y, P, eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        inv.fit_cost(x, y, P, eps=-1.0)
    with pytest.raises(ValueError, match="shape"):
        inv.fit_cost(x, y, np.full((3, 4), 1 / 12), eps=0.5)
    with pytest.raises(ValueError, match="same space"):
        inv.fit_cost(x, np.ones((3, 5)), P, eps=0.5)
    with pytest.raises(ValueError, match="negative"):
        bad = P.copy()
        bad[0, 0] = -0.01
        inv.fit_cost(x, y, bad, eps=0.5)
    with pytest.raises(ValueError, match="row sums differ from a"):
        inv.fit_cost(x, y, P, eps=0.5, a=[0.4, 0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="column sums differ from b"):
        inv.fit_cost(x, y, P, eps=0.5, b=[0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="one of each"):
        inv.fit_cost([x, x], [y], [P, P], eps=0.5)
    with pytest.raises(ValueError, match="NaN"):
        inv.fit_cost(np.where(x == 0, np.nan, x), y, P, eps=0.5)
    with pytest.raises(ValueError, match="no mass"):
        inv.fit_cost(x, y, np.zeros((4, 3)), eps=0.5)
    with pytest.raises(ValueError, match="empty"):
        inv.fit_cost(np.zeros((0, 2)), y, np.zeros((0, 3)), eps=0.5)
    with pytest.raises(ValueError, match="positive semi-definite"):
        inv.mahalanobis_cost(x, y, np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="symmetric"):
        inv.generate_plans(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="eps"):
        inv.generate_plans(np.eye(2), eps=0)
    with pytest.raises(ValueError, match="max_iter"):
        inv.fit_cost(x, y, P, eps=0.5, max_iter=0)
    with pytest.raises(ValueError, match="max_iter must be a positive integer, got -5"):
        inv.fit_cost_mix({"c": np.ones((4, 3))}, P, max_iter=-5)
    with pytest.raises(ValueError, match="tol must be a non-negative finite number, got nan"):
        inv.fit_cost(x, y, P, eps=0.5, tol=float("nan"))
    with pytest.raises(TypeError, match="tol must be a non-negative finite number, got str"):
        inv.explain_matching(P, {"c": np.arange(12.0).reshape(4, 3) ** 2}, tol="tiny")
    # the correct marginals are accepted (up to scale)
    inv.fit_cost(x, y, 12 * P, eps=0.5, a=[1, 1, 1, 1], b=[2, 2, 2], max_iter=3)


def test_mix_and_explain_refuse_bad_candidates():
    P = np.full((3, 4), 1 / 12)
    with pytest.raises(ValueError, match="shape"):
        inv.fit_cost_mix({"a": np.zeros((4, 3))}, P)
    with pytest.raises(ValueError, match="empty"):
        inv.fit_cost_mix({}, P)
    with pytest.raises(ValueError, match="no spread"):
        inv.explain_matching(P, {"rows only": np.arange(3.0)[:, None] + np.zeros((3, 4))})
    with pytest.raises(ValueError, match="eps"):
        inv.fit_cost_mix({"a": np.ones((3, 4))}, P, eps=float("nan"))
    with pytest.raises(ValueError, match="constant response"):
        inv.readout_coupling(np.vstack([np.ones(10), np.arange(10.0)]), np.arange(10.0)[None])


def test_a_sharp_plan_is_fitted_at_a_larger_eps():
    """A 5 x 5 plan generated at eps = 0.01 is the plan of 10 M at eps = 0.1; its costs span
    100 to 1000 eps, where Sinkhorn from a cold start stalled at a marginal error of 1e-6 and
    fit_cost raised. Measured: relative error 2.5e-4 to 10 M (seed 1)."""
    M = np.array([[2.0, 0.6], [0.6, 0.5]])
    xs, ys, plans = inv.generate_plans(M, n_plans=1, n_points=5, eps=0.01, seed=1)
    assert plans[0].max(1).min() < 0.19  # sharp, but not a permutation: the cost is identified
    fit = inv.fit_cost(xs, ys, plans, eps=0.1)
    assert fit.relative_error(10 * M) < 1e-2
    assert fit.explained > 1 - 1e-6 and fit.marginal_error < 1e-6
    np.testing.assert_allclose(fit.plans[0], plans[0], atol=1e-5)
    # a near-permutation plan (seed 0) carries only its matching: it is fitted (no error),
    # reproduced, and the fitted cost's exact plan is the same matching
    xs, ys, plans = inv.generate_plans(M, n_plans=1, n_points=5, eps=0.01, seed=0)
    fit = inv.fit_cost(xs, ys, plans, eps=0.1)
    assert fit.explained > 1 - 1e-6
    np.testing.assert_allclose(fit.plans[0], plans[0], atol=1e-5)
    exact = solve(inv.mahalanobis_cost(xs[0], ys[0], fit.M)).plan
    assert np.array_equal(exact.argmax(1), plans[0].argmax(1))


def test_a_permutation_plan_needs_regularisation():
    """An exact matching is sharper than any entropic plan: without reg the fitted cost grows
    until the stopping rule stops it (the plan is reproduced, the cost's scale is not set by
    the plan); with reg it stays bounded."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2))
    y = x + 0.05 * rng.normal(size=(8, 2))
    P = np.eye(8) / 8
    free = inv.fit_cost(x, y, P, eps=0.5)
    assert free.explained > 1 - 1e-6 and np.isfinite(free.M).all()
    np.testing.assert_allclose(free.plans[0], P, atol=1e-6)
    fit = inv.fit_cost(x, y, P, eps=1.0, reg=1e-2)
    assert np.isfinite(fit.M).all() and np.linalg.norm(fit.M) < 1e3
    assert fit.explained > 0.5


# ----------------------------------------------------------------------------- figures and page
def test_figures_build():
    from otviz.figures import lab_inverse as figs

    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=1, n_points=10, eps=0.5, seed=0)
    fit = inv.fit_cost(xs, ys, plans, eps=0.5)
    assert len(figs.metric_balls(M_TRUE, fit.M, fit.isotropic_scale * np.eye(2)).data) == 3
    assert len(figs.metric_heatmaps(M_TRUE, fit.M).data) == 2
    assert len(figs.plan_pair(plans[0], fit.plans[0]).data) == 2
    assert len(figs.fit_curve(fit).data) == 1
    figs.metric_balls(M_TRUE, np.diag([1.0, 0.0]))  # a singular learned M is drawn cut off
    with pytest.raises(ValueError, match="2-D"):
        figs.metric_balls(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        figs.plan_pair(plans[0], plans[0][:5])


def test_app_section_renders_and_reacts():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "otviz_app.py"), default_timeout=180)
    at.run()
    at.switch_page("views/lab.py").run()
    at.segmented_control[0].set_value("Inverse OT").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Inverse OT" in h.value for h in at.header)
    labels = [m.label for m in at.metric]
    assert "Relative error of M" in labels
    assert "Best single cost: pixels: correlation" in labels  # features.conv1, readout coupling
    err = next(m for m in at.metric if m.label == "Relative error of M")
    assert float(err.value) < 1e-5
    at.select_slider(key="lab_inverse_obs").set_value("1000 pairs").run()
    assert not at.exception, [e.value for e in at.exception]
    err = next(m for m in at.metric if m.label == "Relative error of M")
    assert 1e-4 < float(err.value) < 0.2
    at.selectbox(key="lab_inverse_observed").set_value("planted (a check)").run()
    assert not at.exception, [e.value for e in at.exception]
    best = next(m for m in at.metric if m.label.startswith("Best single cost"))
    assert best.label == "Best single cost: classes: correlation"
    assert best.value == "100.0%"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda_matches_cpu():
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=2, n_points=20, eps=0.5, n_samples=1000, seed=0)
    cpu = inv.fit_cost(xs, ys, plans, eps=0.5)
    gpu = inv.fit_cost(xs, ys, plans, eps=0.5, device="cuda")
    np.testing.assert_allclose(gpu.M, cpu.M, rtol=1e-6, atol=1e-8)


def test_unavailable_device_is_refused():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    xs, ys, plans = inv.generate_plans(M_TRUE, n_plans=1, n_points=5, eps=0.5)
    with pytest.raises(ValueError, match="CUDA is not available"):
        inv.fit_cost(xs, ys, plans, eps=0.5, device="cuda")


def test_the_independent_coupling_is_explained_by_a_zero_cost():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(5, 2))
    fit = inv.fit_cost(x, y, np.full((6, 5), 1 / 30), eps=0.5)
    assert np.abs(fit.M).max() < 1e-3  # no preference between partners: no cost
    assert np.isnan(fit.explained)  # nothing to explain, said as NaN rather than a number
