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

Labelled chips without georeferencing (:func:`~georaster_cnn.evaluate_chips`,
:mod:`georaster_cnn.evaluation.chipwise`) build the same report from the same
confusion matrix. The report itself lives in :mod:`georaster_cnn.evaluation.report`.
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

from georaster_cnn.cluster.scheduler import use_scheduler
from georaster_cnn.errors import InputError
from georaster_cnn.evaluation.report import EvaluationReport, confusion_matrix
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.io._user_arrays import as_canonical
from georaster_cnn.io.classmap import CLASS_NODATA
from georaster_cnn.model._inference import Classifier
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.options import DEFAULT_BATCH_SIZE, InferenceOptions, evaluation_stride
from georaster_cnn.prediction.blockwise import check_inputs, predict
from georaster_cnn.stats import normalize
from georaster_cnn.training.labels import (
    LabelsArg,
    check_label_dims,
    check_model_ids,
    label_sources,
    resolve_labels,
    warn_on_class_names,
)
from georaster_cnn.training.vector_labels import (
    VectorLabels,
    point_windows,
    rasterize_polygons,
    to_raster_crs,
)

if TYPE_CHECKING:
    import torch
    from distributed import Client

__all__ = ["evaluate"]

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
    options: InferenceOptions | None = None,
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
    batch_size, device, min_valid, options
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
    datas = [as_canonical(d) for d in ([data] if isinstance(data, xr.DataArray) else data)]
    if not datas:
        raise InputError("no raster to evaluate on")
    opts = InferenceOptions.resolve(
        model,
        stride=evaluation_stride(model, stride) if options is None else stride,
        batch_size=batch_size,
        min_valid=min_valid,
        device=device,
        options=options,
    )
    check_label_dims(labels)
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
