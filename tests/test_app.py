"""The Streamlit dashboard, page by page, with Streamlit's AppTest (no browser).

Every page renders without exception; the Train form launches a real training
process that writes to a temporary store; the Alignments page draws a plan for
shipped teachers and reports bad uploads and incomparable layers on the page.
Training processes started here are killed at teardown.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")
from streamlit.testing.v1 import AppTest  # noqa: E402

from _apptest import ENTRY, TIMEOUT, by_label, errors, figures_of  # noqa: E402

from otviz.runs import RunStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
def _kill_runs(path: Path) -> None:
    """SIGKILL the process of every run of the store that is still alive, and reap it."""
    if not path.is_file():
        return
    try:
        runs = RunStore(path).runs()
    except Exception:  # noqa: BLE001 - a deliberately broken store
        return
    for pid in runs["pid"].dropna().astype(int):
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        try:
            os.waitpid(pid, 0)  # our child (launched by the app in this process)
        except ChildProcessError:
            pass


@pytest.fixture
def store_path(tmp_path, monkeypatch):
    path = tmp_path / "runs.db"
    monkeypatch.setenv("OTVIZ_STORE", str(path))
    yield path
    _kill_runs(path)


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert_ok(at)
    return at


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def trace_types(at: AppTest) -> set[str]:
    return {t.get("type", "scatter") for fig in figures_of(at) for t in fig.get("data", [])}


def wait_for_status(path: Path, run_id: int, statuses: tuple[str, ...], timeout: float = 300) -> dict:
    store = RunStore(path)
    deadline = time.monotonic() + timeout
    while True:
        run = store.run(run_id)
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']} after {timeout} s"
        time.sleep(0.5)


def fake_run(store: RunStore, *, setting="transfer", method="ot", epochs=3, acc=(0.2, 0.5, 0.7),
             costs: bool = False):
    """A finished run with accuracy curves and one plan snapshot per epoch (no training);
    with ``costs``, each plan's cost matrix too (``cost/a->b``)."""
    rid = store.create_run({"setting": setting, "method": method, "epochs": epochs - 1,
                            "teacher": "cnn-mnist5k", "cost": "sqeuclidean"})
    rng = np.random.default_rng(rid)
    for e in range(epochs):
        store.log_metrics(rid, {"test/accuracy": acc[e], "train/accuracy": acc[e] + 0.1,
                                "score/a->b": 0.9 - 0.1 * e}, step=e * 5, epoch=e)
        if e:
            store.log_metrics(rid, {"loss/total": 1.0 / e, "ot/a->b": 0.5 / e}, step=e * 5 - 1, epoch=e)
        plan = rng.random((8, 4))
        store.log_snapshot(rid, "a->b", plan / plan.sum(), epoch=e, step=e * 5)
        if costs:
            store.log_snapshot(rid, "cost/a->b", rng.random((8, 4)) + 0.1, epoch=e, step=e * 5)
    store.finish(rid, "completed")
    return rid


# ----------------------------------------------------------------------------- Train
def test_train_page_on_an_empty_store_offers_the_demo_and_the_teachers(store_path):
    at = open_page("train")
    assert [t.value for t in at.title] == ["Train"]
    assert any("run store is empty" in i.value for i in at.info)
    assert any(b.label == "Run the demo transfer" for b in at.button)
    table = next(m.value for m in at.markdown if m.value.startswith("| teacher |"))
    rows = [line for line in table.splitlines()[2:]]
    assert any(r.startswith("| `cnn-mnist5k` | cnn | mnist5k | 0-9 | ") for r in rows), rows
    assert any("`cnn-mnist5k-0to4`" in r and "| 0-4 |" in r and "source of transfer" in r for r in rows)
    assert all(r.count(" %") >= 1 for r in rows)  # every teacher's test accuracy, in percent


def test_train_form_launches_a_run_that_writes_to_the_store(store_path):
    at = open_page("train")
    # setting and method sit outside the form: picking one reloads its recipe into the form
    by_label(at.selectbox, "Setting").set_value("transfer").run()
    by_label(at.selectbox, "Method").set_value("ot").run()
    by_label(at.multiselect, "Layer pairs (teacher layer = student layer)").set_value(["features.conv3"])
    by_label(at.number_input, "Epochs").set_value(1)
    by_label(at.number_input, "Steps per epoch (0 = one pass over the training set)").set_value(2)
    by_label(at.number_input, "Labels per class").set_value(2)
    by_label(at.button, "Start training").click().run()
    assert_ok(at)
    assert not errors(at), errors(at)

    runs = RunStore(store_path).runs()
    assert len(runs) == 1
    run_id = int(runs["run_id"].iloc[0])
    assert at.session_state["follow"] == run_id
    run = wait_for_status(store_path, run_id, ("completed", "failed", "interrupted"))
    assert run["status"] == "completed", run.get("error")
    assert run["config"]["pairs"] == ["features.conv3"] and run["config"]["epochs"] == 1
    keys = set(RunStore(store_path).metrics(run_id)["key"])
    assert {"test/accuracy", "loss/total", "ot/features.conv3->features.conv3"} <= keys

    at.run()  # the page now shows the finished run: curves and the latest plan
    assert_ok(at)
    assert "heatmap" in trace_types(at)
    assert len(figures_of(at)) >= 4


