r"""Trainings over several processes: PyTorch's DistributedDataParallel (DDP), launched by ``torchrun``.

``torchrun --standalone --nproc_per_node=N -m otviz train ...`` (or ``otviz train
--nproc N``, which starts it) runs :func:`otviz.train.train` in ``N`` processes.
Each reads its rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and joins the process group (gloo on the CPU, NCCL on CUDA, one
GPU per process); with ``WORLD_SIZE`` unset or 1 nothing here does anything.

The pieces, each PyTorch's own:

* **data**: every rank draws the same seeded global minibatch
  (``otviz.train._minibatch_indices``) and keeps its contiguous share, padded
  as :class:`torch.utils.data.DistributedSampler` pads an epoch (repeating
  the first indices up to a multiple of the world size). ``batch_size`` is the *global*
  batch: 1 process x batch :math:`B` and :math:`W` processes x :math:`B/W`
  see the same images at every step;
* **gradients**: the student (and trainable parameters of the loss, such as
  FitNets' regressors) is wrapped in
  :class:`torch.nn.parallel.DistributedDataParallel`, which averages the
  gradients over the ranks during the backward pass, so the step is the one of
  the mean loss over the global batch;
* **batch normalisation**: batch statistics over the global batch
  (:class:`torch.nn.SyncBatchNorm` on CUDA; on the CPU, where PyTorch's
  SyncBatchNorm refuses to run, :class:`CPUSyncBatchNorm`, the same
  computation through :func:`torch.distributed.nn.functional.all_reduce`), so
  that a step does not depend on how the batch is split;
* **the OT regulariser**: by default each rank aligns the neurons measured on
  its own share of the batch, and DDP averages the gradients of these
  :math:`W` OT terms (no extra communication; each plan sees :math:`B/W`
  inputs per neuron, a noisier estimate of the alignment). With
  ``ot_gather`` the features of every rank are gathered first
  (:func:`torch.distributed.nn.functional.all_gather`, which keeps the
  autograd graph: each rank's part receives the gradient of every rank's copy
  of the loss) so the plan sees the global batch, as in one process: the
  gradient is then the one-process gradient of the OT term. Its cost: per
  step and paired layer, an all-gather of the activations (and an all-to-all
  of their gradients in the backward pass), and every rank computes the
  :math:`B`-input cost matrix and solves the same plan;
* **the run store**: only rank 0 records (one run; ``world_size`` and
  ``backend`` in its config); it evaluates at the end of each epoch and sends
  the row to the other ranks, which log nothing. The per-step metrics it logs
  are averaged over the ranks.

A rank that fails ends the training of all: ``torchrun`` stops the other
processes when one exits with an error (rank 0, terminated with SIGTERM, marks
the run ``interrupted``; a rank 0 that fails marks it ``failed``, with a
one-line :class:`RankStopped` reason when another rank is gone), and a
non-finite loss on any rank is seen by every rank at the same step. The
processes die with the one that started them (:func:`watch_parent`), and
wait at most :func:`rendezvous_timeout` seconds for each other at the start.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

__all__ = ["DistContext", "from_env", "init", "CPUSyncBatchNorm", "convert_sync_batchnorm", "RankStopped",
           "rendezvous_timeout", "watch_parent", "parent_gone"]


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer; it is set by "
                         f"torchrun, start the training with `torchrun --nproc_per_node=N -m otviz "
                         f"train ...` or `otviz train --nproc N`") from None


def from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it).

    Raises
    ------
    ValueError
        Values that are not integers or do not fit together.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                         f"LOCAL_RANK={local} (need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0)")
    return rank, world, local


@dataclass
class DistContext:
    """Where this process stands in a training: its rank among ``world_size`` processes.

    ``world_size == 1`` (the default) is a training in one process: every
    method is then the identity or a no-op.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"
    owns_group: bool = False  # this context initialised the process group (and destroys it)

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that records the run and evaluates."""
        return self.rank == 0

    def close(self, *, barrier: bool = False) -> None:
        """Leave the process group if this context joined it.

        ``barrier=True`` (the end of a training every rank reached) first waits for every
        rank: gloo can abort a process ("terminate called without an active exception")
        when one rank tears the group down while another still talks to it. After an error
        no barrier is taken (the other ranks may never arrive).
        """
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            if barrier and self.active:
                dist.barrier()
            dist.destroy_process_group()
        self.owns_group = False

    # ------------------------------------------------------------------ data
    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global minibatch ``idx``: its ``rank``-th contiguous part.

        As :class:`torch.utils.data.DistributedSampler` does, the batch is
        first padded to a multiple of ``world_size`` by repeating its first
        indices (only a short last batch of a pass needs it; a batch smaller
        than the world size is repeated as often as needed), so every rank gets
        ``ceil(len(idx) / world_size)`` indices and the per-rank means that DDP
        averages weigh every image of a divisible batch alike. The parts are
        contiguous (DistributedSampler strides) so that the parts gathered in
        rank order (``ot_gather``) are the global batch in its own order.
        """
        if not self.active:
            return idx
        n = len(idx)
        if n == 0:
            raise ValueError("cannot split an empty minibatch")
        total = math.ceil(n / self.world_size) * self.world_size
        if total > n:
            reps = math.ceil(total / n)
            idx = idx.repeat(reps)[:total]
        per = total // self.world_size
        return idx[self.rank * per:(self.rank + 1) * per]

    # ------------------------------------------------------------------ model
    def wrap(self, student: nn.Module, extra: Sequence[nn.Parameter] = ()) -> nn.Module:
        """The module whose forward runs the student: ``student`` itself in one process, else a
        :class:`~torch.nn.parallel.DistributedDataParallel` over the student and the loss's
        trainable ``extra`` parameters (their gradients are averaged too).

        Call :func:`convert_sync_batchnorm` on the student first.
        """
        if not self.active:
            return student
        from torch.nn.parallel import DistributedDataParallel

        holder = _Trainable(student, list(extra))
        dev = torch.device(self.device)
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        return DistributedDataParallel(holder, device_ids=ids)

    # ------------------------------------------------------------------ collectives
    def mean(self, values: dict[str, float | torch.Tensor]) -> dict[str, float]:
        """Each value averaged over the ranks (one all-reduce; the same keys on every rank).

        Non-finite values stay non-finite, so that a loss that diverged on one
        rank is seen by all.
        """
        keys = sorted(values)
        vec = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if self.active:
            import torch.distributed as dist

            vec = vec.to(self._comm_device())
            dist.all_reduce(vec)
            vec = vec.cpu() / self.world_size
        return {k: float(v) for k, v in zip(keys, vec.tolist())}

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0 and its (picklable) result sent to every rank."""
        if not self.active:
            return fn()
        import torch.distributed as dist

        box = [fn() if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def _comm_device(self) -> torch.device:
        return torch.device(self.device) if self.backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ the OT term
    def gather_features(self, terms: Sequence[nn.Module]) -> list[Any]:
        """Make each OT term see the features of the global batch (``ot_gather``).

        Registers a forward pre-hook on every term that replaces the step
        context's student and teacher features by their concatenation over
        the ranks, in rank order: the student's through
        :func:`torch.distributed.nn.functional.all_gather` (differentiable:
        the backward pass sums, for this rank's part, the gradients of every
        rank's copy of the term, and DDP's average over the ranks then gives
        exactly the gradient of the OT term on the global batch), the frozen
        teacher's through :func:`torch.distributed.all_gather`. Returns the
        hook handles (nothing in one process).
        """
        if not self.active:
            return []
        return [term.register_forward_pre_hook(_gather_hook) for term in terms]


class _Trainable(nn.Module):
    """The student and the loss's own parameters in one module, for DDP; runs the student."""

    def __init__(self, student: nn.Module, extra: list[nn.Parameter]) -> None:
        super().__init__()
        self.student = student
        self.extra = nn.ParameterList(extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def _autograd(collective: Callable, tensor: torch.Tensor) -> Any:
    """A collective of :mod:`torch.distributed.nn.functional` (autograd flows through it)."""
    with warnings.catch_warnings():
        # recent PyTorch releases point to a private successor in a FutureWarning; these
        # are the documented collectives with autograd
        warnings.simplefilter("ignore", FutureWarning)
        return collective(tensor)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous.

    The gradient of the gathered features reaching
    :func:`torch.distributed.nn.functional.all_gather`'s backward can be a
    strided view (the OT term reads the neurons through a transpose); with
    gloo that backward writes the received parts through ``empty_like`` of
    those gradients, and a non-contiguous buffer there scrambles them (seen
    with PyTorch 2.13). A contiguous gradient avoids it.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _gather_activations(acts: Any, *, grad: bool) -> Any:
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnn

    out = copy.copy(acts)  # same class and per-layer info (neuron axes), new tensors
    for name, value in acts.items():
        if grad and value.requires_grad:
            parts = [_ContiguousGrad.apply(p) for p in _autograd(dnn.all_gather, value)]
        else:
            parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, value.contiguous())
        dict.__setitem__(out, name, torch.cat(list(parts), dim=0))
    mask = getattr(acts, "mask", None)
    if mask is not None:
        parts = [torch.empty_like(mask) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, mask.contiguous())
        out.mask = torch.cat(parts, dim=0)
    return out


