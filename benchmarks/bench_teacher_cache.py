"""Training time with the frozen teacher's outputs computed once, against a teacher forward per step.

``otviz.train`` computes the teacher's logits and paired-layer activations on the
whole training split once (``_TeacherCache``, when they fit in
``TEACHER_CACHE_BYTES``) and indexes them per minibatch, instead of running the
teacher at every step. This script trains the same configuration both ways,
alternated (so load on the machine affects both alike), and prints the median
seconds per epoch and the ratio; the final accuracies must be equal (the
cached outputs are the forward's, to float rounding).

    python benchmarks/bench_teacher_cache.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [  # (setting, method, epochs): the benchmark's settings, a student 4x narrower than its teacher
    ("distill", "scratch", 2),  # the teacher only feeds the logged OT distance
    ("distill", "kd", 2),
    ("distill", "ot", 2),
    ("distill", "kd+ot", 2),
    ("transfer-small", "ot", 4),
    ("transfer", "ot", 4),  # a student as wide as its teacher
]


def one(setting: str, method: str, epochs: int, cached: bool, db: str) -> tuple[float, float]:
    from otviz import train as tr
    from otviz.runs import RunStore

    tr.TEACHER_CACHE_BYTES = 512 * 2**20 if cached else 0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tr.train(tr.TrainConfig(setting=setting, method=method, epochs=epochs, val_size=0.2,
                                      seed=0, num_threads=1), store=RunStore(db), progress=False)
    return (time.perf_counter() - t0) / epochs, res.val_accuracy


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    db = str(Path(tempfile.mkdtemp(prefix="otviz-bench-cache-")) / "runs.db")
    one("transfer-small", "ot", 1, True, db)  # warm-up: imports, data, teacher files
    print(f"seconds per epoch (training steps and the epoch's evaluations), median of {args.repeats} "
          f"alternated runs, 1 torch thread\n")
    print("| setting | method | teacher per step (s/epoch) | cached (s/epoch) | ratio | same accuracy |")
    print("|---|---|---|---|---|---|")
    for setting, method, epochs in CASES:
        fresh, cached, accs = [], [], set()
        for _ in range(args.repeats):
            for flag, out in ((False, fresh), (True, cached)):
                sec, acc = one(setting, method, epochs, flag, db)
                out.append(sec)
                accs.add(round(acc, 6))
        f, c = statistics.median(fresh), statistics.median(cached)
        print(f"| {setting} | {method} | {f:.2f} | {c:.2f} | {c / f:.2f} | "
              f"{'yes' if len(accs) == 1 else 'no: ' + str(sorted(accs))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
