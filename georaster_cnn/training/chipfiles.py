"""Chip sets on disk: which paths hold chips, and the reader of each layout.

Labelled chips without georeferencing: many small ``(channel, h, w)`` arrays in classes.

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
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from georaster_cnn.errors import GeorasterCNNError, InputError, TrainingError
from georaster_cnn.io.formats import INPUT_SUFFIXES, NETCDF_SUFFIXES
from georaster_cnn.training.chipdata import ChipSet

__all__ = ["CHIP_FILE_SUFFIXES", "CHIPSET_FILE_SUFFIXES", "is_chip_dataset", "load_chips"]

log = logging.getLogger(__name__)

#: Suffixes of one-chip files inside a class sub-folder.
CHIP_FILE_SUFFIXES = frozenset({".npy", ".npz", ".tif", ".tiff"})
#: Suffixes of a single file holding all chips: NumPy archives and the netCDF family.
CHIPSET_FILE_SUFFIXES = frozenset({".npz", *NETCDF_SUFFIXES})

#: Files whose presence at a folder's top level means "a folder of rasters", not chips.
_RASTER_LIKE = frozenset(INPUT_SUFFIXES)

#: Files GDAL or the OS put next to chips; not chips themselves.
_SIDECARS = (".aux.xml", ".ovr", ".msk")


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


def _is_sidecar(p: Path) -> bool:
    return p.name.lower().endswith(_SIDECARS)


def _as_chw(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    raise InputError(
        f"{source}: a chip must be a 2-D (y, x) or 3-D (channel, y, x) array; found shape "
        f"{arr.shape}"
    )


def _float(arr: np.ndarray) -> np.ndarray:
    return np.asarray(arr, dtype=np.float32)


def _read_chip_file(path: Path) -> tuple[np.ndarray, str, tuple[str, ...] | None]:
    """One chip ``(c, h, w)``, its dtype on disk, and band names (GeoTIFF descriptions)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            return _float(_as_chw(arr, str(path))), str(arr.dtype), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = next((k for k in ("chip", "arr_0") if k in keys), None)
                if key is None and len(keys) == 1:
                    key = keys[0]
                if key is None:
                    raise InputError(
                        f"{path}: holds arrays {', '.join(keys) or 'none'}; a chip file needs one "
                        "array, or one named 'chip'"
                    )
                arr = z[key]
            return _float(_as_chw(arr, str(path))), str(arr.dtype), None
        from georaster_cnn.io._gdal_open import open_input

        # chips need no georeferencing (quiet: no warning); by the input rules (a .tif
        # is a GeoTIFF, never a VRT in disguise)
        with open_input(path, quiet=True) as src:
            masked = src.read(masked=True)
            dtype = src.dtypes[0]
            desc = tuple(src.descriptions)
        arr = np.ma.filled(masked.astype(np.float32), np.nan)
        names = desc if all(desc) else None
        return arr, str(dtype), names
    except GeorasterCNNError:
        raise
    except Exception as exc:  # numpy/rasterio raise assorted types for broken files
        raise InputError(f"{path}: cannot read chip ({exc})") from exc


def _shape_error(what: str, found: tuple[int, ...], expected: tuple[int, ...], ref: str) -> str:
    return (
        f"{what} has shape {found} (channel, y, x) but {ref} has {expected}; all chips must "
        "have the same number of channels and size"
    )


def _load_folder(root: Path, class_names: Sequence[str] | None) -> ChipSet:
    subdirs = sorted(e for e in root.iterdir() if e.is_dir() and _visible(e))
    stray = [e.name for e in root.iterdir() if e.is_file() and _visible(e)]
    if stray:
        log.info("%s: ignoring %d file(s) outside class sub-folders", root, len(stray))
    found = {d.name: d for d in subdirs}
    if class_names is None:
        names = [d.name for d in subdirs]
    else:
        names = [str(n) for n in class_names]
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise InputError(
                f"{root}: sub-folder(s) {', '.join(unknown)} are not among the class names "
                f"({', '.join(names)}); add them to the class names or remove the folders"
            )
    if not names:
        raise InputError(
            f"{root}: no class sub-folders; put the chips of each class in a sub-folder named "
            "after the class (e.g. chips/water/*.npy, chips/forest/*.npy)"
        )
    chips: list[np.ndarray] = []
    labels: list[int] = []
    dtypes: set[str] = set()
    band_names: tuple[str, ...] | None = None
    first: tuple[tuple[int, ...], str] | None = None
    for k, name in enumerate(names):
        folder = found.get(name)
        files = (
            sorted(f for f in folder.iterdir() if f.is_file() and _visible(f))
            if folder is not None
            else []
        )
        files = [f for f in files if not _is_sidecar(f)]
        nested = (
            sorted(e.name for e in folder.iterdir() if e.is_dir() and _visible(e))
            if folder is not None
            else []
        )
        if nested:
            raise InputError(
                f"{folder}: holds sub-folder(s) {', '.join(nested[:5])}; chips must be files "
                "directly in their class folder (move them up, or out of the chip set)"
            )
        bad = [f.name for f in files if f.suffix.lower() not in CHIP_FILE_SUFFIXES]
        if bad:
            raise InputError(
                f"{folder}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} are not chip "
                f"files; use {', '.join(sorted(CHIP_FILE_SUFFIXES))}, or move them elsewhere"
            )
        if not files:
            raise TrainingError(
                f"class {name!r} has no chips ({folder or root / name} "
                f"{'is empty' if folder is not None else 'does not exist'}); add chips or "
                "leave the class out"
            )
        for f in files:
            arr, dtype, desc = _read_chip_file(f)
            if first is None:
                first = (arr.shape, str(f))
                band_names = desc
            elif arr.shape != first[0]:
                raise InputError(
                    _shape_error(str(f), arr.shape, first[0], f"the first chip {first[1]}")
                )
            chips.append(arr)
            labels.append(k)
            dtypes.add(dtype)
    x = np.stack(chips)
    return ChipSet(
        chips=x,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=tuple(names),
        band_names=band_names or (),
        source=str(root),
        source_dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
    )


