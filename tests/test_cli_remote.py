"""Network inputs on the command line: ``/vsicurl/…`` and ``http://…`` with ``--allow-remote``.

A loopback server (tests/loopback_http.py: byte ranges, a request log) serves the
sample scene; the class map read over HTTP equals the one of the local file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from georaster_cnn_cli.main import cli
from loopback_http import serve

ROOT = Path(__file__).resolve().parents[1] / "sample_data"
MODEL = ROOT / "model.safetensors"


def _run(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def local_map(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    out = tmp_path_factory.mktemp("local")
    result = _run("predict", MODEL, ROOT / "scene.tif", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    with rasterio.open(out / "scene.tif") as src:
        return src.read(1)


@pytest.mark.parametrize("prefix", ["/vsicurl/", ""])
def test_predict_reads_a_network_input_with_allow_remote(
    tmp_path: Path, local_map: np.ndarray, prefix: str
) -> None:
    shutil.copy(ROOT / "scene.tif", tmp_path / "scene.tif")
    with serve(tmp_path) as served:
        url = f"{prefix}{served.url}/scene.tif"
        out = tmp_path / "maps"
        result = _run("predict", MODEL, url, "-o", out, "--device", "cpu", "--allow-remote")
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        assert any(method == "GET" and rng for method, _, rng, _ in served.log)  # ranged reads
    with rasterio.open(out / "scene.tif") as src:  # named after the URL's file
        np.testing.assert_array_equal(src.read(1), local_map)


def test_a_network_input_without_allow_remote_is_refused(tmp_path: Path) -> None:
    shutil.copy(ROOT / "scene.tif", tmp_path / "scene.tif")
    with serve(tmp_path) as served:
        url = f"{served.url}/scene.tif?sig=abc"
        result = _run("predict", MODEL, url, "-o", tmp_path / "maps", "--device", "cpu")
        assert served.log == []  # refused before any request
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "--allow-remote" in result.stderr  # type: ignore[attr-defined]
    assert "no such file" not in result.stderr  # type: ignore[attr-defined]
    assert not (tmp_path / "maps" / "scene.tif").exists()


def test_a_missing_network_input_fails_its_tile_only(tmp_path: Path) -> None:
    shutil.copy(ROOT / "scene.tif", tmp_path / "scene.tif")
    with serve(tmp_path, missing={"gone.tif"}) as served:
        args = [f"/vsicurl/{served.url}/gone.tif", f"/vsicurl/{served.url}/scene.tif"]
        out = tmp_path / "maps"
        result = _run("predict", MODEL, *args, "-o", out, "--device", "cpu", "--allow-remote")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "gone.tif" in result.stderr  # type: ignore[attr-defined]
    assert (out / "scene.tif").exists() and not (out / "gone.tif").exists()


def test_inspect_reads_a_network_input(tmp_path: Path) -> None:
    shutil.copy(ROOT / "scene.tif", tmp_path / "scene.tif")
    with serve(tmp_path) as served:
        result = _run("inspect", f"/vsicurl/{served.url}/scene.tif", "--allow-remote", "--json")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert '"bands"' in result.stdout or "band" in result.stdout  # type: ignore[attr-defined]


def test_evaluate_and_train_read_network_inputs_and_labels(tmp_path: Path) -> None:
    for name in ("scene.tif", "labels.tif"):
        shutil.copy(ROOT / name, tmp_path / name)
    local = _run(
        "evaluate", MODEL, ROOT / "scene.tif", "--labels", ROOT / "labels.tif",
        "-o", tmp_path / "local", "--device", "cpu",
    )  # fmt: skip
    assert local.exit_code == 0, local.output  # type: ignore[attr-defined]
    with serve(tmp_path) as served:
        scene, labels = f"/vsicurl/{served.url}/scene.tif", f"{served.url}/labels.tif"
        remote = _run(
            "evaluate", MODEL, scene, "--labels", labels, "-o", tmp_path / "remote",
            "--device", "cpu", "--allow-remote",
        )  # fmt: skip
        assert remote.exit_code == 0, remote.output  # type: ignore[attr-defined]
        trained = _run(
            "train", scene, "--labels", labels, "-o", tmp_path / "m.safetensors",
            "--epochs", "1", "--stride", "32", "--device", "cpu", "--allow-remote",
        )  # fmt: skip
        assert trained.exit_code == 0, trained.output  # type: ignore[attr-defined]
        refused = _run("train", scene, "--labels", labels, "-o", tmp_path / "n.safetensors")
        assert refused.exit_code != 0 and "--allow-remote" in refused.stderr  # type: ignore[attr-defined]
    a = (tmp_path / "local" / "metrics.json").read_text()
    b = (tmp_path / "remote" / "metrics.json").read_text()
    import json

    ja, jb = json.loads(a), json.loads(b)
    assert ja["confusion_matrix"] == jb["confusion_matrix"]
