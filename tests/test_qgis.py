"""The QGIS plugin in a real, headless QGIS (Debian's qgis and python3-qgis), no mocks.

``georaster-cnn qgis install`` puts the plugin into the default profile of a
temporary HOME; QGIS starts as a desktop user's would (the system PATH, no virtual
environment or PYTHON* variables, ``QT_QPA_PLATFORM=offscreen``, a private
``XDG_RUNTIME_DIR``) and reaches the CLI by the absolute path recorded at install:
here a small script running this checkout's CLI with the test's interpreter.
``qgis_process.bin`` is called, not Debian's ``qgis_process`` wrapper, whose
``--noversioncheck`` QGIS 3.22 refuses. PyQGIS checks run tests/qgis_script.py with
the system Python.

Skipped only when QGIS is not installed (.ci/run installs it when run as root).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from georaster_cnn_cli import __version__
from georaster_cnn_cli.main import cli
from rasterio.windows import Window
from shapely.geometry import Point

from georaster_cnn import load_model, save_model

QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")
SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
ALGORITHMS = ("classify", "train", "evaluate", "vectorize", "inspect")

pytestmark = pytest.mark.skipif(
    not QGIS_PROCESS.exists() or sys.platform == "win32",
    reason="QGIS is not installed (/usr/bin/qgis_process.bin missing; .ci/run installs "
    "Debian's qgis and python3-qgis when it runs as root)",
)


@dataclass(frozen=True)
class Qgis:
    """A temporary HOME with the plugin installed, and QGIS's environment for it."""

    home: Path
    plugins: Path
    env: dict[str, str]

    def process(self, *args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(QGIS_PROCESS), *map(str, args)],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.home,
        )  # fmt: skip

    def script(self, tasks: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
        config = json.dumps({"plugins": str(self.plugins), "tasks": tasks})
        done = subprocess.run(
            [str(SYSTEM_PYTHON), str(REPO / "tests" / "qgis_script.py"), config],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.home,
        )  # fmt: skip
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULTS ")]
        assert lines, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        results: dict[str, Any] = json.loads(lines[-1][len("RESULTS ") :])
        for name, result in results.items():
            assert not (isinstance(result, dict) and "crashed" in result), (name, result)
        return results


def _executable(folder: Path) -> Path:
    """A georaster-cnn running this checkout's CLI with this interpreter (as installed)."""
    path = folder / "georaster-cnn"
    path.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={REPO}:{REPO / 'cli'} exec {sys.executable} -c "
        '"from georaster_cnn_cli.main import cli; cli(prog_name=\'georaster-cnn\')" "$@"\n'
    )
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def qgis(tmp_path_factory: pytest.TempPathFactory) -> Qgis:
    home = tmp_path_factory.mktemp("home")
    runtime = tmp_path_factory.mktemp("xdg-runtime")
    runtime.chmod(0o700)
    exe = _executable(tmp_path_factory.mktemp("bin"))
    # the install a user runs: the default profile of HOME
    runner = CliRunner(
        env={"HOME": str(home), "XDG_DATA_HOME": None, "QGIS_CUSTOM_CONFIG_PATH": None}
    )
    result = runner.invoke(cli, ["qgis", "install", "--executable", str(exe)])
    assert result.exit_code == 0, result.output
    profile = home / ".local/share/QGIS/QGIS3/profiles/default"
    env = {
        "HOME": str(home),
        "PATH": SYSTEM_PATH,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_RUNTIME_DIR": str(runtime),
        "LANG": "C.UTF-8",
    }
    return Qgis(home, profile / "python" / "plugins", env)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """192 x 160 pixels of the sample scene (3 bands, nodata blobs), a plain GeoTIFF."""
    folder = tmp_path_factory.mktemp("scene")
    window = Window(64, 96, 160, 192)
    with rasterio.open(SAMPLE / "scene.tif") as src:
        profile = src.profile
        data, transform, names = (
            src.read(window=window),
            src.window_transform(window),
            src.descriptions,
        )
    profile.update(width=160, height=192, transform=transform, tiled=False)
    for key in ("blockxsize", "blockysize"):
        profile.pop(key, None)
    path = folder / "scene crop.tif"  # a space: paths travel as arguments, not a shell line
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    return path


