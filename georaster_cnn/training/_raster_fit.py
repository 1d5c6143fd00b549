"""How :func:`~georaster_cnn.train` trains on rasters once its options are checked.

The labelled windows and their split come from memory
(:func:`~georaster_cnn.training.windows.training_windows`) or a window store
(:mod:`~georaster_cnn.training.store`); the model is described and fitted
(:func:`~georaster_cnn.training._fit.fit`), checkpointed as :class:`RunPlan` says.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from georaster_cnn.cluster.scheduler import use_scheduler
from georaster_cnn.errors import TrainingError
from georaster_cnn.geometry import pixel_size_metres
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.options import check_positive
from georaster_cnn.training._fit import FitOptions, fit, untrained
from georaster_cnn.training.labels import (
    LabelsArg,
    label_sources,
    resolve_labels,
    training_class_colors,
    training_class_ids,
    training_class_names,
)
from georaster_cnn.training.splits import SplitAdvice, check_split
from georaster_cnn.training.store import (
    FoundWindows,
    build_store,
    check_store_location,
    recorded_options,
)
from georaster_cnn.training.vector_labels import VectorLabels
from georaster_cnn.training.windows import WindowSpec, training_windows

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["RunPlan", "fit_windows"]


@dataclass(frozen=True)
class RunPlan:
    """Where :func:`train`'s windows live and how it checkpoints."""

    store: str | os.PathLike[str] | None
    memory_bytes: int
    checkpoint: str | os.PathLike[str] | None
    resume: bool
    allow_remote: bool = False

    @classmethod
    def checked(
        cls,
        store: str | os.PathLike[str] | None,
        memory: int | None,
        max_chip_bytes: int,
        checkpoint: str | os.PathLike[str] | None,
        resume: bool,
        allow_remote: bool = False,
    ) -> RunPlan:
        """The plan, ``memory`` (MiB; ``None``: ``max_chip_bytes``) and the store's place checked."""
        budget = max_chip_bytes
        if memory is not None:
            budget = check_positive("memory", memory, unit=" MiB") * 2**20
        if store is not None:
            check_store_location(store, allow_remote)
        return cls(store, budget, checkpoint, bool(resume), bool(allow_remote))


def fit_windows(
    datas: list[xr.DataArray],
    labels: LabelsArg | Sequence[LabelsArg],
    spec: WindowSpec,
    options: FitOptions,
    *,
    label_column: str | None,
    class_names: Sequence[str] | None,
    arch: str,
    hparams: dict[str, Any] | None,
    val_block: int,
    val_fraction: float,
    scheduler: str | Client | None,
    scheduler_file: str | os.PathLike[str] | None,
    run: RunPlan,
) -> GeoModel:
    """:func:`train` after its options are checked: the labelled windows, split, then fitted.

    The labels are read and the windows cut (or a store built) on the scheduler (which
    is closed again before fitting, in this process).
    """
    started = time.perf_counter()
    with use_scheduler(scheduler, scheduler_file=scheduler_file):
        items, vector_names = resolve_labels(
            datas, labels, label_column=label_column, class_names=class_names
        )
        found = _windows(datas, items, spec, run, label_column=label_column,
                         val_block=val_block, val_fraction=val_fraction)  # fmt: skip
    y = _window_class_ids(found.labels, spec.min_cover if vector_names is not None else None)
    dropped = training_class_ids(found.dropped)
    names = training_class_names(
        np.concatenate([y, dropped]), items, given=class_names, vector_names=vector_names
    )
    per_class = check_split(
        y, found.val, names, unit="windows", val_fraction=val_fraction,
        advice=_window_advice(val_block, val_fraction), dropped=dropped,
    )  # fmt: skip
    provenance = _raster_provenance(datas, items, spec, found.split, vector_names)
    provenance["windows_per_class"] = per_class
    if found.store is not None:
        provenance["window_store"] = found.store
    x = found.samples()
    provenance["timing"] = {"reading_s": round(time.perf_counter() - started, 3)}
    hp = dict(hparams or {})
    model = GeoModel(
        module=untrained(
            arch, hp, in_channels=len(found.stats.names), n_classes=len(names),
            patch_size=spec.patch, seed=options.seed,
        ),
        arch=arch, hparams=hp, band_names=found.stats.names,
        class_names=tuple(names), class_colors=training_class_colors(items, len(names)),
        stats=found.stats, patch_size=spec.patch, min_valid=spec.min_valid,
        source_dtype=_source_dtype(datas),
    )  # fmt: skip
    return fit(
        x, y, found.val, model=model, options=options, provenance=provenance,
        unit="windows", checkpoint=run.checkpoint, resume=run.resume,
    )  # fmt: skip


