"""otviz.sweep.results.sweep_progress: a sweep's runs counted from their rows, and a state
that changes with them (the Compare page's cache key)."""

from __future__ import annotations

from _sweep_fixtures import sweep_spec, write_fake_sweep
from otviz.runs import RunStore
from otviz.sweep.results import sweep_progress


def test_sweep_progress_counts_runs_per_stage_and_its_state_follows_them(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    assert sweep_progress(store, "demo")["runs"] == {"tune": 0, "final": 0, "axes": 0}
    spec = write_fake_sweep(store, sweep_spec(), running=True)
    live = sweep_progress(store, "demo")
    # 2 methods x 3 trials x 2 tuning seeds; ot's last trial (2 runs) still running; scratch's 3 finals
    assert live["runs"] == {"tune": 12, "final": 3, "axes": 0}
    assert live["finished"] == {"tune": 10, "final": 3, "axes": 0}
    assert live["running"] == 2
    assert sweep_progress(store, "demo")["state"] == live["state"]  # nothing changed: same key
    write_fake_sweep(store, spec)  # every run written again: the newest of each name counts
    done = sweep_progress(str(store.path), "demo")
    assert done["runs"] == done["finished"] == {"tune": 12, "final": 6, "axes": 0}
    assert done["running"] == 0 and done["state"] != live["state"]
    assert sweep_progress(store, "other")["state"] == (0,)
