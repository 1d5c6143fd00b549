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
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.windows import Window

from georaster_cnn.errors import OutputExistsError, ReadError
from georaster_cnn.modelfile import _chmod_like_new_file

__all__ = ["write_prediction"]

log = logging.getLogger(__name__)

_BLOCK = 512


class _BandWriter:
    """``__setitem__`` target for :func:`dask.array.store` writing bands of an open dataset."""

    def __init__(self, dst: Any, first_band: int, lock: threading.Lock) -> None:
        self.dst = dst
        self.first_band = first_band
        self.lock = lock

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
        with self.lock:
            self.dst.write(value, indexes=indexes, window=window)


def _probability_percent(p: np.ndarray) -> np.ndarray:
    out = np.where(np.isnan(p), 255, np.rint(np.nan_to_num(p) * 100))
    return out.astype(np.uint8)


def write_prediction(
    pred: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    probabilities: bool = False,
    overwrite: bool = False,
    compress: str = "DEFLATE",
) -> Path:
    """Compute a prediction and write it as a Cloud Optimized GeoTIFF, atomically.

    Parameters
    ----------
    pred
        Result of :func:`~georaster_cnn.predict`.
    path
        Output file (``.tif``). Its folder is created if needed.
    probabilities
        Add one band per class with the probability in percent.
    overwrite
        Replace an existing file.
    compress
        GDAL compression for the COG.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    ReadError
        An input block could not be read (corrupt or truncated file).
    """
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    cls = da.asarray(pred["class"].data)  # also accepts an already computed prediction
    probs = da.asarray(pred["probability"].data)
    names = json.loads(pred.attrs["class_names"])
    colors = json.loads(pred.attrs["class_colors"])
    height, width = cls.shape
    count = 1 + (len(names) if probabilities else 0)
    crs = pred.rio.crs
    transform = pred.rio.transform()

    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial.tif", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    staging = tmp.with_suffix(".staging.tif")
    try:
        profile: dict[str, Any] = {
            "driver": "GTiff", "height": height, "width": width, "count": count,
            "dtype": "uint8", "nodata": 255, "transform": transform, "crs": crs,
            "tiled": True, "blockxsize": _BLOCK, "blockysize": _BLOCK,
            "compress": "DEFLATE", "BIGTIFF": "IF_SAFER",
            # Not RGB(A): with 3-4 uint8 bands GTiff would call probability bands
            # green/blue/alpha, and GIS tools would use one as transparency.
            "photometric": "MINISBLACK", "alpha": "NO",
        }  # fmt: skip
        if crs is None:
            profile.pop("crs")
        lock = threading.Lock()
        with rasterio.open(staging, "w", **profile) as dst:
            sources: list[da.Array] = [cls]
            targets: list[Any] = [_BandWriter(dst, 1, lock)]
            if probabilities:
                sources.append(probs.map_blocks(_probability_percent, dtype=np.uint8))
                targets.append(_BandWriter(dst, 2, lock))
            try:
                da.store(sources, targets, lock=False, compute=True)
            except RasterioError as exc:
                raise ReadError(
                    f"{pred.attrs.get('source', 'input')}: read failed ({exc})"
                ) from exc
            _describe(dst, names, colors, pred.attrs, probabilities)
        rasterio.shutil.copy(
            staging, tmp, driver="COG", COMPRESS=compress, BLOCKSIZE=_BLOCK,
            OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER",
        )  # fmt: skip
        # Multi-band TIFFs cannot embed a palette, and TIFF has no category names: both go
        # to a GDAL PAM sidecar, which GDAL, QGIS and rasterio read with the file.
        _write_pam(Path(str(out) + ".aux.xml"), names, colors)
        _chmod_like_new_file(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        staging.unlink(missing_ok=True)
        Path(str(staging) + ".aux.xml").unlink(missing_ok=True)
    log.info("wrote %s (%d x %d, %d band(s))", out, height, width, count)
    return out


def _write_pam(path: Path, names: list[str], colors: list[list[int]]) -> None:
    """Write band 1's category names and colour table as a GDAL PAM ``.aux.xml``, atomically."""
    from xml.sax.saxutils import escape

    cats = "".join(
        f"<Category>{escape(names[i]) if i < len(names) else ''}</Category>"
        for i in range(len(names))
    )
    entries = []
    for i in range(256):
        r, g, b = colors[i] if i < len(colors) else (0, 0, 0)
        a = 255 if i < len(colors) else 0
        entries.append(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>')
    xml = (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n'
        f"    <Description>class</Description>\n    <CategoryNames>{cats}</CategoryNames>\n"
        f"    <ColorTable>{''.join(entries)}</ColorTable>\n"
        f'    <Metadata><MDI key="CLASS_NAMES">{escape(json.dumps(names))}</MDI></Metadata>\n'
        "  </PAMRasterBand>\n</PAMDataset>\n"
    )
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(xml, encoding="utf-8")
    os.replace(tmp, path)


def _describe(
    dst: Any, names: list[str], colors: list[list[int]], attrs: dict[str, Any], probabilities: bool
) -> None:
    """Colour table, band descriptions, scales and metadata tags."""
    cmap = {i: (*map(int, c), 255) for i, c in enumerate(colors)}
    cmap[255] = (0, 0, 0, 0)
    dst.write_colormap(1, cmap)
    if probabilities:
        dst.colorinterp = [ColorInterp.palette] + [ColorInterp.undefined] * len(names)
    dst.set_band_description(1, "class")
    tags = {
        "CLASS_NAMES": json.dumps(names),
        "CLASS_COLORS": json.dumps(colors),
        "MODEL_ARCH": str(attrs.get("model_arch", "")),
        "MODEL_CHECKSUM": str(attrs.get("model_checksum", "")),
        "STRIDE": str(attrs.get("stride", "")),
        "PATCH_SIZE": str(attrs.get("patch_size", "")),
        "SOURCE": str(attrs.get("source", "")),
        "NODATA_CLASS": "255",
    }
    tags.update({f"CLASS_{i}": n for i, n in enumerate(names)})
    dst.update_tags(**tags)
    dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(names)})
    if probabilities:
        scales = [1.0] + [0.01] * len(names)
        dst.scales = tuple(scales)
        dst.offsets = tuple([0.0] * len(scales))
        for i, n in enumerate(names):
            dst.set_band_description(i + 2, f"probability_{n}")
            dst.update_tags(i + 2, CLASS=n, UNITS="percent")
