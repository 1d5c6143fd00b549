"""``--progress jsonl``, ``predict --output FILE``, ``train --patch``, ``--html``: what the QGIS plugin runs.

Under ``--progress jsonl`` stderr carries nothing but JSON objects, one per line: the
device first, progress (stage, done, total), warnings and errors; stdout keeps the
results as text. Commands run in-process through click's CliRunner.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result
from georaster_cnn_cli.main import cli

import georaster_cnn as gc
from georaster_cnn import GeoModel, save_model

ENV: dict[str, str | None] = {"COLUMNS": "200", "NO_COLOR": "1", "FORCE_COLOR": None}


def run(*args: str | Path) -> Result:
    return CliRunner(env=ENV).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def events(result: Result) -> list[dict[str, Any]]:
    """Every stderr line, each parsed as JSON (a line that is not JSON fails the test)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) and "event" in e for e in parsed), lines
    return parsed


@pytest.fixture
def job(
    tmp_path: Path, make_raster: Callable[..., Path], make_model: Callable[..., GeoModel]
) -> tuple[Path, Path]:
    model = save_model(make_model(2, arch="cnn", patch_size=8), tmp_path / "m.safetensors")
    scene = make_raster(tmp_path, "scene.tif", height=70, width=45, count=2, seed=4)
    return model, scene


def test_jsonl_predict_device_first_progress_to_the_end_results_on_stdout(
    tmp_path: Path, job: tuple[Path, Path]
) -> None:
    model, scene = job
    out = tmp_path / "maps" / "classes.tif"
    result = run("--progress", "jsonl", "predict", model, scene, "--output", out, "--stride", "4")
    assert result.exit_code == 0, result.output
    got = events(result)
    assert got[0] == {"event": "device", "device": "cpu", "name": "CPU"}
    progress = [e for e in got if e["event"] == "progress"]
    assert {e["stage"] for e in progress} == {"tiles", "blocks"}
    assert all(set(e) == {"event", "stage", "item", "done", "total"} for e in progress)
    blocks = [e for e in progress if e["stage"] == "blocks"]
    assert {e["item"] for e in blocks} == {"scene.tif"}
    assert blocks[-1]["total"] and blocks[-1]["done"] == blocks[-1]["total"]
    assert progress[-1] == {
        "event": "progress", "stage": "tiles", "item": None, "done": 1, "total": 1,
    }  # fmt: skip
    assert "1 written" in result.stdout  # the summary stays text, on stdout
    assert not any(e["event"] in ("error", "warning") for e in got)


def test_predict_output_file_is_the_map_that_output_dir_writes(
    tmp_path: Path, job: tuple[Path, Path]
) -> None:
    model, scene = job
    one = tmp_path / "a" / "named.tif"
    assert run("predict", model, scene, "--output", one, "--stride", "4", "--qml").exit_code == 0
    assert run("predict", model, scene, "-o", tmp_path / "b", "--stride", "4").exit_code == 0
    assert (tmp_path / "a" / "named.qml").is_file()  # extras beside FILE, named after it
    with rasterio.open(one) as a, rasterio.open(tmp_path / "b" / "scene.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert (a.transform, a.crs) == (b.transform, b.crs)


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["-o", "x"], "give one of -o/--output-dir OUTDIR and --output FILE"),
        ([], "give one of -o/--output-dir OUTDIR and --output FILE"),
        (["SECOND"], "--output names one class map, for exactly one INPUT"),
        (["--output-name.txt"], "cannot tell the output format from"),
    ],
)
def test_predict_output_file_refusals_as_error_events(
    tmp_path: Path, job: tuple[Path, Path], extra: list[str], said: str
) -> None:
    model, scene = job
    args: list[str | Path] = ["--progress", "jsonl", "predict", model, scene]
    if extra == ["SECOND"]:
        args += [scene.with_name("m.safetensors"), "--output", tmp_path / "o.tif"]
    elif extra == ["--output-name.txt"]:
        args += ["--output", tmp_path / "name.txt"]
    else:
        args += [*extra, *(["--output", tmp_path / "o.tif"] if extra else [])]
    result = run(*args)
    assert result.exit_code == 2
    errors = [e for e in events(result) if e["event"] == "error"]
    assert len(errors) == 1 and said in errors[0]["message"], errors
    assert not (tmp_path / "o.tif").exists()


