"""``select=`` on netCDF and Zarr inputs: one value of each named dimension.

A plain value must match a label of the dimension: exactly for numbers and strings
(to float32 precision for float axes), within half the local step for dates;
``"~VALUE"`` takes the nearest value, with a warning when it is farther than half a
step. A dimension without coordinate values is selected by position. The values
picked are reported as strings (ISO 8601 for dates), which
:mod:`georaster_cnn.io._xarray_open` records in ``attrs["selected"]``.
docs/netcdf-zarr.md describes the rules.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from georaster_cnn.errors import InputError

log = logging.getLogger(__name__)

_ISO_DATE = re.compile(
    r"^\s*(-?\d{1,4})-(\d{1,2})(?:-(\d{1,2}))?(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*$"
)


def _as_label(coord: xr.DataArray, dim: str, value: Any, path: Path | str) -> Any:
    """``value`` (often a CLI string) converted to the type of ``coord``'s labels."""
    kind = coord.dtype.kind
    if kind == "M":
        try:
            return np.datetime64(pd.Timestamp(value).tz_localize(None), "ns")
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{path}: {value!r} is not a date for dimension {dim!r}; use e.g. 2020-01-01"
            ) from exc
    if kind == "O" and coord.size and isinstance(coord.values.flat[0], cftime.datetime):
        first = coord.values.flat[0]
        if isinstance(value, cftime.datetime):
            return value
        m = _ISO_DATE.match(str(value))
        if m is None:
            raise InputError(
                f"{path}: {value!r} is not a date for dimension {dim!r} ({first.calendar} "
                "calendar); use e.g. 2020-01-01 or 2020-01-01T12:00"
            )
        parts = [int(g) if g else d for g, d in zip(m.groups(), (0, 1, 1, 0, 0, 0), strict=True)]
        try:
            return cftime.datetime(*parts, calendar=first.calendar)
        except ValueError as exc:
            raise InputError(
                f"{path}: {value!r} is not a valid {first.calendar} date ({exc})"
            ) from exc
    if kind in "iuf" and isinstance(value, str):
        try:
            num = float(value)
        except ValueError as exc:
            raise InputError(
                f"{path}: dimension {dim!r} has numeric values; {value!r} is not a number"
            ) from exc
        return int(num) if kind in "iu" and num.is_integer() else num
    return value


def _preview(values: np.ndarray, n: int = 6) -> str:
    items = [_fmt_label(v) for v in values[:n]]
    return ", ".join(items) + (f", ... ({values.size} values)" if values.size > n else "")


def _fmt_label(v: Any) -> str:
    if isinstance(v, np.datetime64):
        ts = pd.Timestamp(v)
        return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat()
    if isinstance(v, cftime.datetime):
        return (
            v.strftime("%Y-%m-%d") if (v.hour, v.minute, v.second) == (0, 0, 0) else v.isoformat()
        )
    if isinstance(v, (np.floating, float)) and float(v).is_integer():
        return str(int(v))
    return str(v.item() if isinstance(v, np.generic) else v)


def _is_dates(coord: xr.DataArray) -> bool:
    return coord.dtype.kind == "M" or bool(
        coord.dtype.kind == "O" and coord.size and isinstance(coord.values.flat[0], cftime.datetime)
    )


def _as_numbers(coord: xr.DataArray, label: Any) -> tuple[np.ndarray, float]:
    """A numeric or date axis and a label of it as float64 (seconds for dates); NaN for NaT."""
    if coord.dtype.kind == "M":
        ns = coord.values.astype("datetime64[ns]")
        nums = ns.astype("int64").astype("float64") / 1e9
        nums[np.isnat(ns)] = np.nan
        req = np.datetime64(label, "ns").astype("int64") / 1e9
        return nums, float(req)
    if isinstance(label, cftime.datetime):
        units = "seconds since 1970-01-01"
        nums = np.asarray(
            cftime.date2num(list(coord.values), units, calendar=label.calendar), dtype="float64"
        )
        return nums, float(cftime.date2num(label, units, calendar=label.calendar))
    return coord.values.astype("float64"), float(label)


def _nearest(nums: np.ndarray, req: float) -> tuple[int, float, float]:
    """Position of the value nearest ``req``, its distance, and half the local step there.

    The local step is the step between the nearest value and its neighbour on the
    request's side (the other side's beyond either end of the axis), but at most 1.5
    times the step on the other side: across a gap (missing steps) the regular step
    counts, so a request inside the gap is not quietly matched. A one-value axis has no
    step (0).
    """
    dist = np.where(np.isfinite(nums), np.abs(nums - req), np.inf)
    pos = int(np.argmin(dist))
    axis = np.unique(nums[np.isfinite(nums)])  # sorted
    j = int(np.searchsorted(axis, nums[pos]))
    below = float(axis[j] - axis[j - 1]) if j > 0 else None
    above = float(axis[j + 1] - axis[j]) if j + 1 < axis.size else None
    side, other = (below, above) if req < nums[pos] else (above, below)
    if side is None:
        side, other = other, None
    step = 0.0 if side is None else side if other is None else min(side, 1.5 * other)
    return pos, float(dist[pos]), step / 2


