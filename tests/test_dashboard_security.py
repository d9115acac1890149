"""The dashboard as an attacker or a careless user meets it: a real `otviz dashboard` process.

* Host check: HTTP requests and WebSocket handshakes addressed to another name
  than the server's (DNS rebinding) are refused with 403; the served names pass.
* Error details: an uncaught exception reaches the browser without its message
  or traceback (``OTVIZ_DEBUG=1`` restores them); uploads are capped.
* SIGTERM after a WebSocket session opened the Alignments page: the server exits
  with status 0 and no abort (``terminate called without an active exception``).
* Uploads: a 390 KB archive that inflates to 400 MB, and a checkpoint whose
  structure record inflates, are refused before anything is decompressed; bad
  task metadata is reported on the page, not raised.

The WebSocket sessions speak Streamlit's protocol (protobuf ``BackMsg`` /
``ForwardMsg``) with the ``websockets`` client Streamlit itself depends on.
"""

from __future__ import annotations

import base64
import http.client
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from otviz._dashboard import MAX_UPLOAD_MB, HostCheck, host_name, served_names, streamlit_flags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVER_START = 180.0  # generous: these tests check behaviour, never speed
SPOOFED = "evil.example"


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server process (its own session) and wait until /_stcore/health answers."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=log.parent, start_new_session=True)
    deadline = time.monotonic() + SERVER_START
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"the server did not answer:\n{log.read_text()}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def start_dashboard(tmp: Path, port: int, *extra: str) -> subprocess.Popen:
    return start([sys.executable, "-m", "otviz", "dashboard", "--port", str(port),
                  "--store", str(tmp / "runs.db"), *extra], tmp / "dashboard.log", port)


def http_get(port: int, path: str, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def ws_handshake(port: int, host: str) -> int:
    """Status of a WebSocket upgrade of /_stcore/stream sent with this Host (101 = accepted)."""
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: streamlit\r\n"
           f"Origin: http://{host}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(req.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b"\r\n", 1)[0].split()[1])


def run_page(port: int, page: str, until=None, timeout: float = 300.0) -> list:
    """Open a Streamlit session over WebSocket, run `page`; return the new elements seen.

    Stops at the end of the script run, or as soon as ``until(element)`` is true.
    """
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    elements = []
    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                 open_timeout=60, max_size=None) as ws:
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_name = page
        ws.send(msg.SerializeToString())
        deadline = time.monotonic() + timeout
        while True:
            fwd = ForwardMsg.FromString(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
            kind = fwd.WhichOneof("type")
            if kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                el = fwd.delta.new_element
                elements.append(el)
                if until is not None and until(el):
                    return elements
            elif kind == "script_finished":
                return elements


# ----------------------------------------------------------------------------- Host check
@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    port = free_port()
    proc = start_dashboard(tmp, port, "--allowed-host", "otviz.lan")
    yield port
    stop(proc)


def test_spoofed_host_is_refused_over_http(dashboard):
    port = dashboard
    for path in ("/", "/_stcore/health", "/alignments", "/_stcore/host-config"):
        for host in (f"{SPOOFED}:{port}", SPOOFED, f"127.0.0.1.{SPOOFED}:{port}", f"localhost@{SPOOFED}"):
            status, body = http_get(port, path, host)
            assert status == 403, (path, host, status)
            assert "DNS rebinding" in body and "--allowed-host" in body
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
                     "localhost:9000"):  # an SSH tunnel changes the port, never the name
            assert http_get(port, path, host)[0] == 200, (path, host)


def test_spoofed_host_is_refused_over_websocket(dashboard):
    port = dashboard
    assert ws_handshake(port, f"{SPOOFED}:{port}") == 403
    assert ws_handshake(port, f"127.0.0.1:{port}") == 101
    assert ws_handshake(port, f"localhost:{port}") == 101


