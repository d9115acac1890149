"""Shared plumbing of the dashboard pages: the run store, cached model loading and computations.

The pages stay thin: every computation is an ``otviz`` function, wrapped here in
Streamlit's caches (``st.cache_data`` for results, ``st.cache_resource`` for
models and background jobs), and every failure a user can cause (a bad upload,
layers that cannot be compared, a missing, locked or corrupt store) becomes an
``st.error`` on the page while the rest of the app keeps working.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
import json
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from otviz.runs import RunStore, RunStoreError, default_store_path
from otviz._recipes import recipe

REPO = Path(__file__).resolve().parents[1]
BENCHMARK_RESULTS = REPO / "benchmarks" / "results"
NOTEBOOKS = REPO / "notebooks"

#: The one-click demo: the benchmark's `transfer-small` OT row (benchmarks/README.md), where OT
#: helps most: a 4x narrower student learns digits 5-9 from 10 labels per class, from scratch,
#: pulled toward a teacher that learned digits 0-4. Its options are the recipe that
#: `otviz train --setting transfer-small --method ot` uses (otviz.train.recipe). Well under a
#: minute on 2 CPU cores.
DEMO_CONFIG: dict[str, Any] = dict(
    recipe("transfer-small", "ot"), setting="transfer-small", method="ot", seed=0,
    name="demo: OT transfer to a 4x narrower student",
)

#: Methods offered by the Train form (combinations with "+" are valid too).
METHOD_CHOICES = ("ot", "kd+ot", "scratch", "finetune", "l2sp", "kd", "fitnets", "at", "nst", "sp")


# --------------------------------------------------------------------------- errors
def show_error(exc: BaseException, what: str) -> None:
    """One clear message for an error the user can act on."""
    text = str(exc).strip() or type(exc).__name__
    st.error(f"**{what}**: {text}", icon=":material/error:")


# --------------------------------------------------------------------------- stored text
#: Characters that Markdown (CommonMark, GitHub's extensions, Streamlit's ``:color[...]``,
#: ``:material/...:`` and ``$math$``) gives a meaning; each is shown as itself after a backslash.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&=\"'])")
_AUTOLINK = re.compile(r"(?i)(?:https?|ftp|www(?=\\\.)|@)")  # where an automatic link starts


def md_escape(text: Any) -> str:
    """``text`` (a run name, a method, a teacher, anything read from the store or a file) for
    ``st.markdown``, ``st.caption``, ``st.info`` and the like: shown as typed, never as a link,
    an image, emphasis, a heading, a colour or an icon.

    Every Markdown punctuation character is escaped with a backslash and line breaks become
    spaces, so the text stays within its sentence. GitHub's automatic links need no markup
    (``http://x.org``, ``www.x.org``, ``me@x.org``) and are found in the text after the escapes
    are read: an invisible word joiner (U+2060) after ``http``, ``www`` and ``@`` keeps them
    from being recognised.
    """
    flat = _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
    return _AUTOLINK.sub("\\g<0>\u2060", flat)


# --------------------------------------------------------------------------- the run store
def store_path() -> Path:
    """``$OTVIZ_STORE`` if set, else the library default (read at every rerun)."""
    return default_store_path()


def open_store(*, quiet: bool = False) -> RunStore | None:
    """Open the run store, or show why it cannot be opened and return None.

    Opening is cheap (a few ms), so every script run opens its own handle:
    a store fixed or replaced on disk is picked up at the next rerun.
    """
    path = store_path()
    try:
        return RunStore(path)
    except (RunStoreError, OSError, ValueError) as exc:
        if not quiet:
            show_error(exc, f"The run store {path} cannot be used")
            st.caption("Point the environment variable `OTVIZ_STORE` (or `otviz dashboard --store PATH`) "
                       "at a writable file to use another store. Pages that need no store keep working.")
        return None


def read_store(store: RunStore, what: str, fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)``; on a store error show it and return None."""
    try:
        return fn(*args, **kwargs)
    except (RunStoreError, OSError) as exc:
        show_error(exc, f"Could not read {what} from the run store")
        return None


def run_label(row: Any) -> str:
    """``✓ #3 transfer/ot (completed), Nov 28 14:02 - name`` for a row of :meth:`RunStore.runs`.

    The status comes as a mark (one shape per status) and a word. A select box keyed on the run id keeps
    its choice when a label changes, and the Train page reruns when a status changes, so
    the labels do not go stale.
    """
    from runcharts import STATUS_STYLE

    name = row.get("name") if hasattr(row, "get") else None
    created = row.get("created_at") if hasattr(row, "get") else None
    status = row.get("status") if hasattr(row, "get") else None
    when = ("" if created is None or created != created
            else f", {created.to_pydatetime().astimezone():%b %d %H:%M}")
    mark = f"{STATUS_STYLE.get(str(status), ('', '?'))[1]} " if status else ""
    state = f" ({status})" if status else ""
    base = f"{mark}#{int(row['run_id'])} {run_kind(row)}{state}{when}"
    if name and not str(name).startswith(f"{row['setting']}-{row['method']}-"):
        base += f" - {name}"
    return base


def run_kind(row: Any) -> str:
    """``setting/method`` of a run; a run logged by a loop of its own without them is ``run``.

    :func:`otviz.loop.run_config` records both; a config given to ``RunStore.track`` by hand
    may have neither (the columns are then empty).
    """
    parts = [str(row[k]) for k in ("setting", "method")
             if k in row and row[k] is not None and row[k] == row[k] and str(row[k])]
    return "/".join(parts) or "run"


# --------------------------------------------------------------------------- launched trainings
@st.cache_resource(show_spinner=False)
def _launched() -> dict[int, Any]:
    """Training processes started by this server (run id -> LaunchedRun), to reap them."""
    return {}


def reap_launched() -> None:
    """Wait for finished children (no zombies), close their logs, forget them."""
    registry = _launched()
    for run_id, launched in list(registry.items()):
        if launched.process.poll() is not None:
            registry.pop(run_id, None)
            launched.log.close()


def launch_training(config: dict[str, Any]):
    """Start a training in its own process (:func:`otviz.train.launch`); returns the LaunchedRun."""
    from otviz.train import launch

    launched = launch(config, store_path=str(store_path()))
    _launched()[launched.run_id] = launched
    return launched


def stop_training(run: dict[str, Any], store: RunStore | None = None) -> str:
    """Stop one run's training process; returns a message for the page.

    A training this server launched is stopped through its process handle. Any other
    run is stopped by :meth:`otviz.runs.RunStore.stop_run`, which signals the process
    named in the store only once it is checked to be the ``otviz train`` process of that
    run; otherwise nothing is signalled and the message says why (a run whose process is
    gone is marked interrupted).
    """
    from otviz.train import stop

    run_id = int(run["run_id"])
    launched = _launched().get(run_id)
    if launched is not None and launched.running():
        stop(launched)
        return f"Stop requested for run {run_id} (process {launched.pid})."
    store = store if store is not None else open_store(quiet=True)
    if store is None:
        return f"Run {run_id} was not stopped: the run store {store_path()} cannot be opened."
    try:
        pid = store.stop_run(run_id)
    except (RunStoreError, OSError, ValueError) as exc:
        text = str(exc)
        return text[:1].upper() + text[1:]
    return f"Stop requested for run {run_id} (process {pid})."


# --------------------------------------------------------------------------- teachers and checkpoints
@st.cache_data(show_spinner=False)
def teachers_frame():
    """The shipped teachers (as :func:`otviz.teachers.list_teachers` lists them, read without torch)."""
    from otviz._teacher_meta import list_teachers  # metadata only: no torch

    return list_teachers(as_frame=True)


def _classes_text(classes) -> str:
    classes = [int(c) for c in classes or []]
    if classes and classes == list(range(classes[0], classes[-1] + 1)) and len(classes) > 2:
        return f"{classes[0]}-{classes[-1]}"
    return ", ".join(map(str, classes))


def teachers_markdown() -> str:
    """The shipped teachers as a small Markdown table (no pandas, no data grid: the first page draws it)."""
    from otviz._teacher_meta import list_teachers  # metadata only: no torch

    lines = ["| teacher | family | dataset | digits | test accuracy | used as |", "|---|---|---|---|---|---|"]
    for t in list_teachers():
        acc = t.get("test_accuracy")
        acc_text = "-" if acc is None else f"{100 * float(acc):.1f} %"
        width = float(t.get("width") or 1.0)
        family = t.get("arch", "?") + ("" if width == 1.0 else f" x{width:g}")
        lines.append(f"| `{t['name']}` | {family} | {t.get('dataset', '?')} | "
                     f"{_classes_text(t.get('classes'))} | {acc_text} | {t.get('role', '')} |")
    return "\n".join(lines)


def upload_ref(data: bytes) -> str:
    return "upload:" + hashlib.sha256(data).hexdigest()[:16]


#: Default memory limit of a model read from a file, in GiB (the page's "Memory limit" input).
DEFAULT_MEMORY_GIB = 2.0


def memory_limit() -> int:
    """The memory limit in bytes chosen on the page (``al_mem_gib``), checked before any model is built."""
    return int(float(st.session_state.get("al_mem_gib", DEFAULT_MEMORY_GIB)) * 1024**3)


def _mtime(path: Path) -> float:
    """Latest modification time of a file, or of a directory's files (so a re-saved model reloads)."""
    if path.is_dir():
        times = [f.stat().st_mtime for f in path.iterdir() if f.is_file()]
        return max(times, default=path.stat().st_mtime)
    return path.stat().st_mtime


def path_ref(path: str, arch: str | None = None) -> str:
    """Reference of a model on this machine: ``path:`` + JSON [absolute path, arch, mtime].

    The modification time is part of the key of :func:`load_model`'s cache, so a model
    re-saved at the same path is read again.
    """
    p = Path(str(path).strip()).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist on this machine; type the path of a model directory "
                                "(config.json + *.safetensors) or of a .pt2, .safetensors or .pt file")
    p = p.resolve()
    return "path:" + json.dumps([str(p), arch or "", _mtime(p)])


