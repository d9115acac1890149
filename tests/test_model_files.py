"""Model files from strangers: nothing in them runs, their declared sizes bound the memory, special files
and lying headers are refused with one clear message (otviz.external, otviz.teachers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from otviz import external as ex
from otviz._memory import ModelTooLargeError
from otviz._pt2 import forced_weights_only
from otviz.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _payloads import Payload, code, edit_json, pickle, pickled, rewrite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """A plain torch.export program of a small CNN (dynamic batch axis)."""
    torch.manual_seed(0)
    model = build_model("cnn", width=0.25).eval()
    ep = torch.export.export(model, (torch.randn(4, 1, 28, 28),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path_factory.mktemp("pt2") / "cnn.pt2"
    torch.export.save(ep, str(path))
    return path


# ----------------------------------------------------------------------------- .pt2 payloads
def _use_pickle(cfg):
    cfg["config"]["features.conv1.conv.weight"]["use_pickle"] = True
    return cfg


def _opaque(cfg):
    cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False,
                             "tensor_meta": None}
    return cfg


def _payloads(src: Path, d: Path, marker: Path) -> dict[str, Path]:
    sym = "Symbol('s77', positive=True, integer=True)"

    def sympy_payload(program):
        text = json.dumps(program).replace(sym, code(marker).replace('"', "'") + " or " + sym)
        return json.loads(text)

    def guard_payload(program):
        program["guards_code"] = [code(marker)]
        return program

    return {
        "sample_inputs": rewrite(src, d / "sample.pt2", {"data/sample_inputs/model.pt": pickled(marker)}),
        "use_pickle": rewrite(src, d / "weights.pt2", {"data/weights/model_weights_config.json": edit_json(_use_pickle),
                                                      "data/weights/weight_0": pickled(marker)}),
        "opaque_constant": rewrite(src, d / "opaque.pt2",
                                   {"data/constants/model_constants_config.json": edit_json(_opaque)},
                                   {"data/constants/opaque_obj_0": pickle.dumps(Payload(marker))}),
        "legacy_weights": rewrite(src, d / "legacy.pt2", add={"data/weights/model.pt": pickled(marker)}),
        "sympy_expression": rewrite(src, d / "sympy.pt2", {"models/model.json": edit_json(sympy_payload)}),
        "guard": rewrite(src, d / "guard.pt2", {"models/model.json": edit_json(guard_payload)}),
        "aotinductor": rewrite(src, d / "aoti.pt2", add={"data/aotinductor/model/model.so": b"\x7fELF" + b"\0" * 64}),
    }


PAYLOADS = ["sample_inputs", "use_pickle", "opaque_constant", "legacy_weights", "sympy_expression", "guard",
            "aotinductor"]
REASONS = {"sample_inputs": "sample inputs", "use_pickle": "use_pickle", "opaque_constant": "opaque_obj_0",
           "legacy_weights": "legacy pickled format", "sympy_expression": "symbolic size",
           "guard": "input guard", "aotinductor": "AOTInductor"}


@pytest.mark.parametrize("kind", PAYLOADS)
def test_a_crafted_pt2_runs_no_code(program, tmp_path, kind):
    marker = tmp_path / "marker"
    path = _payloads(program, tmp_path, marker)[kind]
    for load in (ex.load_exported, ex.load_external):
        with pytest.raises(ValueError, match=REASONS[kind]) as info:
            load(path)
        assert "runs no code" in str(info.value) and "torch.export.save" in str(info.value)
        assert not marker.exists()
    # the model is refused at estimate time too (the archive is read the same way)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["sample_inputs", "use_pickle"])
def test_torch_export_load_unpickles_nothing_under_forced_weights_only(program, tmp_path, kind):
    """The second line of defence alone: torch's own fallbacks to weights_only=False are refused."""
    marker = tmp_path / "marker"
    path = _payloads(program, tmp_path, marker)[kind]
    with forced_weights_only(), pytest.raises(Exception):
        torch.export.load(str(path))
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # the scope is undone


