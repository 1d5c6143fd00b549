"""STAC inputs on the command line: predict (mosaic, --per-item, --skip-failed, --stac-item), inspect,
evaluate and train, over a loopback range server (tests/loopback_http.py) and from local catalogues.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from georaster_cnn_cli.main import cli
from loopback_http import Served, serve
from stac_fixtures import (
    MODEL_BANDS,
    QUIET_WARP,
    SIZE,
    write_collection,
    write_scenes,
    write_search_api,
)

import georaster_cnn as gc

pytestmark = pytest.mark.filterwarnings(QUIET_WARP)


def _run(*args: object) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("stac_cli"))


@pytest.fixture(scope="module")
def model_file(
    make_model: Callable[..., gc.GeoModel], scenes: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    stats = gc.compute_stats(gc.open_raster(scenes / "A1.tif"))
    model = make_model(
        3, ("low", "mid", "high"), band_names=MODEL_BANDS, patch_size=16, stats=stats,
        source_dtype="uint16",
    )  # fmt: skip
    return gc.save_model(model, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def local_maps(scenes: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """predict on the local three-band GeoTIFFs: the reference maps."""
    out = tmp_path_factory.mktemp("local_maps")
    result = _run("predict", model_file, scenes / "A1.tif", scenes / "A2.tif", "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def served(scenes: Path) -> Iterator[Served]:
    with serve(scenes) as s:
        yield s


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return np.asarray(src.read(1))


def test_predict_an_http_item_collection_equals_the_local_file_maps(
    scenes: Path, model_file: Path, local_maps: Path, served: Served, tmp_path: Path
) -> None:
    # named .geojson: recognised by its content, not its suffix
    write_collection(scenes, ["A1", "A2"], f"{served.url}/", "mosaic.geojson")
    url = f"{served.url}/mosaic.geojson"
    refused = _run("predict", model_file, url, "-o", tmp_path / "no")
    assert refused.exit_code != 0 and "--allow-remote" in refused.stderr
    assert served.log == []
    out = tmp_path / "maps"
    result = _run("predict", model_file, url, "-o", out, "--allow-remote", "--stac-item")
    assert result.exit_code == 0, result.output
    mosaic = _read(out / "mosaic.tif")
    a1, a2 = _read(local_maps / "A1.tif"), _read(local_maps / "A2.tif")
    np.testing.assert_array_equal(mosaic, np.hstack([a1, a2]))
    item = json.loads((out / "mosaic.json").read_text())
    assert item["properties"]["georaster_cnn:model"]["name"] == "tiny"
    derived = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert derived == [f"{url}#A1", f"{url}#A2"]
    back = gc.open_stac(out / "mosaic.json")  # the catalogued map reads back
    np.testing.assert_array_equal(np.nan_to_num(back.values[0], nan=255), mosaic)


def test_per_item_makes_one_map_per_item_on_its_own_grid(
    scenes: Path, model_file: Path, local_maps: Path, tmp_path: Path
) -> None:
    items = write_collection(scenes, ["A1", "A2"], "./", "per_item.json")
    out = tmp_path / "maps"
    result = _run("predict", model_file, items, "-o", out, "--per-item")
    assert result.exit_code == 0, result.output
    for name in ("A1", "A2"):
        np.testing.assert_array_equal(_read(out / f"{name}.tif"), _read(local_maps / f"{name}.tif"))


def test_skip_failed_goes_on_without_a_404_asset_and_says_so(
    scenes: Path, model_file: Path, tmp_path: Path
) -> None:
    with serve(scenes, missing={"A1_B08.tif"}) as s:
        write_collection(scenes, ["A1", "A2"], f"{s.url}/", "broken.json")
        url = f"{s.url}/broken.json"
        failed = _run("predict", model_file, url, "-o", tmp_path / "a", "--allow-remote")
        assert failed.exit_code == 1
        assert "A1_B08.tif" in failed.stderr and "--skip-failed" in failed.stderr
        result = _run(
            "predict", model_file, url, "-o", tmp_path / "b", "--allow-remote", "--skip-failed"
        )
    assert result.exit_code == 0, result.output
    assert "A1_B08.tif" in result.stderr and "left out" in result.stderr
    mosaic = _read(tmp_path / "b" / "broken.tif")
    cells = SIZE // 16
    assert (mosaic[:, :cells] == 255).all() and (mosaic[3:, cells:] != 255).all()


def test_a_missing_band_names_itself_on_the_command_line(
    scenes: Path, model_file: Path, tmp_path: Path
) -> None:
    items = write_collection(scenes, ["A1"], "./", "bands.json")
    result = _run("predict", model_file, items, "-o", tmp_path, "--bands", "red,nir,blue")
    assert result.exit_code == 1
    assert "'blue'" in result.stderr and "--bands blue=ASSET" in result.stderr
    mapped = _run(
        "predict", model_file, items, "-o", tmp_path / "m", "--bands", "red=B04,nir=B08,swir16=B11"
    )
    assert mapped.exit_code == 0, mapped.output


def test_inspect_evaluate_and_train_read_stac_inputs(
    scenes: Path, model_file: Path, tmp_path: Path
) -> None:
    items = write_collection(scenes, ["A1"], "./", "one.json")
    inspected = _run("inspect", items, "--json")
    assert inspected.exit_code == 0, inspected.output
    report = json.loads(inspected.stdout)[0]
    assert report["bands"] == ["B04", "B08", "B11"]  # every data asset, by its key
    labels = tmp_path / "labels.tif"
    with rasterio.open(scenes / "A1.tif") as src:
        profile = {**src.profile, "count": 1, "dtype": "uint8", "nodata": 255}
    rng = np.random.default_rng(0)
    with rasterio.open(labels, "w", **profile) as dst:
        dst.write(rng.integers(0, 3, (SIZE, SIZE), dtype="uint8"), 1)
    evaluated = _run("evaluate", model_file, items, "--labels", labels, "-o", tmp_path / "rep")
    assert evaluated.exit_code == 0, evaluated.output
    trained = _run(
        "train", items, "--labels", labels, "-o", tmp_path / "m.safetensors", "--epochs", "1",
        "--arch", "mlp", "--bands", ",".join(MODEL_BANDS), "--device", "cpu",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert gc.load_model(tmp_path / "m.safetensors").band_names == MODEL_BANDS


def test_a_local_catalogue_may_not_reach_outside_its_folder(
    scenes: Path, model_file: Path, tmp_path: Path
) -> None:
    items = write_collection(scenes, ["A1"], f"{scenes}/", "abs.json")
    shutil.copy(items, tmp_path / "items.json")
    result = _run("predict", model_file, tmp_path / "items.json", "-o", tmp_path / "maps")
    assert result.exit_code == 1
    assert "outside the catalogue's folder" in result.stderr


def test_predict_a_stac_search(
    scenes: Path, model_file: Path, local_maps: Path, served: Served, tmp_path: Path
) -> None:
    api = write_search_api(scenes, served.url, ["A1", "A2"])
    query = ["--stac-search", api, "--collections", "test", "--datetime", "2024-06-01/2024-06-30"]
    refused = _run("predict", model_file, *query, "-o", tmp_path / "no")
    assert refused.exit_code != 0 and "--allow-remote" in refused.stderr
    assert served.log == []
    out = tmp_path / "maps"
    result = _run("predict", model_file, *query, "-o", out, "--allow-remote", "--per-item")
    assert result.exit_code == 0, result.output
    assert ("POST", "/search") in [(m, p) for m, p, _, _ in served.log]
    for name in ("A1", "A2"):
        np.testing.assert_array_equal(_read(out / f"{name}.tif"), _read(local_maps / f"{name}.tif"))
    mosaic = _run("predict", model_file, *query, "-o", out, "--allow-remote")
    assert mosaic.exit_code == 0, mosaic.output
    a1, a2 = _read(local_maps / "A1.tif"), _read(local_maps / "A2.tif")
    np.testing.assert_array_equal(_read(out / "search.tif"), np.hstack([a1, a2]))