@st.cache_resource(show_spinner=False)
def _upload_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="otviz-uploads-"))


def upload_file_ref(name: str, data: bytes, arch: str | None = None) -> str:
    """Write an uploaded .pt2/.safetensors file to this server's upload folder; its :func:`path_ref`."""
    suffix = Path(name).suffix.lower()
    path = _upload_dir() / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not path.is_file():
        path.write_bytes(data)
    return path_ref(str(path), arch)


@st.cache_resource(show_spinner=False, max_entries=24)
def load_model(ref: str, _data: bytes | None = None, max_bytes: int | None = None):
    """``(model, info)`` of a shipped teacher (``"shipped:<name>"``), an upload (``"upload:<sha>"``)
    or a model on this machine (``"path:..."``, :func:`path_ref`).

    Uploads are read with ``weights_only=True`` (:func:`otviz.teachers.load_checkpoint`); paths with
    :func:`otviz.external.load_external` (Hugging Face directories, torch.export programs, state dicts,
    otviz checkpoints), which unpickles nothing. Every model is refused before it is built when its
    declared size exceeds ``max_bytes`` (default: :func:`memory_limit`). For a path, ``info`` holds the
    :class:`~otviz.external.ExternalModel` under ``"external"``.
    """
    from otviz.teachers import load_teacher

    limit = memory_limit() if max_bytes is None else max_bytes
    kind, _, name = ref.partition(":")
    if kind == "upload":
        if _data is None:
            raise ValueError("the uploaded checkpoint is no longer in this session; upload it again")
        return load_teacher(bytes(_data), max_bytes=limit)
    if kind == "path":
        from otviz.external import load_external

        path, arch, _ = json.loads(name)
        em = load_external(path, arch=arch or None, max_bytes=limit)
        info = dict(em.info, kind=em.kind, external=em, path=em.source)
        return em.model, info
    return load_teacher(name, max_bytes=limit)


