"""The inspection report of one raster: what it is, and how image-like it is.

:func:`inspect_raster` (the ``inspect`` command) describes a raster (driver, bands,
grid, nodata, per-band statistics) and adds its spatial structure from
:mod:`georaster_cnn.products.spatial`: Moran's I per band and lag, the verdict per band,
and one overall verdict for the raster. Its cost is bounded whatever the raster's
size: above ``max_pixels`` cells, statistics, nodata fractions and Moran's I all
come from the same seeded sample of non-overlapping windows of up to 512 x 512
pixels, about ``max_pixels`` cells in all (each window reads the Dask chunks it
touches), and are estimates from that sample (``sampling["subsampled"]`` is true;
counts are the sample's).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from rasterio.errors import RasterioError

from georaster_cnn.errors import GeorasterCNNError, InputError
from georaster_cnn.io._gdal_open import open_input
from georaster_cnn.io.formats import NETCDF_SUFFIXES, input_family
from georaster_cnn.io.reader import open_raster
from georaster_cnn.products.spatial import (
    DEFAULT_LAGS,
    WEAK_I,
    Structure,
    _dask_data,
    _morans_i,
    _sample_windows,
    _strength,
    _to_dict,
    structure_verdict,
)
from georaster_cnn.stats import ChannelStats, compute_stats

__all__ = ["inspect_raster"]


# --------------------------------------------------------------------------- overall verdict


_ORDER: dict[Structure, int] = {"strong": 4, "weak": 3, "none": 2, "constant": 1, "undefined": 0}

#: Said with every overall verdict: Moran's I is a summary of the whole grid.
NOTE = (
    "Moran's I summarises the grid as a whole: regions with different structure are "
    "averaged together. A class that differs from the others only in texture (for "
    "example white noise among smooth fields, I ~ 0 there) is still told apart best "
    "by a model that sees neighbourhoods; train a CNN and a per-pixel or MLP baseline "
    "and compare them on a spatially blocked split to be sure."
)


def _overall(kinds: Mapping[str, Structure], values: Mapping[str, Mapping[int, float]]) -> str:
    n = len(kinds)
    best = max(kinds.values(), key=lambda k: _ORDER[k])
    count = sum(k == best for k in kinds.values())
    which = "the band" if n == 1 else f"{count} of {n} bands"
    if best in ("strong", "weak"):
        peak = max((abs(_strength(values[b])[1]), b) for b, k in kinds.items() if k == best)
        head = (
            f"{best}ly spatially structured in {which} (largest |I| {peak[0]:.2f}, band {peak[1]})"
        )
        if best == "strong":
            return f"{head}: the grid is image-like; a CNN can exploit local patterns"
        return f"{head}: only slightly image-like; a CNN may gain little over a per-pixel model"
    if best == "none":
        return (
            f"no spatial structure in {which} (|I| < {WEAK_I} at all lags): as a whole, cells "
            "behave like unrelated values; a per-pixel model (or an MLP) is likely as good as "
            "a CNN"
        )
    if best == "constant":
        return "every band is constant: nothing to learn from this raster"
    return "Moran's I is undefined for every band: the raster is too small or mostly nodata"


# --------------------------------------------------------------------------- report


def _driver(path: Path) -> str | None:
    if path.suffix.lower() in NETCDF_SUFFIXES:
        return "netCDF"
    if input_family(path) == "zarr":
        return "Zarr"
    try:
        with open_input(path, quiet=True) as src:  # as open_raster opened it
            return str(src.driver)
    except (RasterioError, OSError, GeorasterCNNError):
        return None


def _window_summary(block: np.ndarray, names: tuple[str, ...]) -> tuple[ChannelStats, int]:
    """Statistics of one sampled window and its cells where any band is invalid."""
    return ChannelStats.from_array(block, names), int(np.isnan(block).any(axis=0).sum())


def _sampled_summary(
    arr: da.Array, names: list[str], windows: list[tuple[int, int, int, int]]
) -> tuple[ChannelStats, int]:
    """Per-band statistics and invalid cells over the sampled windows only."""
    parts = [
        dask.delayed(_window_summary)(arr[:, y0:y1, x0:x1], tuple(names))
        for y0, y1, x0, x1 in windows
    ]
    (done,) = dask.compute(parts)
    stats = ChannelStats.merge_all(s for s, _ in done)
    empty = [n for n, c in zip(names, stats.count, strict=True) if c == 0]
    if empty:
        sampled = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in windows)
        raise InputError(
            f"band(s) {', '.join(empty)} have no valid pixel in the {sampled:,} sampled pixels "
            f"({len(windows)} windows); the raster is (nearly) all nodata, or pass a larger "
            "max_pixels= to sample more"
        )
    return stats, sum(n for _, n in done)


def _geometry(data: xr.DataArray) -> dict[str, Any]:
    t = data.rio.transform()
    xres, yres = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    rotation = math.degrees(math.atan2(t.d, t.a))
    crs = data.rio.crs
    units = None
    if crs is not None:
        units = "degree" if crs.is_geographic else (crs.linear_units or None)
    return {
        "crs": None if crs is None else crs.to_string(),
        "crs_units": units,
        "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "resolution": [xres, yres],
        "rotated": bool(t.b != 0 or t.d != 0),
        "rotation_deg": rotation if (t.b != 0 or t.d != 0) else 0.0,
    }


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _opened(source: str | os.PathLike[str] | xr.DataArray) -> tuple[xr.DataArray, Path | None]:
    """The array to inspect and the path it comes from (``None``: made in memory)."""
    if isinstance(source, xr.DataArray):
        src = source.attrs.get("source")
        return source, Path(src) if src else None
    path = Path(source)
    return open_raster(path), path


def _band_stats(stats: ChannelStats, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """The report's ``stats``: count, mean, std, min and max per band name."""
    return {
        n: {
            "count": int(stats.count[b]),
            "mean": float(stats.mean[b]),
            "std": float(stats.std[b]),
            "min": float(stats.minimum[b]),
            "max": float(stats.maximum[b]),
        }
        for b, n in enumerate(names)
    }


