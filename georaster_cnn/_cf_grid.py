"""The grid of a netCDF or Zarr dataset: its (y, x) dimensions, CRS and transform.

The grid is the first (y, x) or (lat, lon) pair of dimensions of a numeric
variable; its CRS comes from the CF grid mapping, CRS attributes or lat/lon axes,
its transform from regular 1-D coordinates. Curvilinear grids (2-D lat/lon) and
irregular axes are refused with the way to regrid. docs/netcdf-zarr.md describes
the rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from georaster_cnn.errors import InputError

_Y_NAMES = ("y", "lat", "latitude", "rlat", "northing")
_X_NAMES = ("x", "lon", "longitude", "rlon", "easting")
_LAT_NAMES = frozenset({"lat", "latitude", "nav_lat", "xlat", "lat_rho"})
_LON_NAMES = frozenset({"lon", "longitude", "nav_lon", "xlong", "lon_rho"})


def _spatial_dims(dims: Sequence[str]) -> tuple[str, str] | None:
    low = {d.lower(): d for d in dims}
    y = next((low[n] for n in _Y_NAMES if n in low), None)
    x = next((low[n] for n in _X_NAMES if n in low), None)
    return (y, x) if y and x else None


def _is_axis(c: xr.DataArray, names: frozenset[str], standard: str, units: str) -> bool:
    return (
        str(c.name).lower() in names
        or c.attrs.get("standard_name") == standard
        or str(c.attrs.get("units", "")).lower() == units
    )


def _latlon_2d(var: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray] | None:
    """The 2-D latitude and longitude coordinates of ``var`` (a curvilinear grid), if any."""
    lat = next(
        (
            c
            for c in var.coords.values()
            if c.ndim == 2 and _is_axis(c, _LAT_NAMES, "latitude", "degrees_north")
        ),
        None,
    )
    lon = next(
        (
            c
            for c in var.coords.values()
            if c.ndim == 2 and _is_axis(c, _LON_NAMES, "longitude", "degrees_east")
        ),
        None,
    )
    return (lat, lon) if lat is not None and lon is not None else None


def _regular_axis(values: np.ndarray, name: str, path: Path | str) -> tuple[float, float]:
    """(first pixel centre, step) of a regular 1-D axis; fail clearly when irregular."""
    if values.size < 2:
        raise InputError(
            f"{path}: axis {name!r} has {values.size} value(s); need >= 2 to infer pixel size"
        )
    steps = np.diff(values.astype("float64"))
    step = float(np.median(steps))
    if step == 0 or np.max(np.abs(steps - step)) > 1e-3 * abs(step):
        raise InputError(
            f"{path}: axis {name!r} is not regularly spaced (steps from {steps.min():g} to "
            f"{steps.max():g}); regrid the data to a regular grid first (e.g. xarray interp or cdo)"
        )
    return float(values[0]), step


def _curvilinear_error(path: Path | str, name: str) -> InputError:
    return InputError(
        f"{path}: variable {name!r} is on a curvilinear grid (2-D latitude/longitude "
        "coordinates, no regular 1-D x/y axes with a grid mapping); regrid it to a regular "
        "grid first, e.g. with xESMF (xesmf.Regridder) or `cdo remapbil,<grid> in.nc out.nc`"
    )


def _find_grid(ds: xr.Dataset, path: Path | str) -> tuple[tuple[str, str], list[str]]:
    """The (y, x) grid dims and the numeric data variables on that grid, in file order."""
    grid: tuple[str, str] | None = None
    names: list[str] = []
    for name, var in ds.data_vars.items():
        if not np.issubdtype(var.dtype, np.number):
            continue
        dims = _spatial_dims([str(d) for d in var.dims])
        if dims is None:
            ll = _latlon_2d(var)
            if ll is None:
                continue
            dims = (str(ll[0].dims[0]), str(ll[0].dims[1]))
        if grid is None:
            grid = dims
        if dims == grid:
            names.append(str(name))
    if grid is None:
        many = [str(n) for n, v in ds.data_vars.items() if v.ndim >= 2]
        raise InputError(
            f"{path}: no 2-D variable on a (y, x) or (lat, lon) grid"
            + (f"; variables with 2 or more dimensions: {', '.join(many)}" if many else "")
        )
    return grid, names


def _dataset_crs(ds: xr.Dataset, var: str, grid: tuple[str, str]) -> Any:
    """CRS from the CF grid mapping, CRS attributes, or 1-D lat/lon axes (EPSG:4326)."""
    crs = None
    with contextlib.suppress(Exception):  # rioxarray raises on malformed grid_mapping attributes
        crs = ds[var].rio.crs or ds.rio.crs
    if crs is not None:
        return crs
    for attrs in (ds[var].attrs, ds.attrs):
        for key in ("crs_wkt", "spatial_ref", "crs", "proj:wkt2", "proj:epsg", "epsg"):
            if attrs.get(key) not in (None, ""):
                value = attrs[key]
                with contextlib.suppress(Exception):
                    if key in ("proj:epsg", "epsg"):
                        return rasterio.crs.CRS.from_epsg(int(value))
                    return rasterio.crs.CRS.from_user_input(value)
    ydim, xdim = grid
    yc, xc = ds[ydim], ds[xdim]
    if _is_axis(yc, _LAT_NAMES, "latitude", "degrees_north") and _is_axis(
        xc, _LON_NAMES, "longitude", "degrees_east"
    ):
        return rasterio.crs.CRS.from_epsg(4326)
    return None


def _georeference(
    ds: xr.Dataset, grid: tuple[str, str], var: str, first: xr.DataArray, path: Path | str
) -> tuple[Any, Affine]:
    """CRS and transform of the grid; ``first`` is the first band, a layer of variable ``var``."""
    ydim, xdim = grid
    if ydim not in ds.coords or xdim not in ds.coords or ds[ydim].ndim != 1 or ds[xdim].ndim != 1:
        if _latlon_2d(first) is not None:
            raise _curvilinear_error(path, var)
        raise InputError(
            f"{path}: the grid has no 1-D {ydim}/{xdim} coordinates (a curvilinear grid?); "
            "regrid it to a regular grid first"
        )
    crs = _dataset_crs(ds, var, grid)
    if crs is None and _latlon_2d(first) is not None:
        raise _curvilinear_error(path, var)
    x0, dx = _regular_axis(ds[xdim].values, xdim, path)
    y0, dy = _regular_axis(ds[ydim].values, ydim, path)
    # Row 0 is the first y value, whichever way the axis runs (north-up or south-up).
    return crs, Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2)
