"""Shared by the readers: chunk sizes, band selection, checks before reading, the canonical array.

The checks before reading (:func:`_check_size`, :func:`_check_dtypes`,
:func:`_check_chunk_bytes`) look only at what a file declares (shape, data type,
storage chunks), so an oversized, complex or hugely chunked raster is refused
before any pixel is read.

:func:`as_canonical` is the one door for arrays the user made (``rioxarray``,
``xarray``, NumPy): ``predict``, ``evaluate`` and ``train`` pass every input
through it, so declared nodata values become NaN, integers become ``float32`` and
the bands sit in one chunk, however the array was opened.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from georaster_cnn.chips import BLOCK_PX
from georaster_cnn.errors import InputError, NodataWarning
from georaster_cnn.geometry import RasterGrid
from georaster_cnn.options import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


BandSelector = Sequence[int | str] | None
Chunks = int | tuple[int, int] | str


#: The most bytes of one chunk a reader hands to a Dask task: a storage chunk (a
#: Zarr/netCDF chunk, a GDAL block) that must be decoded whole to read any of its
#: pixels, or a chunk of the canonical array. Larger ones are refused before any
#: read (a 32000 x 32000 chunk compresses to a few MB on disk, yet takes 4 GB to
#: decode). Change it here if you must; better re-save the data with smaller chunks.
MAX_CHUNK_BYTES = 512 * 2**20

#: The most bands a netCDF/Zarr input may become (``stack=`` over a long axis):
#: every band is a node of the Dask graph, built before any read.
MAX_BANDS = 10_000


def _root_message(exc: BaseException) -> str:
    """GDAL's own message: rasterio wraps it as "Read failed. See previous exception"."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return " ".join(str(exc).split()) or type(exc).__name__


def _on_worker() -> str:
    """``" on worker ADDRESS"`` inside a Dask ``distributed`` worker, else ``""``.

    Read errors say where the read ran: on a cluster, a worker may see another file,
    or none, under the same path.
    """
    distributed = sys.modules.get("distributed")  # not imported: not in a worker
    if distributed is None:
        return ""
    try:
        return f" on worker {distributed.get_worker().address}"
    except (ValueError, AttributeError):  # ValueError: not inside a worker
        return ""


