"""normalise: mergeable per-channel statistics, computed with Dask, NaN ignored."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from georaster_cnn import ChannelStats, InputError, compute_stats, normalize, open_raster

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
maybe_nan = st.one_of(finite, st.just(np.nan))


@st.composite
def arrays_with_splits(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    bands = draw(st.integers(1, 3))
    n = draw(st.integers(1, 60))
    arr = draw(hnp.arrays(np.float64, (bands, n), elements=maybe_nan))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return arr, cuts


def _names(k: int) -> list[str]:
    return [f"b{i}" for i in range(k)]


@given(arrays_with_splits())
def test_merge_of_parts_equals_whole(case: tuple[np.ndarray, list[int]]) -> None:
    arr, cuts = case
    names = _names(arr.shape[0])
    parts = [ChannelStats.from_array(p, names) for p in np.split(arr, cuts, axis=1)]
    merged = ChannelStats.merge_all(parts)
    whole = ChannelStats.from_array(arr, names)
    ok = ~np.isnan(arr)
    count = ok.sum(axis=1)
    np.testing.assert_array_equal(merged.count, count)
    scale = np.maximum(1.0, np.abs(np.where(ok, arr, 0.0)).max(axis=1))
    has = count > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: "mean of empty slice"
        ref_mean = np.nanmean(arr, axis=1)
        ref_std = np.nanstd(arr, axis=1)
    big = float(scale.max())
    np.testing.assert_allclose(merged.mean[has], ref_mean[has], rtol=1e-9, atol=1e-9 * big)
    np.testing.assert_allclose(merged.std[has], ref_std[has], rtol=1e-7, atol=1e-7 * big)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-9, atol=1e-9 * big)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-7, atol=1e-7 * big**2)
    np.testing.assert_array_equal(merged.mean[~has], 0.0)
    np.testing.assert_array_equal(merged.std[~has], 0.0)
    if has.any():
        np.testing.assert_array_equal(merged.minimum[has], np.nanmin(arr[has], axis=1))
        np.testing.assert_array_equal(merged.maximum[has], np.nanmax(arr[has], axis=1))


def test_merge_is_order_independent_and_handles_empty_parts() -> None:
    rng = np.random.default_rng(1)
    arr = rng.normal(5.0, 2.0, (2, 100))
    names = _names(2)
    empty = ChannelStats.from_array(np.full((2, 0), np.nan), names)
    a = ChannelStats.from_array(arr[:, :30], names)
    b = ChannelStats.from_array(arr[:, 30:], names)
    for combo in ([a, b], [b, a], [empty, a, b], [a, empty, b], [a, b, empty]):
        m = ChannelStats.merge_all(combo)
        np.testing.assert_allclose(m.mean, arr.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(m.std, arr.std(axis=1), rtol=1e-12)


def test_merge_rejects_different_bands() -> None:
    a = ChannelStats.from_array(np.ones((1, 3)), ["a"])
    b = ChannelStats.from_array(np.ones((1, 3)), ["b"])
    with pytest.raises(InputError):
        a.merge(b)


def test_docstring_example() -> None:
    a = ChannelStats.from_array(np.array([[[1.0, 2.0]]]), ["b"])
    b = ChannelStats.from_array(np.array([[[3.0, np.nan]]]), ["b"])
    assert a.merge(b).mean.tolist() == [2.0]


def _canonical(arr: np.ndarray, chunks: int | tuple[int, int] | None = None) -> xr.DataArray:
    """A canonical-like (band, y, x) array with ``chunks`` pixels per chunk (None: one chunk)."""
    if chunks is None:
        chunks = arr.shape[1:]
    elif isinstance(chunks, int):
        chunks = (chunks, chunks)
    data = da.from_array(arr, chunks=(arr.shape[0], *chunks))
    return xr.DataArray(data, dims=("band", "y", "x"), coords={"band": _names(arr.shape[0])})


@pytest.fixture(scope="module")
def holey() -> np.ndarray:
    rng = np.random.default_rng(3)
    scale = np.array([1.0, 100.0, 0.01])[:, None, None]
    offset = np.array([0.0, 1e4, -5.0])[:, None, None]
    arr = (rng.standard_normal((3, 61, 47)) * scale + offset).astype("float32")
    arr[:, rng.random((61, 47)) < 0.2] = np.nan
    arr[1, :10] = np.nan  # band-specific holes
    return arr


@pytest.mark.parametrize("chunks", [None, 7, 13, (61, 5), (4, 47)])
def test_compute_stats_matches_numpy_for_any_chunking(holey: np.ndarray, chunks: object) -> None:
    st_ = compute_stats(_canonical(holey, chunks))  # type: ignore[arg-type]
    flat = holey.reshape(3, -1).astype("float64")
    assert st_.names == ("b0", "b1", "b2")
    np.testing.assert_array_equal(st_.count, (~np.isnan(flat)).sum(axis=1))
    np.testing.assert_allclose(st_.mean, np.nanmean(flat, axis=1), rtol=1e-10)
    np.testing.assert_allclose(st_.std, np.nanstd(flat, axis=1), rtol=1e-8)
    np.testing.assert_array_equal(st_.minimum, np.nanmin(flat, axis=1))
    np.testing.assert_array_equal(st_.maximum, np.nanmax(flat, axis=1))


def test_compute_stats_of_several_rasters(holey: np.ndarray) -> None:
    a, b = holey[:, :30], holey[:, 30:]
    st_ = compute_stats([_canonical(a, 7), _canonical(b, 11)])
    np.testing.assert_allclose(
        st_.mean, np.nanmean(holey.reshape(3, -1).astype("float64"), axis=1), rtol=1e-10
    )


def test_compute_stats_from_file_ignores_nodata(
    tmp_path: Path, make_raster: Callable[..., Path]
) -> None:
    path = make_raster(
        tmp_path, "s.tif", height=40, width=50, count=2, dtype="int16", nodata=-9999,
        nan_holes=True, blocksize=16,
    )  # fmt: skip
    arr = open_raster(path, chunks=16)
    st_ = compute_stats(arr)
    vals = arr.values.reshape(2, -1).astype("float64")
    assert np.isnan(vals).any()
    np.testing.assert_allclose(st_.mean, np.nanmean(vals, axis=1), rtol=1e-10)
    assert (st_.minimum > -9999).all()


def test_all_nan_band_raises(holey: np.ndarray) -> None:
    arr = holey.copy()
    arr[2] = np.nan
    with pytest.raises(InputError, match="b2"):
        compute_stats(_canonical(arr, 16))


def test_mismatched_bands_raise(holey: np.ndarray) -> None:
    other = _canonical(holey).assign_coords(band=["x", "y", "z"])
    with pytest.raises(InputError, match="same bands"):
        compute_stats([_canonical(holey), other])
    # Unnamed bands (band_1 ...) match named ones of the same count; the names are kept.
    unnamed = _canonical(holey).assign_coords(band=["band_1", "band_2", "band_3"])
    assert compute_stats([unnamed, other]).names == ("x", "y", "z")
    with pytest.raises(InputError, match="same bands"):
        compute_stats([unnamed.isel(band=[0, 1]), other])
    with pytest.raises(InputError):
        compute_stats([])


def test_dict_roundtrip_through_json(holey: np.ndarray) -> None:
    st_ = compute_stats(_canonical(holey, 13))
    d = json.loads(json.dumps(st_.to_dict()))
    back = ChannelStats.from_dict(d)
    assert back.names == st_.names
    for field in ("count", "mean", "m2", "minimum", "maximum", "std"):
        np.testing.assert_array_equal(getattr(back, field), getattr(st_, field))
    assert d["std"] == st_.std.tolist()


def test_dict_roundtrip_of_empty_stats() -> None:
    empty = ChannelStats.from_array(np.full((1, 4), np.nan), ["a"])
    back = ChannelStats.from_dict(json.loads(json.dumps(empty.to_dict())))
    assert back.count.tolist() == [0.0]
    assert back.minimum.tolist() == [np.inf] and back.maximum.tolist() == [-np.inf]


def test_normalize(holey: np.ndarray) -> None:
    arr = _canonical(holey, 16)
    st_ = compute_stats(arr)
    out = normalize(arr, st_)
    assert isinstance(out.data, da.Array)  # lazy
    assert out.dtype == np.float32
    assert out.dims == ("band", "y", "x")
    vals = out.values
    np.testing.assert_array_equal(np.isnan(vals), np.isnan(holey))
    flat = vals.reshape(3, -1).astype("float64")
    np.testing.assert_allclose(np.nanmean(flat, axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.nanstd(flat, axis=1), 1.0, rtol=1e-4)
    expected = (holey.astype("float64") - st_.mean[:, None, None]) / st_.std[:, None, None]
    # float32 arithmetic: band b2 (values near -5, std 0.01) resolves ~5e-5 std units.
    np.testing.assert_allclose(vals, expected, rtol=1e-4, atol=1e-4)


def test_normalize_constant_band_uses_unit_std() -> None:
    arr = np.stack([np.full((4, 5), 7.0), np.arange(20.0).reshape(4, 5)]).astype("float32")
    st_ = compute_stats(_canonical(arr))
    assert st_.std[0] == 0.0
    out = normalize(_canonical(arr), st_).values
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.isfinite(out).all()
