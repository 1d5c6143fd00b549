"""Labels: class-label rasters and vector labels, and how they meet the rasters they label.

A label raster (:func:`open_labels`) holds class ids ``0..K-1`` as pixel values (NaN =
unlabelled) on exactly the grid of its data raster; vector labels are points and
polygons in any CRS (:mod:`georaster_cnn.training.vector_labels`). :func:`resolve_labels` pairs
every raster with its labels and checks the pairs; training and evaluation both start
there. The checks of label *values* live here too: the ids a training set may hold,
the class names and colours it brings, and the ids a model knows.
"""

from __future__ import annotations

import math
import os
import shlex
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import xarray as xr
from rasterio.crs import CRS

from georaster_cnn.errors import InputError, TrainingError
from georaster_cnn.geometry import RasterGrid
from georaster_cnn.io.classmap import (
    CLASS_NODATA,
    MAX_CLASSES,
    default_colors,
    invalid_class_ids,
    read_class_info,
)
from georaster_cnn.io.reader import open_raster
from georaster_cnn.options import DEFAULT_MAX_PIXELS
from georaster_cnn.training.vector_labels import VectorLabels, prepare_vector_labels

if TYPE_CHECKING:
    from georaster_cnn.model.modelfile import GeoModel

__all__ = ["LabelsArg", "open_labels", "resolve_labels"]

LabelsArg: TypeAlias = xr.DataArray | gpd.GeoDataFrame
"""One raster's labels: a label raster, or vector labels (points/polygons) in any CRS."""


def open_labels(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_remote: bool = False,
) -> xr.DataArray:
    """Open a class-label raster: ``(y, x)`` float32 class ids, NaN = unlabelled.

    The first band is used; nodata (and GDAL masks) become NaN. Class names and
    colours the raster carries (:func:`~georaster_cnn.io.classmap.read_class_info`: a
    ``CLASS_NAMES`` JSON tag and the colour table, or netCDF/Zarr ``class_names`` and
    ``class_colors`` attributes) are kept in ``attrs["class_names"]`` and
    ``attrs["class_colors"]`` (RGB per class id).

    Parameters
    ----------
    path
        Any raster :func:`~georaster_cnn.open_raster` reads.
    max_pixels, allow_remote
        As for :func:`~georaster_cnn.open_raster`.

    Returns
    -------
    xarray.DataArray
        Lazy ``(y, x)`` class ids with the raster's transform and CRS.

    Examples
    --------
    >>> labels = open_labels("labels.tif")  # doctest: +SKIP
    >>> labels.attrs.get("class_names")  # doctest: +SKIP
    ['water', 'forest']
    """
    lab = open_raster(path, bands=[1], max_pixels=max_pixels, allow_remote=allow_remote)
    lab = lab.isel(band=0, drop=True)
    names, colors = read_class_info(path)
    if names:
        lab.attrs["class_names"] = list(names)
    if colors:
        lab.attrs["class_colors"] = list(colors)
    return lab


# --------------------------------------------------------------------------- pairing


def _source(obj: xr.DataArray | VectorLabels, default: str = "<in-memory>") -> str:
    if isinstance(obj, VectorLabels):
        return obj.source
    return str(obj.attrs.get("source", default))


def label_sources(items: Sequence[xr.DataArray | VectorLabels]) -> list[str]:
    """The name of each raster's labels (file name, or ``<in-memory>``)."""
    return [_source(it) for it in items]


def _label_items(
    datas: list[xr.DataArray], labels: LabelsArg | Sequence[LabelsArg]
) -> list[LabelsArg]:
    """One labels object per raster; one GeoDataFrame may serve all rasters."""
    if isinstance(labels, gpd.GeoDataFrame):
        return [labels] * len(datas)
    labs = [labels] if isinstance(labels, xr.DataArray) else list(labels)
    if len(labs) == 1 and isinstance(labs[0], gpd.GeoDataFrame):
        return labs * len(datas)
    if not datas or len(datas) != len(labs):
        raise InputError(
            f"need one label raster per input raster (or one set of vector labels for all); "
            f"got {len(datas)} raster(s) and {len(labs)} label object(s)"
        )
    for lab in labs:
        if not isinstance(lab, (xr.DataArray, gpd.GeoDataFrame)):
            raise InputError(
                f"labels must be label rasters (xarray.DataArray) or vector labels "
                f"(geopandas.GeoDataFrame); found {type(lab).__name__}"
            )
    return labs


