"""Subcommands ``otviz train``, ``otviz runs`` and ``otviz teachers`` (registered in :mod:`otviz.cli`).

Parsing needs no torch, numpy or pandas: the choices and recipe defaults come from
:mod:`otviz._recipes` (plain data) and the few :class:`otviz.train.TrainConfig` defaults
the options show are listed in :data:`CONFIG_DEFAULTS` (a test checks them against the
class), so ``otviz train --help`` and every argument error answer before torch loads.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any

from .cli import _non_negative_int, _positive_int

#: The :class:`otviz.train.TrainConfig` defaults that ``otviz train`` passes on (listed here
#: so that parsing needs no torch; tests/test_cli.py checks them against the class).
CONFIG_DEFAULTS: dict[str, Any] = {"setting": "distill", "method": "ot", "seed": 0, "device": "cpu"}

_METHOD_HELP = (
    "transfer method: scratch (CE only, random init), finetune (CE only, from the teacher's "
    "weights), l2sp (penalty toward the starting weights), kd (Hinton distillation of the "
    "teacher's logits), fitnets (hint loss through learned 1x1 regressors), at (attention "
    "transfer), nst (neuron selectivity transfer: MMD between the channel maps), sp "
    "(similarity-preserving: the batch's similarity matrix), ot (the OT regulariser: lam * sum over layer pairs of the OT distance between "
    "the teacher's and the student's neurons); combine with '+', e.g. kd+ot"
)


def _method(text: str) -> str:
    """``--method``: checked by :func:`otviz._recipes.parse_method` (torch-free), kept as given."""
    from otviz._recipes import parse_method

    try:
        parse_method(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _device(text: str) -> str:
    """``--device``: 'cpu', 'cuda' or 'cuda:N' (whether CUDA is there is checked when training)."""
    if not re.fullmatch(r"(cpu|cuda)(:\d+)?", text.strip()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N (e.g. cuda:0), got {text!r}")
    return text.strip()


def _json_text(text: str) -> str:
    """``--config-json``: a JSON object (its keys are checked when the config is built)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); pass an object such as "
                                         "'{\"setting\": \"distill\", \"epochs\": 2}'") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"epochs\": 2}}', got "
                                         f"{type(data).__name__}")
    return text


def _none_or_str(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _add_store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, metavar="PATH",
                   help="run store (SQLite file); default $OTVIZ_STORE, else ~/.otviz/runs.db")


def _steps(text: str) -> int | None:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, or 0 for one pass over the training set; got {n}")
    return n or None


def _real(*, positive: bool) -> Any:
    """An argparse type: a finite number, > 0 (``positive``) or >= 0."""
    what = "a positive number" if positive else "a non-negative number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {what} (finite), got {text!r}")
        return value

    parse.__name__ = what
    return parse


_POS_REAL, _NONNEG_REAL = _real(positive=True), _real(positive=False)


def _val_size(text: str) -> float | int | None:
    """``--val-size``: a fraction in (0, 1), a whole number of images, or 'none'."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if 0.0 < value < 1.0:
        return value
    if value >= 1 and value == int(value) and "." not in text:
        return int(value)
    raise argparse.ArgumentTypeError(
        f"expected a fraction strictly between 0 and 1 (e.g. 0.2) or a whole number of images "
        f"(e.g. 400), got {text!r}")


def _unlabelled(text: str) -> int | float:
    """``--unlabelled``: images per step (an integer) or a multiple of the labelled batch (e.g. 1.0)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value > 0 and value != float("inf"):
        return int(value) if "." not in text and value == int(value) else value
    raise argparse.ArgumentTypeError(f"expected a number of unlabelled images per step (e.g. 64) or a "
                                     f"multiple of the labelled batch (e.g. 1.0), got {text!r}")


def _pairs(text: str) -> list[str] | None:
    if text.strip().lower() == "all":
        return None
    pairs = [x.strip() for x in text.split(",") if x.strip()]
    if not pairs:
        raise argparse.ArgumentTypeError("give layer names, e.g. features.conv3, or 'all'")
    return pairs


#: CLI option -> TrainConfig field, for the options whose default comes from the recipe
#: or that are checked for whether they apply.
_FIELDS = ("lam", "pairs", "cost", "normalize", "ot_method", "eps", "spatial", "epochs",
           "steps_per_epoch", "batch_size", "lr", "schedule", "weight_decay", "kd_weight",
           "temperature", "l2sp_weight", "fitnets_weight", "at_weight", "nst_weight", "sp_weight", "k",
           "val_size", "lam_schedule",
           "student_width", "ot_gather", "unlabelled", "reg_m")


