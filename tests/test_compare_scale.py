"""The store queries behind the Compare page on many runs: last values by SQL, the export written
in blocks, the page's remembered final values, and no export built at a render.

Correctness only; the speed is measured by benchmarks/bench_compare.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from otviz.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.db")


def _reference_last(store: RunStore, run_id: int, keys) -> dict[str, float]:
    """The last value of each key, from the long metrics frame."""
    m = store.metrics(run_id)
    m = m[m["key"].map(lambda k: any(k == p or (p.endswith("*") and k.startswith(p[:-1])) for p in keys))]
    return {k: float(g.sort_values("step")["value"].iloc[-1]) for k, g in m.groupby("key")}


def _filled(store: RunStore, n_runs: int = 5, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    ids = []
    for r in range(n_runs):
        rid = store.create_run({"setting": "transfer", "method": "ot", "seed": r})
        for step in rng.permutation(12):  # logged out of order: the last value is the largest step's
            row = {"loss/total": float(rng.random()), "test/accuracy": float(rng.random())}
            if r % 2 == 0:
                row["score/a->b"] = float(rng.random())
                row["score/c->d"] = float(rng.random())
            row["scorecard"] = 1.0  # shares the prefix "score" but not "score/"
            store.log_metrics(rid, row, step=int(step), epoch=int(step) // 4)
        store.finish(rid)
        ids.append(rid)
    return ids


def test_last_values_match_the_metrics_rows(store):
    ids = _filled(store)
    keys = ["test/accuracy", "score/*"]
    frame = store.last_values(keys)
    assert list(frame.columns) == ["run_id", "score/a->b", "score/c->d", "test/accuracy"]
    assert frame["run_id"].tolist() == ids
    assert all(frame[c].dtype == "float64" for c in frame.columns[1:])
    for rid in ids:
        row = frame.set_index("run_id").loc[rid]
        ref = _reference_last(store, rid, keys)
        assert set(ref) == {c for c in frame.columns[1:] if row[c] == row[c]}
        for key, value in ref.items():
            assert row[key] == value
    # odd runs never logged a score: NaN there
    assert frame.set_index("run_id").loc[ids[1], "score/a->b"] != frame.set_index("run_id").loc[ids[1], "score/a->b"]


def test_last_values_of_some_runs_and_of_nothing(store):
    ids = _filled(store)
    some = store.last_values("test/accuracy", run_ids=[ids[3], ids[1], 999])
    assert some["run_id"].tolist() == [ids[1], ids[3]]
    assert some["test/accuracy"].tolist() == [_reference_last(store, r, ["test/accuracy"])["test/accuracy"]
                                             for r in (ids[1], ids[3])]
    none = store.last_values("no/such/metric")
    assert list(none.columns) == ["run_id"] and none.empty
    many = store.last_values("test/accuracy", run_ids=list(range(1, 1200)))  # several SQL chunks
    assert many["run_id"].tolist() == ids
    with pytest.raises(ValueError, match="at least one metric"):
        store.last_values([])
    with pytest.raises(ValueError, match="prefix before"):
        store.last_values("*")
    with pytest.raises(TypeError, match="metric name"):
        store.last_values([3])


def test_export_in_blocks_is_the_metrics_table(store, tmp_path):
    ids = _filled(store, n_runs=4)
    store.log_metrics(ids[0], {'odd, "quoted" key': 2.5}, step=100)  # no epoch, CSV quoting
    reference = store._metrics_frame(None, None, None).to_csv(index=False)
    for chunk in (1, 7, 1000):  # block boundaries anywhere
        out = tmp_path / f"m{chunk}.csv"
        store._write_metrics_csv(out, None, chunk=chunk)
        assert out.read_text() == reference
    paths = store.export_csv(tmp_path / "exp", run_ids=ids[1:3])
    exported = pd.read_csv(paths["metrics"])
    assert sorted(exported["run_id"].unique()) == ids[1:3]
    assert len(exported) == len(store._metrics_frame(ids[1:3], None, None))
    only = store.export_csv(tmp_path / "only", tables=("runs",))
    assert set(only) == {"runs"} and not (tmp_path / "only" / "metrics.csv").exists()
    with pytest.raises(ValueError, match="'runs' and/or 'metrics'"):
        store.export_csv(tmp_path / "bad", tables=("plans",))
    empty = RunStore(tmp_path / "empty.db").export_csv(tmp_path / "e")
    assert empty["metrics"].read_text() == "run_id,step,epoch,key,value,time\n"


def test_runs_config_columns_of_mixed_types_become_text(store):
    a = store.create_run({"setting": "s", "method": "m", "eps": 0.1, "k": 10, "pairs": ["a"]})
    b = store.create_run({"setting": "s", "method": "m", "eps": "auto", "k": 10.5})
    for _ in range(2):  # the second call reads the remembered flattened configs
        runs = store.runs().set_index("run_id")
        assert runs.loc[a, "config.eps"] == "0.1" and runs.loc[b, "config.eps"] == "auto"
        assert runs["config.eps"].dtype == object
        assert runs["config.k"].tolist() == [10, 10.5]  # ints with floats stay numbers
        assert runs.loc[a, "config.pairs"] == json.dumps(["a"])
        assert runs.loc[b, "config.pairs"] != runs.loc[b, "config.pairs"]  # missing: NaN


# ----------------------------------------------------------------------------- the page's helpers
@pytest.fixture
def dashkit(monkeypatch, tmp_path):
    pytest.importorskip("streamlit")
    monkeypatch.syspath_prepend(str(ROOT / "app"))
    monkeypatch.setenv("OTVIZ_STORE", str(tmp_path / "runs.db"))
    import dashkit

    return dashkit


def test_final_metrics_are_remembered_for_finished_runs_only(dashkit, store):
    ids = _filled(store, n_runs=3)
    live = store.create_run({"setting": "transfer", "method": "ot"})
    store.log_metrics(live, {"test/accuracy": 0.25}, step=1, epoch=1)
    first = dashkit.final_metrics(store, store.runs()).set_index("run_id")
    assert first.loc[live, "test/accuracy"] == 0.25
    for rid in ids:
        assert first.loc[rid, "test/accuracy"] == _reference_last(store, rid, ["test/accuracy"])["test/accuracy"]
    assert list(first.columns[:3]) == ["test/accuracy", "val/accuracy", "train/accuracy"]  # always there

    calls = []
    real = store.last_values
    store.last_values = lambda *a, **k: calls.append(k.get("run_ids")) or real(*a, **k)
    store.log_metrics(live, {"test/accuracy": 0.5}, step=2, epoch=2)
    second = dashkit.final_metrics(store, store.runs()).set_index("run_id")
    assert calls == [[live]]  # only the running run is read again
    assert second.loc[live, "test/accuracy"] == 0.5
    assert second.drop(index=live).equals(first.drop(index=live))
    # a new run is read; a deleted one is gone; a run that ends is read once more
    store.delete_run(ids[1])
    new = _filled(store, n_runs=1, seed=5)[0]
    store.finish(live)
    third = dashkit.final_metrics(store, store.runs()).set_index("run_id")
    assert ids[1] not in third.index and new in third.index
    assert calls[-1] == [live, new]
    dashkit.final_metrics(store, store.runs())
    assert len(calls) == 2  # nothing left to read


def test_export_callable_builds_the_files_only_when_called(dashkit, store):
    ids = _filled(store, n_runs=3)
    build = dashkit.export_csv_callable(store.path, ids[:2], "metrics")
    data = build()
    frame = pd.read_csv(pd.io.common.BytesIO(data))
    assert sorted(frame["run_id"].unique()) == ids[:2]
    runs = pd.read_csv(pd.io.common.BytesIO(dashkit.export_csv_callable(store.path, ids[:2], "runs")()))
    assert runs["run_id"].tolist() == ids[:2]
    with pytest.raises(ValueError, match="'runs' or 'metrics'"):
        dashkit.export_csv_callable(store.path, ids, "plans")


def test_compare_page_builds_no_export_at_a_render(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    store = RunStore(tmp_path / "runs.db")
    monkeypatch.setenv("OTVIZ_STORE", str(store.path))
    _filled(store, n_runs=3)
    exports = []
    real = RunStore.export_csv
    monkeypatch.setattr(RunStore, "export_csv", lambda self, *a, **k: exports.append(a) or real(self, *a, **k))
    at = AppTest.from_file(str(ROOT / "app" / "otviz_app.py"), default_timeout=180)
    at.switch_page("views/compare.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.multiselect(key="cmp_setting").set_value(["transfer"]).run()
    assert not at.exception, [e.value for e in at.exception]
    buttons = {b.proto.label: b.proto for b in at.get("download_button")}
    assert {"runs.csv", "metrics.csv"} <= set(buttons)
    assert all(b.deferred_file_id for b in buttons.values())  # built on click
    assert exports == []
