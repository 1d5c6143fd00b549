"""Options: every default and range check of the public functions, in one place.

The API validates here, once; the CLI passes its flags through unchanged and only
rewords the library's messages at its edge (library messages name the Python
keywords, ``stride=``, never a command-line flag). Part of the core: it imports
nothing but :mod:`georaster_cnn.errors`. Devices stay names here (``"auto"``,
``"cuda:0"``, or a ``torch.device`` passed through); the classifier resolves them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from georaster_cnn.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_COVER",
    "DEFAULT_MIN_VALID",
    "DEFAULT_PATCH",
    "DEFAULT_PATIENCE",
    "DEFAULT_TRAIN_BATCH_SIZE",
    "DEFAULT_VAL_BLOCK",
    "DEFAULT_VAL_FRACTION",
    "InferenceOptions",
    "ModelLimits",
    "check_batch_size",
    "check_device",
    "check_epochs",
    "check_fraction",
    "check_max_pixels",
    "check_min_valid",
    "check_non_negative",
    "check_patience",
    "check_positive",
    "check_stride",
    "MAX_PATCH_SIZE",
    "MAX_WINDOW_BYTES",
    "patch_size_problem",
    "control_character",
    "evaluation_stride",
    "training_stride",
]

#: Window side of new models, in pixels.
DEFAULT_PATCH = 64
#: Windows per model call.
DEFAULT_BATCH_SIZE = 256
#: Minimum valid fraction of a window for it to get a class (models store their own).
DEFAULT_MIN_VALID = 0.5

# Training defaults (train and train_chips; the CLI shows these).
DEFAULT_ARCH = "cnn_dense"
DEFAULT_EPOCHS = 10
DEFAULT_TRAIN_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_VAL_FRACTION = 0.2
#: Side of the spatially blocked validation squares, in pixels.
DEFAULT_VAL_BLOCK = 256
#: Minimum labelled fraction of a training window.
DEFAULT_MIN_COVER = 0.5
#: Epochs without a better validation loss before training stops (0 or None: never).
DEFAULT_PATIENCE = 5
#: Largest raster :func:`~georaster_cnn.open_raster` accepts, in pixel values
#: (height x width x bands): 2**36, about 69 billion (256 GiB as float32).
DEFAULT_MAX_PIXELS = 2**36


def check_positive(name: str, value: Any, *, unit: str = "") -> int:
    """``value`` as an ``int >= 1``, or an :class:`InputError` naming ``name=``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}= must be a whole number >= 1{unit}; found {value!r}")
    return int(value)


def check_non_negative(name: str, value: Any, *, unit: str = "") -> float:
    """``value`` as a float ``>= 0`` (NaN refused), or an :class:`InputError` naming ``name=``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not v >= 0:
        detail = f" ({unit})" if unit else ""
        raise InputError(f"{name}= must be >= 0{detail}; found {value!r}")
    return v


def check_max_pixels(max_pixels: Any) -> int:
    """The size limit of an input in pixel values (height x width x bands), ``>= 1``."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InputError(
            "max_pixels= must be a whole number >= 1 (pixel values: height x width x bands; "
            f"default {DEFAULT_MAX_PIXELS:,} = 2**36); found {max_pixels!r}"
        )
    return int(max_pixels)


def check_patience(patience: Any) -> int | None:
    """Early-stopping patience: ``None`` or a whole number ``>= 0`` (0 turns it off)."""
    if patience is None:
        return None
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise InputError(
            f"patience= must be a whole number >= 0 (0 = no early stopping); found {patience!r}"
        )
    return patience


