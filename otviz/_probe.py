"""How real models are fed and read: probe inputs, module outputs, the neuron axis.

Private helpers of :mod:`otviz.capture`.

- :class:`Probe` turns what a user passes as ``inputs`` (a tensor, an array, a
  tuple of positional arguments, a mapping or a tokenizer's ``BatchEncoding``
  of keyword arguments, possibly nested) into one call of the model, finds the
  attention mask, and splits the call into chunks along the batch.
- :func:`read_output` picks the activation out of what a module returns (a
  tensor, a tuple, a dict, a ``ModelOutput`` or another dataclass).
- :func:`module_layout` and :class:`LayoutTracker` decide which axis of an
  activation holds the neurons: from the module that produced it when its
  type says so (``Conv*d``: axis 1; ``Linear``, ``LayerNorm``, ``Embedding``,
  attention: the last axis), otherwise from the last such module that ran
  before it in the forward pass (a ``ReLU``, a transformer block, a residual
  block take the layout of what they wrap or follow).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

MASK_KEYS = ("attention_mask",)
_BATCH_KEYS = ("input_ids", "pixel_values", "inputs_embeds", "input_values", "input_features")


# ----------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------
def _to_tensor(value: Any, device: torch.device) -> Any:
    """Tensors and numeric arrays become tensors on ``device``; containers are walked."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, np.ndarray):
        if value.dtype == bool or np.issubdtype(value.dtype, np.floating):
            return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).to(device)
        if np.issubdtype(value.dtype, np.integer):
            return torch.from_numpy(np.ascontiguousarray(value, dtype=np.int64)).to(device)
        raise TypeError(f"an input array has dtype {value.dtype}; pass numeric arrays or tensors.")
    if isinstance(value, Mapping):
        return {k: _to_tensor(v, device) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_tensor(v, device) for v in value)
    if isinstance(value, list) and any(isinstance(v, (torch.Tensor, np.ndarray, Mapping)) for v in value):
        return [_to_tensor(v, device) for v in value]
    return value