def test_forced_weights_only_is_scoped_across_threads():
    seen = []

    def worker():
        with forced_weights_only():
            seen.append(os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == ["1"] * 8
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_a_graph_calling_a_python_function_is_refused(program, tmp_path):
    def retarget(prog):
        for node in prog["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.relu.default":
                node["target"] = "torch.relu"  # a Python callable, resolved by name and called at forward
        return prog

    path = rewrite(program, tmp_path / "retarget.pt2", {"models/model.json": edit_json(retarget)})
    with pytest.raises(ValueError, match="operator"):  # torch's verifier refuses this one already
        ex.load_exported(path)
    # otviz's own check, on a loaded program whose graph calls a Python function
    from otviz._pt2 import check_graph

    ep = torch.export.load(str(program))
    check_graph(ep, program)  # a plain program passes
    node = next(n for n in ep.graph.nodes if n.target is torch.ops.aten.relu.default)
    node.target = torch.relu
    with pytest.raises(ValueError, match=r"node 'relu' that calls '\S*relu' .*not a PyTorch operator"):
        check_graph(ep, program)


def test_a_clean_program_still_loads_after_the_checks(program, tmp_path):
    copy = rewrite(program, tmp_path / "copy.pt2")
    loaded = ex.load_exported(copy)
    assert loaded.kind == "export" and loaded.info["parameters"] > 0
    with torch.no_grad():
        assert loaded.model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


# ----------------------------------------------------------------------------- .pt2 memory
def _huge_view(cfg):
    meta = cfg["config"]["head.weight"]["tensor_meta"]
    meta["sizes"] = [{"as_int": 2**15}, {"as_int": 2**15}]  # 4 GiB of float32 declared
    meta["strides"] = [{"as_int": 0}, {"as_int": 0}]         # over a 640-byte record
    return cfg


def test_a_huge_view_of_a_tiny_record_is_refused_by_its_declared_shape(program, tmp_path):
    path = rewrite(program, tmp_path / "view.pt2", {"data/weights/model_weights_config.json": edit_json(_huge_view)})
    assert path.stat().st_size < 200_000
    with pytest.raises(ModelTooLargeError, match="shapes and dtypes") as info:
        ex.load_exported(path)
    assert info.value.nbytes >= 2**32
    # measured in a child: the refusal allocates nothing near the declared size
    script = textwrap.dedent(f"""
        from otviz import external as ex
        try:
            ex.load_external({str(path)!r}, max_bytes=2 * 1024**3)
        except ValueError as exc:
            print("refused", type(exc).__name__)
        # VmHWM is this process's own peak: ru_maxrss would also carry the forking parent's peak
        # (the pytest process, over 1.5 GB late in a full run) across the exec
        with open("/proc/self/status") as fh:
            print(next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = out.stdout.split()
    assert "refused" in out.stdout, out.stderr[-2000:]
    assert int(lines[-1]) < 1500, f"peak {lines[-1]} MiB"  # torch's import alone is ~400 MiB; 4 GiB was declared


# ----------------------------------------------------------------------------- Hugging Face directories
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BERT saved with save_pretrained, with its tokenizer."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("bert") / "tiny-bert"
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                  vocab_size=60, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).eval().save_pretrained(d)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    transformers.BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)
    return d


def _copy_dir(src: Path, dst: Path, **json_edits) -> Path:
    """A copy of a model directory; ``config=fn`` / ``tokenizer_config=fn`` edit those JSON files."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    for stem, fn in json_edits.items():
        f = dst / f"{stem}.json"
        f.write_text(json.dumps(fn(json.loads(f.read_text()))))
    return dst


def _run_child(script: str, timeout: float = 120, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, input=stdin, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("where", ["tokenizer_config", "config"])
def test_auto_map_is_refused_before_transformers_even_when_stdin_says_yes(bert_dir, tmp_path, where):
    marker = tmp_path / "marker"

    def add_auto_map(cfg):
        if where == "config":
            cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
        else:
            cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        return cfg

    d = _copy_dir(bert_dir, tmp_path / "evil", **{where: add_auto_map})
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    out = _run_child(f"""
        from otviz import external as ex
        try:
            ex.load_external({str(d)!r})
        except ValueError as exc:
            print("REFUSED", exc)
    """, stdin="y\ny\ny\n")
    assert "REFUSED" in out.stdout and "auto_map" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "does not run" in out.stdout
    assert not marker.exists()


def test_a_config_declaring_20000_layers_is_refused_fast(bert_dir, tmp_path):
    d = _copy_dir(bert_dir, tmp_path / "deep", config=lambda c: {**c, "num_hidden_layers": 20_000})
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"num_hidden_layers=20,000, but its weights number at most 2 blocks"):
        ex.load_external(d)
    assert time.perf_counter() - t0 < 5.0
    with pytest.raises(ValueError, match="num_hidden_layers"):
        ex.estimate_nbytes(d)


def test_hf_weights_of_another_shape_are_named_in_the_message(bert_dir, tmp_path):
    d = _copy_dir(bert_dir, tmp_path / "mis", config=lambda c: {**c, "intermediate_size": 40})
    with pytest.raises(ValueError) as info:
        ex.load_external(d)
    msg = str(info.value)
    assert "encoder.layer.0.intermediate.dense.weight: (37, 32) in the weights, (40, 32) in the config" in msg, msg
    assert "report" not in msg


def test_a_quantized_config_says_it_is_not_supported(bert_dir, tmp_path):
    quant = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    d = _copy_dir(bert_dir, tmp_path / "q", config=lambda c: {**c, "quantization_config": quant})
    with pytest.raises(ValueError, match="otviz does not read quantized checkpoints") as info:
        ex.load_external(d)
    assert "accelerate" not in str(info.value) and "bitsandbytes" in str(info.value)


def test_a_deeply_nested_config_is_a_clear_error(bert_dir, tmp_path):
    d = _copy_dir(bert_dir, tmp_path / "nested")
    cfg = json.loads((d / "config.json").read_text())
    text = json.dumps(cfg)[:-1] + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}"
    (d / "config.json").write_text(text)
    for load in (ex.load_hf_dir, ex.load_external):
        with pytest.raises(ValueError, match="nests lists or objects more than"):
            load(d)


# ----------------------------------------------------------------------------- lying safetensors headers
def _lying_safetensors(src: Path, dst: Path) -> Path:
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__" and header[k]["shape"])
    header[name]["shape"] = [d * 2 for d in header[name]["shape"]]  # more data than the offsets hold
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    dst.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])
    return dst