def _form_values(at: AppTest) -> dict:
    """The Train form's inputs by widget key (hidden inputs are absent)."""
    keys = ("lam", "pairs", "cost", "normalize", "ot_method", "spatial", "epochs", "steps", "batch_size",
            "lr", "kd_weight", "temperature", "l2sp_weight", "fitnets_weight", "at_weight", "nst_weight",
            "sp_weight", "eps", "k")
    out = {}
    for kind in (at.number_input, at.selectbox, at.multiselect):
        for w in kind:
            if w.key in keys:
                out[w.key] = w.value
    return out


def _as_form(rec: dict) -> dict:
    """A recipe as the form shows it: 'none' for no normalisation, 0 for one pass, no unused weights."""
    names = {"steps_per_epoch": "steps"}
    out = {names.get(k, k): v for k, v in rec.items() if v is not None or k == "normalize" or k == "steps_per_epoch"}
    out["normalize"] = out["normalize"] or "none"
    out["steps"] = out["steps"] or 0
    for k in ("schedule", "weight_decay", "feature_scale"):  # not in the form
        out.pop(k)
    return out


def test_train_form_starts_from_the_recipe_and_hides_what_does_not_apply(store_path):
    from otviz.train import recipe

    import sys
    sys.path.insert(0, str(ROOT / "app"))
    import dashkit

    # the demo button runs the recipe of `otviz train --setting transfer-small --method ot`
    demo = dict(dashkit.DEMO_CONFIG)
    assert {k: demo[k] for k in recipe("transfer-small", "ot")} == recipe("transfer-small", "ot")
    at = open_page("train")
    assert (by_label(at.selectbox, "Setting").value, by_label(at.selectbox, "Method").value) == \
        ("transfer-small", "ot")
    values = _form_values(at)
    assert values == dict(_as_form(recipe("transfer-small", "ot")), k=10)  # the setting's labels per class
    assert "eps" not in values and any("not used, the exact solver" in c.value for c in at.caption)

    # another setting and method: the form reloads that recipe; no OT term, no λ; distill: no k
    by_label(at.selectbox, "Setting").set_value("distill").run()
    by_label(at.selectbox, "Method").set_value("kd").run()
    assert_ok(at)
    values = _form_values(at)
    assert values == _as_form(recipe("distill", "kd"))
    assert values["lr"] == 0.01 and values["steps"] == 0 and values["kd_weight"] == 1.0
    assert "lam" not in values and "k" not in values
    captions = " ".join(c.value for c in at.caption)
    assert "method *kd* has no OT term" in captions and "full training split" in captions

    # an entropic solver shows eps; the reset button restores the recipe (exact OT, no eps)
    by_label(at.selectbox, "OT solver").set_value("sinkhorn").run()
    assert _form_values(at)["eps"] > 0
    by_label(at.button, "Reset the form to the recipe").click().run()
    assert _form_values(at) == _as_form(recipe("distill", "kd"))

    # the relational baselines show their own weight, from the recipe
    by_label(at.selectbox, "Method").set_value("sp").run()
    assert_ok(at)
    values = _form_values(at)
    assert values == _as_form(recipe("distill", "sp")) and values["sp_weight"] == 3000.0
    assert "kd_weight" not in values and "nst_weight" not in values
    assert RunStore(store_path).runs().empty


def test_train_form_reports_a_configuration_that_cannot_be_trained(store_path):
    at = open_page("train")
    by_label(at.selectbox, "Setting").set_value("distill").run()
    by_label(at.selectbox, "Method").set_value("finetune").run()  # needs the teacher's width
    by_label(at.button, "Start training").click().run()
    assert_ok(at)
    assert any("cannot be trained" in e and "finetune" in e for e in errors(at)), errors(at)
    assert RunStore(store_path).runs().empty


