"""Tests of the run store: round-trips, liveness, concurrency and crash safety."""

from __future__ import annotations

import json
import os
import re
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from otviz.runs import (
    ENV_VAR,
    SCHEMA_VERSION,
    RunNotFoundError,
    RunStore,
    RunStoreError,
    default_store_path,
)

REPO = Path(__file__).resolve().parents[1]

# A training-like writer: one run, metrics committed step by step, each step
# printed only after its commit. argv: store path, number of steps, delay (s).
WRITER = textwrap.dedent(
    """
    import sys, time
    from otviz.runs import RunStore

    path, n, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    store = RunStore(path)
    with store.track({"setting": "test", "method": "writer"},
                     heartbeat_interval=0.2) as rec:
        print("run", rec.run_id, flush=True)
        for step in range(n):
            rec.log({"loss": 1.0 / (step + 1), "acc": step / n}, step=step,
                    epoch=step // 10)
            print("step", step, flush=True)
            if delay:
                time.sleep(delay)
    """
)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    s = RunStore(tmp_path / "runs.db")
    yield s
    s.close()


@pytest.fixture
def writer_script(tmp_path: Path) -> Path:
    path = tmp_path / "writer.py"
    path.write_text(WRITER)
    return path


def start_writer(script: Path, db: Path, n: int, delay: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop(ENV_VAR, None)
    return subprocess.Popen(
        [sys.executable, str(script), str(db), str(n), str(delay)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def read_run_id(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    assert line.startswith("run "), (line, proc.stderr.read() if proc.poll() else "")
    return int(line.split()[1])


def raw(store: RunStore) -> sqlite3.Connection:
    return sqlite3.connect(store.path, isolation_level=None)


# --------------------------------------------------------------------------- location


def test_default_store_path_env_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env" / "s.db"))
    assert default_store_path() == tmp_path / "env" / "s.db"
    s = RunStore()
    assert s.path == tmp_path / "env" / "s.db" and s.path.is_file()
    s.close()

    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / ".otviz" / "runs.db"
    RunStore().close()
    assert (tmp_path / "home" / ".otviz" / "runs.db").is_file()


def test_new_store_is_wal_with_schema_version(store):
    con = raw(store)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "metrics", "snapshots"} <= tables
    con.close()
    # Reopening an existing store is fine and empty stores give empty frames.
    again = RunStore(store.path)
    assert again.runs().empty and "status" in again.runs().columns
    assert store.integrity_check() == "ok"


# --------------------------------------------------------------------------- round-trips


def test_create_log_finish_round_trip(store):
    config = {"setting": "distill", "method": "ot", "lam": 0.1,
              "pairs": [["features.conv2", "features.conv1"]], "optim": {"lr": 0.01}}
    rid = store.create_run(config, total_steps=30)
    for step in range(30):
        store.log_metrics(rid, {"loss": 1.0 / (step + 1), "ot/conv2": np.float32(0.5)},
                          step=step, epoch=step // 10)
    store.log_metrics(rid, {"test_acc": 0.9}, step=29, epoch=2)
    store.finish(rid)

    runs = store.runs()
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["run_id"] == rid and row["name"] == f"distill-ot-{rid}"
    assert (row["setting"], row["method"], row["status"]) == ("distill", "ot", "completed")
    assert row["step"] == 29 and row["epoch"] == 2 and row["total_steps"] == 30
    assert row["pid"] == os.getpid() and row["error"] is None
    assert row["ended_at"] >= row["started_at"] and row["duration"] >= 0
    assert row["config.lam"] == 0.1 and row["config.optim.lr"] == 0.01
    assert json.loads(row["config.pairs"]) == config["pairs"]
    assert json.loads(row["config"]) == config
    assert isinstance(row["created_at"], pd.Timestamp) and str(row["created_at"].tz) == "UTC"

    info = store.run(rid)
    assert info["config"] == config and info["status"] == "completed"

    m = store.metrics(rid)
    assert list(m.columns) == ["step", "epoch", "key", "value", "time"]
    assert len(m) == 61
    loss = m[m.key == "loss"].set_index("step")["value"]
    np.testing.assert_allclose(loss.to_numpy(), 1.0 / np.arange(1, 31))
    assert m[m.key == "test_acc"]["epoch"].tolist() == [2]

    assert set(store.metrics(rid, "loss")["key"]) == {"loss"}
    assert set(store.metrics(rid, ["loss", "test_acc"])["key"]) == {"loss", "test_acc"}
    recent = store.metrics(rid, since_step=27)
    assert sorted(set(recent["step"])) == [28, 29]

    wide = store.metrics_wide(rid)
    assert list(wide.columns) == ["step", "epoch", "loss", "ot/conv2", "test_acc"]
    assert len(wide) == 30 and wide["step"].tolist() == list(range(30))
    assert wide["test_acc"].isna().sum() == 29 and wide["test_acc"].iloc[-1] == 0.9
    assert store.metrics_wide(rid, since_step=100).columns.tolist() == ["step", "epoch"]


def test_relogging_a_step_replaces_the_value(store):
    rid = store.create_run({"x": 1}, name="mine")
    store.log_metrics(rid, {"loss": 1.0}, step=3)
    store.log_metrics(rid, {"loss": 2.0}, step=3)
    m = store.metrics(rid)
    assert m["value"].tolist() == [2.0] and store.run(rid)["name"] == "mine"


def test_progress_and_heartbeat(store):
    rid = store.create_run({})
    before = store.run(rid)["heartbeat_at"]
    time.sleep(0.01)
    store.set_progress(rid, step=5, total_steps=100, epoch=1, message="epoch 1/4")
    store.heartbeat(rid, "evaluating")
    info = store.run(rid)
    assert (info["step"], info["total_steps"], info["epoch"]) == (5, 100, 1)
    assert info["message"] == "evaluating" and info["heartbeat_at"] > before


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_])
@pytest.mark.parametrize("shape", [(7, 5), (3,), (2, 3, 4), (0, 4)])
def test_snapshot_round_trip_exact(store, dtype, shape):
    rid = store.create_run({})
    arr = (np.random.default_rng(0).standard_normal(shape) * 10).astype(dtype)
    store.log_snapshot(rid, "a->b", arr, epoch=0, step=10)
    back = store.snapshot(rid, "a->b", 0)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_snapshots_listing_and_selection(store):
    rid = store.create_run({})
    plans = {e: np.full((4, 2), e, dtype=np.float64) / 8 for e in range(3)}
    meta = {"teacher": "features.conv2", "student": "features.conv1"}
    for e, plan in plans.items():
        store.log_snapshot(rid, "features.conv2->features.conv1", plan, epoch=e,
                           step=10 * e + 9, meta=meta)
    store.log_snapshot(rid, "head->head", np.asfortranarray(np.eye(3)), epoch=2, step=29)

    listing = store.snapshots(rid)
    assert list(listing.columns) == ["key", "epoch", "step", "shape", "dtype", "nbytes",
                                     "time", "meta"]
    assert len(listing) == 4 and "data" not in listing.columns
    one = store.snapshots(rid, "features.conv2->features.conv1")
    assert one["epoch"].tolist() == [0, 1, 2] and one["shape"].iloc[0] == (4, 2)
    assert one["dtype"].iloc[0] == "float64" and one["meta"].iloc[0] == meta

    key = "features.conv2->features.conv1"
    np.testing.assert_array_equal(store.snapshot(rid, key, 1), plans[1])
    np.testing.assert_array_equal(store.snapshot(rid, key), plans[2])  # latest
    np.testing.assert_array_equal(store.snapshot(rid, key, step=9), plans[0])
    np.testing.assert_array_equal(store.snapshot(rid, "head->head"), np.eye(3))
    with pytest.raises(RunNotFoundError, match="available epochs: 0, 1, 2"):
        store.snapshot(rid, key, 7)
    with pytest.raises(RunNotFoundError, match="head->head"):
        store.snapshot(rid, "nope")


def test_snapshot_accepts_tensor_like_and_rejects_bad_arrays(store):
    rid = store.create_run({})

    class FakeTensor:  # the duck type of a torch tensor with requires_grad
        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return np.arange(6.0).reshape(2, 3)

    store.log_snapshot(rid, "t", FakeTensor(), epoch=0, step=0)
    np.testing.assert_array_equal(store.snapshot(rid, "t"), np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        store.log_snapshot(rid, "p", np.array([1.0, np.nan]), epoch=0, step=0)
    with pytest.raises(TypeError, match="numeric"):
        store.log_snapshot(rid, "p", np.array(["a"]), epoch=0, step=0)
    with pytest.raises(TypeError, match="meta"):
        store.log_snapshot(rid, "p", np.ones(2), epoch=0, step=0, meta={"f": object()})


def test_export_csv(store, tmp_path):
    a = store.create_run({"method": "kd", "lam": 0.5})
    b = store.create_run({"method": "ot", "lam": 0.1})
    for rid in (a, b):
        for step in range(5):
            store.log_metrics(rid, {"loss": step * 0.1}, step=step, epoch=0)
        store.finish(rid)
    paths = store.export_csv(tmp_path / "out")
    runs = pd.read_csv(paths["runs"])
    metrics = pd.read_csv(paths["metrics"])
    assert runs["run_id"].tolist() == [a, b] and runs["method"].tolist() == ["kd", "ot"]
    assert runs["config.lam"].tolist() == [0.5, 0.1]
    assert list(metrics.columns) == ["run_id", "step", "epoch", "key", "value", "time"]
    assert len(metrics) == 10

    only_b = store.export_csv(tmp_path / "b", run_ids=[b])
    assert pd.read_csv(only_b["runs"])["run_id"].tolist() == [b]
    assert set(pd.read_csv(only_b["metrics"])["run_id"]) == {b}
    with pytest.raises(RunNotFoundError):
        store.export_csv(tmp_path / "c", run_ids=[99])


def test_delete_run(store):
    rid = store.create_run({})
    store.log_metrics(rid, {"loss": 1.0}, step=0)
    store.log_snapshot(rid, "k", np.ones(2), epoch=0, step=0)
    with pytest.raises(RunStoreError, match="still running"):
        store.delete_run(rid)
    store.finish(rid, "failed", "boom")
    store.delete_run(rid)
    assert store.runs().empty
    con = raw(store)
    assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 0
    con.close()
    with pytest.raises(RunNotFoundError):
        store.delete_run(rid)
    other = store.create_run({})
    store.delete_run(other, force=True)


# --------------------------------------------------------------------------- track()


def test_track_completed(store):
    with store.track({"method": "ot"}, name="ok") as rec:
        rec.progress(total_steps=2, message="starting")
        rec.log({"loss": 1.0}, step=0, epoch=0)
        rec.log({"loss": 0.5}, step=1, epoch=0)
        rec.snapshot("a->b", np.eye(2), epoch=0, step=1)
    info = store.run(rec.run_id)
    assert info["status"] == "completed" and info["error"] is None
    assert info["ended_at"] is not None and info["step"] == 1
    assert len(store.metrics(rec.run_id)) == 2 and len(store.snapshots(rec.run_id)) == 1


def test_track_failed_keeps_traceback_and_reraises(store):
    with pytest.raises(ZeroDivisionError):
        with store.track({"method": "ot"}) as rec:
            rec.log({"loss": 1.0}, step=0)
            1 / 0
    info = store.run(rec.run_id)
    assert info["status"] == "failed"
    assert "Traceback" in info["error"] and "ZeroDivisionError" in info["error"]
    assert store.metrics(rec.run_id)["value"].tolist() == [1.0]


def test_track_interrupted_on_keyboard_interrupt(store):
    with pytest.raises(KeyboardInterrupt):
        with store.track({}) as rec:
            raise KeyboardInterrupt
    assert store.run(rec.run_id)["status"] == "interrupted"


def test_track_explicit_finish_is_kept(store):
    with store.track({}) as rec:
        rec.finish("failed", "loss became NaN at step 12")
    info = store.run(rec.run_id)
    assert info["status"] == "failed" and info["error"] == "loss became NaN at step 12"


def test_track_heartbeat_thread_keeps_run_alive_and_stops(store):
    with store.track({}, heartbeat_interval=0.05) as rec:
        first = store.run(rec.run_id)["heartbeat_at"]
        deadline = time.monotonic() + 10
        # A "long step" with no writes: the thread alone refreshes the heartbeat.
        while store.run(rec.run_id)["heartbeat_at"] < first + pd.Timedelta(seconds=0.3):
            assert time.monotonic() < deadline, "heartbeat thread did not beat"
            time.sleep(0.05)
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name.startswith("otviz-heartbeat")]
    assert store.run(rec.run_id)["status"] == "completed"


def test_track_sigterm_marks_interrupted(tmp_path, writer_script):
    db = tmp_path / "term.db"
    proc = start_writer(writer_script, db, 100_000, 0.001)
    try:
        rid = read_run_id(proc)
        proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode != 0
    info = RunStore(db).run(rid)
    assert info["status"] == "interrupted" and "SIGTERM" in info["error"]
    assert info["ended_at"] is not None  # written by the process itself


# --------------------------------------------------------------------------- liveness


def test_stale_heartbeat_reported_then_reaped(store):
    rid = store.create_run({})
    fresh = store.create_run({})
    con = raw(store)
    con.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 120 WHERE id = ?", (rid,))
    con.close()
    runs = store.runs().set_index("run_id")
    assert runs.loc[rid, "status"] == "interrupted"
    assert "no heartbeat" in runs.loc[rid, "error"]
    assert runs.loc[fresh, "status"] == "running"
    assert store.run(rid, stale_after=600)["status"] == "running"
    # Reporting does not write; reap() does.
    con = raw(store)
    assert con.execute("SELECT status FROM runs WHERE id = ?", (rid,)).fetchone()[0] == "running"
    assert store.reap() == [rid]
    assert con.execute("SELECT status FROM runs WHERE id = ?", (rid,)).fetchone()[0] \
        == "interrupted"
    con.close()
    assert store.reap() == []


def test_dead_or_zombie_pid_on_this_host_is_interrupted(store):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie.kill()
    try:
        deadline = time.monotonic() + 10
        while b") Z " not in Path(f"/proc/{zombie.pid}/stat").read_bytes():
            assert time.monotonic() < deadline  # killed, not yet waited for: a zombie
            time.sleep(0.01)
        dead_id, zombie_id, live_id = (store.create_run({}) for _ in range(3))
        con = raw(store)
        con.execute("UPDATE runs SET pid = ? WHERE id = ?", (gone.pid, dead_id))
        con.execute("UPDATE runs SET pid = ? WHERE id = ?", (zombie.pid, zombie_id))
        con.close()
        status = store.runs().set_index("run_id")["status"]
        assert status[dead_id] == "interrupted" and status[zombie_id] == "interrupted"
        assert status[live_id] == "running"
        assert "ended without finishing" in store.run(dead_id)["error"]
    finally:
        zombie.wait()


# --------------------------------------------------------------------------- concurrency


def test_reader_reads_while_another_process_writes(tmp_path, writer_script):
    db = tmp_path / "live.db"
    n = 120
    RunStore(db).close()
    proc = start_writer(writer_script, db, n, 0.004)
    reader = RunStore(db)
    try:
        rid = read_run_id(proc)
        last_step, polls, partial = -1, 0, False
        frames = []
        while True:
            done = proc.poll() is not None
            new = reader.metrics(rid, since_step=last_step)
            status = reader.run(rid)["status"]
            assert status in ("running", "completed")
            partial |= status == "running" and 0 <= last_step < n - 1
            if len(new):
                # Each step is one transaction: a reader sees both keys or neither.
                assert (new.groupby("step").size() == 2).all()
                assert new["step"].min() > last_step
                last_step = int(new["step"].max())
                frames.append(new)
            polls += 1
            if done:
                break
            time.sleep(0.01)
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        proc.kill()
    all_rows = pd.concat(frames)
    assert sorted(set(all_rows["step"])) == list(range(n))
    assert partial and polls > 3 and reader.run(rid)["status"] == "completed"


def test_threads_share_one_store(store):
    rid = store.create_run({})
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for step in range(offset, offset + 50):
                store.log_metrics(rid, {"loss": float(step)}, step=step)
                store.metrics(rid, since_step=step - 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(store.metrics(rid)) == 150


def test_store_pickles_to_a_fresh_connection(store):
    rid = store.create_run({"a": 1})
    clone = pickle.loads(pickle.dumps(store))
    clone.log_metrics(rid, {"loss": 1.0}, step=0)
    assert len(store.metrics(rid)) == 1 and clone.path == store.path


def test_locked_store_fails_with_a_clear_error_and_readers_still_read(tmp_path):
    path = tmp_path / "locked.db"
    RunStore(path).close()
    s = RunStore(path, timeout=0.2)
    rid = s.create_run({})
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert s.run(rid)["status"] == "running"  # reading is not blocked
        t0 = time.monotonic()
        with pytest.raises(RunStoreError, match="locked") as err:
            s.log_metrics(rid, {"loss": 1.0}, step=0)
        assert time.monotonic() - t0 >= 0.15  # waited for the busy timeout first
        assert str(path) in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    s.log_metrics(rid, {"loss": 1.0}, step=0)  # works again once released
    assert len(s.metrics(rid)) == 1


# --------------------------------------------------------------------------- crash safety


def test_sigkill_mid_run_keeps_store_consistent(tmp_path, writer_script):
    db = tmp_path / "crash.db"
    proc = start_writer(writer_script, db, 1_000_000, 0.0)
    try:
        rid = read_run_id(proc)
        reported = []
        while len(reported) < 300:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            reported.append(int(line.split()[1]))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # the kill can cut the last line in the middle: count complete lines only
    complete = out.split("\n")[:-1]
    reported += [int(m.group(1)) for line in complete
                 if (m := re.fullmatch(r"step (\d+)", line.strip()))]

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    store = RunStore(db)
    assert store.integrity_check() == "ok"
    m = store.metrics(rid)
    steps = sorted(set(m["step"]))
    assert set(reported) <= set(steps)           # every reported commit survived
    assert steps == list(range(len(steps)))      # and nothing in between is missing
    assert (m.groupby("step").size() == 2).all()  # no half-written step
    info = store.run(rid)
    assert info["status"] == "interrupted" and "ended without finishing" in info["error"]
    assert store.reap() == [rid]
    store.log_metrics(rid, {"after": 1.0}, step=0)  # the store is still writable


# --------------------------------------------------------------------------- bad input


def test_non_finite_metric_is_rejected_and_nothing_written(store):
    rid = store.create_run({})
    with pytest.raises(ValueError, match=r"loss=nan"):
        store.log_metrics(rid, {"acc": 0.5, "loss": float("nan")}, step=3)
    with pytest.raises(ValueError, match=r"ot=inf"):
        store.log_metrics(rid, {"ot": np.inf}, step=3)
    assert store.metrics(rid).empty
    with pytest.raises(TypeError, match="'acc' must be a number"):
        store.log_metrics(rid, {"acc": "high"}, step=0)
    with pytest.raises(TypeError, match="metric name"):
        store.log_metrics(rid, {3: 1.0}, step=0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        store.log_metrics(rid, {"acc": 1.0}, step=-1)
    with pytest.raises(TypeError, match="step must be an int"):
        store.log_metrics(rid, {"acc": 1.0}, step=1.5)
    with pytest.raises(RunNotFoundError, match="no run with id 999"):
        store.log_metrics(999, {"acc": 1.0}, step=0)
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish(rid, "done")


def test_non_json_config_is_a_type_error(store):
    with pytest.raises(TypeError, match=r"config\['model'\]\['act'\] is of type function"):
        store.create_run({"model": {"act": lambda x: x}})
    with pytest.raises(TypeError, match="nan"):
        store.create_run({"lam": float("nan")})
    with pytest.raises(TypeError, match="must be a dict"):
        store.create_run(["not", "a", "dict"])
    assert store.runs().empty
    rid = store.create_run({"seed": np.int64(3), "out": Path("/tmp/x")})
    assert store.run(rid)["config"] == {"seed": 3, "out": "/tmp/x"}


def test_corrupt_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database, it is a text file\n" * 200)
    with pytest.raises(RunStoreError, match="not a readable otviz run store") as err:
        RunStore(bad)
    assert str(bad) in str(err.value) and "OTVIZ_STORE" in str(err.value)


def test_foreign_or_newer_database_is_refused(tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(RunStoreError, match="not an otviz run store"):
        RunStore(other)
    con = sqlite3.connect(other)  # left untouched
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()

    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(RunStoreError, match="newer"):
        RunStore(newer)

    with pytest.raises(RunStoreError, match="is a directory"):
        RunStore(tmp_path)
    with pytest.raises(ValueError, match="file path"):
        RunStore(":memory:")


# ----------------------------------------------------------------------------
# speed and duplicates
# ----------------------------------------------------------------------------
def _timed_metrics(step_seconds: list[float]) -> pd.DataFrame:
    """Long-format metrics whose step s was logged at step_seconds[s] (step 0: the evaluation)."""
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    rows = [(s, 1, "loss/total", 1.0, t0 + pd.Timedelta(seconds=t)) for s, t in enumerate(step_seconds)]
    rows.append((0, 0, "test/accuracy", 0.2, t0))
    return pd.DataFrame(rows, columns=["step", "epoch", "key", "value", "time"])


def test_step_rate_and_eta_from_metric_timestamps():
    from otviz.runs import step_rate

    # step 0 at t=0 (then a 30 s evaluation), steps 1..11 every 0.5 s
    df = _timed_metrics([0.0] + [30.0 + 0.5 * i for i in range(11)])
    rate = step_rate(df, total_steps=51)
    assert rate.steps_per_second == pytest.approx(2.0)  # the evaluation before step 1 is left out
    assert rate.eta_seconds == pytest.approx(20.0)      # 40 steps left at 2 steps/s
    assert (rate.steps, rate.seconds, rate.last_step) == (10, pytest.approx(5.0), 11)
    # a window of the last 4 steps, and no total
    rate = step_rate(df, window=4)
    assert rate.steps == 4 and rate.eta_seconds is None
    # not enough to measure
    assert step_rate(_timed_metrics([0.0, 3.0])) is None
    assert step_rate(_timed_metrics([0.0, 3.0, 3.0])) is None
    with pytest.raises(ValueError, match="step and time"):
        step_rate(df.drop(columns="time"))


def test_step_rate_on_a_real_store(tmp_path):
    from otviz.runs import step_rate

    store = RunStore(tmp_path / "r.db")
    rid = store.create_run({"setting": "x"})
    for step in range(1, 6):
        store.log_metrics(rid, {"loss": 1.0}, step=step, epoch=1)
        time.sleep(0.02)
    rate = step_rate(store.metrics(rid), total_steps=10)
    assert rate is not None and rate.steps == 4 and rate.steps_per_second > 0
    assert rate.eta_seconds == pytest.approx(5 / rate.steps_per_second)


def test_matching_runs_compares_configs_as_dicts(tmp_path):
    from otviz.runs import matching_runs

    store = RunStore(tmp_path / "r.db")
    base = {"setting": "transfer-small", "method": "ot", "lam": 1.0, "pairs": ["features.conv3"],
            "normalize": "standardize", "eps": None, "seed": 0, "name": "first"}
    a = store.create_run(dict(base, teacher="cnn-mnist5k", n_train=50))  # trainer-added facts
    b = store.create_run(dict(base, seed=1))
    c = store.create_run(dict(base, lam=0.1))
    runs = store.runs()
    assert matching_runs(runs, dict(base, name="another name")) == [a]
    assert matching_runs(runs, dict(base, lam=1)) == [a]               # 1 == 1.0
    assert matching_runs(runs, dict(base, pairs=("features.conv3",))) == [a]
    assert matching_runs(runs, dict(base, seed=1)) == [b]
    assert matching_runs(runs, dict(base, lam=0.1 + 1e-15)) == [c]
    assert matching_runs(runs, dict(base, normalize=None)) == []
    assert matching_runs(runs, dict(base, eps=0.01)) == []
    assert matching_runs(runs, dict(base, arch="mlp")) == []           # a key the runs lack
    assert matching_runs(runs, {"setting": "transfer-small"}) == [c, b, a]
    assert matching_runs(runs, dict(base, name="x"), ignore=()) == []
    with pytest.raises(TypeError):
        matching_runs(runs, [("setting", "x")])


# ----------------------------------------------------------------------------
# opening: concurrent creation, foreign files, reading without writing
# ----------------------------------------------------------------------------
# N processes (multiprocessing, spawn) open the same brand-new store at the same
# moment, round after round, and each adds a run. argv: directory, processes, rounds.
RACE = textwrap.dedent(
    """
    import json, multiprocessing as mp, os, sys, time

    def worker(directory, rounds, barrier, queue):
        from otviz.runs import RunStore
        for r in range(rounds):
            path = os.path.join(directory, f"store-{r}.db")
            barrier.wait()
            t0 = time.perf_counter()
            try:
                store = RunStore(path, timeout=20)
                store.create_run({"round": r, "pid": os.getpid()})
                store.close()
                queue.put((r, None, time.perf_counter() - t0))
            except Exception as exc:
                queue.put((r, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0))

    if __name__ == "__main__":
        directory, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        ctx = mp.get_context("spawn")
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(directory, rounds, barrier, queue)) for _ in range(n)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=300) for _ in range(n * rounds)]
        for p in procs:
            p.join()
        print(json.dumps(results))
    """
)


@pytest.mark.parametrize("processes,rounds", [(2, 12), (6, 4)])
def test_processes_creating_one_store_at_once_all_succeed(tmp_path, processes, rounds):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(ENV_VAR, None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(processes), str(rounds)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failures = [(r, err) for r, err, _ in results if err]
    assert not failures, failures
    for r in range(rounds):  # one valid store per round, holding every process's run
        s = RunStore(tmp_path / f"store-{r}.db", create=False)
        assert len(s.runs()) == processes and s.integrity_check() == "ok"
        con = raw(s)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        con.close()
        s.close()


def test_locked_error_reports_the_real_wait(tmp_path):
    path = tmp_path / "locked.db"
    RunStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        s = RunStore(path, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(RunStoreError) as err:
            s.create_run({})
        waited = time.monotonic() - t0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    m = re.search(r"stayed locked by another connection for ([\d.]+) s \(timeout 0.3 s", str(err.value))
    assert m, str(err.value)
    assert 0.3 <= float(m.group(1)) <= waited + 0.01


def test_foreign_database_with_version_1_is_refused_untouched(tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, label TEXT)")  # a 'runs' table, not ours
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(RunStoreError, match="not an otviz run store.*lacks") as err:
        RunStore(other)
    assert str(other) in str(err.value)
    assert other.read_bytes() == before  # the journal mode (a header byte) and all else unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
    con = sqlite3.connect(other)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_create_false_never_creates_a_store(tmp_path):
    missing = tmp_path / "no" / "such" / "runs.db"
    with pytest.raises(RunStoreError, match="no run store at") as err:
        RunStore(missing, create=False)
    assert str(missing) in str(err.value)
    assert not (tmp_path / "no").exists()
    with pytest.raises(RunStoreError, match="no run store at"):
        RunStore(missing, readonly=True)
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(RunStoreError, match="empty SQLite database"):
        RunStore(empty, create=False)
    assert empty.stat().st_size == 0
    with pytest.raises(TypeError, match="create must be True or False"):
        RunStore(tmp_path / "x.db", create="no")


def test_readonly_store_reads_and_refuses_writes(tmp_path):
    path = tmp_path / "runs.db"
    s = RunStore(path)
    rid = s.create_run({"setting": "a", "method": "b"})
    s.log_metrics(rid, {"loss": 1.0}, step=0)
    s.finish(rid)
    s.close()
    ro = RunStore(path, readonly=True)
    assert ro.readonly and "readonly=True" in repr(ro)
    assert list(ro.runs()["run_id"]) == [rid] and len(ro.metrics(rid)) == 1
    for write in (lambda: ro.create_run({}), lambda: ro.log_metrics(rid, {"x": 1.0}, step=1),
                  lambda: ro.delete_run(rid), lambda: ro.reap()):
        with pytest.raises(RunStoreError, match="read-only.*writing is impossible"):
            write()
    assert not RunStore(path).readonly


# Lists a store and tries to write to it, as a user without write access to its
# directory. argv: store path.
READ_ONLY_READER = textwrap.dedent(
    """
    import json, sys
    from otviz.runs import RunStore, RunStoreError

    store = RunStore(sys.argv[1])
    out = {"readonly": store.readonly, "runs": [int(r) for r in store.runs()["run_id"]],
           "metrics": len(store.metrics(1))}
    try:
        store.create_run({})
        out["write"] = "written"
    except RunStoreError as exc:
        out["write"] = str(exc)
    print(json.dumps(out))
    """
)


def _as_unprivileged() -> list[str]:
    """A command prefix under which the permission bits of files apply, even to root."""
    if os.geteuid() != 0:
        return []
    import shutil

    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permission bits cannot be tested")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_store_in_a_read_only_directory_is_listed(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "runs.db"
    s = RunStore(path)
    rid = s.create_run({"setting": "a", "method": "b"})
    s.log_metrics(rid, {"loss": 1.0}, step=0)
    s.finish(rid)
    s.close()
    script = tmp_path / "reader.py"
    script.write_text(READ_ONLY_READER)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(ENV_VAR, None)
    directory.chmod(0o555)
    try:
        prefix = _as_unprivileged()
        proc = subprocess.run([*prefix, sys.executable, str(script), str(path)],
                              capture_output=True, text=True, env=env, timeout=120)
        cli = subprocess.run([*prefix, sys.executable, "-m", "otviz", "runs", "--store", str(path)],
                             capture_output=True, text=True, env=env, timeout=120)
    finally:
        directory.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["readonly"] and out["runs"] == [rid] and out["metrics"] == 1
    assert "is read-only" in out["write"] and "is not writable" in out["write"], out["write"]
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # nothing written
    assert cli.returncode == 0 and "completed" in cli.stdout and not cli.stderr, cli.stderr


# --------------------------------------------------------------------------- bounded input


@pytest.mark.parametrize("kw", [dict(step=2**70), dict(step=1, epoch=2**64), dict(step=-(2**70)),
                                dict(step=10**100_000)])
def test_step_outside_sqlite_range_is_a_clear_value_error(store, kw):
    rid = store.create_run({})
    with pytest.raises(ValueError, match=r"(step|epoch) must be|64-bit range") as info:
        store.log_metrics(rid, {"loss": 1.0}, **kw)
    assert len(str(info.value)) < 200
    store.log_metrics(rid, {"loss": 1.0}, step=2**63 - 1)  # the largest SQLite integer is fine
    assert store.metrics(rid)["step"].tolist() == [2**63 - 1]


def test_deeply_nested_config_is_a_clear_value_error(store):
    config: dict = {}
    cur = config
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(ValueError, match="more than 64 levels deep"):
        store.create_run({"method": "ot", "extra": config})
    with pytest.raises(ValueError, match="more than 64 levels deep"):
        store.track({"extra": config}).__enter__()
    assert store.runs().empty  # nothing recorded


def test_deeply_nested_stored_config_reads_as_a_clear_error(store):
    rid = store.create_run({"method": "ot"})
    with raw(store) as con:  # a store from elsewhere, written by hand
        con.execute("UPDATE runs SET config = ? WHERE id = ?", ("[" * 5000 + "]" * 5000, rid))
    with pytest.raises(ValueError, match=rf"stored config of run {rid} nests .* more than 64 levels"):
        store.run(rid)


def test_failed_run_error_starts_with_a_one_line_headline(store):
    with pytest.raises(RuntimeError):
        with store.track({}) as rec:
            raise RuntimeError("gloo: Connection closed by peer\nmore detail\n" + "x" * 1000)
    error = store.run(rec.run_id)["error"]
    first, blank, *rest = error.splitlines()
    assert first == "RuntimeError: gloo: Connection closed by peer" and blank == ""
    assert rest[0].startswith("Traceback") and "more detail" in error


SIGTERM_WHILE_FINISHING = """
import os, signal, sys
from otviz.runs import RunStore
store = RunStore(sys.argv[1])
finish = store.finish
def finish_after_a_sigterm(*args, **kwargs):  # torchrun's SIGTERM lands while the end is written
    os.kill(os.getpid(), signal.SIGTERM)
    finish(*args, **kwargs)
store.finish = finish_after_a_sigterm
with store.track({"method": "ot"}) as rec:
    print(rec.run_id, flush=True)
    raise RuntimeError("rank 1 stopped")
"""


def test_sigterm_while_the_end_is_written_waits_for_it(tmp_path):
    db = tmp_path / "runs.db"
    script = tmp_path / "finish.py"
    script.write_text(SIGTERM_WHILE_FINISHING)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(ENV_VAR, None)
    res = subprocess.run([sys.executable, str(script), str(db)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == -signal.SIGTERM, res.stderr[-2000:]  # the signal still ends the process
    info = RunStore(db).run(int(res.stdout.split()[0]))
    assert info["status"] == "failed", info  # ... after the run's end was written
    assert info["error"].startswith("RuntimeError: rank 1 stopped")


LIST_READONLY = """
import sys
from otviz.runs import RunStore, RunStoreError
store = RunStore(sys.argv[1], create=False)
print("readonly", store.readonly)
print("runs", len(store.runs()), store.run(1)["status"], len(store.metrics(1)))
try:
    store.create_run({})
except RunStoreError as exc:
    print("write refused:", exc)
"""


def test_delete_journal_store_in_a_read_only_folder_is_listed(tmp_path):
    """A store in SQLite's DELETE journal mode whose folder is read-only and whose file is
    writable: opening it cannot switch it to WAL (no side files), so it is read as it is.
    Root ignores permissions, so as root the folder is made read-only with a read-only bind
    mount in a private mount namespace (``unshare -m``), the file bind-mounted writable on top."""
    import shutil

    folder, spare = tmp_path / "store", tmp_path / "spare"
    folder.mkdir()
    spare.mkdir()
    db = folder / "runs.db"
    store = RunStore(db)
    rid = store.create_run({"method": "ot"})
    store.log_metrics(rid, {"loss": 1.0}, step=1)
    store.finish(rid)
    store.close()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    con.close()
    script = tmp_path / "list.py"
    script.write_text(LIST_READONLY)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(ENV_VAR, None)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            res = subprocess.run([sys.executable, str(script), str(db)], capture_output=True, text=True,
                                 env=env, timeout=60)
        finally:
            folder.chmod(0o755)
    else:
        if shutil.which("unshare") is None:
            pytest.skip("root, and no unshare to make a folder read-only")
        shutil.copy(db, spare / "runs.db")
        cmd = (f"mount --bind -o ro {folder} {folder} && mount --bind {spare / 'runs.db'} {db} && "
               f"! touch {folder / 'probe'} 2>/dev/null && echo mounted && {sys.executable} {script} {db}")
        res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", cmd],
                             capture_output=True, text=True, env=env, timeout=60)
        if not res.stdout.startswith("mounted\n"):
            pytest.skip(f"cannot make a read-only bind mount here: {res.stderr.strip()[:200]}")
        res.stdout = res.stdout[len("mounted\n"):]
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0] == "readonly True"
    assert lines[1] == "runs 1 completed 1"  # listed, not only promised
    assert lines[2].startswith("write refused:") and "DELETE journal" in lines[2]
