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

Inputs are opened on purpose: a GDAL file only by the driver its suffix names (a
``.tif`` is a GeoTIFF, never a VRT in disguise; another suffix: any raster driver
except VRT and others that read files by reference); a ``.vrt`` is checked before
GDAL opens it (local rasters only: no raw files, no network sources unless
``allow_remote``); nothing is read from the network by default. The declared size
(``max_pixels``, stacked bands included, :data:`~georaster_cnn.io._canonical.MAX_BANDS`)
and the stored chunks (:data:`~georaster_cnn.io._canonical.MAX_CHUNK_BYTES`) are
checked before any pixel is read.

Local files are read by their absolute path, so the graph names the same file on
every Dask worker, whatever its working folder; a read that fails says on which
worker and why (the OS's reason, or GDAL's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from dask.base import tokenize
from rasterio.enums import Interleaving, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from georaster_cnn.chips import register_windowed
from georaster_cnn.errors import InputError, ReadError
from georaster_cnn.io._canonical import (
    BandSelector,
    Chunks,
    _canonical,
    _check_chunk_bytes,
    _check_dtypes,
    _check_size,
    _on_worker,
    _resolve_chunks,
    _root_message,
    _select,
    _size_limit,
)
from georaster_cnn.io._gdal_open import is_remote, open_input, unreadable
from georaster_cnn.io._xarray_open import (
    _from_dataset,
    _is_multi,
    _open_dataset_file,
    _open_multi,
    _open_zarr,
)
from georaster_cnn.io.cloud import http_env
from georaster_cnn.io.formats import input_family
from georaster_cnn.options import DEFAULT_MAX_PIXELS, check_max_pixels

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
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_remote: bool = False,
) -> xr.DataArray:
    """Open a raster lazily as a ``float32`` ``(band, y, x)`` DataArray; invalid pixels are NaN.

    Inputs are opened on purpose and sized before any pixel is read (module docs).

    Parameters
    ----------
    path
        A GDAL raster (GeoTIFF/COG ``.tif``, ``.vrt``, ``.img``, ``.jp2``, or any
        other GDAL raster format named explicitly), a netCDF file (``.nc``), a Zarr
        store (a ``*.zarr`` folder, v2 or v3), or several netCDF files read as one
        dataset (a list of paths, or a glob pattern with ``*``). In netCDF and Zarr,
        each numeric variable on one regular (y, x) or (lat, lon) grid becomes a band.
    bands
        Bands to keep, in order: 1-based indexes or band names (GeoTIFF band
        descriptions, netCDF/Zarr variable names or stacked band names); ``None``: all.
    chunks
        ``"auto"`` aligns chunks to the file's internal blocks near 1024 x 1024
        pixels; an int or ``(y, x)`` sets the chunk size in pixels.
    variables, select, stack
        netCDF/Zarr only (docs/netcdf-zarr.md): the data variables to use, in order
        (``bands`` by name: give one or the other); one value per extra dimension,
        e.g. ``{"time": "2020-01-01", "level": 850}`` (dates within half a step, other
        values exactly; ``"~VALUE"``: the nearest); a dimension whose every step becomes
        a band (``<variable>@<date>`` for time axes, else ``<variable>@<dim>=<value>``).
    max_pixels
        The largest declared size accepted, in pixel values (height x width x
        selected bands, stacked bands included); default 2**36. Larger rasters are
        refused before reading.
    allow_remote
        Allow network locations (``/vsicurl/``, ``/vsis3/``, ``https://`` ...) as
        the input (GDAL rasters other than VRT) and as sources of a local ``.vrt``.

    Returns
    -------
    xarray.DataArray
        Lazy array with ``.rio.crs`` (``None`` when the file has none),
        ``.rio.transform()``, a ``band`` coordinate of names and attrs ``source``
        (the path as given), ``source_dtype``, ``source_nodata`` (and ``selected``:
        the values picked). Its reads use the absolute path of a local input.

    Raises
    ------
    ReadError
        The file does not exist, is not a regular file (a device, FIFO), cannot be
        opened (the OS's reason, e.g. "Permission denied"), is not in the format its
        suffix names. While computing: a block that cannot be read (the file, the
        window, the worker on a cluster, and the cause).
    InputError
        A declared size above ``max_pixels``; stored chunks (GDAL blocks, Zarr or
        netCDF chunks) above ``MAX_CHUNK_BYTES`` (512 MiB; re-save with smaller
        chunks); more than ``MAX_BANDS`` (10,000) bands from ``stack=``; complex
        bands (convert them first); a
        VRT with raw bands, Python pixel functions or refused sources; a network
        location without ``allow_remote``; bad band/variable selection; netCDF
        options given for a GDAL raster; a netCDF/Zarr grid that is not regular
        (irregular axes, curvilinear grids: regrid first); an extra dimension (time,
        level) of length > 1 that is neither selected nor stacked.

    Examples
    --------
    >>> da = gc.open_raster("scene.tif", bands=[1, 3])  # doctest: +SKIP
    >>> da.dims
    ('band', 'y', 'x')
    >>> gc.open_raster("era5.nc", variables=["t2m"], select={"time": "2020-07-01"})  # doctest: +SKIP
    >>> gc.open_raster("era5_*.nc", stack="time")  # doctest: +SKIP
    """
    opts: dict[str, Any] = {"variables": variables, "select": select, "stack": stack}
    max_pixels = check_max_pixels(max_pixels)
    if _is_multi(path):
        if isinstance(path, (list, tuple)):
            for f in path:
                _check_regular(Path(f))
        with _size_limit(max_pixels):
            ds, label = _open_multi(path)
            return _from_dataset(ds, label, bands=bands, chunks=chunks, **opts)
    name = os.fspath(path)  # type: ignore[arg-type]
    if is_remote(name):  # before Path(), which would fold the // of a URL
        _check_remote(name, opts, allow_remote=allow_remote)
        return _open_gdal(name, bands, chunks, max_pixels=max_pixels, allow_remote=True)
    return _open_local(
        Path(name), bands, chunks, opts, max_pixels=max_pixels, allow_remote=allow_remote
    )