def test_demo_button_starts_a_run_and_stop_interrupts_it(store_path):
    at = open_page("train")
    by_label(at.button, "Run the demo transfer").click().run()
    assert_ok(at)
    assert not errors(at), errors(at)
    run_id = int(RunStore(store_path).runs()["run_id"].iloc[0])
    assert RunStore(store_path).run(run_id)["name"].startswith("demo")
    stop = [b for b in at.button if b.label == "Stop"]
    assert stop, "a running run offers a Stop button"
    stop[0].click().run()
    assert_ok(at)
    run = wait_for_status(store_path, run_id, ("interrupted", "completed", "failed"), timeout=120)
    assert run["status"] == "interrupted"


def test_train_page_reports_a_corrupt_store(tmp_path, monkeypatch):
    bad = tmp_path / "runs.db"
    bad.write_bytes(b"this is not a sqlite database" * 100)
    monkeypatch.setenv("OTVIZ_STORE", str(bad))
    at = open_page("train")
    assert any("cannot be used" in e for e in errors(at)), errors(at)
    # the rest of the app keeps working
    at.switch_page("views/learn.py").run()
    assert_ok(at)
    assert len(figures_of(at)) >= 2


def test_train_page_reports_a_store_that_cannot_be_created(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("OTVIZ_STORE", str(blocker / "runs.db"))
    at = open_page("train")
    assert errors(at)


def _figure(at: AppTest, title_part: str) -> dict:
    for fig in figures_of(at):
        if title_part in (fig["layout"].get("title", {}).get("text") or ""):
            return fig
    raise AssertionError(f"no figure titled {title_part!r}: "
                         f"{[f['layout'].get('title', {}).get('text') for f in figures_of(at)]}")


def test_train_page_shows_status_colours_and_reads_at_a_glance(store_path):
    store = RunStore(store_path)
    done = fake_run(store, setting="transfer", method="ot")
    failed = fake_run(store, setting="transfer", method="kd")
    store.finish(failed, "failed", "loss became nan at step 3")
    at = open_page("train")
    # the picker shows every run's status as a mark and a word
    picker = by_label(at.selectbox, "Run")
    assert any("(completed)" in o and o.startswith("✓") for o in picker.options), picker.options
    assert any("(failed)" in o and o.startswith("✗") for o in picker.options), picker.options
    assert picker.value == failed  # the newest run
    # a failed run's bar is red and says so, not a blue progress bar
    bars = [h.value for h in at.html if "otviz-status" in h.value]
    assert len(bars) == 1 and 'data-status="failed"' in bars[0] and "#d93b3b" in bars[0]
    assert not at.get("progress")
    picker.set_value(done).run()
    assert_ok(at)
    bars = [h.value for h in at.html if "otviz-status" in h.value]
    assert 'data-status="completed"' in bars[0] and "#1e9e5a" in bars[0]
    # accuracy in percent on a fixed 0-100 axis, chance (5 classes) drawn and labelled
    acc = _figure(at, "accuracy (%)")
    assert acc["layout"]["yaxis"]["range"] == [0, 100]
    assert [s["y0"] for s in acc["layout"]["shapes"]] == [pytest.approx(20.0)]
    assert "chance 20 %" in acc["layout"]["title"]["text"]
    # controls: x axis, smoothing, log scale
    by_label(at.button_group, "X axis").set_value("epoch").run()
    assert_ok(at)
    loss = _figure(at, "total loss")
    assert loss["layout"]["xaxis"]["title"]["text"] == "epoch"
    assert by_label(at.select_slider, "Smoothing").value == 0.6
    by_label(at.toggle, "Log scale").set_value(True).run()
    assert_ok(at)
    assert _figure(at, "total loss")["layout"]["yaxis"]["type"] == "log"
    assert _figure(at, "accuracy (%)")["layout"]["yaxis"]["range"] == [0, 100]


def test_train_page_draws_the_validation_curve_and_the_final_test_accuracy(store_path):
    fake_val_run(RunStore(store_path))
    at = open_page("train")
    acc = _figure(at, "accuracy (%)")
    names = {t["name"]: t for t in acc["data"]}
    assert {"val", "train", "test"} <= set(names)
    assert _values(names["val"]["y"]) == pytest.approx([30.0, 60.0, 80.0])
    assert _values(names["test"]["y"]) == pytest.approx([75.0])  # once, at the end
    assert not any("no data yet" in n for n in names)
    assert "loss per split" in _figure(at, "loss per split")["layout"]["title"]["text"]


def test_train_page_picker_follows_a_status_change(store_path):
    store = RunStore(store_path)
    older = fake_run(store)
    live = store.create_run({"setting": "transfer", "method": "ot"}, total_steps=10)  # this process
    store.log_metrics(live, {"loss/total": 1.0}, step=1, epoch=1)
    at = open_page("train")
    picker = by_label(at.selectbox, "Run")
    assert picker.value == live and any("(running)" in o for o in picker.options)
    assert 'data-status="running"' in [h.value for h in at.html if "otviz-status" in h.value][0]
    store.finish(live, "completed")
    at.run()
    assert_ok(at)
    picker = by_label(at.selectbox, "Run")
    assert picker.value == live
    assert not any("(running)" in o for o in picker.options), picker.options
    assert 'data-status="completed"' in [h.value for h in at.html if "otviz-status" in h.value][0]
    picker.set_value(older).run()
    assert_ok(at)
    assert at.session_state["follow"] == older and by_label(at.selectbox, "Run").value == older


def test_train_page_warns_before_launching_an_identical_run(store_path):
    import dashkit
    import runcharts

    store = RunStore(store_path)
    twin = store.create_run(runcharts.resolved_config(dict(dashkit.DEMO_CONFIG)),
                            name="demo: an earlier run")
    store.finish(twin, "completed")
    other = store.create_run(runcharts.resolved_config(dict(dashkit.DEMO_CONFIG, seed=1)))
    store.finish(other, "completed")
    at = open_page("train")
    by_label(at.button, "Run the demo transfer").click().run()
    assert_ok(at)
    warnings = [w.value for w in at.warning if "already trained" in w.value]
    assert len(warnings) == 1 and f"#{twin} " in warnings[0] and f"#{other} " not in warnings[0]
    assert len(RunStore(store_path).runs()) == 2  # nothing launched yet
    by_label(at.button, "Cancel").click().run()
    assert not [w for w in at.warning if "already trained" in w.value]
    by_label(at.button, "Run the demo transfer").click().run()
    by_label(at.button, f"Show run #{twin}").click().run()
    assert_ok(at)
    assert by_label(at.selectbox, "Run").value == twin
    assert len(RunStore(store_path).runs()) == 2
    by_label(at.button, "Run the demo transfer").click().run()
    by_label(at.button, "Launch anyway").click().run()
    assert_ok(at)
    assert not errors(at), errors(at)
    runs = RunStore(store_path).runs()
    assert len(runs) == 3 and at.session_state["follow"] == int(runs["run_id"].max())


# ----------------------------------------------------------------------------- Alignments
def test_alignments_page_draws_a_plan_for_shipped_teachers(store_path):
    at = open_page("alignments")
    assert not errors(at), errors(at)
    assert by_label(at.selectbox, "Teacher").value == "cnn-mnist5k"
    assert "heatmap" in trace_types(at)
    titles = [fig["layout"].get("title", {}).get("text", "") for fig in figures_of(at)]
    assert any("Cost beside plan" in t for t in titles), titles
    assert any("Matched pairs against all pairs" in t for t in titles), titles
    assert any("Match quality per neuron" in t for t in titles), titles
    assert by_label(at.toggle, "Log colour for the plan").value is False
    assert any("Neuron map" in t for t in titles), titles
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Converged"] == "yes" and 0 < float(metrics["OT score"]) < 1
    # the layer tables show the score, the raw cost is one toggle away
    tables = [c for c in at.get("plotly_chart") if "Layer similarity" in str(c.proto.spec)]
    assert tables and "OT score" in str(tables[0].proto.spec)
    by_label(at.toggle, "Raw OT cost instead of the score").set_value(True).run()
    assert not errors(at), errors(at)
    tables = [c for c in at.get("plotly_chart") if "Layer similarity" in str(c.proto.spec)]
    assert tables and "raw OT cost" in str(tables[0].proto.spec)


def test_alignments_page_sinkhorn_at_its_default_eps_converges(store_path):
    # the solver switched to sinkhorn, eps left at the page's default: the plan and every pair of
    # the layer x layer table converge (at eps 0.01, 6 of the 9 pairs of these teachers did not)
    at = open_page("alignments")
    by_label(at.selectbox, "Solver").set_value("sinkhorn").run()
    assert not errors(at), errors(at)
    eps = by_label(at.select_slider, "eps (entropic)").value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Solver"] == "sinkhorn" and metrics["Converged"] == "yes", (eps, metrics)
    assert not [w.value for w in at.warning if "converge" in w.value], (eps, [w.value for w in at.warning])


def test_alignments_page_reports_incomparable_layers(store_path):
    at = open_page("alignments")
    by_label(at.selectbox, "Positions").set_value("flatten").run()
    by_label(at.select_slider, "Resize image maps to (flatten)").set_value(0)  # keep the map sizes
    by_label(at.selectbox, "Teacher layer").set_value("features.conv1")
    by_label(at.selectbox, "Student layer").set_value("features.conv3").run()
    assert_ok(at)
    assert any("cannot be aligned" in e for e in errors(at)), errors(at)


def test_alignments_page_checks_uploads(store_path, tmp_path):
    from otviz.models import build_model
    from otviz.teachers import save_checkpoint

    narrow = save_checkpoint(build_model("cnn", width=0.25, num_classes=10), tmp_path / "narrow.pt",
                             task={"dataset": "mnist5k", "classes": list(range(10))})
    at = open_page("alignments")
    at.file_uploader[0].set_value([("junk.pt", b"not a checkpoint", "application/octet-stream"),
                                   ("narrow.pt", narrow.read_bytes(), "application/octet-stream")])
    at.run()
    assert_ok(at)
    assert any("junk.pt is not usable" in e for e in errors(at)), errors(at)
    student = by_label(at.selectbox, "Student")
    uploaded = [o for o in student.options if o.startswith("narrow.pt")]
    assert uploaded, student.options
    student.set_value(uploaded[0]).run()
    assert_ok(at)
    others = [e for e in errors(at) if "junk.pt" not in e]  # the bad file stays reported
    assert not others, others
    assert {m.label: m.value for m in at.metric}["Neurons"] == "64 x 16"


def test_alignments_page_shows_a_runs_plans_over_epochs(store_path):
    fake_run(RunStore(store_path))
    at = open_page("alignments")
    by_label(at.radio, "Compare").set_value("A training run").run()
    assert_ok(at)
    titles = [fig["layout"].get("title", {}).get("text", "") for fig in figures_of(at)]
    assert any("Plan at epoch 2" in t for t in titles), titles
    by_label(at.select_slider, "Epoch").set_value(1).run()
    assert_ok(at)
    titles = [fig["layout"].get("title", {}).get("text", "") for fig in figures_of(at)]
    assert any("Plan at epoch 1" in t for t in titles), titles


def test_alignments_page_compares_a_run_with_its_scratch_twin(store_path):
    store = RunStore(store_path)
    ot = fake_run(store, method="ot", costs=True)
    scratch = fake_run(store, method="scratch", costs=True)
    fake_run(store, setting="distill", method="scratch", costs=True)  # not a twin: other setting
    at = open_page("alignments")
    by_label(at.radio, "Compare").set_value("A training run").run()
    by_label(at.selectbox, "Run").set_value(ot).run()
    assert_ok(at)
    assert by_label(at.selectbox, "Compare with").value == scratch  # the twin by default
    figs = figures_of(at)
    titles = [fig["layout"].get("title", {}).get("text", "") for fig in figs]
    compare = [f for f, t in zip(figs, titles) if t.startswith("score per epoch")]  # the score first
    assert len(compare) == 1, titles
    assert [t["name"] for t in compare[0]["data"]] == [f"#{ot} ot", f"#{scratch} scratch"]
    assert [len(t["y"]["bdata"] if isinstance(t["y"], dict) else t["y"]) > 0
            for t in compare[0]["data"]] == [True, True]
    assert sum("Cost beside plan, epoch 2" in t for t in titles) == 2, titles
    assert sum(t.startswith("Neuron reallocation") for t in titles) == 2, titles
    # both runs' costs on one colour scale (the range of both matrices), with one colour bar
    costs = [next(tr for tr in f["data"] if tr.get("name") == "cost")
             for f, t in zip(figs, titles) if "Cost beside plan, epoch 2" in t]
    store_ = RunStore(store_path)
    both = [store_.snapshot(r, "cost/a->b", epoch=2) for r in (ot, scratch)]
    assert [(c["zmin"], c["zmax"]) for c in costs] == \
        [(pytest.approx(min(c.min() for c in both)), pytest.approx(max(c.max() for c in both)))] * 2
    assert [c.get("showscale", True) for c in costs] == [True, False]
    # another measure, then no second run
    by_label(at.radio, "Measure").set_value("raw OT").run()
    assert_ok(at)
    titles = [fig["layout"].get("title", {}).get("text", "") for fig in figures_of(at)]
    assert any(t.startswith("raw OT per epoch") for t in titles), titles
    by_label(at.selectbox, "Compare with").select_index(0).run()  # "(no second run)"
    assert_ok(at)
    titles = [fig["layout"].get("title", {}).get("text", "") for fig in figures_of(at)]
    assert sum("Cost beside plan, epoch 2" in t for t in titles) == 1, titles


def test_twin_run_matches_setting_and_budget():
    import sys

    import pandas as pd

    sys.path.insert(0, str(ROOT / "app"))
    import dashkit

    runs = pd.DataFrame(dict(run_id=[1, 2, 3, 4, 5], method=["ot", "scratch", "scratch", "scratch", "kd"],
                             **{"config.setting": ["t"] * 5, "config.epochs": [8, 8, 4, 8, 8],
                                "config.seed": [0, 1, 0, 0, 0]}))
    assert dashkit.twin_run(runs, 1) == 4   # same budget and seed beats a newer other seed
    assert dashkit.twin_run(runs, 4) == 1   # a scratch run's twin is the ot run
    assert dashkit.twin_run(runs.iloc[[0, 2]], 1) is None  # other budget: no twin
    assert dashkit.twin_run(runs, 99) is None


# ----------------------------------------------------------------------------- Compare, Learn
def test_compare_page_filters_overlays_and_exports(store_path):
    store = RunStore(store_path)
    fake_run(store, setting="transfer", method="ot")
    fake_run(store, setting="distill", method="kd", acc=(0.1, 0.3, 0.4))
    at = open_page("compare")
    assert len(at.dataframe[0].value) == 2
    curves = figures_of(at)[0]
    assert len(curves["data"]) == 2
    assert curves["layout"]["yaxis"]["range"] == [0, 100]
    # one chance line per task: transfer has 5 classes, distill 10
    assert sorted(s["y0"] for s in curves["layout"]["shapes"]) == [pytest.approx(10.0), pytest.approx(20.0)]
    assert all("(completed)" in o for o in by_label(at.multiselect, "Runs to overlay").options)
    by_label(at.button_group, "X axis").set_value("step").run()
    assert_ok(at)
    assert figures_of(at)[0]["layout"]["xaxis"]["title"]["text"] == "step"
    downloads = {d.label for d in at.get("download_button")}
    assert {"runs.csv", "metrics.csv"} <= downloads
    by_label(at.multiselect, "Setting").set_value(["distill"]).run()
    assert_ok(at)
    table = at.dataframe[0].value
    assert list(table["setting"]) == ["distill"]
    assert table["test/accuracy"].iloc[0] == pytest.approx(40.0)
    # the last epoch's OT score of each pair, beside the accuracies
    assert table["score/a->b"].iloc[0] == pytest.approx(0.7)


def fake_val_run(store: RunStore, *, val=(0.3, 0.6, 0.8), test=0.75):
    """A finished run with a validation part: validation accuracy per epoch, the test
    accuracy once, at the last step (as :func:`otviz.train.train` logs them)."""
    rid = store.create_run({"setting": "distill", "method": "scratch", "epochs": len(val) - 1,
                            "val_size": 0.2, "teacher": "cnn-mnist5k"})
    for e, v in enumerate(val):
        store.log_metrics(rid, {"val/accuracy": v, "val/loss": 1.0 - v, "train/accuracy": v + 0.05},
                          step=e * 5, epoch=e)
    store.log_metrics(rid, {"test/accuracy": test}, step=(len(val) - 1) * 5, epoch=len(val) - 1)
    store.finish(rid, "completed")
    return rid


def _values(array) -> list[float]:
    """A trace's values, also when plotly sends them as a typed array (dtype and base64 data)."""
    if isinstance(array, dict):
        import base64

        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def test_compare_page_shows_validation_accuracy_and_the_final_test_accuracy(store_path):
    store = RunStore(store_path)
    plain = fake_run(store, setting="transfer", method="ot")
    held = fake_val_run(store)
    at = open_page("compare")
    table = at.dataframe[0].value.set_index("run_id")
    assert table.loc[held, "val/accuracy"] == pytest.approx(80.0)
    assert table.loc[held, "test/accuracy"] == pytest.approx(75.0)
    assert np.isnan(table.loc[plain, "val/accuracy"]) and table.loc[plain, "test/accuracy"] == pytest.approx(70.0)
    # the curves of the validation accuracy by default, the test accuracy on demand
    choice = by_label(at.button_group, "Accuracy")
    assert choice.value == "val/accuracy"
    curves = figures_of(at)[0]
    by_name = {t["name"]: t for t in curves["data"]}
    held_trace = next(t for n, t in by_name.items() if f"#{held}" in n)
    assert _values(held_trace["y"]) == pytest.approx([30.0, 60.0, 80.0])
    assert "Validation accuracy" in curves["layout"]["title"]["text"]
    choice.set_value("test/accuracy").run()
    assert_ok(at)
    curves = figures_of(at)[0]
    held_trace = next(t for t in curves["data"] if f"#{held}" in t["name"])
    assert _values(held_trace["y"]) == pytest.approx([75.0]) and held_trace["mode"] == "lines+markers"
    # without a run holding out a validation part, neither the column nor the choice appears
    store.delete_run(held)
    at = open_page("compare")
    assert "val/accuracy" not in at.dataframe[0].value.columns
    assert not [w for w in at.button_group if w.label == "Accuracy"]


def test_compare_page_shows_the_benchmark_tables(store_path, tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "transfer.md").write_text("| setting | method | test accuracy |\n|---|---|---|\n"
                                         "| transfer-small | ot | **80.5** |\n")
    (results / "transfer.csv").write_text("setting,method,seed,test_accuracy\ntransfer-small,ot,0,0.8\n")
    at = open_page("compare")  # imports the app's helper module, which the test then points at results
    import dashkit

    monkeypatch.setattr(dashkit, "BENCHMARK_RESULTS", results)
    at.run()
    assert_ok(at)
    assert any("transfer-small | ot" in m.value for m in at.markdown)
    assert any(list(df.value.columns) == ["setting", "method", "seed", "test_accuracy"] for df in at.dataframe)


def test_learn_page_compares_emd_and_sinkhorn(store_path):
    at = open_page("learn")
    assert len(figures_of(at)) >= 2
    by_label(at.select_slider, "Sinkhorn eps").set_value(0.5).run()
    by_label(at.selectbox, "Clouds").set_value("Two moons").run()
    assert_ok(at)
    used = [m.value for m in at.metric if m.label == "Plan entries in use"]
    exact, entropic = (int(v.split("/")[0]) for v in used)
    assert exact < entropic  # the entropic plan is spread over more entries


def test_compare_page_draws_the_paired_benchmark(store_path, tmp_path, monkeypatch):
    """The paired benchmark's tables (a diverged run included) become intervals, paired gains,
    the axes and scratch's curves, per setting."""
    results = tmp_path / "results"
    results.mkdir()
    rows = ["setting,method,seed,val_accuracy,test_accuracy,seconds"]
    for seed in range(4):
        for method, acc in (("scratch", 0.70), ("nst", 0.74), ("ot", 0.78), ("kd+ot", None)):
            value = "" if acc is None else f"{acc + 0.01 * seed:.3f}"
            rows.append(f"transfer-small,{method},{seed},0.7,{value},1.0")
    (results / "transfer_paired.csv").write_text("\n".join(rows) + "\n")
    axes = ["setting,axis,value,method,seed,val_accuracy,test_accuracy,seconds"]
    axes += [f"transfer-small,k,{k},{m},{s},0.5,{0.6 + 0.01 * k + (0.02 if m == 'ot' else 0) + 0.001 * s},1"
             for k in (5, 10) for m in ("scratch", "ot") for s in range(3)]
    (results / "transfer_axes.csv").write_text("\n".join(axes) + "\n")
    (results / "transfer_scratch_curves.csv").write_text(
        "setting,epoch,seed,val_accuracy\n" + "".join(f"transfer-small,{e},{s},{0.2 + 0.1 * e}\n"
                                                      for e in range(4) for s in range(2)))
    at = open_page("compare")
    import dashkit

    monkeypatch.setattr(dashkit, "BENCHMARK_RESULTS", results)
    at.run()
    assert_ok(at)
    titles = [f["layout"]["title"]["text"] for f in figures_of(at)]
    assert "transfer-small: test accuracy (mean, 95 % CI over seeds)" in titles
    assert "transfer-small: ot minus each baseline, paired by seed" in titles
    assert "transfer-small: test accuracy against labels per class" in titles
    assert any(t.startswith("Is the budget long enough?") for t in titles)
    gains = next(f for f in figures_of(at) if f["layout"]["title"]["text"].endswith("paired by seed"))
    assert sorted(t["y"][0] for t in gains["data"] if t.get("y")) == ["ot - nst", "ot - scratch"]
    assert any("4 paired seeds per method" in c.value for c in at.caption)


def test_compare_page_builds_only_the_shown_settings_figures_and_keeps_them(store_path, tmp_path,
                                                                           monkeypatch):
    """Of the paired benchmark, a visit builds the figures of the setting shown, not those of
    the others; a second visit (a new session) builds none: they are kept per file state."""
    results = tmp_path / "results"
    results.mkdir()
    rows = ["setting,method,seed,val_accuracy,test_accuracy,seconds"]
    for setting in ("transfer-small", "distill"):
        for seed in range(3):
            for method, acc in (("scratch", 0.70), ("ot", 0.78)):
                rows.append(f"{setting},{method},{seed},0.7,{acc + 0.01 * seed:.3f},1.0")
    (results / "transfer_paired.csv").write_text("\n".join(rows) + "\n")
    import otviz.figures

    built = []
    real = otviz.figures.method_intervals

    def counted(final, setting, **kw):
        built.append(setting)
        return real(final, setting, **kw)

    monkeypatch.setattr(otviz.figures, "method_intervals", counted)
    at = open_page("compare")
    import dashkit

    monkeypatch.setattr(dashkit, "BENCHMARK_RESULTS", results)
    at.run()
    assert_ok(at)
    titles = [f["layout"]["title"]["text"] for f in figures_of(at)]
    assert "transfer-small: test accuracy (mean, 95 % CI over seeds)" in titles
    assert not any(t.startswith("distill") for t in titles), titles
    assert built == ["transfer-small"]
    at.segmented_control(key="cmp_paired_setting").set_value("distill").run()
    assert_ok(at)
    titles = [f["layout"]["title"]["text"] for f in figures_of(at)]
    assert "distill: test accuracy (mean, 95 % CI over seeds)" in titles
    assert not any(t.startswith("transfer-small") for t in titles), titles
    assert built == ["transfer-small", "distill"]
    again = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)  # another visit: nothing rebuilt
    again.switch_page("views/compare.py").run()
    assert_ok(again)
    assert "transfer-small: test accuracy (mean, 95 % CI over seeds)" in [
        f["layout"]["title"]["text"] for f in figures_of(again)]
    assert built == ["transfer-small", "distill"]
    (results / "transfer_paired.csv").write_text("\n".join(rows[:5]) + "\n")  # new results: rebuilt
    again.run()
    assert_ok(again)
    assert built == ["transfer-small", "distill", "transfer-small"]


