"""The shipped teachers' metadata, read without torch.

:func:`list_teachers` describes the teacher checkpoints of a folder from the
records the checkpoints carry besides their weights (name, architecture, task,
test accuracy), so that listing them (the dashboard's Train page) does not load
torch. A checkpoint is a zip archive written by ``torch.save``; its
``<archive>/data.pkl`` record is a pickle of the checkpoint dict in which each
tensor is a call to a torch function over a reference to a tensor record. It is
read here with an unpickler that builds plain Python values only: every global
the pickle names resolves to an inert stand-in (nothing is imported or called),
and tensor records are never opened.

A file is listed when this record is an ``otviz-teacher/1`` checkpoint dict
with the required keys and a known architecture, as in
:func:`otviz.teachers.list_teachers`; the full check of the weights (names,
shapes, memory) happens when the teacher is loaded
(:func:`otviz.teachers.load_checkpoint`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from otviz._recipes import ALIGNABLE_LAYERS

__all__ = ["TEACHER_DIR", "COLUMNS", "checkpoint_metadata", "list_teachers"]

#: The shipped teachers (same folder as :data:`otviz.teachers.TEACHER_DIR`).
TEACHER_DIR = Path(__file__).resolve().parent / "teachers"

#: Columns of :func:`list_teachers`, as in :func:`otviz.teachers.list_teachers`.
COLUMNS = ("name", "arch", "width", "num_classes", "dataset", "classes", "test_accuracy", "role", "path")

_FORMAT = "otviz-teacher/1"  # otviz.teachers.CHECKPOINT_FORMAT (a test checks they agree)
_REQUIRED = ("format", "arch", "model_config", "state_dict")
_MAX_RECORD = 1 << 20  # bytes of data.pkl read at most (an otviz checkpoint holds a few KiB there)


class _Inert:
    """Stands for whatever a pickle global builds (a tensor, a storage type, a dtype)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _Dict(dict):
    """An ``OrderedDict`` of the pickle (a state dict, whose ``_metadata`` attribute is kept aside)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Plain values only: an ``OrderedDict`` becomes a dict, every other global an inert stand-in."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _Dict
        return _Inert

    def persistent_load(self, pid: Any) -> _Inert:  # a tensor record: not read
        return _Inert()


def checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict of `path` without its tensors (each one an inert stand-in).

    Raises
    ------
    ValueError
        If the file is not a zip archive written by ``torch.save`` with a
        ``data.pkl`` record of at most 1 MiB, or the record is not an
        ``otviz-teacher/1`` checkpoint dict with a known architecture.
    """
    label = f"file {path}"
    try:
        with zipfile.ZipFile(path) as archive:
            records = [i for i in archive.infolist()
                       if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
            if len(records) != 1:
                raise ValueError(f"{label} is not a checkpoint written by torch.save (no data.pkl record)")
            if records[0].file_size > _MAX_RECORD:
                raise ValueError(f"{label} is not an otviz teacher checkpoint (its data.pkl record "
                                 f"declares {records[0].file_size} bytes)")
            with archive.open(records[0]) as f:
                ckpt = _MetadataUnpickler(f).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(label):
            raise
        raise ValueError(f"{label} cannot be read as a checkpoint: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(f"{label} is not an {_FORMAT} checkpoint")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"{label} is an incomplete otviz teacher checkpoint: missing {', '.join(missing)}")
    if ckpt["arch"] not in ALIGNABLE_LAYERS or not isinstance(ckpt["model_config"], dict):
        raise ValueError(f"{label} has an unknown architecture {ckpt['arch']!r} or a bad model_config")
    if not isinstance(ckpt.get("task") or {}, dict) or not isinstance(ckpt.get("metrics") or {}, dict):
        raise ValueError(f"{label}: 'task' and 'metrics' must be dicts")
    return ckpt


def list_teachers(directory: str | os.PathLike[str] | None = None, *, as_frame: bool = False,
                  read: Any = None) -> Any:
    """Describe the teacher checkpoints of a folder, like :func:`otviz.teachers.list_teachers`, without torch.

    Parameters
    ----------
    directory : path-like, optional
        Where to look; default: the shipped teachers (:data:`TEACHER_DIR`).
    as_frame : bool, default False
        Return a pandas DataFrame (columns :data:`COLUMNS`) instead of a list of dicts.
    read : callable, optional
        How a file is read (default :func:`checkpoint_metadata`, the metadata
        record only; :func:`otviz.teachers.list_teachers` passes its full,
        checked loader).

    Returns
    -------
    list of dict or pandas.DataFrame
        One entry per checkpoint, sorted by file name; files that are not
        otviz teacher checkpoints are skipped.
    """
    d = TEACHER_DIR if directory is None else Path(directory)
    rows = []
    for p in sorted(d.glob("*.pt"), key=lambda q: q.stem) if d.is_dir() else []:
        try:
            ckpt = (read or checkpoint_metadata)(p)
        except (ValueError, OSError):
            continue
        cfg, task = ckpt["model_config"], ckpt.get("task") or {}
        rows.append({
            "name": ckpt.get("name", p.stem),
            "arch": ckpt["arch"],
            "width": cfg.get("width"),
            "num_classes": cfg.get("num_classes"),
            "dataset": task.get("dataset"),
            "classes": task.get("classes"),
            "test_accuracy": (ckpt.get("metrics") or {}).get("test_accuracy"),
            "role": ckpt.get("role", ""),
            "path": str(p),
        })
    if as_frame:
        import pandas as pd

        return pd.DataFrame(rows, columns=list(COLUMNS))
    return rows
