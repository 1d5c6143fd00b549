"""open: netCDF (one file or several) and Zarr through one xarray path.

Variables, select/stack of extra dimensions, CRS and transform from CF metadata or
lat/lon axes, curvilinear grids, broken files, and the CLI options that reach it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from affine import Affine
from click.testing import CliRunner
from georaster_cnn_cli.main import cli

from georaster_cnn import InputError, ReadError, open_raster
from georaster_cnn.model.modelfile import GeoModel, save_model

TIMES = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"])
H, W = 12, 10
#: Pixel corners of the projected test grid (30 m pixels, UTM 33N).
UTM = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_600_000.0)


def _projected(times: pd.DatetimeIndex = TIMES, *, level: bool = True) -> xr.Dataset:
    """CF dataset on EPSG:32633 with ``tas`` and ``pr`` over (time, [level,] y, x)."""
    rng = np.random.default_rng(11)
    x = UTM.c + UTM.a * (np.arange(W) + 0.5)
    y = UTM.f + UTM.e * (np.arange(H) + 0.5)
    dims: tuple[str, ...] = ("time", "level", "y", "x") if level else ("time", "y", "x")
    shape = (len(times), 1, H, W) if level else (len(times), H, W)
    coords: dict[str, object] = {"time": times, "y": y, "x": x}
    if level:
        coords["level"] = [850]
    ds = xr.Dataset(
        {
            "tas": (dims, rng.normal(280, 5, shape).astype("float32")),
            "pr": (dims, rng.uniform(0, 3, shape).astype("float32")),
        },
        coords=coords,
    )
    return ds.rio.write_crs("EPSG:32633")


def _write_nc(ds: xr.Dataset, path: Path) -> Path:
    ds.to_netcdf(path)
    return path


@pytest.fixture
def projected_nc(tmp_path: Path) -> Path:
    return _write_nc(_projected(), tmp_path / "cf_time.nc")


def _check_grid(arr: xr.DataArray, n_bands: int) -> None:
    assert arr.dims == ("band", "y", "x")
    assert arr.shape == (n_bands, H, W)
    assert arr.dtype == np.float32
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(32633)
    assert arr.rio.transform().almost_equals(UTM, precision=1e-6)


# --------------------------------------------------------------------------- variables, select, stack


def test_variables_and_date_within_half_a_step(projected_nc: Path) -> None:
    ds = _projected()
    arr = open_raster(projected_nc, variables=["pr"], select={"time": "2020-01-02T05:00"})
    _check_grid(arr, 1)
    assert list(arr["band"].values) == ["pr"]
    np.testing.assert_array_equal(arr.values[0], ds["pr"].values[1, 0])
    assert arr.attrs["selected"] == {"time": "2020-01-02T00:00:00"}  # the value picked
    # A datetime object works as well as a string; the level (length 1) is dropped.
    arr = open_raster(projected_nc, select={"time": np.datetime64("2020-01-03T12:00")})
    assert list(arr["band"].values) == ["tas", "pr"]
    np.testing.assert_array_equal(arr.values[0], ds["tas"].values[2, 0])
    assert arr.attrs["selected"] == {"time": "2020-01-03T00:00:00"}


def test_select_level_exactly_by_string(projected_nc: Path) -> None:
    arr = open_raster(projected_nc, select={"time": "2020-01-01", "level": "850"})
    assert arr.shape == (2, H, W)
    assert arr.attrs["selected"] == {"time": "2020-01-01T00:00:00", "level": "850"}
    with pytest.raises(InputError, match=r"'level' has no value '700'; its values are 850"):
        open_raster(projected_nc, select={"time": "2020-01-01", "level": "700"})
    with pytest.raises(InputError, match=r"not a number"):
        open_raster(projected_nc, select={"time": "2020-01-01", "level": "high"})
    with pytest.raises(InputError, match=r"no such dimension; dimensions are .*time \(3\)"):
        open_raster(projected_nc, select={"height": 2})
    with pytest.raises(InputError, match="not a date"):
        open_raster(projected_nc, select={"time": "yesterday"})


def test_stack_time_makes_one_band_per_step(projected_nc: Path) -> None:
    ds = _projected()
    arr = open_raster(projected_nc, stack="time")
    _check_grid(arr, 6)
    days = ["2020-01-01", "2020-01-02", "2020-01-03"]
    assert list(arr["band"].values) == [f"tas@{d}" for d in days] + [f"pr@{d}" for d in days]
    np.testing.assert_array_equal(arr.values[4], ds["pr"].values[1, 0])
    # bands= picks a whole variable or one stacked band.
    sub = open_raster(projected_nc, stack="time", bands=["pr", "tas@2020-01-03"])
    assert list(sub["band"].values) == [*(f"pr@{d}" for d in days), "tas@2020-01-03"]
    # A stacked dimension without dates names its steps dim=value.
    lev = _projected(TIMES[:1], level=False).expand_dims(level=[500, 850], axis=1)
    path = _write_nc(lev, projected_nc.with_name("levels.nc"))
    arr = open_raster(path, stack="level", variables=["tas"])
    assert list(arr["band"].values) == ["tas@level=500", "tas@level=850"]


def test_cftime_calendar_select_and_stack(tmp_path: Path) -> None:
    ds = _projected(level=False)
    times = xr.date_range("2000-02-28", periods=3, calendar="360_day", use_cftime=True)
    path = _write_nc(ds.assign_coords(time=times), tmp_path / "model_360day.nc")
    arr = open_raster(path, select={"time": "2000-02-30T10:00"})  # a 360_day date, nearest
    np.testing.assert_array_equal(arr.values[0], ds["tas"].values[2])
    stacked = open_raster(path, stack="time", variables=["tas"])
    assert list(stacked["band"].values) == ["tas@2000-02-28", "tas@2000-02-29", "tas@2000-02-30"]
    with pytest.raises(InputError, match="not a date"):
        open_raster(path, select={"time": "February"})


def _daily(times: list[str] | pd.DatetimeIndex, tmp_path: Path, name: str = "days.nc") -> Path:
    return _write_nc(_projected(pd.DatetimeIndex(times), level=False), tmp_path / name)


def test_date_far_from_every_step_is_refused_naming_nearest_range_and_fix(
    tmp_path: Path,
) -> None:
    path = _daily(pd.date_range("1999-12-29", "1999-12-31"), tmp_path, "y1999.nc")
    with pytest.raises(InputError) as err:
        open_raster(path, select={"time": "2005-07-15"})
    msg = str(err.value)
    assert "y1999.nc: no time step at 2005-07-15" in msg, msg
    assert "the nearest is 1999-12-31, 2023 days away (more than half a step)" in msg
    assert "time runs from 1999-12-29 to 1999-12-31 (3 steps)" in msg
    assert "use select={'time': '~2005-07-15'}" in msg and "--" not in msg
    # Half a step before the first step or after the last is still that step.
    arr = open_raster(path, select={"time": "1999-12-31T12:00"})
    assert arr.attrs["selected"] == {"time": "1999-12-31T00:00:00"}
    with pytest.raises(InputError, match="no time step at 1999-12-28T11:00"):
        open_raster(path, select={"time": "1999-12-28T11:00"})


def test_tilde_takes_the_nearest_step_records_logs_and_warns_when_far(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _projected(TIMES, level=False)
    path = _daily(TIMES, tmp_path)
    with (
        caplog.at_level("INFO", logger="georaster_cnn"),
        pytest.warns(UserWarning, match=r"took 2020-01-03T00:00:00, 2020 days from 2025-07-15"),
    ):
        arr = open_raster(path, select={"time": "~2025-07-15"})
    np.testing.assert_array_equal(arr.values[0], ds["tas"].values[2])
    assert arr.attrs["selected"] == {"time": "2020-01-03T00:00:00"}
    assert any(
        "select time=~2025-07-15 picked 2020-01-03T00:00:00" in r.getMessage()
        for r in caplog.records
    )
    # A near pick says nothing more than the log line: no warning (warnings are errors here).
    arr = open_raster(path, select={"time": "~ 2020-01-02T05:00"})
    assert arr.attrs["selected"] == {"time": "2020-01-02T00:00:00"}


def test_a_date_in_a_gap_of_the_axis_is_refused(tmp_path: Path) -> None:
    """Missing steps: the regular step counts, not the gap."""
    path = _daily(["2020-01-01", "2020-01-02", "2020-01-04", "2020-01-05"], tmp_path)
    with pytest.raises(InputError, match=r"no time step at 2020-01-03: the nearest is 2020-01-02"):
        open_raster(path, select={"time": "2020-01-03"})
    near = open_raster(path, select={"time": "2020-01-03T20:00"})  # 4 h before the 4th
    assert near.attrs["selected"] == {"time": "2020-01-04T00:00:00"}


def test_monthly_mid_month_stamps_match_any_date_of_the_month(tmp_path: Path) -> None:
    months = ["2020-01-16T12:00", "2020-02-15T12:00", "2020-03-16T12:00", "2020-04-16T00:00"]
    path = _daily(months, tmp_path, "monthly.nc")
    for day, picked in [
        ("2020-02-01", "2020-02-15T12:00:00"),
        ("2020-03-05", "2020-03-16T12:00:00"),
        ("2020-03-31", "2020-03-16T12:00:00"),
    ]:
        assert open_raster(path, select={"time": day}).attrs["selected"] == {"time": picked}


def test_cftime_select_refuses_far_dates_in_the_files_calendar(tmp_path: Path) -> None:
    ds = _projected(level=False)
    times = xr.date_range("2000-02-28", periods=3, calendar="360_day", use_cftime=True)
    path = _write_nc(ds.assign_coords(time=times), tmp_path / "model_360day.nc")
    arr = open_raster(path, select={"time": "2000-02-30"})
    assert arr.attrs["selected"] == {"time": "2000-02-30T00:00:00"}
    with pytest.raises(InputError, match=r"nearest is 2000-02-30, 301 days away.*'~2001-01-01'"):
        open_raster(path, select={"time": "2001-01-01"})
    with pytest.warns(UserWarning, match="took 2000-02-30T00:00:00"):
        arr = open_raster(path, select={"time": "~2001-01-01"})
    np.testing.assert_array_equal(arr.values[0], ds["tas"].values[2])


def test_levels_exact_or_nearest_with_tilde(tmp_path: Path) -> None:
    base = _projected(TIMES[:1], level=False)
    ds = base.expand_dims(level=np.array([500.0, 850.0], dtype="float32"), axis=1)
    path = _write_nc(ds, tmp_path / "levels.nc")
    arr = open_raster(path, select={"level": "850"})
    assert arr.attrs["selected"] == {"level": "850"}
    with pytest.raises(InputError) as err:
        open_raster(path, select={"level": 700})
    msg = str(err.value)
    assert "'level' has no value 700; its values are 500, 850 (nearest: 850)" in msg, msg
    assert "select={'level': '~700'}" in msg
    with pytest.warns(UserWarning, match=r"took 850, 150 from 700 \(700 is not a value of"):
        arr = open_raster(path, select={"level": "~700"})
    assert arr.attrs["selected"] == {"level": "850"}
    np.testing.assert_array_equal(arr.values[1], ds["pr"].values[0, 1])
    # float32 levels match the decimal written for them.
    tenth = base.expand_dims(sigma=np.array([0.1, 0.2], dtype="float32"), axis=1)
    path = _write_nc(tenth, tmp_path / "sigma.nc")
    assert open_raster(path, select={"sigma": "0.1"}).attrs["selected"] == {"sigma": "0.1"}


def test_tilde_needs_an_ordered_axis(tmp_path: Path) -> None:
    ds = _projected(TIMES[:1], level=False).isel(time=0, drop=True)
    members = ds.expand_dims(member=["r1", "r2"])
    path = _write_nc(members, tmp_path / "members.nc")
    assert open_raster(path, select={"member": "r2"}).attrs["selected"] == {"member": "r2"}
    with pytest.raises(InputError, match=r"'~' \(nearest\) needs a numeric or date axis"):
        open_raster(path, select={"member": "~r2"})
    with pytest.raises(InputError, match=r"'member' has no value 'r3'; its values are r1, r2"):
        open_raster(path, select={"member": "r3"})


def test_dimension_without_coordinate_selects_by_position(tmp_path: Path) -> None:
    ds = _projected(TIMES[:1], level=False).isel(time=0, drop=True).expand_dims(member=2)
    path = _write_nc(ds, tmp_path / "ensemble.nc")
    assert open_raster(path, select={"member": "1"}).shape == (2, H, W)
    arr = open_raster(path, stack="member", variables=["pr"])
    assert list(arr["band"].values) == ["pr@member=0", "pr@member=1"]
    with pytest.raises(InputError, match=r"'member' of length 2.*member values: 0\.\.1"):
        open_raster(path)


def test_unselected_extra_dimension_names_the_options(projected_nc: Path) -> None:
    with pytest.raises(InputError) as err:
        open_raster(projected_nc)
    msg = str(err.value)
    assert "'time' of length 3" in msg
    assert "select={'time': VALUE}" in msg and "stack='time'" in msg and "--" not in msg
    assert "2020-01-01, 2020-01-02, 2020-01-03" in msg


def test_bad_variable_and_option_combinations(projected_nc: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no variable 'huss'.*variables are tas, pr"):
        open_raster(projected_nc, variables=["huss"], stack="time")
    with pytest.raises(InputError, match="not both"):
        open_raster(projected_nc, variables=["tas"], bands=["tas"], stack="time")
    with pytest.raises(InputError, match="both selected and stacked"):
        open_raster(projected_nc, select={"time": "2020-01-01"}, stack="time")
    with pytest.raises(InputError, match=r"cannot stack 'member'.*time"):
        open_raster(projected_nc, stack="member")
    tif = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "float32"}
    with rasterio.open(tif, "w", crs="EPSG:32633", transform=UTM, **profile) as dst:
        dst.write(np.zeros((1, 4, 4), "float32"))
    with pytest.raises(InputError, match=r"select= apply only to netCDF and Zarr"):
        open_raster(tif, select={"time": "2020-01-01"})


# --------------------------------------------------------------------------- lat/lon grids


def _latlon(lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    field = np.add.outer(lat * 1000.0, lon).astype("float64")  # value encodes the position
    return xr.Dataset({"v": (("lat", "lon"), field)}, coords={"lat": lat, "lon": lon})


def _centres_land_on_coordinates(arr: xr.DataArray) -> None:
    t = arr.rio.transform()
    h, w = arr.shape[1:]
    for r, c in [(0, 0), (h // 2, w - 1), (h - 1, 1)]:
        lon, lat = t * (c + 0.5, r + 0.5)
        assert arr.values[0, r, c] == pytest.approx(lat * 1000.0 + lon, abs=1e-2)


@pytest.mark.parametrize("ascending", [True, False])
def test_latitude_either_direction(tmp_path: Path, ascending: bool) -> None:
    lat = np.arange(40.0, 45.01, 0.5)
    lat = lat if ascending else lat[::-1]
    path = _write_nc(_latlon(lat, np.arange(10.0, 14.01, 0.5)), tmp_path / "ll.nc")
    arr = open_raster(path)
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(4326)
    assert arr.rio.transform().f == pytest.approx(lat[0] - (0.25 if ascending else -0.25))
    assert arr.rio.bounds() == pytest.approx((9.75, 39.75, 14.25, 45.25))
    np.testing.assert_allclose(arr["y"].values, lat)
    _centres_land_on_coordinates(arr)


def test_longitudes_0_to_360_are_kept(tmp_path: Path) -> None:
    lon = np.arange(15.0, 360.0, 30.0)  # 15 .. 345, 12 columns
    lat = np.array([45.0, 15.0, -15.0, -45.0])
    path = _write_nc(_latlon(lat, lon), tmp_path / "global.nc")
    arr = open_raster(path)
    t = arr.rio.transform()
    assert (t.a, t.c, t.e, t.f) == pytest.approx((30.0, 0.0, -30.0, 60.0))
    assert arr.rio.bounds() == pytest.approx((0.0, -60.0, 360.0, 60.0))
    np.testing.assert_allclose(arr["x"].values, lon)
    _centres_land_on_coordinates(arr)


def test_latlon_found_by_units(tmp_path: Path) -> None:
    ds = _latlon(np.arange(40.0, 42.01, 0.5), np.arange(10.0, 12.01, 0.5))
    ds = ds.rename(lat="y", lon="x")
    ds["y"].attrs["units"] = "degrees_north"
    ds["x"].attrs["units"] = "degrees_east"
    arr = open_raster(_write_nc(ds, tmp_path / "units.nc"))
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(4326)


@pytest.mark.parametrize("with_xy", [False, True])
def test_curvilinear_grid_asks_to_regrid(tmp_path: Path, with_xy: bool) -> None:
    yy, xx = np.meshgrid(np.arange(6.0), np.arange(5.0), indexing="ij")
    coords: dict[str, object] = {
        "lat": (("y", "x"), 40.0 + 0.5 * yy + 0.1 * xx),
        "lon": (("y", "x"), 10.0 + 0.5 * xx - 0.1 * yy),
    }
    if with_xy:  # 1-D axes but no grid mapping: their meaning is unknown
        coords.update(y=np.arange(6.0), x=np.arange(5.0))
    ds = xr.Dataset({"sst": (("y", "x"), np.ones((6, 5), "float32"))}, coords=coords)
    path = _write_nc(ds, tmp_path / "curvi.nc")
    with pytest.raises(InputError, match=r"curvilinear.*regrid.*(xESMF|cdo remapbil)"):
        open_raster(path)


# --------------------------------------------------------------------------- encoding, broken files


def test_packed_int16_is_decoded(tmp_path: Path) -> None:
    ds = _projected(TIMES[:1], level=False)[["tas"]]
    ds["tas"][0, 2:4, 3:6] = np.nan
    ds["tas"].encoding.update(dtype="int16", scale_factor=0.01, add_offset=280.0, _FillValue=-32768)
    path = _write_nc(ds, tmp_path / "packed.nc")
    with xr.open_dataset(path, mask_and_scale=False, decode_coords=False) as raw:
        assert raw["tas"].dtype == np.int16
    arr = open_raster(path)
    np.testing.assert_allclose(arr.values[0], ds["tas"].values[0], atol=0.006)
    assert np.isnan(arr.values[0, 2:4, 3:6]).all()
    assert np.isfinite(arr.values[0]).sum() == H * W - 6
    assert arr.attrs["source_nodata"] == -32768


@pytest.mark.parametrize("damage", ["garbage", "truncated", "truncated_classic"])
def test_broken_netcdf_is_a_read_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "broken.nc"
    if damage == "garbage":
        path.write_bytes(b"CDF\x01" + bytes(range(256)) * 4)
    else:
        classic = damage == "truncated_classic"
        _projected().to_netcdf(path, format="NETCDF3_CLASSIC" if classic else "NETCDF4")
        whole = path.read_bytes()
        # netCDF-3 keeps its header at the start: cut the data, which reads as zeros.
        path.write_bytes(whole[: len(whole) * 3 // 4])
    with pytest.raises(ReadError, match=r"broken\.nc: not a readable netCDF file"):
        open_raster(path, stack="time").values  # noqa: B018


def _compressed_nc(path: Path, times: pd.DatetimeIndex = TIMES) -> tuple[Path, xr.Dataset]:
    """A netCDF-4 file whose ``tas`` is zlib-compressed in 4x5 chunks."""
    ds = _projected(times, level=False)
    ds["tas"].encoding.update(zlib=True, complevel=4, shuffle=False, chunksizes=(1, 4, 5))
    ds.to_netcdf(path, format="NETCDF4")
    return path, ds


def _corrupt_chunk(path: Path, block: np.ndarray) -> None:
    """Flip bytes inside the compressed chunk that holds ``block`` (not at the file's end)."""
    whole = bytearray(path.read_bytes())
    packed = zlib.compress(np.ascontiguousarray(block).tobytes(), 4)  # as HDF5 deflates it
    start = whole.find(packed[2:-4])  # the deflate stream, without zlib header and checksum
    assert start > 0, "chunk not found"
    middle = start + len(packed) // 2
    for i in range(middle - 8, middle + 8):
        whole[i] ^= 0xFF
    path.write_bytes(bytes(whole))


def test_corrupted_chunk_is_a_read_error_naming_file_and_variable(tmp_path: Path) -> None:
    path, ds = _compressed_nc(tmp_path / "corrupt.nc")
    _corrupt_chunk(path, ds["tas"].values[1, 4:8, 5:10])
    arr = open_raster(path, stack="time")  # the header is intact: opening works
    with pytest.raises(ReadError) as err:
        arr.data.compute()  # the read happens inside the Dask computation
    msg = str(err.value)
    assert msg.startswith(f"{path}: cannot read variable 'tas'"), msg
    assert "damaged" in msg
    assert isinstance(err.value.__cause__, RuntimeError)  # netCDF's own error, kept as cause
    with pytest.raises(ReadError, match=r"corrupt\.nc: cannot read variable 'tas'"):
        arr.values  # noqa: B018
    # The same file undamaged reads as written.
    clean, _ = _compressed_nc(tmp_path / "clean.nc")
    np.testing.assert_array_equal(open_raster(clean, stack="time").values[:3], ds["tas"].values)


def test_corrupted_chunk_in_one_of_several_files_names_that_file(tmp_path: Path) -> None:
    first, _ = _compressed_nc(tmp_path / "part_a.nc", TIMES[:2])
    second, ds2 = _compressed_nc(tmp_path / "part_b.nc", TIMES[2:])
    _corrupt_chunk(second, ds2["tas"].values[0, 8:12, 0:5])
    arr = open_raster([first, second], stack="time", variables=["tas"])
    with pytest.raises(ReadError, match=r"part_b\.nc: cannot read variable 'tas'"):
        arr.values  # noqa: B018


def test_corrupted_zarr_chunk_is_a_read_error(tmp_path: Path) -> None:
    ds = _projected(TIMES, level=False)
    store = tmp_path / "cube.zarr"
    ds.to_zarr(store, zarr_format=3, consolidated=False, encoding={"tas": {"chunks": (1, 4, 5)}})
    # Zarr chunks carry no checksum: only a chunk that does not decode can be detected.
    chunk = store / "tas" / "c" / "1" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    arr = open_raster(store, stack="time", variables=["tas"])
    with pytest.raises(ReadError, match=r"cube\.zarr: cannot read variable 'tas'"):
        arr.values  # noqa: B018


# --------------------------------------------------------------------------- several files


@pytest.fixture
def split_files(tmp_path: Path) -> list[Path]:
    ds = _projected()
    return [
        _write_nc(ds.isel(time=slice(0, 2)), tmp_path / "part_2020a.nc"),
        _write_nc(ds.isel(time=slice(2, 3)), tmp_path / "part_2020b.nc"),
    ]


def test_multifile_list_and_glob(split_files: list[Path]) -> None:
    ds = _projected()
    pattern = str(split_files[0].parent / "part_*.nc")
    for source in (split_files[::-1], pattern):
        arr = open_raster(source, stack="time", variables=["tas"])
        _check_grid(arr, 3)
        assert list(arr["band"].values) == ["tas@2020-01-01", "tas@2020-01-02", "tas@2020-01-03"]
        np.testing.assert_array_equal(arr.values, ds["tas"].values[:, 0])
    arr = open_raster(pattern, select={"time": "2020-01-03"})
    np.testing.assert_array_equal(arr.values[1], ds["pr"].values[2, 0])
    assert arr.attrs["source"] == pattern


def test_multifile_errors(split_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="matches no file"):
        open_raster(str(tmp_path / "nothing_*.nc"))
    bad = tmp_path / "part_bad.nc"
    bad.write_bytes(b"\x89HDF junk" * 20)
    with pytest.raises(ReadError, match=r"part_bad\.nc"):
        open_raster(str(tmp_path / "part_*.nc"), stack="time")


# --------------------------------------------------------------------------- Zarr


@pytest.mark.parametrize(("zarr_format", "consolidated"), [(2, True), (2, False), (3, False)])
def test_zarr_store_with_crs(tmp_path: Path, zarr_format: int, consolidated: bool) -> None:
    ds = _projected()
    path = tmp_path / "cube.zarr"
    ds.to_zarr(path, zarr_format=zarr_format, consolidated=consolidated)
    arr = open_raster(path, stack="time", variables=["pr"])
    _check_grid(arr, 3)
    np.testing.assert_array_equal(arr.values, ds["pr"].values[:, 0])
    sel = open_raster(path, select={"time": "2020-01-02"}, chunks=4)
    assert sel.chunks is not None and sel.chunks[1][0] == 4
    # Zarr lists variables in its own (alphabetical) order: look bands up by name.
    assert sorted(sel["band"].values) == ["pr", "tas"]
    np.testing.assert_array_equal(sel.sel(band="tas").values, ds["tas"].values[1, 0])


def test_zarr_crs_from_attribute(tmp_path: Path) -> None:
    ds = _projected(TIMES[:1], level=False).drop_vars("spatial_ref")
    for v in ds.data_vars.values():
        v.attrs.pop("grid_mapping", None)
        v.encoding.pop("grid_mapping", None)
    ds.attrs["proj:epsg"] = 32633
    path = tmp_path / "attrs_crs"  # no .zarr suffix: recognised by its metadata
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    _check_grid(open_raster(path), 2)


# --------------------------------------------------------------------------- CLI


def _run(args: list[str | Path]) -> object:
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"})
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_predict_netcdf_with_select(
    tmp_path: Path, projected_nc: Path, make_model: Callable[..., GeoModel]
) -> None:
    model = tmp_path / "m.safetensors"
    save_model(make_model(2, band_names=("tas", "pr"), patch_size=8), model)
    out = tmp_path / "maps"
    base = ["predict", model, projected_nc, "-o", out, "--stride", "4", "--device", "cpu"]
    result = _run([*base, "--select", "time=2020-01-02", "--select", "level=850"])
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    (written,) = [p for p in out.iterdir() if p.stem == "cf_time"]  # .tif or .nc (--format)
    classes = open_raster(written)
    assert classes.rio.crs == rasterio.crs.CRS.from_epsg(32633)
    assert classes.rio.transform().almost_equals(UTM * Affine.scale(4), precision=1e-6)
    # Without --select the tile fails with one line naming the options, no traceback.
    result = _run([*base, "--overwrite"])
    assert result.exit_code == 1  # type: ignore[attr-defined]
    errors = [
        line
        for line in result.stderr.splitlines()  # type: ignore[attr-defined]
        if line.startswith("error:")
    ]
    assert len(errors) == 1 and "--stack time" in errors[0], errors
    assert "--select time=VALUE" in errors[0] and "select=" not in errors[0]  # the CLI's words
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_cli_options_parse_and_reach_the_reader(tmp_path: Path, projected_nc: Path) -> None:
    result = _run(["inspect", projected_nc, "--stack", "time", "--variables", "pr", "--json"])
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert '"pr@2020-01-03"' in result.stdout  # type: ignore[attr-defined]
    result = _run(["inspect", projected_nc, "--select", "time"])
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "DIM=VALUE" in result.stderr  # type: ignore[attr-defined]
    result = _run(["inspect", projected_nc, "--select", "time=1", "--select", "time=2"])
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "selected twice" in result.stderr  # type: ignore[attr-defined]


def test_cli_takes_zarr_stores_as_inputs(
    tmp_path: Path, make_model: Callable[..., GeoModel]
) -> None:
    """A Zarr store is a folder but one input: given directly, inside a folder, or by glob."""
    ds = _projected(TIMES[:1], level=False)
    stores = tmp_path / "stores"
    stores.mkdir()
    ds.to_zarr(stores / "a.zarr", zarr_format=3, consolidated=False)
    ds.to_zarr(stores / "b.zarr", zarr_format=2, consolidated=True)
    model = tmp_path / "m.safetensors"
    save_model(make_model(2, band_names=("tas", "pr"), patch_size=8), model)
    for i, spec in enumerate([stores / "a.zarr", stores, str(stores / "*.zarr")]):
        out = tmp_path / f"maps{i}"
        result = _run(["predict", model, spec, "-o", out, "--stride", "4", "--device", "cpu"])
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        expected = {"a.tif"} if i == 0 else {"a.tif", "b.tif"}
        assert {p.name for p in out.glob("*.tif")} == expected
        with rasterio.open(out / "a.tif") as src:
            assert src.crs == rasterio.crs.CRS.from_epsg(32633)
            assert src.transform.almost_equals(UTM * Affine.scale(4), precision=1e-6)


def test_contiguous_variables_are_read_in_bounded_chunks(tmp_path: Path) -> None:
    """A variable stored without chunks is not read whole by every block."""
    ny, nx = 2100, 1300
    ds = xr.Dataset(
        {"t": (("y", "x"), np.zeros((ny, nx), dtype="float32"))},
        coords={"y": 5_000_000.0 - 10.0 * np.arange(ny), "x": 400_000.0 + 10.0 * np.arange(nx)},
    )
    path = tmp_path / "contiguous.nc"
    ds.to_netcdf(path, encoding={"t": {"contiguous": True}})
    data = open_raster(path)
    reads = [k for k in data.data.dask if isinstance(k, tuple) and str(k[0]).startswith("open-")]
    assert len(reads) == 3 * 2  # reads of at most 1024 x 1024, not one of 2100 x 1300
    np.testing.assert_array_equal(data.values[0], ds["t"].values)
