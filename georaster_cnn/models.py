"""classify: CNN architectures behind a tiny registry, and device selection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from georaster_cnn.errors import InputError

__all__ = [
    "ARCHITECTURES",
    "Device",
    "SmallCNN",
    "build_model",
    "register_architecture",
    "resolve_device",
]

Device = Literal["auto", "cpu", "cuda", "mps"]

#: name -> constructor ``(in_channels, n_classes, patch_size, **hparams) -> nn.Module``
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(
    name: str,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator adding an architecture to :data:`ARCHITECTURES` under ``name``."""

    def deco(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ARCHITECTURES[name] = cls
        return cls

    return deco


def build_model(
    arch: str, in_channels: int, n_classes: int, patch_size: int, **hparams: Any
) -> nn.Module:
    """Instantiate a registered architecture.

    Raises
    ------
    InputError
        Unknown architecture name.
    """
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise InputError(
            f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return cls(in_channels=in_channels, n_classes=n_classes, patch_size=patch_size, **hparams)


@register_architecture("cnn")
class SmallCNN(nn.Module):
    """A small, fast CNN for ``p x p`` patches with any number of channels.

    ``len(widths)`` blocks of conv3x3-BN-ReLU-conv3x3-BN-ReLU, each but the last
    followed by 2x2 max-pooling, then global average pooling, dropout and a linear
    classifier. Global pooling makes it independent of the patch size.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        patch_size: int = 64,
        widths: tuple[int, ...] | list[int] = (16, 32, 64, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 2:
            raise InputError(
                f"need >= 1 input channel and >= 2 classes; found {in_channels} and {n_classes}"
            )
        layers: list[nn.Module] = []
        c = in_channels
        for k, w in enumerate(widths):
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            if k < len(widths) - 1 and patch_size >= 2 ** (k + 2):
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resolve_device(device: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|mps`` (or ``cuda:N``) to an available :class:`torch.device`.

    Raises
    ------
    InputError
        The device was asked for explicitly but is not available.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"device {device!r} asked for, but this torch build sees no CUDA GPU; "
                "use --device cpu or auto"
            )
        return torch.device(device)
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(
                "device 'mps' asked for, but Apple MPS is not available; use cpu or auto"
            )
        return torch.device("mps")
    raise InputError(f"unknown device {device!r}; choose auto, cpu, cuda or mps")