def check_stride(stride: Any, patch: int) -> int:
    """A stride between 1 and the patch size (windows farther apart would skip pixels)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= patch:
        raise InputError(
            f"stride= must be between 1 and the patch size {patch}; found {stride!r}. "
            f"Pick a stride such as {patch}, {max(1, patch // 2)} or {max(1, patch // 4)} "
            "(windows farther apart than the patch size would skip pixels)."
        )
    return int(stride)


#: Characters no name may hold: C0 controls, DEL, C1 controls, lone surrogates.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: The same, less tab and line feed: allowed in free text (e.g. a model's provenance).
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def control_character(text: str, *, free_text: bool = False) -> re.Match[str] | None:
    """The first control character (or lone surrogate) of ``text``, or ``None``.

    The one rule for names that reach XML (QGIS styles, GDAL sidecars), CSV reports
    and terminals: class, band and architecture names hold none; ``free_text``
    allows tab and line feed.
    """
    return (_CONTROL_IN_TEXT if free_text else _CONTROL).search(text)


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(device: Any) -> str | torch.device:
    """A device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) or a ``torch.device``.

    Only the name is checked here (the core does not import torch); whether the
    device is available is decided where the model meets it
    (:func:`~georaster_cnn.resolve_device`).
    """
    if isinstance(device, str):
        if _DEVICE_RE.match(device):
            return device
    elif type(device).__name__ == "device" and type(device).__module__.startswith("torch"):
        return device
    raise InputError(f"unknown device {device!r}; choose auto, cpu, cuda, cuda:N or mps")


def check_batch_size(batch_size: Any) -> int:
    """Windows per model call, ``>= 1``."""
    return check_positive("batch_size", batch_size)


def check_epochs(epochs: Any) -> int:
    """Training epochs, ``>= 1``."""
    return check_positive("epochs", epochs)


def check_fraction(
    name: str, value: Any, *, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a float in ``[0, 1]`` (ends open as asked), or an :class:`InputError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    ok = (v > 0.0 if low_open else v >= 0.0) and (v < 1.0 if high_open else v <= 1.0)
    if isinstance(value, bool) or not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise InputError(f"{name}= must be in {interval}; found {value!r}")
    return v


def check_min_valid(min_valid: Any) -> float:
    """Minimum valid fraction of a window, in ``(0, 1]``."""
    return check_fraction("min_valid", min_valid, low_open=True)


class ModelLimits(Protocol):
    """What the option checks need of a model (:class:`~georaster_cnn.GeoModel` has them)."""

    @property
    def patch_size(self) -> int: ...

    @property
    def min_valid(self) -> float: ...

    @property
    def provenance(self) -> Mapping[str, Any]: ...


#: The largest window side (pixels) a network may be built for or a model card may name:
#: 64x the default patch, far beyond what a window classifier needs.
MAX_PATCH_SIZE = 4096
#: The largest window in memory, ``patch_size**2 * bands * 4`` bytes (float32): 256 MiB,
#: e.g. a 4096-pixel patch of 4 bands or a 1024-pixel patch of 64 bands. Every batch of
#: windows is a multiple of this, so a larger window would exhaust memory on each tile.
MAX_WINDOW_BYTES = 2**28


def patch_size_problem(patch_size: object, in_channels: int) -> str | None:
    """What is wrong with ``patch_size`` for windows of ``in_channels`` bands, ``None`` if nothing.

    The one rule on patch sizes, used by the card validator (on save and on load) and
    by :func:`~georaster_cnn.build_model` and training, before any window is cut: a whole number from 1 to
    :data:`MAX_PATCH_SIZE` whose float32 window (``patch_size**2 * in_channels * 4``
    bytes) stays within :data:`MAX_WINDOW_BYTES`.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        return f"should be a whole number from 1 to {MAX_PATCH_SIZE}; found {patch_size!r}"
    if not 1 <= patch_size <= MAX_PATCH_SIZE:
        return f"should be from 1 to {MAX_PATCH_SIZE} pixels (MAX_PATCH_SIZE); found {patch_size}"
    need = patch_size * patch_size * max(in_channels, 1) * 4
    if need > MAX_WINDOW_BYTES:
        return (
            f"gives windows of {need / 2**20:,.0f} MiB ({patch_size} x {patch_size} pixels x "
            f"{in_channels} bands x 4 bytes); the limit is {MAX_WINDOW_BYTES // 2**20} MiB "
            "per window (MAX_WINDOW_BYTES)"
        )
    return None


