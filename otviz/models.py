"""Small model families with a width knob and layer names meant for alignment.

Both families expose the same surface:

- ``model.features`` holds named blocks whose *outputs are post-activation*,
  so a forward hook on ``"features.conv2"`` (or ``"features.fc1"``) captures
  the neurons of that layer directly;
- ``model.head`` is the final linear classifier;
- ``model.alignable_layers`` lists the block names worth aligning, from input
  to output;
- ``model.layer_widths`` maps each of them to its number of neurons
  (channels or units);
- ``model.arch`` and ``model.config`` hold the registry name and the
  constructor arguments, so :func:`build_model` ``(model.arch, **model.config)``
  rebuilds the same architecture (checkpoints store both).

Nothing here is device-specific: move a model with ``.to(device)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn

__all__ = [
    "SmallCNN",
    "MLP",
    "MODELS",
    "build_model",
    "replace_head",
    "scaled_width",
    "accuracy",
]


def scaled_width(base: int, width: float) -> int:
    """Number of neurons of a layer: ``round(base * width)``, at least 1."""
    return max(1, int(round(base * width)))


def _check_width(width: Any) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive finite number (1.0 = base width), got {width!r}")
    return float(width)


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class _Family(nn.Module):
    """Common surface of the model families (not instantiated directly)."""

    arch: str = ""
    alignable_layers: list[str]
    features: nn.Sequential
    head: nn.Linear
    config: dict[str, Any]

    @property
    def layer_widths(self) -> dict[str, int]:
        """Number of neurons (channels or units) of each alignable layer."""
        return dict(self._widths)

    @property
    def num_classes(self) -> int:
        """Number of outputs of the head."""
        return int(self.head.out_features)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


class SmallCNN(_Family):
    """A small convolutional network for 1-channel digit images.

    Architecture (``c = (16, 32, 64)`` channels times `width`)::

        features.conv1  Conv2d 3x3 (pad 1) + BatchNorm2d + ReLU   -> c1 x H x W
        features.pool1  MaxPool2d 2                                -> c1 x H/2 x W/2
        features.conv2  Conv2d 3x3 + BatchNorm2d + ReLU            -> c2 x H/2 x W/2
        features.pool2  MaxPool2d 2                                -> c2 x H/4 x W/4
        features.conv3  Conv2d 3x3 + BatchNorm2d + ReLU            -> c3 x H/4 x W/4
        pool            global average pooling                     -> c3
        head            Linear(c3, num_classes)

    About 24k parameters at width 1 and 10 classes. Any input size of at
    least 4x4 works (28x28 MNIST, 8x8 digits).

    Parameters
    ----------
    width : float, default 1.0
        Width multiplier; each layer has ``max(1, round(base * width))``
        channels.
    num_classes : int, default 10
        Outputs of the head.
    in_channels : int, default 1
        Channels of the input images.

    Attributes
    ----------
    alignable_layers : list of str
        ``["features.conv1", "features.conv2", "features.conv3"]``.
    """

    arch = "cnn"
    BASE_CHANNELS: tuple[int, int, int] = (16, 32, 64)

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        width = _check_width(width)
        num_classes = _check_positive_int(num_classes, "num_classes")
        in_channels = _check_positive_int(in_channels, "in_channels")
        self.config = {"width": width, "num_classes": num_classes, "in_channels": in_channels}
        c1, c2, c3 = (scaled_width(b, width) for b in self.BASE_CHANNELS)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
                    bn=nn.BatchNorm2d(cout),
                    relu=nn.ReLU(),
                )
            )

        self.features = nn.Sequential(
            OrderedDict(
                conv1=block(in_channels, c1),
                pool1=nn.MaxPool2d(2),
                conv2=block(c1, c2),
                pool2=nn.MaxPool2d(2),
                conv3=block(c2, c3),
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c3, num_classes)
        self.alignable_layers = ["features.conv1", "features.conv2", "features.conv3"]
        self._widths = dict(zip(self.alignable_layers, (c1, c2, c3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes) for images of shape (N, C, H, W)."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"SmallCNN expects images of shape (N, {self.config['in_channels']}, H, W), "
                f"got {tuple(x.shape)}"
            )
        h = self.features(x)
        return self.head(torch.flatten(self.pool(h), 1))


class MLP(_Family):
    """A two-hidden-layer perceptron; flattens its input.

    Architecture (``u = (128, 64)`` units times `width`)::

        features.fc1  Linear(in_features, u1) + ReLU
        features.fc2  Linear(u1, u2) + ReLU
        head          Linear(u2, num_classes)

    Parameters
    ----------
    width : float, default 1.0
        Width multiplier; each hidden layer has ``max(1, round(base * width))``
        units.
    num_classes : int, default 10
        Outputs of the head.
    in_features : int, default 784
        Size of the flattened input (784 for 28x28 images, 64 for 8x8).

    Attributes
    ----------
    alignable_layers : list of str
        ``["features.fc1", "features.fc2"]``.
    """

    arch = "mlp"
    BASE_UNITS: tuple[int, int] = (128, 64)

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        width = _check_width(width)
        num_classes = _check_positive_int(num_classes, "num_classes")
        in_features = _check_positive_int(in_features, "in_features")
        self.config = {"width": width, "num_classes": num_classes, "in_features": in_features}
        u1, u2 = (scaled_width(b, width) for b in self.BASE_UNITS)
        self.features = nn.Sequential(
            OrderedDict(
                fc1=nn.Sequential(OrderedDict(linear=nn.Linear(in_features, u1), relu=nn.ReLU())),
                fc2=nn.Sequential(OrderedDict(linear=nn.Linear(u1, u2), relu=nn.ReLU())),
            )
        )
        self.head = nn.Linear(u2, num_classes)
        self.alignable_layers = ["features.fc1", "features.fc2"]
        self._widths = dict(zip(self.alignable_layers, (u1, u2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes); inputs are flattened to (N, in_features)."""
        x = torch.flatten(x, 1)
        if x.shape[1] != self.config["in_features"]:
            raise ValueError(
                f"MLP expects inputs with {self.config['in_features']} values each "
                f"(after flattening), got {x.shape[1]}"
            )
        return self.head(self.features(x))


