"""styles: a QGIS layer style and a PNG quicklook for a class map.

Both read a class map written by :func:`~georaster_cnn.write_prediction` (COG,
GeoTIFF, Zarr or netCDF; :mod:`georaster_cnn.io.classmap` reads its names and
colours) and write one file beside it, atomically:

* :func:`write_qml`: ``<map>.qml``, a QGIS 3 style with the *paletted* renderer on
  band 1, one entry per class (its colour and name), nodata transparent. QGIS
  applies a ``.qml`` of the same base name when it loads the raster.
* :func:`write_quicklook`: ``<map stem>.png``, an RGBA preview of the class band in
  the class colours with a legend and a title, read decimated so large maps are never
  loaded in full; nodata is transparent (alpha 0), so it never looks like a grey class.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from georaster_cnn.errors import InputError
from georaster_cnn.io.classmap import ClassMap, open_class_map
from georaster_cnn.io.staging import atomic_write, check_output

__all__ = ["QML_SUFFIX", "QUICKLOOK_SUFFIX", "write_qml", "write_quicklook"]

#: Suffix of the QGIS style beside a class map (``scene.tif`` -> ``scene.qml``): QGIS
#: applies a style of the raster's base name when it loads the raster.
QML_SUFFIX = ".qml"
#: Suffix of the quicklook beside a class map (``scene.tif`` -> ``scene.png``).
QUICKLOOK_SUFFIX = ".png"

log = logging.getLogger(__name__)

#: Legend label of nodata cells, which the quicklook leaves transparent (alpha 0): any
#: colour, grey included, could be a class's.
_NODATA_LABEL = "no data (transparent)"
#: Maps smaller than this (longer side, cells) are enlarged by a whole factor in the quicklook.
_MIN_PREVIEW = 256


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


# --------------------------------------------------------------------------- QGIS style


def write_qml(prediction_path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a QGIS layer style ``<prediction_path>.qml`` beside a class map.

    The style uses QGIS's *Paletted/Unique values* renderer on band 1 with one
    entry per class (value, colour from ``CLASS_COLORS``, label = class name);
    nodata (255) has no entry and is transparent. QGIS applies a ``.qml`` with the
    raster's base name when the layer is loaded, also for class maps with
    probability bands, which it would otherwise show as a multiband image.

    Parameters
    ----------
    prediction_path
        Class map written by :func:`~georaster_cnn.write_prediction`.
    overwrite
        Replace an existing ``.qml``.

    Returns
    -------
    pathlib.Path
        The written file: ``scene.tif`` -> ``scene.qml``.

    Raises
    ------
    OutputExistsError
        The ``.qml`` exists and ``overwrite`` is false.
    InputError
        The file is not a class map (no class names, class band not ``uint8``).
    ReadError
        The file cannot be opened.

    Examples
    --------
    >>> write_qml("maps/scene.tif")  # doctest: +SKIP
    PosixPath('maps/scene.qml')
    """
    path = Path(prediction_path)
    out = path.with_suffix(QML_SUFFIX)
    check_output(out, overwrite=overwrite)
    meta = open_class_map(path, what="Style")
    text = _qml(meta)
    atomic_write(out, lambda f: f.write(text.encode("utf-8")), overwrite=overwrite)
    log.info("wrote %s (%d classes)", out, len(meta.names))
    return out


def _qml(meta: ClassMap) -> str:
    """QGIS 3 style document: paletted renderer on band 1, nodata left transparent."""
    entries = "\n".join(
        f"        <paletteEntry value={quoteattr(str(i))} color={quoteattr(_hex(rgb))} "
        f'alpha="255" label={quoteattr(name)}/>'
        for i, (name, rgb) in enumerate(zip(meta.names, meta.colors, strict=True))
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="AllStyleCategories">
  <pipe>
    <provider>
      <resampling enabled="false" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour" maxOversampling="2"/>
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" colorizeStrength="100"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


# --------------------------------------------------------------------------- quicklook


def write_quicklook(
    prediction_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str] | None = None,
    *,
    max_size: int = 1024,
    overwrite: bool = False,
) -> Path:
    """Write a PNG preview of a class map: classes in their colours, a legend and a title.

    The class band is read decimated (nearest neighbour, from the COG's overviews
    where they fit), so the longer side of the map area is at most ``max_size``
    pixels and a large map is never loaded in full. Small maps are enlarged by a
    whole factor so cells stay square blocks. North is up and east is right (south-up
    grids are flipped; rotated grids are shown in pixel order). The PNG is RGBA: nodata
    cells (and any value without a class) are transparent (alpha 0) so that they never
    look like a class of the same colour, and the legend lists them as
    "no data (transparent)"; the title and legend stand on white. The title names the file, the model architecture and stride (when the file says),
    the map size in cells and the decimation, if any.

    Parameters
    ----------
    prediction_path
        Class map written by :func:`~georaster_cnn.write_prediction`.
    png_path
        Output PNG. [default: ``<prediction stem>.png`` beside the class map]
    max_size
        Largest side of the map area, in pixels (the legend and title come on top).
    overwrite
        Replace an existing PNG.

    Returns
    -------
    pathlib.Path
        The written PNG.

    Raises
    ------
    OutputExistsError
        The PNG exists and ``overwrite`` is false.
    InputError
        Not a class map, or ``max_size`` < 1.
    ReadError
        The file cannot be read.

    Examples
    --------
    >>> write_quicklook("maps/scene.tif", max_size=512)  # doctest: +SKIP
    PosixPath('maps/scene.png')
    """
    if max_size < 1:
        raise InputError(f"max_size must be >= 1 pixel; found {max_size}")
    path = Path(prediction_path)
    out = path.with_suffix(QUICKLOOK_SUFFIX) if png_path is None else Path(png_path)
    check_output(out, overwrite=overwrite)
    meta = open_class_map(path, what="Preview")
    classes = _north_up(meta, meta.read_classes(_preview_shape(meta.height, meta.width, max_size)))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: _plot(f, classes, meta, path.name, max_size), overwrite=overwrite)
    log.info("wrote %s (%d x %d cells shown)", out, *classes.shape)
    return out


