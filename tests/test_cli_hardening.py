"""The CLI against bad inputs and bad models: the batch check of issue 10, and its new options.

One ``georaster-cnn predict`` over a folder of good tiles and broken ones of every kind
must write every good tile exactly as a clean run does, report each broken one in one
``error:`` line, exit 1 and leave nothing stray, again on a rerun. A model file with one
flipped bit is refused. ``--max-pixels`` and ``--allow-remote`` reach the reader from
every command that opens inputs; ``--select`` says what it picked; ``train`` and
``info`` show the windows per class.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from affine import Affine
from pyproj import CRS
from test_cli import CLASSES, ENV, error_lines, run, write_labels, write_scene, write_truncated

import georaster_cnn as gc
from georaster_cnn.io import formats
from georaster_cnn.options import DEFAULT_MAX_PIXELS

PATCH = 16

# --------------------------------------------------------------------------- inputs


def write_lcc_km(path: Path) -> Path:
    """A good 3-variable netCDF on a Lambert conformal grid whose x/y are in km (48 x 48)."""
    crs = CRS.from_proj4(
        "+proj=lcc +lat_1=35 +lat_2=65 +lat_0=52 +lon_0=10 +x_0=0 +y_0=0 +ellps=WGS84 +units=m"
    )
    mapping = crs.to_cf()
    mapping.pop("crs_wkt")  # CF parameters only: what GDAL reads with the units of x/y
    rng = np.random.default_rng(3)
    n = 48
    variables: dict[str, Any] = {
        f"v{i}": (("y", "x"), rng.normal(size=(n, n)).astype("float32"), {"grid_mapping": "lcc"})
        for i in range(3)
    }
    variables["lcc"] = ((), np.int32(0), mapping)
    axis = {"units": "km"}
    xr.Dataset(
        variables,
        coords={
            "x": ("x", -300.0 + 25.0 * np.arange(n), {**axis, "standard_name": "projection_x_coordinate"}),
            "y": ("y", 200.0 - 25.0 * np.arange(n), {**axis, "standard_name": "projection_y_coordinate"}),
        },
    ).to_netcdf(path)  # fmt: skip
    return path


def write_cube(path: Path) -> Path:
    """A 3-variable netCDF with 8 daily steps at 06:00 from 2020-06-28, on a UTM grid."""
    rng = np.random.default_rng(0)
    n, steps = 32, 8
    variables: dict[str, Any] = {
        f"v{i}": (
            ("time", "y", "x"),
            rng.normal(size=(steps, n, n)).astype("float32"),
            {"grid_mapping": "crs"},
        )
        for i in range(3)
    }
    variables["crs"] = ((), np.int32(0), CRS("EPSG:32633").to_cf())
    xr.Dataset(
        variables,
        coords={
            "time": pd.date_range("2020-06-28T06:00", periods=steps, freq="D"),
            "x": ("x", 500_005.0 + 10.0 * np.arange(n), {"units": "m", "standard_name": "projection_x_coordinate"}),
            "y": ("y", 4_999_995.0 - 10.0 * np.arange(n), {"units": "m", "standard_name": "projection_y_coordinate"}),
        },
    ).to_netcdf(path)  # fmt: skip
    return path


def write_sparse_huge(path: Path) -> Path:
    """A GeoTIFF declaring 600000 x 600000 x 3 pixels with no tile written (a few MB)."""
    with rasterio.open(
        path, "w", driver="GTiff", width=600_000, height=600_000, count=3, dtype="uint8",
        tiled=True, blockxsize=1024, blockysize=1024, sparse_ok=True, compress="deflate",
        crs="EPSG:32633", transform=Affine(10, 0, 500_000, 0, -10, 5_000_000),
    ):  # fmt: skip
        pass
    return path


def write_complex(path: Path) -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", width=36, height=40, count=3, dtype="complex64",
        crs="EPSG:32633", transform=Affine(10, 0, 500_000, 0, -10, 5_000_000),
    ) as dst:  # fmt: skip
        dst.write(np.full((3, 40, 36), 1 + 2j, dtype="complex64"))
    return path


def write_disguised_vrt(path: Path, source: Path) -> Path:
    """A VRT saved as ``.tif`` whose raw band reads the bytes of ``source``."""
    path.write_text(
        f"""<VRTDataset rasterXSize="16" rasterYSize="16">
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativeToVRT="0">{source}</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>16</LineOffset>
  </VRTRasterBand>
