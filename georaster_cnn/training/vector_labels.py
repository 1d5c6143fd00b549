"""Vector labels: points and polygons with a class attribute, placed on any raster.

Labels come as a :class:`geopandas.GeoDataFrame` (or a GeoPackage, Shapefile,
GeoJSON, FlatGeobuf or GeoParquet file, :func:`read_vector_labels`) in any CRS.
:func:`prepare_vector_labels` turns one or more frames into :class:`VectorLabels`
with class ids ``0..K-1``: a label column of names gets ids in the order of
``class_names`` (default: the names sorted), a column of integer ids keeps them.

On each raster the features are reprojected to the raster's CRS and then

* **points** give one window centred on each point (:func:`point_windows`): the
  pixel holding the point is the window's centre pixel, ``(row - p//2, col - p//2)``
  its top-left, exactly like the centre pixel of a prediction window;
* **polygons** are rasterised onto the raster's grid, lazily and block by block
  (:func:`rasterize_polygons`); a pixel covered by polygons of different classes is
  left unlabelled. Windows are then cut on the stride grid like for a label raster,
  keeping those whose centre lies in a polygon and that have at least ``min_cover``
  of their pixels inside polygons of that class (1.0 = wholly inside).

Nothing here loads a whole raster: point windows are read per Dask block of the
raster, polygon labels are one Dask task per block.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from affine import Affine
from rasterio import features
from rasterio.enums import MergeAlg
from rasterio.errors import NotGeoreferencedWarning

from georaster_cnn.errors import InputError
from georaster_cnn.geometry import RasterGrid
from georaster_cnn.io.classmap import MAX_CLASSES, invalid_class_ids
from georaster_cnn.options import control_character
from georaster_cnn.quiet import ignore_warnings
from georaster_cnn.training.chipdata import chip_valid_fraction

__all__ = [
    "VectorLabels",
    "PointWindows",
    "point_windows",
    "prepare_vector_labels",
    "rasterize_polygons",
    "read_vector_labels",
    "to_raster_crs",
]

log = logging.getLogger(__name__)

_PARQUET = frozenset({".parquet", ".geoparquet"})
_POINT_TYPES = frozenset({"Point"})
_POLYGON_TYPES = frozenset({"Polygon"})


def read_vector_labels(
    path: str | os.PathLike[str], *, layer: str | int | None = None
) -> gpd.GeoDataFrame:
    """Read a vector label file with geopandas.

    GeoParquet goes through :func:`geopandas.read_parquet`, everything else through
    :func:`geopandas.read_file` (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, ...).
    ``attrs["source"]`` holds the path.

    Raises
    ------
    InputError
        The file is missing or cannot be read as vector data.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such vector label file")
    try:
        parquet = p.suffix.lower() in _PARQUET
        gdf = gpd.read_parquet(p) if parquet else gpd.read_file(p, layer=layer)
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise InputError(f"{p}: reading GeoParquet needs pyarrow ({exc})") from exc
    except Exception as exc:  # pyogrio/fiona/pyarrow raise many types; report them all alike
        raise InputError(f"{p}: cannot read vector labels: {exc}") from exc
    if not isinstance(gdf, gpd.GeoDataFrame) or gdf.geometry is None:
        raise InputError(f"{p}: holds no geometry column")
    gdf.attrs["source"] = str(p)
    return gdf


@dataclass(frozen=True, eq=False)
class VectorLabels:
    """Point and polygon labels of one source, with class ids, in the source's CRS.

    Attributes
    ----------
    points, polygons
        Single-part geometries (multi-part features are split) with an ``id``
        column of int64 class ids.
    class_names
        Names of the class ids, shared by every source of one training set.
    source
        File name or ``<GeoDataFrame>``.
    n_dropped
        Features left out, by reason (``no_geometry``, ``no_class``).
    """

    points: gpd.GeoDataFrame
    polygons: gpd.GeoDataFrame
    class_names: tuple[str, ...]
    source: str
    n_dropped: dict[str, int] = field(default_factory=dict)

    @property
    def crs(self) -> Any:
        return self.points.crs if len(self.points) else self.polygons.crs

    def __len__(self) -> int:
        return len(self.points) + len(self.polygons)


def _source(gdf: gpd.GeoDataFrame) -> str:
    return str(gdf.attrs.get("source", "<GeoDataFrame>"))


