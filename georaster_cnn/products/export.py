"""Models that travel: ONNX graphs with the metadata QGIS (Deepness), ArcGIS Pro and STAC MLM read.

:func:`export_model` writes, for a model named ``NAME`` and the targets asked for:

``onnx``
    ``NAME.onnx``, the chip classifier: raw ``(N, bands, p, p)`` -> ``(N, classes)``
    probabilities, normalisation and the NaN -> 0 rule inside the graph; and, for
    dense-capable architectures, ``NAME_dense.onnx``, the fully convolutional model on
    the *cell grid*: raw ``(N, bands, H, W)`` -> ``(N, classes, (H - p) // S + 1,
    (W - p) // S + 1)``, the cells ``predict --stride S`` computes (one call per tile,
    with the halo of :class:`~georaster_cnn.model._portable.DenseLayout` around it).
``deepness``
    ``NAME_map.onnx``, the same model on the tile's *pixel grid* (each cell repeated over
    its ``S x S`` pixels, minus a margin), the file Deepness loads; and ``NAME_dense.onnx``.
    Both carry Deepness's metadata.
``arcgis``
    ``NAME.emd`` (Esri model definition), ``GeorasterCNN.py`` (the inference function
    it names) and ``NAME.dlpk`` (both with ``NAME_map.onnx``, zipped).
``mlm``
    ``NAME.mlm.json``: a STAC Item with the MLM 1.4 extension describing ``NAME.onnx``
    (written with it) and whatever else this export wrote, with their SHA-256.

Every graph is checked with onnxruntime against torch before anything is written
(when onnxruntime is installed); files are written atomically. See ``docs/export.md``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from georaster_cnn.errors import InputError
from georaster_cnn.geometry import pixel_size_metres
from georaster_cnn.io.staging import atomic_write, check_output
from georaster_cnn.model._onnx import OPSET, check_against_torch, onnx_graph
from georaster_cnn.model._portable import DenseLayout, RawChips, RawDense, dense_layout
from georaster_cnn.model.architectures import dense_geometry
from georaster_cnn.model.modelfile import GeoModel, load_model
from georaster_cnn.products import _arcgis_prf
from georaster_cnn.products._export_meta import (
    deepness_metadata,
    emd_document,
    mlm_assets,
    mlm_item,
    overlap_percent,
)

__all__ = [
    "ARCGIS_FUNCTION",
    "DEFAULT_TILE",
    "TARGETS",
    "ExportPlan",
    "export_model",
    "plan_export",
]

log = logging.getLogger(__name__)

#: Export targets, in the order their files are listed.
TARGETS = ("onnx", "deepness", "arcgis", "mlm")
#: Side of a Deepness / ArcGIS tile in pixels when none is given (rounded up to fit).
DEFAULT_TILE = 512
#: The file name of ArcGIS's inference function (its class has the same name).
ARCGIS_FUNCTION = "GeorasterCNN.py"


@dataclass(frozen=True)
class ExportPlan:
    """What an export writes, decided before anything is written.

    Attributes
    ----------
    name
        ``NAME``: the stem of every file.
    targets
        The targets, in :data:`TARGETS` order.
    files
        File names written into the folder, in order.
    layout
        Geometry of the dense graphs (stride, halo, margin), ``None`` without one.
    tile
        Tile side for Deepness and ArcGIS (input pixels, margin included).
    overlap
        Deepness's ``tiles_overlap`` in percent.
    resolution_cm
        Deepness's ``resolution`` in cm per pixel, ``None`` when unknown.
    notes
        What the user should know (targets left out, resolution unknown, ...).
    """

    name: str
    targets: tuple[str, ...]
    files: tuple[str, ...]
    layout: DenseLayout | None = None
    tile: int | None = None
    overlap: int | None = None
    resolution_cm: float | None = None
    notes: tuple[str, ...] = ()
    checks: dict[str, float | None] = field(default_factory=dict, compare=False)

    def describe(self) -> list[tuple[str, str]]:
        """``(label, text)`` rows saying what the export holds (for ``info`` and the CLI)."""
        rows = [("targets", ", ".join(self.targets)), ("files", ", ".join(self.files))]
        if f"{self.name}.onnx" in self.files:
            rows.append(("chip model", f"ONNX opset {OPSET}: raw (N, bands, p, p) -> (N, classes)"))
        lay, tile, name = self.layout, self.tile, self.name
        if lay is not None and tile is not None:
            p, s = lay.patch, lay.stride
            if f"{name}_dense.onnx" in self.files:
                text = (
                    f"{name}_dense.onnx, any ONNX runtime: raw (N, bands, H, W) -> (N, classes, "
                    f"(H-{p})//{s}+1, (W-{p})//{s}+1), the cells of predict --stride {s}; add "
                    f"a halo of {lay.halo_before} px before and {lay.halo_after} px after"
                )
                rows.append(("dense model", text))
            if f"{name}_map.onnx" in self.files:
                text = (
                    f"{name}_map.onnx, for Deepness and ArcGIS: the same cells on the tile's "
                    f"pixel grid, {lay.crop} px inside its edges"
                )
                rows.append(("map model", text))
            text = (
                f"{tile} px in: {lay.cells(tile)} cells, {lay.output_size(tile)} px out; "
                f"Deepness overlap {self.overlap}%, ArcGIS ModelPadding {lay.crop}"
            )
            rows.append(("tiles", text))
        res = "unknown" if self.resolution_cm is None else f"{self.resolution_cm:g} cm/px"
        rows.append(("resolution", res))
        rows.extend(("note", n) for n in self.notes)
        return rows


def _parse_targets(targets: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if targets is None:
        return None
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    names = [str(t).strip().lower() for t in items if str(t).strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise InputError(
            f"unknown export target(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(TARGETS)} (comma-separated)"
        )
    return tuple(t for t in TARGETS if t in names)


def plan_export(
    model: GeoModel,
    *,
    name: str = "model",
    targets: str | Sequence[str] | None = None,
    stride: int | None = None,
    tile: int | None = None,
    resolution: float | None = None,
) -> ExportPlan:
    """What :func:`export_model` would write for ``model``, checked, without writing.

    Parameters are those of :func:`export_model`.

    Raises
    ------
    InputError
        An unknown target; ``deepness`` or ``arcgis`` for an architecture without a
        dense form; a bad stride, tile or resolution.
    """
    asked = _parse_targets(targets)
    dense = dense_geometry(model.module)
    notes: list[str] = []
    chosen = asked
    if chosen is None:
        chosen = TARGETS if dense is not None else ("onnx", "mlm")
        if dense is None:
            notes.append(
                f"architecture {model.arch!r} has no dense form: no map model, so no "
                "Deepness or ArcGIS files (train 'cnn_dense' for them)"
            )
    elif dense is None and {"deepness", "arcgis"} & set(chosen):  # NAME_dense.onnx: optional
        raise InputError(
            f"targets deepness and arcgis need the map model, and architecture "
            f"{model.arch!r} has no dense form; export --target onnx,mlm, or train with "
            "the 'cnn_dense' architecture"
        )
    files: list[str] = []
    if {"onnx", "mlm"} & set(chosen):
        files.append(f"{name}.onnx")
    layout = None
    if {"onnx", "deepness", "arcgis"} & set(chosen) and dense is not None:
        if {"onnx", "deepness"} & set(chosen):
            files.append(f"{name}_dense.onnx")  # the cell grid
        if {"deepness", "arcgis"} & set(chosen):
            files.append(f"{name}_map.onnx")  # the pixel grid
        if "arcgis" in chosen:
            files += [f"{name}.emd", ARCGIS_FUNCTION, f"{name}.dlpk"]
        layout = dense_layout(model, dense.downsampling if stride is None else int(stride))
    elif stride is not None or tile is not None:
        notes.append("--stride and --tile concern the dense models, which this export leaves out")
    if "mlm" in chosen:
        files.append(f"{name}.mlm.json")
    size, overlap = _tile(layout, tile)
    res_cm, res_note = _resolution(model, resolution)
    if layout is not None and res_note:
        notes.append(res_note)
    return ExportPlan(name, chosen, tuple(files), layout, size, overlap, res_cm, tuple(notes))


def _tile(layout: DenseLayout | None, tile: int | None) -> tuple[int | None, int | None]:
    if layout is None:
        return None, None
    size = layout.tile_near(DEFAULT_TILE) if tile is None else int(tile)
    if not layout.fits(size) or layout.output_size(size) < 1:
        lower = size - (size - layout.patch) % layout.stride
        choices = sorted({t for t in (lower, layout.tile_near(size)) if t >= layout.patch})
        raise InputError(
            f"tile {size} does not fit the map model: a tile is the patch ({layout.patch}) "
            f"plus whole strides ({layout.stride}), and leaves at least one pixel inside "
            f"its {layout.crop}-pixel margin; use --tile {' or '.join(map(str, choices))}"
        )
    return size, overlap_percent(size, layout.crop, layout.stride)


def _resolution(model: GeoModel, resolution: float | None) -> tuple[float | None, str]:
    """cm per pixel: as given, else the training rasters' (in metres), else unknown.

    The training rasters' pixel size is in the provenance of models trained since it is
    recorded (``pixel_size_m``); for older models, the rasters it names are read when
    they are found where the export runs.
    """
    if resolution is not None:
        if not (math.isfinite(resolution) and resolution > 0):
            raise InputError(f"resolution must be > 0 cm per pixel; found {resolution}")
        return float(resolution), ""
    prov = model.provenance or {}
    recorded = prov.get("pixel_size_m")
    if isinstance(recorded, (int, float)) and math.isfinite(recorded) and recorded > 0:
        return float(recorded) * 100.0, ""
    found = {_pixel_size_cm(str(path)) for path in prov.get("data", []) or []}
    if len(found) == 1 and None not in found:
        return found.pop(), ""
    return None, (
        "resolution unknown (the training rasters are not readable here, not in metres, "
        "or differ): give --resolution CM, or set it in Deepness"
    )


def _pixel_size_cm(path: str) -> float | None:
    """A raster's square pixel side in cm when its CRS counts in metres, else ``None``."""
    if not os.path.isfile(path):
        return None
    import rasterio

    try:
        with rasterio.open(path) as src:
            size = pixel_size_metres(src.crs, src.transform)
    except (rasterio.errors.RasterioError, OSError):
        return None
    return None if size is None else size * 100.0


