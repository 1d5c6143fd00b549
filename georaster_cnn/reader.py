"""open: any supported raster -> one canonical, lazy ``(band, y, x)`` DataArray.

The canonical object is a Dask-backed ``float32`` :class:`xarray.DataArray` with
dims ``(band, y, x)``, a ``band`` coordinate of band names, CRS and affine
transform available through rioxarray's ``.rio`` accessor, and **invalid pixels
as NaN** (nodata value, NaN in the file, or GDAL's per-dataset/alpha mask). That
NaN encoding *is* the nodata mask: :func:`valid_mask` derives it.

GDAL rasters are read with plain rasterio windowed reads, one Dask task per chunk,
with chunks aligned to the file's internal blocks (faster than going through
rioxarray's ``isel`` for windows). netCDF files, several netCDF files combined
by coordinates, and Zarr stores are opened with xarray and share one path from
Dataset to canonical array (variables, ``select``/``stack`` of extra dimensions,
CRS and transform from the coordinates); docs/netcdf-zarr.md describes the rules.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from dask.base import tokenize
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from georaster_cnn._canonical import (
    BandSelector,
    Chunks,
    _canonical,
    _resolve_chunks,
    _root_message,
    _select,
)
from georaster_cnn._xarray_open import (
    _from_dataset,
    _is_multi,
    _open_dataset_file,
    _open_multi,
    _open_zarr,
)
from georaster_cnn.errors import InputError, ReadError
from georaster_cnn.formats import input_family

__all__ = ["open_raster", "valid_mask"]

log = logging.getLogger(__name__)


def open_raster(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    bands: BandSelector = None,
    chunks: Chunks = "auto",
    variables: Sequence[str] | None = None,
    select: Mapping[str, Any] | None = None,
    stack: str | None = None,
) -> xr.DataArray:
    """Open a raster lazily as a ``float32`` ``(band, y, x)`` DataArray; invalid pixels are NaN.

    Parameters
    ----------
    path
        Any file rasterio/GDAL opens (GeoTIFF, COG, VRT, ...), a netCDF file
        (``.nc``), a Zarr store (a ``*.zarr`` folder, v2 or v3), or several netCDF
        files read as one dataset (a list of paths, or a glob pattern with ``*``,
        e.g. time split over yearly files). In netCDF and Zarr, each numeric
        variable on one regular (y, x) or (lat, lon) grid becomes a band.
    bands
        Bands to keep, in order: 1-based indexes or band names (GeoTIFF band
        descriptions, netCDF/Zarr variable names or stacked band names). ``None``
        keeps all.
    chunks
        ``"auto"`` aligns chunks to the file's internal blocks near
        1024 x 1024 pixels; an int or ``(y, x)`` sets the chunk size in pixels.
    variables
        netCDF/Zarr only: data variables to use, in order (same as ``bands``
        with names; give one or the other).
    select
        netCDF/Zarr only: one value per extra dimension, e.g.
        ``{"time": "2020-01-01", "level": 850}``. Dates pick the nearest time
        step; other values must match a coordinate value exactly.
    stack
        netCDF/Zarr only: a dimension whose every step becomes a band, named
        ``<variable>@<date>`` for time axes, else ``<variable>@<dim>=<value>``.

    Returns
    -------
    xarray.DataArray
        Lazy array with ``.rio.crs`` (``None`` when the file has none),
        ``.rio.transform()``, a ``band`` coordinate of names and attrs
        ``source``, ``source_dtype`` and ``source_nodata``.

    Raises
    ------
    ReadError
        The file does not exist or cannot be opened.
    InputError
        Bad band/variable selection; netCDF options given for a GDAL raster; a
        netCDF/Zarr grid that is not regular (irregular axes, curvilinear
        grids: regrid first); an extra dimension (time, level) of length > 1
        that is neither selected nor stacked.

    Examples
    --------
    >>> da = gc.open_raster("scene.tif", bands=[1, 3])  # doctest: +SKIP
    >>> da.dims
    ('band', 'y', 'x')
    >>> gc.open_raster("era5.nc", variables=["t2m"], select={"time": "2020-07-01"})  # doctest: +SKIP
    >>> gc.open_raster("era5_*.nc", stack="time")  # doctest: +SKIP
    """
    opts: dict[str, Any] = {"variables": variables, "select": select, "stack": stack}
    if _is_multi(path):
        ds, label = _open_multi(path)
        return _from_dataset(ds, label, bands=bands, chunks=chunks, **opts)
    p = Path(path)  # type: ignore[arg-type]
    if not p.exists():
        raise ReadError(f"{p}: no such file")
    family = input_family(p)
    if family == "zarr":
        return _from_dataset(_open_zarr(p), p, bands=bands, chunks=chunks, **opts)
    if family == "netcdf":
        return _from_dataset(_open_dataset_file(p), p, bands=bands, chunks=chunks, **opts)
    given = [k for k, v in opts.items() if v is not None and v != {}]
    if given:
        flags = ", ".join(f"{k}=" for k in given)
        raise InputError(
            f"{p}: {flags} apply only to netCDF and Zarr inputs; this is a GDAL raster "
            "(choose its bands with bands=)"
        )
    return _open_gdal(p, bands=bands, chunks=chunks)


def valid_mask(data: xr.DataArray) -> xr.DataArray:
    """Boolean ``(y, x)`` mask: ``True`` where every band of ``data`` is valid (not NaN)."""
    return data.notnull().all("band")


# --------------------------------------------------------------------------- GDAL


class _WindowReader:
    """Array-like over a rasterio file for :func:`dask.array.from_array`.

    Holds only the path and metadata, so it pickles cheaply to Dask workers; each
    read opens the file (rasterio datasets are not thread-safe to share).
    """

    def __init__(
        self,
        path: str,
        indexes: list[int],
        shape: tuple[int, int, int],
        use_masks: bool,
        georeferenced: bool = True,
    ) -> None:
        self.path = path
        self.georeferenced = georeferenced
        self.indexes = indexes
        self.shape = shape
        self.dtype = np.dtype("float32")
        self.ndim = 3
        self.use_masks = use_masks

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        bsl, ysl, xsl = key
        idx = self.indexes[bsl]
        y0, y1, _ = ysl.indices(self.shape[1])
        x0, x1, _ = xsl.indices(self.shape[2])
        window = Window(x0, y0, x1 - x0, y1 - y0)
        try:
            with _open(self.path, quiet=not self.georeferenced) as src:
                out = src.read(idx, window=window, out_dtype="float32")
                # +-inf is invalid like NaN; every NaN becomes a quiet one (a signalling NaN
                # from a damaged file would make later arithmetic raise FP warnings)
                out[~np.isfinite(out)] = np.nan
                if self.use_masks:
                    masks = src.read_masks(idx, window=window)
                    out[masks == 0] = np.nan
        except RasterioError as exc:
            detail = _root_message(exc)
            raise ReadError(
                f"{self.path}: cannot read pixels at rows {y0}-{y1}, cols {x0}-{x1} ({detail}); "
                "the file is probably truncated or corrupt"
            ) from exc
        return out


# warnings.catch_warnings() swaps process-wide filters and is not thread-safe: two
# Dask threads entering and leaving it concurrently can leave a warning unfiltered.
# The lock serialises every such swap, and only the open itself (where rasterio emits
# NotGeoreferencedWarning) runs inside it.
_QUIET_OPEN_LOCK = threading.Lock()


def _open(path: str | Path, *, quiet: bool) -> Any:
    """``rasterio.open(path)``; with ``quiet``, without rasterio's NotGeoreferencedWarning.

    A file without a geotransform is supported (its output is in pixel
    coordinates); the reader logs that once instead of warning on every block read.
    """
    if not quiet:
        return rasterio.open(path)
    with _QUIET_OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _open_gdal(path: Path, *, bands: BandSelector, chunks: Chunks) -> xr.DataArray:
    try:
        with _open(path, quiet=True) as src:
            names = [d if d else f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
            if len(set(names)) != len(names):  # duplicate descriptions: fall back to numbers
                names = [f"band_{i + 1}" for i in range(src.count)]
            sel = _select(names, bands, path)
            indexes = [i + 1 for i in sel]
            use_masks = any(src.mask_flag_enums[i] != [MaskFlags.all_valid] for i in sel)
            dtypes = {src.dtypes[i] for i in sel}
            nodata = src.nodata
            height, width = src.height, src.width
            block = src.block_shapes[sel[0]]
            crs = src.crs
            transform = src.transform
            gcps_only = transform.is_identity and bool(src.gcps[0])
            georeferenced = not (transform.is_identity and crs is None)
    except RasterioError as exc:
        raise ReadError(f"{path}: not a raster GDAL can open ({exc})") from exc
    if gcps_only:
        raise InputError(
            f"{path}: georeferenced only by ground control points; warp it to a grid first "
            "(e.g. gdalwarp) so pixels have an affine transform"
        )
    cy, cx = _resolve_chunks(chunks, (height, width), block)
    if not georeferenced:
        log.info("%s has no georeferencing; the output will be in pixel coordinates", path)
    reader = _WindowReader(
        str(path), indexes, (len(indexes), height, width), use_masks, georeferenced
    )
    token = tokenize(str(path.resolve()), os.path.getmtime(path), indexes, cy, cx)
    data = da.from_array(
        reader,
        chunks=(len(indexes), cy, cx),
        name=f"open_raster-{token}",
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype="float32"),
    )
    return _canonical(
        data,
        names=[names[i] for i in sel],
        transform=transform,
        crs=crs,
        attrs={
            "source": str(path),
            "source_dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
            "source_nodata": None if nodata is None else float(nodata),
        },
    )
