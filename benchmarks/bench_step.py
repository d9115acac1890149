"""Time of one training step with the OT regulariser against KD, measured alternately.

Same teacher (the shipped ``cnn-mnist5k``), same student (the ``distill``
setting's 4x narrower CNN), same minibatches; a step is the teacher forward,
the student forward, the loss, the backward pass and the optimiser step. The
two methods alternate step by step so that load on the machine affects both
alike; the table reports the median step time and the ratio ot/kd.

Usage::

    python benchmarks/bench_step.py [--steps 60] [--batch-size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from otviz.losses import StepContext  # noqa: E402
from otviz.train import TrainConfig, _forward, _prepare  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_step(method: str, batch_size: int, extra: dict):
    # all three conv pairs, raw responses: what results/step.md was measured with
    s = _prepare(TrainConfig(setting="distill", method=method, seed=0, pairs=None, normalize=None, **extra))
    opt = torch.optim.Adam(list(s.student.parameters()) + list(s.loss.extra_parameters()), lr=1e-3)
    X, y = s.task.target.X_train, s.task.target.y_train
    t_layers, s_layers = list(s.loss.teacher_layers), list(s.loss.student_layers)
    s.student.train()
    state = {"i": 0}

    def step():
        i = state["i"]
        idx = torch.arange(i * batch_size, (i + 1) * batch_size) % len(X)
        state["i"] += 1
        xb, yb = X[idx], y[idx]
        with torch.no_grad():
            t_logits, t_feats = _forward(s.teacher, xb, t_layers)
        s_logits, s_feats = _forward(s.student, xb, s_layers)
        ctx = StepContext(inputs=xb, targets=yb, student_logits=s_logits, teacher_logits=t_logits,
                          student_features=s_feats, teacher_features=t_feats, student=s.student,
                          step=i)
        loss = s.loss(ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {
        "kd": ("kd", {}),
        "ot (emd, 3 pairs)": ("ot", {}),
        "ot (sinkhorn eps=0.01, 3 pairs)": ("ot", dict(ot_method="sinkhorn", eps=0.01)),
        "kd+ot (emd, 3 pairs)": ("kd+ot", {}),
    }
    steps = {name: make_step(m, args.batch_size, extra) for name, (m, extra) in variants.items()}
    times = {name: [] for name in steps}
    for _ in range(3):  # warm-up
        for f in steps.values():
            f()
    for _ in range(args.steps):
        for name, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    kd = statistics.median(times["kd"])
    lines = [f"batch {args.batch_size}, {args.steps} alternating steps each, torch threads {args.threads}",
             "", "| method | median step (ms) | ratio to kd |", "|---|---|---|"]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {1000 * med:.1f} | {med / kd:.2f} |")
    md = "\n".join(lines)
    print(md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
