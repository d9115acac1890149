"""The run store: trainings, their metrics and plan snapshots in one SQLite file.

A training process writes to the store while any number of readers (the
dashboard, a notebook, the command line) read from it. The store is a single
SQLite database in WAL mode, so readers never block the writer and a process
killed at any moment leaves a consistent database that keeps every committed
write.

Where the store lives
---------------------
``RunStore()`` opens :func:`default_store_path`: the file named by the
environment variable ``OTVIZ_STORE`` if it is set, else ``~/.otviz/runs.db``.
Pass a path to use another file (the command line's ``--store PATH``). A
writer creates a missing store (and its directories); ``RunStore(path,
create=False)``, what reading commands use, refuses a missing file instead. A
store that cannot be written (a read-only file or directory) is still read.

What it holds
-------------
``runs``
    One row per training: name, setting, method, the full configuration as
    JSON, status (``running``, ``completed``, ``failed`` or ``interrupted``),
    created/started/ended timestamps, a heartbeat timestamp, the process id and
    host of the writer, the error text of a failed run, and live progress
    (last step and epoch, total steps, a free-form message).
``metrics``
    Long format: one row per (run, step, key) with the epoch, the value and
    the wall time at which it was logged. Values are always finite.
``snapshots``
    Arrays such as transport plans, one per (run, key, step), stored as
    zlib-compressed ``.npy`` bytes with their shape, dtype and an optional
    JSON ``meta`` dict (for example the teacher and student layer names).

Liveness
--------
A writer refreshes its run's heartbeat on every write, and
:meth:`RunStore.track` also runs a background thread that refreshes it every
few seconds while long steps run. A ``running`` run whose heartbeat is older
than ``stale_after`` seconds (or more than :data:`CLOCK_SKEW` seconds in the
future), or whose process is gone on this host, is *reported* as
``interrupted`` by :meth:`RunStore.runs` and :meth:`RunStore.run`;
:meth:`RunStore.reap` writes that status to the database.

:meth:`RunStore.stop_run` asks the process of a running run to stop. A row
only names a process id, which may have been reused or written by hand, so
the signal goes only to a process that is checked to be the ``otviz train``
process of that run on this store.

Examples
--------
>>> store = RunStore("/tmp/example-runs.db")                # doctest: +SKIP
>>> with store.track({"setting": "distill", "method": "ot"}) as rec:  # doctest: +SKIP
...     for step in range(100):
...         rec.log({"loss": 0.5}, step=step, epoch=0)
>>> store.runs()[["run_id", "name", "status"]]              # doctest: +SKIP
>>> store.metrics_wide(rec.run_id)                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import numbers
import operator
import os
import signal
import socket
import sqlite3
import threading
import time
import traceback
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from otviz._files import MAX_JSON_DEPTH, loads_json

if TYPE_CHECKING:  # pandas is imported lazily: a training process only writes.
    import pandas as pd

__all__ = [
    "CLOCK_SKEW",
    "ENV_VAR",
    "SCHEMA_VERSION",
    "STATUSES",
    "RunNotFoundError",
    "RunRecorder",
    "RunStore",
    "RunStoreError",
    "StepRate",
    "default_store_path",
    "matching_runs",
    "step_rate",
]

#: Environment variable naming the run store file.
ENV_VAR = "OTVIZ_STORE"

#: Version of the database schema, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1

#: Seconds a heartbeat may lie in the future (clock difference between two hosts sharing a
#: store) and still count as a sign of life; a later one marks the run as dead.
CLOCK_SKEW = 10.0

#: The statuses a run can have.
STATUSES = ("running", "completed", "failed", "interrupted")

_FINAL_STATUSES = ("completed", "failed", "interrupted")


class RunStoreError(RuntimeError):
    """The run store cannot be opened, read or written (corrupt, locked, too new)."""


class RunNotFoundError(RunStoreError, LookupError):
    """No run (or snapshot) with the requested id exists in the store."""


def default_store_path() -> Path:
    """Return the path of the run store used when none is given.

    Returns
    -------
    pathlib.Path
        ``$OTVIZ_STORE`` (with ``~`` expanded) if that environment variable is
        set and not empty, else ``~/.otviz/runs.db``. The file and its
        directory are not created here; :class:`RunStore` creates them.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".otviz" / "runs.db"


# --------------------------------------------------------------------------- schema

_SCHEMA_V1 = """
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    setting       TEXT,
    method        TEXT,
    config        TEXT    NOT NULL,
    status        TEXT    NOT NULL
                  CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
    created_at    REAL    NOT NULL,
    started_at    REAL,
    ended_at      REAL,
    heartbeat_at  REAL,
    pid           INTEGER,
    hostname      TEXT,
    error         TEXT,
    message       TEXT,
    step          INTEGER,
    total_steps   INTEGER,
    epoch         INTEGER
);
CREATE TABLE metrics (
    run_id  INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step    INTEGER NOT NULL,
    epoch   INTEGER,
    key     TEXT    NOT NULL,
    value   REAL    NOT NULL,
    time    REAL    NOT NULL,
    UNIQUE (run_id, step, key)
);
CREATE TABLE snapshots (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key     TEXT    NOT NULL,
    epoch   INTEGER NOT NULL,
    step    INTEGER NOT NULL,
    shape   TEXT    NOT NULL,
    dtype   TEXT    NOT NULL,
    data    BLOB    NOT NULL,
    meta    TEXT,
    time    REAL    NOT NULL,
    UNIQUE (run_id, key, step)
);
CREATE INDEX runs_status ON runs (status);
"""


# Migrations: _MIGRATIONS[v] upgrades a database from version v to v + 1. Each
# runs inside the caller's write transaction, so statements are executed one by
# one (``executescript`` would commit).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    0: tuple(s.strip() for s in _SCHEMA_V1.split(";") if s.strip()),
}

_RUN_COLUMNS = (
    "id", "name", "setting", "method", "config", "status", "created_at", "started_at",
    "ended_at", "heartbeat_at", "pid", "hostname", "error", "message", "step",
    "total_steps", "epoch",
)
_TIME_COLUMNS = ("created_at", "started_at", "ended_at", "heartbeat_at")

# The tables and columns a store of each schema version has: a file whose
# user_version claims a version but lacks them is another application's.
_REQUIRED_COLUMNS: dict[int, dict[str, tuple[str, ...]]] = {
    1: {
        "runs": _RUN_COLUMNS,
        "metrics": ("run_id", "step", "epoch", "key", "value", "time"),
        "snapshots": ("id", "run_id", "key", "epoch", "step", "shape", "dtype", "data",
                      "meta", "time"),
    },
}

# Orphaned connections inherited across fork(): kept referenced so the child
# never closes SQLite handles that belong to its parent.
_FORK_ORPHANS: list[sqlite3.Connection] = []


# --------------------------------------------------------------------------- validation


def _check_int(value: Any, what: str, *, minimum: int | None = 0,
               allow_none: bool = False) -> int | None:
    """Return ``value`` as a Python int, or raise a TypeError/ValueError naming ``what``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got a bool ({value!r})")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{what} must be an int, got {type(value).__name__} ({value!r})"
        ) from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {out}")
    if not -2**63 <= out < 2**63:  # SQLite's integers are 64-bit
        low = -2**63 if minimum is None else minimum
        raise ValueError(f"{what} must be an integer between {low} and {2**63 - 1} (SQLite's 64-bit "
                         f"range), got {out if out.bit_length() <= 128 else f'a {out.bit_length()}-bit integer'}")
    return out


def _check_run_id(run_id: Any) -> int:
    return _check_int(run_id, "run_id", minimum=1)  # type: ignore[return-value]


def _check_key(key: Any, what: str = "key") -> str:
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, got {type(key).__name__} ({key!r})")
    if not key.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return key


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError  # message is built by _find_unserialisable


def _find_unserialisable(obj: Any, where: str) -> str | None:
    """Return a description of the first value that JSON cannot encode."""
    if obj is None or isinstance(obj, (str, bool, int, np.generic, os.PathLike)):
        return None
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return f"{where} is {obj!r}, which JSON cannot encode"
        return None
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return f"{where} has a key of type {type(k).__name__} ({k!r})"
            found = _find_unserialisable(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _find_unserialisable(v, f"{where}[{i}]")
            if found:
                return found
        return None
    return f"{where} is of type {type(obj).__name__} ({obj!r:.60})"


def _nesting(obj: Any, limit: int) -> int:
    """How deep lists/tuples/dicts nest in ``obj``, counted up to ``limit + 1`` (no recursion)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (Mapping, list, tuple)):
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, Mapping) else value))
    return deepest


def _to_json(obj: Any, what: str) -> str:
    """Encode ``obj`` as JSON, raising a TypeError that names the offending entry (a ValueError
    for one nested deeper than :data:`otviz._files.MAX_JSON_DEPTH`)."""
    if _nesting(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"{what} nests lists or dicts more than {MAX_JSON_DEPTH} levels deep; "
                         f"store a configuration of ordinary depth (flatten the nested part)")
    try:
        return json.dumps(obj, default=_json_default, allow_nan=False, sort_keys=False)
    except (TypeError, ValueError):
        problem = _find_unserialisable(obj, what) or f"{what} cannot be encoded"
        raise TypeError(
            f"{problem}; {what} must be JSON-serialisable: use str, int, float (finite), "
            "bool, None, and lists or dicts of these"
        ) from None


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a dict (or a dataclass instance), got {type(config).__name__}"
        )
    return dict(config)


def _check_metrics(metrics: Any, step: int) -> list[tuple[str, float]]:
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a dict mapping names to numbers, got {type(metrics).__name__}"
        )
    out: list[tuple[str, float]] = []
    bad: list[str] = []
    for key, value in metrics.items():
        _check_key(key, "metric name")
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(
                f"metric {key!r} must be a number, got {type(value).__name__} ({value!r})"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"metric {key!r} must be a number (or a 0-d array/tensor), got "
                f"{type(value).__name__}"
            ) from None
        if not math.isfinite(number):
            bad.append(f"{key}={number}")
        out.append((key, number))
    if bad:
        raise ValueError(
            f"non-finite metric value at step {step}: {', '.join(bad)}; nothing was logged. "
            "The store keeps only finite values: stop or fail the run instead "
            "(a NaN loss is a failed run)."
        )
    return out