def _tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) of every tensor in a nested input, in order."""
    if isinstance(value, torch.Tensor):
        yield prefix or "inputs", value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _tensors(v, f"{prefix}[{k!r}]" if prefix else str(k))
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{prefix}[{i}]" if prefix else f"[{i}]")


def _find_mask(value: Any) -> torch.Tensor | None:
    if isinstance(value, Mapping):
        for key in MASK_KEYS:
            if isinstance(value.get(key), torch.Tensor):
                return value[key]
        for v in value.values():
            found = _find_mask(v) if isinstance(v, (Mapping, tuple, list)) else None
            if found is not None:
                return found
    elif isinstance(value, (tuple, list)):
        for v in value:
            found = _find_mask(v)
            if found is not None:
                return found
    return None


def find_call_mask(model: nn.Module, args: tuple, kwargs: Mapping) -> torch.Tensor | None:
    """The attention mask of a call ``model(*args, **kwargs)``, found by name.

    A keyword argument or mapping entry named ``attention_mask``, or a
    positional argument bound to a parameter of that name in
    ``model.forward``'s signature (``bert(ids, mask)``).
    """
    found = _find_mask((args, kwargs))
    if found is not None or not args:
        return found
    try:
        bound = inspect.signature(model.forward).bind_partial(*args)
    except (TypeError, ValueError):
        return None
    for key in MASK_KEYS:
        value = bound.arguments.get(key)
        if isinstance(value, torch.Tensor):
            return value
    return None


def _slice(value: Any, n: int, start: int, stop: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.ndim >= 1 and value.shape[0] == n else value
    if isinstance(value, Mapping):
        return {k: _slice(v, n, start, stop) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_slice(v, n, start, stop) for v in value)
    if isinstance(value, list):
        return [_slice(v, n, start, stop) for v in value]
    return value


def _mapping_as_keywords(model: nn.Module, mapping: Mapping) -> bool:
    """Whether ``model`` takes ``mapping`` as keyword arguments (else as its one positional argument).

    Keyword arguments when a key of the mapping names a parameter of
    ``forward`` (``input_ids`` for a Hugging Face model); the mapping itself
    when ``forward`` has exactly one required positional parameter and no key
    names a parameter (a ``SentenceTransformer``, a ``forward(self, batch)``).
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return True
    named = {k for k, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if set(map(str, mapping)) & named:
        return True
    required = [p for p in params.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(required) != 1


def describe_value(value: Any) -> str:
    """Short description of an input: ``"input_ids int64 (8, 27), attention_mask int64 (8, 27)"``."""
    parts = [f"{path} {str(t.dtype).replace('torch.', '')} {tuple(t.shape)}"
             for path, t in _tensors(value)]
    return ", ".join(parts) if parts else type(value).__name__


class Probe:
    """One call of a model on a probe batch: positional and keyword arguments, batch size, mask.

    Parameters
    ----------
    inputs
        A tensor or numeric array (one positional argument); a tuple, or a
        list holding tensors or arrays (positional arguments); a mapping or
        ``BatchEncoding`` (keyword arguments, or the mapping itself as the
        one positional argument of a ``forward(self, batch)``). Nested
        containers are walked; tensors are moved to ``device``.
    model
        The network (its ``forward`` signature decides how a mapping is passed).
    device
        Where the model's parameters are.
    mask
        ``"auto"``: the ``attention_mask`` of the inputs if there is one;
        ``None``: no mask; a tensor or array of shape ``(n, positions...)``:
        this mask (nonzero = a real position).
    """

    def __init__(self, inputs: Any, model: nn.Module, device: torch.device, mask: Any = "auto") -> None:
        if isinstance(inputs, (torch.Tensor, np.ndarray)) or (
            isinstance(inputs, list) and not any(isinstance(v, (torch.Tensor, np.ndarray, Mapping))
                                                 for v in inputs)
        ):
            if not isinstance(inputs, torch.Tensor):
                try:
                    arr = np.asarray(inputs)
                except Exception as exc:  # pragma: no cover - ragged lists
                    raise TypeError(
                        f"inputs could not be read as an array ({exc}); pass a tensor, an array, a "
                        "tuple of positional arguments or a mapping of keyword arguments."
                    ) from exc
                if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
                    raise TypeError(
                        f"inputs has dtype {arr.dtype}; pass a numeric numpy array or a torch.Tensor "
                        "(for text, tokenise first and pass the tokenizer's output)."
                    )
                inputs = arr
            self.args: tuple = (_to_tensor(inputs, device),)
            self.kwargs: dict[str, Any] = {}
        elif isinstance(inputs, Mapping):
            converted = _to_tensor(inputs, device)
            if _mapping_as_keywords(model, inputs):
                bad = [k for k in converted if not isinstance(k, str)]
                if bad:
                    raise TypeError(f"inputs is a mapping with non-string keys {bad}; keyword "
                                    "arguments need string keys.")
                self.args, self.kwargs = (), dict(converted)
            else:
                self.args, self.kwargs = (converted,), {}
        elif isinstance(inputs, (tuple, list)):
            self.args, self.kwargs = tuple(_to_tensor(v, device) for v in inputs), {}
        else:
            raise TypeError(
                f"inputs must be a torch.Tensor, a numpy array, a tuple of positional arguments or a "
                f"mapping of keyword arguments (e.g. a tokenizer's output), got {type(inputs).__name__}."
            )
        everything = (self.args, self.kwargs)
        found = list(_tensors(self.kwargs)) + list(_tensors(self.args))
        if not found:
            raise TypeError(f"inputs holds no tensor or array ({describe_value(inputs)}); pass the "
                            "probe batch as tensors or arrays.")
        batch = next((t for path, t in found if path.split("[")[0] in _BATCH_KEYS), None)
        batch = batch if batch is not None else next(t for _, t in _tensors(everything))
        if batch.ndim == 0:
            raise ValueError(
                "inputs is a scalar. Pass a batch of inputs with the batch on the first axis, "
                "e.g. shape (n, channels, height, width)."
            )
        self.n = int(batch.shape[0])
        self.model = model
        if self.n == 0:
            raise ValueError("inputs is empty (0 samples). Pass a probe batch with at least one input.")
        self.mask = self._mask(mask, device)

    def _mask(self, mask: Any, device: torch.device) -> torch.Tensor | None:
        if mask is None or mask is False:
            return None
        if isinstance(mask, str):
            if mask != "auto":
                raise ValueError(f"mask={mask!r}; pass 'auto', None or a tensor of shape (n, positions).")
            found = find_call_mask(self.model, self.args, self.kwargs)
            return None if found is None else self._check_mask(found, "the inputs' attention_mask")
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(np.asarray(mask))
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be 'auto', None, a tensor or an array, got {type(mask).__name__}.")
        return self._check_mask(mask.to(device), "mask")

    def _check_mask(self, mask: torch.Tensor, what: str) -> torch.Tensor:
        if mask.ndim < 2 or mask.shape[0] != self.n:
            raise ValueError(
                f"{what} has shape {tuple(mask.shape)}; expected (n, positions...) with n = {self.n} "
                "inputs, e.g. (n, tokens) as a tokenizer returns it."
            )
        if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{what} holds values other than 0 and 1; pass 1 for real positions and "
                             "0 for padding.")
        mask = mask != 0
        empty = (~mask.reshape(self.n, -1).any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"{what} has no real position for input(s) {empty[:5]}; every probe input needs at "
                "least one unmasked position."
            )
        return mask

    def call(self, model: nn.Module, start: int = 0, stop: int | None = None) -> Any:
        if start == 0 and (stop is None or stop >= self.n):
            return model(*self.args, **self.kwargs)
        args = _slice(self.args, self.n, start, stop)
        kwargs = _slice(self.kwargs, self.n, start, stop)
        return model(*args, **kwargs)

    def describe(self) -> str:
        return describe_value(self.kwargs if self.kwargs else self.args if len(self.args) > 1
                              else self.args[0])


def input_hint(model: nn.Module) -> str:
    """What the first layer of ``model`` expects, for error messages."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            return (f"Its first layer {name!r} is an Embedding of {m.num_embeddings} entries: pass "
                    f"integer ids in [0, {m.num_embeddings})")
        if isinstance(m, nn.modules.conv._ConvNd):
            d = len(m.kernel_size)
            shape = ", ".join(["n", str(m.in_channels)] + ["..."] * d)
            return f"Its first layer {name!r} is a {type(m).__name__}: pass floats of shape ({shape})"
        if isinstance(m, nn.Linear):
            return (f"Its first layer {name!r} is a Linear of {m.in_features} inputs: pass floats of "
                    f"shape (n, {m.in_features})")
    return "Check the inputs against the model's forward signature"


# ----------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------
def _fields(output: Any) -> list[tuple[Any, Any]] | None:
    if isinstance(output, Mapping):  # dict, ModelOutput (an OrderedDict), BatchEncoding
        return list(output.items())
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # namedtuple
        return list(zip(output._fields, output))
    if isinstance(output, (tuple, list)):
        return list(enumerate(output))
    return None


def read_output(output: Any, field: str | int | None, where: str) -> tuple[torch.Tensor, str | None]:
    """The activation in a module's output, and the field it was read from (``None``: the output itself).

    With ``field=None``: the output if it is a tensor, else its first
    floating-point tensor field (``last_hidden_state`` of a ``ModelOutput``,
    the output sequence of an LSTM), else its first tensor field.
    """
    if isinstance(output, torch.Tensor):
        if field is not None:
            raise ValueError(f"{where} returns a tensor, which has no field {field!r}; drop output_field "
                             "for this layer.")
        return output, None
    items = _fields(output)
    if items is None:
        raise TypeError(f"{where} returned {type(output).__name__}, which holds no tensor. Capture a "
                        "module that returns a tensor, a tuple, a dict or a ModelOutput.")
    tensors = [(k, v) for k, v in items if isinstance(v, torch.Tensor)]
    if field is not None:
        for k, v in items:
            if k == field or str(k) == str(field):
                if not isinstance(v, torch.Tensor):
                    raise ValueError(f"{where}: output field {field!r} is {type(v).__name__}, not a "
                                     f"tensor; tensor fields: {[k for k, _ in tensors]}.")
                return v, str(k)
        raise ValueError(f"{where} returns {type(output).__name__} without a field {field!r}; its tensor "
                         f"fields are {[k for k, _ in tensors]}. Pass one of them as output_field.")
    if not tensors:
        raise TypeError(f"{where} returned {type(output).__name__} with no tensor at its top level "
                        f"(fields {[k for k, _ in items]}). Capture a module that returns a tensor, or "
                        "name a field with output_field.")
    floating = [(k, v) for k, v in tensors if v.is_floating_point()]
    key, value = (floating or tensors)[0]
    return value, (f"[{key}]" if isinstance(key, int) else str(key))


# ----------------------------------------------------------------------------
# the neuron axis
# ----------------------------------------------------------------------------
_POOLS = tuple(getattr(nn.modules.pooling, n) for n in (
    "_MaxPoolNd", "_AvgPoolNd", "_AdaptiveAvgPoolNd", "_AdaptiveMaxPoolNd", "_LPPoolNd",
) if hasattr(nn.modules.pooling, n))
_CHANNEL_FIRST: tuple[type, ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm, nn.LocalResponseNorm, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.PixelShuffle,
    nn.PixelUnshuffle, *_POOLS,
)
_CHANNEL_LAST: tuple[type, ...] = tuple(c for c in (
    nn.Linear, nn.Bilinear, nn.LayerNorm, getattr(nn, "RMSNorm", None), nn.Embedding, nn.EmbeddingBag,
    nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
    nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer, nn.RNNBase,
) if c is not None)
# classes of other libraries, recognised by name: Hugging Face's GPT-2 Conv1D is a
# linear layer on (n, tokens, features); *LayerNorm / *RMSNorm normalise the last axis
_LAST_SUFFIXES = ("LayerNorm", "RMSNorm", "Linear")
_LAST_NAMES = ("Conv1D",)


def module_layout(module: nn.Module) -> str | None:
    """``"first"`` (channels on axis 1), ``"last"`` (last axis) or ``None`` (the type does not say)."""
    if isinstance(module, _CHANNEL_FIRST):
        return "first"
    if isinstance(module, _CHANNEL_LAST):
        return "last"
    name = type(module).__name__
    if name in _LAST_NAMES or name.endswith(_LAST_SUFFIXES):
        return "last"
    return None


@dataclasses.dataclass
class Layout:
    """Where the neurons of a layer's activation are, and how that was decided."""

    axis: int | None  # non-negative, or None when the shape is ambiguous
    reason: str
    batch_first: bool = True


class LayoutTracker:
    """Remembers the last module of known layout that finished in the forward pass."""

    def __init__(self) -> None:
        self.last: tuple[str, str, str, int] | None = None  # (layout, name, type, feature size)
        self.handles: list[Any] = []

    def attach(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            layout = module_layout(module)
            if layout is not None:
                self.handles.append(module.register_forward_hook(self._hook(name, layout)))

    def _hook(self, name: str, layout: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            try:
                tensor, _ = read_output(output, None, name)
            except (TypeError, ValueError):
                return
            if tensor.ndim >= 2:
                size = int(tensor.shape[1] if layout == "first" else tensor.shape[-1])
                self.last = (layout, name, type(module).__name__, size)
        return hook

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def reset(self) -> None:
        self.last = None


def _batch_first(module: nn.Module) -> bool:
    """False for a recurrent/attention/transformer module built with ``batch_first=False``."""
    inner = module
    if isinstance(module, (nn.TransformerEncoder, nn.TransformerDecoder)) and len(module.layers):
        inner = module.layers[0]
    flag = getattr(inner, "batch_first", None)
    if flag is None:
        flag = getattr(getattr(inner, "self_attn", None), "batch_first", None)
    return flag is not False


def decide_layout(module: nn.Module, act: torch.Tensor, given: int | None,
                  last: tuple[str, str, str, int] | None) -> Layout:
    """The neuron axis of ``act``, the output of ``module``.

    In order: the axis the user gave; axis 1 of a 2-d activation; the
    module's own type (:func:`module_layout`); the layout of the last module of
    known type that ran before it (a block takes the layout of its last
    recognised sublayer, an activation function that of the layer it follows),
    moved to the one other axis of the same size if the tensor was permuted in
    between; axis 1 of a 4-d or larger map (PyTorch's channel-first
    convention). Otherwise (a 3-d activation of an unrecognised module with no
    recognised module before it) the axis is ``None``: the shape is ambiguous
    between (n, channels, length) and (n, tokens, features).
    """
    ndim = act.ndim
    if given is not None:
        return Layout(given % ndim, "given")
    if ndim < 2:
        return Layout(None, f"{ndim}-d output")
    layout = module_layout(module)
    if layout is not None:
        if layout == "last" and ndim == 3 and not _batch_first(module):
            return Layout(None, f"{type(module).__name__} with batch_first=False", batch_first=False)
        axis = 1 if layout == "first" or ndim == 2 else ndim - 1
        return Layout(axis, type(module).__name__)
    if ndim == 2:
        return Layout(1, "dense (n, units)")
    if last is not None:
        kind, name, cls, size = last
        axis = 1 if kind == "first" else ndim - 1
        if act.shape[axis] != size:
            others = [a for a in range(1, ndim) if a != axis and act.shape[a] == size]
            if len(others) == 1:
                axis = others[0]
        return Layout(axis, f"as {cls} {name!r}, the last recognised layer before it")
    if ndim >= 4:
        return Layout(1, "channel-first convention (n, c, h, w)")
    return Layout(None, "ambiguous (n, a, b) output of an unrecognised module")
