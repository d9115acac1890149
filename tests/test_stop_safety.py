"""Stopping a run signals only its own training process; heartbeats in the future prove nothing;
launching a training leaves no temporary folder behind."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from otviz.runs import CLOCK_SKEW, RunStore, RunStoreError

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="these tests read /proc to wait for their processes")

HOST = socket.gethostname()


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.db")


@pytest.fixture
def procs():
    """Processes started by a test, killed at its end."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def _set(store: RunStore, run_id: int, **columns) -> None:
    con = sqlite3.connect(store.path)
    con.execute(f"UPDATE runs SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                (*columns.values(), run_id))
    con.commit()
    con.close()


def _row_naming(store: RunStore, pid: int, *, created: float | None = None, host: str = HOST) -> int:
    """A ``running`` row as a crafted (or stale) store would hold it: ``pid`` on ``host``, fresh heartbeat."""
    rid = store.create_run({"setting": "distill", "method": "ot"})
    now = time.time()
    _set(store, rid, pid=pid, hostname=host, heartbeat_at=now,
         created_at=now if created is None else created)
    return rid


def _alive(p: subprocess.Popen) -> bool:
    return p.poll() is None


def _fake_otviz(tmp_path: Path) -> Path:
    """A script named ``otviz`` that sleeps: its command line reads ``python .../otviz train ...``."""
    script = tmp_path / "bin" / "otviz"
    script.parent.mkdir(exist_ok=True)
    script.write_text("import time\ntime.sleep(120)\n")
    return script


def _wait_started(p: subprocess.Popen) -> None:
    """Until the child runs its own program (between fork and exec it still shows ours)."""
    want = " ".join(map(str, p.args)).encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{p.pid}/cmdline").read_bytes().replace(b"\0", b" ").strip() == want:
                return
        except OSError:
            pass
        time.sleep(0.05)


# ----------------------------------------------------------------------------- Stop
def test_stop_refuses_a_row_naming_an_unrelated_process(store, procs):
    sleeper = subprocess.Popen(["sleep", "60"])
    procs.append(sleeper)
    _wait_started(sleeper)
    rid = _row_naming(store, sleeper.pid)
    with pytest.raises(RunStoreError, match=r"is not an `otviz train` process.*sleep 60.*nothing was signalled"):
        store.stop_run(rid)
    time.sleep(0.2)
    assert _alive(sleeper)
    assert store.run(rid)["status"] == "running"  # not ours to decide: its heartbeat will


def test_dashboard_stop_does_not_kill_an_unrelated_process(store, procs, monkeypatch):
    pytest.importorskip("streamlit")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "app"))
    monkeypatch.setenv("OTVIZ_STORE", str(store.path))
    import dashkit

    sleeper = subprocess.Popen(["sleep", "60"])
    procs.append(sleeper)
    _wait_started(sleeper)
    rid = _row_naming(store, sleeper.pid)
    message = dashkit.stop_training(store.run(rid))
    assert "nothing was signalled" in message and "sleep" in message, message
    time.sleep(0.2)
    assert _alive(sleeper)


def test_stop_refuses_this_process_and_other_hosts(store):
    mine = _row_naming(store, os.getpid())
    with pytest.raises(RunStoreError, match="this process itself"):
        store.stop_run(mine)
    remote = _row_naming(store, 1, host="another-host")
    with pytest.raises(RunStoreError, match="runs on host 'another-host'"):
        store.stop_run(remote)
    store.finish(mine)
    with pytest.raises(RunStoreError, match="is not running"):
        store.stop_run(mine)


def test_stop_of_a_run_whose_process_is_gone_marks_it_interrupted(store):
    gone = subprocess.Popen(["true"])
    gone.wait()
    rid = _row_naming(store, gone.pid)
    with pytest.raises(RunStoreError, match="has ended.*marked interrupted"):
        store.stop_run(rid)
    run = store.run(rid)
    assert run["status"] == "interrupted"
    assert "found when stopping it" in run["error"]


def test_stop_refuses_an_otviz_training_of_another_store_or_started_later(store, procs, tmp_path):
    script = _fake_otviz(tmp_path)
    other = subprocess.Popen([sys.executable, str(script), "train", "--store", str(tmp_path / "other.db")])
    procs.append(other)
    _wait_started(other)
    rid = _row_naming(store, other.pid)
    with pytest.raises(RunStoreError, match="trains into another store"):
        store.stop_run(rid)
    assert _alive(other)

    # the right store, but the process started after the run was created: a reused id
    later = subprocess.Popen([sys.executable, str(script), "train", "--store", str(store.path)])
    procs.append(later)
    _wait_started(later)
    old = _row_naming(store, later.pid, created=time.time() - 3600)
    with pytest.raises(RunStoreError, match="another program, started .* after the run was created"):
        store.stop_run(old)
    assert _alive(later)
    assert store.run(old)["status"] == "interrupted"  # its own process is certainly gone


