"""Labelled chips without georeferencing: many small ``(channel, h, w)`` arrays in classes.

Two layouts are read by :func:`load_chips`:

- a **folder with one sub-folder per class** (the sub-folder's name is the class
  name) holding one chip per file: ``.npy`` (``(h, w)`` or ``(c, h, w)``), ``.npz``
  (one array, or the array ``chip`` / ``arr_0``) or GeoTIFF (``.tif``/``.tiff``;
  nodata becomes NaN, the georeferencing is ignored);
- **one file** with all chips: ``.npz`` with arrays ``chips`` ``(n, c, h, w)`` and
  ``labels`` ``(n,)`` (and optionally ``class_names``, ``band_names``), or netCDF
  with variables ``chips`` (dims ``(n, channel, y, x)``) and ``labels`` (``(n,)``);
  class names as the attribute ``class_names`` (of the file or of ``labels``) or a
  ``class_names`` variable.

All chips share one shape ``(c, h, w)`` with ``h == w``: that side is the patch
size of a model trained on them. Invalid pixels are NaN.

This module holds the chip set (:class:`ChipSet`), the per-channel arithmetic on
chips that training and evaluation share, and the entry points that recognise and
load a chip dataset; the reader of each layout is in
:mod:`georaster_cnn._chip_readers`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from georaster_cnn.errors import InputError
from georaster_cnn.formats import INPUT_SUFFIXES, NETCDF_SUFFIXES
from georaster_cnn.stats import ChannelStats, merged_stats

__all__ = [
    "CHIP_FILE_SUFFIXES",
    "ChipSet",
    "chip_stats",
    "chip_valid_fraction",
    "is_chip_dataset",
    "load_chips",
    "normalize_chips",
]

log = logging.getLogger(__name__)

#: Suffixes of one-chip files inside a class sub-folder.
CHIP_FILE_SUFFIXES = frozenset({".npy", ".npz", ".tif", ".tiff"})
#: Suffixes of a single file holding all chips: NumPy archives and the netCDF family.
CHIPSET_FILE_SUFFIXES = frozenset({".npz", *NETCDF_SUFFIXES})

#: Files whose presence at a folder's top level means "a folder of rasters", not chips.
_RASTER_LIKE = frozenset(INPUT_SUFFIXES)


@dataclass(frozen=True, eq=False)
class ChipSet:
    """Labelled chips in memory.

    Attributes
    ----------
    chips
        ``(n, c, h, w)`` float32, NaN = invalid pixel; ``h == w``.
    labels
        ``(n,)`` int64 class ids ``0..K-1``.
    class_names
        ``K`` names; index ``k`` is class id ``k``.
    band_names
        ``c`` channel names (default ``band_1 ...``).
    source
        Where the chips came from (a folder or file name).
    source_dtype
        Data type of the chips on disk (``"mixed"`` when they differ).
    """

    chips: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    band_names: tuple[str, ...]
    source: str = "<in-memory>"
    source_dtype: str = "float32"

    def __post_init__(self) -> None:
        x = np.asarray(self.chips, dtype=np.float32)
        y = np.asarray(self.labels)
        if x.ndim != 4:
            raise InputError(
                f"{self.source}: chips must be a (n, channel, y, x) array; found shape {x.shape}"
            )
        if x.shape[2] != x.shape[3]:
            raise InputError(
                f"{self.source}: chips are {x.shape[2]} x {x.shape[3]} pixels; chips must be "
                "square (their side is the model's patch size): crop or pad them"
            )
        if y.shape != (x.shape[0],):
            raise InputError(
                f"{self.source}: {x.shape[0]} chips but labels of shape {y.shape}; need one "
                "label per chip"
            )
        if y.size and (np.issubdtype(y.dtype, np.floating) and (y != np.round(y)).any()):
            raise InputError(f"{self.source}: labels must be integer class ids")
        y = y.astype(np.int64)
        names = tuple(str(n) for n in self.class_names)
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise InputError(
                f"{self.source}: label {bad} is not a class id 0..{len(names) - 1} "
                f"({', '.join(names)}); give class names for every id"
            )
        bands = tuple(str(b) for b in self.band_names) or tuple(
            f"band_{i + 1}" for i in range(x.shape[1])
        )
        if len(bands) != x.shape[1]:
            raise InputError(
                f"{self.source}: {len(bands)} band name(s) for {x.shape[1]} channel(s)"
            )
        object.__setattr__(self, "chips", x)
        object.__setattr__(self, "labels", y)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "band_names", bands)

    def __len__(self) -> int:
        return int(self.chips.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channel, h, w)`` of every chip."""
        c, h, w = self.chips.shape[1:]
        return int(c), int(h), int(w)

    @property
    def patch_size(self) -> int:
        """Chip side in pixels."""
        return int(self.chips.shape[2])

    @property
    def class_counts(self) -> np.ndarray:
        """Chips per class id."""
        return np.bincount(self.labels, minlength=len(self.class_names))


