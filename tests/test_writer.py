"""write: a valid COG with exact georeferencing, colours and names, written atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from geo import NORTH_UP, ROTATED
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_validate

from georaster_cnn import (
    GeoModel,
    OutputExistsError,
    ReadError,
    open_raster,
    predict,
    write_prediction,
)

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]

CLASSES = ("water", "forest", "urban")


@pytest.fixture
def prediction(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> tuple[xr.Dataset, GeoModel]:
    path = make_raster(
        tmp_path / "in", "scene.tif", height=150, width=130, count=2, nan_holes=True,
        transform=NORTH_UP,
    )  # fmt: skip
    model = make_model(2, CLASSES)
    return predict(open_raster(path), model, stride=8), model


def _assert_valid_cog(path: Path) -> None:
    is_valid, errors, _warnings = cog_validate(str(path), quiet=True)
    assert errors == []
    assert is_valid


def _folder(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("probabilities", [False, True])
def test_cog_contents(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], probabilities: bool
) -> None:
    pred, model = prediction
    out = tmp_path / "out" / "map.tif"
    assert write_prediction(pred, out, probabilities=probabilities) == out
    _assert_valid_cog(out)
    # Only the COG and its PAM sidecar: no temporary or staging file left behind.
    assert _folder(out.parent) == ["map.tif", "map.tif.aux.xml"]
    ref = pred.compute()
    with rasterio.open(out) as src:
        assert src.count == 1 + (len(CLASSES) if probabilities else 0)
        assert set(src.dtypes) == {"uint8"}
        assert src.nodata == 255
        assert (src.height, src.width) == ref["class"].shape == (19, 17)
        assert src.transform == NORTH_UP @ Affine.scale(8)
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)
        cls = src.read(1)
        np.testing.assert_array_equal(cls, ref["class"].values)
        assert (cls == 255).any() and (cls != 255).any()
        cmap = src.colormap(1)
        for i, c in enumerate(model.class_colors):
            assert cmap[i] == (*c, 255)
        # One entry per class, not a 256-entry TIFF palette (QGIS lists every entry
        # in its legend); nodata is transparent through the nodata value.
        assert sorted(cmap) == list(range(len(CLASSES)))
        assert src.colorinterp[0] == ColorInterp.palette
        assert json.loads(src.tags()["CLASS_NAMES"]) == list(CLASSES)
        assert json.loads(src.tags(1)["CLASS_NAMES"]) == list(CLASSES)
        assert [src.tags()[f"CLASS_{i}"] for i in range(3)] == list(CLASSES)
        assert src.tags()["MODEL_CHECKSUM"] == model.checksum
        assert src.tags()["STRIDE"] == "8"
        assert src.descriptions[0] == "class"
        if probabilities:
            assert src.scales == (1.0, 0.01, 0.01, 0.01)
            assert src.descriptions[1:] == tuple(f"probability_{c}" for c in CLASSES)
            pct = src.read([2, 3, 4])
            prob = ref["probability"].values
            nod = np.isnan(prob)
            np.testing.assert_array_equal(pct == 255, nod)
            np.testing.assert_array_equal(pct[~nod], np.rint(prob[~nod] * 100).astype(np.uint8))
            assert pct[~nod].max() <= 100
            # Percentages of a cell add up to ~100.
            sums = pct.astype(int).sum(axis=0)[cls != 255]
            assert np.all(np.abs(sums - 100) <= 2)
    sidecar = (out.parent / "map.tif.aux.xml").read_text()
    assert "<CategoryNames>" in sidecar and "forest" in sidecar


def test_no_crs(tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel) -> None:
    path = make_raster(tmp_path, "nocrs.tif", height=40, width=40, crs=None, transform=NORTH_UP)
    pred = predict(open_raster(path), make_model(1), stride=16)
    out = write_prediction(pred, tmp_path / "o.tif")
    _assert_valid_cog(out)
    with rasterio.open(out) as src:
        assert src.crs is None
        assert src.transform == NORTH_UP @ Affine.scale(16)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_probability_bands_are_not_colours(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel, n_classes: int
) -> None:
    """3-4 uint8 bands default to RGB(A) in GTiff: a probability band must never be alpha."""
    path = make_raster(tmp_path, "in.tif", height=40, width=40)
    names = tuple("abcd"[:n_classes])
    pred = predict(open_raster(path), make_model(1, names, arch="cnn"), stride=16)
    out = write_prediction(pred, tmp_path / "o.tif", probabilities=True)
    with rasterio.open(out) as src:
        interp = [c.name for c in src.colorinterp]
    assert interp == ["palette"] + ["undefined"] * n_classes


def test_rotated_transform_is_written_exactly(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    path = make_raster(tmp_path, "rot.tif", height=60, width=45, transform=ROTATED)
    pred = predict(open_raster(path), make_model(1), stride=16)
    out = write_prediction(pred, tmp_path / "o.tif")
    with rasterio.open(out) as src:
        assert src.transform.almost_equals(ROTATED @ Affine.scale(16), precision=1e-6)
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)


def test_overviews_use_nearest(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    """A big enough map gets overviews; nearest resampling never invents a class.

    The three-class stand-in only ever outputs classes 0 and 2 (and 255), so any
    overview pixel of class 1 would betray averaging or cubic resampling.
    """
    values = np.random.default_rng(0).standard_normal((1100, 1030)).astype("float32")
    path = make_raster(tmp_path, "big.tif", height=1100, width=1030, values=values, blocksize=512)
    pred = predict(
        open_raster(path), make_model(1, ("lo", "mid", "hi"), patch_size=1), stride=1,
        block_cells=550, batch_size=1 << 17,
    )  # fmt: skip
    out = write_prediction(pred, tmp_path / "o.tif")
    _assert_valid_cog(out)
    with rasterio.open(out) as src:
        assert src.overviews(1)
        full = src.read(1)
        assert set(np.unique(full)) == {0, 2}
        for f in src.overviews(1):
            ov = src.read(1, out_shape=(src.height // f, src.width // f))
            assert set(np.unique(ov)) <= {0, 2}


@pytest.mark.parametrize(
    ("height", "width", "factors"), [(5, 4, [2]), (100, 70, [2]), (300, 90, [2, 4, 8])]
)
def test_small_maps_get_overviews(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    height: int,
    width: int,
    factors: list[int],
) -> None:
    """Maps smaller than a 512-px block still get overviews, down to <= 64 px."""
    path = make_raster(tmp_path, "in.tif", height=height, width=width)
    pred = predict(open_raster(path), make_model(1, patch_size=1), stride=1)
    out = write_prediction(pred, tmp_path / "o.tif")
    _assert_valid_cog(out)
    with rasterio.open(out) as src:
        assert src.overviews(1) == factors


def test_refuses_to_overwrite(tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel]) -> None:
    pred, _ = prediction
    out = tmp_path / "o.tif"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="overwrite") as info:
        write_prediction(pred, out)
    assert isinstance(info.value, FileExistsError)
    assert out.read_bytes() == b"precious"
    assert _folder(tmp_path) == ["in", "o.tif"]


def test_overwrite_replaces(
    tmp_path: Path,
    prediction: tuple[xr.Dataset, GeoModel],
    make_raster: MakeRaster,
    make_model: MakeModel,
) -> None:
    pred, _ = prediction
    out = tmp_path / "o.tif"
    write_prediction(pred, out, probabilities=True)
    other_path = make_raster(tmp_path / "in", "other.tif", height=30, width=20)
    other = predict(open_raster(other_path), make_model(1, ("a", "b")), stride=4)
    write_prediction(other, out, overwrite=True)
    _assert_valid_cog(out)
    with rasterio.open(out) as src:
        assert src.count == 1 and (src.height, src.width) == (8, 5)
        assert json.loads(src.tags()["CLASS_NAMES"]) == ["a", "b"]
    assert '"a", "b"' in (tmp_path / "o.tif.aux.xml").read_text().replace("&quot;", '"')
    assert _folder(tmp_path) == ["in", "o.tif", "o.tif.aux.xml"]


def test_failure_during_compute_leaves_nothing(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    path = make_raster(
        tmp_path / "in", "trunc.tif", height=256, width=256, count=1, blocksize=64,
        compress="deflate",
    )  # fmt: skip
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    pred = predict(open_raster(path, chunks=64), make_model(1), stride=32, check=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ReadError, match=r"trunc\.tif"):
        write_prediction(pred, out_dir / "o.tif", probabilities=True)
    assert _folder(out_dir) == []


def test_failure_keeps_existing_output(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With overwrite=True, a failed write leaves the previous file untouched."""
    pred, _ = prediction
    out = tmp_path / "out" / "o.tif"
    write_prediction(pred, out)
    before = out.read_bytes()

    def broken_copy(*args: object, **kwargs: object) -> None:
        raise rasterio.errors.RasterioIOError("simulated failure in the COG copy")

    monkeypatch.setattr(rasterio.shutil, "copy", broken_copy)
    with pytest.raises(rasterio.errors.RasterioIOError, match="simulated"):
        write_prediction(pred, out, overwrite=True)
    assert out.read_bytes() == before
    assert _folder(out.parent) == ["o.tif", "o.tif.aux.xml"]


