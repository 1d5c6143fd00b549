"""One golden end-to-end run: sample scene -> train -> predict -> COG -> reopen and score.

The scene comes from ``sample_data/make_sample.py`` (``generate(out_dir, *, size, seed)``):
four classes that differ only in spatial structure, so beating chance needs a model that
looks at neighbourhoods, and the map must land on the right pixels to score.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate

import georaster_cnn as gc

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "make_sample.py"
SIZE = 128
PATCH = 16
OUT_STRIDE = 8


def _load_generator() -> ModuleType:
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} not found: no sample scene generator to run the golden test with")
    spec = importlib.util.spec_from_file_location("_georaster_make_sample", SAMPLE)
    if spec is None or spec.loader is None:
        pytest.skip(f"{SAMPLE} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered while it loads
    spec.loader.exec_module(module)
    if not hasattr(module, "generate"):
        pytest.skip(f"{SAMPLE} has no generate(out_dir, *, size, seed)")
    return module


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    module = _load_generator()
    out = tmp_path_factory.mktemp("sample")
    seed = getattr(module, "DEFAULT_SEED", 0)
    paths = module.generate(out, size=SIZE, seed=seed)
    return {name: Path(p) for name, p in paths.items()}


@pytest.fixture(scope="module")
def trained(sample: dict[str, Path]) -> gc.GeoModel:
    data = gc.open_raster(sample["scene.tif"])
    labels = gc.open_labels(sample["labels.tif"])
    return gc.train(
        data, labels, epochs=3, patch_size=PATCH, stride=4, batch_size=32,
        hparams={"widths": [8, 16]}, device="cpu", seed=0,
    )  # fmt: skip


def _labels_at_cell_centres(labels_path: Path, grid: gc.PatchGrid) -> np.ndarray:
    """Label of each output cell: the label pixel at the cell's centre (255 = none)."""
    with rasterio.open(labels_path) as src:
        lab = src.read(1)
        nodata = src.nodata
    oh, ow = grid.out_shape
    rows = np.minimum(np.arange(oh) * grid.stride + grid.stride // 2, grid.height - 1)
    cols = np.minimum(np.arange(ow) * grid.stride + grid.stride // 2, grid.width - 1)
    out = lab[np.ix_(rows, cols)].astype(np.int64)
    if nodata is not None:
        out[lab[np.ix_(rows, cols)] == nodata] = 255
    return out


@pytest.mark.slow
def test_golden_end_to_end(sample: dict[str, Path], trained: gc.GeoModel, tmp_path: Path) -> None:
    model = trained
    with rasterio.open(sample["labels.tif"]) as src:
        names = json.loads(src.tags()["CLASS_NAMES"])
    with rasterio.open(sample["scene.tif"]) as src:
        in_transform, in_crs, (h, w) = src.transform, src.crs, src.shape
    assert model.class_names == tuple(names)
    assert len(model.provenance["history"]) == 3

    # Through a model file, as a user would.
    model = gc.load_model(gc.save_model(model, tmp_path / "model.safetensors"))
    data = gc.open_raster(sample["scene.tif"])
    pred = gc.predict(data, model, stride=OUT_STRIDE)
    out = gc.write_prediction(pred, tmp_path / "map.tif", probabilities=True)

    is_valid, errors, _ = cog_validate(str(out), quiet=True)
    assert is_valid and errors == []
    grid = gc.PatchGrid(h, w, patch=PATCH, stride=OUT_STRIDE)
    with rasterio.open(out) as src:
        assert src.crs == in_crs
        assert src.transform == in_transform @ Affine.scale(OUT_STRIDE)
        assert src.shape == grid.out_shape
        assert src.count == 1 + len(names)
        assert json.loads(src.tags()["CLASS_NAMES"]) == names
        cls = src.read(1)

    truth = _labels_at_cell_centres(sample["labels.tif"], grid)
    scored = (cls != 255) & (truth != 255)
    assert scored.mean() > 0.5  # most of the map is classified and labelled
    accuracy = float((cls[scored] == truth[scored]).mean())
    majority = float(np.bincount(truth[scored]).max() / scored.sum())
    # Chance is ~1/4 (the generator balances the classes); no per-pixel rule beats the
    # majority class. A CNN trained for three short epochs gets well above both.
    print(f"end-to-end accuracy {accuracy:.3f} (majority class {majority:.3f})")
    assert accuracy > max(0.45, majority + 0.15), (accuracy, majority)


@pytest.mark.slow
def test_netcdf_copy_predicts_like_geotiff(sample: dict[str, Path], trained: gc.GeoModel) -> None:
    """scene.nc is a lossless CF copy of scene.tif: same grid, same map, no warnings."""
    tif = gc.open_raster(sample["scene.tif"])
    nc = gc.open_raster(sample["scene.nc"])
    assert list(nc["band"].values) == list(tif["band"].values)
    assert nc.rio.crs == tif.rio.crs
    assert nc.rio.transform().almost_equals(tif.rio.transform(), precision=1e-6)
    a = gc.predict(tif, trained, stride=OUT_STRIDE).compute()
    b = gc.predict(nc, trained, stride=OUT_STRIDE).compute()
    agree = (a["class"].values == b["class"].values).mean()
    assert agree > 0.98
