"""open: where netCDF and Zarr grids land, checked against GDAL's own reading of the same file.

Projection coordinates carry CF length ``units`` (m, km, ...): the transform is in
the CRS's own unit whatever they are. GDAL's netCDF driver (``NETCDF:"file":var``)
is the reference; the lon/lat of the grid's corners are compared through pyproj,
so the CRS is checked too, not only the numbers of the transform.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer

from georaster_cnn import InputError, open_raster

#: A Lambert conformal conic grid over Europe, as in CF-1.11 example 5.7 (x/y in km).
LCC = CRS.from_proj4(
    "+proj=lcc +lat_1=35 +lat_2=65 +lat_0=52 +lon_0=10 +x_0=0 +y_0=0 +ellps=WGS84 +units=m"
)
H, W = 16, 24
STEP_KM = 25.0
#: Pixel centres in km: x from -300 km eastwards, y from 200 km southwards (north-up).
X_KM = -300.0 + STEP_KM * np.arange(W)
Y_KM = 200.0 - STEP_KM * np.arange(H)
#: The grid's transform in metres, the CRS's unit.
EXPECTED = Affine(25_000.0, 0.0, -312_500.0, 0.0, -25_000.0, 212_500.0)


def _lcc_dataset(
    units: str, per_km: float, *, crs: CRS = LCC, with_wkt: bool = False
) -> xr.Dataset:
    """``tas`` on the LCC grid with x/y in ``units`` (``per_km`` of them make a km).

    The grid mapping is CF's parameters (what GDAL reads with the units of x/y);
    ``with_wkt`` adds a ``crs_wkt`` attribute too.
    """
    field = np.add.outer(np.arange(H) * 100.0, np.arange(W)).astype("float32")  # encodes (r, c)
    mapping = crs.to_cf()
    if not with_wkt:
        mapping.pop("crs_wkt")
    coord: dict[str, Any] = {"units": units}
    return xr.Dataset(
        {
            "tas": (("y", "x"), field, {"grid_mapping": "lambert"}),
            "lambert": ((), np.int32(0), mapping),
        },
        coords={
            "x": ("x", X_KM * per_km, {**coord, "standard_name": "projection_x_coordinate"}),
            "y": ("y", Y_KM * per_km, {**coord, "standard_name": "projection_y_coordinate"}),
        },
    )


def _gdal(path: Path, var: str = "tas") -> tuple[Affine, Any, np.ndarray]:
    with rasterio.open(f'NETCDF:"{path}":{var}') as src:
        return src.transform, src.crs, src.read(1)


def _corners_lonlat(transform: Affine, crs: Any) -> np.ndarray:
    """Longitude/latitude of the grid's four corners."""
    to_ll = Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True)
    cols, rows = np.array([0, W, W, 0]), np.array([0, 0, H, H])
    xs, ys = transform * (cols, rows)
    return np.array(to_ll.transform(xs, ys))


def _same_place_as_gdal(arr: xr.DataArray, path: Path) -> None:
    g_transform, g_crs, g_data = _gdal(path)
    assert arr.rio.transform().almost_equals(g_transform, precision=1e-6)
    np.testing.assert_allclose(
        _corners_lonlat(arr.rio.transform(), arr.rio.crs),
        _corners_lonlat(g_transform, g_crs),
        atol=1e-9,
    )
    np.testing.assert_array_equal(arr.values[0], g_data)


# --------------------------------------------------------------------------- against GDAL


