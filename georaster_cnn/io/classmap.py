"""The class-map contract: how a class map describes itself, and reading one back.

A class map is what :func:`~georaster_cnn.write_prediction` writes:

* **GeoTIFF / COG**: band 1 the class index (``uint8``, nodata 255) with a colour
  table; dataset tags ``CLASS_NAMES`` and ``CLASS_COLORS`` (JSON lists),
  ``CLASS_<i>``, ``MODEL_ARCH``, ``MODEL_CHECKSUM``, ``STRIDE``, ``PATCH_SIZE``,
  ``SOURCE``, ``NODATA_CLASS``; optionally one ``uint8`` percent band per class
  (scale 0.01); category names and the colour table also in a GDAL ``.aux.xml``.
* **Zarr / netCDF** (CF-1.8): variable ``class`` (``uint8``, ``_FillValue`` 255,
  ``flag_values``/``flag_meanings``/``flag_colors``, ``class_names``), optionally
  ``probability`` ``(class_name, y, x)`` in percent; the same names as dataset
  attributes (``class_names``, ``class_colors``, ``model_arch``, ...).

The writer builds its tags and attributes here, and :mod:`styles`,
:mod:`vectorize` and label reading use :func:`open_class_map` and
:func:`read_class_info`, so the contract has one home.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from affine import Affine

from georaster_cnn.errors import GeorasterCNNError, InputError, ReadError
from georaster_cnn.io._gdal_open import open_input
from georaster_cnn.io.formats import input_family
from georaster_cnn.options import control_character

__all__ = [
    "CLASS_NODATA",
    "DEFAULT_COLORS",
    "MAX_CLASSES",
    "ClassMap",
    "invalid_class_ids",
    "cf_class_attrs",
    "default_colors",
    "open_class_map",
    "parse_colors",
    "parse_names",
    "pam_xml",
    "prediction_attrs",
    "prediction_classes",
    "read_class_info",
    "tiff_tags",
]

#: Class value of output cells without a prediction.
CLASS_NODATA = 255
#: Most classes a model may have: ids ``0 .. MAX_CLASSES - 1`` (``0..254``), below nodata.
MAX_CLASSES = CLASS_NODATA


def invalid_class_ids(values: np.ndarray) -> np.ndarray:
    """The values that cannot be class ids: not whole numbers, or outside ``0..254``.

    The one home of the class-id range: 255 (:data:`CLASS_NODATA`) is a class map's
    nodata, so a model has at most :data:`MAX_CLASSES` classes.
    """
    v = np.asarray(values, dtype=np.float64)
    return v[(v != np.round(v)) | (v < 0) | (v >= MAX_CLASSES) | np.isnan(v)]


RGB = tuple[int, int, int]

#: Distinct, colour-blind-friendly defaults (Okabe-Ito, then Tableau).
DEFAULT_COLORS: tuple[RGB, ...] = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233),
    (213, 94, 0), (240, 228, 66), (0, 0, 0), (148, 103, 189), (140, 86, 75),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (255, 152, 150), (197, 176, 213),
)  # fmt: skip


def default_colors(n: int) -> tuple[RGB, ...]:
    """``n`` class colours, cycling the default palette with slight shifts past its end."""
    out = []
    for i in range(n):
        r, g, b = DEFAULT_COLORS[i % len(DEFAULT_COLORS)]
        k = (i // len(DEFAULT_COLORS)) * 37
        out.append(((r + k) % 256, (g + k) % 256, (b + k) % 256))
    return tuple(out)


#: Dataset attributes of a prediction, in the order they are written.
PREDICTION_ATTRS = (
    "class_names",
    "class_colors",
    "model_arch",
    "model_checksum",
    "stride",
    "patch_size",
    "min_valid",
    "bands",
    "source",
)


def prediction_attrs(
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    *,
    model_arch: str,
    model_checksum: str,
    stride: int,
    patch_size: int,
    source: str,
    min_valid: float | None = None,
    bands: Sequence[str] = (),
) -> dict[str, Any]:
    """The attributes :func:`~georaster_cnn.predict` puts on its Dataset.

    ``min_valid`` and ``bands`` (the input bands classified, by name) record the
    options a rerun compares before it keeps an existing map
    (:func:`georaster_cnn.io.reuse.differences`).
    """
    extra: dict[str, Any] = {"bands": json.dumps([str(b) for b in bands])} if bands else {}
    if min_valid is not None:
        extra["min_valid"] = float(min_valid)
    return {
        **extra,
        "class_names": json.dumps(list(names)),
        "class_colors": json.dumps([list(c) for c in colors]),
        "model_arch": model_arch,
        "model_checksum": model_checksum,
        "stride": stride,
        "patch_size": patch_size,
        "source": source,
    }


def prediction_classes(attrs: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[RGB, ...]]:
    """The class names and colours a prediction's attributes carry (:func:`prediction_attrs`).

    Raises
    ------
    InputError
        The attributes carry no class names, or names that are not a JSON list of strings.
    """
    if "class_names" not in attrs:
        raise InputError(
            "expected the Dataset returned by georaster_cnn.predict; its attributes have no "
            "'class_names'"
        )
    names = parse_names(attrs["class_names"], "prediction")
    return names, parse_colors(attrs.get("class_colors"), len(names))


def tiff_tags(
    names: Sequence[str], colors: Sequence[Sequence[int]], attrs: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    """``(dataset tags, band-1 tags)`` of a class-map GeoTIFF."""
    tags = {
        "CLASS_NAMES": json.dumps(list(names)),
        "CLASS_COLORS": json.dumps([list(c) for c in colors]),
        "MODEL_ARCH": str(attrs.get("model_arch", "")),
        "MODEL_CHECKSUM": str(attrs.get("model_checksum", "")),
        "STRIDE": str(attrs.get("stride", "")),
        "PATCH_SIZE": str(attrs.get("patch_size", "")),
        "MIN_VALID": str(attrs.get("min_valid", "")),
        "BANDS": str(attrs.get("bands", "")),
        "SOURCE": str(attrs.get("source", "")),
        "NODATA_CLASS": str(CLASS_NODATA),
    }
    per_class = {f"CLASS_{i}": n for i, n in enumerate(names)}
    return {**tags, **per_class}, per_class


def pam_xml(names: Sequence[str], colors: Sequence[Sequence[int]]) -> str:
    """GDAL PAM ``.aux.xml`` of band 1: description, category names, colour table, names tag.

    TIFF has no category names, multi-band TIFFs cannot embed a palette, and a
    byte band's TIFF palette always has 256 entries (QGIS would list 256 classes):
    the colour table, one entry per class, lives in this sidecar, which GDAL, QGIS
    and rasterio read with the file. Nodata (255) is transparent through the
    band's nodata value.
    """
    cats = "".join(f"<Category>{escape(n)}</Category>" for n in names)
    entries = [f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="255"/>' for r, g, b in colors]
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n'
        f"    <Description>class</Description>\n    <CategoryNames>{cats}</CategoryNames>\n"
        f"    <ColorTable>{''.join(entries)}</ColorTable>\n"
        f'    <Metadata><MDI key="CLASS_NAMES">{escape(json.dumps(list(names)))}</MDI></Metadata>\n'
        "  </PAMRasterBand>\n</PAMDataset>\n"
    )


def cf_class_attrs(names: Sequence[str], colors: Sequence[Sequence[int]]) -> dict[str, Any]:
    """CF attributes of the ``class`` variable in Zarr/netCDF class maps."""
    return {
        "long_name": "class",
        "flag_values": np.arange(len(names), dtype=np.uint8),
        # CF: blank-separated words, so blanks inside a name become "_"
        "flag_meanings": " ".join("_".join(str(n).split()) for n in names),
        "flag_colors": " ".join("#{:02x}{:02x}{:02x}".format(*c) for c in colors),
        "class_names": json.dumps(list(names)),
    }


def parse_names(text: Any, source: object) -> tuple[str, ...]:
    """Class names from a ``CLASS_NAMES`` tag / ``class_names`` attribute (a JSON list)."""
    try:
        names = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(
            f"{source}: class names are not valid JSON ({exc}); expected a list of strings "
            "as written by georaster-cnn predict"
        ) from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{source}: class names must be a JSON list of strings; found {text!r}")
    for n in names:
        bad = control_character(n)
        if bad is not None:
            raise InputError(
                f"{source}: class name {n!r} holds the control character {bad.group()!r}; "
                "names may hold none (they would corrupt QGIS styles, sidecars and reports). "
                "Rename the class in the file's CLASS_NAMES tag or class_names attribute"
            )
    return tuple(names)


def parse_colors(text: Any, n: int) -> tuple[RGB, ...]:
    """``CLASS_COLORS`` as ``n`` RGB triples; the default palette where missing or unusable."""
    fallback = default_colors(n)
    try:
        colors = json.loads(text) if text else []
    except (json.JSONDecodeError, TypeError):
        colors = []
    out: list[RGB] = []
    for i in range(n):
        c = colors[i] if isinstance(colors, list) and i < len(colors) else None
        if isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) for v in c):
            out.append((c[0] % 256, c[1] % 256, c[2] % 256))
        else:
            out.append(fallback[i])
    return tuple(out)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ClassMap:
    """A class map on disk: its description, and ways to read its cells.

    Attributes
    ----------
    path
        The file (GeoTIFF, netCDF) or folder (Zarr).
    family
        ``gdal``, ``netcdf`` or ``zarr``.
    names, colors
        One name and one RGB colour per class id.
    height, width, transform, crs
        The grid of the class map.
    attrs
        What else the map says about itself, with lower-case keys (``model_arch``,
        ``stride``, ``patch_size``, ``source``, ...).
    has_probabilities
        Whether per-class probabilities (percent) are stored.
    """

    path: Path
    family: str
    names: tuple[str, ...]
    colors: tuple[RGB, ...]
    height: int
    width: int
    transform: Affine
    crs: Any
    attrs: dict[str, str] = field(default_factory=dict)
    has_probabilities: bool = False

    def read_classes(self, out_shape: tuple[int, int] | None = None) -> np.ndarray:
        """Class ids ``(y, x)`` as ``uint8`` (255 = nodata), nearest-sampled to ``out_shape``."""
        h, w = out_shape or (self.height, self.width)
        try:
            if self.family == "gdal":
                from rasterio.enums import Resampling

                with open_input(self.path) as src:
                    return src.read(1, out_shape=(h, w), resampling=Resampling.nearest)
            with _open_cf(self.path, self.family) as ds:
                var = ds["class"].transpose("y", "x")
                if (h, w) != (self.height, self.width):
                    var = var.isel(y=_nearest(self.height, h), x=_nearest(self.width, w))
                return np.asarray(var.values, dtype=np.uint8)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ReadError(f"{self.path}: cannot read the class map ({exc})") from exc

    def probability_blocks(self, rows: int = 512) -> Iterator[tuple[slice, np.ndarray]]:
        """``(row slice, percent (classes, rows, x) uint8, 255 = none)`` over the whole map."""
        if not self.has_probabilities:
            return
        k = len(self.names)
        try:
            if self.family == "gdal":
                from rasterio.windows import Window

                with open_input(self.path) as src:
                    for r0 in range(0, self.height, rows):
                        n = min(rows, self.height - r0)
                        window = Window(0, r0, self.width, n)
                        yield slice(r0, r0 + n), src.read(list(range(2, k + 2)), window=window)
                return
            with _open_cf(self.path, self.family) as ds:
                var = ds["probability"].transpose("class_name", "y", "x")
                for r0 in range(0, self.height, rows):
                    sl = slice(r0, min(r0 + rows, self.height))
                    yield sl, np.asarray(var.isel(y=sl).values, dtype=np.uint8)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ReadError(f"{self.path}: cannot read the probability bands ({exc})") from exc


def _nearest(n: int, m: int) -> np.ndarray:
    """``m`` indexes into ``n`` cells, each the cell under the centre of an output pixel."""
    return np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1)


def _open_cf(path: Path, family: str) -> Any:
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    if family == "zarr":
        return xr.open_zarr(path, mask_and_scale=False, decode_coords="all", chunks=None)
    return xr.open_dataset(path, mask_and_scale=False, decode_coords="all")


def _not_a_class_map(path: Path, found: str, what: str) -> InputError:
    return InputError(
        f"{path}: not a class map written by georaster-cnn ({found}). "
        f"{what} the output of georaster-cnn predict."
    )


def open_class_map(path: str | os.PathLike[str], *, what: str = "Use") -> ClassMap:
    """Open a class map written by :func:`~georaster_cnn.write_prediction` (any format).

    Parameters
    ----------
    path
        A COG/GeoTIFF, netCDF file or Zarr store.
    what
        The verb of the hint in error messages ("Vectorise", "Style", ...).

    Raises
    ------
    InputError
        Not a class map (no class names, wrong data type or band count).
    ReadError
        The file cannot be opened.
    """
    p = Path(path)
    family = input_family(p)
    if not p.exists():
        raise ReadError(f"{p}: no such file")
    if family == "gdal":
        return _open_tiff(p, what)
    try:
        with _open_cf(p, family) as ds:
            return _from_cf(ds, p, family, what)
    except GeorasterCNNError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        raise ReadError(f"{p}: cannot read the class map ({exc})") from exc


def _open_tiff(path: Path, what: str) -> ClassMap:
    from rasterio.errors import RasterioError

    try:
        with open_input(path) as src:
            tags = src.tags()
            names, colors = _tiff_classes(src, path)
            if names is None or src.dtypes[0] != "uint8":
                found = f"expected a uint8 band 1 and a CLASS_NAMES tag; found {src.dtypes[0]}, "
                raise _not_a_class_map(path, found + f"tags {sorted(tags)[:6]}", what)
            if src.count not in (1, 1 + len(names)):
                raise InputError(
                    f"{path}: expected 1 band (classes) or {1 + len(names)} (classes and one "
                    f"probability band per class), found {src.count}. "
                    f"{what} the output of georaster-cnn predict as written."
                )
            return ClassMap(
                path=path,
                family="gdal",
                names=names,
                colors=colors or default_colors(len(names)),
                height=src.height,
                width=src.width,
                transform=src.transform,
                crs=src.crs,
                attrs={k.lower(): v for k, v in tags.items()},
                has_probabilities=src.count > 1,
            )
    except RasterioError as exc:
        raise ReadError(f"{path}: cannot read the class map ({exc})") from exc


def _tiff_classes(src: Any, path: Path) -> tuple[tuple[str, ...] | None, tuple[RGB, ...] | None]:
    """Names and colours of an open GDAL raster: the one reading for class maps and labels.

    Names: the ``CLASS_NAMES`` tag of the dataset, else of band 1. Colours: the
    ``CLASS_COLORS`` tag, else band 1's colour table, else ``None``.
    """
    tag = src.tags().get("CLASS_NAMES") or src.tags(1).get("CLASS_NAMES")
    names = parse_names(tag, path) if tag else None
    text = src.tags().get("CLASS_COLORS")
    if names is not None and text:
        return names, parse_colors(text, len(names))
    try:
        cmap = src.colormap(1)
    except ValueError:  # no colour table
        cmap = {}
    colors = tuple((int(c[0]), int(c[1]), int(c[2])) for _, c in sorted(cmap.items()))
    if names is not None:
        colors = colors[: len(names)] if len(colors) >= len(names) else ()
    return names, colors or None


def _cf_classes(ds: Any, path: Path) -> tuple[tuple[str, ...] | None, tuple[RGB, ...] | None]:
    """Names and colours of a netCDF/Zarr class map or label set (dataset, else ``class`` attributes)."""
    var_attrs = ds["class"].attrs if "class" in ds else {}
    text = ds.attrs.get("class_names") or var_attrs.get("class_names")
    if not text:
        return None, None
    names = parse_names(text, path)
    colors = ds.attrs.get("class_colors") or var_attrs.get("class_colors")
    return names, parse_colors(colors, len(names))


def _from_cf(ds: Any, path: Path, family: str, what: str) -> ClassMap:
    names, colors = _cf_classes(ds, path)
    if (
        names is None
        or "class" not in ds
        or ds["class"].dtype != np.uint8
        or set(ds["class"].dims) != {"y", "x"}
    ):
        found = f"variables {sorted(map(str, ds.data_vars))}"
        raise _not_a_class_map(
            path, f"expected a uint8 'class' (y, x) with class names; {found}", what
        )
    var = ds["class"]
    return ClassMap(
        path=path,
        family=family,
        names=names,
        colors=colors or default_colors(len(names)),
        height=int(var.sizes["y"]),
        width=int(var.sizes["x"]),
        transform=var.rio.transform(),
        crs=var.rio.crs,
        attrs={str(k).lower(): str(v) for k, v in ds.attrs.items()},
        has_probabilities="probability" in ds,
    )


def read_class_info(
    path: str | os.PathLike[str],
) -> tuple[tuple[str, ...] | None, tuple[RGB, ...] | None]:
    """Class names and colours a label raster or class map carries, if any.

    Read as :func:`open_class_map` reads them: GeoTIFF, the ``CLASS_NAMES`` tag
    (dataset or band 1) and ``CLASS_COLORS`` tag or the colour table; netCDF/Zarr,
    ``class_names`` and ``class_colors`` attributes (dataset or ``class`` variable).
    Unreadable or absent descriptions give ``None``: both are optional.
    """
    p = Path(path)
    family = input_family(p)
    try:
        if family == "gdal":
            with open_input(p) as src:
                return _tiff_classes(src, p)
        with _open_cf(p, family) as ds:
            return _cf_classes(ds, p)
    except Exception:  # names and colours are optional; the raster reader reports real errors
        return None, None
