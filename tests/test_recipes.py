"""The torch-free configuration (settings, methods, recipes, layer pairs) and teacher listing.

The dashboard's Train page is drawn from these without loading torch; they must
agree with what the training code and the checkpoints define.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_config_and_teacher_listing_import_no_torch():
    code = ("import sys\n"
            "from otviz._recipes import recipe, default_pairs, SETTINGS, parse_method\n"
            "from otviz._teacher_meta import list_teachers\n"
            "recipe('transfer-small', 'kd+ot', arch='mlp'); default_pairs('cnn'); list_teachers()\n"
            "heavy = [m for m in ('torch', 'ot', 'sklearn', 'plotly') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_public_names_are_the_torch_free_objects():
    import otviz._recipes as r
    import otviz.data
    import otviz.losses
    import otviz.train

    assert otviz.data.SETTINGS is r.SETTINGS and otviz.data.SettingSpec is r.SettingSpec
    assert otviz.losses.METHODS is r.METHODS and otviz.losses.parse_method is r.parse_method
    for name in ("recipe", "recipe_table", "default_pairs", "RECIPES", "RECIPE_COMMON"):
        assert getattr(otviz.train, name) is getattr(r, name)


def test_default_pairs_match_the_models_without_touching_the_rng():
    import torch

    from otviz._recipes import ALIGNABLE_LAYERS, default_pairs
    from otviz.models import MODELS, build_model

    assert set(ALIGNABLE_LAYERS) == set(MODELS)
    for arch in MODELS:
        state = torch.random.get_rng_state()
        pairs = default_pairs(arch)
        assert torch.equal(state, torch.random.get_rng_state())  # no model is built for a known family
        assert pairs == list(build_model(arch).alignable_layers)
    with pytest.raises(ValueError, match="cnn"):
        default_pairs("resnet")


def test_recipe_rejects_unknown_settings_and_methods():
    from otviz._recipes import recipe

    with pytest.raises(ValueError, match="valid settings"):
        recipe("nope", "ot")
    with pytest.raises(ValueError, match="Valid methods"):
        recipe("transfer", "ot+magic")
    assert recipe("transfer-small", "ot", arch="mlp")["pairs"] == ["features.fc2"]


def test_teacher_listing_matches_the_checkpoints(tmp_path):
    from otviz import teachers
    from otviz._teacher_meta import _FORMAT, list_teachers

    assert _FORMAT == teachers.CHECKPOINT_FORMAT
    fast, full = list_teachers(as_frame=True), teachers.list_teachers(as_frame=True)
    assert len(fast) == 8 and fast.equals(full)
    # files that are not otviz checkpoints are skipped, as by otviz.teachers.list_teachers
    src = teachers.TEACHER_DIR / "cnn-digits.pt"
    (tmp_path / "a.pt").write_bytes(src.read_bytes())
    (tmp_path / "b.pt").write_bytes(b"not a zip")
    import torch

    torch.save({"weights": torch.zeros(2)}, tmp_path / "c.pt")  # a bare dict: no format tag
    with zipfile.ZipFile(tmp_path / "d.pt", "w") as z:  # a pickle that would run code if loaded
        z.writestr("d/data.pkl", b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    assert [r["name"] for r in list_teachers(tmp_path)] == ["cnn-digits"]
    assert [r["name"] for r in teachers.list_teachers(tmp_path)] == ["cnn-digits"]
    assert not (tmp_path / "pwned").exists()
    assert list_teachers(tmp_path / "missing") == []


def test_the_figures_import_no_torch_until_an_alignment_reaches_them():
    import subprocess
    import sys

    code = ("import sys, numpy as np, otviz.figures as f; f.plan_heatmap(np.full((3, 2), 1 / 6)); "
            "print(sorted(m for m in ('torch', 'ot') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
