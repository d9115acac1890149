"""Trainings over several processes (DDP, 2 gloo processes on the CPU): the same step as one
process, one run in the store, failures that end every process, and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from otviz import _distributed
from otviz.runs import RunStore
from otviz.train import (TrainConfig, _forward, _minibatch_indices, _ot_terms, _prepare, train)

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]

ROOT = Path(__file__).resolve().parents[1]
#: 20 labelled images (k=2, 10 classes), one global batch of 20: 10 per process
TINY = dict(setting="transfer-digits", method="ot", k=2, batch_size=20, epochs=1, steps_per_epoch=2,
            num_threads=1)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


# --------------------------------------------------------------------------
# the first step: 1 process x B and 2 processes x B/2
# --------------------------------------------------------------------------
def _first_step_grads(dctx: _distributed.DistContext, ot_gather: bool) -> dict[str, dict[str, torch.Tensor]]:
    """Gradients of the cross-entropy and of the OT term on the first global batch, computed
    as the trainer computes them (shard, synchronised batch norm, DDP, gathered OT features)."""
    cfg = TrainConfig(**TINY).resolved(warn=False)  # the recipe's OT term: exact OT (emd)
    s = _prepare(cfg)
    if dctx.active:
        s.student = _distributed.convert_sync_batchnorm(s.student, "cpu")
    model = dctx.wrap(s.student, s.loss.extra_parameters())
    terms = _ot_terms(s.loss)
    if ot_gather:
        dctx.gather_features(terms)
    X, y = s.task.target.X_train, s.task.target.y_train
    idx = dctx.shard(next(_minibatch_indices(len(X), cfg.batch_size, s.order_seed)))
    xb, yb = X[idx], y[idx]
    s.student.train()
    out: dict[str, dict[str, torch.Tensor]] = {}
    from otviz.losses import StepContext

    for what in ("ce", "ot"):
        for p in s.student.parameters():
            p.grad = None
        logits, feats = _forward(s.student, xb, list(s.loss.student_layers), call=model)
        if what == "ce":
            loss = F.cross_entropy(logits, yb)
        else:
            with torch.no_grad():
                t_logits, t_feats = _forward(s.teacher, xb, list(s.loss.teacher_layers))
            ctx = StepContext(inputs=xb, targets=yb, student_logits=logits, teacher_logits=t_logits,
                              student_features=feats, teacher_features=t_feats, student=s.student)
            # (+ 0 x logits: every parameter takes part in the backward pass, as DDP requires)
            loss = sum(term(ctx) for term in terms) + 0.0 * logits.sum()
        loss.backward()
        out[what] = {n: p.grad.detach().clone() for n, p in s.student.named_parameters()}
        out[what + "_value"] = dctx.mean({"v": loss.detach()})["v"]
    return out


def _grad_worker(rank: int, world: int, rendezvous: str, path: str, ot_gather: bool) -> None:
    from datetime import timedelta

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # a file rendezvous (no port to race for); init() then joins this group
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        dctx = _distributed.init("cpu")
        assert dctx.active and dctx.backend == "gloo" and not dctx.owns_group
        grads = _first_step_grads(dctx, ot_gather)
        if rank == 0:
            torch.save(grads, path)
        # both ranks done before either tears gloo down (a rank leaving while the other still
        # talks to it can abort in gloo's teardown: "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _two_processes(tmp_path: Path, ot_gather: bool) -> dict:
    import torch.multiprocessing as mp

    path = str(tmp_path / f"grads-{ot_gather}.pt")
    mp.spawn(_grad_worker, args=(2, str(tmp_path / "rendezvous"), path, ot_gather), nprocs=2, join=True)
    return torch.load(path)


def test_first_step_gradients_match_one_process(tmp_path):
    one = _first_step_grads(_distributed.DistContext(), ot_gather=False)
    two = _two_processes(tmp_path, ot_gather=True)
    # the same global batch: the same cross-entropy and the same gradient (batch norm over
    # the global batch, DDP's average of the two halves' means)
    assert two["ce_value"] == pytest.approx(one["ce_value"], abs=1e-5)
    assert one["ce"].keys() == two["ce"].keys()
    for name, g in one["ce"].items():
        assert torch.allclose(two["ce"][name], g, atol=1e-5, rtol=1e-4), name
    # with ot_gather the plan sees the global batch: the OT term and its gradient are one process's
    assert two["ot_value"] == pytest.approx(one["ot_value"], rel=1e-4, abs=1e-6)
    nonzero = 0
    for name, g in one["ot"].items():
        assert torch.allclose(two["ot"][name], g, atol=1e-5, rtol=1e-3), name
        nonzero += int(g.abs().sum() > 0)
    assert nonzero > 0  # the OT term does reach the student


def test_shard_pads_like_distributed_sampler():
    idx = torch.arange(10, 17)  # 7 indices, 2 ranks: padded with the first one, as DistributedSampler pads
    parts = [_distributed.DistContext(rank=r, world_size=2).shard(idx) for r in range(2)]
    assert parts[0].tolist() == [10, 11, 12, 13] and parts[1].tolist() == [14, 15, 16, 10]
    from torch.utils.data import DistributedSampler

    sampler_parts = [list(DistributedSampler(range(7), num_replicas=2, rank=r, shuffle=False))
                     for r in range(2)]
    assert sorted(i - 10 for p in parts for i in p.tolist()) == sorted(sum(sampler_parts, []))
    # the parts in rank order are the global batch (what ot_gather gathers)
    even = torch.arange(8)
    assert torch.equal(torch.cat([_distributed.DistContext(rank=r, world_size=2).shard(even)
                                  for r in range(2)]), even)
    # a batch smaller than the world size still gives every rank an image
    tiny = [_distributed.DistContext(rank=r, world_size=3).shard(torch.tensor([5])) for r in range(3)]
    assert [t.tolist() for t in tiny] == [[5], [5], [5]]
    assert _distributed.DistContext().shard(idx) is idx


def test_cpu_sync_batchnorm_is_batchnorm_in_one_process():
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), bn)
    converted = _distributed.convert_sync_batchnorm(model, "cpu")
    assert isinstance(converted[1], _distributed.CPUSyncBatchNorm)
    assert converted[1].weight is bn.weight and converted[1].running_mean is bn.running_mean
    x = torch.randn(4, 1, 6, 6)
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    ref.load_state_dict(model.state_dict())
    assert torch.allclose(converted(x), ref(x), atol=1e-6)


# --------------------------------------------------------------------------
# whole trainings under torchrun
# --------------------------------------------------------------------------
def _otviz_train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otviz", "train", *args], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=timeout)


def test_ddp_run_recorded_once_with_the_loss_of_one_process(tmp_path):
    db = tmp_path / "runs.db"
    one = train(TrainConfig(**TINY), store=db, progress=False)
    cfg = json.dumps(TINY)
    res = _otviz_train("--nproc", "2", "--config-json", cfg, "--store", str(db), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("test accuracy") == 1  # rank 0 alone prints
    store = RunStore(db)
    runs = store.runs()
    assert len(runs) == 2  # the one-process run and one run for the two processes
    rid = int(runs.run_id.max())
    run = store.run(rid)
    assert run["status"] == "completed"
    assert run["config"]["world_size"] == 2 and run["config"]["backend"] == "gloo"
    assert store.run(one.run_id)["config"]["world_size"] == 1
    m1, m2 = store.metrics_wide(one.run_id), store.metrics_wide(rid)
    # the same global batch at step 1: the same cross-entropy (averaged over the ranks)
    ce1 = float(m1.loc[m1.step == 1, "loss/ce"].iloc[0])
    ce2 = float(m2.loc[m2.step == 1, "loss/ce"].iloc[0])
    assert ce2 == pytest.approx(ce1, abs=1e-5)
    assert m2.step.max() == 2 and m2["test/accuracy"].notna().any()
    assert len(store.snapshots(rid)) > 0  # rank 0 evaluated and recorded the plans


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _rank_process(pid: int, rank: int, timeout: float = 120):
    """The worker process of ``rank`` under the torchrun process ``pid``."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(pid):
            try:
                if child.environ().get("RANK") == str(rank) and "otviz" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} process under {pid}")


