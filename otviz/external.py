"""Models from outside otviz, and probe inputs for them, read without unpickling anything.

Three kinds of model files are read, each by a loader that never runs Python
code stored in the file:

- a **Hugging Face model directory** (``config.json`` and ``*.safetensors``,
  optionally tokenizer files), as written by ``model.save_pretrained(dir)``
  (a SentenceTransformer directory holds one at its root):
  :func:`load_hf_dir`, through ``transformers.AutoModel.from_pretrained(dir,
  local_files_only=True, use_safetensors=True)``; its tokenizer too when the
  directory has one;
- a **torch.export program** (``.pt2``, written by
  ``torch.export.save(torch.export.export(model, args), path)``):
  :func:`load_exported`; the program is unflattened
  (``torch.export.unflatten``) so that the original module names (e.g.
  ``features.conv1``) exist and forward hooks on them fire;
- a **state dict** (``.safetensors``, or ``.pt``/``.pth`` read with
  ``torch.load(weights_only=True)``) for a *named* architecture:
  :func:`load_state_dict_model`, with ``arch`` a model of timm
  (``"timm:resnet18"``) or torchvision (``"torchvision:resnet18"``) when they
  are installed, or an otviz family (``"cnn"``, ``"mlp"``, widths read from the
  weights' shapes).

:func:`load_external` picks the loader from the path. An otviz checkpoint
(``otviz.teachers.save_checkpoint``) is read too.

Memory limit
------------
Every loader estimates the bytes of the declared model *before* allocating it
and raises :class:`ModelTooLargeError` (a ValueError) above ``max_bytes``
(default :data:`DEFAULT_MAX_BYTES` = 2 GiB): a Hugging Face architecture is
built from its config on PyTorch's ``meta`` device (shapes, no storage) and the
``*.safetensors`` headers (shapes and dtypes, 8 bytes plus a JSON table) are
read without their tensors; a ``.pt2``/``.pt`` archive is judged by the
uncompressed sizes its zip directory declares, a ``.pt2`` also by the shapes
and dtypes its weights and constants declare (a tiny record declared as a huge
view counts at its full size); an architecture named for a
state dict is built on ``meta`` as well. The estimate is

.. math:: \\text{bytes} = \\sum_{t \\in \\text{params} \\cup \\text{buffers}}
          \\operatorname{numel}(t) \\cdot \\operatorname{sizeof}(\\operatorname{dtype}(t)),

the memory the weights themselves take; activations come on top and grow with
the probe batch.

Probe inputs
------------
The probe readers (:func:`load_probe`, :func:`load_tensor_file`,
:func:`load_image_folder`, :func:`tokenize_sentences`, :func:`shipped_probe`,
:func:`check_probe`) live in :mod:`otviz.probes` and are importable from here too.

Optional dependencies: ``transformers`` (model directories, tokenizers),
``safetensors`` (installed with transformers), ``Pillow`` (image folders),
``timm``/``torchvision`` (named architectures). Each is imported only when
needed; a missing one raises ImportError naming the ``pip install`` to run.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ._files import check_regular_file, loads_json, open_regular, read_json
from ._memory import DEFAULT_MAX_BYTES, ModelTooLargeError, check_limit, format_bytes, module_nbytes, zip_nbytes
from ._pt2 import check_archive, check_graph, forced_weights_only

#: The probe readers of :mod:`otviz.probes` (and its limits), served from this module too
#: (:func:`__getattr__`); the same names as ``otviz.probes.__all__`` (tested).
_PROBE_FUNCTIONS = ("load_probe", "load_tensor_file", "load_image_folder", "tokenize_sentences", "shipped_probe",
                    "check_probe")
_PROBE_NAMES = frozenset(_PROBE_FUNCTIONS + ("MAX_PROBE_INPUTS", "MAX_IMAGE_PIXELS", "MAX_IMAGE_FILE_BYTES",
                                             "MAX_TEXT_READ_BYTES", "CHARS_PER_TOKEN", "MAX_NPZ_MEMBERS"))

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ModelTooLargeError",
    "InputSpec",
    "ExternalModel",
    "load_external",
    "load_hf_dir",
    "load_exported",
    "load_state_dict_model",
    "estimate_nbytes",
    "safetensors_header",
    *_PROBE_FUNCTIONS,
]

PathLike = Union[str, "os.PathLike[str]"]
Probe = Union[torch.Tensor, tuple, Mapping]

#: File names that mark a tokenizer in a Hugging Face model directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
#: Image file extensions read by :func:`load_image_folder`.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Probe file extensions read by :func:`load_tensor_file`.
TENSOR_EXTENSIONS = (".npy", ".npz", ".safetensors", ".pt", ".pth")

_ST_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                   "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
                   "F8_E8M0": 1, "C64": 8}
_PIP = {"transformers": "transformers", "safetensors": "safetensors", "PIL": "Pillow", "timm": "timm",
        "torchvision": "torchvision"}


# --------------------------------------------------------------------------- data classes
@dataclass
class InputSpec:
    """What a model declares about its input, where it is knowable.

    Attributes
    ----------
    kind : {"tokens", "images", "tensors"}
        Token ids (a text model with a vocabulary), images ``(N, C, H, W)``, or
        positional tensors with known shapes (an exported program).
    shapes : list of tuple
        One shape per positional input, batch axis included; ``None`` marks a
        free (dynamic) dimension. Empty when unknown.
    dtypes : list of torch.dtype
        One dtype per positional input (``[]`` when unknown).
    names : list of str
        Names of the inputs (``["input_ids", ...]``, ``["x"]``).
    channels : int or None
        Image channels, when stated.
    image_size : tuple of int or None
        ``(H, W)`` of the images, when stated.
    vocab_size : int or None
        Token ids must be in ``[0, vocab_size)``.
    max_length : int or None
        Longest token sequence (position embeddings).
    features : int or None
        Values per input after flattening (an MLP's ``in_features``).
    """

    kind: str
    shapes: list = field(default_factory=list)
    dtypes: list = field(default_factory=list)
    names: list = field(default_factory=list)
    channels: int | None = None
    image_size: tuple[int, int] | None = None
    vocab_size: int | None = None
    max_length: int | None = None
    features: int | None = None

    def describe(self) -> str:
        """One line for a person: ``images (N, 3, 224, 224), float32``."""
        if self.kind == "tokens":
            parts = ["token ids"]
            if self.vocab_size:
                parts.append(f"vocabulary {self.vocab_size}")
            if self.max_length:
                parts.append(f"at most {self.max_length} tokens")
            return ", ".join(parts)
        if self.shapes:
            parts = []
            for i, shape in enumerate(self.shapes):
                dims = ", ".join("N" if a == 0 and d is None else "*" if d is None else str(d)
                                 for a, d in enumerate(shape))
                name = self.names[i] + ": " if i < len(self.names) else ""
                dtype = self.dtypes[i] if i < len(self.dtypes) else None
                parts.append(f"{name}({dims})" + (f" {str(dtype).replace('torch.', '')}" if dtype else ""))
            return f"{self.kind} {'; '.join(parts)}"
        if self.kind == "images":
            c = self.channels if self.channels else "C"
            h, w = self.image_size if self.image_size else ("H", "W")
            return f"images (N, {c}, {h}, {w}), float"
        if self.features:
            return f"tensors with {self.features} values each (flattened)"
        return self.kind


@dataclass
class ExternalModel:
    """A model read by :func:`load_external` and what is known about it.

    Attributes
    ----------
    model : torch.nn.Module
        The network in eval mode (for a ``.pt2``, the unflattened program:
        its submodules keep their original names and take forward hooks).
    kind : {"huggingface", "export", "state_dict", "otviz"}
        Which loader read it.
    source : str
        The path read.
    nbytes : int
        Estimated bytes of parameters and buffers (checked against the limit
        before loading).
    tokenizer : object or None
        The directory's tokenizer (Hugging Face models), else None.
    input_spec : InputSpec or None
        What the model declares about its input; None when nothing is known.
    info : dict
        Description for display: ``name``, ``architecture``, ``parameters``
        and loader-specific entries (``task`` for otviz checkpoints, whose
        shipped data is then the natural probe).
    """

    model: nn.Module
    kind: str
    source: str
    nbytes: int
    tokenizer: Any = None
    input_spec: InputSpec | None = None
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        """One line for a person, e.g. ``BertModel (huggingface), 35.4k parameters, 138 KiB``."""
        n = self.info.get("parameters")
        count = "" if n is None else f", {_count(n)} parameters"
        return f"{self.info.get('architecture', type(self.model).__name__)} ({self.kind}){count}, " \
               f"{format_bytes(self.nbytes)}"


def _count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


# --------------------------------------------------------------------------- helpers
def _require(module: str, what: str) -> Any:
    """Import an optional dependency, or raise ImportError naming the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise ImportError(
            f"{what} needs the optional package {top!r}, which is not installed: "
            f"pip install {_PIP.get(top, top)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision built for another torch
        top = module.split(".")[0]
        raise ImportError(
            f"{what} needs {top!r}, which is installed but cannot be imported "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); install a "
            f"{top} release built for torch {torch.__version__}: pip install -U {_PIP.get(top, top)}"
        ) from exc


def _as_path(path: Any, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist; pass an existing file or directory")
    return p


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def _n_params(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return int(total)


def safetensors_header(path: PathLike) -> dict[str, dict[str, Any]]:
    """The tensor table of a ``.safetensors`` file, read without its tensors.

    The format starts with an 8-byte little-endian header length and a JSON
    header ``{name: {"dtype": "F32", "shape": [...], "data_offsets": [a, b]}}``;
    only these bytes are read.

    Parameters
    ----------
    path : path-like
        The file.

    Returns
    -------
    dict
        ``{name: {"dtype": str, "shape": list of int, "nbytes": int}}``
        (the ``__metadata__`` entry is left out).

    Raises
    ------
    ValueError
        If the file is not a safetensors file (too short, header length beyond
        the file, header not JSON).
    """
    p = _as_path(path, "safetensors file")
    with open_regular(p, "safetensors file") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{p} is not a safetensors file: it has only {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 * 1024**2):
            raise ValueError(f"{p} is not a safetensors file: its header length {n} does not fit the "
                             f"file ({size} bytes)")
        raw = fh.read(n)
    try:
        table = loads_json(raw.decode("utf-8"), f"the header of {p}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{p} is not a safetensors file: its header is not JSON ({_first_line(exc)})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{p} is not a safetensors file: its header is not a JSON object")
    out = {}
    spans = []
    data_bytes = size - 8 - n
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(entry["dtype"]), [int(d) for d in entry["shape"]]
            a, b = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{p} is not a safetensors file: entry {name!r} lacks dtype/shape/data_offsets") from None
        bad = f"{p} has a corrupt safetensors header: the tensor {name!r}"
        if dtype not in _ST_DTYPE_BYTES:
            raise ValueError(f"{bad} has the unknown dtype {dtype!r}")
        numel = 1
        for d in shape:
            if d < 0:
                raise ValueError(f"{bad} has a negative dimension in its shape {shape}")
            numel *= d
        if not 0 <= a <= b <= data_bytes:
            raise ValueError(f"{bad} lies at bytes {a}..{b} of the data, which has only {data_bytes} bytes; "
                             "the file is truncated or its header lies: save it again")
        if b - a != numel * _ST_DTYPE_BYTES[dtype]:
            raise ValueError(f"{bad} declares shape {shape} of {dtype} ({numel * _ST_DTYPE_BYTES[dtype]:,} bytes) "
                             f"but {b - a:,} bytes of data; the header lies: save the file again")
        spans.append((a, b))
        out[name] = {"dtype": dtype, "shape": shape, "nbytes": b - a}
    end = 0
    for a, b in sorted(spans):
        if a != end:
            raise ValueError(f"{p} has a corrupt safetensors header: its tensors overlap or leave a gap at byte "
                             f"{min(a, end)} of the data; save the file again")
        end = b
    if end != data_bytes:
        raise ValueError(f"{p} has a corrupt safetensors header: its tensors take {end:,} bytes but the file holds "
                         f"{data_bytes:,} bytes of data; the file is truncated or its header lies: save it again")
    return out


def _safetensors_nbytes(files: Sequence[Path]) -> int:
    return int(sum(e["nbytes"] for f in files for e in safetensors_header(f).values()))


# --------------------------------------------------------------------------- Hugging Face directories
#: Config entries that declare how many blocks (layers, experts) a model builds.
_COUNT_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
               "num_encoder_layers", "num_decoder_layers", "num_local_experts", "num_experts", "n_routed_experts",
               "depth", "depths", "num_blocks", "n_blocks")
#: A config may declare more blocks than its weights number (shared layers) up to this many; above it,
#: a count the weights do not bear out is refused before anything is built.
MAX_UNBACKED_BLOCKS: int = 64
#: Largest configuration or tokenizer file (``*.json``, ``*.txt``, ``*.model``) of a model directory: 256 MiB.
MAX_AUX_BYTES: int = 256 * 1024**2


def _hf_files(d: Path) -> list[Path]:
    cfg = d / "config.json"
    if not os.path.lexists(cfg):
        hint = ""
        if any(d.glob("*.safetensors")):
            hint = (" It has .safetensors files: a bare state dict needs an architecture "
                    "(load the file with arch=...).")
        raise ValueError(
            f"{d} is not a Hugging Face model directory: it has no config.json.{hint} Save a model "
            "there with model.save_pretrained(directory)")
    for f in sorted(d.iterdir()):  # transformers may open any of them: no FIFO, device or socket
        if not f.is_dir():
            small = f.suffix.lower() in (".json", ".txt", ".model")  # configs and tokenizer files, read whole
            check_regular_file(f, "file in the model directory", max_bytes=MAX_AUX_BYTES if small else None)
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))
        if pickles:
            raise ValueError(
                f"the model directory {d} has no *.safetensors weights, only {', '.join(pickles)}; otviz does "
                "not unpickle weight files. Re-save the model with model.save_pretrained(directory) "
                "(safetensors is its default format)")
        raise ValueError(
            f"the model directory {d} has a config.json but no weights (no *.safetensors file); copy the "
            "model's model.safetensors (or its shards) next to config.json")
    return weights


