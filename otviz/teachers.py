"""Shipped teacher checkpoints: list, load, save and rebuild them.

The package directory ``otviz/teachers/`` holds small teacher checkpoints
trained from fixed seeds by :func:`build_teachers` (also available as
``scripts/make_teachers.py`` and ``otviz teachers --rebuild``). Their names
follow ``{arch}-{dataset}[-{first}to{last}]``, e.g. ``cnn-mnist5k-0to4`` is a
:class:`~otviz.models.SmallCNN` trained on MNIST classes 0-4 (the source task
of the ``transfer`` setting) and ``cnn-mnist5k`` one trained on all ten
classes (the teacher of ``distill`` and ``transfer-digits``).

Checkpoint format (``"otviz-teacher/1"``)
-----------------------------------------
A dict holding only tensors, strings, numbers, lists and dicts, so that
``torch.load(path, weights_only=True)`` reads it without unpickling code::

    {
        "format": "otviz-teacher/1",
        "name": "cnn-mnist5k",
        "arch": "cnn",                       # key of otviz.models.MODELS
        "model_config": {"width": 1.0, "num_classes": 10, "in_channels": 1},
        "state_dict": {...},                 # tensors
        "task": {"dataset": "mnist5k", "classes": [0, ..., 9],
                 "setting": "...", "test_size": 0.2, "split_seed": 0},
        "metrics": {"test_accuracy": 0.97, "train_accuracy": ..., "epochs": ...,
                    "train_seconds": ...},
        "seed": 0,
        "description": "...",
        "created_with": {"torch": "2.x", "otviz": "0.1.0"},
    }

Every load goes through ``torch.load(..., weights_only=True)``; a file that is
not a compatible checkpoint raises :class:`ValueError` naming the problem.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from ._files import check_regular_file
from ._memory import DEFAULT_MAX_BYTES, check_limit, format_bytes, meta_nbytes, module_nbytes, zip_nbytes
from .data import TaskData, _subset
from .models import MODELS, accuracy, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "TEACHER_DIR",
    "TEACHER_SPECS",
    "TeacherSpec",
    "list_teachers",
    "teacher_names",
    "load_teacher",
    "load_checkpoint",
    "model_from_checkpoint",
    "checkpoint_nbytes",
    "check_task",
    "save_checkpoint",
    "teacher_task",
    "train_teacher",
    "build_teachers",
]

CHECKPOINT_FORMAT = "otviz-teacher/1"
#: Directory of the shipped teacher checkpoints.
TEACHER_DIR = Path(__file__).resolve().parent / "teachers"
_REQUIRED_KEYS = ("format", "arch", "model_config", "state_dict")


@dataclass(frozen=True)
class TeacherSpec:
    """Recipe of a shipped teacher.

    Attributes
    ----------
    arch : str
        Model family (key of :data:`otviz.models.MODELS`).
    dataset : str
        Built-in dataset (its fixed training split is used for training and
        its test split for the reported accuracy).
    classes : tuple of int
        Classes learned, relabelled ``0..len-1`` in this order.
    width : float
        Width multiplier.
    epochs : int
        Training epochs (Adam, cosine-annealed learning rate).
    lr : float
        Peak learning rate.
    batch_size : int
        Minibatch size.
    shift : int
        Data augmentation: each training image is translated by a random
        whole number of pixels in ``[-shift, shift]`` along each axis
        (0 = no augmentation).
    role : str
        Which settings use this teacher.
    """

    arch: str
    dataset: str
    classes: tuple[int, ...]
    width: float = 1.0
    epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 64
    shift: int = 0
    role: str = ""

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the model (see :func:`otviz.models.build_model`)."""
        X, _ = _dataset_shape(self.dataset)
        kw: dict[str, Any] = {"width": self.width, "num_classes": len(self.classes)}
        if self.arch == "mlp":
            kw["in_features"] = int(np.prod(X))
        return kw


def _dataset_shape(dataset: str) -> tuple[tuple[int, ...], int]:
    from .data import load_dataset

    X, y = load_dataset(dataset)
    return tuple(X.shape[1:]), len(y)


_LOW, _ALL = tuple(range(5)), tuple(range(10))

