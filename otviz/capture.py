"""Activations of named layers, and the functional view of their neurons.

A network is observed, never modified: forward hooks are registered on the
modules named by the user (dotted names, as ``model.named_modules()`` gives
them), the model is run on a probe batch, and the hooks are removed again.

The *functional view* turns an activation into a matrix with one row per
neuron. A neuron is seen through its responses to the probe batch of
:math:`n` inputs:

- a unit of a dense layer with output :math:`A \\in \\mathbb{R}^{n \\times u}`
  is the column :math:`A_{:, i} \\in \\mathbb{R}^{n}`;
- a channel of a convolutional layer with output
  :math:`A \\in \\mathbb{R}^{n \\times c \\times h \\times w}` is either the
  whole map :math:`A_{:, i, :, :} \\in \\mathbb{R}^{n h w}` (``"flatten"``) or
  its spatial average :math:`\\frac{1}{hw}\\sum_{p} A_{:, i, p} \\in
  \\mathbb{R}^{n}` (``"mean"``).

Teacher and student are fed the same inputs, so their neurons live in the same
space and can be compared as point clouds (see :mod:`otviz.transport`).
"""

from __future__ import annotations

import contextlib
import difflib
import numbers
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["capture", "hooked", "layer_names", "neurons"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
Layers = Union[str, Sequence[str]]

_SPATIAL_MODES = ("flatten", "mean")
_KINDS = ("leaf", "all", "conv", "linear")


# ----------------------------------------------------------------------------
# layer names
# ----------------------------------------------------------------------------
def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}. "
            "Pass the network itself (e.g. an nn.Sequential or your own nn.Module)."
        )
    return model


def layer_names(model: nn.Module, kind: str | type | tuple[type, ...] | None = None) -> list[str]:
    """List the names of the modules of ``model`` that can be captured.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    kind : {None, "leaf", "all", "conv", "linear"} or type or tuple of types, default None
        Which modules to list:

        - ``None`` or ``"leaf"``: modules without children (``Conv2d``,
          ``ReLU``, ``Linear``, ...), the usual places to read activations;
        - ``"all"``: every named submodule, containers included;
        - ``"conv"``: ``Conv1d``/``Conv2d``/``Conv3d`` (and transposed);
        - ``"linear"``: ``nn.Linear``;
        - a module class or tuple of classes: instances of those classes.

    Returns
    -------
    list of str
        Dotted names in registration order, exactly as accepted by
        :func:`capture` and :func:`hooked`. The model itself (name ``""``) is
        listed only when it has no submodules at all.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> layer_names(net)
    ['0', '1', '2']
    >>> layer_names(net, "linear")
    ['0', '2']
    """
    _check_model(model)
    if kind is None:
        kind = "leaf"
    if isinstance(kind, str):
        if kind not in _KINDS:
            raise ValueError(
                f"Unknown kind={kind!r}. Pass one of {list(_KINDS)}, None, "
                "or a module class such as torch.nn.Conv2d."
            )
        if kind == "leaf":
            def keep(m: nn.Module) -> bool:
                return next(m.children(), None) is None
        elif kind == "all":
            def keep(m: nn.Module) -> bool:
                return True
        elif kind == "conv":
            def keep(m: nn.Module) -> bool:
                return isinstance(m, nn.modules.conv._ConvNd)
        else:  # "linear"
            def keep(m: nn.Module) -> bool:
                return isinstance(m, nn.Linear)
    else:
        classes = kind if isinstance(kind, tuple) else (kind,)
        if not classes or not all(isinstance(c, type) for c in classes):
            raise TypeError(
                f"kind must be a string, a module class or a tuple of module classes, got {kind!r}."
            )
        def keep(m: nn.Module) -> bool:
            return isinstance(m, classes)

    names = [name for name, m in model.named_modules() if name and keep(m)]
    if not names and next(model.children(), None) is None and keep(model):
        names = [""]
    return names


def _all_module_names(model: nn.Module) -> dict[str, nn.Module]:
    # remove_duplicate=False so that a module shared under two names can be
    # reached by either of them.
    return dict(model.named_modules(remove_duplicate=False))


