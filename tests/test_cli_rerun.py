"""A rerun keeps an existing class map only when it is the map these options make.

Issue 17, item 4: a stride-64 map was kept ("skipped", exit 0) when --stride 8 was
asked. Now the map's recorded model digest and options are compared; a difference
fails the tile with a message naming it and --overwrite.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner
from georaster_cnn_cli.main import cli

ROOT = Path(__file__).resolve().parents[1] / "sample_data"
MODEL = ROOT / "model.safetensors"


def _run(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample scene predicted at stride 64 into a folder of its own."""
    out = tmp_path_factory.mktemp("maps")
    result = _run("predict", MODEL, ROOT / "scene.tif", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return out


def _copy(first: Path, tmp_path: Path) -> Path:
    out = tmp_path / "maps"
    shutil.copytree(first, out)
    return out


def test_the_same_options_skip(first: Path, tmp_path: Path) -> None:
    out = _copy(first, tmp_path)
    result = _run("predict", MODEL, ROOT / "scene.tif", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "0 written, 1 skipped, 0 failed" in result.stdout  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "differs"),
    [
        (["--stride", "8"], "stride 64, asked 8"),
        (["--min-valid", "0.9"], "min_valid 0.5, asked 0.9"),
        (["--probabilities"], "without probabilities, asked with"),
        (["--bands", "1,2,3"], None),  # the same bands by index: the same map
        (["--bands", "3,2,1"], "bands"),
    ],
)
def test_other_options_refuse_the_existing_map(
    first: Path, tmp_path: Path, options: list[str], differs: str | None
) -> None:
    out = _copy(first, tmp_path)
    before = (out / "scene.tif").read_bytes()
    args = ["predict", MODEL, ROOT / "scene.tif", "-o", out, "--device", "cpu", *options]
    result = _run(*args)
    if differs is None:
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        return
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert differs in err and "--overwrite replaces it" in err
    assert (out / "scene.tif").read_bytes() == before  # untouched
    again = _run(*args, "--overwrite")
    assert again.exit_code == 0, again.output  # type: ignore[attr-defined]
    with rasterio.open(out / "scene.tif") as src:
        stride = 8 if "8" in options else 64
        assert src.tags()["STRIDE"] == str(stride)


def test_another_model_or_a_foreign_file_is_refused(first: Path, tmp_path: Path) -> None:
    out = _copy(first, tmp_path)
    with rasterio.open(
        out / "scene.tif", "r+", IGNORE_COG_LAYOUT_BREAK="YES"
    ) as dst:  # another model
        dst.update_tags(MODEL_CHECKSUM="0123456789abcdef")
    result = _run("predict", MODEL, ROOT / "scene.tif", "-o", out, "--device", "cpu")
    assert result.exit_code == 1
    assert "model 0123456789abcdef, asked" in result.stderr  # type: ignore[attr-defined]
    (out / "scene.tif").unlink()
    (out / "scene.tif").write_text("not a raster")
    result = _run("predict", MODEL, ROOT / "scene.tif", "-o", out, "--device", "cpu")
    assert result.exit_code == 1
    assert "not a class map" in result.stderr  # type: ignore[attr-defined]
    assert (out / "scene.tif").read_text() == "not a raster"


@pytest.mark.parametrize("command", [["predict"], ["evaluate"], ["info"]])
def test_data_where_the_model_goes_asks_whether_they_were_swapped(
    tmp_path: Path, command: list[str]
) -> None:
    args = [*command, ROOT / "scene.tif"]
    if command != ["info"]:
        args += [MODEL, "-o", tmp_path / "out"]
    if command == ["evaluate"]:
        args += ["--labels", ROOT / "labels.tif"]
    result = _run(*args)
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert "did you swap MODEL and INPUT?" in result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_probabilities_get_their_qgis_style_by_default(tmp_path: Path) -> None:
    base = ["predict", MODEL, ROOT / "scene.tif", "--device", "cpu", "--probabilities"]
    result = _run(*base, "-o", tmp_path / "a")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert (tmp_path / "a" / "scene.qml").is_file()  # else QGIS draws bands 1-3 as RGB
    assert "paletted" in (tmp_path / "a" / "scene.qml").read_text()
    result = _run(*base, "-o", tmp_path / "b", "--no-qml")
    assert result.exit_code == 0 and not (tmp_path / "b" / "scene.qml").exists()
    result = _run("predict", MODEL, ROOT / "scene.tif", "--device", "cpu", "-o", tmp_path / "c")
    assert result.exit_code == 0 and not (tmp_path / "c" / "scene.qml").exists()


def test_the_summary_never_wraps_a_path(tmp_path: Path) -> None:
    deep = tmp_path / ("a-long-folder-name-" * 4) / "more" / "scene_with_a_long_name.tif"
    deep.parent.mkdir(parents=True)
    shutil.copy(ROOT / "scene.tif", deep)
    out = tmp_path / ("outputs-" * 6)
    result = _run("predict", MODEL, deep, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    lines = result.stdout.splitlines()  # type: ignore[attr-defined]
    assert any(str(deep) in line and "scene_with_a_long_name.tif" in line for line in lines)
    assert any(str(out) in line for line in lines)  # the title names OUTDIR whole