def _as_array(array: Any) -> np.ndarray:
    if hasattr(array, "detach") and callable(array.detach):  # a torch tensor
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.dtype.kind not in "biufc":
        raise TypeError(
            f"snapshot arrays must be numeric (bool, int, float or complex), got dtype "
            f"{arr.dtype}"
        )
    if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
        n_bad = int(arr.size - np.isfinite(arr).sum())
        raise ValueError(
            f"snapshot array has {n_bad} non-finite value(s) (NaN or inf); the store keeps "
            "only finite arrays"
        )
    return arr


def _encode_array(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return zlib.compress(buf.getvalue(), 6)


def _decode_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)


# --------------------------------------------------------------------------- liveness


def _pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this host (zombies count as dead).

    Unknown answers (no pid, not a POSIX system) are ``True``: the heartbeat
    then decides.
    """
    if pid is None or pid <= 0:
        return True
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    try:  # a killed child that its parent has not waited for yet
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
    except (OSError, IndexError):
        pass
    return True


#: Seconds of uncertainty of a process start time read from ``/proc`` (the boot time is in
#: whole seconds, the start in clock ticks after it).
_START_SLACK = 2.0

#: Options of the Python interpreter that take a value (``python -X importtime -m otviz``).
_PYTHON_VALUE_OPTIONS = frozenset({"-X", "-W", "-Q", "--check-hash-based-pycs"})


@dataclasses.dataclass(frozen=True)
class _Process:
    """What this host tells about one process (``None`` where it does not let us see)."""

    pid: int
    cmdline: tuple[str, ...]
    start: float | None  # Unix seconds
    cwd: str | None
    environ: dict[str, str] | None


def _boot_time() -> float:
    with open("/proc/stat", "rb") as fh:
        for line in fh:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("/proc/stat has no btime line")


def _process(pid: int) -> _Process | None:
    """Inspect process ``pid`` of this host; None if it does not exist or is a zombie.

    Reads ``/proc`` (Linux), else uses psutil when it is installed.

    Raises
    ------
    OSError
        When this system offers neither.
    """
    base = f"/proc/{pid}"
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"{base}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            with open(f"{base}/cmdline", "rb") as fh:
                raw = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        if fields[0] in (b"Z", b"X"):  # ended, not yet waited for by its parent
            return None
        try:  # field 22 of stat (fields[0] is field 3): start in clock ticks after boot
            start: float | None = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            start = None
        try:
            cwd: str | None = os.readlink(f"{base}/cwd")
        except OSError:
            cwd = None
        try:
            with open(f"{base}/environ", "rb") as fh:
                env_raw = fh.read()
            environ: dict[str, str] | None = dict(
                os.fsdecode(item).partition("=")[::2] for item in env_raw.split(b"\0") if item)
        except OSError:
            environ = None
        parts = raw.split(b"\0")
        if parts and parts[-1] == b"":
            parts.pop()
        cmdline = tuple(os.fsdecode(a) for a in parts)
        return _Process(pid, cmdline, start, cwd, environ)
    try:
        import psutil
    except ImportError:
        raise OSError("this system has no /proc and psutil is not installed, so the process "
                      "cannot be identified") from None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = tuple(proc.cmdline())
        start = float(proc.create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return _Process(pid, (), None, None, None)
    try:
        cwd = proc.cwd()
    except psutil.Error:
        cwd = None
    try:
        environ = dict(proc.environ())
    except psutil.Error:
        environ = None
    return _Process(pid, cmdline, start, cwd, environ)


def _otviz_train_args(cmdline: tuple[str, ...]) -> list[str] | None:
    """The arguments after ``train`` when ``cmdline`` runs ``otviz train``, else None.

    Recognised: ``python [options] -m otviz train ...`` (what :func:`otviz.train.launch`
    starts), ``python -m otviz.cli train ...``, and the ``otviz`` console script
    (``otviz train ...`` or ``python /path/to/otviz train ...``).
    """
    argv = list(cmdline)
    if not argv:
        return None
    rest: list[str] | None = None
    if os.path.basename(argv[0]) == "otviz":
        rest = argv[1:]
    elif os.path.basename(argv[0]).startswith("python"):
        i = 1
        while i < len(argv):
            arg = argv[i]
            if arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")):
                module = argv[i + 1] if arg == "-m" and i + 1 < len(argv) else arg[2:]
                if module in ("otviz", "otviz.cli", "otviz.__main__"):
                    rest = argv[i + 2:] if arg == "-m" else argv[i + 1:]
                break
            if arg == "-c" or arg == "-" or (arg.startswith("-c") and not arg.startswith("--")):
                break  # a program given inline or on stdin is not otviz
            if arg in _PYTHON_VALUE_OPTIONS:
                i += 2
                continue
            if arg.startswith("-"):
                i += 1
                continue
            if os.path.basename(arg) == "otviz":  # the console script run by its interpreter
                rest = argv[i + 1:]
            break
    if rest is None:
        return None
    command = next((a for a in rest if not a.startswith("-")), None)
    if command != "train":
        return None
    return rest[rest.index("train") + 1:]


def _train_store_of(proc: _Process, args: list[str]) -> str | None:
    """The absolute store path an ``otviz train`` process writes to, or None if it cannot be told."""
    given = None
    for i, arg in enumerate(args):
        if arg == "--store" and i + 1 < len(args):
            given = args[i + 1]
        elif arg.startswith("--store="):
            given = arg.split("=", 1)[1]
    env = proc.environ
    if given is None:  # default_store_path() of that process
        if env is None:
            return None
        given = env.get(ENV_VAR, "").strip() or os.path.join(env.get("HOME", "~"), ".otviz", "runs.db")
    if given == "~" or given.startswith("~/"):
        home = (env or {}).get("HOME")
        if home is None:
            return None
        given = home + given[1:]
    if not os.path.isabs(given):
        if proc.cwd is None:
            return None
        given = os.path.join(proc.cwd, given)
    return os.path.normpath(given)


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _short(cmdline: tuple[str, ...], limit: int = 100) -> str:
    text = " ".join(cmdline) or "(hidden)"
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --------------------------------------------------------------------------- the store


class _Local(threading.local):
    con: sqlite3.Connection | None = None
    pid: int = -1


class RunStore:
    """A SQLite run store shared by training processes and readers.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The database file. Defaults to :func:`default_store_path`
        (``$OTVIZ_STORE`` or ``~/.otviz/runs.db``).
    stale_after : float, default 30.0
        Seconds without a heartbeat after which a ``running`` run is reported
        as ``interrupted``.
    timeout : float, default 10.0
        Seconds to wait for a lock held by another process (SQLite's
        ``busy_timeout``) before raising :class:`RunStoreError`.
    create : bool, default True
        Whether a missing file becomes a new, empty store (missing parent
        directories are created too). With ``create=False`` (what reading
        commands use) a missing file or an empty database is an error and
        nothing is created.
    readonly : bool, default False
        Open the store for reading only: nothing in the file is ever changed and
        every write raises :class:`RunStoreError`. A store that cannot be
        written (its file or its directory is read-only) is opened this way
        automatically; :attr:`readonly` then says so.

    Raises
    ------
    RunStoreError
        If the file is missing (with ``create=False``), is not an otviz run
        store (corrupt, or another application's database), was written by a
        newer otviz, or cannot be created or locked.

    Notes
    -----
    Each thread (and each process) gets its own SQLite connection, created on
    first use, so one ``RunStore`` can be shared by the threads of a server
    and pickled to a subprocess. Every write is one transaction; reads see the
    last committed state and never wait for a writer.

    Opening never changes a file before it is known to be an otviz run store
    (or an empty database): the schema version and the tables are read first.
    A new store's schema is created in one ``BEGIN IMMEDIATE`` transaction that
    re-checks the file under the write lock, so any number of processes may
    open (and create) the same new store at once.

    A store whose directory is read-only is read through a read-only
    connection; when SQLite cannot keep its write-ahead-log side files there
    (``-wal``, ``-shm``) and the store has no pending log, it is opened as
    immutable: the runs are read as they were when the store was opened. A
    store in another journal mode (``DELETE``, from another tool) whose file is
    writable but whose directory is not cannot be switched to WAL there: it is
    opened for reading only, as it is.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 stale_after: float = 30.0, timeout: float = 10.0,
                 create: bool = True, readonly: bool = False) -> None:
        if path is None:
            path = default_store_path()
        if isinstance(path, str) and (path == ":memory:" or path.startswith("file:")):
            raise ValueError(
                "the run store must be a file shared between processes; pass a file path "
                "(for a throwaway store, a file in a temporary directory)"
            )
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        for flag, what in ((create, "create"), (readonly, "readonly")):
            if not isinstance(flag, bool):
                raise TypeError(f"{what} must be True or False, got {flag!r}")
        self._path = Path(path).expanduser().absolute()
        self._stale_after = self._check_seconds(stale_after, "stale_after")
        self._timeout = self._check_seconds(timeout, "timeout")
        self._local = _Local()
        #: "rw", "ro" or "immutable": how every connection opens the file
        self._mode = "ro" if readonly else "rw"
        #: why the store cannot be written (None: it can)
        self._readonly_reason: str | None = "opened with readonly=True" if readonly else None
        try:
            self._init_store(create=create and not readonly)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- plumbing

    @staticmethod
    def _check_seconds(value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{what} must be a number of seconds, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
        return float(value)

    @property
    def path(self) -> Path:
        """Absolute path of the database file."""
        return self._path

    @property
    def stale_after(self) -> float:
        """Seconds without a heartbeat after which a running run is reported interrupted."""
        return self._stale_after

    @property
    def readonly(self) -> bool:
        """Whether this store is open for reading only (every write raises :class:`RunStoreError`)."""
        return self._readonly_reason is not None

    def __repr__(self) -> str:
        return f"RunStore({str(self._path)!r}{', readonly=True' if self.readonly else ''})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self._path, "stale_after": self._stale_after,
                "timeout": self._timeout, "mode": self._mode,
                "readonly_reason": self._readonly_reason}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._path = state["path"]
        self._stale_after = state["stale_after"]
        self._timeout = state["timeout"]
        self._mode = state.get("mode", "rw")
        self._readonly_reason = state.get("readonly_reason")
        self._local = _Local()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the calling thread's connection (reopened on next use)."""
        con, self._local.con = self._local.con, None
        if con is not None and self._local.pid == os.getpid():
            con.close()

    def _corrupt_error(self, exc: BaseException) -> RunStoreError:
        return RunStoreError(
            f"{self._path} is not a readable otviz run store (SQLite: {exc}). "
            "The file is corrupt or is not a SQLite database. Move it aside (or delete it) "
            f"to start a fresh store, or point {ENV_VAR} / --store at another file."
        )

    def _locked_error(self, exc: BaseException, waited: float) -> RunStoreError:
        return RunStoreError(
            f"the run store {self._path} stayed locked by another connection for "
            f"{waited:.3g} s (timeout {self._timeout:g} s; SQLite: {exc}). Another process is "
            "writing a long transaction or hung while holding the lock; retry, or stop that "
            "process."
        )

    def _readonly_error(self, detail: str) -> RunStoreError:
        return RunStoreError(
            f"the run store {self._path} is read-only ({detail}): writing is impossible. "
            "Reading works; to write, make the file and its directory writable, or point "
            f"{ENV_VAR} / --store at a writable location."
        )

    @staticmethod
    def _is_busy(exc: BaseException) -> bool:
        msg = str(exc).lower()
        return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)

    @staticmethod
    def _is_readonly(exc: BaseException) -> bool:
        msg = str(exc).lower()
        return isinstance(exc, sqlite3.OperationalError) and (
            "readonly" in msg or "read-only" in msg or "unable to open" in msg)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate sqlite3 errors into RunStoreError with an actionable message."""
        start = time.monotonic()
        try:
            yield
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if self._is_busy(exc):
                raise self._locked_error(exc, time.monotonic() - start) from exc
            if "readonly" in msg or "read-only" in msg:
                raise self._readonly_error(f"SQLite: {msg}") from exc
            if "unable to open" in msg:
                raise RunStoreError(
                    f"cannot open the run store {self._path} ({msg}); check that the file "
                    f"exists and the permissions of the file and its directory, or point "
                    f"{ENV_VAR} / --store at another location."
                ) from exc
            if "malformed" in msg or "not a database" in msg:
                raise self._corrupt_error(exc) from exc
            raise RunStoreError(f"run store {self._path}: {msg}") from exc
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed", ...
            raise self._corrupt_error(exc) from exc

    def _retry_busy(self, action: Any) -> Any:
        """Call ``action()``, retrying while SQLite answers "locked"/"busy", for up to ``timeout``.

        SQLite's busy handler already waits, but some lock upgrades (the switch to
        WAL mode, a new store's first transaction) answer "busy" at once instead of
        waiting, to avoid a deadlock; those are retried here. The error raised
        after the timeout states how long the store really stayed locked.
        """
        start = time.monotonic()
        delay = 0.001
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                waited = time.monotonic() - start
                if not self._is_busy(exc):
                    raise
                if waited >= self._timeout:
                    raise self._locked_error(exc, waited) from exc
                time.sleep(min(delay, self._timeout - waited))
                delay = min(delay * 2, 0.05)

    def _uri(self, mode: str) -> str:
        query = "mode=ro&immutable=1" if mode == "immutable" else f"mode={mode}"
        return f"file:{urllib.parse.quote(os.fspath(self._path), safe='/')}?{query}"

    def _connect(self, mode: str | None = None) -> sqlite3.Connection:
        con = sqlite3.connect(
            self._uri(mode or self._mode), uri=True, timeout=self._timeout,
            isolation_level=None, check_same_thread=True,
        )
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
            if (mode or self._mode) in ("rw", "rwc"):
                con.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            con.close()
            raise
        return con

    def _con(self) -> sqlite3.Connection:
        """The calling thread's connection, (re)opened after a fork or close()."""
        local = self._local
        pid = os.getpid()
        if local.con is None or local.pid != pid:
            if local.con is not None:
                _FORK_ORPHANS.append(local.con)
            local.con = None
            with self._errors():
                local.con = self._connect()
            local.pid = pid
        return local.con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``)."""
        if self._readonly_reason is not None:
            raise self._readonly_error(self._readonly_reason)
        con = self._con()
        with self._errors():
            if con.in_transaction:  # left open by a write interrupted by a signal
                con.execute("ROLLBACK")
            try:
                self._retry_busy(lambda: con.execute("BEGIN IMMEDIATE"))
                yield con
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    try:
                        con.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        con = self._con()
        with self._errors():
            return self._retry_busy(lambda: con.execute(sql, tuple(params)).fetchall())

    # ----------------------------------------------------------------- opening

    def _missing_error(self) -> RunStoreError:
        return RunStoreError(
            f"no run store at {self._path} (no such file); pass the path of an existing store "
            f"with --store or {ENV_VAR}, or start a training (`otviz train --store PATH`), "
            "which creates it"
        )

    def _init_store(self, *, create: bool) -> None:
        if self._path.is_dir():
            raise RunStoreError(
                f"{self._path} is a directory; the run store is a file: pass a path such "
                f"as {self._path / 'runs.db'}"
            )
        exists = self._path.exists()
        if not exists:
            if not create:
                raise self._missing_error()
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunStoreError(
                    f"cannot create the directory {self._path.parent} for the run store "
                    f"({exc}); point {ENV_VAR} / --store at a writable location."
                ) from exc
        with self._errors():
            con, state = self._open_verified(create=create and not exists)
        # A connection opened here serves the calling thread afterwards.
        self._local.con, self._local.pid = con, os.getpid()
        if state == "empty" and not create:
            raise RunStoreError(
                f"{self._path} is an empty SQLite database, not an otviz run store yet; pass "
                f"the path of an existing store with --store or {ENV_VAR}"
            )
        if state == "old" and self._readonly_reason is not None:
            raise RunStoreError(
                f"the run store {self._path} has an older schema and is read-only "
                f"({self._readonly_reason}); open it once with write access to upgrade it."
            )
        if self._readonly_reason is None and state in ("empty", "old", "not-wal"):
            with self._errors():
                try:
                    self._retry_busy(lambda: self._prepare(con))
                except sqlite3.OperationalError as exc:
                    if state != "not-wal" or not self._is_readonly(exc):
                        raise
                    # a current store in another journal mode (DELETE, TRUNCATE...) whose
                    # directory cannot take WAL's side files: it is read as it is
                    journal = str(con.execute("PRAGMA journal_mode").fetchone()[0]).upper()
                    con.close()
                    self._local.con = None
                    con = self._connect("ro")
                    self._local.con, self._mode = con, "ro"
                    self._readonly_reason = (
                        f"{self._why_readonly(exc)}; the store uses SQLite's {journal} journal, and "
                        "switching it to the write-ahead log otviz writes with needs new files "
                        "next to it")

    def _open_verified(self, *, create: bool) -> tuple[sqlite3.Connection, str]:
        """Connect and classify the file, read-only fallbacks included; nothing is written."""
        modes = ["ro", "immutable"] if self._mode == "ro" else ["rwc" if create else "rw", "ro", "immutable"]
        last: BaseException | None = None
        for mode in modes:
            if mode == "immutable" and self._has_pending_log():
                break  # reading the file alone would miss the log's commits
            try:
                con = self._connect(mode)
            except sqlite3.OperationalError as exc:
                if not self._is_readonly(exc):
                    raise
                last = exc
                continue
            try:
                state = self._retry_busy(lambda: self._inspect(con))
            except sqlite3.OperationalError as exc:
                con.close()
                if not self._is_readonly(exc):
                    raise
                last = exc
                continue
            except BaseException:
                con.close()
                raise
            self._mode = "rw" if mode == "rwc" else mode
            if mode != "rw" and mode != "rwc" and self._readonly_reason is None:
                self._readonly_reason = self._why_readonly(last)
            elif mode in ("rw", "rwc") and not os.access(self._path, os.W_OK):
                self._readonly_reason = f"the file {self._path} is not writable"
            return con, state
        if last is not None and self._has_pending_log():
            raise RunStoreError(
                f"cannot read the run store {self._path} (SQLite: {last}): its directory is "
                f"not writable and it holds a write-ahead log ({self._path.name}-wal) that "
                "SQLite can read only with write access to the directory; open it once where "
                "it is writable, or copy the store and its -wal file to a writable directory."
            ) from last
        raise RunStoreError(
            f"cannot open the run store {self._path} (SQLite: {last}); check the permissions "
            f"of the file and its directory, or point {ENV_VAR} / --store at another location."
        ) from last

    def _has_pending_log(self) -> bool:
        wal = self._path.with_name(self._path.name + "-wal")
        try:
            return wal.stat().st_size > 0
        except OSError:
            return False

    def _why_readonly(self, exc: BaseException | None) -> str:
        directory = self._path.parent
        if not os.access(directory, os.W_OK):
            return f"its directory {directory} is not writable"
        if not os.access(self._path, os.W_OK):
            return f"the file {self._path} is not writable"
        return f"SQLite: {exc}" if exc is not None else "opened for reading only"

    def _inspect(self, con: sqlite3.Connection) -> str:
        """Classify the file, in one read transaction so that the answer is consistent.

        Returns ``"ok"``, ``"not-wal"`` (a store in another journal mode), ``"old"``
        (an older schema), or ``"empty"`` (no tables, version 0: a new file); raises
        :class:`RunStoreError` for another application's database or a newer schema.
        """
        own = not con.in_transaction  # else: the caller's write transaction
        if own:
            con.execute("BEGIN")
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
            columns = {t: {r[0] for r in con.execute("SELECT name FROM pragma_table_info(?)", (t,))}
                       for t in tables}
            journal = str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() if own else "wal"
        except BaseException:
            if own and con.in_transaction:
                try:
                    con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        if own and con.in_transaction:
            con.execute("COMMIT")
        if version > SCHEMA_VERSION:
            raise RunStoreError(
                f"the run store {self._path} has schema version {version}, newer than "
                f"this otviz understands ({SCHEMA_VERSION}); upgrade otviz or use "
                "another store."
            )
        if version == 0:
            if tables:
                names = ", ".join(sorted(tables))
                raise RunStoreError(
                    f"{self._path} is a SQLite database but not an otviz run store (it has "
                    f"tables: {names}); pass another path to --store / {ENV_VAR}."
                )
            return "empty"
        missing = [f"{t}.{c}" if t in columns else f"table {t}"
                   for t, cols in _REQUIRED_COLUMNS[version].items()
                   for c in (cols if t in columns else (None,))
                   if t not in columns or c not in columns[t]]
        if missing:
            shown = ", ".join(sorted(set(missing))[:5])
            raise RunStoreError(
                f"{self._path} is a SQLite database but not an otviz run store: it claims "
                f"schema version {version} but lacks {shown}; pass another path to --store / "
                f"{ENV_VAR}."
            )
        if version < SCHEMA_VERSION:
            return "old"
        return "ok" if journal == "wal" else "not-wal"

    def _prepare(self, con: sqlite3.Connection) -> None:
        """Make a verified (or empty) file a current store in WAL mode; safe to run concurrently."""
        if con.in_transaction:
            con.execute("ROLLBACK")
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            con.execute("PRAGMA journal_mode = WAL")
        con.execute("BEGIN IMMEDIATE")
        try:
            state = self._inspect(con)  # again, under the write lock: another process may have won
            if state in ("empty", "old"):
                version = con.execute("PRAGMA user_version").fetchone()[0]
                while version < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[version]:
                        con.execute(statement)
                    version += 1
                    con.execute(f"PRAGMA user_version = {version}")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------- writing

    def create_run(self, config: Mapping[str, Any] | Any, *, name: str | None = None,
                   total_steps: int | None = None) -> int:
        """Register a new run, owned by the calling process, with status ``running``.

        Parameters
        ----------
        config : dict or dataclass instance
            The run's configuration. Must be JSON-serialisable (numpy scalars and
            paths are converted). Its ``"setting"`` and ``"method"`` entries, if
            present, fill the columns of the same name.
        name : str, optional
            A display name. Defaults to ``"<setting>-<method>-<id>"`` (or
            ``"run-<id>"``).
        total_steps : int, optional
            The number of steps planned, for progress displays.

        Returns
        -------
        int
            The new run's id.

        Raises
        ------
        TypeError
            If ``config`` is not a dict/dataclass or holds a value JSON cannot
            encode (the message names the entry).
        """
        cfg = _config_dict(config)
        config_json = _to_json(cfg, "config")
        if name is not None:
            name = _check_key(name, "name")
        total = _check_int(total_steps, "total_steps", allow_none=True)
        setting = cfg.get("setting")
        method = cfg.get("method")
        setting = None if setting is None else str(setting)
        method = None if method is None else str(method)
        now = time.time()
        with self._write() as con:
            cur = con.execute(
                "INSERT INTO runs (name, setting, method, config, status, created_at, "
                "started_at, heartbeat_at, pid, hostname, total_steps) "
                "VALUES ('', ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (setting, method, config_json, now, now, now, os.getpid(),
                 socket.gethostname(), total),
            )
            run_id = int(cur.lastrowid)  # type: ignore[arg-type]
            if name is None:
                parts = [p for p in (setting, method) if p] or ["run"]
                name = "-".join(parts + [str(run_id)])
            con.execute("UPDATE runs SET name = ? WHERE id = ?", (name, run_id))
        return run_id

    def _touch(self, con: sqlite3.Connection, run_id: int, now: float,
               step: int | None = None, epoch: int | None = None) -> None:
        """Refresh the heartbeat and last step of a running run; raise if it is unknown."""
        cur = con.execute(
            "UPDATE runs SET "
            "heartbeat_at = CASE WHEN status = 'running' THEN ? ELSE heartbeat_at END, "
            "step = CASE WHEN ? IS NULL THEN step ELSE MAX(COALESCE(step, ?), ?) END, "
            "epoch = CASE WHEN ? IS NULL THEN epoch ELSE MAX(COALESCE(epoch, ?), ?) END "
            "WHERE id = ?",
            (now, step, step, step, epoch, epoch, epoch, run_id),
        )
        if cur.rowcount == 0:
            raise RunNotFoundError(f"no run with id {run_id} in {self._path}")

    def log_metrics(self, run_id: int, metrics: Mapping[str, float], *, step: int,
                    epoch: int | None = None, at: float | None = None) -> None:
        """Record scalar metrics of one step, in one transaction.

        Logging a key again at the same step replaces the earlier value. The
        run's heartbeat and last step/epoch are refreshed.

        Parameters
        ----------
        run_id : int
        metrics : dict of str to float
            Values may be Python/numpy numbers or 0-d arrays/tensors.
        step : int
            The global step (>= 0).
        epoch : int, optional
            The epoch the step belongs to (>= 0).
        at : float, optional
            When the values were measured (Unix seconds); default now. For runs
            recorded elsewhere and copied in (``otviz sweep``'s workers).

        Raises
        ------
        ValueError
            If any value is NaN or infinite (the message names the keys);
            nothing is written then.
        TypeError
            If a name is not a string or a value is not a number.
        RunNotFoundError
            If the run does not exist.
        """
        run_id = _check_run_id(run_id)
        step = _check_int(step, "step")  # type: ignore[assignment]
        epoch = _check_int(epoch, "epoch", allow_none=True)
        rows = _check_metrics(metrics, step)
        now = time.time()
        when = now if at is None else self._check_seconds(at, "at")
        with self._write() as con:
            self._touch(con, run_id, now, step, epoch)
            con.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, epoch, key, value, time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, step, epoch, key, value, when) for key, value in rows],
            )

    def log_snapshot(self, run_id: int, key: str, array: Any, *, epoch: int, step: int,
                     meta: Mapping[str, Any] | None = None) -> None:
        """Store an array (typically a transport plan) for one run, key and step.

        Parameters
        ----------
        run_id : int
        key : str
            What the array is, e.g. the layer pair ``"features.conv2->features.conv2"``.
        array : array_like
            A numeric numpy array or torch tensor; stored losslessly (compressed).
        epoch, step : int
            When it was taken. A second snapshot with the same key and step
            replaces the first.
        meta : dict, optional
            Small JSON-serialisable details, e.g. ``{"teacher": ..., "student": ...}``.

        Raises
        ------
        TypeError
            If the array is not numeric or ``meta`` is not JSON-serialisable.
        ValueError
            If the array holds NaN or infinite values.
        RunNotFoundError
            If the run does not exist.
        """
        run_id = _check_run_id(run_id)
        key = _check_key(key)
        epoch = _check_int(epoch, "epoch")  # type: ignore[assignment]
        step = _check_int(step, "step")  # type: ignore[assignment]
        if meta is not None and not isinstance(meta, Mapping):
            raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
        meta_json = None if meta is None else _to_json(dict(meta), "meta")
        arr = _as_array(array)
        blob = _encode_array(arr)
        now = time.time()
        with self._write() as con:
            self._touch(con, run_id, now)
            con.execute(
                "INSERT OR REPLACE INTO snapshots "
                "(run_id, key, epoch, step, shape, dtype, data, meta, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, key, epoch, step, json.dumps(list(arr.shape)), arr.dtype.str,
                 blob, meta_json, now),
            )

    def heartbeat(self, run_id: int, message: str | None = None) -> None:
        """Mark a running run as alive now, optionally updating its progress message.

        Parameters
        ----------
        run_id : int
        message : str, optional
            Replaces the run's free-form progress message when given.
        """
        self.set_progress(run_id, message=message)

    def set_progress(self, run_id: int, *, step: int | None = None,
                     total_steps: int | None = None, epoch: int | None = None,
                     message: str | None = None) -> None:
        """Update a run's live progress (and its heartbeat).

        Parameters
        ----------
        run_id : int
        step : int, optional
            The current global step.
        total_steps : int, optional
            The number of steps planned.
        epoch : int, optional
            The current epoch.
        message : str, optional
            A short free-form status line, e.g. ``"epoch 2/5, evaluating"``.

        Only the fields given are changed.
        """
        run_id = _check_run_id(run_id)
        fields: dict[str, Any] = {}
        if step is not None:
            fields["step"] = _check_int(step, "step")
        if total_steps is not None:
            fields["total_steps"] = _check_int(total_steps, "total_steps")
        if epoch is not None:
            fields["epoch"] = _check_int(epoch, "epoch")
        if message is not None:
            if not isinstance(message, str):
                raise TypeError(f"message must be a str, got {type(message).__name__}")
            fields["message"] = message
        now = time.time()
        with self._write() as con:
            self._touch(con, run_id, now)
            if fields:
                assignments = ", ".join(f"{column} = ?" for column in fields)
                con.execute(f"UPDATE runs SET {assignments} WHERE id = ?",
                            (*fields.values(), run_id))

    def finish(self, run_id: int, status: str = "completed", error: str | None = None) -> None:
        """Mark a run as ended.

        Parameters
        ----------
        run_id : int
        status : {"completed", "failed", "interrupted"}
        error : str, optional
            The error text (a traceback for failed runs, a reason for interrupted ones).
        """
        run_id = _check_run_id(run_id)
        if status not in _FINAL_STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(map(repr, _FINAL_STATUSES))}, got {status!r}"
            )
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error must be a str or None, got {type(error).__name__}")
        now = time.time()
        with self._write() as con:
            cur = con.execute(
                "UPDATE runs SET status = ?, error = ?, ended_at = ?, heartbeat_at = ? "
                "WHERE id = ?",
                (status, error, now, now, run_id),
            )
            if cur.rowcount == 0:
                raise RunNotFoundError(f"no run with id {run_id} in {self._path}")

    def reap(self, *, stale_after: float | None = None) -> list[int]:
        """Persist ``interrupted`` for running runs whose process is gone.

        A run is reaped when its heartbeat is older than ``stale_after``
        seconds or lies more than :data:`CLOCK_SKEW` seconds in the future, or
        when it was started on this host by a process that no longer exists.
        Its end time becomes its last heartbeat (now, for one in the future).

        Parameters
        ----------
        stale_after : float, optional
            Defaults to the store's ``stale_after``.

        Returns
        -------
        list of int
            The ids of the runs marked ``interrupted``.
        """
        limit = self._stale(stale_after)
        reaped: list[int] = []
        with self._write() as con:
            rows = con.execute(
                "SELECT id, heartbeat_at, pid, hostname FROM runs WHERE status = 'running'"
            ).fetchall()
            now = time.time()
            for run_id, beat, pid, host in rows:
                reason = self._dead_reason(beat, pid, host, now, limit)
                if reason is None:
                    continue
                con.execute(
                    "UPDATE runs SET status = 'interrupted', ended_at = ?, "
                    "error = COALESCE(error, ?) WHERE id = ? AND status = 'running'",
                    (now if beat is None else min(beat, now), reason, run_id),
                )
                reaped.append(int(run_id))
        return reaped

    def delete_run(self, run_id: int, *, force: bool = False) -> None:
        """Delete a run with its metrics and snapshots.

        Parameters
        ----------
        run_id : int
        force : bool, default False
            Also delete a run that is still running (its process will then
            fail on its next write).

        Raises
        ------
        RunNotFoundError
            If the run does not exist.
        RunStoreError
            If the run is running and ``force`` is False.
        """
        run_id = _check_run_id(run_id)
        with self._write() as con:
            row = con.execute(
                "SELECT status, heartbeat_at, pid, hostname FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run with id {run_id} in {self._path}")
            status, beat, pid, host = row
            alive = status == "running" and self._dead_reason(
                beat, pid, host, time.time(), self._stale_after) is None
            if alive and not force:
                raise RunStoreError(
                    f"run {run_id} is still running (pid {pid} on {host}); stop it first, "
                    "or pass force=True"
                )
            con.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM snapshots WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def stop_run(self, run_id: int, *, sig: int = signal.SIGTERM) -> int:
        """Ask the process training a running run to stop, once it is sure to be that process.

        The row of a run names a process id and a host. Before sending anything, the
        process with that id on this host is checked to be the ``otviz train`` process
        of this run: its command line is ``otviz train`` (as started by
        :func:`otviz.train.launch` or typed in a shell), it writes to this store (its
        ``--store``, else its ``$OTVIZ_STORE`` or ``~/.otviz/runs.db``), it started before
        the run was created, and no other run of the store was created by that process
        in between (an ``otviz train`` process records one run). A process id that was
        reused, or written into the store by hand, names another process: it is refused
        and nothing is signalled.

        A training stopped with SIGTERM records its run as ``interrupted`` before it exits
        (:meth:`track`). On Linux the signal goes through a pidfd opened before the check,
        so it cannot reach a process that took the id after the check.

        Parameters
        ----------
        run_id : int
        sig : int, default ``signal.SIGTERM``
            The signal to send.

        Returns
        -------
        int
            The process id that was signalled.

        Raises
        ------
        RunNotFoundError
            If the run does not exist.
        RunStoreError
            If the run is not running, runs on another host, was recorded by this very
            process, or its process id does not name its ``otviz train`` process (the
            message says which check failed; nothing is signalled). When the process is
            gone (or its id now names a process started after the run), the run is
            marked ``interrupted`` in the store, and the message says so.
        """
        run_id = _check_run_id(run_id)
        rows = self._read("SELECT status, pid, hostname, created_at, heartbeat_at FROM runs "
                          "WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFoundError(f"no run with id {run_id} in {self._path}")
        status, pid, host, created, beat = rows[0]
        if status != "running":
            raise RunStoreError(f"run {run_id} is not running (it is {status}); there is nothing to stop")
        here = socket.gethostname()
        if host != here:
            raise RunStoreError(f"run {run_id} runs on host {host!r}, not on this one ({here!r}); "
                                f"stop it there (process {pid})")
        if pid is None or int(pid) <= 0:
            raise RunStoreError(f"run {run_id} has no process id in the store; it cannot be stopped "
                                "from here")
        pid = int(pid)
        if pid == os.getpid():
            raise RunStoreError(f"run {run_id} is recorded by this process itself (pid {pid}); end "
                                "it where it runs (leave its `track` block or call finish)")
        pidfd = None
        if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                raise self._gone(run_id, pid, beat) from None
            except OSError:  # a kernel without pidfds: signal by id below
                pidfd = None
        try:
            try:
                proc = _process(pid)
            except OSError as exc:
                raise RunStoreError(f"refusing to stop run {run_id}: process {pid} cannot be "
                                    f"checked ({exc}); nothing was signalled") from None
            if proc is None:
                raise self._gone(run_id, pid, beat)
            if proc.start is not None and proc.start > created + _START_SLACK:
                raise self._gone(run_id, pid, beat, f"process {pid} now is another program, "
                                 f"started {proc.start - created:.0f} s after the run was created "
                                 f"({_short(proc.cmdline)})")
            problem = self._not_its_training(run_id, pid, host, created, proc)
            if problem is not None:
                raise RunStoreError(f"refusing to stop run {run_id}: process {pid} {problem}; "
                                    "nothing was signalled")
            try:
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                raise self._gone(run_id, pid, beat) from None
            except PermissionError:
                raise RunStoreError(f"run {run_id}: not allowed to signal process {pid} (it belongs "
                                    "to another user); stop it as that user") from None
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return pid

    def _not_its_training(self, run_id: int, pid: int, host: str, created: float,
                          proc: _Process) -> str | None:
        """Why ``proc`` is not the ``otviz train`` process of run ``run_id``, or None if it is."""
        args = _otviz_train_args(proc.cmdline)
        if args is None:
            return f"is not an `otviz train` process (its command line: {_short(proc.cmdline)})"
        store = _train_store_of(proc, args)
        if store is None:
            return ("runs `otviz train`, but the store it writes to cannot be told (its working "
                    "directory or environment cannot be read)")
        if not _same_file(store, self._path):
            return f"trains into another store ({store}, not {self._path})"
        if proc.start is None:
            return "runs `otviz train` on this store, but its start time cannot be read"
        others = self._read(
            "SELECT id FROM runs WHERE pid = ? AND hostname = ? AND id != ? AND created_at >= ? "
            "AND created_at < ? ORDER BY created_at", (pid, host, run_id, proc.start - _START_SLACK,
                                                       created))
        if others:
            return (f"trains run {others[0][0]}, created before run {run_id} (an `otviz train` "
                    "process records one run)")
        return None

    def _gone(self, run_id: int, pid: int, beat: float | None, why: str | None = None
              ) -> RunStoreError:
        """Mark a run whose process is gone as interrupted; the error to raise."""
        why = why or f"process {pid} has ended"
        now = time.time()
        with self._write() as con:
            con.execute(
                "UPDATE runs SET status = 'interrupted', ended_at = ?, error = COALESCE(error, ?) "
                "WHERE id = ? AND status = 'running'",
                (now if beat is None else min(beat, now),
                 f"{why} without finishing the run (found when stopping it)", run_id))
        return RunStoreError(f"run {run_id} was not stopped: {why}, so the run is no longer "
                             "running; it is now marked interrupted")

    # ----------------------------------------------------------------- liveness

    def _stale(self, stale_after: float | None) -> float:
        if stale_after is None:
            return self._stale_after
        return self._check_seconds(stale_after, "stale_after")

    @staticmethod
    def _dead_reason(beat: float | None, pid: int | None, host: str | None, now: float,
                     stale_after: float) -> str | None:
        """Why a ``running`` run must be considered interrupted, or None if it is alive.

        A heartbeat more than :data:`CLOCK_SKEW` seconds in the future is no sign of life:
        no writer can have written it (the clocks of two hosts sharing a store differ by
        less), so it would otherwise keep the run ``running`` for ever.
        """
        if host == socket.gethostname() and not _pid_alive(pid):
            return f"the process (pid {pid} on {host}) ended without finishing the run"
        if beat is not None and beat - now > CLOCK_SKEW:
            return (f"its last heartbeat is {beat - now:.0f} s in the future (more than the "
                    f"{CLOCK_SKEW:g} s clock difference tolerated), so it proves nothing: the row "
                    f"was written with a wrong clock or by hand (pid {pid} on {host})")
        if beat is None or now - beat > stale_after:
            age = "never" if beat is None else f"{now - beat:.0f} s ago"
            return (f"no heartbeat for more than {stale_after:g} s (last: {age}); the "
                    f"process (pid {pid} on {host}) was probably killed")
        return None

    def _effective(self, row: dict[str, Any], now: float, stale_after: float) -> dict[str, Any]:
        if row["status"] == "running":
            reason = self._dead_reason(row["heartbeat_at"], row["pid"], row["hostname"],
                                       now, stale_after)
            if reason is not None:
                row["status"] = "interrupted"
                if row["error"] is None:
                    row["error"] = reason
        return row

    # ----------------------------------------------------------------- reading

    def _run_rows(self, run_ids: Iterable[int] | None, stale_after: float | None
                  ) -> list[dict[str, Any]]:
        limit = self._stale(stale_after)
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
        params: tuple[int, ...] = ()
        if run_ids is not None:
            params = tuple(_check_run_id(r) for r in run_ids)
            sql += f" WHERE id IN ({', '.join('?' * len(params))})" if params else " WHERE 0"
        rows = self._read(sql + " ORDER BY id", params)
        now = time.time()
        return [self._effective(dict(zip(_RUN_COLUMNS, r)), now, limit) for r in rows]

    def run(self, run_id: int, *, stale_after: float | None = None) -> dict[str, Any]:
        """Return one run as a dict.

        Parameters
        ----------
        run_id : int
        stale_after : float, optional
            Override the store's staleness threshold (seconds).

        Returns
        -------
        dict
            Keys: ``run_id``, ``name``, ``setting``, ``method``, ``config`` (a
            dict), ``status`` (as reported, see :meth:`runs`), ``created_at``,
            ``started_at``, ``ended_at``, ``heartbeat_at`` (UTC
            ``pandas.Timestamp`` or None), ``duration`` (seconds), ``pid``,
            ``hostname``, ``error``, ``message``, ``step``, ``total_steps``,
            ``epoch``.

        Raises
        ------
        RunNotFoundError
            If the run does not exist.
        """
        import pandas as pd

        run_id = _check_run_id(run_id)
        rows = self._run_rows([run_id], stale_after)
        if not rows:
            raise RunNotFoundError(f"no run with id {run_id} in {self._path}")
        row = rows[0]
        row["duration"] = self._duration(row, time.time())
        out: dict[str, Any] = {"run_id": row.pop("id")}
        for column, value in row.items():
            if column in _TIME_COLUMNS:
                value = None if value is None else _utc(pd.Series([value])).iloc[0]
            elif column == "config":
                value = loads_json(value, f"the stored config of run {out['run_id']}")
            out[column] = value
        return out

    @staticmethod
    def _duration(row: Mapping[str, Any], now: float) -> float | None:
        start = row["started_at"]
        if start is None:
            return None
        if row["ended_at"] is not None:
            end = row["ended_at"]
        elif row["status"] == "running":
            end = now
        else:  # reported interrupted: it stopped at its last sign of life (never in the future)
            end = min(row["heartbeat_at"], now) if row["heartbeat_at"] is not None else start
        return max(0.0, end - start)

    def runs(self, *, stale_after: float | None = None) -> pd.DataFrame:
        """Return all runs, one row each, oldest first.

        A run stored as ``running`` is reported as ``interrupted`` when its
        heartbeat is older than ``stale_after`` seconds or its process no longer
        exists on this host (its ``error`` then says why). Use :meth:`reap` to
        write that status to the store.

        Parameters
        ----------
        stale_after : float, optional
            Override the store's staleness threshold (seconds).

        Returns
        -------
        pandas.DataFrame
            Columns ``run_id, name, setting, method, status, created_at,
            started_at, ended_at, heartbeat_at, duration, pid, hostname, step,
            total_steps, epoch, message, error, config`` (``config`` is the JSON
            text), then one ``config.<key>`` column per configuration entry
            (nested dicts flattened with dots; lists kept as JSON text).
            Timestamps are UTC; ``duration`` is in seconds. An empty store gives
            an empty frame with these columns.
        """
        import pandas as pd

        rows = self._run_rows(None, stale_after)
        now = time.time()
        columns = ["run_id", "name", "setting", "method", "status", "created_at",
                   "started_at", "ended_at", "heartbeat_at", "duration", "pid", "hostname",
                   "step", "total_steps", "epoch", "message", "error", "config"]
        records = []
        flat: list[dict[str, Any]] = []
        for row in rows:
            row["duration"] = self._duration(row, now)
            row["run_id"] = row.pop("id")
            records.append(row)
            flat.append(_flat_config(row["config"]))
        df = pd.DataFrame.from_records(records, columns=columns)
        for column in _TIME_COLUMNS:
            df[column] = _utc(df[column])
        df["run_id"] = df["run_id"].astype("int64")
        df["duration"] = df["duration"].astype("float64")
        for column in ("pid", "step", "total_steps", "epoch"):
            df[column] = df[column].astype("Int64")
        for column in ("name", "setting", "method", "status", "hostname", "message",
                       "error", "config"):
            df[column] = df[column].astype(object)
        if flat:
            names = sorted(set().union(*flat))
            # a column of mixed types (say 0.1 in some runs, "auto" in others) becomes text
            mixed = [c for c in names if _mixed_types(f.get(c) for f in flat)]
            if mixed:  # the cached dicts are shared: copy the ones that change
                flat = [{**f, **{c: str(f[c]) for c in mixed if f.get(c) is not None
                                 and f[c] == f[c]}} for f in flat]
            cfg = pd.DataFrame.from_records(flat, index=df.index, columns=names)
            for column in mixed:
                cfg[column] = cfg[column].astype(object)
            df = pd.concat([df, cfg], axis=1)
        return df

    def metrics(self, run_id: int, keys: str | Iterable[str] | None = None, *,
                since_step: int | None = None) -> pd.DataFrame:
        """Return a run's metrics in long format.

        Parameters
        ----------
        run_id : int
        keys : str or iterable of str, optional
            Only these metrics (default: all).
        since_step : int, optional
            Only steps strictly greater than this, for cheap live polling:
            pass the last step already seen.

        Returns
        -------
        pandas.DataFrame
            Columns ``step`` (int64), ``epoch`` (nullable Int64), ``key``,
            ``value`` (float64), ``time`` (UTC timestamp of the write), sorted
            by step then key.

        Raises
        ------
        RunNotFoundError
            If the run does not exist.
        """
        run_id = _check_run_id(run_id)
        self._require_run(run_id)
        return self._metrics_frame([run_id], keys, since_step).drop(columns="run_id")

    def last_values(self, keys: str | Iterable[str], *,
                    run_ids: Iterable[int] | None = None) -> pd.DataFrame:
        """The last logged value of some metrics, one row per run.

        The last value of metric :math:`k` in run :math:`r` is the one logged at its
        largest step, :math:`v(r, k, \\max\\{s : (r, s, k) \\text{ logged}\\})`: the final
        test accuracy of a finished run, the latest one of a running run. SQLite computes
        it in one grouped query; the metric rows are not loaded, so this stays fast on a
        store of millions of rows where ``metrics()`` per run would not.

        Parameters
        ----------
        keys : str or iterable of str
            Metric names. A name ending in ``*`` stands for every metric that starts with
            what precedes it, e.g. ``"score/*"`` for the OT scores of all layer pairs.
        run_ids : iterable of int, optional
            Only these runs (default: every run). Unknown ids are ignored.

        Returns
        -------
        pandas.DataFrame
            Column ``run_id`` (int64), then one float64 column per metric found (sorted by
            name), NaN where a run never logged that metric. Rows sorted by ``run_id``; a
            run that logged none of the metrics has no row.
        """
        import pandas as pd

        key_list = [keys] if isinstance(keys, str) else list(keys)
        if not key_list:
            raise ValueError("keys must name at least one metric, e.g. 'test/accuracy' or 'score/*'")
        exact, ranges = [], []
        for key in key_list:
            _check_key(key, "metric name")
            if key.endswith("*"):
                prefix = key[:-1]
                if not prefix:
                    raise ValueError("a metric pattern needs a prefix before '*', e.g. 'score/*'")
                ranges.append((prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))
            else:
                exact.append(key)
        terms, params = [], []
        if exact:
            terms.append(f"key IN ({', '.join('?' * len(exact))})")
            params += exact
        for low, high in ranges:  # a prefix as a range of keys
            terms.append("(key >= ? AND key < ?)")
            params += [low, high]
        where = "(" + " OR ".join(terms) + ")"
        # SQLite returns the bare column `value` from the row holding MAX(step)
        sql = (f"SELECT run_id, key, value, MAX(step) FROM metrics WHERE {where}{{runs}} "
               "GROUP BY run_id, key")
        rows: list[tuple[Any, ...]] = []
        if run_ids is None:
            rows = self._read(sql.format(runs=""), params)
        else:
            ids = sorted({_check_run_id(r) for r in run_ids})
            for i in range(0, len(ids), 500):  # below SQLite's limit on parameters
                chunk = ids[i:i + 500]
                rows += self._read(sql.format(runs=f" AND run_id IN ({', '.join('?' * len(chunk))})"),
                                   params + chunk)
        by_run: dict[int, dict[str, float]] = {}
        for run_id, key, value, _ in rows:
            by_run.setdefault(int(run_id), {})[key] = float(value)
        names = sorted({k for values in by_run.values() for k in values})
        order = sorted(by_run)
        columns: dict[str, Any] = {"run_id": np.asarray(order, dtype="int64")}
        for name in names:
            columns[name] = np.asarray([by_run[r].get(name, np.nan) for r in order], dtype="float64")
        return pd.DataFrame(columns)

    def _require_run(self, run_id: int) -> None:
        if not self._read("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
            raise RunNotFoundError(f"no run with id {run_id} in {self._path}")

    def _metrics_query(self, run_ids: list[int] | None, keys: str | Iterable[str] | None,
                       since_step: int | None) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if run_ids is not None:
            where.append(f"run_id IN ({', '.join('?' * len(run_ids))})" if run_ids else "0")
            params += run_ids
        if keys is not None:
            key_list = [keys] if isinstance(keys, str) else list(keys)
            for key in key_list:
                _check_key(key, "metric name")
            where.append(f"key IN ({', '.join('?' * len(key_list))})" if key_list else "0")
            params += key_list
        if since_step is not None:
            where.append("step > ?")
            params.append(_check_int(since_step, "since_step", minimum=None))
        sql = "SELECT run_id, step, epoch, key, value, time FROM metrics"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql + " ORDER BY run_id, step, key", params

    @staticmethod
    def _metrics_rows_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
        import pandas as pd

        df = pd.DataFrame.from_records(
            rows, columns=["run_id", "step", "epoch", "key", "value", "time"])
        df["run_id"] = df["run_id"].astype("int64")
        df["step"] = df["step"].astype("int64")
        df["epoch"] = df["epoch"].astype("Int64")
        df["key"] = df["key"].astype(object)
        df["value"] = df["value"].astype("float64")
        df["time"] = _utc(df["time"])
        return df

    def _metrics_frame(self, run_ids: list[int] | None, keys: str | Iterable[str] | None,
                       since_step: int | None) -> pd.DataFrame:
        sql, params = self._metrics_query(run_ids, keys, since_step)
        return self._metrics_rows_frame(self._read(sql, params))

    def _write_metrics_csv(self, path: Path, run_ids: list[int] | None,
                           chunk: int = 100_000) -> None:
        """The metrics of ``run_ids`` as CSV, ``chunk`` rows at a time (bounded memory).

        The same table as ``_metrics_frame(...).to_csv(index=False)`` (times in UTC to the
        microsecond), written by the csv module: pandas spends most of a large export
        formatting timestamps one by one.
        """
        import csv

        import pandas as pd

        sql, params = self._metrics_query(run_ids, None, None)
        con = self._con()
        with self._errors(), open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["run_id", "step", "epoch", "key", "value", "time"])
            cursor = con.execute(sql, tuple(params))
            while True:
                rows = cursor.fetchmany(chunk)
                if not rows:
                    break
                stamps = np.datetime_as_string(
                    _utc(pd.Series([r[5] for r in rows])).to_numpy(dtype="datetime64[us]"), unit="us")
                writer.writerows((r[0], r[1], r[2], r[3], r[4], f"{t[:10]} {t[11:]}+00:00")
                                 for r, t in zip(rows, stamps))
                if len(rows) < chunk:
                    break

    def metrics_wide(self, run_id: int, keys: str | Iterable[str] | None = None, *,
                     since_step: int | None = None) -> pd.DataFrame:
        """Return a run's metrics with one row per step and one column per key.

        Parameters
        ----------
        run_id, keys, since_step
            As in :meth:`metrics`.

        Returns
        -------
        pandas.DataFrame
            Columns ``step``, ``epoch`` (nullable Int64), then one float column
            per metric key (sorted); a key not logged at a step is NaN there.
        """
        import pandas as pd

        long = self.metrics(run_id, keys, since_step=since_step)
        if long.empty:
            return pd.DataFrame({"step": pd.Series([], dtype="int64"),
                                 "epoch": pd.Series([], dtype="Int64")})
        wide = long.pivot(index="step", columns="key", values="value")
        wide = wide[sorted(wide.columns)]
        wide.columns.name = None
        epoch = long.groupby("step")["epoch"].max()
        wide.insert(0, "epoch", epoch.astype("Int64"))
        return wide.reset_index()

    def snapshots(self, run_id: int, key: str | None = None) -> pd.DataFrame:
        """List a run's snapshots (without their data).

        Parameters
        ----------
        run_id : int
        key : str, optional
            Only snapshots with this key.

        Returns
        -------
        pandas.DataFrame
            Columns ``key``, ``epoch``, ``step``, ``shape`` (tuple), ``dtype``
            (str), ``nbytes`` (compressed size), ``time`` (UTC), ``meta`` (dict
            or None), sorted by key then step.
        """
        import pandas as pd

        run_id = _check_run_id(run_id)
        self._require_run(run_id)
        sql = ("SELECT key, epoch, step, shape, dtype, length(data), time, meta "
               "FROM snapshots WHERE run_id = ?")
        params: list[Any] = [run_id]
        if key is not None:
            sql += " AND key = ?"
            params.append(_check_key(key))
        rows = self._read(sql + " ORDER BY key, step", params)
        records = [
            (k, e, s, tuple(json.loads(shape)), np.dtype(dt).name, n, t,
             None if meta is None else json.loads(meta))
            for k, e, s, shape, dt, n, t, meta in rows
        ]
        df = pd.DataFrame.from_records(
            records,
            columns=["key", "epoch", "step", "shape", "dtype", "nbytes", "time", "meta"])
        for column in ("epoch", "step", "nbytes"):
            df[column] = df[column].astype("int64")
        for column in ("key", "shape", "dtype", "meta"):
            df[column] = df[column].astype(object)
        df["time"] = _utc(df["time"])
        return df

    def snapshot(self, run_id: int, key: str, epoch: int | None = None, *,
                 step: int | None = None) -> np.ndarray:
        """Load one snapshot array.

        Parameters
        ----------
        run_id : int
        key : str
        epoch : int, optional
            The latest snapshot of this epoch. Default: the latest overall.
        step : int, optional
            Exactly this step (instead of ``epoch``).

        Returns
        -------
        numpy.ndarray
            The array as stored (same dtype and shape).

        Raises
        ------
        RunNotFoundError
            If there is no such snapshot (the message lists what there is).
        """
        run_id = _check_run_id(run_id)
        key = _check_key(key)
        if epoch is not None and step is not None:
            raise ValueError("pass epoch or step, not both")
        sql = "SELECT data FROM snapshots WHERE run_id = ? AND key = ?"
        params: list[Any] = [run_id, key]
        if epoch is not None:
            sql += " AND epoch = ?"
            params.append(_check_int(epoch, "epoch"))
        if step is not None:
            sql += " AND step = ?"
            params.append(_check_int(step, "step"))
        rows = self._read(sql + " ORDER BY step DESC LIMIT 1", params)
        if not rows:
            raise RunNotFoundError(self._missing_snapshot(run_id, key, epoch, step))
        try:
            return _decode_array(rows[0][0])
        except (zlib.error, ValueError, OSError) as exc:
            raise RunStoreError(
                f"snapshot {key!r} of run {run_id} in {self._path} cannot be decoded ({exc})"
            ) from exc

    def _missing_snapshot(self, run_id: int, key: str, epoch: int | None,
                          step: int | None) -> str:
        self._require_run(run_id)
        where = "" if epoch is None and step is None else (
            f" at epoch {epoch}" if epoch is not None else f" at step {step}")
        keys = [r[0] for r in self._read(
            "SELECT DISTINCT key FROM snapshots WHERE run_id = ? ORDER BY key", (run_id,))]
        if key not in keys:
            have = ", ".join(map(repr, keys)) if keys else "none"
            return f"run {run_id} has no snapshot {key!r}{where}; its snapshot keys: {have}"
        column = "epoch" if epoch is not None else "step"
        values = [r[0] for r in self._read(
            f"SELECT DISTINCT {column} FROM snapshots WHERE run_id = ? AND key = ? "
            f"ORDER BY {column}", (run_id, key))]
        return (f"run {run_id} has no snapshot {key!r}{where}; available {column}s: "
                f"{', '.join(map(str, values))}")

    def export_csv(self, directory: str | os.PathLike[str],
                   run_ids: Iterable[int] | None = None, *,
                   tables: Iterable[str] = ("runs", "metrics")) -> dict[str, Path]:
        """Write runs and metrics as CSV files.

        Parameters
        ----------
        directory : str or os.PathLike
            Created if missing. Receives ``runs.csv`` (as :meth:`runs`) and
            ``metrics.csv`` (long format with a ``run_id`` column).
        run_ids : iterable of int, optional
            Only these runs (default: all).
        tables : iterable of {"runs", "metrics"}, default both
            Which files to write. ``metrics.csv`` is written a block of rows at a
            time, so a store of millions of rows is exported in bounded memory.

        Returns
        -------
        dict
            ``{"runs": path, "metrics": path}`` (the files written).
        """
        wanted = [tables] if isinstance(tables, str) else list(tables)
        unknown = [t for t in wanted if t not in ("runs", "metrics")]
        if unknown or not wanted:
            raise ValueError(f"tables must name 'runs' and/or 'metrics', got {wanted!r}")
        out = Path(directory).expanduser()
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} exists and is not a directory; pass a directory")
        out.mkdir(parents=True, exist_ok=True)
        ids = None if run_ids is None else [_check_run_id(r) for r in run_ids]
        runs = self.runs()
        if ids is not None:
            missing = sorted(set(ids) - set(runs["run_id"]))
            if missing:
                raise RunNotFoundError(f"no runs with ids {missing} in {self._path}")
            runs = runs[runs["run_id"].isin(ids)]
        paths = {}
        if "runs" in wanted:
            paths["runs"] = out / "runs.csv"
            runs.to_csv(paths["runs"], index=False)
        if "metrics" in wanted:
            paths["metrics"] = out / "metrics.csv"
            self._write_metrics_csv(paths["metrics"], ids)
        return paths

    # ----------------------------------------------------------------- sweeps

    def save_sweep(self, name: str, spec: Mapping[str, Any]) -> None:
        """Record (or replace) the specification of the sweep ``name`` (see :mod:`otviz.sweep`).

        Sweeps live in a ``sweeps`` table (name, spec as JSON, times) created on the first
        call; a store without it stays a valid store of this schema version, which older
        otviz versions read as before.

        Parameters
        ----------
        name : str
        spec : dict
            The sweep's specification, JSON-serialisable.
        """
        name = _check_key(name, "name")
        text = _to_json(dict(spec), "spec")
        now = time.time()
        with self._write() as con:
            con.execute("CREATE TABLE IF NOT EXISTS sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL, "
                        "created_at REAL NOT NULL, updated_at REAL NOT NULL)")
            con.execute("INSERT INTO sweeps (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                        "updated_at = excluded.updated_at", (name, text, now, now))

    def sweeps(self) -> dict[str, dict[str, Any]]:
        """The sweeps recorded in the store: ``{name: spec}`` (empty when there are none)."""
        if not self._read("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sweeps'"):
            return {}
        return {str(n): loads_json(t, f"the stored spec of sweep {n!r}")
                for n, t in self._read("SELECT name, spec FROM sweeps ORDER BY created_at")}

    def integrity_check(self) -> str:
        """Run SQLite's ``PRAGMA integrity_check``; ``"ok"`` means the file is sound."""
        rows = self._read("PRAGMA integrity_check")
        return "\n".join(str(r[0]) for r in rows)

    # ----------------------------------------------------------------- recording

    @contextmanager
    def track(self, config: Mapping[str, Any] | Any, *, name: str | None = None,
              total_steps: int | None = None, heartbeat_interval: float = 5.0,
              handle_sigterm: bool = True) -> Iterator[RunRecorder]:
        """Record a run for the duration of a ``with`` block.

        On normal exit the run is marked ``completed``; if the block raises,
        ``failed``, with as error text a headline (the exception and the first
        line of its message) and the traceback below it; on ``KeyboardInterrupt``
        (Ctrl-C, or SIGTERM, see below), ``interrupted``. The exception is
        re-raised. A daemon thread refreshes the heartbeat every
        ``heartbeat_interval`` seconds while the block runs, so long steps do
        not make the run look dead.

        Parameters
        ----------
        config : dict or dataclass instance
            As in :meth:`create_run`.
        name : str, optional
        total_steps : int, optional
        heartbeat_interval : float, default 5.0
            Seconds between heartbeats; keep it well below ``stale_after``.
        handle_sigterm : bool, default True
            When called from the main thread and SIGTERM has its default
            action, turn SIGTERM into ``KeyboardInterrupt`` inside the block so
            a terminated run is recorded as ``interrupted``. The previous
            handler is restored on exit.

        Yields
        ------
        RunRecorder
            With ``run_id``, ``log``, ``snapshot``, ``progress`` and ``finish``.

        Examples
        --------
        >>> with store.track({"method": "ot", "lam": 0.1}) as rec:  # doctest: +SKIP
        ...     rec.progress(total_steps=100)
        ...     for step in range(100):
        ...         rec.log({"loss": train_step()}, step=step, epoch=0)
        """
        interval = self._check_seconds(heartbeat_interval, "heartbeat_interval")
        run_id = self.create_run(config, name=name, total_steps=total_steps)
        recorder = RunRecorder(self, run_id)
        beat = _HeartbeatThread(self, run_id, interval)
        beat.start()
        previous = None
        if (handle_sigterm and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        status, error = "completed", None
        try:
            yield recorder
        except KeyboardInterrupt as exc:
            status = "interrupted"
            error = str(exc) or "KeyboardInterrupt"
            raise
        except SystemExit as exc:
            if exc.code not in (None, 0):
                status, error = "failed", f"SystemExit({exc.code!r})"
            raise
        except BaseException as exc:
            status = "failed"
            error = _failure_text(exc)
            raise
        finally:
            # a SIGTERM while the run's end is written waits until it is written
            deferred: list[int] = []
            if previous is not None:
                signal.signal(signal.SIGTERM, lambda signum, frame: deferred.append(signum))
            try:
                beat.stop()
                if not (recorder.finished and status == "completed"):
                    try:
                        self.finish(run_id, status, error)
                    except RunNotFoundError:
                        pass  # the run was deleted meanwhile (delete_run(force=True))
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
                    if deferred:
                        os.kill(os.getpid(), signal.SIGTERM)


def _failure_text(exc: BaseException) -> str:
    """A failed run's error: one headline (the exception and the first line of its message,
    at most 300 characters), a blank line, then the traceback."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > 300:
        first = first[:297] + "..."
    headline = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return headline + "\n\n" + "".join(traceback.format_exception(exc)).rstrip()


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("terminated by SIGTERM")


def _utc(seconds: pd.Series) -> pd.Series:
    """Unix seconds (float, NaN/None allowed) to UTC timestamps at microsecond resolution."""
    import pandas as pd

    stamps = pd.to_datetime(seconds.astype("float64").round(6), unit="s", utc=True)
    return stamps.astype("datetime64[us, UTC]")


def _flatten(config: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (list, dict)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


#: Flattened configurations by their JSON text: a run's config never changes, and the
#: dashboard lists every run at each rerun.
_FLAT_CONFIGS: dict[str, dict[str, Any]] = {}
_FLAT_CONFIGS_MAX = 100_000


def _flat_config(text: str) -> dict[str, Any]:
    """``_flatten(json.loads(text), "config.")``, remembered (treat the result as read-only)."""
    flat = _FLAT_CONFIGS.get(text)
    if flat is None:
        if len(_FLAT_CONFIGS) >= _FLAT_CONFIGS_MAX:
            _FLAT_CONFIGS.clear()
        flat = _FLAT_CONFIGS[text] = _flatten(loads_json(text, "a stored run config"), "config.")
    return flat


def _mixed_types(values: Iterable[Any]) -> bool:
    """Whether the non-missing values are of more than one type (ints with floats are one)."""
    kinds = {type(v) for v in values if v is not None and v == v}
    return not (len(kinds) <= 1 or kinds <= {int, float})


def _uniform(column: pd.Series) -> pd.Series:
    """Make a flattened config column single-typed (mixed types become text)."""
    kinds = {type(v) for v in column if v is not None and v == v}
    if len(kinds) <= 1 or kinds <= {int, float}:
        return column
    return column.map(lambda v: v if v is None or v != v else str(v)).astype(object)


class _HeartbeatThread(threading.Thread):
    """Refreshes a run's heartbeat on its own connection until stopped."""

    def __init__(self, store: RunStore, run_id: int, interval: float) -> None:
        super().__init__(name=f"otviz-heartbeat-{run_id}", daemon=True)
        self._store = store
        self._run_id = run_id
        self._interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self._interval):
                try:
                    self._store.heartbeat(self._run_id)
                except RunNotFoundError:
                    return  # the run was deleted
                except (RunStoreError, sqlite3.Error):
                    continue  # locked for a while: try again next time
        finally:
            self._store.close()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=self._store._timeout + 1.0)