def _fmt_picked(v: Any) -> str:
    """The value a selection picked, as recorded in ``attrs["selected"]`` (ISO 8601 for dates)."""
    if isinstance(v, np.datetime64):
        return pd.Timestamp(v).isoformat()
    if isinstance(v, cftime.datetime):
        return str(v.isoformat())
    if isinstance(v, np.floating) and not float(v).is_integer():
        return str(v)  # the shortest digits of its own precision: float32 0.1 is "0.1"
    return _fmt_label(v)


def _fmt_span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.4g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.4g} hours"
    return f"{seconds:.4g} s"


def _pick_label(
    ds: xr.Dataset, dim: str, value: Any, path: Path | str
) -> tuple[int, str, str | None]:
    """Position on ``dim`` that ``value`` selects, the value picked, and a warning if any.

    A plain value must match: exactly for numbers and strings (to float32 precision
    for float axes), within half the local step for dates. ``"~VALUE"`` takes the
    nearest value, with a warning when it is farther than half a step.
    """
    coord = ds[dim]
    nearest = isinstance(value, str) and value.strip().startswith("~")
    raw = value.strip()[1:].strip() if nearest else value
    label = _as_label(coord, dim, raw, path)
    dates = _is_dates(coord)
    if coord.dtype.kind not in "iufM" and not dates:
        if nearest:
            raise InputError(
                f"{path}: '~' (nearest) needs a numeric or date axis; {dim!r} holds "
                f"{_preview(coord.values)}: give one of its values as it is"
            )
        matches = np.flatnonzero(coord.values == label)
        if matches.size == 0:
            raise InputError(
                f"{path}: dimension {dim!r} has no value {value!r}; its values are "
                f"{_preview(coord.values)}"
            )
        pos, warn = int(matches[0]), None
    else:
        try:
            nums, req = _as_numbers(coord, label)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(
                f"{path}: cannot compare {value!r} with the values of {dim!r} "
                f"({_preview(coord.values)}): {exc}"
            ) from exc
        if not np.isfinite(nums).any():
            raise InputError(f"{path}: dimension {dim!r} has no valid values to select from")
        pos, dist, half = _nearest(nums, req)
        picked = coord.values[pos]
        if dates:
            fits = dist <= half
        elif coord.dtype.kind == "f":  # float32 levels: 0.1 is stored as 0.100000001
            fits = dist <= 1e-6 * max(abs(req), abs(float(nums[pos])))
        else:
            fits = dist == 0
        warn = None
        fix = f"To take the nearest value anyway, use select={{{dim!r}: '~{raw!s}'}}"
        if not fits and not nearest and dates:
            lo, hi = int(np.nanargmin(nums)), int(np.nanargmax(nums))
            raise InputError(
                f"{path}: no {dim} step at {raw!s}: the nearest is {_fmt_label(picked)}, "
                f"{_fmt_span(dist)} away (more than half a step); {dim} runs from "
                f"{_fmt_label(coord.values[lo])} to {_fmt_label(coord.values[hi])} "
                f"({coord.size} steps). {fix}"
            )
        if not fits and not nearest:
            raise InputError(
                f"{path}: dimension {dim!r} has no value {value!r}; its values are "
                f"{_preview(coord.values)} (nearest: {_fmt_label(picked)}). {fix}"
            )
        if not fits:
            away = f"{_fmt_span(dist)} from {raw!s}" if dates else f"{dist:g} from {raw!s}"
            why = f"more than half a {dim} step" if dates else f"{raw!s} is not a value of {dim!r}"
            warn = (
                f"{path}: select={{{dim!r}: {value!r}}} took {_fmt_picked(picked)}, {away} ({why})"
            )
        if np.count_nonzero(nums == nums[pos]) > 1:  # a label repeated in the index
            raise InputError(
                f"{path}: {value!r} matches {np.count_nonzero(nums == nums[pos])} steps of {dim!r}"
            )
    return pos, _fmt_picked(coord.values[pos]), warn


def _apply_select(
    ds: xr.Dataset, select: Mapping[str, Any], path: Path | str
) -> tuple[xr.Dataset, dict[str, str]]:
    """``ds`` with one value of each selected dimension, and the values picked (as strings)."""
    picked: dict[str, str] = {}
    for dim, value in select.items():
        if dim not in ds.dims:
            raise InputError(
                f"{path}: cannot select on {dim!r}: no such dimension; dimensions are "
                f"{', '.join(f'{d} ({n})' for d, n in ds.sizes.items())}"
            )
        if dim not in ds.coords:  # a dimension without labels: select by position
            try:
                pos = int(value)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"{path}: dimension {dim!r} has no coordinate values; select it by "
                    f"position 0..{ds.sizes[dim] - 1}"
                ) from exc
            if not 0 <= pos < ds.sizes[dim]:
                raise InputError(
                    f"{path}: position {pos} is outside {dim!r} (0..{ds.sizes[dim] - 1})"
                )
            picked[dim] = str(pos)
        else:
            pos, picked[dim], warn = _pick_label(ds, dim, value, path)
            if warn is not None:
                warnings.warn(warn, UserWarning, stacklevel=2)
        log.info("%s: select %s=%s picked %s", path, dim, value, picked[dim])
        ds = ds.isel({dim: pos})
    return ds, picked