</VRTDataset>
"""
    )
    return path


#: The broken tiles of the batch: file name -> writer(path, scratch folder).
BROKEN: dict[str, Callable[[Path, Path], Path]] = {
    "truncated.tif": lambda p, _: write_truncated(p),
    "garbage.tif": lambda p, _: (p.write_bytes(np.random.default_rng(1).bytes(5000)), p)[1],
    "disguised_vrt.tif": lambda p, scratch: write_disguised_vrt(p, scratch / "secret.bin"),
    "huge_header.tif": lambda p, _: write_sparse_huge(p),
    "complex64.tif": lambda p, _: write_complex(p),
    "two_bands.tif": lambda p, _: write_scene(p, count=2, seed=5),
    "empty.tif": lambda p, _: (p.write_bytes(b""), p)[1],
}
#: Good inputs, and their class maps' names.
GOOD: dict[str, Callable[[Path], Path]] = {
    "tile_a.tif": lambda p: write_scene(p, seed=1),
    "tile_b.tif": lambda p: write_scene(p, seed=2),
    "lcc_km.nc": write_lcc_km,
}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, make_model: Callable[..., Any]) -> Path:
    """A small seeded CNN for 3 bands (patch 16), saved in the current format."""
    folder = tmp_path_factory.mktemp("model")
    return gc.save_model(
        make_model(3, CLASSES, arch="cnn", patch_size=PATCH), folder / "model.safetensors"
    )


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(folder of good and broken tiles, folder of the good tiles alone)."""
    root = tmp_path_factory.mktemp("batch")
    scratch = root / "scratch"
    scratch.mkdir()
    (scratch / "secret.bin").write_bytes(b"root:x:0:0:secret\n" * 16)
    mixed, clean = root / "mixed", root / "clean"
    mixed.mkdir()
    clean.mkdir()
    for name, write in GOOD.items():
        write(mixed / name)
        shutil.copy2(mixed / name, clean / name)
    for name, write_broken in BROKEN.items():
        write_broken(mixed / name, scratch)
    yield mixed, clean


def run_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, as a user runs it (real exit status and streams)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env.update({k: v for k, v in ENV.items() if v is not None})
    code = "from georaster_cnn_cli.main import cli; cli(prog_name='georaster-cnn')"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip


def read_map(path: Path) -> tuple[np.ndarray, Affine, Any]:
    """Pixels, transform and CRS of a class map as GDAL reads it (COG or netCDF)."""
    name = f'NETCDF:"{path}":class' if path.suffix == ".nc" else str(path)
    with rasterio.open(name) as src:
        return src.read(), src.transform, src.crs


def expected_outputs(good: list[str]) -> set[str]:
    """The class maps of the good tiles and the COGs' .aux.xml sidecars."""
    names = set()
    for name in good:
        out = formats.output_path(Path(name), Path("."), None)[0].name
        names.add(out)
        if out.endswith(".tif"):
            names.add(out + ".aux.xml")
    return names


# --------------------------------------------------------------------------- the batch check


def test_batch_of_good_and_broken_tiles(model_file: Path, batch: tuple[Path, Path]) -> None:
    mixed, clean = batch
    clean_out, out = mixed.parent / "clean_out", mixed.parent / "out"
    reference = run(["predict", model_file, clean, "-o", clean_out, "--device", "cpu"])
    assert reference.exit_code == 0, reference.output
    good_outputs = expected_outputs(list(GOOD))
    assert set(os.listdir(clean_out)) == good_outputs

    result = run_process("predict", model_file, mixed, "-o", out, "--device", "cpu")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    for name in BROKEN:  # each broken tile: exactly one line, naming it
        assert sum(f"{mixed / name}:" in line for line in errors) == 1, (name, errors)
    assert len(errors) == len(BROKEN), errors
    assert f"{len(GOOD)} written, 0 skipped, {len(BROKEN)} failed" in result.stdout

    # nothing but the good outputs, each identical to the clean run's
    assert set(os.listdir(out)) == good_outputs
    for name in good_outputs - {n for n in good_outputs if n.endswith(".aux.xml")}:
        pixels, transform, crs = read_map(out / name)
        ref_pixels, ref_transform, ref_crs = read_map(clean_out / name)
        np.testing.assert_array_equal(pixels, ref_pixels)
        assert transform == ref_transform and crs == ref_crs, name
    # the km grid is placed in metres, over Europe: 16 cells of 25 km per output cell
    _, transform, _ = read_map(out / "lcc_km.nc")
    assert transform.almost_equals(Affine(400_000, 0, -312_500, 0, -400_000, 212_500))

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(["predict", model_file, mixed, "-o", out, "--device", "cpu"])
    assert again.exit_code == 1, again.output
    assert "Traceback" not in again.output
    assert len(error_lines(again)) == len(BROKEN)
    assert f"0 written, {len(GOOD)} skipped, {len(BROKEN)} failed" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing stray