def _north_up(meta: ClassMap, classes: np.ndarray) -> np.ndarray:
    """The cells as a map shows them: north at the top, east to the right.

    Rows of a south-up grid (positive y step) run northwards and are flipped; so are
    columns that run westwards. Rotated grids are shown in their pixel order.
    """
    t = meta.transform
    if t.b != 0 or t.d != 0:
        return classes
    if t.e > 0:
        classes = classes[::-1]
    if t.a < 0:
        classes = classes[:, ::-1]
    return classes


def _preview_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """Cells to read so the longer side is at most ``max_size``, keeping the aspect ratio."""
    factor = max(height, width) / max_size
    if factor <= 1:
        return height, width
    return max(1, round(height / factor)), max(1, round(width / factor))


def _plot(f: Any, classes: np.ndarray, meta: ClassMap, name: str, max_size: int) -> None:
    """Render the preview into the binary file ``f`` as RGBA PNG, map area pixel for cell."""
    # Object-oriented API with an explicit Agg canvas: no pyplot state, no GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    lut = np.zeros((256, 4), dtype=np.uint8)  # nodata, and any value without a class: alpha 0
    lut[: len(meta.colors), :3] = np.asarray(meta.colors, dtype=np.uint8).reshape(-1, 3)
    lut[: len(meta.colors), 3] = 255
    h, w = classes.shape
    zoom = max(1, min(_MIN_PREVIEW, max_size) // max(h, w))
    rgba = lut[classes].repeat(zoom, axis=0).repeat(zoom, axis=1)
    map_h, map_w = rgba.shape[:2]

    handles = [
        Patch(facecolor=_hex(rgb), edgecolor="black", linewidth=0.5, label=label)
        for label, rgb in zip(meta.names, meta.colors, strict=True)
    ]
    if bool((classes >= len(meta.names)).any()):
        handles.append(
            Patch(facecolor="none", edgecolor="black", linewidth=0.5, label=_NODATA_LABEL)
        )
    longest = max((len(str(p.get_label())) for p in handles), default=0)

    dpi = 100
    pad, title_h = 10, 44
    legend_w = 50 + 7 * min(longest, 40)
    legend_h = 16 + 19 * len(handles)
    fig_w = pad + map_w + pad + legend_w
    fig_h = title_h + max(map_h, legend_h) + pad
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes(
        (pad / fig_w, (fig_h - title_h - map_h) / fig_h, map_w / fig_w, map_h / fig_h)
    )
    ax.imshow(rgba, interpolation="none", aspect="auto")
    ax.set_axis_off()
    _white_around(fig, (pad, fig_h - title_h - map_h, map_w, map_h), (fig_w, fig_h))

    details = []
    if meta.attrs.get("model_arch"):
        details.append(f"model {meta.attrs['model_arch']}")
    if meta.attrs.get("stride"):
        details.append(f"stride {meta.attrs['stride']} px")
    details.append(f"{meta.height} x {meta.width} cells")
    if (h, w) != (meta.height, meta.width):
        details.append(f"shown at 1/{max(meta.height, meta.width) / max(h, w):.2g}")
    fig.text(pad / fig_w, 1 - 6 / fig_h, name, ha="left", va="top", fontsize=11, weight="bold")
    fig.text(pad / fig_w, 1 - 26 / fig_h, ", ".join(details), ha="left", va="top", fontsize=8)
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=((2 * pad + map_w) / fig_w, 1 - title_h / fig_h),
        frameon=False,
        fontsize=9,
        handlelength=1.2,
        borderaxespad=0.0,
    )
    # transparent: the figure's own background is not drawn, so nodata stays alpha 0
    fig.savefig(f, format="png", dpi=dpi, transparent=True)


def _white_around(fig: Any, hole: tuple[int, int, int, int], size: tuple[int, int]) -> None:
    """White background on ``fig`` everywhere but the ``hole`` (x, y, w, h in pixels from below)."""
    from matplotlib.patches import Rectangle

    x, y, w, h = hole
    fig_w, fig_h = size
    for rx, ry, rw, rh in (
        (0, 0, x, fig_h),  # left
        (x + w, 0, fig_w - x - w, fig_h),  # right
        (x, y + h, w, fig_h - y - h),  # above
        (x, 0, w, y),  # below
    ):
        fig.add_artist(
            Rectangle(
                (rx / fig_w, ry / fig_h), rw / fig_w, rh / fig_h,
                transform=fig.transFigure, facecolor="white", edgecolor="none",
                antialiased=False, zorder=-10,
            )
        )  # fmt: skip
