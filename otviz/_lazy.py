"""Heavy dependencies imported on first use, so that ``import otviz`` and the command line stay fast.

``import ot`` (POT) takes seconds, mostly in the scikit-learn it imports, and
``scipy.optimize`` about a second; most uses of otviz never reach them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["LazyModule", "pot", "linear_sum_assignment", "lazy_attributes"]


def lazy_attributes(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """PEP 562 ``__getattr__`` and ``__dir__`` for the package ``package``, whose public
    ``names`` (name -> the submodule that defines it) are imported on first use and then
    kept in the package's namespace.

    Use as ``__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)`` in the package.
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        source = names.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(getattr(module, "__all__", ())))

    return __getattr__, __dir__


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