class RunRecorder:
    """Writes to one run; returned by :meth:`RunStore.track`.

    Parameters
    ----------
    store : RunStore
    run_id : int
    """

    def __init__(self, store: RunStore, run_id: int) -> None:
        self.store = store
        self.run_id = run_id
        self.finished = False

    def __repr__(self) -> str:
        return f"RunRecorder(run_id={self.run_id}, store={self.store!r})"

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int | None = None) -> None:
        """Record scalar metrics of one step (see :meth:`RunStore.log_metrics`)."""
        self.store.log_metrics(self.run_id, metrics, step=step, epoch=epoch)

    def snapshot(self, key: str, array: Any, *, epoch: int, step: int,
                 meta: Mapping[str, Any] | None = None) -> None:
        """Store an array, e.g. a transport plan (see :meth:`RunStore.log_snapshot`)."""
        self.store.log_snapshot(self.run_id, key, array, epoch=epoch, step=step, meta=meta)

    def progress(self, *, step: int | None = None, total_steps: int | None = None,
                 epoch: int | None = None, message: str | None = None) -> None:
        """Update live progress (see :meth:`RunStore.set_progress`)."""
        self.store.set_progress(self.run_id, step=step, total_steps=total_steps,
                                epoch=epoch, message=message)

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """End the run now with this status; the ``with`` block then keeps it.

        An exception raised later in the block still marks the run failed
        (or interrupted).
        """
        self.store.finish(self.run_id, status, error)
        self.finished = True


