"""netCDF, multi-file netCDF and Zarr inputs: one xarray path to the canonical array.

Variables become bands; extra dimensions are selected (nearest for dates) or
stacked into bands; the CRS comes from the CF grid mapping, CRS attributes or
lat/lon axes; the transform from regular 1-D coordinates. docs/netcdf-zarr.md
describes the rules; :func:`georaster_cnn.open_raster` dispatches here.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cftime
import dask.array as da
import numpy as np
import pandas as pd
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from georaster_cnn._canonical import (
    BandSelector,
    Chunks,
    _canonical,
    _resolve_chunks,
    _root_message,
    _select,
)
from georaster_cnn.errors import InputError, ReadError

log = logging.getLogger(__name__)

_Y_NAMES = ("y", "lat", "latitude", "rlat", "northing")
_X_NAMES = ("x", "lon", "longitude", "rlon", "easting")
_LAT_NAMES = frozenset({"lat", "latitude", "nav_lat", "xlat", "lat_rho"})
_LON_NAMES = frozenset({"lon", "longitude", "nav_lon", "xlong", "lon_rho"})
_ISO_DATE = re.compile(
    r"^\s*(-?\d{1,4})-(\d{1,2})(?:-(\d{1,2}))?(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*$"
)
_OPTIONS_HINT = "select={DIM: VALUE}, or stack=DIM"


def _is_multi(path: object) -> bool:
    return isinstance(path, (list, tuple)) or (
        isinstance(path, (str, os.PathLike)) and "*" in os.fspath(path) and not Path(path).exists()
    )


def _open_dataset_file(path: Path) -> xr.Dataset:
    try:
        # decode_timedelta=False: a variable with time units ("days") is data, not a duration.
        ds = xr.open_dataset(
            path, chunks={}, decode_coords="all", mask_and_scale=True, decode_timedelta=False
        )
    except Exception as exc:  # netCDF4/h5netcdf raise assorted types for broken files
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ReadError(f"{path}: not a readable netCDF file ({detail})") from exc
    _check_classic_size(path, ds)
    return ds


def _check_classic_size(path: Path, ds: xr.Dataset) -> None:
    """Reject a truncated netCDF-3 file: the C library reads the missing bytes as zeros."""
    try:
        need = _classic_data_end(path)
    except (OSError, ValueError, struct.error):
        need = None  # not a header this parser understands: leave it to the library
    size = path.stat().st_size
    if need is not None and size < need:
        ds.close()
        raise ReadError(
            f"{path}: not a readable netCDF file (truncated: {size} bytes, its header says "
            f"the data ends at byte {need})"
        )


_NC_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}


def _classic_data_end(path: Path) -> int | None:
    """Where the data of a netCDF-3 (CDF-1/2/5) file ends, from its header; None if not one."""
    with path.open("rb") as f:
        head = f.read(1 << 20)
    if head[:3] != b"CDF" or head[3] not in (1, 2, 5):
        return None
    version = head[3]
    big = version == 5  # CDF-5: 64-bit counts
    pos = 4

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, head, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def count() -> int:
        return take(">Q" if big else ">I")

    def skip_name() -> None:
        nonlocal pos
        n = count()
        pos += (n + 3) // 4 * 4

    def skip_attrs() -> None:
        nonlocal pos
        take(">I")  # tag: NC_ATTRIBUTE or ABSENT
        for _ in range(count()):
            skip_name()
            size = _NC_TYPE_SIZE[take(">I")]
            n = count()  # before `pos +=`: count() moves pos
            pos += (n * size + 3) // 4 * 4

    numrecs = count()
    take(">I")  # NC_DIMENSION or ABSENT
    dims = []
    for _ in range(count()):
        skip_name()
        dims.append(count())
    skip_attrs()
    take(">I")  # NC_VARIABLE or ABSENT
    ends, rec_vars = [], []
    for _ in range(count()):
        skip_name()
        dimids = [count() for _ in range(count())]
        skip_attrs()
        take(">I")  # nc_type
        vsize = count() if big else take(">I")
        begin = take(">Q" if version in (2, 5) else ">I")
        if vsize in (0xFFFFFFFF, 0):
            return None  # > 4 GiB variables: vsize is not exact, skip the check
        if dimids and dims[dimids[0]] == 0:
            rec_vars.append((begin, vsize))
        else:
            ends.append(begin + vsize)
    if rec_vars and numrecs not in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
        recsize = sum(v for _, v in rec_vars) if len(rec_vars) > 1 else rec_vars[0][1]
        ends += [b + (numrecs - 1) * recsize + v for b, v in rec_vars if numrecs > 0]
    return max(ends, default=None)


def _open_zarr(path: Path) -> xr.Dataset:
    # Say which format and whether metadata is consolidated, so that xarray does not
    # guess (and warn) for stores written either way.
    if (path / ".zgroup").exists() or (path / ".zattrs").exists():
        zarr_format, consolidated = 2, (path / ".zmetadata").exists()
    else:
        zarr_format, consolidated = 3, False
        try:
            meta = json.loads((path / "zarr.json").read_text())
            consolidated = meta.get("consolidated_metadata") is not None
        except (OSError, ValueError):
            pass
    try:
        return xr.open_zarr(
            path,
            chunks={},
            decode_coords="all",
            mask_and_scale=True,
            decode_timedelta=False,
            consolidated=consolidated,
            zarr_format=zarr_format,
        )
    except Exception as exc:  # zarr raises assorted types for broken stores
        raise ReadError(f"{path}: not a readable Zarr store ({_root_message(exc)})") from exc


def _open_multi(path: object) -> tuple[xr.Dataset, str]:
    """Several netCDF files (a list, or a glob pattern) combined by their coordinates."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        label = (
            ", ".join(str(f) for f in files)
            if len(files) <= 3
            else f"{files[0]} (+{len(files) - 1} files)"
        )
    else:
        pattern = os.path.expanduser(os.fspath(path))  # type: ignore[call-overload]
        files = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
        label = pattern
        if not files:
            raise ReadError(f"{label}: pattern matches no file")
    if not files:
        raise ReadError("open_raster: empty list of files")
    for f in files:
        if not f.exists():
            raise ReadError(f"{f}: no such file")
    for f in files:  # a broken member fails with its own name
        _open_dataset_file(f).close()
    try:
        ds = xr.open_mfdataset(
            files,
            combine="by_coords",
            chunks={},
            decode_coords="all",
            mask_and_scale=True,
            decode_timedelta=False,
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="exact",
        )
    except ValueError as exc:
        raise InputError(
            f"{label}: the files do not combine into one dataset by their coordinates "
            f"({_root_message(exc)}); they must share one grid and differ along one "
            "dimension such as time"
        ) from exc
    except Exception as exc:
        raise ReadError(f"{label}: cannot open the files as one dataset ({exc})") from exc
    return ds, label


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


