"""Accuracy on labelled chips without georeferencing: one label, one prediction each.

:func:`evaluate_chips` classifies every chip of a :class:`~georaster_cnn.ChipSet` as a
whole (normalised with the model's statistics, NaN -> 0) and builds the same
:class:`~georaster_cnn.EvaluationReport` as :func:`~georaster_cnn.evaluate`, with
``unit == "chips"``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from georaster_cnn.errors import BandMismatchError, InputError
from georaster_cnn.evaluation.assessment import POINT_BATCH
from georaster_cnn.evaluation.report import EvaluationReport, confusion_matrix
from georaster_cnn.model._inference import Classifier
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.options import DEFAULT_BATCH_SIZE, InferenceOptions
from georaster_cnn.training.chipdata import ChipSet, chip_valid_fraction, normalize_chips

if TYPE_CHECKING:
    import torch

__all__ = ["evaluate_chips"]

log = logging.getLogger(__name__)


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
    options: InferenceOptions | None = None,
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
    batch_size, device, options
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
        model, batch_size=batch_size, min_valid=min_valid, device=device, options=options
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
