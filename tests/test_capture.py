"""Tests for otviz.capture: hooks by module name and the functional view of neurons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from otviz.capture import capture, hooked, layer_names, neurons


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class Net(nn.Module):
    """Small conv net with nested containers: Sequential inside a Module inside a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(Block(1, 4), nn.MaxPool2d(2), Block(4, 6))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.fc(self.pool(h).flatten(1))


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fc(x)
        raise RuntimeError("boom")


def _no_hooks(model: nn.Module) -> bool:
    return all(len(m._forward_hooks) == 0 for m in model.modules())


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(5, 1, 8, 8)


# ----------------------------------------------------------------------------
# capture / hooked
# ----------------------------------------------------------------------------
def test_capture_nested_shapes_and_order(net, x):
    layers = ["fc", "features.0.conv", "features.2", "features.1"]
    acts = capture(net, x, layers)
    assert list(acts) == layers
    assert acts["features.0.conv"].shape == (5, 4, 8, 8)
    assert acts["features.1"].shape == (5, 4, 4, 4)
    assert acts["features.2"].shape == (5, 6, 4, 4)
    assert acts["fc"].shape == (5, 3)
    torch.testing.assert_close(acts["fc"], net(x))
    assert _no_hooks(net)


def test_capture_values_match_manual_forward(net, x):
    acts = capture(net, x, "features.0")
    expected = torch.relu(net.features[0].conv(x))
    torch.testing.assert_close(acts["features.0"], expected)


def test_capture_numpy_input_and_batches(net, x):
    full = capture(net, x.numpy().astype(np.float64), ["features.2", "fc"])
    assert full["fc"].dtype == torch.float32
    chunked = capture(net, x, ["features.2", "fc"], batch_size=2)
    for name in full:
        torch.testing.assert_close(chunked[name], full[name])


def test_capture_grad_flag(net, x):
    with_grad = capture(net, x, ["features.0.conv", "fc"], grad=True)
    assert all(t.grad_fn is not None for t in with_grad.values())
    with_grad["fc"].sum().backward()
    assert net.fc.weight.grad is not None
    no_grad = capture(net, x, ["features.0.conv", "fc"])
    assert all(t.grad_fn is None and not t.requires_grad for t in no_grad.values())


def test_capture_grad_true_inside_no_grad_block(net, x):
    with torch.no_grad():
        acts = capture(net, x, "fc", grad=True)
    assert acts["fc"].grad_fn is not None


def test_capture_keeps_train_mode(net, x):
    net.train()
    capture(net, x, "fc")
    assert net.training
    net.eval()
    capture(net, x, "fc")
    assert not net.training


def test_capture_deduplicates(net, x):
    acts = capture(net, x, ["fc", "fc", "features.1"])
    assert list(acts) == ["fc", "features.1"]


def test_unknown_layer_lists_closest_name(net, x):
    with pytest.raises(ValueError, match=r"features\.0\.conv") as info:
        capture(net, x, ["features.0.cnv"])
    assert "layer_names" in str(info.value)
    assert _no_hooks(net)


@pytest.mark.parametrize("layers", [[], ()])
def test_empty_layers(net, x, layers):
    with pytest.raises(ValueError, match="empty"):
        capture(net, x, layers)


def test_bad_arguments(net, x):
    with pytest.raises(TypeError, match="nn.Module"):
        capture(lambda t: t, x, "fc")
    with pytest.raises(TypeError, match="strings"):
        capture(net, x, ["fc", 3])
    with pytest.raises(ValueError, match="batch_size"):
        capture(net, x, "fc", batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        capture(net, x[:0], "fc")


def test_module_not_called_is_reported(x):
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)

        def forward(self, t):
            return self.used(t)

    model = Partial()
    with pytest.raises(ValueError, match="unused"):
        capture(model, torch.randn(3, 4), ["used", "unused"])
    assert _no_hooks(model)


def test_hooks_removed_when_forward_raises():
    model = Boom()
    # the model's own error (after its first layer ran) is raised as it is, with a note
    with pytest.raises(RuntimeError) as info:
        capture(model, torch.randn(2, 4), "fc")
    assert type(info.value) is RuntimeError and str(info.value) == "boom"
    assert _no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(model, ["fc"]) as feats:
            model(torch.randn(2, 4))
    assert "fc" in feats  # filled before the error
    assert _no_hooks(model)


def test_hooked_training_use(net, x):
    with hooked(net, ["features.2", "fc"]) as feats:
        assert not _no_hooks(net)
        logits = net(x)
    assert _no_hooks(net)
    assert feats["fc"] is not None
    torch.testing.assert_close(feats["fc"], logits)
    # gradients flow through the stored features
    feats["features.2"].pow(2).mean().backward()
    assert net.features[0].conv.weight.grad is not None
    assert net.fc.weight.grad is None  # fc comes after features.2


