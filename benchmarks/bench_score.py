"""What the OT score costs, and why its debiasing terms use their own symmetric solver.

Part 1, overhead: for neuron-like layers (shared factors, varied scales), the
time of ``align(T, S)`` alone against ``align(T, S)`` plus reading
``.score`` (one more exact solve; for entropic OT, one cross solve and two
self solves), as a ratio, exact and entropic (eps 0.05), from 64x16 to
1024x256 neurons.

Part 2, the self terms of the debiased score, OT_eps(T, T): a layer against
itself is Sinkhorn's worst case (the plan is nearly a permutation). Time and
convergence of the averaged symmetric fixed point (``otviz._score.symmetric_ot``,
as in geomloss) against otviz's stabilised Sinkhorn and POT's ``ot.sinkhorn2``
(``sinkhorn_log``) on the same problem, same tolerance and iteration cap;
values compared with the symmetric solver's.

Timings are medians of alternated repeats (the machine is shared): read the
ratios, not the absolute times.

Usage::

    python benchmarks/bench_score.py [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ot  # noqa: E402

from otviz import align  # noqa: E402
from otviz._score import score_geometry, symmetric_ot  # noqa: E402
from otviz._sinkhorn import sinkhorn_solve  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def layer(m: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(8, d))
    X = rng.normal(size=(m, 8)) @ Z + 0.5 * rng.normal(size=(m, d))
    return X * rng.uniform(0.2, 3.0, size=(m, 1))


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overhead(sizes, repeat: int) -> list[str]:
    lines = ["| neurons | solver | align s | align + score s | ratio |", "|---|---|---|---|---|"]
    for m, k in sizes:
        T, S = layer(m, 500, 0), layer(k, 500, 1)
        for method, eps in (("emd", None), ("sinkhorn", 0.05)):
            def plain():
                align(T, S, method=method, eps=eps)

            def scored():
                align(T, S, method=method, eps=eps).score

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_plain = timed(plain, repeat)
                t_score = timed(scored, repeat)
            lines.append(f"| {m}x{k} | {method if eps is None else f'{method} eps {eps}'} | "
                         f"{t_plain:.3f} | {t_score:.3f} | {t_score / t_plain:.2f} |")
            print(lines[-1], flush=True)
    return lines


def self_terms(sizes, eps_list, repeat: int, tol: float, max_iter: int) -> list[str]:
    lines = ["| neurons | eps | symmetric s (converged) | otviz sinkhorn s (converged) | "
             "POT sinkhorn_log s (converged) | rel. diff otviz / POT |",
             "|---|---|---|---|---|---|"]
    for m in sizes:
        T = layer(m, 500, 2)
        a = np.full(m, 1.0 / m)
        _, Ctt, _ = score_geometry(T, T, a, a)
        scale = float(np.median(Ctt))
        for eps in eps_list:
            reg = eps * scale
            out = {}

            def sym():
                out["sym"] = symmetric_ot(Ctt, a, reg, np.inf, tol=tol * scale, max_iter=max_iter)

            def ours():
                res = sinkhorn_solve(a, a, Ctt, reg, tol=tol, max_iter=max_iter)
                P = res.plan
                kl = float(np.sum(P[P > 0] * np.log(P[P > 0] / np.outer(a, a)[P > 0])))
                out["ours"] = (float((P * Ctt).sum()) + reg * kl, res.converged)

            def pot():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    P = ot.sinkhorn(a, a, Ctt, reg, method="sinkhorn_log", stopThr=tol,
                                    numItermax=max_iter)
                ok = not any("converge" in str(w.message).lower() for w in caught)
                pos = P > 0
                kl = float(np.sum(P[pos] * np.log(P[pos] / np.outer(a, a)[pos])))
                out["pot"] = (float((P * Ctt).sum()) + reg * kl, ok)

            t_sym, t_ours, t_pot = timed(sym, repeat), timed(ours, repeat), timed(pot, 1)
            v = out["sym"][0]
            rel = max(abs(out["ours"][0] - v), abs(out["pot"][0] - v)) / abs(v)
            lines.append(f"| {m}x{m} | {eps:g} | {t_sym:.3f} ({out['sym'][1]}) | {t_ours:.3f} "
                         f"({out['ours'][1]}) | {t_pot:.3f} ({out['pot'][1]}) | {rel:.1e} |")
            print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes only (about a minute)")
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument("--max-iter", type=int, default=10_000)
    args = p.parse_args(argv)
    sizes = [(64, 16), (256, 64)] if args.quick else [(64, 16), (256, 64), (1024, 256)]
    self_sizes = [64, 256] if args.quick else [64, 256, 1024]
    print("## Overhead of reading the score\n")
    over = overhead(sizes, args.repeat)
    print(f"\n## Self terms OT_eps(T, T) (tol {args.tol:g}, cap {args.max_iter})\n")
    selfs = self_terms(self_sizes, [0.01, 0.05, 0.2], args.repeat, args.tol, args.max_iter)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "score.md").write_text(
            "# bench_score.py\n\n## Overhead of reading the score (neuron-like layers, 500 responses)\n\n"
            + "\n".join(over) + f"\n\n## Self terms OT_eps(T, T) (tol {args.tol:g}, cap "
            f"{args.max_iter})\n\n" + "\n".join(selfs) + "\n")
        print(f"\nwrote {RESULTS / 'score.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