def _gather_hook(module: nn.Module, args: tuple) -> tuple:
    ctx = args[0]
    ctx = dataclasses.replace(ctx, student_features=_gather_activations(ctx.student_features, grad=True),
                              teacher_features=_gather_activations(ctx.teacher_features, grad=False))
    return (ctx, *args[1:])


# --------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------
#: Environment variable: seconds the processes wait for each other to join (``--dist-timeout``).
TIMEOUT_ENV = "OTVIZ_DIST_TIMEOUT"
#: Default of :data:`TIMEOUT_ENV`: how long a process waits at the start for the others to join.
DEFAULT_RENDEZVOUS_TIMEOUT_S = 120.0


def rendezvous_timeout(value: Any = None) -> float:
    """Seconds to wait for every process to join: ``value``, else ``$OTVIZ_DIST_TIMEOUT``, else
    :data:`DEFAULT_RENDEZVOUS_TIMEOUT_S` (2 minutes).

    Raises
    ------
    ValueError
        Not a positive finite number of seconds.
    """
    source = "timeout"
    if value is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return DEFAULT_RENDEZVOUS_TIMEOUT_S
        value, source = text, f"environment variable {TIMEOUT_ENV}"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{source}={value!r} is not a positive number of seconds; pass how long the "
                         f"processes wait for each other to join, e.g. --dist-timeout 120")
    return seconds