def _example(model: GeoModel, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Raw values like the training data's (mean +- 2 std), with a hole of NaN."""
    rng = np.random.default_rng(seed)
    mean = model.stats.mean.reshape(1, -1, 1, 1)
    spread = model.stats.scale_std.reshape(1, -1, 1, 1)
    x = (mean + spread * rng.normal(size=shape)).astype(np.float32)
    h, w = shape[-2:]
    x[..., h // 4 : h // 2, w // 3 : w // 2] = np.nan
    return torch.from_numpy(x)


def _package_version() -> str:
    try:
        return version("georaster-cnn")
    except PackageNotFoundError:
        return "0+unknown"


def _graphs(model: GeoModel, plan: ExportPlan) -> dict[str, bytes]:
    """The ONNX graphs of the plan, each checked against torch."""
    out: dict[str, bytes] = {}
    p, b = model.patch_size, model.n_bands
    common = {
        "georaster_cnn:checksum": model.checksum,
        "georaster_cnn:version": _package_version(),
        "georaster_cnn:bands": json.dumps(list(model.band_names)),
        "georaster_cnn:patch_size": str(p),
        "class_names": json.dumps({str(k): n for k, n in enumerate(model.class_names)}),
    }
    if f"{plan.name}.onnx" in plan.files:
        chips = RawChips(model).eval()
        out[f"{plan.name}.onnx"] = graph = onnx_graph(
            chips,
            _example(model, (2, b, p, p), 0),
            dynamic={0: "batch"},
            arch=model.arch,
            metadata=common,
            doc=f"georaster_cnn {model.arch} chip classifier: raw (N, {b}, {p}, {p}) -> "
            f"(N, {model.n_classes}) probabilities; NaN = nodata.",
        )
        plan.checks[f"{plan.name}.onnx"] = check_against_torch(
            graph,
            chips,
            [_example(model, (n, b, p, p), n) for n in (1, 7)],
            what=f"{plan.name}.onnx",
        )
    lay = plan.layout
    if lay is not None and plan.tile is not None:
        deepness = deepness_metadata(
            model, tile=plan.tile, overlap=plan.overlap or 0, resolution_cm=plan.resolution_cm
        )
        s = lay.stride
        sizes = [(1, b, p + 3 * s + 1, p + 5 * s), (2, b, p, p + s + 3)]
        for pixels in (False, True):
            key = f"{plan.name}_{'map' if pixels else 'dense'}.onnx"
            if key not in plan.files:
                continue
            dense = RawDense(model, s, pixels=pixels).eval()
            out[key] = graph = _dense_graph(model, dense, {**common, **deepness})
            plan.checks[key] = check_against_torch(
                graph, dense, [_example(model, sh, k) for k, sh in enumerate(sizes)], what=key
            )
    return out


def _dense_graph(model: GeoModel, dense: RawDense, meta: dict[str, str]) -> bytes:
    """``NAME_dense.onnx`` (the cell grid) or ``NAME_map.onnx`` (``dense.pixels``)."""
    lay, pixels = dense.layout, dense.pixels
    p, b, s, k = model.patch_size, model.n_bands, lay.stride, model.n_classes
    meta = {
        **meta,
        "georaster_cnn:output": "pixels" if pixels else "cells",
        "georaster_cnn:stride": str(s),
        "georaster_cnn:halo": json.dumps([lay.halo_before, lay.halo_after]),
    }
    if pixels:
        meta["georaster_cnn:margin"] = str(lay.crop)
        doc = (
            f"georaster_cnn {model.arch} map model, stride {s}: raw (N, {b}, H, W) -> "
            f"(N, {k}, H', W') probabilities on the tile's pixel grid, of tile pixels "
            f"[{lay.crop}, {lay.crop} + H') (each cell over its {s} x {s} pixels)"
        )
    else:
        doc = (
            f"georaster_cnn {model.arch} dense model, stride {s}: raw (N, {b}, H, W) -> "
            f"(N, {k}, (H - {p}) // {s} + 1, (W - {p}) // {s} + 1) probabilities of the "
            f"windows whose top-left is tile pixel ({s}*i, {s}*j); halo "
            f"{lay.halo_before} px before and {lay.halo_after} px after a region"
        )
    return onnx_graph(
        dense,
        _example(model, (1, b, p + 2 * s, p + 3 * s), 1),
        dynamic={0: "batch", 2: "height", 3: "width"},
        arch=model.arch,
        metadata=meta,
        doc=doc + "; NaN = nodata; all-zero probabilities = no prediction.",
    )


def export_model(
    model: GeoModel | str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    targets: str | Sequence[str] | None = None,
    stride: int | None = None,
    tile: int | None = None,
    name: str | None = None,
    resolution: float | None = None,
    overwrite: bool = False,
) -> ExportPlan:
    """Export ``model`` for Deepness (QGIS), ArcGIS Pro and STAC MLM catalogues.

    Parameters
    ----------
    model
        A :class:`~georaster_cnn.GeoModel` or the path of a model file.
    directory
        Folder to write into (created if missing).
    targets
        Some of :data:`TARGETS` (a list or ``"onnx,deepness"``); default: all that the
        architecture allows (no ``deepness``/``arcgis`` without a dense form).
    stride
        Cell size of the dense models (``NAME_dense.onnx``, ``NAME_map.onnx``) in input
        pixels, as ``predict --stride``; default: the architecture's
        downsampling factor (4 for the default ``cnn_dense``).
    tile
        Tile side for Deepness and ArcGIS in input pixels (the patch plus whole
        strides); default: the first such size from 512.
    name
        ``NAME`` of the files; default: the model file's stem, or ``"model"``.
    resolution
        Deepness's ``resolution`` in cm per pixel; default: the training rasters'
        pixel size when their CRS counts in metres and they are readable here.
    overwrite
        Replace existing files.

    Returns
    -------
    ExportPlan
        What was written (``files``, in ``directory``), with the largest difference
        from torch of each graph in ``checks`` (``None``: onnxruntime not installed).

    Raises
    ------
    InputError
        See :func:`plan_export`.
    OutputExistsError
        A file exists and ``overwrite`` is false (nothing is written).
    ExportError
        The architecture uses an operator ONNX lacks (named), or an exported graph
        disagrees with torch.

    Examples
    --------
    >>> gc.export_model("landcover.safetensors", "export/")  # doctest: +SKIP
    """
    if not isinstance(model, GeoModel):
        name = name or Path(model).stem
        model = load_model(model)
    plan = plan_export(
        model,
        name=name or "model",
        targets=targets,
        stride=stride,
        tile=tile,
        resolution=resolution,
    )
    folder = Path(directory)
    # The inference function is the same file for every model: one copy serves them all.
    shared = _same_file(folder / ARCGIS_FUNCTION, Path(_arcgis_prf.__file__).read_bytes())
    files = [f for f in plan.files if not (f == ARCGIS_FUNCTION and shared)]
    for file in files:
        check_output(folder / file, overwrite=overwrite)
    contents = _graphs(model, plan)
    contents.update(_documents(model, plan, contents))
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        atomic_write(folder / file, partial(_write, contents[file]), overwrite=overwrite)
    log.info("exported %s to %s: %s", model.checksum, folder, ", ".join(plan.files))
    return plan


def _same_file(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file (not a link) holding exactly ``data``."""
    try:
        return path.is_file() and not path.is_symlink() and path.read_bytes() == data
    except OSError:
        return False


def _write(data: bytes, f: BinaryIO) -> None:
    f.write(data)


def _documents(model: GeoModel, plan: ExportPlan, graphs: dict[str, bytes]) -> dict[str, bytes]:
    """The ArcGIS and MLM files, built from the graphs' bytes."""
    out: dict[str, bytes] = {}
    lay, name = plan.layout, plan.name
    if "arcgis" in plan.targets and lay is not None and plan.tile is not None:
        emd = emd_document(
            model,
            name=name,
            model_file=f"{name}_map.onnx",
            function=ARCGIS_FUNCTION,
            tile=plan.tile,
            margin=lay.crop,
            stride=lay.stride,
        )
        out[f"{name}.emd"] = (json.dumps(emd, indent=2) + "\n").encode()
        out[ARCGIS_FUNCTION] = Path(_arcgis_prf.__file__).read_bytes()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dlpk:
            for file in (f"{name}.emd", ARCGIS_FUNCTION):
                dlpk.writestr(file, out[file])
            dlpk.writestr(f"{name}_map.onnx", graphs[f"{name}_map.onnx"])
        out[f"{name}.dlpk"] = buf.getvalue()
    if "mlm" in plan.targets:
        written = {**graphs, **out}
        assets = mlm_assets(name, {f: written[f] for f in plan.files if f in written})
        item = mlm_item(
            model,
            name=name,
            assets=assets,
            stride=lay.stride if lay else None,
            version=_package_version(),
        )
        out[f"{name}.mlm.json"] = (json.dumps(item, indent=2) + "\n").encode()
    return out
