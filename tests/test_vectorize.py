"""vectorize / write_vectors, the ``vectorize`` command, ``predict --vector`` and ``rio gcnn``.

Predictions are built by hand (a class map and probabilities as an xarray Dataset,
shaped like :func:`georaster_cnn.predict`'s result) and written with
:func:`georaster_cnn.write_prediction`, so the files are exactly what the CLI makes.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import xarray as xr
from affine import Affine
from click.testing import CliRunner, Result
from georaster_cnn_cli._vectors import VECTOR_SUFFIXES
from georaster_cnn_cli.main import cli

import georaster_cnn as gc

# The module, not the function of the same name that georaster_cnn exports.
vec_module = importlib.import_module("georaster_cnn.products.polygons")

UTM = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_600_000.0)
ROTATED = Affine.translation(1_000.0, 2_000.0) @ Affine.rotation(30.0) @ Affine.scale(10.0, -10.0)
NAMES = ("water", "forest", "urban")
COLORS = [[0, 0, 255], [0, 128, 0], [255, 0, 0]]
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
ENV: dict[str, str | None] = {"COLUMNS": "250", "NO_COLOR": "1", "FORCE_COLOR": None}


# --------------------------------------------------------------------------- helpers


def prediction(
    classes: np.ndarray,
    probs: np.ndarray | None = None,
    *,
    transform: Affine = UTM,
    crs: str | None = "EPSG:32633",
    names: Sequence[str] = NAMES,
) -> xr.Dataset:
    """A Dataset shaped like ``georaster_cnn.predict``'s result (computed, not lazy)."""
    h, w = classes.shape
    k = len(names)
    if probs is None:
        probs = np.where(classes == 255, np.nan, 1.0 / k) * np.ones((k, 1, 1))
    coords: dict[str, Any] = {"class_name": np.array(names, dtype=object)}
    if transform.b == 0 and transform.d == 0:
        coords["x"] = transform.c + transform.a * (np.arange(w) + 0.5)
        coords["y"] = transform.f + transform.e * (np.arange(h) + 0.5)
    ds = xr.Dataset(
        {
            "class": xr.DataArray(classes.astype(np.uint8), dims=("y", "x")),
            "probability": xr.DataArray(probs.astype(np.float32), dims=("class_name", "y", "x")),
        },
        coords=coords,
        attrs={
            "class_names": json.dumps(list(names)),
            "class_colors": json.dumps(COLORS[:k]),
            "source": "hand-made",
        },
    )
    ds = ds.rio.write_transform(transform)
    return ds.rio.write_crs(crs) if crs is not None else ds


def write_pred(path: Path, ds: xr.Dataset, *, probabilities: bool = True) -> Path:
    return gc.write_prediction(ds, path, probabilities=probabilities)