def check_upload(data: bytes, max_bytes: int | None = None) -> dict[str, Any]:
    """Validate an uploaded checkpoint; returns its metadata or raises ValueError.

    :func:`otviz.teachers.load_checkpoint` checks everything before it reads a tensor: the sizes the
    archive declares, the format, the task metadata, the declared architecture's size against
    ``max_bytes`` (default: :func:`memory_limit`) and the weights' names and shapes against it (on
    the meta device). The upload itself is capped by ``server.maxUploadSize`` (``otviz dashboard``).
    """
    from otviz.teachers import load_checkpoint

    limit = memory_limit() if max_bytes is None else max_bytes
    ckpt = load_checkpoint(bytes(data), max_bytes=limit)   # torch.load(weights_only=True) after the checks
    return {k: v for k, v in ckpt.items() if k != "state_dict"}


@st.cache_resource(show_spinner=False, max_entries=8)
def _probe_cache(task_json: str, n: int, seed: int):
    import torch

    from otviz.teachers import teacher_task

    task = teacher_task({"task": json.loads(task_json)})
    X = task.X_test
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(X), generator=gen)[: min(int(n), len(X))]
    return X[idx], task.name


def probe_inputs(t_info: dict[str, Any], s_info: dict[str, Any], n: int, seed: int):
    """Held-out images of the teacher's task (else the student's): ``(inputs, task name)``."""
    for info in (t_info, s_info):
        task = info.get("task") or {}
        if "dataset" in task and "classes" in task:
            keep = {k: task[k] for k in ("dataset", "classes", "test_size", "split_seed") if k in task}
            return _probe_cache(json.dumps(keep, sort_keys=True), n, seed)
    raise ValueError("neither model records the task it was trained on, so there are no task images to "
                     "feed them: choose another probe (shipped images, a file of tensors, a folder of "
                     "images or a text file of sentences)")


#: Probe sources of the Alignments page: key -> label.
PROBE_SOURCES = {
    "task": "Held-out images of the models' task",
    "dataset": "Shipped images",
    "file": "A file of tensors or arrays",
    "images": "A folder of images",
    "text": "Sentences (a text file)",
}


