"""Subcommands ``otviz train``, ``otviz runs`` and ``otviz teachers`` (registered in :mod:`otviz.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

_METHOD_HELP = (
    "transfer method: scratch (CE only, random init), finetune (CE only, from the teacher's "
    "weights), l2sp (penalty toward the starting weights), kd (Hinton distillation of the "
    "teacher's logits), fitnets (hint loss through learned 1x1 regressors), at (attention "
    "transfer), ot (the OT regulariser: lam * sum over layer pairs of the OT distance between "
    "the teacher's and the student's neurons); combine with '+', e.g. kd+ot"
)


def _none_or_str(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _add_store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, metavar="PATH",
                   help="run store (SQLite file); default $OTVIZ_STORE, else ~/.otviz/runs.db")


def add_train(subparsers: Any) -> None:
    from otviz.train import TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a student with a transfer method, logged to the run store",
        description=(
            "Train a student network in one of the paper's settings with a transfer method, "
            "logging per step the loss terms and per-layer OT distances, and per epoch the "
            "train/test accuracy and the transport plans, to the run store."),
        epilog=("examples:\n"
                "  otviz train --setting distill --method ot --lam 0.1 --epochs 3\n"
                "  otviz train --setting transfer --method l2sp --k 5 --steps-per-epoch 20\n"
                "  otviz train --setting distill --method kd+ot --pairs features.conv3"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from otviz.data import SETTINGS

    p.add_argument("--setting", default=d.setting, choices=list(SETTINGS),
                   help="; ".join(f"{k}: {v.description}" for k, v in SETTINGS.items()))
    p.add_argument("--method", default=d.method, help=_METHOD_HELP + f" (default {d.method})")
    p.add_argument("--lam", type=float, default=d.lam, help=f"weight of the OT regulariser (default {d.lam})")
    p.add_argument("--pairs", default=None,
                   help="comma-separated layer pairs 'teacher_layer:student_layer' (or one name for "
                        "both); default: all alignable layers (features.conv1..conv3 for the CNN)")
    p.add_argument("--cost", default=d.cost, choices=["sqeuclidean", "euclidean", "cosine", "correlation"],
                   help="cost between two neurons (default sqeuclidean)")
    p.add_argument("--normalize", default=None, type=_none_or_str,
                   choices=[None, "center", "standardize", "unit"],
                   help="per-neuron normalisation before the cost (default none)")
    p.add_argument("--ot-method", default=d.ot_method, choices=["emd", "sinkhorn", "unbalanced"],
                   help="OT solver of the regulariser (default emd, exact)")
    p.add_argument("--eps", type=float, default=None,
                   help="entropic regularisation relative to the cost scale (sinkhorn/unbalanced)")
    p.add_argument("--spatial", default=d.spatial, choices=["flatten", "mean"],
                   help="conv neurons: one feature per input and position (flatten) or per input (mean)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"evaluations (default {d.epochs})")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="steps between evaluations (default: one pass over the training set)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"minibatch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "constant"],
                   help="learning-rate schedule over all steps (default cosine decay to zero)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the initialisation, batches and label draw")
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--k", type=int, default=None, help="labelled images per class in the transfer settings (default 10)")
    p.add_argument("--student-width", type=float, default=None, help="override the student's width multiplier")
    p.add_argument("--kd-weight", type=float, default=d.kd_weight, help="weight of the KD term")
    p.add_argument("--temperature", type=float, default=d.temperature, help="KD temperature")
    p.add_argument("--threads", type=int, default=None, help="torch threads for this run")
    p.add_argument("--name", default=None, help="a name for the run")
    p.add_argument("--config-json", default=None, help="the whole config as JSON (overrides the options)")
    p.add_argument("--run-id-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_store_option(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from otviz.train import TrainConfig, train

    if args.config_json:
        try:
            cfg = TrainConfig.from_dict(json.loads(args.config_json))
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config-json is not valid JSON: {exc}") from None
    else:
        cfg = TrainConfig(
            setting=args.setting, method=args.method, lam=args.lam,
            pairs=[x.strip() for x in args.pairs.split(",") if x.strip()] if args.pairs else None,
            cost=args.cost, normalize=args.normalize, ot_method=args.ot_method, eps=args.eps,
            spatial=args.spatial, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, seed=args.seed, device=args.device, k=args.k,
            student_width=args.student_width, kd_weight=args.kd_weight,
            temperature=args.temperature, num_threads=args.threads, name=args.name)
    res = train(cfg, store=args.store, progress=not args.no_progress, run_id_file=args.run_id_file)
    print(f"run {res.run_id}: {cfg.setting}/{cfg.method} test accuracy {res.test_accuracy:.4f} "
          f"(train {res.train_accuracy:.4f}) in {res.seconds:.1f} s")
    return 0


def add_runs(subparsers: Any) -> None:
    p = subparsers.add_parser("runs", help="list the runs of the run store",
                              description="List the runs of the run store, newest first, or export them.")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="write runs.csv and metrics.csv into DIR instead of printing")
    p.add_argument("--limit", type=int, default=30, help="rows to print (default 30)")
    _add_store_option(p)
    p.set_defaults(func=_run_runs)


def _run_runs(args: argparse.Namespace) -> int:
    from otviz.runs import RunStore

    store = RunStore(args.store)
    if args.export:
        paths = store.export_csv(args.export)
        print("\n".join(f"wrote {p}" for p in paths.values()))
        return 0
    df = store.runs()
    if df.empty:
        print(f"no runs in {store.path}; start one with `otviz train`")
        return 0
    cols = [c for c in ("run_id", "setting", "method", "status", "epoch", "message", "created_at")
            if c in df.columns]
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(df.sort_values("run_id", ascending=False)[cols].head(args.limit).to_string(index=False))
    return 0


def add_teachers(subparsers: Any) -> None:
    p = subparsers.add_parser("teachers", help="list (or rebuild) the shipped teacher checkpoints",
                              description="List the teacher checkpoints shipped with otviz, or "
                                          "rebuild them from their fixed seed (about 40 s on 2 cores).")
    p.add_argument("--rebuild", action="store_true", help="retrain every shipped teacher from its seed")
    p.add_argument("--out", default=None, help="directory for rebuilt checkpoints (default: the package's)")
    p.set_defaults(func=_run_teachers)


def _run_teachers(args: argparse.Namespace) -> int:
    from otviz.teachers import build_teachers, list_teachers

    if args.rebuild:
        build_teachers(args.out)
    import pandas as pd

    with pd.option_context("display.width", 160):
        print(list_teachers(args.out, as_frame=True).to_string(index=False))
    return 0


__all__ = ["add_train", "add_runs", "add_teachers"]
if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `otviz train|runs|teachers`")