def test_allowed_host_option_adds_a_name(dashboard):
    port = dashboard
    assert http_get(port, "/_stcore/health", f"otviz.lan:{port}")[0] == 200
    assert ws_handshake(port, f"otviz.lan:{port}") == 101
    assert http_get(port, "/_stcore/health", f"otviz.lan.{SPOOFED}:{port}")[0] == 403


def test_served_names_and_host_header_parsing():
    names, any_ip = served_names("127.0.0.1")
    assert names == {"127.0.0.1", "localhost", "::1"} and not any_ip
    names, any_ip = served_names("0.0.0.0", ["Proxy.Example."])
    assert {"localhost", socket.gethostname().lower(), "proxy.example"} <= names and any_ip
    names, any_ip = served_names("192.168.1.5")
    assert names == {"192.168.1.5"} and not any_ip
    assert host_name("LocalHost:8501") == "localhost" and host_name("[::1]:8501") == "::1"
    for bad in (None, "", "a b", "host:port", "host:0", "host:70000", "[nothex]:1", "a/b", "u@h"):
        assert host_name(bad) is None, bad
    check = HostCheck(None, *served_names("0.0.0.0"))
    assert check.allows("10.1.2.3:8501") and check.allows("[fe80::1]:8501")  # literals cannot be rebound
    assert not check.allows(f"{SPOOFED}:8501")
    assert not HostCheck(None, *served_names("127.0.0.1")).allows("10.1.2.3:8501")


# ----------------------------------------------------------------------------- error details, upload cap
BOOM = textwrap.dedent("""
    import streamlit as st
    st.text("maxUploadSize=%s" % st.get_option("server.maxUploadSize"))
    raise RuntimeError("secret-detail-1234")
""")


