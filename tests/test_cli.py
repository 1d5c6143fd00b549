"""The ``georaster-cnn`` command line: train -> info -> predict through click's CliRunner.

One tiny model is trained through the CLI once per module (1 epoch, stride 16 on a
100 x 90 raster) and then applied to batches of tiles: good ones, a truncated one,
one with the wrong band count, globs, folders and inputs that match nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner, Result
from georaster_cnn_cli import __version__
from georaster_cnn_cli._common import flag_wording
from georaster_cnn_cli._inputs import TileResult, expand_inputs, plan_outputs
from georaster_cnn_cli._options import BandList
from georaster_cnn_cli.main import cli

import georaster_cnn as gc
from georaster_cnn import load_model
from georaster_cnn.io import formats
from georaster_cnn.io.formats import INPUT_SUFFIXES, OUTPUT_FORMATS

HEIGHT, WIDTH = 100, 90
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
CLASSES = ("water", "forest", "urban")

# Wide, colourless, non-interactive output whatever the environment running the tests says.
ENV: dict[str, str | None] = {
    "COLUMNS": "250",
    "NO_COLOR": "1",
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
}


# --------------------------------------------------------------------------- helpers


def class_map(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Three regions: left (0), right (1), bottom third (2)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.where(yy >= 2 * height // 3, 2, (xx >= width // 2).astype(int)).astype("uint8")


def write_scene(path: Path, *, count: int = 3, seed: int = 0, scale: float = 1.0) -> Path:
    """A ``count``-band float32 scene whose band values follow :func:`class_map`."""
    rng = np.random.default_rng(seed)
    cls = class_map()
    bands = [scale * (cls * 10.0 * (b + 1) + rng.normal(0.0, 1.0, cls.shape)) for b in range(count)]
    profile = {
        "driver": "GTiff",
        "height": HEIGHT,
        "width": WIDTH,
        "count": count,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": TRANSFORM,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.stack(bands).astype("float32"))
    return path


def write_labels(path: Path) -> Path:
    """A 1-band uint8 class-id raster aligned with :func:`write_scene` (255 = unlabelled)."""
    labels = class_map()
    labels[:5, :5] = 255
    profile = {
        "driver": "GTiff",
        "height": HEIGHT,
        "width": WIDTH,
        "count": 1,
        "dtype": "uint8",
        "nodata": 255,
        "crs": "EPSG:32633",
        "transform": TRANSFORM,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels[None])
    return path


def write_truncated(path: Path) -> Path:
    """A valid GeoTIFF cut to half its bytes: it may open, but its blocks cannot be read."""
    write_scene(path, seed=7)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    return path


def run(args: Sequence[str | Path]) -> Result:
    """Invoke the CLI in-process; exceptions that escape the CLI fail the test."""
    runner = CliRunner(env=ENV)
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files a crashed write could leave behind."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(".") or "partial" in p.name or "staging" in p.name
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli_data")
    write_scene(d / "scene.tif", seed=0)
    write_labels(d / "labels.tif")
    return d


@pytest.fixture(scope="module")
def model_path(data_dir: Path) -> Path:
    """A model trained through the CLI: 1 epoch, stride 16 (a few seconds on a CPU)."""
    out = data_dir / "model.safetensors"
    result = run(
        [
            "train", data_dir / "scene.tif", "--labels", data_dir / "labels.tif",
            "-o", out, "--epochs", "1", "--stride", "16", "--device", "cpu",
            "--class-names", ",".join(CLASSES),
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "validation accuracy" in result.stdout
    return out


@pytest.fixture
def tiles(tmp_path: Path) -> list[Path]:
    """Three good 3-band tiles in ``tmp_path/tiles``."""
    return [write_scene(tmp_path / "tiles" / f"tile_{i}.tif", seed=i) for i in range(3)]


def predict_args(model: Path, inputs: Sequence[str | Path], outdir: Path) -> list[str | Path]:
    return [
        "predict", model, *inputs, "-o", outdir, "--stride", "32", "--device", "cpu",
    ]  # fmt: skip


# --------------------------------------------------------------------------- group


def test_help_lists_commands() -> None:
    result = run(["--help"])
    assert result.exit_code == 0
    for command in ("predict", "train", "info"):
        assert command in result.stdout
    assert "Example" in result.stdout


@pytest.mark.parametrize("command", ["predict", "train", "info"])
def test_command_help_has_example(command: str) -> None:
    result = run([command, "--help"])
    assert result.exit_code == 0
    assert "georaster-cnn " + command in result.stdout


def test_version() -> None:
    result = run(["--version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_verbose_and_quiet_conflict(tmp_path: Path) -> None:
    result = run(["-v", "-q", "info", tmp_path / "m.safetensors"])
    assert result.exit_code == 2


def test_console_script_help() -> None:
    exe = Path(sys.executable).parent / "georaster-cnn"
    if not exe.exists():
        found = shutil.which("georaster-cnn")
        if found is None:
            pytest.skip("console script georaster-cnn is not installed")
        exe = Path(found)
    proc = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "predict" in proc.stdout


# --------------------------------------------------------------------------- units


def test_band_list_parses_numbers_and_names() -> None:
    bands = BandList()
    assert bands.convert("1,2,4", None, None) == [1, 2, 4]
    assert bands.convert("red, nir", None, None) == ["red", "nir"]


@pytest.mark.parametrize("value", ["1,,2", "0,1", "1,1"])
def test_band_list_rejects_bad_values(value: str) -> None:
    result = run(["predict", "m.safetensors", "x.tif", "-o", "out", "--bands", value])
    assert result.exit_code == 2
    assert "--bands" in result.stderr


def test_expand_inputs_files_globs_folders(tmp_path: Path) -> None:
    a = write_scene(tmp_path / "in" / "a.tif")
    b = write_scene(tmp_path / "in" / "b.tiff")
    (tmp_path / "in" / "notes.txt").write_text("not a raster")
    (tmp_path / "in" / "sub").mkdir()
    found = expand_inputs(
        [str(tmp_path / "in"), str(tmp_path / "in" / "*.tif"), str(a), str(tmp_path / "none*.tif")]
    )
    assert found.paths == (a, b)  # folder first; the glob and the file add nothing new
    assert [p.message for p in found.problems] == ["pattern matches nothing"]


def test_plan_outputs_names_and_clashes(tmp_path: Path) -> None:
    one = write_scene(tmp_path / "x" / "scene.tif")
    two = write_scene(tmp_path / "y" / "scene.tif")
    nc = tmp_path / "z" / "other.nc"
    nc.parent.mkdir()
    nc.write_bytes(b"")
    plan = plan_outputs(expand_inputs([str(one), str(two), str(nc)]), tmp_path / "out")
    assert not isinstance(plan[0], TileResult)
    assert plan[0].output == tmp_path / "out" / "scene.tif"
    assert isinstance(plan[1], TileResult) and plan[1].status == "failed"
    assert str(one) in plan[1].message
    assert not isinstance(plan[2], TileResult)
    assert plan[2].output == tmp_path / "out" / "other.nc"  # netCDF in, netCDF out
    forced = plan_outputs(expand_inputs([str(nc)]), tmp_path / "out", format="cog")
    assert not isinstance(forced[0], TileResult)
    assert forced[0].output == tmp_path / "out" / "other.tif"


# --------------------------------------------------------------------------- train


def test_train_refuses_to_overwrite(model_path: Path, data_dir: Path) -> None:
    before = model_path.read_bytes()
    result = run(
        ["train", data_dir / "scene.tif", "--labels", data_dir / "labels.tif", "-o", model_path]
    )
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {model_path} exists; pass --overwrite to replace it"]
    assert model_path.read_bytes() == before


def test_train_patience_and_augment_reach_the_model(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = run(
        ["train", data_dir / "scene.tif", "--labels", data_dir / "labels.tif", "-o", out,
         "--epochs", "2", "--stride", "32", "--device", "cpu", "--patience", "0", "--no-augment"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    prov = load_model(out).provenance
    assert prov["augment"] is False
    assert prov["early_stopping"] == {"patience": 0, "stopped_after": None}
    assert len(prov["history"]) == 2


def test_train_label_count_mismatch(data_dir: Path, tmp_path: Path) -> None:
    scene = data_dir / "scene.tif"
    labels = data_dir / "labels.tif"
    result = run(["train", scene, scene, "--labels", labels, "-o", tmp_path / "m.safetensors"])
    assert result.exit_code == 2
    assert "2 INPUTs and 1 --labels" in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_train_unknown_arch(data_dir: Path, tmp_path: Path) -> None:
    result = run(
        ["train", data_dir / "scene.tif", "--labels", data_dir / "labels.tif",
         "-o", tmp_path / "m.safetensors", "--arch", "nope"]
    )  # fmt: skip
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1
    assert "unknown architecture 'nope'" in result.stderr and "cnn" in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_train_missing_input_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    result = run(
        ["train", tmp_path / "nope.tif", "--labels", data_dir / "labels.tif",
         "-o", tmp_path / "m.safetensors", "--device", "cpu"]
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.tif" in lines[0]


# --------------------------------------------------------------------------- info


def test_info_shows_card(model_path: Path) -> None:
    result = run(["info", model_path])
    assert result.exit_code == 0, result.output
    for text in (*CLASSES, "cnn", "band_1", "checksum", "scene.tif"):
        assert text in result.stdout


def test_info_json(model_path: Path) -> None:
    result = run(["info", model_path, "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["classes"] == list(CLASSES)
    assert len(card["bands"]) == 3
    assert isinstance(card["checksum"], str)


def test_info_missing_model(tmp_path: Path) -> None:
    result = run(["info", tmp_path / "missing.safetensors"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- predict


def test_predict_writes_skips_and_overwrites(
    model_path: Path, tiles: list[Path], tmp_path: Path
) -> None:
    outdir = tmp_path / "out" / "nested"  # created on demand
    result = run(predict_args(model_path, [str(t) for t in tiles], outdir))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in outdir.glob("*.tif")) == [t.name for t in tiles]
    assert "3 written, 0 skipped, 0 failed" in result.stdout
    with rasterio.open(outdir / "tile_0.tif") as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == TRANSFORM @ Affine.scale(32)
        assert (src.height, src.width) == (4, 3)
        assert src.dtypes[0] == "uint8"

    again = run(predict_args(model_path, [str(t) for t in tiles], outdir))
    assert again.exit_code == 0, again.output
    assert "0 written, 3 skipped, 0 failed" in again.stdout

    stamp = (outdir / "tile_0.tif").stat().st_mtime_ns
    (outdir / "tile_0.tif").write_bytes(b"stale")
    forced = run([*predict_args(model_path, [str(tiles[0])], outdir), "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert "1 written" in forced.stdout
    with rasterio.open(outdir / "tile_0.tif") as src:  # a real raster again
        assert src.count == 1
    assert (outdir / "tile_0.tif").stat().st_mtime_ns >= stamp


def test_predict_batch_with_bad_tiles(model_path: Path, tiles: list[Path], tmp_path: Path) -> None:
    truncated = write_truncated(tmp_path / "tiles" / "truncated.tif")
    two_band = write_scene(tmp_path / "tiles" / "two_band.tif", count=2)
    outdir = tmp_path / "out"
    inputs = [tiles[0], truncated, tiles[1], two_band, tiles[2]]
    result = run(predict_args(model_path, [str(p) for p in inputs], outdir))

    assert result.exit_code == 1, result.output
    errors = error_lines(result)
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith(f"error: {truncated}: ")
    assert errors[1].startswith(f"error: {two_band}: ")
    assert "3 band" in errors[1] and "has 2" in errors[1]
    assert "--bands" in errors[1] and "bands=" not in errors[1]  # the CLI's words
    assert sorted(p.name for p in outdir.glob("*.tif")) == [t.name for t in tiles]
    assert leftovers(outdir) == []
    assert "3 written, 0 skipped, 2 failed" in result.stdout
    assert "Traceback" not in result.output


def test_predict_verbose_shows_traceback(model_path: Path, tmp_path: Path) -> None:
    truncated = write_truncated(tmp_path / "truncated.tif")
    result = run(["-v", *predict_args(model_path, [str(truncated)], tmp_path / "out")])
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1
    assert "Traceback" in result.stderr


def test_predict_glob_and_folder_inputs(
    model_path: Path, tiles: list[Path], tmp_path: Path
) -> None:
    folder = tiles[0].parent
    extra = write_scene(tmp_path / "more" / "extra.tiff", seed=9)
    pattern = str(tmp_path / "more" / "*.tif*")  # quoted: the CLI expands it
    outdir = tmp_path / "out"
    result = run(predict_args(model_path, [str(folder), pattern, str(tiles[0])], outdir))
    assert result.exit_code == 0, result.output
    expected = sorted([*(t.stem for t in tiles), extra.stem])
    assert sorted(p.stem for p in outdir.glob("*.tif")) == expected
    assert "4 written" in result.stdout  # tiles[0] reached twice, predicted once


def test_predict_unmatched_input_is_a_failure_line(
    model_path: Path, tiles: list[Path], tmp_path: Path
) -> None:
    outdir = tmp_path / "out"
    missing = str(tmp_path / "nothing_here_*.tif")
    result = run(predict_args(model_path, [missing, str(tiles[0])], outdir))
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: {missing}: pattern matches nothing"]
    assert (outdir / "tile_0.tif").is_file()


def test_predict_output_name_clash(model_path: Path, tmp_path: Path) -> None:
    first = write_scene(tmp_path / "a" / "scene.tif")
    second = write_scene(tmp_path / "b" / "scene.tif")
    result = run(predict_args(model_path, [str(first), str(second)], tmp_path / "out"))
    assert result.exit_code == 1
    errors = error_lines(result)
    assert len(errors) == 1 and errors[0].startswith(f"error: {second}: ")
    assert (tmp_path / "out" / "scene.tif").is_file()


def test_predict_missing_model(tiles: list[Path], tmp_path: Path) -> None:
    result = run(predict_args(tmp_path / "missing.safetensors", [str(tiles[0])], tmp_path / "out"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load model")
    assert not (tmp_path / "out").exists()


def test_predict_corrupt_model(tiles: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = run(predict_args(bad, [str(tiles[0])], tmp_path / "out"))
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1


def test_predict_quiet(model_path: Path, tiles: list[Path], tmp_path: Path) -> None:
    result = run(["-q", *predict_args(model_path, [str(tiles[0])], tmp_path / "out")])
    assert result.exit_code == 0
    assert result.output == ""


def test_predict_bands_and_probabilities(model_path: Path, tmp_path: Path) -> None:
    four = write_scene(tmp_path / "four.tif", count=4)
    outdir = tmp_path / "out"
    result = run(
        [*predict_args(model_path, [str(four)], outdir), "--bands", "1,2,3", "--probabilities"]
    )
    assert result.exit_code == 0, result.output
    with rasterio.open(outdir / "four.tif") as src:
        assert src.count == 1 + len(CLASSES)


def test_predict_unavailable_device_stops_once(
    model_path: Path, tiles: list[Path], tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    result = run(
        ["predict", model_path, *map(str, tiles), "-o", tmp_path / "out", "--device", "cuda"]
    )
    assert result.exit_code == 2
    assert error_lines(result) == [
        "error: --device cuda asked for, but this torch build sees no CUDA GPU; "
        "use --device cpu or auto"
    ]
    assert not (tmp_path / "out").exists()


def test_predict_library_warnings_become_lines(model_path: Path, tmp_path: Path) -> None:
    odd = write_scene(tmp_path / "odd.tif", scale=1000.0)  # units far from training data
    result = run(predict_args(model_path, [str(odd)], tmp_path / "out"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings, result.stderr
    assert all(line.startswith(f"warning: {odd}: band ") for line in warnings), warnings
    assert len(set(warnings)) == len(warnings)
    assert (tmp_path / "out" / "odd.tif").is_file()


def test_band_mismatch_names_the_keyword_in_the_api(model_path: Path, tmp_path: Path) -> None:
    two_band = gc.open_raster(write_scene(tmp_path / "two_band.tif", count=2))
    with pytest.raises(gc.BandMismatchError, match=r"bands=\[") as info:
        gc.predict(two_band, load_model(model_path), device="cpu")
    assert "--bands" not in str(info.value)


# --------------------------------------------------------------------------- options, once


@pytest.mark.parametrize("patch", [16, 32])
def test_predict_defaults_fit_the_models_patch(
    patch: int, tmp_path: Path, make_model: Callable[..., gc.GeoModel]
) -> None:
    """A model trained on small chips predicts with the CLI's defaults: stride = its patch."""
    model = gc.save_model(make_model(3, patch_size=patch), tmp_path / "m.safetensors")
    scene = write_scene(tmp_path / "scene.tif")
    result = run(["predict", model, scene, "-o", tmp_path / "out", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "out" / "scene.tif") as src:
        assert src.transform == TRANSFORM @ Affine.scale(patch)
        assert (src.height, src.width) == (-(-HEIGHT // patch), -(-WIDTH // patch))


@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("--stride", "65", "--stride"),
        ("--stride", "0", "--stride"),
        ("--batch-size", "0", "--batch-size"),
        ("--min-valid", "0", "--min-valid"),
        ("--min-valid", "1.5", "--min-valid"),
        ("--device", "tpu", "--device"),
    ],
)
def test_predict_bad_option_fails_once_before_any_tile(
    model_path: Path, tiles: list[Path], tmp_path: Path, option: str, value: str, flag: str
) -> None:
    result = run(["predict", model_path, *map(str, tiles), "-o", tmp_path / "out", option, value])
    assert result.exit_code == 2, result.output
    errors = error_lines(result)
    assert len(errors) == 1 and flag in errors[0], result.stderr
    assert not re.search(r"\b[a-z_]+=", errors[0])  # no Python keyword such as stride=
    assert not (tmp_path / "out").exists()


def test_stride_larger_than_patch_says_the_library_message(
    model_path: Path, tmp_path: Path
) -> None:
    result = run(["predict", model_path, "x.tif", "-o", tmp_path / "out", "--stride", "65"])
    assert error_lines(result) == [
        "error: --stride must be between 1 and the patch size 64; found 65. Pick a stride such "
        "as 64, 32 or 16 (windows farther apart than the patch size would skip pixels)."
    ]


def test_predict_resolves_the_device_once(
    model_path: Path, tiles: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import georaster_cnn.model._inference as inference

    names: list[object] = []
    resolve = inference.resolve_device

    def counting(device: object = "auto") -> object:
        if isinstance(device, str):  # a torch.device passed on is not resolved again
            names.append(device)
        return resolve(device)  # type: ignore[arg-type]

    # the CLI resolves through the public name, each classifier through its module's
    monkeypatch.setattr(gc, "resolve_device", counting)
    monkeypatch.setattr(inference, "resolve_device", counting)
    result = run(predict_args(model_path, [str(t) for t in tiles], tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "3 written" in result.stdout
    assert names == ["cpu"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--stride", "65"], "--stride"),
        (["--val-fraction", "1"], "--val-fraction"),
        (["--val-block", "0"], "--val-block"),
        (["--min-cover", "2"], "--min-cover"),
        (["--device", "tpu"], "--device"),
        (["--patience", "-1"], "--patience"),
    ],
)
def test_train_bad_option_fails_before_reading(
    data_dir: Path, tmp_path: Path, args: list[str], flag: str
) -> None:
    out = tmp_path / "m.safetensors"
    result = run(
        ["train", data_dir / "scene.tif", "--labels", data_dir / "labels.tif", "-o", out, *args]
    )
    assert result.exit_code == 2, result.output
    errors = error_lines(result)
    assert len(errors) == 1 and flag in errors[0], result.stderr
    assert not out.exists()


def test_train_help_shows_the_libraries_defaults() -> None:
    from georaster_cnn import options

    help_text = " ".join(run(["train", "--help"]).stdout.split("Options:", 1)[1].split())
    for flag, value in [
        ("--arch", options.DEFAULT_ARCH),
        ("--epochs", options.DEFAULT_EPOCHS),
        ("--batch-size", options.DEFAULT_TRAIN_BATCH_SIZE),
        ("--val-fraction", options.DEFAULT_VAL_FRACTION),
        ("--val-block", options.DEFAULT_VAL_BLOCK),
        ("--min-cover", options.DEFAULT_MIN_COVER),
        ("--patience", options.DEFAULT_PATIENCE),
    ]:
        shown = help_text.split(flag, 1)[1].split("--", 1)[0]
        assert f"[default: {value}]" in shown, flag


# --------------------------------------------------------------------------- formats


def _input_named(folder: Path, suffix: str) -> Path:
    path = folder / f"scene_{suffix.lstrip('.')}{suffix}"
    if suffix == ".zarr":
        path.mkdir(parents=True)
        (path / "zarr.json").write_text("{}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("suffix", sorted(INPUT_SUFFIXES))
@pytest.mark.parametrize("format", [None, *OUTPUT_FORMATS])
def test_cli_plans_the_libraries_output_for_every_suffix(
    tmp_path: Path, suffix: str, format: str | None
) -> None:
    source = _input_named(tmp_path / "in", suffix)
    assert expand_inputs([str(tmp_path / "in")]).paths == (source,)  # folders find it
    plan = plan_outputs(expand_inputs([str(source)]), tmp_path / "out", format=format)
    assert not isinstance(plan[0], TileResult)
    assert (plan[0].output, plan[0].format) == formats.output_path(source, tmp_path / "out", format)


def test_format_choices_are_the_libraries() -> None:
    help_text = run(["predict", "--help"]).stdout
    assert f"[{'|'.join(OUTPUT_FORMATS)}]" in help_text
    for suffix in INPUT_SUFFIXES:
        assert suffix in help_text


@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"], ["train", "--help"]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from georaster_cnn_cli.main import cli\n"
        "try:\n"
        f"    cli({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- library words


@pytest.mark.parametrize(
    ("library", "cli_words"),
    [
        ("Select bands with bands=[...].", "Select bands with --bands."),
        ("select them with bands=[red, nir]", "select them with --bands red,nir"),
        (
            "x.tif exists; pass overwrite=True to replace it",
            "x.tif exists; pass --overwrite to replace it",
        ),
        ("pass overwrite=True (--overwrite) to replace it", "pass --overwrite to replace it"),
        ("min_valid= must be in (0, 1]; found 0", "--min-valid must be in (0, 1]; found 0"),
        ("stride= must be between 1 and 64", "--stride must be between 1 and 64"),
        ("batch_size= must be a whole number", "--batch-size must be a whole number"),
        ("use device='cpu' or 'auto'", "use --device cpu or auto"),
        ("unknown device 'tpu'; choose auto or cpu", "unknown --device tpu; choose auto or cpu"),
        (
            "choose one with select={'time': VALUE} or stack='time'",
            "choose one with --select time=VALUE or --stack time",
        ),
        ("select={DIM: VALUE}, or stack=DIM", "--select DIM=VALUE, or --stack DIM"),
        ("blocks of val_block= pixels", "blocks of --val-block pixels"),
        ("say which column (label_column / --label-column)", "say which column (--label-column)"),
        ("val_block must be >= 1 pixel", "--val-block must be >= 1 pixel"),
        ("augment=False", "--no-augment"),
        ("pass format= (cog, zarr)", "pass --format (cog, zarr)"),
        (
            "more than the limit max_pixels=68719476736; nothing was read. If the size is real, "
            "pass a larger max_pixels= (or select fewer bands with bands=)",
            "more than the limit --max-pixels 68719476736; nothing was read. If the size is real, "
            "pass a larger --max-pixels (or select fewer bands with --bands)",
        ),
        ("max_pixels= must be a whole number >= 1", "--max-pixels must be a whole number >= 1"),
        (
            "a network location; inputs read local files only unless allow_remote=True",
            "a network location; inputs read local files only unless --allow-remote",
        ),
        (
            "dense=True needs a dense architecture; leave dense unset or use dense=False.",
            "--dense needs a dense architecture; leave dense unset or use --no-dense.",
        ),
        (
            "To take the nearest value anyway, use select={'time': '~2005-07-15'}",
            "To take the nearest value anyway, use --select time=~2005-07-15",
        ),
        ("sample_pixels= must be a whole number", "--sample-pixels must be a whole number"),
        # not an option of the CLI, inside paths, or already a flag: as it was
        ("set nodata= on the labels", "set nodata= on the labels"),
        ("/data/min_valid/scene.tif: bad", "/data/min_valid/scene.tif: bad"),
        ("min_valid.tif: bad", "min_valid.tif: bad"),
        ("use --min-valid 0.3", "use --min-valid 0.3"),
        ("class_names attribute", "class_names attribute"),
    ],
)
def test_flag_wording(library: str, cli_words: str) -> None:
    assert flag_wording(library) == cli_words
    assert flag_wording(cli_words) == cli_words  # said once, stays said


def test_flag_keywords_come_from_the_commands_options() -> None:
    from georaster_cnn_cli._common import learn_flags

    learned = learn_flags(cli)
    # every keyword the library names in its messages and a command sets
    for keyword in ("allow_remote", "batch_size", "class_names", "format", "label_column",
                    "max_pixels", "min_valid", "overwrite", "sample_pixels", "scheduler_file",
                    "select", "stride", "val_block"):  # fmt: skip
        assert keyword in learned
    assert "no_dense" not in learned  # the --no-... form of a switch is not a keyword
    assert flag_wording("scheduler_file=PATH is missing") == "--scheduler-file PATH is missing"
    # a new option is known without a table to keep
    extra = click.Group(commands=[click.Command("x", params=[click.Option(["--tile-size"])])])
    try:
        assert "tile_size" in learn_flags(extra)
        assert flag_wording("pass tile_size=512") == "pass --tile-size 512"
    finally:
        learn_flags(cli)
    assert flag_wording("pass tile_size=512") == "pass tile_size=512"
