"""otviz.lab.topk: the soft top-k by entropic OT (Xie et al. 2020), its neuron selection, figures
and the OT lab page's "Soft top-k" section."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ot = pytest.importorskip("ot")

from otviz.lab import hard_topk, select_neurons, soft_topk, topk_transport  # noqa: E402
from otviz.lab.topk import NeuronSelection  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small problems: one torch thread is faster than several on a shared machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scores(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rescaled(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min())


# ----------------------------------------------------------------------------- defining properties
@pytest.mark.parametrize("n,k", [(2, 1), (5, 2), (20, 1), (20, 19), (64, 8), (300, 150)])
@pytest.mark.parametrize("eps", [1.0, 0.1, 0.01, 1e-3, 1e-4])
def test_weights_sum_to_k_and_lie_in_the_unit_interval(n, k, eps):
    w = soft_topk(_scores(n, seed=n + k), k, eps)
    assert w.shape == (n,)
    assert abs(float(w.sum()) - k) < 1e-8
    assert float(w.min()) >= 0.0 and float(w.max()) <= 1.0


def test_the_solver_converges_where_plain_sinkhorn_stalls():
    """Nearly hard plans (eps between 1e-3 and 0.05) are where Sinkhorn from scratch crawls; the
    threshold found first makes every one of these solves converge to the exact sum."""
    for seed in range(3):
        for n in (5, 10, 50, 200):
            x = _scores(n, seed=100 * seed + n)
            for k in sorted({1, n // 4 or 1, n // 2, n - 1}):
                for eps in (0.05, 0.03, 0.02, 0.01, 5e-3, 3e-3, 2e-3, 1e-3):
                    assert abs(float(soft_topk(x, k, eps).sum()) - k) < 1e-9, (n, k, eps)


def test_tends_to_the_hard_top_k_as_eps_decreases():
    x = _scores(30, seed=1)
    hard = hard_topk(x, 7)
    assert float(hard.sum()) == 7 and set(torch.nonzero(hard).flatten().tolist()) == \
        set(torch.topk(x, 7).indices.tolist())
    eps_values = [3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 1e-4]
    errors = [float((soft_topk(x, 7, e) - hard).abs().max()) for e in eps_values]
    assert errors[0] > 0.5                                   # nearly flat: k/n everywhere
    assert all(b < a for a, b in zip(errors, errors[1:]) if a > 1e-12), errors
    assert errors[-1] < 1e-9, errors                          # eps = 1e-4: hard to 1e-9


def test_the_limit_is_the_exact_ot_plan_and_the_plan_is_pots_entropic_plan():
    """The transport problem itself: at small eps the plan is POT's exact plan (network simplex);
    at moderate eps it is POT's log-domain Sinkhorn plan on the same cost."""
    x = _scores(12, seed=2)
    s = _rescaled(x).numpy()
    n, k = 12, 4
    a, b = np.full(n, 1 / n), np.array([(n - k) / n, k / n])
    C = (s[:, None] - np.array([0.0, 1.0])[None, :]) ** 2
    exact = ot.emd(a, b, C)
    assert np.allclose(topk_transport(x, k, 1e-4).plan, exact, atol=1e-12)
    assert np.allclose(n * exact[:, 1], hard_topk(x, k).numpy())
    for eps in (0.5, 0.1, 0.03):
        ref = ot.sinkhorn(a, b, C, reg=eps, method="sinkhorn_log", numItermax=200_000, stopThr=1e-13)
        P = topk_transport(x, k, eps).plan
        assert np.allclose(P, ref, atol=1e-9), (eps, np.abs(P - ref).max())
        assert np.allclose(P.sum(1), 1 / n, atol=1e-12) and np.allclose(P.sum(0), b, atol=1e-10)


