"""A ``torch.export`` archive (``.pt2``) checked before ``torch.export.load`` reads it.

``torch.export.load`` trusts its file: members it cannot read as plain tensors
are unpickled with ``torch.load(weights_only=False)`` (the sample inputs, and
weights or constants marked ``use_pickle``), "opaque" constants with
``pickle.loads``, an ``aotinductor`` member is a compiled library that is
loaded, symbolic sizes (``expr_str``) are parsed by ``sympy.sympify`` (which
evaluates Python), guard strings are compiled with ``exec`` when the program
is turned into a module, and a graph node may name any attribute of ``torch``
as the function it calls. A file from a stranger could run code through each
of these. :func:`check_archive` reads the archive's directory and its small
JSON records (never a tensor) and refuses, with a message:

- any member other than those a plain program has (the archive's version
  records, ``models/<name>.json``, the weights and constants configurations,
  raw tensor records ``weight_<n>``/``tensor_<n>``, the sample inputs, extra
  text files);
- a weight or constant stored as a pickle (``use_pickle``) or as an object;
- sample inputs that are not plain tensor data (read with
  ``torch.load(weights_only=True, map_location="meta")``: no tensor is
  allocated);
- a symbolic size or a guard that is not a plain arithmetic expression over
  sympy's own functions;

and returns the bytes the weights and constants declare (the product of each
tensor's declared sizes times its element size, a view counted at its full
size), so that a tiny record declared as a huge view is refused by the memory
limit before anything is allocated. The load itself then runs under
:func:`forced_weights_only`, so that a fallback to unpickling inside torch is
refused even if a check here were incomplete, and :func:`check_graph` refuses
a loaded graph that calls anything but PyTorch operators.
"""

from __future__ import annotations

import io
import os
import re
import threading
import tokenize
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ._files import loads_json, open_regular

__all__ = ["check_archive", "check_graph", "forced_weights_only"]

#: Largest JSON record of an archive read for the checks (the serialized graph of a large model).
MAX_RECORD_BYTES: int = 256 * 1024**2
#: Deepest nesting of a JSON record of an archive (nested subgraphs).
MAX_RECORD_DEPTH: int = 512
#: Longest symbolic expression accepted.
MAX_EXPR_CHARS: int = 4096

_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_ENV_NO = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_ENV_LOCK = threading.RLock()


@contextmanager
def forced_weights_only() -> Iterator[None]:
    """Make every ``torch.load`` in the block load weights only, whatever its caller asks.

    ``torch.load`` reads ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` at each call and then
    ignores ``weights_only=False``. The variable is process-wide, so the block
    holds a lock: two threads (Streamlit serves each session from its own) do
    not restore each other's setting halfway through a load. Loads in other
    threads meanwhile are forced too, which only makes them stricter.
    """
    with _ENV_LOCK:
        old, old_no = os.environ.get(_ENV), os.environ.pop(_ENV_NO, None)
        os.environ[_ENV] = "1"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(_ENV, None)
            else:
                os.environ[_ENV] = old
            if old_no is not None:
                os.environ[_ENV_NO] = old_no


# --------------------------------------------------------------------------- members
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_PATTERNS = [
    re.compile(r"models/[A-Za-z0-9_.-]+\.json"),
    re.compile(r"data/weights/[A-Za-z0-9_.-]+_weights_config\.json"),
    re.compile(r"data/weights/weight_\d+"),
    re.compile(r"data/constants/[A-Za-z0-9_.-]+_constants_config\.json"),
    re.compile(r"data/constants/tensor_\d+"),
    re.compile(r"data/sample_inputs/[A-Za-z0-9_.-]+\.pt"),
    re.compile(r"extra/[^/]+"),
]
_WHY = {
    "data/aotinductor/": "an AOTInductor compiled library, which would be loaded and run",
    "data/executorch/": "an ExecuTorch program",
    "data/mtia": "an MTIA program",
    "xl_model_weights/": "weights stored outside the program",
    "data/weights/": "a weight stored in torch's legacy pickled format",
    "data/constants/": "a constant stored as a Python object (pickled)",
}


def _refuse(p: Path, what: str) -> ValueError:
    return ValueError(f"{p} {what}; otviz reads only plain torch.export programs, runs no code from a file and "
                      "unpickles nothing: export the model in eval mode with plain tensor weights "
                      "(torch.export.save(torch.export.export(model.eval(), example_args), 'model.pt2'))")


def _read(z: zipfile.ZipFile, info: zipfile.ZipInfo, p: Path) -> bytes:
    if info.file_size > MAX_RECORD_BYTES:
        raise _refuse(p, f"declares a record {info.filename!r} of {info.file_size:,} bytes, larger than a "
                         "program's description can be")
    data = z.read(info)
    if len(data) != info.file_size:
        raise _refuse(p, f"has a record {info.filename!r} whose size differs from what its directory declares")
    return data


