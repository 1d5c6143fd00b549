"""Vector labels: reading, class ids, point windows, polygon rasterising, the blocked split,
and training/evaluation with points and polygons in a CRS other than the rasters'."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from affine import Affine
from click.testing import CliRunner
from conftest import TEST_ARCH
from geo import ROTATED
from georaster_cnn_cli.main import cli
from rasterio import features
from rasterio.crs import CRS

import georaster_cnn as gc
from georaster_cnn.errors import InputError, TrainingError
from georaster_cnn.training.splits import blocked_split
from georaster_cnn.training.vector_labels import (
    point_windows,
    prepare_vector_labels,
    rasterize_polygons,
    to_raster_crs,
)

UTM33 = "EPSG:32633"
UTM32 = "EPSG:32632"
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


# --------------------------------------------------------------------------- helpers


def write_tif(path: Path, arr: np.ndarray, transform: Affine, crs: str | None) -> Path:
    profile = {
        "driver": "GTiff",
        "height": arr.shape[1],
        "width": arr.shape[2],
        "count": arr.shape[0],
        "dtype": "float32",
        "nodata": -9999.0,
        "transform": transform,
    }
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr.astype("float32"))
    return path


def halves(height: int, width: int, seed: int) -> np.ndarray:
    """One band: +1 on the left half, -1 on the right half, plus small noise."""
    rng = np.random.default_rng(seed)
    arr = np.where(np.arange(width)[None, :] < width // 2, 1.0, -1.0) * np.ones((height, 1))
    return (arr + 0.1 * rng.standard_normal((height, width)))[None].astype("float32")


def pixel_centres(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> tuple[list, list]:
    pts = [transform @ (c + 0.5, r + 0.5) for r, c in zip(rows, cols, strict=True)]
    return [p[0] for p in pts], [p[1] for p in pts]


def points_frame(
    transform: Affine, crs: str, rows: np.ndarray, cols: np.ndarray, classes: list
) -> gpd.GeoDataFrame:
    xs, ys = pixel_centres(transform, rows, cols)
    return gpd.GeoDataFrame({"landcover": classes}, geometry=gpd.points_from_xy(xs, ys), crs=crs)


@pytest.fixture(scope="module")
def two_crs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two rasters in UTM 33 (30 m) and UTM 32 (20 m) and EPSG:4326 points on both.

    Left halves hold +1 ("high"), right halves -1 ("low"). Points on raster A are
    all "high" and on raster B all "low": a model trains only if both rasters give
    windows.
    """
    d = tmp_path_factory.mktemp("two_crs")
    ta = Affine(30.0, 0, 500_000.0, 0, -30.0, 5_200_000.0)
    tb = Affine(20.0, 0, 900_000.0, 0, -20.0, 5_210_000.0)  # UTM 32, east of its zone
    a = write_tif(d / "a_utm33.tif", halves(192, 192, 1), ta, UTM33)
    b = write_tif(d / "b_utm32.tif", halves(160, 224, 2), tb, UTM32)
    rng = np.random.default_rng(3)
    ra, ca = rng.integers(0, 192, 40), rng.integers(0, 80, 40)  # left half of A: high
    rb, cb = rng.integers(0, 160, 40), rng.integers(130, 224, 40)  # right half of B: low
    pa = points_frame(ta, UTM33, ra, ca, ["high"] * 40)
    pb = points_frame(tb, UTM32, rb, cb, ["low"] * 40)
    far = gpd.GeoDataFrame(
        {"landcover": ["low"]}, geometry=[shapely.Point(0.0, 0.0)], crs="EPSG:4326"
    )
    pts = gpd.GeoDataFrame(
        {"landcover": [*pa.landcover, *pb.landcover, "low"]},
        geometry=[*pa.to_crs(4326).geometry, *pb.to_crs(4326).geometry, *far.geometry],
        crs="EPSG:4326",
    )
    gpkg = d / "points.gpkg"
    pts.to_file(gpkg, driver="GPKG")
    # Polygons in EPSG:4326 over the left and right halves of A.
    left = shapely.box(
        500_000 + 30 * 4, 5_200_000 - 30 * 188, 500_000 + 30 * 90, 5_200_000 - 30 * 4
    )
    right = shapely.box(
        500_000 + 30 * 102, 5_200_000 - 30 * 188, 500_000 + 30 * 188, 5_200_000 - 30 * 4
    )
    polys = gpd.GeoDataFrame(
        {"landcover": ["high", "low"]}, geometry=[left, right], crs=UTM33
    ).to_crs(4326)
    geojson = d / "polygons.geojson"
    polys.to_file(geojson, driver="GeoJSON")
    return {
        "a": a, "b": b, "points": gpkg, "polygons": geojson,
        "pixels_a": (ra, ca, (192, 192)), "pixels_b": (rb, cb, (160, 224)),
    }  # fmt: skip