def _as_label(coord: xr.DataArray, dim: str, value: Any, path: Path | str) -> Any:
    """``value`` (often a CLI string) converted to the type of ``coord``'s labels."""
    kind = coord.dtype.kind
    if kind == "M":
        try:
            return np.datetime64(pd.Timestamp(value).tz_localize(None), "ns")
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{path}: {value!r} is not a date for dimension {dim!r}; use e.g. 2020-01-01"
            ) from exc
    if kind == "O" and coord.size and isinstance(coord.values.flat[0], cftime.datetime):
        first = coord.values.flat[0]
        if isinstance(value, cftime.datetime):
            return value
        m = _ISO_DATE.match(str(value))
        if m is None:
            raise InputError(
                f"{path}: {value!r} is not a date for dimension {dim!r} ({first.calendar} "
                "calendar); use e.g. 2020-01-01 or 2020-01-01T12:00"
            )
        parts = [int(g) if g else d for g, d in zip(m.groups(), (0, 1, 1, 0, 0, 0), strict=True)]
        try:
            return cftime.datetime(*parts, calendar=first.calendar)
        except ValueError as exc:
            raise InputError(
                f"{path}: {value!r} is not a valid {first.calendar} date ({exc})"
            ) from exc
    if kind in "iuf" and isinstance(value, str):
        try:
            num = float(value)
        except ValueError as exc:
            raise InputError(
                f"{path}: dimension {dim!r} has numeric values; {value!r} is not a number"
            ) from exc
        return int(num) if kind in "iu" and num.is_integer() else num
    return value