def _resolve_layers(model: nn.Module, layers: Layers) -> list[str]:
    """Validate ``layers`` against ``model``; return the names, deduplicated in order."""
    if isinstance(layers, str):
        layers = [layers]
    else:
        try:
            layers = list(layers)
        except TypeError:
            raise TypeError(
                f"layers must be a module name or a sequence of module names, got "
                f"{type(layers).__name__}. Pass e.g. 'features.0' or ['features.0', 'fc']."
            ) from None
    if len(layers) == 0:
        raise ValueError(
            "layers is empty. Pass at least one module name; "
            "otviz.capture.layer_names(model) lists them."
        )
    bad = [name for name in layers if not isinstance(name, str)]
    if bad:
        raise TypeError(
            f"Layer names must be strings (dotted names from model.named_modules()), got {bad!r}."
        )
    modules = _all_module_names(model)
    names = list(dict.fromkeys(layers))  # deduplicate, keep order
    for name in names:
        if name not in modules:
            valid = [n for n in modules if n]
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
            hint = f" Closest valid names: {close}." if close else ""
            raise ValueError(
                f"{type(model).__name__} has no module named {name!r}.{hint} "
                "List all capturable names with otviz.capture.layer_names(model, kind='all') "
                "or [name for name, _ in model.named_modules()]."
            )
    return names


# ----------------------------------------------------------------------------
# hooks
# ----------------------------------------------------------------------------
def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _make_hook(name: str, store: dict[str, torch.Tensor]):
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is None:
            raise TypeError(
                f"Module {name!r} ({type(module).__name__}) returned {type(output).__name__}, "
                "which holds no tensor at its top level. Capture a module that returns a "
                "tensor or a tuple/list whose elements include a tensor."
            )
        store[name] = tensor  # a later call of the same module overwrites an earlier one

    return hook


@contextlib.contextmanager
def hooked(model: nn.Module, layers: Layers) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of named modules while the model runs forward.

    A context manager for training loops, where one forward pass must give both
    the logits and the intermediate features::

        with hooked(student, ["layer2", "layer3"]) as feats:
            logits = student(x)
        loss = task_loss(logits, y) + lam * reg(feats["layer2"], ...)

    Forward hooks are registered on entry and always removed on exit, also
    when the forward pass raises. The model's code, parameters and
    train/eval mode are left untouched.

    Parameters
    ----------
    model : torch.nn.Module
        The network to observe.
    layers : str or sequence of str
        Dotted module names as given by ``model.named_modules()`` (see
        :func:`layer_names`). Duplicates are ignored.

    Yields
    ------
    dict of str to torch.Tensor
        Filled during each forward pass run inside the block, in the order the
        modules execute. The stored tensors are the modules' outputs
        themselves (not copies, not detached), so gradients flow through them.

    Raises
    ------
    ValueError
        If a name is not a module of ``model`` (the message lists the closest
        valid names) or ``layers`` is empty.

    Notes
    -----
    - If a module returns a tuple or list (e.g. an ``nn.LSTM``), the first
      tensor element is stored (for an LSTM: the output sequence).
    - If a module is called several times in one forward pass (a shared block
      applied repeatedly), only its **last** output is kept.
    - Entries persist across forward passes inside the block: each pass
      overwrites the entries of the modules it runs. Call ``.clear()`` on the
      dict between passes to detect modules that were not run.
    """
    _check_model(model)
    names = _resolve_layers(model, layers)
    modules = _all_module_names(model)
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(_make_hook(name, store)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------
# capture
# ----------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _as_input(inputs: Any, device: torch.device) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        x = inputs
    else:
        try:
            arr = np.asarray(inputs)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise TypeError(
                f"inputs must be a torch.Tensor or a numpy array, got {type(inputs).__name__}."
            ) from exc
        if arr.dtype == bool or np.issubdtype(arr.dtype, np.floating):
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        elif np.issubdtype(arr.dtype, np.integer):
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
        else:
            raise TypeError(
                f"inputs has dtype {arr.dtype}; pass a numeric numpy array or a torch.Tensor."
            )
    if x.ndim == 0:
        raise ValueError(
            "inputs is a scalar. Pass a batch of inputs with the batch on the first axis, "
            "e.g. shape (n, channels, height, width)."
        )
    if x.shape[0] == 0:
        raise ValueError("inputs is empty (0 samples). Pass a probe batch with at least one input.")
    return x.to(device)


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    finite = torch.isfinite(tensor.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"Activation of layer {name!r} contains {bad} non-finite value(s) (NaN or inf) "
            f"out of {tensor.numel()}. Check the inputs and the model's weights (a diverged "
            "training run is the usual cause)."
        )


def capture(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    layers: Layers,
    *,
    grad: bool = False,
    batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``model(inputs)`` and return the outputs of the named modules.

    Parameters
    ----------
    model : torch.nn.Module
        The network. Its train/eval mode is **not** changed: call
        ``model.eval()`` first for analysis (dropout off, batch-norm running
        statistics), keep ``model.train()`` inside a training loop.
    inputs : torch.Tensor or numpy.ndarray
        A probe batch, batch on the first axis. A tensor is moved to the
        model's device and keeps its dtype. A numpy array (or array-like) is
        converted to a float32 tensor on the model's device; integer arrays
        become int64 tensors (token ids for embedding layers).
    layers : str or sequence of str
        Dotted module names as given by ``model.named_modules()`` (see
        :func:`layer_names`). Duplicates are ignored.
    grad : bool, default False
        ``False`` runs under ``torch.no_grad()`` (analysis: no graph is kept).
        ``True`` runs under ``torch.enable_grad()`` and the returned tensors
        carry the autograd graph (training).
    batch_size : int, optional
        Run the probe set in chunks of this many inputs and concatenate the
        activations along the first axis, to bound memory on large probe sets.
        This assumes every captured activation has the batch on its first
        axis. With ``grad=True`` chunking still works but saves no memory
        (every chunk's graph is kept); note also that a model in train mode
        with batch normalisation sees per-chunk statistics.

    Returns
    -------
    dict of str to torch.Tensor
        ``{name: activation}`` in the order of ``layers``. Activations are the
        modules' outputs; for a module returning a tuple/list, its first
        tensor; for a module called several times, its last output (see
        :func:`hooked`).

    Raises
    ------
    ValueError
        Unknown or empty layer names, empty inputs, a named module that the
        forward pass never calls, an activation containing NaN or inf, or a
        chunked activation whose first axis is not the batch.
    TypeError
        ``model`` is not an ``nn.Module``, or ``inputs`` is not numeric.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> acts = capture(net, np.zeros((5, 4)), ["0", "2"])
    >>> {k: tuple(v.shape) for k, v in acts.items()}
    {'0': (5, 8), '2': (5, 2)}
    """
    _check_model(model)
    names = _resolve_layers(model, layers)
    if not isinstance(grad, (bool, np.bool_)):
        raise TypeError(f"grad must be True or False, got {grad!r}.")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    x = _as_input(inputs, _model_device(model))
    n = x.shape[0]
    chunks = [x] if batch_size is None or batch_size >= n else list(torch.split(x, int(batch_size)))

    collected: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    mode = torch.enable_grad() if grad else torch.no_grad()
    with mode, hooked(model, names) as store:
        for chunk in chunks:
            store.clear()
            model(chunk)
            missing = [name for name in names if name not in store]
            if missing:
                raise ValueError(
                    f"Module(s) {missing} were not called during model's forward pass, so they "
                    "have no activation. Pick modules the forward pass uses "
                    "(otviz.capture.layer_names(model) lists candidates)."
                )
            for name in names:
                act = store[name]
                if len(chunks) > 1 and (act.ndim == 0 or act.shape[0] != chunk.shape[0]):
                    raise ValueError(
                        f"Activation of layer {name!r} has shape {tuple(act.shape)}, whose first "
                        f"axis is not the batch ({chunk.shape[0]} inputs in this chunk), so chunks "
                        "cannot be concatenated. Pass batch_size=None."
                    )
                collected[name].append(act)

    out: dict[str, torch.Tensor] = {}
    for name in names:
        parts = collected[name]
        act = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        _check_finite(name, act)
        out[name] = act
    return out


