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
  written with xarray, block by block, with the variables ``class`` (``uint8``,
  ``_FillValue`` 255, CF ``flag_values``/``flag_meanings``) and, with
  ``probabilities=True``, ``probability`` ``(class_name, y, x)`` (``uint8``
  percent, ``_FillValue`` 255, ``scale_factor`` 0.01, so decoders read 0-1),
  the CRS as a CF grid-mapping variable ``spatial_ref`` (with a GDAL
  ``GeoTransform`` attribute, the only georeferencing of rotated grids) and
  ``x``/``y`` cell-centre coordinates on north-up grids. Both are written under a
  temporary name in the output folder and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.windows import Window

from georaster_cnn._staging import staged
from georaster_cnn.classmap import (
    CLASS_NODATA,
    PREDICTION_ATTRS,
    cf_class_attrs,
    pam_xml,
    tiff_tags,
)
from georaster_cnn.errors import ReadError
from georaster_cnn.formats import OUTPUT_FORMATS, OutputFormat, resolve_output_format
from georaster_cnn.options import check_output

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


class _BandWriter:
    """``__setitem__`` target for :func:`dask.array.store` writing bands of an open dataset."""

    def __init__(self, sink: _Sink, first_band: int) -> None:
        self.sink = sink
        self.first_band = first_band

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        if value.ndim == 2:
            key, value = (slice(0, 1), *key), value[None]
        bsl, ysl, xsl = key
        window = Window.from_slices(ysl, xsl)
        indexes = list(
            range(
                self.first_band + (bsl.start or 0),
                self.first_band + (bsl.start or 0) + value.shape[0],
            )
        )
        with self.sink.lock:
            if self.sink.open:
                self.sink.dst.write(value, indexes=indexes, window=window)


def _probability_percent(p: np.ndarray) -> np.ndarray:
    out = np.where(np.isnan(p), CLASS_NODATA, np.rint(np.nan_to_num(p) * 100))
    return out.astype(np.uint8)


