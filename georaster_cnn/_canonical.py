"""Shared by the readers: chunk sizes, band selection, and the canonical DataArray."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from georaster_cnn.errors import InputError
from georaster_cnn.geometry import RasterGrid

log = logging.getLogger(__name__)

#: Target chunk side in pixels when the caller does not choose.
DEFAULT_CHUNK_PX = 1024

BandSelector = Sequence[int | str] | None
Chunks = int | tuple[int, int] | str


def _root_message(exc: BaseException) -> str:
    """GDAL's own message: rasterio wraps it as "Read failed. See previous exception"."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return " ".join(str(exc).split()) or type(exc).__name__


def _auto_chunk(n: int, block: int, target: int = DEFAULT_CHUNK_PX) -> int:
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
    return out
