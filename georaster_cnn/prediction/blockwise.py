"""chip + normalise + classify as one blockwise Dask computation.

:func:`predict` builds a lazy graph: normalise the canonical array per channel,
pad/rechunk/overlap it (:mod:`georaster_cnn.chips`), and map every block to the
class probabilities of its output cells. Nothing is computed until the result is
written or ``.compute()``-d, and the same graph runs on the threaded scheduler, a
``LocalCluster`` or a remote cluster.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from georaster_cnn.chips import (
    BLOCK_PX,
    iter_batches,
    plan_blocks,
    valid_fraction,
    window_view,
)
from georaster_cnn.cluster._shipping import ship_to_active_client
from georaster_cnn.errors import BandMismatchError, DataRangeWarning, InputError
from georaster_cnn.geometry import PatchGrid, RasterGrid
from georaster_cnn.io._canonical import BandSelector
from georaster_cnn.io._user_arrays import as_canonical
from georaster_cnn.io.classmap import CLASS_NODATA, prediction_attrs
from georaster_cnn.model._dense import classify_block_dense, dense_block_cells
from georaster_cnn.model._engine import OnnxClassifier, check_engine
from georaster_cnn.model._inference import Classifier
from georaster_cnn.model.architectures import dense_geometry
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.options import DEFAULT_BATCH_SIZE, InferenceOptions
from georaster_cnn.stats import ChannelStats, normalize_bands

if TYPE_CHECKING:
    import torch

__all__ = ["CLASS_NODATA", "check_inputs", "predict"]

log = logging.getLogger(__name__)


def _classify_block(
    block: np.ndarray,
    *,
    classifier: Classifier,
    patch: int,
    stride: int,
    halo: int,
    min_valid: float,
    batch_size: int,
    n_classes: int,
) -> np.ndarray:
    """Probabilities ``(classes, ny, nx)`` of one overlapped block; NaN where no prediction."""
    ny = (block.shape[1] - 2 * halo) // stride
    nx = (block.shape[2] - 2 * halo) // stride
    out = np.full((n_classes, ny, nx), np.nan, dtype=np.float32)
    valid = ~np.isnan(block).any(axis=0)
    frac = valid_fraction(valid, patch, stride, (ny, nx))
    rows, cols = np.nonzero(frac >= min_valid)
    if rows.size == 0:
        return out
    windows = window_view(block, patch, stride, (ny, nx))
    for sl, chips in iter_batches(windows, rows, cols, batch_size):
        out[:, rows[sl], cols[sl]] = classifier(chips).T
    return out


def check_inputs(data: xr.DataArray, model: GeoModel, *, sample_blocks: int = 4) -> None:
    """Check a canonical raster against the model's input contract.

    Raises :class:`BandMismatchError` when the band count differs, naming the
    expected bands and the file. Warns (:class:`DataRangeWarning`) when the band
    names differ from the model's (saying how to choose or reorder bands with
    ``bands=``), when the dtype differs from training, or when a few sampled blocks
    have per-band means or spreads far from the training statistics.

    The cost is bounded whatever the raster's size: at most ``sample_blocks`` Dask
    chunks are read (:func:`~georaster_cnn.open_raster` aligns them to the file's
    blocks, about 1024 x 1024 pixels), spread over rows and columns like a Latin
    square (seeded, so the same raster is always sampled the same way).
    """
    source = data.attrs.get("source", "the input")
    names = [str(b) for b in data["band"].values]
    if len(names) != model.n_bands:
        raise BandMismatchError(
            f"model expects {model.n_bands} band(s) ({', '.join(model.band_names)}); "
            f"{source} has {len(names)} ({', '.join(names)}). Select bands with bands=[...]."
        )
    generic = [f"band_{i + 1}" for i in range(len(names))]
    if names != list(model.band_names) and generic not in (names, list(model.band_names)):
        if set(names) == set(model.band_names):
            order = ", ".join(model.band_names)
            hint = ", ".join(repr(n) for n in model.band_names)
            advice = (
                f"the same bands in another order than the model's ({order}); "
                f"put them in the model's order with bands=[{hint}]"
            )
        else:
            advice = (
                f"other band names than the model's ({', '.join(model.band_names)}); if they are "
                "the same quantities in the same order, fine, otherwise choose the raster's bands "
                "that match, in the model's order, with bands=[...] (names or 1-based numbers)"
            )
        warnings.warn(
            f"{source}: bands ({', '.join(names)}) are {advice}", DataRangeWarning, stacklevel=3
        )
    src_dtype = data.attrs.get("source_dtype")
    if src_dtype and model.source_dtype and src_dtype != model.source_dtype:
        warnings.warn(
            f"{source}: data type {src_dtype} differs from the training data's "
            f"{model.source_dtype}; check units and scaling",
            DataRangeWarning,
            stacklevel=3,
        )
    arr = data.data if isinstance(data.data, da.Array) else da.from_array(np.asarray(data.data))
    arr = arr.rechunk({0: -1})  # a sampled block holds every band (a no-op when canonical)
    # A few blocks spread over the raster, each reduced to per-band statistics inside
    # the graph: cheap, bounded memory, and enough to catch unit or band-order mix-ups.
    # One block per band of rows, in a seeded permutation of the bands of columns:
    # spread over both axes, and away from the corners, where nodata collects.
    nb, k = arr.numblocks, max(1, sample_blocks)
    cols = np.random.default_rng(0).permutation(k)
    picks = sorted(
        {(0, int((i + 0.5) * nb[1] / k), int((c + 0.5) * nb[2] / k)) for i, c in enumerate(cols)}
    )
    parts = [dask.delayed(ChannelStats.from_array)(arr.blocks[p], names) for p in picks]
    (sample,) = dask.compute(dask.delayed(ChannelStats.merge_all)(parts))
    mean, std = model.stats.mean, model.stats.std
    tol = np.where(std > 0, std, np.maximum(np.abs(mean), 1.0))
    for k, name in enumerate(model.band_names):
        if sample.count[k] == 0:
            continue
        m, sd = float(sample.mean[k]), float(sample.std[k])
        if abs(m - mean[k]) > 5 * tol[k] or (std[k] > 0 and not 0.05 < sd / std[k] < 20):
            warnings.warn(
                f"{source}: band {k + 1} ({names[k]}) has mean {m:.4g} and spread {sd:.4g}, "
                f"far from the training data's {name} (mean {mean[k]:.4g}, spread {std[k]:.4g}); "
                "predictions may be meaningless. Check band order (bands=) and units.",
                DataRangeWarning,
                stacklevel=3,
            )


def predict(
    data: xr.DataArray,
    model: GeoModel,
    *,
    bands: BandSelector = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    min_valid: float | None = None,
    options: InferenceOptions | None = None,
    block_cells: int | None = None,
    check: bool = True,
    dense: bool | None = None,
    engine: str = "torch",
) -> xr.Dataset:
    """Classify every output cell of a raster; lazy and georeferenced.

    Parameters
    ----------
    data
        A ``(band, y, x)`` array (:func:`~georaster_cnn.open_raster`, ``rioxarray``, in
        memory; any dtype, any chunks), made canonical by ``io._user_arrays.as_canonical``:
        declared nodata values and +-inf become NaN, the data ``float32``, bands one chunk.
    model
        A trained :class:`~georaster_cnn.GeoModel`.
    bands
        The raster's bands to classify, in the model's order: 1-based indexes or band
        names, as for :func:`~georaster_cnn.open_raster`; ``None``: all. (For a file,
        ``open_raster(path, bands=...)`` reads only those bands from disk.)
    stride
        Output cell size in input pixels, ``1 <= stride <= patch size``; default:
        the model's patch size (windows tile the raster).
    batch_size
        Windows per model call.
    device
        ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda[:N]`` or ``mps``, or a
        :class:`torch.device` already resolved.
    min_valid
        Minimum fraction of valid pixels in a window for it to get a class;
        default: the model's (0.5 unless trained otherwise).
    options
        An :class:`~georaster_cnn.options.InferenceOptions` resolved before (once
        for many rasters) instead of ``stride``, ``batch_size``, ``device`` and
        ``min_valid``.
    block_cells
        Dask block side in output cells; default ``1024 // stride`` so that a block
        is about 1024 x 1024 input pixels whatever the stride (dense evaluation: as
        large as that while the block's feature maps stay within about 256 MiB).
    check
        Check the input contract first (see :func:`check_inputs`).
    dense
        Evaluate densely: the convolutional trunk once per block, every window pooled
        from its features (a fine stride costs about what the coarsest does; the same
        classes as one pass per window). ``None`` (default): dense whenever the
        architecture allows it (``cnn_dense``); ``False``: one pass per window, the
        reference; ``True``: dense, or an :class:`InputError`.
    engine
        ``torch`` (default) or ``onnxruntime`` (CPU only): who runs the network; the same
        blocks and classes, faster on CPUs (``docs/export.md``).

    Returns
    -------
    xarray.Dataset
        ``class`` ``(y, x)`` ``uint8`` (255 = no prediction) and ``probability``
        ``(class_name, y, x)`` ``float32`` (NaN = no prediction), on the grid
        ``transform * Affine.scale(stride)`` with the input's CRS.

    Raises
    ------
    BandMismatchError
        The raster's band count (after ``bands``) is not the model's.
    InputError
        Bad stride, batch size, ``min_valid``, device or engine; ``dense=True`` for a model
        that cannot be evaluated densely; dims other than ``(band, y, x)``; a bad
        ``bands`` selection; complex values.

    Warns
    -----
    DataRangeWarning
        See :func:`check_inputs`; ``NodataWarning``: a nodata value outside the dtype's range.
    """
    opts = InferenceOptions.resolve(
        model,
        stride=stride,
        batch_size=batch_size,
        min_valid=min_valid,
        device=device,
        options=options,
    )
    engine = check_engine(engine)
    data = as_canonical(data, bands=bands)
    if check:
        check_inputs(data, model)
    grid = PatchGrid(data.sizes["y"], data.sizes["x"], patch=model.patch_size, stride=opts.stride)
    raw = data.data
    probs = _probabilities(raw, model, grid, opts, _use_dense(model, dense), block_cells, engine)
    # Mask before argmax: numpy.argmax treats NaN as the maximum.
    nodata = da.isnan(probs[0])
    cls = da.where(nodata, CLASS_NODATA, da.argmax(da.nan_to_num(probs), axis=0)).astype(np.uint8)
    return _wrap(cls, probs, data, model, grid, opts)


def _probabilities(
    raw: da.Array,
    model: GeoModel,
    grid: PatchGrid,
    opts: InferenceOptions,
    use_dense: bool,
    block_cells: int | None,
    engine: str = "torch",
) -> da.Array:
    """The lazy ``(classes, y, x)`` probabilities of every output cell (NaN: no prediction).

    The blocks are planned on the raw input (so a file's blocks are read with their
    halos directly, see :mod:`georaster_cnn.chips`) and normalised block by block:
    the same arithmetic as :func:`~georaster_cnn.stats.normalize`, NaN stays NaN.
    """
    if block_cells is None:
        block_cells = (
            dense_block_cells(model.module, stride=grid.stride, halo=grid.halo_before)
            if use_dense
            else max(1, BLOCK_PX // opts.stride)
        )
    plan = plan_blocks(raw, grid, block_cells=block_cells)
    blocks = normalize_bands(plan.blocks, model.stats)
    k = model.n_classes
    classifier = (OnnxClassifier if engine == "onnxruntime" else Classifier)(model, opts.device)
    ship_to_active_client(model)  # tasks then carry the model's digest, not its bytes
    per_block: dict[str, Any] = {
        "classifier": classifier,
        "patch": grid.patch,
        "stride": grid.stride,
        "halo": grid.halo_before,
        "min_valid": opts.min_valid,
        "n_classes": k,
    }
    if not use_dense:
        per_block["batch_size"] = opts.batch_size
    probs = da.map_blocks(
        classify_block_dense if use_dense else _classify_block,
        blocks,
        **per_block,
        chunks=((k,), *plan.cell_chunks),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name=("predict-dense-" if use_dense else "predict-")
        + tokenize(blocks.name, plan.cell_chunks, grid, classifier.key, opts.min_valid, engine),
    )
    oh, ow = grid.out_shape
    return probs[:, :oh, :ow]


def _use_dense(model: GeoModel, dense: bool | None) -> bool:
    """Whether to evaluate densely: ``dense`` checked against what the model allows."""
    if dense is not None and not isinstance(dense, bool):
        raise InputError(f"dense= must be True, False or None (automatic); found {dense!r}")
    capable = dense_geometry(model.module) is not None
    if dense and not capable:
        raise InputError(
            f"dense=True needs an architecture that can be evaluated densely (cnn_dense); "
            f"this model is {model.arch!r}. Leave dense unset (automatic) or use dense=False."
        )
    return capable if dense is None else dense


def _wrap(
    cls: da.Array,
    probs: da.Array,
    data: xr.DataArray,
    model: GeoModel,
    grid: PatchGrid,
    opts: InferenceOptions,
) -> xr.Dataset:
    out = RasterGrid.of(data).output(stride=grid.stride)
    coords: dict[str, Any] = {
        "class_name": np.array(model.class_names, dtype=object),
        **out.centre_coords(),
    }
    attrs = prediction_attrs(
        model.class_names,
        model.class_colors,
        model_arch=model.arch,
        model_checksum=model.checksum,
        stride=grid.stride,
        patch_size=grid.patch,
        source=data.attrs.get("source", ""),
        min_valid=opts.min_valid,
        bands=[str(b) for b in data["band"].values],
    )
    if "stac_items" in data.attrs:  # open_stac's sources: the map's STAC Item links to them
        attrs["stac_items"] = data.attrs["stac_items"]
    ds = xr.Dataset(
        {
            "class": xr.DataArray(cls, dims=("y", "x"), attrs={"nodata": CLASS_NODATA}),
            "probability": xr.DataArray(probs, dims=("class_name", "y", "x")),
        },
        coords=coords,
        attrs=attrs,
    )
    ds = ds.rio.write_transform(out.transform)
    if out.crs is not None:
        ds = ds.rio.write_crs(out.crs)
    return ds
