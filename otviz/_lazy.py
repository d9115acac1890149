"""Heavy dependencies imported on first use, so that ``import otviz`` and the command line stay fast.

``import ot`` (POT) takes seconds, mostly in the scikit-learn it imports, and
``scipy.optimize`` about a second; most uses of otviz never reach them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["LazyModule", "pot", "linear_sum_assignment"]


class LazyModule:
    """A stand-in for the module ``name``, imported when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r} ({state})>"


#: POT, the ``ot`` package
pot = LazyModule("ot")


def linear_sum_assignment(*args: Any, **kwargs: Any) -> Any:
    """:func:`scipy.optimize.linear_sum_assignment`, imported on first call."""
    from scipy.optimize import linear_sum_assignment as solve

    return solve(*args, **kwargs)