def _windows(
    datas: list[xr.DataArray],
    items: Sequence[xr.DataArray | VectorLabels],
    spec: WindowSpec,
    run: RunPlan,
    *,
    label_column: str | None,
    val_block: int,
    val_fraction: float,
) -> FoundWindows:
    """The labelled windows and split: cut into memory, or in a window store."""
    if run.store is None:
        return FoundWindows.of(training_windows(
            datas, items, spec, val_block=val_block, val_fraction=val_fraction
        ))  # fmt: skip
    recorded = recorded_options(
        datas, items, spec, val_block=val_block, val_fraction=val_fraction,
        label_column=label_column,
    )  # fmt: skip
    store, _ = build_store(
        run.store, datas, items, spec, recorded=recorded, val_block=val_block,
        val_fraction=val_fraction, memory_bytes=run.memory_bytes, allow_remote=run.allow_remote,
    )  # fmt: skip
    return FoundWindows.of_store(store, run.memory_bytes)


def _window_class_ids(labels: np.ndarray, min_cover: float | None) -> np.ndarray:
    """The windows' class ids (see :func:`~georaster_cnn.training.labels.training_class_ids`).

    Raises
    ------
    TrainingError
        No window at all (``min_cover``: the polygon rule applied).
    """
    if len(labels) == 0:
        raise TrainingError(
            "no labelled window found: labels are all nodata, lie outside the rasters, or "
            "their windows are all invalid"
            + (f" or less than {100 * min_cover:.0f} % inside their polygons (min_cover=)"
               if min_cover is not None else "")
        )  # fmt: skip
    return training_class_ids(labels)


def _window_advice(val_block: int, val_fraction: float) -> SplitAdvice:
    """The fixes :func:`~georaster_cnn.training.splits.check_split` suggests for raster windows."""
    return SplitAdvice(
        no_training=f"Label more {{name}} in other places, use a smaller val_block (now "
        f"{val_block} px), or try another seed.",
        no_validation=f"Label {{name}} in more places, or use a smaller val_block (now "
        f"{val_block} px) so that a block holding it can be spared for validation.",
        tiny=f"Label more, train on more or larger rasters, or raise val_fraction (now "
        f"{val_fraction:g}).",
    )


def _source_dtype(datas: Sequence[xr.DataArray]) -> str:
    """The rasters' common data type on disk, or ``mixed``."""
    dtypes = {d.attrs.get("source_dtype", "float32") for d in datas}
    return str(dtypes.pop()) if len(dtypes) == 1 else "mixed"


def _raster_provenance(
    datas: Sequence[xr.DataArray],
    items: Sequence[xr.DataArray | VectorLabels],
    spec: WindowSpec,
    split: dict[str, Any],
    vector_names: Sequence[str] | None,
) -> dict[str, Any]:
    """What a raster-trained model records of its data, labels and split."""
    provenance: dict[str, Any] = {
        "data": [str(Path(d.attrs.get("source", "<in-memory>"))) for d in datas],
        "labels": label_sources(items),
        "stride": spec.stride,
        "split": split,
    }
    if vector_names is not None:
        provenance["min_cover"] = spec.min_cover
    sizes = {pixel_size_metres(d.rio.crs, d.rio.transform()) for d in datas}
    if len(sizes) == 1 and None not in sizes:  # one pixel size, in metres: exports need it
        provenance["pixel_size_m"] = sizes.pop()
    return provenance