def _open_local(
    p: Path,
    bands: BandSelector,
    chunks: Chunks,
    opts: dict[str, Any],
    *,
    max_pixels: int,
    allow_remote: bool,
) -> xr.DataArray:
    """:func:`open_raster` of one local file or store, read by its absolute path.

    What is sent to Dask workers must name the same file wherever their working
    folder is; messages and ``attrs["source"]`` keep the name the user gave.
    """
    if not p.exists():
        raise ReadError(f"{p}: no such file")
    _check_regular(p)
    where = p.absolute()
    family = input_family(p)
    if family in ("zarr", "netcdf"):
        with _size_limit(max_pixels):
            ds = _open_zarr(where) if family == "zarr" else _open_dataset_file(where)
            return _from_dataset(ds, p, bands=bands, chunks=chunks, **opts)
    _gdal_options_only(p, opts)
    return _open_gdal(
        where, bands, chunks, max_pixels=max_pixels, allow_remote=allow_remote, source=str(p)
    )


def _check_remote(name: str, opts: Mapping[str, Any], *, allow_remote: bool) -> None:
    """Refuse a network location unless ``allow_remote``, and any but a GDAL raster."""
    if not allow_remote:
        raise InputError(
            f"{name}: a network location; inputs are read from local files only unless "
            "allow_remote=True"
        )
    if input_family(name) != "gdal":
        raise InputError(f"{name}: netCDF and Zarr inputs must be local; download it first")
    _gdal_options_only(name, opts)


def _check_regular(p: Path) -> None:
    """Refuse what exists but is neither a regular file nor a folder (devices, FIFOs)."""
    if p.exists() and not p.is_dir() and not p.is_file():
        raise ReadError(
            f"{p}: not a regular file (a device, FIFO or socket); give a raster file or folder"
        )


def _gdal_options_only(path: Path | str, opts: Mapping[str, Any]) -> None:
    given = [k for k, v in opts.items() if v is not None and v != {}]
    if given:
        flags = ", ".join(f"{k}=" for k in given)
        raise InputError(
            f"{path}: {flags} apply only to netCDF and Zarr inputs; this is a GDAL raster "
            "(choose its bands with bands=)"
        )


def valid_mask(data: xr.DataArray) -> xr.DataArray:
    """Boolean ``(y, x)`` mask: ``True`` where every band of ``data`` is valid (not NaN)."""
    return data.notnull().all("band")


# --------------------------------------------------------------------------- GDAL


class _WindowReader:
    """Array-like over a rasterio file for :func:`dask.array.from_array`.

    Holds only the path (absolute for a local file, so a worker in another working
    folder reads the same file) and metadata, so it pickles cheaply to Dask workers;
    each read opens the file (rasterio datasets are not thread-safe to share). A read
    that fails raises :class:`ReadError` naming the file, the window, the worker (on a
    cluster) and the cause: the OS's reason when the file cannot be opened (gone,
    unreadable), GDAL's when its pixels cannot be decoded.
    """

    def __init__(
        self,
        path: str,
        indexes: list[int],
        shape: tuple[int, int, int],
        use_masks: bool,
        georeferenced: bool = True,
        allow_remote: bool = False,
    ) -> None:
        self.path = path
        self.georeferenced = georeferenced
        self.allow_remote = allow_remote
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
            with (
                http_env(is_remote(self.path)),
                _open(
                    self.path, quiet=not self.georeferenced, allow_remote=self.allow_remote
                ) as src,
            ):
                out = src.read(idx, window=window, out_dtype="float32")
                # +-inf is invalid like NaN; every NaN becomes a quiet one (a signalling NaN
                # from a damaged file would make later arithmetic raise FP warnings)
                out[~np.isfinite(out)] = np.nan
                if self.use_masks:
                    masks = src.read_masks(idx, window=window)
                    out[masks == 0] = np.nan
            return out
        except (RasterioError, ReadError) as exc:
            detail, cause = self._why(exc)
        # Raised outside the except clause, so without rasterio's error attached: the
        # message holds GDAL's detail, and rasterio's errors cannot be unpickled, so on a
        # Dask cluster a ReadError chained to one reaches the client as a bare Exception.
        raise ReadError(
            f"{self.path}: cannot read pixels at rows {y0}-{y1}, cols {x0}-{x1}{_on_worker()} "
            f"({detail}); {cause}"
        )

    def _why(self, exc: BaseException) -> tuple[str, str]:
        """The detail and likely cause of a failed read, for the message."""
        gone = unreadable(self.path)
        if gone is not None:  # the OS's reason: the file cannot even be opened here
            return gone, (
                "the file was moved, deleted or made unreadable after it was opened, or this "
                "machine does not see it under that path (on a cluster: every worker must "
                "read the inputs under the same paths)"
            )
        if isinstance(exc, ReadError):  # opened, but GDAL sees no raster of its kind now
            return str(exc), "the file was replaced after it was opened"
        if self.allow_remote:
            return _root_message(exc), (
                "a network source is unreachable, or the file is truncated or corrupt"
            )
        return _root_message(exc), "the file is probably truncated or corrupt"


