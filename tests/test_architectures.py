"""classify: the ``resnet`` and ``mlp`` architectures - shapes, sizes, training, model files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from geo import NORTH_UP

from georaster_cnn import (
    ARCHITECTURES,
    InputError,
    build_model,
    load_model,
    open_labels,
    open_raster,
    predict,
    save_model,
    train,
)
from georaster_cnn.model.architectures import MLP, ResNet

MakeRaster = Callable[..., Path]

#: Small networks so a training run takes a second or two.
TINY = {"resnet": {"widths": [4, 8], "blocks": 1}, "mlp": {"hidden": 16}}


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_registered() -> None:
    assert {"cnn", "resnet", "mlp"} <= set(ARCHITECTURES)
    assert ARCHITECTURES["resnet"] is ResNet and ARCHITECTURES["mlp"] is MLP


@pytest.mark.parametrize("arch", ["resnet", "mlp"])
@pytest.mark.parametrize("channels", [1, 13])
@pytest.mark.parametrize("patch", [64, 16, 8])
def test_forward_shapes(arch: str, channels: int, patch: int) -> None:
    torch.manual_seed(0)
    # Four stages like the default resnet, narrower so the test stays fast.
    hparams = {"widths": [8, 16, 16, 16]} if arch == "resnet" else {}
    net = build_model(arch, in_channels=channels, n_classes=4, patch_size=patch, **hparams)
    x = torch.randn(3, channels, patch, patch)
    net.train()
    out = net(x)
    assert out.shape == (3, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (3, 4) and torch.isfinite(out).all()


def test_resnet_small_patches_and_custom_widths() -> None:
    for patch in (1, 2, 5, 8):
        net = build_model(
            "resnet", in_channels=2, n_classes=3, patch_size=patch, widths=[8, 16, 16], blocks=1
        ).eval()
        with torch.inference_mode():
            assert net(torch.randn(2, 2, patch, patch)).shape == (2, 3)


def test_parameter_counts() -> None:
    resnet = build_model("resnet", in_channels=3, n_classes=4, patch_size=64)
    cnn = build_model("cnn", in_channels=3, n_classes=4, patch_size=64)
    # Deeper and wider than the default CNN, still of modest size.
    assert n_params(cnn) < n_params(resnet) < 5_000_000
    # Convolutions do not depend on the patch size (global pooling).
    assert n_params(build_model("resnet", in_channels=3, n_classes=4, patch_size=32)) == n_params(
        resnet
    )
    # The MLP's first layer has C * p * p * hidden weights: it grows with p**2 * C.
    for c, p, hidden in [(3, 64, 256), (13, 64, 256), (3, 16, 64)]:
        expected = (c * p * p + 1) * hidden + (hidden + 1) * hidden + (hidden + 1) * 4
        assert (
            n_params(build_model("mlp", in_channels=c, n_classes=4, patch_size=p, hidden=hidden))
            == expected
        )
    assert n_params(build_model("mlp", in_channels=13, n_classes=4, patch_size=64)) > 4 * n_params(
        build_model("mlp", in_channels=3, n_classes=4, patch_size=64)
    )


def test_bad_hyper_parameters() -> None:
    with pytest.raises(InputError, match="widths"):
        build_model("resnet", in_channels=3, n_classes=2, patch_size=64, widths=[])
    with pytest.raises(InputError, match="blocks=0"):
        build_model("resnet", in_channels=3, n_classes=2, patch_size=64, blocks=0)
    with pytest.raises(InputError, match="hidden"):
        build_model("mlp", in_channels=3, n_classes=2, patch_size=64, hidden=0)
    for arch in ("resnet", "mlp"):
        with pytest.raises(InputError, match="2 classes"):
            build_model(arch, in_channels=3, n_classes=1, patch_size=16)


def test_mlp_rejects_other_patch_size() -> None:
    net = build_model("mlp", in_channels=2, n_classes=2, patch_size=16).eval()
    with pytest.raises(InputError, match="built for 16 x 16 windows; found 8 x 8"):
        net(torch.zeros(1, 2, 8, 8))


# --------------------------------------------------------------------------- training


def _scene(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two textures, both N(0, 1): left white noise (class 0), right smooth stripes (class 1)."""
    rng = np.random.default_rng(seed)
    scene = rng.standard_normal((size, size))
    smooth = np.cumsum(rng.standard_normal((size, size)), axis=1) / np.sqrt(size)
    scene[:, size // 2 :] = (smooth[:, size // 2 :] - smooth.mean()) / smooth.std()
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[:, size // 2 :] = 1
    return scene[None].astype("float32"), labels


@pytest.fixture
def tiny_scene(tmp_path: Path, make_raster: MakeRaster) -> tuple[Path, Path]:
    scene, labels = _scene()
    data = make_raster(tmp_path, "scene.tif", height=64, width=64, values=scene, transform=NORTH_UP)
    lab = make_raster(
        tmp_path, "labels.tif", height=64, width=64, dtype="uint8", nodata=255,
        values=labels, transform=NORTH_UP,
    )  # fmt: skip
    return data, lab


@pytest.mark.parametrize("arch", ["resnet", "mlp"])
@pytest.mark.filterwarnings("ignore::georaster_cnn.errors.ValidationWarning")  # tiny scene
def test_train_save_load_round_trip(
    arch: str, tiny_scene: tuple[Path, Path], tmp_path: Path
) -> None:
    data_path, lab_path = tiny_scene
    model = train(
        open_raster(data_path), open_labels(lab_path), arch=arch, epochs=1, patch_size=16,
        stride=8, batch_size=16, device="cpu", hparams=TINY[arch], val_block=32,
    )  # fmt: skip
    assert model.arch == arch and model.hparams == TINY[arch]
    assert len(model.provenance["history"]) == 1
    assert np.isfinite(model.provenance["history"][0]["loss"])
    json.dumps(model.card())  # hyper-parameters and provenance are JSON-able
    back = load_model(save_model(model, tmp_path / f"{arch}.safetensors"))
    assert back.arch == arch and back.hparams == TINY[arch]
    assert type(back.module) is type(model.module)
    x = torch.randn(5, 1, 16, 16)
    with torch.inference_mode():
        assert torch.equal(model.module(x), back.module(x))
    a = predict(open_raster(data_path), model, stride=8).compute()
    b = predict(open_raster(data_path), back, stride=8).compute()
    np.testing.assert_array_equal(a["class"].values, b["class"].values)
    assert set(np.unique(a["class"].values)) <= {0, 1}
