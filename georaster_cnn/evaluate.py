"""Accuracy assessment of a model against reference labels.

Cells are the prediction's: :func:`~georaster_cnn.predict` classifies the window
of every output cell, and each cell is compared with the label of its window's
*centre* pixel, ``(s*i + c, s*j + c)`` with ``c = PatchGrid.center_offset`` - the
same pixel that gave a training window its label. Cells whose centre lies outside
the raster, whose centre is unlabelled, or that got no prediction are excluded and
counted, never dropped silently.

Everything is reduced inside the Dask graph: each block of output cells becomes a
small vector of counts (confusion matrix plus exclusions), so memory does not grow
with the raster. Labels are class-id rasters (:func:`~georaster_cnn.open_labels`)
or vector labels: polygons are rasterised onto the raster's grid and compared cell
by cell; points are compared window by window (the window centred on each point).

Labelled chips without georeferencing (:func:`evaluate_chips`) are classified one
chip at a time - one label, one prediction each - and build the same report from
the same confusion matrix. The report itself lives in :mod:`georaster_cnn.report`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
import xarray as xr

from georaster_cnn._inference import Classifier
from georaster_cnn.chipdata import ChipSet, chip_valid_fraction, normalize_chips
from georaster_cnn.classmap import CLASS_NODATA
from georaster_cnn.errors import BandMismatchError, InputError
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.labels import (
    LabelsArg,
    check_label_dims,
    check_model_ids,
    label_sources,
    resolve_labels,
    warn_on_class_names,
)
from georaster_cnn.modelfile import GeoModel
from georaster_cnn.options import DEFAULT_BATCH_SIZE, InferenceOptions, evaluation_stride
from georaster_cnn.predict import check_inputs, predict
from georaster_cnn.report import EvaluationReport, confusion_matrix
from georaster_cnn.stats import normalize
from georaster_cnn.vector_labels import (
    VectorLabels,
    point_windows,
    rasterize_polygons,
    to_raster_crs,
)

if TYPE_CHECKING:
    import torch
    from distributed import Client

__all__ = ["evaluate", "evaluate_chips"]

log = logging.getLogger(__name__)

#: Points (and chips) normalised and classified per pass (bounds memory with many).
POINT_BATCH = 8192


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class _Cells:
    """A raster whose output cells are compared with labels on its grid."""

    data: xr.DataArray
    labels: xr.DataArray
    grid: PatchGrid
    centres: da.Array  #: label of each cell's window-centre pixel (see _centre_labels)


def _centre_labels(labels: xr.DataArray, grid: PatchGrid) -> da.Array:
    """Label of each output cell's window-centre pixel (NaN = unlabelled), lazily.

    The result covers the cells whose centre lies inside the raster: the first
    ``ceil((H - c) / s)`` rows and ``ceil((W - c) / s)`` columns.
    """
    lab = labels.data
    if not isinstance(lab, da.Array):
        lab = da.from_array(np.asarray(lab))
    c, s = grid.center_offset, grid.stride
    return lab[c::s, c::s].astype(np.float32)


def _block_counts(true: np.ndarray, pred: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Counts of one block: ``K*K`` confusion cells, then unlabelled, no prediction."""
    labelled = np.isfinite(true)
    has_pred = pred != CLASS_NODATA
    ok = labelled & has_pred
    idx = true[ok].astype(np.int64) * n_classes + pred[ok].astype(np.int64)
    counts = np.empty(n_classes * n_classes + 2, dtype=np.int64)
    counts[:-2] = np.bincount(idx, minlength=n_classes * n_classes)
    counts[-2] = int((~labelled).sum())
    counts[-1] = int((labelled & ~has_pred).sum())
    return counts[None, None, :]


def _cell_rasters(
    datas: Sequence[xr.DataArray],
    items: Sequence[xr.DataArray | VectorLabels],
    model: GeoModel,
    stride: int,
) -> list[_Cells]:
    """The rasters with label rasters or polygons, their labels checked against the model.

    Labels are checked for all rasters before the model runs on any: fail fast.
    """
    cells = []
    for d, it in zip(datas, items, strict=True):
        if isinstance(it, VectorLabels):
            if not len(it.polygons):
                continue
            lab = rasterize_polygons(to_raster_crs(it.polygons, d, it.source), d, source=it.source)
        else:
            warn_on_class_names(model, it)
            lab = it
        grid = PatchGrid(d.sizes["y"], d.sizes["x"], patch=model.patch_size, stride=stride)
        cells.append(_Cells(d, lab, grid, _centre_labels(lab.transpose("y", "x"), grid)))
    for c in cells:
        check_model_ids(model, c.labels)
    return cells