def _auto_chunk(n: int, block: int, target: int = BLOCK_PX) -> int:
    """A multiple of the file's ``block`` size close to ``target`` (at most ``n``).

    Blocks as long as the axis (strips) are cut at ``target`` to bound memory.
    """
    if block >= n:
        return min(n, target)
    return min(n, max(block, (target // block) * block))


def _resolve_chunks(
    chunks: Chunks, shape: tuple[int, int], blocks: tuple[int, int]
) -> tuple[int, int]:
    if chunks == "auto":
        return (_auto_chunk(shape[0], blocks[0]), _auto_chunk(shape[1], blocks[1]))
    if isinstance(chunks, int):
        chunks = (chunks, chunks)
    if (
        isinstance(chunks, tuple)
        and len(chunks) == 2
        and all(isinstance(c, int) and c > 0 for c in chunks)
    ):
        return (min(chunks[0], shape[0]), min(chunks[1], shape[1]))
    raise InputError(f"chunks must be 'auto', a positive int or (y, x) ints; found {chunks!r}")


def _select(names: list[str], bands: BandSelector, source: Path | str) -> list[int]:
    """0-based positions of ``bands`` (1-based ints or names) among ``names``."""
    if bands is None:
        return list(range(len(names)))
    if isinstance(bands, (str, int)):
        bands = [bands]
    if len(bands) == 0:
        raise InputError(f"{source}: empty band selection")
    chosen = []
    for b in bands:
        if isinstance(b, (int, np.integer)) or (
            isinstance(b, str) and b.isdigit() and b not in names
        ):
            i = int(b)
            if not 1 <= i <= len(names):
                raise InputError(
                    f"{source}: band {i} does not exist; the file has {len(names)} band(s) "
                    f"numbered 1..{len(names)} ({', '.join(names)})"
                )
            chosen.append(i - 1)
        elif b in names:
            chosen.append(names.index(b))
        else:
            raise InputError(
                f"{source}: no band named {b!r}; bands are {', '.join(names)}. "
                "Select bands by 1-based number or by one of these names."
            )
    return chosen


# --------------------------------------------------------------------------- checks before reading

#: The size limit of the open_raster call in progress. The xarray path checks its
#: layers deep inside _from_dataset, before the Dask graph is built (building it is
#: what takes minutes and gigabytes for a huge declared grid); open_raster sets this.
_MAX_PIXELS: ContextVar[int] = ContextVar("georaster_cnn_max_pixels", default=DEFAULT_MAX_PIXELS)


@contextlib.contextmanager
def _size_limit(max_pixels: int) -> Iterator[None]:
    """Within the block, :func:`_check_layers` refuses inputs above ``max_pixels``."""
    token = _MAX_PIXELS.set(max_pixels)
    try:
        yield
    finally:
        _MAX_PIXELS.reset(token)


def _check_size(
    source: Path | str, bands: int, height: int, width: int, max_pixels: int | None = None
) -> None:
    """Refuse a raster whose declared ``bands x height x width`` exceeds ``max_pixels``."""
    limit = _MAX_PIXELS.get() if max_pixels is None else max_pixels
    total = bands * height * width
    if total > limit:
        raise InputError(
            f"{source}: {height:,} x {width:,} pixels x {bands} band(s) = {total:,} pixel values, "
            f"more than the limit max_pixels={limit}; nothing was read. If the size is real, "
            "pass a larger max_pixels= (or select fewer bands with bands=)"
        )


#: GDAL's names of the complex types, by rasterio's names.
_GDAL_COMPLEX = {
    "complex_int16": "CInt16",
    "complex_int32": "CInt32",
    "complex64": "CFloat32",
    "complex128": "CFloat64",
}


def _check_dtypes(source: Path | str, dtypes: Mapping[str, str]) -> None:
    """Refuse complex bands (``{band name: dtype name}``): reading them would drop a part.

    Boolean and 1-bit bands are fine: they read as 0/1.
    """
    bad = {n: d for n, d in dtypes.items() if "complex" in str(d)}
    if not bad:
        return
    kinds = sorted(set(bad.values()))
    named = ", ".join(f"{d} (GDAL {_GDAL_COMPLEX[d]})" if d in _GDAL_COMPLEX else d for d in kinds)
    raise InputError(
        f"{source}: band(s) {', '.join(bad)} hold complex numbers ({named}); only real-valued "
        "bands can be classified. Convert first: take the magnitude (e.g. gdal_translate "
        "DERIVED_SUBDATASET:AMPLITUDE:IN.tif OUT.tif, or numpy.abs), or write the real and "
        "imaginary parts as separate bands (numpy z.real, z.imag; gdal_calc.py "
        "--calc='real(A)' and --calc='imag(A)')"
    )


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _check_chunk_bytes(
    source: Path | str, what: str, shape: Sequence[int], itemsize: int, *, fix: str
) -> None:
    """Refuse a chunk (of ``shape`` values of ``itemsize`` bytes) above :data:`MAX_CHUNK_BYTES`.

    ``what`` names the chunk in the message (``"variable 'v' is stored in chunks"``);
    ``fix`` says how to get smaller ones.
    """
    nbytes = math.prod(int(n) for n in shape) * int(itemsize)
    if nbytes > MAX_CHUNK_BYTES:
        dims = " x ".join(f"{int(n):,}" for n in shape)
        raise InputError(
            f"{source}: {what} of {dims} values ({_fmt_bytes(nbytes)} each), more than one "
            f"task may hold (MAX_CHUNK_BYTES = {_fmt_bytes(MAX_CHUNK_BYTES)} in "
            f"georaster_cnn.io._canonical); nothing was read. {fix}"
        )


def _check_band_count(source: Path | str, n_bands: int, grid: tuple[int, int] | None) -> None:
    """Refuse more than :data:`MAX_BANDS` bands, or (with the ``(height, width)`` grid)
    more than ``max_pixels`` pixel values, early.

    Called with the stacked band count before a band is built, so that a stack over
    a million time steps is refused at once instead of after minutes of graph building.
    """
    if n_bands > MAX_BANDS:
        raise InputError(
            f"{source}: {n_bands:,} bands, more than the {MAX_BANDS:,} a raster may have "
            "(MAX_BANDS in georaster_cnn.io._canonical); nothing was read. Stack fewer steps: "
            "select= one value, choose variables= or bands=, or subset the dataset first "
            "(e.g. ds.isel(time=slice(0, 100)))"
        )
    if grid is not None:
        _check_size(source, n_bands, *grid)


def _check_layers(layers: Sequence[tuple[str, str, xr.DataArray]], source: Path | str) -> None:
    """The xarray path's checks before reading: complex variables, declared size.

    ``layers`` are ``(band name, variable, 2-D array)`` as the netCDF/Zarr reader
    builds them; only their declared dtype and shape are looked at.
    """
    _check_dtypes(source, {band: str(layer.dtype) for band, _, layer in layers})
    if layers:
        height, width = layers[0][2].shape[-2:]
        _check_size(source, len(layers), int(height), int(width))


def _canonical(
    data: da.Array,
    *,
    names: list[str],
    transform: Affine,
    crs: Any,
    attrs: dict[str, Any],
) -> xr.DataArray:
    """Wrap a ``(band, y, x)`` Dask array with coordinates, CRS and transform."""
    _, h, w = data.shape
    if not math.isfinite(transform.a) or transform.determinant == 0:
        raise InputError(f"{attrs['source']}: degenerate geotransform {tuple(transform)[:6]}")
    coords: dict[str, Any] = {
        "band": np.array(names, dtype=object),
        **RasterGrid(h, w, transform, crs).centre_coords(),
    }
    out = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, attrs=dict(attrs), name="data")
    out = out.rio.write_transform(transform)
    if crs is not None:
        out = out.rio.write_crs(crs)
    out = out.rio.write_nodata(np.nan, encoded=False)
    out.attrs.pop("_FillValue", None)
    _remember(data)
    return out


# --------------------------------------------------------------------------- arrays the user made

#: Dask names of canonical arrays as a reader or :func:`as_canonical` made them: such
#: an array needs no conversion (any operation on a Dask array changes its name, so a
#: hit means the array is untouched). Bounded: the oldest names are forgotten first.
_MADE: OrderedDict[str, None] = OrderedDict()
_MADE_MAX = 1024

#: Where an array declares its nodata value: rioxarray's and CF's attributes (and the
#: per-band ``nodatavals`` of the old ``xarray.open_rasterio``), and the encoding of
#: an array that xarray or ``rio.write_nodata(..., encoded=True)`` left encoded.
_NODATA_ATTRS = ("_FillValue", "missing_value", "fill_value", "nodata", "nodatavals")
_NODATA_ENCODING = ("_FillValue", "missing_value")


def _remember(data: da.Array) -> None:
    _MADE[data.name] = None
    _MADE.move_to_end(data.name)
    while len(_MADE) > _MADE_MAX:
        _MADE.popitem(last=False)


def as_canonical(data: xr.DataArray, *, bands: BandSelector = None) -> xr.DataArray:
    """Any ``(band, y, x)`` DataArray as the canonical object; the arrays of the readers as they are.

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
        dtype and nodata value (unless already set); the nodata declarations are
        removed (the nodata is NaN now).

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
    source = str(data.attrs.get("source") or "the input array")
    names = _band_names(data)
    _check_dtypes(source, dict.fromkeys(names, str(data.dtype)))
    nodata = _declared_nodata(data, source)  # first: rio.set_nodata lives on this object only
    data = data.transpose("band", "y", "x")
    if bands is not None:
        keep = _select(names, bands, source)
        data = data.isel(band=keep)
        names = [names[i] for i in keep]
        nodata = [v[keep] for v in nodata]
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