def n_valid_windows(rows: np.ndarray, cols: np.ndarray, shape: tuple, patch: int) -> int:
    """Windows centred on (rows, cols) with at least half their pixels on the raster."""
    h = patch // 2
    dy = np.minimum(rows - h + patch, shape[0]) - np.maximum(rows - h, 0)
    dx = np.minimum(cols - h + patch, shape[1]) - np.maximum(cols - h, 0)
    return int((dy * dx >= 0.5 * patch * patch).sum())


def run(args: list) -> object:
    return CliRunner(env=ENV).invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------- reading, ids


@pytest.mark.parametrize(
    ("name", "driver"),
    [("l.gpkg", "GPKG"), ("l.shp", "ESRI Shapefile"), ("l.geojson", "GeoJSON"),
     ("l.fgb", "FlatGeobuf"), ("l.parquet", None)],
)  # fmt: skip
def test_read_vector_formats(tmp_path: Path, name: str, driver: str | None) -> None:
    gdf = gpd.GeoDataFrame(
        {"cls": ["a", "b"]}, geometry=[shapely.Point(1, 2), shapely.Point(3, 4)], crs=UTM33
    )
    path = tmp_path / name
    if driver is None:
        gdf.to_parquet(path)
    else:
        gdf.to_file(path, driver=driver)
    assert gc.is_vector_file(path)
    got = gc.read_vector_labels(path)
    assert sorted(got["cls"]) == ["a", "b"]  # FlatGeobuf orders by its spatial index
    assert got.crs == CRS.from_string(UTM33)
    assert got.attrs["source"] == str(path)


def test_read_vector_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such vector label file"):
        gc.read_vector_labels(tmp_path / "missing.gpkg")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read vector labels"):
        gc.read_vector_labels(bad)


def _pts(values: list, column: str = "cls", **extra: list) -> gpd.GeoDataFrame:
    geoms = [shapely.Point(i, i) for i in range(len(values))]
    return gpd.GeoDataFrame({column: values, **extra}, geometry=geoms, crs=UTM33)


def test_class_ids_from_names_ids_and_given_order() -> None:
    (vl,) = prepare_vector_labels(_pts(["water", "forest", "water"]))
    assert vl.class_names == ("forest", "water")  # sorted
    assert list(vl.points["id"]) == [1, 0, 1]
    (vl,) = prepare_vector_labels(
        _pts(["water", "forest"]), class_names=["water", "forest", "urban"]
    )
    assert list(vl.points["id"]) == [0, 1] and vl.class_names == ("water", "forest", "urban")
    (vl,) = prepare_vector_labels(_pts([2, 0, 1]))
    assert list(vl.points["id"]) == [2, 0, 1]
    assert vl.class_names == ("class_0", "class_1", "class_2")
    # Two frames share one class list.
    a, b = prepare_vector_labels([_pts(["b"]), _pts(["a", "c"])])
    assert a.class_names == b.class_names == ("a", "b", "c")
    assert list(a.points["id"]) == [1]


def test_class_column_errors() -> None:
    two = _pts(["a", "b"], other=[1, 2])
    with pytest.raises(InputError, match=r"say which column.*cls, other"):
        prepare_vector_labels(two)
    with pytest.raises(InputError, match=r"no column 'nope'.*cls, other"):
        prepare_vector_labels(two, label_column="nope")
    with pytest.raises(InputError, match=r"urban.*not among the classes"):
        prepare_vector_labels(_pts(["urban"]), class_names=["water", "forest"])
    with pytest.raises(InputError, match=r"holds 1.5, not a class id"):
        prepare_vector_labels(_pts([0, 1.5]))
    with pytest.raises(InputError, match="class id 3 but there are only 2"):
        prepare_vector_labels(_pts([0, 3]), class_names=["a", "b"])
    with pytest.raises(InputError, match="mix class names and class ids"):
        prepare_vector_labels([_pts(["a"]), _pts([1])])


