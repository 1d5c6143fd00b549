"""Validation splits: spatially blocked for windows of rasters, stratified for chips.

:func:`blocked_split` holds out square blocks of ``val_block`` pixels whole, chosen so
that validation covers the classes where it can, and drops the training windows within
a patch of them, so that no validation window overlaps a training window; a raster too
small for blocks falls back to a stratified random share of its windows
(:func:`random_split_if_unblocked`). Chip sets, without a map to block, use a
stratified random split (:func:`stratified_split`).

:func:`check_split` counts a split's samples per class, refuses a class left without
training samples and warns (:class:`~georaster_cnn.errors.ValidationWarning`) when the
validation set is tiny or misses a class that training has.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from georaster_cnn.errors import TrainingError, ValidationWarning

__all__ = [
    "COVER_SHARE_FACTOR",
    "MIN_VALIDATION_SAMPLES",
    "SplitAdvice",
    "blocked_split",
    "check_split",
    "random_split_if_unblocked",
    "stratified_split",
]

log = logging.getLogger(__name__)

#: A validation set with fewer samples (windows or chips) than this draws a
#: :class:`~georaster_cnn.errors.ValidationWarning`: one sample moves the accuracy by
#: more than 1 %, and the epoch kept is the one with the lowest loss on that sample.
MIN_VALIDATION_SAMPLES = 100

#: The blocks :func:`blocked_split` holds out to cover the classes may take up to this
#: multiple of ``val_fraction`` of the windows (and at most half of them).
COVER_SHARE_FACTOR = 2.0


# --------------------------------------------------------------------------- blocked split


class _Blocks:
    """The blocks that hold windows, and which windows still train as blocks are held.

    Blocks are numbered compactly (only blocks with windows). A window *trains* while
    no held block lies within ``patch - 1`` pixels of its centre along both axes (its
    own block included); holding a block is refused when it would leave a class of
    the raster without a training window.
    """

    def __init__(
        self, centres: np.ndarray, y: np.ndarray, shape: tuple[int, int], patch: int, block: int
    ) -> None:
        nby = max(1, math.ceil(shape[0] / block))
        self.nbx = max(1, math.ceil(shape[1] / block))
        r, c = centres[:, 0].astype(np.int64), centres[:, 1].astype(np.int64)
        by, bx = np.clip(r // block, 0, nby - 1), np.clip(c // block, 0, self.nbx - 1)
        self.ids, self.of_window = np.unique(by * self.nbx + bx, return_inverse=True)
        self.of_window = self.of_window.ravel()
        self.y, self.n_classes = y, int(y.max()) + 1
        self.counts = np.bincount(
            self.of_window * self.n_classes + y, minlength=len(self.ids) * self.n_classes
        ).reshape(len(self.ids), self.n_classes)
        self.size = self.counts.sum(axis=1)
        # The blocks within patch - 1 pixels of each window's centre: rows r0..r1, cols c0..c1.
        d = patch - 1
        self.r0, self.r1 = (np.clip((r + s) // block, 0, nby - 1) for s in (-d, d))
        self.c0, self.c1 = (np.clip((c + s) // block, 0, self.nbx - 1) for s in (-d, d))
        self.reach = -(-d // block)  # a window's block is at most this far from those blocks
        self.order = np.argsort(self.of_window, kind="stable")
        self.starts = np.searchsorted(self.of_window[self.order], np.arange(len(self.ids) + 1))
        self.trains = np.ones(len(y), dtype=bool)
        self.trains_per_class = self.counts.sum(axis=0)
        self.held = np.zeros(len(self.ids), dtype=bool)
        self.n_held = 0  # windows in held blocks

    def _near(self, j: int) -> np.ndarray:
        """Indices of the windows in the blocks around compact block ``j``."""
        yb, xb = divmod(int(self.ids[j]), self.nbx)
        m = self.reach
        rows = np.arange(yb - m, yb + m + 1)
        cols = np.arange(xb - m, xb + m + 1)
        near = (rows[:, None] * self.nbx + cols[None, :])[
            (rows[:, None] >= 0) & (cols[None, :] >= 0) & (cols[None, :] < self.nbx)
        ]
        pos = np.searchsorted(self.ids, near)
        pos = pos[(pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == near)]
        parts = [self.order[self.starts[p] : self.starts[p + 1]] for p in pos]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def hold(self, j: int) -> bool:
        """Hold block ``j`` out unless that leaves a class without training windows."""
        yb, xb = divmod(int(self.ids[j]), self.nbx)
        idx = self._near(j)
        idx = idx[
            self.trains[idx]
            & (self.r0[idx] <= yb) & (yb <= self.r1[idx])
            & (self.c0[idx] <= xb) & (xb <= self.c1[idx])
        ]  # fmt: skip
        lost = np.bincount(self.y[idx], minlength=self.n_classes)
        if ((self.trains_per_class > 0) & (self.trains_per_class <= lost)).any():
            return False
        self.trains[idx] = False
        self.trains_per_class -= lost
        self.held[j] = True
        self.n_held += int(self.size[j])
        return True


def _cover_classes(
    blocks: _Blocks, cap: float, rng: np.random.Generator, *, one: bool = False
) -> None:
    """Hold blocks until every class is in a held block where that is possible.

    Rarest class first; for a class not yet covered, its blocks are tried in a seeded
    random order weighted by their windows of that class, skipping a block that would
    take the held windows beyond ``cap`` or leave a class without training windows.
    With ``one``, stop after the first block held.
    """
    covered = np.zeros(blocks.n_classes, dtype=bool)
    for k in np.argsort(blocks.counts.sum(axis=0), kind="stable"):
        if covered[k] or blocks.counts[:, k].sum() == 0:
            continue
        cand = np.flatnonzero((blocks.counts[:, k] > 0) & ~blocks.held)
        # Efraimidis-Spirakis: sorting log(u) / w draws blocks with weights w, without repeats.
        keys = np.log(rng.random(cand.size)) / blocks.counts[cand, k]
        for j in cand[np.argsort(-keys, kind="stable")]:
            if blocks.n_held + blocks.size[j] <= cap and blocks.hold(int(j)):
                covered |= blocks.counts[j] > 0
                if one:
                    return
                break


def blocked_split(
    centres: np.ndarray,
    shape: tuple[int, int],
    *,
    patch: int,
    block: int,
    fraction: float,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spatially blocked validation split of windows with a buffer.

    The raster is divided into ``block`` x ``block`` pixel squares; a window belongs to
    the square of its centre pixel, and squares are held out for validation whole. Two
    ``patch``-pixel windows overlap exactly when their centres are less than ``patch``
    pixels apart along both axes, so every training window whose centre is within
    ``patch - 1`` pixels of a held-out square is dropped: no validation window
    overlaps a training window.

    The squares are chosen with ``rng`` (the same seed, the same split), among the
    squares that hold windows, in two steps:

    1. *Cover the classes* (``labels`` of two or more classes): rarest class first,
       each class that no held square holds yet gets one square holding it, drawn
       with probability proportional to its windows of that class. A square is
       passed over when the held windows would then exceed
       :data:`COVER_SHARE_FACTOR` x ``fraction`` of all windows (at most half; at
       least ``fraction``); when none fits, the one square step 2 holds out anyway is
       drawn here, covering the rarest class it can.
    2. *Meet the share*: the remaining squares in random order, each held out while
       it brings the held windows closer to ``fraction`` of all windows; at least one
       square when two or more hold windows.

    In both steps a square is passed over when holding it out (with its buffer) would
    leave a class of ``labels`` (or, without labels, the raster) without a training
    window. A class whose windows all lie in one square, or that the share does not
    leave room for, therefore trains but is missing from validation
    (:func:`check_split` warns).

    Parameters
    ----------
    centres
        ``(n, 2)`` centre pixels ``(row, col)`` of the windows.
    shape
        ``(height, width)`` of the raster.
    patch
        Window side in pixels.
    block
        Side of the squares in pixels.
    fraction
        Share of the windows held out (in whole squares).
    rng
        The random generator that picks the squares.
    labels
        ``(n,)`` class of each window (any values); default: one class.

    Returns
    -------
    val, drop
        Boolean masks: validation windows, and training windows inside the buffer.
    """
    n = len(centres)
    if n == 0 or fraction <= 0:
        return np.zeros(n, bool), np.zeros(n, bool)
    y = (
        np.zeros(n, np.int64)
        if labels is None
        else np.unique(np.asarray(labels), return_inverse=True)[1].ravel().astype(np.int64)
    )
    blocks = _Blocks(np.asarray(centres), y, shape, patch, block)
    target = fraction * n
    if blocks.n_classes >= 2:
        _cover_classes(blocks, max(target, min(0.5, COVER_SHARE_FACTOR * fraction) * n), rng)
        if blocks.n_held == 0 and len(blocks.ids) >= 2:
            # No covering square fits the share, but one square is held out anyway
            # (step 2): let it be one that covers a class, the rarest it can.
            _cover_classes(blocks, math.inf, rng, one=True)
    if len(blocks.ids) >= 2:
        for j in rng.permutation(len(blocks.ids)):
            if blocks.n_held >= target:
                break
            # closer to the target with it than without (the first square in any case)
            closer = blocks.n_held + blocks.size[j] / 2 <= target or blocks.n_held == 0
            if not blocks.held[j] and closer:
                blocks.hold(int(j))
    val = blocks.held[blocks.of_window]
    return val, ~val & ~blocks.trains


