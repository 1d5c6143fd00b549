"""open: GeoTIFF and netCDF inputs become one canonical lazy (band, y, x) float32 array."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.shutil
import xarray as xr
from affine import Affine
from geo import NORTH_UP, ROTATED
from rasterio.errors import NotGeoreferencedWarning

from georaster_cnn import InputError, ReadError, open_raster, valid_mask

MakeRaster = Callable[..., Path]


def _file_values(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read().astype("float32")


def _check_canonical(arr: xr.DataArray, count: int, height: int, width: int) -> None:
    assert arr.dims == ("band", "y", "x")
    assert arr.shape == (count, height, width)
    assert arr.dtype == np.float32
    assert isinstance(arr.data, da.Array)


# --------------------------------------------------------------------------- GeoTIFF


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_dtypes_read_as_float32(tmp_path: Path, make_raster: MakeRaster, dtype: str) -> None:
    path = make_raster(tmp_path, f"{dtype}.tif", height=37, width=29, count=2, dtype=dtype)
    arr = open_raster(path)
    _check_canonical(arr, 2, 37, 29)
    np.testing.assert_array_equal(arr.values, _file_values(path))
    assert arr.attrs["source"] == str(path)
    assert arr.attrs["source_dtype"] == dtype
    assert arr.attrs["source_nodata"] is None
    assert list(arr["band"].values) == ["band_1", "band_2"]
    assert not np.isnan(arr.values).any()


@pytest.mark.parametrize(
    ("dtype", "nodata"), [("uint8", 0), ("uint16", 65535), ("int16", -9999), ("float32", -9999.0)]
)
def test_nodata_value_becomes_nan(
    tmp_path: Path, make_raster: MakeRaster, dtype: str, nodata: float
) -> None:
    path = make_raster(
        tmp_path, "nd.tif", height=50, width=40, count=3, dtype=dtype, nodata=nodata, nan_holes=True
    )
    raw = _file_values(path)
    arr = open_raster(path)
    holes = raw == nodata
    assert holes.any()
    got = arr.values
    np.testing.assert_array_equal(np.isnan(got), holes)
    np.testing.assert_array_equal(got[~holes], raw[~holes])
    assert arr.attrs["source_nodata"] == float(nodata)
    np.testing.assert_array_equal(valid_mask(arr).values, ~holes.any(axis=0))


def test_nodata_nan_and_nan_without_nodata(tmp_path: Path, make_raster: MakeRaster) -> None:
    with_nd = make_raster(tmp_path, "a.tif", height=30, width=30, nodata=np.nan, nan_holes=True)
    without = make_raster(tmp_path, "b.tif", height=30, width=30, nan_holes=True)
    for path in (with_nd, without):
        raw = _file_values(path)
        got = open_raster(path).values
        assert np.isnan(raw).any()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(raw))
        np.testing.assert_array_equal(got[~np.isnan(raw)], raw[~np.isnan(raw)])


def test_gdal_internal_mask(tmp_path: Path, make_raster: MakeRaster) -> None:
    mask = np.ones((40, 33), dtype=bool)
    mask[5:17, 3:20] = False
    mask[-1, -1] = False
    path = make_raster(tmp_path, "m.tif", height=40, width=33, count=2, dtype="uint16", mask=mask)
    assert not Path(str(path) + ".msk").exists()  # internal, not a sidecar
    raw = _file_values(path)
    got = open_raster(path).values
    np.testing.assert_array_equal(np.isnan(got), np.broadcast_to(~mask, got.shape))
    np.testing.assert_array_equal(got[:, mask], raw[:, mask])
    np.testing.assert_array_equal(valid_mask(open_raster(path)).values, mask)


@pytest.mark.parametrize("count", [1, 13])
def test_band_counts_and_coordinates(tmp_path: Path, make_raster: MakeRaster, count: int) -> None:
    path = make_raster(tmp_path, "bands.tif", height=21, width=17, count=count, transform=NORTH_UP)
    arr = open_raster(path)
    _check_canonical(arr, count, 21, 17)
    assert list(arr["band"].values) == [f"band_{i + 1}" for i in range(count)]
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(32633)
    assert arr.rio.transform() == NORTH_UP
    # Pixel-centre coordinates, as rioxarray writes them.
    np.testing.assert_allclose(arr["x"].values, NORTH_UP.c + NORTH_UP.a * (np.arange(17) + 0.5))
    np.testing.assert_allclose(arr["y"].values, NORTH_UP.f + NORTH_UP.e * (np.arange(21) + 0.5))
    np.testing.assert_array_equal(arr.values, _file_values(path))


def test_no_crs_is_preserved_as_none(tmp_path: Path, make_raster: MakeRaster) -> None:
    path = make_raster(tmp_path, "nocrs.tif", height=10, width=12, crs=None, transform=NORTH_UP)
    arr = open_raster(path)
    assert arr.rio.crs is None
    assert arr.rio.transform() == NORTH_UP


def test_rotated_transform_is_kept(tmp_path: Path, make_raster: MakeRaster) -> None:
    path = make_raster(tmp_path, "rot.tif", height=20, width=30, transform=ROTATED)
    with rasterio.open(path) as src:
        file_t = src.transform
    arr = open_raster(path)
    assert file_t.almost_equals(ROTATED, precision=1e-9)
    assert arr.rio.transform().almost_equals(file_t, precision=1e-9)
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(32633)
    np.testing.assert_array_equal(arr.values, _file_values(path))


def _assert_block_aligned(chunks: tuple[int, ...], block: int, size: int) -> None:
    assert sum(chunks) == size
    # Every chunk but the last is a whole number of the file's blocks.
    assert all(c % block == 0 for c in chunks[:-1]), (chunks, block)


def test_tiled_odd_blocks_align_chunks(tmp_path: Path, make_raster: MakeRaster) -> None:
    path = make_raster(tmp_path, "t48.tif", height=2200, width=100, dtype="uint8", blocksize=48)
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (48, 48)
    arr = open_raster(path)
    ych, xch = arr.data.chunks[1], arr.data.chunks[2]
    assert len(ych) > 1  # big enough to be split
    _assert_block_aligned(ych, 48, 2200)
    _assert_block_aligned(xch, 48, 100)
    np.testing.assert_array_equal(arr.values, _file_values(path))


def test_striped_file(tmp_path: Path, make_raster: MakeRaster) -> None:
    path = make_raster(
        tmp_path, "strip.tif", height=2100, width=50, dtype="int16", tiled=False, blocksize=7
    )
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (7, 50)
    arr = open_raster(path)
    _assert_block_aligned(arr.data.chunks[1], 7, 2100)
    assert arr.data.chunks[2] == (50,)
    np.testing.assert_array_equal(arr.values, _file_values(path))


@pytest.mark.parametrize(
    ("chunks", "expected"), [(16, (16, 16)), ((10, 7), (10, 7)), (1000, (40, 30))]
)
def test_explicit_chunks(
    tmp_path: Path,
    make_raster: MakeRaster,
    chunks: int | tuple[int, int],
    expected: tuple[int, int],
) -> None:
    path = make_raster(tmp_path, "c.tif", height=40, width=30, count=2)
    arr = open_raster(path, chunks=chunks)
    assert arr.data.chunksize == (2, *expected)
    np.testing.assert_array_equal(arr.values, _file_values(path))


@pytest.mark.parametrize("chunks", [0, -3, (1, 2, 3), "big", (0, 5)])
def test_bad_chunks(tmp_path: Path, make_raster: MakeRaster, chunks: object) -> None:
    path = make_raster(tmp_path, "c.tif", height=10, width=10)
    with pytest.raises(InputError, match="chunks"):
        open_raster(path, chunks=chunks)  # type: ignore[arg-type]


def test_band_selection_by_number_and_name(tmp_path: Path, make_raster: MakeRaster) -> None:
    names = ["B02", "B03", "B04", "B08"]
    path = make_raster(tmp_path, "s2.tif", height=12, width=9, count=4, descriptions=names)
    raw = _file_values(path)
    full = open_raster(path)
    assert list(full["band"].values) == names
    by_num = open_raster(path, bands=[4, 1])
    assert list(by_num["band"].values) == ["B08", "B02"]
    np.testing.assert_array_equal(by_num.values, raw[[3, 0]])
    by_name = open_raster(path, bands=["B04", "B03"])
    assert list(by_name["band"].values) == ["B04", "B03"]
    np.testing.assert_array_equal(by_name.values, raw[[2, 1]])
    mixed = open_raster(path, bands=["B08", 2, "3"])  # a digit string is a band number
    np.testing.assert_array_equal(mixed.values, raw[[3, 1, 2]])
    single = open_raster(path, bands=[3])
    assert single.shape == (1, 12, 9)


@pytest.mark.parametrize("bands", [[5], [0], [-1], ["B05"], ["b02"]])
def test_bad_band_selection_names_available_bands(
    tmp_path: Path, make_raster: MakeRaster, bands: list[int | str]
) -> None:
    path = make_raster(
        tmp_path, "s2.tif", height=5, width=5, count=4, descriptions=["B02", "B03", "B04", "B08"]
    )
    with pytest.raises(InputError) as info:
        open_raster(path, bands=bands)
    msg = str(info.value)
    assert "s2.tif" in msg
    for name in ("B02", "B03", "B04", "B08"):
        assert name in msg


def test_empty_band_selection(tmp_path: Path, make_raster: MakeRaster) -> None:
    path = make_raster(tmp_path, "a.tif", height=5, width=5, count=2)
    with pytest.raises(InputError, match="empty"):
        open_raster(path, bands=[])


def test_duplicate_descriptions_fall_back_to_numbers(
    tmp_path: Path, make_raster: MakeRaster
) -> None:
    path = make_raster(tmp_path, "dup.tif", height=5, width=5, count=2, descriptions=["x", "x"])
    assert list(open_raster(path)["band"].values) == ["band_1", "band_2"]


def test_missing_file_raises_read_error(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="no such file") as info:
        open_raster(tmp_path / "nope.tif")
    assert isinstance(info.value, OSError)


@pytest.mark.parametrize("suffix", [".tif", ".txt"])
def test_not_a_raster_raises_read_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"notes{suffix}"
    path.write_text("this is not a raster\n")
    with pytest.raises(ReadError, match=f"notes{suffix}"):
        open_raster(path)


def test_truncated_geotiff_fails_on_compute_naming_the_file(
    tmp_path: Path, make_raster: MakeRaster
) -> None:
    path = make_raster(
        tmp_path, "trunc.tif", height=256, width=256, count=2, blocksize=64, compress="deflate"
    )
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    arr = open_raster(path, chunks=64)  # opening reads only the header: no error yet
    assert arr.shape == (2, 256, 256)
    with pytest.raises(ReadError, match=r"trunc\.tif"):
        arr.compute()
    # The blocks before the cut are still readable.
    np.testing.assert_array_equal(arr[:, :64, :64].values.shape, (2, 64, 64))


def test_reads_are_lazy_and_per_chunk(
    tmp_path: Path, make_raster: MakeRaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_raster(tmp_path, "lazy.tif", height=64, width=64, blocksize=16)
    from georaster_cnn.io import _gdal_open

    opened: list[str] = []
    real_open = _gdal_open._reader

    def counting_open(fp: str, drivers: list[str]) -> object:
        opened.append(str(fp))
        return real_open(fp, drivers)

    arr = open_raster(path, chunks=32)
    monkeypatch.setattr(_gdal_open, "_reader", counting_open)
    sub = arr[:, :32, :32] + 1  # still lazy
    assert opened == []
    sub.compute()
    assert len(opened) == 1  # only the one chunk needed


def test_gcps_only_raster_is_rejected(tmp_path: Path) -> None:
    from rasterio.control import GroundControlPoint

    path = tmp_path / "gcps.tif"
    gcps = [
        GroundControlPoint(0, 0, 500000, 4600000),
        GroundControlPoint(0, 10, 500300, 4600000),
        GroundControlPoint(10, 0, 500000, 4599700),
    ]
    profile = {"driver": "GTiff", "height": 10, "width": 10, "count": 1, "dtype": "uint8"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # no geotransform, GCPs only
        dst = rasterio.open(path, "w", **profile)
    with dst:
        dst.gcps = (gcps, rasterio.crs.CRS.from_epsg(32633))
        dst.write(np.ones((1, 10, 10), dtype="uint8"))
    with pytest.raises(InputError, match="ground control points"):
        open_raster(path)


def test_no_georeferencing_is_supported_quietly(tmp_path: Path) -> None:
    """A plain TIFF without geotransform or CRS reads in pixel coordinates, no warning."""
    path = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "height": 40, "width": 30, "count": 2, "dtype": "uint8"}
    values = np.arange(2 * 40 * 30, dtype="uint16").reshape(2, 40, 30) % 251
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(values.astype("uint8"))
    arr = open_raster(path, chunks=8)  # 20 chunks: concurrent opens on Dask threads
    assert arr.rio.crs is None
    assert arr.rio.transform().is_identity
    for _ in range(5):  # the quiet open must hold up under concurrency, not just once
        np.testing.assert_array_equal(arr.values, values.astype("float32"))


def test_striped_file_chunks_are_bounded(tmp_path: Path, make_raster: MakeRaster) -> None:
    """Strips as wide as the raster must not become one chunk as wide as the raster."""
    path = make_raster(tmp_path, "wide.tif", height=20, width=5000, count=1, tiled=False)
    arr = open_raster(path)
    assert max(arr.chunks[2]) <= 2048
    np.testing.assert_array_equal(arr.values, _file_values(path))


# --------------------------------------------------------------------------- netCDF


def _cf_dataset(h: int = 12, w: int = 10) -> xr.Dataset:
    rng = np.random.default_rng(7)
    x = 500_000.0 + 30.0 * (np.arange(w) + 0.5)
    y = 4_600_000.0 - 30.0 * (np.arange(h) + 0.5)
    temp = rng.standard_normal((h, w)).astype("float32")
    temp[2:4, 3:6] = np.nan
    moist = rng.uniform(0, 1, (h, w)).astype("float32")
    ds = xr.Dataset(
        {"temperature": (("y", "x"), temp), "moisture": (("y", "x"), moist)},
        coords={"y": y, "x": x},
    )
    ds = ds.rio.write_crs("EPSG:32633")  # adds spatial_ref and grid_mapping attributes
    return ds


def test_netcdf_cf_grid_mapping(tmp_path: Path) -> None:
    ds = _cf_dataset()
    path = tmp_path / "cf.nc"
    for name in ("temperature", "moisture"):
        ds[name].encoding["_FillValue"] = -999.0  # keeps rioxarray's grid_mapping encoding
    ds.to_netcdf(path)
    # The file really is CF with a grid mapping and a fill value.
    with xr.open_dataset(path, decode_coords=False, mask_and_scale=False) as check:
        assert check["temperature"].attrs["grid_mapping"] == "spatial_ref"
        assert check["temperature"].attrs["_FillValue"] == -999.0
        assert "crs_wkt" in check["spatial_ref"].attrs
    arr = open_raster(path)
    _check_canonical(arr, 2, 12, 10)
    assert list(arr["band"].values) == ["temperature", "moisture"]
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(32633)
    assert arr.rio.transform().almost_equals(NORTH_UP, precision=1e-6)
    np.testing.assert_array_equal(arr.values[0], ds["temperature"].values)
    np.testing.assert_array_equal(arr.values[1], ds["moisture"].values)
    assert np.isnan(arr.values[0, 2:4, 3:6]).all()
    assert arr.attrs["source_nodata"] == -999.0
    sel = open_raster(path, bands=["moisture"])
    np.testing.assert_array_equal(sel.values[0], ds["moisture"].values)
    with pytest.raises(InputError, match="temperature"):
        open_raster(path, bands=["pressure"])


def _latlon_dataset(ascending: bool, time: bool = False) -> xr.Dataset:
    lat = np.linspace(40.0, 45.0, 11)  # 0.5 degree steps
    if not ascending:
        lat = lat[::-1]
    lon = np.linspace(10.0, 14.0, 9)
    field = np.add.outer(lat, lon).astype("float32")  # value encodes the position
    if time:
        da_ = xr.DataArray(
            field[None],
            dims=("time", "lat", "lon"),
            coords={"time": pd.to_datetime(["2024-01-01"]), "lat": lat, "lon": lon},
        )
    else:
        da_ = xr.DataArray(field, dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    return xr.Dataset({"t2m": da_})


@pytest.mark.parametrize("ascending", [True, False])
def test_netcdf_plain_latlon_is_epsg4326(tmp_path: Path, ascending: bool) -> None:
    ds = _latlon_dataset(ascending)
    path = tmp_path / "ll.nc"
    ds.to_netcdf(path)
    arr = open_raster(path)
    _check_canonical(arr, 1, 11, 9)
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(4326)
    t = arr.rio.transform()
    dlat = 0.5 if ascending else -0.5
    first_lat = 40.0 if ascending else 45.0
    expected = Affine(0.5, 0.0, 10.0 - 0.25, 0.0, dlat, first_lat - dlat / 2)
    assert t.almost_equals(expected, precision=1e-9)
    np.testing.assert_allclose(arr["y"].values, ds["lat"].values)
    np.testing.assert_allclose(arr["x"].values, ds["lon"].values)
    np.testing.assert_array_equal(arr.values[0], ds["t2m"].values)
    # Each pixel centre maps to the latitude/longitude its value encodes.
    for r, c in [(0, 0), (3, 7), (10, 8)]:
        lon, lat = t @ (c + 0.5, r + 0.5)
        assert arr.values[0, r, c] == pytest.approx(lat + lon, abs=1e-4)


def test_netcdf_time_dim_of_length_one_is_squeezed(tmp_path: Path) -> None:
    ds = _latlon_dataset(False, time=True)
    path = tmp_path / "t.nc"
    ds.to_netcdf(path)
    arr = open_raster(path)
    _check_canonical(arr, 1, 11, 9)
    np.testing.assert_array_equal(arr.values[0], ds["t2m"].values[0])


def test_netcdf_irregular_axis_asks_to_regrid(tmp_path: Path) -> None:
    lat = np.array([40.0, 40.5, 41.0, 42.0, 42.1])
    lon = np.linspace(10.0, 12.0, 5)
    ds = xr.Dataset(
        {"v": (("lat", "lon"), np.ones((5, 5), "float32"))}, coords={"lat": lat, "lon": lon}
    )
    path = tmp_path / "irr.nc"
    ds.to_netcdf(path)
    with pytest.raises(InputError, match="regrid"):
        open_raster(path)


def test_netcdf_packed_ints_report_unpacked_dtype(tmp_path: Path) -> None:
    ds = _cf_dataset()
    temp = ds["temperature"]
    temp.encoding.update(dtype="int16", scale_factor=0.001, add_offset=0.0, _FillValue=-32768)
    path = tmp_path / "packed.nc"
    ds[["temperature"]].to_netcdf(path)
    arr = open_raster(path)
    np.testing.assert_allclose(arr.values[0], ds["temperature"].values, atol=6e-4)
    assert np.isnan(arr.values[0, 2:4, 3:6]).all()
    # The values are unpacked floats: the dtype reported for range checks must say so.
    assert np.dtype(arr.attrs["source_dtype"]).kind == "f", arr.attrs["source_dtype"]


def test_netcdf_without_grid_variable(tmp_path: Path) -> None:
    ds = xr.Dataset({"series": (("time",), np.arange(5.0))})
    path = tmp_path / "series.nc"
    ds.to_netcdf(path)
    with pytest.raises(InputError, match="no 2-D variable"):
        open_raster(path)


def test_corrupt_netcdf_raises_read_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.nc"
    path.write_bytes(os.urandom(256))
    with pytest.raises(ReadError, match=r"bad\.nc"):
        open_raster(path)


@pytest.mark.parametrize(("driver", "suffix"), [("ENVI", ".bin"), ("HFA", ".img"), ("VRT", ".vrt")])
def test_other_gdal_formats(
    tmp_path: Path, make_raster: MakeRaster, driver: str, suffix: str
) -> None:
    """Any raster GDAL opens: the same pixels, CRS and transform as the source GeoTIFF."""
    src = make_raster(
        tmp_path, "src.tif", height=70, width=45, count=3, nodata=-9999.0, transform=NORTH_UP
    )
    with rasterio.Env() as env:
        if driver not in env.drivers():
            pytest.skip(f"GDAL driver {driver} not available")
    other = tmp_path / f"copy{suffix}"
    rasterio.shutil.copy(src, other, driver=driver)
    ref, arr = open_raster(src), open_raster(other)
    assert arr.rio.crs == ref.rio.crs
    assert arr.rio.transform() == ref.rio.transform()
    np.testing.assert_array_equal(arr.values, ref.values)


# --------------------------------------------------------------------------- paths sent to workers


def _scene_file(path: Path, seed: int, make_raster: MakeRaster) -> np.ndarray:
    """A small raster at ``path`` (GeoTIFF, netCDF or Zarr by its suffix); its values."""
    values = np.random.default_rng(seed).random((1, 12, 10)).astype("float32")
    if path.suffix == ".tif":
        make_raster(path.parent, path.name, height=12, width=10, values=values)
        return values
    coords = {
        "y": 4_600_000.0 - 30.0 * (np.arange(12) + 0.5),
        "x": 500_000.0 + 30.0 * np.arange(10),
    }
    ds = xr.Dataset({"v": (("y", "x"), values[0])}, coords=coords)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".nc":
        ds.to_netcdf(path)
    else:
        ds.to_zarr(path, zarr_format=3, consolidated=False)
    return values


@pytest.mark.parametrize("name", ["scene.tif", "scene.nc", "scene.zarr"])
def test_relative_path_is_read_as_the_same_file_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_raster: MakeRaster, name: str
) -> None:
    """What the graph sends to a worker names the file absolutely: a worker whose working
    folder holds another raster under the same relative name still reads this one."""
    import pickle

    here = _scene_file(tmp_path / "here" / name, 1, make_raster)
    _scene_file(tmp_path / "elsewhere" / name, 2, make_raster)  # same name, other values
    monkeypatch.chdir(tmp_path / "here")
    data = open_raster(name)
    assert data.attrs["source"] == name  # messages and provenance keep the user's name
    sent = pickle.dumps(data.data)
    monkeypatch.chdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(pickle.loads(sent).compute(), here)
    if name.endswith(".tif"):
        from georaster_cnn.chips import _WINDOWED

        reader = _WINDOWED[data.data.name]
        assert Path(reader.path).is_absolute()  # type: ignore[attr-defined]
        unpickled: Any = pickle.loads(pickle.dumps(reader))
        assert unpickled.path == str(tmp_path / "here" / name)


def test_relative_paths_of_several_netcdf_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_raster: MakeRaster
) -> None:
    import pickle

    first = _scene_file(tmp_path / "here" / "a.nc", 1, make_raster)
    _scene_file(tmp_path / "elsewhere" / "a.nc", 2, make_raster)
    monkeypatch.chdir(tmp_path / "here")
    data = open_raster(["a.nc"])
    sent = pickle.dumps(data.data)
    monkeypatch.chdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(pickle.loads(sent).compute(), first)


def test_file_deleted_after_open_names_the_real_cause(
    tmp_path: Path, make_raster: MakeRaster
) -> None:
    path = make_raster(tmp_path, "gone.tif", height=12, width=10)
    data = open_raster(path)
    path.unlink()
    with pytest.raises(ReadError) as info:
        data.compute()
    msg = str(info.value)
    assert "No such file or directory" in msg and "gone.tif" in msg
    assert "not a raster GDAL can open" not in msg and "made unreadable after it was opened" in msg
    assert " on worker " not in msg  # read here, not on a worker


def test_unreadable_file_names_the_real_cause(tmp_path: Path, make_raster: MakeRaster) -> None:
    path = make_raster(tmp_path, "locked.tif", height=12, width=10)
    data = open_raster(path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who reads any file (root)")
        with pytest.raises(ReadError, match="Permission denied"):
            data.compute()
        with pytest.raises(
            ReadError, match=r"locked\.tif: cannot open the file \(Permission denied\)"
        ):
            open_raster(path)
    finally:
        path.chmod(0o644)


def test_the_os_reason_reaches_the_message(
    tmp_path: Path, make_raster: MakeRaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the OS says when the file cannot be opened is what the ReadError says
    (the test above cannot deny root a read; here the OS is told to)."""
    path = make_raster(tmp_path, "denied.tif", height=12, width=10)
    data = open_raster(path)
    real_open = os.open

    def denying(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(name) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(name, flags, *args, **kwargs)

    path.unlink()  # GDAL fails; the check of why then hears "Permission denied"
    monkeypatch.setattr(os, "open", denying)
    with pytest.raises(ReadError, match=r"denied\.tif: cannot read pixels .*\(Permission denied\)"):
        data.compute()


@pytest.mark.parametrize("name", ["gone.nc", "gone.zarr"])
def test_netcdf_or_zarr_deleted_after_open_names_the_real_cause(
    tmp_path: Path, make_raster: MakeRaster, name: str
) -> None:
    """As a worker process that opens the input afresh sees it. A Zarr store would read
    as all nodata (zarr fills missing chunks) without the check of its root metadata."""
    import shutil

    path = tmp_path / name
    _scene_file(path, 1, make_raster)
    data = open_raster(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
        xr.backends.file_manager.FILE_CACHE.clear()  # no file open yet, as on a fresh worker
    with pytest.raises(
        ReadError, match=rf"{name}.*No such file or directory.*made unreadable after it was opened"
    ):
        data.compute()


def test_a_worker_that_cannot_read_names_itself(tmp_path: Path, make_raster: MakeRaster) -> None:
    distributed = pytest.importorskip("distributed")
    path = make_raster(tmp_path, "gone.tif", height=12, width=10)
    data = open_raster(path)
    path.unlink()
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        address = next(iter(client.scheduler_info()["workers"]))
        with pytest.raises(ReadError) as info:
            client.compute(data.data).result()
    msg = str(info.value)
    assert f"on worker {address}" in msg and "No such file or directory" in msg