def probe_key(kind: str, *args: Any) -> str:
    """Hashable description of a probe choice (JSON), with the mtime of a path so edits are seen."""
    if kind in ("file", "images", "text"):
        p = Path(str(args[0]).strip()).expanduser()
        if not str(args[0]).strip():
            raise ValueError(f"type the path of {PROBE_SOURCES[kind].lower()}")
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist on this machine")
        args = (str(p.resolve()), _mtime(p), *args[1:])
    return json.dumps([kind, *args])


def _external(info: dict[str, Any]):
    return info.get("external")


def describe_inputs(inputs: Any) -> str:
    """``(256, 1, 28, 28)`` for a tensor, ``input_ids (64, 23), attention_mask (64, 23)`` for a mapping."""
    if hasattr(inputs, "shape"):
        return str(tuple(inputs.shape))
    if isinstance(inputs, tuple):
        return ", ".join(str(tuple(t.shape)) for t in inputs)
    if hasattr(inputs, "keys"):
        return ", ".join(f"{k} {tuple(inputs[k].shape)}" for k in inputs.keys())
    return type(inputs).__name__


class ProbeError(ValueError):
    """The probe inputs chosen on the Alignments page cannot be used: a file refused (not a regular
    file, over the memory limit, corrupt), or inputs the models do not take. The page shows it once."""


def make_probe(t_info: dict[str, Any], s_info: dict[str, Any], probe: str, n: int, seed: int,
               max_bytes: int | None = None):
    """:func:`_make_probe`, its errors (``ValueError``, ``OSError``, ``ImportError``) as a :class:`ProbeError`."""
    try:
        return _make_probe(t_info, s_info, probe, n, seed, max_bytes)
    except ProbeError:
        raise
    except (ValueError, OSError, ImportError) as exc:
        raise ProbeError(str(exc).strip() or type(exc).__name__) from exc


def _make_probe(t_info: dict[str, Any], s_info: dict[str, Any], probe: str, n: int, seed: int,
                max_bytes: int | None = None):
    """``(inputs, description)`` of the probe chosen on the page, checked against both models.

    ``probe`` is a :func:`probe_key`. Images of a shipped dataset are resized to the size and
    channels the teacher (else the student) declares; sentences are tokenised with the teacher's
    tokenizer (else the student's). Each model that declares its input checks the probe
    (:func:`otviz.external.check_probe`). A file of tensors or a folder of images is refused
    above ``max_bytes`` (default: :func:`memory_limit`) before its data are read.
    """
    from otviz import external as ex

    limit = memory_limit() if max_bytes is None else max_bytes

    kind, *args = json.loads(probe)
    specs = [e.input_spec for e in (_external(t_info), _external(s_info)) if e is not None and e.input_spec]
    if kind == "task":
        inputs, what = probe_inputs(t_info, s_info, n, seed)
        what = f"held-out images of {what}"
    elif kind == "dataset":
        size = next((sp.image_size for sp in specs if sp.image_size), None)
        channels = next((sp.channels for sp in specs if sp.channels), None)
        if any(sp.kind == "tokens" for sp in specs):
            raise ValueError("a model takes token ids, not images: choose a text file of sentences or a "
                             "file of token ids as the probe")
        inputs = ex.shipped_probe(args[0], n, seed=seed, size=size, channels=channels)
        what = f"held-out images of {args[0]}" + (f" resized to {size[0]}x{size[1]}" if size else "")
    elif kind == "file":
        inputs, what = ex.load_probe(args[0], limit=n, max_bytes=limit), f"the first rows of {Path(args[0]).name}"
    elif kind == "images":
        first = next((e for e in (_external(t_info), _external(s_info)) if e is not None), None)
        inputs = ex.load_probe(args[0], first, limit=n, max_bytes=limit)
        what = f"the images of {Path(args[0]).name}/"
    elif kind == "text":
        tok_model = next((e for e in (_external(t_info), _external(s_info))
                          if e is not None and e.tokenizer is not None), None)
        if tok_model is None:
            raise ValueError("neither model has a tokenizer, so sentences cannot be turned into token ids: "
                             "load a Hugging Face model directory that holds its tokenizer files "
                             "(tokenizer.json, or vocab.txt and tokenizer_config.json), or probe with a "
                             "file of token ids (.npz with input_ids and attention_mask)")
        inputs = ex.tokenize_sentences(args[0], tok_model.tokenizer, max_length=int(args[2]), limit=n)
        what = f"the sentences of {Path(args[0]).name}, tokenised by {tok_model.info.get('name')}'s tokenizer"
    else:
        raise ValueError(f"unknown probe source {kind!r}")
    for role, info in (("teacher", t_info), ("student", s_info)):
        em = _external(info)
        if em is not None:
            try:
                ex.check_probe(em, inputs)
            except ValueError as exc:
                raise ValueError(f"the probe does not fit the {role}: {exc}") from None
    return inputs, what