def _pick_column(gdf: gpd.GeoDataFrame, column: str | None) -> str:
    attrs = [c for c in gdf.columns if c != gdf.geometry.name]
    if column is not None:
        if column not in gdf.columns:
            raise InputError(
                f"{_source(gdf)}: no column {column!r}; the columns are "
                f"{', '.join(map(str, attrs)) or '(none)'}"
            )
        return column
    if len(attrs) == 1:
        return str(attrs[0])
    raise InputError(
        f"{_source(gdf)}: say which column holds the class (label_column=); "
        f"the columns are {', '.join(map(str, attrs)) or '(none)'}"
    )


def _is_names(values: pd.Series) -> bool:
    return not (
        pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype)
    )


def prepare_vector_labels(
    frames: gpd.GeoDataFrame | Sequence[gpd.GeoDataFrame],
    *,
    label_column: str | None = None,
    class_names: Sequence[str] | None = None,
) -> list[VectorLabels]:
    """Class ids for the features of one or more frames, with one shared class list.

    Parameters
    ----------
    frames
        GeoDataFrames of points and/or polygons (multi-parts are split).
    label_column
        The column holding each feature's class: names (text) or ids ``0..K-1``
        (integers). Default: the only non-geometry column.
    class_names
        The classes in id order. With a column of names, every name must be one of
        them; default: the names found, sorted. With ids, the ids must be below
        their number; default ``class_0 ...``.

    Raises
    ------
    InputError
        A missing column, unknown names, ids that are not integers in ``0..254``,
        lines or other geometries that are neither points nor polygons, or no
        feature with a class.
    """
    gdfs = [frames] if isinstance(frames, gpd.GeoDataFrame) else list(frames)
    if not gdfs:
        raise InputError("no vector labels given")
    columns = [_pick_column(g, label_column) for g in gdfs]
    by_names = [_is_names(g[c]) for g, c in zip(gdfs, columns, strict=True)]
    if any(by_names) and not all(by_names):
        raise InputError(
            "the label columns mix class names and class ids across sources; use one kind"
        )
    if class_names is not None:
        names = [str(n) for n in class_names]
    elif by_names[0]:
        found: set[str] = set()
        for g, c in zip(gdfs, columns, strict=True):
            found.update(str(v) for v in g[c].dropna().unique())
        names = sorted(found)
    else:
        tops = [float(g[c].max()) for g, c in zip(gdfs, columns, strict=True)]
        top = max((t for t in tops if math.isfinite(t)), default=-1.0)
        names = [f"class_{i}" for i in range(max(0, int(top) + 1))]
    for n in names:  # they become the model's class names: XML, CSV and terminal safe
        bad = control_character(n)
        if bad is not None:
            raise InputError(
                f"class name {n!r} holds the control character {bad.group()!r}; names may "
                "hold none. Rename that class in the label column (or give class_names=)"
            )
    out = []
    for g, c, named in zip(gdfs, columns, by_names, strict=True):
        out.append(_one(g, c, named, names))
    if not any(len(v) for v in out):
        raise InputError(
            f"no labelled feature in {', '.join(v.source for v in out)} (every feature lacks a "
            "geometry or a class)"
        )
    return out


def _one(gdf: gpd.GeoDataFrame, column: str, named: bool, names: list[str]) -> VectorLabels:
    src = _source(gdf)
    dropped = {"no_geometry": 0, "no_class": 0}
    values = gdf[column]
    has_class = values.notna().to_numpy()
    geom = gdf.geometry
    has_geom = (~(geom.isna() | geom.is_empty)).to_numpy()
    dropped["no_geometry"] = int((~has_geom).sum())
    dropped["no_class"] = int((has_geom & ~has_class).sum())
    keep = has_geom & has_class
    values = values[keep]
    if named:
        text = values.astype(str)
        unknown = sorted(set(text) - set(names))
        if unknown:
            raise InputError(
                f"{src}: class name(s) {', '.join(unknown[:10])} in column {column!r} are not "
                f"among the classes ({', '.join(names)})"
            )
        index = {n: i for i, n in enumerate(names)}
        ids = np.array([index[t] for t in text], dtype=np.int64)
    else:
        v = values.to_numpy(dtype=np.float64)
        bad = invalid_class_ids(v)
        if bad.size:
            raise InputError(
                f"{src}: column {column!r} holds {bad[0]:g}, not a class id; ids must be "
                f"integers 0..{MAX_CLASSES - 1} (or give class names in a text column)"
            )
        ids = v.astype(np.int64)
        if ids.size and ids.max() >= len(names):
            raise InputError(
                f"{src}: column {column!r} holds class id {int(ids.max())} but there are only "
                f"{len(names)} classes ({', '.join(names)})"
            )
    frame = gpd.GeoDataFrame({"id": ids}, geometry=geom[keep].to_numpy(), crs=gdf.crs)
    frame = frame.explode(index_parts=False, ignore_index=True)
    kinds = frame.geometry.geom_type
    other = sorted(set(kinds) - _POINT_TYPES - _POLYGON_TYPES)
    if other:
        n = int((~kinds.isin(_POINT_TYPES | _POLYGON_TYPES)).sum())
        raise InputError(
            f"{src}: {n} feature(s) are {', '.join(other)}; labels must be points (a window "
            "centred on each) or polygons (windows inside). Buffer lines into polygons first"
        )
    if any(dropped.values()):
        log.warning(
            "%s: left out %d feature(s) without geometry and %d without a class in %r",
            src,
            dropped["no_geometry"],
            dropped["no_class"],
            column,
        )
    return VectorLabels(
        points=frame[kinds.isin(_POINT_TYPES).to_numpy()].reset_index(drop=True),
        polygons=frame[kinds.isin(_POLYGON_TYPES).to_numpy()].reset_index(drop=True),
        class_names=tuple(names),
        source=src,
        n_dropped=dropped,
    )