def _cell_counts(model: GeoModel, cells: _Cells, opts: InferenceOptions) -> da.Array:
    """Lazy count vectors (see :func:`_block_counts`) of one raster's blocks of cells."""
    cls = predict(
        cells.data,
        model,
        stride=opts.stride,
        batch_size=opts.batch_size,
        device=opts.device,
        min_valid=opts.min_valid,
        check=False,  # evaluate() has checked the inputs
    )["class"].data
    ny, nx = cells.centres.shape
    cls = cls[:ny, :nx]
    centres = cells.centres.rechunk(cls.chunks)
    k = model.n_classes
    per_block = da.map_blocks(
        _block_counts,
        centres,
        cls,
        n_classes=k,
        new_axis=2,
        chunks=((1,) * len(cls.chunks[0]), (1,) * len(cls.chunks[1]), (k * k + 2,)),
        dtype=np.int64,
        meta=np.empty((0, 0, 0), dtype=np.int64),
    )
    return per_block


def _cell_totals(
    model: GeoModel, cells: Sequence[_Cells], opts: InferenceOptions
) -> tuple[np.ndarray, int]:
    """Count vector of all rasters' cells (one Dask computation), and cells centred outside.

    The blocks' counts are its outputs, added up here: progress on a cluster counts them.
    """
    k = model.n_classes
    blocks = [b for c in cells for b in _cell_counts(model, c, opts).to_delayed().ravel()]
    totals = np.zeros(k * k + 2, np.int64)
    for counts in dask.compute(*blocks):
        totals += counts.reshape(-1)
    outside = sum(math.prod(c.grid.out_shape) - math.prod(c.centres.shape) for c in cells)
    return totals, outside


# --------------------------------------------------------------------------- points


def _point_counts(
    model: GeoModel,
    data: xr.DataArray,
    vl: VectorLabels,
    classifier: Classifier,
    opts: InferenceOptions,
    seen: np.ndarray,
) -> np.ndarray:
    """Count vector (see :func:`_block_counts`) of the point windows on one raster."""
    k = model.n_classes
    counts = np.zeros(k * k + 2, dtype=np.int64)
    pts = to_raster_crs(vl.points, data, vl.source)
    norm = normalize(data, model.stats).data
    for start in range(0, len(pts), POINT_BATCH):
        part = pts.iloc[start : start + POINT_BATCH]
        pw = point_windows(
            norm, data.rio.transform(), part, patch=model.patch_size, min_valid=opts.min_valid
        )
        seen[start : start + len(part)] |= pw.inside
        pred = classifier.classes(pw.chips, opts.batch_size)
        counts[: k * k] += confusion_matrix(pw.ids, pred, k).ravel()
        counts[-1] += pw.n_invalid
    return counts


def _point_totals(
    model: GeoModel,
    datas: Sequence[xr.DataArray],
    items: Sequence[xr.DataArray | VectorLabels],
    opts: InferenceOptions,
) -> tuple[np.ndarray, int, int]:
    """Count vector of all point windows, the number of points, and points on no raster."""
    k = model.n_classes
    totals = np.zeros(k * k + 2, dtype=np.int64)
    classifier = Classifier(model, opts.device)
    seen: dict[int, np.ndarray] = {}
    for d, it in zip(datas, items, strict=True):
        if isinstance(it, VectorLabels) and len(it.points):
            mask = seen.setdefault(id(it), np.zeros(len(it.points), bool))
            totals += _point_counts(model, d, it, classifier, opts, mask)
    n_points = sum(len(m) for m in seen.values())
    unseen = sum(int((~m).sum()) for m in seen.values())
    return totals, n_points, unseen


# --------------------------------------------------------------------------- evaluate