def test_a_lying_safetensors_header_is_a_value_error(bert_dir, tmp_path):
    sd = build_model("cnn", width=0.25).state_dict()
    safetensors_torch = pytest.importorskip("safetensors.torch")
    good = tmp_path / "good.safetensors"
    safetensors_torch.save_file(sd, str(good))
    bad = _lying_safetensors(good, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        ex.load_external(bad, arch="cnn")
    d = _copy_dir(bert_dir, tmp_path / "lying")
    _lying_safetensors(bert_dir / "model.safetensors", d / "model.safetensors")
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        ex.load_external(d)


# ----------------------------------------------------------------------------- special files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_given_as_model_files_are_refused_within_seconds(bert_dir, tmp_path):
    for name in ("w.safetensors", "m.pt", "p.pt2"):
        os.mkfifo(tmp_path / name)
    d = tmp_path / "fifo-dir"
    d.mkdir()
    (d / "model.safetensors").write_bytes((bert_dir / "model.safetensors").read_bytes())
    os.mkfifo(d / "config.json")
    d2 = _copy_dir(bert_dir, tmp_path / "fifo-tok")
    (d2 / "tokenizer.json").unlink()
    os.mkfifo(d2 / "tokenizer.json")
    targets = [(tmp_path / "w.safetensors", "cnn"), (tmp_path / "m.pt", None), (tmp_path / "p.pt2", None),
               (d, None), (d / "config.json", None), (d2, None)]
    out = _run_child(f"""
        from otviz import external as ex
        for path, arch in {[(str(p), a) for p, a in targets]!r}:
            try:
                ex.load_external(path, arch=arch)
                print("LOADED", path)
            except ValueError as exc:
                print("REFUSED", "named pipe (FIFO)" in str(exc))
            try:
                ex.estimate_nbytes(path, arch=arch)
                print("ESTIMATED", path)
            except ValueError as exc:
                print("REFUSED", "named pipe (FIFO)" in str(exc))
    """, timeout=120)
    assert out.stdout.split() == ["REFUSED", "True"] * (2 * len(targets)), out.stdout + out.stderr[-2000:]


def test_a_link_to_dev_zero_is_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    link = tmp_path / "x.pt"
    link.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="character device"):
        ex.load_external(link, arch="cnn")
    from otviz.teachers import load_checkpoint

    with pytest.raises(ValueError, match="character device"):
        load_checkpoint(link)


def test_a_sparse_6gb_config_is_refused_quickly(bert_dir, tmp_path):
    d = _copy_dir(bert_dir, tmp_path / "big")
    with open(d / "config.json", "r+b") as f:
        f.truncate(6 * 2**30)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="above the limit"):
        ex.load_external(d)
    assert time.perf_counter() - t0 < 5.0


def test_a_sparse_gigabyte_of_zeros_is_not_called_a_legacy_tar(tmp_path):
    f = tmp_path / "zeros.pt"
    with open(f, "wb") as fh:
        fh.truncate(2**30)
    with pytest.raises(ValueError, match="is not a PyTorch file") as info:
        ex.load_external(f, arch="cnn")
    assert "legacy" not in str(info.value) and ".tar" not in str(info.value)


