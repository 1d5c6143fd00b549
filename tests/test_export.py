"""Exported models: ONNX graphs agree with torch and with predict; metadata as the consumers read it.

Deepness's and ArcGIS's readers are re-implemented here from their code (the Deepness
plugin's ``model_base.py`` / ``preprocessing_utils.py``; Esri's raster function
interface), so a test fails when an export would be misread by them.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from affine import Affine
from click.testing import CliRunner
from jsonschema import Draft7Validator
from referencing import Registry, Resource

import georaster_cnn as gc
from georaster_cnn.chips import iter_batches
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.model._inference import Classifier
from georaster_cnn.model._portable import DenseLayout
from georaster_cnn.model.architectures import ARCHITECTURES, register_architecture
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.products.export import plan_export
from georaster_cnn.stats import ChannelStats, normalize_bands
from georaster_cnn.testing import tiny_dense_model

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "model.safetensors"
SCENE = ROOT / "sample_data" / "scene.tif"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
ARCHS = ("cnn_dense", "cnn", "resnet", "mlp")


def _session(path: Path | bytes) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), options, providers=["CPUExecutionProvider"]
    )


def _run(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


def _model(arch: str, *, bands: int = 5, classes: int = 3, patch: int = 16) -> GeoModel:
    """A small seeded model of ``arch`` with non-trivial statistics (an odd band count)."""
    if arch != "mlp":
        widths = (8, 12) if arch != "cnn_dense" else (8, 12, 16)
        return tiny_dense_model(bands, classes, patch=patch, widths=widths, arch=arch)
    torch.manual_seed(0)
    module = gc.build_model(
        "mlp", in_channels=bands, n_classes=classes, patch_size=patch, hidden=32
    )
    count = np.full(bands, 100.0)
    names = tuple(f"b{i}" for i in range(bands))
    stats = ChannelStats(
        names, count, np.linspace(5, 50, bands), count * 4.0, np.zeros(bands), np.full(bands, 99.0)
    )
    return GeoModel(
        module=module.eval(),
        arch="mlp",
        hparams={"hidden": 32},
        band_names=names,
        class_names=tuple(f"c{k}" for k in range(classes)),
        class_colors=tuple((10 * k, 20, 30) for k in range(classes)),
        stats=stats,
        patch_size=patch,
    )


def _raw_chips(model: GeoModel, n: int, seed: int) -> np.ndarray:
    """Raw chips like the training data, a third of them with NaN holes (one all NaN)."""
    rng = np.random.default_rng(seed)
    p, b = model.patch_size, model.n_bands
    mean = model.stats.mean.reshape(1, -1, 1, 1)
    x = (mean + model.stats.scale_std.reshape(1, -1, 1, 1) * rng.normal(size=(n, b, p, p))).astype(
        np.float32
    )
    for i in range(0, n, 3):
        r, c = rng.integers(0, p, 2)
        x[i, rng.integers(0, b) :, r : r + p // 2, c : c + p // 3] = np.nan
    x[1] = np.nan
    x[2, 0, 0, 0] = np.inf
    return x


def _torch_probabilities(model: GeoModel, raw: np.ndarray) -> np.ndarray:
    """What predict computes for these windows: normalise, NaN -> 0, the classifier."""
    norm = normalize_bands(raw.transpose(1, 0, 2, 3), model.stats)  # band first, as a block
    norm[~np.isfinite(norm)] = np.nan  # +-inf: the readers make it NaN
    windows = norm[:, :, None]  # (band, n, 1, p, p): one window per row
    rows, cols = np.arange(len(raw)), np.zeros(len(raw), dtype=int)
    out = np.empty((len(raw), model.n_classes), dtype=np.float32)
    classify = Classifier(model, "cpu")
    for sl, chips in iter_batches(windows, rows, cols, 64):
        out[sl] = classify(chips)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_chip_onnx_agrees_with_torch_on_256_chips(arch: str, tmp_path: Path) -> None:
    model = _model(arch)
    plan = gc.export_model(model, tmp_path, targets="onnx", name="m")
    # The onnx target brings the cell-grid dense model along when the architecture has one.
    assert plan.files == (("m.onnx", "m_dense.onnx") if arch == "cnn_dense" else ("m.onnx",))
    session = _session(tmp_path / "m.onnx")
    assert session.get_inputs()[0].shape[1:] == [5, 16, 16]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch
    raw = _raw_chips(model, 256, seed=1)
    found = _run(session, raw)
    expected = _torch_probabilities(model, raw)
    assert found.shape == (256, 3)
    assert np.abs(found - expected).max() < 1e-4
    np.testing.assert_array_equal(found.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(found.sum(1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def sample() -> GeoModel:
    return gc.load_model(SAMPLE)


@pytest.fixture(scope="module")
def exported(sample: GeoModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample model exported with the default targets (resolution given)."""
    out = tmp_path_factory.mktemp("export")
    gc.export_model(SAMPLE, out, resolution=3000.0)
    return out