# --------------------------------------------------------------------------
# reading runs: speed and duplicates
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepRate:
    """Training speed of a run, measured from its metrics' timestamps (see :func:`step_rate`)."""

    steps_per_second: float
    """Optimisation steps per second of wall time over the window."""
    eta_seconds: float | None
    """Seconds left at that speed, :math:`(n_\\text{total} - s_\\text{last}) / r`; None without a total."""
    steps: int
    """Steps in the window the speed was measured on."""
    seconds: float
    """Wall time spanned by that window."""
    last_step: int
    """Last step logged."""


def step_rate(metrics: pd.DataFrame, *, total_steps: int | None = None,
              window: int = 100) -> StepRate | None:
    """Steps per second over the last ``window`` logged steps, and the time left.

    The speed is :math:`r = (s_b - s_a) / (t_b - t_a)` between the first and the last of
    the last ``window + 1`` distinct logged steps, :math:`t` being the wall time of a
    step's last metric. Evaluation pauses that fall inside the window are counted, so
    the ETA :math:`(n_\\text{total} - s_b) / r` includes them. Step 0 (the evaluation
    before training) is left out.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Long-format metrics of one run (:meth:`RunStore.metrics`), with ``step`` and
        ``time`` columns.
    total_steps : int, optional
        The run's planned number of steps (``RunStore.run(run_id)["total_steps"]``).
    window : int, default 100
        Number of most recent steps to measure on.

    Returns
    -------
    StepRate or None
        None while fewer than two training steps are logged or no time has passed
        between them.
    """
    import pandas as pd

    if not isinstance(metrics, pd.DataFrame) or not {"step", "time"} <= set(metrics.columns):
        raise ValueError("metrics must be the long-format DataFrame of RunStore.metrics "
                         "(columns step and time)")
    window = _check_int(window, "window", minimum=1)
    sub = metrics.loc[metrics["step"] > 0, ["step", "time"]].dropna()
    if sub.empty:
        return None
    times = sub.groupby("step")["time"].max().sort_index()
    if len(times) < 2:
        return None
    times = times.iloc[-(window + 1):]
    if pd.api.types.is_datetime64_any_dtype(times):
        dt = float((times.iloc[-1] - times.iloc[0]).total_seconds())
    else:
        dt = float(times.iloc[-1] - times.iloc[0])
    ds = int(times.index[-1] - times.index[0])
    if dt <= 0 or ds <= 0:
        return None
    rate = ds / dt
    last = int(times.index[-1])
    eta = None
    if total_steps:
        eta = max(0.0, (int(total_steps) - last) / rate)
    return StepRate(steps_per_second=rate, eta_seconds=eta, steps=ds, seconds=dt,
                    last_step=last)


