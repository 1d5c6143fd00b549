"""The cells of training windows in a raster's Dask blocks: which windows a block holds, and their pixels.

Shared by the in-memory windows (:mod:`georaster_cnn.training.windows`) and the window
store (:mod:`georaster_cnn.training.store`): both cut the same windows from the same
blocks, so a store holds exactly the windows an in-memory run trains on.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from georaster_cnn.chips import plan_blocks, valid_fraction, window_view
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.training.vector_labels import VectorLabels, rasterize_polygons, to_raster_crs

__all__ = ["as_dask", "block_cells", "cut_cells", "grid_blocks", "grid_labels"]

#: Windows copied at a time: bounds the temporaries of one block.
_BATCH = 4096


def _copy_windows(windows: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Windows ``(n, band, p, p)`` float32 of a window view, NaN kept; a batch at a time."""
    bands, _, _, p, q = windows.shape
    out = np.empty((rows.size, bands, p, q), np.float32)
    for i in range(0, rows.size, _BATCH):
        sl = slice(i, i + _BATCH)
        out[sl] = windows[:, rows[sl], cols[sl]].transpose(1, 0, 2, 3)
    return out


def block_cells(
    block: np.ndarray,
    *,
    patch: int,
    stride: int,
    halo: int,
    min_valid: float,
    min_cover: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The usable windows of one overlapped block (last band = labels), none copied.

    A window is labelled with its centre pixel's class; with ``min_cover > 0`` it also
    needs that share of its pixels labelled with the same class (polygon labels).
    Returns the windows' cells ``(row, col)`` in the block, in row-major order, and
    their centre labels (float64).
    """
    data, labels = block[:-1], block[-1]
    ny = (block.shape[1] - 2 * halo) // stride
    nx = (block.shape[2] - 2 * halo) // stride
    frac = valid_fraction(~np.isnan(data).any(axis=0), patch, stride, (ny, nx))
    c = patch // 2  # a window's centre pixel within the block: s*i + patch//2
    centre = labels[c : c + (ny - 1) * stride + 1 : stride, c : c + (nx - 1) * stride + 1 : stride]
    usable = (frac >= min_valid) & np.isfinite(centre)
    if min_cover > 0:
        for k in np.unique(centre[usable]):
            cover = valid_fraction(labels == k, patch, stride, (ny, nx))
            usable &= (centre != k) | (cover >= min_cover)
    rows, cols = np.nonzero(usable)
    return rows, cols, centre[rows, cols].astype(np.float64)


def cut_cells(
    block: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, patch: int, stride: int, halo: int
) -> np.ndarray:
    """Raw windows ``(n, band, p, p)`` at the cells of one overlapped block (last band = labels)."""
    ny = (block.shape[1] - 2 * halo) // stride
    nx = (block.shape[2] - 2 * halo) // stride
    return _copy_windows(window_view(block[:-1], patch, stride, (ny, nx)), rows, cols)


def as_dask(arr: xr.DataArray) -> da.Array:
    return arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.values)


def grid_blocks(
    raw: da.Array, labels: xr.DataArray, grid: PatchGrid
) -> tuple[list[Any], list[tuple[int, int]]]:
    """Every overlapped block of raster + labels (lazy), and each block's first output cell."""
    stacked = da.concatenate([raw, as_dask(labels)[None].astype(np.float32)], axis=0)
    plan = plan_blocks(stacked, grid)
    starts_y = np.cumsum((0, *plan.cell_chunks[0]))
    starts_x = np.cumsum((0, *plan.cell_chunks[1]))
    blocks, offsets = [], []
    for (_, by, bx), blk in np.ndenumerate(plan.blocks.to_delayed(optimize_graph=False)):
        blocks.append(blk)
        offsets.append((int(starts_y[by]), int(starts_x[bx])))
    return blocks, offsets


def grid_labels(
    data: xr.DataArray, item: xr.DataArray | VectorLabels, min_cover: float
) -> tuple[xr.DataArray, float] | None:
    """A raster's labels on its grid and their ``min_cover`` (0 for a label raster); ``None``: points only.

    Grid labels are a label raster, or polygons rasterised lazily onto the raster's
    grid (their windows also need ``min_cover``).
    """
    if not isinstance(item, VectorLabels):
        return item, 0.0
    if len(item.polygons):
        polys = to_raster_crs(item.polygons, data, item.source)
        return rasterize_polygons(polys, data, source=item.source), min_cover
    return None
