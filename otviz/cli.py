"""The ``otviz`` command line.

Usage::

    otviz align --demo                 # a teacher and a student on digits, aligned layer by layer
    otviz align --demo --method sinkhorn --eps 0.01 --normalize standardize
    otviz <command> --help

Each subcommand is registered by one function ``_add_<name>(subparsers)`` listed in
:data:`SUBCOMMANDS`; it builds its own parser and sets ``func`` (called with the
parsed arguments, returning an exit code). Heavy imports (torch, POT, ...) happen
inside the ``func`` so that ``otviz --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

COSTS = ("sqeuclidean", "euclidean", "cosine", "correlation")
NORMALIZATIONS = ("none", "center", "standardize", "unit")
METHODS = ("emd", "sinkhorn", "unbalanced")

#: default relative entropic regularisation used by the CLI for sinkhorn/unbalanced
DEFAULT_EPS = 0.01


class CommandError(Exception):
    """An error the user can fix; printed as ``otviz <command>: error: ...`` (exit code 2)."""


# ----------------------------------------------------------------------------
# argument types with clear messages
# ----------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _add_ot_options(parser: argparse.ArgumentParser, *, method_default: str | None) -> None:
    """Options shared by every command that computes an OT alignment."""
    g = parser.add_argument_group("optimal transport options")
    g.add_argument(
        "--method",
        choices=METHODS,
        default=method_default,
        help=(
            "OT solver: 'emd' = exact optimal transport (network simplex, via POT); "
            "'sinkhorn' = entropic OT (a smooth, dense plan, controlled by --eps); "
            "'unbalanced' = entropic OT with KL-relaxed marginals (neurons may be left "
            "partly unmatched). "
            + (
                "Default: show both 'emd' and 'sinkhorn'."
                if method_default is None
                else f"Default: {method_default}."
            )
        ),
    )
    g.add_argument(
        "--cost",
        choices=COSTS,
        default="sqeuclidean",
        help=(
            "ground cost c(t_i, s_j) between a teacher neuron and a student neuron (their "
            "response vectors): 'sqeuclidean' = ||t-s||^2 (the OT distance is then the squared "
            "2-Wasserstein distance), 'euclidean' = ||t-s||, 'cosine' = 1 - cosine similarity, "
            "'correlation' = 1 - Pearson correlation. Default: sqeuclidean."
        ),
    )
    g.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="none",
        help=(
            "per-neuron normalisation of the response vectors before the cost: 'center' "
            "(subtract the mean), 'standardize' (zero mean, unit variance: invariant to each "
            "neuron's scale; fails on constant neurons), 'unit' (unit Euclidean norm), or "
            "'none'. Default: none."
        ),
    )
    g.add_argument(
        "--eps",
        type=_positive_float,
        default=None,
        metavar="EPS",
        help=(
            "entropic regularisation for 'sinkhorn' and 'unbalanced', RELATIVE to the cost "
            "scale: the solver uses eps * max(cost matrix). Smaller = closer to exact OT and "
            f"a sparser plan, but more iterations. Ignored by 'emd'. Default: {DEFAULT_EPS}."
        ),
    )


def _normalize_arg(value: str) -> str | None:
    return None if value in (None, "none") else value


# ----------------------------------------------------------------------------
# otviz align
# ----------------------------------------------------------------------------
def _add_align(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "align",
        help="align the layers of a teacher and a student network by optimal transport",
        description=(
            "Compare two networks layer by layer as sets of neurons. Each neuron is seen through "
            "its responses to the same probe inputs (the functional view), each layer is the "
            "uniform distribution over its neurons, and a teacher layer and a student layer are "
            "compared by the optimal transport distance "
            "OT(mu_T, mu_S) = min_P sum_ij P_ij c(t_i, s_j), whatever their widths. "
            "Prints, per layer pair, the alignment (distance, plan, matching, convergence) and the "
            "layer x layer distance table beside linear CKA."
        ),
        epilog=(
            "example: otviz align --demo --method sinkhorn --eps 0.005 --normalize standardize"
        ),
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help=(
            "offline demo on sklearn's built-in digits (8x8 images): train a teacher MLP "
            "64-128-64-10 and a narrower student 64-32-16-10 for a few seconds each with a fixed "
            "seed, capture their layers on the held-out images and align them. Takes about "
            "10 seconds on two CPU cores."
        ),
    )
    _add_ot_options(p, method_default=None)
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="random seed of the demo (data split, initialisation, minibatch order). Default: 0.",
    )
    p.add_argument(
        "--epochs",
        type=_non_negative_int,
        default=None,
        help=(
            "training epochs of the demo's teacher and student over the 1,257 training images "
            "(default: 30 for each; 0 = compare untrained networks)."
        ),
    )
    p.set_defaults(func=_run_align)


def _run_align(args: argparse.Namespace) -> int:
    if not args.demo:
        raise CommandError(
            "nothing to align: pass --demo (two small networks trained on the built-in digits). "
            "See `otviz align --help`."
        )
    return _align_demo(args)


# --- the demo ----------------------------------------------------------------
_DEMO_LAYERS = ("fc1", "fc2", "head")


def _demo_mlp(widths: Sequence[int]):
    """An MLP with named layers fc1, act1, fc2, act2, ..., head."""
    from collections import OrderedDict

    from torch import nn

    mods: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(len(widths) - 2):
        mods[f"fc{i + 1}"] = nn.Linear(widths[i], widths[i + 1])
        mods[f"act{i + 1}"] = nn.ReLU()
    mods["head"] = nn.Linear(widths[-2], widths[-1])
    return nn.Sequential(mods)


def _demo_data(seed: int):
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)


def _demo_train(model, x, y, *, epochs: int, seed: int, lr: float = 3e-3, batch_size: int = 64):
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    return model


def _demo_accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def _format_table(df, fmt: str = "{:.4g}") -> str:
    return df.to_string(float_format=lambda v: fmt.format(v))


def _align_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import torch

    from otviz.align import layer_distances
    from otviz.capture import capture, neurons
    from otviz.transport import align

    seed = int(args.seed)
    epochs = 30 if args.epochs is None else int(args.epochs)
    normalize = _normalize_arg(args.normalize)
    methods = ("emd", "sinkhorn") if args.method is None else (args.method,)
    eps = DEFAULT_EPS if args.eps is None else args.eps

    torch.manual_seed(seed)
    x_train, x_test, y_train, y_test = _demo_data(seed)
    teacher_widths, student_widths = (64, 128, 64, 10), (64, 32, 16, 10)
    torch.manual_seed(seed)
    teacher = _demo_train(_demo_mlp(teacher_widths), x_train, y_train, epochs=epochs, seed=seed)
    torch.manual_seed(seed + 1)
    student = _demo_train(_demo_mlp(student_widths), x_train, y_train, epochs=epochs, seed=seed + 1)

    n_test = len(x_test)
    print(
        "otviz align --demo: a teacher MLP (64-128-64-10) and a narrower student (64-32-16-10), "
        "trained on sklearn's digits. Each layer is a set of neurons, each neuron its vector of "
        f"responses to the same {n_test} held-out images; a teacher layer and a student layer "
        "are compared by optimal transport, OT = min_P sum_ij P_ij c(t_i, s_j), whatever their "
        "widths."
    )
    print(
        f"seed {seed}, {epochs} epochs each, {len(x_train)} training / {n_test} held-out images; "
        f"test accuracy: teacher {_demo_accuracy(teacher, x_test, y_test):.1%}, "
        f"student {_demo_accuracy(student, x_test, y_test):.1%}"
    )
    norm_text = "none" if normalize is None else normalize
    print(f"cost={args.cost}, normalize={norm_text}, eps={eps:g} (relative, for entropic methods)")

    t_acts = capture(teacher, x_test, list(_DEMO_LAYERS))
    s_acts = capture(student, x_test, list(_DEMO_LAYERS))

    for layer in _DEMO_LAYERS:
        t_neurons = neurons(t_acts[layer])
        s_neurons = neurons(s_acts[layer])
        print()
        print(
            f"== teacher {layer} ({t_neurons.shape[0]} neurons) <-> student {layer} "
            f"({s_neurons.shape[0]} neurons), each neuron in R^{t_neurons.shape[1]} =="
        )
        for method in methods:
            kwargs: dict[str, Any] = {"cost": args.cost, "normalize": normalize, "method": method}
            if method != "emd":
                kwargs["eps"] = eps
            result = align(t_neurons, s_neurons, **kwargs)
            print(f"[{method}] OT distance = {result.distance:.6g}")
            print(_indent(result.summary()))
        if layer == "head":
            perm = _head_permutation(t_neurons, s_neurons, args.cost, normalize)
            if perm is not None:
                agree = int(sum(int(p) == i for i, p in enumerate(perm)))
                print(
                    f"   output neurons matched to the student's output neuron of the same class: "
                    f"{agree}/{len(perm)} (exact OT; the alignment never sees the labels)"
                )

    table_method = methods[0]
    table_kwargs: dict[str, Any] = {"cost": args.cost, "normalize": normalize, "method": table_method}
    if table_method != "emd":
        table_kwargs["eps"] = eps
    print()
    print("Layer x layer distances (rows: teacher layers, columns: student layers)")
    ot_table = layer_distances(
        teacher, student, x_test, list(_DEMO_LAYERS), list(_DEMO_LAYERS), measure="ot", **table_kwargs
    )
    print(f"OT distance ({table_method}, cost={args.cost}, normalize={norm_text}; lower = closer):")
    print(_indent(_format_table(ot_table)))
    cka_table = layer_distances(
        teacher, student, x_test, list(_DEMO_LAYERS), list(_DEMO_LAYERS), measure="cka"
    )
    print("Linear CKA (similarity in [0, 1]; higher = closer):")
    print(_indent(_format_table(cka_table, "{:.3f}")))
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


def _head_permutation(t_neurons, s_neurons, cost: str, normalize: str | None):
    """Exact matching of equally many output neurons (None when widths differ)."""
    if t_neurons.shape[0] != s_neurons.shape[0]:
        return None
    from otviz.transport import align

    result = align(t_neurons, s_neurons, cost=cost, normalize=normalize, method="emd")
    perm = getattr(result, "permutation", None)
    return result.matching if perm is None else perm


def _indent(text: str, prefix: str = "   ") -> str:
    return "\n".join(prefix + line if line else line for line in str(text).splitlines())


# ----------------------------------------------------------------------------
# registry and entry point
# ----------------------------------------------------------------------------
#: One function per subcommand: ``f(subparsers)`` adds a parser and sets ``func``.
SUBCOMMANDS: list[Callable[[Any], None]] = [_add_align]


def build_parser() -> argparse.ArgumentParser:
    from otviz import __version__

    parser = argparse.ArgumentParser(
        prog="otviz",
        description=(
            "otviz: representation transfer by optimal transport. Compare, align and transfer "
            "neural network layers as sets of neurons."
        ),
        epilog="Run `otviz <command> --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"otviz {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``otviz`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Bad options exit through argparse (``SystemExit`` with code 2 and a message that lists the
    valid choices), as a command line should.
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return int(func(args) or 0)
    except CommandError as exc:
        print(f"otviz {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        # The library's input validation names the problem and the fix.
        # OTVIZ_DEBUG=1 shows the traceback instead.
        if os.environ.get("OTVIZ_DEBUG"):
            raise
        print(f"otviz {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"otviz {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