def test_jsonl_failed_input_is_an_error_event_with_its_input(
    tmp_path: Path, job: tuple[Path, Path]
) -> None:
    model, _ = job
    missing = tmp_path / "nowhere.tif"
    result = run("--progress", "jsonl", "predict", model, missing, "--output", tmp_path / "o.tif")
    assert result.exit_code == 1
    errors = [e for e in events(result) if e["event"] == "error"]
    assert errors == [
        {"event": "error", "message": "no such file or folder", "input": str(missing)}
    ]


def test_jsonl_warnings_are_events(
    tmp_path: Path, job: tuple[Path, Path], make_raster: Callable[..., Path]
) -> None:
    model, _ = job
    # units far from the model's training data: the library warns, predict goes on
    values = np.random.default_rng(0).normal(5000.0, 1000.0, (2, 40, 40)).astype("float32")
    odd = make_raster(tmp_path, "odd.tif", height=40, width=40, count=2, values=values)
    result = run("--progress", "jsonl", "predict", model, odd, "--output", tmp_path / "o.tif")
    assert result.exit_code == 0, result.output
    warnings = [e for e in events(result) if e["event"] == "warning"]
    assert warnings, events(result)
    assert all(e["input"] == str(odd) and e["message"].startswith("band ") for e in warnings)


def test_usage_error_is_an_error_event_under_jsonl() -> None:
    result = run("--progress", "jsonl", "predict", "--no-such-option")
    assert result.exit_code == 2
    (error,) = events(result)
    assert error["event"] == "error" and error["input"] is None
    assert "No such option" in error["message"] and "--no-such-option" in error["message"]


def test_inspect_html_is_the_printed_report(
    tmp_path: Path, make_raster: Callable[..., Path]
) -> None:
    scene = make_raster(tmp_path, "scene.tif", height=48, width=40, count=3, seed=1)
    page = tmp_path / "report" / "inspect.html"
    result = run("inspect", scene, "--html", page)
    assert result.exit_code == 0, result.output
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "georaster-cnn inspect: scene.tif" in html
    for text in ("Moran", "Verdict", "band_1", "band_3", "EPSG:32633"):
        assert text in html and text in result.stdout


def test_train_patch_sets_the_models_patch_size(
    tmp_path: Path, make_raster: Callable[..., Path]
) -> None:
    scene = make_raster(tmp_path, "scene.tif", height=64, width=64, count=2, seed=3)
    labels = np.zeros((64, 64), dtype="uint8")
    labels[:, 32:] = 1
    lab = make_raster(tmp_path, "labels.tif", height=64, width=64, dtype="uint8", values=labels)
    out = tmp_path / "m.safetensors"
    args = ["train", scene, "--labels", lab, "--patch", "8", "--epochs", "1", "--val-block", "16"]
    result = run("--progress", "jsonl", *args, "-o", out)
    assert result.exit_code == 0, result.output
    assert gc.load_model(out).patch_size == 8
    got = events(result)
    assert got[0]["event"] == "device"
    stages = [e["stage"] for e in got if e["event"] == "progress"]
    assert stages[0] == "reading" and stages[-1] == "epochs"
    assert [e for e in got if e["stage" if "stage" in e else "event"] == "epochs"][-1]["done"] == 1
    assert "Training windows per class" in result.stdout


def test_train_patch_is_refused_for_chips(tmp_path: Path) -> None:
    chips = tmp_path / "chips.npz"
    np.savez(chips, chips=np.zeros((4, 1, 8, 8), "float32"), labels=np.array([0, 1, 0, 1]))
    result = run("train", chips, "--patch", "8", "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 2
    assert "--patch is for rasters" in result.stderr


def test_device_name_says_what_runs_the_model() -> None:
    assert gc.device_name("cpu") == "CPU"
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert gc.device_name("auto") in ("CPU", "Apple MPS")
        with pytest.raises(gc.InputError, match="no CUDA GPU"):
            gc.device_name("cuda")


@pytest.mark.gpu
def test_device_name_names_the_cuda_device() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    name = gc.device_name("auto")
    assert name == f"CUDA {torch.cuda.get_device_name(0)} (cuda:0)"
    assert gc.device_name("cuda:0") == name


def test_train_patch_refusal_names_the_option(
    tmp_path: Path, make_raster: Callable[..., Path]
) -> None:
    scene = make_raster(tmp_path, "scene.tif", height=16, width=16, seed=3)
    lab = make_raster(tmp_path, "labels.tif", height=16, width=16, dtype="uint8", seed=4)
    result = run("train", scene, "--labels", lab, "--patch", "0", "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --patch must be a whole number >= 1 pixel; found 0"
