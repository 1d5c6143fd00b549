"""What each consumer reads beside the graph: Deepness metadata, an Esri model definition, STAC MLM.

Pure functions from a model and an export plan to JSON-able documents; writing them is
:mod:`georaster_cnn.products.export`'s job.

* **Deepness** (QGIS plugin) reads ``metadata_props`` of the ONNX file, each value a JSON
  text (``src/deepness/processing/models/model_base.py``): ``model_type``,
  ``class_names`` (``{"0": name, ...}``, consecutive from 0), ``resolution`` (cm/px),
  ``tile_size`` (its code's spelling), ``tiles_overlap`` (%), ``standardization_mean``
  and ``standardization_std`` (one value per band), ``seg_thresh`` and
  ``seg_small_segment``. It divides every input by 255 and then standardises; the graph
  normalises raw values itself, so mean 0 and std 1/255 hand it the raw values.
* **ArcGIS Pro** reads an Esri model definition (``.emd``, JSON) naming the model file
  and the Python raster function that runs it (``InferenceFunction``), as Esri's
  ``raster-deep-learning`` templates describe.
* **STAC MLM** 1.4: a STAC Item whose properties describe the model's input and output.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from georaster_cnn.model.modelfile import GeoModel

__all__ = [
    "DEEPNESS_SCALE",
    "MLM_SCHEMA",
    "deepness_metadata",
    "emd_document",
    "mlm_assets",
    "mlm_item",
    "overlap_percent",
]

#: What Deepness multiplies every input by before standardising (``preprocessing_utils.py``).
DEEPNESS_SCALE = 1.0 / 255.0
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
_FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
_ONNX_TYPE = "application/octet-stream; application=onnx"


def overlap_percent(tile: int, margin: int, stride: int = 1) -> int:
    """The smallest whole percentage of ``tile`` whose overlap covers a margin on both sides.

    Deepness turns the percentage into pixels as ``int(tile * pct / 100 * 2) // 2``
    (``processing_overlap.py``) and needs at least ``2 * margin`` of them: each tile's
    output lacks ``margin`` pixels on every side. Where a percentage below 50 allows it,
    its tiles also step by a whole number of cells (``stride``), so every tile's cells lie
    on one grid.
    """

    def pixels(pct: int) -> int:
        return int(tile * pct / 100 * 2) // 2

    enough = [pct for pct in range(100) if pixels(pct) >= 2 * margin]
    aligned = [pct for pct in enough if pct < 50 and (tile - pixels(pct)) % stride == 0]
    return (aligned or enough or [99])[0]


def deepness_metadata(
    model: GeoModel, *, tile: int, overlap: int, resolution_cm: float | None
) -> dict[str, str]:
    """Deepness's ``metadata_props`` for the dense graphs: each value a JSON text.

    Deepness loads ``NAME_map.onnx`` (one value per pixel); ``NAME_dense.onnx`` carries
    the same keys so that a reader of its metadata finds them too.
    """
    bands = model.n_bands
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(k): name for k, name in enumerate(model.class_names)},
        "tile_size": int(tile),
        "tiles_overlap": int(overlap),
        "standardization_mean": [0.0] * bands,
        "standardization_std": [DEEPNESS_SCALE] * bands,
        # The classes are predict's argmax: no probability threshold, no small-area filter.
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
    }
    if resolution_cm is not None:
        meta["resolution"] = float(resolution_cm)
    return {key: json.dumps(value) for key, value in meta.items()}


def emd_document(
    model: GeoModel,
    *,
    name: str,
    model_file: str,
    function: str,
    tile: int,
    margin: int,
    stride: int,
) -> dict[str, Any]:
    """The Esri model definition of the map graph (pixel grid), run by our Python raster function."""
    return {
        "Framework": "ONNX",
        "ModelConfiguration": "georaster_cnn",
        "ModelType": "ImageClassification",
        "ModelFile": model_file,
        "InferenceFunction": function,
        "ModelName": name,
        "Version": datetime.now(UTC).strftime("%Y.%m"),
        "ImageHeight": int(tile),
        "ImageWidth": int(tile),
        "ImageSpaceUsed": "MAP_SPACE",
        "ExtractBands": list(range(model.n_bands)),
        # Raw values in the training units: no rescaling by ArcGIS.
        "DataRange": [float(model.stats.minimum.min()), float(model.stats.maximum.max())],
        "ModelPadding": int(margin),
        "BatchSize": 1,
        "IsMultispectral": True,  # bands in the training units, not an RGB picture
        "Classes": [
            {"Value": k, "Name": n, "Color": [int(c) for c in rgb]}
            for k, (n, rgb) in enumerate(zip(model.class_names, model.class_colors, strict=True))
        ],
        "georaster_cnn": {
            "bands": list(model.band_names),
            "patch_size": model.patch_size,
            "stride": int(stride),
            "min_valid": model.min_valid,
            "checksum": model.checksum,
        },
    }


def mlm_assets(name: str, contents: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """The MLM item's assets: the exported files among ``contents`` (name -> bytes)."""
    described = {
        f"{name}.onnx": ("model", _ONNX_TYPE, "chip classifier (ONNX)", ["mlm:model"]),
        f"{name}_dense.onnx": (
            "dense_model",
            _ONNX_TYPE,
            "fully convolutional model on the cell grid: the cells of predict --stride (ONNX)",
            ["mlm:model"],
        ),
        f"{name}_map.onnx": (
            "map_model",
            _ONNX_TYPE,
            "the same model on the tile's pixel grid, for Deepness and ArcGIS (ONNX)",
            ["mlm:model"],
        ),
        f"{name}.emd": ("esri_emd", "application/json", "Esri model definition", ["metadata"]),
        f"{name}.dlpk": (
            "esri_dlpk",
            "application/zip",
            "ArcGIS Pro deep learning package",
            ["mlm:inference-runtime"],
        ),
    }
    assets: dict[str, dict[str, Any]] = {}
    for file, (key, media, title, roles) in described.items():
        data = contents.get(file)
        if data is None:
            continue
        asset: dict[str, Any] = {
            "href": f"./{file}",
            "type": media,
            "title": title,
            "roles": roles,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        if "mlm:model" in roles:
            asset["mlm:artifact_type"] = "torch.onnx.export"
        assets[key] = asset
    return assets


def _hex(rgb: tuple[int, int, int]) -> str:
    return "".join(f"{int(c):02X}" for c in rgb[:3])


def mlm_item(
    model: GeoModel,
    *,
    name: str,
    assets: Mapping[str, Mapping[str, Any]],
    stride: int | None,
    version: str,
) -> dict[str, Any]:
    """A STAC Item (1.1) with the MLM 1.4 extension describing the exported chip model.

    ``assets``: key -> ``{"href", "type", "title", "roles", "sha256", "size", ...}``; the
    first one is the model (role ``mlm:model``).
    """
    p, bands = model.patch_size, list(model.band_names)
    scaling = [
        {"type": "z-score", "mean": float(m), "stddev": float(s)}
        for m, s in zip(model.stats.mean, model.stats.scale_std, strict=True)
    ]
    classes = [
        {"value": k, "name": n, "description": n, "color_hint": _hex(rgb)}
        for k, (n, rgb) in enumerate(zip(model.class_names, model.class_colors, strict=True))
    ]
    created = model.provenance.get("created") if isinstance(model.provenance, dict) else None
    item_assets: dict[str, dict[str, Any]] = {}
    for key, asset in assets.items():
        entry = {k: v for k, v in asset.items() if k not in ("sha256", "size")}
        entry["file:checksum"] = "1220" + str(asset["sha256"])  # multihash: sha2-256
        entry["file:size"] = int(asset["size"])
        item_assets[key] = entry
    properties: dict[str, Any] = {
        "datetime": created if isinstance(created, str) else None,
        "description": f"georaster_cnn {model.arch} classifier of {p} x {p} windows "
        f"({len(bands)} bands, {model.n_classes} classes); model checksum {model.checksum}.",
        "mlm:name": _mlm_name(name),
        "mlm:architecture": model.arch,
        "mlm:tasks": ["classification", "scene-classification"],
        "mlm:framework": "ONNX",
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "mlm:total_parameters": int(sum(t.numel() for t in model.module.parameters())),
        "mlm:batch_size_suggestion": 256,
        "mlm:accelerator": "amd64",
        "mlm:accelerator_constrained": False,
        "mlm:hyperparameters": {"patch_size": p, **model.hparams, "min_valid": model.min_valid},
        "bands": [{"name": b} for b in bands],
        "mlm:input": [
            {
                "name": "raw",
                "description": "Pixels as read, in the training rasters' units; NaN marks "
                "nodata. The graph normalises them itself (value_scaling says how) and sets "
                "nodata to 0 after normalising.",
                "bands": bands,
                "input": {
                    "shape": [-1, len(bands), p, p],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "value_scaling": scaling,
                "resize_type": None,
                "pre_processing_function": None,
            }
        ],
        "mlm:output": [
            {
                "name": "probabilities",
                "description": "Class probabilities of each window (softmax).",
                "tasks": ["classification"],
                "result": {
                    "shape": [-1, model.n_classes],
                    "dim_order": ["batch", "class"],
                    "data_type": "float32",
                },
                "classification:classes": classes,
                "post_processing_function": None,
            }
        ],
        "georaster_cnn:checksum": model.checksum,
        "georaster_cnn:version": version,
    }
    if stride is not None:
        properties["georaster_cnn:dense_stride"] = int(stride)
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA, _FILE_SCHEMA],
        "id": _mlm_name(name),
        "geometry": None,
        "properties": properties,
        "links": [],
        "assets": item_assets,
    }


def _mlm_name(name: str) -> str:
    """``name`` as MLM allows: a letter, then letters, digits, ``_ . -`` or spaces, ending alphanumeric."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\- ]", "_", name).strip("_.- ")
    if not cleaned[:1].isalpha():
        cleaned = f"model_{cleaned}"
    cleaned = cleaned.rstrip("_.- ")
    return cleaned if len(cleaned) >= 3 else f"{cleaned}_model"