EVIL = "[x](http://evil) ![i](http://evil/i.png) **b**"


def _app_module(name: str):
    import importlib
    import sys

    if str(ROOT / "app") not in sys.path:
        sys.path.insert(0, str(ROOT / "app"))
    return importlib.import_module(name)


def test_md_escape_shows_stored_text_as_typed():
    """Escaped text renders as itself: no link, image, emphasis, HTML, heading, code or list."""
    markdown_it = pytest.importorskip("markdown_it")
    dk = _app_module("dashkit")
    text = EVIL + " <b>h</b> <img src=x> _u_ `c` ~~s~~ :red[r] $x$ &amp; a|b www.evil.com WWW.e.org me@evil.org https://evil.org/x"
    import re

    # GitHub's automatic links (no markup: http://, www., an e-mail address) find nothing to start from
    assert not re.search(r"(?i)(https?\\?:|www\\?\.|@[-\w])", dk.md_escape(text))
    for source in (text, "# heading", "- item", "1. item", "> quote", "line\n# two\n\n- three"):
        html = markdown_it.MarkdownIt("commonmark").enable("table").enable("strikethrough").render(
            dk.md_escape(source))
        for tag in ("<a", "<img", "<strong", "<em", "<b>", "<code", "<h1", "<ul", "<ol", "<s>",
                    "<blockquote", "<table"):
            assert tag not in html, (source, html)
        plain = html.removeprefix("<p>").removesuffix("</p>\n").replace("\u2060", "")
        import html as html_lib

        assert html_lib.unescape(plain) == " ".join(source.split()), (source, html)