def test_stop_signals_the_otviz_training_of_the_run(store, procs, tmp_path):
    script = _fake_otviz(tmp_path)
    # relative --store, resolved in the process's working directory
    proc = subprocess.Popen([sys.executable, str(script), "train", "--store", store.path.name],
                            cwd=store.path.parent)
    procs.append(proc)
    _wait_started(proc)
    rid = _row_naming(store, proc.pid)
    # a second row naming the same process, created later: that process trains the first one
    twin = _row_naming(store, proc.pid)
    with pytest.raises(RunStoreError, match=f"trains run {rid}, created before run {twin}"):
        store.stop_run(twin)
    assert _alive(proc)
    assert store.stop_run(rid) == proc.pid
    assert proc.wait(timeout=10) == -signal.SIGTERM


def test_stop_of_a_launched_training_through_the_store(tmp_path):
    """The real thing: `launch` starts `python -m otviz train`; the store's check accepts it."""
    from otviz.train import TrainConfig, launch

    db = tmp_path / "runs.db"
    run = launch(TrainConfig(setting="distill", method="scratch", epochs=50, num_threads=1), store_path=db)
    try:
        store = RunStore(db)
        assert store.stop_run(run.run_id) == run.pid
        run.process.wait(timeout=60)
        assert store.run(run.run_id)["status"] == "interrupted"
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


# ----------------------------------------------------------------------------- heartbeats
def test_a_heartbeat_in_the_future_does_not_keep_a_run_alive(store):
    rid = store.create_run({"method": "ot"})  # this process: alive
    _set(store, rid, heartbeat_at=time.time() + 365 * 86400)
    run = store.run(rid)
    assert run["status"] == "interrupted"
    assert "in the future" in run["error"]
    assert run["duration"] < 60
    assert store.reap() == [rid]
    stored = store.run(rid)
    assert stored["status"] == "interrupted"
    assert stored["ended_at"].timestamp() <= time.time()
    store.delete_run(rid)  # no longer "still running"
    assert store.runs().empty


def test_a_heartbeat_within_the_clock_skew_keeps_a_run_alive(store):
    rid = store.create_run({"method": "ot"})
    _set(store, rid, heartbeat_at=time.time() + CLOCK_SKEW / 2)
    assert store.run(rid)["status"] == "running"
    assert store.reap() == []
    with pytest.raises(RunStoreError, match="still running"):
        store.delete_run(rid)


# ----------------------------------------------------------------------------- temporary folders
def test_launch_leaves_no_temporary_folder(tmp_path, monkeypatch):
    from otviz.train import TrainConfig, launch

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    db = tmp_path / "runs.db"
    run = launch(TrainConfig(setting="distill", method="scratch", epochs=1, steps_per_epoch=2,
                             num_threads=1), store_path=db)
    try:
        assert run.process.wait(timeout=300) == 0, run.output()
        assert RunStore(db).run(run.run_id)["status"] == "completed"
        assert "test accuracy" in run.output()
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        run.log.close()
    assert not list(private.glob("otviz-run-*")), list(private.iterdir())

    # a start that fails removes it too
    with pytest.raises(RuntimeError, match="did not start a run"):
        launch(TrainConfig(setting="distill", method="finetune"), store_path=db)  # the child refuses
    assert not list(private.glob("otviz-run-*")), list(private.iterdir())


def test_stop_button_of_the_train_page_spares_an_unrelated_process(store, procs, monkeypatch):
    """The dashboard itself: a crafted running row naming a `sleep` process; its Stop button."""
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OTVIZ_STORE", str(store.path))
    sleeper = subprocess.Popen(["sleep", "60"])
    procs.append(sleeper)
    _wait_started(sleeper)
    rid = _row_naming(store, sleeper.pid)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "otviz_app.py"),
                           default_timeout=180)
    at.run()  # the Train page follows the running run
    assert not at.exception, [e.value for e in at.exception]
    stop = [b for b in at.button if b.label == "Stop"]
    assert stop, "a running run offers a Stop button"
    stop[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("nothing was signalled" in t.value for t in at.toast), [t.value for t in at.toast]
    time.sleep(0.2)
    assert _alive(sleeper)
    assert store.run(rid)["status"] == "running"