def _preview(values: np.ndarray, n: int = 6) -> str:
    items = [_fmt_label(v) for v in values[:n]]
    return ", ".join(items) + (f", ... ({values.size} values)" if values.size > n else "")


def _fmt_label(v: Any) -> str:
    if isinstance(v, np.datetime64):
        ts = pd.Timestamp(v)
        return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat()
    if isinstance(v, cftime.datetime):
        return (
            v.strftime("%Y-%m-%d") if (v.hour, v.minute, v.second) == (0, 0, 0) else v.isoformat()
        )
    if isinstance(v, (np.floating, float)) and float(v).is_integer():
        return str(int(v))
    return str(v.item() if isinstance(v, np.generic) else v)


def _apply_select(ds: xr.Dataset, select: Mapping[str, Any], path: Path | str) -> xr.Dataset:
    for dim, value in select.items():
        if dim not in ds.dims:
            raise InputError(
                f"{path}: cannot select on {dim!r}: no such dimension; dimensions are "
                f"{', '.join(f'{d} ({n})' for d, n in ds.sizes.items())}"
            )
        if dim not in ds.coords:  # a dimension without labels: select by position
            try:
                pos = int(value)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"{path}: dimension {dim!r} has no coordinate values; select it by "
                    f"position 0..{ds.sizes[dim] - 1}"
                ) from exc
            if not 0 <= pos < ds.sizes[dim]:
                raise InputError(
                    f"{path}: position {pos} is outside {dim!r} (0..{ds.sizes[dim] - 1})"
                )
            ds = ds.isel({dim: pos})
            continue
        coord = ds[dim]
        label = _as_label(coord, dim, value, path)
        is_time = coord.dtype.kind == "M" or isinstance(label, cftime.datetime)
        try:
            # Dates are matched to the nearest step (files store e.g. 12:00 or mid-month
            # stamps); other labels must match exactly, so a typo never picks a neighbour.
            ds = ds.sel({dim: label}, method="nearest" if is_time else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{path}: dimension {dim!r} has no value {value!r}; its values are "
                f"{_preview(coord.values)}"
            ) from exc
        if dim in ds.dims:  # a label repeated in the index selects several steps
            raise InputError(f"{path}: {value!r} matches {ds.sizes[dim]} steps of {dim!r}")
    return ds


def _band_layers(
    ds: xr.Dataset,
    names: list[str],
    grid: tuple[str, str],
    stack: str | None,
    path: Path | str,
) -> list[tuple[str, str, xr.DataArray]]:
    """``(band name, variable, 2-D array)`` per band, after stacking and dropping length-1 dims."""
    out: list[tuple[str, str, xr.DataArray]] = []
    for n in names:
        var = ds[n]
        extra = [str(d) for d in var.dims if d not in grid]
        squeeze = [d for d in extra if ds.sizes[d] == 1 and d != stack]
        var = var.isel(dict.fromkeys(squeeze, 0), drop=True)
        left = [d for d in extra if d not in squeeze and d != stack]
        if left:
            d = left[0]
            raise InputError(
                f"{path}: variable {n!r} has an extra dimension {d!r} of length {ds.sizes[d]}; "
                f"choose one value with select={{{d!r}: VALUE}} or make "
                f"each step a band with stack={d!r}; {d} values: "
                f"{_preview(ds[d].values) if d in ds.coords else f'0..{ds.sizes[d] - 1}'}"
            )
        if stack is not None and stack in var.dims:
            labels = [_fmt_label(v) for v in ds[stack].values] if stack in ds.coords else None
            is_time = stack in ds.coords and (
                ds[stack].dtype.kind == "M"
                or (ds[stack].size and isinstance(ds[stack].values.flat[0], cftime.datetime))
            )
            for i in range(var.sizes[stack]):
                if labels is None:
                    band = f"{n}@{stack}={i}"
                else:
                    band = f"{n}@{labels[i]}" if is_time else f"{n}@{stack}={labels[i]}"
                out.append((band, n, var.isel({stack: i}, drop=True)))
        else:
            out.append((n, n, var))
    return out


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


