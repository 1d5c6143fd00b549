"""georaster_cnn: classify geospatial rasters with CNNs, get back a georeferenced map.

Pipeline: :func:`open_raster` -> :func:`compute_stats` / :func:`train` ->
:func:`predict` (lazy, blockwise over Dask) -> :func:`write_prediction`.

Importing the package is cheap: each public name is imported from its module on
first access (PEP 562), so ``import georaster_cnn`` does not load torch, Dask or
GDAL until a name that needs them is used.
"""

from __future__ import annotations

import importlib
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule of ``georaster_cnn`` that defines it, one line per name.
#: A new public name also goes into the ``TYPE_CHECKING`` imports and ``__all__`` below;
#: tests/test_import.py checks that the three agree and that every name resolves.
_LAZY: dict[str, str] = {
    "ARCHITECTURES": "models",
    "CLASS_NODATA": "predict",
    "BandMismatchError": "errors",
    "ChannelStats": "stats",
    "ChipSet": "chipdata",
    "ClusterSession": "cluster",
    "DataRangeWarning": "errors",
    "EvaluationReport": "report",
    "GeoModel": "modelfile",
    "GeorasterCNNError": "errors",
    "InputError": "errors",
    "ModelFileError": "errors",
    "OutputExistsError": "errors",
    "PatchGrid": "geometry",
    "ReadError": "errors",
    "TrainingError": "errors",
    "ValidationWarning": "errors",
    "build_model": "models",
    "check_inputs": "predict",
    "compute_stats": "stats",
    "evaluate": "evaluate",
    "evaluate_chips": "evaluate",
    "inspect_raster": "inspection",
    "is_chip_dataset": "chipdata",
    "is_vector_file": "formats",
    "load_chips": "chipdata",
    "load_model": "modelfile",
    "morans_i": "spatial",
    "normalize": "stats",
    "open_labels": "labels",
    "open_raster": "reader",
    "output_transform": "geometry",
    "predict": "predict",
    "read_vector_labels": "vector_labels",
    "register_architecture": "models",
    "resolve_device": "_inference",
    "save_model": "modelfile",
    "train": "train",
    "track_progress": "cluster",
    "train_chips": "train",
    "use_scheduler": "cluster",
    "valid_mask": "reader",
    "vectorize": "vectorize",
    "write_prediction": "writer",
    "write_qml": "styles",
    "write_quicklook": "styles",
    "write_vectors": "vectorize",
}

if TYPE_CHECKING:  # the same names, imported eagerly for type checkers only
    from georaster_cnn._inference import resolve_device
    from georaster_cnn.chipdata import ChipSet, is_chip_dataset, load_chips
    from georaster_cnn.cluster import ClusterSession, track_progress, use_scheduler
    from georaster_cnn.errors import (
        BandMismatchError,
        DataRangeWarning,
        GeorasterCNNError,
        InputError,
        ModelFileError,
        OutputExistsError,
        ReadError,
        TrainingError,
        ValidationWarning,
    )
    from georaster_cnn.evaluate import evaluate, evaluate_chips
    from georaster_cnn.formats import is_vector_file
    from georaster_cnn.geometry import PatchGrid, output_transform
    from georaster_cnn.inspection import inspect_raster
    from georaster_cnn.labels import open_labels
    from georaster_cnn.modelfile import GeoModel, load_model, save_model
    from georaster_cnn.models import ARCHITECTURES, build_model, register_architecture
    from georaster_cnn.predict import CLASS_NODATA, check_inputs, predict
    from georaster_cnn.reader import open_raster, valid_mask
    from georaster_cnn.report import EvaluationReport
    from georaster_cnn.spatial import morans_i
    from georaster_cnn.stats import ChannelStats, compute_stats, normalize
    from georaster_cnn.styles import write_qml, write_quicklook
    from georaster_cnn.train import train, train_chips
    from georaster_cnn.vector_labels import read_vector_labels
    from georaster_cnn.vectorize import vectorize, write_vectors
    from georaster_cnn.writer import write_prediction

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
    "GeoModel",
    "GeorasterCNNError",
    "InputError",
    "ModelFileError",
    "OutputExistsError",
    "PatchGrid",
    "ReadError",
    "TrainingError",
    "ValidationWarning",
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

    def __getattr__(name: str) -> Any:
        """Import a public name from its submodule on first access, then keep it."""
        try:
            submodule = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(ModuleType):
    """The package's module type: a submodule never hides the public name it shares.

    Importing ``georaster_cnn.predict`` makes the import system set the package
    attribute ``predict`` to that module, which would hide the function of the
    same name. The binding is refused here, so ``georaster_cnn.predict`` is always
    the function (resolved by ``__getattr__``); the module stays reachable through
    ``sys.modules`` and ``importlib.import_module``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _LAZY
            and isinstance(value, ModuleType)
            and value.__name__ == f"{__name__}.{name}"
        ):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
