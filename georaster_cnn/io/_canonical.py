"""Shared by the readers: chunk sizes, band selection, checks before reading, the canonical array.

The checks before reading (:func:`_check_size`, :func:`_check_dtypes`,
:func:`_check_chunk_bytes`) look only at what a file declares (shape, data type,
storage chunks), so an oversized, complex or hugely chunked raster is refused
before any pixel is read.

Arrays the user made (``rioxarray``, ``xarray``, NumPy) become canonical in
:mod:`georaster_cnn.io._user_arrays`; the arrays the readers make are remembered
here (:func:`_remember`), so that they pass there untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
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
from georaster_cnn.errors import InputError
from georaster_cnn.geometry import RasterGrid
from georaster_cnn.options import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


BandSelector = Sequence[int | str] | None
Chunks = int | tuple[int, int] | str


#: The most bytes of one chunk a reader hands to a Dask task: a stored chunk (a
#: Zarr/netCDF chunk, a GDAL block) is decoded whole to read any of its pixels.
#: Larger ones are refused before any read (a 32000 x 32000 chunk compresses to a
#: few MB on disk, yet takes 4 GB to decode). Change it here if you must; better
#: re-save the data with smaller chunks.
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


#: Dask names of canonical arrays as a reader or
#: :func:`~georaster_cnn.io._user_arrays.as_canonical` made them: such an array needs
#: no conversion (any operation on a Dask array changes its name, so a hit means the
#: array is untouched). Bounded: the oldest names are forgotten first.
_MADE: OrderedDict[str, None] = OrderedDict()
_MADE_MAX = 1024


def _remember(data: da.Array) -> None:
    _MADE[data.name] = None
    _MADE.move_to_end(data.name)
    while len(_MADE) > _MADE_MAX:
        _MADE.popitem(last=False)


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