def test_multipart_nulls_and_lines() -> None:
    gdf = gpd.GeoDataFrame(
        {"cls": ["a", None, "b", "a"]},
        geometry=[
            shapely.MultiPoint([(0, 0), (5, 5)]),
            shapely.Point(1, 1),
            shapely.box(0, 0, 10, 10),
            None,
        ],
        crs=UTM33,
    )
    (vl,) = prepare_vector_labels(gdf)
    assert len(vl.points) == 2 and len(vl.polygons) == 1  # the multipoint is split
    assert vl.n_dropped == {"no_geometry": 1, "no_class": 1}
    lines = gpd.GeoDataFrame({"cls": ["a"]}, geometry=[shapely.LineString([(0, 0), (1, 1)])])
    with pytest.raises(InputError, match=r"LineString.*Buffer lines into polygons"):
        prepare_vector_labels(lines)


def test_crs_rules() -> None:
    data = xr.DataArray(np.zeros((1, 4, 4), np.float32), dims=("band", "y", "x"))
    data.attrs["source"] = "grid.tif"
    no_crs = gpd.GeoDataFrame({"id": [0]}, geometry=[shapely.Point(1, 1)])
    assert to_raster_crs(no_crs, data, "l") is no_crs  # neither has a CRS: used as is
    with pytest.raises(InputError, match=r"grid.tif has no CRS"):
        to_raster_crs(no_crs.set_crs(4326), data, "l")
    with_crs = data.rio.write_crs(UTM33)
    with_crs.attrs["source"] = "grid.tif"
    with pytest.raises(InputError, match="vector labels have no CRS"):
        to_raster_crs(no_crs, with_crs, "l")


# --------------------------------------------------------------------------- point windows


