"""Validation splits: spatially blocked for windows of rasters, stratified for chips.

:func:`blocked_split` holds out square blocks of ``val_block`` pixels whole and drops
the training windows within a patch of them, so that no validation window overlaps a
training window; a raster too small for blocks falls back to a random share of its
windows (:func:`random_split_if_unblocked`). Chip sets, without a map to block, use a
stratified random split (:func:`stratified_split`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

__all__ = [
    "blocked_split",
    "random_split_if_unblocked",
    "stratified_split",
]

log = logging.getLogger(__name__)


def blocked_split(
    centres: np.ndarray,
    shape: tuple[int, int],
    *,
    patch: int,
    block: int,
    fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Spatially blocked validation split of windows with a buffer.

    The raster is divided into ``block`` x ``block`` pixel squares and a seeded random
    ``fraction`` of them (at least one of two or more; none of a single square) is
    held out for validation; a window belongs to the square of its centre pixel. Two
    ``patch``-pixel windows overlap exactly when their centres are less than
    ``patch`` pixels apart along both axes, so every training window whose centre is
    within ``patch - 1`` pixels of a held-out square is dropped: no validation window
    overlaps a training window.

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
        Share of the squares held out.
    rng
        The random generator that picks the squares.

    Returns
    -------
    val, drop
        Boolean masks: validation windows, and training windows inside the buffer.
    """
    nby = max(1, math.ceil(shape[0] / block))
    nbx = max(1, math.ceil(shape[1] / block))
    # Exactly round(fraction * blocks) blocks (at least one when there are two or more),
    # not a coin toss per block: the validation share then varies little between seeds.
    n_blocks = nby * nbx
    n_held = min(n_blocks - 1, max(1, round(fraction * n_blocks))) if fraction > 0 else 0
    flat = np.zeros(n_blocks, dtype=bool)
    flat[rng.choice(n_blocks, n_held, replace=False)] = True
    held = flat.reshape(nby, nbx)
    if len(centres) == 0:
        return np.zeros(0, bool), np.zeros(0, bool)
    r, c = centres[:, 0], centres[:, 1]
    val = held[np.clip(r // block, 0, nby - 1), np.clip(c // block, 0, nbx - 1)]
    sat = np.zeros((nby + 1, nbx + 1), dtype=np.int64)
    sat[1:, 1:] = held.cumsum(0).cumsum(1)
    d = patch - 1
    r0, r1 = np.clip((r - d) // block, 0, nby - 1), np.clip((r + d) // block, 0, nby - 1) + 1
    c0, c1 = np.clip((c - d) // block, 0, nbx - 1), np.clip((c + d) // block, 0, nbx - 1) + 1
    near = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return val, ~val & (near > 0)


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
    val: np.ndarray, split: dict[str, Any], rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random share of windows for validation when the blocked split held out none or all."""
    fraction = split["val_fraction"]
    if not ((val.all() or not val.any()) and fraction > 0 and len(val) >= 5):
        return val, split
    # Too few blocks to split spatially (a small raster): hold out a random share.
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
