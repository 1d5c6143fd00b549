"""Size limits checked before any read: huge stored chunks, stacks over very long axes.

The stores here are small on disk (metadata, coordinates, no chunk written: zarr reads a
missing chunk as the fill value, i.e. one value everywhere) and declare what would take
gigabytes to decode or minutes to stack. Each must be refused at once, with an
``InputError`` that names the limit and how to get under it, before any large allocation.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from geo import NORTH_UP

from georaster_cnn import InputError, inspect_raster, open_raster
from georaster_cnn.io import _canonical

MakeRaster = Callable[..., Path]


def _coords(h: int, w: int) -> dict[str, np.ndarray]:
    return {"y": 4_600_000.0 - 30.0 * (np.arange(h) + 0.5), "x": 500_000.0 + 30.0 * np.arange(w)}


def _declared_zarr(
    path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], **coords: Any
) -> Path:
    """A Zarr v3 store declaring variable ``v`` of ``shape`` in ``chunks``; no chunk written."""
    dims = ("time", "y", "x")[-len(shape) :]
    data = da.zeros(shape, dtype="float32", chunks=chunks)
    ds = xr.Dataset({"v": (dims, data)}, coords={**_coords(*shape[-2:]), **coords})
    ds.to_zarr(path, zarr_format=3, consolidated=False, compute=False)
    return path


class _Measure:
    seconds: float = 0.0
    peak: int = 0


@pytest.fixture
def measured() -> Iterator[Callable[[], Any]]:
    """``with measured() as m:`` records seconds and the peak of Python-allocated bytes."""
    import contextlib

    @contextlib.contextmanager
    def run() -> Iterator[_Measure]:
        m = _Measure()
        tracemalloc.start()
        start = time.perf_counter()
        try:
            yield m
        finally:
            m.seconds = time.perf_counter() - start
            m.peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    yield run


def test_one_huge_zarr_chunk_is_refused_before_reading(
    tmp_path: Path, measured: Callable[[], Any]
) -> None:
    store = _declared_zarr(tmp_path / "one_chunk.zarr", (32_000, 32_000), (32_000, 32_000))
    on_disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    assert on_disk < 2**20  # metadata and coordinates only
    for call in (lambda: open_raster(store), lambda: inspect_raster(store)):
        with measured() as m, pytest.raises(InputError) as info:
            call()
        assert m.seconds < 5.0 and m.peak < 64 * 2**20  # nothing decoded (4 GiB if it were)
        msg = str(info.value)
        assert "variable 'v' is stored in chunks of 32,000 x 32,000 values (3.8 GiB each)" in msg
        assert "MAX_CHUNK_BYTES = 512.0 MiB" in msg
        assert "Re-save it with smaller chunks" in msg and "'y': 1024, 'x': 1024" in msg


def test_the_chunk_limit_is_a_named_constant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _declared_zarr(tmp_path / "mid.zarr", (256, 256), (256, 256))  # 256 KiB chunks
    assert open_raster(store).shape == (1, 256, 256)
    monkeypatch.setattr(_canonical, "MAX_CHUNK_BYTES", 128 * 2**10)
    with pytest.raises(InputError, match=r"256 x 256 values \(256\.0 KiB each\)"):
        open_raster(store)


def test_a_chunk_spanning_the_time_axis_is_refused_even_for_one_step(tmp_path: Path) -> None:
    """select= reads one step, but zarr decodes the whole stored chunk to get it."""
    n = 100_000
    times = pd.date_range("2000-01-01", periods=n, freq="min")
    store = _declared_zarr(tmp_path / "long.zarr", (n, 64, 64), (n, 64, 64), time=times)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"chunks of 100,000 x 64 x 64 values \(1\.5 GiB each\)"):
        open_raster(store, select={"time": "2000-01-01T00:05"})
    assert time.perf_counter() - start < 5.0


def test_a_stack_over_a_million_steps_is_refused_at_once(tmp_path: Path) -> None:
    n = 1_000_000
    times = pd.date_range("2000-01-01", periods=n, freq="min")
    store = _declared_zarr(tmp_path / "million.zarr", (n, 8, 8), (10_000, 8, 8), time=times)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"1,000,000 bands, more than the 10,000.*MAX_BANDS"):
        open_raster(store, stack="time")
    assert time.perf_counter() - start < 10.0  # building the bands took minutes, then MemoryError
    with pytest.raises(InputError, match="MAX_BANDS"):  # a selection among them does not help
        open_raster(store, stack="time", bands=["v@2000-01-01"])
    picked = open_raster(store, select={"time": "2000-01-01T00:05"})  # one step: fine
    assert picked.shape == (1, 8, 8) and picked.attrs["selected"] == {"time": "2000-01-01T00:05:00"}


def test_max_pixels_applies_to_the_stacked_size_before_any_band_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    times = pd.date_range("2000-01-01", periods=500, freq="D")
    store = _declared_zarr(tmp_path / "days.zarr", (500, 100, 100), (50, 100, 100), time=times)
    from georaster_cnn.io import _xarray_open

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("bands were built before the size was checked")

    with monkeypatch.context() as mp:
        mp.setattr(_xarray_open, "_band_layers", never)
        with pytest.raises(
            InputError, match=r"100 x 100 pixels x 500 band\(s\) = 5,000,000.*max_pixels="
        ):
            open_raster(store, stack="time", max_pixels=1_000_000)
    # the selected bands count, as before: two of the 500 steps fit
    two = open_raster(store, stack="time", bands=[1, 2], max_pixels=1_000_000)
    assert two.shape == (2, 100, 100)
    assert open_raster(store, stack="time", max_pixels=5_000_000).shape == (500, 100, 100)


def test_a_geotiff_in_one_huge_block_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "one_strip.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=20_000, height=20_000, count=1, dtype="float32",
        tiled=False, blockysize=20_000, compress="deflate", sparse_ok=True,
        crs="EPSG:32633", transform=NORTH_UP,
    ):  # fmt: skip
        pass  # no strip written: a tiny file declaring one 1.5 GiB strip
    assert path.stat().st_size < 2**20
    with pytest.raises(InputError, match=r"GDAL stores it in blocks of 20,000 x 20,000 values"):
        open_raster(path)


def test_ordinary_inputs_are_not_refused(tmp_path: Path, make_raster: MakeRaster) -> None:
    tif = make_raster(tmp_path, "tiled.tif", height=300, width=200, count=3, blocksize=256)
    assert open_raster(tif).shape == (3, 300, 200)
    strips = make_raster(tmp_path, "strips.tif", height=300, width=200, tiled=False)
    assert open_raster(strips).shape == (1, 300, 200)
