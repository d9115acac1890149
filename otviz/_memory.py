"""Memory limit for models read from files: estimate before allocating, refuse above a limit.

A checkpoint declares its architecture in a few bytes (an otviz checkpoint's
``model_config``, a Hugging Face ``config.json``, a ``torch.export`` archive's
tensor table), and building that architecture allocates its parameters. Every
loader of otviz estimates the bytes the declared model needs *before* building
it (on PyTorch's ``meta`` device, which records shapes and dtypes without
storage, or from the file's own size tables) and refuses a model above the
limit with :class:`ModelTooLargeError`.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import IO, Any, Callable

import torch
from torch import nn

__all__ = ["DEFAULT_MAX_BYTES", "ModelTooLargeError", "format_bytes", "module_nbytes", "meta_nbytes",
           "check_limit", "zip_nbytes"]

#: Default memory limit of a model read from a file: 2 GiB of parameters and buffers
#: (a 500M-parameter model in float32, a 1B-parameter model in float16).
DEFAULT_MAX_BYTES: int = 2 * 1024**3


class ModelTooLargeError(ValueError):
    """A model whose declared size exceeds the memory limit (raised before anything is allocated).

    Attributes
    ----------
    nbytes : int
        Estimated bytes of the model's parameters and buffers.
    max_bytes : int
        The limit in force.
    """

    def __init__(self, message: str, nbytes: int, max_bytes: int) -> None:
        super().__init__(message)
        self.nbytes = int(nbytes)
        self.max_bytes = int(max_bytes)


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: bytes in binary units (KiB, MiB, GiB, TiB)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def module_nbytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, ``sum(numel * element_size)`` (works on ``meta``)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:  # tied weights count once
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return int(total)


def meta_nbytes(build: Callable[[], nn.Module]) -> int:
    """Bytes the module built by ``build()`` would hold, measured by building it on the meta device.

    Parameters
    ----------
    build : callable
        Builds the module; called inside ``with torch.device("meta")`` so that
        no parameter storage is allocated.

    Returns
    -------
    int
        :func:`module_nbytes` of the meta module.
    """
    with torch.device("meta"):
        module = build()
    return module_nbytes(module)


def check_limit(nbytes: int, max_bytes: int | None, what: str, *, fix: str = "",
                of: str = " of parameters and buffers", done: str = "nothing was allocated") -> None:
    """Raise :class:`ModelTooLargeError` when ``nbytes > max_bytes`` (``None`` = no limit).

    Parameters
    ----------
    nbytes : int
        Estimated bytes.
    max_bytes : int or None
        The limit; ``None`` disables the check.
    what : str
        What is being loaded, for the message.
    fix : str, optional
        Extra advice appended to the message.
    of : str, optional
        What the bytes are, after the amount (" of parameters and buffers" for a model).
    done : str, optional
        What the refusal spared ("nothing was allocated" for a model, "nothing was read" for a probe).
    """
    if max_bytes is None:
        return
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float)) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive number of bytes or None, got {max_bytes!r}")
    if nbytes > max_bytes:
        raise ModelTooLargeError(
            f"{what} would need {format_bytes(nbytes)} ({nbytes:,} bytes){of}, "
            f"more than the memory limit of {format_bytes(max_bytes)}; {done}. "
            + (fix or "Raise the limit (max_bytes=...) if this machine has the memory."),
            nbytes, int(max_bytes),
        )


def zip_nbytes(source: str | os.PathLike[str] | bytes | IO[bytes], *, exclude: str | None = None) -> int | None:
    """Sum of the declared uncompressed sizes of a zip archive's members (torch.save, .pt2), or None.

    Reads only the archive's central directory; returns ``None`` for data
    that is not a zip archive (e.g. torch's legacy format).

    Parameters
    ----------
    source : path-like, bytes or seekable binary file object
        The archive.
    exclude : str, optional
        Leave out the entries whose name contains this (``"/data/"``: a torch
        archive's tensor data, to size the rest).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        handle: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        handle = Path(source)
    else:
        handle = source
    pos = handle.tell() if hasattr(handle, "tell") else None
    try:
        if not zipfile.is_zipfile(handle):
            return None
        with zipfile.ZipFile(handle) as z:
            return int(sum(i.file_size for i in z.infolist() if exclude is None or exclude not in i.filename))
    except (zipfile.BadZipFile, OSError):
        return None
    finally:
        if pos is not None:
            handle.seek(pos)
