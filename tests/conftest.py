"""Shared fixtures: tiny seeded rasters, fast stand-in models and a brute-force reference.

Everything here is deterministic: rasters are generated from a seed derived from
their file name (or given explicitly), and models are either built directly (no
training) or are a parameter-light stand-in whose output is a known function of
the window, so tests can compare class maps exactly with a brute-force reference.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from geo import NORTH_UP
from hypothesis import HealthCheck, settings
from torch import nn

from georaster_cnn.io.classmap import default_colors
from georaster_cnn.model.architectures import build_model, register_architecture
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.stats import ChannelStats

# Property tests: no per-example deadline (Dask/torch timings vary on shared CI
# machines), a moderate number of examples so the whole suite stays fast.
settings.register_profile(
    "georaster",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("georaster"), max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "georaster"))

#: A north-up UTM transform with 30 m pixels (not the identity, so no georeferencing warnings).

TEST_ARCH = "test_window_mean"


# --------------------------------------------------------------------------- stand-in model


@register_architecture(TEST_ARCH)
class WindowMean(nn.Module):
    """Deterministic stand-in: logits ``w_k * mean(window of channel)`` with ``w = k - (K-1)/2``.

    For two classes the class is ``1`` iff the window mean of ``channel`` is ``> 0``
    (ties at exactly 0 go to class 0, as ``argmax`` picks the first maximum), and the
    probability of class 1 is ``sigmoid(gain * mean)``. Invalid pixels reach the model
    as 0, so the mean is ``sum(valid values) / patch**2``. It has parameters (a
    linear layer with fixed weights) so it saves and loads like any model.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        patch_size: int = 64,
        channel: int = 0,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.channel = channel
        self.head = nn.Linear(1, n_classes)
        with torch.no_grad():
            w = torch.arange(n_classes, dtype=torch.float32) - (n_classes - 1) / 2
            self.head.weight.copy_((gain * w)[:, None])
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, self.channel].mean(dim=(1, 2))
        return self.head(m[:, None])


def identity_stats(names: Sequence[str]) -> ChannelStats:
    """Statistics with mean 0 and std 1 for every band: normalisation is exactly the identity."""
    n = len(names)
    count = np.full(n, 1000.0)
    return ChannelStats(
        tuple(names), count, np.zeros(n), count.copy(), np.full(n, -10.0), np.full(n, 10.0)
    )


@pytest.fixture(scope="session")
def unit_stats() -> Callable[[Sequence[str]], ChannelStats]:
    """``unit_stats(names)``: statistics that make normalisation exactly the identity."""
    return identity_stats


def _make_model(
    n_bands: int,
    class_names: Sequence[str] = ("low", "high"),
    *,
    arch: str = TEST_ARCH,
    band_names: Sequence[str] | None = None,
    stats: ChannelStats | None = None,
    patch_size: int = 64,
    min_valid: float = 0.5,
    source_dtype: str = "float32",
    hparams: dict[str, Any] | None = None,
    seed: int = 0,
    provenance: dict[str, Any] | None = None,
) -> GeoModel:
    """A GeoModel built directly (no training).

    ``arch="test_window_mean"`` (default) is the deterministic stand-in above;
    ``arch="cnn"`` is a tiny SmallCNN (``widths=[4, 8]`` unless ``hparams`` says
    otherwise) with weights seeded by ``seed``.
    """
    names = (
        tuple(band_names)
        if band_names is not None
        else tuple(f"band_{i + 1}" for i in range(n_bands))
    )
    if len(names) != n_bands:
        raise ValueError("band_names must have n_bands entries")
    if hparams is None:
        hparams = {"widths": [4, 8]} if arch == "cnn" else {}
    torch.manual_seed(seed)
    module = build_model(
        arch, in_channels=n_bands, n_classes=len(class_names), patch_size=patch_size, **hparams
    )
    if arch == "cnn":
        # Fresh batch-norm running stats (mean 0, var 1) make eval mode well defined.
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
    module.eval()
    return GeoModel(
        module=module,
        arch=arch,
        hparams=dict(hparams),
        band_names=names,
        class_names=tuple(class_names),
        class_colors=default_colors(len(class_names)),
        stats=stats if stats is not None else identity_stats(names),
        patch_size=patch_size,
        min_valid=min_valid,
        source_dtype=source_dtype,
        provenance=dict(provenance or {"data": ["<fixture>"], "epochs": 0}),
    )