@pytest.mark.parametrize(("units", "per_km"), [("km", 1.0), ("m", 1000.0)])
def test_lambert_conformal_km_and_m_land_where_gdal_puts_them(
    tmp_path: Path, units: str, per_km: float, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / f"lcc_{units}.nc"
    _lcc_dataset(units, per_km).to_netcdf(path)
    with caplog.at_level(logging.INFO, logger="georaster_cnn"):
        arr = open_raster(path)
    assert arr.rio.transform().almost_equals(EXPECTED, precision=1e-6)  # metres, not km
    _same_place_as_gdal(arr, path)
    assert arr.attrs["source_xy_units"] == units
    converted = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
    assert converted == (
        []
        if units == "m"
        else [f"{path}: x/y coordinates in km, converted to the CRS's metre (x1000, y1000)"]
    )
    # 700 km across, over Europe: not 640 m next to the projection origin.
    lon, lat = _corners_lonlat(arr.rio.transform(), arr.rio.crs)
    assert 4 < lon.min() < lon.max() < 16 and 48 < lat.min() < lat.max() < 55


def test_metres_with_crs_wkt_agree_with_gdal(tmp_path: Path) -> None:
    path = tmp_path / "lcc_wkt_m.nc"
    _lcc_dataset("m", 1000.0, with_wkt=True).to_netcdf(path)
    _same_place_as_gdal(open_raster(path), path)


def test_km_with_crs_wkt_is_placed_like_the_cf_parameters(tmp_path: Path) -> None:
    """The coordinates' units count whichever way the CRS is written.

    (GDAL 3.10 converts km only for CF grid-mapping parameters, not when a crs_wkt is
    present; CF says the coordinates are in their units, so this is GDAL's gap.)
    """
    ref = tmp_path / "lcc_km.nc"
    _lcc_dataset("km", 1.0).to_netcdf(ref)
    path = tmp_path / "lcc_wkt_km.nc"
    _lcc_dataset("km", 1.0, with_wkt=True).to_netcdf(path)
    arr = open_raster(path)
    assert arr.rio.transform().almost_equals(EXPECTED, precision=1e-6)
    _same_place_as_gdal(arr, ref)


@pytest.mark.parametrize(
    ("units", "per_km"),
    [
        ("kilometre", 1.0),
        ("kilometers", 1.0),
        ("Kilometres", 1.0),
        ("metres", 1000.0),
        ("meter", 1000.0),
        ("100 km", 0.01),
        ("1000 m", 1.0),
        ("cm", 100_000.0),
    ],
)
def test_every_cf_length_unit_lands_like_km(tmp_path: Path, units: str, per_km: float) -> None:
    ref = tmp_path / "lcc_km.nc"
    _lcc_dataset("km", 1.0).to_netcdf(ref)
    path = tmp_path / "lcc_other.nc"
    _lcc_dataset(units, per_km).to_netcdf(path)
    arr = open_raster(path)
    assert arr.rio.transform().almost_equals(EXPECTED, precision=1e-6)
    _same_place_as_gdal(arr, ref)  # where GDAL puts the same grid written in km
    assert arr.attrs["source_xy_units"] == units


def test_crs_in_another_unit_gets_the_transform_in_that_unit(tmp_path: Path) -> None:
    """The CRS's axis unit is the target: x/y in m on a CRS in km give a transform in km."""
    lcc_km = CRS.from_proj4(
        "+proj=lcc +lat_1=35 +lat_2=65 +lat_0=52 +lon_0=10 +x_0=0 +y_0=0 +ellps=WGS84 +units=km"
    )
    assert lcc_km.axis_info[0].unit_name == "kilometre"
    path = tmp_path / "lcc_crs_km.nc"
    _lcc_dataset("m", 1000.0, crs=lcc_km, with_wkt=True).to_netcdf(path)
    arr = open_raster(path)
    assert arr.rio.transform().almost_equals(
        Affine(25.0, 0.0, -312.5, 0.0, -25.0, 212.5), precision=1e-9
    )
    ref = tmp_path / "lcc_km.nc"
    _lcc_dataset("km", 1.0).to_netcdf(ref)
    g_transform, g_crs, _ = _gdal(ref)
    np.testing.assert_allclose(
        _corners_lonlat(arr.rio.transform(), arr.rio.crs),
        _corners_lonlat(g_transform, g_crs),
        atol=1e-9,
    )


def test_zarr_store_in_km_lands_where_gdal_puts_the_netcdf(tmp_path: Path) -> None:
    ds = _lcc_dataset("km", 1.0)
    nc = tmp_path / "lcc_km.nc"
    ds.to_netcdf(nc)
    store = tmp_path / "lcc_km.zarr"
    ds.to_zarr(store, zarr_format=3, consolidated=False)
    arr = open_raster(store)
    assert arr.rio.transform().almost_equals(EXPECTED, precision=1e-6)
    _same_place_as_gdal(arr, nc)
    assert arr.attrs["source_xy_units"] == "km"


def test_latlon_grid_in_degrees_is_unchanged_and_agrees_with_gdal(tmp_path: Path) -> None:
    lat = np.arange(47.0, 43.0, -0.25)  # north-up, as GDAL returns it
    lon = np.arange(5.0, 11.0, 0.25)
    field = np.add.outer(lat * 1000.0, lon).astype("float32")
    ds = xr.Dataset(
        {"tas": (("lat", "lon"), field)},
        coords={
            "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        },
    )
    path = tmp_path / "ll.nc"
    ds.to_netcdf(path)
    arr = open_raster(path)
    g_transform, g_crs, g_data = _gdal(path)
    assert arr.rio.transform().almost_equals(g_transform, precision=1e-9)
    assert arr.rio.transform().almost_equals(
        Affine(0.25, 0.0, 4.875, 0.0, -0.25, 47.125), precision=1e-9
    )
    # GDAL leaves a lat/lon grid without grid mapping CRS-less; it is EPSG:4326 here.
    assert g_crs is None or CRS.from_user_input(g_crs).is_geographic
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(4326)
    np.testing.assert_array_equal(arr.values[0], g_data)
    assert "source_xy_units" not in arr.attrs


# --------------------------------------------------------------------------- refused units


@pytest.mark.parametrize("units", ["degrees", "furlong", "1", "km2", "KM"])
def test_unknown_unit_on_projected_axes_is_refused(tmp_path: Path, units: str) -> None:
    path = tmp_path / "lcc_bad.nc"
    _lcc_dataset(units, 1.0).to_netcdf(path)
    with pytest.raises(InputError) as err:
        open_raster(path)
    msg = str(err.value)
    assert f"units {units!r}" in msg and "coordinate 'x' of variable 'tas'" in msg, msg
    assert "not a length unit" in msg and "metre" in msg and "--" not in msg


def test_length_units_on_a_geographic_crs_are_refused(tmp_path: Path) -> None:
    ds = _lcc_dataset("km", 1.0, crs=CRS.from_epsg(4326), with_wkt=True)
    path = tmp_path / "geo_km.nc"
    ds.to_netcdf(path)
    with pytest.raises(InputError, match=r"'x' of variable 'tas' has units 'km'.*geographic"):
        open_raster(path)


def test_axes_without_units_are_in_the_crs_unit(tmp_path: Path) -> None:
    ds = _lcc_dataset("m", 1000.0)
    for c in ("x", "y"):
        del ds[c].attrs["units"]
    path = tmp_path / "lcc_nounits.nc"
    ds.to_netcdf(path)
    arr = open_raster(path)
    _same_place_as_gdal(arr, path)
    assert "source_xy_units" not in arr.attrs


# --------------------------------------------------------------------------- a file we did not make


def test_real_public_netcdf_agrees_with_gdal() -> None:
    """xarray's example_1.nc (a 'Fictional Model Output' shipped with xarray's tests).

    Its longitudes are irregular (-160, -140, -118, ...): GDAL gives it no
    geotransform and no CRS; we refuse to invent one and say why.
    """
    path = Path(xr.__file__).parent / "tests" / "data" / "example_1.nc"
    if not path.exists():
        pytest.skip("xarray's test data are not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        g_transform, g_crs, _ = _gdal(path, "rh")
    assert g_transform == Affine.identity() and g_crs is None
    with pytest.raises(InputError, match=r"example_1\.nc: axis 'lon' is not regularly spaced"):
        open_raster(path, variables=["rh"])


def test_regular_part_of_a_real_public_netcdf_agrees_with_gdal(tmp_path: Path) -> None:
    """The regular columns of example_1.nc (lon -45..-15, lat 20..60 south-up, int32 axes)."""
    path = Path(xr.__file__).parent / "tests" / "data" / "example_1.nc"
    if not path.exists():
        pytest.skip("xarray's test data are not installed")
    part = tmp_path / "example_1_regular.nc"
    with xr.open_dataset(path) as ds:
        ds.isel(lon=slice(6, None))[["rh"]].to_netcdf(part)
    arr = open_raster(part)
    with rasterio.open(f'NETCDF:"{part}":rh') as src:
        g_bounds, g_crs, g_data = src.bounds, src.crs, src.read(1)
    assert arr.rio.bounds() == pytest.approx(tuple(g_bounds))
    assert g_crs is None or CRS.from_user_input(g_crs).is_geographic
    assert arr.rio.crs == rasterio.crs.CRS.from_epsg(4326)  # lat/lon axes
    # GDAL shows a south-up netCDF north-up; the file's own row order is kept here.
    np.testing.assert_array_equal(arr.values[0][::-1], g_data)