def _start_long_training(db, stderr=subprocess.PIPE) -> subprocess.Popen:
    """``otviz train --nproc 2`` of a training long enough to be stopped or killed while it runs."""
    long = dict(TINY, steps_per_epoch=5000)
    return subprocess.Popen([sys.executable, "-m", "otviz", "train", "--nproc", "2", "--config-json",
                             json.dumps(long), "--store", str(db), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=_env(), cwd=ROOT)


def _running_run(store: RunStore, proc: subprocess.Popen, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        runs = store.runs() if store.path.exists() else None
        if runs is not None and len(runs) and (runs.step.fillna(0) > 0).any():
            return int(runs.run_id.iloc[0])
        time.sleep(0.3)
    raise AssertionError("the training did not start")


@pytest.mark.parametrize("how", ["stop_run", "kill_rank_1"])
def test_stop_or_crash_ends_every_process(tmp_path, how):
    pytest.importorskip("psutil")
    db = tmp_path / "runs.db"
    proc = _start_long_training(db)
    try:
        store = RunStore(db)
        rid = _running_run(store, proc)
        workers = [_rank_process(proc.pid, r) for r in (0, 1)]
        assert store.run(rid)["pid"] == workers[0].pid  # rank 0 records the run
        if how == "stop_run":
            assert store.stop_run(rid) == workers[0].pid  # checked to be the run's `otviz train`
        else:
            workers[1].send_signal(signal.SIGKILL)  # a rank that dies
        rc = proc.wait(timeout=120)
        assert rc != 0
        status = store.run(rid)["status"]
        if how == "stop_run":
            assert status == "interrupted"
        else:
            assert status in ("failed", "interrupted")
        for w in workers:  # no process left behind
            w.wait(timeout=30) if w.is_running() else None
            assert not w.is_running() or w.status() == "zombie"
        assert store.integrity_check() == "ok"
    finally:
        if proc.poll() is None:
            for child in _children(proc.pid):
                child.kill()
            proc.kill()
            proc.wait()


def test_killed_rank_is_stored_as_a_one_line_reason(tmp_path):
    pytest.importorskip("psutil")
    db = tmp_path / "runs.db"
    proc = _start_long_training(db)
    try:
        store = RunStore(db)
        rid = _running_run(store, proc)
        _rank_process(proc.pid, 1).send_signal(signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
        run = store.run(rid)
        headline = run["error"].splitlines()[0]
        if run["status"] == "failed":  # rank 0 saw the lost connection before torchrun stopped it
            assert headline.startswith("RankStopped: rank 1 stopped (killed by a signal or crashed"), headline
            assert "Traceback" in run["error"] and "Traceback" not in headline  # details below
        else:
            assert run["status"] == "interrupted" and "SIGTERM" in headline, run["error"]
        assert len(headline) < 400
    finally:
        if proc.poll() is None:
            for child in _children(proc.pid):
                child.kill()
            proc.kill()
            proc.wait()


def test_lost_peer_error_becomes_one_line():
    ctx = _distributed.DistContext(rank=0, world_size=2)
    raw = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
                       "peer [127.0.0.1]:40512")
    lost = _distributed._lost_peer(raw, ctx)
    assert isinstance(lost, _distributed.RankStopped)
    assert str(lost).startswith("rank 1 stopped (killed by a signal or crashed")
    assert "pair.cc" not in str(lost) and "Connection closed by peer [127.0.0.1]:40512" in str(lost)
    assert "\n" not in str(lost)
    assert _distributed._lost_peer(RuntimeError("shape mismatch"), ctx) is None  # the model's own
    from otviz.runs import _failure_text

    try:
        try:
            raise raw
        except RuntimeError as exc:
            raise lost from exc
    except RuntimeError as exc:
        text = _failure_text(exc)
    first, blank, *rest = text.splitlines()
    assert first == f"RankStopped: {lost}" and blank == "" and "pair.cc:534" in "\n".join(rest)


def test_killing_the_launcher_stops_every_process(tmp_path):
    psutil = pytest.importorskip("psutil")
    db = tmp_path / "runs.db"
    proc = _start_long_training(db, stderr=subprocess.DEVNULL)
    workers = []
    try:
        store = RunStore(db)
        rid = _running_run(store, proc)
        workers = [_rank_process(proc.pid, r) for r in (0, 1)]
        proc.send_signal(signal.SIGKILL)  # the process the user started (torchrun's agent)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, "workers kept training after the launcher died"
        run = store.run(rid)
        assert run["status"] == "interrupted", run
        assert "the process that started the training" in run["error"], run["error"]
        assert store._read("SELECT status FROM runs WHERE id = ?", (rid,))[0][0] == "interrupted"  # stored
    finally:
        for w in workers:
            try:
                w.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_peer_times_out_with_a_clear_message(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(_env(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "otviz", "train", "--config-json", json.dumps(TINY),
                          "--dist-timeout", "2", "--store", str(tmp_path / "runs.db"), "--no-progress"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    took = time.monotonic() - start
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("otviz train: error: rank 0 of 2 waited 2 s for the other processes"), last
    assert "--dist-timeout" in last and "Traceback" not in res.stderr
    assert took < 60  # not PyTorch's 30 minutes
    with pytest.raises(ValueError, match="not a positive number of seconds"):
        _distributed.rendezvous_timeout(0)
    os.environ[_distributed.TIMEOUT_ENV] = "soon"
    try:
        with pytest.raises(ValueError, match="OTVIZ_DIST_TIMEOUT='soon'"):
            _distributed.rendezvous_timeout()
    finally:
        del os.environ[_distributed.TIMEOUT_ENV]
    assert _distributed.rendezvous_timeout() == 120.0


# --------------------------------------------------------------------------
# bad input: clear errors before any process starts
# --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unusable_store_is_refused_before_any_process_starts(tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "afile").write_text("")
        path = tmp_path / "afile" / "runs.db"
    else:
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
        path = Path("/proc/otviz-runs.db")  # a folder nobody can create files in, root included
    res = _otviz_train("--nproc", "2", "--setting", "transfer-digits", "--store", str(path), "--no-progress")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otviz train: error: can"), res.stderr[-3000:]
    assert str(path.parent) in lines[0] and "--store" in lines[0]
    assert "starting 2 processes" not in res.stderr and "Traceback" not in res.stderr

def test_nproc_larger_than_the_cores_is_refused(tmp_path):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res = _otviz_train("--nproc", str(cores + 1), "--setting", "transfer-digits", "--store",
                       str(tmp_path / "runs.db"))
    assert res.returncode == 2
    assert f"--nproc {cores + 1} is more than the {cores} CPU core" in res.stderr
    assert f"pass --nproc {cores} or fewer" in res.stderr
    assert not (tmp_path / "runs.db").exists()


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _otviz_train("--nproc", "2", "--master-port", str(port), "--setting", "transfer-digits",
                           "--store", str(tmp_path / "runs.db"))
    assert res.returncode == 2
    assert f"--master-port {port} cannot be used" in res.stderr and "leave it out" in res.stderr
    assert not (tmp_path / "runs.db").exists()


def test_torchrun_command_and_option_checks(tmp_path):
    from otviz._cli_train import torchrun_command
    from otviz.cli import build_parser

    args = build_parser().parse_args(["train", "--nproc", "2", "--setting", "transfer-digits", "--k", "2",
                                      "--ot-gather", "--store", "runs.db", "--no-progress"])
    from otviz._cli_train import config_from_args

    cfg = config_from_args(args)
    assert cfg.ot_gather is True
    cmd = torchrun_command(args, cfg)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=2" in cmd and cmd[cmd.index("--nproc-per-node=2") + 1:][:3] == ["-m", "otviz", "train"]
    given = json.loads(cmd[cmd.index("--config-json") + 1])
    assert given["k"] == 2 and given["ot_gather"] is True and "lr" not in given  # the recipe stays the recipe
    assert cmd[cmd.index("--store") + 1] == os.path.abspath("runs.db")
    with pytest.raises(ValueError, match="ot_gather must be True or False"):
        train(dict(TINY, ot_gather="yes"), store=tmp_path / "runs.db", progress=False)
    with pytest.warns(UserWarning, match="ot_gather=True is ignored"):
        TrainConfig(setting="transfer-digits", method="kd", ot_gather=True).resolved()


def test_ranks_that_fail_at_start_end_the_training_with_the_reason(tmp_path):
    # a config that every rank refuses while setting up (kd needs the teacher's classes)
    db = tmp_path / "runs.db"
    res = _otviz_train("--nproc", "2", "--setting", "transfer", "--method", "kd", "--k", "2",
                       "--store", str(db), "--no-progress")
    assert res.returncode != 0
    assert "method 'kd' needs teacher and student to share the task" in res.stderr
    assert not db.exists() or RunStore(db).runs().empty  # nothing recorded


def test_read_only_store_is_refused_before_any_process_starts(tmp_path):
    """A store that opens for reading only (its folder is read-only) cannot record the run. Root
    ignores permissions, so as root the folder is made read-only with a read-only bind mount in a
    private mount namespace (``unshare -m``)."""
    import shutil

    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "runs.db"
    RunStore(db).close()
    cmd = [sys.executable, "-m", "otviz", "train", "--nproc", "2", "--setting", "transfer-digits",
           "--store", str(db), "--no-progress"]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        db.chmod(0o444)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
        finally:
            folder.chmod(0o755)
            db.chmod(0o644)
    else:
        if shutil.which("unshare") is None:
            pytest.skip("root, and no unshare to make a folder read-only")
        script = (f"mount --bind -o ro {folder} {folder} && ! touch {folder / 'probe'} 2>/dev/null && "
                  f"echo mounted && " + " ".join(cmd))
        res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                             capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
        if not res.stdout.startswith("mounted"):
            pytest.skip(f"cannot make a read-only bind mount here: {res.stderr.strip()[:200]}")
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot record the training in the run store" in lines[0], res.stderr[-3000:]
    assert "read-only" in lines[0] and "--store" in lines[0]
