"""netCDF, multi-file netCDF and Zarr inputs: one xarray path to the canonical array.

Opens the dataset and chooses its bands: variables become bands; extra dimensions
are selected (nearest for dates) or stacked into bands. The grid (CRS and
transform) is derived in :mod:`georaster_cnn._cf_grid`. docs/netcdf-zarr.md
describes the rules; :func:`georaster_cnn.open_raster` dispatches here.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cftime
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from georaster_cnn._canonical import (
    BandSelector,
    Chunks,
    _canonical,
    _resolve_chunks,
    _root_message,
    _select,
)
from georaster_cnn._cf_grid import _find_grid, _georeference
from georaster_cnn._netcdf3 import _check_classic_size
from georaster_cnn.errors import InputError, ReadError

log = logging.getLogger(__name__)

_ISO_DATE = re.compile(
    r"^\s*(-?\d{1,4})-(\d{1,2})(?:-(\d{1,2}))?(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*$"
)


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
    variables = _check_options(path, bands=bands, variables=variables, select=select, stack=stack)
    grid, names = _chosen_variables(ds, variables, path)
    if select:
        ds = _apply_select(ds, select, path)
    if stack is not None:
        _check_stack(ds, names, grid, stack, path)
    layers = _band_layers(ds, names, grid, stack, path)
    if bands is not None:
        layers = _pick_bands(layers, names, bands, path)
    crs, transform = _georeference(ds, grid, layers[0][1], layers[0][2], path)
    return _canonical(
        _stack_layers(layers, grid, chunks),
        names=[b for b, _, _ in layers],
        transform=transform,
        crs=crs,
        attrs=_source_attrs(ds, layers, path),
    )


def _check_options(
    path: Path | str,
    *,
    bands: BandSelector,
    variables: Sequence[str] | None,
    select: Mapping[str, Any] | None,
    stack: str | None,
) -> Sequence[str] | None:
    """Refuse conflicting options; a single variable name becomes a list."""
    if variables is not None and bands is not None:
        raise InputError(f"{path}: give variables or bands, not both (they are the same here)")
    if isinstance(variables, str):
        variables = [variables]
    if stack is not None and not isinstance(stack, str):
        raise InputError(f"stack takes one dimension name; found {stack!r}")
    if select and stack is not None and stack in select:
        raise InputError(f"{path}: dimension {stack!r} cannot be both selected and stacked")
    return variables


def _chosen_variables(
    ds: xr.Dataset, variables: Sequence[str] | None, path: Path | str
) -> tuple[tuple[str, str], list[str]]:
    """The grid and the variables that become bands: ``variables``, or all on the grid."""
    grid, candidates = _find_grid(ds, path)
    if variables is None:
        return grid, candidates
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
    return grid, list(variables)


def _check_stack(
    ds: xr.Dataset, names: list[str], grid: tuple[str, str], stack: str, path: Path | str
) -> None:
    """Refuse to stack a dimension that none of the chosen variables has."""
    if stack not in ds.dims or not any(stack in ds[n].dims for n in names):
        dims = sorted({str(d) for n in names for d in ds[n].dims if d not in grid})
        raise InputError(
            f"{path}: cannot stack {stack!r}: no such dimension on the chosen variables; "
            f"their extra dimensions are {', '.join(dims) or 'none'}"
        )


def _pick_bands(
    layers: list[tuple[str, str, xr.DataArray]],
    names: list[str],
    bands: Sequence[int | str],
    path: Path | str,
) -> list[tuple[str, str, xr.DataArray]]:
    """The layers ``bands`` selects, in its order."""
    band_names = [b for b, _, _ in layers]
    # Variable names pick all of their bands; stacked band names and numbers pick one.
    wanted: list[int | str] = []
    seq = [bands] if isinstance(bands, (str, int)) else list(bands)
    for b in seq:
        if isinstance(b, str) and b in names and b not in band_names:
            wanted.extend(band_names[i] for i, (_, v, _) in enumerate(layers) if v == b)
        else:
            wanted.append(b)
    return [layers[i] for i in _select(band_names, wanted, path)]


def _stack_layers(
    layers: list[tuple[str, str, xr.DataArray]], grid: tuple[str, str], chunks: Chunks
) -> da.Array:
    """The layers as one ``(band, y, x)`` float32 Dask array; +-inf becomes NaN."""
    ydim, xdim = grid
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
    return data.rechunk((len(layers), cy, cx))


def _source_attrs(
    ds: xr.Dataset, layers: list[tuple[str, str, xr.DataArray]], path: Path | str
) -> dict[str, Any]:
    """``source``, ``source_dtype`` and ``source_nodata`` of the variables the layers come from."""
    used = list(dict.fromkeys(v for _, v, _ in layers))
    fill = ds[used[0]].encoding.get("_FillValue")
    # CF-packed variables are unpacked by mask_and_scale: report what the values are now.
    src_dtype = {
        str(ds[n].dtype)
        if {"scale_factor", "add_offset"} & set(ds[n].encoding)
        else str(ds[n].encoding.get("dtype", ds[n].dtype))
        for n in used
    }
    return {
        "source": str(path),
        "source_dtype": src_dtype.pop() if len(src_dtype) == 1 else "mixed",
        "source_nodata": None if fill is None else float(fill),
    }
