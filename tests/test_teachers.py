"""Tests of otviz.teachers: the shipped checkpoints, their format, loading and rebuilding."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from otviz.data import SETTINGS, load_split, make_task
from otviz.models import accuracy, build_model
from otviz.teachers import (
    CHECKPOINT_FORMAT,
    TEACHER_DIR,
    TEACHER_SPECS,
    build_teachers,
    list_teachers,
    load_checkpoint,
    load_teacher,
    save_checkpoint,
    teacher_names,
    teacher_task,
)

REQUIRED = ["cnn-mnist5k-0to4", "cnn-mnist5k", "mlp-mnist5k"]
SHIPPED = teacher_names()


def test_required_teachers_are_shipped():
    assert set(REQUIRED) <= set(SHIPPED)
    assert set(SHIPPED) == set(TEACHER_SPECS)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_is_small_and_plain(name):
    path = TEACHER_DIR / f"{name}.pt"
    assert path.stat().st_size < 1_000_000
    raw = torch.load(path, weights_only=True)  # no code is unpickled
    assert raw["format"] == CHECKPOINT_FORMAT and raw["name"] == name
    assert {"arch", "model_config", "state_dict", "task", "metrics", "seed", "created_with"} <= set(raw)
    assert isinstance(raw["created_with"]["torch"], str)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_teacher_reaches_recorded_accuracy(name):
    model, info = load_teacher(name)
    assert not model.training
    task = teacher_task(info)
    assert task.classes == list(TEACHER_SPECS[name].classes)
    acc = accuracy(model, task.X_test, task.y_test)
    recorded = info["metrics"]["test_accuracy"]
    assert abs(acc - recorded) <= 0.005
    assert len(task.y_test) == info["task"]["n_test"]


def test_teachers_are_good_enough():
    rows = {r["name"]: r for r in list_teachers()}
    assert rows["cnn-mnist5k-0to4"]["test_accuracy"] > 0.95
    assert rows["cnn-mnist5k"]["test_accuracy"] > 0.93
    assert rows["mlp-mnist5k"]["test_accuracy"] > 0.90


def test_every_setting_names_a_shipped_teacher_of_the_right_task():
    for setting in SETTINGS:
        task = make_task(setting, k=2)
        assert task.teacher in SHIPPED
        _, info = load_teacher(task.teacher)
        assert info["task"]["classes"] == task.source.classes
        assert info["task"]["dataset"] == task.source.dataset
    for arch in ("cnn", "mlp"):
        for dataset in ("mnist5k", "digits"):
            assert make_task("transfer", dataset=dataset, arch=arch).teacher in SHIPPED


def test_list_teachers_fields_and_frame():
    rows = list_teachers()
    assert [r["name"] for r in rows] == SHIPPED
    r = next(r for r in rows if r["name"] == "cnn-mnist5k-0to4")
    assert (r["arch"], r["width"], r["num_classes"], r["dataset"], r["classes"]) == ("cnn", 1.0, 5, "mnist5k", [0, 1, 2, 3, 4])
    df = list_teachers(as_frame=True)
    assert list(df["name"]) == SHIPPED and "test_accuracy" in df.columns


def test_unknown_teacher_lists_shipped():
    with pytest.raises(ValueError) as err:
        load_teacher("resnet-imagenet")
    for name in REQUIRED:
        assert name in str(err.value)


def test_load_from_bytes_and_path_agree():
    path = TEACHER_DIR / "cnn-mnist5k.pt"
    m1, info1 = load_teacher(path.read_bytes())
    m2, info2 = load_teacher(str(path))
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(m1(x), m2(x))
    assert info1["metrics"] == info2["metrics"] and info1["path"] is None


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "could not read"),
        (b"\x00\x01 definitely not a checkpoint", "could not read"),
        (pickle.dumps(Exception("x"), protocol=2), "could not read"),  # a pickle weights_only refuses
    ],
)
def test_garbage_gives_clear_value_error(tmp_path, content, match):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        load_teacher(str(bad))
    assert "not a compatible otviz teacher checkpoint" in str(err.value)
    with pytest.raises(ValueError, match="not a compatible"):
        load_checkpoint(content)


def test_truncated_checkpoint_is_rejected():
    data = (TEACHER_DIR / "cnn-mnist5k.pt").read_bytes()
    with pytest.raises(ValueError, match="not a compatible otviz teacher checkpoint"):
        load_teacher(data[: len(data) // 2])


def test_bare_state_dict_and_wrong_version_are_rejected(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(build_model("cnn").state_dict(), bare)
    with pytest.raises(ValueError, match="format tag None"):
        load_teacher(str(bare))
    ckpt = load_checkpoint(TEACHER_DIR / "mlp-mnist5k.pt")
    future = tmp_path / "future.pt"
    torch.save({**ckpt, "format": "otviz-teacher/9"}, future)
    with pytest.raises(ValueError, match="otviz-teacher/9"):
        load_checkpoint(future)
    unknown_arch = tmp_path / "arch.pt"
    torch.save({**ckpt, "arch": "vit"}, unknown_arch)
    with pytest.raises(ValueError, match="'cnn', 'mlp'"):
        load_teacher(str(unknown_arch))


def test_weights_that_do_not_fit_are_rejected(tmp_path):
    ckpt = load_checkpoint(TEACHER_DIR / "cnn-mnist5k.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "width": 0.5}}, wrong)
    with pytest.raises(ValueError, match="do not match"):
        load_teacher(str(wrong))


def test_save_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model("mlp", width=0.25, num_classes=3, in_features=64)
    path = save_checkpoint(
        model, tmp_path / "sub" / "mine.pt",
        task={"dataset": "digits", "classes": (0, 1, 2)},
        metrics={"test_accuracy": np.float32(0.5)}, seed=np.int64(3), note="hello",
    )
    raw = torch.load(path, weights_only=True)
    assert raw["name"] == "mine" and raw["note"] == "hello" and raw["seed"] == 3
    assert raw["task"]["classes"] == [0, 1, 2] and isinstance(raw["metrics"]["test_accuracy"], float)
    loaded, info = load_teacher(str(path))
    x = torch.rand(5, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert [r["name"] for r in list_teachers(tmp_path / "sub")] == ["mine"]
    _, _, _, y_te = load_split("digits")
    assert len(teacher_task(info).y_test) == int(np.isin(y_te, [0, 1, 2]).sum())


def test_save_checkpoint_rejects_what_weights_only_cannot_load(tmp_path):
    model = build_model("cnn")
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(model, tmp_path / "x.pt", metrics={"when": object()})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(model, tmp_path / "x.pt", format="mine")
    with pytest.raises(ValueError, match="build_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


def test_build_teachers_is_deterministic(tmp_path):
    a = build_teachers(tmp_path / "a", ["mlp-digits-0to4"], epochs=1, log=None)
    b = build_teachers(tmp_path / "b", ["mlp-digits-0to4"], epochs=1, log=None)
    sa = load_checkpoint(a[0]["path"])["state_dict"]
    sb = load_checkpoint(b[0]["path"])["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a[0]["test_accuracy"] == b[0]["test_accuracy"] > 0.5
    c = build_teachers(tmp_path / "c", ["mlp-digits-0to4"], epochs=1, seed=1, log=None)
    assert not torch.equal(load_checkpoint(c[0]["path"])["state_dict"]["head.weight"], sa["head.weight"])
    with pytest.raises(ValueError, match="cnn-mnist5k"):
        build_teachers(tmp_path, ["nope"], log=None)