@pytest.fixture(scope="session")
def make_model() -> Callable[..., GeoModel]:
    """Factory ``make_model(n_bands, class_names=("low", "high"), *, arch=..., ...)``."""
    return _make_model


# --------------------------------------------------------------------------- rasters


def _seed_for(name: str, seed: int | None) -> int:
    return zlib.crc32(name.encode()) if seed is None else seed


def random_values(shape: tuple[int, int, int], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Seeded random pixel values suited to ``dtype`` (small integers for int types)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -1000), min(info.max - 1, 1000)
    if dt == np.uint8:
        lo, hi = 0, 250
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)


def _holes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a few rectangular holes plus scattered single pixels."""
    holes = np.zeros((height, width), dtype=bool)
    for _ in range(3):
        h0, w0 = rng.integers(0, height), rng.integers(0, width)
        holes[h0 : h0 + max(1, height // 5), w0 : w0 + max(1, width // 4)] = True
    holes |= rng.random((height, width)) < 0.02
    return holes


def write_raster(
    tmp_path: Path,
    name: str,
    *,
    height: int,
    width: int,
    count: int = 1,
    dtype: str = "float32",
    nodata: float | None = None,
    crs: str | None = "EPSG:32633",
    transform: Affine | None = None,
    tiled: bool = True,
    nan_holes: bool = False,
    blocksize: int | None = None,
    values: np.ndarray | None = None,
    descriptions: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
    compress: str | None = None,
    seed: int | None = None,
) -> Path:
    """Write a small GeoTIFF into ``tmp_path`` and return its path.

    ``values`` (``(count, height, width)`` or ``(height, width)``) are written as
    given; otherwise seeded random values. ``nan_holes`` punches holes holding
    ``nodata`` when it is set (and not NaN), NaN otherwise (float types only).
    ``mask`` (``(height, width)``, True = valid) is written as a GDAL internal
    per-dataset mask. ``blocksize`` sets the tile size (multiple of 16) when tiled,
    the rows per strip otherwise.
    """
    rng = np.random.default_rng(_seed_for(name, seed))
    if values is None:
        values = random_values((count, height, width), dtype, rng)
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[None]
    if values.shape != (count, height, width):
        raise ValueError(f"values have shape {values.shape}, expected {(count, height, width)}")
    values = values.astype(dtype, copy=True)
    if nan_holes:
        holes = _holes(height, width, rng)
        if nodata is not None and not np.isnan(nodata):
            values[:, holes] = nodata
        elif np.dtype(dtype).kind == "f":
            values[:, holes] = np.nan
        else:
            raise ValueError("nan_holes on an integer raster needs a nodata value")
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "transform": transform if transform is not None else NORTH_UP,
        "tiled": tiled,
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile["compress"] = compress
    if tiled:
        bs = blocksize or 256
        profile.update(blockxsize=bs, blockysize=bs)
    elif blocksize:
        profile["blockysize"] = blocksize
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
        if descriptions is not None:
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
        if mask is not None:
            dst.write_mask(np.where(mask, 255, 0).astype("uint8"))
    return path


@pytest.fixture(scope="session")
def make_raster() -> Callable[..., Path]:
    """Factory ``make_raster(tmp_path, name, *, height, width, count, dtype, ...)`` (see write_raster)."""
    return write_raster


# --------------------------------------------------------------------------- reference


def brute_force_windows(
    arr: np.ndarray, patch: int, stride: int, *, channel: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per output cell: (window mean of ``channel`` with NaN -> 0, valid fraction).

    Straight from the design's definition, independent of the library: cell
    ``(i, j)`` of ``ceil(H/s) x ceil(W/s)`` uses the ``p x p`` window whose top-left
    pixel is ``(s*i + (s-p)//2, s*j + (s-p)//2)``, cut by plain slicing from a
    NaN-padded copy; a pixel is valid when no band is NaN there.
    """
    c, h, w = arr.shape
    oh, ow = -(-h // stride), -(-w // stride)
    off = (stride - patch) // 2
    pad = 2 * patch
    padded = np.full((c, h + 2 * pad, w + 2 * pad), np.nan, dtype=np.float64)
    padded[:, pad : pad + h, pad : pad + w] = arr
    means = np.empty((oh, ow))
    frac = np.empty((oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = stride * i + off + pad, stride * j + off + pad
            win = padded[:, r0 : r0 + patch, c0 : c0 + patch]
            ok = ~np.isnan(win).any(axis=0)
            frac[i, j] = ok.mean()
            # Invalid values reach the model as 0, band by band (NaN -> 0 per band).
            means[i, j] = np.nan_to_num(win[channel]).sum() / patch**2
    return means, frac


@pytest.fixture(scope="session")
def brute_force() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The brute-force window reference (see :func:`brute_force_windows`)."""
    return brute_force_windows


def expected_prediction(
    arr: np.ndarray, patch: int, stride: int, min_valid: float, *, gain: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Class map and class-1 probability the two-class stand-in model must produce."""
    means, frac = brute_force_windows(arr, patch, stride)
    ok = frac >= min_valid
    cls = np.where(ok, (means > 0).astype(np.uint8), np.uint8(255))
    prob1 = np.where(ok, 1.0 / (1.0 + np.exp(-gain * means)), np.nan)
    return cls, prob1


@pytest.fixture(scope="session")
def expected() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``expected(arr, patch, stride, min_valid)`` -> (class map, P(class 1)) of the stand-in."""
    return expected_prediction


def int_grid(shape: tuple[int, ...], seed: int, lo: int = -3, hi: int = 3) -> np.ndarray:
    """Small integers as float32: window sums are then exact in float32 (no sign flips)."""
    return np.random.default_rng(seed).integers(lo, hi, size=shape, endpoint=True).astype("float32")


@pytest.fixture(scope="session")
def int_values() -> Callable[..., np.ndarray]:
    """``int_values(shape, seed)``: seeded small integers as float32."""
    return int_grid


# --------------------------------------------------------------------------- a cluster of processes


@pytest.fixture
def dask_processes(tmp_path: Path) -> Iterator[Any]:
    """A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (one thread each).

    The second worker has the resource ``GPU=1`` (it stands for a GPU worker); workers
    have no nanny, so a killed one stays dead. See :class:`dask_processes.DaskProcesses`.
    """
    distributed = pytest.importorskip("distributed")
    from dask_processes import START_TIMEOUT_S, DaskProcesses

    cluster = DaskProcesses(tmp_path)
    try:
        cluster.add_worker()
        cluster.add_worker("--resources", "GPU=1")
        with distributed.Client(cluster.address(), timeout=START_TIMEOUT_S) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT_S)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def window_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[slice, slice, slice]]:
    """Every window read from a GDAL raster opened by ``open_raster``, in order."""
    from georaster_cnn.io.reader import _WindowReader

    reads: list[tuple[slice, slice, slice]] = []
    real = _WindowReader.__getitem__

    def counting(self: _WindowReader, key: tuple[slice, slice, slice]) -> np.ndarray:
        reads.append(key)
        return real(self, key)

    monkeypatch.setattr(_WindowReader, "__getitem__", counting)
    return reads