def _counts(cfg: Any, prefix: str = "") -> list[tuple[str, int]]:
    out = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if k in _COUNT_KEYS and type(v) is int:
                out.append((prefix + k, v))
            elif k in _COUNT_KEYS and isinstance(v, list) and all(type(i) is int for i in v):
                out.append((prefix + k, sum(v)))  # blocks per stage (a Swin's depths)
            elif isinstance(v, dict):
                out.extend(_counts(v, f"{prefix}{k}."))
    return out


def _hf_checked(d: Path) -> tuple[list[Path], dict[str, Any]]:
    """The weights and raw config of a model directory, refused before transformers reads anything when
    a file is not a regular file, the config is huge, deeply nested, quantized, names code to run
    (``auto_map``) or declares far more blocks than its weights hold."""
    weights = _hf_files(d)
    raw = read_json(d / "config.json", "the model configuration")
    if not isinstance(raw, dict):
        raise ValueError(f"{d / 'config.json'} holds a JSON {type(raw).__name__}, not a model configuration (an object)")
    tok = d / "tokenizer_config.json"
    tok_cfg = read_json(tok, "the tokenizer configuration") if tok.exists() else {}
    for f, conf in ((d / "config.json", raw), (tok, tok_cfg)):
        if isinstance(conf, dict) and "auto_map" in conf:
            raise ValueError(
                f"{f} names Python code of its own to run (auto_map: {json.dumps(conf['auto_map'])[:160]}), which otviz "
                "does not run; use a model (and tokenizer) whose classes transformers has built in, or export "
                "the model with torch.export and load the .pt2")
    quant = raw.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
        raise ValueError(
            f"{d / 'config.json'} describes a quantized checkpoint (quantization_config, quant_method={method!r}); "
            "otviz does not read quantized checkpoints. Load the original (unquantized) model and save it with "
            "model.save_pretrained(directory), or export it with torch.export and load the .pt2")
    counts = _counts(raw)
    if counts:
        indices = [int(i) for w in weights for name in safetensors_header(w)
                   for i in name.split(".") if i.isdigit()]
        present = max(indices) + 1 if indices else 1
        for key, n in counts:
            if n > max(present, MAX_UNBACKED_BLOCKS):
                raise ValueError(
                    f"{d / 'config.json'} declares {key}={n:,}, but its weights number at most {present} blocks "
                    f"(indices 0..{present - 1}); the configuration does not describe these weights and such a "
                    "model is not built. Use the config.json saved with the weights")
    return weights, raw