# ----------------------------------------------------------------------------
# functional view
# ----------------------------------------------------------------------------
def _spatial_size(size: Any, n_spatial: int) -> tuple[int, ...]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size),) * n_spatial
    elif isinstance(size, (tuple, list)):
        size = tuple(size)
        if len(size) != n_spatial:
            expected = "an int or a 1-tuple (L',)" if n_spatial == 1 else "an int or a pair (h', w')"
            raise ValueError(
                f"size={size!r} has {len(size)} entries but the activation has {n_spatial} "
                f"spatial axis/axes; pass {expected}."
            )
    else:
        raise TypeError(f"size must be an int or a tuple of ints, got {type(size).__name__}.")
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"size entries must be positive integers, got {size!r}.")
    return tuple(int(s) for s in size)


def neurons(
    activation: ArrayT,
    spatial: str = "flatten",
    size: int | tuple[int, ...] | None = None,
) -> ArrayT:
    """Functional view: one row per neuron, one column per response.

    For a probe batch of :math:`n` inputs:

    - dense output :math:`A \\in \\mathbb{R}^{n \\times u}` gives
      :math:`N = A^\\top \\in \\mathbb{R}^{u \\times n}`: neuron :math:`i` is
      its vector of responses to the :math:`n` inputs;
    - conv output :math:`A \\in \\mathbb{R}^{n \\times c \\times h \\times w}`
      gives, with ``spatial="flatten"``,
      :math:`N \\in \\mathbb{R}^{c \\times nhw}`,
      :math:`N_{i, (k, p)} = A_{k, i, p}` (features ordered sample-major,
      then position: ``A.permute(1, 0, 2, 3).reshape(c, -1)``), and with
      ``spatial="mean"``, :math:`N_{i, k} = \\frac{1}{hw} \\sum_p A_{k, i, p}`,
      :math:`N \\in \\mathbb{R}^{c \\times n}`;
    - 1-d conv / sequence output :math:`A \\in \\mathbb{R}^{n \\times c
      \\times L}` is handled likewise (:math:`c \\times nL` or
      :math:`c \\times n`).

    Parameters
    ----------
    activation : numpy.ndarray or torch.Tensor
        Output of a layer for :math:`n` inputs, of shape ``(n, units)``,
        ``(n, c, L)`` or ``(n, c, h, w)``. Channel-last layouts (e.g. a
        transformer's ``(n, L, d)``) must be permuted to channel-first first.
    spatial : {"flatten", "mean"}, default "flatten"
        How a channel's map becomes a vector: all positions kept, or averaged.
        Ignored for dense output.
    size : int or tuple of int, optional
        Resize the maps to ``(h', w')`` (an int means square; ``(L',)`` or an
        int for 3-d output) by adaptive average pooling before flattening, so
        that teacher and student maps of different sizes give neurons in the
        same space. Only with ``spatial="flatten"``. Sizes larger than the map
        replicate values rather than adding information.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The neuron matrix, of the input's type. A tensor stays on its device
        and keeps its autograd graph; non-floating input is cast to a floating
        dtype (float64 for numpy, the default dtype for torch).

    Raises
    ------
    ValueError
        Unknown ``spatial``, ndim not in {2, 3, 4}, an empty activation,
        NaN or inf values, ``size`` given for dense output or with
        ``spatial="mean"``, or a malformed ``size``.

    Examples
    --------
    >>> neurons(np.zeros((10, 3, 4, 4))).shape
    (3, 160)
    >>> neurons(np.zeros((10, 3, 4, 4)), spatial="mean").shape
    (3, 10)
    >>> neurons(np.zeros((10, 3, 8, 8)), size=4).shape
    (3, 160)
    """
    if isinstance(activation, torch.Tensor):
        is_numpy = False
        t = activation
        if not (t.is_floating_point() or t.is_complex()):
            t = t.to(torch.get_default_dtype())
    elif isinstance(activation, np.ndarray):
        is_numpy = True
        arr = activation
        if not np.issubdtype(arr.dtype, np.floating):
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
                raise TypeError(f"activation has non-numeric dtype {arr.dtype}.")
            arr = arr.astype(np.float64)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(
            f"activation must be a numpy array or a torch.Tensor, got {type(activation).__name__}."
        )
    if t.is_complex():
        raise TypeError("activation is complex; pass real-valued activations.")

    if spatial not in _SPATIAL_MODES:
        raise ValueError(f"Unknown spatial={spatial!r}. Pass one of {list(_SPATIAL_MODES)}.")
    if t.ndim not in (2, 3, 4):
        raise ValueError(
            f"activation has shape {tuple(t.shape)} (ndim={t.ndim}); expected (n, units), "
            "(n, channels, length) or (n, channels, height, width). Reshape it to one of these, "
            "with the probe batch on the first axis and the neurons on the second."
        )
    if t.numel() == 0:
        raise ValueError(f"activation is empty (shape {tuple(t.shape)}); every axis must be non-empty.")
    finite = torch.isfinite(t.detach())
    if not bool(finite.all()):
        raise ValueError(
            f"activation contains {int((~finite).sum())} non-finite value(s) (NaN or inf). "
            "Check the inputs and the model that produced it."
        )

    if t.ndim == 2:
        if size is not None:
            raise ValueError(
                f"size={size!r} was given but the activation is dense (shape {tuple(t.shape)}); "
                "size only applies to convolutional maps. Pass size=None."
            )
        out = t.T.contiguous()
    else:
        n_spatial = t.ndim - 2
        if size is not None:
            if spatial != "flatten":
                raise ValueError(
                    f"size={size!r} only has an effect with spatial='flatten' (spatial averaging "
                    "already removes the map size). Pass size=None, or spatial='flatten'."
                )
            target = _spatial_size(size, n_spatial)
            pool = F.adaptive_avg_pool1d if n_spatial == 1 else F.adaptive_avg_pool2d
            if tuple(t.shape[2:]) != target:
                t = pool(t, target)
        channels = t.shape[1]
        if spatial == "mean":
            out = t.mean(dim=tuple(range(2, t.ndim))).T.contiguous()
        else:
            order = (1, 0) + tuple(range(2, t.ndim))
            out = t.permute(*order).reshape(channels, -1)

    if is_numpy:
        result = out.numpy()
        # never hand back a view of the caller's array
        if np.shares_memory(result, activation):
            result = result.copy()
        return result
    return out