def inspect_raster(
    source: str | os.PathLike[str] | xr.DataArray,
    *,
    lags: Sequence[int] = DEFAULT_LAGS,
    max_pixels: int = 2_000_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Describe a raster and judge how image-like it is (spatial autocorrelation).

    Parameters
    ----------
    source
        A raster path (anything :func:`~georaster_cnn.open_raster` opens) or a
        canonical ``(band, y, x)`` array.
    lags, max_pixels, seed
        Passed to :func:`morans_i`. ``max_pixels`` (default 2 million) bounds the
        whole report's reads: a larger raster is described from a seeded sample of
        windows (see the module docs). A path is opened with
        :func:`~georaster_cnn.open_raster`'s defaults; open it yourself for other
        options (e.g. its size limit).

    Returns
    -------
    dict
        JSON-able report (NaN becomes ``None``) with keys ``path``, ``driver``,
        ``bands``, ``dtype``, ``shape`` (``[band, y, x]``), ``crs``, ``crs_units``,
        ``transform``, ``resolution`` (``[x, y]`` pixel size in CRS units),
        ``rotated``, ``rotation_deg``, ``nodata``, ``nodata_fraction``
        (``{"overall": f, "bands": {name: f}}``; overall = cells where any band is
        nodata), ``stats`` (``{name: {count, mean, std, min, max}}``), ``lags``,
        ``morans_i`` (``{name: {lag: I}}``), ``sampling``, ``structure``
        (``{name: "strong"|"weak"|"none"|"constant"|"undefined"}``), ``verdict``
        (``{"bands": {name: text}, "overall": text}``) and ``note``.

    Raises
    ------
    ReadError
        The file cannot be opened or read.
    InputError
        Bad options, or a band without any valid pixel.
    """
    data, path = _opened(source)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InputError(f"max_pixels must be >= 1; found {max_pixels!r}")
    names = [str(b) for b in data["band"].values]
    arr = _dask_data(data)
    n_cells = int(data.sizes["y"] * data.sizes["x"])
    extra: dict[str, Any] = {}
    if n_cells > max_pixels:  # the same windows as Moran's I (same size and seed)
        windows = _sample_windows(int(data.sizes["y"]), int(data.sizes["x"]), max_pixels, seed)
        stats, invalid = _sampled_summary(arr, names, windows)
        n_cells = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in windows)
    else:
        stats = compute_stats(data)
        extra["invalid"] = da.isnan(arr).any(axis=0).sum()
    values, _, lag_t, details = _morans_i(
        data, lags=lags, max_pixels=max_pixels, seed=seed, stats=stats, extra=extra
    )
    if "invalid" in extra:
        invalid = int(details["extra"]["invalid"])
    mi = _to_dict(values, names, lag_t)
    constant = (stats.minimum >= stats.maximum) | ~(stats.std > 0)
    kinds: dict[str, Structure] = {}
    verdicts: dict[str, str] = {}
    for b, n in enumerate(names):
        kinds[n], verdicts[n] = structure_verdict(mi[n], constant=bool(constant[b]))
    nodata = data.attrs.get("source_nodata")
    return {
        "path": None if path is None else str(path),
        "driver": None if path is None or not path.exists() else _driver(path),
        "bands": names,
        "dtype": str(data.attrs.get("source_dtype", data.dtype)),
        "shape": [len(names), int(data.sizes["y"]), int(data.sizes["x"])],
        **_geometry(data),
        "nodata": None if nodata is None else _json_float(float(nodata)),
        "nodata_fraction": {
            "overall": invalid / n_cells,
            "bands": {n: 1.0 - float(stats.count[b]) / n_cells for b, n in enumerate(names)},
        },
        "stats": _band_stats(stats, names),
        "lags": list(lag_t),
        "morans_i": {n: {d: _json_float(v) for d, v in mi[n].items()} for n in names},
        "sampling": {k: details[k] for k in ("subsampled", "windows", "pixels", "max_pixels")},
        "structure": kinds,
        "verdict": {"bands": verdicts, "overall": _overall(kinds, mi)},
        "note": NOTE,
    }