def to_raster_crs(frame: gpd.GeoDataFrame, data: xr.DataArray, source: str) -> gpd.GeoDataFrame:
    """``frame`` reprojected to the CRS of ``data`` (both without a CRS: used as they are).

    Raises
    ------
    InputError
        Exactly one of the two has a CRS.
    """
    dcrs, lcrs = data.rio.crs, frame.crs
    name = data.attrs.get("source", "the raster")
    if dcrs is None and lcrs is None:
        return frame
    if lcrs is None:
        raise InputError(
            f"{source}: vector labels have no CRS but {name} is in {dcrs}; set the labels' CRS "
            "(GeoDataFrame.set_crs, or ogr2ogr -a_srs)"
        )
    if dcrs is None:
        raise InputError(
            f"{name} has no CRS, so vector labels in {lcrs.to_string()} cannot be placed on it; "
            "assign the raster's CRS (e.g. rio edit-info --crs EPSG:...) or use a label raster"
        )
    return frame.to_crs(dcrs)


def _cut_windows(box: np.ndarray, rows: np.ndarray, cols: np.ndarray, patch: int) -> np.ndarray:
    """Windows ``(n, band, p, p)`` with top-left ``(rows, cols)`` inside ``box``."""
    out = np.empty((rows.size, box.shape[0], patch, patch), dtype=np.float32)
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        out[k] = box[:, r : r + patch, c : c + patch]
    return out


class PointWindows(NamedTuple):
    """What :func:`point_windows` cuts from one raster."""

    chips: np.ndarray  #: ``(n, band, p, p)`` float32, NaN -> 0
    ids: np.ndarray  #: class id of each chip
    centres: np.ndarray  #: ``(n, 2)`` centre pixel ``(row, col)`` of each chip
    inside: np.ndarray  #: per input point: whether it lies on the raster
    n_invalid: int  #: points on the raster whose window has too few valid pixels


def point_windows(
    norm: da.Array,
    transform: Affine,
    points: gpd.GeoDataFrame,
    *,
    patch: int,
    min_valid: float,
) -> PointWindows:
    """The window centred on each point, from a normalised ``(band, y, x)`` Dask array.

    ``points`` must be in the raster's CRS. The pixel holding a point is its window's
    centre pixel: the window's top-left is ``(row - p//2, col - p//2)``. Windows
    reaching past the raster's edge are padded (padding counts as invalid), like
    prediction windows; windows with less than ``min_valid`` valid pixels are left out.
    """
    _, height, width = norm.shape
    grid = RasterGrid(height, width, transform)
    rows, cols = grid.rowcol(points.geometry.x.to_numpy(), points.geometry.y.to_numpy())
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    rows, cols = rows[inside], cols[inside]
    ids = points["id"].to_numpy(dtype=np.int64)[inside]
    if rows.size == 0:
        empty = np.empty((0, norm.shape[0], patch, patch), np.float32)
        return PointWindows(empty, ids, np.empty((0, 2), np.int64), inside, 0)
    half = patch // 2
    padded = da.pad(
        norm,
        ((0, 0), (half, patch - half), (half, patch - half)),
        mode="constant",
        constant_values=np.nan,
    )
    # Group the points by the Dask block of their centre pixel: each group reads only
    # the box around its windows, so memory stays at about one block per task.
    edges_y = np.cumsum((0, *norm.chunks[1]))
    edges_x = np.cumsum((0, *norm.chunks[2]))
    group = (np.searchsorted(edges_y, rows, side="right") - 1) * len(edges_x) + (
        np.searchsorted(edges_x, cols, side="right") - 1
    )
    order = np.argsort(group, kind="stable")
    rows, cols, ids, group = rows[order], cols[order], ids[order], group[order]
    tasks = []
    for g in np.unique(group):
        sel = group == g
        r, c = rows[sel], cols[sel]  # top-left in padded coordinates = centre in raster ones
        r0, c0 = int(r.min()), int(c.min())
        box = padded[:, r0 : int(r.max()) + patch, c0 : int(c.max()) + patch]
        tasks.append(dask.delayed(_cut_windows)(box, r - r0, c - c0, patch))
    chips = np.concatenate(dask.compute(*tasks))
    ok = chip_valid_fraction(chips) >= min_valid
    chips = np.nan_to_num(chips[ok], copy=False, nan=0.0)
    centres = np.stack([rows[ok], cols[ok]], axis=1)
    return PointWindows(chips, ids[ok], centres, inside, int((~ok).sum()))


