"""Labelled chips without georeferencing: the chip set and the arithmetic on chips.

A chip set (:class:`ChipSet`) is many small ``(channel, h, w)`` arrays in classes,
all of one shape with ``h == w`` (that side is the patch size of a model trained on
them); invalid pixels are NaN. This module holds it and the per-channel arithmetic
on chips that training and evaluation share; recognising and reading chip sets on
disk is :mod:`georaster_cnn.training.chipfiles`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from georaster_cnn.errors import InputError
from georaster_cnn.stats import ChannelStats, merged_stats

__all__ = [
    "ChipSet",
    "chip_stats",
    "chip_valid_fraction",
    "merge_chips",
    "normalize_chips",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ChipSet:
    """Labelled chips in memory.

    Attributes
    ----------
    chips
        ``(n, c, h, w)`` float32, NaN = invalid pixel; ``h == w``.
    labels
        ``(n,)`` int64 class ids ``0..K-1``.
    class_names
        ``K`` names; index ``k`` is class id ``k``.
    band_names
        ``c`` channel names (default ``band_1 ...``).
    source
        Where the chips came from (a folder or file name).
    source_dtype
        Data type of the chips on disk (``"mixed"`` when they differ).
    """

    chips: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    band_names: tuple[str, ...]
    source: str = "<in-memory>"
    source_dtype: str = "float32"

    def __post_init__(self) -> None:
        x = np.asarray(self.chips, dtype=np.float32)
        y = np.asarray(self.labels)
        if x.ndim != 4:
            raise InputError(
                f"{self.source}: chips must be a (n, channel, y, x) array; found shape {x.shape}"
            )
        if x.shape[2] != x.shape[3]:
            raise InputError(
                f"{self.source}: chips are {x.shape[2]} x {x.shape[3]} pixels; chips must be "
                "square (their side is the model's patch size): crop or pad them"
            )
        if y.shape != (x.shape[0],):
            raise InputError(
                f"{self.source}: {x.shape[0]} chips but labels of shape {y.shape}; need one "
                "label per chip"
            )
        if y.size and (np.issubdtype(y.dtype, np.floating) and (y != np.round(y)).any()):
            raise InputError(f"{self.source}: labels must be integer class ids")
        y = y.astype(np.int64)
        names = tuple(str(n) for n in self.class_names)
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise InputError(
                f"{self.source}: label {bad} is not a class id 0..{len(names) - 1} "
                f"({', '.join(names)}); give class names for every id"
            )
        bands = tuple(str(b) for b in self.band_names) or tuple(
            f"band_{i + 1}" for i in range(x.shape[1])
        )
        if len(bands) != x.shape[1]:
            raise InputError(
                f"{self.source}: {len(bands)} band name(s) for {x.shape[1]} channel(s)"
            )
        object.__setattr__(self, "chips", x)
        object.__setattr__(self, "labels", y)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "band_names", bands)

    def __len__(self) -> int:
        return int(self.chips.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channel, h, w)`` of every chip."""
        c, h, w = self.chips.shape[1:]
        return int(c), int(h), int(w)

    @property
    def patch_size(self) -> int:
        """Chip side in pixels."""
        return int(self.chips.shape[2])

    @property
    def class_counts(self) -> np.ndarray:
        """Chips per class id."""
        return np.bincount(self.labels, minlength=len(self.class_names))


# --------------------------------------------------------------------------- helpers


def chip_valid_fraction(chips: np.ndarray) -> np.ndarray:
    """Per chip: share of pixels valid (finite) in every channel."""
    if chips.shape[0] == 0:
        return np.zeros(0)
    return np.isfinite(chips).all(axis=1).mean(axis=(1, 2))


def chip_stats(chips: np.ndarray, band_names: Sequence[str]) -> ChannelStats:
    """Per-channel statistics of ``(n, c, h, w)`` chips, NaN ignored.

    Raises
    ------
    InputError
        A channel has no valid value.
    """
    step = max(1, 2**22 // max(1, int(np.prod(chips.shape[1:]))))  # ~16 MiB a part
    parts = [
        ChannelStats.from_array(np.moveaxis(chips[i : i + step], 1, 0), band_names)
        for i in range(0, max(1, chips.shape[0]), step)
    ]
    return merged_stats(parts, empty="channel(s) {names} have no valid value in any chip")


def normalize_chips(chips: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """``(x - mean) / std`` per channel (constant channels: std 1), then NaN -> 0."""
    std = stats.scale_std
    mean = stats.mean.astype(np.float32)[None, :, None, None]
    scale = (1.0 / std).astype(np.float32)[None, :, None, None]
    out = (chips.astype(np.float32) - mean) * scale
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def merge_chips(sets: Sequence[ChipSet]) -> ChipSet:
    """One chip set of several (e.g. one per file); their classes, bands and chip shapes must agree.

    Raises
    ------
    InputError
        No set, classes in another order (or others), or chips of another shape or bands.
    """
    if not sets:
        raise InputError("no chip set to merge")
    first = sets[0]
    for other in sets[1:]:
        if other.class_names != first.class_names:
            raise InputError(
                f"{other.source} has classes {', '.join(other.class_names)} but {first.source} "
                f"has {', '.join(first.class_names)}; give class_names= to fix one order"
            )
        if other.shape != first.shape or other.band_names != first.band_names:
            raise InputError(
                f"{other.source} holds chips of shape {other.shape} (bands "
                f"{', '.join(other.band_names)}) but {first.source} {first.shape} (bands "
                f"{', '.join(first.band_names)}); all chips must match"
            )
    if len(sets) == 1:
        return first
    dtypes = {s.source_dtype for s in sets}
    return ChipSet(
        chips=np.concatenate([s.chips for s in sets]),
        labels=np.concatenate([s.labels for s in sets]),
        class_names=first.class_names,
        band_names=first.band_names,
        source=", ".join(s.source for s in sets),
        source_dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
    )