#: Recipes of the shipped teachers: name -> :class:`TeacherSpec`.
TEACHER_SPECS: dict[str, TeacherSpec] = {
    "cnn-mnist5k-0to4": TeacherSpec(
        "cnn", "mnist5k", _LOW, epochs=15, lr=1e-2, shift=2, role="source of transfer, transfer-small"
    ),
    "cnn-mnist5k": TeacherSpec(
        "cnn", "mnist5k", _ALL, epochs=15, lr=1e-2, shift=2, role="teacher of distill, transfer-digits"
    ),
    "mlp-mnist5k-0to4": TeacherSpec(
        "mlp", "mnist5k", _LOW, epochs=20, lr=3e-3, shift=1, role="source of transfer (arch='mlp')"
    ),
    "mlp-mnist5k": TeacherSpec(
        "mlp", "mnist5k", _ALL, epochs=20, lr=3e-3, shift=1, role="teacher of distill (arch='mlp')"
    ),
    "cnn-digits-0to4": TeacherSpec(
        "cnn", "digits", _LOW, epochs=20, lr=3e-3, batch_size=32, role="source of transfer (dataset='digits')"
    ),
    "cnn-digits": TeacherSpec(
        "cnn", "digits", _ALL, epochs=20, lr=3e-3, batch_size=32, role="teacher of distill (dataset='digits')"
    ),
    "mlp-digits-0to4": TeacherSpec(
        "mlp", "digits", _LOW, epochs=30, lr=3e-3, batch_size=32,
        role="source of transfer (dataset='digits', arch='mlp')",
    ),
    "mlp-digits": TeacherSpec(
        "mlp", "digits", _ALL, epochs=30, lr=3e-3, batch_size=32,
        role="teacher of distill (dataset='digits', arch='mlp')",
    ),
}


# --------------------------------------------------------------------------- io