def _scene(hole: bool = True) -> xr.DataArray:
    data = gc.open_raster(SCENE).load()
    if hole:
        values = data.values.copy()
        values[:, 100:180, 300:420] = np.nan  # a nodata hole: cells without prediction
        values[1, 400:430, 10:60] = np.nan  # one band missing
        data = data.copy(data=values)
    return data


def _predict(model: GeoModel, data: xr.DataArray, stride: int) -> xr.Dataset:
    return gc.predict(data, model, stride=stride, device="cpu", check=False).compute()


def _dense_classes(session: Any, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = _run(session, tile[None].astype(np.float32))[0]
    classes = np.where(probs.sum(0) > 0, probs.argmax(0), 255).astype(np.uint8)
    return probs, classes


def test_exported_sample_files(exported: Path) -> None:
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted(
        [
            "model.onnx",
            "model_dense.onnx",
            "model_map.onnx",
            "model.emd",
            "GeorasterCNN.py",
            "model.dlpk",
            "model.mlm.json",
        ]
    )


def _halo(layout: DenseLayout) -> tuple[int, int]:
    """predict's halo at the layout's stride, from its own geometry (PatchGrid)."""
    grid = PatchGrid(512, 512, patch=layout.patch, stride=layout.stride)
    return grid.halo_before, grid.halo_after


def _dense_equals_predict(model: GeoModel, cells: Any, pixels: Any, layout: DenseLayout) -> None:
    """NAME_dense.onnx on the 512 x 512 scene plus its halo equals predict, cell for cell.

    The halo is predict's (``halo_before`` NaN pixels before the raster, ``halo_after``
    after), so the tile is ``p + (n - 1) * S`` pixels for predict's ``n = 512 / S`` cells
    and output cell ``(i, j)`` is predict's cell ``(i, j)``. A tile inside the scene
    (real pixels as its halo) gives predict's cells ``[k, k + m)``. NAME_map.onnx on the
    same tile is the cells repeated over their ``S x S`` pixels, from tile pixel ``crop``.
    """
    s, p = layout.stride, layout.patch
    before, after = _halo(layout)
    data = _scene()
    ref = _predict(model, data, s)
    expected = ref["class"].values
    n = expected.shape[0]
    assert n * s == 512
    padded = np.pad(data.values, ((0, 0), (before, after), (before, after)), constant_values=np.nan)
    assert padded.shape[1] == p + (n - 1) * s
    probs, classes = _dense_classes(cells, padded)
    assert probs.shape == (model.n_classes, n, n) == (model.n_classes, *expected.shape)
    np.testing.assert_array_equal(classes, expected)
    valid = expected != 255
    assert (~valid).sum() > 100 // s  # the hole and the missing band left cells without a class
    expected_p = ref["probability"].values
    assert np.abs(probs[:, valid] - expected_p[:, valid]).max() < 1e-4
    assert np.all(probs[:, ~valid] == 0)  # below min_valid: all-zero probabilities
    # A tile inside the scene: cells [k, k + m) read from S*k - before to S*(k + m) + after.
    k = -(-before // s) + 1
    m = (512 - after) // s - k - 1
    inner = data.values[
        :, s * k - before : s * (k + m) + after, s * k - before : s * (k + m) + after
    ]
    _, inner_classes = _dense_classes(cells, inner)
    np.testing.assert_array_equal(inner_classes, expected[k : k + m, k : k + m])
    # NAME_map.onnx: output pixel y is tile pixel y + crop, in cell (y + crop - before) // S.
    map_probs = _run(pixels, padded[None].astype(np.float32))[0]
    side = layout.output_size(padded.shape[1])
    assert map_probs.shape == (model.n_classes, side, side) and side >= 512 - 2 * layout.crop
    idx = (np.arange(side) + layout.crop - before) // s
    assert idx[0] >= 0 and idx[-1] < n
    np.testing.assert_allclose(map_probs, probs[:, idx][:, :, idx], rtol=0, atol=1e-6)


def test_dense_onnx_on_512_tile_equals_predict(sample: GeoModel, exported: Path) -> None:
    dense = _session(exported / "model_dense.onnx")
    assert dense.get_inputs()[0].shape[1] == 3
    assert all(isinstance(d, str) for d in dense.get_inputs()[0].shape[2:])  # dynamic H, W
    plan = plan_export(sample)
    assert plan.layout is not None and (plan.layout.stride, plan.layout.crop) == (4, 30)
    _dense_equals_predict(sample, dense, _session(exported / "model_map.onnx"), plan.layout)


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2, 8, 16, 32])
def test_dense_onnx_equals_predict_at_every_stride(
    sample: GeoModel, stride: int, tmp_path: Path
) -> None:
    plan = gc.export_model(sample, tmp_path, targets="deepness", stride=stride, name="m")
    assert plan.layout is not None
    cells, pixels = _session(tmp_path / "m_dense.onnx"), _session(tmp_path / "m_map.onnx")
    _dense_equals_predict(sample, cells, pixels, plan.layout)