def _check_aligned(data: xr.DataArray, labels: xr.DataArray) -> None:
    """Raise InputError unless ``labels`` lie on exactly the grid of ``data``.

    A label raster without a CRS (or on data without one) is taken to be in the
    data's CRS: only size and transform are compared then. The message names both
    grids (size, pixel size, CRS, corner) and how to resample the labels onto the
    data's grid (a ``gdalwarp`` and a ``rio warp --like`` line), or to use vector labels.
    """
    grid, lgrid = RasterGrid.of(data), RasterGrid.of(labels)
    assumed = lgrid.crs is None and grid.crs is not None
    if grid.crs is None or lgrid.crs is None:
        lgrid = replace(lgrid, crs=grid.crs)
    if grid.same_as(lgrid):
        return
    raise InputError(
        _off_grid(_source(data, "data"), _source(labels, "labels"), grid, lgrid, assumed)
    )


def _off_grid(src: str, lsrc: str, grid: RasterGrid, lgrid: RasterGrid, assumed: bool) -> str:
    """The message for a label raster ``lsrc`` that is not on the grid of ``src``."""
    differs = [
        what
        for what, same in (
            ("size", grid.shape == lgrid.shape),
            ("transform", lgrid.transform.almost_equals(grid.transform, precision=1e-6)),
            ("CRS", bool(grid.crs == lgrid.crs)),  # both set, or both None
        )
        if not same
    ] or ["grid"]
    lcrs = f"no CRS (taken to be {_crs_text(grid.crs)})" if assumed else _crs_text(lgrid.crs)
    how = _warp_lines(src, lsrc, grid, assumed)
    fix = (
        "resample them onto it with nearest neighbour (class ids must not be blended), e.g. "
        + " or ".join(f"`{line}`" for line in how)
        + ", or give vector labels (points or polygons), which are placed on each raster's grid"
        if how
        else f"gdalwarp cannot write the rotated or south-up grid of {src}: give vector labels "
        "(points or polygons), which are placed on each raster's grid"
    )
    differ = ", ".join(differs[:-1]) + " and " + differs[-1] if len(differs) > 1 else differs[0]
    return (
        f"label raster {lsrc} is not on the grid of {src} (their {differ} "
        f"differ{'s' if len(differs) == 1 else ''}): the labels are {_describe(lgrid, lcrs)}; "
        f"{src} is {_describe(grid, _crs_text(grid.crs))}. Labels must be on the same grid "
        f"(same size, transform and CRS): {fix}."
    )