def _models(t_ref, s_ref, t_data, s_data, max_bytes: int | None = None):
    limit = memory_limit() if max_bytes is None else max_bytes
    teacher, t_info = load_model(t_ref, t_data, limit)
    student, s_info = load_model(s_ref, s_data, limit)
    return teacher, t_info, student, s_info


def _run_both(teacher, student, inputs, t_layers, s_layers):
    from otviz.capture import capture

    t_acts = capture(teacher, inputs, list(t_layers))
    try:
        s_acts = capture(student, inputs, list(s_layers))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"the student cannot take the teacher's probe inputs "
                         f"{describe_inputs(inputs)}: {str(exc).splitlines()[0]}") from None
    return t_acts, s_acts


#: Most layers per model in the layer x layer table (a model without ``alignable_layers`` may list dozens).
MAX_TABLE_LAYERS = 12


def model_layers(model) -> list[str]:
    """The layers offered for a model: its ``alignable_layers``, else :func:`otviz.layer_names`."""
    from otviz import layer_names

    return list(getattr(model, "alignable_layers", None) or layer_names(model))


def _called_layers(model, inputs, names: list[str]) -> list[str]:
    """The modules among ``names`` that the forward pass on two probe inputs calls with a tensor output
    (a model may hold modules it never calls, e.g. a dropout replaced by a fused kernel)."""
    import torch

    from otviz.capture import hooked

    from otviz._probe import Probe

    try:
        probe = Probe(inputs, model, next(model.parameters()).device, mask=None)
        with torch.no_grad(), hooked(model, names) as store:
            probe.call(model, 0, 2)  # fed as capture feeds it
    except Exception:  # noqa: BLE001 - the real capture reports what is wrong
        return names
    return [n for n in names if n in store]


def table_layers(model, inputs=None) -> list[str]:
    """At most :data:`MAX_TABLE_LAYERS` of :func:`model_layers` (those the forward pass on ``inputs``
    calls, when given), evenly spread from input to output, the last one kept."""
    names = model_layers(model)
    if inputs is not None and not hasattr(model, "alignable_layers"):
        names = _called_layers(model, inputs, names)
    if len(names) <= MAX_TABLE_LAYERS:
        return names
    idx = np.unique(np.linspace(0, len(names) - 1, MAX_TABLE_LAYERS).round().astype(int))
    return [names[i] for i in idx]


def ot_options(cost: str, normalize: str | None, method: str, eps: float | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"cost": cost, "normalize": normalize, "method": method}
    if method != "emd":
        opts["eps"] = eps
    return opts


@st.cache_data(show_spinner=False, max_entries=32)
def alignment_data(t_ref: str, s_ref: str, t_layer: str, s_layer: str, cost: str,
                   normalize: str | None, method: str, eps: float | None, spatial: str,
                   size: int | None, n_probe: int, seed: int,
                   _t_data: bytes | None = None, _s_data: bytes | None = None,
                   probe: str = '["task"]', max_bytes: int | None = None) -> dict[str, Any]:
    """Neurons of one teacher layer and one student layer on the same probe batch, and their alignment.

    ``probe`` is a :func:`probe_key` (default: held-out images of the models' task); ``max_bytes``
    is the memory limit in force (part of the cache key)."""
    from otviz.transport import align

    teacher, t_info, student, s_info = _models(t_ref, s_ref, _t_data, _s_data, max_bytes)
    inputs, task_name = make_probe(t_info, s_info, probe, n_probe, seed, max_bytes)
    t_acts, s_acts = _run_both(teacher, student, inputs, [t_layer], [s_layer])
    tokens = t_acts.mask_for(t_layer) is not None or s_acts.mask_for(s_layer) is not None
    kw = {"spatial": spatial, "size": size if spatial == "flatten" and not tokens else None}
    T = t_acts.neurons(t_layer, **kw)
    S = s_acts.neurons(s_layer, **kw)
    if T.shape[1] != S.shape[1]:
        hint = ("pick 'mean' (one response per image) or resize both maps"
                if spatial == "flatten" else "pick layers of the same kind")
        raise ValueError(
            f"teacher layer {t_layer!r} (activation {tuple(t_acts[t_layer].shape)}) and student layer "
            f"{s_layer!r} (activation {tuple(s_acts[s_layer].shape)}) give neurons of different "
            f"lengths ({T.shape[1]} vs {S.shape[1]}), so they cannot be compared: {hint}")
    alignment = align(T, S, **ot_options(cost, normalize, method, eps))
    return {"T": T.detach().cpu().numpy().astype(np.float32),
            "S": S.detach().cpu().numpy().astype(np.float32),
            "alignment": alignment, "n_probe": int(t_acts[t_layer].shape[0]), "task": task_name,
            "t_shape": tuple(t_acts[t_layer].shape), "s_shape": tuple(s_acts[s_layer].shape)}


