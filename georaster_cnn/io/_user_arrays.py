"""Arrays the user made: any ``(band, y, x)`` DataArray as the canonical object.

:func:`as_canonical` is the one door for arrays that did not come from
:func:`~georaster_cnn.open_raster` (``rioxarray.open_rasterio``, ``xarray``, NumPy in
memory): ``predict``, ``evaluate`` and ``train`` pass every input through it, so
declared nodata values become NaN before anything else, integers become ``float32``
and the bands sit in one chunk, however the array was opened or chunked. The arrays
the readers make pass untouched (:data:`georaster_cnn.io._canonical._MADE`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from georaster_cnn.errors import InputError, NodataWarning
from georaster_cnn.io._canonical import (
    _MADE,
    BandSelector,
    _check_dtypes,
    _remember,
    _resolve_chunks,
    _select,
)

__all__ = ["as_canonical"]


#: Where an array declares its nodata value: rioxarray's and CF's attributes (and the
#: per-band ``nodatavals`` of the old ``xarray.open_rasterio``), and the encoding of
#: an array that xarray or ``rio.write_nodata(..., encoded=True)`` left encoded.
_NODATA_ATTRS = ("_FillValue", "missing_value", "fill_value", "nodata", "nodatavals")
_NODATA_ENCODING = ("_FillValue", "missing_value")


def as_canonical(data: xr.DataArray, *, bands: BandSelector = None) -> xr.DataArray:
    """Any ``(band, y, x)`` DataArray as the canonical object (the readers' arrays as they are).

    ``predict``, ``evaluate`` and ``train`` pass their inputs through here, so an
    array opened by ``rioxarray.open_rasterio`` (``masked=False``), given a nodata
    value with ``.rio.write_nodata``, or carrying an encoded ``_FillValue`` is
    classified exactly like the same file opened by
    :func:`~georaster_cnn.open_raster`.

    Parameters
    ----------
    data
        A DataArray with dims ``band``, ``y`` and ``x`` (any order), NumPy-, Dask- or
        lazily backed, of any real dtype, chunked in any way.
    bands
        Bands to keep, in order: 1-based indexes or band names; ``None``: all.

    Returns
    -------
    xarray.DataArray
        Dask-backed ``float32`` ``(band, y, x)`` with all bands in one chunk, a
        ``band`` coordinate of names, and NaN wherever the input is NaN, +-inf or
        equal to a declared nodata value (``.rio.nodata``, ``.rio.encoded_nodata``,
        ``_FillValue``, ``missing_value``, ``fill_value``, ``nodata`` or
        ``nodatavals`` in attrs, ``_FillValue``/``missing_value`` in the encoding,
        unless the encoding says the values were already decoded: ``scale_factor``,
        ``add_offset``). Band names: string coordinates as they are; integer
        coordinates (rioxarray's 1-based band numbers) become the band descriptions
        of a ``long_name`` tuple, else ``band_<n>``; no coordinate: ``band_1 ...``.
        ``attrs["source_dtype"]`` and ``attrs["source_nodata"]`` record the original
        dtype and nodata value, ``attrs["source"]`` the file named in the encoding
        (unless already set); the nodata declarations are removed (the nodata is NaN
        now).

    Raises
    ------
    InputError
        Not a DataArray, other dims, complex values, a bad ``bands`` selection, or
        per-band nodata values that do not match the bands.

    Warns
    -----
    NodataWarning
        A declared nodata value that cannot occur in the array's dtype (e.g. -9999
        on ``uint8``): no cell is masked by it.
    """
    if not isinstance(data, xr.DataArray):
        raise InputError(
            f"expected an xarray.DataArray with dims (band, y, x); found {type(data).__name__}. "
            "Open files with open_raster (or rioxarray.open_rasterio)"
        )
    if set(data.dims) != {"band", "y", "x"}:
        raise InputError(
            f"expected dims (band, y, x); found {data.dims}. Rename them "
            "(data.rename({...})) or add a band axis (data.expand_dims('band'))"
        )
    # rioxarray and xarray keep the file's name in the encoding
    source = str(data.attrs.get("source") or data.encoding.get("source") or "the input array")
    names = _band_names(data)
    _check_dtypes(source, dict.fromkeys(names, str(data.dtype)))
    nodata = _declared_nodata(data, source)  # first: rio.set_nodata lives on this object only
    data = data.transpose("band", "y", "x")
    if bands is not None:
        keep = _select(names, bands, source)
        data = data.isel(band=keep)
        names = [names[i] for i in keep]
        nodata = [v[keep] for v in nodata if np.isfinite(v[keep]).any()]
    arr = data.data
    if (
        isinstance(arr, da.Array)
        and arr.name in _MADE
        and arr.dtype == np.float32
        and arr.numblocks[0] == 1
        and not nodata
    ):
        return _named(data, names)
    out = _masked(_one_band_chunk(data), nodata)
    _remember(out)
    result = data.copy(data=out)
    result.encoding = {k: v for k, v in data.encoding.items() if k not in _NODATA_ENCODING}
    for key in _NODATA_ATTRS:
        result.attrs.pop(key, None)
    result.attrs.setdefault("source_dtype", _source_dtype(data))
    if data.encoding.get("source"):
        result.attrs.setdefault("source", str(data.encoding["source"]))
    if "source_nodata" not in result.attrs:
        first = next((float(v[np.isfinite(v)][0]) for v in nodata), None)
        result.attrs["source_nodata"] = first
    result = result.rio.write_nodata(np.nan, encoded=False)
    result.attrs.pop("_FillValue", None)
    return _named(result, names)


def _band_names(data: xr.DataArray) -> list[str]:
    """The band names :func:`as_canonical` gives ``data`` (see there)."""
    n = data.sizes["band"]
    if "band" not in data.coords:
        return [f"band_{i + 1}" for i in range(n)]
    values = data["band"].values
    if values.dtype.kind not in "iu":
        return [str(v) for v in values]
    long = data.attrs.get("long_name")
    desc = list(long) if isinstance(long, (tuple, list)) else []
    names = [
        str(desc[v - 1]) if 1 <= v <= len(desc) and desc[v - 1] else f"band_{v}"
        for v in (int(b) for b in values)
    ]
    return names if len(set(names)) == len(names) else [f"band_{int(v)}" for v in values]


def _named(data: xr.DataArray, names: list[str]) -> xr.DataArray:
    coord = data.coords.get("band")
    if coord is not None and coord.dtype.kind in "OU" and [str(b) for b in coord.values] == names:
        return data
    return data.assign_coords(band=np.array(names, dtype=object))


def _decoded(encoding: Mapping[str, Any]) -> bool:
    """Whether xarray decoded (unpacked) the values: the encoded fill value is then NaN."""
    return encoding.get("scale_factor", 1) != 1 or encoding.get("add_offset", 0) != 0


def _source_dtype(data: xr.DataArray) -> str:
    enc = data.encoding
    if _decoded(enc):
        return str(data.dtype)
    return str(enc.get("rasterio_dtype") or enc.get("dtype") or data.dtype)


def _declared_nodata(data: xr.DataArray, source: str) -> list[np.ndarray]:
    """Every declared nodata value as a per-band ``float64`` vector in the array's dtype.

    NaN where a band has none; values that cannot occur in the dtype are dropped with
    a :class:`NodataWarning`; NaN and +-inf are left out (they are invalid anyway).
    """
    found = [(f"attrs[{k!r}]", data.attrs[k]) for k in _NODATA_ATTRS if k in data.attrs]
    enc = data.encoding
    if not _decoded(enc):
        found += [(f"encoding[{k!r}]", enc[k]) for k in _NODATA_ENCODING if k in enc]
    if not found and "_FillValue" not in enc:  # rio.set_nodata's value, on this object only
        try:
            nd = data.rio.nodata
        except (OverflowError, TypeError, ValueError):
            nd = None  # a value outside the dtype: it is in attrs, warned about there
        if nd is not None:
            found.append((".rio.nodata", nd))
    out: list[np.ndarray] = []
    for where, value in found:
        vec = _per_band(value, data.sizes["band"], where, source)
        vec = np.array([_in_dtype(v, data.dtype, where, source) for v in vec])
        if np.isfinite(vec).any() and not any(np.array_equal(vec, o, equal_nan=True) for o in out):
            out.append(vec)
    return out


def _per_band(value: Any, n: int, where: str, source: str) -> np.ndarray:
    """A nodata declaration as one value per band."""
    try:
        vec = np.asarray(value, dtype="float64").ravel()
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: nodata {where} = {value!r} is not a number") from exc
    if vec.size == n:
        return vec
    if vec.size > 0 and np.array_equal(vec, np.full(vec.size, vec[0]), equal_nan=True):
        return np.full(n, vec[0])
    raise InputError(
        f"{source}: {where} declares {vec.size} nodata values for {n} band(s); give one "
        "value, or one per band (data.rio.write_nodata(VALUE))"
    )


def _in_dtype(value: float, dtype: np.dtype[Any], where: str, source: str) -> float:
    """``value`` as the array stores it (float64), or NaN with a warning where it cannot occur."""
    if not math.isfinite(value):
        return math.nan
    if dtype.kind in "iub":
        info = np.iinfo(np.uint8 if dtype.kind == "b" else dtype)
        lo, hi = (0, 1) if dtype.kind == "b" else (info.min, info.max)
        fits = value.is_integer() and lo <= value <= hi
    else:
        fits = abs(value) <= float(np.finfo(dtype).max)
    if fits:
        return float(dtype.type(value))
    warnings.warn(
        f"{source}: nodata value {value:g} ({where}) cannot occur in {dtype} data (outside the "
        "type's range), so no cell is treated as nodata by it. If nodata cells hold another "
        "value, declare that one (data.rio.write_nodata(VALUE)); if the array was converted "
        "from another type, convert the nodata value too",
        NodataWarning,
        stacklevel=5,
    )
    return math.nan


def _one_band_chunk(data: xr.DataArray) -> da.Array:
    """``data`` as a Dask array with all bands in one chunk (other chunks kept, or ~BLOCK_PX)."""
    arr = data.data
    if isinstance(arr, da.Array):
        return arr if arr.numblocks[0] == 1 else arr.rechunk({0: -1})
    h, w = data.sizes["y"], data.sizes["x"]
    preferred = data.encoding.get("preferred_chunks") or {}
    blocks = (int(preferred.get("y", min(h, 512))), int(preferred.get("x", min(w, 512))))
    cy, cx = _resolve_chunks("auto", (h, w), blocks)
    chunked: da.Array = data.chunk({"band": -1, "y": cy, "x": cx}).data
    return chunked


def _masked(arr: da.Array, nodata: list[np.ndarray]) -> da.Array:
    """``arr`` as float32 with NaN at every declared nodata value and every NaN or +-inf."""
    out = arr.astype(np.float32)
    bad: da.Array | None = None
    for vec in nodata:
        hit = arr == vec.reshape(-1, 1, 1)  # NaN (a band without nodata) matches nothing
        bad = hit if bad is None else bad | hit
    if arr.dtype.kind == "f":
        # +-inf is invalid like NaN; every NaN becomes a quiet one (as the readers do)
        odd = ~da.isfinite(out)
        bad = odd if bad is None else bad | odd
    return out if bad is None else da.where(bad, np.float32(np.nan), out)
