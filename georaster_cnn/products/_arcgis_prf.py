"""ArcGIS Pro's inference function for an exported georaster_cnn map model.

This file is copied, as ``GeorasterCNN.py``, beside ``NAME.emd`` and into ``NAME.dlpk``
by :func:`georaster_cnn.export_model`; the Esri model definition names it as its
``InferenceFunction``. ArcGIS's *Classify Pixels Using Deep Learning* tool loads it as a
Python raster function (the interface of Esri's ``raster-deep-learning`` templates:
``initialize``, ``getParameterInfo``, ``getConfiguration``, ``updateRasterInfo``,
``updatePixels``) and calls it block by block. It needs only NumPy and onnxruntime
(both in ArcGIS Pro's deep learning environment), never georaster_cnn or torch.

Each block ArcGIS hands over is ``ImageHeight x ImageWidth`` pixels: the tile plus
``ModelPadding`` pixels of the neighbouring tiles on every side. The ONNX graph
normalises the raw values itself, treats NaN as nodata, and returns the class
probabilities of the tile's pixels (every output cell of ``predict --stride S`` spread
over its pixels); pixels ArcGIS masks become NaN first. A cell whose window holds too
few valid pixels gets no class (255, the class maps' nodata).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

NODATA = 255


class GeorasterCNN:
    """The Python raster function ArcGIS runs for the exported map model."""

    def __init__(self) -> None:
        self.name = "georaster_cnn classifier"
        self.description = "Classifies pixels with an exported georaster_cnn model (ONNX)."
        self.json_info: dict[str, Any] = {}
        self.model_path = ""
        self.session: Any = None

    def initialize(self, **kwargs: Any) -> None:
        """Read the model definition (a path, or its JSON text)."""
        if "model" not in kwargs:
            return
        model = kwargs["model"]
        as_file = os.path.isfile(str(model))
        if as_file:
            with open(model, encoding="utf-8") as f:
                self.json_info = json.load(f)
        else:
            self.json_info = json.loads(model)
        path = self.json_info["ModelFile"]
        if as_file and not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(model)), path)
        self.model_path = path

    def getParameterInfo(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "raster",
                "dataType": "raster",
                "required": True,
                "displayName": "Raster",
                "description": "Input raster: the model's bands, in its order and units",
            },
            {
                "name": "model",
                "dataType": "string",
                "required": True,
                "displayName": "Input Model Definition (EMD) File",
                "description": "The .emd file (or the .dlpk holding it)",
            },
            {
                "name": "device",
                "dataType": "numeric",
                "required": False,
                "displayName": "Device ID",
                "description": "Ignored: the model runs on the CPU",
            },
        ]

    def getConfiguration(self, **scalars: Any) -> dict[str, Any]:
        pad = int(self.json_info["ModelPadding"])
        return {
            "extractBands": tuple(self.json_info["ExtractBands"]),
            "padding": pad,
            "tx": int(self.json_info["ImageWidth"]) - 2 * pad,
            "ty": int(self.json_info["ImageHeight"]) - 2 * pad,
            "fixedTileSize": 1,
            "inheritProperties": 2 | 4 | 8,
            "invalidateProperties": 2 | 4 | 8,
            "inputMask": True,
        }

    def updateRasterInfo(self, **kwargs: Any) -> dict[str, Any]:
        info = kwargs["output_info"]
        info["bandCount"] = 1
        info["pixelType"] = "u1"
        info["noData"] = np.array([NODATA])
        rows = [
            {
                "attributes": {
                    "OID": k + 1,
                    "Value": c["Value"],
                    "Class": c["Name"],
                    "Red": c["Color"][0],
                    "Green": c["Color"][1],
                    "Blue": c["Color"][2],
                }
            }
            for k, c in enumerate(self.json_info["Classes"])
        ]
        info["rasterAttributeTable"] = json.dumps({"features": rows})
        return kwargs

    def _session(self) -> Any:
        if self.session is None:
            import onnxruntime as ort

            self.session = ort.InferenceSession(self.model_path, providers=["CPUExecutionProvider"])
        return self.session

    def classify(self, pixels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Class ids ``(H - 2*pad, W - 2*pad)`` of a padded block ``(bands, H, W)``; 255: none."""
        x = np.array(pixels, dtype=np.float32, copy=True)
        if mask is not None:
            invalid = np.asarray(mask) == 0
            if invalid.ndim == 3:
                invalid = invalid.any(axis=0)
            x[:, invalid] = np.nan
        probs = self._session().run(None, {"raw": x[None]})[0][0]
        pad = int(self.json_info["ModelPadding"])
        height, width = x.shape[1] - 2 * pad, x.shape[2] - 2 * pad
        out = np.full((height, width), NODATA, dtype=np.uint8)
        h, w = min(height, probs.shape[1]), min(width, probs.shape[2])
        p = probs[:, :h, :w]
        out[:h, :w] = np.where(p.sum(axis=0) > 0, p.argmax(axis=0), NODATA)
        return out

    def updatePixels(self, tlc: Any, shape: Any, props: Any, **pixelBlocks: Any) -> dict[str, Any]:
        classes = self.classify(pixelBlocks["raster_pixels"], pixelBlocks.get("raster_mask"))
        pixelBlocks["output_pixels"] = classes[None].astype(props.get("pixelType", "u1"))
        pixelBlocks["output_mask"] = (classes != NODATA)[None].astype(np.uint8)
        return pixelBlocks