def evaluate(
    data: xr.DataArray | Sequence[xr.DataArray],
    model: GeoModel,
    labels: LabelsArg | Sequence[LabelsArg],
    *,
    label_column: str | None = None,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    min_valid: float | None = None,
    scheduler: str | Client | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
) -> EvaluationReport:
    """Compare a model's predictions with reference labels: confusion matrix and metrics.

    Label rasters and polygons: every output cell of :func:`~georaster_cnn.predict`
    at ``stride`` is compared with the label of its window's centre pixel (for
    polygons: the class of the polygon holding that pixel). Points: the window
    centred on each point is classified and compared with the point's class.
    Several rasters add up into one report.

    Parameters
    ----------
    data
        One or more canonical ``(band, y, x)`` arrays (:func:`~georaster_cnn.open_raster`).
    model
        The trained model.
    labels
        Per raster, either a ``(y, x)`` label raster on exactly its grid
        (:func:`~georaster_cnn.open_labels`: class ids ``0..K-1`` of the model,
        NaN = unlabelled) or a :class:`geopandas.GeoDataFrame` of points and/or
        polygons in any CRS; one GeoDataFrame alone serves all rasters.
    label_column
        Vector labels: the column holding the class, as the model's class names or
        ids; default: the only non-geometry column.
    stride
        Spacing of the evaluated windows in pixels; default: the stride the model
        was trained with (its provenance), else ``patch_size // 4``.
    batch_size, device, min_valid
        As for :func:`~georaster_cnn.predict`.
    scheduler, scheduler_file
        Where the Dask work runs, as for :func:`~georaster_cnn.write_prediction`
        (:func:`georaster_cnn.cluster.use_scheduler`). On a cluster the workers
        classify the cells (the model is shipped once) and must read the inputs under
        the same paths; points are classified here. The report does not change.

    Returns
    -------
    EvaluationReport
        Confusion matrix, metrics and the counts of excluded cells (points on no
        raster count as ``centre_outside_raster``).

    Raises
    ------
    InputError
        Bad options, unequal numbers of rasters and label arrays, labels not on the
        data's grid, label values that are not the model's class ids, or no cell to
        evaluate; a malformed or unreachable ``scheduler``.
    BandMismatchError
        A raster's band count is not the model's.

    Examples
    --------
    >>> model = load_model("model.safetensors")  # doctest: +SKIP
    >>> report = evaluate(open_raster("scene.tif"), model, open_labels("labels.tif"))  # doctest: +SKIP
    >>> report.accuracy, report.n_excluded  # doctest: +SKIP
    >>> report.write("report/")  # doctest: +SKIP
    >>> points = geopandas.read_file("checks.gpkg")  # doctest: +SKIP
    >>> evaluate(open_raster("scene.tif"), model, points, label_column="class")  # doctest: +SKIP
    >>> evaluate(rasters, model, label_rasters, scheduler="tcp://10.0.0.5:8786")  # doctest: +SKIP
    """
    datas = [data] if isinstance(data, xr.DataArray) else list(data)
    if not datas:
        raise InputError("no raster to evaluate on")
    opts = InferenceOptions.resolve(
        model,
        stride=evaluation_stride(model, stride),
        batch_size=batch_size,
        min_valid=min_valid,
        device=device,
    )
    check_label_dims(labels)
    from georaster_cnn.cluster import use_scheduler  # imports distributed: only when called

    with use_scheduler(scheduler, scheduler_file=scheduler_file, model=model):
        items, _ = resolve_labels(
            datas, labels, label_column=label_column, class_names=list(model.class_names)
        )
        for d in datas:  # band count (BandMismatchError) and data-range warnings, once each
            check_inputs(d, model)
        cells = _cell_rasters(datas, items, model, opts.stride)
        cell_counts, outside = _cell_totals(model, cells, opts)
        point_counts, n_points, unseen = _point_totals(model, datas, items, opts)
    unit = "cells+points" if cells and n_points else "points" if n_points else "cells"
    names = [str(d.attrs.get("source", "<in-memory>")) for d in datas]
    sources = tuple(zip(names, label_sources(items), strict=True))
    return _checked_report(
        model, cell_counts + point_counts, outside + unseen, opts.stride, sources, unit
    )


def _checked_report(
    model: GeoModel,
    totals: np.ndarray,
    outside: int,
    stride: int,
    sources: tuple[tuple[str, str], ...],
    unit: str,
) -> EvaluationReport:
    """The report of a count vector (see :func:`_block_counts`); logged.

    Raises
    ------
    InputError
        Nothing was compared.
    """
    k = model.n_classes
    report = EvaluationReport(
        class_names=model.class_names,
        confusion=totals[: k * k].reshape(k, k),
        n_excluded={
            "centre_outside_raster": int(outside),
            "unlabelled": int(totals[-2]),
            "no_prediction": int(totals[-1]),
        },
        stride=stride,
        patch_size=model.patch_size,
        sources=sources,
        model_checksum=model.checksum,
        unit=unit,
    )
    if report.n_evaluated == 0:
        raise InputError(
            f"nothing to evaluate: every {'point' if unit == 'points' else 'output cell'} is "
            f"unlabelled, outside the rasters, or without a prediction ({report.n_excluded}); "
            "check that the labels cover the data (and their CRS, or their nodata value)"
        )
    log.info(
        "evaluated %d %s: accuracy %.4f, macro F1 %.4f; excluded %s",
        report.n_evaluated,
        unit,
        report.accuracy,
        report.macro_f1,
        report.n_excluded,
    )
    return report