def write_prediction(
    pred: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    format: OutputFormat | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    compress: str = "DEFLATE",
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
        :mod:`georaster_cnn.formats` has the table).
    probabilities
        Also write the per-class probabilities in percent (``uint8``, scale 0.01):
        one band per class in a GeoTIFF, a ``probability`` variable in Zarr/netCDF.
    overwrite
        Replace an existing output.
    compress
        GDAL compression for the GeoTIFF formats (Zarr uses zarr's default codec,
        netCDF zlib level 4).

    Returns
    -------
    pathlib.Path
        The written file or folder.

    Raises
    ------
    InputError
        Unknown ``format``, a suffix that implies none, or one that contradicts
        ``format`` (e.g. ``format="zarr"`` for ``map.tif``).
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    ReadError
        An input block could not be read (corrupt or truncated file).

    Examples
    --------
    >>> write_prediction(pred, "maps/scene.tif")  # doctest: +SKIP
    >>> write_prediction(pred, "maps/scene.zarr", probabilities=True)  # doctest: +SKIP
    """
    out = check_output(path, overwrite=overwrite)
    fmt = resolve_output_format(out, format)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("zarr", "netcdf"):
        return _write_cf(pred, out, fmt, probabilities=probabilities)
    return _write_tiff(pred, out, cog=fmt == "cog", probabilities=probabilities, compress=compress)


def _write_tiff(
    pred: xr.Dataset, out: Path, *, cog: bool, probabilities: bool, compress: str
) -> Path:
    """COG (tiled GeoTIFF streamed from Dask, then GDAL's COG driver) or the tiled GeoTIFF alone."""
    cls = da.asarray(pred["class"].data)  # also accepts an already computed prediction
    probs = da.asarray(pred["probability"].data)
    names = json.loads(pred.attrs["class_names"])
    colors = json.loads(pred.attrs["class_colors"])
    height, width = cls.shape
    count = 1 + (len(names) if probabilities else 0)
    crs = pred.rio.crs
    transform = pred.rio.transform()

    with staged(out, suffix=".tif") as st:
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
            sources: list[da.Array] = [cls]
            targets: list[Any] = [_BandWriter(sink, 1)]
            if probabilities:
                sources.append(probs.map_blocks(_probability_percent, dtype=np.uint8))
                targets.append(_BandWriter(sink, 2))
            try:
                da.store(sources, targets, lock=False, compute=True)
            except RasterioError as exc:
                raise ReadError(
                    f"{pred.attrs.get('source', 'input')}: read failed ({exc})"
                ) from exc
            finally:
                sink.close()
            _describe(dst, names, colors, pred.attrs, probabilities)
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


def _uniform_chunks(arr: da.Array) -> da.Array:
    """Rechunk to regular chunks (all equal but the last), which Zarr needs; a no-op if already."""
    return arr.rechunk(tuple(c[0] for c in arr.chunks))


def _cf_dataset(pred: xr.Dataset, *, probabilities: bool) -> xr.Dataset:
    """The CF-1.8 dataset written to Zarr and netCDF (still lazy, integer-coded)."""
    names = json.loads(pred.attrs["class_names"])
    colors = json.loads(pred.attrs["class_colors"])
    cls = _uniform_chunks(da.asarray(pred["class"].data))
    variables: dict[str, xr.DataArray] = {
        "class": xr.DataArray(cls, dims=("y", "x"), attrs=cf_class_attrs(names, colors))
    }
    if probabilities:
        probs = _uniform_chunks(da.asarray(pred["probability"].data))
        variables["probability"] = xr.DataArray(
            da.map_blocks(_probability_percent, probs, dtype=np.uint8),
            dims=("class_name", "y", "x"),
            # Already packed as percent: scale_factor is an attribute (decoders apply
            # it), not an encoding (xarray would divide by it again).
            attrs={
                "long_name": "class probability",
                "units": "1",
                "scale_factor": np.float32(0.01),
            },
        )
    coords = {str(k): v for k, v in pred.coords.items() if k in ("x", "y", "spatial_ref")}
    if probabilities:
        coords["class_name"] = pred.coords["class_name"]
    attrs = {k: pred.attrs[k] for k in PREDICTION_ATTRS if k in pred.attrs}
    ds = xr.Dataset(variables, coords=coords, attrs={"Conventions": "CF-1.8", **attrs})
    if "spatial_ref" in ds.coords:
        ds = ds.rio.write_grid_mapping("spatial_ref")
        if "x" in ds.coords and pred.rio.crs is not None:
            # CF axis attributes (standard_name, units) so CF tools know longitude/latitude
            # or projection_x/y_coordinate.
            ds = ds.rio.write_crs(pred.rio.crs).rio.write_coordinate_system()
    return ds


def _write_cf(
    pred: xr.Dataset, out: Path, fmt: Literal["zarr", "netcdf"], *, probabilities: bool
) -> Path:
    """Zarr folder or netCDF file, streamed block by block under a temporary name, then renamed."""
    ds = _cf_dataset(pred, probabilities=probabilities)
    # An ``encoding`` argument replaces each variable's encoding: keep grid_mapping.
    encoding: dict[str, dict[str, Any]] = {
        str(name): {**var.encoding, "_FillValue": np.uint8(CLASS_NODATA), "dtype": "uint8"}
        for name, var in ds.data_vars.items()
    }
    if fmt == "zarr":
        for enc in encoding.values():
            # Zarr's own fill value too: a chunk never written then reads as "no
            # prediction", not as class 0.
            enc["fill_value"] = CLASS_NODATA
    else:
        for enc in encoding.values():
            enc.update(zlib=True, complevel=4)
        if "probability" in ds:  # netCDF keeps the type: float32 scale, float32 values
            ds["probability"].attrs["scale_factor"] = np.float32(0.01)
    with staged(out, folder=fmt == "zarr", suffix=OUTPUT_FORMATS[fmt].suffix) as st:
        try:
            if fmt == "zarr":
                with warnings.catch_warnings():
                    # Consolidated metadata lets xarray open the store in one read and
                    # without a fallback warning; zarr flags it as not (yet) in the v3 spec.
                    warnings.filterwarnings(
                        "ignore", "Consolidated metadata is currently not part", UserWarning
                    )
                    ds.to_zarr(
                        st.path, mode="w", zarr_format=3, consolidated=True, encoding=encoding
                    )
            else:
                ds.to_netcdf(
                    st.path, mode="w", format="NETCDF4", engine="netcdf4", encoding=encoding
                )
        except RasterioError as exc:
            raise ReadError(f"{pred.attrs.get('source', 'input')}: read failed ({exc})") from exc
    log.info("wrote %s (%s, %d x %d)", out, fmt, ds.sizes["y"], ds.sizes["x"])
    return out


def _describe(
    dst: Any, names: list[str], colors: list[list[int]], attrs: dict[str, Any], probabilities: bool
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
