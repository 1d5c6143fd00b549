"""The evaluation report: a confusion matrix, the metrics derived from it, and its files.

:class:`EvaluationReport` is a value: :func:`~georaster_cnn.evaluation.assessment.evaluate` and
:func:`~georaster_cnn.evaluation.assessment.evaluate_chips` compute one, and
:meth:`EvaluationReport.write` puts it on disk as ``metrics.json``, ``per_class.csv``,
``confusion_matrix.csv`` and ``confusion_matrix.png``, each file staged and renamed
into place.

The CSV files are opened in spreadsheets, which run a cell that starts with ``=``, ``+``,
``-`` or ``@`` (and, in some, tab or carriage return) as a formula: every text cell that
starts with one of those gets a leading apostrophe (:func:`csv_text`, after the OWASP
guidance on CSV injection). Numbers are written as numbers.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from georaster_cnn.errors import InputError, OutputExistsError
from georaster_cnn.io.staging import atomic_write, output_exists

__all__ = [
    "EXCLUSION_REASONS",
    "REPORT_FILES",
    "EvaluationReport",
    "check_report_folder",
    "confusion_matrix",
    "csv_text",
]

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


#: First characters that make a spreadsheet read a cell as a formula (OWASP: CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs as a formula: ``'`` before a formula start.

    A cell that starts with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a
    leading apostrophe, which spreadsheets hide and which keeps the text as text. Use
    it for text only (class names, file names); numbers are written as numbers.

    Examples
    --------
    >>> csv_text("=1+2")
    "'=1+2"
    >>> csv_text("forest")
    'forest'
    """
    return "'" + text if text.startswith(_FORMULA_START) else text


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts of (true, predicted) class-id pairs; rows = true."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` element-wise, 0.0 where ``den`` is 0 (no warning)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def check_report_folder(report_dir: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """``report_dir`` as a :class:`~pathlib.Path`, refused when it holds a report and ``overwrite`` is false.

    Callers may ask before slow work, to fail fast; :meth:`EvaluationReport.write` asks again.

    Raises
    ------
    OutputExistsError
        A report file (:data:`REPORT_FILES`) exists there and ``overwrite`` is false.
    """
    out = Path(report_dir)
    if not overwrite:
        existing = [f for f in REPORT_FILES if output_exists(out / f)]
        if existing:
            raise OutputExistsError(
                f"{out} already holds a report ({', '.join(existing)}); pass overwrite=True "
                "to replace it, or choose another folder"
            )
    return out


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
        written under a temporary name and renamed into place. In the CSV files a
        class name that a spreadsheet would run as a formula (one starting with ``=``,
        ``+``, ``-``, ``@``, tab or carriage return) gets a leading apostrophe
        (:func:`csv_text`); numbers stay numbers. The CSV files follow RFC 4180
        (CRLF line ends; fields with line breaks, commas or quotes are quoted).

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
        out = check_report_folder(report_dir, overwrite=overwrite)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        writers: dict[str, Callable[[BinaryIO], Any]] = {
            "metrics.json": lambda f: f.write(text.encode()),
            "per_class.csv": lambda f: f.write(self._per_class_csv().encode()),
            "confusion_matrix.csv": lambda f: f.write(self._confusion_csv().encode()),
            "confusion_matrix.png": self._plot,
        }
        # without overwrite, another run's report written meanwhile is not replaced
        written = [atomic_write(out / n, w, overwrite=overwrite) for n, w in writers.items()]
        log.info("evaluation report written to %s", out)
        return written

    def _per_class_csv(self) -> str:
        buf = io.StringIO()
        # RFC 4180 line ends: the csv module quotes a field holding a character of the
        # line terminator only, so with "\n" alone a CR inside a name would split a row.
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(["class_id", "class", "precision", "recall", "f1", "support", "predicted"])
        for k, name in enumerate(self.class_names):
            w.writerow([
                k, csv_text(name), f"{self.precision[k]:.6f}", f"{self.recall[k]:.6f}",
                f"{self.f1[k]:.6f}", int(self.support[k]), int(self.predicted[k]),
            ])  # fmt: skip
        return buf.getvalue()

    def _confusion_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        names = [csv_text(n) for n in self.class_names]
        w.writerow(["true \\ predicted", *names])
        for name, row in zip(names, self.confusion.tolist(), strict=True):
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