def test_the_weights_are_a_logistic_of_the_rescaled_score_with_slope_2_over_eps():
    x = _scores(40, seed=3)
    s = _rescaled(x)
    for eps in (0.3, 0.05):
        w = soft_topk(x, 10, eps)
        inside = (w > 1e-9) & (w < 1 - 1e-9)
        logit = torch.log(w[inside] / (1 - w[inside]))
        slope = np.polyfit(s[inside].numpy(), logit.numpy(), 1)[0]
        assert slope == pytest.approx(2 / eps, rel=1e-6)
        t = topk_transport(x, 10, eps)
        mid = 1 / (1 + torch.exp(-(2 * s - 2 * t.threshold) / eps))
        assert torch.allclose(mid, w, atol=1e-9)


def test_gradients_match_finite_differences():
    x = _scores(9, seed=4).requires_grad_(True)
    for eps in (0.5, 0.05, 0.01):
        assert torch.autograd.gradcheck(lambda z: soft_topk(z, 3, eps), (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda z: soft_topk(z, 4, 0.3, rescale=False), (x,), eps=1e-6,
                                    atol=1e-5)
    batch = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5),
                        requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: soft_topk(z, 2, 0.1), (batch,), eps=1e-6, atol=1e-5)
    # a non-trivial gradient: raising a score near the threshold raises its own weight
    w = soft_topk(x, 3, 0.1)
    i = int(torch.argmin((w - 0.5).abs()))
    (g,) = torch.autograd.grad(w[i], x)
    assert float(g[i]) > 0.01


def test_permuting_the_scores_permutes_the_weights():
    x = _scores(25, seed=6)
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(7))
    for eps in (0.3, 0.02):
        assert torch.allclose(soft_topk(x[perm], 6, eps), soft_topk(x, 6, eps)[perm], atol=1e-12)


def test_rescaling_makes_the_weights_invariant_to_affine_changes_of_the_scores():
    x = _scores(15, seed=8)
    assert torch.allclose(soft_topk(3.0 * x - 7.0, 5, 0.05), soft_topk(x, 5, 0.05), atol=1e-10)
    huge = x / x.abs().max() * 1.5e308                      # the span overflows float64
    assert torch.allclose(soft_topk(huge, 5, 0.05), soft_topk(x, 5, 0.05), atol=1e-10)
    with pytest.raises(ValueError, match="too large for eps"):
        soft_topk(huge, 5, 1e-10, rescale=False)
    # without rescaling, larger scores give a sharper step
    err = [float((soft_topk(c * _rescaled(x), 5, 0.05, rescale=False) - hard_topk(x, 5)).abs().max())
           for c in (1.0, 10.0)]
    assert err[1] < err[0]


def test_ties_share_the_weight():
    w = soft_topk(torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=torch.float64), 2, 1e-4)
    assert torch.allclose(w, torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=torch.float64), atol=1e-9)
    x = torch.tensor([0.1, 0.7, 0.7, 0.7, 0.2, 0.9], dtype=torch.float64)
    for eps in (1.0, 0.1, 1e-3):
        w = soft_topk(x, 3, eps)
        assert float(w[1]) == pytest.approx(float(w[2])) == pytest.approx(float(w[3]))
        assert abs(float(w.sum()) - 3) < 1e-9
    flat = soft_topk(torch.full((5,), 4.0), 2, 0.01)             # all equal: k/n everywhere
    assert torch.allclose(flat, torch.full((5,), 0.4))
    assert float(hard_topk(torch.tensor([1.0, 1.0, 1.0]), 2).sum()) == 2    # hard: lowest index first


