"""vectorize: class maps as polygons, and polygons as GIS vector files.

:func:`vectorize` turns a prediction (a class-map GeoTIFF written by
:func:`~georaster_cnn.write_prediction`, or the Dataset returned by
:func:`~georaster_cnn.predict`) into one polygon per connected region of a class
(4-connectivity: cells that share an edge), with ``class_id``, ``class_name``,
``area``, ``cells`` and, when probabilities are available, ``mean_probability``.

How polygons and per-polygon statistics are kept in agreement:

1. ``rasterio.features.shapes`` polygonises the class band in *pixel* coordinates
   (every vertex an integer), one polygon per connected region;
2. the polygons are burnt back with ``rasterio.features.rasterize`` as region ids:
   cell centres lie half a cell away from every edge, so this labelling is exact;
3. ``np.bincount`` over the ids gives each polygon's cell count and its summed
   probability (read block by block);
4. only then are the vertices mapped to the prediction's CRS with its affine
   transform (rotated and sheared transforms included).

:func:`write_vectors` writes the result as GeoPackage, GeoJSON, GeoParquet or
Shapefile (chosen by suffix), atomically.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely
import xarray as xr
from affine import Affine

from georaster_cnn.errors import InputError, OutputExistsError
from georaster_cnn.io._fs import publish
from georaster_cnn.io.classmap import CLASS_NODATA, ClassMap, open_class_map, prediction_classes
from georaster_cnn.io.formats import vector_output_format
from georaster_cnn.io.staging import check_output, staging_folder
from georaster_cnn.options import check_non_negative
from georaster_cnn.quiet import ignore_warnings

__all__ = ["vectorize", "write_vectors"]

log = logging.getLogger(__name__)

#: dBase field names have at most 10 characters; longer ones are renamed explicitly
#: (GDAL would otherwise truncate them with a warning).
SHAPEFILE_COLUMNS: dict[str, str] = {"mean_probability": "mean_prob"}

_SHP_SIDECARS = frozenset({".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd"})
_COLUMNS = ("class_id", "class_name", "area", "cells")


@dataclass(frozen=True)
class _Cells:
    """What vectorising needs from a prediction, whatever its form."""

    classes: np.ndarray  # (y, x) uint8, 255 = nodata
    transform: Affine
    crs: Any  # rasterio CRS or None
    names: tuple[str, ...]
    source: str
    stored: ClassMap | None = None  # class map on disk, probabilities read block by block
    own_probability: np.ndarray | None = None  # (y, x) probability of each cell's class


def vectorize(
    prediction: str | os.PathLike[str] | xr.Dataset,
    *,
    min_area: float = 0.0,
    simplify: float = 0.0,
    probabilities: bool = True,
) -> gpd.GeoDataFrame:
    """Polygons of a class map: one per connected region of a class.

    Parameters
    ----------
    prediction
        A class map written by :func:`~georaster_cnn.write_prediction` (COG,
        GeoTIFF, Zarr or netCDF, with or without probabilities), or the Dataset
        returned by :func:`~georaster_cnn.predict` (computed here).
    min_area
        Drop polygons whose area is below this, in CRS units squared. Their cells
        are simply not in the output (the neighbouring polygons do not grow).
    simplify
        Douglas-Peucker tolerance in CRS units (``shapely.simplify``, topology kept),
        applied after ``area`` and ``cells`` are computed: neighbours may no longer
        share edges exactly. ``0`` keeps the exact cell outlines.
    probabilities
        Add ``mean_probability`` when the prediction has probabilities.

    Returns
    -------
    geopandas.GeoDataFrame
        One Polygon per region, ordered by ``class_id``, in the prediction's CRS
        (``None`` when it has none), with columns ``class_id`` (int), ``class_name``
        (str), ``area`` (cells x cell area, in CRS units squared: square degrees
        for a geographic CRS), ``cells`` (number of class-map cells) and
        ``mean_probability`` (0-1, mean probability of the region's class over
        its cells). Nodata cells (class 255) are not vectorised; an all-nodata
        prediction gives an empty frame with the same columns.

    Raises
    ------
    InputError
        ``prediction`` is not a class map written by georaster_cnn, or an
        option is negative.
    ReadError
        The file cannot be opened or read.

    Examples
    --------
    >>> gdf = gc.vectorize("maps/scene.tif", min_area=900.0)  # doctest: +SKIP
    >>> gdf.groupby("class_name")["area"].sum()  # doctest: +SKIP
    """
    check_non_negative("min_area", min_area, unit="an area in CRS units squared, 0 = off")
    check_non_negative("simplify", simplify, unit="a tolerance in CRS units, 0 = off")
    cmap, want_probs = _cells(prediction, probabilities)

    geoms, class_id = _pixel_polygons(cmap)
    n = len(geoms)
    ids = _burn_ids(geoms, cmap.classes.shape)
    cells = np.bincount(ids.ravel(), minlength=n + 1)[1:].astype(np.int64)
    cell_area = abs(cmap.transform.determinant)
    area = cells * cell_area

    columns: dict[str, Any] = {
        "class_id": class_id,
        "class_name": pd.Series([cmap.names[v] for v in class_id], dtype=object),
        "area": area.astype(np.float64),
        "cells": cells,
    }
    if want_probs:
        columns["mean_probability"] = _zonal_mean(cmap, ids, n)

    polys = np.empty(n, dtype=object)
    polys[:] = geoms
    polys = shapely.transform(polys, _affine_fn(cmap.transform))
    keep = area >= min_area if min_area > 0 else np.ones(n, dtype=bool)
    if simplify > 0:
        polys[keep] = shapely.simplify(polys[keep], simplify, preserve_topology=True)

    frame = pd.DataFrame(columns).loc[keep]
    gdf = gpd.GeoDataFrame(
        frame,
        geometry=gpd.GeoSeries(polys[keep], index=frame.index),
        crs=_pyproj_crs(cmap.crs),
    )
    gdf = gdf.sort_values("class_id", kind="stable").reset_index(drop=True)
    gdf["class_name"] = gdf["class_name"].astype(object)
    dropped = int(n - keep.sum())
    log.info(
        "%s: %d polygon(s) of %d class(es)%s",
        cmap.source,
        len(gdf),
        gdf["class_id"].nunique(),
        f", {dropped} below min_area dropped" if dropped else "",
    )
    return gdf


def _pixel_polygons(cmap: _Cells) -> tuple[list[Any], np.ndarray]:
    """Polygons of connected same-class cells in pixel space, and their class ids.

    Integer vertices, so burning them back (:func:`_burn_ids`) is exact.
    """
    cls = cmap.classes
    geoms: list[Any] = []
    values: list[int] = []
    for geom, value in rasterio.features.shapes(cls, mask=cls != CLASS_NODATA, connectivity=4):
        geoms.append(shapely.geometry.shape(geom))
        values.append(int(value))
    class_id = np.asarray(values, dtype=np.int32)
    unknown = sorted(set(np.unique(class_id).tolist()) - set(range(len(cmap.names))))
    if unknown:
        raise InputError(
            f"{cmap.source}: class values {unknown} have no name; the class map has "
            f"{len(cmap.names)} class names (ids 0..{len(cmap.names) - 1}, "
            f"{CLASS_NODATA} = nodata). Vectorise a class map written by georaster-cnn predict."
        )
    return geoms, class_id


def write_vectors(
    gdf: gpd.GeoDataFrame, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write polygons as a GIS vector file, atomically; the suffix picks the format.

    ============================  ==========================================
    suffix                        format
    ============================  ==========================================
    ``.gpkg``                     GeoPackage (layer named after the file)
    ``.geojson``, ``.json``       GeoJSON
    ``.parquet``, ``.geoparquet`` GeoParquet (needs ``pyarrow``)
    ``.shp``                      Shapefile (``mean_probability`` is written
                                  as ``mean_prob``: 10-character field names)
    ============================  ==========================================

    The file is written under a temporary name in a hidden folder next to
    ``path`` and renamed into place when complete (all Shapefile sidecars too),
    so an interrupted write never leaves a file that looks finished.

    Parameters
    ----------
    gdf
        Polygons, e.g. from :func:`vectorize` (an empty frame writes an empty layer).
    path
        Output file. Its folder is created if needed.
    overwrite
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    InputError
        Unknown suffix, or GeoParquet without ``pyarrow`` installed.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.

    Examples
    --------
    >>> gc.write_vectors(gc.vectorize("maps/scene.tif"), "maps/scene.gpkg")  # doctest: +SKIP
    """
    out = Path(path)
    fmt = vector_output_format(out)
    check_output(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "ESRI Shapefile":
        gdf = gdf.rename(columns=SHAPEFILE_COLUMNS)
    # A private folder keeps the final base name: GeoPackage layers and Shapefile
    # sidecars are named after it, and sidecars move along with the .shp.
    with staging_folder(out) as tmpdir:
        staged = tmpdir / out.name
        if fmt == "Parquet":
            gdf.to_parquet(staged, index=False)
        else:
            _write_ogr(gdf, staged, fmt)
        _move_into_place(tmpdir, out, fmt, overwrite=overwrite)
    log.info("wrote %s (%d feature(s), %s)", out, len(gdf), fmt)
    return out


# --------------------------------------------------------------------------- reading


def _cells(
    prediction: str | os.PathLike[str] | xr.Dataset, probabilities: bool
) -> tuple[_Cells, bool]:
    """The prediction's cells, and whether ``mean_probability`` is asked for and available."""
    if isinstance(prediction, xr.Dataset):
        cmap = _from_dataset(prediction, probabilities)
    else:
        cmap = _from_file(Path(prediction))
    want_probs = probabilities and (
        (cmap.stored is not None and cmap.stored.has_probabilities)
        or cmap.own_probability is not None
    )
    return cmap, want_probs


def _from_file(path: Path) -> _Cells:
    """Class band and description of a class map on disk; probabilities stay there."""
    stored = open_class_map(path, what="Vectorise")
    return _Cells(
        classes=stored.read_classes(),
        transform=stored.transform,
        crs=stored.crs,
        names=stored.names,
        source=str(path),
        stored=stored,
    )


def _from_dataset(pred: xr.Dataset, probabilities: bool) -> _Cells:
    """Compute the class band (and each cell's own-class probability) in one pass."""
    if "class" not in pred or "class_names" not in pred.attrs:
        raise InputError(
            "expected the Dataset returned by georaster_cnn.predict (a 'class' variable and a "
            f"'class_names' attribute); found variables {sorted(map(str, pred.data_vars))}"
        )
    names, _ = prediction_classes(pred.attrs)
    cls = da.asarray(pred["class"].transpose("y", "x").data)
    own = None
    if probabilities and "probability" in pred:
        probs = da.asarray(pred["probability"].transpose("class_name", "y", "x").data)
        probs = probs.rechunk({0: -1, 1: cls.chunks[0], 2: cls.chunks[1]})
        own = da.map_blocks(_own_class, cls, probs, drop_axis=0, dtype=np.float32)
        classes, own_np = dask.compute(cls, own)  # one pass: the model runs once
    else:
        (classes,) = dask.compute(cls)
        own_np = None
    return _Cells(
        classes=np.asarray(classes, dtype=np.uint8),
        transform=pred.rio.transform(),
        crs=pred.rio.crs,
        names=names,
        source=str(pred.attrs.get("source") or "prediction"),
        own_probability=own_np,
    )


def _own_class(cls: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Probability of each cell's own class (NaN at nodata)."""
    idx = np.where(cls == CLASS_NODATA, 0, cls).astype(np.intp)
    own = np.take_along_axis(np.asarray(probs, dtype=np.float32), idx[None], axis=0)[0]
    return np.where(cls == CLASS_NODATA, np.float32(np.nan), own)


# --------------------------------------------------------------------------- zonal


def _burn_ids(geoms: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Region id (1-based; 0 = none) of every cell, from the pixel-space polygons."""
    if not geoms:
        return np.zeros(shape, dtype=np.int32)
    return rasterio.features.rasterize(
        zip(geoms, range(1, len(geoms) + 1), strict=True),
        out_shape=shape,
        transform=Affine.identity(),
        fill=0,
        dtype="int32",
    )


def _zonal_mean(cmap: _Cells, ids: np.ndarray, n: int) -> np.ndarray:
    """Mean own-class probability per region (0-1), over cells where it is known."""
    total = np.zeros(n + 1)
    count = np.zeros(n + 1)
    for window_ids, own in _own_probability_blocks(cmap, ids):
        ok = ~np.isnan(own)
        total += np.bincount(window_ids[ok], weights=own[ok], minlength=n + 1)
        count += np.bincount(window_ids[ok], minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean[1:]


def _own_probability_blocks(
    cmap: _Cells, ids: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, own-class probability 0-1 or NaN) per block; a file is read block by block."""
    if cmap.own_probability is not None:
        yield ids, cmap.own_probability.astype(np.float64)
        return
    if cmap.stored is None:
        return
    for rows, percent in cmap.stored.probability_blocks():
        own = _own_class(cmap.classes[rows], percent.astype(np.float32))
        own[own == CLASS_NODATA] = np.nan
        yield ids[rows], own.astype(np.float64) / 100.0


# --------------------------------------------------------------------------- geometry


def _affine_fn(t: Affine) -> Any:
    """Pixel (col, row) -> CRS (x, y) for ``shapely.transform``."""

    def fn(xy: np.ndarray) -> np.ndarray:
        col, row = xy[:, 0], xy[:, 1]
        return np.column_stack((t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f))

    return fn


def _pyproj_crs(crs: Any) -> Any:
    if crs is None:
        return None
    from pyproj import CRS

    epsg = crs.to_epsg(confidence_threshold=100) if hasattr(crs, "to_epsg") else None
    return CRS.from_epsg(epsg) if epsg else CRS.from_wkt(crs.to_wkt())


# --------------------------------------------------------------------------- writing


def _write_ogr(gdf: gpd.GeoDataFrame, staged: Path, driver: str) -> None:
    kwargs: dict[str, Any] = {"driver": driver, "engine": "pyogrio", "index": False}
    # Empty frames have no geometry to infer a type from; vectorize makes only Polygons.
    types = set(gdf.geom_type.dropna()) if len(gdf) else {"Polygon"}
    if types <= {"Polygon"}:
        kwargs["geometry_type"] = "Polygon"
    elif types <= {"Polygon", "MultiPolygon"}:
        kwargs["geometry_type"] = "MultiPolygon"
        kwargs["promote_to_multi"] = True
    if driver == "GPKG":
        kwargs["layer"] = staged.stem
    if gdf.crs is None:  # a class map without CRS has none to give; said in the docs
        with ignore_warnings(UserWarning, "'crs' was not provided"):
            gdf.to_file(staged, **kwargs)
    else:
        gdf.to_file(staged, **kwargs)


def _move_into_place(tmpdir: Path, out: Path, fmt: str, *, overwrite: bool) -> None:
    """Rename the staged file (and Shapefile sidecars) to ``out``; stale sidecars go.

    One file is published without replacing another run's output unless ``overwrite``
    (:func:`georaster_cnn.io._fs.publish`); a Shapefile's files are renamed one by one.

    Raises
    ------
    OutputExistsError
        ``out`` appeared since the write began (another run) and ``overwrite`` is false.
    """
    if fmt != "ESRI Shapefile":
        try:
            publish(tmpdir / out.name, out, overwrite=overwrite, aside=tmpdir / ".replaced")
        except FileExistsError as exc:
            raise OutputExistsError(
                f"{out} exists (written by another run meanwhile); pass overwrite=True to "
                "replace it"
            ) from exc
        return
    staged = [p for p in tmpdir.iterdir() if p.stem == out.stem]
    new_suffixes = {p.suffix.lower() for p in staged}
    # The .shp last: it is the file that makes the output look finished.
    for p in sorted(staged, key=lambda p: p.suffix.lower() == ".shp"):
        os.replace(p, out.with_suffix(p.suffix))
    # An old .prj (or .cpg) left next to a new Shapefile would mislabel it.
    for old in out.parent.glob(f"{glob.escape(out.stem)}.*"):
        if old.suffix.lower() not in new_suffixes and old.suffix.lower() in _SHP_SIDECARS:
            old.unlink(missing_ok=True)
