"""Dense evaluation (``_dense.py``) against one forward pass per window (``dense=False``).

Every stride from 1 to the patch size, rasters of odd sizes with NaN holes (some in
one band only), normalisation statistics that are not the identity, several Dask
chunkings: dense and per-window probabilities agree within 1e-4 and the classes are
identical. The networks are small ``cnn_dense`` models with seeded weights and
non-trivial batch-norm statistics (eval mode: a per-channel affine map).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import dask.array
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor)
import torch
import xarray as xr
from click.testing import CliRunner
from geo import NORTH_UP
from georaster_cnn_cli.main import cli
from hypothesis import given, settings
from hypothesis import strategies as st

import georaster_cnn as gc
from georaster_cnn import GeoModel, InputError, build_model, predict
from georaster_cnn.io.classmap import default_colors
from georaster_cnn.model._dense import DENSE_BLOCK_BYTES, dense_block_cells, dense_logits
from georaster_cnn.model.architectures import DenseCNN, dense_geometry
from georaster_cnn.testing import (
    assert_dense_matches_per_window,
    randomise_batch_norm,
    test_raster,
    tiny_dense_model,
)

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "scene.tif"
#: Narrow stages so per-window references at stride 1 stay fast.
TINY = [4, 8, 8]


def net_of(channels: int, classes: int, patch: int, **hparams: object) -> DenseCNN:
    """``build_model("cnn_dense", ...)``, typed."""
    net = build_model(
        "cnn_dense", in_channels=channels, n_classes=classes, patch_size=patch, **hparams
    )
    if not isinstance(net, DenseCNN):
        raise TypeError(type(net))
    return net


dense_model = tiny_dense_model  # seeded weights, non-trivial BN and statistics
raster = test_raster
_compare = assert_dense_matches_per_window


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("patch", [5, 9, 13, 14, 16, 31, 32, 36, 40, 64, 66, 71])
def test_geometry_matches_the_network(patch: int) -> None:
    net = net_of(3, 4, patch).eval()
    g = dense_geometry(net)
    assert g is not None and g.receptive_field <= patch
    with torch.inference_mode():
        feats = net.trunk(torch.zeros(1, 3, patch, patch))
    assert feats.shape[-2:] == (g.feature_size(patch),) * 2
    # as many stages as fit: the next would see rf + D (its pool) + 4 * 2D (two convs)
    assert len(net.widths) == 3 or g.receptive_field + 9 * g.downsampling > patch


def test_defaults_and_training_mode() -> None:
    net = net_of(4, 3, 64)
    assert isinstance(net, DenseCNN)
    g = net.geometry
    assert (g.downsampling, g.receptive_field, g.feature_size(64), net.widths) == (
        4,
        32,
        9,
        [16, 32, 64],
    )
    net.train()
    out = net(torch.randn(5, 4, 64, 64))
    assert out.shape == (5, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_window_output_depends_only_on_its_pixels() -> None:
    net = net_of(2, 3, 32, widths=TINY).eval()
    a = torch.randn(1, 2, 48, 48)
    b = a.clone()
    b[..., 32:, :] = 100.0  # change everything outside the window at the origin
    b[..., :, 32:] = -7.0
    with torch.inference_mode():
        fa = net.trunk(a)[..., :1, :1]
        fb = net.trunk(b)[..., :1, :1]
    torch.testing.assert_close(fa, fb)


@pytest.mark.parametrize(("channels", "classes", "patch"), [(0, 2, 64), (3, 1, 64), (3, 2, 4)])
def test_rejects_bad_sizes(channels: int, classes: int, patch: int) -> None:
    with pytest.raises(InputError):
        net_of(channels, classes, patch)


@pytest.mark.parametrize("step", [1, 2, 4])
def test_a_trous_trunk_gives_every_window_its_features(step: int) -> None:
    net = net_of(2, 3, 40, widths=TINY).eval()
    randomise_batch_norm(net, torch.Generator().manual_seed(1))
    g, p = net.geometry, 40
    r, f = g.downsampling // step, g.feature_size(p)
    x = torch.randn(1, 2, 61, 70)
    with torch.inference_mode():
        feats = net.trunk(x, step=step)
        for o in range(0, 61 - p + 1, step):
            for q in range(0, 70 - p + 1, 3 * step):
                want = net.trunk(x[..., o : o + p, q : q + p])
                m, n = o // step, q // step
                got = feats[..., m : m + r * (f - 1) + 1 : r, n : n + r * (f - 1) + 1 : r]
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="power of two"):
        net.trunk(x, step=3)


@pytest.mark.parametrize("stride", [1, 3, 4, 6, 8, 13, 36])
def test_dense_logits_equal_the_forward_pass(stride: int) -> None:
    net = net_of(2, 3, 36, widths=TINY).eval()
    randomise_batch_norm(net, torch.Generator().manual_seed(2))
    x = torch.randn(1, 2, 36 + 5 * stride, 36 + 3 * stride + stride // 2)
    with torch.inference_mode():
        logits = dense_logits(net, x, patch=36, stride=stride)
        assert logits.shape == (1, 3, 6, 4)
        windows = torch.stack(
            [
                x[0, :, stride * i : stride * i + 36, stride * j : stride * j + 36]
                for i in range(6)
                for j in range(4)
            ]
        )
        want = net(windows).T.reshape(3, 6, 4)
    torch.testing.assert_close(logits[0], want, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- predict


@pytest.mark.parametrize("patch", [16, 36])
def test_every_stride_agrees_with_per_window(patch: int) -> None:
    """Strides 1..patch on odd-sized rasters with holes, two chunkings each."""
    model = dense_model(patch=patch)
    small = raster(47, 53, seed=patch)
    for stride in range(1, patch + 1):
        # several blocks per raster: a few cells, or the default (one block here)
        _compare(small, model, stride, chunks=17, block_cells=max(1, 24 // stride))
        if stride in (1, 2, 3, patch // 2, patch - 1, patch):
            _compare(small, model, stride, chunks=None, block_cells=None)


def test_rasters_smaller_than_a_patch_and_tiny_blocks() -> None:
    model = dense_model(patch=36)
    for h, w in [(1, 1), (7, 40), (35, 36), (36, 1)]:
        data = raster(h, w, seed=h * 100 + w)
        for stride in (1, 5, 36):
            _compare(data, model, stride, block_cells=1)


@settings(max_examples=25)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    patch=st.sampled_from([9, 14, 16, 24, 36, 40]),
    stride_frac=st.floats(0.0, 1.0),
    chunks=st.integers(5, 80),
    block_cells=st.one_of(st.none(), st.integers(1, 12)),
    min_valid=st.sampled_from([0.01, 0.3, 0.5, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_dense_equals_per_window_property(
    height: int,
    width: int,
    patch: int,
    stride_frac: float,
    chunks: int,
    block_cells: int | None,
    min_valid: float,
    seed: int,
) -> None:
    stride = 1 + round(stride_frac * (patch - 1))
    model = dense_model(patch=patch, min_valid=min_valid, seed=seed % 7)
    _compare(
        raster(height, width, seed=seed), model, stride, chunks=chunks, block_cells=block_cells
    )


def test_dense_is_the_default_for_capable_models_only(
    make_model: Callable[..., GeoModel],
) -> None:
    model = dense_model(patch=16)
    data = raster(40, 40)
    auto = predict(data, model, stride=4, check=False)
    assert any("predict-dense" in str(k) for k in auto["probability"].data.dask)
    off = predict(data, model, stride=4, check=False, dense=False)
    assert not any("predict-dense" in str(k) for k in off["probability"].data.dask)
    cnn = make_model(2, arch="cnn", patch_size=16)
    plain = predict(data, cnn, stride=4, check=False)
    assert not any("predict-dense" in str(k) for k in plain["probability"].data.dask)
    with pytest.raises(InputError, match="cnn_dense"):
        predict(data, cnn, stride=4, check=False, dense=True)
    with pytest.raises(InputError, match="dense="):
        predict(data, model, stride=4, check=False, dense="yes")  # type: ignore[arg-type]


def test_model_file_round_trip_predicts_densely(tmp_path: Path) -> None:
    model = dense_model(patch=16)
    path = gc.save_model(model, tmp_path / "m.safetensors")
    loaded = gc.load_model(path)
    assert loaded.arch == "cnn_dense" and dense_geometry(loaded.module) is not None
    data = raster(33, 29, seed=3)
    a = predict(data, model, stride=3, check=False).compute()
    b = predict(data, loaded, stride=3, check=False).compute()
    np.testing.assert_array_equal(a["class"].values, b["class"].values)


@pytest.mark.filterwarnings("ignore::georaster_cnn.errors.ValidationWarning")  # tiny scene
def test_trains_like_any_architecture_then_predicts_densely(tmp_path: Path) -> None:
    """train() on windows as for 'cnn' (same loop), then dense = per-window on the result."""
    rng = np.random.default_rng(0)
    scene = rng.standard_normal((1, 64, 64)).astype(np.float32)
    scene[0, :, 32:] = np.cumsum(scene[0, :, 32:], axis=1) / 6.0  # smooth right half
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[:, 32:] = 1
    paths = []
    layers: list[tuple[str, np.ndarray, str, int | None]] = [
        ("scene.tif", scene, "float32", None),
        ("labels.tif", labels[None], "uint8", 255),
    ]
    for name, values, dtype, nodata in layers:
        profile = {"driver": "GTiff", "height": 64, "width": 64, "count": 1, "dtype": dtype}
        profile.update(crs="EPSG:32633", transform=NORTH_UP, nodata=nodata)
        with rasterio.open(tmp_path / name, "w", **profile) as dst:
            dst.write(values.astype(dtype))
        paths.append(tmp_path / name)
    data = gc.open_raster(paths[0])
    hparams = {"widths": [4, 8]}
    model = gc.train(
        data, gc.open_labels(paths[1]), arch="cnn_dense", epochs=1, patch_size=16, stride=8,
        batch_size=16, device="cpu", hparams=hparams, val_block=32,
    )  # fmt: skip
    assert model.arch == "cnn_dense" and model.hparams == hparams
    assert np.isfinite(model.provenance["history"][0]["loss"])
    back = gc.load_model(gc.save_model(model, tmp_path / "m.safetensors"))
    assert isinstance(back.module, DenseCNN) and back.module.geometry.downsampling == 2
    for stride in (1, 3, 8, 16):
        _compare(data, back, stride)


# --------------------------------------------------------------------------- memory


def test_block_size_from_the_widths_and_flat_in_the_raster_size() -> None:
    net = net_of(4, 4, 64)
    for stride in (1, 2, 3, 4, 8, 16, 64):
        halo = math.ceil((64 - stride) / 2)
        cells = dense_block_cells(net, stride=stride, halo=halo)
        side = cells * stride + 2 * halo
        step = math.gcd(stride, 4)
        # the largest layer of one block stays within the budget (or one cell)
        assert side**2 * net.activation_bytes(step) <= DENSE_BLOCK_BYTES or cells == 1
        assert cells * stride <= 1024
    # wider networks get smaller blocks at stride 1, none below one cell
    wide = net_of(4, 4, 64, widths=[64, 128, 256])
    assert dense_block_cells(wide, stride=1, halo=32) < dense_block_cells(net, stride=1, halo=32)
    assert dense_block_cells(wide, stride=1, halo=32, budget=1) == 1
    # the plan's blocks do not grow with the raster
    model = dense_model(patch=64, widths=[16, 32, 64])
    sizes = []
    for n in (1500, 6000):
        zeros = xr.DataArray(
            dask.array.zeros((2, n, n), chunks=(2, 512, 512), dtype=np.float32),
            dims=("band", "y", "x"),
            coords={"band": ["band_1", "band_2"]},
        ).rio.write_transform(NORTH_UP)
        pred = predict(zeros, model, stride=2, check=False)
        sizes.append(max(pred["probability"].data.chunks[1]))  # lazy: nothing computed
    assert sizes[0] == sizes[1] == dense_block_cells(model.module, stride=2, halo=31)


# --------------------------------------------------------------------------- CLI


def test_cli_dense_and_no_dense_give_the_same_map(tmp_path: Path) -> None:
    """The bundled scene (512 x 512, 3 bands) with a cnn_dense model built here."""
    data = gc.open_raster(SAMPLE)
    torch.manual_seed(0)
    module = net_of(3, 4, 64)
    randomise_batch_norm(module, torch.Generator().manual_seed(0))
    model = GeoModel(
        module=module.eval(),
        arch="cnn_dense",
        hparams={},
        band_names=tuple(str(b) for b in data["band"].values),
        class_names=("a", "b", "c", "d"),
        class_colors=default_colors(4),
        stats=gc.compute_stats(data),
        patch_size=64,
        source_dtype=str(data.attrs.get("source_dtype", "float32")),
        provenance={"data": ["<test_dense>"], "epochs": 0},
    )
    path = gc.save_model(model, tmp_path / "dense.safetensors")
    runner = CliRunner()
    maps = {}
    for flags in ([], ["--no-dense"]):  # the default is dense for this architecture
        out = tmp_path / ("per-window" if flags else "default")
        args = ["predict", str(path), str(SAMPLE), "-o", str(out), "--stride", "8"]
        result = runner.invoke(cli, [*args, "--probabilities", *flags])
        assert result.exit_code == 0, result.output
        with rasterio.open(out / "scene.tif") as src:
            maps[out.name] = src.read()
    dense, ref = maps["default"], maps["per-window"]
    assert dense.shape == (5, 64, 64)
    np.testing.assert_array_equal(dense[0], ref[0])  # classes
    # probabilities in percent: equal, or one apart where rounding fell differently
    assert np.abs(dense[1:].astype(int) - ref[1:]).max() <= 1
    assert (dense[1:] == ref[1:]).mean() > 0.99