def _from_dataset(
    ds: xr.Dataset,
    path: Path | str,
    *,
    bands: BandSelector,
    chunks: Chunks,
    variables: Sequence[str] | None,
    select: Mapping[str, Any] | None,
    stack: str | None,
) -> xr.DataArray:
    """The canonical array from an xarray Dataset (netCDF, several netCDF files or Zarr)."""
    if variables is not None and bands is not None:
        raise InputError(f"{path}: give variables or bands, not both (they are the same here)")
    if isinstance(variables, str):
        variables = [variables]
    if stack is not None and not isinstance(stack, str):
        raise InputError(f"stack takes one dimension name; found {stack!r}")
    if select and stack is not None and stack in select:
        raise InputError(f"{path}: dimension {stack!r} cannot be both selected and stacked")
    grid, candidates = _find_grid(ds, path)
    if variables is not None:
        if len(variables) == 0:
            raise InputError(f"{path}: empty variable selection")
        for v in variables:
            if v not in candidates:
                other = [str(n) for n in ds.data_vars if n not in candidates]
                raise InputError(
                    f"{path}: no variable {v!r} on the {grid[0]}/{grid[1]} grid; variables are "
                    f"{', '.join(candidates)}"
                    + (f" (not on the grid: {', '.join(other)})" if other else "")
                )
        names = list(variables)
    else:
        names = candidates
    if select:
        ds = _apply_select(ds, select, path)
    if stack is not None and (stack not in ds.dims or not any(stack in ds[n].dims for n in names)):
        dims = sorted({str(d) for n in names for d in ds[n].dims if d not in grid})
        raise InputError(
            f"{path}: cannot stack {stack!r}: no such dimension on the chosen variables; "
            f"their extra dimensions are {', '.join(dims) or 'none'}"
        )
    layers = _band_layers(ds, names, grid, stack, path)
    band_names = [b for b, _, _ in layers]
    if bands is not None:
        # Variable names pick all of their bands; stacked band names and numbers pick one.
        wanted: list[int | str] = []
        seq = [bands] if isinstance(bands, (str, int)) else list(bands)
        for b in seq:
            if isinstance(b, str) and b in names and b not in band_names:
                wanted.extend(band_names[i] for i, (_, v, _) in enumerate(layers) if v == b)
            else:
                wanted.append(b)
        layers = [layers[i] for i in _select(band_names, wanted, path)]
    ydim, xdim = grid
    first = layers[0][2]
    if ydim not in ds.coords or xdim not in ds.coords or ds[ydim].ndim != 1 or ds[xdim].ndim != 1:
        if _latlon_2d(first) is not None:
            raise _curvilinear_error(path, layers[0][1])
        raise InputError(
            f"{path}: the grid has no 1-D {ydim}/{xdim} coordinates (a curvilinear grid?); "
            "regrid it to a regular grid first"
        )
    crs = _dataset_crs(ds, layers[0][1], grid)
    if crs is None and _latlon_2d(first) is not None:
        raise _curvilinear_error(path, layers[0][1])
    x0, dx = _regular_axis(ds[xdim].values, xdim, path)
    y0, dy = _regular_axis(ds[ydim].values, ydim, path)
    # Row 0 is the first y value, whichever way the axis runs (north-up or south-up).
    transform = Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2)
    arrays = []
    for _, _, layer in layers:
        layer = layer.transpose(ydim, xdim)
        arrays.append(
            layer.data if isinstance(layer.data, da.Array) else da.from_array(layer.values)
        )
    data = da.stack(arrays).astype("float32")
    data = da.where(da.isinf(data), np.float32(np.nan), data)  # +-inf is invalid, like NaN
    h, w = data.shape[1:]
    cy, cx = _resolve_chunks(chunks, (h, w), (min(h, 512), min(w, 512)))
    data = data.rechunk((len(layers), cy, cx))
    used = list(dict.fromkeys(v for _, v, _ in layers))
    fill = ds[used[0]].encoding.get("_FillValue")
    # CF-packed variables are unpacked by mask_and_scale: report what the values are now.
    src_dtype = {
        str(ds[n].dtype)
        if {"scale_factor", "add_offset"} & set(ds[n].encoding)
        else str(ds[n].encoding.get("dtype", ds[n].dtype))
        for n in used
    }
    return _canonical(
        data,
        names=[b for b, _, _ in layers],
        transform=transform,
        crs=crs,
        attrs={
            "source": str(path),
            "source_dtype": src_dtype.pop() if len(src_dtype) == 1 else "mixed",
            "source_nodata": None if fill is None else float(fill),
        },
    )