def test_hooked_tuple_output_and_repeated_calls():
    class Net2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 5, batch_first=True)
            self.shared = nn.Linear(5, 5)

        def forward(self, t):
            out, _ = self.rnn(t)
            h = self.shared(out[:, -1])
            return self.shared(h * 0 + 1.0)  # second call: constant input

    torch.manual_seed(0)
    model = Net2()
    acts = capture(model, torch.randn(4, 7, 3), ["rnn", "shared"])
    assert acts["rnn"].shape == (4, 7, 5)  # first tensor of (output, h_n)
    expected_last = model.shared(torch.ones(4, 5))
    torch.testing.assert_close(acts["shared"], expected_last.detach())


def test_nan_activation_names_layer():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with torch.no_grad():
        model[0].bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"'0'.*NaN"):
        capture(model, torch.randn(4, 3), ["0"])
    assert _no_hooks(model)


def test_layer_names(net):
    # the repeated blocks by default, when the model has them
    assert layer_names(net) == layer_names(net, "blocks") == ["features.0", "features.2"]
    assert layer_names(net, "leaf") == [
        "features.0.conv", "features.0.act", "features.1",
        "features.2.conv", "features.2.act", "pool", "fc",
    ]
    assert layer_names(net.fc) == [""]
    assert layer_names(net, "conv") == ["features.0.conv", "features.2.conv"]
    assert layer_names(net, "linear") == ["fc"]
    assert layer_names(net, nn.ReLU) == ["features.0.act", "features.2.act"]
    assert "features" in layer_names(net, "all")
    assert layer_names(nn.Linear(2, 2)) == [""]
    with pytest.raises(ValueError, match="kind"):
        layer_names(net, "dense")


# ----------------------------------------------------------------------------
# neurons
# ----------------------------------------------------------------------------
def test_neurons_dense():
    a = np.arange(12.0).reshape(4, 3)
    out = neurons(a)
    assert isinstance(out, np.ndarray) and out.shape == (3, 4)
    np.testing.assert_array_equal(out, a.T)
    out[0, 0] = -1.0
    assert a[0, 0] == 0.0  # not a view of the input


def test_neurons_conv_flatten_and_mean():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3, 4, 2))
    flat = neurons(a, "flatten")
    assert flat.shape == (3, 5 * 4 * 2)
    # sample-major, then position
    np.testing.assert_allclose(flat[1, :8], a[0, 1].ravel())
    np.testing.assert_allclose(flat[2, 8:16], a[1, 2].ravel())
    np.testing.assert_allclose(flat, a.transpose(1, 0, 2, 3).reshape(3, -1))
    mean = neurons(a, "mean")
    assert mean.shape == (3, 5)
    np.testing.assert_allclose(mean, a.mean(axis=(2, 3)).T)


def test_neurons_size_pools():
    a = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = neurons(a, size=2)
    assert out.shape == (1, 2 * 2 * 2)
    # top-left 2x2 block of sample 0: 0, 1, 4, 5
    assert out[0, 0].item() == pytest.approx(2.5)
    assert neurons(a, size=(1, 2)).shape == (1, 2 * 1 * 2)
    same = neurons(a, size=(4, 4))
    torch.testing.assert_close(same, neurons(a))


def test_neurons_three_dim():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 6))
    with pytest.raises(ValueError, match="ambiguous.*channel_axis=1 or channel_axis=-1"):
        neurons(a)
    assert neurons(a, channel_axis=1).shape == (3, 24)
    np.testing.assert_allclose(neurons(a, "mean", channel_axis=1), a.mean(axis=2).T)
    # the same numbers laid out (n, tokens, features) give the same neurons with channel_axis=-1
    np.testing.assert_allclose(neurons(a.transpose(0, 2, 1), "mean", channel_axis=-1), a.mean(axis=2).T)
    np.testing.assert_allclose(neurons(a.transpose(0, 2, 1), channel_axis=2), neurons(a, channel_axis=1))
    pooled = neurons(a, size=3, channel_axis=1)
    assert pooled.shape == (3, 12)
    np.testing.assert_allclose(pooled[0, 0], a[0, 0, :2].mean())
    with pytest.raises(ValueError, match="entries"):
        neurons(a, size=(3, 3), channel_axis=1)


def test_neurons_keeps_type_device_and_gradients():
    a = torch.randn(5, 3, 4, 4, requires_grad=True)
    for kwargs in ({}, {"spatial": "mean"}, {"size": 2}):
        out = neurons(a, **kwargs)
        assert isinstance(out, torch.Tensor) and out.grad_fn is not None
        out.sum().backward()
        assert a.grad is not None and a.grad.abs().sum() > 0
        a.grad = None
    dense = torch.randn(5, 7, requires_grad=True)
    neurons(dense).pow(2).sum().backward()
    torch.testing.assert_close(dense.grad, 2 * dense.detach())


