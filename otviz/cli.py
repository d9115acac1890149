"""The ``otviz`` command line.

Usage::

    otviz align --demo                 # a teacher and a student on digits, aligned layer by layer
    otviz align --demo --method sinkhorn --eps 0.01 --normalize standardize
    otviz <command> --help

Each subcommand is registered by one function ``_add_<name>(subparsers)`` listed in
:data:`SUBCOMMANDS`; it builds its own parser and sets ``func`` (called with the
parsed arguments, returning an exit code). Heavy imports (torch, POT, ...) happen
inside the ``func`` (or, for options whose defaults need them, in a deferred
``_LazyParser`` fill) so that ``otviz --help`` and argument errors stay instant.

Bad input and store errors print one line, ``otviz <command>: error: ...``, with exit
code 2; ``OTVIZ_DEBUG=1`` shows their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

COSTS = ("sqeuclidean", "euclidean", "cosine", "correlation")
NORMALIZATIONS = ("none", "center", "standardize", "unit")
METHODS = ("emd", "sinkhorn", "unbalanced")

#: Default relative entropic regularisation of the CLI's sinkhorn/unbalanced solves. Where
#: neurons pair off one to one (similar layers, output layers: the demo's heads), the entropic
#: plan is nearly a permutation and Sinkhorn's iterations creep (each step moves mass only
#: through entries about exp(-gap / reg) of the matched ones): at 0.02 the demo's head pair
#: stops at the 10,000-iteration cap with a marginal error of 4e-6; at 0.1 every demo pair
#: and every pair of two shipped teachers converges within a few thousand iterations.
DEFAULT_EPS = 0.1


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


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with a message naming ``what`` it must be."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what} (>= {minimum}), got {text!r}")
        return value

    parse.__name__ = what
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a non-negative integer")


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
        default=None,
        help=(
            "per-neuron normalisation of the response vectors before the cost: 'standardize' "
            "(zero mean, unit variance: invariant to each neuron's scale, so layers of different "
            "scales compare; undefined for a constant neuron, e.g. a dead ReLU unit), 'center' "
            "(subtract the mean; accepts any neuron), 'unit' (unit Euclidean norm), or 'none' "
            "(raw responses, the library's default). Default: standardize for --demo (its layers "
            "are linear outputs, never constant), center for TEACHER STUDENT (post-ReLU layers "
            "may hold dead units)."
        ),
    )
    g.add_argument(
        "--eps",
        type=_positive_float,
        default=None,
        metavar="EPS",
        help=(
            "entropic regularisation for 'sinkhorn' and 'unbalanced', RELATIVE to the typical "
            "cost: the solver uses eps * median(cost matrix), so one eps means the same blur in "
            "every layer. Smaller = closer to exact OT and a sparser plan, but more iterations: "
            "below 0.1, layers whose neurons pair off one to one (similar layers, output "
            "layers) can leave Sinkhorn short of convergence at its iteration cap. "
            f"Ignored by 'emd'. Default: {DEFAULT_EPS}."
        ),
    )
    g.add_argument(
        "--raw",
        action="store_true",
        help=(
            "also print the layer x layer table of the raw OT cost (in the units of the "
            "activations, with --cost and --normalize) beside the scale-free OT score"
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
            "examples:\n"
            "  otviz align --demo\n"
            "  otviz align --demo --method sinkhorn --eps 0.01 --cost correlation\n"
            "  otviz align cnn-mnist5k cnn-mnist5k-0to4          (two shipped teachers; see `otviz teachers`)\n"
            "  otviz align teacher.pt student.pt --teacher-layers features.conv2,features.conv3"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "teacher",
        nargs="?",
        help=(
            "the teacher: a shipped teacher name (e.g. cnn-mnist5k) or the path of an otviz "
            "checkpoint file (.pt, read with weights_only=True). Its task's held-out images are "
            "the probe inputs."
        ),
    )
    p.add_argument(
        "student",
        nargs="?",
        help="the student: a shipped teacher name or a checkpoint path, as for TEACHER.",
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
    g = p.add_argument_group("layers and probe inputs (TEACHER STUDENT mode)")
    g.add_argument(
        "--teacher-layers",
        metavar="NAMES",
        default=None,
        help=(
            "comma-separated module names of the teacher to compare (as model.named_modules() "
            "names them). Default: the model's alignable layers, e.g. "
            "features.conv1,features.conv2,features.conv3."
        ),
    )
    g.add_argument(
        "--student-layers",
        metavar="NAMES",
        default=None,
        help="comma-separated module names of the student. Default: its alignable layers.",
    )
    g.add_argument(
        "--probe",
        type=_positive_int,
        default=500,
        metavar="N",
        help=(
            "number of held-out images (drawn with --seed from the teacher's test split) fed to "
            "both networks; each neuron is a vector of its responses to them. Default: 500."
        ),
    )
    g.add_argument(
        "--spatial",
        choices=("mean", "flatten"),
        default="mean",
        help=(
            "how a convolutional channel becomes a neuron vector: 'mean' = its spatial average "
            "per image (d = N), 'flatten' = every position of every image (d = N*h*w; maps of "
            "different sizes need --size). Default: mean."
        ),
    )
    g.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        metavar="S",
        help="with --spatial flatten, resize every map to S x S first (adaptive average pooling).",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help=(
            "random seed: the demo's data split, initialisation and minibatch order, or the choice "
            "of probe images. Default: 0."
        ),
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
    if args.normalize is None:
        args.normalize = "standardize" if args.demo else "center"
    if args.demo:
        if args.teacher or args.student:
            raise CommandError("pass either --demo or TEACHER STUDENT, not both.")
        return _align_demo(args)
    if not args.teacher or not args.student:
        raise CommandError(
            "nothing to align: pass --demo (two small networks trained on the built-in digits) or "
            "TEACHER STUDENT (shipped teacher names or checkpoint files; `otviz teachers` lists "
            "the shipped ones"
            + _shipped_teachers_hint()
            + "). See `otviz align --help`."
        )
    return _align_checkpoints(args)


#: How a checkpoint file begins: a zip archive (``torch.save``'s format) or a pickle (its legacy one).
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
_WHAT_MODELS = ("TEACHER and STUDENT are shipped teacher names (`otviz teachers` lists them) or otviz "
                "checkpoint files (.pt, written by `otviz train` or `otviz teachers --rebuild`)")


def _check_model_argument(role: str, text: str) -> None:
    """Refuse, with a message naming the problem and the fix, a TEACHER/STUDENT argument that is
    neither a shipped teacher name nor a file that could be an otviz checkpoint.

    Only the first bytes of a regular file are read; the checkpoint itself is read (with
    ``weights_only=True``) and checked by :func:`otviz.teachers.load_teacher`.
    """
    from pathlib import Path

    from otviz._files import check_regular_file, open_regular
    from otviz._teacher_meta import TEACHER_DIR

    if "/" not in text and (TEACHER_DIR / f"{text}.pt").is_file():
        return  # a shipped teacher (a file of that name in the current folder needs ./NAME)
    path = Path(text).expanduser()
    if not os.path.lexists(path):
        looks_like_path = os.sep in text or "/" in text or path.suffix != ""
        what = (f"no file at {text!r}" if looks_like_path
                else f"{text!r} is neither a shipped teacher name nor a file")
        raise CommandError(f"the {role}: {what}. {_WHAT_MODELS}" + _shipped_teachers_hint() + ".")
    if path.is_dir():
        raise CommandError(
            f"the {role} {text!r} is a directory, not a checkpoint file. {_WHAT_MODELS}; a Hugging Face "
            "model directory is read by the dashboard's Alignments page (type its path there) or by "
            "otviz.external.load_model.")
    try:
        size = check_regular_file(path, f"the {role}")
    except (OSError, ValueError) as exc:
        raise CommandError(f"{_one_line(exc)}. {_WHAT_MODELS}.") from None
    if size == 0:
        raise CommandError(f"the {role} {text!r} is an empty file (0 bytes), not an otviz checkpoint. "
                           f"{_WHAT_MODELS}.")
    with open_regular(path, f"the {role}") as fh:
        head = fh.read(512)
    if not head.startswith(_CHECKPOINT_MAGIC):
        kind = "a text file" if _looks_like_text(head) else "a binary file of another kind"
        raise CommandError(
            f"the {role} {text!r} is not an otviz checkpoint: it is {kind}, while a checkpoint is the "
            f"zip archive torch.save writes. {_WHAT_MODELS}.")
    if head.startswith(_CHECKPOINT_MAGIC[0]):
        import zipfile

        if not zipfile.is_zipfile(path):
            raise CommandError(
                f"the {role} {text!r} begins like a zip archive but is not a readable one (truncated "
                f"or damaged): save the checkpoint again, or copy it again. {_WHAT_MODELS}.")


def _looks_like_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as UTF-8 text (a character cut at the end allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\n\r" for ch in text)


def _shipped_teachers_hint() -> str:
    from otviz._teacher_meta import TEACHER_DIR

    names = sorted(p.stem for p in TEACHER_DIR.glob("*.pt")) if TEACHER_DIR.is_dir() else []
    return f"; shipped: {', '.join(names)}" if names else ""


def _ot_kwargs(args: argparse.Namespace, method: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"cost": args.cost, "normalize": _normalize_arg(args.normalize), "method": method}
    if method != "emd":
        kwargs["eps"] = DEFAULT_EPS if args.eps is None else args.eps
    return kwargs


def _score_line(result: Any) -> str:
    """One line: the score first (with its scale), then the raw cost."""
    try:
        det = result.score_details
        score = f"OT score = {det['score']:.3f} (0 = same layer, ~1 = unrelated)"
        if not det["converged"]:
            score += " (approximate: the solver stopped at its iteration cap, see the note)"
    except ValueError:
        score = "OT score undefined (a layer whose neurons are all constant)"
    return f"{score}; raw distance = {result.distance:.6g}"


def _notes(caught: Sequence[warnings.WarningMessage], result: Any = None) -> list[str]:
    """The caught warnings as note lines; the solver's and the score's "did not converge" become
    one line that says why and what converges."""
    notes: list[str] = []
    capped = False
    for w in caught:
        text = str(w.message)
        if "converge" in text and issubclass(w.category, RuntimeWarning):
            capped = True
            continue
        notes.append(f"note: {text}")
    if capped:
        where = ""
        if result is not None and result.n_iter and not result.converged:
            where = f" after {result.n_iter} iterations (marginal error {result.marginal_error:.1e})"
        notes.insert(0, (
            f"note: Sinkhorn stopped at its iteration cap{where}, so these values are approximate: "
            "where neurons pair off nearly one to one, the entropic plan is nearly a permutation and "
            "Sinkhorn creeps; a larger --eps (the default, 0.1, converges on the demo and the shipped "
            "teachers) or --method emd gives converged values."))
    return notes


def _settings_line(args: argparse.Namespace) -> str:
    eps = DEFAULT_EPS if args.eps is None else args.eps
    return f"cost={args.cost}, normalize={args.normalize}, eps={eps:g} (relative, for entropic methods)"


def _split_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CommandError(f"no layer names in {text!r}; pass comma-separated module names.")
    return names


def _pairs(t_layers: Sequence[str], s_layers: Sequence[str]) -> list[tuple[str, str]]:
    """Layer pairs by relative depth: the i-th teacher layer with the student layer at the same depth."""
    m, k = len(t_layers), len(s_layers)
    if m == k:
        return list(zip(t_layers, s_layers))
    if m == 1 or k == 1:
        return [(t, s) for t in t_layers for s in s_layers]
    return [(t_layers[i], s_layers[round(i * (k - 1) / (m - 1))]) for i in range(m)]


def _report(teacher, student, inputs, t_layers, s_layers, args, *, spatial="mean", size=None, extra=None):
    """Print the per-pair alignments and the layer x layer tables; ``extra(t_name, s_name, t, s)``
    may print more lines after a pair."""
    from otviz.layers import layer_distances
    from otviz.capture import capture
    from otviz.transport import align

    methods = ("emd", "sinkhorn") if args.method is None else (args.method,)
    t_acts = capture(teacher, inputs, list(t_layers))
    s_acts = capture(student, inputs, list(s_layers))
    for t_name, s_name in _pairs(t_layers, s_layers):
        t_neurons = t_acts.neurons(t_name, spatial=spatial, size=size)
        s_neurons = s_acts.neurons(s_name, spatial=spatial, size=size)
        print()
        print(
            f"== teacher {t_name} ({t_neurons.shape[0]} neurons) <-> student {s_name} "
            f"({s_neurons.shape[0]} neurons), each neuron in R^{t_neurons.shape[1]} =="
        )
        for method in methods:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = align(t_neurons, s_neurons, **_ot_kwargs(args, method))
                summary = result.summary()  # computes the score: its warnings are caught too
            print(f"[{method}] {_score_line(result)}")
            print(_indent(summary))
            for line in _notes(caught, result):  # e.g. an iteration cap: said once, with why
                print(_indent(line, "     "))
        if extra is not None:
            extra(t_name, s_name, t_neurons, s_neurons)

    table_method = methods[0]
    print()
    print("Layer x layer tables (rows: teacher layers, columns: student layers)")
    kwargs = _ot_kwargs(args, table_method)
    geometry = {k: kwargs.pop(k) for k in ("cost", "normalize")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ot_table = layer_distances(
            teacher, student, inputs, list(t_layers), list(s_layers), measure="ot",
            spatial=spatial, size=size, **kwargs,
        )
    print(f"OT score ({table_method}; 0 = same layer up to permutation and scale, ~1 = unrelated; "
          "lower = closer):")
    print(_indent(_format_table(ot_table, "{:.3f}")))
    for line in _notes(caught):
        print(_indent(line, "     "))
    if getattr(args, "raw", False):
        raw_table = layer_distances(
            teacher, student, inputs, list(t_layers), list(s_layers), measure="ot-raw",
            spatial=spatial, size=size, **kwargs, **geometry,
        )
        print(f"Raw OT cost ({table_method}, cost={args.cost}, normalize={args.normalize}; in the "
              "units of the activations, lower = closer):")
        print(_indent(_format_table(raw_table)))
    cka_table = layer_distances(
        teacher, student, inputs, list(t_layers), list(s_layers), measure="cka", spatial=spatial, size=size
    )
    print("Linear CKA (similarity in [0, 1]; higher = closer):")
    print(_indent(_format_table(cka_table, "{:.3f}")))


# --- two checkpoints -----------------------------------------------------------
def _align_checkpoints(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.size is not None and args.spatial != "flatten":
        raise CommandError("--size only applies with --spatial flatten.")
    _check_model_argument("teacher", args.teacher)  # before torch: a wrong path answers at once
    _check_model_argument("student", args.student)
    import torch

    from otviz.teachers import load_teacher, teacher_task

    teacher, t_info = load_teacher(args.teacher)
    student, s_info = load_teacher(args.student)
    t_layers = _split_names(args.teacher_layers) or list(getattr(teacher, "alignable_layers", []))
    s_layers = _split_names(args.student_layers) or list(getattr(student, "alignable_layers", []))
    for role, layers, label in (("teacher", t_layers, args.teacher), ("student", s_layers, args.student)):
        if not layers:
            raise CommandError(f"the {role} {label!r} names no alignable layers; pass --{role}-layers.")

    task = teacher_task(t_info)
    x_all = task.X_test
    n = min(int(args.probe), len(x_all))
    gen = torch.Generator().manual_seed(int(args.seed))
    inputs = x_all[torch.randperm(len(x_all), generator=gen)[:n]]

    def describe(name: str, info: dict[str, Any]) -> str:
        acc = (info.get("metrics") or {}).get("test_accuracy")
        acc_text = "" if acc is None else f", test accuracy {acc:.1%}"
        return f"{info.get('name', name)} ({info.get('arch')}, width {info.get('model_config', {}).get('width')}{acc_text})"

    print(
        "otviz align: each layer is a set of neurons, each neuron its vector of responses to the "
        f"same {n} held-out images of {task.name}; a teacher layer and a student layer are compared "
        "by optimal transport, OT = min_P sum_ij P_ij c(t_i, s_j), whatever their widths."
    )
    print(f"teacher: {describe(args.teacher, t_info)}")
    print(f"student: {describe(args.student, s_info)}")
    print(_settings_line(args) + f", spatial={args.spatial}" + ("" if args.size is None else f", size={args.size}"))
    try:
        _report(teacher, student, inputs, t_layers, s_layers, args, spatial=args.spatial, size=args.size)
    except RuntimeError as exc:  # e.g. a student that cannot take the teacher's inputs
        raise CommandError(
            f"could not run both networks on the teacher's probe images {tuple(inputs.shape)}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


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


def _align_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import torch

    if args.teacher_layers or args.student_layers:
        raise CommandError(
            f"--teacher-layers/--student-layers apply to TEACHER STUDENT; the demo compares "
            f"{', '.join(_DEMO_LAYERS)}."
        )
    # The demo's tensors are tiny: one thread is as fast as two, and far faster when the
    # machine is busy (threads of a parallel region wait for each other). Restored on exit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _align_demo_run(args, t0)
    finally:
        torch.set_num_threads(threads)


def _align_demo_run(args: argparse.Namespace, t0: float) -> int:
    import torch

    seed = int(args.seed)
    epochs = 30 if args.epochs is None else int(args.epochs)
    x_train, x_test, y_train, y_test = _demo_data(seed)
    torch.manual_seed(seed)
    teacher = _demo_train(_demo_mlp((64, 128, 64, 10)), x_train, y_train, epochs=epochs, seed=seed)
    torch.manual_seed(seed + 1)
    student = _demo_train(_demo_mlp((64, 32, 16, 10)), x_train, y_train, epochs=epochs, seed=seed + 1)

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
    print(_settings_line(args))

    def head_matching(t_name, s_name, t_neurons, s_neurons):
        if t_name != "head":
            return
        from otviz.transport import align

        kwargs = _ot_kwargs(args, "emd")
        result = align(t_neurons, s_neurons, **kwargs)
        perm = result.matching if getattr(result, "permutation", None) is None else result.permutation
        agree = int(sum(int(p) == i for i, p in enumerate(perm)))
        print(
            f"   output neurons matched to the student's output neuron of the same class: "
            f"{agree}/{len(perm)} (exact OT; the alignment never sees the labels)"
        )

    _report(teacher, student, x_test, _DEMO_LAYERS, _DEMO_LAYERS, args, extra=head_matching)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


def _format_table(df, fmt: str = "{:.4g}") -> str:
    return df.to_string(float_format=lambda v: fmt.format(v))


def _indent(text: str, prefix: str = "   ") -> str:
    return "\n".join(prefix + line if line else line for line in str(text).splitlines())


# ----------------------------------------------------------------------------
# otviz dashboard
# ----------------------------------------------------------------------------
def _dashboard_entry() -> Any:
    """Path of the Streamlit entry script, ``<repository>/app/otviz_app.py``."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "app" / "otviz_app.py"