def _num(v: float) -> str:
    """The shortest text that reads back as ``v`` (``30``, not ``30.0``)."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def _crs_text(crs: Any) -> str:
    if crs is None:
        return "no CRS"
    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    if epsg is not None:
        return f"EPSG:{epsg}"
    text = crs.to_string()
    return text if len(text) <= 80 else f"a CRS without EPSG code ({text[:60]}...)"


def _describe(grid: RasterGrid, crs: str) -> str:
    t, (h, w) = grid.transform, grid.shape
    if grid.north_up:
        pixel = f"{_num(abs(t.a))} x {_num(abs(t.e))}"
    else:
        pixel = f"{_num(math.hypot(t.a, t.d))} x {_num(math.hypot(t.b, t.e))} (rotated)"
    return (
        f"{h} x {w} pixels (height x width) of {pixel} in {crs}, top-left corner "
        f"({_num(t.c)}, {_num(t.f)})"
    )


def _warp_lines(src: str, lsrc: str, grid: RasterGrid, assumed: bool) -> list[str]:
    """Commands that resample the labels onto ``grid``: gdalwarp, and rio warp (rasterio's CLI)."""
    lab = lsrc if _is_file(lsrc) else "labels.tif"
    out = str(Path(lab).with_name(f"{Path(lab).stem}_on_grid.tif"))
    lines = []
    t, (h, w) = grid.transform, grid.shape
    if grid.north_up and t.a > 0 and t.e < 0:  # gdalwarp writes north-up grids only
        srs: list[str] = []
        if grid.crs is not None:
            crs = CRS.from_user_input(grid.crs)
            epsg = crs.to_epsg()
            name = f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()
            srs = (["-s_srs", name] if assumed else []) + ["-t_srs", name]
        box = (t.c, t.f + t.e * h, t.c + t.a * w, t.f)  # xmin ymin xmax ymax
        tr = [_num(t.a), _num(-t.e)]
        lines.append(
            shlex.join(
                ["gdalwarp", *srs, "-tr", *tr, "-te", *map(_num, box), "-r", "near", lab, out]
            )
        )
    if _is_file(src) and not assumed:  # rio warp needs the labels' own CRS
        lines.append(
            shlex.join(["rio", "warp", lab, out, "--like", src, "--resampling", "nearest"])
        )
    return lines


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except (OSError, ValueError):  # a name too long or holding NUL
        return False


def resolve_labels(
    datas: list[xr.DataArray],
    labels: LabelsArg | Sequence[LabelsArg],
    *,
    label_column: str | None,
    class_names: Sequence[str] | None,
) -> tuple[list[xr.DataArray | VectorLabels], list[str] | None]:
    """Per raster: its label raster (checked to be on the raster's grid) or its VectorLabels.

    Parameters
    ----------
    datas
        The rasters, in order.
    labels
        One labels object per raster, or one GeoDataFrame for all.
    label_column, class_names
        How vector labels name their classes (see
        :func:`~georaster_cnn.training.vector_labels.prepare_vector_labels`).

    Returns
    -------
    items, names
        Per raster its labels, and the class names the vector labels define
        (``None`` without vector labels).

    Raises
    ------
    InputError
        Unequal numbers of rasters and labels, a label raster off its raster's
        grid, ``label_column`` without vector labels, or unreadable vector labels.
    """
    items = _label_items(datas, labels)
    frames: dict[int, gpd.GeoDataFrame] = {}
    for it in items:
        if isinstance(it, gpd.GeoDataFrame):
            frames.setdefault(id(it), it)
    if not frames and label_column is not None:
        raise InputError(
            "label_column= names the class attribute of vector labels; label rasters hold "
            "class ids as pixel values"
        )
    prepared = dict(
        zip(
            frames,
            prepare_vector_labels(
                list(frames.values()), label_column=label_column, class_names=class_names
            )
            if frames
            else [],
            strict=True,
        )
    )
    out: list[xr.DataArray | VectorLabels] = []
    for d, it in zip(datas, items, strict=True):
        if isinstance(it, gpd.GeoDataFrame):
            out.append(prepared[id(it)])
        else:
            _check_aligned(d, it)
            out.append(it)
    names = list(next(iter(prepared.values())).class_names) if prepared else None
    return out, names


def check_label_dims(labels: LabelsArg | Sequence[LabelsArg]) -> None:
    """Raise InputError for a label raster whose dims are not ``(y, x)``."""
    if isinstance(labels, gpd.GeoDataFrame):
        return
    for lab in [labels] if isinstance(labels, xr.DataArray) else labels:
        if isinstance(lab, xr.DataArray) and set(lab.dims) != {"y", "x"}:
            raise InputError(
                f"labels {lab.attrs.get('source', '')} must have dims (y, x); found {lab.dims}. "
                "Open label rasters with open_labels."
            )


# --------------------------------------------------------------------------- training labels


def training_class_ids(values: np.ndarray) -> np.ndarray:
    """The class ids of training windows as int64, checked to be ``0..254``.

    Raises
    ------
    InputError
        A value that is not a whole number, or outside ``0..254`` (255 is the
        class maps' nodata).
    """
    bad = invalid_class_ids(values)
    if bad.size and (bad != np.round(bad)).any():
        raise InputError(
            "label raster holds non-integer values (e.g. "
            f"{bad[bad != np.round(bad)][0]:g}); labels must be class ids 0..K-1"
        )
    if bad.size:
        found = int(bad.min()) if (bad < 0).any() else int(bad.max())
        raise InputError(
            f"class ids must be 0..{MAX_CLASSES - 1} ({CLASS_NODATA} is the output's nodata); "
            f"found {found}. Set the label raster's nodata value for unlabelled pixels, or relabel."
        )
    return values.astype(np.int64)


def training_class_names(
    ids: np.ndarray,
    items: Sequence[xr.DataArray | VectorLabels],
    *,
    given: Sequence[str] | None,
    vector_names: Sequence[str] | None,
) -> list[str]:
    """Names of the classes a model trained on ``ids`` predicts.

    ``given``, else the vector labels' names, else the first label raster's
    ``class_names`` attribute, else ``class_0 ...``.

    Raises
    ------
    InputError
        Fewer names than the largest class id needs.
    TrainingError
        The labels hold a single class.
    """
    n_classes = int(ids.max()) + 1
    first = _first_raster(items)
    names = list(
        given
        if given is not None
        else vector_names
        or (first.attrs.get("class_names") if first is not None else None)
        or [f"class_{i}" for i in range(n_classes)]
    )
    if len(names) < n_classes:
        raise InputError(
            f"labels hold class ids up to {n_classes - 1} but {len(names)} class name(s) "
            f"were given ({', '.join(names)})"
        )
    if len(np.unique(ids)) < 2:
        raise TrainingError(f"labels hold a single class ({names[int(ids[0])]}); need >= 2")
    return names


def training_class_colors(
    items: Sequence[xr.DataArray | VectorLabels], n_classes: int
) -> tuple[tuple[int, int, int], ...]:
    """The first label raster's colours where it has one per class, else the default palette."""
    first = _first_raster(items)
    from_labels = first.attrs.get("class_colors") if first is not None else None
    colors = list(default_colors(n_classes))
    for i, c in enumerate(list(from_labels or [])[:n_classes]):
        colors[i] = (int(c[0]), int(c[1]), int(c[2]))
    return tuple(colors)


def _first_raster(items: Sequence[xr.DataArray | VectorLabels]) -> xr.DataArray | None:
    return next((it for it in items if isinstance(it, xr.DataArray)), None)


# --------------------------------------------------------------------------- labels vs a model


def _bad_ids(block: np.ndarray, n_classes: int) -> np.ndarray:
    """Distinct labelled values of ``block`` that are not class ids ``0..n_classes-1``."""
    v = block[np.isfinite(block)]
    bad = v[(v < 0) | (v >= n_classes) | (v != np.round(v))]
    return np.unique(bad)


def check_model_ids(model: GeoModel, labels: xr.DataArray) -> None:
    """Raise InputError naming label values that are not the model's class ids.

    All labelled pixels are checked, not only window centres: a stray id anywhere
    means the labels do not use the model's classes, whatever the stride.
    """
    lab = labels.data
    if not isinstance(lab, da.Array):
        lab = da.from_array(np.asarray(lab))
    parts = [dask.delayed(_bad_ids)(b, model.n_classes) for b in lab.to_delayed().ravel()]
    found = np.unique(np.concatenate([np.empty(0, np.float64), *dask.compute(*parts)]))
    if found.size:
        shown = ", ".join(f"{v:g}" for v in found[:10]) + (" ..." if found.size > 10 else "")
        classes = ", ".join(f"{i} {n}" for i, n in enumerate(model.class_names))
        raise InputError(
            f"label raster {labels.attrs.get('source', 'labels')} holds value(s) {shown} that "
            f"are not class ids of the model, which has {model.n_classes} classes "
            f"({classes}); relabel to 0..{model.n_classes - 1}, or set the raster's nodata "
            "value for unlabelled pixels"
        )


def warn_on_class_names(model: GeoModel, labels: xr.DataArray) -> None:
    """Warn when the labels name their classes differently from the model."""
    names = labels.attrs.get("class_names")
    if names and [str(n) for n in names] != list(model.class_names):
        warnings.warn(
            f"labels {labels.attrs.get('source', '')} name their classes "
            f"({', '.join(map(str, names))}) differently from the model "
            f"({', '.join(model.class_names)}); class ids are compared as numbers, so check "
            "that id k means the same class in both",
            UserWarning,
            stacklevel=4,
        )
