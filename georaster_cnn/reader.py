"""open: any supported raster -> one canonical, lazy ``(band, y, x)`` DataArray.

The canonical object is a Dask-backed ``float32`` :class:`xarray.DataArray` with
dims ``(band, y, x)``, a ``band`` coordinate of band names, CRS and affine
transform available through rioxarray's ``.rio`` accessor, and **invalid pixels
as NaN** (nodata value, NaN in the file, or GDAL's per-dataset/alpha mask). That
NaN encoding *is* the nodata mask: :func:`valid_mask` derives it.

GDAL rasters are read with plain rasterio windowed reads, one Dask task per chunk,
with chunks aligned to the file's internal blocks (faster than going through
rioxarray's ``isel`` for windows). netCDF files are opened with xarray.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from dask.base import tokenize
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from georaster_cnn.errors import InputError, ReadError

__all__ = ["NETCDF_SUFFIXES", "open_raster", "valid_mask"]

log = logging.getLogger(__name__)

NETCDF_SUFFIXES = frozenset({".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5"})

#: Target chunk side in pixels when the caller does not choose.
DEFAULT_CHUNK_PX = 1024

BandSelector = Sequence[int | str] | None
Chunks = int | tuple[int, int] | str


def open_raster(
    path: str | os.PathLike[str],
    *,
    bands: BandSelector = None,
    chunks: Chunks = "auto",
) -> xr.DataArray:
    """Open a raster lazily as a ``float32`` ``(band, y, x)`` DataArray; invalid pixels are NaN.

    Parameters
    ----------
    path
        Any file rasterio/GDAL opens (GeoTIFF, COG, VRT, ...) or a netCDF file
        (``.nc``) whose 2-D variables on one regular grid become bands.
    bands
        Bands to keep, in order: 1-based indexes or band names (GeoTIFF band
        descriptions, netCDF variable names). ``None`` keeps all.
    chunks
        ``"auto"`` aligns chunks to the file's internal blocks near
        1024 x 1024 pixels; an int or ``(y, x)`` sets the chunk size in pixels.

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
        Bad band selection, or a netCDF file that is not a regular 2-D grid.

    Examples
    --------
    >>> da = gc.open_raster("scene.tif", bands=[1, 3])  # doctest: +SKIP
    >>> da.dims
    ('band', 'y', 'x')
    """
    p = Path(path)
    if not p.exists():
        raise ReadError(f"{p}: no such file")
    if p.suffix.lower() in NETCDF_SUFFIXES:
        return _open_netcdf(p, bands=bands, chunks=chunks)
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
            with _quiet_if(not self.georeferenced), rasterio.open(self.path) as src:
                out = src.read(idx, window=window, out_dtype="float32")
                out[np.isinf(out)] = np.nan  # +-inf is invalid, like NaN
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


def _select(names: list[str], bands: BandSelector, source: Path) -> list[int]:
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


@contextlib.contextmanager
def _quiet_if(condition: bool) -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning when ``condition``.

    A file without a geotransform is supported (its output is in pixel coordinates);
    the reader logs that once at open instead of warning on every block read.
    """
    if not condition:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _open_gdal(path: Path, *, bands: BandSelector, chunks: Chunks) -> xr.DataArray:
    try:
        with _quiet_if(True), rasterio.open(path) as src:
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


# --------------------------------------------------------------------------- netCDF

_Y_NAMES = ("y", "lat", "latitude", "rlat", "northing")
_X_NAMES = ("x", "lon", "longitude", "rlon", "easting")


def _spatial_dims(dims: Sequence[str]) -> tuple[str, str] | None:
    low = {d.lower(): d for d in dims}
    y = next((low[n] for n in _Y_NAMES if n in low), None)
    x = next((low[n] for n in _X_NAMES if n in low), None)
    return (y, x) if y and x else None


def _regular_axis(values: np.ndarray, name: str, path: Path) -> tuple[float, float]:
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


