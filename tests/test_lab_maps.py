"""otviz.lab.maps: the Gaussian closed form, the exact plan's barycentric map, the adversarially
learned map (Leygonie et al. 2019), their figures and the OT lab section."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from otviz.lab import maps as M

ROOT = Path(__file__).resolve().parents[1]
GAUSS = M.PAIRS["Two Gaussians"]

# a 3-D pair whose covariances do not commute (the closed form is not a diagonal rescaling)
M3A, S3A = np.array([1.0, -2.0, 0.5]), np.array([[2.0, 0.5, 0.1], [0.5, 1.0, -0.3], [0.1, -0.3, 0.7]])
M3B, S3B = np.array([0.0, 1.0, 3.0]), np.array([[0.6, -0.2, 0.0], [-0.2, 1.8, 0.4], [0.0, 0.4, 1.1]])


# ----------------------------------------------------------------------------- closed form
def test_closed_form_pushes_source_gaussian_onto_target():
    T = M.gaussian_map(M3A, S3A, M3B, S3B)
    # exactly: T(x) = m_b + A(x - m_a) has mean m_b and covariance A S_a A = S_b
    np.testing.assert_allclose(T.A @ S3A @ T.A, S3B, atol=1e-10)
    # and on samples
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal(M3A, S3A, size=200_000)
    TX = T(X)
    np.testing.assert_allclose(TX.mean(0), M3B, atol=0.02)
    np.testing.assert_allclose(np.cov(TX.T), S3B, atol=0.03)
    # its cost is W2^2 (Bures)
    assert ((TX - X) ** 2).sum(1).mean() == pytest.approx(T.w2 ** 2, rel=0.01)


def test_closed_form_is_the_gradient_of_a_convex_function():
    T = M.gaussian_map(M3A, S3A, M3B, S3B)
    np.testing.assert_allclose(T.A, T.A.T, atol=1e-12)           # a gradient's Jacobian is symmetric
    assert np.linalg.eigvalsh(T.A).min() > 0                      # convex potential
    # and it is cheaper than another linear map pushing N(m_a,S_a) to N(m_b,S_b): the Cholesky one
    La, Lb = np.linalg.cholesky(S3A), np.linalg.cholesky(S3B)
    B = Lb @ np.linalg.inv(La)
    np.testing.assert_allclose(B @ S3A @ B.T, S3B, atol=1e-10)
    other = np.trace((B - np.eye(3)) @ S3A @ (B - np.eye(3)).T)
    ours = np.trace((T.A - np.eye(3)) @ S3A @ (T.A - np.eye(3)).T)
    assert ours < other


def test_closed_form_identity_and_commuting_case():
    T = M.gaussian_map(M3A, S3A, M3A, S3A)
    np.testing.assert_allclose(T.A, np.eye(3), atol=1e-10)
    assert T.w2 == pytest.approx(0.0, abs=1e-6)
    X = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(T(X), X, atol=1e-10)
    # diagonal covariances: A = sqrt(S_b / S_a), W2^2 = |dm|^2 + sum (sqrt(s_a) - sqrt(s_b))^2
    sa, sb = np.array([4.0, 0.25]), np.array([1.0, 9.0])
    D = M.gaussian_map([0, 0], np.diag(sa), [1, 2], np.diag(sb))
    np.testing.assert_allclose(D.A, np.diag(np.sqrt(sb / sa)), atol=1e-12)
    assert D.w2 ** 2 == pytest.approx(5.0 + ((np.sqrt(sa) - np.sqrt(sb)) ** 2).sum())
    assert M.bures_wasserstein([0, 0], np.diag(sa), [1, 2], np.diag(sb)) == pytest.approx(D.w2)


def test_closed_form_on_tensors_matches_numpy():
    T = GAUSS.closed_form
    X = np.random.default_rng(2).normal(size=(7, 2))
    out = T(torch.as_tensor(X, dtype=torch.float64))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), T(X), atol=1e-12)


# ----------------------------------------------------------------------------- discrete plan
def test_w2_of_samples_is_a_direct_pot_computation():
    import ot

    X, Y = M.sample_pair("Moons", 150, seed=3)
    C = ot.dist(X, Y)
    assert M.w2_samples(X, Y) ** 2 == pytest.approx(ot.emd2(np.full(150, 1 / 150), np.full(150, 1 / 150), C),
                                                    rel=1e-9)


def test_barycentric_map_approaches_the_closed_form():
    T = GAUSS.closed_form
    X, Y = M.sample_pair("Two Gaussians", 1000, seed=0)
    bary = M.barycentric_map(X, Y)
    TX = T(X)
    rel = ((bary.images - TX) ** 2).sum(1).mean() / ((TX - X) ** 2).sum(1).mean()
    assert rel < 0.02            # measured 0.5 % (1000 points), 0.19 % (2000)
    assert bary.w2 == pytest.approx(T.w2, rel=0.05)
    # equal sizes, uniform weights: the plan is a permutation and every image is a target point
    P = bary.alignment.plan
    assert ((P > 1e-12).sum(1) == 1).all()
    assert np.isin(bary.images.round(9), Y.round(9)).all()
    # its nearest-source-point extension maps the source points to their images
    np.testing.assert_allclose(bary(X[:10]), bary.images[:10])


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_w2_of_finite_samples_of_any_size_is_computed(scale):
    # 1e200 points were refused as "NaN or infinite" (their squared distances overflow)
    X, Y = M.sample_pair("Moons", 40, seed=1)
    assert M.w2_samples(X * scale, Y * scale) == pytest.approx(M.w2_samples(X, Y) * scale, rel=1e-12)
    with pytest.raises(ValueError, match="X and Y are so large .* W2 distance overflows float64"):
        M.w2_samples(np.array([[1e308, 0.0]]), np.array([[-1e308, 0.0]]))


def test_barycentric_map_of_huge_points_says_what_is_wrong_and_what_to_do():
    X, Y = M.sample_pair("Moons", 40, seed=1)
    with pytest.raises(ValueError, match="source and target are so large .*squared distances .*overflow "
                                         "float64 .*; divide both by one common scale s"):
        M.barycentric_map(X * 1e200, Y * 1e200)
    # points whose squared distances fit are mapped as at unit scale
    ref, big = M.barycentric_map(X, Y), M.barycentric_map(X * 1e140, Y * 1e140)
    np.testing.assert_array_equal(big.alignment.plan > 0, ref.alignment.plan > 0)
    np.testing.assert_allclose(big.images, ref.images * 1e140, rtol=1e-12)
    assert big.w2 == pytest.approx(ref.w2 * 1e140, rel=1e-12)
    np.testing.assert_allclose(big(X[:5] * 1e140), ref.images[:5] * 1e140, rtol=1e-12)


# ----------------------------------------------------------------------------- learned map
@pytest.mark.parametrize("seed", [0, 1])
def test_learned_map_is_close_to_the_closed_form(seed):
    # 300 steps (a few seconds): measured 1.7-1.9 % for seeds 0-2; 0.7-0.9 % at 500 steps,
    # 0.3 % at 1000; the objective's own bias at lam=20 is 1/21^2 = 0.23 %
    fitted = M.fit_adversarial_map(GAUSS.source, GAUSS.target, steps=300, seed=seed)
    ev = M.evaluate_map(fitted, GAUSS.source, GAUSS.target, reference=GAUSS.closed_form, n=600)
    assert ev.relative_error < 0.05
    # its push-forward is as close to the target as the closed form's, up to the samples' noise
    assert ev.w2_to_target < 1.5 * ev.w2_reference_to_target + 0.05
    assert fitted.history["transport_cost"].shape == (300,)
    assert np.isfinite(fitted.history["critic_w2sq"]).all()
    assert fitted.seconds > 0


def test_weight_lambda_stops_the_map_on_the_geodesic():
    # the minimiser of E|x-G|^2 + lam W2^2(G#mu, nu) is x + t (T(x) - x), t = lam / (1 + lam):
    # at lam = 1 the map goes half way, an error of (1 - t)^2 = 25 % of W2^2 and a cost of t^2 = 25 %
    fitted = M.fit_adversarial_map(GAUSS.source, GAUSS.target, steps=200, lam=1.0, seed=0)
    ev = M.evaluate_map(fitted, GAUSS.source, GAUSS.target, reference=GAUSS.closed_form, n=400)
    assert ev.relative_error == pytest.approx(0.25, abs=0.05)             # measured 0.251
    assert ev.transport_cost / ev.reference_cost == pytest.approx(0.25, abs=0.05)   # measured 0.249


def test_fit_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = M.fit_adversarial_map(GAUSS.source, GAUSS.target, steps=15, warmup=5, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = M.fit_adversarial_map(GAUSS.source, GAUSS.target, steps=15, warmup=5, seed=4)
    c = M.fit_adversarial_map(GAUSS.source, GAUSS.target, steps=15, warmup=5, seed=5)
    np.testing.assert_array_equal(a.history["critic_w2sq"], b.history["critic_w2sq"])
    assert not np.array_equal(a.history["critic_w2sq"], c.history["critic_w2sq"])


def test_fit_on_arrays_tracks_a_reference_and_calls_back():
    X, Y = M.sample_pair("Two Gaussians", 400, seed=0)
    seen = []
    fitted = M.fit_adversarial_map(X, Y, steps=20, warmup=5, seed=0, reference=GAUSS.closed_form,
                                   eval_every=10, callback=lambda step, losses: seen.append(step))
    assert seen == list(range(1, 21))
    np.testing.assert_array_equal(fitted.history["reference_step"], [0, 10, 20])
    # the generator starts as the identity: the first error is the closed form's own displacement
    assert fitted.history["reference_mse"][0] == pytest.approx(GAUSS.closed_form.w2 ** 2, rel=0.1)
    assert fitted.history["reference_mse"][-1] < fitted.history["reference_mse"][0]
    out = fitted(X[:5])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (5, 2)
    t = fitted(torch.as_tensor(X[:5], dtype=torch.float64))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), out, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda():
    fitted = M.fit_adversarial_map(GAUSS.source, GAUSS.target, steps=300, seed=0, device="cuda")
    assert fitted.device.type == "cuda"
    x = torch.randn(8, 2, device="cuda")
    assert fitted(x).device.type == "cuda"
    ev = M.evaluate_map(fitted, GAUSS.source, GAUSS.target, reference=GAUSS.closed_form, n=600)
    assert ev.relative_error < 0.05
    assert fitted.to("cpu")(np.zeros((1, 2))).shape == (1, 2)


def test_samplers_are_seeded_and_two_dimensional():
    for name in M.PAIRS:
        X, Y = M.sample_pair(name, 50, seed=7)
        X2, _ = M.sample_pair(name, 50, seed=7)
        assert X.shape == Y.shape == (50, 2)
        np.testing.assert_array_equal(X, X2)
        assert not np.array_equal(X, M.sample_pair(name, 50, seed=8)[0])
    assert M.PAIRS["Two Gaussians"].closed_form is not None
    assert M.PAIRS["Moons"].closed_form is None


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, match", [
    (([0, 0], np.eye(3), [0, 0], np.eye(2)), "must be a \\(2, 2\\) matrix"),
    (([0, 0], [[1, 0], [0, -1]], [0, 0], np.eye(2)), "not positive semi-definite"),
    (([0, 0], np.eye(2), [0, 0], [[1, 2], [0, 1]]), "not symmetric"),
    (([0, 0], [[1, 0], [0, 0]], [0, 0], np.eye(2)), "singular"),
    (([0, 0], np.eye(2), [0, 0, 0], np.eye(3)), "different dimensions"),
    (([[0, 0]], np.eye(2), [0, 0], np.eye(2)), "vector of shape"),
    (([0, np.nan], np.eye(2), [0, 0], np.eye(2)), "NaN"),
])
def test_gaussian_map_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        M.gaussian_map(*args)


def test_a_singular_target_covariance_is_allowed():
    T = M.gaussian_map([0, 0], np.eye(2), [1, 1], [[1, 0], [0, 0]])
    np.testing.assert_allclose(T.A @ T.A, [[1, 0], [0, 0]], atol=1e-12)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(steps=0), ValueError, "steps must be at least 1"),
    (dict(steps=-3), ValueError, "steps must be at least 1"),
    (dict(steps=2.5), TypeError, "steps must be an integer"),
    (dict(lam=0.0), ValueError, "lam must be a positive"),
    (dict(lam=-1.0), ValueError, "lam must be a positive"),
    (dict(batch_size=1), ValueError, "batch_size must be at least 2"),
    (dict(lr=float("nan")), ValueError, "lr must be a positive"),
    (dict(reference=3), TypeError, "reference must be a map"),
])
def test_fit_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        M.fit_adversarial_map(GAUSS.source, GAUSS.target, **kwargs)


def test_fit_rejects_bad_points():
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="2-D array"):
        M.fit_adversarial_map(np.zeros(10), X, steps=1)
    with pytest.raises(ValueError, match="dimension"):
        M.fit_adversarial_map(np.ones((10, 3)), X, steps=1)
    with pytest.raises(ValueError, match="NaN"):
        M.fit_adversarial_map(np.full((10, 2), np.nan), X, steps=1)
    with pytest.raises(ValueError, match="at least 2"):
        M.fit_adversarial_map(np.ones((1, 2)), X, steps=1)
    with pytest.raises(ValueError, match="nothing to transport"):
        M.fit_adversarial_map(X, X, steps=1)
    with pytest.raises(ValueError, match="sampler"):
        M.fit_adversarial_map(lambda n, rng: np.zeros((n + 1, 2)), X, steps=1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            M.fit_adversarial_map(GAUSS.source, GAUSS.target, steps=1, device="cuda")


def test_other_bad_input():
    with pytest.raises(ValueError, match="unknown pair"):
        M.sample_pair("Two moons", 10)
    with pytest.raises(ValueError, match="n must be at least 1"):
        M.sample_pair("Moons", 0)
    with pytest.raises(ValueError, match="same space|dimension"):
        M.barycentric_map(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0 point"):
        M.w2_samples(np.zeros((0, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape \\(n, 2\\)|dimension"):
        GAUSS.closed_form(np.zeros((3, 3)))


# ----------------------------------------------------------------------------- figures
def test_figures():
    from otviz.figures.lab_maps import lambda_sweep, map_comparison, map_figure, training_curves

    X, Y = M.sample_pair("Two Gaussians", 60, seed=0)
    TX = GAUSS.closed_form(X)
    fig = map_figure(X, Y, TX, title="closed form", n_arrows=10)
    seg = [t for t in fig.data if t.mode == "lines"][0]
    assert len(seg.x) == 30                                   # 10 segments, None-separated
    np.testing.assert_allclose(fig.data[-1].x, TX[:, 0])
    fig = map_comparison(X, Y, {"a": TX, "b": X})
    assert len(fig.data) == 8 and sum(t.showlegend is not False for t in fig.data) == 4
    fitted = M.fit_adversarial_map(X, Y, steps=12, warmup=2, reference=GAUSS.closed_form, eval_every=5)
    fig = training_curves(fitted, reference_w2sq=GAUSS.closed_form.w2 ** 2, title="t")
    assert any(t.name == "E‖G(x) − T(x)‖²" for t in fig.data)
    fig = lambda_sweep([1, 10, 100], [0.25, 0.01, 0.001])
    assert len(fig.data) == 2
    with pytest.raises(ValueError, match="one image per source point"):
        map_figure(X, Y, TX[:5])
    with pytest.raises(ValueError, match="2 columns"):
        map_figure(np.zeros((4, 3)), Y, np.zeros((4, 3)))
    with pytest.raises(TypeError, match="fit_adversarial_map"):
        training_curves(object())


# ----------------------------------------------------------------------------- the page
def test_the_lab_section_renders_and_trains():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "otviz_app.py"), default_timeout=180)
    at.run()
    at.switch_page("views/lab.py").run()
    at.segmented_control[0].set_value("Adversarial OT maps").run()
    assert not at.exception
    assert any("Adversarial OT maps" in h.value for h in at.header)
    assert not at.metric                                       # nothing trained yet
    [steps] = [s for s in at.select_slider if s.label == "Generator steps"]
    steps.set_value(250).run()
    [train] = [b for b in at.button if b.label == "Train the map"]
    train.click().run()
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert "Error to the closed form" in labels
    err = float(at.metric[labels.index("Error to the closed form")].value.split()[0])
    assert err < 5                                             # per cent
    # another pair: no closed form, the panels and the prompt to train again
    [pair] = [s for s in at.selectbox if s.label == "Distributions"]
    pair.set_value("Ring to blob").run()
    assert not at.exception and not at.error
    assert not at.metric


def test_fit_restores_torch_threads():
    before = torch.get_num_threads()
    seen = []
    M.fit_adversarial_map(GAUSS.source, GAUSS.target, steps=2, warmup=0, num_threads=1,
                          callback=lambda step, losses: seen.append(torch.get_num_threads()))
    assert seen == [1, 1] and torch.get_num_threads() == before
