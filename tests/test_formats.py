"""write: Zarr, netCDF and plain GeoTIFF outputs reopen with the exact grid, values and metadata."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from affine import Affine
from click.testing import CliRunner
from geo import NORTH_UP, ROTATED

from georaster_cnn import (
    GeoModel,
    InputError,
    OutputExistsError,
    ReadError,
    open_raster,
    predict,
    save_model,
    write_prediction,
)

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]

CLASSES = ("water", "forest", "urban")
CF = ["zarr", "netcdf"]
SUFFIX = {"zarr": ".zarr", "netcdf": ".nc"}


def _open(path: Path, **kw: object) -> xr.Dataset:
    if path.suffix == ".zarr":
        return xr.open_zarr(path, decode_coords="all", **kw)  # type: ignore[arg-type]
    return xr.open_dataset(path, decode_coords="all", **kw)  # type: ignore[arg-type]


@pytest.fixture
def prediction(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> tuple[xr.Dataset, GeoModel]:
    path = make_raster(
        tmp_path / "in", "scene.tif", height=150, width=130, count=2, nan_holes=True,
        transform=NORTH_UP,
    )  # fmt: skip
    return predict(open_raster(path), make_model(2, CLASSES), stride=8), make_model(2, CLASSES)


@pytest.mark.parametrize("fmt", CF)
@pytest.mark.parametrize("probabilities", [False, True])
def test_cf_round_trip(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], fmt: str, probabilities: bool
) -> None:
    pred, model = prediction
    out = tmp_path / "out" / f"map{SUFFIX[fmt]}"
    assert write_prediction(pred, out, probabilities=probabilities) == out
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporaries left
    ref = pred.compute()
    with _open(out) as ds:
        assert ds.rio.crs == rasterio.crs.CRS.from_epsg(32633)
        assert ds.rio.transform() == NORTH_UP @ Affine.scale(8)
        assert ds["class"].shape == ref["class"].shape == (19, 17)
        np.testing.assert_array_equal(ds["x"].values, ref["x"].values)
        np.testing.assert_array_equal(ds["y"].values, ref["y"].values)
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"
        assert ds["y"].attrs["standard_name"] == "projection_y_coordinate"
        assert ds["x"].attrs["units"] == "metre"
        assert json.loads(ds.attrs["class_names"]) == list(CLASSES)
        assert json.loads(ds.attrs["class_colors"]) == [list(c) for c in model.class_colors]
        assert ds.attrs["model_checksum"] == model.checksum
        assert int(ds.attrs["stride"]) == 8 and int(ds.attrs["patch_size"]) == 64
        assert ds.attrs["source"] == pred.attrs["source"]
        assert ds["class"].attrs["flag_meanings"] == "water forest urban"
        assert list(ds["class"].attrs["flag_values"]) == [0, 1, 2]
        # decoded: no-prediction cells are NaN, the rest the classes
        cls = ds["class"].values
        np.testing.assert_array_equal(np.isnan(cls), ref["class"].values == 255)
        assert ("probability" in ds) == probabilities
        if probabilities:
            assert list(ds["class_name"].values) == list(CLASSES)
            np.testing.assert_allclose(
                ds["probability"].values, ref["probability"].values, atol=0.0051
            )
    with _open(out, mask_and_scale=False) as raw:  # stored: uint8, 255 = no prediction
        assert raw["class"].dtype == np.uint8
        np.testing.assert_array_equal(raw["class"].values, ref["class"].values)
        if probabilities:
            assert raw["probability"].dtype == np.uint8
            assert raw["probability"].attrs["scale_factor"] == pytest.approx(0.01)


@pytest.mark.parametrize("fmt", CF)
def test_rotated_grid(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel, fmt: str
) -> None:
    path = make_raster(tmp_path, "rot.tif", height=60, width=45, transform=ROTATED)
    pred = predict(open_raster(path), make_model(1), stride=16)
    out = write_prediction(pred, tmp_path / f"rot{SUFFIX[fmt]}")
    with _open(out) as ds:
        assert "x" not in ds.coords and "y" not in ds.coords
        gt = [float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split()]
        assert Affine.from_gdal(*gt) == ROTATED @ Affine.scale(16)
        assert ds.rio.transform() == ROTATED @ Affine.scale(16)
        assert ds.rio.crs == rasterio.crs.CRS.from_epsg(32633)


@pytest.mark.parametrize("fmt", CF)
def test_no_crs(tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel, fmt: str) -> None:
    path = make_raster(tmp_path, "nocrs.tif", height=40, width=40, crs=None, transform=NORTH_UP)
    pred = predict(open_raster(path), make_model(1), stride=16)
    out = write_prediction(pred, tmp_path / f"o{SUFFIX[fmt]}")
    with _open(out) as ds:
        assert ds.rio.crs is None
        assert ds.rio.transform() == NORTH_UP @ Affine.scale(16)
        assert ds["class"].shape == (3, 3)


def test_gtiff_is_plain_tiled_geotiff(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel]
) -> None:
    pred, _ = prediction
    out = write_prediction(pred, tmp_path / "g.tif", format="gtiff", probabilities=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.tif", "g.tif.aux.xml", "in"]
    ref = pred.compute()
    with rasterio.open(out) as src:
        assert src.overviews(1) == []
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
        assert src.transform == NORTH_UP @ Affine.scale(8)
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)
        assert src.count == 4
        np.testing.assert_array_equal(src.read(1), ref["class"].values)
        assert json.loads(src.tags()["CLASS_NAMES"]) == list(CLASSES)


@pytest.mark.parametrize(
    ("name", "fmt", "kind"),
    [("a.tif", "cog", "file"), ("a.TIFF", "cog", "file"), ("a.zarr", "zarr", "dir"),
     ("a.nc", "netcdf", "file")],
)  # fmt: skip
def test_suffix_inference(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], name: str, fmt: str, kind: str
) -> None:
    from georaster_cnn.io.formats import output_format_for_path

    assert output_format_for_path(name) == fmt
    out = write_prediction(prediction[0], tmp_path / name)
    assert out.is_dir() if kind == "dir" else out.is_file()


@pytest.mark.parametrize(
    ("name", "fmt"), [("a.png", None), ("a", None), ("a.tif", "jpeg"), ("a.tif", "zarr"),
                      ("a.nc", "cog")],
)  # fmt: skip
def test_unknown_or_contradicting_format(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], name: str, fmt: str | None
) -> None:
    with pytest.raises(InputError):
        write_prediction(prediction[0], tmp_path / name, format=fmt)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("fmt", CF)
def test_overwrite_refused_then_replaced(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], fmt: str
) -> None:
    pred, _ = prediction
    out = tmp_path / f"o{SUFFIX[fmt]}"
    write_prediction(pred, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*")) if out.is_dir() else None
    with pytest.raises(OutputExistsError):
        write_prediction(pred, out)
    if before is not None:
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    write_prediction(pred, out, overwrite=True, probabilities=True)
    with _open(out) as ds:
        assert "probability" in ds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", out.name]


@pytest.mark.parametrize("fmt", CF)
@pytest.mark.parametrize("existing", [False, True])
def test_failure_during_compute_leaves_nothing(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel, fmt: str, existing: bool
) -> None:
    path = make_raster(
        tmp_path / "in", "bad.tif", height=256, width=256, blocksize=64, compress="deflate"
    )
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    pred = predict(open_raster(path, chunks=64), make_model(1), stride=32, check=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"bad{SUFFIX[fmt]}"
    if existing:
        good = make_raster(tmp_path / "in", "good.tif", height=64, width=64)
        write_prediction(predict(open_raster(good), make_model(1), stride=32), out)
        before = _open(out).load()
    with pytest.raises(ReadError, match=r"bad\.tif"):
        write_prediction(pred, out, overwrite=True)
    assert sorted(p.name for p in out_dir.iterdir()) == ([out.name] if existing else [])
    if existing:
        with _open(out) as after:
            xr.testing.assert_identical(after.load(), before)


def test_zarr_replace_failure_restores_old_store(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old store is renamed away before the new one is renamed in, and put back on failure."""
    import georaster_cnn.io.writer as writer

    pred, _ = prediction
    out = tmp_path / "o.zarr"
    write_prediction(pred, out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    real_rename = os.rename

    def rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        if ".partial.zarr" in str(src):
            raise OSError("disk gone")
        real_rename(src, dst)

    monkeypatch.setattr(writer.os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        write_prediction(pred, out, overwrite=True, probabilities=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "o.zarr"]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# --------------------------------------------------------------------------- CLI


def _netcdf_input(path: Path, make_raster: MakeRaster) -> Path:
    tif = make_raster(path.parent, "src.tif", height=64, width=64, count=1)
    da = open_raster(tif).load().rename("value").isel(band=0, drop=True)
    da.attrs = {}
    da.to_dataset().to_netcdf(path, engine="netcdf4")
    return path


@pytest.fixture
def model_file(tmp_path: Path, make_model: MakeModel) -> Path:
    return save_model(make_model(1, ("a", "b")), tmp_path / "m.safetensors")


def _cli(args: list[object]) -> object:
    from georaster_cnn_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_format_option_and_default_by_family(
    tmp_path: Path, make_raster: MakeRaster, model_file: Path
) -> None:
    tif = make_raster(tmp_path / "in", "scene.tif", height=64, width=64)
    nc = _netcdf_input(tmp_path / "in" / "cube.nc", make_raster)
    out = tmp_path / "out"
    res = _cli(["-q", "predict", model_file, tif, nc, "-o", out, "--stride", "32"])
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in out.iterdir()) == ["cube.nc", "scene.tif", "scene.tif.aux.xml"]
    with _open(out / "cube.nc") as ds:
        assert ds.rio.crs == rasterio.crs.CRS.from_epsg(32633)
        assert ds.rio.transform() == NORTH_UP @ Affine.scale(32)
    res = _cli(["-q", "predict", model_file, tif, "-o", out, "--format", "zarr", "--stride", "32"])
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert (out / "scene.zarr").is_dir()
    mtime = (out / "scene.zarr" / "zarr.json").stat().st_mtime_ns
    res = _cli(["predict", model_file, tif, "-o", out, "--format", "zarr", "--stride", "32"])
    assert res.exit_code == 0
    assert "1 skipped" in res.output  # type: ignore[attr-defined]
    assert (out / "scene.zarr" / "zarr.json").stat().st_mtime_ns == mtime


def test_cli_extras_of_a_netcdf_input_come_from_its_netcdf_map(
    tmp_path: Path, make_raster: MakeRaster, model_file: Path
) -> None:
    nc = _netcdf_input(tmp_path / "in" / "cube.nc", make_raster)
    out = tmp_path / "out"
    extras = ["--qml", "--quicklook", "--vector", "gpkg"]
    res = _cli(["-q", "predict", model_file, nc, "-o", out, *extras, "--stride", "32"])
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in out.iterdir()) == ["cube.gpkg", "cube.nc", "cube.png", "cube.qml"]


