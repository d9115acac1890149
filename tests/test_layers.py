"""Tests for otviz.layers: linear CKA and layer x layer distance tables."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import ortho_group
from torch import nn

from otviz.layers import cka, layer_distances
from otviz.capture import capture, neurons


def naive_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Direct formula with the centring matrix H, no shortcuts."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda A, B: np.trace(A @ H @ B @ H)  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------
# cka
# ----------------------------------------------------------------------------
def test_cka_self_is_one(rng):
    X = rng.normal(size=(30, 8))
    assert cka(X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("p, q", [(5, 7), (80, 60), (3, 200)])
def test_cka_matches_naive_formula(rng, p, q):
    # (5, 7): feature-space form; (80, 60), (3, 200): Gram form
    X = rng.normal(size=(20, p))
    Y = np.tanh(X[:, :1] @ rng.normal(size=(1, q))) + 0.5 * rng.normal(size=(20, q))
    assert cka(X, Y) == pytest.approx(naive_cka(X, Y), rel=1e-10)


def test_cka_invariances(rng):
    X = rng.normal(size=(40, 6))
    Y = X @ rng.normal(size=(6, 9)) + rng.normal(size=(40, 9))
    base = cka(X, Y)
    Q = ortho_group.rvs(6, random_state=1)
    assert cka(X @ Q, Y) == pytest.approx(base, rel=1e-10)
    assert cka(7.5 * X, Y) == pytest.approx(base, rel=1e-10)
    assert cka(X + 3.0, Y) == pytest.approx(base, rel=1e-10)
    assert cka(Y, X) == pytest.approx(base, rel=1e-12)
    # not invariant to an anisotropic rescaling
    assert abs(cka(X * np.arange(1, 7) ** 2, Y) - base) > 1e-3


def test_cka_range_and_independence(rng):
    values = [cka(rng.normal(size=(25, 4)), rng.normal(size=(25, 30))) for _ in range(20)]
    assert all(0.0 <= v <= 1.0 for v in values)
    # independent noise is far from identical
    X = rng.normal(size=(500, 3))
    assert cka(X, rng.normal(size=(500, 3))) < 0.05


def test_cka_torch_and_conv_input(rng):
    A = rng.normal(size=(10, 3, 4, 4))
    B = rng.normal(size=(10, 5))
    expected = naive_cka(A.reshape(10, -1), B)
    assert cka(torch.tensor(A, dtype=torch.float64), B) == pytest.approx(expected, rel=1e-10)
    t = torch.tensor(A, requires_grad=True)
    assert cka(t, t) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "X, Y, exc, match",
    [
        (np.ones((5, 3)), np.ones((4, 3)), ValueError, "same samples"),
        (np.ones((1, 3)), np.ones((1, 3)), ValueError, "at least 2"),
        (np.arange(5.0), np.ones((5, 3)), ValueError, "reshape"),
        (np.full((5, 3), 2.0), np.arange(15.0).reshape(5, 3), ValueError, "zero variance"),
        (np.array([[0.0, 1], [np.nan, 2], [1, 1]]), np.ones((3, 2)), ValueError, "non-finite"),
        ([[1.0, 2.0], [3.0, 4.0]], np.ones((2, 2)), TypeError, "numpy array"),
    ],
)
def test_cka_errors(X, Y, exc, match):
    with pytest.raises(exc, match=match):
        cka(X, Y)


def test_cka_constant_detected_despite_rounding():
    X = np.full((3, 2), 0.1)  # mean of 0.1s is not exactly 0.1 in floating point
    with pytest.raises(ValueError, match="zero variance"):
        cka(X, np.arange(6.0).reshape(3, 2))


# ----------------------------------------------------------------------------
# layer_distances
# ----------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)  # 8x8 maps
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)  # 4x4 maps
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


LAYERS = ["conv1", "conv2", "head.1"]


@pytest.fixture
def probe() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(12, 1, 8, 8)


@pytest.fixture
def teacher() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(8).eval()


def test_layer_distances_ot_identical_models(teacher, probe):
    twin = copy.deepcopy(teacher)
    df = layer_distances(teacher, twin, probe, LAYERS, LAYERS)
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == LAYERS and list(df.columns) == LAYERS
    assert df.shape == (3, 3)
    assert np.all(np.isfinite(df.to_numpy()))
    np.testing.assert_allclose(np.diag(df.to_numpy()), 0.0, atol=1e-8)
    off = df.to_numpy()[~np.eye(3, dtype=bool)]
    assert off.min() > 1e-6  # different layers are at a positive distance
    assert df.attrs["measure"] == "ot" and df.attrs["spatial"] == "mean"
    assert df.attrs["n_inputs"] == 12


def test_layer_distances_ot_matches_transport(teacher, probe):
    from otviz.transport import align

    torch.manual_seed(3)
    student = ConvNet(4).eval()
    df = layer_distances(teacher, student, probe, ["conv1", "conv2"], ["conv2"],
                         measure="ot-raw", normalize="unit")
    assert df.shape == (2, 1)
    assert df.attrs["align_kwargs"] == {"normalize": "unit"}
    t = capture(teacher, probe, "conv1")["conv1"]
    s = capture(student, probe, "conv2")["conv2"]
    expected = align(neurons(t, "mean"), neurons(s, "mean"), normalize="unit").distance
    assert df.loc["conv1", "conv2"] == pytest.approx(float(expected), rel=1e-9)
    # the default measure is the score of the same alignment
    score = layer_distances(teacher, student, probe, ["conv1", "conv2"], ["conv2"])
    assert score.attrs["measure"] == "ot" and score.attrs["converged"].all()
    assert score.loc["conv1", "conv2"] == pytest.approx(
        align(neurons(t, "mean"), neurons(s, "mean")).score, rel=1e-12)
    # the score has its own geometry: cost/normalize are refused with the reason
    with pytest.raises(ValueError, match="measure='ot-raw'"):
        layer_distances(teacher, student, probe, "conv1", "conv2", normalize="unit")


def test_layer_distances_ot_permuted_channels(teacher, probe):
    # a student whose conv1 channels are the teacher's in another order computes
    # the same function: OT between the two conv1 layers is zero.
    student = copy.deepcopy(teacher)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        student.conv1.weight.copy_(teacher.conv1.weight[perm])
        student.conv1.bias.copy_(teacher.conv1.bias[perm])
        student.conv2.weight.copy_(teacher.conv2.weight[:, perm])
    df = layer_distances(teacher, student, probe, "conv1", "conv1", spatial="flatten")
    assert df.loc["conv1", "conv1"] == pytest.approx(0.0, abs=1e-8)
    torch.testing.assert_close(student(probe), teacher(probe))


def test_layer_distances_cka_identical_models(teacher, probe):
    df = layer_distances(teacher, copy.deepcopy(teacher), probe, LAYERS, LAYERS, measure="cka")
    np.testing.assert_allclose(np.diag(df.to_numpy()), 1.0, atol=1e-10)
    assert ((df.to_numpy() >= 0) & (df.to_numpy() <= 1)).all()
    assert df.attrs["measure"] == "cka"
    # the default spatial="mean" uses channel means as features
    acts = capture(teacher, probe, ["conv1", "head.1"])
    expected = cka(acts["conv1"].mean(dim=(2, 3)), acts["head.1"])
    assert df.loc["conv1", "head.1"] == pytest.approx(expected, rel=1e-9)
    flat = layer_distances(teacher, teacher, probe, "conv1", "head.1", "cka", spatial="flatten")
    assert flat.iloc[0, 0] == pytest.approx(cka(acts["conv1"], acts["head.1"]), rel=1e-9)


def test_flatten_with_different_map_sizes_needs_size(teacher, probe):
    with pytest.raises(ValueError, match=r"size=.*spatial='mean'"):
        layer_distances(teacher, teacher, probe, ["conv1"], ["conv2"], spatial="flatten")
    df = layer_distances(teacher, teacher, probe, ["conv1"], ["conv2"], spatial="flatten", size=4)
    assert df.shape == (1, 1) and df.iloc[0, 0] > 0
    assert df.attrs["size"] == 4


def test_flatten_dense_against_conv_is_rejected(teacher, probe):
    with pytest.raises(ValueError, match="spatial='mean'"):
        layer_distances(teacher, teacher, probe, ["conv2"], ["head.1"], spatial="flatten")


def test_layer_distances_argument_errors(teacher, probe):
    with pytest.raises(ValueError, match=r"measure.*\['ot', 'ot-raw', 'cka'\]"):
        layer_distances(teacher, teacher, probe, "conv1", "conv1", measure="l2")
    with pytest.raises(ValueError, match="measure='cka'"):
        layer_distances(teacher, teacher, probe, "conv1", "conv1", "cka", method="sinkhorn")
    with pytest.raises(ValueError, match="spatial"):
        layer_distances(teacher, teacher, probe, "conv1", "conv1", spatial="max")
    with pytest.raises(ValueError, match="spatial='flatten'"):
        layer_distances(teacher, teacher, probe, "conv1", "conv1", size=4)
    with pytest.raises(ValueError, match="conv1"):
        layer_distances(teacher, teacher, probe, "conv_1", "conv1")
