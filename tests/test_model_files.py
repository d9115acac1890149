"""Model files from strangers: nothing in them runs, their declared sizes bound the memory, special files
and lying headers are refused with one clear message (otviz.external, otviz.teachers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
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
    with pytest.raises(ValueError, match="operator"):  # torch's verifier, then otviz's check_graph
        ex.load_exported(path)


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
        import resource
        from otviz import external as ex
        try:
            ex.load_external({str(path)!r}, max_bytes=2 * 1024**3)
        except ValueError as exc:
            print("refused", type(exc).__name__)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = out.stdout.split()
    assert "refused" in out.stdout, out.stderr[-2000:]
    assert int(lines[-1]) < 1500, f"peak {lines[-1]} MiB"  # torch's import alone is ~400 MiB; 4 GiB was declared