def test_interrupt_leaves_nothing(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    from georaster_cnn.io.reader import _WindowReader

    pred, _ = prediction

    def interrupted(self: object, key: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_WindowReader, "__getitem__", interrupted)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        write_prediction(pred, out_dir / "o.tif")
    assert _folder(out_dir) == []


@pytest.mark.parametrize("nodata_only", [False, True])
def test_one_cell_map(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel, nodata_only: bool
) -> None:
    values = np.full((10, 7), np.nan if nodata_only else 100.0, dtype="float32")
    path = make_raster(tmp_path, "tiny.tif", height=10, width=7, values=values, transform=NORTH_UP)
    pred = predict(open_raster(path), make_model(1), stride=64, min_valid=0.01, check=False)
    out = write_prediction(pred, tmp_path / "o.tif", probabilities=True)
    _assert_valid_cog(out)
    with rasterio.open(out) as src:
        assert (src.height, src.width) == (1, 1)
        assert src.transform == NORTH_UP @ Affine.scale(64)
        px = src.read()[:, 0, 0].tolist()
    # 70 valid pixels of 100 in a 64 x 64 window: mean 7000/4096, P(class 1) = sigmoid(mean).
    assert px == ([255, 255, 255] if nodata_only else [1, 15, 85])


@pytest.mark.parametrize("probabilities", [False, True])
def test_write_computed_prediction(
    tmp_path: Path, prediction: tuple[xr.Dataset, GeoModel], probabilities: bool
) -> None:
    pred, _ = prediction
    eager = pred.compute()
    out = write_prediction(eager, tmp_path / "o.tif", probabilities=probabilities)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), eager["class"].values)
