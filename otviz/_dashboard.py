"""Serving the dashboard: Streamlit behind a Host check, with error details off and a clean exit.

``otviz dashboard`` runs Streamlit's own server (``streamlit run app/otviz_app.py``)
in the otviz process, with these additions:

* **Host check** (against DNS rebinding). A web page on any site can make a
  browser send requests to ``http://evil.example:8501`` after pointing
  ``evil.example`` at ``127.0.0.1``; the browser then treats the dashboard as
  part of that site and lets the page drive it (launch trainings, delete runs,
  stop processes). Such requests carry the attacker's name in their ``Host``
  header, so every HTTP request and WebSocket handshake whose ``Host`` is not a
  name of this server is refused (HTTP 403, before Streamlit sees it). The names
  of a server listening on the loopback interface are ``localhost``,
  ``127.0.0.1`` and ``[::1]``; a server listening on a given address also
  answers to that address; one listening on every interface (``0.0.0.0``,
  ``::``) also to the machine's host name and to any IP address literal (a
  literal address cannot be rebound). ``--allowed-host NAME`` adds a name (a
  reverse proxy, a DNS name of the machine). The port in ``Host`` is not
  compared: it differs legitimately behind an SSH tunnel (``ssh -L 9000:localhost:8501``
  makes the browser send ``Host: localhost:9000``) and plays no part in rebinding.
* **Error details off**: an uncaught exception shows Streamlit's generic
  message in the browser (``client.showErrorDetails = "none"``); the full
  traceback goes to the server's log. The pages report every error a user can
  cause in their own words. ``OTVIZ_DEBUG=1`` shows the details in the browser.
* **Upload cap**: ``server.maxUploadSize`` = :data:`MAX_UPLOAD_MB` (Streamlit
  refuses larger uploads with HTTP 413 while they stream in).
* **Warm start**: while Streamlit boots and the browser loads its scripts, a
  background thread imports the libraries the first page needs
  (:data:`WARM_MODULES`: pandas, plotly, Streamlit's chart and table elements),
  so the page's first run does not pay for them; the import lock makes the page
  wait for a module still being imported rather than import it twice
  (``OTVIZ_WARM_IMPORTS=0`` turns it off; ``benchmarks/bench_dashboard.py``
  measures both).
* **Clean exit**: on SIGTERM or Ctrl-C Streamlit stops its server, then the
  process exits with status 0 without running native libraries' static
  destructors (see :func:`_exit_after_server`).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, NoReturn

__all__ = ["MAX_UPLOAD_MB", "HostCheck", "served_names", "host_name", "streamlit_flags", "serve"]

#: Largest upload the dashboard accepts, in MB (Streamlit's ``server.maxUploadSize``). Uploads are
#: held in the server's memory; larger models are read from a path on this machine instead.
MAX_UPLOAD_MB = 512

#: Seconds the exit waits for page scripts to stop after the server has stopped.
PAGE_STOP_GRACE_S = 3.0

#: Modules the first page run imports, imported in the background while the server starts.
WARM_MODULES = ("numpy", "pandas", "pyarrow", "plotly.graph_objects", "plotly.io",
                "streamlit.elements.plotly_chart", "streamlit.elements.arrow",
                "streamlit.dataframe_util", "otviz.runs", "otviz._recipes", "otviz._teacher_meta")

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")


def _normal(name: str) -> str:
    """Lower case, without a trailing dot or IPv6 brackets."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def served_names(address: str, extra: Iterable[str] = ()) -> tuple[frozenset[str], bool]:
    """The host names a dashboard listening on `address` answers to, and whether any IP literal is accepted.

    Parameters
    ----------
    address : str
        The listening address (``--address``): ``127.0.0.1``, ``0.0.0.0``, a host name...
    extra : iterable of str
        Further names (``--allowed-host``), e.g. the name a reverse proxy forwards.

    Returns
    -------
    names : frozenset of str
        Lower-case names without port or brackets.
    any_ip : bool
        True for a wildcard address (``0.0.0.0``, ``::``): the machine is reached by
        any of its addresses, and an IP literal cannot be rebound to another host.
    """
    addr = _normal(address)
    names = {addr} if addr else set()
    wildcard = addr in _WILDCARDS
    if wildcard or _is_loopback(addr):
        names.update(_LOOPBACK_NAMES)
    if wildcard:
        for name in (socket.gethostname(), socket.getfqdn()):
            if name:
                names.add(_normal(name))
    names.update(_normal(e) for e in extra if e and e.strip())
    names.discard("")
    return frozenset(names), wildcard