# --------------------------------------------------------------------------- random splits


def stratified_split(y: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
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


def random_split_if_unblocked(
    val: np.ndarray,
    split: dict[str, Any],
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random share of windows for validation when the blocked split held out none or all.

    With ``labels``, the share is stratified (:func:`stratified_split`): every class
    with two or more windows is in validation and keeps training windows.
    """
    fraction = split["val_fraction"]
    if not ((val.all() or not val.any()) and fraction > 0 and len(val) >= 5):
        return val, split
    # Too few blocks to split spatially (a small raster): hold out a random share.
    if labels is not None:
        val = stratified_split(labels, fraction, rng)
    else:
        n_val = max(1, round(fraction * len(val)))
        val = np.zeros(len(val), dtype=bool)
        val[rng.choice(len(val), n_val, replace=False)] = True
    log.warning(
        "too few %d-px blocks for a spatially blocked split; validating on random windows, "
        "which overlap training windows (the validation accuracy is optimistic). "
        "A smaller val_block= may allow a blocked split",
        split["block_px"],
    )
    return val, {"kind": "random_windows", "val_fraction": fraction}


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class SplitAdvice:
    """What a user can do about a split, one sentence each; ``{name}`` is the class.

    Attributes
    ----------
    no_training
        A class has no training sample.
    no_validation
        A class that trains is missing from validation.
    tiny
        The validation set is tiny.
    """

    no_training: str
    no_validation: str
    tiny: str


def _counts(y: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(y, minlength=n)[:n] if len(y) else np.zeros(n, np.int64)


def check_split(
    y: np.ndarray,
    val: np.ndarray,
    class_names: Sequence[str],
    *,
    unit: str,
    val_fraction: float,
    advice: SplitAdvice,
    dropped: np.ndarray | None = None,
) -> dict[str, dict[str, int]]:
    """Per-class counts of a split, logged at INFO; the split refused or warned about.

    Parameters
    ----------
    y
        Class ids (int) of the samples that train or validate.
    val
        Validation mask over ``y``.
    class_names
        The model's classes, in id order.
    unit
        What a sample is, plural (``windows``, ``chips``).
    val_fraction
        The share asked for; 0 asks for no validation, and nothing is warned about it.
    advice
        The fixes the messages suggest.
    dropped
        Class ids of the windows dropped in the buffer around validation blocks.

    Returns
    -------
    dict
        ``{"train": {name: n}, "validation": {name: n}}`` in class order, plus
        ``"dropped_in_buffer": {name: n}`` when ``dropped`` is given.

    Raises
    ------
    TrainingError
        A class has samples (validation or buffer) but none for training.

    Warns
    -----
    ValidationWarning
        Fewer than :data:`MIN_VALIDATION_SAMPLES` validation samples, or a class with
        training samples but none in validation (``val_fraction > 0``).
    """
    names = [str(s) for s in class_names]
    k = len(names)
    n_train, n_val = _counts(y[~val], k), _counts(y[val], k)
    table: dict[str, np.ndarray] = {"train": n_train, "validation": n_val}
    if dropped is not None:
        table["dropped_in_buffer"] = _counts(dropped, k)
    counts = {key: dict(zip(names, map(int, c), strict=True)) for key, c in table.items()}
    log.info(
        "%s per class (%s): %s",
        unit, " / ".join(table).replace("_", " "),
        ", ".join(f"{nm} {' / '.join(str(int(c[i])) for c in table.values())}"
                  for i, nm in enumerate(names)),
    )  # fmt: skip
    one = unit.removesuffix("s")
    held = n_val + table.get("dropped_in_buffer", 0)
    for i in np.flatnonzero((n_train == 0) & (held > 0)):
        where = f"{n_val[i]} in validation"
        if dropped is not None:
            where += f", {table['dropped_in_buffer'][i]} dropped in the buffer around it"
        raise TrainingError(
            f"class {names[i]} has no training {one}: all its {held[i]} {unit} are held out "
            f"({where}). {advice.no_training.format(name=names[i])}"
        )
    for i in np.flatnonzero(n_train + held == 0):
        log.warning(
            "class %s has no labelled %s: the model has an output for it but never sees it",
            names[i], one,
        )  # fmt: skip
    if val_fraction <= 0:
        return counts
    if n_val.sum() < MIN_VALIDATION_SAMPLES:
        _warn(
            f"the validation set has only {n_val.sum()} {unit} (fewer than "
            f"{MIN_VALIDATION_SAMPLES}): its accuracy is a rough guess, and the epoch kept "
            f"is chosen on it. {advice.tiny}"
        )
    missing = np.flatnonzero((n_train > 0) & (n_val == 0))
    if missing.size and n_val.sum():
        listed = ", ".join(names[i] for i in missing)
        found = ", ".join(f"{names[i]} ({n_train[i]} in training)" for i in missing)
        _warn(
            f"validation holds no {one} of {found}: the validation accuracy says nothing "
            f"about {'that class' if missing.size == 1 else 'these classes'}. "
            f"{advice.no_validation.format(name=listed)}"
        )
    return counts


def _warn(message: str) -> None:
    # stacklevel: _warn <- check_split <- train/train_chips <- the caller
    warnings.warn(message, ValidationWarning, stacklevel=4)
