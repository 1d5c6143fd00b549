"""Training from label rasters, vector labels (points, polygons) or chip sets.

:func:`train` pairs rasters with their labels (:mod:`georaster_cnn.training.labels`), cuts the
labelled windows and splits them spatially (:mod:`georaster_cnn.training.windows`: a window's
label is the class of its centre pixel; validation blocks of ``val_block`` pixels with
a buffer, so that no validation window overlaps a training window).
:func:`train_chips` takes labelled chips (:mod:`georaster_cnn.training.chipdata`) with a
stratified random split. Both share one loop (:func:`georaster_cnn.training._fit.fit`): flips
and 90-degree rotations, class-weighted loss, batch-norm recalibration after each
epoch, early stopping on the validation loss, and the weights of the best epoch.

How labels become windows (docs/vector-labels.md): vector labels are reprojected to
each raster's CRS; points give the window centred on each point; polygons give the
stride-grid windows whose centre lies inside and that have at least ``min_cover`` of
their pixels inside polygons of that class.

How :func:`train` splits (:func:`~georaster_cnn.training.splits.blocked_split`): about
``val_fraction`` of the labelled windows of each raster is held out in whole
``val_block``-pixel squares, chosen so that every class is in validation where that
leaves it training windows; training windows within ``patch_size - 1`` pixels of a
held-out square are dropped, so no validation window overlaps a training window.

How :func:`train_chips` splits (docs/training-chips.md): the patch size is the chip
size; per-channel statistics come from the chips (NaN ignored), chips are normalised
with them and NaN becomes 0; a stratified random split (seeded) holds out about
``val_fraction`` of every class (at least one chip of each class with two or more
chips); 0 trains on all chips.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from georaster_cnn.errors import InputError, TrainingError
from georaster_cnn.io._user_arrays import as_canonical
from georaster_cnn.io.classmap import default_colors
from georaster_cnn.model.architectures import check_arch
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.options import (
    DEFAULT_ARCH,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_MIN_COVER,
    DEFAULT_MIN_VALID,
    DEFAULT_PATCH,
    DEFAULT_PATIENCE,
    DEFAULT_TRAIN_BATCH_SIZE,
    DEFAULT_VAL_BLOCK,
    DEFAULT_VAL_FRACTION,
    check_fraction,
    check_min_valid,
)
from georaster_cnn.training._fit import EpochFn, FitOptions, fit, untrained
from georaster_cnn.training._raster_fit import RunPlan, fit_windows
from georaster_cnn.training.chipdata import (
    ChipSet,
    chip_stats,
    chip_valid_fraction,
    normalize_chips,
)
from georaster_cnn.training.labels import (
    LabelsArg,
)
from georaster_cnn.training.splits import SplitAdvice, check_split, stratified_split
from georaster_cnn.training.windows import (
    window_spec,
)

if TYPE_CHECKING:
    import torch
    from distributed import Client

# open_labels (georaster_cnn.training.labels) and blocked_split (georaster_cnn.training.splits) are
# importable from here too, where they were documented.
__all__ = ["train", "train_chips"]

log = logging.getLogger(__name__)


def _fit_options(
    *,
    arch: str,
    val_fraction: float,
    min_valid: float | None,
    progress: EpochFn | None,
    on_epoch: EpochFn | None,
    **loop: Any,
) -> tuple[FitOptions, float, float]:
    """The checks :func:`train` and :func:`train_chips` share: loop options, ``val_fraction``, ``min_valid``.

    ``progress=`` is the old name of ``on_epoch=`` (``progress`` now always means
    ``callback(done, total)``, as for :func:`~georaster_cnn.write_prediction`).
    """
    check_arch(arch)
    if progress is not None:
        if on_epoch is not None:
            raise InputError("on_epoch= and progress= (its old name) both given; pass on_epoch=")
        warnings.warn(
            "progress= of train/train_chips is now on_epoch=; progress= will go away",
            DeprecationWarning,
            stacklevel=3,
        )
        on_epoch = progress
    valid = check_min_valid(DEFAULT_MIN_VALID if min_valid is None else min_valid)
    fraction = check_fraction("val_fraction", val_fraction, high_open=True)
    return FitOptions.checked(on_epoch=on_epoch, **loop), fraction, valid


def train(
    data: xr.DataArray | Sequence[xr.DataArray],
    labels: LabelsArg | Sequence[LabelsArg],
    *,
    label_column: str | None = None, class_names: Sequence[str] | None = None,
    arch: str = DEFAULT_ARCH, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
    batch_size: int = DEFAULT_TRAIN_BATCH_SIZE, stride: int | None = None, augment: bool = True,
    patch_size: int = DEFAULT_PATCH, learning_rate: float = DEFAULT_LEARNING_RATE,
    device: str | torch.device = "auto", val_fraction: float = DEFAULT_VAL_FRACTION,
    val_block: int = DEFAULT_VAL_BLOCK, min_valid: float | None = None, resume: bool = True,
    min_cover: float = DEFAULT_MIN_COVER, patience: int | None = DEFAULT_PATIENCE,
    hparams: dict[str, Any] | None = None, max_chip_bytes: int = 2 * 1024**3,
    on_epoch: EpochFn | None = None, progress: EpochFn | None = None, memory: int | None = None,
    scheduler: str | Client | None = None, scheduler_file: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None, checkpoint: str | os.PathLike[str] | None = None,
    allow_remote: bool = False) -> GeoModel:  # fmt: skip
    """Train a classifier from rasters and their labels: label rasters or vector labels.

    Parameters
    ----------
    data
        One or more canonical ``(band, y, x)`` arrays with the same bands; they may differ in
        CRS, resolution and size.
    labels
        Per raster, in order, a ``(y, x)`` label raster on exactly its grid (:func:`open_labels`:
        class ids ``0..K-1``, NaN = unlabelled) or a :class:`geopandas.GeoDataFrame` of points
        and/or polygons in any CRS (one serves all rasters); how each becomes windows: module docs.
    label_column, class_names
        Vector labels: the column of each feature's class, as names or ids ``0..K-1`` (default:
        the only non-geometry column). Names of the ``K`` classes in id order (default: a label
        raster's ``class_names`` attribute, else ``class_0 ...``; a column's names, sorted).
    arch, hparams, epochs, batch_size, learning_rate
        Registered architecture name and its keyword arguments; optimiser settings (Adam,
        class-weighted cross-entropy).
    patch_size, stride
        Window side and window spacing on the grid, in pixels (stride default ``patch_size // 4``).
    device, seed
        ``auto``, ``cpu``, ``cuda`` or ``mps`` (mixed precision on CUDA); the seed of the split,
        shuffling, augmentation and weights: a run is reproducible.
    val_fraction, val_block
        Share of the labelled windows of each raster held out for validation, in whole
        ``val_block``-pixel squares with a buffer (the split rules: module docs).
    min_valid, min_cover
        Minimum valid fraction of a training window (default 0.5; stored as the model's
        default); polygon labels: minimum share of a window inside polygons of its class.
    augment, patience
        Random flips and 90-degree rotations of training batches; stop when the validation loss
        has not improved for this many epochs (``None`` or 0: run all epochs; needs validation).
    max_chip_bytes, on_epoch
        Cap of the windows held in memory (all rasters; beyond it, without a store, a seeded
        random subset is used); ``on_epoch(epoch, epochs, metrics)`` after each epoch
        (``progress=``: its old name).
    scheduler, scheduler_file
        Where the labels are read and the windows cut, as for :func:`~georaster_cnn.write_prediction`.
    store, memory, checkpoint, resume, allow_remote
        A store of every window (folder; URL if ``allow_remote``), built or reused (same inputs,
        options); windows budget in MiB (default ``max_chip_bytes``), a store streams beyond
        it; a checkpoint each epoch, continued if ``resume`` (docs/training-at-scale.md).

    Returns
    -------
    GeoModel
        The weights of the epoch with the lowest validation loss. Its provenance holds
        ``windows_per_class``: ``{"train": {name: n}, "validation": {name: n},
        "dropped_in_buffer": {name: n}}`` (logged at INFO), ``timing`` (reading, computing).

    Raises
    ------
    InputError
        Bad options, misaligned or inconsistent inputs, unreadable vector labels, labels and
        rasters without a CRS to relate them, or a malformed or unreachable ``scheduler``.
    TrainingError
        No labelled window, fewer than two classes, or a class whose windows are all held out.

    Warns
    -----
    ValidationWarning
        Fewer than 100 validation windows, or a class that trains but has no validation window.

    Examples
    --------
    >>> rasters = [open_raster("utm32.tif"), open_raster("utm33.tif")]  # doctest: +SKIP
    >>> model = train(rasters, gpd.read_file("points.gpkg"), label_column="class")  # doctest: +SKIP
    """
    options, val_fraction, min_valid = _fit_options(
        arch=arch, val_fraction=val_fraction, min_valid=min_valid, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, device=device, seed=seed,
        augment=augment, patience=patience, on_epoch=on_epoch, progress=progress,
    )  # fmt: skip
    datas = [as_canonical(d) for d in ([data] if isinstance(data, xr.DataArray) else data)]
    run = RunPlan.checked(store, memory, max_chip_bytes, checkpoint, resume, allow_remote)
    spec = window_spec(
        datas, patch_size=patch_size, stride=stride, min_valid=min_valid, min_cover=min_cover,
        val_block=val_block, seed=seed, max_chip_bytes=run.memory_bytes,
    )  # fmt: skip
    return fit_windows(
        datas, labels, spec, options, label_column=label_column, class_names=class_names,
        arch=arch, hparams=hparams, val_block=val_block, val_fraction=val_fraction,
        scheduler=scheduler, scheduler_file=scheduler_file, run=run,
    )  # fmt: skip


def train_chips(
    chips: ChipSet,
    *,
    arch: str = DEFAULT_ARCH,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_TRAIN_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    device: str | torch.device = "auto",
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    min_valid: float | None = None,
    augment: bool = True,
    patience: int | None = DEFAULT_PATIENCE,
    hparams: dict[str, Any] | None = None,
    on_epoch: EpochFn | None = None,
    progress: EpochFn | None = None,
) -> GeoModel:
    """Train a classifier on labelled chips without georeferencing.

    Statistics, normalisation and the stratified split: module docs. The training
    loop is the one of :func:`train`.

    Parameters
    ----------
    chips
        From :func:`~georaster_cnn.load_chips`.
    arch, epochs, batch_size, learning_rate, device, augment, patience, hparams, on_epoch
        As for :func:`train` (``progress=``: the old name of ``on_epoch=``).
    seed
        Seeds the split, shuffling, augmentation and weights: a run is reproducible.
    val_fraction
        Share of every class held out for validation; 0 trains on all chips.
    min_valid
        Chips with a smaller share of valid (non-NaN in every channel) pixels are
        left out of training, and counted in the log; stored as the model's default
        (default 0.5).

    Returns
    -------
    GeoModel
        The weights of the epoch with the lowest validation loss; provenance
        ``split.kind`` is ``"stratified_random"``, and ``chips_per_class`` is
        ``{"train": {name: n}, "validation": {name: n}}`` (also logged at INFO).

    Raises
    ------
    InputError
        Bad options, or a channel without any valid value.
    TrainingError
        Fewer than two classes with chips (after dropping invalid chips).

    Warns
    -----
    ValidationWarning
        Fewer than 100 validation chips, or a class (of a single chip) that trains
        but has no validation chip.

    Examples
    --------
    >>> chips = load_chips("chips/")  # chips/<class>/*.npy  # doctest: +SKIP
    >>> model = train_chips(chips, epochs=20, seed=1)  # doctest: +SKIP
    >>> save_model(model, "model.safetensors")  # doctest: +SKIP
    """
    options, val_fraction, min_valid = _fit_options(
        arch=arch, val_fraction=val_fraction, min_valid=min_valid, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, device=device, seed=seed,
        augment=augment, patience=patience, on_epoch=on_epoch, progress=progress,
    )  # fmt: skip
    keep = _usable_chips(chips, min_valid)
    raw, y = chips.chips[keep], chips.labels[keep]
    stats = chip_stats(raw, chips.band_names)
    val = stratified_split(y, val_fraction, np.random.default_rng(seed))
    per_class = check_split(
        y, val, chips.class_names, unit="chips", val_fraction=val_fraction, advice=_CHIP_ADVICE
    )
    provenance = {
        "data": [chips.source],
        "labels": [chips.source],
        "split": {"kind": "stratified_random", "val_fraction": val_fraction},
        "n_dropped_invalid": int((~keep).sum()),
        "chips_per_class": per_class,
    }
    x = normalize_chips(raw, stats)
    hp = dict(hparams or {})
    model = GeoModel(
        module=untrained(
            arch, hp, in_channels=len(chips.band_names), n_classes=len(chips.class_names),
            patch_size=chips.patch_size, seed=seed,
        ),
        arch=arch, hparams=hp, band_names=tuple(chips.band_names),
        class_names=tuple(chips.class_names), class_colors=default_colors(len(chips.class_names)),
        stats=stats, patch_size=chips.patch_size, min_valid=min_valid,
        source_dtype=chips.source_dtype,
    )  # fmt: skip
    return fit(x, y, val, model=model, options=options, provenance=provenance, unit="chips")


_CHIP_ADVICE = SplitAdvice(
    no_training="Add chips of {name}.",  # unreachable: the stratified split keeps one
    no_validation="A class with a single chip trains on it; add chips of {name}.",
    tiny="Add chips, or raise val_fraction.",
)


def _usable_chips(chips: ChipSet, min_valid: float) -> np.ndarray:
    """Mask of the chips with at least ``min_valid`` valid pixels.

    Raises
    ------
    TrainingError
        The usable chips hold fewer than two classes.
    """
    keep = chip_valid_fraction(chips.chips) >= min_valid
    if not keep.all():
        log.info(
            "%s: left out %d of %d chips with less than %.0f %% valid pixels (min_valid=)",
            chips.source,
            int((~keep).sum()),
            len(keep),
            100 * min_valid,
        )
    present = np.unique(chips.labels[keep])
    if present.size < 2:
        found = ", ".join(chips.class_names[int(k)] for k in present) or "none"
        raise TrainingError(
            f"{chips.source}: need chips of at least two classes to train; found {found} "
            f"({int(keep.sum())} usable chip(s) of {len(keep)})"
        )
    return keep