def test_error_details_are_off_in_the_browser(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text(BOOM)
    port = free_port()
    code = "import sys; from otviz._dashboard import serve; serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]))"
    proc = start([sys.executable, "-c", code, str(script), str(port)], tmp_path / "boom.log", port,
                 env={"OTVIZ_DEBUG": "0"})
    try:
        elements = run_page(port, "", timeout=120)
    finally:
        stop(proc)
    texts = [e.text.body for e in elements if e.WhichOneof("type") == "text"]
    assert f"maxUploadSize={MAX_UPLOAD_MB}" in texts
    exc = [e.exception for e in elements if e.WhichOneof("type") == "exception"]
    assert len(exc) == 1
    shown = exc[0].message + " ".join(exc[0].stack_trace)
    assert "secret-detail-1234" not in shown and not exc[0].stack_trace, shown
    assert "secret-detail-1234" in (tmp_path / "boom.log").read_text()  # the log keeps the details


def test_streamlit_flags_restore_details_when_debugging(monkeypatch):
    flags = streamlit_flags("127.0.0.1", 8501, debug=False)
    opts = dict(zip(flags[::2], flags[1::2]))
    assert opts["--client.showErrorDetails"] == "none" and opts["--server.maxUploadSize"] == str(MAX_UPLOAD_MB)
    assert opts["--server.address"] == "127.0.0.1" and opts["--server.headless"] == "true"
    opts = dict(zip(*[iter(streamlit_flags("127.0.0.1", 8501, debug=True))] * 2))
    assert opts["--client.showErrorDetails"] == "full"
    monkeypatch.setenv("OTVIZ_DEBUG", "1")
    assert "full" in streamlit_flags("127.0.0.1", 8501)


# ----------------------------------------------------------------------------- SIGTERM
def _layer_tables_heading(el) -> bool:
    return el.WhichOneof("type") == "heading" and el.heading.body.startswith("Layer x layer")


def test_sigterm_after_alignments_exits_cleanly(tmp_path):
    port = free_port()
    proc = start_dashboard(tmp_path, port)
    try:
        # Stop the server while the page computes its layer x layer tables (torch at work in
        # the page's thread): the case that aborted in torch's teardown.
        elements = run_page(port, "alignments", until=_layer_tables_heading)
        assert any(e.WhichOneof("type") == "plotly_chart" for e in elements)
        assert _layer_tables_heading(elements[-1]), "the Alignments page no longer shows its layer tables"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        stop(proc)
    log = (tmp_path / "dashboard.log").read_text()
    assert rc == 0, log
    assert "terminate called" not in log and "Fatal Python error" not in log, log


# ----------------------------------------------------------------------------- uploads
def inflating_archive(n: int = 25_000_000, fmt: str = "bogus") -> bytes:
    """A small torch archive whose one float32 tensor record inflates to ``4 n`` bytes of zeros.

    About 100 KB for the default (100 MB inflated); ``n=100_000_000`` gives the 390 KB file
    that inflates to 400 MB.
    """
    import torch

    seed = 65537  # pickled as a 4-byte BININT, so the element count can be patched in place
    buf = io.BytesIO()
    torch.save({"format": fmt, "x": torch.zeros(seed)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"J" + struct.pack("<i", seed), b"J" + struct.pack("<i", n))
            if not info.filename.endswith("/data/0"):
                z.writestr(info.filename, data)
        with z.open(src.infolist()[0].filename.split("/")[0] + "/data/0", "w", force_zip64=True) as f:
            chunk, left = bytes(1 << 20), 4 * n
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return out.getvalue()


MEASURE = textwrap.dedent("""
    import json, sys
    from otviz.teachers import load_checkpoint

    def kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    for path in sys.argv[1:]:
        data = open(path, "rb").read()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
        before = kib("VmRSS")
        try:
            load_checkpoint(data)
            err = None
        except ValueError as exc:
            err = str(exc)
        print(json.dumps({"error": err, "grew_kib": kib("VmHWM") - before}))
""")


def load_in_subprocess(*paths: Path) -> list[dict]:
    """``load_checkpoint`` of each file in a fresh process: its error and how much its peak memory grew."""
    import json

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", MEASURE, *map(str, paths)], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(paths):]]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures peak memory with Linux /proc")
def test_inflating_archive_is_refused_before_decompression(tmp_path):
    from otviz.teachers import TEACHER_DIR

    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(inflating_archive())
    assert bomb.stat().st_size < 200_000
    assert sum(i.file_size for i in zipfile.ZipFile(bomb).infolist()) >= 100_000_000

    # A right format tag, and a tensor that is not a weight of the architecture: same.
    import torch

    ckpt = torch.load(TEACHER_DIR / "cnn-mnist5k.pt", weights_only=True)
    sneaky = tmp_path / "sneaky.pt"
    buf = io.BytesIO()
    torch.save({**ckpt, "state_dict": {**ckpt["state_dict"], "extra": torch.zeros(65537)}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    key = None
    with zipfile.ZipFile(sneaky, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"J" + struct.pack("<i", 65537), b"J" + struct.pack("<i", 25_000_000))
            if len(data) == 4 * 65537 and not data.strip(b"\0"):
                key = info.filename
                with z.open(info.filename, "w", force_zip64=True) as f:
                    for _ in range(100):
                        f.write(bytes(1_000_000))
            else:
                z.writestr(info.filename, data)
    assert key is not None
    bad_tag, extra = load_in_subprocess(bomb, sneaky)
    assert "format tag 'bogus'" in bad_tag["error"]
    assert bad_tag["grew_kib"] < 32 * 1024, bad_tag  # the 100 MB were read before the format check
    assert "do not match" in extra["error"] and "extra" in extra["error"], extra
    assert extra["grew_kib"] < 32 * 1024, extra


def test_inflating_structure_record_is_refused(tmp_path):
    from otviz.teachers import TEACHER_DIR, load_checkpoint

    src = zipfile.ZipFile(TEACHER_DIR / "cnn-mnist5k.pt")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            if info.filename.endswith("data.pkl"):
                with z.open(info.filename, "w", force_zip64=True) as f:
                    f.write(src.read(info.filename))
                    for _ in range(100):
                        f.write(bytes(1_000_000))  # trailing bytes after the pickle's STOP
            else:
                z.writestr(info.filename, src.read(info.filename))
    with pytest.raises(ValueError, match="besides its tensors"):
        load_checkpoint(out.getvalue())


def _checkpoint_with_task(tmp_path: Path, name: str, task) -> bytes:
    import torch

    from otviz.models import build_model
    from otviz.teachers import save_checkpoint

    path = save_checkpoint(build_model("cnn", width=0.25, num_classes=10), tmp_path / name)
    ckpt = torch.load(path, weights_only=True)
    ckpt["task"] = task
    torch.save(ckpt, path)
    return path.read_bytes()


@pytest.mark.parametrize("task, message", [
    ({"dataset": "mnist5k", "classes": []}, "non-empty list"),
    ({"dataset": "mnist5k", "classes": [0, -1]}, "non-negative"),
    ({"dataset": "mnist5k", "classes": [0, 0]}, "twice"),
    ({"dataset": 7, "classes": [0]}, "dataset name"),
    ({"dataset": "mnist5k", "classes": [0], "test_size": 2.0}, "fraction"),
    (["mnist5k"], "must be a dict"),
])
def test_bad_task_metadata_is_refused_at_load(tmp_path, task, message):
    from otviz.teachers import load_checkpoint

    with pytest.raises(ValueError, match=message):
        load_checkpoint(_checkpoint_with_task(tmp_path, "bad.pt", task))


def test_a_task_on_your_own_dataset_loads_and_is_refused_only_for_probe_data(tmp_path):
    from otviz.teachers import load_checkpoint, teacher_task

    ckpt = load_checkpoint(_checkpoint_with_task(tmp_path, "own.pt", {"dataset": "my digits", "classes": [0, 1]}))
    with pytest.raises(ValueError, match="unknown dataset 'my digits'"):
        teacher_task({"task": ckpt["task"]})


def test_bad_task_metadata_upload_is_reported_on_the_page(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OTVIZ_STORE", str(tmp_path / "runs.db"))
    empty = _checkpoint_with_task(tmp_path, "empty.pt", {"dataset": "mnist5k", "classes": []})
    far = _checkpoint_with_task(tmp_path, "far.pt", {"dataset": "mnist5k", "classes": [0, 1, 99]})
    at = AppTest.from_file(str(ROOT / "app" / "otviz_app.py"), default_timeout=300)
    at.run()
    at.switch_page("views/alignments.py").run()
    at.file_uploader[0].set_value([("empty.pt", empty, "application/octet-stream"),
                                   ("far.pt", far, "application/octet-stream")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any("empty.pt is not usable" in e and "task.classes" in e for e in errors), errors
    teacher = [w for w in at.selectbox if w.label == "Teacher"][0]
    far_label = [o for o in teacher.options if o.startswith("far.pt")]
    assert far_label, teacher.options  # structurally fine: its classes are checked against the data
    teacher.set_value(far_label[0]).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any("class 99" in e and "0-9" in e for e in errors), errors


def test_warm_imports_wait_for_the_server_then_import_and_skip_failures(monkeypatch, tmp_path):
    """The warm-up imports start once the port listens, import what the first page needs, and a
    module that cannot be imported does not stop the others."""
    import socket
    import sys
    import threading

    from otviz import _dashboard

    for name in ("otviz_warm_probe_a", "otviz_warm_probe_b"):  # modules of this test only
        (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = threading.Event()

    def warm():
        _dashboard._warm_imports("127.0.0.1", port,
                                 ("no_such_module_xyz", "otviz_warm_probe_a", "otviz_warm_probe_b"),
                                 timeout=30)
        done.set()

    t = threading.Thread(target=warm, daemon=True)
    t.start()
    assert not done.wait(0.3), "the warm-up must wait for the server to listen"
    assert "otviz_warm_probe_a" not in sys.modules
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert done.wait(20)
    assert "otviz_warm_probe_a" in sys.modules and "otviz_warm_probe_b" in sys.modules
    assert set(_dashboard.WARM_MODULES) >= {"pandas", "otviz.runs"}
    for name in ("otviz_warm_probe_a", "otviz_warm_probe_b"):
        sys.modules.pop(name, None)