def _json(z: zipfile.ZipFile, info: zipfile.ZipInfo, p: Path) -> Any:
    try:
        text = _read(z, info, p).decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(p, f"has a record {info.filename!r} that is not UTF-8 JSON") from None
    return loads_json(text, f"the record {info.filename!r} of {p}", max_depth=MAX_RECORD_DEPTH)


# --------------------------------------------------------------------------- symbolic expressions
_FUNCTIONS = {
    # sympy's own classes as torch prints them (sympy.srepr)
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor",
    "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair",
    "Infinity", "NegativeInfinity", "oo", "Half", "One", "Zero", "NegativeOne", "BooleanTrue", "BooleanFalse",
    "true", "false", "sqrt", "True", "False", "and", "or", "not",
    # torch's own sympy functions (torch.utils._sympy.functions), as the deserializer names them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity",
}
_OPS = {"(", ")", ",", "+", "-", "*", "/", "//", "%", "**", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~", "="}
_STRING = re.compile(r"""^(?:'[A-Za-z_][A-Za-z0-9_]*'|"[A-Za-z_][A-Za-z0-9_]*")$""")
_KEYWORD = re.compile(r"^[a-z][a-z_]*$")
_GUARD_INPUT = re.compile(r"L\['[A-Za-z_][A-Za-z0-9_]*'\](?:\['[A-Za-z_][A-Za-z0-9_]*'\]|\[\d+\])*")
_GUARD_CALL = re.compile(r"\.(?:size|stride)\(\)\[\d+\]|\.(?:storage_offset|dim|numel)\(\)")


def _plain_expression(text: Any, extra: frozenset[str] = frozenset()) -> bool:
    """True for an arithmetic expression over sympy/torch shape functions and no other name.

    No attribute, no subscript, no name but those of :data:`_FUNCTIONS` (and
    keyword-argument names such as ``positive=``); strings only as a bare
    identifier (a symbol's name): nothing such an expression calls can run code.
    """
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        return False
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                  if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1].string if i + 1 < len(tokens) else ""
        if tok.type == tokenize.NUMBER:
            if not re.fullmatch(r"[0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?", tok.string):
                return False
        elif tok.type == tokenize.NAME:
            if tok.string in _FUNCTIONS or tok.string in extra:
                continue
            if nxt == "=" and _KEYWORD.match(tok.string):
                continue
            return False
        elif tok.type == tokenize.STRING:
            if not _STRING.match(tok.string):
                return False
        elif tok.type == tokenize.OP:
            if tok.string not in _OPS:
                return False
        else:
            return False
    return True


def _plain_guard(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    reduced = _GUARD_CALL.sub("", _GUARD_INPUT.sub("_input", text))
    return _plain_expression(reduced, frozenset({"_input"}))


def _walk(obj: Any, key: str, out: list) -> None:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k == key:
                    out.append(v)
                stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)


# --------------------------------------------------------------------------- tensors
def _int(v: Any) -> int | None:
    if isinstance(v, dict) and v.get("as_int") is not None and type(v["as_int"]) is int:
        return v["as_int"]
    return None


def _tensor_nbytes(meta: Any, name: str, p: Path) -> tuple[int, tuple]:
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    try:
        dtype = _SERIALIZE_TO_TORCH_DTYPE[meta["dtype"]]
        sizes = [_int(s) for s in meta["sizes"]]
        strides = [_int(s) for s in meta.get("strides", [])]
        offset = _int(meta.get("storage_offset", {"as_int": 0}))
    except (KeyError, TypeError, ValueError):
        raise _refuse(p, f"describes the tensor {name!r} without a readable dtype and sizes") from None
    if any(s is None or s < 0 for s in sizes) or any(s is None for s in strides) or offset is None:
        raise _refuse(p, f"declares the tensor {name!r} with sizes that are not plain non-negative integers")
    numel = 1
    for s in sizes:
        numel *= s
    return numel * torch.empty((), dtype=dtype).element_size(), (tuple(sizes), tuple(strides), offset)


