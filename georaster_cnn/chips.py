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

Step 2 makes neighbouring blocks share the input chunks their halos come from, so
Dask keeps about two rows of input chunks in memory: memory then grows with the
raster's width. An array opened by a reader that can read any window itself (a
GDAL raster from :func:`~georaster_cnn.io.reader.open_raster`) is registered with
:func:`register_windowed`; :func:`plan_blocks` then reads each block together with
its halo straight from the file instead (the halo is read twice, nothing is
shared), and memory stays flat however wide the raster is.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import dask.array as da
import numpy as np
from dask.base import tokenize
from numpy.lib.stride_tricks import sliding_window_view

from georaster_cnn.geometry import PatchGrid

__all__ = [
    "BLOCK_PX",
    "BlockPlan",
    "iter_batches",
    "min_valid_count",
    "plan_blocks",
    "register_windowed",
    "valid_fraction",
    "window_view",
]

#: Target block side in input pixels, the one size every blockwise step aims at: the
#: chunks a reader picks when the caller does not choose, the blocks of per-window
#: prediction (about this many pixels squared per Dask task), and the largest block
#: of dense evaluation.
BLOCK_PX = 1024

#: Default block side, in output cells, for prediction (32 x 32 cells = 1024 windows).
DEFAULT_BLOCK_CELLS = 32


class WindowedSource(Protocol):
    """An array-like that reads any ``[bands, rows, cols]`` window of slices itself."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray: ...


#: Dask array name -> the source that reads its windows directly. A Dask array's name
#: changes with every operation on it, so a hit means the array is the untouched
#: source. Bounded: the oldest registrations are forgotten first.
_WINDOWED: OrderedDict[str, WindowedSource] = OrderedDict()
_WINDOWED_MAX = 256


def register_windowed(data: da.Array, source: WindowedSource) -> None:
    """Record that ``source[key]`` reads ``data[key]`` directly (see the module notes)."""
    if tuple(source.shape) != tuple(data.shape):
        raise ValueError(f"source shape {source.shape} is not the array's {data.shape}")
    _WINDOWED[data.name] = source
    _WINDOWED.move_to_end(data.name)
    while len(_WINDOWED) > _WINDOWED_MAX:
        _WINDOWED.popitem(last=False)


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
    cell_chunks = (chunks_cells[0], chunks_cells[1])
    source = _WINDOWED.get(data.name)
    if source is not None:
        return BlockPlan(
            blocks=_halo_reads(data, source, grid, cell_chunks), cell_chunks=cell_chunks, grid=grid
        )
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
    return BlockPlan(blocks=data, cell_chunks=cell_chunks, grid=grid)


class _HaloBlocks:
    """The overlapped block array of a plan, each block read with its halo from ``source``.

    Block ``(a, b)`` of the overlapped array covers source rows ``y0 - halo`` to
    ``y1 + halo`` (and the same for columns), where ``y0:y1`` are the block's own
    cells' pixels; what lies outside the source is NaN, as dask's overlap with a
    NaN boundary and the NaN padding give.
    """

    def __init__(
        self,
        source: WindowedSource,
        edges: tuple[tuple[int, ...], tuple[int, ...]],
        halo: int,
    ) -> None:
        self.source = source
        self.edges = edges  # block edges in source pixels, per axis: (0, e1, ..., n_px_padded)
        self.halo = halo
        bands = int(source.shape[0])
        sides = [(len(e) - 1) * 2 * halo + e[-1] for e in edges]
        self.shape = (bands, sides[0], sides[1])
        self.dtype = np.dtype("float32")
        self.ndim = 3

    def _block_window(self, axis: int, start: int, stop: int) -> tuple[int, int]:
        """Source pixels ``[lo, hi)`` of the overlapped range ``[start, stop)`` (one block)."""
        edges, h = self.edges[axis], self.halo
        # overlapped block k starts at edges[k] + 2*h*k
        starts = [e + 2 * h * k for k, e in enumerate(edges[:-1])]
        k = bisect.bisect_right(starts, start) - 1
        offset = edges[k] - h - starts[k]
        lo, hi = start + offset, stop + offset
        if hi > edges[k + 1] + h:
            raise IndexError(f"window {start}:{stop} spans more than one block")
        return lo, hi

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        bsl, ysl, xsl = key
        (y0, y1, ystep), (x0, x1, xstep) = (
            sl.indices(n) for sl, n in ((ysl, self.shape[1]), (xsl, self.shape[2]))
        )
        if ystep != 1 or xstep != 1:  # not asked by the plan's users; read, then step
            whole = self[bsl, slice(y0, y1), slice(x0, x1)]
            return whole[:, ::ystep, ::xstep]
        (y_lo, y_hi), (x_lo, x_hi) = self._block_window(0, y0, y1), self._block_window(1, x0, x1)
        bands = range(self.shape[0])[bsl]
        out = np.full((len(bands), y_hi - y_lo, x_hi - x_lo), np.nan, dtype=np.float32)
        _, height, width = self.source.shape
        ry0, ry1 = max(y_lo, 0), min(y_hi, height)
        rx0, rx1 = max(x_lo, 0), min(x_hi, width)
        if ry1 > ry0 and rx1 > rx0:
            out[:, ry0 - y_lo : ry1 - y_lo, rx0 - x_lo : rx1 - x_lo] = self.source[
                bsl, slice(ry0, ry1), slice(rx0, rx1)
            ]
        return out


def _halo_reads(
    data: da.Array,
    source: WindowedSource,
    grid: PatchGrid,
    cell_chunks: tuple[tuple[int, ...], tuple[int, ...]],
) -> da.Array:
    """The plan's overlapped blocks, one direct read of ``source`` per block (no sharing)."""
    s, halo = grid.stride, grid.halo_before
    edges = tuple(tuple(int(e) * s for e in np.cumsum((0, *c))) for c in cell_chunks)
    blocks = _HaloBlocks(source, (edges[0], edges[1]), halo)
    chunks = (
        (data.shape[0],),
        *(tuple(c * s + 2 * halo for c in axis) for axis in cell_chunks),
    )
    return da.from_array(
        blocks,
        chunks=chunks,
        name="halo-reads-" + tokenize(data.name, cell_chunks, s, halo),
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )


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


def min_valid_count(patch: int, min_valid: float) -> int:
    """The fewest valid pixels a ``patch x patch`` window needs: the smallest count ``c``
    with ``c / patch**2 >= min_valid``, by the arithmetic of :func:`valid_fraction`.

    For graphs that compare whole counts (the exported dense model) and must keep
    exactly the windows :func:`valid_fraction` keeps. ``patch**2 + 1`` when no count
    reaches ``min_valid``.
    """
    area = patch * patch
    c = max(0, min(area + 1, math.ceil(min_valid * area) - 1))
    while c <= area and c / float(area) < min_valid:
        c += 1
    return c


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
