"""Fixtures shared by every test file."""

from __future__ import annotations

import sys

import pytest

#: the interpreter's real ``__main__`` (pytest's), as it was when the tests were collected
_MAIN = sys.modules.get("__main__")


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Put the real ``__main__`` module back after every test.

    Streamlit's AppTest runs a page as the ``__main__`` module and leaves it in
    ``sys.modules``. A process started later with the ``spawn`` method (torch's
    ``mp.spawn``, a ``spawn`` pool) first re-runs ``__main__``'s file, so it would run
    that dashboard page in bare mode and fail before doing its work.
    """
    yield
    if _MAIN is not None and sys.modules.get("__main__") is not _MAIN:
        sys.modules["__main__"] = _MAIN
