"""predict(engine="onnxruntime"): the same blockwise path and classes, the network in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import georaster_cnn as gc
from georaster_cnn.model import _engine
from georaster_cnn.testing import test_raster, tiny_dense_model

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("arch", "stride", "dense"),
    [("cnn_dense", 4, None), ("cnn_dense", 3, None), ("cnn_dense", 6, False), ("resnet", 8, None)],
)
def test_onnxruntime_engine_gives_torch_classes(arch: str, stride: int, dense: bool | None) -> None:
    model = tiny_dense_model(3, 4, patch=20, widths=(8, 12), arch=arch, seed=2)
    data = test_raster(70, 83, bands=3, seed=4)
    kw = {"stride": stride, "dense": dense, "device": "cpu", "check": False, "block_cells": 5}
    ref = gc.predict(data, model, **kw).compute()
    got = gc.predict(data, model, engine="onnxruntime", **kw).compute()
    kind = "cells" if arch == "cnn_dense" and dense is None else "windows"
    assert (model.checksum, kind, stride if kind == "cells" else 0) in _engine._SESSIONS
    np.testing.assert_array_equal(got["class"].values, ref["class"].values)
    assert (ref["class"].values == 255).any()  # the holes left cells without a class
    p, q = got["probability"].values, ref["probability"].values
    np.testing.assert_array_equal(np.isnan(p), np.isnan(q))
    assert np.nanmax(np.abs(p - q)) < 1e-5


def test_engine_is_checked() -> None:
    model = tiny_dense_model(2, 3)
    data = test_raster(40, 40)
    with pytest.raises(gc.InputError, match="unknown engine 'tflite'"):
        gc.predict(data, model, engine="tflite")
    with pytest.raises(gc.InputError, match="runs on the CPU"):
        gc.predict(data, model, engine="onnxruntime", device="cuda")


def test_cli_predict_engine_onnxruntime(tmp_path: Path) -> None:
    from georaster_cnn_cli.main import cli

    model, scene = ROOT / "sample_data" / "model.safetensors", ROOT / "sample_data" / "scene.tif"
    runner = CliRunner()
    maps = {}
    for engine in ("torch", "onnxruntime"):
        out = tmp_path / engine
        args = ["predict", str(model), str(scene), "-o", str(out), "--stride", "16"]
        result = runner.invoke(cli, [*args, "--engine", engine])
        assert result.exit_code == 0, result.output
        with rasterio.open(out / "scene.tif") as src:
            maps[engine] = src.read(1)
    np.testing.assert_array_equal(maps["onnxruntime"], maps["torch"])


def test_onnxruntime_classifier_travels_to_another_process_as_itself() -> None:
    """A Dask worker unpickles the engine's classifier and runs it (graphs built there)."""
    import pickle

    from georaster_cnn.model._engine import OnnxClassifier

    model = tiny_dense_model(2, 3, patch=20, widths=(8, 12))
    classifier = OnnxClassifier(model)
    clone = pickle.loads(pickle.dumps(classifier))
    assert type(clone) is OnnxClassifier
    windows = np.random.default_rng(0).normal(size=(4, 2, 20, 20)).astype(np.float32)
    np.testing.assert_allclose(clone(windows), classifier(windows), atol=1e-6)