def test_cli_extras_come_from_a_zarr_map(
    tmp_path: Path, make_raster: MakeRaster, model_file: Path
) -> None:
    tif = make_raster(tmp_path / "in", "scene.tif", height=64, width=64)
    out = tmp_path / "out"
    args = ["predict", model_file, tif, "-o", out, "--format", "zarr", "--stride", "32"]
    res = _cli(["-q", *args, "--qml", "--quicklook", "--vector", "gpkg"])
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["scene.gpkg", "scene.png", "scene.qml", "scene.zarr"]
    res = _cli([*args, "--qml"])  # all there: skipped, nothing made again
    assert res.exit_code == 0 and "1 skipped" in res.output  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the registry


def test_every_input_suffix_has_a_reader_and_a_writable_default_output(tmp_path: Path) -> None:
    from georaster_cnn.io.formats import (
        INPUT_SUFFIXES,
        NETCDF_SUFFIXES,
        OUTPUT_FORMATS,
        default_output_format,
        input_family,
        output_format_for_path,
        output_path,
    )

    for suffix, spec in INPUT_SUFFIXES.items():
        src = tmp_path / f"scene{suffix}"
        if spec.family == "zarr":
            src.mkdir(exist_ok=True)
        out, fmt = output_path(src, tmp_path / "out")
        assert fmt == default_output_format(src) == spec.default_output
        assert input_family(src) == spec.family
        # the default output's name implies its own format back (writer and planner agree)
        assert out.name == "scene" + OUTPUT_FORMATS[fmt].suffix
        assert OUTPUT_FORMATS[output_format_for_path(out)].family == OUTPUT_FORMATS[fmt].family
        expected = "netcdf" if suffix in NETCDF_SUFFIXES else "cog"
        assert fmt == expected, suffix


