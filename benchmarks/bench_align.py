"""``align(method="sinkhorn")`` end to end against POT's ``ot.dist`` + ``ot.sinkhorn``.

What a user pays for one entropic alignment of two layers: otviz's
``align(T, S, method="sinkhorn", eps=eps)`` (input checks, float64 cost with
its precision guarantees, the median cost scale, the solve, the
:class:`~otviz.Alignment` with its plan, distance and marginal error) against
the plain POT pipeline on the same neurons: ``M = ot.dist(T, S)`` followed by
``ot.sinkhorn(a, b, M, reg)``, at matched regularisation
``reg = eps * median(M)`` (otviz's ``eps`` is relative to the median cost;
the median is computed outside POT's timed region, so POT is charged for
``ot.dist`` and ``ot.sinkhorn`` only), the same tolerance (L2 marginal
violation, POT's default 1e-9) and iteration cap. The transport values
``<P, M>`` of the two are compared.

Two problem families, side by side:

* ``gauss``  - i.i.d. standard normal clouds (every neuron far from every other:
  the cost matrix is nearly constant and Sinkhorn converges in a few iterations,
  so fixed costs dominate);
* ``neuron`` - ReLU responses of random units to the same probe inputs
  (low-rank, correlated; as in ``bench_ot.py``).

Each case runs the two pipelines alternately (``--repeat`` times each) and
reports medians; the ratio is otviz / POT (< 1: otviz faster).

Usage::

    python benchmarks/bench_align.py            # the table of benchmarks/README.md
    python benchmarks/bench_align.py --quick    # 512x512 and 1024x1024 only

Run it with ``PYTHONPATH`` pointing at another checkout to time that version
(``--label`` names the result file).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import ot

import otviz

RESULTS = Path(__file__).resolve().parent / "results"


def clouds(family: str, m: int, k: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if family == "gauss":
        return rng.standard_normal((m, d)), rng.standard_normal((k, d))
    Z = rng.standard_normal((d, 32))
    T = np.maximum(Z @ rng.standard_normal((32, m)), 0).T.copy()
    S = np.maximum(Z @ rng.standard_normal((32, k)), 0).T.copy()
    return T, S


def run_case(family, m, k, d, eps, tol, max_iter, repeat):
    T, S = clouds(family, m, k, d)
    a, b = np.full(m, 1 / m), np.full(k, 1 / k)
    reg = eps * float(np.median(ot.dist(T, S)))  # matched regularisation, not timed

    def ours():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return otviz.align(T, S, method="sinkhorn", eps=eps, tol=tol, max_iter=max_iter)

    def pot():
        M = ot.dist(T, S)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            P, log = ot.sinkhorn(a, b, M, reg, stopThr=tol, numItermax=max_iter, log=True)
        return P, M, log

    t_o, t_p = [], []
    for _ in range(repeat):  # alternated, so load changes hit both alike
        t0 = time.perf_counter()
        al = ours()
        t_o.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        P, M, log = pot()
        t_p.append(time.perf_counter() - t0)
    v_pot = float((P * M).sum())
    return dict(family=family, m=m, k=k, d=d, eps=eps, ours=statistics.median(t_o),
                pot=statistics.median(t_p), it_o=al.n_iter, conv_o=al.converged,
                it_p=int(log["niter"]), rel=abs(al.distance - v_pot) / abs(v_pot),
                reg_rel=abs(al.reg - reg) / reg)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-9)
    ap.add_argument("--max-iter", type=int, default=10_000)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1])
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    shapes = [(512, 512, 256), (1024, 1024, 256), (2048, 2048, 256), (4096, 1024, 256),
              (1024, 1024, 2048), (4096, 1024, 2048)]
    if args.quick:
        shapes = [s for s in shapes if s[0] * s[1] <= 1024 * 1024]
    head = ("| family | m x k | d | eps | otviz align s (iters) | POT dist+sinkhorn s (iters) "
            "| otviz / POT | rel. value diff |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    print(head, flush=True)
    for (m, k, d) in shapes:
        for eps in args.eps:
            for family in ("gauss", "neuron"):
                r = run_case(family, m, k, d, eps, args.tol, args.max_iter, args.repeat)
                assert r["reg_rel"] < 1e-12, "regularisation not matched"
                conv = "" if r["conv_o"] else " not conv."
                line = (f"| {family} | {m}x{k} | {d} | {eps:g} | {r['ours']:.4f} ({r['it_o']}{conv}) "
                        f"| {r['pot']:.4f} ({r['it_p']}) | {r['ours'] / r['pot']:.2f} "
                        f"| {r['rel']:.1e} |")
                lines.append(line)
                print(line, flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_align{'_' + args.label if args.label else ''}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