def test_model_with_one_flipped_weight_bit_is_refused(
    model_file: Path, batch: tuple[Path, Path], tmp_path: Path
) -> None:
    data = bytearray(model_file.read_bytes())
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    begin, end = next(
        t["data_offsets"]
        for k, t in header.items()
        if k.endswith(".weight") and t["dtype"] == "F32"
    )
    data[8 + header_size + (begin + end) // 2] ^= 0x04  # one bit of one weight
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))

    _, clean = batch
    result = run(["predict", flipped, clean, "-o", tmp_path / "out", "--device", "cpu"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot load model {flipped}: ")
    assert "weights do not match the digest" in lines[0]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- --max-pixels, --allow-remote


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(3-band scene, its label raster)."""
    folder = tmp_path_factory.mktemp("scene")
    return write_scene(folder / "scene.tif"), write_labels(folder / "labels.tif")


def _command(name: str, model: Path, scene: Path, labels: Path, out: Path) -> list[str | Path]:
    fast = ["--device", "cpu"]
    return {
        "predict": ["predict", model, scene, "-o", out, *fast],
        "evaluate": ["evaluate", model, scene, "--labels", labels, "-o", out, *fast],
        "train": ["train", scene, "--labels", labels, "-o", out / "m.safetensors", "--epochs",
                  "1", "--stride", "32", *fast],
        "inspect": ["inspect", scene],
    }[name]  # fmt: skip


@pytest.mark.parametrize("command", ["predict", "evaluate", "train", "inspect"])
def test_reader_options_reach_open_raster(
    command: str,
    model_file: Path,
    scene: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    real = gc.open_raster

    def spy(path: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(gc, "open_raster", spy)
    args = _command(command, model_file, *scene, tmp_path / "default")
    assert run(args).exit_code == 0
    assert calls and all(
        c["max_pixels"] == DEFAULT_MAX_PIXELS and c["allow_remote"] is False for c in calls
    )
    calls.clear()
    args = _command(command, model_file, *scene, tmp_path / "given")
    assert run([*args, "--max-pixels", "10000000", "--allow-remote"]).exit_code == 0
    assert calls and all(c["max_pixels"] == 10_000_000 and c["allow_remote"] for c in calls)


@pytest.mark.parametrize("command", ["predict", "evaluate", "train", "inspect"])
def test_help_shows_the_reader_options(command: str) -> None:
    help_text = " ".join(run([command, "--help"]).stdout.split())
    assert "--allow-remote" in help_text
    shown = help_text.split("--max-pixels", 1)[1].split("--", 1)[0]
    assert f"[default: {DEFAULT_MAX_PIXELS}]" in shown


def test_max_pixels_refuses_a_larger_input(
    model_file: Path, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    result = run(["predict", model_file, scene[0], "-o", tmp_path, "--max-pixels", "1000"])
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"error: {scene[0]}: 100 x 90 pixels x 3 band(s) = 27,000 pixel values, more than the "
        "limit --max-pixels 1000; nothing was read. If the size is real, pass a larger "
        "--max-pixels (or select fewer bands with --bands)"
    ]
    bad = run(["predict", model_file, scene[0], "-o", tmp_path / "x", "--max-pixels", "0"])
    assert bad.exit_code == 2
    assert "Invalid value for '--max-pixels': must be a whole number >= 1" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_network_vrt_source_needs_allow_remote(tmp_path: Path) -> None:
    vrt = tmp_path / "remote.vrt"
    vrt.write_text(
        """<VRTDataset rasterXSize="20" rasterYSize="10">
  <SRS>EPSG:32633</SRS><GeoTransform>500000, 30, 0, 4600000, 0, -30</GeoTransform>
  <VRTRasterBand dataType="Float32" band="1"><SimpleSource>
    <SourceFilename relativeToVRT="0">/vsicurl/http://127.0.0.1:9/x.tif</SourceFilename>
    <SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>
</VRTDataset>
"""
    )
    result = run(["inspect", vrt])
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"error: {vrt}: VRT source '/vsicurl/http://127.0.0.1:9/x.tif' is a network location; "
        "inputs read local files only unless --allow-remote"
    ]


def test_inspect_sample_size_is_its_own_option(scene: tuple[Path, Path]) -> None:
    result = run(["inspect", scene[0], "--sample-pixels", "0"])
    assert result.exit_code == 2
    assert error_lines(result) == ["error: --sample-pixels must be a whole number >= 1; found 0"]
    sampled = run(["inspect", scene[0], "--sample-pixels", "4000", "--json"])
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(sampled.stdout)[0]["sampling"]["subsampled"] is True


# --------------------------------------------------------------------------- --select


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cube(tmp_path_factory.mktemp("cube") / "cube.nc")


def test_select_prints_the_value_picked(model_file: Path, cube: Path, tmp_path: Path) -> None:
    args = ["predict", model_file, cube, "-o", tmp_path, "--device", "cpu"]
    result = run([*args, "--select", "time=2020-07-01"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"{cube}: --select time=2020-07-01 -> 2020-07-01T06:00:00"
    ]
    quiet = run(["-q", *args, "--overwrite", "--select", "time=2020-07-01"])
    assert quiet.exit_code == 0 and quiet.output == ""

    inspected = run(["inspect", cube, "--select", "time=2020-07-03T12:00", "--json"])
    assert inspected.exit_code == 0, inspected.output
    assert f"{cube}: --select time=2020-07-03T12:00 -> 2020-07-03T06:00:00" in inspected.stderr


def test_select_far_from_every_step_is_refused_and_tilde_takes_the_nearest(
    model_file: Path, cube: Path, tmp_path: Path
) -> None:
    args = ["predict", model_file, cube, "-o", tmp_path, "--device", "cpu"]
    far = run([*args, "--select", "time=2005-07-15"])
    assert far.exit_code == 1
    errors = error_lines(far)
    assert len(errors) == 1 and errors[0].startswith(f"error: {cube}: no time step at 2005-07-15")
    assert errors[0].endswith("use --select time=~2005-07-15")
    assert "Traceback" not in far.output
    assert not (tmp_path / "cube.nc").exists()

    nearest = run([*args, "--select", "time=~2005-07-15"])
    assert nearest.exit_code == 0, nearest.output
    assert (
        f"{cube}: --select time=~2005-07-15 -> 2020-06-28T06:00:00" in nearest.stderr.splitlines()
    )
    warnings = [line for line in nearest.stderr.splitlines() if line.startswith("warning:")]
    assert (
        len(warnings) == 1 and "--select time=~2005-07-15 took 2020-06-28T06:00:00" in warnings[0]
    )
    assert (tmp_path / "cube.nc").is_file()


# --------------------------------------------------------------------------- training tells the truth


def test_train_and_info_show_windows_per_class(scene: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = run(
        ["train", scene[0], "--labels", scene[1], "-o", out, "--epochs", "1", "--stride", "16",
         "--device", "cpu", "--class-names", ",".join(CLASSES)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    counts = gc.load_model(out).provenance["windows_per_class"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("the validation set has only" in w for w in warnings), result.stderr  # tiny
    info = run(["info", out])
    for shown in (result.stdout, info.stdout):
        assert "windows per class" in shown
        header = next(
            line for line in shown.splitlines() if "validation" in line and "class" in line
        )
        assert "train" in header and "dropped in buffer" in header
        rows = [line for line in shown.splitlines() if line.strip("│ ").split(" ")[0] in CLASSES]
        assert [r.strip("│ ").split()[0] for r in rows] == list(CLASSES)  # the model's order
        for row, name in zip(rows, CLASSES, strict=True):
            numbers = [int(n) for n in row.replace("│", " ").split()[1:]]
            assert numbers == [
                counts["train"][name],
                counts["validation"][name],
                counts["dropped_in_buffer"][name],
            ]