def _plain(obj: Any, where: str = "metadata") -> Any:
    """Convert metadata to types ``torch.load(weights_only=True)`` accepts."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v, where) for v in obj]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dictionary keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    raise TypeError(
        f"{where}: cannot store a {type(obj).__name__} in a checkpoint; use str, int, float, "
        "bool, None, lists, dicts or tensors"
    )


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    task: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    seed: int | None = None,
    **meta: Any,
) -> Path:
    """Save a model as an ``otviz-teacher/1`` checkpoint.

    Parameters
    ----------
    model : nn.Module
        A model built by :func:`otviz.models.build_model` (it must have
        ``arch`` and ``config`` attributes).
    path : path-like
        Destination file (parent directories are created). The file is
        written atomically (temporary file, then rename).
    name : str, optional
        Teacher name; default: the file stem.
    task : dict, optional
        What the model was trained on, e.g. ``{"dataset": "mnist5k",
        "classes": [0, 1, 2, 3, 4]}``.
    metrics : dict, optional
        E.g. ``{"test_accuracy": 0.98}``.
    seed : int, optional
        Training seed.
    **meta
        Extra metadata (plain types only), stored at the top level.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If the model is not of a registered family.
    TypeError
        If metadata holds a type that ``weights_only`` loading would reject.
    """
    arch = getattr(model, "arch", None)
    config = getattr(model, "config", None)
    if arch not in MODELS or not isinstance(config, dict):
        raise ValueError(
            "save_checkpoint needs a model from otviz.models.build_model (with .arch and .config); "
            f"got {type(model).__name__} (valid architectures: {', '.join(map(repr, MODELS))})"
        )
    path = Path(path)
    reserved = {"format", "arch", "model_config", "state_dict", "created_with"} & set(meta)
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are reserved; rename them")
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "name": name if name is not None else path.stem,
        "arch": str(arch),
        "model_config": _plain(dict(config), "model_config"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "task": _plain(task or {}, "task"),
        "metrics": _plain(metrics or {}, "metrics"),
        "seed": None if seed is None else int(seed),
        "created_with": {"torch": str(torch.__version__), "otviz": str(__version__)},
    }
    ckpt.update(_plain(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(ckpt, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _load_error_detail(exc: BaseException) -> str:
    """A short reason from a torch.load failure (without torch's advice to disable weights_only)."""
    msg = str(exc)
    if isinstance(exc, EOFError) or not msg.strip():
        return f"{type(exc).__name__}: the data is empty or truncated"
    if "WeightsUnpickler error:" in msg:
        msg = msg.split("WeightsUnpickler error:", 1)[1]
        msg = msg.split(" Please use", 1)[0]
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(text) > 200:
        cut = text.rfind(". ", 0, 200)
        text = text[: cut + 1] if cut > 0 else text[:200] + "..."
    return f"{type(exc).__name__}: {text}"


#: Largest structure record (``data.pkl`` and the archive's small files: everything but the
#: tensor data) read from a checkpoint archive; an otviz checkpoint's is a few KiB.
MAX_STRUCTURE_BYTES: int = 16 * 1024**2


def _archive_structure_nbytes(source: Any) -> int | None:
    """Declared uncompressed bytes of a torch zip archive's records other than tensor data, or None."""
    from otviz._memory import zip_nbytes

    return zip_nbytes(source, exclude="/data/")


def _torch_load(handle: Any, label: str, map_location: str) -> Any:
    pos = handle.tell() if hasattr(handle, "tell") else None
    try:
        return torch.load(handle, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a checkpoint we can read"
        raise ValueError(
            f"{label} is not a compatible otviz teacher checkpoint: torch.load(weights_only=True) "
            f"could not read it ({_load_error_detail(exc)})"
        ) from None
    finally:
        if pos is not None:
            handle.seek(pos)


def check_task(task: Any, label: str = "the checkpoint") -> dict[str, Any]:
    """Validate a checkpoint's ``task`` metadata; returns it as a dict (``{}`` for none).

    A task names a dataset and the classes learned, relabelled
    ``0..len(classes)-1`` in that order: a non-empty list of distinct
    non-negative class indices. The dataset may be one otviz does not ship (a
    teacher trained on your own data): whether it is a built-in one
    (:data:`otviz.data.DATASETS`) and the classes' upper bound are checked by
    :func:`teacher_task`, when data must be built from it.
    ``test_size`` must lie in (0, 1) and ``split_seed`` be an integer.

    Raises
    ------
    ValueError
        Naming the first field that is wrong and what it should hold.
    """
    from .data import DATASETS, _preview

    if task is None:
        return {}
    if not isinstance(task, dict):
        raise ValueError(f"{label}: 'task' must be a dict such as {{'dataset': 'mnist5k', 'classes': [0, 1, 2]}}, "
                         f"got a {type(task).__name__}")
    where = f"{label}: task"
    if "dataset" in task and not isinstance(task["dataset"], str):
        raise ValueError(f"{where}.dataset must be a dataset name (e.g. {next(iter(DATASETS))!r}), got "
                         f"{task['dataset']!r}")
    if "classes" in task:
        classes = task["classes"]
        if not isinstance(classes, (list, tuple)) or not classes:
            raise ValueError(f"{where}.classes must be a non-empty list of class indices, got "
                             f"{_preview(classes)}")
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or c < 0]
        if bad:
            raise ValueError(f"{where}.classes must hold non-negative integers (class indices of the dataset), "
                             f"got {bad[0]!r} in {_preview(classes)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"{where}.classes lists a class twice: {_preview(classes)}")
    if "test_size" in task:
        ts = task["test_size"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 < ts < 1:
            raise ValueError(f"{where}.test_size must be a fraction in (0, 1), got {ts!r}")
    if "split_seed" in task:
        from .data import _check_seed

        _check_seed(task["split_seed"], f"{where}.split_seed")
    return task


def _check_structure(ckpt: Any, label: str) -> None:
    """Format tag, keys, architecture, metadata types and tensor-only state dict (no tensor data read)."""
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{label} is not an otviz teacher checkpoint: it holds a {type(ckpt).__name__}, "
            f"expected a dict with format {CHECKPOINT_FORMAT!r}"
        )
    fmt = ckpt.get("format")
    if fmt != CHECKPOINT_FORMAT:
        if isinstance(fmt, str) and fmt.startswith("otviz-teacher/"):
            raise ValueError(f"{label} has checkpoint format {fmt!r}; this version of otviz reads {CHECKPOINT_FORMAT!r}")
        raise ValueError(
            f"{label} is not an otviz teacher checkpoint (format tag {fmt!r}, expected {CHECKPOINT_FORMAT!r}); "
            "a bare state_dict cannot be loaded as a teacher, save it with otviz.teachers.save_checkpoint"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{label} is an incomplete otviz teacher checkpoint: missing {', '.join(missing)}")
    if not isinstance(ckpt["arch"], str) or ckpt["arch"] not in MODELS:
        raise ValueError(
            f"{label} uses architecture {ckpt['arch']!r}, unknown here; valid architectures: "
            f"{', '.join(map(repr, MODELS))}"
        )
    if not isinstance(ckpt["model_config"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise ValueError(f"{label}: 'model_config' and 'state_dict' must be dicts")
    not_tensors = [k for k, v in ckpt["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{label}: state_dict entry {not_tensors[0]!r} is not a tensor")
    check_task(ckpt.get("task"), label)


def _load_weights(model: nn.Module, ckpt: dict[str, Any]) -> None:
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(s.strip() for s in first[:3])
        raise ValueError(
            f"checkpoint weights do not match architecture {ckpt['arch']!r} with config "
            f"{ckpt['model_config']!r}: {detail[:300]}"
        ) from None


def load_checkpoint(source: str | os.PathLike[str] | bytes | bytearray | IO[bytes], *,
                    max_bytes: int | None = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Read and validate an ``otviz-teacher/1`` checkpoint, checking everything before reading any tensor.

    The checks run in this order, each before anything it guards is decompressed
    or allocated:

    1. the sizes the zip archive declares: all records together at most
       `max_bytes`, the structure records (``data.pkl`` and the archive's small
       files) at most :data:`MAX_STRUCTURE_BYTES`;
    2. the structure, read with ``torch.load(..., map_location="meta")`` (tensor
       records are not read): the format tag, the keys, the architecture, the
       ``task`` metadata (:func:`check_task`), a state dict of tensors only;
    3. the architecture's size (:func:`checkpoint_nbytes`, at most `max_bytes`)
       and the state dict against it (same names and shapes, on the meta device);
    4. only then the tensors are read.

    Parameters
    ----------
    source : path-like, bytes or binary file object
        The checkpoint file, its content (e.g. an upload), or an open file.
    max_bytes : int or None, default 2 GiB (:data:`otviz._memory.DEFAULT_MAX_BYTES`)
        Refuse, before reading any tensor, a checkpoint whose archive declares
        more uncompressed bytes than this or whose architecture needs more
        (``None``: no limit).

    Returns
    -------
    dict
        The checkpoint dict (see the module docstring), read with
        ``torch.load(..., weights_only=True, map_location="cpu")``.

    Raises
    ------
    FileNotFoundError
        If a path is given that does not exist.
    ValueError
        If the content is not a compatible checkpoint (unreadable, wrong
        format tag, missing keys, unknown architecture, bad task metadata,
        weights that do not fit the architecture).
    otviz._memory.ModelTooLargeError
        If the archive or the architecture exceeds `max_bytes` (a subclass of ValueError).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, handle = "the uploaded data", io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not os.path.lexists(p):
            raise FileNotFoundError(f"checkpoint file not found: {p}")
        check_regular_file(p, "checkpoint file")  # a FIFO or a device is refused before anything blocks
        label, handle = f"file {p}", p
    elif hasattr(source, "read"):
        label, handle = "the given file object", source
    else:
        raise TypeError(f"source must be a path, bytes or a binary file object, got {type(source).__name__}")
    declared = zip_nbytes(source)
    if declared is not None:
        check_limit(declared, max_bytes, f"{label} (by the sizes its archive declares)")
    structure = _archive_structure_nbytes(source)
    if structure is not None and structure > MAX_STRUCTURE_BYTES:
        raise ValueError(
            f"{label} declares {format_bytes(structure)} of records besides its tensors (an otviz checkpoint "
            f"holds a few KiB there, at most {format_bytes(MAX_STRUCTURE_BYTES)} is read); nothing was "
            "decompressed. It is not an otviz teacher checkpoint"
        )
    skeleton = _torch_load(handle, label, "meta")   # the pickle only: no tensor record is read
    _check_structure(skeleton, label)
    model = _meta_model(skeleton, max_bytes)
    _load_weights(model, skeleton)                   # names and shapes, on the meta device
    ckpt = _torch_load(handle, label, "cpu")
    _check_structure(ckpt, label)                    # the same pickle, read again
    return ckpt


def _meta_model(ckpt: dict[str, Any], max_bytes: int | None) -> nn.Module:
    """The checkpoint's architecture on the meta device, refused above `max_bytes`."""
    try:
        with torch.device("meta"):
            model = build_model(ckpt["arch"], **ckpt["model_config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint model_config {ckpt['model_config']!r} is invalid: {exc}") from None
    check_limit(module_nbytes(model), max_bytes,
                f"the checkpoint's architecture {ckpt['arch']!r} with config {ckpt['model_config']!r}")
    return model


def checkpoint_nbytes(ckpt: dict[str, Any]) -> int:
    """Bytes of parameters and buffers the architecture a checkpoint declares would need.

    The model is built from ``ckpt["arch"]`` and ``ckpt["model_config"]`` on
    PyTorch's ``meta`` device (shapes without storage), so a few-byte
    ``model_config`` that declares a huge width costs nothing to check.

    Parameters
    ----------
    ckpt : dict
        As returned by :func:`load_checkpoint`.

    Returns
    -------
    int
        ``sum(numel * element_size)`` over the parameters and buffers.

    Raises
    ------
    ValueError
        If the stored configuration is invalid for the architecture.
    """
    try:
        return meta_nbytes(lambda: build_model(ckpt["arch"], **ckpt["model_config"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint model_config {ckpt['model_config']!r} is invalid: {exc}") from None


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu", *,
                          max_bytes: int | None = DEFAULT_MAX_BYTES) -> nn.Module:
    """Rebuild the model of a checkpoint dict and load its weights.

    Parameters
    ----------
    ckpt : dict
        As returned by :func:`load_checkpoint`.
    device : str or torch.device, default "cpu"
        Where to put the model.
    max_bytes : int or None, default 2 GiB (:data:`otviz._memory.DEFAULT_MAX_BYTES`)
        Refuse, before building it, a model whose declared architecture
        (:func:`checkpoint_nbytes`) needs more bytes than this (``None``: no
        limit).

    Returns
    -------
    nn.Module
        The model in eval mode.

    Raises
    ------
    ValueError
        If the stored configuration or weights do not fit the architecture.
    otviz._memory.ModelTooLargeError
        If the declared architecture needs more than `max_bytes` (a subclass
        of ValueError); nothing is allocated.
    """
    nbytes = checkpoint_nbytes(ckpt)
    check_limit(nbytes, max_bytes,
                f"the checkpoint's architecture {ckpt['arch']!r} with config {ckpt['model_config']!r}")
    try:
        model = build_model(ckpt["arch"], **ckpt["model_config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint model_config {ckpt['model_config']!r} is invalid: {exc}") from None
    _load_weights(model, ckpt)
    return model.to(device).eval()


def _info(ckpt: dict[str, Any], path: Path | None) -> dict[str, Any]:
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info["path"] = None if path is None else str(path)
    return info


def teacher_names(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the teacher checkpoints in `directory` (default: shipped)."""
    d = TEACHER_DIR if directory is None else Path(directory)
    return sorted(p.stem for p in d.glob("*.pt")) if d.is_dir() else []


def load_teacher(
    name_or_path: str | os.PathLike[str] | bytes,
    device: str | torch.device = "cpu",
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a teacher by shipped name, file path or checkpoint bytes.

    Parameters
    ----------
    name_or_path : str, path-like or bytes
        A shipped teacher name (see :func:`list_teachers`), the path of a
        checkpoint file, or its content as bytes.
    device : str or torch.device, default "cpu"
        Where to put the model.
    max_bytes : int or None, default 2 GiB
        Memory limit, checked before anything is allocated (see
        :func:`model_from_checkpoint`).

    Returns
    -------
    model : nn.Module
        The teacher in eval mode.
    info : dict
        The checkpoint's metadata (everything but the weights) plus
        ``"path"``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the shipped teachers) or a
        file that is not a compatible checkpoint.

    Examples
    --------
    >>> model, info = load_teacher("cnn-mnist5k-0to4")
    >>> info["task"]["classes"]
    [0, 1, 2, 3, 4]
    """
    if isinstance(name_or_path, (bytes, bytearray)):
        ckpt = load_checkpoint(name_or_path, max_bytes=max_bytes)
        return model_from_checkpoint(ckpt, device, max_bytes=max_bytes), _info(ckpt, None)
    shipped = TEACHER_DIR / f"{name_or_path}.pt"
    if isinstance(name_or_path, str) and "/" not in name_or_path and shipped.is_file():
        path = shipped
    else:
        path = Path(name_or_path)
        if not path.is_file():
            names = teacher_names()
            raise ValueError(
                f"unknown teacher {str(name_or_path)!r}: neither a shipped teacher nor a checkpoint file; "
                f"shipped teachers: {', '.join(names) if names else '(none; run otviz teachers --rebuild)'}"
            )
    ckpt = load_checkpoint(path, max_bytes=max_bytes)
    return model_from_checkpoint(ckpt, device, max_bytes=max_bytes), _info(ckpt, path)


def list_teachers(directory: str | os.PathLike[str] | None = None, *, as_frame: bool = False) -> Any:
    """Describe the available teacher checkpoints.

    Parameters
    ----------
    directory : path-like, optional
        Where to look; default: the shipped teachers (:data:`TEACHER_DIR`).
    as_frame : bool, default False
        Return a pandas DataFrame instead of a list of dicts.

    Returns
    -------
    list of dict or pandas.DataFrame
        One entry per checkpoint with ``name``, ``arch``, ``width``,
        ``num_classes``, ``dataset``, ``classes``, ``test_accuracy``,
        ``role`` and ``path``. Files that are not compatible checkpoints
        are skipped.
    """
    from otviz._teacher_meta import list_teachers as _list

    return _list(directory, as_frame=as_frame, read=load_checkpoint)


def teacher_task(info: dict[str, Any]) -> TaskData:
    """The task (train/test data) a checkpoint was trained on.

    Parameters
    ----------
    info : dict
        Checkpoint metadata, as returned by :func:`load_teacher` (or the
        checkpoint dict itself).

    Returns
    -------
    TaskData
        Built from the same dataset, classes and split as in training.
    """
    task = check_task(info.get("task") or {})
    if "dataset" not in task or "classes" not in task:
        raise ValueError("the checkpoint does not record its task (need task.dataset and task.classes)")
    from .data import _preview, load_dataset

    _, y = load_dataset(task["dataset"])
    n_classes = int(y.max()) + 1
    outside = [c for c in task["classes"] if c >= n_classes]
    if outside:
        raise ValueError(f"the checkpoint's task.classes {_preview(task['classes'])} name class {outside[0]}, but "
                         f"dataset {task['dataset']!r} has classes 0-{n_classes - 1}")
    return _subset(
        task["dataset"],
        task["classes"],
        k=None,
        seed=0,
        test_size=task.get("test_size", 0.2),
        split_seed=task.get("split_seed", 0),
    )


# --------------------------------------------------------------------- training


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by random whole pixels in [-max_shift, max_shift] (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * max_shift)
    out = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return torch.gather(out, 3, cols)



def train_teacher(
    name: str,
    *,
    seed: int = 0,
    epochs: int | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one shipped teacher from its recipe in :data:`TEACHER_SPECS`.

    Adam with a cosine-annealed learning rate, cross-entropy, minibatches
    shuffled by a seeded generator; ``torch.manual_seed(seed)`` fixes the
    initialisation and deterministic algorithms are enforced during
    training. The same seed on the same machine and torch version gives
    the same weights.

    Parameters
    ----------
    name : str
        Teacher name (key of :data:`TEACHER_SPECS`).
    seed : int, default 0
        Training seed.
    epochs : int, optional
        Override the recipe's number of epochs.
    log : callable or None, default print
        Receives one progress line per epoch.

    Returns
    -------
    model : nn.Module
        The trained model, in eval mode, on CPU.
    meta : dict
        Keyword arguments for :func:`save_checkpoint` (name, task, metrics,
        seed, description, role).
    """
    if name not in TEACHER_SPECS:
        raise ValueError(f"unknown teacher recipe {name!r}; valid: {', '.join(TEACHER_SPECS)}")
    spec = TEACHER_SPECS[name]
    n_epochs = spec.epochs if epochs is None else int(epochs)
    if n_epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs!r}")
    data = _subset(spec.dataset, spec.classes, k=None, seed=0)
    Xtr, ytr, Xte, yte = data.X_train, data.y_train, data.X_test, data.y_test

    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = build_model(spec.arch, **spec.model_kwargs())
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        steps = n_epochs * ((len(ytr) + spec.batch_size - 1) // spec.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        t0 = time.perf_counter()
        for ep in range(n_epochs):
            model.train()
            perm = torch.randperm(len(ytr), generator=gen)
            total = 0.0
            for i in range(0, len(ytr), spec.batch_size):
                idx = perm[i : i + spec.batch_size]
                if len(idx) < 2 and spec.arch == "cnn":
                    continue  # BatchNorm needs more than one sample
                xb = Xtr[idx]
                if spec.shift:
                    xb = _random_shift(xb, spec.shift, gen)
                loss = F.cross_entropy(model(xb), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            if log is not None:
                acc = accuracy(model, Xte, yte)
                log(
                    f"  {name}: epoch {ep + 1}/{n_epochs} loss {total / len(ytr):.4f} "
                    f"test acc {acc:.4f} ({time.perf_counter() - t0:.1f} s)"
                )
        seconds = time.perf_counter() - t0
    finally:
        torch.use_deterministic_algorithms(prev_det)
    model.eval()
    meta = {
        "name": name,
        "task": {
            "dataset": spec.dataset,
            "classes": list(spec.classes),
            "setting": spec.role,
            "test_size": 0.2,
            "split_seed": 0,
            "n_train": int(len(ytr)),
            "n_test": int(len(yte)),
        },
        "metrics": {
            "test_accuracy": accuracy(model, Xte, yte),
            "train_accuracy": accuracy(model, Xtr, ytr),
            "epochs": n_epochs,
            "train_seconds": round(seconds, 2),
        },
        "seed": int(seed),
        "role": spec.role,
        "description": (
            f"{spec.arch} width {spec.width:g} trained on {spec.dataset} classes "
            f"{spec.classes[0]}-{spec.classes[-1]} ({n_epochs} epochs, Adam lr {spec.lr:g}, "
            f"batch {spec.batch_size}, shift {spec.shift}, seed {seed})"
        ),
        "training": {
            "optimizer": "adam", "lr": spec.lr, "schedule": "cosine",
            "batch_size": spec.batch_size, "shift": spec.shift,
        },
    }
    return model, meta


def build_teachers(
    out_dir: str | os.PathLike[str] | None = None,
    names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    epochs: int | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Train the teachers and write their checkpoints.

    Building all eight shipped teachers takes about 40 s on a 2-core CPU
    (the two MNIST CNNs about 7 s and 16 s, the others a few seconds each);
    see ``scripts/make_teachers.py`` for the measured table.

    Parameters
    ----------
    out_dir : path-like, optional
        Destination directory; default: the package's teacher directory
        (:data:`TEACHER_DIR`), overwriting the shipped checkpoints.
    names : sequence of str, optional
        Teachers to build; default: all of :data:`TEACHER_SPECS`.
    seed : int, default 0
        Training seed.
    epochs : int, optional
        Override every recipe's number of epochs (e.g. 1 for a smoke test).
    log : callable or None, default print
        Progress sink.

    Returns
    -------
    list of dict
        One entry per teacher: name, path, test_accuracy, train_seconds.
    """
    names = list(TEACHER_SPECS) if names is None else list(names)
    unknown = [n for n in names if n not in TEACHER_SPECS]
    if unknown:
        raise ValueError(f"unknown teacher(s) {unknown}; valid: {', '.join(TEACHER_SPECS)}")
    out = TEACHER_DIR if out_dir is None else Path(out_dir)
    results = []
    for name in names:
        if log is not None:
            log(f"training {name} ...")
        model, meta = train_teacher(name, seed=seed, epochs=epochs, log=log)
        path = save_checkpoint(model, out / f"{name}.pt", **meta)
        m = meta["metrics"]
        results.append(
            {"name": name, "path": str(path), "test_accuracy": m["test_accuracy"], "train_seconds": m["train_seconds"]}
        )
        if log is not None:
            log(
                f"{name}: test accuracy {m['test_accuracy']:.4f}, {m['train_seconds']:.1f} s, "
                f"{path.stat().st_size / 1024:.0f} KiB -> {path}"
            )
    return results
