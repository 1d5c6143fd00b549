"""normalise: per-channel statistics computed with Dask, ignoring NaN/nodata.

Statistics are kept as mergeable partial results (count, mean, M2, min, max) so
that blocks, tiles and workers can each compute theirs and combine them exactly
(Chan et al.'s parallel variance).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from georaster_cnn.errors import InputError

__all__ = ["ChannelStats", "band_factors", "compute_stats", "normalize", "normalize_bands"]


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel count, mean, M2 (sum of squared deviations), min and max.

    Examples
    --------
    >>> a = ChannelStats.from_array(np.array([[[1.0, 2.0]]]), ["b"])
    >>> b = ChannelStats.from_array(np.array([[[3.0, np.nan]]]), ["b"])
    >>> a.merge(b).mean.tolist()
    [2.0]
    """

    names: tuple[str, ...]
    count: np.ndarray = field(repr=False)
    mean: np.ndarray
    m2: np.ndarray = field(repr=False)
    minimum: np.ndarray
    maximum: np.ndarray

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel (0 where fewer than 2 values)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(self.count > 1, self.m2 / np.maximum(self.count, 1), 0.0)
        return np.sqrt(var)

    @property
    def scale_std(self) -> np.ndarray:
        """The spread normalisation divides by: ``std``, or 1 for constant bands."""
        std = self.std.copy()
        std[~(std > 0)] = 1.0
        return std

    @classmethod
    def from_array(cls, block: np.ndarray, names: Sequence[str]) -> ChannelStats:
        """Partial statistics of one ``(band, ...)`` NumPy block; NaN and inf ignored.

        Works band by band on the valid values only, so the temporary memory is a
        small multiple of one band, not of the block.
        """
        n = block.shape[0]
        count, mean, m2 = np.zeros(n), np.zeros(n), np.zeros(n)
        mn, mx = np.full(n, np.inf), np.full(n, -np.inf)
        for b in range(n):
            band = block[b].ravel()
            vals = band[np.isfinite(band)]
            if vals.size == 0:
                continue
            count[b] = vals.size
            mean[b] = np.sum(vals, dtype=np.float64) / vals.size
            dev = vals - vals.dtype.type(mean[b])
            m2[b] = np.dot(dev.astype(np.float64, copy=False), dev)
            mn[b], mx[b] = vals.min(), vals.max()
        return cls(tuple(names), count, mean, m2, mn, mx)

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Combine two partial results exactly."""
        if self.names != other.names:
            raise InputError(f"cannot merge statistics of bands {self.names} and {other.names}")
        n = self.count + other.count
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(n > 0, other.count / np.maximum(n, 1), 0.0)
        mean = self.mean + delta * w
        m2 = self.m2 + other.m2 + delta**2 * self.count * w
        return ChannelStats(
            self.names,
            n,
            mean,
            m2,
            np.minimum(self.minimum, other.minimum),
            np.maximum(self.maximum, other.maximum),
        )

    @classmethod
    def merge_all(cls, parts: Iterable[ChannelStats]) -> ChannelStats:
        it = iter(parts)
        total = next(it)
        for p in it:
            total = total.merge(p)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "count": self.count.tolist(),
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
            "std": self.std.tolist(),
            "min": self.minimum.tolist(),
            "max": self.maximum.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelStats:
        arr = lambda k: np.asarray(d[k], dtype="float64")  # noqa: E731
        return cls(tuple(d["names"]), arr("count"), arr("mean"), arr("m2"), arr("min"), arr("max"))


def common_band_names(arrays: Sequence[xr.DataArray]) -> tuple[str, ...]:
    """The bands shared by all ``arrays``; unnamed bands (``band_1 ...``) match any names.

    Raises
    ------
    InputError
        The rasters have different bands.
    """
    names = tuple(str(b) for b in arrays[0]["band"].values)
    generic = tuple(f"band_{i + 1}" for i in range(len(names)))
    for arr in arrays:
        other = tuple(str(b) for b in arr["band"].values)
        if other != names and not (len(other) == len(names) and generic in (names, other)):
            raise InputError(
                f"all rasters must have the same bands; found {names} and {other}"
                + (f" ({arr.attrs['source']})" if "source" in arr.attrs else "")
            )
        if names == generic:
            names = other
    return names


def compute_stats(data: xr.DataArray | Sequence[xr.DataArray]) -> ChannelStats:
    """Per-channel statistics of one or more ``(band, y, x)`` arrays, NaN ignored.

    Each Dask block contributes a partial result; the partials are merged, so the
    whole raster is never in memory and the result does not depend on chunking
    (up to floating-point rounding).

    Parameters
    ----------
    data
        Canonical array(s) from :func:`~georaster_cnn.open_raster`, same bands.

    Returns
    -------
    ChannelStats

    Raises
    ------
    InputError
        A band has no valid pixel at all.
    """
    arrays = [data] if isinstance(data, xr.DataArray) else list(data)
    if not arrays:
        raise InputError("compute_stats needs at least one raster")
    names = common_band_names(arrays)
    parts = []
    for arr in arrays:
        d = arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.values)
        parts += partial_stats(d, names)
    (merged,) = dask.compute(dask.delayed(merged_stats)(parts))
    return merged


def partial_stats(data: da.Array, names: Sequence[str]) -> list[Any]:
    """Lazy partial statistics, one per block of a ``(band, y, x)`` array (all bands a block).

    With :func:`merged_stats`, the pieces of :func:`compute_stats`, for callers that
    gather statistics in the same Dask pass as other work (training).
    """
    blocks = data.rechunk({0: -1}).to_delayed(optimize_graph=False).ravel()
    return [dask.delayed(ChannelStats.from_array)(b, tuple(names)) for b in blocks]


def merged_stats(
    parts: Sequence[ChannelStats],
    *,
    empty: str = "band(s) {names} have no valid pixel (all nodata or NaN)",
) -> ChannelStats:
    """The partial results merged in order.

    Raises
    ------
    InputError
        A band has no valid value at all (``empty``, with ``{names}``, says so).
    """
    merged = ChannelStats.merge_all(parts)
    missing = [n for n, c in zip(merged.names, merged.count, strict=True) if c == 0]
    if missing:
        raise InputError(empty.format(names=", ".join(missing)))
    return merged


def band_factors(stats: ChannelStats) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``mean`` and ``1 / std`` per channel (constant channels: std 1).

    Normalisation is ``(x - mean) * scale`` with these factors, in ``float32``: here for
    NumPy, Dask and xarray (:func:`normalize`, :func:`normalize_bands`), and inside the
    exported ONNX graphs (:mod:`georaster_cnn.model._portable`), so both give the same bits.
    """
    return stats.mean.astype("float32"), (1.0 / stats.scale_std).astype("float32")


def normalize(data: xr.DataArray, stats: ChannelStats) -> xr.DataArray:
    """``(x - mean) / std`` per channel, lazily; NaN stays NaN. Constant bands get std 1."""
    mean, scale = band_factors(stats)
    return ((data - xr.DataArray(mean, dims="band")) * xr.DataArray(scale, dims="band")).astype(
        "float32"
    )


def normalize_bands(arr: Any, stats: ChannelStats) -> Any:
    """:func:`normalize` for a NumPy or Dask array whose first axis is the band."""
    mean, scale = band_factors(stats)
    shape = (-1,) + (1,) * (arr.ndim - 1)
    return ((arr - mean.reshape(shape)) * scale.reshape(shape)).astype("float32")
