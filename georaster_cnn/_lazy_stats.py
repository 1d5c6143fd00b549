"""Per-channel statistics as lazy parts, to gather in the same Dask pass as other work.

:func:`~georaster_cnn.compute_stats` computes statistics in a pass of its own.
Training needs them in the pass that also cuts its windows, so this module gives the
same computation in pieces: one lazy partial result per block (:func:`partial_stats`,
the blocks ``compute_stats`` uses, so the result is the same to the bit) and the
merge (:func:`merged_stats`); the band names come from
:func:`~georaster_cnn.stats.common_band_names`. Same rules and messages as
``compute_stats``; these pieces belong in :mod:`georaster_cnn.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da

from georaster_cnn.errors import InputError
from georaster_cnn.stats import ChannelStats

__all__ = ["merged_stats", "partial_stats"]


def partial_stats(raw: da.Array, names: tuple[str, ...]) -> list[Any]:
    """Lazy partial statistics of a raster's blocks (the blocks of ``compute_stats``)."""
    blocks = raw.rechunk({0: -1}).to_delayed(optimize_graph=False).ravel()
    return [dask.delayed(ChannelStats.from_array)(b, names) for b in blocks]


def merged_stats(parts: Sequence[ChannelStats]) -> ChannelStats:
    """The partial results merged in order; an error for a band without any valid pixel."""
    merged = ChannelStats.merge_all(parts)
    empty = [n for n, c in zip(merged.names, merged.count, strict=True) if c == 0]
    if empty:
        raise InputError(f"band(s) {', '.join(empty)} have no valid pixel (all nodata or NaN)")
    return merged
