"""Training from label rasters, vector labels (points, polygons) or chip sets.

Raster windows are cut by the same blockwise machinery as prediction
(:mod:`georaster_cnn.chips`); a window's label is the class of its centre pixel.
Vector labels (:mod:`georaster_cnn.vector_labels`) are reprojected to each raster's
CRS: points give the window centred on each point, polygons are rasterised onto the
raster's grid and give the windows inside them. Validation is spatially blocked
(:func:`blocked_split`): square blocks of ``val_block`` pixels go to validation
whole, and training windows within a patch of them are dropped, so that no
validation window overlaps a training window. Chip sets (:mod:`georaster_cnn.chipdata`)
use a stratified random split. Both share one loop (:func:`_fit`): flips and 90-degree
rotations, class-weighted loss, batch-norm recalibration after each epoch, early stopping
on the validation loss, and the weights of the best epoch.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import rasterio
import torch
import xarray as xr
from rasterio.errors import RasterioError
from torch import nn

from georaster_cnn.chipdata import ChipSet, chip_stats, chip_valid_fraction, normalize_chips
from georaster_cnn.chips import iter_batches, plan_blocks, valid_fraction, window_view
from georaster_cnn.errors import InputError, TrainingError
from georaster_cnn.geometry import DEFAULT_PATCH, PatchGrid
from georaster_cnn.modelfile import GeoModel, default_colors
from georaster_cnn.models import ARCHITECTURES, build_model, resolve_device
from georaster_cnn.reader import NETCDF_SUFFIXES, open_raster
from georaster_cnn.stats import ChannelStats, compute_stats, normalize
from georaster_cnn.vector_labels import (
    VectorLabels,
    point_windows,
    prepare_vector_labels,
    rasterize_polygons,
    to_raster_crs,
)

__all__ = ["DEFAULT_VAL_BLOCK", "blocked_split", "open_labels", "train", "train_chips"]

#: Side of the validation blocks in pixels (see :func:`blocked_split`).
DEFAULT_VAL_BLOCK = 256

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict[str, float]], None]


def open_labels(path: str | os.PathLike[str]) -> xr.DataArray:
    """Open a class-label raster: ``(y, x)`` float32 class ids, NaN = unlabelled.

    The first band is used; nodata (and GDAL masks) become NaN. Class names stored
    in a ``CLASS_NAMES`` JSON tag are kept in ``attrs["class_names"]``, and the
    colour table, if any, in ``attrs["class_colors"]`` (RGB per class id).
    """
    lab = open_raster(path, bands=[1]).isel(band=0, drop=True)
    if Path(path).suffix.lower() in NETCDF_SUFFIXES:
        return lab
    try:
        with rasterio.open(path) as src:
            tag = src.tags().get("CLASS_NAMES") or src.tags(1).get("CLASS_NAMES")
            try:
                cmap = src.colormap(1)
            except ValueError:  # no colour table
                cmap = {}
        if tag:
            lab.attrs["class_names"] = json.loads(tag)
        if cmap:
            lab.attrs["class_colors"] = [cmap[i][:3] for i in range(max(cmap) + 1) if i in cmap]
    except (RasterioError, ValueError):
        pass  # names and colours are optional
    return lab


def _class_colors(
    from_labels: Sequence[Sequence[int]] | None, n_classes: int
) -> tuple[tuple[int, int, int], ...]:
    """The label raster's colours where it has one per class, else the default palette."""
    colors = list(default_colors(n_classes))
    for i, c in enumerate(list(from_labels or [])[:n_classes]):
        colors[i] = (int(c[0]), int(c[1]), int(c[2]))
    return tuple(colors)


