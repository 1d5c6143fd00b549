"""Training windows: labelled windows cut from rasters, and their training/validation split.

Raster windows are cut by the blockwise machinery of prediction
(:mod:`georaster_cnn.chips`) on the stride grid of
:class:`~georaster_cnn.geometry.PatchGrid`; a window's label is the class of its
centre pixel. Vector labels (:mod:`georaster_cnn.training.vector_labels`) are reprojected to
each raster's CRS: points give the window centred on each point, polygons are
rasterised onto the raster's grid and give the windows inside them.

Each raster is read once: its windows are cut from the raw pixels in the same Dask
computation that gathers its per-channel statistics, and normalised afterwards, in
memory, with the statistics of all rasters (:func:`training_windows`). Point windows
are the exception: they are cut from normalised data after that pass (see
:func:`~georaster_cnn.training.vector_labels.point_windows`), reading only the blocks that
hold points.

Validation is spatially blocked (:mod:`georaster_cnn.training.splits`): square blocks of
``val_block`` pixels, chosen to cover the classes where they can, go to validation
whole, and training windows within a patch of them are dropped, so that no validation
window overlaps a training window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from georaster_cnn.errors import InputError
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.options import (
    check_fraction,
    check_positive,
    patch_size_problem,
    training_stride,
)
from georaster_cnn.stats import (
    ChannelStats,
    common_band_names,
    merged_stats,
    normalize,
    partial_stats,
)
from georaster_cnn.training._cells import as_dask, block_cells, cut_cells, grid_blocks, grid_labels
from georaster_cnn.training.chipdata import normalize_chips
from georaster_cnn.training.splits import blocked_split, random_split_if_unblocked
from georaster_cnn.training.vector_labels import (
    VectorLabels,
    point_windows,
    to_raster_crs,
)

__all__ = [
    "TrainingWindows",
    "WindowSpec",
    "Windows",
    "grid_windows",
    "normalise_in_place",
    "training_windows",
    "window_spec",
]

#: Bytes of windows normalised at a time (small enough to stay in the CPU caches).
_NORMALISE_BYTES = 2**23

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Windows:
    """Labelled windows of one raster.

    Attributes
    ----------
    chips
        ``(n, band, p, p)`` float32 pixels: raw with NaN where invalid as cut, or
        normalised (NaN -> 0).
    labels
        ``(n,)`` float64 class ids, as the labels hold them (checked later).
    centres
        ``(n, 2)`` int64 centre pixel ``(row, col)`` of each window.
    """

    chips: np.ndarray
    labels: np.ndarray
    centres: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def concat(cls, parts: Sequence[Windows], *, bands: int, patch: int) -> Windows:
        """The windows of ``parts``, in order (none: no windows of ``bands x patch x patch``)."""
        if not parts:
            empty = np.empty((0, bands, patch, patch), np.float32)
            return cls(empty, np.empty(0, np.float64), np.empty((0, 2), np.int64))
        if len(parts) == 1:  # no copy
            return parts[0]
        return cls(
            np.concatenate([p.chips for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.centres for p in parts]),
        )

    def where(self, mask: np.ndarray) -> Windows:
        """The windows where ``mask`` is true."""
        return Windows(self.chips[mask], self.labels[mask], self.centres[mask])


@dataclass(frozen=True)
class WindowSpec:
    """How training windows are cut.

    Attributes
    ----------
    patch, stride
        Window side and spacing on the grid, in pixels.
    min_valid
        Minimum valid fraction of a window.
    min_cover
        Polygon labels: minimum share of a window inside polygons of its class.
    max_windows
        Memory cap per raster (and for the points of one raster): beyond it a
        seeded random subset of the labelled windows is kept.
    seed
        Seeds those subsets.
    """

    patch: int
    stride: int
    min_valid: float
    min_cover: float
    max_windows: int
    seed: int

    @staticmethod
    def window_cap(datas: Sequence[xr.DataArray], patch: int, max_bytes: int) -> int:
        """Windows per raster so that all rasters' float32 windows fit in ``max_bytes``."""
        chip_bytes = datas[0].sizes["band"] * patch * patch * 4
        return max(1, max_bytes // chip_bytes // len(datas))


def window_spec(
    datas: list[xr.DataArray],
    *,
    patch_size: int,
    stride: int | None,
    min_valid: float,
    min_cover: float,
    val_block: int,
    max_chip_bytes: int,
    seed: int,
) -> WindowSpec:
    """:func:`train`'s window options, checked; the memory cap shared out over the rasters."""
    if not datas:
        raise InputError("no raster to train on")
    check_positive("val_block", val_block, unit=" pixel")
    problem = patch_size_problem(patch_size, max(d.sizes.get("band", 1) for d in datas))
    if problem is not None:  # before any window is cut, not when the network is built
        raise InputError(f"patch_size {problem}")
    stride = training_stride(check_positive("patch_size", patch_size), stride)
    cap = WindowSpec.window_cap(datas, patch_size, max_chip_bytes)
    return WindowSpec(
        patch_size, stride, min_valid, check_fraction("min_cover", min_cover), cap, seed
    )


@dataclass(frozen=True)
class TrainingWindows:
    """The normalised windows of all rasters and their split (see :func:`training_windows`).

    Attributes
    ----------
    windows
        Normalised windows (NaN -> 0), raster after raster.
    val
        Validation mask.
    stats
        Per-channel statistics of all rasters (every valid pixel, not only windows).
    split
        Provenance of the split (``kind``, ``block_px``, ...).
    dropped
        Labels (as the labels hold them) of the training windows dropped in the
        buffer around validation blocks.
    """

    windows: Windows
    val: np.ndarray
    stats: ChannelStats
    split: dict[str, Any]
    dropped: np.ndarray


# --------------------------------------------------------------------------- grid windows


def _block_chips(
    block: np.ndarray,
    *,
    patch: int,
    stride: int,
    halo: int,
    min_valid: float,
    keep: float,
    seed: tuple[int, ...],
    min_cover: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw chips, labels and cell positions of one block's windows (:func:`block_cells`).

    With ``keep < 1`` a seeded random fraction of the block's windows is kept.
    """
    geom = {"patch": patch, "stride": stride, "halo": halo}
    rows, cols, centre = block_cells(block, **geom, min_valid=min_valid, min_cover=min_cover)
    if keep < 1.0:
        pick = np.random.default_rng(seed).random(rows.size) < keep
        rows, cols, centre = rows[pick], cols[pick], centre[pick]
    return cut_cells(block, rows, cols, **geom), centre, np.stack([rows, cols], axis=1)


def _keep_fraction(labels: xr.DataArray, grid: PatchGrid, max_windows: int, source: str) -> float:
    """Share of a raster's labelled windows to keep under the memory cap.

    Counting the labelled window centres reads the labels; it is skipped when the
    raster has no more cells than the cap, since then every window fits.
    """
    if math.prod(grid.out_shape) <= max_windows:
        return 1.0
    c = grid.center_offset
    centres = as_dask(labels)[c :: grid.stride, c :: grid.stride]
    n_labelled = int(da.isfinite(centres).sum().compute())
    keep = min(1.0, max_windows / max(1, n_labelled))
    if keep < 1.0:
        log.info(
            "%s: keeping a random %.1f %% of %d labelled windows (memory cap)",
            source,
            100 * keep,
            n_labelled,
        )
    return keep


def _grid_tasks(
    raw: da.Array,
    labels: xr.DataArray,
    grid: PatchGrid,
    spec: WindowSpec,
    *,
    keep: float,
    min_cover: float,
) -> tuple[list[Any], list[tuple[int, int]]]:
    """Lazy ``_block_chips`` of every block, and each block's first output cell."""
    blocks, offsets = grid_blocks(raw, labels, grid)
    n_x = len({o[1] for o in offsets})
    tasks = [
        dask.delayed(_block_chips)(
            blk, patch=grid.patch, stride=grid.stride, halo=grid.halo_before,
            min_valid=spec.min_valid, keep=keep, seed=(spec.seed, i // n_x, i % n_x),
            min_cover=min_cover,
        )
        for i, blk in enumerate(blocks)
    ]  # fmt: skip
    return tasks, offsets


def _assemble(
    parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    offsets: Sequence[tuple[int, int]],
    grid: PatchGrid,
) -> Windows:
    """One raster's windows from its blocks' results, with centres in raster pixels."""
    xs, ys, cs = [], [], []
    for (x, y, cells), offset in zip(parts, offsets, strict=True):
        xs.append(x)
        ys.append(y)
        cs.append((cells + np.array(offset)) * grid.stride + grid.center_offset)
    return Windows(np.concatenate(xs), np.concatenate(ys), np.concatenate(cs))


def grid_windows(
    data: xr.DataArray,
    labels: xr.DataArray,
    grid: PatchGrid,
    *,
    min_valid: float,
    max_windows: int,
    seed: int = 0,
    min_cover: float = 0.0,
) -> Windows:
    """The labelled windows of one raster on the stride grid, raw (NaN where invalid).

    Window ``(i, j)`` is the one of :meth:`PatchGrid.window_origin`; it is kept when
    its valid fraction is at least ``min_valid`` and its centre pixel is labelled
    (and, with ``min_cover > 0``, that share of it carries the centre's class).

    Parameters
    ----------
    data
        ``(band, y, x)`` raster.
    labels
        ``(y, x)`` class ids on the raster's grid, NaN = unlabelled.
    grid
        The window geometry.
    min_valid, min_cover, max_windows, seed
        As in :class:`WindowSpec`.
    """
    spec = WindowSpec(grid.patch, grid.stride, min_valid, min_cover, max_windows, seed)
    source = str(data.attrs.get("source", "raster"))
    keep = _keep_fraction(labels, grid, max_windows, source)
    tasks, offsets = _grid_tasks(as_dask(data), labels, grid, spec, keep=keep, min_cover=min_cover)
    return _assemble(dask.compute(*tasks), offsets, grid)


def normalise_in_place(chips: np.ndarray, stats: ChannelStats) -> None:
    """:func:`~georaster_cnn.training.chipdata.normalize_chips` over ``chips``, a few MiB at a time."""
    step = max(1, _NORMALISE_BYTES // max(1, chips[:1].nbytes))
    for i in range(0, len(chips), step):
        chips[i : i + step] = normalize_chips(chips[i : i + step], stats)


# --------------------------------------------------------------------------- all rasters


def _read_raster(
    data: xr.DataArray,
    item: xr.DataArray | VectorLabels,
    grid: PatchGrid,
    spec: WindowSpec,
    names: tuple[str, ...],
) -> tuple[Windows | None, list[ChannelStats]]:
    """One pass over a raster: its statistics, and its raw grid windows if it has grid labels.

    Grid labels are a label raster, or polygons rasterised lazily onto the raster's
    grid (their windows also need ``spec.min_cover``).
    """
    raw = as_dask(data)
    stats_tasks = partial_stats(raw, names)
    found = grid_labels(data, item, spec.min_cover)
    if found is None:
        (parts,) = dask.compute(stats_tasks)
        return None, list(parts)
    labels, min_cover = found
    source = str(data.attrs.get("source", "raster"))
    keep = _keep_fraction(labels, grid, spec.max_windows, source)
    tasks, offsets = _grid_tasks(raw, labels, grid, spec, keep=keep, min_cover=min_cover)
    blocks, parts = dask.compute(tasks, stats_tasks)
    return _assemble(blocks, offsets, grid), list(parts)


def _point_windows(
    data: xr.DataArray,
    vl: VectorLabels,
    stats: ChannelStats,
    spec: WindowSpec,
    seen: np.ndarray,
) -> Windows:
    """Normalised windows centred on the points of ``vl`` that lie on ``data``."""
    pts = to_raster_crs(vl.points, data, vl.source)
    if len(pts) > spec.max_windows:
        keep = np.sort(np.random.default_rng(spec.seed).choice(len(pts), spec.max_windows, False))
        pts = pts.iloc[keep]
        log.info(
            "%s: using a random %d of %d points (memory cap)",
            vl.source,
            spec.max_windows,
            len(vl.points),
        )
    pw = point_windows(
        normalize(data, stats).data,
        data.rio.transform(),
        pts,
        patch=spec.patch,
        min_valid=spec.min_valid,
    )
    seen[pts.index.to_numpy()[pw.inside]] = True
    if pw.n_invalid:
        log.warning(
            "%s: %d point window(s) on %s have less than %.0f %% valid pixels; left out",
            vl.source, pw.n_invalid, data.attrs.get("source", "the raster"),
            100 * spec.min_valid,
        )  # fmt: skip
    return Windows(pw.chips, pw.ids.astype(np.float64), pw.centres)


def _raster_windows(
    data: xr.DataArray,
    item: xr.DataArray | VectorLabels,
    on_grid: Windows | None,
    stats: ChannelStats,
    spec: WindowSpec,
    seen: dict[int, np.ndarray],
) -> Windows:
    """All normalised windows of one raster: its point windows, then its grid windows.

    The grid windows ``on_grid`` (raw, from :func:`_read_raster`) are normalised in
    place; ``seen`` records, per vector-label source, the points that lie on a raster.
    """
    parts = []
    if isinstance(item, VectorLabels) and len(item.points):
        mask = seen.setdefault(id(item), np.zeros(len(item.points), bool))
        parts.append(_point_windows(data, item, stats, spec, mask))
    if on_grid is not None:
        normalise_in_place(on_grid.chips, stats)
        parts.append(on_grid)
    return Windows.concat(parts, bands=len(stats.names), patch=spec.patch)


def _warn_unseen_points(
    items: Sequence[xr.DataArray | VectorLabels], seen: dict[int, np.ndarray]
) -> None:
    for vl in {id(it): it for it in items if isinstance(it, VectorLabels)}.values():
        mask = seen.get(id(vl))
        if mask is not None and not mask.all():
            log.warning(
                "%s: %d of %d point(s) lie on none of the rasters; left out",
                vl.source, int((~mask).sum()), len(mask),
            )  # fmt: skip


def training_windows(
    datas: Sequence[xr.DataArray],
    items: Sequence[xr.DataArray | VectorLabels],
    spec: WindowSpec,
    *,
    val_block: int,
    val_fraction: float,
) -> TrainingWindows:
    """The normalised, labelled windows of all rasters, split spatially.

    Each raster is read once, gathering its statistics and cutting its grid
    windows together; the windows are then normalised with the statistics of all
    rasters. Point windows follow from the normalised data. Per raster, in order,
    :func:`~georaster_cnn.training.splits.blocked_split` (seeded with ``spec.seed``) holds
    out blocks of ``val_block`` pixels that cover the raster's classes where it can;
    with too few blocks for that, a stratified random share of windows
    (:func:`~georaster_cnn.training.splits.random_split_if_unblocked`).

    Parameters
    ----------
    datas
        The rasters (same bands).
    items
        Per raster its label raster (on its grid) or its vector labels.
    spec
        How windows are cut.
    val_block, val_fraction
        Validation blocks' side and share.

    Raises
    ------
    InputError
        Rasters with different bands, or a band without any valid pixel.
    """
    names = common_band_names(datas)
    grid_parts: list[Windows | None] = []
    stats_parts: list[ChannelStats] = []
    for d, item in zip(datas, items, strict=True):
        grid = PatchGrid(d.sizes["y"], d.sizes["x"], patch=spec.patch, stride=spec.stride)
        windows, parts = _read_raster(d, item, grid, spec, names)
        grid_parts.append(windows)
        stats_parts.extend(parts)
    stats = merged_stats(stats_parts)
    rng = np.random.default_rng(spec.seed)
    seen: dict[int, np.ndarray] = {}
    kept, is_val, dropped = [], [], []
    for i, (d, item) in enumerate(zip(datas, items, strict=True)):
        w = _raster_windows(d, item, grid_parts[i], stats, spec, seen)
        grid_parts[i] = None  # the kept windows below replace them in memory
        val, drop = blocked_split(
            w.centres, (d.sizes["y"], d.sizes["x"]), patch=spec.patch, block=val_block,
            fraction=val_fraction, rng=rng, labels=w.labels,
        )  # fmt: skip
        dropped.append(w.labels[drop])
        kept.append(w.where(~drop) if drop.any() else w)
        is_val.append(val[~drop])
        del w
    _warn_unseen_points(items, seen)
    windows = Windows.concat(kept, bands=len(names), patch=spec.patch)
    split: dict[str, Any] = {
        "kind": "spatial_blocks",
        "block_px": val_block,
        "val_fraction": val_fraction,
        "buffer_px": spec.patch - 1,
        "n_dropped_in_buffer": sum(len(d) for d in dropped),
    }
    val, split = random_split_if_unblocked(np.concatenate(is_val), split, rng, windows.labels)
    return TrainingWindows(windows, val, stats, split, np.concatenate([np.empty(0), *dropped]))
