"""Fuzz: mutated GeoTIFF, netCDF and Zarr bytes raise only the library's errors, never hang.

Seeded and bounded (a few seconds): each case flips, truncates or inserts bytes in a
small valid file, then opens it and classifies it. Anything but a
:class:`~georaster_cnn.GeorasterCNNError` (or a clean success) is a bug: a crash
with a bare ``RuntimeError``/``KeyError``, a traceback from GDAL or HDF5, or a hang.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fuzz import deadline

from georaster_cnn import GeoModel, GeorasterCNNError, open_raster, predict

CASES = 80
SECONDS_PER_CASE = 10


def _mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(raw)
    kind = rng.integers(3)
    if kind == 0:  # flip bits
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
            data[pos] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncate
        del data[int(rng.integers(1, len(data))) :]
    else:  # insert junk
        pos = int(rng.integers(0, len(data)))
        data[pos:pos] = rng.integers(
            0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8
        ).tobytes()
    return bytes(data)


def _netcdf(path: Path) -> Path:
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"t": (("lat", "lon"), rng.normal(size=(48, 40)).astype("float32"))},
        coords={"lat": np.linspace(50.0, 45.3, 48), "lon": np.linspace(5.0, 8.9, 40)},
    )
    ds.to_netcdf(path, encoding={"t": {"zlib": True, "chunksizes": (16, 16)}})
    return path


def _zarr(path: Path) -> Path:
    _netcdf(path.with_suffix(".nc"))
    with xr.open_dataset(path.with_suffix(".nc")) as ds:
        ds.load().to_zarr(
            path, zarr_format=3, consolidated=False, encoding={"t": {"chunks": (16, 16)}}
        )
    return path


def _mutated_copy(good: Path, bad: Path, rng: np.random.Generator) -> None:
    """A copy of ``good`` (a file, or a Zarr store: one of its files) with mutated bytes."""
    if good.is_file():
        bad.write_bytes(_mutate(good.read_bytes(), rng))
        return
    shutil.copytree(good, bad)
    files = sorted(p for p in bad.rglob("*") if p.is_file())
    victim = files[int(rng.integers(len(files)))]
    victim.write_bytes(_mutate(victim.read_bytes(), rng))


@pytest.mark.parametrize("kind", ["tif", "nc", "zarr"])
def test_mutated_inputs_raise_only_library_errors(
    tmp_path: Path,
    kind: str,
    make_raster: Callable[..., Path],
    make_model: Callable[..., GeoModel],
) -> None:
    if kind == "tif":
        good = make_raster(tmp_path, "good.tif", height=48, width=40, count=1, compress="deflate")
    elif kind == "nc":
        good = _netcdf(tmp_path / "good.nc")
    else:
        good = _zarr(tmp_path / "good.zarr")
    model = make_model(1, patch_size=16)
    rng = np.random.default_rng({"tif": 7, "nc": 8, "zarr": 9}[kind])
    outcomes = {"ok": 0, "refused": 0}
    for case in range(CASES):
        bad = tmp_path / f"bad{case}.{kind}"
        _mutated_copy(good, bad, rng)
        try:
            with deadline(SECONDS_PER_CASE):
                data = open_raster(bad)
                predict(data, model, stride=16, check=False).compute()
        except GeorasterCNNError:
            outcomes["refused"] += 1
        except Exception as exc:  # the bug this test looks for
            pytest.fail(f"case {case} ({bad.name}): {type(exc).__name__}: {exc}")
        else:
            outcomes["ok"] += 1
    assert outcomes["refused"] > 0  # the mutations do reach the readers
