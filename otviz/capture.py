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

Real models are fed and read as they are: the probe batch may be a tensor,
a tuple of positional arguments or a mapping of keyword arguments (a
tokenizer's ``BatchEncoding``); a module's tuple, dict or ``ModelOutput`` is
read at a named field. :func:`capture` returns :class:`Activations`, which
records for every layer the axis that holds its neurons -- decided from the
module that produced it (a ``Conv2d``'s channels on axis 1, a transformer
block's hidden units on the last axis of ``(n, tokens, d)``) -- and the
attention mask, so that :meth:`Activations.neurons` never mistakes token
positions for neurons nor lets padding into a neuron's responses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import numbers
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from otviz import _probe

__all__ = ["Activations", "LayerInfo", "capture", "dead_neurons", "hooked", "layer_names", "neurons"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
Layers = Union[str, Sequence[str]]

_SPATIAL_MODES = ("flatten", "mean")
_KINDS = ("blocks", "leaf", "all", "conv", "linear")


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
    kind : {None, "blocks", "leaf", "all", "conv", "linear"} or type or tuple of types, default None
        Which modules to list:

        - ``None``: ``"blocks"`` if the model has repeated blocks, else ``"leaf"``;
        - ``"blocks"``: the repeated blocks of the network -- modules with
          children that sit in an ``nn.Sequential`` or ``nn.ModuleList``
          beside at least one sibling of the same class: a transformer's
          layers (``encoder.layer.0`` .. ``encoder.layer.5`` of a BERT), a
          ResNet's residual blocks, the conv blocks of otviz's small CNN;
        - ``"leaf"``: modules without children (``Conv2d``, ``ReLU``,
          ``Linear``, ...);
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
    >>> block = lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    >>> layer_names(nn.Sequential(nn.Linear(4, 8), block(), block()))
    ['1', '2']
    """
    _check_model(model)
    if kind is None:
        kind = "blocks" if _blocks(model) else "leaf"
    if kind == "blocks":
        return _blocks(model)
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


def _blocks(model: nn.Module) -> list[str]:
    """Names of the repeated blocks: non-leaf modules in a Sequential/ModuleList beside a same-class sibling."""
    names: list[str] = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(parent.named_children())
        classes = [type(c) for _, c in children]
        for child_name, child in children:
            if next(child.children(), None) is not None and classes.count(type(child)) >= 2:
                names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(dict.fromkeys(names), key=lambda n: order.get(n, 0))


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
            "otviz.layer_names(model) lists them."
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
                "List all capturable names with otviz.layer_names(model, kind='all') "
                "or [name for name, _ in model.named_modules()]."
            )
    return names


# ----------------------------------------------------------------------------
# captured activations
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """How one captured activation is read as neurons.

    Attributes
    ----------
    module : str
        Class name of the module that produced it.
    shape : tuple of int
        Shape of the activation.
    channel_axis : int or None
        Axis holding the neurons (non-negative), or ``None`` when the shape is
        ambiguous and nothing told which axis it is (pass ``channel_axis=``).
    axis_from : str
        How the axis was decided: ``"given"``, the module's type (``"Conv2d"``,
        ``"LayerNorm"``, ...), the last recognised layer before it (``"as
        LayerNorm 'encoder.layer.0.output.LayerNorm', ..."``), a convention, or
        why it is ambiguous.
    field : str or None
        The field of the module's output that was read (``"last_hidden_state"``,
        ``"[0]"`` for the first element of a tuple), ``None`` for a tensor output.
    """

    module: str
    shape: tuple[int, ...]
    channel_axis: int | None
    axis_from: str
    field: str | None = None


class Activations(dict):
    """Captured activations ``{layer: tensor}``, with what is needed to read their neurons.

    A plain ``dict`` of the layers' outputs (as :func:`capture` and
    :func:`hooked` always returned), plus:

    - :attr:`info` -- per layer, a :class:`LayerInfo`: which axis holds the
      neurons and how that was decided, which output field was read;
    - :attr:`mask` -- the attention mask of the probe inputs, shape
      ``(n, positions)`` (``True`` = a real token), or ``None``;
    - :meth:`neurons` -- the layer's neuron matrix, with the right axis and
      the mask applied (padding never enters a neuron's responses);
    - :meth:`describe` -- a table of the above.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info: dict[str, LayerInfo] = {}
        self.mask: torch.Tensor | None = None
        self.inputs: str = ""
        self.dropped: dict[str, list[int]] = {}

    @property
    def channel_axis(self) -> dict[str, int | None]:
        """``{layer: neuron axis}`` (``None`` where ambiguous)."""
        return {name: info.channel_axis for name, info in self.info.items()}

    def mask_for(self, layer: str) -> torch.Tensor | None:
        """The attention mask as it applies to ``layer``'s positions, or ``None``.

        Raises ``ValueError`` when a mask is in use and the layer has positions
        (tokens, pixels) that the mask does not describe.
        """
        act, info = self[layer], self.info.get(layer)
        if self.mask is None or info is None or info.channel_axis is None or act.ndim <= 2:
            return None
        positions = tuple(s for a, s in enumerate(act.shape) if a not in (0, info.channel_axis))
        if tuple(self.mask.shape[1:]) != positions or self.mask.shape[0] != act.shape[0]:
            raise ValueError(
                f"Layer {layer!r} has {positions} positions per input (activation "
                f"{tuple(act.shape)}, neurons on axis {info.channel_axis}), but the mask has shape "
                f"{tuple(self.mask.shape)}, so it cannot say which positions are padding. Capture "
                "layers whose outputs keep the input's tokens, or pass mask=None to use every "
                "position."
            )
        return self.mask

    def neurons(self, layer: str, spatial: str = "flatten", size: int | tuple[int, ...] | None = None,
                *, drop_dead: bool = False) -> torch.Tensor:
        """The neuron matrix of ``layer`` (see :func:`neurons`), with its axis and mask.

        With ``drop_dead=True`` the neurons that are constant over the probe
        batch (:func:`dead_neurons`) are removed; their indices are recorded
        in :attr:`dropped` ``[layer]``.
        """
        if layer not in self:
            raise ValueError(f"No captured layer {layer!r}; captured: {list(self)}.")
        info = self.info.get(layer)
        axis = None if info is None else info.channel_axis
        act = self[layer]
        if axis is None and act.ndim == 3:
            why = info.axis_from if info is not None else "no layout information"
            raise ValueError(
                f"Layer {layer!r} ({info.module if info else 'activation'} output "
                f"{tuple(act.shape)}) is ambiguous ({why}): its neurons may be on axis 1 "
                "(n, channels, length), as a Conv1d gives, or on the last axis (n, tokens, "
                "features), as a transformer gives. Pass channel_axis=1 or channel_axis=-1 "
                "(a dict {layer: axis} for several layers)."
            )
        mat = neurons(act, spatial, size if act.ndim > 2 else None, channel_axis=axis,
                      mask=self.mask_for(layer))
        if drop_dead:
            dead = dead_neurons(mat)
            self.dropped[layer] = dead.tolist()
            if dead.size:
                keep = np.setdiff1d(np.arange(mat.shape[0]), dead)
                if keep.size == 0:
                    raise ValueError(f"Every neuron of layer {layer!r} is constant over the probe "
                                     "batch; nothing is left to compare.")
                mat = mat[torch.as_tensor(keep, device=mat.device)]
        return mat

    def describe(self) -> Any:
        """A pandas DataFrame: one row per layer (module, shape, neuron axis, neurons, field, masked)."""
        import pandas as pd

        rows = []
        for name, act in self.items():
            info = self.info.get(name)
            axis = None if info is None else info.channel_axis
            try:
                masked = self.mask_for(name) is not None
            except ValueError:
                masked = False
            rows.append({
                "layer": name, "module": info.module if info else "",
                "shape": tuple(act.shape), "channel_axis": axis,
                "neurons": int(act.shape[axis]) if axis is not None else None,
                "axis from": info.axis_from if info else "", "field": info.field if info else None,
                "masked": masked,
            })
        return pd.DataFrame(rows).set_index("layer")


def _per_layer(option: Any, names: Sequence[str], what: str, check) -> dict[str, Any]:
    """``{layer: value}`` from one value for every layer or a mapping naming some; ``check(layer, value)``."""
    if option is None:
        return {}
    if isinstance(option, Mapping):
        unknown = sorted(set(option) - set(names))
        if unknown:
            raise ValueError(f"{what} names layer(s) {unknown} that are not captured; captured: "
                             f"{list(names)}.")
        items = dict(option)
    else:
        items = {name: option for name in names}
    for name, value in items.items():
        check(name, value)
    return items


def _axis_option(channel_axis: Any, names: Sequence[str]) -> dict[str, int]:
    """``{layer: axis}`` from an int (every layer) or a mapping (the layers it names)."""
    def check(name: str, axis: Any) -> None:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"channel_axis for {name!r} must be an int (1 for channel-first, -1 for "
                            f"channel-last), got {axis!r}.")

    return {k: int(v) for k, v in _per_layer(channel_axis, names, "channel_axis", check).items()}


def _field_option(output_field: Any, names: Sequence[str]) -> dict[str, str | int]:
    """``{layer: field}`` from a field name or index (every layer) or a mapping (the layers it names)."""
    def check(name: str, field: Any) -> None:
        if not isinstance(field, (str, int)) or isinstance(field, bool):
            raise TypeError(f"output_field must be a field name (e.g. 'last_hidden_state'), an index, "
                            f"or a dict {{layer: field}}, got {field!r}.")

    return _per_layer(output_field, names, "output_field", check)


# ----------------------------------------------------------------------------
# hooks
# ----------------------------------------------------------------------------
def _make_hook(name: str, store: Activations, tracker: _probe.LayoutTracker,
               axes: dict[str, int], fields: dict[str, Any]):
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        try:
            record(module, output)
        except (TypeError, ValueError) as exc:
            exc._otviz_hook = True  # type: ignore[attr-defined]  # capture re-raises it as is
            raise

    def record(module: nn.Module, output: Any) -> None:
        where = f"Module {name!r} ({type(module).__name__})"
        tensor, field = _probe.read_output(output, fields.get(name), where)
        given = axes.get(name)
        if given is not None and not -tensor.ndim <= given < tensor.ndim:
            raise ValueError(f"channel_axis={given} for layer {name!r}, but its output has shape "
                             f"{tuple(tensor.shape)} ({tensor.ndim} axes).")
        if given is not None and given % tensor.ndim == 0:
            raise ValueError(f"channel_axis={given} for layer {name!r} is the batch axis; pass the "
                             "axis of the features (1 or -1).")
        layout = _probe.decide_layout(module, tensor, given, tracker.last)
        if not layout.batch_first:
            raise ValueError(
                f"{where} returns (sequence, batch, features) because it was built with "
                "batch_first=False; neurons need the batch first. Build it with batch_first=True, "
                "or capture a module that runs after the transpose."
            )
        store[name] = tensor  # a later call of the same module overwrites an earlier one
        store.info[name] = LayerInfo(type(module).__name__, tuple(tensor.shape), layout.axis,
                                     layout.reason, field)

    return hook


@contextlib.contextmanager
def hooked(model: nn.Module, layers: Layers, *, channel_axis: int | Mapping[str, int] | None = None,
           output_field: str | int | Mapping[str, str | int] | None = None,
           mask: Any = "auto") -> Iterator[Activations]:
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
    channel_axis : int or dict of str to int, optional
        The axis of each layer's output that holds its neurons, when the
        automatic choice (see :func:`capture`) is not the right one.
    output_field : str, int or dict, optional
        Which field of a module's structured output to read (see :func:`capture`).
    mask : "auto", None or tensor, default "auto"
        ``"auto"``: each forward call's ``attention_mask`` (a keyword argument,
        a mapping entry, or a positional argument bound to a parameter of that
        name) becomes
        :attr:`Activations.mask`; ``None``: no mask; a tensor: that mask.

    Yields
    ------
    Activations
        A dict filled during each forward pass run inside the block, in the
        order the modules execute, with each layer's :class:`LayerInfo`. The
        stored tensors are the modules' outputs themselves (not copies, not
        detached), so gradients flow through them.

    Raises
    ------
    ValueError
        If a name is not a module of ``model`` (the message lists the closest
        valid names) or ``layers`` is empty.

    Notes
    -----
    - If a module returns a tuple, a dict or a ``ModelOutput``, its first
      floating-point tensor is stored (for an ``nn.LSTM``: the output
      sequence; for a Hugging Face model: ``last_hidden_state``), unless
      ``output_field`` names another.
    - If a module is called several times in one forward pass (a shared block
      applied repeatedly), only its **last** output is kept.
    - Entries persist across forward passes inside the block: each pass
      overwrites the entries of the modules it runs. Call ``.clear()`` on the
      dict between passes to detect modules that were not run.
    """
    _check_model(model)
    names = _resolve_layers(model, layers)
    axes = _axis_option(channel_axis, names)
    fields = _field_option(output_field, names)
    modules = _all_module_names(model)
    store = Activations()
    tracker = _probe.LayoutTracker()
    if isinstance(mask, (torch.Tensor, np.ndarray)):
        store.mask = torch.as_tensor(mask) != 0
    elif not (mask is None or mask is False or mask == "auto"):
        raise ValueError(f"mask={mask!r}; pass 'auto', None or a tensor of shape (n, positions).")

    def on_call(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tracker.reset()
        if isinstance(mask, str):
            found = _probe.find_call_mask(model, args, kwargs)
            store.mask = None if found is None else found != 0

    handles = []
    try:
        handles.append(model.register_forward_pre_hook(on_call, with_kwargs=True))
        tracker.attach(model)
        for name in names:
            handles.append(modules[name].register_forward_hook(
                _make_hook(name, store, tracker, axes, fields)))
        yield store
    finally:
        tracker.detach()
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


@contextlib.contextmanager
def _running_stats_kept(model: nn.Module) -> Iterator[None]:
    """Restore the running statistics of batch-norm layers in train mode after the block.

    A forward pass in train mode updates ``running_mean``/``running_var``/
    ``num_batches_tracked``; capture observes a network and must leave it as it was.
    """
    saved = [(m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None})
             for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in saved:
                for key, value in buffers.items():
                    getattr(module, key).copy_(value)


class _Progress:
    """Whether a forward pass got past its first layer (a module of the model with parameters
    of its own).

    While armed, one global forward hook (:func:`torch.nn.modules.module.register_module_forward_hook`:
    a single registration, whatever the model's size); the first module of the model with
    parameters that finishes in the calling thread records itself and removes it, so the
    rest of the pass runs without it. An error raised before that is a mismatch between the inputs and the first
    layer (or the forward signature); one raised later is the model's own.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handle: Any = None
        self.thread = threading.get_ident()
        self.layer_ran: nn.Module | None = None

    def arm(self) -> None:
        from torch.nn.modules.module import register_module_forward_hook

        self.disarm()
        self.layer_ran, self.thread = None, threading.get_ident()
        self.handle = register_module_forward_hook(self._done)

    def _done(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.layer_ran is not None or module is self.model or threading.get_ident() != self.thread:
            return  # (other threads' modules run this hook too)
        if any(p is not None for p in module._parameters.values()):
            self.layer_ran = module
            self.disarm()

    def disarm(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def describe(self, exc: BaseException) -> str:
        """Where ``exc`` was raised (the innermost module of the model in its traceback) and
        which first layer had run."""
        names = {id(m): name for name, m in self.model.named_modules()}
        where = f"{type(self.model).__name__}'s forward"
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names and owner is not self.model:
                where = f"module {names[id(owner)]!r} ({type(owner).__name__})"
        first = self.layer_ran
        ran = (f"its first layer {names.get(id(first), '?')!r} ({type(first).__name__}) ran"
               if first is not None else "its first layer ran")
        return f"raised in {where} after {ran}"

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disarm()


#: PEP 678 exception notes (Python >= 3.11)
_HAS_NOTES = hasattr(BaseException, "add_note")


def _noted(exc: BaseException, note: str) -> BaseException:
    """``exc`` with ``note`` attached (PEP 678 ``add_note``; on Python 3.10 an exception of the
    same type whose message ends with the note, to be raised from ``exc``, or ``exc`` itself
    when its type cannot be built from a message)."""
    if _HAS_NOTES:
        exc.add_note(note)
        return exc
    try:
        new = type(exc)(f"{exc}\n{note}")
    except Exception:
        return exc
    return new


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
    inputs: Any,
    layers: Layers,
    *,
    grad: bool = False,
    batch_size: int | None = None,
    channel_axis: int | Mapping[str, int] | None = None,
    output_field: str | int | Mapping[str, str | int] | None = None,
    mask: Any = "auto",
) -> Activations:
    """Run the model on a probe batch and return the outputs of the named modules.

    Parameters
    ----------
    model : torch.nn.Module
        The network. Its train/eval mode is **not** changed: call
        ``model.eval()`` first for analysis (dropout off, batch-norm running
        statistics), keep ``model.train()`` inside a training loop. Nothing
        of the model is modified: in train mode, batch-norm layers normalise
        with the probe batch's statistics, and their running statistics are
        restored afterwards.
    inputs : tensor, array, tuple or mapping
        The probe batch, batch on the first axis of every tensor:

        - a ``torch.Tensor`` (moved to the model's device, dtype kept) or a
          numpy array (float32; integer arrays become int64 token ids):
          ``model(inputs)``;
        - a tuple (or a list of tensors/arrays): positional arguments,
          ``model(*inputs)``, e.g. ``(input_ids, attention_mask)``;
        - a mapping or a tokenizer's ``BatchEncoding``: keyword arguments,
          ``model(**inputs)``; or, when no key names a parameter of
          ``model.forward`` and it takes one argument (a
          ``SentenceTransformer``), ``model(inputs)``.

        Containers may be nested; every tensor whose first axis is the batch
        is split by ``batch_size``.
    layers : str or sequence of str
        Dotted module names as given by ``model.named_modules()`` (see
        :func:`layer_names`). Duplicates are ignored.
    grad : bool, default False
        ``False`` runs under ``torch.no_grad()`` (analysis: no graph is kept).
        ``True`` runs under ``torch.enable_grad()`` and the returned tensors
        carry the autograd graph (training).
    batch_size : int, optional
        Run the probe set in chunks of this many inputs and concatenate the
        activations along the first axis, to bound memory on large probe sets;
        the result equals one batch up to floating-point rounding (a model in
        eval mode treats inputs independently). With ``grad=True`` chunking
        saves no memory (every chunk's graph is kept), and a model in train
        mode with batch normalisation sees per-chunk statistics.
    channel_axis : int or dict of str to int, optional
        The axis of each activation that holds the neurons, for every layer
        (an int) or some of them (a dict). By default it is decided from the
        module that produced the activation: axis 1 for ``Conv1d/2d/3d``,
        batch-norm and pooling layers; the last axis for ``Linear``,
        ``LayerNorm``, ``Embedding``, attention, transformer and recurrent
        layers (a sequence model's ``(n, tokens, features)``); for any other
        module (a ``ReLU``, a transformer or residual block), the layout of
        the last recognised layer that ran before it. A 3-d activation that
        none of this decides is reported as ambiguous (``channel_axis=None``
        in :attr:`Activations.info`; :meth:`Activations.neurons` then asks for
        this option).
    output_field : str, int or dict, optional
        For modules that return a tuple, a dict, a ``ModelOutput`` or
        another dataclass: the field to read (``"pooler_output"``, ``1``), for
        every layer or per layer. Default: the first floating-point tensor
        (``last_hidden_state``), recorded in ``info[layer].field``.
    mask : "auto", None, tensor or array, default "auto"
        Which positions are real tokens: ``"auto"`` takes the inputs'
        ``attention_mask`` (a mapping entry, or a positional argument that
        ``model.forward`` names ``attention_mask``); a tensor of shape ``(n, positions)`` (nonzero =
        real) is used as given; ``None`` uses every position. Stored in
        :attr:`Activations.mask` and applied by :meth:`Activations.neurons`
        (and :func:`otviz.layer_distances`) to every layer whose positions it
        describes.

    Returns
    -------
    Activations
        ``{name: activation}`` in the order of ``layers`` (a ``dict``), with
        :attr:`~Activations.info`, :attr:`~Activations.mask` and
        :meth:`~Activations.neurons`. For a module called several times, its
        last output (see :func:`hooked`).

    Raises
    ------
    ValueError
        Unknown or empty layer names, empty inputs, a named module that the
        forward pass never calls, an activation containing NaN or inf, a mask
        whose shape does not match the inputs or a layer's positions, an
        output field the module does not return, a chunked activation whose
        first axis is not the batch, or inputs the model's first layer fails on
        (the message says what it expects).
    Exception
        An error the model's own forward raises after its first layer ran
        (a ``RuntimeError``, ``IndexError``...) is raised as it is, with a note
        (:pep:`678`) naming where it was raised, the first layer that ran and
        the probe inputs.
    TypeError
        ``model`` is not an ``nn.Module``, or ``inputs`` is not numeric.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> acts = capture(net, np.zeros((5, 4)), ["0", "2"])
    >>> {k: tuple(v.shape) for k, v in acts.items()}
    {'0': (5, 8), '2': (5, 2)}
    >>> acts.neurons("0").shape
    torch.Size([8, 5])
    """
    _check_model(model)
    names = _resolve_layers(model, layers)
    if not isinstance(grad, (bool, np.bool_)):
        raise TypeError(f"grad must be True or False, got {grad!r}.")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    probe = _probe.Probe(inputs, model, _model_device(model), mask)
    n = probe.n
    step = n if batch_size is None else int(batch_size)
    bounds = [(i, min(i + step, n)) for i in range(0, n, step)]

    collected: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    infos: dict[str, LayerInfo] = {}
    mode = torch.enable_grad() if grad else torch.no_grad()
    with mode, _running_stats_kept(model), _Progress(model) as progress, \
            hooked(model, names, channel_axis=channel_axis, output_field=output_field,
                   mask=None) as store:
        for start, stop in bounds:
            store.clear()
            progress.arm()
            try:
                probe.call(model, start, stop)
            except (RuntimeError, TypeError, IndexError) as exc:
                if getattr(exc, "_otviz_hook", False):
                    raise
                if progress.layer_ran is None:
                    # nothing with weights ran yet: the inputs do not fit the first layer (or the
                    # forward signature); say what it expects
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ValueError(
                        f"{type(model).__name__} failed on the probe inputs ({probe.describe()}): "
                        f"{first}. {_probe.input_hint(model)}."
                    ) from exc
                # the model's own error, raised after its first layer accepted the inputs: kept
                noted = _noted(exc, f"otviz.capture: {progress.describe(exc)}, on the probe inputs "
                                    f"({probe.describe()})")
                if noted is exc:
                    raise
                raise noted from exc  # Python 3.10: the same type, the note in its message
            missing = [name for name in names if name not in store]
            if missing:
                raise ValueError(
                    f"Module(s) {missing} were not called during model's forward pass, so they "
                    "have no activation. Pick modules the forward pass uses "
                    "(otviz.layer_names(model) lists candidates)."
                )
            for name in names:
                act = store[name]
                if len(bounds) > 1 and (act.ndim == 0 or act.shape[0] != stop - start):
                    raise ValueError(
                        f"Activation of layer {name!r} has shape {tuple(act.shape)}, whose first "
                        f"axis is not the batch ({stop - start} inputs in this chunk), so chunks "
                        "cannot be concatenated. Pass batch_size=None."
                    )
                collected[name].append(act)
                infos[name] = store.info[name]

    out = Activations()
    out.mask, out.inputs = probe.mask, probe.describe()
    for name in names:
        parts = collected[name]
        act = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        _check_finite(name, act)
        out[name] = act
        out.info[name] = dataclasses.replace(infos[name], shape=tuple(act.shape))
    for name in names:
        out.mask_for(name)  # a mask that does not fit a layer is an error now, not later
    return out


def dead_neurons(matrix: np.ndarray | torch.Tensor, rtol: float = 1e-6) -> np.ndarray:
    r"""Indices of the neurons (rows) that are constant over their responses.

    Neuron :math:`i` is dead when its standard deviation over the
    responses is at most ``rtol`` times the root-mean-square standard
    deviation of the layer, :math:`\sigma_i \le \mathrm{rtol}\,
    (\frac1m\sum_k \sigma_k^2)^{1/2}` (a ReLU silent on the whole probe
    batch, a unit whose LayerNorm weight is ~0). Such a neuron has no
    direction: per-neuron standardisation and the cosine and correlation
    costs are undefined for it.

    Parameters
    ----------
    matrix : numpy.ndarray or torch.Tensor, shape (neurons, responses)
        A neuron matrix (:func:`neurons`).
    rtol : float, default 1e-6

    Returns
    -------
    numpy.ndarray of int
        Sorted row indices; empty when no neuron is dead. Every row is
        returned when the whole layer is constant.
    """
    if isinstance(matrix, torch.Tensor):
        arr = matrix.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(matrix, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"matrix has shape {arr.shape}; pass a neuron matrix (neurons, responses).")
    std = arr.std(axis=1)
    rms = float(np.sqrt(np.mean(std ** 2)))
    return np.flatnonzero(std <= rtol * rms) if rms > 0 else np.arange(arr.shape[0])


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
    *,
    channel_axis: int | None = None,
    mask: Any = None,
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
    - a sequence :math:`A \\in \\mathbb{R}^{n \\times L \\times d}` (a
      transformer's tokens, ``channel_axis=-1``) or :math:`n \\times c \\times
      L` (a ``Conv1d``, ``channel_axis=1``) is handled likewise: positions
      are the tokens. With a mask :math:`m \\in \\{0, 1\\}^{n \\times L}`,
      only real tokens count: ``"mean"`` gives :math:`N_{i, k} = \\sum_p
      m_{kp} A_{k, p, i} / \\sum_p m_{kp}`, ``"flatten"`` keeps one response
      per real token, :math:`N \\in \\mathbb{R}^{d \\times \\sum_{kp} m_{kp}}`.

    Parameters
    ----------
    activation : numpy.ndarray or torch.Tensor
        Output of a layer for :math:`n` inputs, batch on the first axis,
        neurons on ``channel_axis``, positions on the other axes.
    spatial : {"flatten", "mean"}, default "flatten"
        How a neuron's map (or token sequence) becomes a vector: all positions
        kept, or averaged. Ignored for dense output.
    size : int or tuple of int, optional
        Resize the maps to ``(h', w')`` (an int means square; ``(L',)`` or an
        int for 1-d maps) by adaptive average pooling before flattening, so
        that teacher and student maps of different sizes give neurons in the
        same space. Only with ``spatial="flatten"`` and without a mask. Sizes
        larger than the map replicate values rather than adding information.
    channel_axis : int, optional
        The axis holding the neurons. Default: axis 1 for a 2-d activation
        ``(n, units)`` and for 4-d and 5-d maps (PyTorch's channel-first
        convention); a 3-d activation is ambiguous (``(n, channels, length)``
        or ``(n, tokens, features)``) and must say which. :func:`capture`
        decides it from the module that produced the activation
        (:meth:`Activations.neurons` passes it on).
    mask : tensor or array, optional
        Shape ``(n, positions...)``: nonzero marks the real positions (the
        attention mask of a tokenizer). Padding then enters no response.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The neuron matrix, of the input's type. A tensor stays on its device
        and keeps its autograd graph; non-floating input is cast to a floating
        dtype (float64 for numpy, the default dtype for torch).

    Raises
    ------
    ValueError
        Unknown ``spatial``, fewer than 2 axes, an ambiguous 3-d activation
        without ``channel_axis``, an empty activation, NaN or inf values,
        ``size`` given for dense output, with ``spatial="mean"`` or with a
        mask, a malformed ``size``, or a mask of the wrong shape or with an
        input that has no real position.

    Examples
    --------
    >>> neurons(np.zeros((10, 3, 4, 4))).shape
    (3, 160)
    >>> neurons(np.zeros((10, 3, 4, 4)), spatial="mean").shape
    (3, 10)
    >>> neurons(np.zeros((10, 3, 8, 8)), size=4).shape
    (3, 160)
    >>> neurons(np.zeros((10, 7, 32)), spatial="mean", channel_axis=-1).shape  # 7 tokens, 32 units
    (32, 10)
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
    if t.ndim < 2 or t.ndim > 5:
        raise ValueError(
            f"activation has shape {tuple(t.shape)} (ndim={t.ndim}); expected (n, units), "
            "(n, channels, length), (n, tokens, features), (n, channels, height, width) or "
            "(n, channels, depth, height, width), with the probe batch on the first axis."
        )
    if channel_axis is None:
        if t.ndim == 3:
            raise ValueError(
                f"activation has shape {tuple(t.shape)}, which is ambiguous: its neurons are on "
                "axis 1 for a Conv1d's (n, channels, length), on the last axis for a transformer's "
                "(n, tokens, features). Pass channel_axis=1 or channel_axis=-1 (capture() decides "
                "it from the module: use acts.neurons(layer))."
            )
        axis = 1
    else:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
            raise TypeError(f"channel_axis must be an int, got {channel_axis!r}.")
        if not -t.ndim <= channel_axis < t.ndim or channel_axis % t.ndim == 0:
            raise ValueError(
                f"channel_axis={channel_axis} is not a feature axis of an activation of shape "
                f"{tuple(t.shape)}; pass an axis in 1..{t.ndim - 1} (or -1 for the last)."
            )
        axis = int(channel_axis) % t.ndim
    if t.numel() == 0:
        raise ValueError(f"activation is empty (shape {tuple(t.shape)}); every axis must be non-empty.")
    finite = torch.isfinite(t.detach())
    if not bool(finite.all()):
        raise ValueError(
            f"activation contains {int((~finite).sum())} non-finite value(s) (NaN or inf). "
            "Check the inputs and the model that produced it."
        )
    if axis != 1:
        t = t.movedim(axis, 1)

    if t.ndim == 2:
        if size is not None:
            raise ValueError(
                f"size={size!r} was given but the activation is dense (shape {tuple(t.shape)}); "
                "size only applies to convolutional maps. Pass size=None."
            )
        out = t.T.contiguous()
    elif mask is not None:
        out = _masked_neurons(t, mask, spatial, size)
    else:
        n_spatial = t.ndim - 2
        if size is not None:
            if spatial != "flatten":
                raise ValueError(
                    f"size={size!r} only has an effect with spatial='flatten' (spatial averaging "
                    "already removes the map size). Pass size=None, or spatial='flatten'."
                )
            target = _spatial_size(size, n_spatial)
            pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[n_spatial - 1]
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


def _masked_neurons(t: torch.Tensor, mask: Any, spatial: str, size: Any) -> torch.Tensor:
    """Neurons of a channel-first ``t`` (n, c, positions...) over the real positions of ``mask``."""
    if size is not None:
        raise ValueError(f"size={size!r} cannot be combined with a mask (resizing would mix padding "
                         "into real positions). Pass size=None.")
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    positions = (t.shape[0],) + tuple(t.shape[2:])
    if tuple(m.shape) != positions:
        raise ValueError(
            f"mask has shape {tuple(m.shape)} but the activation (neurons moved to axis 1: "
            f"{tuple(t.shape)}) has positions {positions}; pass a mask of shape (n, positions...) "
            "as the tokenizer's attention_mask has."
        )
    m = (m != 0).to(t.device)
    counts = m.reshape(m.shape[0], -1).sum(dim=1)
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero().flatten().tolist()[:5]
        raise ValueError(f"mask has no real position for input(s) {empty}; every input needs one.")
    if spatial == "mean":
        weights = m.unsqueeze(1).to(t.dtype)  # (n, 1, positions...)
        dims = tuple(range(2, t.ndim))
        return ((t * weights).sum(dim=dims) / counts.to(t.dtype).unsqueeze(1)).T.contiguous()
    # (n, c, positions...) -> (n, positions..., c) -> rows of real positions, sample-major
    return t.movedim(1, -1)[m].T.contiguous()
