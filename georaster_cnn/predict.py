"""chip + normalise + classify as one blockwise Dask computation.

:func:`predict` builds a lazy graph: normalise the canonical array per channel,
pad/rechunk/overlap it (:mod:`georaster_cnn.chips`), and map every block to the
class probabilities of its output cells. Nothing is computed until the result is
written or ``.compute()``-d, and the same graph runs on the threaded scheduler, a
``LocalCluster`` or a remote cluster.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr
from affine import Affine
from dask.base import tokenize

from georaster_cnn.chips import (
    iter_batches,
    plan_blocks,
    valid_fraction,
    window_view,
)
from georaster_cnn.errors import BandMismatchError, DataRangeWarning, InputError
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.modelfile import GeoModel
from georaster_cnn.models import resolve_device
from georaster_cnn.stats import ChannelStats, normalize

__all__ = ["CLASS_NODATA", "check_inputs", "predict"]

log = logging.getLogger(__name__)

#: Target block side in input pixels (one Dask task classifies about this many squared).
BLOCK_PX = 1024

#: Class value of output cells without a prediction.
CLASS_NODATA = 255

# One model call at a time per process: torch already uses every core (or the GPU)
# for one batch, so concurrent calls from Dask threads would only oversubscribe.
_MODEL_LOCK = threading.Lock()
_MODULE_CACHE: dict[tuple[str, str], torch.nn.Module] = {}
_MODEL_CACHE: dict[tuple[str, str], GeoModel] = {}  # models unpickled on Dask workers


class _Classifier:
    """Callable ``chips (n, band, p, p) -> probabilities (n, classes)``.

    Pickles as the model file's bytes and rebuilds once per process (cached by
    checksum), so a Dask worker loads the model once, not per task, and a lost
    worker loses nothing.
    """

    def __init__(self, model: GeoModel, device: str) -> None:
        self.model = model
        self.device = device
        self.key = (model.checksum, device)

    def __dask_tokenize__(self) -> tuple[str, str]:
        return self.key

    def __getstate__(self) -> dict[str, Any]:
        return {"raw": self.model.to_bytes(), "device": self.device, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.device = state["device"]
        self.key = state["key"]
        cached = _MODEL_CACHE.get(self.key)
        self.model = cached if cached is not None else GeoModel.from_bytes(state["raw"])
        _MODEL_CACHE.clear()
        _MODEL_CACHE[self.key] = self.model
        _cap_torch_threads_on_worker()

    def _module(self) -> torch.nn.Module:
        mod = _MODULE_CACHE.get(self.key)
        if mod is None:
            dev = resolve_device(self.device)
            mod = self.model.module
            if dev.type != "cpu":  # never move the caller's module
                mod = copy.deepcopy(mod)
            mod = mod.to(dev).eval()
            _MODULE_CACHE.clear()  # keep one model per process resident
            _MODULE_CACHE[self.key] = mod
        return mod

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        with _MODEL_LOCK:
            mod = self._module()
            dev = next(mod.parameters()).device
            x = torch.from_numpy(chips).to(dev, non_blocking=True)
            with (
                torch.inference_mode(),
                torch.autocast(
                    device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"
                ),
            ):
                logits = mod(x)
            return torch.softmax(logits.float(), dim=1).cpu().numpy()


def _cap_torch_threads_on_worker() -> None:
    """On a Dask worker, give torch ``cores // worker threads`` threads, not all cores."""
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, nthreads)))