@pytest.mark.parametrize(
    "act, kwargs, match",
    [
        (np.zeros((4, 3, 2, 2)), {"spatial": "max"}, "spatial"),
        (np.zeros((4,)), {}, "ndim"),
        (np.zeros((4, 3, 2, 2, 2, 2)), {}, "ndim"),
        (np.zeros((4, 3, 2)), {}, "ambiguous"),
        (np.zeros((4, 3, 2)), {"channel_axis": 0}, "feature axis"),
        (np.zeros((4, 3, 2)), {"channel_axis": 3}, "feature axis"),
        (np.zeros((0, 3)), {}, "empty"),
        (np.zeros((4, 3)), {"size": 2}, "dense"),
        (np.zeros((4, 3, 2, 2)), {"spatial": "mean", "size": 2}, "flatten"),
        (np.zeros((4, 3, 2, 2)), {"size": 0}, "positive"),
    ],
)
def test_neurons_errors(act, kwargs, match):
    with pytest.raises(ValueError, match=match):
        neurons(act, **kwargs)


def test_neurons_nonfinite():
    a = np.ones((3, 2))
    a[1, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        neurons(a)
    with pytest.raises(ValueError, match="non-finite"):
        neurons(torch.full((3, 2, 2, 2), float("nan")))


def test_neurons_type_errors():
    with pytest.raises(TypeError, match="numpy array or a torch.Tensor"):
        neurons([[1.0, 2.0]])
    with pytest.raises(TypeError, match="size"):
        neurons(np.zeros((2, 3, 4, 4)), size="4")


def test_capture_in_train_mode_leaves_batchnorm_running_statistics_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.LazyLinear(3)).train()
    net(torch.randn(4, 1, 6, 6))  # materialise the lazy layer, move the statistics off their init
    before = {k: v.clone() for k, v in net.state_dict().items()}
    acts = capture(net, torch.randn(8, 1, 6, 6) * 5 + 3, ["1"])
    after = net.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert net.training
    # it normalised with the probe batch's own statistics, as train mode does
    got = acts["1"].transpose(0, 1).reshape(4, -1)
    assert torch.allclose(got.mean(1), net[1].bias.detach(), atol=1e-5)


class _RaisesAfterFirstLayer(nn.Module):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)
        self.exc = exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        raise self.exc


@pytest.mark.parametrize("exc", [IndexError("index 7 is out of bounds for dimension 0"),
                                 RuntimeError("boom")])
def test_model_error_after_first_layer_keeps_type_and_message(exc):
    model = _RaisesAfterFirstLayer(exc)
    with pytest.raises(type(exc)) as info:
        capture(model, torch.randn(3, 4), "fc")
    assert type(info.value) is type(exc)
    assert str(info.value) == str(exc)  # not relabelled as an input error
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1
    assert "raised in _RaisesAfterFirstLayer's forward after its first layer 'fc' (Linear) ran" in notes[0]
    assert "float32 (3, 4)" in notes[0]
    assert "pass floats" not in notes[0]
    assert _no_hooks(model)


def test_first_layer_mismatch_is_a_value_error_naming_the_fix():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU())
    # Flatten (no weights) runs, then the first Linear refuses the shape: an input error
    with pytest.raises(ValueError, match=r"failed on the probe inputs \(inputs float32 \(2, 5\)\).*"
                                         r"Linear of 4 inputs: pass floats of shape \(n, 4\)") as info:
        capture(model, torch.randn(2, 5), "2")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert _no_hooks(model)


def test_model_error_inside_a_submodule_names_it():
    class Picky(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h[:, torch.tensor([9])]  # IndexError: the model's own bug

    model = nn.Sequential(nn.Linear(4, 4), Picky())
    with pytest.raises(IndexError) as info:
        capture(model, torch.randn(2, 4), "0")
    assert "index 9 is out of bounds" in str(info.value)
    assert info.value.__notes__[0].startswith(
        "otviz.capture: raised in module '1' (Picky) after its first layer '0' (Linear) ran")
    assert not torch.nn.modules.module._global_forward_hooks  # the progress hook is gone


def test_model_error_without_exception_notes_keeps_type_and_chains(monkeypatch):
    """Python 3.10 has no ``add_note``: the same exception type, the note in its message."""
    import importlib

    cap = importlib.import_module("otviz.capture")
    monkeypatch.setattr(cap, "_HAS_NOTES", False)
    model = _RaisesAfterFirstLayer(IndexError("index 7 is out of bounds"))
    with pytest.raises(IndexError) as info:
        capture(model, torch.randn(3, 4), "fc")
    first, note = str(info.value).split("\n")
    assert first == "index 7 is out of bounds"
    assert note.startswith("otviz.capture: raised in _RaisesAfterFirstLayer's forward after its first "
                           "layer 'fc' (Linear) ran")
    assert info.value.__cause__ is model.exc
