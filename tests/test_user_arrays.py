"""Arrays the user opened: rioxarray, written nodata, encoded fill values, any chunking.

``predict``, ``evaluate`` and ``train`` pass every input through
``io._canonical.as_canonical``: whatever way a file was opened, its nodata cells are NaN
before anything else, integers become float32 and the bands sit in one chunk, so the
class map is exactly the one of ``open_raster`` on the same file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import rioxarray
import xarray as xr
from geo import NORTH_UP

import georaster_cnn as gc
from georaster_cnn.errors import DataRangeWarning, InputError, NodataWarning
from georaster_cnn.io._user_arrays import as_canonical

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., gc.GeoModel]

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
SCENE = SAMPLE / "scene.tif"  # float32, nodata -9999 on about 3 % of the pixels


def _open_rasterio(path: Path, **kw: Any) -> xr.DataArray:
    """``rioxarray.open_rasterio`` without its own FutureWarning about tuple chunks."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Supplying chunks", FutureWarning)
        arr = rioxarray.open_rasterio(path, **kw)
    assert isinstance(arr, xr.DataArray)
    return arr


def _without_nodata(arr: xr.DataArray) -> xr.DataArray:
    """``arr`` with no nodata declared anywhere (the -9999 cells are plain numbers then)."""
    out = arr.copy()
    out.attrs.pop("_FillValue", None)
    out.encoding.pop("_FillValue", None)
    return out


def _encoded_fill() -> xr.DataArray:
    """The scene's raw values with ``_FillValue`` in the encoding only (as xarray keeps it)."""
    arr = _without_nodata(_open_rasterio(SCENE))
    arr.encoding["_FillValue"] = np.float32(-9999)
    return arr


@pytest.fixture(scope="module")
def sample_model() -> gc.GeoModel:
    return gc.load_model(SAMPLE / "model.safetensors")


@pytest.fixture(scope="module")
def reference(sample_model: gc.GeoModel) -> np.ndarray:
    """The class map of the sample scene opened by open_raster (stride 32)."""
    return np.asarray(gc.predict(gc.open_raster(SCENE), sample_model, stride=32)["class"].values)


