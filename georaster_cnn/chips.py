"""Cutting a Dask array into windows, block by block, with the halo windows need.

The prediction and the training-chip extraction share this machinery so both see
exactly the windows that :class:`~georaster_cnn.geometry.PatchGrid` defines:

1. the array is padded (with NaN, i.e. invalid) at its far edges to a whole number
   of output cells and rechunked so every chunk is a whole number of cells;
2. :func:`dask.array.overlap.overlap` gives each block a NaN-padded halo of
   ``halo_before`` pixels on every side, so window ``(i, j)`` of a block starts at
   block pixel ``(s*i, s*j)``;
3. inside a block, :func:`numpy.lib.stride_tricks.sliding_window_view` exposes all
   windows without copying, and a summed-area table gives each window's valid
   fraction in O(1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import dask.array as da
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from georaster_cnn.geometry import PatchGrid

__all__ = [
    "BlockPlan",
    "iter_batches",
    "plan_blocks",
    "valid_fraction",
    "window_view",
]

#: Default block side, in output cells, for prediction (32 x 32 cells = 1024 windows).
DEFAULT_BLOCK_CELLS = 32


def _axis_chunks(n_cells: int, cells_per_block: int, min_cells: int) -> tuple[int, ...]:
    """Chunk sizes (in cells) along one axis: ~``cells_per_block``, none below ``min_cells``."""
    cells_per_block = max(cells_per_block, min_cells)
    chunks = [cells_per_block] * (n_cells // cells_per_block)
    rest = n_cells - sum(chunks)
    if rest:
        if rest < min_cells and chunks:
            chunks[-1] += rest
        else:
            chunks.append(rest)
    return tuple(chunks)


@dataclass(frozen=True)
class BlockPlan:
    """A padded, rechunked and overlapped Dask array ready for window extraction.

    Attributes
    ----------
    blocks
        Overlapped array ``(band, Y, X)``; block ``(0, a, b)`` holds the pixels of
        output cells ``cell_chunks`` plus a halo of ``grid.halo_before`` pixels.
    cell_chunks
        Output-cell chunks ``(y_chunks, x_chunks)`` of the padded grid; the real
        output is the first ``grid.out_shape`` cells.
    grid
        The geometry the plan was made for.
    """

    blocks: da.Array
    cell_chunks: tuple[tuple[int, ...], tuple[int, ...]]
    grid: PatchGrid


def plan_blocks(
    data: da.Array, grid: PatchGrid, *, block_cells: int = DEFAULT_BLOCK_CELLS
) -> BlockPlan:
    """Pad, rechunk and overlap ``data`` (``band, y, x``; NaN = invalid) for ``grid``.

    Parameters
    ----------
    data
        Float Dask array whose invalid pixels are NaN.
    grid
        Window/cell geometry; ``grid.height``/``grid.width`` must match ``data``.
    block_cells
        Target block side in output cells.

    Returns
    -------
    BlockPlan
    """
    _, h, w = data.shape
    if (h, w) != (grid.height, grid.width):
        raise ValueError(f"grid is for {grid.height} x {grid.width}, data is {h} x {w}")
    s, halo = grid.stride, grid.halo_before
    # Every chunk must be at least as large as the halo for dask's overlap.
    min_cells = max(1, math.ceil(halo / s))
    chunks_cells = []
    pads = []
    for n_px in (h, w):
        n_cells = max(math.ceil(n_px / s), min_cells)
        chunks_cells.append(_axis_chunks(n_cells, block_cells, min_cells))
        pads.append(n_cells * s - n_px)
    if any(pads):
        data = da.pad(
            data, ((0, 0), (0, pads[0]), (0, pads[1])), mode="constant", constant_values=np.nan
        )
    data = data.rechunk(
        (
            data.shape[0],
            tuple(c * s for c in chunks_cells[0]),
            tuple(c * s for c in chunks_cells[1]),
        )
    )
    if halo:
        data = da.overlap.overlap(
            data, depth={0: 0, 1: halo, 2: halo}, boundary={0: "none", 1: np.nan, 2: np.nan}
        )
    return BlockPlan(blocks=data, cell_chunks=(chunks_cells[0], chunks_cells[1]), grid=grid)


def valid_fraction(
    valid: np.ndarray, patch: int, stride: int, shape: tuple[int, int]
) -> np.ndarray:
    """Fraction of valid pixels in each window of a block, via a summed-area table.

    Parameters
    ----------
    valid
        Boolean ``(Y, X)`` validity of the overlapped block.
    patch, stride
        Window size and step.
    shape
        Number of windows ``(ny, nx)``; window ``(i, j)`` starts at ``(s*i, s*j)``.
    """
    ny, nx = shape
    # int32 is exact up to 2**31 pixels per block, far above any block size used here.
    sat = np.zeros((valid.shape[0] + 1, valid.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(valid, axis=0, dtype=np.int32), axis=1, out=sat[1:, 1:])
    r0 = np.arange(ny) * stride
    c0 = np.arange(nx) * stride
    r1, c1 = r0 + patch, c0 + patch
    total = sat[np.ix_(r1, c1)] - sat[np.ix_(r0, c1)] - sat[np.ix_(r1, c0)] + sat[np.ix_(r0, c0)]
    return total / float(patch * patch)


def window_view(block: np.ndarray, patch: int, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """All windows of an overlapped block as a view ``(band, ny, nx, patch, patch)`` (no copy)."""
    ny, nx = shape
    view = sliding_window_view(block, (patch, patch), axis=(1, 2))
    return view[:, : (ny - 1) * stride + 1 : stride, : (nx - 1) * stride + 1 : stride]


def iter_batches(
    windows: np.ndarray, rows: np.ndarray, cols: np.ndarray, batch_size: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(slice into rows/cols, chips)`` with chips ``(n, band, p, p)`` float32, NaN -> 0.

    Only ``batch_size`` windows are copied at a time, so memory per block stays bounded.
    """
    for start in range(0, len(rows), batch_size):
        sl = slice(start, start + batch_size)
        chips = windows[:, rows[sl], cols[sl]]  # fancy indexing copies: (band, n, p, p)
        chips = np.ascontiguousarray(chips.transpose(1, 0, 2, 3), dtype=np.float32)
        np.nan_to_num(chips, copy=False, nan=0.0)
        yield sl, chips