def _open(path: str | Path, *, quiet: bool, allow_remote: bool = False) -> Any:
    """The input opened by :func:`georaster_cnn.io._gdal_open.open_input` (its suffix's driver).

    With ``quiet``, without rasterio's NotGeoreferencedWarning: a file without a
    geotransform is supported (its output is in pixel coordinates); the reader logs
    that once instead of warning on every block read.
    """
    return open_input(path, allow_remote=allow_remote, quiet=quiet)


def _open_gdal(
    path: Path | str,
    bands: BandSelector,
    chunks: Chunks,
    *,
    max_pixels: int,
    allow_remote: bool,
    source: str | None = None,
) -> xr.DataArray:
    """A GDAL raster as the canonical array; ``source`` names it in messages and attrs.

    ``path`` is what is read (absolute for a local file); ``source`` defaults to it.
    """
    source = str(path) if source is None else source
    try:
        with (
            http_env(is_remote(str(path))),
            _open(path, quiet=True, allow_remote=allow_remote) as src,
        ):
            names = [d if d else f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
            if len(set(names)) != len(names):  # duplicate descriptions: fall back to numbers
                names = [f"band_{i + 1}" for i in range(src.count)]
            sel = _select(names, bands, source)
            # Declared size and types, before anything else is asked of the file.
            _check_size(source, len(sel), src.height, src.width, max_pixels)
            _check_dtypes(source, {names[i]: src.dtypes[i] for i in sel})
            indexes = [i + 1 for i in sel]
            use_masks = any(src.mask_flag_enums[i] != [MaskFlags.all_valid] for i in sel)
            dtypes = {src.dtypes[i] for i in sel}
            nodata = src.nodata
            height, width = src.height, src.width
            block = src.block_shapes[sel[0]]
            # what one read decodes whole: a block (of every band when pixel-interleaved)
            stored = (*block, src.count) if src.interleaving == Interleaving.pixel else block
            itemsize = max(np.dtype(src.dtypes[i]).itemsize for i in sel)
            crs = src.crs
            transform = src.transform
            gcps_only = transform.is_identity and bool(src.gcps[0])
            georeferenced = not (transform.is_identity and crs is None)
    except RasterioError as exc:
        raise ReadError(f"{source}: not a raster GDAL can open ({exc})") from exc
    _check_chunk_bytes(
        source,
        "GDAL stores it in blocks",
        stored,
        itemsize,
        fix="Re-save it tiled, e.g. gdal_translate -co TILED=YES -co COMPRESS=DEFLATE IN OUT",
    )
    if gcps_only:
        raise InputError(
            f"{source}: georeferenced only by ground control points; warp it to a grid first "
            "(e.g. gdalwarp) so pixels have an affine transform"
        )
    cy, cx = _resolve_chunks(chunks, (height, width), block)
    if not georeferenced:
        log.info("%s has no georeferencing; the output will be in pixel coordinates", source)
    reader = _WindowReader(
        str(path), indexes, (len(indexes), height, width), use_masks, georeferenced, allow_remote
    )
    if isinstance(path, Path):
        token = tokenize(str(path.resolve()), os.path.getmtime(path), indexes, cy, cx)
    else:  # a network location: no modification time to key on
        token = tokenize(path, indexes, cy, cx)
    data = da.from_array(
        reader,
        chunks=(len(indexes), cy, cx),
        name=f"open_raster-{token}",
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype="float32"),
    )
    # predict reads each block with its halo straight from the file (flat memory)
    register_windowed(data, reader)
    return _canonical(
        data,
        names=[names[i] for i in sel],
        transform=transform,
        crs=crs,
        attrs={
            "source": source,
            "source_dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
            "source_nodata": None if nodata is None else float(nodata),
        },
    )