def _open_netcdf(path: Path, *, bands: BandSelector, chunks: Chunks) -> xr.DataArray:
    try:
        ds = xr.open_dataset(path, chunks={}, decode_coords="all", mask_and_scale=True)
    except Exception as exc:  # netCDF4/h5netcdf raise assorted types for broken files
        raise ReadError(f"{path}: not a readable netCDF file ({exc})") from exc
    candidates: list[str] = []
    grid_dims: tuple[str, str] | None = None
    for name, var in ds.data_vars.items():
        squeezed = [str(d) for d in var.dims if ds.sizes[d] > 1]
        dims = _spatial_dims(squeezed)
        if len(squeezed) != 2 or dims is None or not np.issubdtype(var.dtype, np.number):
            continue
        if grid_dims is None:
            grid_dims = dims
        if dims == grid_dims:
            candidates.append(str(name))
    if not candidates or grid_dims is None:
        two_d = [str(n) for n, v in ds.data_vars.items() if v.ndim >= 2]
        raise InputError(
            f"{path}: no 2-D variable on a (y, x) or (lat, lon) grid"
            + (
                f"; variables with more dimensions: {', '.join(two_d)} (select a time step or "
                "level first)"
                if two_d
                else ""
            )
        )
    ydim, xdim = grid_dims
    if ydim not in ds.coords or xdim not in ds.coords or ds[ydim].ndim != 1 or ds[xdim].ndim != 1:
        raise InputError(
            f"{path}: the grid has no 1-D {ydim}/{xdim} coordinates (a curvilinear grid?); "
            "regrid it to a regular grid first"
        )
    sel = _select(candidates, bands, path)
    names = [candidates[i] for i in sel]
    x0, dx = _regular_axis(ds[xdim].values, xdim, path)
    y0, dy = _regular_axis(ds[ydim].values, ydim, path)
    transform = Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2)
    crs = None
    try:
        crs = ds[names[0]].rio.crs or ds.rio.crs
    except Exception:  # rioxarray raises on malformed grid_mapping attributes
        crs = None
    if crs is None and ydim.lower() in ("lat", "latitude") and xdim.lower() in ("lon", "longitude"):
        crs = rasterio.crs.CRS.from_epsg(4326)
    arrays = []
    for n in names:
        v = ds[n].squeeze(drop=True).transpose(ydim, xdim)
        arrays.append(v.data if isinstance(v.data, da.Array) else da.from_array(v.values))
    data = da.stack(arrays).astype("float32")
    data = da.where(da.isinf(data), np.float32(np.nan), data)  # +-inf is invalid, like NaN
    h, w = data.shape[1:]
    cy, cx = _resolve_chunks(chunks, (h, w), (min(h, 512), min(w, 512)))
    data = data.rechunk((len(names), cy, cx))
    fill = ds[names[0]].encoding.get("_FillValue")
    # CF-packed variables are unpacked by mask_and_scale: report what the values are now.
    src_dtype = {
        str(ds[n].dtype)
        if {"scale_factor", "add_offset"} & set(ds[n].encoding)
        else str(ds[n].encoding.get("dtype", ds[n].dtype))
        for n in names
    }
    return _canonical(
        data,
        names=names,
        transform=transform,
        crs=crs,
        attrs={
            "source": str(path),
            "source_dtype": src_dtype.pop() if len(src_dtype) == 1 else "mixed",
            "source_nodata": None if fill is None else float(fill),
        },
    )


# --------------------------------------------------------------------------- common


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
    coords: dict[str, Any] = {"band": np.array(names, dtype=object)}
    if transform.b == 0 and transform.d == 0:
        # Pixel-centre coordinates, as rioxarray writes them for north-up grids.
        coords["x"] = transform.c + transform.a * (np.arange(w) + 0.5)
        coords["y"] = transform.f + transform.e * (np.arange(h) + 0.5)
    out = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, attrs=dict(attrs), name="data")
    out = out.rio.write_transform(transform)
    if crs is not None:
        out = out.rio.write_crs(crs)
    out = out.rio.write_nodata(np.nan, encoded=False)
    out.attrs.pop("_FillValue", None)
    if not math.isfinite(transform.a) or transform.determinant == 0:
        raise InputError(f"{attrs['source']}: degenerate geotransform {tuple(transform)[:6]}")
    return out
