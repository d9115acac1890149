"""Tests of otviz.models: named layers, widths, shapes, registry, head replacement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otviz.models import MLP, MODELS, SmallCNN, accuracy, build_model, replace_head, scaled_width


def _hooked_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.detach()))
        for name in model.alignable_layers
    ]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    out["logits"] = logits
    return out


@pytest.mark.parametrize("width, channels", [(1.0, (16, 32, 64)), (0.25, (4, 8, 16))])
@pytest.mark.parametrize("hw", [28, 8])
def test_cnn_named_layers_shapes_and_post_activation(width, channels, hw):
    torch.manual_seed(0)
    model = build_model("cnn", width=width, num_classes=5).eval()
    assert model.alignable_layers == ["features.conv1", "features.conv2", "features.conv3"]
    assert list(model.layer_widths.values()) == list(channels)
    names = dict(model.named_modules())
    for n in ("features.pool1", "features.pool2", "head"):
        assert n in names
    out = _hooked_outputs(model, torch.rand(3, 1, hw, hw))
    c1, c2, c3 = channels
    assert out["features.conv1"].shape == (3, c1, hw, hw)
    assert out["features.conv2"].shape == (3, c2, hw // 2, hw // 2)
    assert out["features.conv3"].shape == (3, c3, hw // 4, hw // 4)
    assert out["logits"].shape == (3, 5)
    for n in model.alignable_layers:  # hooks see the post-ReLU map
        assert out[n].min() >= 0 and (out[n] == 0).any()


@pytest.mark.parametrize("width, units", [(1.0, (128, 64)), (0.25, (32, 16))])
def test_mlp_named_layers_flatten_and_shapes(width, units):
    torch.manual_seed(0)
    model = build_model("mlp", width=width)
    assert model.alignable_layers == ["features.fc1", "features.fc2"]
    out = _hooked_outputs(model, torch.rand(4, 1, 28, 28))
    assert out["features.fc1"].shape == (4, units[0])
    assert out["features.fc2"].shape == (4, units[1])
    assert out["logits"].shape == (4, 10)
    assert out["features.fc1"].min() >= 0
    # flat and image-shaped inputs give the same logits
    x = torch.rand(2, 784)
    torch.testing.assert_close(model(x), model(x.view(2, 1, 28, 28)))


def test_width_rounding_never_below_one():
    assert scaled_width(16, 0.01) == 1
    assert scaled_width(64, 0.25) == 16
    m = SmallCNN(width=0.01)
    assert min(m.layer_widths.values()) == 1
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_config_rebuilds_same_architecture():
    for arch, kw in (("cnn", {"width": 0.5, "num_classes": 7}), ("mlp", {"width": 2.0, "in_features": 64})):
        m = build_model(arch, **kw)
        assert m.arch == arch
        clone = build_model(m.arch, **m.config)
        clone.load_state_dict(m.state_dict())  # strict: same names and shapes
        assert clone.config == m.config


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError) as err:
        build_model("resnet18")
    for name in MODELS:
        assert repr(name) in str(err.value)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "wide", True])
def test_bad_width_is_rejected(bad):
    with pytest.raises(ValueError, match="width"):
        build_model("cnn", width=bad)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", num_classes=0)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("mlp", in_channels=3)


def test_input_shape_errors_are_explicit():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        SmallCNN()(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="784"):
        MLP()(torch.rand(2, 1, 8, 8))


def test_replace_head_keeps_features():
    torch.manual_seed(0)
    m = build_model("cnn", num_classes=5)
    before = {k: v.clone() for k, v in m.features.state_dict().items()}
    x = torch.rand(2, 1, 28, 28)
    m.eval()
    feats = m.features(x)
    out = replace_head(m, 3)
    assert out is m and m.head.out_features == 3 and m.config["num_classes"] == 3
    for k, v in m.features.state_dict().items():
        assert torch.equal(v, before[k])
    torch.testing.assert_close(m.features(x), feats)
    assert m(x).shape == (2, 3)
    with pytest.raises(ValueError, match="num_classes"):
        replace_head(m, 0)
    with pytest.raises(ValueError, match="head"):
        replace_head(nn.Linear(2, 2), 3)


def test_accuracy_counts_correct_predictions_and_restores_mode():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    model.train()
    assert accuracy(model, X, y, batch_size=3) == 0.75
    assert model.training


def test_one_training_step_updates_every_parameter():
    torch.manual_seed(0)
    m = build_model("cnn", width=0.25)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.detach().clone() for p in m.parameters()]
    loss = nn.functional.cross_entropy(m(torch.rand(8, 1, 28, 28)), torch.arange(8) % 10)
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_models_run_on_cuda():
    for arch in MODELS:
        m = build_model(arch).to("cuda")
        assert m(torch.rand(2, 1, 28, 28, device="cuda")).device.type == "cuda"