# --------------------------------------------------------------------------- chips


def _chip_class_ids(model: GeoModel, chips: ChipSet) -> np.ndarray:
    """Model class id of each of the chips' class ids (by name when the chips name theirs)."""
    names = list(chips.class_names)
    default = [f"class_{i}" for i in range(len(names))]
    if all(n in model.class_names for n in names):
        return np.array([model.class_names.index(n) for n in names], dtype=np.int64)
    if names == default and len(names) <= model.n_classes:  # unnamed: ids are the model's ids
        return np.arange(len(names), dtype=np.int64)
    unknown = [n for n in names if n not in model.class_names]
    raise InputError(
        f"{chips.source}: class(es) {', '.join(unknown)} are not classes of the model "
        f"({', '.join(model.class_names)}); name the class folders (or class_names) like the "
        "model's classes"
    )


def _check_chip_shape(model: GeoModel, chips: ChipSet) -> None:
    c, h, w = chips.shape
    if c != model.n_bands:
        raise BandMismatchError(
            f"model expects {model.n_bands} band(s) ({', '.join(model.band_names)}); the chips "
            f"of {chips.source} have {c} channel(s) ({', '.join(chips.band_names)})"
        )
    if h != model.patch_size or w != model.patch_size:
        raise InputError(
            f"model expects {model.patch_size} x {model.patch_size} pixel chips (its patch "
            f"size); the chips of {chips.source} are {h} x {w}. Crop or resample the chips"
        )


def _classify_chips(
    chips: np.ndarray, idx: np.ndarray, model: GeoModel, opts: InferenceOptions
) -> np.ndarray:
    """Class ids of ``chips[idx]``, normalised a slice at a time (not all chips at once)."""
    classifier = Classifier(model, opts.device)
    preds = np.empty(idx.size, dtype=np.int64)
    step = max(opts.batch_size, POINT_BATCH)
    for i in range(0, idx.size, step):
        x = normalize_chips(chips[idx[i : i + step]], model.stats)
        preds[i : i + step] = classifier.classes(x, opts.batch_size)
    return preds


def evaluate_chips(
    chips: ChipSet,
    model: GeoModel,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    min_valid: float | None = None,
) -> EvaluationReport:
    """Compare a model's classes on labelled chips with their labels.

    Each chip is one sample: normalised with the model's statistics (NaN -> 0)
    and classified as a whole. Chips with less than ``min_valid`` valid pixels
    get no prediction and are counted in ``n_excluded["no_prediction"]``.

    Parameters
    ----------
    chips
        From :func:`~georaster_cnn.load_chips`. Class names are matched to the
        model's by name (ids are used as they are when the chips' classes are
        unnamed, ``class_0 ...``).
    model
        The trained model; its patch size must be the chips' side.
    batch_size, device
        As for :func:`~georaster_cnn.predict`.
    min_valid
        Minimum valid fraction of a chip; default: the model's.

    Returns
    -------
    EvaluationReport
        With ``unit == "chips"`` and ``stride == 0``.

    Raises
    ------
    BandMismatchError
        The chips' channel count is not the model's.
    InputError
        Bad options, chip size not the model's patch size, class names unknown to
        the model, or no chip to evaluate.

    Examples
    --------
    >>> report = evaluate_chips(load_chips("test/"), load_model("m.safetensors"))  # doctest: +SKIP
    >>> report.accuracy  # doctest: +SKIP
    """
    opts = InferenceOptions.resolve(
        model, batch_size=batch_size, min_valid=min_valid, device=device
    )
    _check_chip_shape(model, chips)
    y_true = _chip_class_ids(model, chips)[chips.labels]
    ok = chip_valid_fraction(chips.chips) >= opts.min_valid
    idx = np.flatnonzero(ok)
    preds = _classify_chips(chips.chips, idx, model, opts)
    report = EvaluationReport(
        class_names=model.class_names,
        confusion=confusion_matrix(y_true[idx], preds, model.n_classes),
        n_excluded={"no_prediction": int((~ok).sum())},
        stride=0,
        patch_size=model.patch_size,
        sources=((chips.source, chips.source),),
        model_checksum=model.checksum,
        unit="chips",
    )
    if report.n_evaluated == 0:
        raise InputError(
            f"{chips.source}: no chip to evaluate: all {len(chips)} chip(s) have less than "
            f"{100 * opts.min_valid:.0f} % valid pixels (min_valid=)"
        )
    log.info(
        "evaluated %d chips: accuracy %.4f, macro F1 %.4f; %d without prediction",
        report.n_evaluated,
        report.accuracy,
        report.macro_f1,
        int((~ok).sum()),
    )
    return report
