"""write_qml / write_quicklook and ``predict --qml --quicklook``."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner, Result
from georaster_cnn_cli.main import cli
from PIL import Image

import georaster_cnn as gc
from georaster_cnn.products.styles import _preview_shape

ENV: dict[str, str | None] = {"COLUMNS": "250", "NO_COLOR": "1", "FORCE_COLOR": None}
NAMES = ["low", "high"]
COLORS = [[0, 114, 178], [230, 159, 0]]


def run(args: Sequence[str | Path]) -> Result:
    return CliRunner(env=ENV).invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def class_map(
    tmp_path: Path, make_model: Callable[..., Any], make_raster: Callable[..., Path]
) -> Path:
    """A real prediction GeoTIFF (both classes and some nodata) from the stand-in model."""
    model = make_model(1)
    model.class_names = tuple(NAMES)
    model.class_colors = tuple(tuple(c) for c in COLORS)
    scene = make_raster(tmp_path, "in/scene.tif", height=96, width=80, seed=3)
    pred = gc.predict(gc.open_raster(scene), model, stride=8, device="cpu")
    return gc.write_prediction(pred, tmp_path / "maps" / "scene.tif", probabilities=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "partial" in p.name)


# --------------------------------------------------------------------------- QGIS style


def test_qml_palette_matches_the_class_map(class_map: Path) -> None:
    out = gc.write_qml(class_map)
    assert out == class_map.with_suffix(".qml")
    root = ET.parse(out).getroot()
    assert root.tag == "qgis" and root.get("styleCategories") == "AllStyleCategories"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None
    assert (renderer.get("type"), renderer.get("band")) == ("paletted", "1")
    entries = renderer.findall("colorPalette/paletteEntry")
    with rasterio.open(class_map) as src:
        names = json.loads(src.tags()["CLASS_NAMES"])
        colors = json.loads(src.tags()["CLASS_COLORS"])
    assert names == NAMES and colors == COLORS
    assert [e.get("value") for e in entries] == ["0", "1"]
    assert [e.get("label") for e in entries] == names
    assert [e.get("color") for e in entries] == ["#0072b2", "#e69f00"]
    assert {e.get("alpha") for e in entries} == {"255"}
    # nodata has no entry: the paletted renderer leaves it transparent
    assert "255" not in {e.get("value") for e in entries}
    assert root.find("pipe/rasterresampler") is not None
    assert root.findtext("blendMode") == "0"


def test_qml_escapes_names_and_refuses_overwrite(
    tmp_path: Path, make_model: Callable[..., Any], make_raster: Callable[..., Path]
) -> None:
    odd = ('a "b" & <c>', "d'e")
    scene = make_raster(tmp_path, "scene.tif", height=32, width=32, seed=5)
    pred = gc.predict(gc.open_raster(scene), make_model(1, odd), stride=16, device="cpu")
    class_map = gc.write_prediction(pred, tmp_path / "maps" / "odd.tif")
    out = gc.write_qml(class_map)
    labels = [e.get("label") for e in ET.parse(out).getroot().iter("paletteEntry")]
    assert labels == list(odd)

    before = out.read_bytes()
    with pytest.raises(gc.OutputExistsError, match="overwrite"):
        gc.write_qml(class_map)
    assert out.read_bytes() == before
    out.write_text("stale")
    gc.write_qml(class_map, overwrite=True)
    ET.parse(out)
    assert leftovers(out.parent) == []


def test_not_a_class_map(tmp_path: Path, make_raster: Callable[..., Path]) -> None:
    scene = make_raster(tmp_path, "scene.tif", height=16, width=16, dtype="float32")
    with pytest.raises(gc.InputError, match="not a class map"):
        gc.write_qml(scene)
    with pytest.raises(gc.InputError, match="not a class map"):
        gc.write_quicklook(scene)
    with pytest.raises(gc.ReadError):
        gc.write_qml(tmp_path / "missing.tif")
    assert not scene.with_suffix(".qml").exists() and not scene.with_suffix(".png").exists()


# --------------------------------------------------------------------------- quicklook


def test_preview_shape() -> None:
    assert _preview_shape(40, 50, 1024) == (40, 50)
    assert _preview_shape(3000, 1000, 1000) == (1000, 333)
    assert _preview_shape(10, 5000, 100) == (1, 100)  # never 0 rows


def test_quicklook_shows_classes_in_their_colours(class_map: Path) -> None:
    out = gc.write_quicklook(class_map)
    assert out == class_map.with_suffix(".png")
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    rgb = {tuple(p) for p in np.rint(img[..., :3] * 255).astype(int).reshape(-1, 3)}
    for c in COLORS:
        assert tuple(c) in rgb
    assert 100 < img.shape[0] < 1024 and 100 < img.shape[1] < 1024
    assert leftovers(out.parent) == []


def test_quicklook_decimates_large_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import georaster_cnn.products.styles as styles

    cls = np.zeros((600, 1500), dtype=np.uint8)
    cls[:, 750:] = 1
    cls[:100, :100] = 255
    path = tmp_path / "big.tif"
    profile = {"driver": "GTiff", "height": 600, "width": 1500, "count": 1, "dtype": "uint8"}
    utm = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_600_000.0)
    with rasterio.open(path, "w", nodata=255, crs="EPSG:32633", transform=utm, **profile) as dst:
        dst.write(cls, 1)
        dst.update_tags(CLASS_NAMES=json.dumps(NAMES), CLASS_COLORS=json.dumps(COLORS))
        dst.update_tags(STRIDE="16", MODEL_ARCH="simple_cnn")

    shown: list[tuple[int, int]] = []
    plot = styles._plot

    def spy(f: Any, classes: np.ndarray, *args: Any) -> None:
        shown.append(classes.shape)
        plot(f, classes, *args)

    monkeypatch.setattr(styles, "_plot", spy)
    png = tmp_path / "previews" / "big-preview.png"
    assert gc.write_quicklook(path, png, max_size=300) == png
    assert shown == [(120, 300)]
    img = matplotlib.image.imread(png)
    # map area (300 px wide) + legend ("no data (transparent)" is its longest label)
    assert 300 <= img.shape[1] < 540 and 120 <= img.shape[0] < 320

    with pytest.raises(gc.OutputExistsError):
        gc.write_quicklook(path, png, max_size=300)
    with pytest.raises(gc.InputError, match="max_size"):
        gc.write_quicklook(path, png, max_size=0, overwrite=True)
    gc.write_quicklook(path, png, max_size=200, overwrite=True)
    assert shown[-1] == (80, 200)
    assert leftovers(png.parent) == []


# --------------------------------------------------------------------------- CLI


def test_cli_predict_qml_and_quicklook(
    tmp_path: Path,
    make_model: Callable[..., Any],
    make_raster: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = gc.save_model(make_model(1), tmp_path / "model.safetensors")
    scene = make_raster(tmp_path, "in/scene.tif", height=64, width=48, seed=4)
    outdir = tmp_path / "maps"
    args = ["predict", model, scene, "-o", outdir, "--stride", "16", "--device", "cpu"]
    qml, png = outdir / "scene.qml", outdir / "scene.png"

    result = run([*args, "--qml", "--quicklook"])
    assert result.exit_code == 0, result.output
    assert "1 written, 0 skipped, 0 failed" in result.stdout
    assert "+ scene.qml" in result.stdout and "+ scene.png" in result.stdout
    assert len(ET.parse(qml).getroot().findall(".//paletteEntry")) == 2
    assert matplotlib.image.imread(png).ndim == 3
    png_before = png.stat().st_mtime_ns

    again = run([*args, "--qml", "--quicklook"])
    assert again.exit_code == 0, again.output
    assert "0 written, 1 skipped" in again.stdout
    assert png.stat().st_mtime_ns == png_before

    # A missing extra is made from the existing class map; the others stay.
    qml.unlink()
    remade = run([*args, "--qml", "--quicklook"])
    assert remade.exit_code == 0, remade.output
    assert "1 written, 0 skipped" in remade.stdout and qml.is_file()
    assert png.stat().st_mtime_ns == png_before

    # --overwrite replaces all of them.
    qml.write_text("stale")
    replaced = run([*args, "--qml", "--quicklook", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    ET.parse(qml)

    # An extra that cannot be written fails the tile; the class map and the other extra stay.
    def no_room(*args: Any, **kwargs: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gc, "write_quicklook", no_room)
    qml.unlink()
    failed = run([*args, "--qml", "--quicklook", "--overwrite"])
    assert failed.exit_code == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "quicklook" in errors[0]
    assert (outdir / "scene.tif").is_file() and qml.is_file()
    assert leftovers(outdir) == []


def _hand_made_class_map(path: Path, classes: np.ndarray, transform: Affine) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = classes.shape
    with rasterio.open(
        path, "w", driver="GTiff", height=h, width=w, count=1, dtype="uint8", nodata=255,
        crs="EPSG:32633", transform=transform,
    ) as dst:  # fmt: skip
        dst.write(classes, 1)
        dst.update_tags(CLASS_NAMES=json.dumps(NAMES), CLASS_COLORS=json.dumps(COLORS))
    return path


def test_quicklook_puts_north_up_whatever_the_row_order(tmp_path: Path) -> None:
    """The same ground, stored north-up and south-up, gives the same picture."""
    ground = np.zeros((40, 30), dtype=np.uint8)
    ground[:10] = 1  # the northern quarter is "high"
    ground[:, :5] = 255  # a nodata strip in the west
    north_up = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_600_000.0)
    south_up = Affine(30.0, 0.0, 500_000.0, 0.0, 30.0, 4_600_000.0 - 40 * 30.0)
    a = _hand_made_class_map(tmp_path / "a" / "map.tif", ground, north_up)
    b = _hand_made_class_map(tmp_path / "b" / "map.tif", ground[::-1].copy(), south_up)
    with rasterio.open(a) as sa, rasterio.open(b) as sb:  # GDAL agrees they are the same ground
        ya, yb = sorted(sa.bounds[1::2]), sorted(sb.bounds[1::2])
        assert (sa.bounds.left, sa.bounds.right, ya) == (sb.bounds.left, sb.bounds.right, yb)
    img_a = matplotlib.image.imread(gc.write_quicklook(a))
    img_b = matplotlib.image.imread(gc.write_quicklook(b))
    np.testing.assert_array_equal(img_a, img_b)
    # and the top of the map area is the northern class, in its colour
    top = np.rint(img_a[60, 100, :3] * 255).astype(int).tolist()
    assert top == COLORS[1]


def test_quicklook_nodata_is_transparent_not_grey(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodata is alpha 0 in an RGBA PNG; a grey class stays opaque grey; the legend says so."""
    from matplotlib.figure import Figure

    grey = [128, 128, 128]
    ground = np.zeros((40, 30), dtype=np.uint8)  # class 0, grey
    ground[:10] = 1
    ground[:, :5] = 255  # nodata strip in the west
    ground[30:, 20:] = 255  # and a nodata corner
    path = tmp_path / "grey.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=40, width=30, count=1, dtype="uint8", nodata=255,
        crs="EPSG:32633", transform=Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_600_000.0),
    ) as dst:  # fmt: skip
        dst.write(ground, 1)
        dst.update_tags(
            CLASS_NAMES=json.dumps(["rock", "sand"]), CLASS_COLORS=json.dumps([grey, COLORS[1]])
        )

    labels: list[str] = []
    savefig = Figure.savefig

    def spy(fig: Figure, *args: Any, **kwargs: Any) -> None:
        labels.extend(t.get_text() for legend in fig.legends for t in legend.get_texts())
        savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    png = gc.write_quicklook(path)
    assert labels == ["rock", "sand", "no data (transparent)"]
    with Image.open(png) as im:
        assert im.mode == "RGBA"
    img = np.rint(matplotlib.image.imread(png) * 255).astype(int)
    alpha = img[..., 3]
    assert set(np.unique(alpha)) == {0, 255}  # nothing half transparent
    # exactly the nodata cells are transparent: 40*5 + 10*10 cells, each zoom x zoom pixels
    zoom = 256 // 40
    assert (alpha == 0).sum() == (40 * 5 + 10 * 10) * zoom**2
    ys, xs = np.nonzero(alpha == 0)
    top, left = ys.min(), xs.min()  # the nodata strip starts at the map's top-left corner
    assert (ys.max() - top + 1, xs.max() - left + 1) == (40 * zoom, 30 * zoom)
    # the grey class is opaque grey, the title area opaque white
    rock = img[top + 20 * zoom, left + 10 * zoom]
    assert rock.tolist() == [*grey, 255]
    assert img[2, 2].tolist() == [255, 255, 255, 255]
    # a legend without nodata has no nodata entry
    labels.clear()
    ground[ground == 255] = 0
    with rasterio.open(path, "r+") as dst:
        dst.write(ground, 1)
    gc.write_quicklook(path, overwrite=True)
    assert labels == ["rock", "sand"]