def test_chip_onnx_of_sample_reproduces_predict(sample: GeoModel, exported: Path) -> None:
    """The chip graph on predict's windows (stride 64) gives predict's classes."""
    data = _scene(hole=False)
    ref = _predict(sample, data, 64)
    windows = data.values.reshape(3, 8, 64, 8, 64).transpose(1, 3, 0, 2, 4).reshape(64, 3, 64, 64)
    found = _run(_session(exported / "model.onnx"), windows)
    np.testing.assert_array_equal(found.argmax(1).reshape(8, 8), ref["class"].values)
    expected = ref["probability"].values.reshape(4, 64).T
    assert np.abs(found - expected).max() < 1e-4


def _deepness_metadata(session: Any) -> dict[str, Any]:
    """The metadata as Deepness's ModelBase reads it (json.loads, or ast for class names)."""
    meta = session.get_modelmeta().custom_metadata_map
    out: dict[str, Any] = {"model_type": str(json.loads(meta["model_type"])).capitalize()}
    try:
        names = json.loads(meta["class_names"])
    except json.JSONDecodeError:  # pragma: no cover - Deepness's fallback
        names = ast.literal_eval(meta["class_names"])
    ordered = sorted(names.items(), key=lambda kv: int(kv[0]))
    assert [int(k) for k, _ in ordered] == list(range(len(ordered)))  # consecutive from 0
    out["class_names"] = [v for _, v in ordered]
    out["resolution"] = float(json.loads(meta["resolution"])) if "resolution" in meta else None
    out["tile_size"] = int(json.loads(meta["tile_size"]))
    out["tiles_overlap"] = int(json.loads(meta["tiles_overlap"]))
    out["mean"] = np.array([float(v) for v in json.loads(meta["standardization_mean"])], np.float32)
    out["std"] = np.array([float(v) for v in json.loads(meta["standardization_std"])], np.float32)
    out["seg_thresh"] = float(json.loads(meta["seg_thresh"]))
    out["seg_small_segment"] = int(json.loads(meta["seg_small_segment"]))
    assert "tiles_size" not in meta  # its docs' spelling; its code reads tile_size
    return out