def _hf_config(d: Path) -> Any:
    transformers = _require("transformers", "Reading a Hugging Face model directory")
    try:
        return transformers.AutoConfig.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    except ValueError as exc:
        msg = str(exc)
        try:
            model_type = read_json(d / "config.json", "the model configuration").get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        if "trust_remote_code" in msg or "custom code" in msg:
            raise ValueError(
                f"the model in {d} needs its own Python code (auto_map / trust_remote_code), which otviz "
                "does not run; export it with torch.export and load the .pt2 instead") from None
        if model_type is None:
            raise ValueError(
                f"{d / 'config.json'} does not declare a model_type, so the architecture is unknown; "
                "save the model with model.save_pretrained(directory)") from None
        raise ValueError(
            f"{d / 'config.json'} declares the architecture model_type={model_type!r}, unknown to "
            f"transformers {transformers.__version__}; upgrade it (pip install -U transformers) or "
            "export the model with torch.export and load the .pt2") from None
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{d / 'config.json'} cannot be read as a model configuration ({_first_line(exc)})") from None


def _config_dtype(cfg: Any) -> torch.dtype | None:
    dt = getattr(cfg, "dtype", None)
    if dt is None:
        dt = getattr(cfg, "torch_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) else None


def _hf_meta_nbytes(cfg: Any) -> tuple[int, int, str]:
    """(bytes, parameters, class name) of AutoModel.from_config(cfg) built on meta, in the config's dtype."""
    transformers = _require("transformers", "Reading a Hugging Face model directory")
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(cfg)
    dt = _config_dtype(cfg)
    size = torch.empty((), dtype=dt).element_size() if dt is not None and dt.is_floating_point else None
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        per = size if (size is not None and t.is_floating_point()) else t.element_size()
        total += t.numel() * per
    return int(total), _n_params(model), type(model).__name__


def _hf_input_spec(model: nn.Module, cfg: Any) -> InputSpec | None:
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_ids":
        return InputSpec("tokens", names=["input_ids", "attention_mask"],
                         vocab_size=getattr(cfg, "vocab_size", None),
                         max_length=getattr(cfg, "max_position_embeddings", None))
    if main == "pixel_values":
        size = getattr(cfg, "image_size", None)
        if isinstance(size, int):
            size = (size, size)
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            size = (int(size[0]), int(size[1]))
        else:
            size = None
        return InputSpec("images", names=["pixel_values"], channels=getattr(cfg, "num_channels", None),
                         image_size=size)
    return None


def load_hf_dir(path: PathLike, *, max_bytes: int | None = DEFAULT_MAX_BYTES,
                device: str | torch.device = "cpu") -> ExternalModel:
    """Load a local Hugging Face model directory (``config.json`` + ``*.safetensors``).

    The size is checked first, without allocating: the architecture is built
    from ``config.json`` on the meta device (parameters counted in the
    config's dtype) and the safetensors headers are read; the larger of the two
    estimates is compared with `max_bytes`. Then
    ``transformers.AutoModel.from_pretrained(path, local_files_only=True,
    use_safetensors=True)`` reads the weights (the base model: hidden states,
    no task head) and, when the directory has tokenizer files,
    ``AutoTokenizer.from_pretrained(path, local_files_only=True)`` the tokenizer.
    Nothing is downloaded and no code from the directory runs: every
    ``from_pretrained`` gets ``trust_remote_code=False``, and a
    ``config.json`` or ``tokenizer_config.json`` naming code (``auto_map``) is
    refused before transformers is called, as are a non-regular file in the
    directory, a quantized checkpoint (``quantization_config``), and a config
    declaring more blocks (``num_hidden_layers``...) than its weights number
    (above :data:`MAX_UNBACKED_BLOCKS`). Weights of another shape than the
    config's are listed in the error; non-finite weights are refused.

    Parameters
    ----------
    path : path-like
        The directory.
    max_bytes : int or None, default 2 GiB
        Memory limit (``None``: no limit).
    device : str or torch.device, default "cpu"
        Where to put the model.

    Returns
    -------
    ExternalModel
        ``kind="huggingface"``; ``tokenizer`` set when the directory has one
        (``info["tokenizer_error"]`` says why one could not be read).

    Raises
    ------
    ValueError
        No ``config.json``, no safetensors weights (only pickle files, or
        none), an architecture unknown to transformers or needing custom code.
    ModelTooLargeError
        If the declared model exceeds `max_bytes`.
    ImportError
        If transformers is not installed (``pip install transformers``).
    """
    d = _as_path(path, "model directory")
    if not d.is_dir():
        raise ValueError(f"{d} is a file, not a Hugging Face model directory (config.json + *.safetensors)")
    weights, _ = _hf_checked(d)
    cfg = _hf_config(d)
    file_bytes = _safetensors_nbytes(weights)
    try:
        meta_bytes, n_params, arch = _hf_meta_nbytes(cfg)
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta: the headers decide
        meta_bytes, n_params, arch = 0, None, type(cfg).__name__.replace("Config", "Model")
    nbytes = max(meta_bytes, file_bytes)
    check_limit(nbytes, max_bytes, f"the model in {d} ({arch}, config.json and safetensors headers)")
    transformers = _require("transformers", "Reading a Hugging Face model directory")
    safetensors = _require("safetensors", "Reading a Hugging Face model directory")
    try:
        with forced_weights_only():
            model, report = transformers.AutoModel.from_pretrained(
                str(d), local_files_only=True, use_safetensors=True, trust_remote_code=False,
                ignore_mismatched_sizes=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, safetensors.SafetensorError) as exc:
        raise ValueError(f"transformers could not load the model in {d}: {_first_line(exc)}") from None
    mismatched = sorted(report.get("mismatched_keys") or [], key=lambda m: str(m[0]))
    if mismatched:
        shown = "; ".join(f"{k}: {tuple(a)} in the weights, {tuple(b)} in the config" for k, a, b in mismatched[:4])
        more = f" (and {len(mismatched) - 4} more)" if len(mismatched) > 4 else ""
        raise ValueError(
            f"the weights of {d} do not fit its config.json: {len(mismatched)} tensor(s) have another shape, "
            f"{shown}{more}. Use the config.json saved with these weights")
    _check_weights(model.named_parameters(), dict(model.named_buffers()), f"the model in {d}")
    model = model.to(device).eval()
    tokenizer, tok_error = None, None
    if any((d / f).is_file() for f in TOKENIZER_FILES):
        try:
            with forced_weights_only():
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True,
                                                                       trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - the model stays usable with tensor probes
            tok_error = f"the tokenizer files in {d} could not be read ({_first_line(exc)})"
    info = {"name": d.name, "architecture": type(model).__name__,
            "model_type": getattr(cfg, "model_type", None), "parameters": _n_params(model),
            "weights": [w.name for w in weights], "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    if n_params is not None:
        info["declared_parameters"] = n_params
    if tok_error:
        info["tokenizer_error"] = tok_error
    return ExternalModel(model, "huggingface", str(d), nbytes, tokenizer, _hf_input_spec(model, cfg), info)


# --------------------------------------------------------------------------- torch.export programs
def _export_input_spec(ep: Any) -> InputSpec:
    shapes, dtypes, names = [], [], []
    user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for name in user:
        val = nodes[name].meta.get("val") if name in nodes else None
        if isinstance(val, torch.Tensor):
            shapes.append(tuple(int(d) if isinstance(d, int) else None for d in val.shape))
            dtypes.append(val.dtype)
        else:
            shapes.append(())
            dtypes.append(None)
        names.append(name)
    spec = InputSpec("tensors", shapes=shapes, dtypes=dtypes, names=names)
    if len(shapes) == 1 and len(shapes[0]) == 4 and dtypes[0] is not None and dtypes[0].is_floating_point:
        spec.kind = "images"
        spec.channels = shapes[0][1]
        if shapes[0][2] is not None and shapes[0][3] is not None:
            spec.image_size = (shapes[0][2], shapes[0][3])
    return spec


def load_exported(path: PathLike, *, max_bytes: int | None = DEFAULT_MAX_BYTES,
                  device: str | torch.device = "cpu") -> ExternalModel:
    """Load a ``torch.export`` program (``.pt2``) as a module whose submodules take hooks.

    The archive is first checked without reading a tensor
    (:func:`otviz._pt2.check_archive`): a pickled member or ``use_pickle``
    entry, a compiled library, or a symbolic size or guard that is not plain
    size arithmetic (torch would evaluate it as Python) is refused. Then
    ``torch.export.load`` reads it with weights-only loads forced, a graph
    calling anything but PyTorch operators is refused, and
    ``torch.export.unflatten``
    rebuilds the module hierarchy of the exported model, so that the names of
    ``model.named_modules()`` at export time (``features.conv1``,
    ``encoder.layer.0``) are submodules again and :func:`otviz.capture` hooks
    them. The program computes what it computed at export, in the mode it was
    exported in (export a model in ``eval()`` mode).

    The input shapes and dtypes the program was exported for are kept in
    ``input_spec`` (dynamic dimensions as ``None``): a program exported
    without ``dynamic_shapes`` accepts only its example batch size.

    Parameters
    ----------
    path : path-like
        The ``.pt2`` file.
    max_bytes : int or None, default 2 GiB
        Refuse, before loading, an archive whose members declare more
        uncompressed bytes than this.
    device : str or torch.device, default "cpu"
        Where to put the module.

    Returns
    -------
    ExternalModel
        ``kind="export"``.

    Raises
    ------
    ValueError
        If the file is not a regular file, not a torch.export archive, or holds
        anything that could run code; if its weights are not finite floats.
    ModelTooLargeError
        If the archive, or its tensors' declared shapes, exceed `max_bytes`.
    """
    p = _as_path(path, ".pt2 file")
    if p.is_dir():
        raise ValueError(f"{p} is a directory; a torch.export program is one .pt2 file")
    check_regular_file(p, ".pt2 file")
    declared = zip_nbytes(p)
    if declared is None:
        raise ValueError(
            f"{p} is not a torch.export program (.pt2 files are zip archives); write one with "
            "torch.export.save(torch.export.export(model.eval(), example_args), 'model.pt2')")
    check_limit(declared, max_bytes, f"the program {p} (by the sizes its archive declares)")
    tensors = check_archive(p)  # nothing pickled, no compiled library, no expression evaluated as Python
    check_limit(tensors, max_bytes, f"the program {p} (by the shapes and dtypes of its weights and constants)")
    try:
        with warnings.catch_warnings(), forced_weights_only():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own notices about its tree specs
            ep = torch.export.load(str(p))
    except Exception as exc:  # noqa: BLE001 - any failure means "not a program we can read"
        raise ValueError(
            f"{p} is not a torch.export program that torch {torch.__version__} can read "
            f"({type(exc).__name__}: {_first_line(exc, 200)}); write one with torch.export.save") from None
    check_graph(ep, p)
    spec = _export_input_spec(ep)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.export.unflatten(ep)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"the program {p} cannot be unflattened into named modules ({_first_line(exc, 200)})") from None
    _check_weights(module.named_parameters(), dict(module.named_buffers()), f"the program {p}")
    module = module.to(device)
    nbytes = max(module_nbytes(module), tensors)
    info = {"name": p.stem, "architecture": "torch.export program", "parameters": _n_params(module),
            "inputs": spec.describe()}
    return ExternalModel(module, "export", str(p), max(nbytes, 0), None, spec, info)


# --------------------------------------------------------------------------- weights' values
def _check_weights(params: Any, buffers: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse parameters that are not real floating point or not finite, and NaN or complex buffers.

    Integer buffers (a batch-norm's ``num_batches_tracked``, position ids) are legitimate; an infinite
    buffer may be a mask. Every key at fault is named (the first few).
    """
    def names(keys: list[str]) -> str:
        return ", ".join(repr(k) for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    params = dict(params)
    not_float = [f"{k} ({str(t.dtype).replace('torch.', '')})" for k, t in params.items()
                 if not t.is_floating_point()]
    complex_buffers = [k for k, t in buffers.items() if t.is_complex()]
    if not_float or complex_buffers:
        raise ValueError(f"{what} has weights that are not real floating-point numbers: "
                         f"{names(not_float + complex_buffers)}; a model's parameters are float tensors: save "
                         "the model's own float state dict (model.state_dict())")
    bad = [k for k, t in params.items() if t.device.type != "meta" and not bool(torch.isfinite(t).all())]
    bad += [k for k, t in buffers.items() if t.is_floating_point() and t.device.type != "meta"
            and bool(torch.isnan(t).any())]
    if bad:
        raise ValueError(f"{what} has weights holding NaN or infinite values: {names(bad)}; its outputs would be "
                         "NaN. Save the weights of a model that trained without diverging")


# --------------------------------------------------------------------------- state dicts
def _read_state_dict(p: Path, max_bytes: int | None) -> dict[str, torch.Tensor] | dict[str, Any]:
    if p.suffix == ".safetensors":
        check_limit(_safetensors_nbytes([p]), max_bytes, f"the state dict {p} (by its safetensors header)")
        st = _require("safetensors.torch", "Reading a .safetensors file")
        try:
            return st.load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors.SafetensorError is no ValueError
            raise ValueError(f"{p} cannot be read as a safetensors file ({type(exc).__name__}: {_first_line(exc)}); "
                             "the file is corrupt or truncated: save it again") from None
    size = check_regular_file(p, "model file")
    declared = zip_nbytes(p)
    if declared is not None:
        check_limit(declared, max_bytes, f"the file {p} (by the sizes its archive declares)")
    else:
        if max_bytes is not None:
            check_limit(size, max_bytes, f"the file {p}")
        with open_regular(p, "model file") as fh:
            head = fh.read(2)
        if len(head) < 2 or head[0] != 0x80:  # neither a zip archive nor a pickle (torch's legacy format)
            raise ValueError(
                f"{p} is not a PyTorch file: torch.save writes a zip archive (or, before torch 1.6, a pickle), and "
                f"this file starts with bytes {head.hex() or '(none)'}; pass a state dict saved with "
                "torch.save(model.state_dict(), path), a .safetensors file or a torch.export program (.pt2)")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        from .teachers import _load_error_detail

        raise ValueError(
            f"{p} cannot be read with torch.load(weights_only=True) ({_load_error_detail(exc)}); otviz reads "
            "state dicts (a dict of tensors), .safetensors files and torch.export programs (.pt2), and "
            "unpickles nothing") from None


def _unwrap_state_dict(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    raise ValueError(
        f"{p} holds a {type(obj).__name__}, not a state dict (a dict of parameter name -> tensor), nor an "
        "otviz checkpoint; save one with torch.save(model.state_dict(), path) or "
        "safetensors.torch.save_file(model.state_dict(), path)")


def _otviz_config(arch: str, sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """An otviz family's constructor arguments, read from the shapes of its state dict."""
    from .models import MLP, SmallCNN

    try:
        head = sd["head.weight"]
        if arch == "cnn":
            w = sd["features.conv1.conv.weight"]
            return {"width": w.shape[0] / SmallCNN.BASE_CHANNELS[0], "num_classes": int(head.shape[0]),
                    "in_channels": int(w.shape[1])}
        w = sd["features.fc1.linear.weight"]
        return {"width": w.shape[0] / MLP.BASE_UNITS[0], "num_classes": int(head.shape[0]),
                "in_features": int(w.shape[1])}
    except KeyError as exc:
        raise ValueError(f"the state dict is not one of otviz's {arch!r} family: it lacks {exc.args[0]!r}") from None


def _builder(arch: str, sd: Mapping[str, torch.Tensor], num_classes: int | None):
    """(library, name, zero-argument constructor) of a named architecture."""
    from .models import MODELS, build_model

    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(
            "a state dict does not say which architecture it belongs to: pass arch='timm:resnet18', "
            "'torchvision:resnet18' or an otviz family ('cnn', 'mlp')")
    library, sep, name = arch.partition(":")
    if not sep:
        library, name = "", arch
    library = library.lower()
    if library not in ("", "otviz", "timm", "torchvision"):
        raise ValueError(f"unknown model library {library!r} in arch={arch!r}; use 'timm:NAME', "
                         "'torchvision:NAME' or an otviz family ('cnn', 'mlp')")
    if library in ("", "otviz") and name in MODELS:
        cfg = _otviz_config(name, sd)
        if num_classes is not None:
            cfg["num_classes"] = int(num_classes)
        return "otviz", name, lambda: build_model(name, **cfg)
    if library == "otviz":
        raise ValueError(f"unknown otviz architecture {name!r}; otviz families: {', '.join(MODELS)}")
    kw = {} if num_classes is None else {"num_classes": int(num_classes)}
    tried = []
    if library in ("", "timm"):
        try:
            timm = _require("timm", f"the architecture {arch!r}")
        except ImportError as exc:
            if library == "timm":
                raise
            tried.append(f"timm cannot be used ({str(exc).split(', ', 1)[-1]})")
        else:
            if name in timm.list_models():
                return "timm", name, lambda: timm.create_model(name, pretrained=False, **kw)
            if library == "timm":
                raise ValueError(f"timm has no model {name!r}; see timm.list_models()")
    if library in ("", "torchvision"):
        try:
            tvm = _require("torchvision.models", f"the architecture {arch!r}")
        except ImportError as exc:
            if library == "torchvision":
                raise
            tried.append(f"torchvision cannot be used ({str(exc).split(', ', 1)[-1]})")
        else:
            try:
                build = tvm.get_model_builder(name)
            except ValueError:
                if library == "torchvision":
                    raise ValueError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
            else:
                return "torchvision", name, lambda: build(weights=None, **kw)
    if tried:
        raise ImportError(f"the architecture {arch!r} is not an otviz family ({', '.join(MODELS)}), and "
                          + "; ".join(tried) + "; or name the library: arch='timm:NAME' / 'torchvision:NAME'")
    raise ValueError(f"unknown architecture {arch!r}: not an otviz family ({', '.join(MODELS)}), nor a "
                     "model of the installed timm / torchvision")


def load_state_dict_model(path: PathLike, arch: str | None, *, num_classes: int | None = None,
                          max_bytes: int | None = DEFAULT_MAX_BYTES,
                          device: str | torch.device = "cpu") -> ExternalModel:
    """Build a named architecture and load a state dict into it (``strict=True``).

    Parameters
    ----------
    path : path-like
        ``.safetensors`` (read by ``safetensors.torch.load_file``) or
        ``.pt``/``.pth`` (``torch.load(weights_only=True)``) holding a dict
        parameter name -> tensor (a dict with a ``"state_dict"`` or
        ``"model"`` entry of that kind is unwrapped).
    arch : str
        ``"timm:NAME"`` (``timm.create_model(NAME, pretrained=False)``),
        ``"torchvision:NAME"`` (``torchvision.models.get_model(NAME,
        weights=None)``), an otviz family ``"cnn"``/``"mlp"`` (width, classes
        and input size read from the weights' shapes), or a bare NAME looked up
        in timm, then torchvision.
    num_classes : int, optional
        Outputs of the classifier, when it differs from the architecture's
        default.
    max_bytes : int or None, default 2 GiB
        Refuse, before reading the tensors, a file that declares more bytes
        than this, and, before building it, an architecture (built on the meta
        device first) that needs more.
    device : str or torch.device, default "cpu"
        Where to put the model.

    Returns
    -------
    ExternalModel
        ``kind="state_dict"``.

    Raises
    ------
    ValueError
        No `arch`, an unknown architecture, a file that is not a state dict,
        or weights that do not fit the architecture (names and shapes listed).
    ImportError
        If `arch` needs timm or torchvision and it is not installed.
    ModelTooLargeError
        Above `max_bytes`.
    """
    p = _as_path(path, "state dict file")
    if not arch:
        raise ValueError(
            f"{p} is a bare state dict, which does not say which architecture it belongs to: pass "
            "arch='timm:resnet18', 'torchvision:resnet18' or an otviz family ('cnn', 'mlp')")
    sd = _unwrap_state_dict(_read_state_dict(p, max_bytes), p)
    library, name, build = _builder(arch, sd, num_classes)
    try:
        with torch.device("meta"):
            meta = build()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the architecture {arch!r} cannot be built from these weights ({_first_line(exc)})") from None
    nbytes = module_nbytes(meta)
    check_limit(nbytes, max_bytes, f"the architecture {arch!r}")
    param_names = {k for k, _ in meta.named_parameters()}
    _check_weights(((k, v) for k, v in sd.items() if k in param_names),
                   {k: v for k, v in sd.items() if k not in param_names}, f"the state dict {p}")
    model = build()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(s.strip() for s in str(exc).strip().splitlines()[:3])
        raise ValueError(f"the weights in {p} do not fit the architecture {arch!r}: {detail[:400]}"
                         + ("" if num_classes is not None else
                            " (a classifier of another size? pass num_classes=...)")) from None
    model = model.to(device).eval()
    spec = None
    if library == "otviz":
        spec = _otviz_spec(model)
    elif library == "timm":
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if size and len(size) == 3:
            spec = InputSpec("images", channels=int(size[0]), image_size=(int(size[1]), int(size[2])))
    else:
        spec = InputSpec("images", channels=3)
    info = {"name": p.stem, "architecture": f"{library}:{name}", "parameters": _n_params(model)}
    return ExternalModel(model, "state_dict", str(p), nbytes, None, spec, info)


def _otviz_spec(model: nn.Module) -> InputSpec | None:
    cfg = getattr(model, "config", {}) or {}
    if "in_channels" in cfg:
        return InputSpec("images", channels=int(cfg["in_channels"]))
    if "in_features" in cfg:
        return InputSpec("tensors", features=int(cfg["in_features"]))
    return None


# --------------------------------------------------------------------------- dispatch
def _otviz_checkpoint(p: Path, obj: Any, max_bytes: int | None, device: Any) -> ExternalModel:
    from .teachers import checkpoint_nbytes, load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(p, max_bytes=max_bytes)
    model = model_from_checkpoint(ckpt, device, max_bytes=max_bytes)
    param_names = {k for k, _ in model.named_parameters()}
    sd = ckpt["state_dict"]
    _check_weights(((k, v) for k, v in sd.items() if k in param_names),
                   {k: v for k, v in sd.items() if k not in param_names}, f"the checkpoint {p}")
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info.update(name=ckpt.get("name", p.stem), architecture=f"otviz:{ckpt['arch']}", parameters=_n_params(model))
    return ExternalModel(model, "otviz", str(p), checkpoint_nbytes(ckpt), None, _otviz_spec(model), info)


def load_external(path: PathLike, *, arch: str | None = None, num_classes: int | None = None,
                  max_bytes: int | None = DEFAULT_MAX_BYTES,
                  device: str | torch.device = "cpu") -> ExternalModel:
    """Load a model from a local path, choosing the reader from what the path holds.

    - a directory: a Hugging Face model directory (:func:`load_hf_dir`);
    - a ``.pt2`` file: a torch.export program (:func:`load_exported`);
    - a ``.safetensors`` file: a state dict for `arch`
      (:func:`load_state_dict_model`);
    - a ``.pt``/``.pth`` file: an otviz checkpoint (format tag
      ``otviz-teacher/1``) or a state dict for `arch`, read with
      ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path : path-like
        File or directory on this machine.
    arch : str, optional
        Architecture of a bare state dict (see :func:`load_state_dict_model`).
    num_classes : int, optional
        Classifier size for `arch`.
    max_bytes : int or None, default 2 GiB (:data:`DEFAULT_MAX_BYTES`)
        Memory limit, checked before anything is allocated.
    device : str or torch.device, default "cpu"
        Where to put the model.

    Returns
    -------
    ExternalModel

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        A path that is none of the above, or bad content (the message names
        the fix).
    ModelTooLargeError
        Above `max_bytes`.
    ImportError
        A needed optional package is missing (the message names it).
    """
    p = _as_path(path, "model path")
    if p.is_dir():
        return load_hf_dir(p, max_bytes=max_bytes, device=device)
    suffix = p.suffix.lower()
    if suffix == ".pt2":
        return load_exported(p, max_bytes=max_bytes, device=device)
    if suffix == ".safetensors":
        return load_state_dict_model(p, arch, num_classes=num_classes, max_bytes=max_bytes, device=device)
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        obj = _read_state_dict(p, max_bytes)
        if isinstance(obj, Mapping) and isinstance(obj.get("format"), str) and obj["format"].startswith("otviz-teacher/"):
            return _otviz_checkpoint(p, obj, max_bytes, device)
        if zip_nbytes(p) is not None and _is_export_archive(p):
            return load_exported(p, max_bytes=max_bytes, device=device)
        return load_state_dict_model(p, arch, num_classes=num_classes, max_bytes=max_bytes, device=device)
    if p.name == "config.json":
        return load_hf_dir(p.parent, max_bytes=max_bytes, device=device)
    raise ValueError(
        f"{p} is not a model file otviz reads: pass a Hugging Face model directory (config.json + "
        "*.safetensors), a torch.export program (.pt2), a state dict (.safetensors, .pt, .pth) with arch=..., "
        "or an otviz checkpoint (.pt)")


def _is_export_archive(p: Path) -> bool:
    import zipfile

    with zipfile.ZipFile(p) as z:
        return any(n.endswith("archive_format") or "/models/" in n for n in z.namelist())


def estimate_nbytes(path: PathLike, *, arch: str | None = None, num_classes: int | None = None) -> int:
    """Bytes the model at `path` would need, estimated without allocating it.

    Parameters
    ----------
    path : path-like
        As for :func:`load_external`.
    arch : str, optional
        Architecture of a bare state dict.
    num_classes : int, optional
        Classifier size for `arch`.

    Returns
    -------
    int
        For a Hugging Face directory, the larger of the meta-device build of
        its config and its safetensors headers; for a ``.pt2``/``.pt``
        archive, the uncompressed sizes its zip directory declares (an otviz
        checkpoint: its architecture built on meta); for a state dict with
        `arch`, the meta-device build.
    """
    p = _as_path(path, "model path")
    if not p.is_dir():
        check_regular_file(p, "model file")
    if p.is_dir():
        weights, _ = _hf_checked(p)
        cfg = _hf_config(p)
        try:
            meta = _hf_meta_nbytes(cfg)[0]
        except Exception:  # noqa: BLE001
            meta = 0
        return max(meta, _safetensors_nbytes(weights))
    if p.suffix.lower() == ".safetensors" and not arch:
        return _safetensors_nbytes([p])
    if p.suffix.lower() in (".pt", ".pth") and not arch:
        from .teachers import checkpoint_nbytes, load_checkpoint

        try:
            return checkpoint_nbytes(load_checkpoint(p, max_bytes=None))
        except ValueError:
            pass
    if arch:
        sd = _unwrap_state_dict(_read_state_dict(p, None), p)
        build = _builder(arch, sd, num_classes)[2]
        with torch.device("meta"):
            return module_nbytes(build())
    declared = zip_nbytes(p)
    if declared is not None and p.suffix.lower() == ".pt2":
        declared = max(declared, check_archive(p))
    return int(declared if declared is not None else p.stat().st_size)


# --------------------------------------------------------------------------- probe inputs


def __getattr__(name: str) -> Any:
    """The probe readers, moved to :mod:`otviz.probes`, are still served from here (imported on
    first use: :mod:`otviz.probes` itself imports this module)."""
    if name in _PROBE_NAMES:
        from . import probes

        return getattr(probes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _PROBE_NAMES)
