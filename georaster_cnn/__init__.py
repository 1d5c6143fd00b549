"""georaster_cnn: classify geospatial rasters with CNNs, get back a georeferenced map.

Pipeline: :func:`open_raster` -> :func:`compute_stats` / :func:`train` ->
:func:`predict` (lazy, blockwise over Dask) -> :func:`write_prediction`.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from georaster_cnn.chipdata import ChipSet, is_chip_dataset, load_chips
from georaster_cnn.errors import (
    BandMismatchError,
    DataRangeWarning,
    GeorasterCNNError,
    InputError,
    ModelFileError,
    OutputExistsError,
    ReadError,
    TrainingError,
)
from georaster_cnn.evaluate import EvaluationReport, evaluate, evaluate_chips
from georaster_cnn.geometry import PatchGrid, output_transform
from georaster_cnn.modelfile import GeoModel, load_model, save_model
from georaster_cnn.models import ARCHITECTURES, build_model, register_architecture, resolve_device
from georaster_cnn.predict import CLASS_NODATA, check_inputs, predict
from georaster_cnn.reader import open_raster, valid_mask
from georaster_cnn.spatial import inspect_raster, morans_i
from georaster_cnn.stats import ChannelStats, compute_stats, normalize
from georaster_cnn.styles import write_qml, write_quicklook
from georaster_cnn.train import open_labels, train, train_chips
from georaster_cnn.vector_labels import is_vector_file, read_vector_labels
from georaster_cnn.vectorize import vectorize, write_vectors
from georaster_cnn.writer import write_prediction

try:
    __version__ = version("georaster-cnn")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ARCHITECTURES",
    "CLASS_NODATA",
    "BandMismatchError",
    "ChannelStats",
    "ChipSet",
    "DataRangeWarning",
    "EvaluationReport",
    "GeoModel",
    "GeorasterCNNError",
    "InputError",
    "ModelFileError",
    "OutputExistsError",
    "PatchGrid",
    "ReadError",
    "TrainingError",
    "__version__",
    "build_model",
    "check_inputs",
    "compute_stats",
    "evaluate",
    "evaluate_chips",
    "inspect_raster",
    "is_chip_dataset",
    "is_vector_file",
    "load_chips",
    "load_model",
    "morans_i",
    "normalize",
    "open_labels",
    "open_raster",
    "output_transform",
    "predict",
    "read_vector_labels",
    "register_architecture",
    "resolve_device",
    "save_model",
    "train",
    "train_chips",
    "valid_mask",
    "vectorize",
    "write_prediction",
    "write_qml",
    "write_quicklook",
    "write_vectors",
]