# ----------------------------------------------------------------------------- weights' values
@pytest.mark.parametrize("change, names", [
    (lambda sd: sd.__setitem__("head.weight", sd["head.weight"].long()), "'head.weight (int64)'"),
    (lambda sd: sd.__setitem__("head.bias", sd["head.bias"].to(torch.complex64)), "'head.bias (complex64)'"),
    (lambda sd: sd.__setitem__("head.weight", torch.full_like(sd["head.weight"], float("nan"))), "'head.weight'"),
    (lambda sd: sd.__setitem__("features.conv1.bn.running_mean",
                               torch.full_like(sd["features.conv1.bn.running_mean"], float("nan"))),
     "'features.conv1.bn.running_mean'"),
])
def test_weights_that_are_not_finite_floats_are_refused_with_their_names(tmp_path, change, names):
    sd = build_model("cnn", width=0.25).state_dict()
    assert sd["features.conv1.bn.num_batches_tracked"].dtype == torch.int64  # integer buffers stay legitimate
    ex.load_external(_save(sd, tmp_path / "ok.pt"), arch="cnn")
    change(sd)
    with pytest.raises(ValueError) as info:
        ex.load_external(_save(sd, tmp_path / "bad.pt"), arch="cnn")
    assert names in str(info.value), str(info.value)


def _save(sd, path):
    torch.save(sd, path)
    return path


# ----------------------------------------------------------------------------- the Alignments page
def _alignments(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    pytest.importorskip("plotly")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OTVIZ_STORE", str(tmp_path / "runs.db"))
    at = AppTest.from_file(str(ROOT / "app" / "otviz_app.py"), default_timeout=180)
    at.run()
    at.switch_page("views/alignments.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _page_renders(at) -> bool:
    """The page went on after the errors: the shipped teachers are compared (a heatmap is drawn)."""
    return "heatmap" in {t.get("type") for c in at.get("plotly_chart")
                         for t in json.loads(c.proto.spec).get("data", [])}


def test_alignments_page_refuses_a_pt2_payload_upload_and_a_lying_header_path(program, bert_dir, tmp_path,
                                                                               monkeypatch):
    marker = tmp_path / "marker"
    sample = _payloads(program, tmp_path, marker)["sample_inputs"]
    lying = _copy_dir(bert_dir, tmp_path / "lying")
    _lying_safetensors(bert_dir / "model.safetensors", lying / "model.safetensors")
    at = _alignments(tmp_path, monkeypatch)
    at.file_uploader[0].set_value([("evil.pt2", sample.read_bytes(), "application/octet-stream")])
    box = next(w for w in at.text_area if w.label == "Model paths on this machine (one per line)")
    box.set_value(f"{lying}").run()
    assert not at.exception, [e.value for e in at.exception]
    errs = [e.value for e in at.error]
    assert len(errs) == 2, errs
    assert any("evil.pt2 is not usable" in e and "sample inputs" in e and "runs no code" in e for e in errs), errs
    assert any(f"{lying} cannot be loaded" in e and "corrupt safetensors header" in e for e in errs), errs
    assert not any("ready to compare" in s.value for s in at.success)
    assert not marker.exists()
    assert _page_renders(at)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_alignments_page_refuses_a_fifo_path_without_blocking(tmp_path, monkeypatch):
    fifo = tmp_path / "model.pt2"
    os.mkfifo(fifo)
    try:
        at = _alignments(tmp_path, monkeypatch)
        box = next(w for w in at.text_area if w.label == "Model paths on this machine (one per line)")
        box.set_value(str(fifo)).run(timeout=60)
        assert not at.exception, [e.value for e in at.exception]
        errs = [e.value for e in at.error]
        assert len(errs) == 1 and "named pipe (FIFO)" in errs[0], errs
        assert _page_renders(at)
    finally:  # a regression would leave a reader blocked on the FIFO: give it an end of file
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_sparse_6gb_tokenizer_file_is_refused_quickly(bert_dir, tmp_path):
    d = _copy_dir(bert_dir, tmp_path / "bigtok")
    with open(d / "tokenizer.json", "r+b") as f:
        f.truncate(6 * 2**30)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="tokenizer.json' has 6 GiB, above the limit of 256 MiB"):
        ex.load_external(d)
    assert time.perf_counter() - t0 < 5.0