def _check_payloads(cfg: Any, kind: str, record: str, p: Path) -> int:
    """Bytes declared by a weights/constants configuration, refusing pickled entries."""
    entries = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(p, f"has a {kind} configuration {record!r} that is not a table of tensors")
    total, seen = 0, set()
    prefix = "weight_" if kind == "weights" else "tensor_"
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise _refuse(p, f"has a {kind} entry {name!r} that is not a tensor description")
        if entry.get("use_pickle"):
            raise _refuse(p, f"stores the {kind[:-1]} {name!r} as a pickle (use_pickle: true, a tensor subclass or "
                             "an object), which otviz does not unpickle")
        path_name = entry.get("path_name")
        if not isinstance(path_name, str) or not re.fullmatch(prefix + r"\d+", path_name):
            raise _refuse(p, f"stores the {kind[:-1]} {name!r} as {path_name!r}, not as a plain tensor record")
        nbytes, key = _tensor_nbytes(entry.get("tensor_meta"), name, p)
        if (path_name, key) not in seen:  # a tied weight counts once
            seen.add((path_name, key))
            total += nbytes
    return total


def _check_sample_inputs(data: bytes, record: str, p: Path) -> None:
    try:
        with forced_weights_only():
            torch.load(io.BytesIO(data), map_location="meta", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is not plain tensor data
        from .teachers import _load_error_detail

        raise _refuse(p, f"holds sample inputs ({record!r}) that are not plain tensor data "
                         f"({_load_error_detail(exc)})") from None


# --------------------------------------------------------------------------- the archive
def check_archive(path: str | os.PathLike[str]) -> int:
    """Check a ``.pt2`` archive for anything that could run code; the bytes its tensors declare.

    Parameters
    ----------
    path : path-like
        The archive (a regular file).

    Returns
    -------
    int
        Bytes of the weights and constants, from their declared sizes and dtypes.

    Raises
    ------
    ValueError
        Naming the member or entry refused and what to write instead.
    """
    p = Path(path)
    with open_regular(p, ".pt2 file") as fh:
        try:
            z = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError):
            raise ValueError(
                f"{p} is not a torch.export program (.pt2 files are zip archives); write one with "
                "torch.export.save(torch.export.export(model.eval(), example_args), 'model.pt2')") from None
        with z:
            infos = z.infolist()
            roots = {i.filename.split("/", 1)[0] for i in infos}
            if len(roots) != 1 or any("/" not in i.filename for i in infos):
                raise _refuse(p, "is a zip archive but not one torch.export.save writes (one top folder)")
            root = roots.pop() + "/"
            rel = {i.filename[len(root):]: i for i in infos if not i.is_dir()}
            if "archive_format" not in rel or "models/model.json" not in rel:
                if "serialized_exported_program.json" in rel or "version" in rel:
                    raise _refuse(p, "is a program saved by an older torch (torch<2.8 format, whose tensors are "
                                     "pickled); re-save it with this torch's torch.export.save")
                raise _refuse(p, "is a zip archive without a torch.export program (no archive_format and "
                                 "models/model.json)")
            for name in rel:
                if name in _FIXED or any(pat.fullmatch(name) for pat in _PATTERNS):
                    continue
                why = next((w for pre, w in _WHY.items() if name.startswith(pre)), "an unknown kind of record")
                raise _refuse(p, f"holds {root + name!r}, {why}")
            total = 0
            for name, info in rel.items():
                if name.endswith("_weights_config.json"):
                    total += _check_payloads(_json(z, info, p), "weights", root + name, p)
                elif name.endswith("_constants_config.json"):
                    total += _check_payloads(_json(z, info, p), "constants", root + name, p)
                elif name.startswith("models/"):
                    program = _json(z, info, p)
                    exprs: list = []
                    _walk(program, "expr_str", exprs)
                    bad = next((e for e in exprs if not _plain_expression(e)), None)
                    if bad is not None:
                        raise _refuse(p, f"declares a symbolic size that is not a plain expression "
                                         f"({str(bad)[:120]!r}); it would be evaluated as Python")
                    guards = program.get("guards_code", []) if isinstance(program, dict) else []
                    if not isinstance(guards, list):
                        guards = [guards]
                    bad = next((g for g in guards if not _plain_guard(g)), None)
                    if bad is not None:
                        raise _refuse(p, f"declares an input guard that is not a plain comparison of sizes "
                                         f"({str(bad)[:120]!r}); it would be compiled and run as Python")
                elif name.startswith("data/sample_inputs/"):
                    _check_sample_inputs(_read(z, info, p), root + name, p)
            return int(total)


def check_graph(ep: Any, p: Path) -> None:
    """Refuse a loaded program whose graph (or a subgraph) calls anything but a PyTorch operator."""
    import operator

    from torch._export.serde.serialize import _SYM_OPS

    allowed_fns = set(_SYM_OPS) | {operator.getitem}
    for gm in ep.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            target = node.target
            if node.op == "call_function" and (
                    isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
                    or target in allowed_fns):
                continue
            shown = target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
            raise _refuse(p, f"has a graph node {node.name!r} that calls {shown!r} ({node.op}), not a PyTorch "
                             "operator")