def blocks_map(height: int = 40, width: int = 50, seed: int = 0) -> np.ndarray:
    """Blocks of the three classes, scattered single cells and a nodata corner and holes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cls = np.where(yy < height // 2, 0, 1) + (xx >= 2 * width // 3)
    cls = np.minimum(cls, 2).astype(np.uint8)
    noise = rng.random(cls.shape) < 0.08
    cls[noise] = rng.integers(0, 3, noise.sum())
    cls[:6, :7] = 255
    cls[rng.random(cls.shape) < 0.03] = 255
    return cls


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "partial" in p.name)


def run(args: Sequence[str | Path]) -> Result:
    return CliRunner(env=ENV).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def utm_file(tmp_path: Path) -> Path:
    cls = blocks_map()
    rng = np.random.default_rng(1)
    probs = rng.random((3, *cls.shape))
    probs /= probs.sum(axis=0)
    probs[:, cls == 255] = np.nan
    return write_pred(tmp_path / "maps" / "scene.tif", prediction(cls, probs))


# --------------------------------------------------------------------------- vectorize


def test_dissolve_areas_match_cell_counts(utm_file: Path) -> None:
    gdf = gc.vectorize(utm_file)
    with rasterio.open(utm_file) as src:
        cls = src.read(1)
        cell = abs(src.transform.determinant)
    assert gdf.crs.to_epsg() == 32633
    assert list(gdf.columns) == [
        "class_id", "class_name", "area", "cells", "mean_probability", "geometry",
    ]  # fmt: skip
    assert gdf["class_id"].is_monotonic_increasing
    assert gdf.geom_type.eq("Polygon").all() and gdf.is_valid.all()
    for k, name in enumerate(NAMES):
        part = gdf[gdf["class_id"] == k]
        n = int((cls == k).sum())
        assert (part["class_name"] == name).all()
        assert part["cells"].sum() == n
        assert part["area"].sum() == pytest.approx(n * cell, rel=1e-12)
        assert part.geometry.area.sum() == pytest.approx(n * cell, rel=5e-3)
        assert np.allclose(part.geometry.area, part["area"])
    # The same outlines as rasterio's own polygonisation, class by class.
    for k in range(3):
        ref = shapely.union_all(
            [
                shapely.geometry.shape(g)
                for g, v in rasterio.features.shapes(cls, mask=cls == k, transform=UTM)
            ]
        )
        ours = shapely.union_all(gdf[gdf["class_id"] == k].geometry.to_numpy())
        assert shapely.symmetric_difference(ref, ours).area < 1e-6 * ref.area


def test_four_connectivity_and_hand_made_mean_probability(tmp_path: Path) -> None:
    n = 255
    cls = np.array(
        [
            [0, 0, 1, 1, 1],
            [0, 0, 1, n, 1],
            [2, 2, 2, n, 0],
            [2, 2, 2, 0, 0],
        ],
        dtype=np.uint8,
    )
    own = np.array(
        [
            [0.9, 0.8, 0.6, 0.6, 0.6],
            [0.7, 0.6, 0.6, np.nan, 0.6],
            [1.0, 0.9, 0.8, np.nan, 0.5],
            [0.7, 0.6, 0.5, 0.4, 0.3],
        ]
    )
    probs = np.stack([np.where(cls == k, own, (1 - own) / 2) for k in range(3)])
    ds = prediction(cls, probs)
    path = write_pred(tmp_path / "hand.tif", ds)
    for source in (path, ds):
        gdf = gc.vectorize(source)
        got = sorted(zip(gdf["class_id"], gdf["cells"], gdf["mean_probability"], strict=True))
        expected = [(0, 3, 0.4), (0, 4, 0.75), (1, 5, 0.6), (2, 6, 0.75)]
        assert [(c, n) for c, n, _ in got] == [(c, n) for c, n, _ in expected]
        assert np.allclose([m for *_, m in got], [m for *_, m in expected], atol=1e-6)

    # Cells touching only at a corner are separate polygons (4-connectivity).
    diag = np.array([[1, 0], [0, 1]], dtype=np.uint8)
    gdf = gc.vectorize(prediction(diag, names=("a", "b")))
    assert sorted(gdf["class_id"].tolist()) == [0, 0, 1, 1]
    assert (gdf["cells"] == 1).all()


def test_probabilities_optional(tmp_path: Path) -> None:
    cls = blocks_map(12, 10)
    without = write_pred(tmp_path / "classes.tif", prediction(cls), probabilities=False)
    assert "mean_probability" not in gc.vectorize(without).columns
    full = write_pred(tmp_path / "full.tif", prediction(cls))
    assert "mean_probability" not in gc.vectorize(full, probabilities=False).columns
    assert "mean_probability" not in gc.vectorize(prediction(cls), probabilities=False).columns


def test_rotated_transform_without_crs(tmp_path: Path) -> None:
    cls = blocks_map(20, 25, seed=3)
    ds = prediction(cls, transform=ROTATED, crs=None)
    path = write_pred(tmp_path / "rotated.tif", ds)
    gdf = gc.vectorize(path)
    assert gdf.crs is None
    cell = abs(ROTATED.determinant)
    for k in range(3):
        part = gdf[gdf["class_id"] == k]
        n = int((cls == k).sum())
        assert part.geometry.area.sum() == pytest.approx(n * cell, rel=5e-3)
        assert part["area"].sum() == pytest.approx(n * cell)
    # A single cell's polygon is that cell, rotated: its centroid is the cell centre.
    single = gdf[gdf["cells"] == 1].iloc[0]
    c, r = ~ROTATED * (single.geometry.centroid.x, single.geometry.centroid.y)
    row, col = int(np.floor(r)), int(np.floor(c))
    assert (c - col, r - row) == pytest.approx((0.5, 0.5))
    assert cls[row, col] == single["class_id"]
    # From the Dataset: the same polygons.
    from_ds = gc.vectorize(ds)
    assert from_ds.geometry.geom_equals_exact(gdf.geometry, tolerance=1e-6).all()


def test_min_area_drops_small_polygons(utm_file: Path) -> None:
    full = gc.vectorize(utm_file)
    min_area = 3 * 900.0
    kept = gc.vectorize(utm_file, min_area=min_area)
    assert len(kept) < len(full)
    assert (kept["area"] >= min_area).all()
    assert kept["cells"].sum() == full.loc[full["area"] >= min_area, "cells"].sum()


def test_simplify_keeps_validity_and_statistics(utm_file: Path) -> None:
    exact = gc.vectorize(utm_file)
    simple = gc.vectorize(utm_file, simplify=45.0)
    assert simple.is_valid.all() and not simple.is_empty.any()
    assert simple[["class_id", "area", "cells"]].equals(exact[["class_id", "area", "cells"]])
    assert shapely.get_num_coordinates(simple.geometry.to_numpy()).sum() < (
        shapely.get_num_coordinates(exact.geometry.to_numpy()).sum()
    )


def test_empty_prediction(tmp_path: Path) -> None:
    cls = np.full((8, 9), 255, dtype=np.uint8)
    path = write_pred(tmp_path / "empty.tif", prediction(cls))
    gdf = gc.vectorize(path)
    assert len(gdf) == 0
    assert list(gdf.columns) == [
        "class_id", "class_name", "area", "cells", "mean_probability", "geometry",
    ]  # fmt: skip
    assert gdf.crs.to_epsg() == 32633
    out = gc.write_vectors(gdf, tmp_path / "empty.gpkg")
    back = gpd.read_file(out)
    assert len(back) == 0
    assert {"class_id", "class_name", "area", "cells", "mean_probability"} <= set(back.columns)


def test_bad_inputs(tmp_path: Path, make_raster: Callable[..., Path]) -> None:
    plain = make_raster(tmp_path, "plain.tif", height=8, width=8)
    with pytest.raises(gc.InputError, match="not a class map"):
        gc.vectorize(plain)
    cls = np.array([[0, 5]], dtype=np.uint8)
    path = write_pred(tmp_path / "bad.tif", prediction(cls, names=("a", "b")))
    with pytest.raises(gc.InputError, match=r"class values \[5\] have no name"):
        gc.vectorize(path)
    with pytest.raises(gc.InputError, match="min_area= must be >= 0"):
        gc.vectorize(path, min_area=-1)
    with pytest.raises(gc.ReadError):
        gc.vectorize(tmp_path / "missing.tif")


def test_lazy_prediction_matches_written_file(
    tmp_path: Path, make_model: Callable[..., Any], make_raster: Callable[..., Path]
) -> None:
    scene = make_raster(tmp_path, "scene.tif", height=70, width=50, nan_holes=True, seed=5)
    pred = gc.predict(gc.open_raster(scene), make_model(1), stride=8, device="cpu")
    from_graph = gc.vectorize(pred)  # class band and probabilities in one pass
    from_file = gc.vectorize(gc.write_prediction(pred, tmp_path / "pred.tif", probabilities=True))
    assert from_graph[["class_id", "cells"]].equals(from_file[["class_id", "cells"]])
    assert from_graph.geometry.geom_equals_exact(from_file.geometry, 1e-6).all()
    # The file holds whole percents.
    assert np.allclose(from_graph["mean_probability"], from_file["mean_probability"], atol=0.005)


# --------------------------------------------------------------------------- write_vectors


@pytest.mark.parametrize("suffix", VECTOR_SUFFIXES)
def test_formats_round_trip(utm_file: Path, tmp_path: Path, suffix: str) -> None:
    if suffix in ("parquet", "geoparquet") and not HAS_PYARROW:
        pytest.skip("GeoParquet needs pyarrow, which is not installed")
    gdf = gc.vectorize(utm_file)
    out = gc.write_vectors(gdf, tmp_path / "out" / f"polygons.{suffix}")
    assert out == tmp_path / "out" / f"polygons.{suffix}"
    back = gpd.read_parquet(out) if "parquet" in suffix else gpd.read_file(out)
    if suffix == "shp":
        back = back.rename(columns={v: k for k, v in vec_module.SHAPEFILE_COLUMNS.items()})
    assert list(back.columns) == list(gdf.columns)
    assert back.crs == gdf.crs
    assert back["class_name"].tolist() == gdf["class_name"].tolist()
    assert np.array_equal(back["cells"], gdf["cells"])
    assert np.allclose(back["mean_probability"], gdf["mean_probability"])
    assert back.geometry.normalize().geom_equals_exact(gdf.geometry.normalize(), 1e-6).all()
    assert leftovers(out.parent) == []


def test_no_crs_round_trip(tmp_path: Path) -> None:
    path = write_pred(tmp_path / "nocrs.tif", prediction(blocks_map(10, 12), crs=None))
    gdf = gc.vectorize(path)
    assert gdf.crs is None
    for suffix in ("gpkg", "shp"):
        back = gpd.read_file(gc.write_vectors(gdf, tmp_path / f"nocrs.{suffix}"))
        assert back.crs is None and len(back) == len(gdf)


def test_library_and_cli_agree_on_formats() -> None:
    from georaster_cnn.io.formats import VECTOR_FORMATS

    assert tuple(s.lstrip(".") for s in VECTOR_FORMATS) == VECTOR_SUFFIXES


def test_overwrite_and_atomic_writes(
    utm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gdf = gc.vectorize(utm_file)
    out = tmp_path / "v" / "polygons.gpkg"
    gc.write_vectors(gdf, out)
    with pytest.raises(gc.OutputExistsError, match="overwrite"):
        gc.write_vectors(gdf.iloc[:3], out)
    assert len(gpd.read_file(out)) == len(gdf)
    gc.write_vectors(gdf.iloc[:3], out, overwrite=True)
    assert len(gpd.read_file(out)) == 3
    assert leftovers(out.parent) == []

    def broken(frame: gpd.GeoDataFrame, staged: Path, driver: str) -> None:
        staged.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(vec_module, "_write_ogr", broken)
    with pytest.raises(OSError, match="disk full"):
        gc.write_vectors(gdf, out, overwrite=True)
    assert len(gpd.read_file(out)) == 3  # the old file is untouched
    with pytest.raises(OSError, match="disk full"):
        gc.write_vectors(gdf, tmp_path / "v" / "new.gpkg")
    assert sorted(p.name for p in out.parent.iterdir()) == ["polygons.gpkg"]


def test_shapefile_sidecars_replaced(utm_file: Path, tmp_path: Path) -> None:
    gdf = gc.vectorize(utm_file)
    out = tmp_path / "shp" / "polygons.shp"
    gc.write_vectors(gdf, out)
    names = sorted(p.name for p in out.parent.iterdir())
    assert {"polygons.shp", "polygons.shx", "polygons.dbf", "polygons.prj"} <= set(names)
    # Overwritten without a CRS: the old .prj must not survive to mislabel it.
    gc.write_vectors(gdf.set_crs(None, allow_override=True).iloc[:2], out, overwrite=True)
    assert not out.with_suffix(".prj").exists()
    back = gpd.read_file(out)
    assert back.crs is None and len(back) == 2
    assert leftovers(out.parent) == []


def test_unknown_suffix_and_missing_pyarrow(
    utm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gdf = gc.vectorize(utm_file)
    with pytest.raises(gc.InputError, match=r"\.gpkg, \.geojson.*\.shp"):
        gc.write_vectors(gdf, tmp_path / "polygons.kml")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    with pytest.raises(gc.InputError, match="pip install pyarrow"):
        gc.write_vectors(gdf, tmp_path / "polygons.parquet")
    assert list(tmp_path.glob("polygons*")) == []


# --------------------------------------------------------------------------- CLI


def test_cli_vectorize(utm_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli" / "scene.gpkg"
    result = run(["vectorize", utm_file, "-o", out, "--min-area", "1800", "--simplify", "10"])
    assert result.exit_code == 0, result.output
    gdf = gpd.read_file(out)
    assert (gdf["area"] >= 1800).all()
    line = result.stdout.strip()
    assert line.startswith(f"{out}: {len(gdf)} polygons: water ")
    assert "forest" in line and "urban" in line

    again = run(["vectorize", utm_file, "-o", out])
    assert again.exit_code == 2
    assert error_lines(again) == [f"error: {out} exists; pass --overwrite to replace it"]
    assert run(["vectorize", utm_file, "-o", out, "--overwrite"]).exit_code == 0

    bad = run(["vectorize", utm_file, "-o", tmp_path / "scene.kml"])
    assert bad.exit_code == 2
    assert error_lines(bad)[0].startswith(f"error: {tmp_path / 'scene.kml'}: unknown vector format")

    missing = run(["vectorize", tmp_path / "nope.tif", "-o", tmp_path / "nope.gpkg"])
    assert missing.exit_code == 1
    assert len(error_lines(missing)) == 1


def test_cli_geoparquet_without_pyarrow_fails_before_vectorising(
    utm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    monkeypatch.setattr(gc, "vectorize", lambda *a, **k: pytest.fail("vectorised"))
    result = run(["vectorize", utm_file, "-o", tmp_path / "scene.parquet"])
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1 and "pip install pyarrow" in result.stderr


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_cli_vectorize_zarr_and_netcdf_class_maps(
    utm_file: Path, tmp_path: Path, suffix: str
) -> None:
    cls = blocks_map()
    cmap = write_pred(tmp_path / "cf" / f"scene{suffix}", prediction(cls))
    assert cmap.is_dir() == (suffix == ".zarr")  # a Zarr store is a folder
    out = tmp_path / "cf" / "scene.gpkg"
    result = run(["vectorize", cmap, "-o", out])
    assert result.exit_code == 0, result.output
    gdf = gpd.read_file(out)
    assert gdf["cells"].sum() == int((cls != 255).sum())
    expected = gc.vectorize(utm_file, probabilities=False)  # the same map as a COG
    assert sorted(gdf["cells"]) == sorted(expected["cells"])


def test_cli_predict_vector(
    tmp_path: Path, make_model: Callable[..., Any], make_raster: Callable[..., Path]
) -> None:
    model = gc.save_model(make_model(1), tmp_path / "model.safetensors")
    scene = make_raster(tmp_path, "in/scene.tif", height=64, width=48, seed=4)
    outdir = tmp_path / "maps"
    args = ["predict", model, scene, "-o", outdir, "--stride", "16", "--device", "cpu"]
    result = run([*args, "--vector", "gpkg", "--probabilities"])
    assert result.exit_code == 0, result.output
    assert "1 written, 0 skipped, 0 failed" in result.stdout
    gdf = gpd.read_file(outdir / "scene.gpkg")
    with rasterio.open(outdir / "scene.tif") as src:
        cls = src.read(1)
        cell = abs(src.transform.determinant)
    assert gdf["cells"].sum() == int((cls != 255).sum())
    assert gdf["area"].sum() == pytest.approx((cls != 255).sum() * cell)
    assert gdf["mean_probability"].between(0, 1).all()

    again = run([*args, "--vector", "gpkg"])
    assert "0 written, 1 skipped" in again.stdout

    (outdir / "scene.gpkg").unlink()  # made again from the existing class map
    remade = run([*args, "--vector", "gpkg"])
    assert remade.exit_code == 0, remade.output
    assert "1 written" in remade.stdout and (outdir / "scene.gpkg").is_file()

    # A vector output that cannot be replaced is that tile's failure.
    (outdir / "scene.geojson").mkdir()
    (outdir / "scene.geojson" / "keep").write_text("x")
    failed = run([*args, "--vector", "geojson", "--overwrite"])
    assert failed.exit_code == 1
    assert "vector output" in error_lines(failed)[0]
    assert (outdir / "scene.tif").is_file()

    bad = run([*args, "--vector", "kml"])
    assert bad.exit_code == 2


# --------------------------------------------------------------------------- rio plugin


def test_rio_plugin_group_is_named_gcnn() -> None:
    from georaster_cnn_cli.rio import gcnn

    assert gcnn.name == "gcnn"
    assert gcnn.commands is cli.commands and "vectorize" in gcnn.commands
    assert cli.name == "cli"  # the console script's group is unchanged


def test_rio_gcnn_help() -> None:
    if not any(ep.name == "gcnn" for ep in entry_points(group="rasterio.rio_plugins")):
        pytest.skip("the rasterio.rio_plugins entry point gcnn is not installed")
    rio = Path(sys.executable).parent / "rio"
    exe = str(rio) if rio.exists() else shutil.which("rio")
    if exe is None:
        pytest.skip("the rio command is not installed")
    proc = subprocess.run(
        [exe, "gcnn", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "vectorize" in proc.stdout and "Usage: rio gcnn" in proc.stdout