def training_stride(patch: int, stride: int | None = None) -> int:
    """Window spacing when cutting training windows: ``patch // 4`` unless given."""
    return check_stride(max(1, patch // 4) if stride is None else stride, patch)


def evaluation_stride(model: ModelLimits, stride: int | None = None) -> int:
    """Cell size of an evaluation: the model's training stride unless given.

    Evaluation compares every labelled cell, so it defaults to the finer grid the
    model was trained on, not to the patch size that :func:`predict` uses.
    """
    if stride is None:
        provenance: Mapping[str, Any] = model.provenance
        stride = int(provenance.get("stride") or max(1, model.patch_size // 4))
    return check_stride(stride, model.patch_size)


@dataclass(frozen=True)
class InferenceOptions:
    """Validated options of one :func:`predict` or :func:`evaluate` call.

    Build with :meth:`resolve`. The device is checked here and resolved to an
    available :class:`torch.device` by the classifier, once per call.

    Attributes
    ----------
    stride
        Output cell size in input pixels, ``1 <= stride <= patch size``.
    batch_size
        Windows per model call.
    min_valid
        Minimum valid fraction of a window for it to get a class.
    device
        The device the model runs on: a name (``auto``, ``cpu``, ``cuda``,
        ``cuda:N``, ``mps``) or a :class:`torch.device`.
    """

    stride: int
    batch_size: int
    min_valid: float
    device: str | torch.device

    @classmethod
    def resolve(
        cls,
        model: ModelLimits,
        *,
        stride: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_valid: float | None = None,
        device: str | torch.device = "auto",
        default_stride: int | None = None,
        options: InferenceOptions | None = None,
    ) -> InferenceOptions:
        """Apply the defaults and checks.

        Parameters
        ----------
        model
            The model the options are for (its patch size bounds the stride, its
            ``min_valid`` is the default).
        stride
            Default: ``default_stride``, else the model's patch size (windows tile
            the raster).
        batch_size, min_valid, device
            As for :func:`~georaster_cnn.predict`.
        default_stride
            The caller's default when ``stride`` is None.
        options
            Options resolved before (e.g. once for a batch of tiles): returned as
            they are, after checking that they fit ``model``, instead of the
            separate keywords, which must then keep their defaults.

        Raises
        ------
        InputError
            A value out of range, or an unknown device name.
        """
        if options is not None:
            return cls._given(model, options, stride=stride, batch_size=batch_size,
                              min_valid=min_valid, device=device)  # fmt: skip
        if stride is None:
            stride = model.patch_size if default_stride is None else default_stride
        return cls(
            stride=check_stride(stride, model.patch_size),
            batch_size=check_batch_size(batch_size),
            min_valid=check_min_valid(model.min_valid if min_valid is None else min_valid),
            device=check_device(device),
        )

    @classmethod
    def _given(cls, model: ModelLimits, options: Any, **keywords: Any) -> InferenceOptions:
        """``options`` checked against ``model``; refused beside a keyword it would ignore."""
        if not isinstance(options, InferenceOptions):
            raise InputError(
                f"options= must be an InferenceOptions; found {type(options).__name__}"
            )
        defaults = {"stride": None, "batch_size": DEFAULT_BATCH_SIZE, "min_valid": None,
                    "device": "auto"}  # fmt: skip
        also = [k for k, v in keywords.items() if v is not defaults[k] and v != defaults[k]]
        if also:
            raise InputError(
                f"options= already holds {', '.join(also)}; give either options= or "
                f"{', '.join(f'{k}=' for k in also)}"
            )
        check_stride(options.stride, model.patch_size)
        return options
