"""classify: CNN architectures behind a tiny registry.

Registered architectures (``build_model(name, *, in_channels, n_classes, patch_size, **hparams)``):

``cnn``
    :class:`SmallCNN`: small and fast (padded convolutions); the default until
    ``cnn_dense`` replaced it. Every model file made before says ``cnn`` and keeps
    meaning this network.
``cnn_dense``
    :class:`DenseCNN`, a small CNN whose output for a window depends only on the
    window's own pixels (valid convolutions), so :func:`~georaster_cnn.predict`
    can evaluate it densely: the trunk once per block, whatever the stride. At
    least as accurate as ``cnn`` on the sample scene and the chip-structure check,
    cheaper to train (``docs/resolution-and-cost.md``): the default for new models.
``resnet``
    :class:`ResNet`, a deeper residual CNN (BasicBlocks with identity shortcuts).
``mlp``
    :class:`MLP`, a baseline on the flattened window that ignores the grid's
    neighbourhood structure; compare it with a CNN to see whether local
    patterns matter (see ``docs/image-like.md``).

New models get ``options.DEFAULT_ARCH``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from georaster_cnn.errors import InputError
from georaster_cnn.options import (
    DEFAULT_PATCH,
    MAX_PATCH_SIZE,
    MAX_WINDOW_BYTES,
    patch_size_problem,
)

__all__ = [
    "ARCHITECTURES",
    "MLP",
    "DenseCNN",
    "MAX_PATCH_SIZE",
    "MAX_WINDOW_BYTES",
    "DenseGeometry",
    "ResNet",
    "SmallCNN",
    "build_model",
    "check_arch",
    "dense_geometry",
    "patch_size_problem",
    "register_architecture",
]


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


def check_arch(arch: str) -> str:
    """A registered architecture name, or an :class:`InputError` listing them."""
    if arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        )
    return arch


def build_model(
    arch: str, *, in_channels: int, n_classes: int, patch_size: int = DEFAULT_PATCH, **hparams: Any
) -> nn.Module:
    """Instantiate a registered architecture.

    Parameters
    ----------
    arch
        A registered name (:data:`ARCHITECTURES`).
    in_channels, n_classes, patch_size
        Bands in, classes out, and the window side in pixels.
    **hparams
        The architecture's own hyper-parameters (e.g. ``widths=``).

    Examples
    --------
    >>> net = build_model("cnn_dense", in_channels=4, n_classes=3)  # doctest: +SKIP

    Raises
    ------
    InputError
        Unknown architecture name, or a patch size beyond :data:`MAX_PATCH_SIZE` or
        whose windows would exceed :data:`MAX_WINDOW_BYTES` (see
        :func:`patch_size_problem`).
    """
    cls = ARCHITECTURES[check_arch(arch)]
    problem = patch_size_problem(patch_size, in_channels)
    if problem is not None:
        raise InputError(
            f"patch_size {problem}. Use a smaller patch size (the default is {DEFAULT_PATCH}); "
            "windows this large would not fit in memory on every tile"
        )
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
        patch_size: int = DEFAULT_PATCH,
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


def _check_sizes(in_channels: int, n_classes: int) -> None:
    if in_channels < 1 or n_classes < 2:
        raise InputError(
            f"need >= 1 input channel and >= 2 classes; found {in_channels} and {n_classes}"
        )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU (He et al. 2016).

    The shortcut is the identity, or a strided 1x1 convolution with batch norm
    where the block changes the width or the resolution.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register_architecture("resnet")
class ResNet(nn.Module):
    """A deeper residual CNN for ``p x p`` patches with any number of channels.

    A conv3x3-BN-ReLU stem, then one stage per entry of ``widths``, each of
    ``blocks`` :class:`BasicBlock` s; every stage but the first starts with a
    stride-2 block (halving the resolution) while the feature map is still at
    least 4 pixels a side, so patches down to 8 pixels (and smaller) work.
    Global average pooling, dropout and a linear classifier follow, which makes
    the network independent of the patch size.

    Parameters
    ----------
    in_channels, n_classes
        Input bands and output classes.
    patch_size
        Window side in pixels; decides where downsampling stops.
    widths
        Channels of each stage.
    blocks
        BasicBlocks per stage.
    dropout
        Dropout before the classifier.

    Raises
    ------
    InputError
        Fewer than one channel or two classes, empty ``widths`` or ``blocks < 1``.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        patch_size: int = DEFAULT_PATCH,
        widths: tuple[int, ...] | list[int] = (32, 64, 128, 128),
        blocks: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, n_classes)
        if len(widths) == 0 or blocks < 1:
            raise InputError(
                f"resnet needs at least one stage and one block per stage; found widths "
                f"{list(widths)} and blocks={blocks}. Pass e.g. widths=[32, 64] and blocks=2."
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c, size = widths[0], patch_size
        for k, w in enumerate(widths):
            stride = 2 if k > 0 and size >= 4 else 1
            size = (size + 1) // 2 if stride == 2 else size
            layers = [BasicBlock(c, w, stride)]
            layers += [BasicBlock(w, w) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_architecture("mlp")
class MLP(nn.Module):
    """A baseline on the flattened window: every cell of every band is an unrelated input.

    Flatten -> Linear(C*p*p, hidden) -> ReLU -> Dropout -> Linear(hidden, hidden)
    -> ReLU -> Dropout -> Linear(hidden, n_classes). Unlike a CNN it has no notion
    of neighbouring cells, and it is tied to one patch size. Its parameter count
    grows with ``p**2 * C``: the first layer alone has ``C*p*p*hidden`` weights
    (3.1 million for 3 bands, ``p = 64``, ``hidden = 256``).

    Parameters
    ----------
    in_channels, n_classes
        Input bands and output classes.
    patch_size
        Window side in pixels (required: it fixes the input layer's size).
    hidden
        Width of the two hidden layers.
    dropout
        Dropout after each hidden layer.

    Raises
    ------
    InputError
        Fewer than one channel or two classes, ``patch_size < 1`` or ``hidden < 1``.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        patch_size: int = DEFAULT_PATCH,
        hidden: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, n_classes)
        if patch_size < 1 or hidden < 1:
            raise InputError(
                f"mlp needs patch_size >= 1 and hidden >= 1; found {patch_size} and {hidden}"
            )
        self.patch_size = patch_size
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * patch_size * patch_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.patch_size, self.patch_size):
            raise InputError(
                f"mlp was built for {self.patch_size} x {self.patch_size} windows; found "
                f"{x.shape[-2]} x {x.shape[-1]}. Use the model's patch size."
            )
        return self.net(x)


@dataclass(frozen=True)
class DenseGeometry:
    """Receptive-field geometry of a dense-capable trunk (one axis; both are the same).

    Feature pixel ``k`` of the trunk's output on an input that starts at pixel 0
    depends on input pixels ``offset + D*k`` to ``offset + D*k + receptive_field - 1``
    and on nothing else.

    Attributes
    ----------
    downsampling
        ``D``, the trunk's total downsampling factor (a power of two).
    receptive_field
        Side of the input square one feature pixel sees.
    offset
        Input pixel where feature pixel 0's receptive field starts (0 for valid
        convolutions without padding).
    """

    downsampling: int
    receptive_field: int
    offset: int = 0

    def feature_size(self, patch: int) -> int:
        """Feature pixels (per side) of one ``patch x patch`` window: ``(p - rf) // D + 1``."""
        return (patch - self.receptive_field) // self.downsampling + 1


@register_architecture("cnn_dense")
class DenseCNN(nn.Module):
    """A small CNN whose output for a window depends only on the window's own pixels.

    One stage per entry of ``widths``, each of ``convs`` valid (unpadded) conv3x3-BN-ReLU
    layers; a 2x2 max-pooling (step 2) between stages; then a global average over
    the window's feature map, dropout and a linear classifier. Stages are added
    while their receptive field fits in the patch, so small patches get fewer stages
    (the attribute ``widths`` lists the stages built).

    Because nothing is padded, feature pixel ``k`` depends on input pixels
    ``D*k .. D*k + rf - 1`` only (:attr:`geometry`), so the trunk can run once over a
    whole block and each window's output be pooled from the block's feature map
    (dense evaluation, see ``docs/resolution-and-cost.md``); in eval mode batch norm
    is a per-channel affine map and does not break this. For windows whose origins
    are not multiples of ``D``, :meth:`trunk` with a smaller ``step`` keeps the later
    pools at step 1 and dilates what follows ("à trous"), so every stride works.

    Parameters
    ----------
    in_channels, n_classes
        Input bands and output classes.
    patch_size
        Window side in pixels; decides how many stages fit (at least ``2*convs + 1``).
    widths
        Channels of each stage.
    convs
        Valid conv3x3-BN-ReLU layers per stage.
    dropout
        Dropout before the classifier.

    Raises
    ------
    InputError
        Fewer than one channel or two classes, empty ``widths``, ``convs < 1``, or a
        patch smaller than the first stage's receptive field.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        patch_size: int = DEFAULT_PATCH,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        convs: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, n_classes)
        if len(widths) == 0 or convs < 1:
            raise InputError(
                f"cnn_dense needs at least one stage and one convolution per stage; found "
                f"widths {list(widths)} and convs={convs}. Pass e.g. widths=[16, 32, 64], convs=2."
            )
        if patch_size < 2 * convs + 1:
            raise InputError(
                f"cnn_dense with convs={convs} needs patches of at least {2 * convs + 1} pixels "
                f"(its valid convolutions shrink the window); found {patch_size}. Use a larger "
                "patch size, fewer convs, or the 'cnn' architecture."
            )
        stages: list[nn.Module] = []
        c, rf, jump = in_channels, 1, 1
        for k, w in enumerate(widths):
            # receptive field after this stage (a pool first, unless it is the first stage)
            nxt, njump = (rf, jump) if k == 0 else (rf + jump, 2 * jump)
            nxt += 2 * convs * njump
            if nxt > patch_size:
                break
            rf, jump = nxt, njump
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers += [nn.Conv2d(c, w, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.in_channels = in_channels
        self.widths = [int(w) for w in widths[: len(stages)]]
        self.geometry = DenseGeometry(downsampling=jump, receptive_field=rf)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c, n_classes)

    def trunk(self, x: torch.Tensor, *, step: int | None = None) -> torch.Tensor:
        """The convolutional part: ``(n, c, H, W)`` -> features ``(n, width, h, w)``.

        Parameters
        ----------
        x
            Input of any size at least the receptive field.
        step
            Spacing of the output's feature pixels in input pixels: a power of two
            dividing ``D`` (default ``D``, the training-time network). Pools beyond
            ``step`` keep step 1 and everything after them is dilated, so feature
            pixel ``m`` sees input pixels ``step*m .. step*m + rf - 1`` and the
            features of a window at origin ``step*m`` are ``m + (D // step)*k``.
        """
        d = self.geometry.downsampling
        step = d if step is None else step
        if step < 1 or d % step or step & (step - 1):
            raise InputError(f"step must be a power of two dividing {d}; found {step}")
        taken, dil = 1, 1
        for k, stage in enumerate(self.stages):
            if k > 0:
                if taken < step:
                    x = F.max_pool2d(x, 2, stride=2)
                    taken *= 2
                else:
                    x = F.max_pool2d(x, 2, stride=1, dilation=dil)
                    dil *= 2
            for layer in stage.children():
                if dil > 1 and isinstance(layer, nn.Conv2d):
                    x = F.conv2d(x, layer.weight, layer.bias, dilation=dil)
                else:
                    x = layer(x)
        return x

    def activation_bytes(self, step: int, *, itemsize: int = 4) -> float:
        """Peak bytes per input pixel of one layer's input plus output in :meth:`trunk`.

        The working set of a dense evaluation is about this times the block's pixels.
        """
        density, peak, c, taken = 1.0, 0.0, self.in_channels, 1
        for k, w in enumerate(self.widths):
            if k > 0 and taken < step:
                taken *= 2
                density /= 4
            peak = max(peak, (c + w) * density, 2 * w * density)
            c = w
        return peak * itemsize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.trunk(x).mean(dim=(2, 3))))


def dense_geometry(module: nn.Module) -> DenseGeometry | None:
    """The :class:`DenseGeometry` of a dense-capable network, ``None`` for the others."""
    geometry = getattr(module, "geometry", None)
    trunk, head = getattr(module, "trunk", None), getattr(module, "head", None)
    if isinstance(geometry, DenseGeometry) and callable(trunk) and isinstance(head, nn.Linear):
        return geometry
    return None