def _by_setting(field: str) -> str:
    """``"0.1 in transfer and transfer-digits, 1 in distill and transfer-small"`` from the recipes."""
    from otviz._recipes import RECIPES

    groups: dict[Any, list[str]] = {}
    for setting, r in RECIPES.items():
        groups.setdefault(r[field], []).append(setting)
    if len(groups) == 1:
        return _fmt(next(iter(groups)))
    return ", ".join(f"{_fmt(v)} in {_and(names)}" for v, names in groups.items())


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _fmt(v: Any) -> str:
    if v is None:
        return "one pass"
    return f"{v:g}" if isinstance(v, float) else str(v)


def add_train(subparsers: Any, *, lazy: bool = False) -> None:
    """Register ``otviz train``. With ``lazy=True`` (and a parser that can ``defer``), its
    options, whose help quotes the recipes, are built only when the command is used; neither
    way imports torch."""
    p = subparsers.add_parser(
        "train", help="train a student with a transfer method, logged to the run store",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if lazy and hasattr(p, "defer"):
        p.defer(_fill_train)
    else:
        _fill_train(p)


def _fill_train(p: argparse.ArgumentParser) -> None:
    from otviz._recipes import RECIPE_COMMON as C
    from otviz._recipes import SETTINGS, recipe_table

    d = argparse.Namespace(**CONFIG_DEFAULTS)
    R = argparse.SUPPRESS  # not given: the recipe decides
    p.description = (
        "Train a student network in one of the paper's settings with a transfer method, "
        "logging per step the loss terms and per-layer OT distances, and per epoch the "
        "train/test accuracy and the transport plans, to the run store. "
        "Every option you do not give comes from the benchmark's recipe for the setting and "
        "method (table below; benchmarks/README.md has its results), so "
        "`otviz train --setting S --method M` reproduces the benchmark's run; an option you "
        "give wins. The run's stored config records the values that ran. An option that "
        "the method does not use (--lam without ot, --kd-weight/--temperature without kd, "
        "--eps with --ot-method emd, ...) is ignored with a warning.")
    p.epilog = ("recipe (the defaults):\n"
                + "\n".join("  " + line for line in recipe_table().splitlines())
                + "\n\nexamples:\n"
                  "  otviz train --setting transfer-small --method ot        # the benchmark's recipe\n"
                  "  otviz train --setting distill --method kd+ot --epochs 3\n"
                  "  otviz train --setting transfer --method l2sp --k 5\n"
                  "  otviz train --setting distill --method ot --pairs all --normalize none")

    p.add_argument("--setting", default=d.setting, choices=list(SETTINGS),
                   help="; ".join(f"{k}: {v.description}" for k, v in SETTINGS.items())
                        + f" (default {d.setting})")
    p.add_argument("--method", default=d.method, type=_method, help=_METHOD_HELP + f" (default {d.method})")
    g = p.add_argument_group("OT term (and the OT distance logged for every method); default: the recipe")
    g.add_argument("--lam", type=_NONNEG_REAL, default=R,
                   help=f"weight of the OT regulariser, methods with ot only (recipe: {_by_setting('lam')})")
    g.add_argument("--pairs", type=_pairs, default=R,
                   help="comma-separated layer pairs 'teacher_layer:student_layer' (or one name for "
                        "both), or 'all' for every alignable layer (recipe: the last one, "
                        "features.conv3 for the CNN)")
    g.add_argument("--cost", default=R, choices=["sqeuclidean", "euclidean", "cosine", "correlation"],
                   help=f"cost between two neurons (recipe: {C['cost']})")
    g.add_argument("--normalize", default=R, type=_none_or_str,
                   choices=[None, "center", "standardize", "unit"],
                   help=f"per-neuron normalisation before the cost, or 'none' (recipe: {C['normalize']})")
    g.add_argument("--ot-method", default=R, choices=["emd", "sinkhorn", "unbalanced"],
                   help=f"OT solver (recipe: {C['ot_method']}; emd is exact OT)")
    g.add_argument("--eps", type=_POS_REAL, default=R,
                   help="entropic regularisation relative to the cost scale; sinkhorn and unbalanced "
                        "only (ignored with emd)")
    g.add_argument("--lam-schedule", default=R, choices=["constant", "linear"],
                   help="lambda over the steps: constant, or linear decay from lambda to 0 "
                        "(default constant)")
    g.add_argument("--reg-m", type=_POS_REAL, default=None,
                   help="with --ot-method unbalanced: weight of the KL penalties on the plan's marginals, "
                        "relative to the median cost (small: a student neuron may take more or less than its "
                        "share; large: balanced OT; default 1)")
    g.add_argument("--ot-gather", action="store_true", default=R,
                   help="with several processes (--nproc, torchrun): gather the paired layers' "
                        "activations of every process so the OT plan sees the global batch (an "
                        "all-gather per layer and step; every process solves the same plan); by "
                        "default each process aligns its own share of the batch")
    g.add_argument("--spatial", default=R, choices=["flatten", "mean"],
                   help=f"conv neurons: one feature per input and position (flatten) or per input "
                        f"(mean) (recipe: {C['spatial']})")
    o = p.add_argument_group("optimisation; default: the recipe")
    o.add_argument("--epochs", type=_positive_int, default=R, help=f"evaluations (recipe: {_by_setting('epochs')})")
    o.add_argument("--steps-per-epoch", type=_steps, default=R,
                   help=f"steps between evaluations, 0 = one pass over the training set (recipe: "
                        f"{_by_setting('steps_per_epoch')})")
    o.add_argument("--batch-size", type=_positive_int, default=R, help=f"minibatch size (recipe: {_by_setting('batch_size')})")
    o.add_argument("--lr", type=_POS_REAL, default=R,
                   help=f"Adam learning rate (recipe: {_by_setting('lr')})")
    o.add_argument("--schedule", default=R, choices=["cosine", "constant"],
                   help=f"learning-rate schedule over all steps, cosine = decay to zero (recipe: {C['schedule']})")
    o.add_argument("--weight-decay", type=_NONNEG_REAL, default=R, help=f"Adam weight decay (recipe: {C['weight_decay']:g})")
    b = p.add_argument_group("baseline terms, each used only by its method; default: the recipe")
    b.add_argument("--kd-weight", type=_NONNEG_REAL, default=R,
                   help=f"weight of the KD term, kd only (recipe: {C['kd_weight']:g})")
    b.add_argument("--temperature", type=_POS_REAL, default=R,
                   help=f"KD temperature, kd only (recipe: {C['temperature']:g})")
    b.add_argument("--l2sp-weight", type=_NONNEG_REAL, default=R,
                   help=f"weight of the L2-SP term, l2sp only (recipe: {C['l2sp_weight']:g})")
    b.add_argument("--fitnets-weight", type=_NONNEG_REAL, default=R,
                   help=f"weight of the FitNets hint loss, fitnets only (recipe: {C['fitnets_weight']:g})")
    b.add_argument("--at-weight", type=_NONNEG_REAL, default=R,
                   help=f"weight of attention transfer, at only (recipe: {C['at_weight']:g})")
    b.add_argument("--nst-weight", type=_NONNEG_REAL, default=R,
                   help=f"weight of the NST squared MMD, nst only (recipe: {C['nst_weight']:g})")
    b.add_argument("--sp-weight", type=_NONNEG_REAL, default=R,
                   help=f"weight of the similarity-preserving term, sp only (recipe: {C['sp_weight']:g})")
    t = p.add_argument_group("task and run")
    t.add_argument("--k", type=_positive_int, default=R,
                   help="labelled images per class (default: the setting's, 10 in the transfer settings; "
                        "distill uses the full training split, and --k there departs from the setting)")
    t.add_argument("--val-size", type=_val_size, default=R, metavar="FRACTION|N",
                   help="hold out a stratified validation part of the training split, drawn with the "
                        "seed: a fraction in (0, 1) or a number of images; the epochs then log the "
                        "validation accuracy and the test set is evaluated once, at the end. In the "
                        "few-label settings the k labels per class are drawn from the rest "
                        "(default: none, the test accuracy is logged every epoch)")
    t.add_argument("--unlabelled", type=_unlabelled, default=None, metavar="N|MULTIPLE",
                   help="semi-supervised variant of the few-label settings: each step the teacher-guided "
                        "terms (kd, fitnets, at, nst, sp, ot) also see N images (or MULTIPLE x the labelled "
                        "batch, e.g. 1.0) from the rest of the training split, whose labels are not used; "
                        "the cross-entropy stays on the k labels (default: labelled images only)")
    t.add_argument("--student-width", type=_POS_REAL, default=R, help="override the student's width multiplier")
    t.add_argument("--seed", type=_non_negative_int, default=d.seed,
                   help="seed of the validation part, label draw, initialisation and batch order "
                        "(the same seed gives every method the same ones)")
    t.add_argument("--device", default=d.device, type=_device, help="cpu, cuda or cuda:N (default cpu)")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch threads for this run (per process)")
    t.add_argument("--nproc", type=_positive_int, default=None, metavar="N",
                   help="train in N processes with DistributedDataParallel: starts `torchrun "
                        "--standalone --nproc_per_node=N -m otviz train ...` with the other options "
                        "(gloo on the CPU, one GPU per process with --device cuda); --batch-size is "
                        "the global batch, split among the processes; rank 0 records the run and "
                        "evaluates. At most the CPU cores (or GPUs) of this machine")
    t.add_argument("--master-port", type=int, default=None, metavar="PORT",
                   help="with --nproc: the port the processes meet on (127.0.0.1); default a free "
                        "port picked by torchrun --standalone")
    t.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="with several processes (--nproc, torchrun): how long each waits at the "
                        "start for the others to join before it stops with an error (default "
                        "$OTVIZ_DIST_TIMEOUT, else 120)")
    t.add_argument("--name", default=None, help="a name for the run")
    t.add_argument("--config-json", default=None, type=_json_text,
                   help="the whole config as JSON (overrides the options; missing keys: the recipe)")
    p.add_argument("--run-id-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_store_option(p)
    p.set_defaults(func=_run_train)


def config_from_args(args: argparse.Namespace):
    """The :class:`otviz.train.TrainConfig` of ``otviz train``'s arguments, not yet resolved.

    Options not given on the command line stay with the recipe.
    """
    from otviz.train import TrainConfig

    if args.config_json:
        from otviz._files import loads_json

        data = loads_json(args.config_json, "--config-json")
        return TrainConfig.from_dict(data)
    given = {name: getattr(args, name) for name in _FIELDS if hasattr(args, name)}
    return TrainConfig(setting=args.setting, method=args.method, seed=args.seed, device=args.device,
                       num_threads=args.threads, name=args.name, **given)


def _describe(cfg: Any, given: set[str]) -> str:
    """One line: the options that define the run, the given ones marked with '*'."""
    def fmt(name: str, label: str | None = None) -> str:
        v = getattr(cfg, name)
        if isinstance(v, list):
            v = ",".join(v)
        return f"{label or name.replace('_', '-')} {v}{'*' if name in given else ''}"

    steps = "one pass" if cfg.steps_per_epoch is None else f"{cfg.steps_per_epoch} steps"
    parts = [f"{cfg.epochs}{'*' if 'epochs' in given else ''} epochs x {steps}"
             f"{'*' if 'steps_per_epoch' in given else ''}", fmt("batch_size"), fmt("lr"),
             fmt("schedule")]
    parts += [fmt(n) for n in ("lam", "kd_weight", "temperature", "l2sp_weight", "fitnets_weight",
                               "at_weight", "nst_weight", "sp_weight") if getattr(cfg, n) is not None]
    parts += [fmt("pairs"), fmt("normalize"), fmt("cost"), fmt("ot_method")]
    if cfg.eps is not None:
        parts.append(fmt("eps"))
    if cfg.reg_m is not None:
        parts.append(fmt("reg_m"))
    if cfg.val_size is not None:
        parts.append(fmt("val_size"))
    if cfg.lam is not None and cfg.lam_schedule != "constant":
        parts.append(fmt("lam_schedule"))
    if cfg.ot_gather:
        parts.append(fmt("ot_gather"))
    if cfg.unlabelled is not None:
        parts.append(fmt("unlabelled"))
    return ", ".join(parts)


def _run_train(args: argparse.Namespace) -> int:
    import os
    import warnings

    from otviz._files import loads_json

    from otviz.train import OptionWarning, train

    cfg = config_from_args(args)
    if getattr(args, "dist_timeout", None) is not None:
        from otviz._distributed import TIMEOUT_ENV, rendezvous_timeout

        # the environment carries it to the processes torchrun starts
        os.environ[TIMEOUT_ENV] = repr(rendezvous_timeout(args.dist_timeout))
    if getattr(args, "nproc", None) is not None:
        return _start_torchrun(args, cfg)
    if getattr(args, "master_port", None) is not None:
        raise ValueError("--master-port goes with --nproc N (the processes meet on it); without "
                         "--nproc the training runs in this one process")
    main = os.environ.get("RANK", "0").strip() in ("", "0")  # under torchrun only rank 0 prints
    given = (set(loads_json(args.config_json, "--config-json")) if args.config_json
             else {name for name in _FIELDS if hasattr(args, name)})
    resolved = cfg.resolved(warn=False)
    if main:
        for note in cfg.option_notes():
            print(f"otviz train: warning: {note}", file=sys.stderr)
        world = os.environ.get("WORLD_SIZE", "1").strip() or "1"
        procs = f", {world} processes" if world != "1" else ""
        print(f"{resolved.setting}/{resolved.method}: {_describe(resolved, given)}{procs} "
              f"(recipe of the setting and method; * = given)", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptionWarning)  # printed above
        res = train(resolved, store=args.store, progress=not args.no_progress, run_id_file=args.run_id_file)
    if main:
        val = "" if res.val_accuracy is None else f", validation {res.val_accuracy:.4f}"
        print(f"run {res.run_id}: {cfg.setting}/{cfg.method} test accuracy {res.test_accuracy:.4f} "
              f"(train {res.train_accuracy:.4f}{val}) in {res.seconds:.1f} s")
    return 0


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_port(port: int) -> None:
    """Raise ValueError unless ``port`` can be listened on here."""
    import socket

    if not 1 <= port <= 65535:
        raise ValueError(f"--master-port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError as exc:
            raise ValueError(f"--master-port {port} cannot be used ({exc.strerror or exc}): another "
                             f"program listens on it; pass another --master-port, or leave it out and "
                             f"torchrun picks a free port") from None


def torchrun_command(args: argparse.Namespace, cfg: Any) -> list[str]:
    """The ``torchrun`` command line that ``otviz train --nproc N`` runs (checked first).

    Raises
    ------
    ValueError
        More processes than CPU cores (or GPUs with a CUDA device), an
        unusable port, an invalid config, or ``--nproc`` inside a training
        already started by torchrun.
    """
    import os

    from otviz.train import _validate_quick

    n = int(args.nproc)
    if (os.environ.get("WORLD_SIZE", "").strip() or "1") != "1":
        raise ValueError("--nproc starts torchrun, but this process already is one of "
                         f"{os.environ['WORLD_SIZE']} started by torchrun; drop --nproc")
    _validate_quick(cfg)  # names and device: an error here, before any process starts
    if str(cfg.device).startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
        if n > gpus:
            raise ValueError(f"--nproc {n} with --device {cfg.device} needs {n} GPUs (one per "
                             f"process), but this machine has {gpus}; pass --nproc {max(gpus, 1)} "
                             f"or fewer")
    else:
        cores = _cores()
        if n > cores:
            raise ValueError(f"--nproc {n} is more than the {cores} CPU core(s) this process may use; "
                             f"pass --nproc {cores} or fewer (each process trains on a core of its "
                             f"own), or train on GPUs with --device cuda")
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if args.master_port is not None:
        import uuid

        _check_port(int(args.master_port))
        cmd += ["--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{int(args.master_port)}",
                f"--rdzv-id=otviz-{uuid.uuid4().hex[:12]}"]
    else:
        cmd += ["--standalone"]
    cmd += [f"--nproc-per-node={n}", "-m", "otviz", "train",
            "--config-json", json.dumps(cfg.given())]
    if args.store is not None:
        cmd += ["--store", os.path.abspath(os.path.expanduser(args.store))]
    if args.run_id_file is not None:
        cmd += ["--run-id-file", os.path.abspath(args.run_id_file)]
    if args.no_progress:
        cmd += ["--no-progress"]
    return cmd


def _check_store_writable(path: str | None) -> None:
    """Open (or create) the run store that rank 0 will record to, before any process starts.

    Raises
    ------
    otviz.runs.RunStoreError
        The store cannot be created, opened or written: one line, instead of the same
        error in every rank's traceback.
    """
    from otviz.runs import RunStore, RunStoreError

    store = RunStore(path)  # the checks and the creation that rank 0 would do
    try:
        if store.readonly:
            raise RunStoreError(f"cannot record the training in the run store {store.path}: "
                                f"it is read-only ({store._readonly_reason}); make the file and "
                                f"its directory writable, or pass another --store")
    finally:
        store.close()


def _start_torchrun(args: argparse.Namespace, cfg: Any) -> int:
    """Replace this process by torchrun (so a signal to it reaches the training's processes)."""
    import os

    cmd = torchrun_command(args, cfg)
    _check_store_writable(args.store)
    print(f"otviz train: starting {args.nproc} processes: torchrun {' '.join(cmd[3:8])} ...",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)
    return 1  # pragma: no cover - execv does not return


def add_runs(subparsers: Any) -> None:
    p = subparsers.add_parser("runs", help="list the runs of the run store",
                              description="List the runs of the run store, newest first, or export them. "
                                          "Only reads: a missing store is an error (nothing is created), "
                                          "and a store in a read-only directory is listed.")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="write runs.csv and metrics.csv into DIR instead of printing")
    p.add_argument("--limit", type=_positive_int, default=30, help="rows to print (default 30)")
    _add_store_option(p)
    p.set_defaults(func=_run_runs)


def _run_runs(args: argparse.Namespace) -> int:
    from otviz.runs import RunStore

    store = RunStore(args.store, create=False)  # a reading command never creates a store
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
    import shutil

    from otviz._teacher_meta import TEACHER_DIR, list_teachers

    if args.rebuild:
        from otviz.teachers import build_teachers

        build_teachers(args.out)
    rows = list_teachers(args.out)
    folder = TEACHER_DIR if args.out is None else args.out
    if not rows:
        print(f"no teacher checkpoints in {folder}; build them with `otviz teachers --rebuild`")
        return 0
    width = shutil.get_terminal_size((100, 24)).columns
    print(teachers_table(rows, width=width))
    import textwrap

    print(textwrap.fill(f"({len(rows)} checkpoints in {folder}; `otviz align NAME NAME` compares two)",
                        max(width, 40)))
    return 0


def _classes(classes: Any) -> str:
    """``[0, 1, 2, 3, 4]`` -> ``"0-4"`` (a run of consecutive labels), else the labels joined."""
    if not classes:
        return ""
    c = list(classes)
    if len(c) > 2 and all(isinstance(x, int) for x in c) and c == list(range(c[0], c[0] + len(c))):
        return f"{c[0]}-{c[-1]}"
    return ",".join(map(str, c))


def teachers_table(rows: list[dict[str, Any]], *, width: int = 100) -> str:
    """The rows of :func:`otviz._teacher_meta.list_teachers` as a table no wider than ``width``
    columns (at least 40): the role column wraps to the room left; the folder is said once below."""
    import textwrap

    width = max(int(width), 40)
    cols = [("name", lambda r: str(r.get("name", ""))),
            ("arch", lambda r: str(r.get("arch", ""))),
            ("width", lambda r: "" if r.get("width") is None else f"{r['width']:g}"),
            ("dataset", lambda r: str(r.get("dataset") or "")),
            ("classes", lambda r: _classes(r.get("classes"))),
            ("test acc", lambda r: "" if r.get("test_accuracy") is None else f"{r['test_accuracy']:.1%}")]
    cells = [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(cols)]
    while sum(widths) + 2 * len(widths) + 20 > width and len(cols) > 2:  # keep 20 for the role
        drop = next(i for i, (h, _) in enumerate(cols) if h in ("width", "arch", "dataset", "classes"))
        del cols[drop], widths[drop]
        for c in cells:
            del c[drop]
    fixed = sum(widths) + 2 * len(widths)
    role_w = width - fixed
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)) + "  role"]
    for r, c in zip(rows, cells):
        left = "  ".join(v.ljust(w) for v, w in zip(c, widths))
        role = textwrap.wrap(str(r.get("role") or ""), role_w) or [""]
        lines.append(left + "  " + role[0])
        lines += [" " * (fixed) + more for more in role[1:]]
    return "\n".join(line.rstrip() for line in lines)


__all__ = ["add_train", "add_runs", "add_teachers", "config_from_args", "teachers_table"]
if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `otviz train|runs|teachers`")
