"""A label raster on another grid: the message names both grids and a command that fixes it."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.crs import CRS
from rasterio.rio.main import main_group as rio
from rasterio.warp import Resampling, reproject

from georaster_cnn import InputError, open_labels, open_raster
from georaster_cnn.training.labels import resolve_labels

MakeRaster = Callable[..., Path]
#: The data: 40 x 30 pixels of 30 m in UTM 33N, top-left corner (500000, 4600000).
GRID = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_600_000.0)


def _refusal(data: Path, labels: Path) -> str:
    with pytest.raises(InputError) as info:
        resolve_labels(
            [open_raster(data)], [open_labels(labels)], label_column=None, class_names=None
        )
    return str(info.value)


def _accepted(data: Path, labels: Path) -> None:
    resolve_labels([open_raster(data)], [open_labels(labels)], label_column=None, class_names=None)


def _commands(message: str) -> dict[str, list[str]]:
    """The commands quoted in ``message`` (between backticks), by program."""
    return {args[0]: args for args in map(shlex.split, re.findall(r"`([^`]+)`", message))}


def _gdalwarp(args: list[str]) -> None:
    """What ``gdalwarp -s_srs -t_srs -tr -te -r near SRC DST`` does, done with rasterio."""
    opts: dict[str, list[str]] = {}
    rest = args[1:]
    while rest[0].startswith("-"):
        n = {"-tr": 2, "-te": 4}.get(rest[0], 1)
        opts[rest[0]], rest = rest[1 : 1 + n], rest[1 + n :]
    src_path, dst_path = rest
    assert opts["-r"] == ["near"]
    xres, yres = map(float, opts["-tr"])
    xmin, ymin, xmax, ymax = map(float, opts["-te"])
    width, height = round((xmax - xmin) / xres), round((ymax - ymin) / yres)
    transform = Affine(xres, 0.0, xmin, 0.0, -yres, ymax)
    with rasterio.open(src_path) as src:
        src_crs = CRS.from_user_input(opts["-s_srs"][0]) if "-s_srs" in opts else src.crs
        profile = {**src.profile, "width": width, "height": height, "transform": transform}
        profile["crs"] = opts["-t_srs"][0]
        with rasterio.open(dst_path, "w", **profile) as dst:
            reproject(
                rasterio.band(src, 1), rasterio.band(dst, 1), src_crs=src_crs,
                dst_nodata=src.nodata, resampling=Resampling.nearest,
            )  # fmt: skip


@pytest.fixture
def data(tmp_path: Path, make_raster: MakeRaster) -> Path:
    return make_raster(tmp_path, "scene.tif", height=40, width=30, count=2, transform=GRID)


def _labels(make_raster: MakeRaster, folder: Path, **kwargs: object) -> Path:
    values = np.tile(np.arange(2, dtype=np.uint8), (60, 30))[:, :50]
    return make_raster(
        folder, "labels.tif", height=60, width=50, dtype="uint8", nodata=255, values=values,
        **kwargs,
    )  # fmt: skip


def test_message_names_both_grids_and_a_gdalwarp_line_that_fixes_it(
    tmp_path: Path, make_raster: MakeRaster, data: Path
) -> None:
    # labels of 20 m pixels in UTM 32N, larger, somewhere nearby
    other = Affine(20.0, 0.0, 1_000_000.0, 0.0, -20.0, 4_610_000.0)
    labels = _labels(make_raster, tmp_path, crs="EPSG:32632", transform=other)
    message = _refusal(data, labels)
    assert "(their size, transform and CRS differ)" in message
    assert (
        "the labels are 60 x 50 pixels (height x width) of 20 x 20 in EPSG:32632, "
        "top-left corner (1000000, 4610000)"
    ) in message
    assert (
        f"{data} is 40 x 30 pixels (height x width) of 30 x 30 in EPSG:32633, "
        "top-left corner (500000, 4600000)"
    ) in message
    assert "same grid (same size, transform and CRS)" in message and "vector labels" in message

    fixed = tmp_path / "labels_on_grid.tif"
    commands = _commands(message)
    assert commands["gdalwarp"] == [
        "gdalwarp", "-t_srs", "EPSG:32633", "-tr", "30", "30",
        "-te", "500000", "4598800", "500900", "4600000",  # xmin ymin xmax ymax of the data
        "-r", "near", str(labels), str(fixed),
    ]  # fmt: skip
    _gdalwarp(commands["gdalwarp"])
    _accepted(data, fixed)


def test_the_rio_warp_line_fixes_it(tmp_path: Path, make_raster: MakeRaster, data: Path) -> None:
    """rasterio's own CLI, which every installation has: the line is run as it stands."""
    shifted = GRID * Affine.translation(3, -2)  # same CRS and pixels, moved
    labels = _labels(make_raster, tmp_path, transform=shifted)
    message = _refusal(data, labels)
    assert "(their size and transform differ)" in message
    commands = _commands(message)
    fixed = tmp_path / "labels_on_grid.tif"
    assert commands["rio"] == [
        "rio", "warp", str(labels), str(fixed), "--like", str(data), "--resampling", "nearest",
    ]  # fmt: skip
    result = CliRunner().invoke(rio, commands["rio"][1:])
    assert result.exit_code == 0, result.output
    _accepted(data, fixed)
    # nearest neighbour: the labels moved by whole pixels, values kept (and nodata outside)
    with rasterio.open(labels) as a, rasterio.open(fixed) as b:
        before, after = a.read(1), b.read(1)
    # label pixel (r, c) lies on data pixel (r - 2, c + 3)
    np.testing.assert_array_equal(after[:38, 3:], before[2:40, :27])
    assert (after[:, :3] == 255).all()
    assert set(np.unique(after)) <= {0, 1, 255}


def test_labels_without_crs_get_source_and_target_srs(
    tmp_path: Path, make_raster: MakeRaster, data: Path
) -> None:
    labels = _labels(make_raster, tmp_path, crs=None, transform=GRID)
    message = _refusal(data, labels)
    assert "(their size differs)" in message
    assert (
        "60 x 50 pixels (height x width) of 30 x 30 in no CRS (taken to be EPSG:32633)" in message
    )
    commands = _commands(message)
    assert commands["gdalwarp"][:5] == ["gdalwarp", "-s_srs", "EPSG:32633", "-t_srs", "EPSG:32633"]
    assert "rio" not in commands  # rio warp cannot reproject from no CRS
    _gdalwarp(commands["gdalwarp"])
    _accepted(data, tmp_path / "labels_on_grid.tif")


def test_rotated_data_grid_has_no_gdalwarp_line(tmp_path: Path, make_raster: MakeRaster) -> None:
    rotated = GRID * Affine.rotation(10)
    data = make_raster(tmp_path, "rot.tif", height=40, width=30, transform=rotated)
    labels = _labels(make_raster, tmp_path, transform=GRID)
    message = _refusal(data, labels)
    assert "of 30 x 30 (rotated) in EPSG:32633" in message
    commands = _commands(message)
    assert "gdalwarp" not in commands  # gdalwarp writes north-up grids only
    assert CliRunner().invoke(rio, commands["rio"][1:]).exit_code == 0  # GDAL's warper can
    _accepted(data, tmp_path / "labels_on_grid.tif")
    # without a command that can do it, vector labels are the way
    bare = _labels(make_raster, tmp_path / "bare", crs=None, transform=GRID)
    message = _refusal(data, bare)
    assert "gdalwarp cannot write the rotated or south-up grid of" in message
    assert "give vector labels (points or polygons)" in message and "`" not in message
