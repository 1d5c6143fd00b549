"""classify: the architecture registry, SmallCNN and device selection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from georaster_cnn import (
    ARCHITECTURES,
    GeoModel,
    InputError,
    build_model,
    open_raster,
    predict,
)
from georaster_cnn.model._inference import resolve_device
from georaster_cnn.model.architectures import SmallCNN

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("channels", [1, 13])
@pytest.mark.parametrize("patch", [64, 16, 5, 1])
def test_small_cnn_forward(channels: int, patch: int) -> None:
    torch.manual_seed(0)
    net = build_model("cnn", in_channels=channels, n_classes=4, patch_size=patch, widths=[4, 8, 8])
    assert isinstance(net, SmallCNN)
    net.eval()
    x = torch.randn(3, channels, patch, patch)
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (3, 4)
    assert torch.isfinite(out).all()


def test_small_cnn_default_widths_and_training_mode() -> None:
    net = build_model("cnn", in_channels=3, n_classes=2, patch_size=64)
    net.train()
    out = net(torch.randn(2, 3, 64, 64))
    out.sum().backward()  # gradients flow
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(("channels", "classes"), [(0, 2), (3, 1)])
def test_small_cnn_rejects_bad_sizes(channels: int, classes: int) -> None:
    with pytest.raises(InputError):
        build_model("cnn", in_channels=channels, n_classes=classes, patch_size=64)


def test_unknown_architecture() -> None:
    with pytest.raises(InputError, match="unknown architecture 'resnet9000'") as info:
        build_model("resnet9000", in_channels=3, n_classes=2, patch_size=64)
    assert "cnn" in str(info.value)  # lists the choices
    assert isinstance(info.value, ValueError)


def test_registry_holds_cnn() -> None:
    assert ARCHITECTURES["cnn"] is SmallCNN


def test_resolve_device_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    if HAS_CUDA:
        assert auto.type == "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        assert auto.type == "mps"
    else:
        assert auto == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised when CUDA is missing")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_resolve_cuda_without_cuda(device: str) -> None:
    with pytest.raises(InputError, match="CUDA"):
        resolve_device(device)


def test_resolve_unknown_device() -> None:
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


def test_resolve_mps_when_missing() -> None:
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("MPS is available here")
    with pytest.raises(InputError, match="mps"):
        resolve_device("mps")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_predict_on_cuda_matches_cpu(
    tmp_path: Path, make_model: Callable[..., GeoModel], make_raster: Callable[..., Path]
) -> None:
    model = make_model(3, ("a", "b", "c"), arch="cnn", patch_size=16)
    path = make_raster(tmp_path, "g.tif", height=70, width=53, count=3, nan_holes=True)
    data = open_raster(path)
    cpu = predict(data, model, stride=4, device="cpu").compute()
    gpu = predict(data, model, stride=4, device="cuda").compute()
    # Mixed precision on CUDA: probabilities agree closely, classes where the margin is clear.
    np.testing.assert_allclose(
        gpu["probability"].values, cpu["probability"].values, atol=2e-2, equal_nan=True
    )
    p = np.sort(np.nan_to_num(cpu["probability"].values), axis=0)
    clear = (p[-1] - p[-2]) > 0.05
    np.testing.assert_array_equal(gpu["class"].values[clear], cpu["class"].values[clear])
    np.testing.assert_array_equal(gpu["class"].values == 255, cpu["class"].values == 255)
