"""``--scheduler`` / ``--scheduler-file`` on the CLI: same outputs on a local cluster, clean refusals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result
from georaster_cnn_cli.main import cli

import georaster_cnn as gc

ENV: dict[str, str | None] = {"COLUMNS": "250", "NO_COLOR": "1", "FORCE_COLOR": None}


def run(args: Sequence[str | Path]) -> Result:
    return CliRunner(env=ENV).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def model_path(
    tmp_path_factory: pytest.TempPathFactory, make_model: Callable[..., gc.GeoModel]
) -> Path:
    # a built-in architecture: worker processes know it without this test's conftest
    path = tmp_path_factory.mktemp("cluster_model") / "model.safetensors"
    return gc.save_model(make_model(3, arch="cnn", patch_size=16, min_valid=0.5), path)


@pytest.fixture
def tiles(tmp_path: Path) -> list[Path]:
    """Three small 3-band float32 tiles."""
    out = []
    for i in range(3):
        rng = np.random.default_rng(i)
        path = tmp_path / "tiles" / f"tile_{i}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {
            "driver": "GTiff", "height": 48, "width": 64, "count": 3, "dtype": "float32",
            "crs": "EPSG:32633", "transform": rasterio.Affine(10, 0, 500000, 0, -10, 6000000),
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(rng.normal(0, 1, (3, 48, 64)).astype("float32"))
        out.append(path)
    return out


def predict(model: Path, inputs: Sequence[Path], outdir: Path, *extra: str) -> Result:
    return run(
        ["predict", model, *inputs, "-o", outdir, "--stride", "8", "--device", "cpu", *extra]
    )


def test_local_cluster_matches_threads(model_path: Path, tiles: list[Path], tmp_path: Path) -> None:
    threads = predict(model_path, tiles, tmp_path / "threads", "--scheduler", "threads")
    assert threads.exit_code == 0, threads.output
    local = predict(model_path, tiles, tmp_path / "local", "--scheduler", "local:2")
    assert local.exit_code == 0, local.output
    assert "3 written, 0 skipped, 0 failed" in local.stdout
    for tile in tiles:
        with (
            rasterio.open(tmp_path / "threads" / tile.name) as a,
            rasterio.open(tmp_path / "local" / tile.name) as b,
        ):
            assert a.profile == b.profile
            np.testing.assert_array_equal(a.read(), b.read())


@pytest.mark.parametrize("spec", ["local:0", "bogus", "local:x"])
def test_bad_scheduler_is_one_line(
    model_path: Path, tiles: list[Path], tmp_path: Path, spec: str
) -> None:
    result = predict(model_path, tiles, tmp_path / "out", "--scheduler", spec)
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1, result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_missing_scheduler_file(model_path: Path, tiles: list[Path], tmp_path: Path) -> None:
    missing = tmp_path / "scheduler.json"
    result = predict(model_path, tiles, tmp_path / "out", "--scheduler-file", str(missing))
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "scheduler.json" in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_scheduler_and_file_conflict(model_path: Path, tiles: list[Path], tmp_path: Path) -> None:
    sched = tmp_path / "s.json"
    sched.write_text("{}")
    result = predict(
        model_path,
        tiles,
        tmp_path / "out",
        "--scheduler",
        "local:2",
        "--scheduler-file",
        str(sched),
    )
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1, result.stderr


@pytest.mark.parametrize("command", ["predict", "evaluate", "train"])
def test_help_shows_scheduler(command: str) -> None:
    result = run([command, "--help"])
    assert "--scheduler SPEC" in result.stdout and "--scheduler-file PATH" in result.stdout