@st.cache_data(show_spinner=False, max_entries=16)
def layer_tables(t_ref: str, s_ref: str, cost: str, normalize: str | None, method: str,
                 eps: float | None, spatial: str, size: int | None, n_probe: int, seed: int,
                 _t_data: bytes | None = None, _s_data: bytes | None = None, measure: str = "ot",
                 probe: str = '["task"]', max_bytes: int | None = None):
    """Layer x layer OT scores (or raw costs, ``measure="ot-raw"``) and linear CKA
    (:func:`otviz.layers.layer_distances`) over :func:`table_layers` of each model; the score
    ignores ``cost`` and ``normalize``."""
    from otviz.layers import layer_distances

    teacher, t_info, student, s_info = _models(t_ref, s_ref, _t_data, _s_data, max_bytes)
    inputs, _ = make_probe(t_info, s_info, probe, n_probe, seed, max_bytes)
    t_layers = table_layers(teacher, inputs)
    s_layers = table_layers(student, inputs)
    masked = isinstance(inputs, Mapping) and "attention_mask" in inputs
    size = size if spatial == "flatten" and not masked else None  # token sequences are not resized
    try:
        opts = ot_options(cost, normalize, method, eps)
        if measure == "ot":  # the score has its own geometry
            opts = {k: v for k, v in opts.items() if k not in ("cost", "normalize")}
        ot_df = layer_distances(teacher, student, inputs, t_layers, s_layers, measure=measure,
                                spatial=spatial, size=size, **opts)
        cka_df = layer_distances(teacher, student, inputs, t_layers, s_layers, measure="cka",
                                 spatial=spatial, size=size)
    except RuntimeError as exc:
        raise ValueError(f"the two models cannot be run on the same probe inputs "
                         f"{describe_inputs(inputs)}: {str(exc).splitlines()[0]}") from None
    return ot_df, cka_df


# --------------------------------------------------------------------------- UMAP in the background
@st.cache_resource(show_spinner=False)
def _embedding_jobs() -> dict[str, Any]:
    return {"pool": ThreadPoolExecutor(max_workers=1, thread_name_prefix="otviz-umap"),
            "futures": {}, "lock": threading.Lock()}


def _embedding_key(T: np.ndarray, S: np.ndarray, method: str) -> str:
    h = hashlib.sha256()
    for arr in (T, S):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return f"{method}:{h.hexdigest()[:20]}"


def background_embedding(T: np.ndarray, S: np.ndarray, method: str = "umap") -> Future:
    """A future for :func:`otviz.figures.embed_neurons` computed in a server-wide worker thread.

    The first UMAP fit of a process loads or compiles numba's functions: 36-63 s on two loaded
    CPU cores with numba's cache on disk, 103-187 s the first time on a machine (nothing cached;
    ``benchmarks/bench_dashboard.py --umap``, load average 9-12); later fits take under a
    second. The page shows the
    instant PCA map meanwhile and switches when the future is done. Results are kept
    for every later viewer.
    """
    from otviz.figures import embed_neurons

    jobs = _embedding_jobs()
    key = _embedding_key(T, S, method)
    with jobs["lock"]:
        fut = jobs["futures"].get(key)
        if fut is None:
            fut = jobs["pool"].submit(embed_neurons, T, S, method=method, random_state=0)
            jobs["futures"][key] = fut
            if len(jobs["futures"]) > 64:  # keep the cache small: drop the oldest finished job
                for old in list(jobs["futures"]):
                    if jobs["futures"][old].done() and old != key:
                        jobs["futures"].pop(old)
                        break
    return fut


# --------------------------------------------------------------------------- exports and results
def export_csv_callable(path: Path, run_ids: list[int] | None, name: str):
    """A no-argument function returning one file of :meth:`RunStore.export_csv` as bytes
    (``name`` is ``"runs"`` or ``"metrics"``), for ``st.download_button(data=...)``: Streamlit
    calls it when the button is clicked, in another thread (hence a store handle of its own),
    so a page render never builds the export (``metrics.csv`` holds every metric row of the
    runs: tens of MB on a large store)."""
    if name not in ("runs", "metrics"):
        raise ValueError(f"name must be 'runs' or 'metrics', got {name!r}")
    ids = None if run_ids is None else [int(r) for r in run_ids]

    def build() -> bytes:
        store = RunStore(path)
        try:
            with tempfile.TemporaryDirectory(prefix="otviz-export-") as tmp:
                return store.export_csv(tmp, run_ids=ids, tables=(name,))[name].read_bytes()
        finally:
            store.close()

    return build


#: What the Compare table shows of each run's last values (:meth:`RunStore.last_values`).
FINAL_KEYS = ("test/accuracy", "val/accuracy", "train/accuracy", "score/*")


