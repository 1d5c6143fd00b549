"""write: georeferenced prediction rasters, atomically.

The default output is a Cloud Optimized GeoTIFF:

* band 1: class index, ``uint8``, nodata 255, with a colour table, description
  ``class`` and the class names in the metadata (``CLASS_NAMES`` JSON tag and one
  ``CLASS_<i>`` tag per class);
* with ``probabilities=True``, one more ``uint8`` band per class holding the
  probability in percent (0-100, nodata 255, GDAL scale 0.01 so tools that apply
  scales read 0-1).

Writing a COG straight from a Dask array is unreliable (rioxarray #410/#439), so
the Dask graph is streamed block by block into a tiled GeoTIFF, which GDAL's COG
driver then copies with nearest-neighbour overviews. Both files are temporary
names in the output folder; only the finished COG is renamed into place, so an
interrupted run never leaves a file that looks finished.

Other formats (``format=``, or the output's suffix):

* ``gtiff``: the same bands, tags and sidecar as the COG, as a plain tiled
  GeoTIFF (no COG layout, no overviews);
* ``zarr`` (a ``.zarr`` folder) and ``netcdf`` (a ``.nc`` file): CF-1.8 datasets
  (metadata and coordinates written with xarray, data block by block), with the variables ``class`` (``uint8``,
  ``_FillValue`` 255, CF ``flag_values``/``flag_meanings``) and, with
  ``probabilities=True``, ``probability`` ``(class_name, y, x)`` (``uint8``
  percent, ``_FillValue`` 255, ``scale_factor`` 0.01, so decoders read 0-1),
  the CRS as a CF grid-mapping variable ``spatial_ref`` (with a GDAL
  ``GeoTransform`` attribute, the only georeferencing of rotated grids) and
  ``x``/``y`` cell-centre coordinates on north-up grids. Both are written under a
  temporary name in the output folder and renamed into place when complete.

Where the blocks are computed (``scheduler=``, :mod:`georaster_cnn.cluster`): on the
threaded scheduler each finished block is written by the thread that computed it;
on a distributed cluster, GeoTIFF blocks stream back to this process (a bounded
number in flight), which writes them into the staged file, so workers need not
see the output folder, while Zarr blocks are written by the workers themselves,
each into its own chunks (the output folder must then be shared with them).
netCDF blocks come back to this process too, into the block journal, from which
the file is written here.

Resume (``resume=True``, the default, every format): every finished
block is recorded in a journal beside the staged output (:mod:`georaster_cnn.io._resume`),
under a key made of the inputs, the model and every option the output depends on.
A write that was killed (SIGKILL, a lost node) or interrupted (Ctrl-C) and is run
again with the same arguments continues from the recorded blocks; the result is
the same as an uninterrupted run's. A different key (another model, stride, format,
input file...) never reuses them, and the next write of the output removes them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from georaster_cnn.cluster.scheduler import use_scheduler
from georaster_cnn.errors import InputError
from georaster_cnn.io._blocks import _BlockJob
from georaster_cnn.io._cf_writer import _write_netcdf, _write_zarr
from georaster_cnn.io._resume import BlockIndex
from georaster_cnn.io._stac_map import STAC_ITEM_SUFFIX, write_map_item
from georaster_cnn.io.classmap import (
    CLASS_NODATA,
    pam_xml,
    prediction_classes,
    tiff_tags,
)
from georaster_cnn.io.formats import OutputFormat, resolve_output_format
from georaster_cnn.io.staging import check_output, staged

if TYPE_CHECKING:
    from distributed import Client


__all__ = ["OutputFormat", "write_prediction"]

log = logging.getLogger(__name__)

_BLOCK = 512


def _overview_levels(height: int, width: int, smallest: int = 64) -> int:
    """Halvings until the coarsest overview fits in ``smallest`` pixels.

    At least one level unless the map is a single pixel. GDAL's default stops at the
    512-pixel block size, so class maps smaller than a block (most maps at stride 64)
    would get no overview at all.
    """
    levels, side = 0, max(height, width)
    while side > smallest:
        side = (side + 1) // 2
        levels += 1
    return max(levels, 1 if max(height, width) >= 2 else 0)


def _overview_options(height: int, width: int) -> dict[str, str]:
    levels = _overview_levels(height, width)
    return {"OVERVIEW_COUNT": str(levels)} if levels else {"OVERVIEWS": "NONE"}


class _Sink:
    """An open dataset shared by the writer threads; closed to them before it is closed.

    When the computation stops early (an error, Ctrl-C, SIGTERM) Dask threads may
    still be finishing blocks: they must not write into a dataset being closed.
    """

    def __init__(self, dst: Any) -> None:
        self.dst = dst
        self.lock = threading.Lock()
        self.open = True

    def close(self) -> None:
        with self.lock:
            self.open = False


def write_prediction(
    pred: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    format: OutputFormat | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    compress: str = "DEFLATE",
    scheduler: str | Client | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    max_in_flight: int | None = None,
    stac_item: bool | str = False,
) -> Path:
    """Compute a prediction and write it, atomically, as a COG, GeoTIFF, Zarr or netCDF.

    Parameters
    ----------
    pred
        Result of :func:`~georaster_cnn.predict`.
    path
        Output file (``.tif``, ``.nc``) or Zarr folder (``.zarr``). Its folder is
        created if needed.
    format
        ``cog`` (Cloud Optimized GeoTIFF), ``gtiff`` (plain tiled GeoTIFF), ``zarr``
        or ``netcdf``; default: from the suffix of ``path`` (``.tif``/``.tiff`` ->
        ``cog``, ``.zarr`` -> ``zarr``, ``.nc`` and the other netCDF suffixes -> ``netcdf``;
        :mod:`georaster_cnn.io.formats` has the table).
    probabilities
        Also write the per-class probabilities in percent (``uint8``, scale 0.01):
        one band per class in a GeoTIFF, a ``probability`` variable in Zarr/netCDF.
    overwrite
        Replace an existing output.
    compress
        GDAL compression for the GeoTIFF formats (Zarr uses zarr's default codec,
        netCDF zlib level 4).
    scheduler, scheduler_file
        Where the blocks are computed (:func:`georaster_cnn.cluster.use_scheduler`):
        ``None`` (an active client, else threads), ``"threads"``, ``"local[:N]"``, an
        address ``"tcp://HOST:PORT"``, a client, or a scheduler file. On a cluster,
        workers must read the inputs (and a Zarr output's folder) under the same paths.
    resume
        Record finished blocks beside the staged output, and continue from those a
        killed or interrupted write with the same arguments recorded (every
        format). ``False``: start from scratch, remove everything on interruption.
    progress
        Called as ``progress(finished blocks, all blocks)`` when the work is known
        and after every block (from Dask threads on the threaded scheduler).
    max_in_flight
        On a cluster, most blocks submitted and not yet written; default four per
        worker thread (at least 8).
    stac_item
        Also write a STAC Item ``scene.json`` beside a COG/GeoTIFF map (:mod:`~georaster_cnn.io._stac_map`,
        read back by :func:`~georaster_cnn.open_stac`); a string names the model in it.

    Returns
    -------
    pathlib.Path
        The written file or folder.

    Raises
    ------
    InputError
        Unknown ``format``, a suffix that implies none, or one that contradicts
        ``format`` (e.g. ``format="zarr"`` for ``map.tif``); a malformed or
        unreachable ``scheduler``.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false (checked first, and again when the
        finished output is renamed into place: another run may have written it
        meanwhile); another run is writing it with the same arguments.
    ReadError
        An input block could not be read (corrupt or truncated file).

    Examples
    --------
    >>> write_prediction(pred, "maps/scene.tif")  # doctest: +SKIP
    >>> write_prediction(pred, "maps/scene.zarr", probabilities=True)  # doctest: +SKIP
    >>> write_prediction(pred, "maps/scene.tif", scheduler="tcp://10.0.0.5:8786")  # doctest: +SKIP
    """
    out = check_output(path, overwrite=overwrite)
    fmt = resolve_output_format(out, format)
    _check_stac_item(out, fmt, stac_item, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    checksum = str(pred.attrs.get("model_checksum", ""))
    with use_scheduler(scheduler, scheduler_file=scheduler_file, model=checksum) as session:
        job = _BlockJob(
            pred,
            probabilities=probabilities,
            session=session,
            resume=resume,
            progress=progress,
            max_in_flight=max_in_flight,
        )
        if fmt == "netcdf":
            return _write_netcdf(pred, out, job, overwrite=overwrite)
        if fmt == "zarr":
            return _write_zarr(pred, out, job, overwrite=overwrite)
        _write_tiff(pred, out, job, cog=fmt == "cog", compress=compress, overwrite=overwrite)
    return _catalogued(pred, out, fmt, stac_item, overwrite=overwrite)


def _check_stac_item(out: Path, fmt: str, stac_item: bool | str, *, overwrite: bool) -> None:
    """Refuse ``stac_item=True`` for a map it cannot catalogue, or an Item that exists."""
    if stac_item is False or stac_item is None:
        return
    if fmt not in ("cog", "gtiff"):
        raise InputError(
            f"{out}: stac_item=True catalogues COG and GeoTIFF maps; this is {fmt}. "
            "Write the map as a COG (format='cog') to catalogue it"
        )
    check_output(out.with_suffix(STAC_ITEM_SUFFIX), overwrite=overwrite)


def _catalogued(
    pred: xr.Dataset, out: Path, fmt: str, stac_item: bool | str, *, overwrite: bool
) -> Path:
    """``out``, with its STAC Item written beside it when asked."""
    if stac_item is not False and stac_item is not None:
        name = stac_item if isinstance(stac_item, str) else None
        write_map_item(pred, out, cog=fmt == "cog", overwrite=overwrite, model_name=name)
    return out


def _write_tiff(
    pred: xr.Dataset, out: Path, job: _BlockJob, *, cog: bool, compress: str, overwrite: bool
) -> Path:
    """COG (tiled GeoTIFF streamed block by block, then GDAL's COG driver) or the tiled GeoTIFF alone."""
    names, colors = prediction_classes(pred.attrs)
    count, height, width = job.bands.shape
    crs = pred.rio.crs
    transform = pred.rio.transform()
    fields = job.fields("cog" if cog else "gtiff", compress=compress)

    with (
        staged(out, suffix=".tif", resume_key=job.key(fields), overwrite=overwrite) as st,
        job.journal(st, fields, keep_data=True) as journal,
    ):
        # The COG is a copy of a staging GeoTIFF; a plain GeoTIFF is the staging file itself.
        staging = st.scratch(".staging.tif") if cog else st.path
        profile: dict[str, Any] = {
            "driver": "GTiff", "height": height, "width": width, "count": count,
            "dtype": "uint8", "nodata": CLASS_NODATA, "transform": transform, "crs": crs,
            "tiled": True, "blockxsize": _BLOCK, "blockysize": _BLOCK,
            "compress": "DEFLATE" if cog else compress, "BIGTIFF": "IF_SAFER",
            # Not RGB(A): with 3-4 uint8 bands GTiff would call probability bands
            # green/blue/alpha, and GIS tools would use one as transparency.
            "photometric": "MINISBLACK", "alpha": "NO",
        }  # fmt: skip
        if crs is None:
            profile.pop("crs")
        with rasterio.open(staging, "w", **profile) as dst:
            sink = _Sink(dst)

            def write(index: BlockIndex, block: np.ndarray) -> None:
                ysl, xsl = job.region(index)
                with sink.lock:
                    if sink.open:
                        dst.write(block, window=Window.from_slices(ysl, xsl))
                if journal is not None:  # the record, not the GeoTIFF, is what a rerun trusts
                    journal.record(index, block)
                job.advance()

            try:
                if journal is not None:
                    for index, block in journal.blocks():  # finished by an earlier run
                        ysl, xsl = job.region(index)
                        dst.write(block, window=Window.from_slices(ysl, xsl))
                job.run(lambda _, block: block, write, done=journal.done if journal else set())
            finally:
                sink.close()
            _describe(dst, names, colors, pred.attrs, job.probabilities)
        if cog:
            rasterio.shutil.copy(
                staging, st.path, driver="COG", COMPRESS=compress, BLOCKSIZE=_BLOCK,
                OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER",
                **_overview_options(height, width),
            )  # fmt: skip
        # GDAL may have written PAM for the staged file; the sidecar is ours, staged
        # with the raster and renamed in after it.
        st.sidecar(".aux.xml").write_text(pam_xml(names, colors), encoding="utf-8")
    log.info(
        "wrote %s (%s, %d x %d, %d band(s))", out, "COG" if cog else "GeoTIFF", height, width, count
    )
    return out


def _describe(
    dst: Any,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    attrs: dict[str, Any],
    probabilities: bool,
) -> None:
    """Band descriptions, scales and metadata tags (the colour table goes to the sidecar).

    The colour table is not embedded in the TIFF: TIFF palettes always have 256
    entries for a byte band, and GDAL (and so QGIS's legend) would then list 256
    classes. The PAM sidecar holds a table of exactly one entry per class.
    """
    if probabilities:
        dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * len(names)
    dst.set_band_description(1, "class")
    tags, band_tags = tiff_tags(names, colors, attrs)
    dst.update_tags(**tags)
    dst.update_tags(1, **band_tags)
    if probabilities:
        scales = [1.0] + [0.01] * len(names)
        dst.scales = tuple(scales)
        dst.offsets = tuple([0.0] * len(scales))
        for i, n in enumerate(names):
            dst.set_band_description(i + 2, f"probability_{n}")
            dst.update_tags(i + 2, CLASS=n, UNITS="percent")