@pytest.mark.parametrize("transform", [Affine(30, 0, 1000, 0, -30, 9000), ROTATED])
@pytest.mark.parametrize("chunk", [7, 64])
def test_point_windows_are_centred_on_the_point(transform: Affine, chunk: int) -> None:
    """Each window is the raster's pixels around the point's pixel, NaN-padded past the edge."""
    h, w, p = 50, 61, 16
    arr = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w)
    arr[1, 10:12, 10:12] = np.nan
    rows = np.array([0, 25, 49, 3, 30, 10])
    cols = np.array([0, 30, 60, 58, 2, 11])
    xs, ys = pixel_centres(transform, rows, cols)
    # A point off the pixel centre (but inside the pixel) and one outside the raster.
    off = transform @ (5.9, 7.1)
    xs, ys = [*xs, off[0], -1e7], [*ys, off[1], -1e7]
    pts = gpd.GeoDataFrame({"id": np.arange(8)}, geometry=gpd.points_from_xy(xs, ys))
    pw = point_windows(
        da.from_array(arr, chunks=(2, chunk, chunk)), transform, pts, patch=p, min_valid=0.0
    )
    assert list(pw.inside) == [True] * 7 + [False]
    padded = np.full((2, h + 2 * p, w + 2 * p), np.nan, np.float32)
    padded[:, p : p + h, p : p + w] = arr
    expect_rc = [*zip(rows, cols, strict=True), (7, 5)]
    got = dict(zip(pw.ids.tolist(), range(len(pw.ids)), strict=True))
    for k, (r, c) in enumerate(expect_rc):
        ref = padded[:, p + r - p // 2 : p + r - p // 2 + p, p + c - p // 2 : p + c - p // 2 + p]
        np.testing.assert_array_equal(pw.chips[got[k]], np.nan_to_num(ref))
        assert tuple(pw.centres[got[k]]) == (r, c)


def test_point_windows_min_valid() -> None:
    arr = np.ones((1, 40, 40), np.float32)
    t = Affine(1, 0, 0, 0, -1, 40)
    pts = gpd.GeoDataFrame(
        {"id": [0, 1]}, geometry=[shapely.Point(0.5, 39.5), shapely.Point(20, 20)]
    )
    pw = point_windows(da.from_array(arr), t, pts, patch=16, min_valid=0.5)
    assert pw.n_invalid == 1 and list(pw.ids) == [1]  # the corner window is 1/4 valid


# --------------------------------------------------------------------------- polygons


def test_rasterize_polygons_blockwise_matches_whole_and_drops_conflicts() -> None:
    h, w = 90, 130
    t = Affine(10, 0, 0, 0, -10, 900)
    like = (
        xr.DataArray(
            da.zeros((1, h, w), chunks=(1, 32, 40), dtype=np.float32), dims=("band", "y", "x")
        )
        .rio.write_crs(UTM33)
        .rio.write_transform(t)
    )
    polys = [
        shapely.Point(300, 600).buffer(200),
        shapely.box(700, 100, 1200, 500),
        shapely.box(1000, 300, 1250, 700),  # overlaps the box above: other class
        shapely.box(50, 50, 250, 250),
        shapely.box(150, 150, 350, 350),  # overlaps the box above: same class
    ]
    ids = [0, 1, 2, 3, 3]
    gdf = gpd.GeoDataFrame({"id": ids}, geometry=polys, crs=UTM33)
    got = rasterize_polygons(gdf, like, source="p").values
    whole = np.full((h, w), np.nan, np.float32)
    for g, k in zip(polys, ids, strict=True):
        m = features.geometry_mask([g], (h, w), t, invert=True)
        whole[m & np.isnan(whole)] = k
        whole[m & (whole != k)] = -1  # conflict
    whole[whole == -1] = np.nan
    np.testing.assert_array_equal(got, whole)
    assert np.isnan(got).any() and (got == 3).sum() > 0


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize("seed", range(4))
def test_blocked_split_no_validation_window_overlaps_a_training_window(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p, block, shape = 16, 24, (150, 170)
    centres = np.stack([rng.integers(0, 150, 400), rng.integers(0, 170, 400)], axis=1)
    val, drop = blocked_split(
        centres, shape, patch=p, block=block, fraction=0.25, rng=np.random.default_rng(seed)
    )
    train = ~val & ~drop
    assert val.any() and train.any()
    gap = np.abs(centres[train][:, None, :] - centres[val][None, :, :]).max(axis=2)
    assert gap.min() >= p  # windows p apart or more never share a pixel
    # About a quarter of the windows is held out: off by at most the largest block's windows.
    per_block = np.unique(centres // block, axis=0, return_counts=True)[1]
    assert abs(int(val.sum()) - 0.25 * len(centres)) <= per_block.max()
    for r, c in centres[drop]:
        assert not val[(centres[:, 0] == r) & (centres[:, 1] == c)].any()


# --------------------------------------------------------------------------- training


@pytest.mark.filterwarnings("ignore::georaster_cnn.errors.ValidationWarning")  # tiny scene
def test_train_points_in_4326_over_two_projected_crs(two_crs: dict) -> None:
    rasters = [gc.open_raster(two_crs["a"]), gc.open_raster(two_crs["b"])]
    assert rasters[0].rio.crs != rasters[1].rio.crs
    points = gc.read_vector_labels(two_crs["points"])
    assert points.crs.to_epsg() == 4326
    model = gc.train(
        rasters, points, label_column="landcover", arch=TEST_ARCH, epochs=2, patch_size=16,
        val_block=48, device="cpu",
    )  # fmt: skip
    prov = model.provenance
    assert model.class_names == ("high", "low")
    # Every point on a raster with a valid window became a window (the far one lies on
    # neither raster); all "high" come from raster A, all "low" from raster B.
    n_a = n_valid_windows(*two_crs["pixels_a"], 16)
    n_b = n_valid_windows(*two_crs["pixels_b"], 16)
    assert 30 < n_a <= 40 and 30 < n_b <= 40
    assert prov["n_train"] + prov["n_val"] + prov["split"]["n_dropped_in_buffer"] == n_a + n_b
    assert prov["n_train"] > 0 and prov["n_val"] > 0
    assert prov["labels"] == [str(two_crs["points"])] * 2


@pytest.mark.filterwarnings("ignore::georaster_cnn.errors.ValidationWarning")  # tiny scene
def test_train_polygons_min_cover(two_crs: dict) -> None:
    raster = gc.open_raster(two_crs["a"])
    polys = gpd.read_file(two_crs["polygons"])
    common = dict(label_column="landcover", arch=TEST_ARCH, epochs=1, patch_size=16,
                  stride=8, val_block=64, device="cpu", patience=0)  # fmt: skip
    loose = gc.train(raster, polys, min_cover=0.0, **common).provenance
    inside = gc.train(raster, polys, min_cover=1.0, **common).provenance
    n_loose = loose["n_train"] + loose["n_val"] + loose["split"]["n_dropped_in_buffer"]
    n_inside = inside["n_train"] + inside["n_val"] + inside["split"]["n_dropped_in_buffer"]
    assert 0 < n_inside < n_loose
    # Centres on an 8-px grid (8i + 4) inside the polygons (pixel rows 4..187, columns 4..89
    # and 102..187): 23 rows x (11 + 10) columns. min_cover=0 keeps every one of them.
    assert n_loose == 23 * (11 + 10)
    assert inside["min_cover"] == 1.0


def test_train_vector_errors(two_crs: dict) -> None:
    raster = gc.open_raster(two_crs["a"])
    far = gpd.GeoDataFrame(
        {"c": ["x", "y"]}, geometry=[shapely.Point(0, 0), shapely.Point(1, 1)], crs=4326
    )
    with pytest.raises(TrainingError, match="no labelled window"):
        gc.train(raster, far, arch=TEST_ARCH, epochs=1, patch_size=16, device="cpu")
    with pytest.raises(InputError, match="label_column= names the class attribute"):
        gc.train(raster, gc.open_labels(two_crs["a"]), label_column="c", epochs=1)


# --------------------------------------------------------------------------- evaluation


def test_evaluate_points_matches_window_means(two_crs: dict, make_model) -> None:
    """The stand-in model says "high" iff the window mean is > 0: points on A's left half
    are high, on B's right half low, so every point is right; a point on neither raster
    is counted as outside."""
    model = make_model(1, ("low", "high"), patch_size=16)
    rasters = [gc.open_raster(two_crs["a"]), gc.open_raster(two_crs["b"])]
    points = gc.read_vector_labels(two_crs["points"])
    report = gc.evaluate(rasters, model, points, label_column="landcover", device="cpu")
    assert report.unit == "points"
    assert report.n_evaluated == 80 and report.accuracy == 1.0
    assert report.n_excluded["centre_outside_raster"] == 1
    assert report.confusion.tolist() == [[40, 0], [0, 40]]


def test_evaluate_polygons_counts_cells_inside(two_crs: dict, make_model) -> None:
    model = make_model(1, ("low", "high"), patch_size=16)
    raster = gc.open_raster(two_crs["a"])
    polys = gpd.read_file(two_crs["polygons"])
    report = gc.evaluate(raster, model, polys, stride=8, device="cpu")
    assert report.unit == "cells"
    assert report.n_evaluated == 23 * 21  # centres (8i + 4) inside either polygon
    assert report.support.tolist() == [23 * 10, 23 * 11]
    assert report.accuracy > 0.9  # only windows near the +1/-1 edge can be wrong


# --------------------------------------------------------------------------- CLI


def test_cli_train_and_evaluate_with_vector_labels(two_crs: dict, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = run(
        ["train", two_crs["a"], two_crs["b"], "--labels", two_crs["points"],
         "--label-column", "landcover", "--arch", TEST_ARCH, "--epochs", "2", "--device", "cpu",
         "--val-block", "48", "-o", out]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = gc.load_model(out)
    assert model.class_names == ("high", "low")
    assert model.provenance["split"]["block_px"] == 48
    report = tmp_path / "report"
    result = run(
        ["evaluate", out, two_crs["a"], two_crs["b"], "--labels", two_crs["points"],
         "--label-column", "landcover", "--device", "cpu", "-o", report]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["unit"] == "points"
    # 64-px windows: points near an edge have too few valid pixels and get no prediction.
    assert metrics["n_evaluated"] + metrics["n_excluded"]["no_prediction"] == 80
    assert metrics["n_excluded"]["centre_outside_raster"] == 1


def test_cli_vector_label_errors(two_crs: dict, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = run(
        ["train", two_crs["a"], "--labels", two_crs["points"], "--label-column", "nope",
         "-o", out, "--epochs", "1"]
    )  # fmt: skip
    assert result.exit_code != 0
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no column 'nope'" in errors[0] and "landcover" in errors[0]
    assert not out.exists()
    labels = tmp_path / "labels.tif"
    write_tif(labels, np.zeros((1, 8, 8)), Affine(1, 0, 0, 0, -1, 8), UTM33)
    result = run(["train", two_crs["a"], "--labels", labels, "--label-column", "x", "-o", out])
    assert result.exit_code == 2 and "drop --label-column" in result.stderr