def test_unknown_suffix_is_read_by_gdal_and_mapped_to_cog(tmp_path: Path) -> None:
    from georaster_cnn.io.formats import default_output_format, input_family, output_path

    assert input_family(tmp_path / "scene.dem") == "gdal"
    assert default_output_format(tmp_path / "scene.dem") == "cog"
    assert output_path("a/scene.nc", "o", "zarr") == (Path("o/scene.zarr"), "zarr")
    with pytest.raises(InputError, match="unknown output format"):
        output_path("a/scene.nc", "o", "png")


def test_zarr_store_without_suffix_is_a_zarr_input(tmp_path: Path) -> None:
    from georaster_cnn.io.formats import input_family, is_zarr_store

    store = tmp_path / "store"
    store.mkdir()
    assert not is_zarr_store(store)
    (store / "zarr.json").write_text("{}")
    assert is_zarr_store(store) and input_family(store) == "zarr"


def test_the_cli_guide_table_is_the_registry() -> None:
    """docs/cli.md's table of inputs lists exactly the registry's suffixes, by family."""
    from georaster_cnn.io.formats import INPUT_SUFFIXES, OUTPUT_FORMATS

    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.lstrip().startswith("| `.")]
    documented: dict[str, str] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        for quoted in re.findall(r"`([^`]*)`", cells[0]):
            for suffix in quoted.split():
                documented[suffix] = cells[2]
    gdal_or_nc = {s: f for s, f in INPUT_SUFFIXES.items() if f.family != "zarr"}
    assert set(documented) == set(gdal_or_nc)
    for suffix, spec in gdal_or_nc.items():
        assert OUTPUT_FORMATS[spec.default_output].suffix in documented[suffix], suffix
