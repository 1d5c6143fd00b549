"""Spatial structure of a raster: Moran's I per band and lag, and its verdict.

A CNN earns its keep when neighbouring cells are related: local patterns that mean
the same wherever they appear. Moran's I at a few distances ("lags") measures how
alike cells are to their neighbours at that distance, band by band:

.. math::

    I(d) = \\frac{\\frac{1}{|P_d|}\\sum_{(i, j) \\in P_d} z_i z_j}{\\frac{1}{N}\\sum_i z_i^2},
    \\qquad z = x - \\bar{x}

where :math:`P_d` holds the rook pairs at distance :math:`d` pixels along x and
along y (``(r, c)-(r, c+d)`` and ``(r, c)-(r+d, c)``) with both cells valid, and
:math:`N` the valid cells. This is the classic Moran's I with binary weights
(``I = N/W * sum w z z / sum z^2``). ``I`` is near 0 for unrelated values, near 1
for smooth fields, negative where neighbours tend to differ (a checkerboard).

The raster is never loaded whole: the band mean and variance come from
:func:`~georaster_cnn.compute_stats` (blockwise), then each block (or, for rasters
larger than ``max_pixels``, each of a seeded sample of windows) contributes the
sums of products of deviations from the *global* mean of the pairs whose first
cell lies in it, read with a halo of ``max(lags)`` pixels; the partial sums are
added up exactly.

:func:`structure_verdict` turns one band's ``I`` per lag into a category and a
plain-language verdict; :mod:`georaster_cnn.products.inspection` builds the whole-raster
report (``inspect``) from these.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from georaster_cnn.errors import InputError
from georaster_cnn.stats import ChannelStats, compute_stats

__all__ = [
    "DEFAULT_LAGS",
    "STRONG_I",
    "WEAK_I",
    "morans_i",
    "structure_verdict",
]

log = logging.getLogger(__name__)

#: Lags (pixels) at which Moran's I is measured by default.
DEFAULT_LAGS: tuple[int, ...] = (1, 2, 4, 8, 16)
#: ``|I|`` below this at every lag: no spatial structure.
WEAK_I = 0.1
#: ``|I|`` at or above this: strong spatial structure (between the two: weak).
STRONG_I = 0.3
#: Side of the windows sampled from rasters larger than ``max_pixels``.
SAMPLE_WINDOW = 512

Structure = Literal["strong", "weak", "none", "constant", "undefined"]


# --------------------------------------------------------------------------- Moran's I


@dataclass(frozen=True)
class _MoranPlan:
    """Lazy partial sums of one raster, and how much of it they cover."""

    parts: list[Any]  # delayed (2, band, lag) arrays: sum of z_i z_j, number of pairs
    windows: int
    pixels: int
    subsampled: bool


def _check_lags(lags: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(v) for v in lags)
    if not out or any(v < 1 for v in out) or any(v != w for v, w in zip(out, lags, strict=True)):
        raise InputError(
            f"lags must be positive whole numbers of pixels; found {list(lags)}. "
            "Give e.g. 1,2,4,8,16."
        )
    return tuple(sorted(set(out)))


def _pair_sums(
    ext: np.ndarray, core: tuple[int, int], lags: tuple[int, ...], mean: np.ndarray
) -> np.ndarray:
    """Sums of ``z_i z_j`` and pair counts, shape ``(2, band, lag + 1)``, of one window.

    The extra last entry holds ``sum z_i^2`` and the number of valid cells of the core.

    ``ext`` is the window plus up to ``max(lags)`` pixels below and to the right
    (less at the raster's far edges); only pairs whose first cell lies in the
    ``core`` (top-left ``core`` pixels) count, so windows that tile the raster
    count every pair exactly once. Pairs with a NaN cell are ignored.
    """
    cy, cx = core
    nb, hy, hx = ext.shape
    out = np.zeros((2, nb, len(lags) + 1))
    for b in range(nb):
        z = ext[b].astype(np.float64) - mean[b]
        own = z[:cy, :cx][np.isfinite(z[:cy, :cx])]
        out[0, b, -1], out[1, b, -1] = np.dot(own, own), own.size
        for k, d in enumerate(lags):
            nx, ny = max(0, min(cx, hx - d)), max(0, min(cy, hy - d))
            for first, second in (
                (z[:cy, :nx], z[:cy, d : d + nx]),  # along x
                (z[:ny, :cx], z[d : d + ny, :cx]),  # along y
            ):
                if first.size == 0:
                    continue
                prod = first * second
                ok = np.isfinite(prod)
                out[0, b, k] += prod[ok].sum()
                out[1, b, k] += np.count_nonzero(ok)
    return out


def _sample_windows(
    height: int, width: int, max_pixels: int, seed: int
) -> list[tuple[int, int, int, int]]:
    """A seeded, spread-out set of non-overlapping windows covering about ``max_pixels``."""
    side = max(1, min(SAMPLE_WINDOW, math.isqrt(max_pixels)))
    wy, wx = min(side, height), min(side, width)
    ys = np.arange(0, height - wy + 1, wy)
    xs = np.arange(0, width - wx + 1, wx)
    cells = [(int(y), int(x)) for y in ys for x in xs]
    n = max(1, min(len(cells), max_pixels // (wy * wx)))
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(cells), size=n, replace=False).tolist())
    return [(cells[i][0], cells[i][0] + wy, cells[i][1], cells[i][1] + wx) for i in picked]


def _dask_data(data: xr.DataArray) -> da.Array:
    arr = data.data if isinstance(data.data, da.Array) else da.from_array(np.asarray(data.data))
    return arr.rechunk({0: -1})


def _plan(
    arr: da.Array,
    stats: ChannelStats,
    lags: tuple[int, ...],
    *,
    max_pixels: int,
    seed: int,
) -> _MoranPlan:
    _, height, width = arr.shape
    subsampled = height * width > max_pixels
    if subsampled:
        windows = _sample_windows(height, width, max_pixels, seed)
    else:
        ystarts = np.cumsum((0, *arr.chunks[1]))
        xstarts = np.cumsum((0, *arr.chunks[2]))
        windows = [
            (int(y0), int(y1), int(x0), int(x1))
            for y0, y1 in itertools.pairwise(ystarts)
            for x0, x1 in itertools.pairwise(xstarts)
        ]
    halo = max(lags)
    parts = []
    for y0, y1, x0, x1 in windows:
        ext = arr[:, y0 : min(height, y1 + halo), x0 : min(width, x1 + halo)]
        parts.append(dask.delayed(_pair_sums)(ext, (y1 - y0, x1 - x0), lags, stats.mean))
    pixels = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in windows)
    return _MoranPlan(parts, len(windows), pixels, subsampled)


def _finish(sums: np.ndarray, stats: ChannelStats, *, subsampled: bool) -> np.ndarray:
    """Moran's I per ``(band, lag)`` from merged partial sums; NaN where undefined.

    Measured exactly, the variance comes from the same float64 partial sums as the
    cross-products (so the result does not depend on chunking); estimated from a
    sample, it is the whole raster's variance.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        if subsampled:
            variance = np.where(stats.count > 0, stats.m2 / np.maximum(stats.count, 1), np.nan)
        else:
            variance = np.where(sums[1, :, -1] > 0, sums[0, :, -1] / sums[1, :, -1], np.nan)
        cross = np.where(
            sums[1, :, :-1] > 0, sums[0, :, :-1] / np.maximum(sums[1, :, :-1], 1), np.nan
        )
        result = cross / variance[:, None]
    # A constant band has no defined I (its tiny variance may be rounding, not variance).
    result[~(variance > 0) | (stats.minimum >= stats.maximum)] = np.nan
    return result


def _to_dict(values: np.ndarray, names: Sequence[str], lags: tuple[int, ...]) -> dict:
    return {n: {d: float(values[b, k]) for k, d in enumerate(lags)} for b, n in enumerate(names)}


def morans_i(
    data: xr.DataArray,
    *,
    lags: Sequence[int] = DEFAULT_LAGS,
    max_pixels: int = 2_000_000,
    seed: int = 0,
    stats: ChannelStats | None = None,
) -> dict[str, dict[int, float]]:
    """Moran's I of each band at each lag, without loading the raster.

    Neighbours are rook pairs at distance ``lag`` pixels along x and along y;
    pairs with a NaN (nodata) cell are ignored. Deviations are taken from the
    global band mean (see the module docstring for the formula).

    Parameters
    ----------
    data
        Canonical ``(band, y, x)`` array from :func:`~georaster_cnn.open_raster`.
    lags
        Distances in pixels.
    max_pixels
        Rasters with more pixels than this are estimated from a seeded sample of
        non-overlapping windows of up to 512 x 512 pixels (about ``max_pixels``
        pixels in all); smaller ones are measured exactly, blockwise.
    seed
        Seeds the choice of sampled windows.
    stats
        The bands' statistics if already known (else :func:`compute_stats`).

    Returns
    -------
    dict
        ``{band name: {lag: I}}``; ``I`` is NaN for a constant band or when no
        pair of valid cells is ``lag`` pixels apart.

    Raises
    ------
    InputError
        Bad ``lags`` or ``max_pixels``, or a band without any valid pixel.

    Examples
    --------
    >>> gc.morans_i(gc.open_raster("scene.tif"), lags=[1, 8])  # doctest: +SKIP
    {'elevation_m': {1: 0.62, 8: 0.05}, ...}
    """
    values, names, lag_t, _ = _morans_i(
        data, lags=lags, max_pixels=max_pixels, seed=seed, stats=stats
    )
    return _to_dict(values, names, lag_t)


def _morans_i(
    data: xr.DataArray,
    *,
    lags: Sequence[int],
    max_pixels: int,
    seed: int,
    stats: ChannelStats | None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, list[str], tuple[int, ...], dict[str, Any]]:
    """Moran's I as a ``(band, lag)`` array, plus sampling details and ``extra`` results.

    ``extra`` holds further lazy values computed in the same pass (sharing reads).
    """
    if data.dims != ("band", "y", "x"):
        raise InputError(
            f"expected a (band, y, x) array as open_raster returns; found dims {data.dims}"
        )
    lag_t = _check_lags(lags)
    if max_pixels < 1:
        raise InputError(f"max_pixels must be >= 1; found {max_pixels}")
    stats = stats if stats is not None else compute_stats(data)
    names = [str(b) for b in data["band"].values]
    arr = _dask_data(data)
    plan = _plan(arr, stats, lag_t, max_pixels=max_pixels, seed=seed)
    if plan.subsampled:
        log.info(
            "%s: Moran's I estimated from %d windows (%d of %d pixels)",
            data.attrs.get("source", "raster"),
            plan.windows,
            plan.pixels,
            arr.shape[1] * arr.shape[2],
        )
    extra = dict(extra or {})
    parts, extra_values = dask.compute(plan.parts, list(extra.values()))
    sums = np.sum(parts, axis=0) if parts else np.zeros((2, len(names), len(lag_t) + 1))
    details = {
        "subsampled": plan.subsampled,
        "windows": plan.windows,
        "pixels": plan.pixels,
        "max_pixels": max_pixels,
        "pairs": {
            n: {d: int(sums[1, b, k]) for k, d in enumerate(lag_t)} for b, n in enumerate(names)
        },
        "extra": dict(zip(extra, extra_values, strict=True)),
    }
    return _finish(sums, stats, subsampled=plan.subsampled), names, lag_t, details


# --------------------------------------------------------------------------- verdicts


def _strength(values: Mapping[int, float]) -> tuple[int, float]:
    """The lag with the largest ``|I|`` (the smallest such lag on ties) and its ``I``."""
    finite = {d: v for d, v in values.items() if math.isfinite(v)}
    lag = max(finite, key=lambda d: (abs(finite[d]), -d))
    return lag, finite[lag]


def _classify(values: Mapping[int, float], constant: bool) -> Structure:
    if constant:
        return "constant"
    if not any(math.isfinite(v) for v in values.values()):
        return "undefined"
    strength = abs(_strength(values)[1])
    if strength >= STRONG_I:
        return "strong"
    if strength >= WEAK_I:
        return "weak"
    return "none"


def _scale_text(values: Mapping[int, float]) -> str:
    """Where the (positive) correlation fades below :data:`WEAK_I`, in words."""
    lags = sorted(d for d, v in values.items() if math.isfinite(v))
    fade = next((d for d in lags if values[d] < WEAK_I), None)
    if fade is None:
        return (
            f"still correlated at {lags[-1]} px, the largest lag measured: patterns are larger "
            "than that, or the band holds a broad trend"
        )
    last = [d for d in lags if d < fade]
    if not last:
        return f"I below {WEAK_I} already at {fade} px"
    return f"pattern scale about {last[-1]} px, I below {WEAK_I} by {fade} px"


def structure_verdict(
    values: Mapping[int, float], *, constant: bool = False
) -> tuple[Structure, str]:
    """Category and plain-language verdict for one band's Moran's I per lag.

    Thresholds on the strongest ``|I|`` over the lags (normally at 1 px):
    below :data:`WEAK_I` (0.1) none, below :data:`STRONG_I` (0.3) weak, else strong.

    Parameters
    ----------
    values
        ``{lag: I}`` of one band.
    constant
        The band is constant (its ``I`` is undefined).

    Returns
    -------
    tuple
        ``("strong" | "weak" | "none" | "constant" | "undefined", text)``.
    """
    kind = _classify(values, constant)
    if kind == "constant":
        return (
            kind,
            "constant band: every valid cell holds the same value; it carries no information",
        )
    if kind == "undefined":
        return kind, (
            "undefined: no two valid cells are as close as the lags measured "
            "(raster too small or mostly nodata)"
        )
    lags = sorted(d for d, v in values.items() if math.isfinite(v))
    first, last = lags[0], lags[-1]
    i_first, i_last = values[first], values[last]
    peak_lag, peak = _strength(values)
    if kind == "none":
        return kind, (
            f"no spatial structure (|I| < {WEAK_I} at all lags, {i_first:.2f} at {first} px): "
            "cells behave like unrelated values; a per-pixel model (or an MLP) is as good "
            "as a CNN"
        )
    if peak < 0:
        return kind, (
            f"{kind}ly negatively autocorrelated (Moran's I {peak:.2f} at {peak_lag} px): "
            "cells tend to differ from their neighbours at that distance (alternating "
            "patterns, stripes); a CNN can pick up such regular patterns"
        )
    if kind == "weak":
        return kind, (
            f"weakly spatially structured (Moran's I {peak:.2f} at {peak_lag} px, {i_last:.2f} "
            f"at {last} px): neighbouring cells are only slightly alike; a CNN may gain "
            "little over a per-pixel model"
        )
    return kind, (
        f"strongly spatially structured (Moran's I {i_first:.2f} at {first} px, "
        f"{'still ' if i_last >= WEAK_I else ''}{i_last:.2f} at {last} px; "
        f"{_scale_text(values)}): neighbouring cells are correlated, convolution can "
        "exploit local patterns"
    )
