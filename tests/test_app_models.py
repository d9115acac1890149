"""The Alignments page with models from outside otviz (AppTest, no browser): a torch.export
program and a Hugging Face model directory typed as local paths, probes from files, and the
memory limit refusing a checkpoint before anything is allocated."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("streamlit")
pytest.importorskip("plotly")
from streamlit.testing.v1 import AppTest  # noqa: E402

from _apptest import ENTRY, TIMEOUT, by_label, errors  # noqa: E402

from otviz.models import build_model  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz",
         "the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "small", "red", "house"]


@pytest.fixture
def store_path(tmp_path, monkeypatch):
    path = tmp_path / "runs.db"
    monkeypatch.setenv("OTVIZ_STORE", str(path))
    return path


def open_alignments() -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/alignments.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def option(widget, prefix: str) -> str:
    found = [o for o in widget.options if o.startswith(prefix)]
    assert found, (prefix, widget.options)
    return found[0]


def test_alignments_page_compares_a_shipped_teacher_with_a_pt2_program(store_path, tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn", width=0.25).eval()
    ep = torch.export.export(model, (torch.randn(4, 1, 28, 28),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "narrow.pt2"
    torch.export.save(ep, str(path))
    at = open_alignments()
    by_label(at.text_area, "Model paths on this machine (one per line)").set_value(str(path)).run()
    assert not at.exception and not errors(at), errors(at)
    student = by_label(at.selectbox, "Student")
    student.set_value(option(student, "narrow (torch.export program")).run()
    assert not errors(at), errors(at)
    s_layer = by_label(at.selectbox, "Student layer")
    assert "features.conv3.relu" in s_layer.options and "head" in s_layer.options
    s_layer.set_value("features.conv3.relu").run()
    assert not at.exception and not errors(at), errors(at)
    # the teacher records its task: its held-out images are the default probe
    assert by_label(at.radio, "Probe inputs").value == "task"
    assert {m.label: m.value for m in at.metric}["Neurons"] == "64 x 16"
    assert any("Layer similarity" in str(c.proto.spec) for c in at.get("plotly_chart"))
    # the same program probed with a file of arrays of the wrong channel count: a clear error
    bad = tmp_path / "rgb.npy"
    np.save(bad, np.zeros((8, 3, 28, 28), dtype=np.float32))
    by_label(at.radio, "Probe inputs").set_value("file").run()
    by_label(at.text_input, "Path of a .npy, .npz, .safetensors or .pt file").set_value(str(bad)).run()
    assert not at.exception
    assert any("does not fit the teacher" in e or "does not fit the student" in e for e in errors(at)), errors(at)


def test_alignments_page_loads_a_hugging_face_directory_and_probes_it_with_sentences(store_path, tmp_path):
    transformers = pytest.importorskip("transformers")
    d = tmp_path / "tiny-bert"
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, vocab_size=len(VOCAB) + 10, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).eval().save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    transformers.BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("the cat sat on the mat\na dog ran\nthe big red house\na small cat\n"
                         "the dog sat\na red mat\n", encoding="utf-8")
    at = open_alignments()
    by_label(at.text_area, "Model paths on this machine (one per line)").set_value(str(d)).run()
    assert not at.exception and not errors(at), errors(at)
    for role in ("Teacher", "Student"):
        box = by_label(at.selectbox, role)
        box.set_value(option(box, "tiny-bert (BertModel (huggingface)")).run()
    layers = by_label(at.selectbox, "Teacher layer").options
    assert any(n.startswith("encoder.layer.1") for n in layers), layers
    probe = by_label(at.radio, "Probe inputs")
    assert probe.value == "text"  # a token model with a tokenizer: sentences by default
    assert "Held-out images" not in " ".join(probe.options)  # no model records a task
    by_label(at.text_input, "Path of a text file (one sentence per line)").set_value(str(sentences)).run()
    assert not at.exception
    layer = next(n for n in layers if n.startswith("encoder.layer.1"))
    by_label(at.selectbox, "Teacher layer").set_value(layer)
    by_label(at.selectbox, "Student layer").set_value(layer).run()
    assert not at.exception and not errors(at), errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Neurons"].startswith("32 x 32"), metrics  # the hidden units, not the tokens
    assert float(metrics["OT score"]) < 1e-3  # a layer against itself


def test_alignments_page_refuses_models_over_the_memory_limit_and_bad_paths(store_path, tmp_path):
    buf = io.BytesIO()
    torch.save({"format": "otviz-teacher/1", "name": "wide", "arch": "cnn",
                "model_config": {"width": 300.0, "num_classes": 10, "in_channels": 1},
                "state_dict": {}, "task": {}}, buf)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "bert"}))
    at = open_alignments()
    at.file_uploader[0].set_value([("wide.pt", buf.getvalue(), "application/octet-stream")])
    by_label(at.text_area, "Model paths on this machine (one per line)").set_value(
        f"{no_weights}\n{tmp_path / 'missing.pt2'}").run()
    assert not at.exception
    errs = errors(at)
    assert any("wide.pt is not usable" in e and "7.73 GiB" in e and "limit of 2 GiB" in e for e in errs), errs
    assert any("no weights (no *.safetensors file)" in e for e in errs), errs
    assert any("missing.pt2 does not exist" in e for e in errs), errs
    # the rest of the page keeps working with the shipped teachers
    assert "heatmap" in {t.get("type") for c in at.get("plotly_chart")
                         for t in json.loads(c.proto.spec).get("data", [])}


def test_alignments_page_takes_an_uploaded_pt2_program(store_path, tmp_path):
    model = build_model("mlp", width=0.25, in_features=784).eval()
    ep = torch.export.export(model, (torch.randn(4, 1, 28, 28),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "mlp.pt2"
    torch.export.save(ep, str(path))
    at = open_alignments()
    at.file_uploader[0].set_value([("mlp.pt2", path.read_bytes(), "application/octet-stream")]).run()
    assert not at.exception and not errors(at), errors(at)
    student = by_label(at.selectbox, "Student")
    student.set_value(option(student, "mlp.pt2 (uploaded: torch.export program")).run()
    by_label(at.selectbox, "Student layer").set_value("features.fc2.relu").run()
    assert not at.exception and not errors(at), errors(at)
    assert {m.label: m.value for m in at.metric}["Neurons"] == "64 x 16"