@pytest.mark.parametrize("file", ["model_map.onnx", "model_dense.onnx"])
def test_deepness_metadata_as_its_code_reads_it(
    file: str, sample: GeoModel, exported: Path
) -> None:
    session = _session(exported / file)
    meta = _deepness_metadata(session)
    ours = session.get_modelmeta().custom_metadata_map
    assert ours["georaster_cnn:output"] == ("pixels" if file == "model_map.onnx" else "cells")
    assert ours["georaster_cnn:stride"] == "4" and json.loads(ours["georaster_cnn:halo"]) == [
        30,
        30,
    ]
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == list(sample.class_names)
    assert meta["resolution"] == 3000.0
    assert meta["tile_size"] == 512
    np.testing.assert_array_equal(meta["mean"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(meta["std"], np.full(3, 1 / 255, np.float32))
    assert meta["seg_thresh"] == 0.0 and meta["seg_small_segment"] == 0
    # Deepness's overlap in pixels (processing_overlap.py) covers the margin on both sides,
    # and its output is a centred crop by an even margin (tile_params.py refuses odd ones).
    overlap_px = int(meta["tile_size"] * meta["tiles_overlap"] / 100 * 2) // 2
    probs = _run(_session(exported / "model_map.onnx"), np.zeros((1, 3, 512, 512), np.float32))
    margin = (512 - probs.shape[-1]) // 2
    assert margin == 30 and margin % 2 == 0 and overlap_px >= 2 * margin
    # NAME_dense.onnx's cells are S times fewer than the pixels Deepness pastes: it fails there.
    cells = _run(_session(exported / "model_dense.onnx"), np.zeros((1, 3, 512, 512), np.float32))
    assert cells.shape[-2:] == ((512 - 64) // 4 + 1,) * 2 == (113, 113) != probs.shape[-2:]
    assert (meta["tile_size"] - overlap_px) % 4 == 0  # its tiles step by whole cells
    assert session.get_inputs()[0].shape[-3] == 3  # Deepness: input_shape[-3] bands


def _deepness_preprocess(tiles_nhwc: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Deepness's ModelBase.preprocessing: limit channels, / 255, standardise, NHWC -> NCHW."""
    x = np.float32(tiles_nhwc * 1.0 / 255.0)
    x = (x - mean) / std
    return np.transpose(x, (0, 3, 1, 2))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_deepness_preprocessing_of_raw_integers_gives_predict_classes(
    dtype: str, tmp_path: Path
) -> None:
    top = 250 if dtype == "uint8" else 60000
    model = tiny_dense_model(3, 4, patch=20, widths=(8, 12), seed=3)
    count = np.full(3, 1000.0)
    model.stats = ChannelStats(
        model.band_names,
        count,
        np.full(3, top / 2),
        count * (top / 5) ** 2,
        np.zeros(3),
        np.full(3, top),
    )
    plan = gc.export_model(model, tmp_path, targets="deepness", name="m", tile=120)
    assert plan.layout is not None
    s, margin = plan.layout.stride, plan.layout.crop
    session = _session(tmp_path / "m_map.onnx")  # the file Deepness loads
    meta = _deepness_metadata(session)
    rng = np.random.default_rng(7)
    raster = rng.integers(0, top, size=(3, 160, 170)).astype(dtype)
    raster[:, : 160 // 2, :] //= 3  # some structure
    grid = xr.DataArray(raster.astype(np.float32), dims=("band", "y", "x"))
    ref = _predict(model, grid.rio.write_crs("EPSG:32633"), s)["class"].values
    # A Deepness tile whose cells fall on predict's grid: its cell 0 starts at a cell k.
    h, a = plan.layout.halo_before, plan.layout.start_drop
    k = -(-h // s)
    r0 = k * s - h
    tile = raster[:, r0 : r0 + meta["tile_size"], r0 : r0 + meta["tile_size"]]
    batch = _deepness_preprocess(tile.transpose(1, 2, 0)[None], meta["mean"], meta["std"])
    probs = _run(session, batch)[0]
    assert probs.shape[-1] == meta["tile_size"] - 2 * margin
    y0 = (-a) % s  # the first output pixel that starts a cell
    classes = probs.argmax(0)[y0::s, y0::s]  # Deepness: argmax per pixel
    first, n = k + (a + y0) // s, classes.shape[0]
    assert n > 20
    np.testing.assert_array_equal(classes, ref[first : first + n, first : first + n])


def test_emd_and_dlpk(sample: GeoModel, exported: Path) -> None:
    emd = json.loads((exported / "model.emd").read_text())
    required = [
        "Framework",
        "ModelFile",
        "ModelType",
        "ImageHeight",
        "ImageWidth",
        "ExtractBands",
        "DataRange",
        "ModelPadding",
        "BatchSize",
        "Classes",
        "InferenceFunction",
    ]
    assert all(k in emd for k in required)
    assert emd["ModelType"] == "ImageClassification"
    assert emd["ModelFile"] == "model_map.onnx" and emd["InferenceFunction"] == "GeorasterCNN.py"
    assert emd["ImageHeight"] == emd["ImageWidth"] == 512 and emd["ModelPadding"] == 30
    assert emd["ExtractBands"] == [0, 1, 2]
    assert emd["Classes"] == [
        {"Value": k, "Name": n, "Color": list(c)}
        for k, (n, c) in enumerate(zip(sample.class_names, sample.class_colors, strict=True))
    ]
    with zipfile.ZipFile(exported / "model.dlpk") as dlpk:
        assert sorted(dlpk.namelist()) == sorted(["model.emd", "GeorasterCNN.py", "model_map.onnx"])
        assert dlpk.read("model_map.onnx") == (exported / "model_map.onnx").read_bytes()
        assert json.loads(dlpk.read("model.emd")) == emd


def test_arcgis_inference_function_gives_predict_classes(exported: Path) -> None:
    """ArcGIS's calls, simulated: initialize, getConfiguration, updatePixels on padded blocks."""
    spec = importlib.util.spec_from_file_location("GeorasterCNN", exported / "GeorasterCNN.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = module.GeorasterCNN()
    function.initialize(model=str(exported / "model.emd"))
    assert [p["name"] for p in function.getParameterInfo()][:3] == ["raster", "model", "device"]
    config = function.getConfiguration()
    pad, ty, tx = config["padding"], config["ty"], config["tx"]
    assert (pad, ty, tx) == (30, 452, 452) and config["extractBands"] == (0, 1, 2)
    info = function.updateRasterInfo(output_info={})["output_info"]
    assert info["bandCount"] == 1 and info["pixelType"] == "u1"
    data = _scene()
    ref = _predict(gc.load_model(SAMPLE), data, 4)["class"].values
    # The first block ArcGIS asks for: rows and columns [-pad, ty + pad), outside = masked.
    block = np.zeros((3, ty + 2 * pad, tx + 2 * pad), np.float32)
    mask = np.zeros_like(block, dtype=np.uint8)
    block[:, pad:, pad:] = data.values[:, : ty + pad, : tx + pad]
    mask[:, pad:, pad:] = np.isfinite(data.values[:, : ty + pad, : tx + pad])
    block[mask == 0] = 0.0  # what ArcGIS delivers under its mask
    out = function.updatePixels(
        None, None, {"pixelType": "u1"}, raster_pixels=block, raster_mask=mask
    )
    classes = out["output_pixels"][0]
    assert classes.shape == (ty, tx)
    np.testing.assert_array_equal(classes[::4, ::4], ref[:113, :113])
    np.testing.assert_array_equal(out["output_mask"][0] == 1, classes != 255)


def _mlm_validator() -> Draft7Validator:
    urls = {
        "classification-v1.1.0.json": "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
        "processing-v1.1.0.json": "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
        "raster-v1.1.0.json": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "mlm-v1.4.0.json": "https://stac-extensions.github.io/mlm/v1.4.0/schema.json",
    }
    registry: Registry = Registry()
    for file, url in urls.items():
        contents = json.loads((SCHEMAS / file).read_text())
        resource = Resource.from_contents(contents)
        registry = registry.with_resource(url, resource)
        registry = registry.with_resource(contents["$id"].rstrip("#"), resource)
    schema = json.loads((SCHEMAS / "mlm-v1.4.0.json").read_text())
    return Draft7Validator(schema, registry=registry)


def test_mlm_item_is_valid_and_describes_the_artefacts(sample: GeoModel, exported: Path) -> None:
    import hashlib

    item = json.loads((exported / "model.mlm.json").read_text())
    validator = _mlm_validator()
    assert [e.message for e in validator.iter_errors(item)] == []
    props = item["properties"]
    (inp,) = props["mlm:input"]
    assert inp["bands"] == list(sample.band_names)
    assert inp["input"]["shape"] == [-1, 3, 64, 64]
    assert [v["mean"] for v in inp["value_scaling"]] == pytest.approx(list(sample.stats.mean))
    (out,) = props["mlm:output"]
    assert [c["name"] for c in out["classification:classes"]] == list(sample.class_names)
    assert out["classification:classes"][1]["color_hint"] == "2E8B57"  # (46, 139, 87)
    assert props["georaster_cnn:checksum"] == sample.checksum
    for asset in item["assets"].values():
        data = (exported / asset["href"]).read_bytes()
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()
        assert asset["file:size"] == len(data)
    assert item["assets"]["model"]["roles"] == ["mlm:model"]
    # The schema is no rubber stamp: a missing input or a bad colour fails.
    broken = json.loads(json.dumps(item))
    del broken["properties"]["mlm:input"]
    assert list(validator.iter_errors(broken))
    broken = json.loads(json.dumps(item))
    broken["properties"]["mlm:output"][0]["classification:classes"][0]["color_hint"] = "green"
    assert list(validator.iter_errors(broken))


def test_architecture_without_dense_form_exports_chip_model_only(tmp_path: Path) -> None:
    model = _model("mlp")
    plan = plan_export(model, name="m")
    assert plan.targets == ("onnx", "mlm") and plan.layout is None
    assert any("no dense form" in n for n in plan.notes)
    with pytest.raises(gc.InputError, match="has no dense form"):
        gc.export_model(model, tmp_path, targets="deepness")
    assert not list(tmp_path.iterdir())


class _FFTNet(torch.nn.Module):
    """A custom architecture using an operator ONNX lacks (an FFT)."""

    def __init__(self, in_channels: int, n_classes: int, patch_size: int = 16) -> None:
        super().__init__()
        self.head = torch.nn.Linear(in_channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.fft.rfft2(x).abs().mean(dim=(2, 3)))


def test_custom_architecture_that_cannot_export_names_the_operator(tmp_path: Path) -> None:
    register_architecture("test_export_fft")(_FFTNet)
    try:
        module = gc.build_model("test_export_fft", in_channels=5, n_classes=3, patch_size=16)
        model = _model("cnn")
        model.module, model.arch = module.eval(), "test_export_fft"
        with pytest.raises(gc.ExportError, match="aten::fft_rfft2") as err:
            gc.export_model(model, tmp_path, targets="onnx")
    finally:
        del ARCHITECTURES["test_export_fft"]
    assert "'test_export_fft'" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_which_files_each_target_writes(sample: GeoModel) -> None:
    """NAME_dense.onnx (cells) with onnx and deepness; NAME_map.onnx (pixels) for Deepness, ArcGIS."""
    files = {
        t: plan_export(sample, name="m", targets=t).files for t in ("onnx", "deepness", "arcgis")
    }
    assert files["onnx"] == ("m.onnx", "m_dense.onnx")
    assert files["deepness"] == ("m_dense.onnx", "m_map.onnx")
    assert files["arcgis"] == ("m_map.onnx", "m.emd", "GeorasterCNN.py", "m.dlpk")
    assert plan_export(sample, name="m", targets="mlm").files == ("m.onnx", "m.mlm.json")


def test_tile_that_does_not_fit_is_refused_with_the_sizes_that_do(sample: GeoModel) -> None:
    with pytest.raises(gc.InputError, match="--tile 508 or 512"):
        plan_export(sample, tile=510)
    with pytest.raises(gc.InputError, match="unknown export target"):
        plan_export(sample, targets="onnx,tflite")


def test_cli_export_and_info(exported: Path, tmp_path: Path) -> None:
    from georaster_cnn_cli.main import cli

    runner = CliRunner()
    out = tmp_path / "x"
    result = runner.invoke(cli, ["export", str(SAMPLE), "-o", str(out), "--target", "onnx"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model_dense.onnx"]
    assert "max |Δp| vs torch" in result.output
    again = runner.invoke(cli, ["export", str(SAMPLE), "-o", str(out), "--target", "onnx"])
    assert again.exit_code != 0 and "--overwrite" in again.output
    # A second model in a folder with an ArcGIS export: the shared GeorasterCNN.py is no clash.
    shutil.copy(exported / "GeorasterCNN.py", out / "GeorasterCNN.py")
    second = runner.invoke(cli, ["export", str(SAMPLE), "-o", str(out), "--target", "arcgis"])
    assert second.exit_code == 0, second.output
    assert (out / "model.dlpk").is_file()
    bad = runner.invoke(cli, ["export", str(SAMPLE), "-o", str(out), "--tile", "510"])
    assert bad.exit_code != 0 and "--tile 508 or 512" in bad.output
    info = runner.invoke(cli, ["info", str(SAMPLE)])
    assert info.exit_code == 0, info.output
    assert "Export (georaster-cnn export" in info.output
    assert "model_dense.onnx" in info.output and "model_map.onnx" in info.output


def test_training_records_the_pixel_size_that_export_turns_into_deepness_resolution() -> None:
    from georaster_cnn.geometry import pixel_size_metres
    from georaster_cnn.testing import test_raster

    data = test_raster(64, 64, bands=2, seed=1)  # 10 m pixels, EPSG:32633
    labels = xr.DataArray(
        np.where(np.arange(64)[None, :] < 32, 0.0, 1.0).repeat(64, 0).astype("float32"),
        dims=("y", "x"),
    )
    labels = labels.rio.write_transform(data.rio.transform()).rio.write_crs(data.rio.crs)
    with pytest.warns(gc.ValidationWarning):  # few validation windows: fine here
        model = gc.train(
            data, labels, epochs=1, patch_size=16, stride=8, hparams={"widths": [4, 8]},
            device="cpu",
        )  # fmt: skip
    assert model.provenance["pixel_size_m"] == 10.0
    assert plan_export(model).resolution_cm == 1000.0
    assert plan_export(model, resolution=25.0).resolution_cm == 25.0
    # degrees, or pixels that are not square, give no resolution
    assert pixel_size_metres(data.rio.write_crs("EPSG:4326").rio.crs, data.rio.transform()) is None
    assert pixel_size_metres(data.rio.crs, data.rio.transform() * Affine.scale(1, 2)) is None
    model.provenance = {
        k: v for k, v in model.provenance.items() if k not in ("pixel_size_m", "data")
    }
    plan = plan_export(model)
    assert plan.resolution_cm is None and any("--resolution" in n for n in plan.notes)