def _names(value: Any) -> list[str] | None:
    """Class or band names stored as an array, a JSON list or a comma-separated string."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return [str(v) for v in json.loads(text)]
        return [v.strip() for v in text.split(",") if v.strip()]
    arr = np.asarray(value)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]


def _from_arrays(
    chips: np.ndarray,
    labels: np.ndarray,
    *,
    source: str,
    class_names: Sequence[str] | None,
    stored_names: list[str] | None,
    band_names: list[str] | None,
) -> ChipSet:
    x = np.asarray(chips)
    if x.ndim == 3:  # (n, y, x): one channel
        x = x[:, None]
    if x.ndim != 4:
        raise InputError(
            f"{source}: 'chips' must have shape (n, channel, y, x) or (n, y, x); found {x.shape}"
        )
    y = np.asarray(labels).ravel()
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise InputError(f"{source}: 'labels' holds NaN; every chip needs a class id")
    names = [str(n) for n in class_names] if class_names is not None else stored_names
    if names is None:
        n_classes = int(y.max()) + 1 if y.size else 0
        names = [f"class_{i}" for i in range(n_classes)]
    return ChipSet(
        chips=x.astype(np.float32),
        labels=y,
        class_names=tuple(names),
        band_names=tuple(band_names or ()),
        source=source,
        source_dtype=str(x.dtype),
    )


def _load_npz(path: Path, class_names: Sequence[str] | None) -> ChipSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.keys())
            missing = {"chips", "labels"} - keys
            if missing:
                raise InputError(
                    f"{path}: needs arrays 'chips' (n, channel, y, x) and 'labels' (n); "
                    f"missing {', '.join(sorted(missing))} (found {', '.join(sorted(keys))})"
                )
            chips, labels = z["chips"], z["labels"]
            stored = _names(z["class_names"]) if "class_names" in keys else None
            bands = _names(z["band_names"]) if "band_names" in keys else None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read chips ({exc})") from exc
    return _from_arrays(
        chips, labels, source=str(path), class_names=class_names, stored_names=stored,
        band_names=bands,
    )  # fmt: skip


def _load_netcdf(path: Path, class_names: Sequence[str] | None) -> ChipSet:
    import xarray as xr

    try:
        ds = xr.open_dataset(path)
    except Exception as exc:  # netCDF backends raise assorted types
        raise InputError(f"{path}: cannot open as netCDF ({exc})") from exc
    with ds:
        missing = {"chips", "labels"} - set(ds.variables)
        if missing:
            raise InputError(
                f"{path}: needs variables 'chips' (n, channel, y, x) and 'labels' (n); missing "
                f"{', '.join(sorted(missing))}"
            )
        var = ds["chips"]
        chips = var.values
        labels = ds["labels"].values
        stored = None
        if "class_names" in ds.variables:
            stored = _names(ds["class_names"].values)
        else:
            stored = _names(ds.attrs.get("class_names") or ds["labels"].attrs.get("class_names"))
        bands = None
        if var.ndim == 4:
            dim = var.dims[1]
            if dim in ds.coords and ds[dim].dtype.kind in "USO":
                bands = _names(ds[dim].values)
        if bands is None and "band_names" in var.attrs:
            bands = _names(var.attrs["band_names"])
    return _from_arrays(
        chips, labels, source=str(path), class_names=class_names, stored_names=stored,
        band_names=bands,
    )  # fmt: skip
