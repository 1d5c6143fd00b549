"""Accuracy assessment of a model against reference labels.

Cells are the prediction's: :func:`~georaster_cnn.predict` classifies the window
of every output cell, and each cell is compared with the label of its window's
*centre* pixel, ``(s*i + c, s*j + c)`` with ``c = PatchGrid.center_offset`` - the
same pixel that gave a training window its label. Cells whose centre lies outside
the raster, whose centre is unlabelled, or that got no prediction are excluded and
counted, never dropped silently.

Everything is reduced inside the Dask graph: each block of output cells becomes a
small vector of counts (confusion matrix plus exclusions), so memory does not grow
with the raster. Labels are class-id rasters (:func:`~georaster_cnn.open_labels`);
vector labels will plug in where the centre labels are taken (:func:`_centre_labels`).

Labelled chips without georeferencing (:func:`evaluate_chips`) are classified one
chip at a time - one label, one prediction each - and build the same report from
the same confusion matrix (:func:`confusion_matrix`).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import torch
import xarray as xr

from georaster_cnn._atomic import atomic_write
from georaster_cnn.chipdata import ChipSet, chip_valid_fraction, normalize_chips
from georaster_cnn.errors import BandMismatchError, InputError, OutputExistsError
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.modelfile import GeoModel
from georaster_cnn.models import resolve_device
from georaster_cnn.predict import CLASS_NODATA, check_inputs, predict
from georaster_cnn.stats import normalize
from georaster_cnn.train import LabelsArg, resolve_labels
from georaster_cnn.vector_labels import (
    VectorLabels,
    point_windows,
    rasterize_polygons,
    to_raster_crs,
)

__all__ = ["REPORT_FILES", "EvaluationReport", "confusion_matrix", "evaluate", "evaluate_chips"]

log = logging.getLogger(__name__)

#: Files :meth:`EvaluationReport.write` puts in the report folder.
REPORT_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png")

#: Why a cell was left out of the metrics, in the order the reasons are checked.
EXCLUSION_REASONS = ("centre_outside_raster", "unlabelled", "no_prediction")

#: How predictions meet labels, by :attr:`EvaluationReport.unit`.
MATCHING = {
    "cells": "each output cell vs. the label of its window's centre pixel",
    "points": "the window centred on each point vs. the point's class",
    "cells+points": "output cells vs. their centre pixel's label (label rasters, polygons); "
    "the window centred on each point vs. the point's class",
    "chips": "each chip's predicted class vs. the chip's label",
}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts of (true, predicted) class-id pairs; rows = true."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


# --------------------------------------------------------------------------- the report


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` element-wise, 0.0 where ``den`` is 0 (no warning)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """Confusion matrix and the metrics derived from it.

    Attributes
    ----------
    class_names
        The model's classes; index ``k`` is class id ``k``.
    confusion
        ``(K, K)`` int64 counts, rows = true (label) class, columns = predicted class.
        Read-only.
    n_excluded
        Cells left out, by reason: ``centre_outside_raster`` (the last row/column of
        cells when the raster size is not a multiple of the stride), ``unlabelled``
        (the centre pixel has no label), ``no_prediction`` (labelled, but the window
        had too few valid pixels; class 255).
    stride, patch_size
        Geometry of the cells compared.
    sources
        ``(data, labels)`` names of each evaluated pair.
    model_checksum
        :attr:`GeoModel.checksum` of the evaluated model.
    unit
        What was compared: ``"cells"`` (of rasters) or ``"chips"``.

    Notes
    -----
    Precision of a class never predicted, recall of a class absent from the labels,
    and F1 where precision + recall is 0 are undefined; they are reported as 0.0
    and listed in :attr:`zero_division`. Macro F1 averages the classes present in
    the labels or the predictions (a class absent from both says nothing about the
    model); weighted F1 weights each class by its support.
    """

    class_names: tuple[str, ...]
    confusion: np.ndarray
    n_excluded: Mapping[str, int] = field(default_factory=dict)
    stride: int = 0
    patch_size: int = 0
    sources: tuple[tuple[str, str], ...] = ()
    model_checksum: str = ""
    unit: str = "cells"

    def __post_init__(self) -> None:
        k = len(self.class_names)
        cm = np.array(self.confusion, dtype=np.int64)
        if cm.shape != (k, k):
            raise InputError(
                f"confusion matrix must be {k} x {k} (one row and column per class); "
                f"found shape {cm.shape}"
            )
        cm.setflags(write=False)
        object.__setattr__(self, "confusion", cm)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        excluded = {r: 0 for r in EXCLUSION_REASONS}
        excluded.update({str(r): int(n) for r, n in self.n_excluded.items()})
        object.__setattr__(self, "n_excluded", excluded)

    # ----------------------------------------------------------------- metrics

    @property
    def n_evaluated(self) -> int:
        """Cells compared (the sum of the confusion matrix)."""
        return int(self.confusion.sum())

    @property
    def n_correct(self) -> int:
        """Cells whose predicted class is the label (the diagonal)."""
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> float:
        """Overall accuracy: correct cells / evaluated cells (0.0 when none)."""
        return self.n_correct / self.n_evaluated if self.n_evaluated else 0.0

    @property
    def support(self) -> np.ndarray:
        """Evaluated cells per true class (row sums)."""
        return self.confusion.sum(axis=1)

    @property
    def predicted(self) -> np.ndarray:
        """Evaluated cells per predicted class (column sums)."""
        return self.confusion.sum(axis=0)

    @property
    def precision(self) -> np.ndarray:
        """Per class: cells correctly predicted as it / cells predicted as it."""
        return _ratio(np.diag(self.confusion), self.predicted)

    @property
    def recall(self) -> np.ndarray:
        """Per class: cells correctly predicted as it / cells labelled as it."""
        return _ratio(np.diag(self.confusion), self.support)

    @property
    def f1(self) -> np.ndarray:
        """Per class: harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return _ratio(2 * p * r, p + r)

    @property
    def present(self) -> np.ndarray:
        """Per class: whether it occurs in the labels or the predictions."""
        return (self.support > 0) | (self.predicted > 0)

    @property
    def macro_f1(self) -> float:
        """Unweighted mean F1 over the classes present (see :attr:`present`)."""
        present = self.present
        return float(self.f1[present].mean()) if present.any() else 0.0

    @property
    def weighted_f1(self) -> float:
        """Mean F1 weighted by support."""
        n = self.n_evaluated
        return float((self.f1 * self.support).sum() / n) if n else 0.0

    @property
    def zero_division(self) -> dict[str, list[str]]:
        """Classes whose precision, recall or F1 is undefined (reported as 0.0)."""
        names = np.array(self.class_names, dtype=object)
        p, r = self.precision, self.recall
        return {
            "precision": list(names[self.predicted == 0]),
            "recall": list(names[self.support == 0]),
            "f1": list(names[(p + r) == 0]),
        }

    # ----------------------------------------------------------------- export

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary; ``accuracy`` is a top-level key."""
        per_class = {
            name: {
                "id": k,
                "precision": float(self.precision[k]),
                "recall": float(self.recall[k]),
                "f1": float(self.f1[k]),
                "support": int(self.support[k]),
                "predicted": int(self.predicted[k]),
            }
            for k, name in enumerate(self.class_names)
        }
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "weighted_f1": self.weighted_f1,
            "n_evaluated": self.n_evaluated,
            "n_correct": self.n_correct,
            "n_excluded": dict(self.n_excluded),
            "class_names": list(self.class_names),
            "per_class": per_class,
            "confusion_matrix": self.confusion.tolist(),
            "confusion_matrix_axes": {"rows": "true", "columns": "predicted"},
            "zero_division": {
                "value": 0.0,
                "note": "undefined ratios (0/0) are reported as 0.0",
                **self.zero_division,
            },
            "macro_f1_classes": [
                n for n, p in zip(self.class_names, self.present, strict=True) if p
            ],
            "matching": MATCHING.get(self.unit, self.unit),
            "unit": self.unit,
            "stride": self.stride,
            "patch_size": self.patch_size,
            "model_checksum": self.model_checksum,
            "sources": [{"data": d, "labels": lab} for d, lab in self.sources],
        }

    def write(self, report_dir: str | os.PathLike[str], *, overwrite: bool = False) -> list[Path]:
        """Write the report files into ``report_dir`` (created if missing).

        ``metrics.json`` (:meth:`to_dict`), ``per_class.csv``,
        ``confusion_matrix.csv`` (class names as header row and column) and
        ``confusion_matrix.png`` (row-normalised, counts annotated). Each file is
        written under a temporary name and renamed into place.

        Parameters
        ----------
        report_dir
            The folder.
        overwrite
            Replace report files that exist.

        Returns
        -------
        list of Path
            The files written.

        Raises
        ------
        OutputExistsError
            A report file exists and ``overwrite`` is false.
        """
        out = Path(report_dir)
        if not overwrite:
            existing = [f for f in REPORT_FILES if (out / f).exists()]
            if existing:
                raise OutputExistsError(
                    f"{out} already holds a report ({', '.join(existing)}); pass overwrite=True "
                    "(--overwrite) to replace it, or choose another folder"
                )
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        written = [
            atomic_write(out / "metrics.json", lambda f: f.write(text.encode())),
            atomic_write(out / "per_class.csv", lambda f: f.write(self._per_class_csv().encode())),
            atomic_write(
                out / "confusion_matrix.csv", lambda f: f.write(self._confusion_csv().encode())
            ),
            atomic_write(out / "confusion_matrix.png", self._plot),
        ]
        log.info("evaluation report written to %s", out)
        return written

    def _per_class_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["class_id", "class", "precision", "recall", "f1", "support", "predicted"])
        for k, name in enumerate(self.class_names):
            w.writerow([
                k, name, f"{self.precision[k]:.6f}", f"{self.recall[k]:.6f}",
                f"{self.f1[k]:.6f}", int(self.support[k]), int(self.predicted[k]),
            ])  # fmt: skip
        return buf.getvalue()

    def _confusion_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["true \\ predicted", *self.class_names])
        for name, row in zip(self.class_names, self.confusion.tolist(), strict=True):
            w.writerow([name, *row])
        return buf.getvalue()

    def _plot(self, f: Any) -> None:
        """Row-normalised confusion matrix with counts, as PNG into the file object ``f``."""
        # The object-oriented API with an explicit Agg canvas: no pyplot global state,
        # no GUI backend, safe in threads and on headless machines.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        k = len(self.class_names)
        norm = _ratio(self.confusion, self.support[:, None] * np.ones((1, k)))
        side = max(4.0, 1.0 + 0.9 * k)
        fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        ticks = np.arange(k)
        ax.set_xticks(ticks, labels=list(self.class_names), rotation=45, ha="right")
        ax.set_yticks(ticks, labels=list(self.class_names))
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (label)")
        ax.set_title(
            f"accuracy {self.accuracy:.3f}, macro F1 {self.macro_f1:.3f}\n"
            f"{self.n_evaluated:,} {self.unit}"
            + (f", stride {self.stride} px" if "cells" in self.unit else ""),
            fontsize=10,
        )
        small = 9 if k <= 8 else 7
        for i in range(k):
            for j in range(k):
                pct = 100 * norm[i, j]
                share = "<1 %" if 0 < pct < 0.5 else f"{pct:.0f} %"  # a few cells are not 0 %
                ax.text(
                    j, i, f"{self.confusion[i, j]:,}\n{share}",
                    ha="center", va="center", fontsize=small,
                    color="white" if norm[i, j] > 0.5 else "black",
                )  # fmt: skip
        fig.savefig(f, format="png")


# --------------------------------------------------------------------------- computation


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


def _bad_ids(block: np.ndarray, n_classes: int) -> np.ndarray:
    """Distinct labelled values of ``block`` that are not class ids ``0..n_classes-1``."""
    v = block[np.isfinite(block)]
    bad = v[(v < 0) | (v >= n_classes) | (v != np.round(v))]
    return np.unique(bad)


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


def _check_labels(model: GeoModel, labels: xr.DataArray) -> None:
    """Raise InputError naming label values that are not the model's class ids.

    All labelled pixels are checked, not only window centres: a stray id anywhere
    means the labels do not use the model's classes, whatever the stride.
    """
    lab = labels.data
    if not isinstance(lab, da.Array):
        lab = da.from_array(np.asarray(lab))
    parts = [dask.delayed(_bad_ids)(b, model.n_classes) for b in lab.to_delayed().ravel()]
    found = np.unique(np.concatenate([np.empty(0, np.float64), *dask.compute(*parts)]))
    if found.size:
        shown = ", ".join(f"{v:g}" for v in found[:10]) + (" ..." if found.size > 10 else "")
        classes = ", ".join(f"{i} {n}" for i, n in enumerate(model.class_names))
        raise InputError(
            f"label raster {labels.attrs.get('source', 'labels')} holds value(s) {shown} that "
            f"are not class ids of the model, which has {model.n_classes} classes "
            f"({classes}); relabel to 0..{model.n_classes - 1}, or set the raster's nodata "
            "value for unlabelled pixels"
        )


def _counts(
    model: GeoModel,
    data: xr.DataArray,
    centres: da.Array,
    grid: PatchGrid,
    *,
    batch_size: int,
    device: str,
    min_valid: float | None,
) -> da.Array:
    """Lazy count vector (see :func:`_block_counts`) of one raster, plus centre-outside cells."""
    cls = predict(
        data,
        model,
        stride=grid.stride,
        batch_size=batch_size,
        device=device,
        min_valid=min_valid,
        check=False,  # evaluate() has checked the inputs
    )["class"].data
    ny, nx = centres.shape
    cls = cls[:ny, :nx]
    centres = centres.rechunk(cls.chunks)
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
    return per_block.sum(axis=(0, 1))


#: Points classified per pass in :func:`_point_counts` (bounds memory with many points).
POINT_BATCH = 8192


def _classify(
    module: torch.nn.Module, x: np.ndarray, dev: torch.device, batch_size: int
) -> np.ndarray:
    """Class ids of normalised ``(n, band, p, p)`` samples (NaN already 0)."""
    preds = np.empty(len(x), dtype=np.int64)
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(dev)
            with torch.autocast(
                device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"
            ):
                logits = module(xb)
            preds[i : i + batch_size] = logits.float().argmax(1).cpu().numpy()
    return preds


def _point_counts(
    model: GeoModel,
    data: xr.DataArray,
    vl: VectorLabels,
    *,
    batch_size: int,
    device: str,
    min_valid: float,
    seen: np.ndarray,
) -> np.ndarray:
    """Count vector (see :func:`_block_counts`) of the point windows on one raster."""
    k = model.n_classes
    counts = np.zeros(k * k + 2, dtype=np.int64)
    pts = to_raster_crs(vl.points, data, vl.source)
    norm = normalize(data, model.stats).data
    dev = resolve_device(device)
    module = model.module if dev.type == "cpu" else copy.deepcopy(model.module).to(dev)
    module.eval()
    for start in range(0, len(pts), POINT_BATCH):
        part = pts.iloc[start : start + POINT_BATCH]
        pw = point_windows(
            norm, data.rio.transform(), part, patch=model.patch_size, min_valid=min_valid
        )
        seen[start : start + len(part)] |= pw.inside
        pred = _classify(module, pw.chips, dev, batch_size)
        counts[: k * k] += confusion_matrix(pw.ids, pred, k).ravel()
        counts[-1] += pw.n_invalid
    return counts


def evaluate(
    model: GeoModel,
    data: xr.DataArray | Sequence[xr.DataArray],
    labels: LabelsArg | Sequence[LabelsArg],
    *,
    label_column: str | None = None,
    stride: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    min_valid: float | None = None,
) -> EvaluationReport:
    """Compare a model's predictions with reference labels: confusion matrix and metrics.

    Label rasters and polygons: every output cell of :func:`~georaster_cnn.predict`
    at ``stride`` is compared with the label of its window's centre pixel (for
    polygons: the class of the polygon holding that pixel). Points: the window
    centred on each point is classified and compared with the point's class.
    Several rasters add up into one report.

    Parameters
    ----------
    model
        The trained model.
    data
        One or more canonical ``(band, y, x)`` arrays (:func:`~georaster_cnn.open_raster`).
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

    Returns
    -------
    EvaluationReport
        Confusion matrix, metrics and the counts of excluded cells (points on no
        raster count as ``centre_outside_raster``).

    Raises
    ------
    InputError
        Unequal numbers of rasters and label arrays, labels not on the data's grid,
        label values that are not the model's class ids, or no cell to evaluate.
    BandMismatchError
        A raster's band count is not the model's.

    Examples
    --------
    >>> model = load_model("model.safetensors")  # doctest: +SKIP
    >>> report = evaluate(model, open_raster("scene.tif"), open_labels("labels.tif"))  # doctest: +SKIP
    >>> report.accuracy, report.n_excluded  # doctest: +SKIP
    >>> report.write("report/")  # doctest: +SKIP
    >>> points = geopandas.read_file("checks.gpkg")  # doctest: +SKIP
    >>> evaluate(model, open_raster("scene.tif"), points, label_column="class")  # doctest: +SKIP
    """
    datas = [data] if isinstance(data, xr.DataArray) else list(data)
    if not datas:
        raise InputError("no raster to evaluate on")
    if stride is None:
        stride = int(model.provenance.get("stride") or max(1, model.patch_size // 4))
    for lab in [labels] if isinstance(labels, xr.DataArray) else []:
        _check_label_dims(lab)
    if not isinstance(labels, (xr.DataArray, gpd.GeoDataFrame)):
        for lab in labels:
            if isinstance(lab, xr.DataArray):
                _check_label_dims(lab)
    items, _ = resolve_labels(
        datas, labels, label_column=label_column, class_names=list(model.class_names)
    )
    for d in datas:  # band count (BandMismatchError) and data-range warnings, once per raster
        check_inputs(d, model)
    grids, centres, cell_pairs = [], [], []
    for d, it in zip(datas, items, strict=True):
        grid = PatchGrid(d.sizes["y"], d.sizes["x"], patch=model.patch_size, stride=stride)
        if isinstance(it, VectorLabels):
            if not len(it.polygons):
                continue
            lab = rasterize_polygons(to_raster_crs(it.polygons, d, it.source), d, source=it.source)
        else:
            _warn_on_class_names(model, it)
            lab = it
        grids.append(grid)
        centres.append(_centre_labels(lab.transpose("y", "x"), grid))
        cell_pairs.append((d, lab))
    # Labels are checked for all rasters before the model runs on any: fail fast.
    for _, lab in cell_pairs:
        _check_labels(model, lab)
    k = model.n_classes
    lazy = [
        _counts(model, d, cen, g, batch_size=batch_size, device=device, min_valid=min_valid)
        for (d, _), cen, g in zip(cell_pairs, centres, grids, strict=True)
    ]
    totals = np.sum([np.zeros(k * k + 2, np.int64), *dask.compute(*lazy)], axis=0)
    outside = sum(
        math.prod(g.out_shape) - math.prod(c.shape) for g, c in zip(grids, centres, strict=True)
    )
    threshold = model.min_valid if min_valid is None else min_valid
    seen: dict[int, np.ndarray] = {}
    n_points = 0
    for d, it in zip(datas, items, strict=True):
        if isinstance(it, VectorLabels) and len(it.points):
            mask = seen.setdefault(id(it), np.zeros(len(it.points), bool))
            totals = totals + _point_counts(
                model, d, it, batch_size=batch_size, device=device, min_valid=threshold,
                seen=mask,
            )  # fmt: skip
    for mask in seen.values():
        outside += int((~mask).sum())
        n_points += len(mask)
    unit = "cells+points" if cell_pairs and n_points else "points" if n_points else "cells"
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
        sources=tuple(
            (
                str(d.attrs.get("source", "<in-memory>")),
                it.source
                if isinstance(it, VectorLabels)
                else str(it.attrs.get("source", "<in-memory>")),
            )
            for d, it in zip(datas, items, strict=True)
        ),
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


def _check_label_dims(lab: xr.DataArray) -> None:
    if set(lab.dims) != {"y", "x"}:
        raise InputError(
            f"labels {lab.attrs.get('source', '')} must have dims (y, x); found {lab.dims}. "
            "Open label rasters with open_labels."
        )


def _warn_on_class_names(model: GeoModel, labels: xr.DataArray) -> None:
    """Warn when the labels name their classes differently from the model."""
    names = labels.attrs.get("class_names")
    if names and [str(n) for n in names] != list(model.class_names):
        warnings.warn(
            f"labels {labels.attrs.get('source', '')} name their classes "
            f"({', '.join(map(str, names))}) differently from the model "
            f"({', '.join(model.class_names)}); class ids are compared as numbers, so check "
            "that id k means the same class in both",
            UserWarning,
            stacklevel=3,
        )


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


def evaluate_chips(
    model: GeoModel,
    chips: ChipSet,
    *,
    batch_size: int = 256,
    device: str = "auto",
    min_valid: float | None = None,
) -> EvaluationReport:
    """Compare a model's classes on labelled chips with their labels.

    Each chip is one sample: normalised with the model's statistics (NaN -> 0)
    and classified as a whole. Chips with less than ``min_valid`` valid pixels
    get no prediction and are counted in ``n_excluded["no_prediction"]``.

    Parameters
    ----------
    model
        The trained model; its patch size must be the chips' side.
    chips
        From :func:`~georaster_cnn.load_chips`. Class names are matched to the
        model's by name (ids are used as they are when the chips' classes are
        unnamed, ``class_0 ...``).
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
        Chip size not the model's patch size, class names unknown to the model, or
        no chip to evaluate.

    Examples
    --------
    >>> report = evaluate_chips(load_model("m.safetensors"), load_chips("test/"))  # doctest: +SKIP
    >>> report.accuracy  # doctest: +SKIP
    """
    _check_chip_shape(model, chips)
    y_true = _chip_class_ids(model, chips)[chips.labels]
    threshold = model.min_valid if min_valid is None else min_valid
    ok = chip_valid_fraction(chips.chips) >= threshold
    dev = resolve_device(device)
    module = model.module if dev.type == "cpu" else copy.deepcopy(model.module).to(dev)
    module.eval()
    idx = np.flatnonzero(ok)
    preds = np.empty(idx.size, dtype=np.int64)
    step = max(batch_size, POINT_BATCH)  # normalise a slice at a time, not all chips at once
    for i in range(0, idx.size, step):
        x = normalize_chips(chips.chips[idx[i : i + step]], model.stats)
        preds[i : i + step] = _classify(module, x, dev, batch_size)
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
            f"{100 * threshold:.0f} % valid pixels (min_valid)"
        )
    log.info(
        "evaluated %d chips: accuracy %.4f, macro F1 %.4f; %d without prediction",
        report.n_evaluated,
        report.accuracy,
        report.macro_f1,
        int((~ok).sum()),
    )
    return report
