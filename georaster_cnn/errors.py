"""Exceptions raised by georaster_cnn.

Every error derives from :class:`GeorasterCNNError`; the leaves also inherit the
builtin that best describes them, so callers may catch either.
"""

from __future__ import annotations

__all__ = [
    "BandMismatchError",
    "ClusterError",
    "DataRangeWarning",
    "ExportError",
    "GeorasterCNNError",
    "InputError",
    "ModelFileError",
    "NodataWarning",
    "OutputExistsError",
    "ReadError",
    "StacReadWarning",
    "TrainingError",
    "ValidationWarning",
]


class GeorasterCNNError(Exception):
    """Root of all georaster_cnn errors."""


class InputError(GeorasterCNNError, ValueError):
    """An input raster, label set or option is not usable as given."""


class BandMismatchError(InputError):
    """A raster's bands do not match what the model was trained on."""


class ReadError(GeorasterCNNError, OSError):
    """A file could not be opened or its pixel blocks could not be read."""


class ModelFileError(GeorasterCNNError, ValueError):
    """A model file is missing, corrupt, or of an unknown format version."""


class OutputExistsError(GeorasterCNNError, FileExistsError):
    """An output exists and overwriting was not asked for."""


class ClusterError(GeorasterCNNError, RuntimeError):
    """The cluster cannot do the work: no worker left, or the scheduler gone."""


class TrainingError(GeorasterCNNError, RuntimeError):
    """Training could not proceed (e.g. no labelled windows)."""


class ExportError(GeorasterCNNError, RuntimeError):
    """A model cannot be exported (an operator ONNX lacks), or its export disagrees with torch."""


class DataRangeWarning(UserWarning):
    """Input data look very different from the data the model was trained on."""


class ValidationWarning(UserWarning):
    """A training run's validation set says little: tiny, or missing a class training has."""


class NodataWarning(DataRangeWarning):
    """A declared nodata value cannot occur in the data (outside its type's range): nothing is masked by it."""


class StacReadWarning(UserWarning):
    """A STAC asset left out of a mosaic (``skip_failed``): its href and why."""
