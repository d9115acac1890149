"""Files from users, opened safely: regular files only, sized before they are read.

Every reader of a user's file in otviz (models, probes, configs) goes through
these helpers, so that

- a FIFO, a socket or a device (``x.pt -> /dev/zero``) is refused at once,
  before anything blocks or reads without end: only *regular* files are
  opened (symbolic links are followed and judged by their target);
- a file is sized from ``stat`` before it is read, and refused above a stated
  limit;
- a JSON document is read with a byte cap and a nesting cap, so that a huge or
  deeply nested ``config.json`` gives a ``ValueError`` naming the file instead
  of a ``MemoryError`` or a ``RecursionError``.

The check is repeated on the opened descriptor (``fstat``), and the open uses
``O_NONBLOCK`` so that even a file swapped for a FIFO between the check and
the open cannot block.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, Any

__all__ = ["check_regular_file", "open_regular", "read_bytes", "read_json", "loads_json", "MAX_JSON_BYTES",
           "MAX_JSON_DEPTH"]

#: Largest JSON document (a model's ``config.json``, a tokenizer config) otviz reads: 64 MiB.
MAX_JSON_BYTES: int = 64 * 1024**2
#: Deepest nesting of lists and objects accepted in a JSON document.
MAX_JSON_DEPTH: int = 64


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _refuse(p: Path, mode: int, what: str) -> ValueError:
    via = ""
    if p.is_symlink():
        via = f" (a link to {os.path.realpath(p)!r})"
    return ValueError(f"{what} {str(p)!r}{via} is {_kind(mode)}; otviz reads only regular files: "
                      "pass the path of a file on disk")


def check_regular_file(path: str | os.PathLike[str], what: str = "file", *,
                       max_bytes: int | None = None) -> int:
    """Check that ``path`` is a regular file (links followed) no larger than ``max_bytes``.

    Parameters
    ----------
    path : path-like
        The file.
    what : str
        How the file is named in error messages ("probe file", "model file").
    max_bytes : int, optional
        Largest size accepted, in bytes; ``None`` for no limit.

    Returns
    -------
    int
        The file's size in bytes.

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path``.
    ValueError
        If it is a FIFO, socket, device or directory, or larger than ``max_bytes``.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist; pass an existing file") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(p, st.st_mode, what)
    if max_bytes is not None and st.st_size > max_bytes:
        from ._memory import format_bytes

        raise ValueError(f"{what} {str(p)!r} has {format_bytes(st.st_size)}, above the limit of "
                         f"{format_bytes(max_bytes)} for such a file; pass a smaller file")
    return int(st.st_size)


def open_regular(path: str | os.PathLike[str], what: str = "file", *,
                 max_bytes: int | None = None) -> IO[bytes]:
    """Open a regular file for binary reading, never blocking on a FIFO or device.

    The path is checked with :func:`check_regular_file`, opened with
    ``O_NONBLOCK`` and checked again on the descriptor.

    Returns
    -------
    file object
        Opened in ``"rb"`` mode; the caller closes it.
    """
    check_regular_file(path, what, max_bytes=max_bytes)
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(Path(path), st.st_mode, what)
        if max_bytes is not None and st.st_size > max_bytes:
            check_regular_file(path, what, max_bytes=max_bytes)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike[str], what: str = "file", *, max_bytes: int) -> bytes:
    """The whole content of a regular file no larger than ``max_bytes`` (checked before reading)."""
    with open_regular(path, what, max_bytes=max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the check
        check_regular_file(path, what, max_bytes=max_bytes)
        raise ValueError(f"{what} {str(path)!r} grew while it was read; pass a file that is not being written")
    return data


def _depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text, ignoring brackets inside strings."""
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_json(path: str | os.PathLike[str], what: str = "JSON file", *, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON file, refusing a non-regular file, one above ``max_bytes`` or nested deeper than ``max_depth``.

    Raises
    ------
    ValueError
        Naming the file and what is wrong with it (size, nesting, not UTF-8, not JSON).
    """
    raw = read_bytes(path, what, max_bytes=max_bytes)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return loads_json(text, f"{what} {str(path)!r}", max_depth=max_depth)


def loads_json(text: str, what: str = "JSON text", *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON string, refusing one nested deeper than ``max_depth`` (a ValueError naming ``what``)."""
    if _depth(text) > max_depth:
        raise ValueError(f"{what} nests lists or objects more than {max_depth} levels deep; "
                         "otviz reads configurations of ordinary depth")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ValueError(f"{what} nests too deeply to be read") from None