def _classify_block(
    block: np.ndarray,
    *,
    classifier: _Classifier,
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
    """Check a raster against the model's input contract.

    Raises :class:`BandMismatchError` when the band count differs, naming the
    expected bands and the file. Warns (:class:`DataRangeWarning`) when the dtype
    differs from training or when a few sampled blocks have per-band means or
    spreads far from the training statistics.
    """
    source = data.attrs.get("source", "the input")
    names = [str(b) for b in data["band"].values]
    if len(names) != model.n_bands:
        raise BandMismatchError(
            f"model expects {model.n_bands} band(s) ({', '.join(model.band_names)}); "
            f"{source} has {len(names)} ({', '.join(names)}). Select bands with --bands "
            "(bands=[...] in Python)."
        )
    generic = [f"band_{i + 1}" for i in range(len(names))]
    if names != list(model.band_names) and generic not in (names, list(model.band_names)):
        hint = ",".join(model.band_names)
        detail = (
            "the same bands in another order"
            if set(names) == set(model.band_names)
            else "other band names"
        )
        warnings.warn(
            f"{source}: bands ({', '.join(names)}) are {detail} than the model's "
            f"({', '.join(model.band_names)}); if they are the same quantities, fine, otherwise "
            f"select them with --bands {hint}",
            DataRangeWarning,
            stacklevel=3,
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
    # A few blocks spread over the raster, each reduced to per-band statistics inside
    # the graph: cheap, bounded memory, and enough to catch unit or band-order mix-ups.
    nb = arr.numblocks
    steps = max(1, sample_blocks - 1)
    picks = sorted(
        {(0, i * (nb[1] - 1) // steps, i * (nb[2] - 1) // steps) for i in range(sample_blocks)}
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
                "predictions may be meaningless. Check band order (--bands) and units.",
                DataRangeWarning,
                stacklevel=3,
            )


def predict(
    data: xr.DataArray,
    model: GeoModel,
    *,
    stride: int = 64,
    batch_size: int = 256,
    device: str = "auto",
    min_valid: float | None = None,
    block_cells: int | None = None,
    check: bool = True,
) -> xr.Dataset:
    """Classify every output cell of a raster; lazy and georeferenced.

    Parameters
    ----------
    data
        Canonical ``(band, y, x)`` array from :func:`~georaster_cnn.open_raster`.
    model
        A trained :class:`~georaster_cnn.GeoModel`.
    stride
        Output cell size in input pixels, ``1 <= stride <= patch size``.
    batch_size
        Windows per model call.
    device
        ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
    min_valid
        Minimum fraction of valid pixels in a window for it to get a class;
        default: the model's (0.5 unless trained otherwise).
    block_cells
        Dask block side in output cells; default ``1024 // stride`` so that a block
        is about 1024 x 1024 input pixels whatever the stride.
    check
        Check the input contract first (see :func:`check_inputs`).

    Returns
    -------
    xarray.Dataset
        ``class`` ``(y, x)`` ``uint8`` (255 = no prediction) and ``probability``
        ``(class_name, y, x)`` ``float32`` (NaN = no prediction), on the grid
        ``transform * Affine.scale(stride)`` with the input's CRS.

    Raises
    ------
    BandMismatchError
        The raster's band count is not the model's.
    InputError
        Bad stride, batch size or ``min_valid``.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1; found {batch_size}")
    min_valid = model.min_valid if min_valid is None else float(min_valid)
    if not 0.0 < min_valid <= 1.0:
        raise InputError(f"min_valid must be in (0, 1]; found {min_valid}")
    if set(data.dims) != {"band", "y", "x"}:
        raise InputError(f"expected dims (band, y, x); found {data.dims}")
    data = data.transpose("band", "y", "x")
    resolve_device(device)  # fail now, not inside the graph
    if check:
        check_inputs(data, model)
    grid = PatchGrid(data.sizes["y"], data.sizes["x"], patch=model.patch_size, stride=stride)
    norm = normalize(data, model.stats).data
    if not isinstance(norm, da.Array):
        norm = da.from_array(norm)
    if block_cells is None:
        block_cells = max(1, BLOCK_PX // stride)
    plan = plan_blocks(norm, grid, block_cells=block_cells)
    k = model.n_classes
    probs = da.map_blocks(
        _classify_block,
        plan.blocks,
        classifier=_Classifier(model, device),
        patch=grid.patch,
        stride=grid.stride,
        halo=grid.halo_before,
        min_valid=min_valid,
        batch_size=batch_size,
        n_classes=k,
        chunks=((k,), *plan.cell_chunks),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name="predict-"
        + tokenize(plan.blocks.name, plan.cell_chunks, grid, model.checksum, device, min_valid),
    )
    oh, ow = grid.out_shape
    probs = probs[:, :oh, :ow]
    # Mask before argmax: numpy.argmax treats NaN as the maximum.
    nodata = da.isnan(probs[0])
    cls = da.where(nodata, CLASS_NODATA, da.argmax(da.nan_to_num(probs), axis=0)).astype(np.uint8)
    return _wrap(cls, probs, data, model, grid)


def _wrap(
    cls: da.Array, probs: da.Array, data: xr.DataArray, model: GeoModel, grid: PatchGrid
) -> xr.Dataset:
    transform: Affine = grid.out_transform(data.rio.transform())
    oh, ow = grid.out_shape
    coords: dict[str, Any] = {"class_name": np.array(model.class_names, dtype=object)}
    if transform.b == 0 and transform.d == 0:
        coords["x"] = transform.c + transform.a * (np.arange(ow) + 0.5)
        coords["y"] = transform.f + transform.e * (np.arange(oh) + 0.5)
    attrs = {
        "class_names": json.dumps(list(model.class_names)),
        "class_colors": json.dumps([list(c) for c in model.class_colors]),
        "model_arch": model.arch,
        "model_checksum": model.checksum,
        "stride": grid.stride,
        "patch_size": grid.patch,
        "source": data.attrs.get("source", ""),
    }
    ds = xr.Dataset(
        {
            "class": xr.DataArray(cls, dims=("y", "x"), attrs={"nodata": CLASS_NODATA}),
            "probability": xr.DataArray(probs, dims=("class_name", "y", "x")),
        },
        coords=coords,
        attrs=attrs,
    )
    ds = ds.rio.write_transform(transform)
    crs = data.rio.crs
    if crs is not None:
        ds = ds.rio.write_crs(crs)
    return ds
