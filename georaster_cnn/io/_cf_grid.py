"""The grid of a netCDF or Zarr dataset: its (y, x) dimensions, CRS and transform.

The grid is the first (y, x) or (lat, lon) pair of dimensions of a numeric
variable; its CRS comes from the CF grid mapping, CRS attributes or lat/lon axes,
its transform from regular 1-D coordinates, converted from the axes' CF length
``units`` (m, km, ...) to the unit of a projected CRS. Curvilinear grids (2-D
lat/lon) and irregular axes are refused with the way to regrid; projected axes in
a unit that is not a length are refused too. docs/netcdf-zarr.md describes the
rules.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from georaster_cnn.errors import InputError

_Y_NAMES = ("y", "lat", "latitude", "rlat", "northing")
_X_NAMES = ("x", "lon", "longitude", "rlon", "easting")
_LAT_NAMES = frozenset({"lat", "latitude", "nav_lat", "xlat", "lat_rho"})
_LON_NAMES = frozenset({"lon", "longitude", "nav_lon", "xlong", "lon_rho"})

log = logging.getLogger(__name__)

_FOOT = 0.3048
_US_FOOT = 1200.0 / 3937.0
#: Metres per unit of the UDUNITS length units accepted on projected x/y axes. Symbols
#: are matched as written ("Mm" is not "mm"); names in any case, singular or plural.
_LENGTH_SYMBOLS = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "ft": _FOOT}
_LENGTH_NAMES = {
    **{f"{n}{s}": 1.0 for n in ("metre", "meter") for s in ("", "s")},
    **{f"kilo{n}{s}": 1000.0 for n in ("metre", "meter") for s in ("", "s")},
    **{f"centi{n}{s}": 0.01 for n in ("metre", "meter") for s in ("", "s")},
    **{f"milli{n}{s}": 0.001 for n in ("metre", "meter") for s in ("", "s")},
    "foot": _FOOT,
    "feet": _FOOT,
    "international_foot": _FOOT,
    "us_survey_foot": _US_FOOT,
    "us_survey_feet": _US_FOOT,
}
# An optional factor before the unit, as UDUNITS allows: "100 km", "1e3 m", "1000*m".
_SCALED_UNIT = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)?\s*\*?\s*([A-Za-z_ ]*?)\s*$")


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


def _length_metres(units: str) -> float | None:
    """Metres per ``units`` (a CF/UDUNITS length unit such as "km" or "100 km"); None if not one."""
    m = _SCALED_UNIT.match(units)
    if m is None or not m.group(2):
        return None
    name = m.group(2).strip()
    per = _LENGTH_SYMBOLS.get(name) or _LENGTH_NAMES.get(name.lower().replace(" ", "_"))
    if per is None:
        return None
    return per * (float(m.group(1)) if m.group(1) else 1.0)


def _crs_axis_metres(crs: Any) -> tuple[float, float, str] | None:
    """Metres per x and y unit of a projected ``crs``, and the unit's name; None otherwise."""
    try:
        pcrs = pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError:
        return None
    if not pcrs.is_projected:
        return None
    axes = pcrs.axis_info or (pcrs.source_crs.axis_info if pcrs.source_crs else [])
    axes = [a for a in axes if a.unit_conversion_factor]
    if len(axes) < 2:
        return None
    x_axis = next((a for a in axes if a.direction in ("east", "west")), axes[0])
    y_axis = next((a for a in axes if a.direction in ("north", "south")), axes[1])
    if x_axis is y_axis:  # polar axes (both "south"): order says which is which
        x_axis, y_axis = axes[0], axes[1]
    return x_axis.unit_conversion_factor, y_axis.unit_conversion_factor, x_axis.unit_name


def _axis_units_scale(
    ds: xr.Dataset, grid: tuple[str, str], crs: Any, var: str, path: Path | str
) -> tuple[float, float, str | None]:
    """Factors from the x and y coordinates' CF ``units`` to the CRS's units, and those units.

    Only projected CRSs are converted (lat/lon axes are degrees as they are). Axes
    without ``units`` are taken to be in the CRS's unit, as GDAL does; a ``units``
    that is not a length is refused rather than guessed.
    """
    metres = _crs_axis_metres(crs) if crs is not None else None
    ydim, xdim = grid
    if metres is None:
        if crs is not None:
            for dim in (xdim, ydim):
                units = str(ds[dim].attrs.get("units", "")).strip()
                if units and _length_metres(units) is not None:
                    raise InputError(
                        f"{path}: coordinate {dim!r} of variable {var!r} has units {units!r}, a "
                        "length, but the CRS is geographic (degrees); give the grid its "
                        "projected CRS (a CF grid_mapping) or correct the units attribute"
                    )
        return 1.0, 1.0, None
    x_crs, y_crs, crs_unit = metres
    factors: list[float] = []
    found: list[str] = []
    for dim, per_crs_unit in ((xdim, x_crs), (ydim, y_crs)):
        units = str(ds[dim].attrs.get("units", "")).strip()
        if not units:
            factors.append(1.0)
            continue
        per = _length_metres(units)
        if per is None:
            raise InputError(
                f"{path}: coordinate {dim!r} of variable {var!r} has units {units!r}, which "
                f"is not a length unit this reader knows; the CRS is projected in {crs_unit}. "
                "Known: m, km, cm, mm, ft, us_survey_foot and their names (metre, "
                'kilometres, ...), optionally with a factor ("100 km"). Correct the units '
                "attribute (e.g. ds['x'].attrs['units'] = 'km') and open it again"
            )
        factors.append(per / per_crs_unit)
        found.append(units)
    if any(f != 1.0 for f in factors):
        log.info(
            "%s: x/y coordinates in %s, converted to the CRS's %s (x%g, y%g)",
            path,
            " / ".join(dict.fromkeys(found)),
            crs_unit,
            factors[0],
            factors[1],
        )
    unique = list(dict.fromkeys(found))
    return factors[0], factors[1], (", ".join(unique) if unique else None)


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
) -> tuple[Any, Affine, str | None]:
    """CRS, transform and x/y ``units`` of the grid; ``first`` is the first band, of ``var``.

    The transform is in the CRS's units whatever length unit the coordinates are in.
    """
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
    fx, fy, units = _axis_units_scale(ds, grid, crs, var, path)
    x0, dx, y0, dy = x0 * fx, dx * fx, y0 * fy, dy * fy
    # Row 0 is the first y value, whichever way the axis runs (north-up or south-up).
    return crs, Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2), units
