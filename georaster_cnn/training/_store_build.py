"""Building a window store: the labelled windows of rasters cut straight into Zarr shards.

Two passes over each raster, both Dask graphs on the active scheduler (the workers of
a cluster when one is given):

1. **index**: per block, which windows are usable and their centre labels
   (:func:`~georaster_cnn.training._cells.block_cells`, nothing copied), together with the
   per-channel statistics. Only these few numbers per window come back to this process:
   the split (:func:`~georaster_cnn.training.splits.blocked_split`) is made from them, with the
   same random draws as the in-memory path.
2. **cut**: one task per shard of the store cuts the shard's windows from the blocks
   that hold them, normalises them and writes the shard; a shard is written by exactly
   one task, whole, so tasks never share a shard. No window passes through this process.

Point labels are the exception: their windows (one per point, few next to a grid's)
are cut in this process, a shard's worth of points at a time, and written before the
grid shards (which then complete the shard they share with the last points).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr

from georaster_cnn.geometry import PatchGrid
from georaster_cnn.stats import ChannelStats, common_band_names, merged_stats, partial_stats
from georaster_cnn.training._cells import as_dask, block_cells, cut_cells, grid_blocks, grid_labels
from georaster_cnn.training.splits import blocked_split, random_split_if_unblocked
from georaster_cnn.training.vector_labels import VectorLabels, point_windows, to_raster_crs
from georaster_cnn.training.windows import WindowSpec, normalise_in_place

__all__ = ["Index", "cut_into", "index_windows"]

log = logging.getLogger(__name__)


@dataclass
class _Grid:
    """One raster's grid windows as pass 1 found them: per block, cells and labels."""

    blocks: list[Any]  # lazy overlapped blocks
    cells: list[tuple[np.ndarray, np.ndarray]]  # per block: rows, cols (block cells)
    offsets: list[tuple[int, int]]  # per block: first output cell
    halo: int


@dataclass
class _Points:
    """One raster's point labels, in chunks of at most a shard's worth of points."""

    data: xr.DataArray
    chunks: list[Any]  # GeoDataFrames in the raster's CRS
    counts: list[int]  # windows each chunk gives


@dataclass
class Index:
    """Every labelled window of the rasters, known by its place, class and split.

    ``labels``, ``centres``, ``raster`` and ``val`` hold the kept windows (training and
    validation) in store order; ``dropped`` the labels of training windows dropped in
    the buffer around validation blocks.
    """

    labels: np.ndarray
    centres: np.ndarray
    raster: np.ndarray
    val: np.ndarray
    dropped: np.ndarray
    stats: ChannelStats
    split: dict[str, Any]
    grids: list[_Grid | None]
    points: list[_Points | None]
    keep: list[np.ndarray]  # per raster: kept mask over its windows (points, then grid)

    def __len__(self) -> int:
        return len(self.labels)


def _grid_pass(
    data: xr.DataArray, item: Any, spec: WindowSpec, names: tuple[str, ...]
) -> tuple[_Grid | None, list[ChannelStats], list[np.ndarray]]:
    """Pass 1 over one raster: its statistics, and per block its usable cells and labels."""
    raw = as_dask(data)
    stats_tasks = partial_stats(raw, names)
    found = grid_labels(data, item, spec.min_cover)
    if found is None:
        (parts,) = dask.compute(stats_tasks)
        return None, list(parts), []
    labels, min_cover = found
    grid = PatchGrid(data.sizes["y"], data.sizes["x"], patch=spec.patch, stride=spec.stride)
    blocks, offsets = grid_blocks(raw, labels, grid)
    geom = {"patch": grid.patch, "stride": grid.stride, "halo": grid.halo_before}
    tasks = [
        dask.delayed(block_cells)(b, **geom, min_valid=spec.min_valid, min_cover=min_cover)
        for b in blocks
    ]
    found_cells, parts = dask.compute(tasks, stats_tasks)
    cells = [(r, c) for r, c, _ in found_cells]
    centres = [
        np.stack([r + oy, c + ox], axis=1) * grid.stride + grid.center_offset
        for (r, c, _), (oy, ox) in zip(found_cells, offsets, strict=True)
    ]
    labs = [lab for _, _, lab in found_cells]
    meta = [np.concatenate([np.empty(0), *labs]), np.concatenate([np.empty((0, 2), int), *centres])]
    return _Grid(blocks, cells, offsets, grid.halo_before), list(parts), meta


