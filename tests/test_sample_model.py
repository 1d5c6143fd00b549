"""The bundled sample model: it loads verified, is the default architecture, and classifies
the bundled scene (the README's quick start) on the right grid and well."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

import georaster_cnn as gc
from georaster_cnn import options

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def test_bundled_model_is_verified_and_the_default_architecture() -> None:
    model = gc.load_model(SAMPLE / "model.safetensors")
    assert model.arch == options.DEFAULT_ARCH
    assert model.class_names == ("noise", "smooth", "ridges", "labyrinth")
    assert model.band_names == ("elevation_m", "soil_moisture", "sensor_c")


def test_bundled_model_classifies_the_sample_scene(tmp_path: Path) -> None:
    """Quick start: the COG is on the input's grid scaled by 64; cells agree with the labels
    (in-sample, so high) and dense evaluation gives the per-window classes."""
    model = gc.load_model(SAMPLE / "model.safetensors")
    pred = gc.predict(gc.open_raster(SAMPLE / "scene.tif"), model, stride=16)
    out = gc.write_prediction(pred, tmp_path / "scene.tif")
    with rasterio.open(SAMPLE / "scene.tif") as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform * Affine.scale(16)
        classes = dst.read(1)
    with rasterio.open(SAMPLE / "labels.tif") as lab:
        labels = lab.read(1)
    centres = labels[8::16, 8::16]  # the label under each cell's centre pixel
    known = (centres != 255) & (classes != 255)
    assert known.sum() > 900
    assert (classes[known] == centres[known]).mean() > 0.95
    per_window = gc.predict(gc.open_raster(SAMPLE / "scene.tif"), model, stride=16, dense=False)
    np.testing.assert_array_equal(per_window["class"].values, classes)