def _check_aligned(data: xr.DataArray, labels: xr.DataArray) -> None:
    src, lsrc = data.attrs.get("source", "data"), labels.attrs.get("source", "labels")
    if (data.sizes["y"], data.sizes["x"]) != (labels.sizes["y"], labels.sizes["x"]):
        raise InputError(
            f"label raster {lsrc} is {labels.sizes['y']} x {labels.sizes['x']} pixels but "
            f"{src} is {data.sizes['y']} x {data.sizes['x']}; labels must be on the same grid "
            "(same size, transform and CRS)"
        )
    if not data.rio.transform().almost_equals(labels.rio.transform(), precision=1e-6):
        raise InputError(
            f"label raster {lsrc} has transform {tuple(labels.rio.transform())[:6]} but {src} has "
            f"{tuple(data.rio.transform())[:6]}; resample the labels onto the data grid"
        )
    if data.rio.crs != labels.rio.crs and None not in (data.rio.crs, labels.rio.crs):
        raise InputError(
            f"label raster {lsrc} CRS {labels.rio.crs} differs from {src} CRS {data.rio.crs}"
        )


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
    """Chips, labels and cell positions of one overlapped block (last band = labels).

    A window is labelled with its centre pixel's class; with ``min_cover > 0`` it also
    needs that share of its pixels labelled with the same class (polygon labels).
    With ``keep < 1`` a seeded random fraction of the block's windows is kept.
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
    if keep < 1.0:
        pick = np.random.default_rng(seed).random(rows.size) < keep
        rows, cols = rows[pick], cols[pick]
    windows = window_view(data, patch, stride, (ny, nx))
    chips = [ch for _, ch in iter_batches(windows, rows, cols, 4096)]
    x = np.concatenate(chips) if chips else np.empty((0, data.shape[0], patch, patch), np.float32)
    pos = np.stack([rows, cols], axis=1)
    return x, centre[rows, cols].astype(np.float64), pos


def _count_labelled(labels: da.Array, grid: PatchGrid) -> int:
    """Number of output cells whose window centre pixel is labelled."""
    c = grid.center_offset
    return int(da.isfinite(labels[c :: grid.stride, c :: grid.stride]).sum().compute())


def _extract(
    data: xr.DataArray,
    labels: xr.DataArray,
    model_stats: Any,
    grid: PatchGrid,
    min_valid: float,
    *,
    max_windows: int,
    seed: int,
    min_cover: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled windows of one raster on the stride grid: chips, labels, cell ``(i, j)``."""
    norm = normalize(data, model_stats).data
    lab = labels.data if isinstance(labels.data, da.Array) else da.from_array(labels.values)
    n_labelled = _count_labelled(lab, grid)
    keep = min(1.0, max_windows / max(1, n_labelled))
    if keep < 1.0:
        log.info(
            "%s: keeping a random %.1f %% of %d labelled windows (memory cap)",
            data.attrs.get("source", "raster"),
            100 * keep,
            n_labelled,
        )
    stacked = da.concatenate([norm, lab[None].astype(np.float32)], axis=0)
    plan = plan_blocks(stacked, grid)
    parts = []
    starts_y = np.cumsum((0, *plan.cell_chunks[0]))
    starts_x = np.cumsum((0, *plan.cell_chunks[1]))
    for (_, by, bx), blk in np.ndenumerate(plan.blocks.to_delayed()):
        parts.append((
            dask.delayed(_block_chips)(
                blk, patch=grid.patch, stride=grid.stride, halo=grid.halo_before,
                min_valid=min_valid, keep=keep, seed=(seed, int(by), int(bx)),
                min_cover=min_cover,
            ),
            starts_y[by], starts_x[bx],
        ))  # fmt: skip
    computed = dask.compute(*[p[0] for p in parts])
    xs, ys, ps = [], [], []
    for (x, y, pos), (_, oy, ox) in zip(computed, parts, strict=True):
        xs.append(x)
        ys.append(y)
        ps.append(pos + np.array([oy, ox]))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ps)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (the same for the whole batch)."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    if k:
        x = torch.rot90(x, k, dims=(2, 3))
    if int(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def _bn_batches(n_batches: int) -> int:
    """Batches of the batch-norm recalibration after an epoch of ``n_batches``.

    About an eighth of the epoch, at least 2 and at most 10: the statistics are averages
    over whole batches and spatial positions, so a few batches estimate them well
    (benchmarks/results/diag_bn_statistics.txt: 2 to 10 batches give the same validation
    loss within noise, 1 is noisier), while the pass stays a small share of an epoch
    (benchmarks/bench_train_throughput.py; at 50 batches it was 27 %).
    """
    return min(10, max(2, -(-n_batches // 8)))


def _recalibrate_bn(module: nn.Module, x: torch.Tensor, dev: torch.device, batch: int) -> None:
    """Re-estimate batch-norm running statistics as exact averages over ``x``.

    With few updates the exponential running averages are still far from the data's
    statistics, and the model in ``eval`` mode then predicts nonsense. ``x`` holds
    un-augmented training samples; the forward passes run with the epoch's final weights.
    (Accumulating the statistics during the last training batches instead costs nothing
    but mixes weights that still move: on a 512-px scene with 10 batches per epoch the
    validation accuracy after epoch 2 fell from 97 % to 33 %.)
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    module.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            if len(x[i : i + batch]) > 1:
                module(x[i : i + batch].to(dev))
    for bn, mom in zip(bns, saved, strict=True):
        bn.momentum = mom


def _evaluate(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    dev: torch.device,
    loss_fn: nn.Module,
    batch: int,
) -> tuple[float, float]:
    module.eval()
    tot_loss, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb, yb = x[i : i + batch].to(dev), y[i : i + batch].to(dev)
            out = module(xb)
            tot_loss += float(loss_fn(out, yb)) * len(xb)
            correct += int((out.argmax(1) == yb).sum())
    return tot_loss / max(1, len(x)), correct / max(1, len(x))


LabelsArg: TypeAlias = xr.DataArray | gpd.GeoDataFrame
"""One raster's labels: a label raster, or vector labels (points/polygons) in any CRS."""


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


def resolve_labels(
    datas: list[xr.DataArray],
    labels: LabelsArg | Sequence[LabelsArg],
    *,
    label_column: str | None,
    class_names: Sequence[str] | None,
) -> tuple[list[xr.DataArray | VectorLabels], list[str] | None]:
    """Per raster: its label raster (checked to be on the raster's grid) or its VectorLabels.

    Also returns the class names the vector labels define (``None`` without vector labels).
    """
    items = _label_items(datas, labels)
    frames: dict[int, gpd.GeoDataFrame] = {}
    for it in items:
        if isinstance(it, gpd.GeoDataFrame):
            frames.setdefault(id(it), it)
    if not frames and label_column is not None:
        raise InputError(
            "label_column names the class attribute of vector labels; label rasters hold "
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


def blocked_split(
    centres: np.ndarray,
    shape: tuple[int, int],
    *,
    patch: int,
    block: int,
    fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Spatially blocked validation split of windows with a buffer.

    The raster is divided into ``block`` x ``block`` pixel squares and a seeded random
    ``fraction`` of them (at least one of two or more; none of a single square) is
    held out for validation; a window belongs to the square of its centre pixel. Two ``patch``-pixel windows overlap exactly when their
    centres are less than ``patch`` pixels apart along both axes, so every
    training window whose centre is within ``patch - 1`` pixels of a held-out
    square is dropped: no validation window overlaps a training window.

    Parameters
    ----------
    centres
        ``(n, 2)`` centre pixels ``(row, col)`` of the windows.
    shape
        ``(height, width)`` of the raster.

    Returns
    -------
    val, drop
        Boolean masks: validation windows, and training windows inside the buffer.
    """
    nby = max(1, math.ceil(shape[0] / block))
    nbx = max(1, math.ceil(shape[1] / block))
    # Exactly round(fraction * blocks) blocks (at least one when there are two or more),
    # not a coin toss per block: the validation share then varies little between seeds.
    n_blocks = nby * nbx
    n_held = min(n_blocks - 1, max(1, round(fraction * n_blocks))) if fraction > 0 else 0
    flat = np.zeros(n_blocks, dtype=bool)
    flat[rng.choice(n_blocks, n_held, replace=False)] = True
    held = flat.reshape(nby, nbx)
    if len(centres) == 0:
        return np.zeros(0, bool), np.zeros(0, bool)
    r, c = centres[:, 0], centres[:, 1]
    val = held[np.clip(r // block, 0, nby - 1), np.clip(c // block, 0, nbx - 1)]
    sat = np.zeros((nby + 1, nbx + 1), dtype=np.int64)
    sat[1:, 1:] = held.cumsum(0).cumsum(1)
    d = patch - 1
    r0, r1 = np.clip((r - d) // block, 0, nby - 1), np.clip((r + d) // block, 0, nby - 1) + 1
    c0, c1 = np.clip((c - d) // block, 0, nbx - 1), np.clip((c + d) // block, 0, nbx - 1) + 1
    near = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return val, ~val & (near > 0)


def _vector_windows(
    d: xr.DataArray,
    vl: VectorLabels,
    stats: ChannelStats,
    grid: PatchGrid,
    *,
    min_valid: float,
    min_cover: float,
    max_windows: int,
    seed: int,
    points_seen: dict[int, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of one raster from vector labels: chips, class ids, centre pixels."""
    xs, ys, cs = [], [], []
    if len(vl.points):
        pts = to_raster_crs(vl.points, d, vl.source)
        if len(pts) > max_windows:
            keep = np.sort(np.random.default_rng(seed).choice(len(pts), max_windows, False))
            pts = pts.iloc[keep]
            log.info(
                "%s: using a random %d of %d points (memory cap)",
                vl.source,
                max_windows,
                len(vl.points),
            )
        pw = point_windows(
            normalize(d, stats).data, d.rio.transform(), pts, patch=grid.patch, min_valid=min_valid
        )
        seen = points_seen.setdefault(id(vl), np.zeros(len(vl.points), bool))
        seen[pts.index.to_numpy()[pw.inside]] = True
        if pw.n_invalid:
            log.warning(
                "%s: %d point window(s) on %s have less than %.0f %% valid pixels; left out",
                vl.source, pw.n_invalid, d.attrs.get("source", "the raster"), 100 * min_valid,
            )  # fmt: skip
        xs.append(pw.chips)
        ys.append(pw.ids.astype(np.float64))
        cs.append(pw.centres)
    if len(vl.polygons):
        polys = to_raster_crs(vl.polygons, d, vl.source)
        lab = rasterize_polygons(polys, d, source=vl.source)
        x, y, pos = _extract(
            d, lab, stats, grid, min_valid, max_windows=max_windows, seed=seed, min_cover=min_cover
        )
        xs.append(x)
        ys.append(y)
        cs.append(pos * grid.stride + grid.center_offset)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(cs)


def train(
    data: xr.DataArray | Sequence[xr.DataArray],
    labels: LabelsArg | Sequence[LabelsArg],
    *,
    label_column: str | None = None,
    class_names: Sequence[str] | None = None,
    arch: str = "cnn",
    epochs: int = 10,
    batch_size: int = 64,
    stride: int | None = None,
    patch_size: int = DEFAULT_PATCH,
    learning_rate: float = 1e-3,
    device: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.2,
    val_block: int = DEFAULT_VAL_BLOCK,
    min_valid: float = 0.5,
    min_cover: float = 0.5,
    augment: bool = True,
    patience: int | None = 5,
    hparams: dict[str, Any] | None = None,
    max_chip_bytes: int = 2 * 1024**3,
    progress: ProgressFn | None = None,
) -> GeoModel:
    """Train a classifier from rasters and their labels: label rasters or vector labels.

    Parameters
    ----------
    data
        One or more canonical ``(band, y, x)`` arrays with the same bands; they may
        differ in CRS, resolution and size.
    labels
        Per raster, in order, either a ``(y, x)`` label raster on exactly its grid
        (see :func:`open_labels`: class ids ``0..K-1``, NaN = unlabelled) or a
        :class:`geopandas.GeoDataFrame` of points and/or polygons in any CRS
        (reprojected to the raster's). One GeoDataFrame alone serves all rasters.
        Points give the window centred on each point; polygons the stride-grid
        windows whose centre lies inside and that have at least ``min_cover`` of
        their pixels inside polygons of that class.
    label_column
        Vector labels: the column holding each feature's class, as names or as ids
        ``0..K-1``; default: the only non-geometry column.
    class_names
        Names of the ``K`` classes in id order; default: for label rasters their
        ``class_names`` attribute, else ``class_0 ...``; for vector labels with a
        column of names, the names sorted.
    arch
        Registered architecture name.
    epochs, batch_size, learning_rate
        Optimiser settings (Adam, class-weighted cross-entropy).
    stride
        Spacing of training windows on the grid; default ``patch_size // 4``.
    device
        ``auto``, ``cpu``, ``cuda`` or ``mps``; mixed precision on CUDA.
    seed
        Seeds the split, shuffling, augmentation and weights: a run is reproducible.
    val_fraction, val_block
        Share of ``val_block``-pixel squares held out for validation (per raster).
        Training windows within ``patch_size - 1`` pixels of a held-out square are
        dropped, so no validation window overlaps a training window
        (see :func:`blocked_split`).
    min_valid
        Minimum valid fraction of a training window; stored as the model's default.
    min_cover
        Polygon labels: minimum share of a window inside polygons of its class.
    augment
        Random flips and 90-degree rotations of training batches.
    patience
        Stop when the validation loss has not improved for this many epochs
        (``None`` or 0: run all epochs). Needs validation windows.
    max_chip_bytes
        Memory cap for the training windows held in memory (all rasters together);
        beyond it a seeded random subset of the labelled windows is used.
    progress
        Called as ``progress(epoch, epochs, metrics)`` after each epoch.

    Returns
    -------
    GeoModel
        The weights of the epoch with the lowest validation loss.

    Raises
    ------
    InputError
        Misaligned or inconsistent inputs, unreadable vector labels, or labels
        and rasters without a CRS to relate them.
    TrainingError
        No labelled window, or fewer than two classes.

    Examples
    --------
    >>> import geopandas as gpd  # doctest: +SKIP
    >>> points = gpd.read_file("field_points.gpkg")  # EPSG:4326, column "landcover"
    >>> rasters = [open_raster("utm32.tif"), open_raster("utm33.tif")]  # doctest: +SKIP
    >>> model = train(rasters, points, label_column="landcover", epochs=20)  # doctest: +SKIP
    """
    datas = [data] if isinstance(data, xr.DataArray) else list(data)
    if not datas:
        raise InputError("no raster to train on")
    if epochs < 1:
        raise InputError(f"epochs must be >= 1; found {epochs}")
    if arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        )
    if val_block < 1:
        raise InputError(f"val_block must be >= 1 pixel; found {val_block}")
    if not 0.0 <= min_cover <= 1.0:
        raise InputError(f"min_cover must be in [0, 1]; found {min_cover}")
    stride = stride or max(1, patch_size // 4)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    items, vector_names = resolve_labels(
        datas, labels, label_column=label_column, class_names=class_names
    )
    stats = compute_stats(datas)
    chip_bytes = datas[0].sizes["band"] * patch_size * patch_size * 4
    max_windows = max(1, max_chip_bytes // chip_bytes // len(datas))
    xs, ys, is_val = [], [], []
    points_seen: dict[int, np.ndarray] = {}
    n_buffer = 0
    for d, item in zip(datas, items, strict=True):
        grid = PatchGrid(d.sizes["y"], d.sizes["x"], patch=patch_size, stride=stride)
        if isinstance(item, VectorLabels):
            x, y, centres = _vector_windows(
                d, item, stats, grid, min_valid=min_valid, min_cover=min_cover,
                max_windows=max_windows, seed=seed, points_seen=points_seen,
            )  # fmt: skip
        else:
            x, y, pos = _extract(
                d, item, stats, grid, min_valid, max_windows=max_windows, seed=seed
            )
            centres = pos * stride + grid.center_offset
        val, drop = blocked_split(
            centres, (d.sizes["y"], d.sizes["x"]), patch=patch_size, block=val_block,
            fraction=val_fraction, rng=rng,
        )  # fmt: skip
        n_buffer += int(drop.sum())
        xs.append(x[~drop])
        ys.append(y[~drop])
        is_val.append(val[~drop])
    for vl in {id(it): it for it in items if isinstance(it, VectorLabels)}.values():
        seen = points_seen.get(id(vl))
        if seen is not None and not seen.all():
            log.warning(
                "%s: %d of %d point(s) lie on none of the rasters; left out",
                vl.source, int((~seen).sum()), len(seen),
            )  # fmt: skip
    x_all, y_raw, val = np.concatenate(xs), np.concatenate(ys), np.concatenate(is_val)
    if (y_raw != np.round(y_raw)).any():
        raise InputError(
            "label raster holds non-integer values (e.g. "
            f"{y_raw[y_raw != np.round(y_raw)][0]:g}); labels must be class ids 0..K-1"
        )
    y_all = y_raw.astype(np.int64)
    if len(y_all) == 0:
        raise TrainingError(
            "no labelled window found: labels are all nodata, lie outside the rasters, or "
            "their windows are all invalid"
            + (f" or less than {100 * min_cover:.0f} % inside their polygons (min_cover)"
               if vector_names is not None else "")
        )  # fmt: skip
    if (y_all < 0).any() or (y_all >= 255).any():
        bad = int(y_all.min()) if (y_all < 0).any() else int(y_all.max())
        raise InputError(
            f"class ids must be 0..254 (255 is the output's nodata); found {bad}. "
            "Set the label raster's nodata value for unlabelled pixels, or relabel."
        )
    n_classes = int(y_all.max()) + 1
    first_raster = next((it for it in items if isinstance(it, xr.DataArray)), None)
    if class_names is None:
        class_names = (
            vector_names
            or (first_raster.attrs.get("class_names") if first_raster is not None else None)
            or [f"class_{i}" for i in range(n_classes)]
        )
    class_names = list(class_names)
    if len(class_names) < n_classes:
        raise InputError(
            f"labels hold class ids up to {n_classes - 1} but {len(class_names)} class name(s) "
            f"were given ({', '.join(class_names)})"
        )
    n_classes = len(class_names)
    if len(np.unique(y_all)) < 2:
        raise TrainingError(f"labels hold a single class ({class_names[int(y_all[0])]}); need >= 2")
    split: dict[str, Any] = {
        "kind": "spatial_blocks",
        "block_px": val_block,
        "val_fraction": val_fraction,
        "buffer_px": patch_size - 1,
        "n_dropped_in_buffer": n_buffer,
    }
    if (val.all() or not val.any()) and val_fraction > 0 and len(y_all) >= 5:
        # Too few blocks to split spatially (a small raster): hold out a random share.
        n_val = max(1, round(val_fraction * len(y_all)))
        val = np.zeros(len(y_all), dtype=bool)
        val[rng.choice(len(y_all), n_val, replace=False)] = True
        split = {"kind": "random_windows", "val_fraction": val_fraction}
        log.warning(
            "too few %d-px blocks for a spatially blocked split; validating on random windows, "
            "which overlap training windows (the validation accuracy is optimistic). "
            "A smaller val_block (--val-block) may allow a blocked split",
            val_block,
        )
    provenance = {
        "data": [str(Path(d.attrs.get("source", "<in-memory>"))) for d in datas],
        "labels": [
            it.source
            if isinstance(it, VectorLabels)
            else str(it.attrs.get("source", "<in-memory>"))
            for it in items
        ],
        "stride": stride,
        "split": split,
    }
    if vector_names is not None:
        provenance["min_cover"] = min_cover
    dtypes = {d.attrs.get("source_dtype", "float32") for d in datas}
    colors = first_raster.attrs.get("class_colors") if first_raster is not None else None
    return _fit(
        x_all,
        y_all,
        val,
        class_names=class_names,
        band_names=stats.names,
        stats=stats,
        patch_size=patch_size,
        arch=arch,
        hparams=hparams,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        device=device,
        seed=seed,
        augment=augment,
        patience=patience,
        min_valid=min_valid,
        class_colors=_class_colors(colors, n_classes),
        source_dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
        provenance=provenance,
        progress=progress,
        unit="windows",
    )


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    val: np.ndarray,
    *,
    class_names: Sequence[str],
    band_names: Sequence[str],
    stats: ChannelStats,
    patch_size: int,
    arch: str,
    hparams: dict[str, Any] | None,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: str,
    seed: int,
    augment: bool,
    min_valid: float,
    patience: int | None = None,
    class_colors: tuple[tuple[int, int, int], ...] | None = None,
    source_dtype: str = "float32",
    provenance: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    unit: str = "samples",
) -> GeoModel:
    """The training loop shared by rasters and chips.

    ``x`` holds normalised ``(n, band, p, p)`` float32 samples (NaN already 0),
    ``y`` their class ids and ``val`` the validation mask. ``provenance`` holds the
    source-specific entries (data, labels, split, ...); the loop adds the rest.
    """
    n_classes = len(class_names)
    dev = resolve_device(device)
    torch.manual_seed(seed)  # the weights depend on the seed only, not on what ran before
    module = build_model(arch, x.shape[1], n_classes, patch_size, **(hparams or {})).to(dev)
    counts = np.bincount(y[~val], minlength=n_classes).astype(np.float64)
    weights = torch.tensor(
        np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0),
        dtype=torch.float32,
    )
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(dev))
    opt = torch.optim.Adam(module.parameters(), lr=learning_rate)
    xt, yt = torch.from_numpy(x[~val]), torch.from_numpy(y[~val])
    xv, yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
    gen = torch.Generator().manual_seed(seed)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    log.info(
        "training %s on %d %s (%d validation), %d classes", arch, len(yt), unit, len(yv), n_classes
    )
    best_at, stopped_at, stop_ref = 0, None, float("inf")
    for epoch in range(1, epochs + 1):
        module.train()
        order = torch.randperm(len(xt), generator=gen)
        tot_loss, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:
                continue  # batch-norm needs more than one sample
            xb = xt[idx]
            if augment:
                xb = _augment(xb, gen)
            xb, yb = xb.to(dev), yt[idx].to(dev)
            with torch.autocast(
                device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"
            ):
                out = module(xb)
                loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            tot_loss += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
        n_recal = _bn_batches(-(-len(order) // batch_size)) * batch_size
        _recalibrate_bn(module, xt[order[:n_recal]], dev, batch_size)
        metrics = {"epoch": epoch, "loss": tot_loss / len(xt), "accuracy": correct / len(xt)}
        if len(xv):
            metrics["val_loss"], metrics["val_accuracy"] = _evaluate(
                module,
                xv,
                yv,
                dev,
                loss_fn,
                batch_size,  # larger batches were slower on CPU
            )
        history.append(metrics)
        log.info("epoch %d/%d %s", epoch, epochs, metrics)
        score = metrics.get("val_loss", metrics["loss"])
        if best is None or score < best[0]:
            best = (score, {k: v.detach().cpu().clone() for k, v in module.state_dict().items()})
        # Patience counts from the last *meaningful* improvement (relative 1e-4): the
        # loss also wobbles by tiny amounts when nothing is learned.
        if epoch == 1 or score < stop_ref - 1e-4 * abs(stop_ref):
            stop_ref, best_at = score, epoch
        if progress is not None:
            progress(epoch, epochs, metrics)
        if patience and len(xv) and epoch - best_at >= patience and epoch < epochs:
            stopped_at = epoch
            log.info("early stop after epoch %d: no better validation loss for %d", epoch, patience)
            break
    if best is None:  # unreachable: epochs >= 1 was checked above
        raise TrainingError("no epoch completed")
    module.load_state_dict(best[1])
    module.cpu().eval()
    best_epoch = min(history, key=lambda m: m.get("val_loss", m["loss"]))
    provenance = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(provenance or {}),
        "epochs": epochs,
        "epochs_run": len(history),
        "early_stopping": {"patience": patience or 0, "stopped_after": stopped_at},
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "augment": augment,
        "n_train": len(yt),
        "n_val": len(yv),
        "class_counts": np.bincount(y, minlength=n_classes).tolist(),
        "history": history,
        "metrics": {k: v for k, v in best_epoch.items()},
        "device": dev.type,
    }
    return GeoModel(
        module=module,
        arch=arch,
        hparams=dict(hparams or {}),
        band_names=tuple(str(b) for b in band_names),
        class_names=tuple(class_names),
        class_colors=class_colors or default_colors(n_classes),
        stats=stats,
        patch_size=patch_size,
        min_valid=min_valid,
        source_dtype=source_dtype,
        provenance=provenance,
    )


def _stratified_split(y: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Validation mask holding about ``val_fraction`` of every class.

    A class with at least two samples puts at least one in validation and keeps at
    least one for training; a class with one sample trains on it.
    """
    val = np.zeros(len(y), dtype=bool)
    if val_fraction <= 0:
        return val
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        if idx.size < 2:
            continue
        n_val = min(idx.size - 1, max(1, round(val_fraction * idx.size)))
        val[idx[:n_val]] = True
    return val


def train_chips(
    chips: ChipSet,
    *,
    arch: str = "cnn",
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    device: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.2,
    min_valid: float = 0.5,
    augment: bool = True,
    patience: int | None = 5,
    hparams: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> GeoModel:
    """Train a classifier on labelled chips without georeferencing.

    The patch size is the chip size. Per-channel statistics come from the chips
    (NaN ignored); chips are normalised with them and NaN becomes 0. A stratified
    random split (seeded) holds out about ``val_fraction`` of every class; the
    training loop is the one of :func:`train` (flips and rotations, class-weighted
    loss, batch-norm recalibration, weights of the epoch with the lowest validation
    loss).

    Parameters
    ----------
    chips
        From :func:`~georaster_cnn.load_chips`.
    arch, epochs, batch_size, learning_rate, device, augment, patience, hparams, progress
        As for :func:`train`.
    seed
        Seeds the split, shuffling, augmentation and weights: a run is reproducible.
    val_fraction
        Share of every class held out for validation (at least one chip of each
        class with two or more chips); 0 trains on all chips.
    min_valid
        Chips with a smaller share of valid (non-NaN in every channel) pixels are
        left out of training, and counted in the log; stored as the model's default.

    Returns
    -------
    GeoModel
        The weights of the epoch with the lowest validation loss; provenance
        ``split.kind`` is ``"stratified_random"``.

    Raises
    ------
    InputError
        Bad options, or a channel without any valid value.
    TrainingError
        Fewer than two classes with chips (after dropping invalid chips).

    Examples
    --------
    >>> chips = load_chips("chips/")  # chips/<class>/*.npy  # doctest: +SKIP
    >>> model = train_chips(chips, epochs=20, seed=1)  # doctest: +SKIP
    >>> save_model(model, "model.safetensors")  # doctest: +SKIP
    """
    if epochs < 1:
        raise InputError(f"epochs must be >= 1; found {epochs}")
    if arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1); found {val_fraction}")
    keep = chip_valid_fraction(chips.chips) >= min_valid
    if not keep.all():
        log.info(
            "%s: left out %d of %d chips with less than %.0f %% valid pixels (min_valid)",
            chips.source,
            int((~keep).sum()),
            len(keep),
            100 * min_valid,
        )
    raw, y = chips.chips[keep], chips.labels[keep]
    n_classes = len(chips.class_names)
    present = np.unique(y)
    if present.size < 2:
        found = ", ".join(chips.class_names[int(k)] for k in present) or "none"
        raise TrainingError(
            f"{chips.source}: need chips of at least two classes to train; found {found} "
            f"({len(y)} usable chip(s) of {len(keep)})"
        )
    stats = chip_stats(raw, chips.band_names)
    x = normalize_chips(raw, stats)
    val = _stratified_split(y, val_fraction, np.random.default_rng(seed))
    provenance = {
        "data": [chips.source],
        "labels": [chips.source],
        "split": {"kind": "stratified_random", "val_fraction": val_fraction},
        "n_dropped_invalid": int((~keep).sum()),
    }
    return _fit(
        x,
        y,
        val,
        class_names=chips.class_names,
        band_names=chips.band_names,
        stats=stats,
        patch_size=chips.patch_size,
        arch=arch,
        hparams=hparams,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        device=device,
        seed=seed,
        augment=augment,
        patience=patience,
        min_valid=min_valid,
        class_colors=default_colors(n_classes),
        source_dtype=chips.source_dtype,
        provenance=provenance,
        progress=progress,
        unit="chips",
    )