def _point_pass(
    data: xr.DataArray, vl: VectorLabels, stats: ChannelStats, spec: WindowSpec, chunk: int
) -> tuple[_Points, np.ndarray, np.ndarray]:
    """Pass 1 over one raster's points, a chunk at a time: their labels and centres."""
    pts = to_raster_crs(vl.points, data, vl.source)
    norm = _normalised(data, stats)
    chunks, counts, labels, centres, invalid = [], [], [], [], 0
    for i in range(0, len(pts), chunk):
        part = pts.iloc[i : i + chunk]
        pw = point_windows(
            norm, data.rio.transform(), part, patch=spec.patch, min_valid=spec.min_valid
        )
        chunks.append(part.iloc[np.flatnonzero(pw.inside)])
        counts.append(len(pw.ids))
        labels.append(pw.ids.astype(np.float64))
        centres.append(pw.centres)
        invalid += pw.n_invalid
    if invalid:
        log.warning(
            "%s: %d point window(s) on %s have less than %.0f %% valid pixels; left out",
            vl.source, invalid, data.attrs.get("source", "the raster"), 100 * spec.min_valid,
        )  # fmt: skip
    lab = np.concatenate([np.empty(0), *labels])
    cen = np.concatenate([np.empty((0, 2), np.int64), *centres])
    return _Points(data, chunks, counts), lab, cen


def _normalised(data: xr.DataArray, stats: ChannelStats) -> Any:
    from georaster_cnn.stats import normalize

    return normalize(data, stats).data


def index_windows(
    datas: Sequence[xr.DataArray],
    items: Sequence[xr.DataArray | VectorLabels],
    spec: WindowSpec,
    *,
    val_block: int,
    val_fraction: float,
    chunk: int,
) -> Index:
    """Pass 1 over all rasters: statistics, the usable windows and the split.

    The split is the in-memory path's (:func:`~georaster_cnn.training.windows.training_windows`):
    the same seed gives the same validation blocks and the same windows.
    """
    names = common_band_names(datas)
    grids: list[_Grid | None] = []
    metas: list[list[np.ndarray]] = []
    stats_parts: list[ChannelStats] = []
    for d, item in zip(datas, items, strict=True):
        g, parts, meta = _grid_pass(d, item, spec, names)
        grids.append(g)
        metas.append(meta)
        stats_parts.extend(parts)
    stats = merged_stats(stats_parts)
    rng = np.random.default_rng(spec.seed)
    points: list[_Points | None] = []
    labels, centres, raster, is_val, dropped, keep = [], [], [], [], [], []
    for i, (d, item) in enumerate(zip(datas, items, strict=True)):
        lab, cen = [], []
        pts: _Points | None = None
        if isinstance(item, VectorLabels) and len(item.points):
            pts, pl, pc = _point_pass(d, item, stats, spec, chunk)
            lab.append(pl)
            cen.append(pc)
        points.append(pts)
        if metas[i]:
            lab.append(metas[i][0])
            cen.append(metas[i][1])
        w_lab = np.concatenate([np.empty(0), *lab])
        w_cen = np.concatenate([np.empty((0, 2), np.int64), *cen]).astype(np.int64)
        val, drop = blocked_split(
            w_cen, (d.sizes["y"], d.sizes["x"]), patch=spec.patch, block=val_block,
            fraction=val_fraction, rng=rng, labels=w_lab,
        )  # fmt: skip
        dropped.append(w_lab[drop])
        keep.append(~drop)
        labels.append(w_lab[~drop])
        centres.append(w_cen[~drop])
        raster.append(np.full(int((~drop).sum()), i, np.int32))
        is_val.append(val[~drop])
    split: dict[str, Any] = {
        "kind": "spatial_blocks", "block_px": val_block, "val_fraction": val_fraction,
        "buffer_px": spec.patch - 1, "n_dropped_in_buffer": sum(len(x) for x in dropped),
    }  # fmt: skip
    all_labels = np.concatenate([np.empty(0), *labels])
    val, split = random_split_if_unblocked(np.concatenate(is_val), split, rng, all_labels)
    return Index(
        all_labels, np.concatenate([np.empty((0, 2), np.int64), *centres]),
        np.concatenate([np.empty(0, np.int32), *raster]), val,
        np.concatenate([np.empty(0), *dropped]), stats, split, grids, points, keep,
    )  # fmt: skip