def host_name(header: str | None) -> str | None:
    """The name part of a ``Host`` header (``'LocalHost:8501'`` -> ``'localhost'``,
    ``'[::1]:8501'`` -> ``'::1'``), or None when the header is missing or malformed."""
    if header is None:
        return None
    value = header.strip()
    if not value or any(c in value for c in "/\\@?# \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if not _is_ip(name):
            return None
    else:
        name, sep, rest = value.partition(":")
        rest = sep + rest
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or not 0 < int(rest[1:]) < 65536:
            return None
    name = _normal(name)
    return name or None


class HostCheck:
    """ASGI middleware: refuse HTTP requests and WebSocket handshakes whose ``Host`` is not a served name.

    Parameters
    ----------
    app : ASGI application
        Streamlit's Starlette application.
    names : iterable of str
        Accepted host names (see :func:`served_names`).
    any_ip : bool
        Accept any IP address literal as well.

    A refused HTTP request gets ``403`` with a one-paragraph explanation; a refused
    WebSocket handshake is closed before it is accepted (the server answers ``403``).
    Lifespan and other scopes pass through.
    """

    def __init__(self, app: Any, names: Iterable[str], any_ip: bool = False) -> None:
        self.app = app
        self.names = frozenset(_normal(n) for n in names)
        self.any_ip = bool(any_ip)

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header value is served."""
        name = host_name(header)
        if name is None:
            return False
        return name in self.names or (self.any_ip and _is_ip(name))

    def _message(self, header: str | None) -> bytes:
        shown = "no Host header" if header is None else f"Host {header[:100]!r}"
        names = ", ".join(sorted(self.names))
        return (
            f"otviz dashboard: request refused ({shown}). This dashboard answers only to {names}"
            f"{' and IP addresses' if self.any_ip else ''}; requests under another name are refused "
            "so that no web page can drive it through DNS rebinding. To reach it under another name "
            "(a reverse proxy, a DNS name), start it with --allowed-host NAME.\n"
        ).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope.get("headers", ()) if k == b"host"]
        header = values[0].decode("latin-1") if len(values) == 1 else None
        if self.allows(header):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = self._message(header)
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _install_host_check(names: frozenset[str], any_ip: bool) -> None:
    """Wrap the Starlette application Streamlit's server builds in :class:`HostCheck`."""
    try:
        from streamlit.web.server.starlette import starlette_server
    except ImportError as exc:  # pragma: no cover - streamlit < 1.67 (Tornado server)
        raise RuntimeError("the dashboard needs streamlit >= 1.67 (its Starlette server) to check the "
                           "Host of requests: pip install -U 'streamlit>=1.67'") from exc
    create = getattr(starlette_server, "create_starlette_app", None)
    if create is None:  # pragma: no cover - a Streamlit whose server is built differently
        raise RuntimeError("this streamlit version builds its server differently, so otviz cannot check "
                           "the Host of requests; install the version in requirements.txt")
    if getattr(create, "_otviz_host_check", False):
        create = create.__wrapped__

    def create_checked(runtime: Any) -> HostCheck:
        return HostCheck(create(runtime), names, any_ip)

    create_checked._otviz_host_check = True  # type: ignore[attr-defined]
    create_checked.__wrapped__ = create  # type: ignore[attr-defined]
    starlette_server.create_starlette_app = create_checked


def _debug() -> bool:
    return os.environ.get("OTVIZ_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def streamlit_flags(address: str, port: int, *, debug: bool | None = None) -> list[str]:
    """The ``streamlit run`` options of the dashboard (``debug``: default ``$OTVIZ_DEBUG``)."""
    details = "full" if (_debug() if debug is None else debug) else "none"
    return [
        "--server.address", address, "--server.port", str(int(port)),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.maxUploadSize", str(MAX_UPLOAD_MB),
        "--client.showErrorDetails", details,
        "--client.toolbarMode", "minimal",
    ]


def serve(entry: str | os.PathLike[str], address: str, port: int, *,
          allowed_hosts: Iterable[str] = ()) -> NoReturn:
    """Serve the Streamlit app `entry` on `address`:`port` until SIGTERM or Ctrl-C, then exit the process.

    Parameters
    ----------
    entry : path-like
        The Streamlit entry script (``app/otviz_app.py``).
    address, port
        Where to listen.
    allowed_hosts : iterable of str
        Host names accepted besides :func:`served_names` of `address`.

    Never returns: the process exits with Streamlit's exit status once the server has stopped.
    """
    names, any_ip = served_names(address, allowed_hosts)
    _install_host_check(names, any_ip)
    if os.environ.get("OTVIZ_WARM_IMPORTS", "1").strip() != "0":
        threading.Thread(target=_warm_imports, args=(address, port), name="otviz-warm-imports",
                         daemon=True).start()
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", "run", os.fspath(entry), *streamlit_flags(address, port)]
    try:
        streamlit_cli.main(prog_name="streamlit")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    _exit_after_server(code)


def _warm_imports(address: str, port: int, modules: Iterable[str] = WARM_MODULES,
                  timeout: float = 60.0) -> None:
    """Once the server listens, import `modules` so the first page run finds them loaded.

    It waits for the port to accept connections so as not to slow the server's own
    start; the imports then run while the browser loads Streamlit's scripts. A
    module that fails to import is skipped: the page that needs it reports the
    error itself, in its own words.
    """
    import importlib

    host = "127.0.0.1" if address in _WILDCARDS else address
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the page importing it shows the error
            continue


def _exit_after_server(code: int) -> NoReturn:
    """Exit once Streamlit's server has stopped, without the interpreter's native teardown.

    Page scripts run in daemon threads and may be inside torch, numba or BLAS code
    when the server stops (a long computation reaches no Streamlit call at which it
    could stop). A normal interpreter exit would then run the C++ static destructors
    of those libraries under the running threads: torch's thread pools abort the
    process (``terminate called without an active exception``, SIGABRT); a
    background UMAP fit would also hold the exit until it finishes. So: give the page
    scripts :data:`PAGE_STOP_GRACE_S` to stop, run the Python exit handlers
    (``atexit``: log flushing, temporary folders), flush the standard streams and
    leave with ``os._exit``.
    """
    deadline = time.monotonic() + PAGE_STOP_GRACE_S
    for t in threading.enumerate():
        if t.name.startswith("ScriptRunner") and t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream: nothing left to flush
                pass
        os._exit(code)