_MISSING = object()


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same_value(a[k], b[k]) for k in a)
    return a == b


def matching_runs(runs: pd.DataFrame, config: Mapping[str, Any], *,
                  ignore: Iterable[str] = ("name", "num_threads")) -> list[int]:
    """Runs whose stored configuration agrees with ``config`` on every key it has.

    ``config`` is compared as a dict: each of its keys, except those in ``ignore``
    (settings that do not change what is trained), must be in the run's stored
    configuration with the same value (numbers equal to 1e-9 relative, lists and
    tuples alike). Keys that only the stored configuration has (the trainer adds
    resolved facts such as ``teacher`` or ``n_train``) are not compared, so pass a
    *resolved* ``config`` (every default filled in) to find the identical runs.

    Parameters
    ----------
    runs : pandas.DataFrame
        :meth:`RunStore.runs` (its ``run_id`` and ``config`` JSON columns).
    config : mapping
        The configuration about to be launched.
    ignore : iterable of str, default ("name", "num_threads")

    Returns
    -------
    list of int
        Matching run ids, newest first.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    skip = set(ignore)
    wanted = json.loads(_to_json({k: v for k, v in config.items() if k not in skip}, "config"))
    out = []
    for rid, text in zip(runs["run_id"], runs["config"]):
        try:
            stored = loads_json(text, "a stored run config") if isinstance(text, str) else dict(text)
        except (TypeError, ValueError):
            continue
        if all(_same_value(v, stored.get(k, _MISSING)) for k, v in wanted.items()):
            out.append(int(rid))
    return sorted(out, reverse=True)