def _write_shard(
    target: Any, stats: ChannelStats, patch: int, stride: int, pieces: list[Any]
) -> int:
    """Cut, normalise and write one shard's windows (a task; one per shard).

    ``pieces`` are ``(store position, block, rows, cols, halo)``; adjacent pieces are
    written together.
    """
    runs: list[tuple[int, list[np.ndarray]]] = []
    for pos, block, rows, cols, halo in pieces:
        chips = cut_cells(block, rows, cols, patch=patch, stride=stride, halo=halo)
        normalise_in_place(chips, stats)  # a few MiB of temporaries, not a shard's
        if runs and runs[-1][0] + sum(len(c) for c in runs[-1][1]) == pos:
            runs[-1][1].append(chips)
        else:
            runs.append((pos, [chips]))
    for pos, parts in runs:
        merged = np.concatenate(parts)
        target[pos : pos + len(merged)] = merged
    return sum(sum(len(c) for c in parts) for _, parts in runs)


def _grid_pieces(
    index: Index, spec: WindowSpec
) -> list[tuple[int, Any, np.ndarray, np.ndarray, int]]:
    """Every kept grid window's block, as ``(store position, block, rows, cols, halo)`` runs."""
    runs = []
    pos = 0
    for i, grid in enumerate(index.grids):
        keep = index.keep[i]
        pts = index.points[i]
        n_points = sum(pts.counts) if pts is not None else 0
        pos += int(keep[:n_points].sum())
        if grid is None:
            continue
        at = n_points
        for block, (rows, cols) in zip(grid.blocks, grid.cells, strict=True):
            k = keep[at : at + rows.size]
            at += rows.size
            if k.any():
                runs.append((pos, block, rows[k], cols[k], grid.halo))
                pos += int(k.sum())
    return runs


def _write_points(index: Index, target: Any, spec: WindowSpec) -> None:
    """The point windows, cut in this process a chunk at a time, written at their places."""
    pos = 0
    for i, pts in enumerate(index.points):
        keep = index.keep[i]
        if pts is not None:
            norm = _normalised(pts.data, index.stats)
            at = 0
            for part, count in zip(pts.chunks, pts.counts, strict=True):
                k = keep[at : at + count]
                at += count
                if not k.any():
                    continue
                pw = point_windows(
                    norm, pts.data.rio.transform(), part, patch=spec.patch,
                    min_valid=spec.min_valid,
                )  # fmt: skip
                target[pos : pos + int(k.sum())] = pw.chips[k]
                pos += int(k.sum())
        grid = index.grids[i]
        if grid is not None:
            n_points = sum(pts.counts) if pts is not None else 0
            pos += int(keep[n_points:].sum())


def cut_into(target: Any, index: Index, spec: WindowSpec, shard: int) -> None:
    """Pass 2: write every kept window into ``target`` (a Zarr array sharded by ``shard``)."""
    _write_points(index, target, spec)
    runs = _grid_pieces(index, spec)
    by_shard: dict[int, list[Any]] = {}
    for pos, block, rows, cols, halo in runs:
        done = 0
        while done < rows.size:
            at = pos + done
            k = at // shard
            take = min(rows.size - done, (k + 1) * shard - at)
            sl = slice(done, done + take)
            by_shard.setdefault(k, []).append((at, block, rows[sl], cols[sl], halo))
            done += take
    tasks = [
        dask.delayed(_write_shard)(target, index.stats, spec.patch, spec.stride, pieces)
        for _, pieces in sorted(by_shard.items())
    ]
    written = sum(dask.compute(*tasks))
    log.info("wrote %d grid windows in %d shard task(s)", written, len(tasks))