# --------------------------------------------------------------------------- helpers


def chip_valid_fraction(chips: np.ndarray) -> np.ndarray:
    """Per chip: share of pixels valid (finite) in every channel."""
    if chips.shape[0] == 0:
        return np.zeros(0)
    return np.isfinite(chips).all(axis=1).mean(axis=(1, 2))


def chip_stats(chips: np.ndarray, band_names: Sequence[str]) -> ChannelStats:
    """Per-channel statistics of ``(n, c, h, w)`` chips, NaN ignored.

    Raises
    ------
    InputError
        A channel has no valid value.
    """
    step = max(1, 2**22 // max(1, int(np.prod(chips.shape[1:]))))  # ~16 MiB a part
    parts = [
        ChannelStats.from_array(np.moveaxis(chips[i : i + step], 1, 0), band_names)
        for i in range(0, max(1, chips.shape[0]), step)
    ]
    return merged_stats(parts, empty="channel(s) {names} have no valid value in any chip")


def normalize_chips(chips: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """``(x - mean) / std`` per channel (constant channels: std 1), then NaN -> 0."""
    std = stats.scale_std
    mean = stats.mean.astype(np.float32)[None, :, None, None]
    scale = (1.0 / std).astype(np.float32)[None, :, None, None]
    out = (chips.astype(np.float32) - mean) * scale
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- reading


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def is_chip_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like chips for :func:`load_chips`, not a raster.

    True for a folder whose (visible) entries include sub-folders and no raster
    files at its top level, an ``.npz`` file, and a netCDF file with a ``chips``
    variable.
    """
    p = Path(path)
    if p.is_dir():
        entries = [e for e in p.iterdir() if _visible(e)]
        rasters = [e for e in entries if e.is_file() and e.suffix.lower() in _RASTER_LIKE]
        return any(e.is_dir() for e in entries) and not rasters
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return p.is_file()
    if suffix in CHIPSET_FILE_SUFFIXES and p.is_file():
        try:
            import xarray as xr

            with xr.open_dataset(p, decode_cf=False) as ds:
                return "chips" in ds.variables
        except Exception:  # not readable as netCDF: let the raster reader explain
            return False
    return False


def load_chips(
    path: str | os.PathLike[str], *, class_names: Sequence[str] | None = None
) -> ChipSet:
    """Read labelled chips from a class-folder tree, an ``.npz`` or a netCDF file.

    Parameters
    ----------
    path
        A folder with one sub-folder per class (``.npy``, ``.npz`` or GeoTIFF chips),
        or one ``.npz`` / netCDF file with ``chips`` and ``labels`` (see the module
        documentation).
    class_names
        For a folder: the classes in id order (sub-folders by these names; default:
        all sub-folders sorted by name). For a file: names of ids ``0..K-1``,
        overriding names stored in the file (default: stored, else ``class_0 ...``).

    Returns
    -------
    ChipSet

    Raises
    ------
    InputError
        Unreadable files, chips of different shapes (the message names the chip,
        its shape and the expected one), non-square chips, bad labels.
    TrainingError
        A class (sub-folder) without chips. (Fewer than two classes is an error of
        :func:`~georaster_cnn.train_chips`, not here: a test set may hold one class.)

    Examples
    --------
    >>> chips = load_chips("chips/")  # chips/water/*.npy, chips/forest/*.npy  # doctest: +SKIP
    >>> chips.chips.shape, chips.class_names  # doctest: +SKIP
    ((200, 1, 64, 64), ('forest', 'water'))
    """
    # Imported here: the readers build ChipSets, so they import this module.
    from georaster_cnn._chip_readers import _load_folder, _load_netcdf, _load_npz

    p = Path(path)
    if p.is_dir():
        chipset = _load_folder(p, class_names)
    elif not p.exists():
        raise InputError(f"{p}: no such file or folder")
    elif p.suffix.lower() == ".npz":
        chipset = _load_npz(p, class_names)
    elif p.suffix.lower() in CHIPSET_FILE_SUFFIXES:
        chipset = _load_netcdf(p, class_names)
    else:
        raise InputError(
            f"{p}: not a chip dataset; give a folder with one sub-folder per class, an .npz "
            "or a netCDF file with 'chips' and 'labels'"
        )
    log.info(
        "%s: %d chips of shape %s in %d classes",
        chipset.source,
        len(chipset),
        chipset.shape,
        len(chipset.class_names),
    )
    return chipset
