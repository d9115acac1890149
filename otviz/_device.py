"""Devices and CPU threads, shared by the trainer and the lab's trainings."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["cpu_threads", "resolve_device"]


def resolve_device(device: Any) -> torch.device:
    """``device`` (a string or a :class:`torch.device`) checked: CPU, or CUDA where torch sees it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: not a torch device; use 'cpu' or 'cuda' "
                         f"(or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here (torch sees no "
                         f"CUDA device); use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


@contextlib.contextmanager
def cpu_threads(n: int | None, dev: torch.device) -> Iterator[None]:
    """torch's CPU threads set to ``n`` for the duration, then restored (nothing when ``n`` is
    None or ``dev`` is not the CPU). The setting is process-wide: other threads of the process
    run with it meanwhile."""
    prev = torch.get_num_threads()
    if n is None or dev.type != "cpu" or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