VARIANTS: dict[str, Callable[[], xr.DataArray]] = {
    # item 6: nodata declared in the three ways a user meets
    "open_rasterio default (masked=False)": lambda: _open_rasterio(SCENE),
    "open_rasterio masked=True": lambda: _open_rasterio(SCENE, masked=True),
    "rio.write_nodata": lambda: _without_nodata(_open_rasterio(SCENE)).rio.write_nodata(-9999),
    "rio.write_nodata(encoded=True)": lambda: _without_nodata(
        _open_rasterio(SCENE)
    ).rio.write_nodata(-9999, encoded=True),
    "encoding _FillValue": _encoded_fill,
    # item 7: bands split over chunks, and other chunkings
    "chunks=True (one band a chunk)": lambda: _open_rasterio(SCENE, chunks=True),
    "band 1 / 100 x 77": lambda: _open_rasterio(SCENE, chunks={"band": 1, "y": 100, "x": 77}),
    "band 2 / whole rows": lambda: _open_rasterio(SCENE, chunks={"band": 2, "y": 64, "x": -1}),
    "masked, band 1 / 300 x 300": lambda: _open_rasterio(
        SCENE, masked=True, chunks={"band": 1, "y": 300, "x": 300}
    ),
    "NumPy in memory": lambda: _open_rasterio(SCENE).load(),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_user_arrays_give_the_map_of_open_raster(
    variant: str, sample_model: gc.GeoModel, reference: np.ndarray
) -> None:
    arr = VARIANTS[variant]()
    got = gc.predict(arr, sample_model, stride=32)["class"].values
    np.testing.assert_array_equal(got, reference)


def test_without_nodata_the_holes_are_data(
    sample_model: gc.GeoModel, reference: np.ndarray
) -> None:
    """The check above is not vacuous: read as numbers, the -9999 cells change the map."""
    arr = _without_nodata(_open_rasterio(SCENE))
    with pytest.warns(DataRangeWarning):  # the sampled means are far off, too
        got = gc.predict(arr, sample_model, stride=32)["class"].values
    assert (got != reference).any()


def test_canonical_form_of_a_rioxarray_array() -> None:
    arr = as_canonical(_open_rasterio(SCENE, chunks=True))
    ref = gc.open_raster(SCENE)
    assert arr.dtype == np.float32 and isinstance(arr.data, da.Array)
    assert arr.data.numblocks[0] == 1
    assert list(arr["band"].values) == list(ref["band"].values)  # from the descriptions
    np.testing.assert_array_equal(arr.values, ref.values)  # NaN where the file says nodata
    assert arr.attrs["source_dtype"] == "float32" and arr.attrs["source_nodata"] == -9999
    assert arr.attrs["source"] == str(SCENE)  # from rioxarray's encoding: messages name the file
    assert "_FillValue" not in arr.attrs and "_FillValue" not in arr.encoding
    assert arr.rio.crs == ref.rio.crs and arr.rio.transform() == ref.rio.transform()


def test_open_raster_arrays_pass_untouched() -> None:
    """The reader's array keeps its Dask name (predict reads its blocks with their halos)."""
    data = gc.open_raster(SCENE)
    assert as_canonical(data).data.name == data.data.name
    made = as_canonical(_open_rasterio(SCENE))
    assert as_canonical(made).data.name == made.data.name  # once is enough


def test_integer_array_with_nodata(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    values = np.random.default_rng(3).integers(-3, 4, (1, 40, 30)).astype("int16")
    path = make_raster(
        tmp_path, "i16.tif", height=40, width=30, dtype="int16", nodata=-9999, values=values,
        nan_holes=True,
    )  # fmt: skip
    user = _open_rasterio(path)
    assert user.dtype == np.int16 and (user.values == -9999).any()
    canon = as_canonical(user)
    assert canon.dtype == np.float32 and canon.attrs["source_dtype"] == "int16"
    np.testing.assert_array_equal(canon.values, gc.open_raster(path).values)
    model = make_model(1, patch_size=8, source_dtype="int16")
    want = gc.predict(gc.open_raster(path), model, stride=4)["class"].values
    got = gc.predict(user, model, stride=4)["class"].values
    np.testing.assert_array_equal(got, want)


def test_nodata_outside_the_dtype_warns() -> None:
    arr = xr.DataArray(np.array([[[0, 5], [255, 7]]], "uint8"), dims=("band", "y", "x"))
    arr.attrs["_FillValue"] = -9999  # cannot occur in uint8
    with pytest.warns(NodataWarning, match=r"-9999.*cannot occur in uint8"):
        out = as_canonical(arr)
    np.testing.assert_array_equal(out.values, [[[0, 5], [255, 7]]])  # nothing masked
    assert issubclass(NodataWarning, DataRangeWarning)
    arr.attrs["_FillValue"] = 255
    np.testing.assert_array_equal(as_canonical(arr).values, [[[0, 5], [np.nan, 7]]])


def test_other_declarations_and_invalid_floats() -> None:
    values = np.array([[[1.0, np.inf], [np.nan, -1.0]], [[-1.0, 2.0], [3.0, -np.inf]]])
    arr = xr.DataArray(values, dims=("band", "y", "x"))
    np.testing.assert_array_equal(
        as_canonical(arr).values, [[[1, np.nan], [np.nan, -1]], [[-1, 2], [3, np.nan]]]
    )
    for key in ("missing_value", "nodata"):
        got = as_canonical(arr.assign_attrs({key: -1.0})).values
        np.testing.assert_array_equal(
            got, [[[1, np.nan], [np.nan, np.nan]], [[np.nan, 2], [3, np.nan]]]
        )
    per_band = as_canonical(arr.assign_attrs(nodatavals=(-1.0, 3.0))).values  # one per band
    np.testing.assert_array_equal(
        per_band, [[[1, np.nan], [np.nan, np.nan]], [[-1, 2], [np.nan, np.nan]]]
    )
    only_first = as_canonical(arr.assign_attrs(nodatavals=(-1.0, np.nan)), bands=[2])
    np.testing.assert_array_equal(only_first.values, [[[-1, 2], [3, np.nan]]])  # band 2 had none
    assert only_first.attrs["source_nodata"] is None
    with pytest.raises(InputError, match="3 nodata values for 2 band"):
        as_canonical(arr.assign_attrs(nodatavals=(-1.0, 3.0, 4.0)))
    set_only = arr.copy()
    set_only.rio.set_nodata(2.0, inplace=True)  # on the accessor only, not in attrs
    assert np.isnan(as_canonical(set_only).values[1, 0, 1])


def test_band_names_of_user_arrays() -> None:
    zeros = np.zeros((3, 2, 2), "float32")
    plain = xr.DataArray(zeros, dims=("band", "y", "x"))
    assert list(as_canonical(plain)["band"].values) == ["band_1", "band_2", "band_3"]
    numbered = plain.assign_coords(band=[1, 2, 3])
    assert list(as_canonical(numbered)["band"].values) == ["band_1", "band_2", "band_3"]
    described = numbered.assign_attrs(long_name=("red", "green", "nir"))
    assert list(as_canonical(described)["band"].values) == ["red", "green", "nir"]
    # rioxarray keeps the file's numbers (and all descriptions) after a band selection
    assert list(as_canonical(described.isel(band=[2, 0]))["band"].values) == ["nir", "red"]
    assert list(as_canonical(described, bands=["nir", 2])["band"].values) == ["nir", "green"]


def test_what_is_not_a_raster_array() -> None:
    with pytest.raises(InputError, match=r"expected an xarray\.DataArray"):
        as_canonical(np.zeros((1, 2, 2)))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="expected dims"):
        as_canonical(xr.DataArray(np.zeros((2, 2)), dims=("y", "x")))
    with pytest.raises(InputError, match="complex"):
        as_canonical(xr.DataArray(np.zeros((1, 2, 2), "complex64"), dims=("band", "y", "x")))


# --------------------------------------------------------------------------- evaluate, train


def _nodata_scene(tmp_path: Path, make_raster: MakeRaster) -> tuple[Path, Path]:
    """A float32 scene with -9999 holes (its nodata) and its left/right label raster."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal((1, 64, 64)).astype("float32")
    values[:, :, 32:] += 0.5
    scene = make_raster(
        tmp_path, "holes.tif", height=64, width=64, nodata=-9999, values=values,
        nan_holes=True, transform=NORTH_UP,
    )  # fmt: skip
    labels = np.zeros((64, 64), "uint8")
    labels[:, 32:] = 1
    lab = make_raster(
        tmp_path, "holes_labels.tif", height=64, width=64, dtype="uint8", nodata=255,
        values=labels, transform=NORTH_UP,
    )  # fmt: skip
    return scene, lab


def test_evaluate_honours_the_nodata_of_user_arrays(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    scene, lab = _nodata_scene(tmp_path, make_raster)
    model = make_model(1, patch_size=8, provenance={"stride": 4})
    labels = gc.open_labels(lab)
    want = gc.evaluate(gc.open_raster(scene), model, labels, device="cpu")
    got = gc.evaluate(_open_rasterio(scene), model, labels, device="cpu")
    np.testing.assert_array_equal(got.confusion, want.confusion)
    assert got.n_excluded == want.n_excluded


def test_train_honours_the_nodata_of_user_arrays(tmp_path: Path, make_raster: MakeRaster) -> None:
    scene, lab = _nodata_scene(tmp_path, make_raster)
    fast: dict[str, Any] = {
        "epochs": 1, "patch_size": 16, "stride": 8, "hparams": {"widths": [4, 8]},
        "batch_size": 32, "device": "cpu", "val_fraction": 0.25, "val_block": 16,
        "patience": None,
    }  # fmt: skip
    labels = gc.open_labels(lab)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gc.ValidationWarning)  # a tiny validation set
        want = gc.train(gc.open_raster(scene), labels, **fast)
        got = gc.train(_open_rasterio(scene), labels, **fast)
    np.testing.assert_allclose(got.stats.mean, want.stats.mean, rtol=1e-6)
    np.testing.assert_array_equal(got.stats.count, want.stats.count)
    assert got.band_names == want.band_names and got.source_dtype == "float32"