def test_stored_names_methods_and_teachers_are_shown_escaped(store_path):
    """A run whose name, method and teacher are Markdown reaches every page as plain text."""
    dk = _app_module("dashkit")
    store = RunStore(store_path)
    rid = store.create_run({"setting": "transfer", "method": EVIL, "epochs": 1, "teacher": EVIL,
                            "cost": "sqeuclidean", "name": EVIL}, name=EVIL)
    rng = np.random.default_rng(0)
    for e in range(2):
        store.log_metrics(rid, {"test/accuracy": 0.5, "score/a->b": 0.5}, step=e, epoch=e)
        plan = rng.random((4, 4))
        store.log_snapshot(rid, "a->b", plan / plan.sum(), epoch=e, step=e)
    store.finish(rid, "failed", error=f"Traceback\nValueError: {EVIL}")

    def shown(at: AppTest) -> list[str]:
        return [el.value for kind in ("markdown", "caption", "info", "warning", "error", "success")
                for el in getattr(at, kind)]

    def check(texts: list[str]) -> int:
        hits = [t for t in texts if "evil" in t]
        for t in hits:
            assert "[x](http" not in t and "![i]" not in t and "**b**" not in t, t
        return sum(dk.md_escape(EVIL) in t for t in hits)

    at = open_page("alignments")
    by_label(at.radio, "Compare").set_value("A training run").run()
    assert_ok(at)
    assert check(shown(at)) >= 2  # the run's heading and the teacher / method caption
    at = open_page("train")
    assert check(shown(at)) >= 1  # why the run failed
