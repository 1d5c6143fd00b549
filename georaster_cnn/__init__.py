"""georaster_cnn: classify geospatial rasters with CNNs, get back a georeferenced map.

Pipeline: :func:`open_raster` -> :func:`compute_stats` / :func:`train` ->
:func:`predict` (lazy, blockwise over Dask) -> :func:`write_prediction`.

Importing the package is cheap: each public name is imported from its module on
first access (PEP 562, :mod:`georaster_cnn._lazy`), so ``import georaster_cnn`` does
not load torch, Dask or GDAL until a name that needs them is used.

The package is layered; a module imports only from its own layer and those below
(``tests/test_layers.py`` checks it):

* the core (``errors``, ``options``, ``geometry``, ``stats``, ``chips``, ``quiet``,
  ``_lazy``): imports nothing of the package above it;
* :mod:`georaster_cnn.cluster`: where Dask work runs (scheduler, shipping, progress);
* :mod:`georaster_cnn.io`: readers, formats, the class-map contract, writers, staging;
* :mod:`georaster_cnn.model`: architectures, the model file, the classifier;
* :mod:`georaster_cnn.prediction`: the blockwise prediction graph;
* :mod:`georaster_cnn.training`: labels, windows, splits, chips, the fit loop;
* :mod:`georaster_cnn.evaluation`: the report and the assessment;
* :mod:`georaster_cnn.products`: vectors, styles, spatial statistics, inspection.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from georaster_cnn._lazy import lazy_exports

#: Public name -> the module of ``georaster_cnn`` that defines it, one line per name.
#: A new public name also goes into the ``TYPE_CHECKING`` imports and ``__all__`` below;
#: tests/test_import.py checks that the three agree and that every name resolves.
_LAZY: dict[str, str] = {
    "ARCHITECTURES": "model.architectures",
    "CLASS_NODATA": "io.classmap",
    "BandMismatchError": "errors",
    "ChannelStats": "stats",
    "ChipSet": "training.chipdata",
    "ClusterSession": "cluster",
    "DataRangeWarning": "errors",
    "EvaluationReport": "evaluation.report",
    "ExportError": "errors",
    "GeoModel": "model.modelfile",
    "GeorasterCNNError": "errors",
    "InputError": "errors",
    "ModelFileError": "errors",
    "NodataWarning": "errors",
    "StacReadWarning": "errors",
    "OutputExistsError": "errors",
    "PatchGrid": "geometry",
    "RasterGrid": "geometry",
    "ReadError": "errors",
    "TrainingError": "errors",
    "ValidationWarning": "errors",
    "WindowStore": "training.store",
    "build_model": "model.architectures",
    "build_window_store": "training.store",
    "checkpoint_path": "training.checkpoint",
    "check_inputs": "prediction.blockwise",
    "compute_stats": "stats",
    "device_name": "model._inference",
    "evaluate": "evaluation.assessment",
    "evaluate_chips": "evaluation.chipwise",
    "export_model": "products.export",
    "inspect_raster": "products.inspection",
    "is_chip_dataset": "training.chipfiles",
    "is_vector_file": "io.formats",
    "load_chips": "training.chipfiles",
    "load_model": "model.modelfile",
    "morans_i": "products.spatial",
    "normalize": "stats",
    "open_labels": "training.labels",
    "open_window_store": "training.store",
    "open_raster": "io.reader",
    "open_stac": "io.stac",
    "output_transform": "geometry",
    "predict": "prediction.blockwise",
    "read_vector_labels": "training.vector_labels",
    "register_architecture": "model.architectures",
    "resolve_device": "model._inference",
    "save_model": "model.modelfile",
    "train": "training.trainer",
    "track_progress": "cluster",
    "train_chips": "training.trainer",
    "use_scheduler": "cluster",
    "valid_mask": "io.reader",
    "vectorize": "products.polygons",
    "write_prediction": "io.writer",
    "write_qml": "products.styles",
    "write_quicklook": "products.styles",
    "write_vectors": "products.polygons",
}

if TYPE_CHECKING:  # the same names, imported eagerly for type checkers only
    from georaster_cnn.cluster import ClusterSession, track_progress, use_scheduler
    from georaster_cnn.errors import (
        BandMismatchError,
        DataRangeWarning,
        ExportError,
        GeorasterCNNError,
        InputError,
        ModelFileError,
        NodataWarning,
        OutputExistsError,
        ReadError,
        StacReadWarning,
        TrainingError,
        ValidationWarning,
    )
    from georaster_cnn.evaluation.assessment import evaluate
    from georaster_cnn.evaluation.chipwise import evaluate_chips
    from georaster_cnn.evaluation.report import EvaluationReport
    from georaster_cnn.geometry import PatchGrid, RasterGrid, output_transform
    from georaster_cnn.io.classmap import CLASS_NODATA
    from georaster_cnn.io.formats import is_vector_file
    from georaster_cnn.io.reader import open_raster, valid_mask
    from georaster_cnn.io.stac import open_stac
    from georaster_cnn.io.writer import write_prediction
    from georaster_cnn.model._inference import device_name, resolve_device
    from georaster_cnn.model.architectures import ARCHITECTURES, build_model, register_architecture
    from georaster_cnn.model.modelfile import GeoModel, load_model, save_model
    from georaster_cnn.prediction.blockwise import check_inputs, predict
    from georaster_cnn.products.export import export_model
    from georaster_cnn.products.inspection import inspect_raster
    from georaster_cnn.products.polygons import vectorize, write_vectors
    from georaster_cnn.products.spatial import morans_i
    from georaster_cnn.products.styles import write_qml, write_quicklook
    from georaster_cnn.stats import ChannelStats, compute_stats, normalize
    from georaster_cnn.training.checkpoint import checkpoint_path
    from georaster_cnn.training.chipdata import ChipSet
    from georaster_cnn.training.chipfiles import is_chip_dataset, load_chips
    from georaster_cnn.training.labels import open_labels
    from georaster_cnn.training.store import WindowStore, build_window_store, open_window_store
    from georaster_cnn.training.trainer import train, train_chips
    from georaster_cnn.training.vector_labels import read_vector_labels

try:
    __version__ = version("georaster-cnn")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ARCHITECTURES",
    "BandMismatchError",
    "CLASS_NODATA",
    "ChannelStats",
    "ChipSet",
    "ClusterSession",
    "DataRangeWarning",
    "EvaluationReport",
    "ExportError",
    "GeoModel",
    "GeorasterCNNError",
    "InputError",
    "ModelFileError",
    "NodataWarning",
    "StacReadWarning",
    "OutputExistsError",
    "PatchGrid",
    "RasterGrid",
    "ReadError",
    "TrainingError",
    "ValidationWarning",
    "WindowStore",
    "__version__",
    "build_model",
    "build_window_store",
    "checkpoint_path",
    "check_inputs",
    "compute_stats",
    "device_name",
    "evaluate",
    "evaluate_chips",
    "export_model",
    "inspect_raster",
    "is_chip_dataset",
    "is_vector_file",
    "load_chips",
    "load_model",
    "morans_i",
    "normalize",
    "open_labels",
    "open_raster",
    "open_window_store",
    "open_stac",
    "output_transform",
    "predict",
    "read_vector_labels",
    "register_architecture",
    "resolve_device",
    "save_model",
    "track_progress",
    "train",
    "train_chips",
    "use_scheduler",
    "valid_mask",
    "vectorize",
    "write_prediction",
    "write_qml",
    "write_quicklook",
    "write_vectors",
]


if not TYPE_CHECKING:  # hidden from type checkers, which would type any unknown name as Any
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