@pytest.fixture(scope="module")
def points(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> gpd.GeoDataFrame:
    """Points on an 8-pixel grid of the scene, labelled from the sample's labels."""
    with rasterio.open(scene) as src:
        transform, crs, bounds = src.transform, src.crs, src.bounds
    with rasterio.open(SAMPLE / "labels.tif") as lab:
        window = lab.window(*bounds)
        labels = lab.read(1, window=window)
        names = json.loads(lab.tags()["CLASS_NAMES"])
    rows = []
    for r in range(8, labels.shape[0] - 7, 8):
        for c in range(8, labels.shape[1] - 7, 8):
            if labels[r, c] != 255:
                x, y = transform * (c + 0.5, r + 0.5)
                keep = int(40 <= r < labels.shape[0] - 40 and 40 <= c < labels.shape[1] - 40)
                rows.append(
                    {"landcover": names[labels[r, c]], "keep": keep, "geometry": Point(x, y)}
                )
    return gpd.GeoDataFrame(rows, crs=crs)


def _read(path: Path) -> tuple[np.ndarray, Any, Any]:
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs


def _cli(*args: str | Path) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- qgis_process


def test_the_repositorys_qgis_folder_does_not_shadow_qgis(qgis: Qgis) -> None:
    """qgis/ (the plugin's home, no __init__.py) is no package: QGIS's qgis wins from here."""
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import qgis.core, qgis; print(qgis.__file__)"],
        env=qgis.env, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert not done.stdout.strip().startswith(str(REPO))
    assert not (REPO / "qgis" / "__init__.py").exists()


def test_qgis_process_lists_the_five_algorithms(qgis: Qgis) -> None:
    listed = qgis.process("list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in ALGORITHMS:
        assert f"georaster_cnn:{name}" in listed.stdout
    plugins = qgis.process("plugins").stdout
    assert "* georaster_cnn_qgis" in plugins  # enabled, with a Processing provider


@pytest.fixture(scope="module")
def classified(qgis: Qgis, scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qgis out") / "classes.tif"
    done = qgis.process(
        "run", "georaster_cnn:classify", "--",
        f"INPUT={scene}", f"MODEL={SAMPLE / 'model.safetensors'}", "STRIDE=16", f"OUTPUT={out}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "device: CPU" in done.stdout or "device: CUDA" in done.stdout
    return out


def test_classify_through_qgis_process_equals_cli_predict(
    classified: Path, scene: Path, tmp_path: Path
) -> None:
    ref = tmp_path / "ref"
    _cli("predict", SAMPLE / "model.safetensors", scene, "-o", ref, "--stride", "16")
    got, want = _read(classified), _read(ref / "scene crop.tif")
    np.testing.assert_array_equal(got[0], want[0])  # cell for cell
    assert got[1:] == want[1:]  # transform and CRS
    assert got[0].shape == (1, 12, 10)
    assert classified.with_suffix(".qml").is_file()  # QGIS opens it styled


def test_vectorize_through_qgis_process_writes_class_polygons(
    qgis: Qgis, classified: Path, tmp_path: Path
) -> None:
    out = tmp_path / "polygons.gpkg"
    done = qgis.process(
        "run", "georaster_cnn:vectorize", "--", f"INPUT={classified}", f"OUTPUT={out}"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    polygons = gpd.read_file(out)
    with rasterio.open(classified) as src:
        classes = src.read(1)
        cell = abs(src.transform.a * src.transform.e)
        names = set(json.loads(src.tags().get("CLASS_NAMES", "[]")) or [])
    assert len(polygons) > 0 and set(polygons.geom_type) <= {"Polygon", "MultiPolygon"}
    assert {"class_id", "class_name", "area", "cells"} <= set(polygons.columns)
    if names:
        assert set(polygons["class_name"]) <= names
    # every classified cell lies in exactly one polygon
    assert polygons["cells"].sum() == int((classes != 255).sum())
    np.testing.assert_allclose(polygons["area"].sum(), polygons["cells"].sum() * cell)


# --------------------------------------------------------------------------- PyQGIS


def test_classify_in_pyqgis_progress_style_help_and_no_torch(qgis: Qgis, tmp_path: Path) -> None:
    out = tmp_path / "pyqgis.tif"
    broken = tmp_path / "broken-georaster-cnn"  # an environment that lost its packages
    broken.write_text(
        "#!/bin/sh\necho 'ModuleNotFoundError: No module named rasterio' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    # the whole sample scene: its blocks take long enough for progress between 0 and 100
    # copies: QGIS keeps the statistics of the layers it opens in FILE.aux.xml beside them
    sample = tmp_path / "sample"
    sample.mkdir()
    for name in ("scene.tif", "scene.nc"):
        shutil.copy(SAMPLE / name, sample / name)
    params = {
        "INPUT": str(sample / "scene.tif"), "MODEL": str(SAMPLE / "model.safetensors"),
        "STRIDE": 16, "OUTPUT": str(out),
    }  # fmt: skip
    got = qgis.script(
        {
            "classify": {"kind": "classify", "params": params},
            "help": {"kind": "help", "ids": [f"georaster_cnn:{a}" for a in ALGORITHMS]},
            "settings": {
                "kind": "settings",
                "missing": str(tmp_path / "none"),
                "broken": str(broken),
                "params": {"INPUT": str(sample / "scene.tif"), "OUTPUT": str(tmp_path / "x.html")},
            },
            "inspect": {
                "kind": "inspect",
                "source": f'NETCDF:"{sample / "scene.nc"}":soil_moisture',
                "params": {"OUTPUT": str(tmp_path / "inspect.html")},
            },
        }
    )
    run = got["classify"]
    assert "raised" not in run, run
    assert max(run["progress"]) == 100
    assert any(0 < p < 100 for p in run["progress"]), run["progress"]  # the CLI's blocks
    assert "blocks (scene.tif)" in run["info"]  # each stage said once
    assert run["info"][0] in ("device: CPU",) or run["info"][0].startswith("device: CUDA")
    # the class map opens with the .qml's classes, and so does the layer the toolbox loads
    classes = ["noise", "smooth", "ridges", "labyrinth"]
    assert (run["opened_renderer"], run["opened_legend"]) == ("paletted", classes)
    assert (run["loaded_renderer"], run["loaded_legend"]) == ("paletted", classes)
    assert _read(out)[0].shape == (1, 32, 32)
    for alg_id, described in got["help"].items():
        assert "docs/qgis.md" in described["help"], alg_id
        for name in described["parameters"]:
            assert f"<b>{name}</b>" in described["help"], (alg_id, name)
    recorded = json.loads((qgis.plugins / "georaster_cnn_qgis/georaster_cnn.json").read_text())
    settings = got["settings"]
    assert settings["shown"] == settings["configured"] == recorded["executable"]
    assert settings["check"] == [True, f"georaster-cnn, version {__version__}"]
    assert settings["check_missing"] == [False, f"{tmp_path / 'none'} is not an executable file"]
    # a missing or broken executable: one clear message saying where to fix it
    missing, failing = settings["run_missing"]["raised"], settings["run_broken"]["raised"]
    assert f"georaster-cnn executable not found: {tmp_path / 'none'}" in missing
    assert "Processing > Options > Providers > georaster-cnn" in missing
    assert f"georaster-cnn at {broken} did not run (exit status 1)" in failing
    assert "ModuleNotFoundError: No module named rasterio" in failing
    assert settings["configured_after"] == recorded["executable"]
    assert not (tmp_path / "x.html").exists()
    # a layer that is no plain file (a netCDF variable) goes to the CLI as a temporary GeoTIFF
    inspected = got["inspect"]
    assert inspected["valid"] and "raised" not in inspected, inspected.get("raised")
    assert any("not a plain file, exported to" in line for line in inspected["info"])
    page = (tmp_path / "inspect.html").read_text()
    assert "Moran" in page and "Verdict" in page and "EPSG:32633" in page
    # QGIS's Python never imported torch or the library: the CLI ran in its own process
    assert got["modules"] == []


@pytest.mark.slow
def test_cancelled_classify_leaves_nothing_and_the_rerun_resumes(
    qgis: Qgis, tmp_path: Path, make_raster: Any, make_model: Any
) -> None:
    model = save_model(make_model(1, arch="cnn", patch_size=16), tmp_path / "m.safetensors")
    wide = make_raster(tmp_path, "wide.tif", height=1024, width=4096, count=1, seed=5)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    params = {
        "INPUT": str(wide),
        "MODEL": str(model),
        "STRIDE": 8,
        "OUTPUT": str(out_dir / "c.tif"),
    }
    got = qgis.script({"job": {"kind": "cancel_resume", "params": params, "cancel_at": 25}})["job"]
    cancelled, rerun = got["cancelled"], got["rerun"]
    assert "cancelled" in cancelled["raised"], cancelled
    # no partial output: at most the hidden resume state of the finished blocks
    assert all(name.startswith(".c.tif.gcnn-resume-") for name in cancelled["left"]), cancelled
    assert cancelled["left"], "no block was finished before the cancel: nothing to resume"
    assert "raised" not in rerun, rerun
    assert any("resuming:" in line for line in rerun["info"]), rerun["info"]
    assert max(rerun["progress"]) == 100
    assert sorted(rerun["left"]) == ["c.qml", "c.tif", "c.tif.aux.xml"]
    ref = tmp_path / "ref"
    _cli("predict", model, wide, "-o", ref, "--stride", "8")
    np.testing.assert_array_equal(_read(out_dir / "c.tif")[0], _read(ref / "wide.tif")[0])


@pytest.mark.slow
def test_memory_and_filtered_geopackage_layers_as_labels(
    qgis: Qgis, scene: Path, points: gpd.GeoDataFrame, tmp_path: Path
) -> None:
    gpkg = tmp_path / "checks.gpkg"
    points.to_file(gpkg)
    kept = int(points["keep"].sum())
    assert 0 < kept < len(points)
    model = tmp_path / "from memory.safetensors"
    report = tmp_path / "report"
    xy = [(p.x, p.y, name) for p, name in zip(points.geometry, points["landcover"], strict=True)]
    got = qgis.script(
        {
            "train": {
                "kind": "train_memory", "crs": points.crs.to_string(), "field": "landcover",
                "points": xy,
                "params": {
                    "INPUT": [str(scene)], "FIELD": "landcover", "EPOCHS": 1, "PATCH": 8,
                    "OUTPUT": str(model),
                },
            },
            "evaluate": {
                "kind": "evaluate_subset", "gpkg": str(gpkg), "subset": '"keep" = 1',
                "params": {
                    "INPUT": str(scene), "MODEL": str(SAMPLE / "model.safetensors"),
                    "FIELD": "landcover", "OUTPUT": str(report),
                },
            },
        }
    )  # fmt: skip
    assert "raised" not in got["train"], got["train"]
    trained = load_model(model)
    assert sorted(trained.class_names) == sorted(set(points["landcover"]))
    assert trained.patch_size == 8
    assert any("exported" in line or "used as" in line for line in got["train"]["info"])
    evaluated = got["evaluate"]
    assert "raised" not in evaluated, evaluated
    assert evaluated["features_shown"] == kept
    metrics = json.loads((report / "metrics.json").read_text())
    seen = metrics["n_evaluated"] + sum(metrics["n_excluded"].values())
    assert seen == kept  # the subset filter, not the whole file, was used
    assert (report / "report.html").is_file() and (report / "confusion_matrix.png").is_file()


@pytest.mark.slow
def test_train_classify_vectorize_as_a_processing_model(
    qgis: Qgis, scene: Path, points: gpd.GeoDataFrame, tmp_path: Path
) -> None:
    labels = tmp_path / "points.gpkg"
    points[["landcover", "geometry"]].to_file(labels)
    model3 = REPO / "tests" / "data" / "train_classify_vectorize.model3"
    outs = {
        "train:model": tmp_path / "model.safetensors",
        "classify:classes": tmp_path / "classes.tif",
        "vectorize:polygons": tmp_path / "polygons.gpkg",
    }
    done = qgis.process(
        "run", model3, "--", f"scene={scene}", f"labels={labels}", "field=landcover",
        "epochs=1", "patch=8", *(f"{k}={v}" for k, v in outs.items()),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    polygons = gpd.read_file(outs["vectorize:polygons"])
    assert len(polygons) > 0 and set(polygons.geom_type) <= {"Polygon", "MultiPolygon"}
    assert set(polygons["class_name"]) <= set(points["landcover"])
    with rasterio.open(outs["classify:classes"]) as src, rasterio.open(scene) as ref:
        assert src.crs == ref.crs and src.transform.a == ref.transform.a * 8
