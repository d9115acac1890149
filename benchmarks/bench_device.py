"""Entropic OT on the activations' device: otviz's torch solver against its float64 numpy solver.

The training path (``OTRegularizer`` -> ``otviz.transport.ot_distance``) solves
the entropic problems with the torch solver (float32, stabilised kernel with
absorption, eps-scaling, over-relaxation: ``otviz._sinkhorn.sinkhorn_solve_torch``)
when the features live on an accelerator, and with the float64 numpy solver
(``otviz._sinkhorn.sinkhorn_solve``) on the CPU. This script measures both on
the same problems, side by side in one run:

* ``solver``: the solver alone on the same cost matrix (torch: float32 on
  ``--device``; numpy: float64 on the CPU), as ``ot_distance`` calls it;
* ``ot_distance``: the whole call a training step makes, from neurons on
  ``--device`` to the differentiable scalar (cost matrix, solve, the
  Alignment record, and the backward pass), ``backend="torch"`` against
  ``backend="numpy"`` (which copies the cost matrix to the CPU).

Problems are neuron-like: m teacher and k student neurons, each the ReLU
response of a random unit to the same d = 256 probe inputs (a low-rank,
correlated cloud, as real layers are), squared Euclidean cost; ``eps`` is
relative to the median cost, as everywhere in otviz. Sizes 256x256 to 4096x1024.

Columns: seconds (best of ``--repeat``), iterations, the time ratio torch/numpy
(< 1: the torch solver is faster), the relative difference of the two values
and the L1 distance between the two plans (each plan has mass 1).

Usage::

    python benchmarks/bench_device.py                 # cuda if available, else cpu
    python benchmarks/bench_device.py --device cpu    # the same torch code on the CPU
    python benchmarks/bench_device.py --quick         # 256x256 and 1024x1024 only

Writes the table to ``benchmarks/results/bench_device_<device>.md`` as well.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otviz._sinkhorn import sinkhorn_solve, sinkhorn_solve_torch  # noqa: E402
from otviz.transport import _median_torch, cost_matrix, eps_scale, ot_distance  # noqa: E402

SIZES = [(256, 256), (1024, 1024), (2048, 1024), (4096, 1024)]
EPS = [0.1, 0.01, 0.001]


def neurons(m: int, k: int, d: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU responses of m (teacher) and k (student) random units to the same d inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, 32, generator=g)  # probe inputs
    wt = torch.randn(32, m, generator=g)
    ws = wt[:, torch.randint(0, m, (k,), generator=g)] + 0.5 * torch.randn(32, k, generator=g)
    return torch.relu(x @ wt).T.contiguous(), torch.relu(x @ ws).T.contiguous()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeat: int, device: torch.device):
    best, out = float("inf"), None
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(device: torch.device, sizes, eps_list, repeat: int, tol: float, max_iter: int) -> list[str]:
    rows = []
    header = ("| size | eps | numpy float64 s (iters) | torch float32 s (iters) | torch/numpy | "
              "rel. value diff | plan L1 diff | ot_distance numpy s | ot_distance torch s | "
              "torch/numpy |")
    rows += [header, "|---" * 10 + "|"]
    for m, k in sizes:
        T, S = neurons(m, k)
        C64 = cost_matrix(T.double(), S.double()).numpy()
        Cdev = torch.as_tensor(C64, dtype=torch.float32, device=device)
        a, b = np.full(m, 1.0 / m), np.full(k, 1.0 / k)
        at = torch.as_tensor(a, dtype=torch.float32, device=device)
        bt = torch.as_tensor(b, dtype=torch.float32, device=device)
        Td, Sd = T.to(device), S.to(device)
        for eps in eps_list:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                reg64 = eps * eps_scale(C64)
                reg32 = eps * _median_torch(Cdev)
                t_np, r_np = best_of(lambda: sinkhorn_solve(a, b, C64, reg64, tol=tol,
                                                            max_iter=max_iter), repeat, device)
                t_th, r_th = best_of(lambda: sinkhorn_solve_torch(at, bt, Cdev, reg32, tol=tol,
                                                                  max_iter=max_iter),
                                     repeat, device)
                v_np = float((r_np.plan * C64).sum())
                P_th = r_th.plan.double().cpu().numpy()
                v_th = float((P_th * C64).sum())
                plan_l1 = float(np.abs(P_th - r_np.plan).sum())

                def call(backend):
                    s = Sd.clone().requires_grad_()
                    v = ot_distance(Td, s, method="sinkhorn", eps=eps, tol=tol,
                                    max_iter=max_iter, backend=backend)
                    v.backward()
                    return v

                e_np, _ = best_of(lambda: call("numpy"), repeat, device)
                e_th, _ = best_of(lambda: call("torch"), repeat, device)

            def it(r):
                return f"{r.n_iter}{'' if r.converged else ' not conv.'}"

            rows.append(
                f"| {m}x{k} | {eps:g} | {t_np:.3f} ({it(r_np)}) | {t_th:.3f} ({it(r_th)}) | "
                f"{t_th / t_np:.2f} | {abs(v_th - v_np) / abs(v_np):.1e} | {plan_l1:.1e} | "
                f"{e_np:.3f} | {e_th:.3f} | {e_th / e_np:.2f} |")
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="256x256 and 1024x1024 only")
    p.add_argument("--repeat", type=int, default=None,
                   help="best of N runs (default 3 on a GPU, 1 on the CPU)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="balanced tolerance, L2 marginal violation (default 1e-6: float32 "
                        "cannot resolve POT's 1e-9; the torch solver raises it to its floor)")
    p.add_argument("--max-iter", type=int, default=2000)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    repeat = args.repeat or (3 if device.type != "cpu" else 1)
    sizes = SIZES[:2] if args.quick else SIZES
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    intro = (f"device {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} CPU "
             f"threads; tol {args.tol:g}, max_iter {args.max_iter}; best of {repeat}")
    print(intro, flush=True)
    # warm up the device (kernels, allocator) before timing
    w = neurons(64, 64)
    ot_distance(w[0].to(device), w[1].to(device), method="sinkhorn", eps=0.1, backend="torch")
    rows = run(device, sizes, EPS, repeat, args.tol, args.max_iter)
    out = ROOT / "benchmarks" / "results" / f"bench_device_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(intro + "\n\n" + "\n".join(rows) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