def _rendezvous_failed(exc: BaseException, rank: int, world: int, seconds: float) -> TimeoutError | None:
    """A clear error for a process group that did not form in time (None for other errors)."""
    text = str(exc)
    if not any(key in text.lower() for key in ("timed out", "timeout", "time out")):
        return None
    where = (f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}")
    return TimeoutError(
        f"rank {rank} of {world} waited {seconds:g} s for the other processes of the training to "
        f"join at {where}, and not all came ({text.strip().splitlines()[0] if text.strip() else type(exc).__name__}). "
        f"Start every rank (`otviz train --nproc {world}` or `torchrun --nproc_per_node={world}` "
        f"starts them all; WORLD_SIZE={world} and RANK set by hand need all {world} processes), "
        f"or give them longer with --dist-timeout SECONDS / {TIMEOUT_ENV}")


def init(device: str = "cpu", *, timeout_s: float | None = None,
         rendezvous_timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment (nothing with one process).

    The backend is NCCL for a CUDA device (this process then uses GPU
    ``LOCAL_RANK``) and gloo otherwise. The process group is initialised here
    only when ``WORLD_SIZE > 1`` and none exists yet; :meth:`DistContext.close`
    destroys it. ``rendezvous_timeout_s``: how long this process waits at the
    start for the others to join (default :func:`rendezvous_timeout`: 2 minutes,
    or ``$OTVIZ_DIST_TIMEOUT``); ``timeout_s``: how long a collective then waits
    for the other processes (default PyTorch's, 30 min for gloo; the other ranks
    wait in one while rank 0 evaluates).

    A process group formed here is watched: when the process that started this
    one (torchrun, or ``otviz train --nproc``) dies, even by SIGKILL, this
    process stops itself with SIGTERM (rank 0 then records the run as
    ``interrupted`` with the reason), rather than training on orphaned.

    Raises
    ------
    ValueError
        A malformed environment, or a CUDA training with more processes on
        this machine than GPUs.
    TimeoutError
        The other processes did not join within the rendezvous timeout.
    """
    import torch.distributed as dist

    rank, world, local = from_env()
    if world == 1:
        return DistContext(device=device)
    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise ValueError(f"process with LOCAL_RANK={local} needs GPU {local}, but this machine has "
                             f"{count}; start at most {count} processes per node (--nproc {count}) "
                             f"or train on the CPU (--device cpu)")
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; train in one process")
    owns = False
    if not dist.is_initialized():
        from datetime import timedelta

        from torch.distributed import distributed_c10d as c10d

        meet = rendezvous_timeout(rendezvous_timeout_s)
        default = ((getattr(c10d, "default_pg_nccl_timeout", None) if backend == "nccl" else None)
                   or c10d.default_pg_timeout)
        later = timedelta(seconds=timeout_s) if timeout_s is not None else default
        settable = hasattr(c10d, "_set_pg_timeout")
        first = timedelta(seconds=meet) if settable else max(later, timedelta(seconds=meet))
        try:
            dist.init_process_group(backend=backend, timeout=first)
        except Exception as exc:
            clear = _rendezvous_failed(exc, rank, world, first.total_seconds())
            if clear is None:
                raise
            raise clear from exc
        if settable and later != first:
            c10d._set_pg_timeout(later)  # the collectives' own timeout, once everyone is here
        owns = True
        watch_parent()
    else:
        backend = str(dist.get_backend())
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend, device=device,
                       owns_group=owns)


# --------------------------------------------------------------------------
# batch normalisation over the global batch
# --------------------------------------------------------------------------
class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    r"""Batch normalisation with statistics over the batches of every rank, for gloo on the CPU.

    :class:`torch.nn.SyncBatchNorm` does the same on GPUs only. In training
    mode with a process group of several ranks, the per-channel mean and
    variance are

    .. math::
        \mu = \frac{1}{N} \sum_{r} \sum_{i \in r} x_i, \qquad
        \sigma^2 = \frac{1}{N} \sum_{r} \sum_{i \in r} (x_i - \mu)^2,

    over the :math:`N` values of all ranks, each sum an all-reduce through
    :func:`torch.distributed.nn.functional.all_reduce` (autograd flows through
    it), so the output and its gradient are those of :class:`torch.nn.BatchNorm2d`
    on the concatenated batch. The running statistics are updated as
    BatchNorm updates them (unbiased variance). Otherwise (evaluation, one
    process) it is plain batch normalisation, without communication.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        import torch.distributed.nn.functional as dnn

        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // max(x.shape[1], 1)], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        n = count[0]
        mean = _autograd(dnn.all_reduce, x.sum(dims)) / n
        xc = x - mean.view(shape)
        var = _autograd(dnn.all_reduce, (xc * xc).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                unbiased = var.detach() * (n / torch.clamp(n - 1, min=1))
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        y = xc / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Batch statistics over all ranks: :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`
    on CUDA, :class:`CPUSyncBatchNorm` on the CPU. The parameters and buffers are kept (the
    same tensors), so an optimiser built before still holds them; module names do not change."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


# --------------------------------------------------------------------------
# the store on rank 0 only
# --------------------------------------------------------------------------
class NullRecorder:
    """What the ranks other than 0 log to: nothing (same methods as a run recorder)."""

    run_id: int | None = None
    finished = False

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def snapshot(self, *args: Any, **kwargs: Any) -> None:
        pass

    def progress(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self, *args: Any, **kwargs: Any) -> None:
        pass


class RankStopped(RuntimeError):
    """Another process of the training stopped (killed, crashed): the collectives lost it."""


#: Words of gloo's and NCCL's errors when a peer's connection is gone.
_LOST_PEER = ("connection closed", "connection reset", "broken pipe", "read error", "socket timeout",
              "connection refused", "end of file", "remote process exited", "nccl communicator was aborted")


def _lost_peer(exc: BaseException, ctx: DistContext) -> RankStopped | None:
    """A readable one-line error for a collective that failed because another rank is gone."""
    text = str(exc)
    low = text.lower()
    dist_error = getattr(getattr(torch, "distributed", None), "DistError", ())
    if not (isinstance(exc, dist_error) or "gloo" in low or "nccl" in low) or not any(
            key in low for key in _LOST_PEER):
        return None
    who = "rank 1" if ctx.world_size == 2 else f"another rank (of {ctx.world_size})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    detail = first.split("] ", 1)[-1] if first.startswith("[") else first  # drop gloo's source position
    detail = detail.split(". ", 1)[0]  # its first sentence
    return RankStopped(f"{who} stopped (killed by a signal or crashed: connection closed; "
                       f"torchrun's summary on stderr names its exit code or signal), so rank "
                       f"{ctx.rank} stopped too [{detail[:200]}]")


# --------------------------------------------------------------------------
# a process whose launcher died stops
# --------------------------------------------------------------------------
_launcher: dict[str, Any] = {"ppid": None, "thread": None}


def parent_gone() -> str | None:
    """Why this process is orphaned: the process that started it (watched since :func:`watch_parent`)
    is gone; None while it lives (or nothing is watched)."""
    ppid = _launcher["ppid"]
    if ppid is None or os.getppid() == ppid:
        return None
    return (f"the process that started the training (pid {ppid}: torchrun, or `otviz train "
            f"--nproc`) is gone (killed?), so this process stopped")


def watch_parent(interval_s: float = 0.5) -> None:
    """Stop this process (SIGTERM to itself) when its parent process dies.

    torchrun starts its workers in a session of their own, so a SIGKILL of the
    process the user started (torchrun's agent) leaves them running, orphaned.
    A daemon thread polls :func:`os.getppid` (which changes when the parent dies:
    the orphan is adopted by init or a subreaper); rank 0's SIGTERM handler
    then records the run as ``interrupted``. If the process is still alive 30 s
    later (its main thread stuck), it exits. Started once per process; nothing
    on Windows.
    """
    import signal
    import threading
    import time

    if _launcher["thread"] is not None or os.name != "posix":
        return
    _launcher["ppid"] = os.getppid()

    def watch() -> None:
        while parent_gone() is None:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30.0)
        os._exit(143)  # pragma: no cover - a main thread that did not react to SIGTERM

    thread = threading.Thread(target=watch, name="otviz-parent-watch", daemon=True)
    thread.start()
    _launcher["thread"] = thread


@contextlib.contextmanager
def track(ctx: DistContext, store_factory: Callable[[], Any], config: dict, **kwargs: Any) -> Iterator[Any]:
    """``store.track(config, ...)`` on rank 0 (the store is opened there only), a
    :class:`NullRecorder` elsewhere; every rank's recorder has the run id of rank 0.

    On rank 0, an error because another rank is gone becomes a :class:`RankStopped`
    with a one-line reason (the run is ``failed`` with that reason on its first line,
    the collective's own error below it), and any error after the launching process
    died becomes a ``KeyboardInterrupt`` naming that (the run is ``interrupted``).
    """
    if ctx.is_main:
        with store_factory().track(config, **kwargs) as rec:
            ctx.from_main(lambda: rec.run_id)
            try:
                yield rec
            except BaseException as exc:
                orphan = parent_gone()
                if orphan is not None:
                    raise KeyboardInterrupt(orphan) from exc
                lost = _lost_peer(exc, ctx) if isinstance(exc, Exception) else None
                if lost is not None:
                    raise lost from exc
                raise
    else:
        rec = NullRecorder()
        rec.run_id = ctx.from_main(lambda: None)
        yield rec
