"""predict: exact class maps against a brute-force reference, geometry, nodata, checks, laziness.

The stand-in model (``test_window_mean`` in conftest) classifies a window by the sign
of the mean of band 1 and reports ``P(class 1) = sigmoid(mean)``. With identity
normalisation statistics and small-integer pixel values every window sum is exact in
float32, so class maps can be compared exactly with the brute-force reference.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from geo import NORTH_UP, ROTATED

from georaster_cnn import (
    CLASS_NODATA,
    BandMismatchError,
    DataRangeWarning,
    GeoModel,
    InputError,
    compute_stats,
    open_raster,
    predict,
)

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]


def _holey_ints(
    shape: tuple[int, int, int], seed: int, int_values: Callable[..., np.ndarray]
) -> np.ndarray:
    arr = int_values(shape, seed)
    rng = np.random.default_rng(seed + 1)
    _, h, w = shape
    arr[:, rng.random((h, w)) < 0.1] = np.nan  # scattered nodata in every band
    arr[0, h // 3 : h // 3 + max(1, h // 4), : max(1, w // 2)] = np.nan  # a large hole, band 1 only
    if shape[0] > 1:
        arr[-1, -max(1, h // 5) :, -max(1, w // 3) :] = np.nan  # another, last band only
    return arr


@pytest.fixture
def scene(
    tmp_path: Path, make_raster: MakeRaster, int_values: Callable[..., np.ndarray]
) -> tuple[Path, np.ndarray]:
    arr = _holey_ints((2, 150, 101), 11, int_values)
    path = make_raster(
        tmp_path, "scene.tif", height=150, width=101, count=2, values=arr, blocksize=32,
        transform=NORTH_UP,
    )  # fmt: skip
    return path, arr


def _check_against_reference(
    pred: xr.Dataset,
    arr: np.ndarray,
    stride: int,
    min_valid: float,
    expected: Callable[..., tuple[np.ndarray, np.ndarray]],
    patch: int = 64,
) -> None:
    want_cls, want_p1 = expected(arr, patch, stride, min_valid)
    cls = pred["class"].values
    prob = pred["probability"].values
    assert cls.shape == want_cls.shape
    np.testing.assert_array_equal(cls, want_cls)
    np.testing.assert_allclose(prob[1], want_p1, rtol=0, atol=2e-6, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(prob[0]), np.isnan(want_p1))
    np.testing.assert_allclose(prob.sum(axis=0)[cls != 255], 1.0, atol=1e-6)


@pytest.mark.parametrize("stride", [64, 32, 16, 13, 5])
def test_class_map_equals_brute_force(
    scene: tuple[Path, np.ndarray],
    make_model: MakeModel,
    expected: Callable[..., tuple[np.ndarray, np.ndarray]],
    stride: int,
) -> None:
    path, arr = scene
    pred = predict(open_raster(path), make_model(2), stride=stride).compute()
    _check_against_reference(pred, arr, stride, 0.5, expected)
    # Both outcomes and nodata occur, so the comparison means something.
    if stride <= 32:
        assert {0, 1} <= set(np.unique(pred["class"].values))
    if stride <= 16:
        assert (pred["class"].values == 255).any()


def test_stride_one_on_small_raster(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
    expected: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    arr = _holey_ints((1, 23, 31), 5, int_values)
    path = make_raster(tmp_path, "s1.tif", height=23, width=31, values=arr)
    pred = predict(open_raster(path), make_model(1), stride=1, min_valid=0.3).compute()
    assert pred["class"].shape == (23, 31)
    _check_against_reference(pred, arr, 1, 0.3, expected)


@pytest.mark.parametrize("patch", [8, 9])
@pytest.mark.parametrize("stride", [1, 3, 8])
def test_other_patch_sizes(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
    expected: Callable[..., tuple[np.ndarray, np.ndarray]],
    patch: int,
    stride: int,
) -> None:
    if stride > patch:
        pytest.skip("stride must not exceed the patch")
    arr = _holey_ints((1, 41, 29), 8, int_values)
    path = make_raster(tmp_path, "p.tif", height=41, width=29, values=arr, blocksize=16)
    pred = predict(
        open_raster(path, chunks=16), make_model(1, patch_size=patch), stride=stride, block_cells=3
    ).compute()
    _check_against_reference(pred, arr, stride, 0.5, expected, patch=patch)


@pytest.mark.parametrize("chunks", [7, 13, 64, 1000])
@pytest.mark.parametrize("block_cells", [1, 3, 32])
def test_result_independent_of_chunking(
    scene: tuple[Path, np.ndarray], make_model: MakeModel, chunks: int, block_cells: int
) -> None:
    path, _ = scene
    model = make_model(2)
    ref = predict(open_raster(path), model, stride=16).compute()
    got = predict(
        open_raster(path, chunks=chunks), model, stride=16, block_cells=block_cells
    ).compute()
    xr.testing.assert_identical(got, ref)


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_batch_size_does_not_change_results(
    scene: tuple[Path, np.ndarray], make_model: MakeModel, batch_size: int
) -> None:
    path, _ = scene
    model = make_model(2)
    ref = predict(open_raster(path), model, stride=32).compute()
    got = predict(open_raster(path), model, stride=32, batch_size=batch_size).compute()
    xr.testing.assert_identical(got, ref)


def test_three_classes_argmax(
    scene: tuple[Path, np.ndarray],
    make_model: MakeModel,
    brute_force: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    path, arr = scene
    pred = predict(open_raster(path), make_model(2, ("neg", "zero", "pos")), stride=16).compute()
    means, frac = brute_force(arr, 64, 16)
    want = np.where(frac >= 0.5, np.where(means > 0, 2, 0), 255)
    np.testing.assert_array_equal(pred["class"].values, want)
    assert list(pred["class_name"].values) == ["neg", "zero", "pos"]


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("stride", [64, 16, 7])
def test_output_grid_and_crs(
    scene: tuple[Path, np.ndarray], make_model: MakeModel, stride: int
) -> None:
    path, _ = scene
    data = open_raster(path)
    pred = predict(data, make_model(2), stride=stride)
    oh, ow = -(-150 // stride), -(-101 // stride)
    assert pred["class"].shape == (oh, ow)
    assert pred["probability"].shape == (2, oh, ow)
    assert pred["class"].dtype == np.uint8 and pred["probability"].dtype == np.float32
    t = NORTH_UP @ Affine.scale(stride)
    assert pred.rio.transform() == t
    assert pred["class"].rio.transform() == t
    assert pred.rio.crs == data.rio.crs == rasterio.crs.CRS.from_epsg(32633)
    np.testing.assert_allclose(pred["x"].values, t.c + t.a * (np.arange(ow) + 0.5))
    np.testing.assert_allclose(pred["y"].values, t.f + t.e * (np.arange(oh) + 0.5))
    assert pred.attrs["stride"] == stride and pred.attrs["patch_size"] == 64
    assert pred.attrs["source"] == str(path)
    assert pred["class"].attrs["nodata"] == CLASS_NODATA == 255


def test_no_crs_stays_none(tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel) -> None:
    path = make_raster(tmp_path, "nocrs.tif", height=40, width=40, crs=None, transform=NORTH_UP)
    pred = predict(open_raster(path), make_model(1), stride=16)
    assert pred.rio.crs is None
    assert pred.rio.transform() == NORTH_UP @ Affine.scale(16)
    assert pred["class"].compute().shape == (3, 3)


def test_rotated_transform_kept(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
    expected: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    arr = int_values((1, 50, 70), 3)
    path = make_raster(tmp_path, "rot.tif", height=50, width=70, values=arr, transform=ROTATED)
    pred = predict(open_raster(path), make_model(1), stride=16).compute()
    assert pred.rio.transform().almost_equals(ROTATED @ Affine.scale(16), precision=1e-6)
    assert pred.rio.crs == rasterio.crs.CRS.from_epsg(32633)
    _check_against_reference(pred, arr, 16, 0.5, expected)


@pytest.mark.parametrize(
    ("stride", "shape"), [(64, (1, 1)), (16, (1, 1)), (4, (3, 2)), (1, (10, 7))]
)
def test_raster_smaller_than_a_patch(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
    stride: int,
    shape: tuple[int, int],
    expected: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    arr = int_values((1, 10, 7), 9)
    path = make_raster(tmp_path, "tiny.tif", height=10, width=7, values=arr)
    # 70 of 4096 pixels are valid: accept any window with at least one valid pixel.
    pred = predict(open_raster(path), make_model(1), stride=stride, min_valid=1e-6).compute()
    assert pred["class"].shape == shape
    assert (pred["class"].values != 255).all()
    _check_against_reference(pred, arr, stride, 1e-6, expected)
    assert pred.rio.transform() == NORTH_UP @ Affine.scale(stride)


# --------------------------------------------------------------------------- nodata


def test_min_valid_threshold(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
) -> None:
    arr = int_values((1, 128, 128), 4)
    arr[0, 0, 0] = np.nan  # one invalid pixel in window (0, 0)
    arr[0, 64:, 64:96] = np.nan  # half of window (1, 1) invalid
    path = make_raster(tmp_path, "mv.tif", height=128, width=128, values=arr)
    data = open_raster(path)
    model = make_model(1)
    strict = predict(data, model, stride=64, min_valid=1.0).compute()
    assert strict["class"].values[0, 0] == 255
    assert np.isnan(strict["probability"].values[:, 0, 0]).all()
    assert strict["class"].values[1, 1] == 255
    assert (strict["class"].values[[0, 1], [1, 0]] != 255).all()
    half = predict(data, model, stride=64, min_valid=0.5).compute()  # exactly 0.5 is enough
    assert (half["class"].values != 255).all()
    assert not np.isnan(half["probability"].values).any()
    just_over = predict(data, model, stride=64, min_valid=0.5 + 1 / 4096).compute()
    assert just_over["class"].values[1, 1] == 255
    # The model's own default applies when min_valid is not given.
    dflt = predict(data, make_model(1, min_valid=1.0), stride=64).compute()
    np.testing.assert_array_equal(dflt["class"].values, strict["class"].values)


def test_all_nodata_raster(tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel) -> None:
    path = make_raster(
        tmp_path, "empty.tif", height=70, width=50, dtype="int16", nodata=-1,
        values=np.full((70, 50), -1, dtype="int16"),
    )  # fmt: skip
    model = make_model(1, source_dtype="int16")
    pred = predict(open_raster(path), model, stride=16).compute()
    assert pred["class"].shape == (5, 4)
    assert (pred["class"].values == 255).all()
    assert np.isnan(pred["probability"].values).all()


# --------------------------------------------------------------------------- input checks


def test_band_mismatch_names_bands_and_file(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    path = make_raster(
        tmp_path, "two.tif", height=20, width=20, count=2, descriptions=["B02", "B03"]
    )
    model = make_model(3, band_names=("B02", "B03", "B04"))
    with pytest.raises(BandMismatchError) as info:
        predict(open_raster(path), model)
    msg = str(info.value)
    for token in ("3", "B02", "B03", "B04", "two.tif", "2"):
        assert token in msg
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


def test_bands_selects_by_name_or_number(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
) -> None:
    """predict(bands=) picks bands like open_raster(bands=): names or 1-based numbers, in order."""
    vals = int_values((3, 40, 40), 7)
    path = make_raster(
        tmp_path, "three.tif", height=40, width=40, count=3, values=vals,
        descriptions=["B02", "B03", "B04"],
    )  # fmt: skip
    model = make_model(2, band_names=("B04", "B02"), patch_size=8)
    want = predict(open_raster(path, bands=["B04", "B02"]), model, stride=4)["class"].values
    for sel in (["B04", "B02"], [3, 1], ["B04", 1], ["3", "B02"]):
        got = predict(open_raster(path), model, bands=sel, stride=4)["class"].values
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="no band named 'B08'"):
        predict(open_raster(path), model, bands=["B08", "B02"])
    with pytest.raises(InputError, match="band 4 does not exist"):
        predict(open_raster(path), model, bands=[4, 1])
    with pytest.raises(BandMismatchError, match="Select bands with bands="):
        predict(open_raster(path), model)  # three bands for a two-band model


def test_band_order_warning_gives_advice_that_works(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
) -> None:
    vals = int_values((2, 40, 40), 8)
    path = make_raster(
        tmp_path, "swapped.tif", height=40, width=40, count=2, values=vals[::-1],
        descriptions=["B03", "B02"],
    )  # fmt: skip
    model = make_model(2, band_names=("B02", "B03"), patch_size=8)
    with pytest.warns(DataRangeWarning, match="another order") as record:
        predict(open_raster(path), model, stride=4)
    advice = re.search(r"bands=(\[[^\]]*\])", str(record[0].message))
    assert advice is not None and advice.group(1) == "['B02', 'B03']"
    bands = ast.literal_eval(advice.group(1))  # the advice is Python that works as given
    got = predict(open_raster(path), model, bands=bands, stride=4)["class"].values  # quiet
    ordered = make_raster(
        tmp_path, "ordered.tif", height=40, width=40, count=2, values=vals,
        descriptions=["B02", "B03"],
    )  # fmt: skip
    want = predict(open_raster(ordered), model, stride=4)["class"].values
    np.testing.assert_array_equal(got, want)
    other = make_model(2, band_names=("red", "nir"), patch_size=8)
    with pytest.warns(DataRangeWarning, match=r"other band names.*bands=\[\.\.\.\]"):
        predict(open_raster(path), other, stride=4)


def test_far_off_value_range_warns(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    rng = np.random.default_rng(0)
    vals = rng.standard_normal((2, 64, 64)).astype("float32")
    ref = make_raster(tmp_path, "ref.tif", height=64, width=64, count=2, values=vals)
    scaled = make_raster(tmp_path, "scaled.tif", height=64, width=64, count=2, values=vals * 1000)
    model = make_model(2, stats=compute_stats(open_raster(ref)))
    predict(open_raster(ref), model, stride=64)  # no warning on data like the training data
    with pytest.warns(DataRangeWarning, match=r"scaled\.tif") as record:
        predict(open_raster(scaled), model, stride=64)
    assert sum("band 1 (band_1)" in str(w.message) for w in record) == 1  # one per band
    # check=False skips the check (and the warning).
    predict(open_raster(scaled), model, stride=64, check=False)


def test_shifted_mean_warns(tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel) -> None:
    rng = np.random.default_rng(1)
    vals = rng.standard_normal((1, 64, 64)).astype("float32")
    ref = make_raster(tmp_path, "ref.tif", height=64, width=64, values=vals)
    shifted = make_raster(tmp_path, "shifted.tif", height=64, width=64, values=vals + 100)
    model = make_model(1, stats=compute_stats(open_raster(ref)))
    with pytest.warns(DataRangeWarning, match="mean"):
        predict(open_raster(shifted), model, stride=64)


def test_dtype_differing_from_training_warns(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
) -> None:
    vals = int_values((1, 64, 64), 2)
    path = make_raster(tmp_path, "i16.tif", height=64, width=64, dtype="int16", values=vals)
    with pytest.warns(DataRangeWarning, match="int16.*float32"):
        predict(open_raster(path), make_model(1, source_dtype="float32"), stride=64)
    predict(open_raster(path), make_model(1, source_dtype="int16"), stride=64)  # same type: quiet


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stride": 0}, "stride"),
        ({"stride": 65}, "stride"),
        ({"stride": -4}, "stride"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_valid": 0.0}, "min_valid"),
        ({"min_valid": 1.5}, "min_valid"),
        ({"min_valid": -0.1}, "min_valid"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_options(
    scene: tuple[Path, np.ndarray], make_model: MakeModel, kwargs: dict[str, object], match: str
) -> None:
    path, _ = scene
    with pytest.raises(InputError, match=match):
        predict(open_raster(path), make_model(2), **kwargs)  # type: ignore[arg-type]


def test_bad_dims(make_model: MakeModel) -> None:
    arr = xr.DataArray(np.zeros((1, 4, 4), "float32"), dims=("band", "row", "col"))
    with pytest.raises(InputError, match="dims"):
        predict(arr, make_model(1))


def test_transposed_input_is_accepted(
    scene: tuple[Path, np.ndarray], make_model: MakeModel
) -> None:
    path, _ = scene
    data = open_raster(path)
    ref = predict(data, make_model(2), stride=32).compute()
    got = predict(data.transpose("y", "x", "band"), make_model(2), stride=32).compute()
    np.testing.assert_array_equal(got["class"].values, ref["class"].values)


def test_in_memory_numpy_input(scene: tuple[Path, np.ndarray], make_model: MakeModel) -> None:
    path, _ = scene
    data = open_raster(path)
    ref = predict(data, make_model(2), stride=32).compute()
    eager = data.copy(data=data.values)  # NumPy-backed, same coords/CRS/transform
    assert not isinstance(eager.data, da.Array)
    got = predict(eager, make_model(2), stride=32).compute()
    np.testing.assert_array_equal(got["class"].values, ref["class"].values)


def test_predictions_with_different_strides_computed_together(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
) -> None:
    path = make_raster(tmp_path, "six.tif", height=6, width=6, values=int_values((1, 6, 6), 1))
    data, model = open_raster(path), make_model(1, patch_size=4)
    a = predict(data, model, stride=3, block_cells=10, check=False)
    b = predict(data, model, stride=2, block_cells=10, check=False)
    sep_a, sep_b = a["probability"].values, b["probability"].values
    tog_a, tog_b = dask.compute(a["probability"].data, b["probability"].data)
    assert tog_a.shape == sep_a.shape == (2, 2, 2)
    assert tog_b.shape == sep_b.shape == (2, 3, 3)
    np.testing.assert_array_equal(tog_a, sep_a)
    np.testing.assert_array_equal(tog_b, sep_b)


# --------------------------------------------------------------------------- laziness


def test_predict_is_lazy(
    scene: tuple[Path, np.ndarray], make_model: MakeModel, window_reads: list[tuple[slice, ...]]
) -> None:
    path, _ = scene
    reads = window_reads
    data = open_raster(path, chunks=32)
    pred = predict(data, make_model(2), stride=16, check=False)
    assert isinstance(pred["class"].data, da.Array)
    assert isinstance(pred["probability"].data, da.Array)
    assert reads == []  # nothing read yet
    pred["class"].compute()
    # every pixel read (each block with its halo, straight from the file), none twice
    # outside the halos: at most the blocks' count of reads
    covered = np.zeros(data.shape[1:], dtype=bool)
    for _, ysl, xsl in reads:
        covered[ysl, xsl] = True
    assert covered.all()
    assert len(reads) == pred["class"].data.npartitions
    reads.clear()
    predict(data, make_model(2), stride=16)  # the input check samples a few blocks only
    assert 0 < len(reads) <= 4


def test_prediction_fails_at_compute_when_file_vanishes(
    scene: tuple[Path, np.ndarray], make_model: MakeModel
) -> None:
    from georaster_cnn import ReadError

    path, _ = scene
    pred = predict(open_raster(path), make_model(2), stride=32, check=False)
    path.unlink()
    with pytest.raises(ReadError, match=r"scene\.tif"):
        pred.compute()


def test_read_error_survives_a_dask_cluster_round_trip(
    scene: tuple[Path, np.ndarray], make_model: MakeModel
) -> None:
    """A truncated file's ReadError, sent from a worker as distributed sends task errors,
    reaches the client as a ReadError with its message (rasterio's error chain, which
    cannot be unpickled, is not attached)."""
    from georaster_cnn import ReadError

    distributed_core = pytest.importorskip("distributed.core")
    path, _ = scene
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ReadError) as info:
        open_raster(path).compute()
    message = distributed_core.error_message(info.value)  # what a worker sends
    sent = {k: getattr(v, "data", v) for k, v in message.items()}  # the comm unwraps these
    _, received, _ = distributed_core.clean_exception(**sent)  # what the client raises
    assert isinstance(received, ReadError)
    assert str(received) == str(info.value) and "truncated or corrupt" in str(received)
