"""Trainings in 1 and in N processes (DistributedDataParallel): steps per second, time per epoch,
scaling efficiency, and the final accuracies of the two.

Each configuration runs the real command, ``otviz train`` (one process) and ``otviz train
--nproc N`` (``torchrun --standalone``, N processes, gloo on the CPU or NCCL with
``--device cuda``), with the same config: the ``distill`` setting and method (``kd+ot`` by
default), the same seed, the same global batch (``--batch-size``, split among the processes),
``--threads`` torch threads per process. The times are read from the run store that rank 0
writes:

* **steps/s**: training steps per second inside the epochs (from the timestamps of the
  per-step rows, the evaluations between epochs left out);
* **s/epoch**: wall time from one end-of-epoch row to the next (steps and rank 0's
  evaluation together);
* **scaling efficiency**: ``steps/s(N) / (N x steps/s(1))`` at the same *global* batch,
  i.e. how much of the ideal N-fold speed-up the processes reach (1 = perfect);
* the final test accuracy of each run: with the same global batch and seed the two
  trainings see the same images in the same order, so their accuracies differ only by the
  non-determinism of the reductions (read them against the seed-to-seed spread in
  ``results/transfer.md``).

The configurations alternate (1, N, 1, N, ...) for ``--repeats`` rounds so that the load on
the machine affects both alike; the table gives the medians.

Usage::

    python benchmarks/bench_ddp.py [--nproc 2] [--epochs 2] [--steps-per-epoch 40]
                                   [--batch-size 64] [--method kd+ot] [--repeats 2]

On a machine with several GPUs::

    python benchmarks/bench_ddp.py --device cuda --nproc 4 --threads 4 --batch-size 256 \\
        --steps-per-epoch 200 --epochs 3

(``--nproc`` at most the number of GPUs; NCCL, one GPU per process; the 1-process run uses
``cuda:0``). With ``--ot-gather`` the OT term of every process sees the global batch
(an all-gather of the paired layers' activations per step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"


def run_once(nproc: int, args: argparse.Namespace, store: Path) -> dict:
    """Train once with ``nproc`` processes; the timings read from the store."""
    from otviz.runs import RunStore

    config = dict(setting="distill", method=args.method, epochs=args.epochs,
                  steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, seed=args.seed,
                  device=args.device, num_threads=args.threads, ot_gather=args.ot_gather)
    cmd = [sys.executable, "-m", "otviz", "train", "--config-json", json.dumps(config),
           "--store", str(store), "--no-progress"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed:\n{res.stderr[-3000:]}")
    rs = RunStore(store)
    rid = int(rs.runs().run_id.max())
    run = rs.run(rid)
    m = rs.metrics(rid)
    steps = m[m.key == "loss/total"].sort_values("step")
    ends = m[m.key == "train/accuracy"].sort_values("step")  # one row per evaluation (epoch 0 too)
    rates = []
    for e in range(1, args.epochs + 1):
        rows = steps[steps.epoch == e]
        if len(rows) > 2:
            span = (rows.time.iloc[-1] - rows.time.iloc[0]).total_seconds()
            rates.append((len(rows) - 1) / span)
    epoch_s = [(b - a).total_seconds() for a, b in zip(ends.time.iloc[:-1], ends.time.iloc[1:])]
    acc = m[m.key == "test/accuracy"].sort_values("step").value.iloc[-1]
    return dict(nproc=nproc, world_size=run["config"].get("world_size"), steps_per_s=statistics.median(rates),
                epoch_s=statistics.median(epoch_s), wall_s=wall, test_accuracy=float(acc))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2, help="processes of the DDP run (default 2)")
    p.add_argument("--method", default="kd+ot")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ot-gather", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="rounds of (1 process, N processes)")
    p.add_argument("--out", default=str(RESULTS / "ddp.md"))
    args = p.parse_args(argv)

    rows: dict[int, list[dict]] = {1: [], args.nproc: []}
    with tempfile.TemporaryDirectory(prefix="otviz-bench-ddp-") as tmp:
        store = Path(tmp) / "runs.db"
        for r in range(args.repeats):
            for n in (1, args.nproc):
                row = run_once(n, args, store)
                rows[n].append(row)
                print(f"round {r + 1}: {n} process(es): {row['steps_per_s']:.2f} steps/s, "
                      f"{row['epoch_s']:.1f} s/epoch, test accuracy {row['test_accuracy']:.4f}", flush=True)

    def med(n: int, key: str) -> float:
        return statistics.median(x[key] for x in rows[n])

    def accs(n: int) -> str:
        return ", ".join(f"{x['test_accuracy']:.4f}" for x in rows[n])

    one, many = med(1, "steps_per_s"), med(args.nproc, "steps_per_s")
    eff = many / (args.nproc * one)
    lines = [
        f"# DDP: 1 against {args.nproc} processes",
        "",
        f"`python benchmarks/bench_ddp.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"setting distill, method {args.method}, global batch {args.batch_size}, "
        f"{args.epochs} epochs x {args.steps_per_epoch} steps, {args.threads} thread(s) per process, "
        f"device {args.device}, ot_gather {args.ot_gather}; medians of {args.repeats} alternating rounds; "
        f"{os.cpu_count()} CPU cores on this machine.",
        "",
        "| processes | steps/s | s/epoch (steps + rank 0's evaluation) | speed-up | scaling efficiency | "
        "final test accuracy |",
        "|---|---|---|---|---|---|",
        f"| 1 | {one:.2f} | {med(1, 'epoch_s'):.1f} | 1.00 | 1.00 | "
        f"{accs(1)} |",
        f"| {args.nproc} | {many:.2f} | {med(args.nproc, 'epoch_s'):.1f} | {many / one:.2f} | {eff:.2f} | "
        f"{accs(args.nproc)} |",
        "",
        "speed-up = steps/s of N processes / steps/s of 1 (same global batch); scaling efficiency = "
        "speed-up / N.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