def test_k_equal_to_n_keeps_everything_and_shapes_dtypes_follow_the_input():
    x = _scores(6).requires_grad_(True)
    w = soft_topk(x, 6, 0.1)
    assert torch.equal(w, torch.ones(6, dtype=torch.float64))
    w.sum().backward()
    assert torch.equal(x.grad, torch.zeros(6, dtype=torch.float64))
    w32 = soft_topk(np.array([0.3, 0.1, 0.9], dtype=np.float32), 1, 0.01)
    assert isinstance(w32, torch.Tensor) and w32.dtype == torch.float32
    assert torch.allclose(w32, torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert soft_topk([1, 5, 3], 2, 0.1).dtype == torch.get_default_dtype()    # integer scores
    batch = torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    wb = soft_topk(batch, 3, 0.05)
    assert wb.shape == (4, 10)
    assert torch.allclose(wb[2], soft_topk(batch[2], 3, 0.05), atol=1e-12)
    assert torch.allclose(wb.sum(1), torch.full((4,), 3.0, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("args,error,match", [
    (([1.0, 2.0, 3.0], 0, 0.1), ValueError, "between 1 and n = 3"),
    (([1.0, 2.0, 3.0], 4, 0.1), ValueError, "between 1 and n = 3"),
    (([1.0, 2.0, 3.0], 1.5, 0.1), TypeError, "k must be an integer"),
    (([1.0, 2.0, 3.0], True, 0.1), TypeError, "k must be an integer"),
    (([1.0, 2.0, 3.0], 1, 0.0), ValueError, "eps must be a positive finite number"),
    (([1.0, 2.0, 3.0], 1, -1.0), ValueError, "eps must be a positive finite number"),
    (([1.0, 2.0, 3.0], 1, float("nan")), ValueError, "eps must be a positive finite number"),
    (([1.0, 2.0, 3.0], 1, None), ValueError, "eps must be a positive number"),
    (([], 1, 0.1), ValueError, "scores is empty"),
    (([1.0, float("nan")], 1, 0.1), ValueError, "NaN or infinite"),
    (([1.0, float("inf")], 1, 0.1), ValueError, "NaN or infinite"),
    ((np.zeros((2, 2, 2)), 1, 0.1), ValueError, "must be 1-D"),
    ((torch.tensor(3.0), 1, 0.1), ValueError, "must be 1-D"),
    ((["a", "b"], 1, 0.1), TypeError, "real numbers"),
])
def test_bad_input_raises_a_clear_error(args, error, match):
    with pytest.raises(error, match=match):
        soft_topk(*args)


def test_topk_transport_describes_the_plan():
    x = _scores(10, seed=11)
    t = topk_transport(x, 3, 0.05)
    assert t.plan.shape == (10, 2) and t.n == 10
    assert np.allclose(t.plan.sum(1), 0.1) and np.allclose(t.plan.sum(0), [0.7, 0.3])
    assert np.allclose(t.weights, soft_topk(x, 3, 0.05).numpy(), atol=1e-12)
    assert t.scaled.min() == 0.0 and t.scaled.max() == 1.0
    assert 0.0 < t.threshold < 1.0 and t.max_error == pytest.approx(np.abs(t.weights - t.hard).max())
    with pytest.raises(ValueError, match="one score vector"):
        topk_transport(torch.zeros(2, 3), 1, 0.1)


@pytest.mark.parametrize("opts,error,match", [
    (dict(tol=-1), ValueError, "tol must be a positive finite number .*got -1"),
    (dict(tol=float("nan")), ValueError, "tol must be a positive finite number"),
    (dict(max_iter=-5), ValueError, "max_iter must be a positive integer .*got -5"),
    (dict(max_iter=2.0), TypeError, "max_iter must be a positive integer"),
])
def test_bad_stopping_rules_are_refused_up_front(opts, error, match):
    x = _scores(6)
    for k in (2, 6):  # also when k = n needs no solve
        with pytest.raises(error, match=match):
            soft_topk(x, k, 0.1, **opts)


def _closed_form_jacobian(s: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """dA/ds of A_i = sigma((2 s_i - theta)/eps) with theta fixed by sum A = k (scores used as they are)."""
    A = soft_topk(s, k, eps, rescale=False).detach()
    d = A * (1 - A)
    J = torch.diag(d)
    if float(d.sum()) > 0:
        J = J - d[:, None] * d[None, :] / d.sum()
    return 2 / eps * J


@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-4, 1e-5])
def test_gradients_at_small_eps_are_finite_and_exact(eps):
    # Nearly hard plans used to make the backward's linear system singular ("singular
    # matrix" on 5 of 50 such inputs at eps 1e-2, 34 at 1e-3, all at 1e-5).
    for seed in range(50):
        x = _scores(5, seed=100 + seed).requires_grad_(True)
        (g,) = torch.autograd.grad((soft_topk(x, 2, eps) * torch.arange(5.0)).sum(), x)
        assert torch.isfinite(g).all(), (eps, seed)
    # against the closed form (a logistic of the score, threshold set by the sum), on random
    # scores in [0, 1] and on scores with a near tie across the top-2 boundary (then the
    # gradient is large, 2/eps times a fraction)
    scale = 2 / eps
    for seed in range(50):
        gen = torch.Generator().manual_seed(seed)
        s = torch.rand(5, generator=gen, dtype=torch.float64)
        if seed % 2:
            order = torch.argsort(s, descending=True)
            s[order[2]] = s[order[1]] - eps * float(torch.rand(1, generator=gen, dtype=torch.float64))
        J = torch.autograd.functional.jacobian(lambda z: soft_topk(z, 2, eps, rescale=False), s)
        ref = _closed_form_jacobian(s, 2, eps)
        assert torch.isfinite(J).all()
        assert float((J - ref).abs().max()) <= 1e-9 * scale, (eps, seed)
        if seed % 2 and seed < 10:  # finite differences on a step well below the logistic's width
            z = s.clone().requires_grad_(True)
            assert torch.autograd.gradcheck(lambda v: soft_topk(v, 2, eps, rescale=False), (z,),
                                            eps=1e-3 * eps, atol=1e-6 * scale, rtol=1e-4)


# ----------------------------------------------------------------------------- selecting neurons
#: Learned channels minus the mean of the random ones, in test accuracy (fraction of 360 images).
#: Measured in fast mode on cnn-digits, k = 8 of 64, seeds 0-7: 0.19 or more.
MARGIN = 0.10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_channels_beat_random_channels(seed):
    sel = select_neurons("cnn-digits", k=8, seed=seed, fast=True)
    assert isinstance(sel, NeuronSelection)
    assert sel.layer == "features.conv3" and sel.n_channels == 64 and sel.steps == 100
    assert sel.margin_over_random >= MARGIN, sel.summary()
    assert sel.accuracy["learned"] > np.median(sel.random_accuracy)
    assert len(set(sel.learned.tolist())) == 8 and sel.random.shape == (10, 8)
    assert abs(sel.soft_mask.sum() - 8) < 1e-8
    assert set(sel.learned.tolist()) == set(np.argsort(-sel.scores)[:8].tolist())
    assert sel.accuracy["all channels"] > 0.95


def test_neuron_selection_is_seeded_and_takes_a_model_of_ones_own():
    from otviz.teachers import load_teacher, teacher_task

    a = select_neurons("mlp-digits", k=4, seed=3, steps=20, n_random=3)
    b = select_neurons("mlp-digits", k=4, seed=3, steps=20, n_random=3)
    assert np.array_equal(a.scores, b.scores) and a.accuracy == b.accuracy
    assert np.array_equal(a.random_accuracy, b.random_accuracy)
    model, info = load_teacher("mlp-digits")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = select_neurons(model, "features.fc1", k=16, task=teacher_task(info), steps=10, n_random=2)
    assert c.n_channels == 128 and c.model == "MLP"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # not modified
    assert all(p.requires_grad for p in model.parameters())
    assert not model._forward_hooks and not model.features.fc1._forward_hooks


def test_neuron_selection_bad_input():
    with pytest.raises(ValueError, match="between 1 and 63"):
        select_neurons("mlp-digits", k=64, steps=1)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        select_neurons("mlp-digits", "nope", steps=1)
    with pytest.raises(ValueError, match="pass task="):
        select_neurons(torch.nn.Linear(3, 2), "", k=1)
    with pytest.raises(ValueError, match="eps_start"):
        select_neurons("mlp-digits", eps=0.1, eps_start=0.01, steps=1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        select_neurons("mlp-digits", steps=0)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        select_neurons("mlp-digits", eps=0.0, steps=1)


def test_neuron_selection_runs_down_to_a_tiny_eps():
    # the mask's backward used to raise "singular matrix" once the soft top-k was nearly hard
    # (at a step before the 20th with these settings)
    sel = select_neurons("mlp-digits", k=4, eps=1e-4, steps=20, n_random=2)
    assert np.isfinite(sel.scores).all() and np.isfinite(sel.loss).all()
    assert sel.eps == 1e-4 and abs(sel.soft_mask.sum() - 4) < 1e-8


# ----------------------------------------------------------------------------- figures
def test_figures():
    from otviz.figures import lab_topk as figs

    x = _scores(12, seed=12)
    ts = [topk_transport(x, 4, e) for e in (1.0, 0.1, 0.01)]
    fig = figs.soft_topk_curves(ts)
    assert len(fig.data) == 4 and "sum 4.0000" in fig.data[1].name
    assert list(fig.data[0].y) == sorted(ts[0].hard)                   # the hard step, by score
    plan = figs.topk_plan(ts[1])
    assert any(tr.mode == "markers+text" for tr in plan.data)
    with pytest.raises(ValueError, match="same scores and k"):
        figs.soft_topk_curves([ts[0], topk_transport(x, 3, 0.1)])
    with pytest.raises(TypeError, match="lacks"):
        figs.topk_plan(SimpleNamespace(scaled=[0.0]))
    sel = SimpleNamespace(
        accuracy={"all channels": 0.99, "learned": 0.9, "largest mean activation": 0.7},
        random_accuracy=np.array([0.6, 0.7, 0.65]), k=2, n_channels=6, layer="l", model="m", n_test=100,
        scores=np.arange(6.0), mean_activation=np.arange(6.0)[::-1], learned=np.array([4, 5]),
        largest_mean=np.array([0, 5]), soft_mask=np.array([0, 0, 0, 0, 1.0, 1.0]))
    acc = figs.neuron_selection(sel)
    assert {tr.x[0] for tr in acc.data if tr.mode == "markers+text"} >= {99.0, 90.0, 70.0}
    ch = figs.channel_scores(sel)
    assert sorted(len(tr.x) for tr in ch.data) == [1, 1, 1, 3]


# ----------------------------------------------------------------------------- the page
def test_soft_topk_section_of_the_ot_lab_page(tmp_path, monkeypatch):
    streamlit_testing = pytest.importorskip("streamlit.testing.v1")
    monkeypatch.setenv("OTVIZ_STORE", str(tmp_path / "runs.db"))
    at = streamlit_testing.AppTest.from_file(str(ROOT / "app" / "otviz_app.py"), default_timeout=180)
    at.run()
    at.switch_page("views/lab.py").run()
    at.segmented_control[0].set_value("Soft top-k").run()
    assert not at.exception, [e.value for e in at.exception]

    def metric(label):
        return next(m for m in at.metric if m.label == label).value

    assert metric("Sum of the weights") == "5.000000"
    next(s for s in at.slider if s.key == "lab_topk_k").set_value(9).run()
    assert not at.exception
    assert metric("Sum of the weights") == "9.000000"
    assert len(at.get("plotly_chart")) == 3
    at.selectbox(key="lab_topk_teacher").set_value("mlp-digits").run()
    at.button(key="lab_topk_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    learned = metric("Learned 8 channels")
    assert learned.endswith(" %") and 0 < float(learned[:-2]) <= 100
    assert len(at.get("plotly_chart")) == 5
