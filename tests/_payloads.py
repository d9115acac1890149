"""Hostile model files for the tests: each payload, if ever unpickled or evaluated, writes a marker file."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch


class Payload:
    """Unpickling this object runs ``open(marker, 'w').write('ran')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def code(marker: Path) -> str:
    """A Python expression that writes the marker when evaluated."""
    return f"__import__('builtins').open({str(marker)!r}, 'w').write('ran')"


def pickled(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    return buf.getvalue()


def rewrite(src: Path, dst: Path, replace: dict | None = None, add: dict | None = None) -> Path:
    """Copy a zip archive, replacing members (name relative to the top folder -> bytes) and adding others."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        root = zin.namelist()[0].split("/", 1)[0] + "/"
        for info in zin.infolist():
            rel = info.filename[len(root):]
            data = zin.read(info)
            if rel in replace:
                new = replace[rel]
                data = new(data) if callable(new) else new
            zout.writestr(info.filename, data)
        for rel, data in add.items():
            zout.writestr(root + rel, data)
    return dst


def edit_json(fn):
    """A ``replace`` value that edits a JSON member with ``fn(obj) -> obj``."""
    return lambda data: json.dumps(fn(json.loads(data))).encode()


__all__ = ["Payload", "code", "pickled", "rewrite", "edit_json", "pickle"]
