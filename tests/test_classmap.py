"""classmap: one contract for class maps, read back alike from COG, GeoTIFF, Zarr and netCDF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from geo import NORTH_UP, ROTATED

from georaster_cnn import (
    GeoModel,
    InputError,
    open_raster,
    predict,
    vectorize,
    write_prediction,
    write_qml,
    write_quicklook,
)
from georaster_cnn.io.classmap import (
    CLASS_NODATA,
    default_colors,
    open_class_map,
    parse_colors,
    read_class_info,
)

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]

CLASSES = ("water", "forest", "urban")
NAMES = {"cog": "map.tif", "gtiff": "map.tif", "zarr": "map.zarr", "netcdf": "map.nc"}


@pytest.fixture(params=[NORTH_UP, ROTATED], ids=["north_up", "rotated"])
def prediction(
    request: pytest.FixtureRequest, tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> xr.Dataset:
    path = make_raster(
        tmp_path / "in", "scene.tif", height=90, width=70, count=2, nan_holes=True,
        transform=request.param,
    )  # fmt: skip
    return predict(open_raster(path), make_model(2, CLASSES), stride=8).compute()


@pytest.mark.parametrize("fmt", list(NAMES))
@pytest.mark.parametrize("probabilities", [False, True])
def test_every_format_reads_back_the_same_class_map(
    tmp_path: Path, prediction: xr.Dataset, fmt: str, probabilities: bool
) -> None:
    out = write_prediction(
        prediction, tmp_path / "out" / NAMES[fmt], format=fmt, probabilities=probabilities
    )
    cmap = open_class_map(out)
    assert cmap.names == CLASSES
    assert cmap.colors == default_colors(3)
    assert (cmap.height, cmap.width) == prediction["class"].shape
    assert cmap.transform.almost_equals(prediction.rio.transform(), precision=1e-9)
    assert cmap.crs == prediction.rio.crs
    assert cmap.attrs["stride"] == "8"
    np.testing.assert_array_equal(cmap.read_classes(), prediction["class"].values)
    assert cmap.has_probabilities is probabilities
    if probabilities:
        blocks = list(cmap.probability_blocks(rows=7))
        percent = np.concatenate([b for _, b in blocks], axis=1)
        p = prediction["probability"].values
        expected = np.where(np.isnan(p), CLASS_NODATA, np.rint(np.nan_to_num(p) * 100))
        np.testing.assert_array_equal(percent, expected.astype(np.uint8))
    # decimated reading picks the cell under each output pixel's centre
    small = cmap.read_classes((5, 4))
    assert small.shape == (5, 4)
    assert set(np.unique(small)) <= set(np.unique(prediction["class"].values))


def test_geotiff_grid_is_gdals_own_reading(tmp_path: Path, prediction: xr.Dataset) -> None:
    out = write_prediction(prediction, tmp_path / "map.tif")
    cmap = open_class_map(out)
    with rasterio.open(out) as src:
        assert cmap.transform == src.transform
        assert cmap.crs == src.crs
        # the corners land where GDAL puts them, on the globe
        assert src.xy(0, 0, offset="ul") == (cmap.transform.c, cmap.transform.f)


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_styles_and_vectors_from_cf_class_maps(
    tmp_path: Path, prediction: xr.Dataset, fmt: str
) -> None:
    out = write_prediction(prediction, tmp_path / NAMES[fmt], probabilities=True)
    ref = write_prediction(prediction, tmp_path / "ref.tif", probabilities=True)
    qml = write_qml(out)
    assert "water" in qml.read_text() and "urban" in qml.read_text()
    png = write_quicklook(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got, want = vectorize(out), vectorize(ref)
    assert list(got["class_name"]) == list(want["class_name"])
    np.testing.assert_allclose(got["mean_probability"], want["mean_probability"])
    assert got.geometry.geom_equals(want.geometry).all()


def test_not_a_class_map_is_an_input_error(tmp_path: Path, make_raster: MakeRaster) -> None:
    raster = make_raster(tmp_path, "plain.tif", height=8, width=8, count=1)
    with pytest.raises(InputError, match=r"not a class map.*Style the output"):
        open_class_map(raster, what="Style")
    xr.Dataset({"t": (("y", "x"), np.zeros((2, 2)))}).to_netcdf(tmp_path / "t.nc")
    with pytest.raises(InputError, match="not a class map"):
        open_class_map(tmp_path / "t.nc")


def test_class_info_of_labels_and_fallback_colours(tmp_path: Path, prediction: xr.Dataset) -> None:
    out = write_prediction(prediction, tmp_path / "map.nc")
    names, colors = read_class_info(out)
    assert names == CLASSES and colors == default_colors(3)
    assert read_class_info(tmp_path / "missing.tif") == (None, None)
    assert parse_colors('[[1, 2, 3], "bad"]', 2) == ((1, 2, 3), default_colors(2)[1])