def _add_dashboard(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="start the Streamlit dashboard (train, watch plans live, compare, learn)",
        description=(
            "Serve the otviz dashboard: launch trainings and follow them live, inspect transport "
            "plans and neuron maps between two models or over a run's epochs, compare runs, and an "
            "interactive introduction to optimal transport. Trainings started from it run in their "
            "own processes and write to the run store."
        ),
        epilog="example:\n  otviz dashboard --port 8502 --store /tmp/runs.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=_positive_int, default=8501, help="port to listen on (default 8501)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes the "
        "dashboard, and the trainings it can launch, to the network)",
    )
    p.add_argument(
        "--store", default=None, metavar="PATH",
        help="run store (SQLite file); default $OTVIZ_STORE, else ~/.otviz/runs.db",
    )
    p.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="also answer requests addressed to NAME (a reverse proxy, a DNS name of this machine); "
        "repeatable. Requests under any other name than the listening address (and localhost for "
        "a loopback address) are refused, against DNS rebinding",
    )
    p.set_defaults(func=_run_dashboard)


def _run_dashboard(args: argparse.Namespace) -> int:
    import importlib.util

    entry = _dashboard_entry()
    if not entry.is_file():
        raise CommandError(
            f"the dashboard app is not at {entry}; it ships in the repository's app/ folder, so "
            "run otviz from a source checkout (pip install -e .)"
        )
    if importlib.util.find_spec("streamlit") is None:
        raise CommandError("the dashboard needs streamlit: pip install -r requirements.txt")
    if args.store:
        os.environ["OTVIZ_STORE"] = os.path.abspath(os.path.expanduser(args.store))
    from otviz.runs import default_store_path

    print(f"otviz dashboard: http://{args.address}:{args.port}  (run store: {default_store_path()}; "
          "Ctrl-C stops)", flush=True)
    # The server runs in this process, started without a warm-up of the pages' imports: the
    # first page (Train) needs no torch (its form and tables are plain data, otviz._recipes and
    # otviz._teacher_meta), and an import thread here would hold the interpreter lock while the
    # server starts and the page renders (measured: slower first page, benchmarks/README.md).
    from otviz._dashboard import serve

    # Streamlit behind a Host check, error details off, uploads capped; exits the process.
    serve(entry, args.address, args.port, allowed_hosts=args.allowed_host)