@st.cache_resource(show_spinner=False)
def _final_values() -> dict[str, Any]:
    """Server-wide memory of :func:`final_metrics`: store path -> run id -> (signature, values)."""
    return {"lock": threading.Lock(), "stores": {}}


def final_metrics(store: RunStore, runs):
    """Last test/validation/train accuracy and OT score of every run of ``runs`` (a
    :meth:`RunStore.runs` frame), as :meth:`RunStore.last_values` of :data:`FINAL_KEYS`.
    A run with a validation part logs its test accuracy once, at its last step; the
    validation accuracy is NaN for runs without one.

    The values of a finished run do not change, so they are remembered for the whole server,
    keyed on the run's creation time, status, end and last step; only runs that are new,
    running or changed are read again (one grouped query). The first render of a large
    store reads them all once.
    """
    import pandas as pd

    memory = _final_values()
    sig_cols = ["created_at", "status", "ended_at", "heartbeat_at", "step", "epoch"]
    sig_frame = runs[["run_id", *sig_cols]].astype(object)
    sig_frame = sig_frame.where(sig_frame.notna(), None)  # NaN != NaN would never match
    sigs = {int(r[0]): r[1:] for r in sig_frame.itertuples(index=False, name=None)}
    with memory["lock"]:
        known = dict(memory["stores"].get(str(store.path), {}))
    todo = [rid for rid, sig in sigs.items()
            if sig[1] == "running" or known.get(rid, (None,))[0] != sig]
    if todo:
        fresh = store.last_values(FINAL_KEYS, run_ids=None if len(todo) > len(sigs) // 2 else todo)
        values = {int(r["run_id"]): {k: v for k, v in r.items() if k != "run_id" and v == v}
                  for r in fresh.to_dict("records")}
        for rid in todo:
            known[rid] = (sigs[rid], values.get(rid, {}))
        with memory["lock"]:
            memory["stores"][str(store.path)] = known
    base = ["test/accuracy", "val/accuracy", "train/accuracy"]
    frame = pd.DataFrame.from_records([{"run_id": rid, **known[rid][1]} for rid in sigs],
                                      columns=None)
    if frame.empty:
        frame = pd.DataFrame({"run_id": pd.Series([], dtype="int64")})
    for col in base:
        if col not in frame.columns:
            frame[col] = float("nan")
    scores = sorted(c for c in frame.columns if c.startswith("score/"))
    return frame[["run_id", *base, *scores]]


def benchmark_files() -> dict[str, dict[str, Path]]:
    """Result tables of the transfer benchmark that exist: ``{"transfer": {"md": path, "csv": path},
    "transfer_heldout": {...}}`` (``benchmarks/bench_transfer.py`` writes them)."""
    out: dict[str, dict[str, Path]] = {}
    for base in ("transfer", "transfer_heldout"):
        found = {ext: BENCHMARK_RESULTS / f"{base}.{ext}" for ext in ("md", "csv")}
        found = {ext: p for ext, p in found.items() if p.is_file()}
        if found:
            out[base] = found
    return out


#: Tables of the paired benchmark (``benchmarks/bench_paired.py``): name -> file.
PAIRED_FILES = {"final": "transfer_paired.csv", "axes": "transfer_axes.csv", "report": "transfer_paired.md",
                "tuning": "tuning.csv", "budget": "transfer_scratch_curves.csv"}


def paired_files() -> dict[str, Path]:
    """The paired benchmark's result files that exist (``final``, ``axes``, ``report``, ``tuning``,
    ``budget``)."""
    found = {k: BENCHMARK_RESULTS / name for k, name in PAIRED_FILES.items()}
    return {k: p for k, p in found.items() if p.is_file()}


def shown_path(path: Path) -> str:
    """A path as a user of the repository would type it (relative to it when inside)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def notebooks() -> list[tuple[Path, str]]:
    """The walkthrough notebooks with their titles (first heading of the first markdown cell)."""
    out = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")) if NOTEBOOKS.is_dir() else []:
        title = ""
        try:
            cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
            md = next((c for c in cells if c.get("cell_type") == "markdown"), None)
            if md:
                title = "".join(md.get("source", "")).strip().splitlines()[0].lstrip("# ").strip()
        except (OSError, ValueError, IndexError, AttributeError):
            pass
        out.append((path, title))
    return out


# --------------------------------------------------------------------------- layout
#: Narrowest a cell holding a figure may get before the cells of its row stack: two figures sit
#: side by side from about 1000 px of window width, one per row below (800 px windows, tablets).
FIGURE_MIN_WIDTH = 440
#: Narrowest cell for a select box, number input or slider: its label and options stay legible.
CONTROL_MIN_WIDTH = 170
#: Narrowest cell for an ``st.metric``: a value such as ``465 / 600`` or ``64 x 64`` fits unclipped.
METRIC_MIN_WIDTH = 150

_GRID_CSS = (".st-key-{key}{{display:grid !important;"
             "grid-template-columns:repeat(auto-fit,minmax(min(100%,{w}px),1fr));align-items:{align}}}"
             ".st-key-{key}>div{{min-width:0;width:auto !important}}")


def cells(n: int, key: str, *, min_width: int = FIGURE_MIN_WIDTH, gap: str = "medium",
          align: str = "start") -> list:
    """``n`` cells side by side that wrap onto more rows when the page is narrow (a responsive
    ``st.columns(n)``).

    ``st.columns`` keeps every column in one row down to 640 px of window width, so at 800 px
    four columns are 180 px wide and two figures 370 px. A row of cells lays them out as a grid
    of as many equal columns of at least ``min_width`` px as fit, so the same code shows two
    figures side by side at 1400 px and one under the other at 800 px, and six select boxes
    in one row or in two. Use it like ``st.columns``: ``left, right = cells(2, "plans")``, then
    ``with left: ...`` or ``left.selectbox(...)``.

    The grid is the one piece of CSS of the dashboard: Streamlit's horizontal containers wrap
    but cannot be told a minimum width per child. ``key`` names the row (unique on the page,
    letters, digits, ``-`` and ``_``); ``min_width`` is :data:`FIGURE_MIN_WIDTH` for figures,
    :data:`CONTROL_MIN_WIDTH` for controls, :data:`METRIC_MIN_WIDTH` for metrics; ``align`` is
    the vertical alignment of cells in a row (``"start"``, ``"center"``, ``"end"``).
    """
    if n < 1:
        raise ValueError(f"cells needs at least one cell, got n={n}")
    key = f"otviz-cells-{key}"
    st.html(f"<style>{_GRID_CSS.format(key=key, w=int(min_width), align=align)}</style>")
    row = st.container(horizontal=True, gap=gap, key=key)
    return [row.container() for _ in range(n)]


def chart(fig, key: str, *, legend_below: bool = False) -> None:
    """Draw an otviz figure as built (its own template, the same look as in the notebooks).

    ``legend_below`` moves a horizontal legend under the plot, for half-width columns where
    a legend at the top would run into the title.
    """
    if legend_below:
        fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, xanchor="left"))
    st.plotly_chart(fig, theme=None, key=key)


def store_runs(empty_message: str):
    """``(store, runs)`` of the run store, or ``(None, None)`` after telling the user why not.

    Errors opening or reading the store are shown by :func:`open_store` and
    :func:`read_store`; an empty store shows ``empty_message``.
    """
    store = open_store()
    if store is None:
        return None, None
    runs = read_store(store, "the runs", store.runs)
    if runs is None:
        return None, None
    if runs.empty:
        st.info(empty_message)
        return None, None
    return store, runs


# --------------------------------------------------------------------------- comparing runs
#: Config entries two runs must share to be twins: same task, student, budget and OT readout.
TWIN_KEYS = ("setting", "arch", "student_width", "k", "dataset", "epochs", "steps_per_epoch",
             "batch_size", "lr", "cost", "normalize", "spatial", "ot_method", "eps", "pairs")

COST_PREFIX = "cost/"  # snapshot key prefix of the cost matrices (otviz.train.COST_SNAPSHOT_PREFIX)


def twin_run(runs, run_id: int) -> int | None:
    """The run to compare ``run_id`` with by default, or None.

    For a run with a transfer term, its *scratch twin*: a ``scratch`` run with the same
    setting, student, budget (epochs, steps, batch size, lr) and OT readout options
    (:data:`TWIN_KEYS`); for a scratch run, an ``ot`` run of the same kind. Same seed first,
    then the newest.
    """
    import pandas as pd

    row = runs.loc[runs["run_id"] == run_id]
    if row.empty:
        return None
    row = row.iloc[0]
    method = str(row["method"])
    mask = runs["run_id"] != run_id
    if method == "scratch":
        mask &= runs["method"].astype(str).str.contains("ot")
    else:
        mask &= runs["method"] == "scratch"
    for key in TWIN_KEYS:
        col = f"config.{key}"
        if col not in runs.columns:
            continue
        mine = row[col]
        same = runs[col].isna() if pd.isna(mine) else runs[col] == mine
        mask &= same
    cand = runs.loc[mask]
    if cand.empty:
        return None
    seed = row.get("config.seed")
    cand = cand.assign(_same_seed=(cand["config.seed"] == seed) if "config.seed" in cand else False)
    cand = cand.sort_values(["_same_seed", "run_id"], ascending=[False, False])
    return int(cand["run_id"].iloc[0])


def plan_keys(snaps) -> list[str]:
    """The layer pairs of a run's snapshots (the plans, not their ``cost/`` matrices)."""
    if snaps is None or snaps.empty:
        return []
    return sorted(k for k in snaps["key"].unique() if not str(k).startswith(COST_PREFIX))
