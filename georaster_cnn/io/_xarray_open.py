"""netCDF, multi-file netCDF and Zarr inputs: one xarray path to the canonical array.

Opens the dataset and chooses its bands: variables become bands; extra dimensions
are selected (the value asked for, within half a step; ``~`` for the nearest; see
:mod:`georaster_cnn.io._dim_select`) or stacked into bands. Every variable is read
through a guard that turns a failing read (a corrupted chunk) into :class:`ReadError`
naming the file and variable. The grid (CRS and transform) is derived in
:mod:`georaster_cnn.io._cf_grid`.
docs/netcdf-zarr.md describes the rules; :func:`georaster_cnn.open_raster`
dispatches here.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cftime
import dask.array as da
import numpy as np
import xarray as xr
from dask.array.core import getter
from dask.base import tokenize

from georaster_cnn.chips import BLOCK_PX
from georaster_cnn.errors import InputError, ReadError
from georaster_cnn.io._canonical import (
    BandSelector,
    Chunks,
    _canonical,
    _check_band_count,
    _check_chunk_bytes,
    _check_layers,
    _on_worker,
    _resolve_chunks,
    _root_message,
    _select,
)
from georaster_cnn.io._cf_grid import _find_grid, _georeference
from georaster_cnn.io._dim_select import _apply_select, _fmt_label, _preview
from georaster_cnn.io._netcdf3 import _check_classic_size


def _is_multi(path: object) -> bool:
    return isinstance(path, (list, tuple)) or (
        isinstance(path, (str, os.PathLike)) and "*" in os.fspath(path) and not Path(path).exists()
    )


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _guarded_getter(
    a: Any,
    b: Any,
    asarray: bool = True,
    lock: Any = None,
    *,
    source: str,
    variable: str,
    marker: str | None = None,
) -> Any:
    """Dask's ``getter``, with a failing read raised as :class:`ReadError` (file and variable).

    ``marker``: a Zarr store's root metadata file. Zarr reads a missing chunk as the
    fill value, so a store that is gone (deleted, or not visible on this worker) would
    read as all nodata; its missing root metadata says so.
    """
    try:
        out = getter(a, b, asarray=asarray, lock=lock)
        if marker is not None and not os.path.exists(marker):
            raise FileNotFoundError(2, "No such file or directory", marker)
        return out
    except (ReadError, MemoryError):
        raise
    except Exception as exc:  # netCDF4/HDF5/zarr/codecs raise assorted types for bad bytes
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            why = f"{exc.strerror or type(exc).__name__}: {exc.filename or source}"
            cause = (
                "the file was moved, deleted or made unreadable after it was opened, or this "
                "machine does not see it under that path (on a cluster: every worker must "
                "read the inputs under the same paths)"
            )
        else:
            why, cause = _detail(exc), "the file is damaged (a corrupted or unreadable chunk)"
        raise ReadError(
            f"{source}: cannot read variable {variable!r}{_on_worker()} ({why}); {cause}"
        ) from exc


def _guard_reads(ds: xr.Dataset, source: Path, marker: Path | None = None) -> xr.Dataset:
    """``ds`` (opened lazily, without Dask) with every data variable chunked through the guard.

    The chunks are the file's own (``preferred_chunks``); where it has none (contiguous
    storage), the last two dimensions (y, x) are cut at ``BLOCK_PX`` and the
    others take one step a chunk, so that no read holds a whole large variable. Reads
    then happen inside the Dask computation, where an error would otherwise surface
    as a bare ``RuntimeError``.
    """
    try:
        stamp = os.stat(source).st_mtime_ns
    except OSError:
        stamp = 0
    chunked = {}
    for name, var in ds.data_vars.items():
        if var.ndim == 0:
            continue
        preferred = var.encoding.get("preferred_chunks") or {}
        last_two = set(var.dims[-2:])
        chunks = {
            d: preferred.get(d, min(n, BLOCK_PX) if d in last_two else 1)
            for d, n in var.sizes.items()
        }
        chunked[name] = var.chunk(
            chunks,
            name_prefix="open-",
            token=tokenize(str(Path(source).resolve()), stamp, str(name), str(chunks)),
            from_array_kwargs={
                "getitem": partial(
                    _guarded_getter,
                    source=str(source),
                    variable=str(name),
                    marker=None if marker is None else str(marker),
                )
            },
        )
    return ds.assign(chunked)


def _open_dataset_file(path: Path) -> xr.Dataset:
    try:
        # decode_timedelta=False: a variable with time units ("days") is data, not a duration.
        # chunks=None, cache=False: lazy backend arrays, chunked by _guard_reads.
        ds = xr.open_dataset(
            path,
            chunks=None,
            cache=False,
            decode_coords="all",
            mask_and_scale=True,
            decode_timedelta=False,
            auto_complex=True,  # complex variables as complex (refused by name), not skipped
        )
    except Exception as exc:  # netCDF4/h5netcdf raise assorted types for broken files
        raise ReadError(f"{path}: not a readable netCDF file ({_detail(exc)})") from exc
    _check_classic_size(path, ds)
    return _guard_reads(ds, path)


def _open_zarr(path: Path) -> xr.Dataset:
    # Say which format and whether metadata is consolidated, so that xarray does not
    # guess (and warn) for stores written either way.
    if (path / ".zgroup").exists() or (path / ".zattrs").exists():
        zarr_format, consolidated = 2, (path / ".zmetadata").exists()
        marker = path / (".zgroup" if (path / ".zgroup").exists() else ".zattrs")
    else:
        zarr_format, consolidated, marker = 3, False, path / "zarr.json"
        try:
            meta = json.loads((path / "zarr.json").read_text())
            consolidated = meta.get("consolidated_metadata") is not None
        except (OSError, ValueError):
            pass
    try:
        ds = xr.open_zarr(
            path,
            chunks=None,
            decode_coords="all",
            mask_and_scale=True,
            decode_timedelta=False,
            consolidated=consolidated,
            zarr_format=zarr_format,
        )
    except Exception as exc:  # zarr raises assorted types for broken stores
        raise ReadError(f"{path}: not a readable Zarr store ({_root_message(exc)})") from exc
    return _guard_reads(ds, path, marker)


def _open_multi(path: object) -> tuple[xr.Dataset, str]:
    """Several netCDF files (a list, or a glob pattern) combined by their coordinates.

    Each file is opened by its absolute path (Dask workers reopen it there); the label
    of messages and ``attrs["source"]`` keeps the names as given.
    """
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
    files = [f.absolute() for f in files]
    # Each member is opened (and guarded) on its own, so that a broken member, or a
    # corrupted chunk in one, fails with its own name; then combined as open_mfdataset does.
    members: list[xr.Dataset] = []

    def close_all() -> None:
        for m in members:
            m.close()

    try:
        members.extend(_open_dataset_file(f) for f in files)
        ds = xr.combine_by_coords(
            members,
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="exact",
            combine_attrs="override",
        )
    except ReadError:
        close_all()
        raise
    except ValueError as exc:
        close_all()
        raise InputError(
            f"{label}: the files do not combine into one dataset by their coordinates "
            f"({_root_message(exc)}); they must share one grid and differ along one "
            "dimension such as time"
        ) from exc
    except Exception as exc:
        close_all()
        raise ReadError(f"{label}: cannot open the files as one dataset ({exc})") from exc
    if not isinstance(ds, xr.Dataset):  # combine_by_coords returns a Dataset for Datasets
        raise ReadError(f"{label}: the files do not combine into one dataset")
    ds.set_close(close_all)
    return ds, label


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
    _check_storage_chunks(ds, names, path)
    picked: dict[str, str] = {}
    if select:
        ds, picked = _apply_select(ds, select, path)
    if stack is not None:
        _check_stack(ds, names, grid, stack, path)
    # The stacked size, before a band is built (a stack of a million steps took minutes)
    n_built = sum(ds.sizes[stack] if stack in ds[n].dims else 1 for n in names)
    # With bands=, the selected bands are sized after selection; only the count built here.
    _check_band_count(
        path, n_built, None if bands is not None else (ds.sizes[grid[0]], ds.sizes[grid[1]])
    )
    layers = _band_layers(ds, names, grid, stack, path)
    if bands is not None:
        layers = _pick_bands(layers, names, bands, path)
    _check_layers(layers, path)  # complex or oversized: refused before the Dask graph is built
    crs, transform, xy_units = _georeference(ds, grid, layers[0][1], layers[0][2], path)
    attrs = _source_attrs(ds, layers, path)
    if picked:
        attrs["selected"] = picked
    if xy_units is not None:
        attrs["source_xy_units"] = xy_units
    return _canonical(
        _stack_layers(layers, grid, chunks),
        names=[b for b, _, _ in layers],
        transform=transform,
        crs=crs,
        attrs=attrs,
    )


def _check_storage_chunks(ds: xr.Dataset, names: list[str], path: Path | str) -> None:
    """Refuse a chosen variable whose stored chunks are too large for one task to decode.

    Its Dask chunks are the stored ones (:func:`_guard_reads`), and a read of any of
    its values decodes a whole stored chunk: all the time steps of a chunk that spans
    the time axis, even under ``select=``.
    """
    for n in names:
        var = ds[n]
        shape = var.data.chunksize if isinstance(var.data, da.Array) else var.shape
        # the advice: what _guard_reads picks for unchunked storage (y, x ~BLOCK_PX; others 1)
        smaller = [min(int(var.sizes[d]), BLOCK_PX if d in var.dims[-2:] else 1) for d in var.dims]
        dims = ", ".join(f"{str(d)!r}: {k}" for d, k in zip(var.dims, smaller, strict=True))
        _check_chunk_bytes(
            path,
            f"variable {n!r} is stored in chunks",
            [int(k) for k in shape],
            var.dtype.itemsize,
            fix=(
                "Re-save it with smaller chunks, e.g. "
                f"ds.chunk({{{dims}}}).to_zarr(...) (or to_netcdf with chunksizes=)"
            ),
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
    """The layers as one ``(band, y, x)`` float32 Dask array; +-inf becomes a quiet NaN."""
    ydim, xdim = grid
    arrays = []
    for _, _, layer in layers:
        layer = layer.transpose(ydim, xdim)
        arrays.append(
            layer.data if isinstance(layer.data, da.Array) else da.from_array(layer.values)
        )
    data = da.stack(arrays).astype("float32")
    # +-inf is invalid like NaN; every NaN becomes a quiet one (a signalling NaN from a
    # damaged chunk would make later arithmetic raise floating-point warnings)
    data = da.where(da.isfinite(data), data, np.float32(np.nan))
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