# ----------------------------------------------------------------------------
# registry and entry point
# ----------------------------------------------------------------------------
class _LazyParser(argparse.ArgumentParser):
    """An argument parser whose options may be added only when it is used.

    ``defer(fill)`` postpones ``fill(parser)`` (which adds the options, description
    and epilog) until the parser parses or prints its help. ``otviz --help`` and
    the other commands then never pay for what one command's options need (the
    ``train`` options quote the recipes of :mod:`otviz._recipes`, plain data: no
    command's parser imports torch).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fill: Callable[[argparse.ArgumentParser], None] | None = None

    def defer(self, fill: Callable[[argparse.ArgumentParser], None]) -> None:
        self._fill = fill

    def _filled(self) -> None:
        fill, self._fill = self._fill, None
        if fill is not None:
            fill(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._filled()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._filled()
        return super().format_help()

    def format_usage(self) -> str:
        self._filled()
        return super().format_usage()


#: One function per subcommand: ``f(subparsers)`` adds a parser and sets ``func``.
def _add_train_commands(subparsers: Any) -> None:
    from otviz._cli_train import add_runs, add_teachers, add_train

    add_train(subparsers, lazy=getattr(subparsers, "otviz_lazy", False))
    add_runs(subparsers)
    add_teachers(subparsers)


def _add_sweep(subparsers: Any) -> None:
    from otviz._cli_sweep import add_sweep

    add_sweep(subparsers)


SUBCOMMANDS: list[Callable[[Any], None]] = [_add_align, _add_train_commands, _add_sweep, _add_dashboard]


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The ``otviz`` argument parser.

    With ``lazy=True`` (what :func:`main` uses), a subcommand whose options need
    heavy imports adds them only when that subcommand is parsed or its help shown.
    """
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
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands",
                                       parser_class=_LazyParser)
    subparsers.otviz_lazy = lazy
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input or an unusable store: one line, exit code 2."""
    import sqlite3

    errors: list[type[BaseException]] = [CommandError, ValueError, TypeError, OSError, sqlite3.Error]
    runs = sys.modules.get("otviz.runs")
    if runs is not None:  # imported by every command that opens the run store
        errors.append(runs.RunStoreError)
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``otviz`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Bad options exit through argparse (``SystemExit`` with code 2 and a message that lists the
    valid choices), as a command line should. Bad input and store errors (a missing, corrupt,
    locked or read-only store, a bad file, a value the library refuses) print one line,
    ``otviz <command>: error: ...``, and return 2; with the environment variable
    ``OTVIZ_DEBUG=1`` they raise instead, with their traceback. Unexpected errors keep
    their traceback (exit code 1).
    """
    parser = build_parser(lazy=True)
    args = parser.parse_args(None if argv is None else list(argv))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"otviz {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`otviz ... | head`): stop quietly, as a Unix filter does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        if not isinstance(exc, _user_errors()) or os.environ.get("OTVIZ_DEBUG", "") not in ("", "0"):
            raise
        # The library's and the store's messages name the problem and the fix.
        print(f"otviz {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
