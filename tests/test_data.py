"""Tests of otviz.data: built-in datasets, splits, few-shot draws and named tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from otviz.data import (
    DATASETS,
    SETTINGS,
    as_tensor_dataset,
    describe_settings,
    few_shot_indices,
    load_dataset,
    load_split,
    make_task,
    resize_images,
    split_indices,
    task_from_arrays,
    validation_indices,
)


@pytest.mark.parametrize(
    "name, n, hw, per_class",
    [("digits", 1797, 8, None), ("mnist5k", 5000, 28, 500)],
)
def test_load_dataset_shapes_ranges_and_labels(name, n, hw, per_class):
    X, y = load_dataset(name)
    assert X.shape == (n, 1, hw, hw) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert sorted(np.unique(y)) == list(range(10))
    if per_class is not None:
        assert (np.bincount(y) == per_class).all()
    # real images: mostly dark background with some bright strokes
    assert 0.05 < X.mean() < 0.5


def test_load_dataset_is_cached_and_read_only():
    X1, y1 = load_dataset("mnist5k")
    X2, _ = load_dataset("mnist5k")
    assert X1 is X2
    with pytest.raises(ValueError):
        X1[0, 0, 0, 0] = 1.0
    # splits hand out writable copies
    X_tr, *_ = load_split("mnist5k")
    X_tr[0, 0, 0, 0] = 0.5
    assert X1.flags.writeable is False


def test_mnist5k_matches_digits_statistics_roughly():
    # the label column was read correctly: mean image of class 1 is thin (few lit pixels)
    X, y = load_dataset("mnist5k")
    lit = (X > 0.5).reshape(len(X), -1).sum(1)
    assert lit[y == 1].mean() < lit[y == 0].mean()


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10")
    for name in DATASETS:
        assert repr(name) in str(err.value)


def test_split_is_deterministic_disjoint_and_stratified():
    _, y = load_dataset("mnist5k")
    tr1, te1 = split_indices(y)
    tr2, te2 = split_indices(y)
    np.testing.assert_array_equal(tr1, tr2)
    np.testing.assert_array_equal(te1, te2)
    assert len(te1) == 1000 and len(tr1) == 4000
    assert not set(tr1) & set(te1)
    assert set(tr1) | set(te1) == set(range(5000))
    assert (np.bincount(y[te1]) == 100).all()
    # shuffled order: the first training images mix classes
    assert len(np.unique(y[tr1[:50]])) >= 8
    tr3, _ = split_indices(y, seed=1)
    assert not np.array_equal(np.sort(tr1), np.sort(tr3))


def test_split_digits_stratified_within_one():
    _, y = load_dataset("digits")
    _, te = split_indices(y, test_size=0.2)
    expected = np.bincount(y) * 0.2
    assert np.abs(np.bincount(y[te]) - expected).max() <= 1.0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, "0.2"])
def test_split_rejects_bad_test_size(bad):
    with pytest.raises(ValueError, match="test_size"):
        split_indices(np.arange(10) % 2, test_size=bad)


def test_few_shot_exact_k_per_class_and_seeded():
    y = np.repeat(np.arange(4), 30)
    idx = few_shot_indices(y, 7, seed=3)
    assert len(idx) == 28 and len(set(idx)) == 28
    assert (np.bincount(y[idx]) == 7).all()
    np.testing.assert_array_equal(idx, few_shot_indices(y, 7, seed=3))
    assert set(idx) != set(few_shot_indices(y, 7, seed=4))


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_few_shot_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        few_shot_indices(np.arange(10) % 2, k)


def test_few_shot_too_many_names_limit():
    with pytest.raises(ValueError, match="k <= 5"):
        few_shot_indices(np.repeat([0, 1], [5, 9]), 6)


def test_transfer_task_relabels_and_keeps_k_per_class():
    task = make_task("transfer", k=7, seed=0)
    assert task.teacher == "cnn-mnist5k-0to4"
    assert task.student_init == "teacher" and task.student_width == 1.0
    src, tgt = task.source, task.target
    assert src.classes == [0, 1, 2, 3, 4] and len(src.y_train) == 2000 and len(src.y_test) == 500
    assert tgt.classes == [5, 6, 7, 8, 9] and tgt.num_classes == task.num_classes == 5
    assert (torch.bincount(tgt.y_train, minlength=5) == 7).all()
    assert sorted(tgt.y_test.unique().tolist()) == [0, 1, 2, 3, 4]
    # the target test set is every test image of classes 5-9, labels shifted by 5
    _, _, X_te, y_te = load_split("mnist5k")
    keep = y_te >= 5
    np.testing.assert_array_equal(tgt.X_test.numpy(), X_te[keep])
    np.testing.assert_array_equal(tgt.y_test.numpy(), y_te[keep] - 5)
    # the few labelled training images are real training images with the right (shifted) labels
    X_tr, y_tr, _, _ = load_split("mnist5k")
    flat = X_tr.reshape(len(X_tr), -1)
    for x, lab in zip(tgt.X_train[:5], tgt.y_train[:5]):
        hits = np.flatnonzero((flat == x.numpy().ravel()).all(1))
        assert len(hits) >= 1 and y_tr[hits[0]] == int(lab) + 5
    assert tgt.X_train.dtype == torch.float32 and tgt.y_train.dtype == torch.int64


def test_transfer_default_k_and_seed_dependence():
    a = make_task("transfer")
    assert a.k == 10 and len(a.target.y_train) == 50
    b = make_task("transfer", seed=0)
    c = make_task("transfer", seed=1)
    assert torch.equal(a.target.X_train, b.target.X_train)
    assert not torch.equal(a.target.X_train, c.target.X_train)
    # the test split never depends on the few-shot seed
    assert torch.equal(a.target.X_test, c.target.X_test)


def test_distill_and_transfer_small():
    d = make_task("distill")
    assert d.teacher == "cnn-mnist5k" and d.student_width == 0.25 and d.student_init == "scratch"
    assert d.k is None and len(d.target.y_train) == 4000 and len(d.target.y_test) == 1000
    assert d.target.classes == list(range(10))
    s = make_task("transfer-small", k=3)
    assert s.teacher == "cnn-mnist5k-0to4" and s.student_width == 0.25
    assert s.target.classes == [5, 6, 7, 8, 9] and len(s.target.y_train) == 15


def test_transfer_digits_upsamples_to_teacher_resolution():
    t = make_task("transfer-digits", k=4)
    assert t.teacher == "cnn-mnist5k" and t.source.dataset == "mnist5k"
    assert t.target.dataset == "digits" and t.target.input_shape == (1, 28, 28)
    assert t.target.X_train.min() >= 0 and t.target.X_train.max() <= 1
    assert (torch.bincount(t.target.y_train, minlength=10) == 4).all()
    assert len(t.target.y_test) == 360
    with pytest.raises(ValueError, match="does not accept dataset 'digits'"):
        make_task("transfer-digits", dataset="digits")


def test_settings_on_digits_name_matching_teacher():
    t = make_task("transfer", dataset="digits", arch="mlp")
    assert t.teacher == "mlp-digits-0to4" and t.target.input_shape == (1, 8, 8)


def test_unknown_setting_lists_settings_with_descriptions():
    with pytest.raises(ValueError) as err:
        make_task("finetune")
    msg = str(err.value)
    for name, spec in SETTINGS.items():
        assert name in msg and spec.description in msg
    assert describe_settings().count("\n") == len(SETTINGS) - 1


@pytest.mark.parametrize("k", [0, -3, "many", 1.5])
def test_make_task_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        make_task("transfer", k=k)


def test_make_task_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="'mnist5k'"):
        make_task("distill", dataset="svhn")


def test_resize_images():
    x = torch.rand(3, 1, 8, 8)
    out = resize_images(x, 28)
    assert out.shape == (3, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
    assert abs(float(out.mean() - x.mean())) < 0.05
    with pytest.raises(ValueError, match="N, C, H, W"):
        resize_images(torch.rand(8, 8), 28)


def test_as_tensor_dataset_accepts_arrays_and_datasets():
    X = np.random.default_rng(0).random((6, 5, 5))
    ds = as_tensor_dataset(X, [0, 1, 2, 0, 1, 2])
    x, y = ds.tensors
    assert x.shape == (6, 1, 5, 5) and x.dtype == torch.float32 and y.dtype == torch.int64

    class Pairs(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((1, 2, 2), float(i)), i % 2

    x2, y2 = as_tensor_dataset(Pairs()).tensors
    assert x2.shape == (4, 1, 2, 2) and y2.tolist() == [0, 1, 0, 1]
    x3, _ = as_tensor_dataset(TensorDataset(torch.zeros(3, 4), torch.tensor([0, 1, 1]))).tensors
    assert x3.shape == (3, 4)


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.zeros((3, 4)), [0, 1], "differ in length"),
        (np.zeros((3,)), [0, 1, 2], "shape"),
        (np.full((2, 4), np.nan), [0, 1], "NaN"),
        (np.zeros((2, 4)), [0.5, 1.0], "integers"),
        (np.zeros((2, 4)), [-1, 1], "non-negative"),
        (np.zeros((2, 4)), None, "labels y are required"),
    ],
)
def test_as_tensor_dataset_validation(X, y, match):
    with pytest.raises(ValueError, match=match):
        as_tensor_dataset(X, y)


def test_as_tensor_dataset_rejects_dataset_plus_labels():
    with pytest.raises(ValueError, match="not both"):
        as_tensor_dataset(TensorDataset(torch.zeros(2, 3), torch.zeros(2)), [0, 1])


def test_task_from_arrays_split_and_k():
    rng = np.random.default_rng(0)
    X = rng.random((100, 16)).astype(np.float32)
    y = np.repeat(np.arange(4), 25)
    t = task_from_arrays(X, y, k=5, seed=0)
    assert t.num_classes == 4 and t.dataset == "custom"
    assert len(t.y_test) == 20 and (torch.bincount(t.y_train) == 5).all()
    t2 = task_from_arrays(X[:80], y[:80], X_test=X[80:], y_test=y[80:])
    assert len(t2.y_train) == 80 and len(t2.y_test) == 20
    with pytest.raises(ValueError, match="differ in shape"):
        task_from_arrays(X, y, X_test=np.zeros((4, 3)), y_test=[0, 1, 2, 3])


# --------------------------------------------------------------------------- validation part
def _rows(X: torch.Tensor) -> set[bytes]:
    """The images as byte strings, to compare sets of images across tensors."""
    return {x.numpy().tobytes() for x in X}


def test_validation_indices_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(5), [40, 40, 60, 60, 100])
    rest, val = validation_indices(y, 0.25, seed=3)
    assert len(val) == 75 and len(rest) == 225
    assert not set(rest) & set(val) and set(rest) | set(val) == set(range(300))
    assert np.bincount(y[val]).tolist() == [10, 10, 15, 15, 25]  # each class in proportion
    again = validation_indices(y, 0.25, seed=3)
    np.testing.assert_array_equal(val, again[1])
    np.testing.assert_array_equal(rest, again[0])
    other = validation_indices(y, 0.25, seed=4)[1]
    assert set(val) != set(other)
    # a number of images; a prefix of the validation part mixes the classes
    rest, val = validation_indices(y, 30, seed=0)
    assert len(val) == 30 and np.bincount(y[val]).tolist() == [4, 4, 6, 6, 10]
    assert len(np.unique(y[val[:10]])) >= 3
    # a fraction is rounded up: ceil(0.1 * 300) = 30
    assert len(validation_indices(y, 0.1, seed=0)[1]) == 30


@pytest.mark.parametrize("val_size,match", [
    (0, "val_size=0 images cannot be carved"),
    (0.0, "neither a fraction in \\(0, 1\\) nor a whole number"),
    (1.0, "neither a fraction"),
    (1.5, "neither a fraction"),
    (-0.2, "neither a fraction"),
    (float("nan"), "neither a fraction"),
    (True, "must be a fraction or a number of images"),
    ("0.2", "must be a fraction or a number of images"),
    (3, "cannot be carved stratified"),  # fewer images than classes
    (48, "cannot be carved stratified"),  # leaves fewer than one image per class
    (0.01, "too few or too many"),
])
def test_validation_indices_reject_bad_sizes_naming_the_valid_ones(val_size, match):
    y = np.repeat(np.arange(5), 10)
    with pytest.raises(ValueError, match=match) as err:
        validation_indices(y, val_size)
    assert "a fraction strictly between 0 and 1" in str(err.value) and "between 5 and 45" in str(err.value)


def test_validation_indices_need_two_images_per_class():
    with pytest.raises(ValueError, match="class 2 has a single image"):
        validation_indices([0, 0, 1, 1, 2, 0, 1], 3)


@pytest.mark.parametrize("setting,n_val,n_train,per_class", [
    ("transfer", 400, 50, 80),  # 20 % of the 2,000 training images of the digits 5-9
    ("transfer-small", 400, 50, 80),
    ("distill", 800, 3200, 80),
])
def test_make_task_validation_part_is_stratified_and_disjoint(setting, n_val, n_train, per_class):
    task = make_task(setting, val_size=0.2, seed=2)
    tgt = task.target
    assert task.val_size == 0.2 and tgt.has_validation
    assert len(tgt.y_val) == n_val and len(tgt.y_train) == n_train and len(tgt.y_test) == len(make_task(setting).target.y_test)
    assert (torch.bincount(tgt.y_val, minlength=tgt.num_classes) == per_class).all()
    val, train, test = _rows(tgt.X_val), _rows(tgt.X_train), _rows(tgt.X_test)
    assert len(val) == n_val and not val & train and not val & test
    # the validation images are training images of the setting, with their (relabelled) labels
    X_tr, y_tr, _, _ = load_split("mnist5k")
    where = {x.tobytes(): lab for x, lab in zip(X_tr, y_tr)}
    assert all(where[x.numpy().tobytes()] == tgt.classes[int(lab)] for x, lab in zip(tgt.X_val[:50], tgt.y_val[:50]))
    assert len(tgt.val_dataset()) == n_val and "validation" in tgt.summary()


def test_make_task_validation_part_depends_on_the_seed_only():
    a = make_task("transfer", val_size=0.2, seed=5)
    b = make_task("transfer", val_size=0.2, seed=5)
    c = make_task("transfer", val_size=0.2, seed=6)
    assert torch.equal(a.target.X_val, b.target.X_val) and torch.equal(a.target.X_train, b.target.X_train)
    assert _rows(a.target.X_val) != _rows(c.target.X_val)
    # the same validation part for every k: the labels are drawn from what remains
    k5 = make_task("transfer", k=5, val_size=0.2, seed=5)
    full = make_task("transfer", k=None, val_size=0.2, seed=5)
    assert torch.equal(k5.target.X_val, a.target.X_val) and torch.equal(full.target.X_val, a.target.X_val)
    assert _rows(k5.target.X_train) <= _rows(full.target.X_train)
    assert len(full.target.y_train) == 1600 and not _rows(full.target.X_train) & _rows(a.target.X_val)
    # a number of images; the test part never changes
    n = make_task("transfer", val_size=100, seed=5)
    assert len(n.target.y_val) == 100 and torch.equal(n.target.X_test, a.target.X_test)


def test_make_task_without_validation_is_unchanged():
    a, b = make_task("transfer", seed=1), make_task("transfer", seed=1, val_size=None)
    assert a.target.X_val is None and a.target.y_val is None and not a.target.has_validation
    assert torch.equal(a.target.X_train, b.target.X_train)
    # the labelled draw is the same as before validation parts existed
    X_tr, y_tr, _, _ = load_split("mnist5k")
    pool = np.flatnonzero(y_tr >= 5)
    expected = X_tr[pool[few_shot_indices(y_tr[pool], 10, seed=1)]]
    np.testing.assert_array_equal(a.target.X_train.numpy(), expected)
    with pytest.raises(ValueError, match="has no validation part; build it with val_size"):
        a.target.val_dataset()


def test_make_task_validation_part_of_transfer_digits_is_resized():
    t = make_task("transfer-digits", val_size=0.2, seed=0)
    assert t.target.X_val.shape[1:] == (1, 28, 28) and len(t.target.y_val) == 288
    assert (torch.bincount(t.target.y_val, minlength=10) >= 28).all()


def test_make_task_rejects_val_size_leaving_too_few_labels():
    with pytest.raises(ValueError, match="after carving the validation part \\(val_size=0.5\\)") as err:
        make_task("transfer", k=300, val_size=0.5)
    assert "smaller val_size" in str(err.value)
    with pytest.raises(ValueError, match="val_size"):
        make_task("distill", val_size=1.2)


def test_task_from_arrays_validation_part():
    rng = np.random.default_rng(0)
    X = rng.random((100, 16)).astype(np.float32)
    y = np.repeat(np.arange(4), 25)
    t = task_from_arrays(X, y, k=5, seed=0, val_size=0.25)
    assert len(t.y_test) == 20 and len(t.y_val) == 20 and (torch.bincount(t.y_train) == 5).all()
    assert (torch.bincount(t.y_val) == 5).all()
    assert not _rows(t.X_val) & _rows(t.X_train) and not _rows(t.X_val) & _rows(t.X_test)


# --------------------------------------------------------------------------- bounded messages, ranges


def test_huge_class_list_gives_a_short_message():
    from otviz.data import _subset
    from otviz.teachers import check_task, teacher_task

    classes = list(range(10**6))
    for call in (lambda: teacher_task({"task": {"dataset": "mnist5k", "classes": classes}}),
                 lambda: check_task({"dataset": "mnist5k", "classes": classes + [0]}),
                 lambda: check_task({"dataset": "mnist5k", "classes": classes + [-1]}),
                 lambda: _subset("mnist5k", range(10**6), k=None, seed=0)):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert len(msg) < 400, len(msg)  # was 7.9 MB
        assert "[0, 1, 2, 3, 4, 5, 6, 7, ...]" in msg and "items)" in msg
    with pytest.raises(ValueError, match=r"classes \[3, 11\] holds 11; .* between 0 and 9"):
        _subset("mnist5k", [3, 11], k=None, seed=0)  # was an IndexError


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70, 1.5, True])
def test_split_seed_out_of_range_is_a_clear_value_error(seed):
    y = np.repeat(np.arange(10), 50)
    with pytest.raises(ValueError, match=r"seed must be an integer between 0 and 4294967295"):
        split_indices(y, seed=seed)
    with pytest.raises(ValueError, match=r"seed must be an integer between 0 and 4294967295"):
        validation_indices(y, 0.2, seed=seed)
    from otviz.teachers import teacher_task

    with pytest.raises(ValueError, match=r"task.split_seed must be an integer between 0 and 4294967295"):
        teacher_task({"task": {"dataset": "digits", "classes": [0, 1], "split_seed": seed}})


@pytest.mark.parametrize("test_size", [1e-9, 0.999999])
def test_test_size_that_empties_a_class_names_the_valid_range(test_size):
    y = np.repeat(np.arange(10), 50)
    with pytest.raises(ValueError, match=r"pass a test_size between 0\.02 and 0\.98") as info:
        split_indices(y, test_size=test_size)
    assert "fewer than the 10 classes" in str(info.value)
    tr, te = split_indices(y, test_size=0.02)  # the ends of the range work
    assert len(te) == 10 and len(np.unique(y[te])) == 10
    tr, te = split_indices(y, test_size=0.98)
    assert len(tr) == 10 and len(np.unique(y[tr])) == 10
