"""Cell builders shared by notebooks/make_notebooks.py and the lab's notebooks (notebooks/lab/)."""

from __future__ import annotations

import textwrap

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> tuple[str, str]:
    """A markdown cell (indentation removed)."""
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
    """A code cell (indentation removed)."""
    return ("code", textwrap.dedent(text).strip("\n"))