def _rasterize_block(
    geoms: list[Any], values: np.ndarray, shape: tuple[int, int], transform: Affine
) -> np.ndarray:
    """Class ids (float32, NaN = none or conflicting classes) of one block."""
    out = np.full(shape, np.nan, dtype=np.float32)
    if not geoms:
        return out
    v = values.astype(np.float64) + 1.0  # 1..K, so that 0 means "no polygon"

    def burn(vals: np.ndarray) -> np.ndarray:
        return features.rasterize(
            zip(geoms, vals, strict=True),
            out_shape=shape,
            transform=transform,
            fill=0.0,
            dtype="float64",
            merge_alg=MergeAlg.add,
        )

    # rasterio's in-memory dataset can emit NotGeoreferencedWarning from inside its own
    # catch_warnings, which is not thread-safe: under the library's one lock (georaster_cnn.quiet)
    with ignore_warnings(NotGeoreferencedWarning):
        n = burn(np.ones_like(v))
        s1 = burn(v)
        s2 = burn(v * v)
    # All overlapping features share one class exactly when n * sum(v^2) == sum(v)^2.
    agree = (n > 0) & np.isclose(n * s2, s1 * s1, rtol=0, atol=0.5)
    out[agree] = (s1[agree] / n[agree] - 1.0).astype(np.float32)
    return out


def rasterize_polygons(
    polygons: gpd.GeoDataFrame, like: xr.DataArray, *, source: str = "<GeoDataFrame>"
) -> xr.DataArray:
    """Polygon class ids on the grid of ``like``, as a lazy ``(y, x)`` label array.

    ``polygons`` must be in the CRS of ``like``. A pixel is labelled when its centre
    lies inside a polygon; pixels covered by polygons of different classes are left
    unlabelled (NaN). One task per Dask block of ``like``, each given only the
    polygons that reach its block (spatial index), so the label raster is never
    held whole.
    """
    grid = RasterGrid.of(like)
    data = like.data if isinstance(like.data, da.Array) else da.from_array(np.asarray(like.data))
    chunks_y, chunks_x = data.chunks[-2], data.chunks[-1]
    geoms = polygons.geometry.to_numpy()
    values = polygons["id"].to_numpy(dtype=np.int64)
    tree = shapely.STRtree(geoms)
    rows_of_blocks = []
    y0 = 0
    for h in chunks_y:
        row = []
        x0 = 0
        for w in chunks_x:
            t = grid.window(y0, x0, h, w).transform
            xs, ys = grid.xy(
                np.array([y0, y0, y0 + h, y0 + h]), np.array([x0, x0 + w, x0, x0 + w]), corner=True
            )
            idx = tree.query(shapely.box(xs.min(), ys.min(), xs.max(), ys.max()))
            idx = np.sort(idx)
            block = dask.delayed(_rasterize_block)(list(geoms[idx]), values[idx], (h, w), t)
            row.append(da.from_delayed(block, shape=(h, w), dtype=np.float32))
            x0 += w
        rows_of_blocks.append(row)
        y0 += h
    arr = da.block(rows_of_blocks)
    lab = like.isel(band=0, drop=True) if "band" in like.dims else like
    out = lab.copy(data=arr)
    out.attrs = {"source": source}
    return out