#: Registry of model families: name -> constructor.
MODELS: dict[str, Callable[..., nn.Module]] = {"cnn": SmallCNN, "mlp": MLP}


def build_model(arch: str, width: float = 1.0, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a model of a registered family.

    Parameters
    ----------
    arch : {"cnn", "mlp"}
        Family name, see :data:`MODELS`.
    width : float, default 1.0
        Width multiplier.
    num_classes : int, default 10
        Outputs of the head.
    **kwargs
        Other constructor arguments (``in_channels`` for ``"cnn"``,
        ``in_features`` for ``"mlp"``).

    Returns
    -------
    torch.nn.Module
        A fresh model (random initialisation from torch's global RNG).

    Raises
    ------
    ValueError
        If `arch` is unknown (the message lists the families) or an argument
        is invalid.

    Examples
    --------
    >>> m = build_model("cnn", width=0.25, num_classes=5)
    >>> m.alignable_layers, m.layer_widths["features.conv3"]
    (['features.conv1', 'features.conv2', 'features.conv3'], 16)
    """
    if not isinstance(arch, str) or arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; valid architectures: {', '.join(map(repr, MODELS))}")
    cls = MODELS[arch]
    try:
        return cls(width=width, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        import inspect

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"invalid arguments for architecture {arch!r} ({exc}); valid arguments: {', '.join(params)}") from None


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give a model a freshly initialised head with `num_classes` outputs.

    The features (and their weights) are kept; this is the usual starting
    point of inductive transfer. The new head lives on the same device and
    dtype as the old one and is initialised from torch's global RNG.

    Parameters
    ----------
    model : nn.Module
        A model of one of the families (anything with a ``head`` Linear).
    num_classes : int
        Outputs of the new head.

    Returns
    -------
    nn.Module
        The same model object, modified in place (``model.config`` is
        updated too).
    """
    num_classes = _check_positive_int(num_classes, "num_classes")
    old = getattr(model, "head", None)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"model has no Linear 'head' to replace (found {type(old).__name__})")
    model.head = nn.Linear(
        old.in_features, num_classes, bias=old.bias is not None,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    if isinstance(getattr(model, "config", None), dict):
        model.config["num_classes"] = num_classes
    return model


@torch.no_grad()
def accuracy(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
) -> float:
    """Classification accuracy of `model` on (`X`, `y`), in eval mode.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits. Its train/eval mode is restored
        afterwards.
    X : torch.Tensor
        Inputs.
    y : torch.Tensor
        Integer labels.
    batch_size : int, default 1000
        Evaluation batch size.
    device : str or torch.device, optional
        Where to run; default: the device of the model's parameters.

    Returns
    -------
    float
        Fraction of correctly classified samples, in [0, 1].
    """
    if len(X) != len(y) or len(X) == 0:
        raise ValueError(f"need as many labels as inputs (and at least one): {len(X)} inputs, {len(y)} labels")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(X), batch_size):
            xb = X[i : i + batch_size].to(device)
            yb = y[i : i + batch_size].to(device)
            correct += int((model(xb).argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / len(X)
