"""``georaster-cnn train``: fit a model on rasters with label rasters or vector labels, or on chips."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import TextColumn

from georaster_cnn_cli._common import (
    CLIState,
    escape,
    fail,
    get_state,
    make_progress,
    plural,
    report_warnings,
    shows_progress,
)
from georaster_cnn_cli._options import (
    NameList,
    bands_option,
    batch_size_option,
    dataset_options,
    device_option,
    overwrite_option,
    stride_option,
)

if TYPE_CHECKING:
    import xarray as xr
    from rich.progress import Progress, TaskID

    from georaster_cnn import GeoModel

__all__ = ["LabelSource", "chip_inputs", "pair_labels", "read_labels", "train"]

#: Label files read as vector labels (as georaster_cnn.VECTOR_SUFFIXES; kept here so that
#: --help and argument checks need no torch import).
VECTOR_SUFFIXES = frozenset(
    {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".parquet", ".geoparquet", ".kml", ".gml"}
)


@dataclass(frozen=True)
class LabelSource:
    """Where the labels of one INPUT come from.

    Attributes
    ----------
    path
        A class-id raster on the INPUT's grid, or a vector file (points/polygons).
    column
        Attribute holding the class of each feature, for vector labels.
    """

    path: Path
    column: str | None = None

    @property
    def is_vector(self) -> bool:
        name = self.path.name.lower()
        return Path(name).suffix in VECTOR_SUFFIXES or name.endswith(".shp.zip")


def pair_labels(
    inputs: Sequence[Path], labels: Sequence[Path], *, column: str | None = None
) -> list[tuple[Path, LabelSource]]:
    """Match ``--labels`` to INPUTs: one per INPUT, in order; or one vector file for all.

    Raises
    ------
    click.UsageError
        The counts differ (and the single ``--labels`` is not a vector file), or
        ``--label-column`` is given with label rasters only.
    """
    sources = [LabelSource(lab, column) for lab in labels]
    if len(sources) == 1 and sources[0].is_vector:
        sources = sources * len(inputs)
    if len(sources) != len(inputs):
        raise click.UsageError(
            f"got {plural(len(inputs), 'INPUT')} and {len(labels)} --labels; give --labels "
            "once per INPUT, in the same order, or one vector file (points/polygons) for all"
        )
    if column is not None and not any(src.is_vector for src in sources):
        raise click.UsageError(
            "--label-column names the class attribute of vector labels, but the --labels "
            "are rasters whose pixel values are the class ids; drop --label-column"
        )
    return list(zip(inputs, sources, strict=True))


def chip_inputs(inputs: Sequence[Path], labels: Sequence[Path]) -> bool:
    """Whether the INPUTs are labelled chips (folders of class folders, .npz / netCDF chips).

    Chips carry their labels; rasters need ``--labels``. Mixing is refused.

    Raises
    ------
    click.UsageError
        Chips with ``--labels``, chips mixed with rasters, or rasters without ``--labels``.
    """
    import georaster_cnn as gc

    chips = [p for p in inputs if gc.is_chip_dataset(p)]
    if chips and labels:
        raise click.UsageError(
            f"{chips[0]} is a chip dataset, which holds its own labels (class sub-folders, or "
            "a 'labels' array); drop --labels, or give rasters as INPUTs"
        )
    if chips and len(chips) != len(inputs):
        rasters = [str(p) for p in inputs if p not in chips]
        raise click.UsageError(
            f"INPUTs mix chip datasets ({', '.join(map(str, chips))}) and rasters "
            f"({', '.join(rasters)}); give either chips or rasters with --labels"
        )
    if not chips and not labels:
        raise click.UsageError(
            "Missing option '--labels': give a label raster once per INPUT raster, or give "
            "chip datasets (a folder with one sub-folder per class, or an .npz / netCDF file "
            "with 'chips' and 'labels') as INPUTs"
        )
    return bool(chips)


def merge_chips(sets: Sequence[Any]) -> Any:
    """One ChipSet of several; their classes, bands and chip shapes must be equal."""
    import numpy as np

    import georaster_cnn as gc

    first = sets[0]
    for other in sets[1:]:
        if other.class_names != first.class_names:
            fail(
                f"{other.source} has classes {', '.join(other.class_names)} but {first.source} "
                f"has {', '.join(first.class_names)}; give --class-names to fix one order"
            )
        if other.shape != first.shape or other.band_names != first.band_names:
            fail(
                f"{other.source} holds chips of shape {other.shape} (bands "
                f"{', '.join(other.band_names)}) but {first.source} {first.shape} (bands "
                f"{', '.join(first.band_names)}); all chips must match"
            )
    if len(sets) == 1:
        return first
    dtypes = {s.source_dtype for s in sets}
    return gc.ChipSet(
        chips=np.concatenate([s.chips for s in sets]),
        labels=np.concatenate([s.labels for s in sets]),
        class_names=first.class_names,
        band_names=first.band_names,
        source=", ".join(s.source for s in sets),
        source_dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
    )


def read_labels(
    source: LabelSource, *, like: xr.DataArray, cache: dict[Path, Any] | None = None
) -> Any:
    """Labels for the raster ``like``: a label raster, or a GeoDataFrame for vector files.

    A vector file is read once per ``cache`` (the same GeoDataFrame then serves every
    INPUT, which the library treats as one set of labels).
    """
    import georaster_cnn as gc

    if not source.is_vector:
        return gc.open_labels(source.path)
    cache = {} if cache is None else cache
    if source.path not in cache:
        cache[source.path] = gc.read_vector_labels(source.path)
    return cache[source.path]


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "n/a"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """``loss 0.512 acc 0.801 val_loss 0.601 val_acc 0.774`` (missing ones left out)."""
    names = (
        ("loss", "loss"),
        ("accuracy", "acc"),
        ("val_loss", "val_loss"),
        ("val_accuracy", "val_acc"),
    )
    return " ".join(f"{short} {_fmt(metrics[key])}" for key, short in names if key in metrics)


class _EpochReporter:
    """The ``progress`` callback given to :func:`georaster_cnn.train`."""

    def __init__(self, state: CLIState, progress: Progress, task: TaskID, *, live: bool) -> None:
        self.state = state
        self.progress = progress
        self.task = task
        self.live = live
        self.last: dict[str, Any] = {}

    def __call__(self, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> None:
        self.last = dict(metrics)
        text = format_metrics(metrics)
        self.progress.update(
            self.task,
            total=epochs,
            completed=epoch,
            description=f"epoch {epoch}/{epochs}",
            metrics=escape(text),
        )
        if not self.live and not self.state.quiet:
            # No progress bar (not a terminal): one line per epoch keeps logs informative.
            self.state.err.print(f"epoch {epoch}/{epochs} {text}", highlight=False, soft_wrap=True)


@click.command(
    "train", short_help="Train a model on rasters with label rasters or vector labels, or on chips."
)
@click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="INPUT...",
)  # fmt: skip
@click.option(
    "--labels",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="LABELS",
    help="Class-id raster on the INPUT's grid (0..K-1, nodata = unlabelled), once per INPUT "
    "in the same order; or a vector file (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, "
    "GeoParquet) of points or polygons in any CRS, once for all INPUTs. Not for chip "
    "datasets, which hold their labels.",
)
@click.option(
    "--label-column",
    default=None,
    metavar="COLUMN",
    help="Vector labels: the attribute holding each feature's class, as names or ids 0..K-1. "
    "[default: the only attribute]",
)
@click.option(
    "--min-cover",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Polygon labels: minimum share of a window inside polygons of its class "
    "(1 = wholly inside).",
)
@click.option(
    "--val-block",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    metavar="PIXELS",
    help="Side of the square blocks of the spatially blocked validation split. Training "
    "windows within a patch of a validation block are dropped, so none overlaps a "
    "validation window.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of blocks (rasters) or of every class's chips (chips) held out for validation.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="MODEL",
    help="Model file to write.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Training epochs."
)
@batch_size_option(default=64)
@stride_option(default=None)
@click.option("--arch", default="cnn", show_default=True, help="Network architecture.")
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Stop when the validation loss has not improved for this many epochs; 0 runs all.",
)
@click.option(
    "--augment/--no-augment",
    default=True,
    show_default=True,
    help="Random flips and 90-degree rotations of training batches. Turn off when classes "
    "depend on orientation (e.g. east-west versus north-south streaks).",
)
@device_option()
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed; the same seed repeats a run."
)
@bands_option()
@dataset_options()
@click.option(
    "--class-names",
    type=NameList(),
    default=None,
    help="Names of classes 0, 1, ... e.g. water,forest,urban. "
    "[default: from the labels' CLASS_NAMES tag, else class_0, class_1, ...]",
)
@overwrite_option("Replace MODEL if it exists.")
@click.pass_context
def train(
    ctx: click.Context,
    inputs: tuple[Path, ...],
    labels: tuple[Path, ...],
    label_column: str | None,
    min_cover: float,
    val_block: int,
    val_fraction: float,
    output: Path,
    epochs: int,
    batch_size: int,
    stride: int | None,
    arch: str,
    patience: int,
    augment: bool,
    device: str,
    seed: int,
    bands: list[int | str] | None,
    open_options: dict[str, Any],
    class_names: tuple[str, ...] | None,
    overwrite: bool,
) -> None:
    """Train a model on INPUT rasters and their class labels, and save it to MODEL.

    Labels are either a label raster on exactly each INPUT's grid (--labels,
    once per INPUT, same order), or one vector file of points or polygons with
    a class attribute (--label-column) in any CRS for all INPUTs, which may
    differ in CRS and resolution: each point gives the window centred on it,
    polygons the windows inside them (--min-cover). Square blocks of
    --val-block pixels are held out for validation, with a buffer so that no
    validation window overlaps a training window; the weights of the epoch
    with the lowest validation loss are kept.

    INPUTs may instead be labelled chips without georeferencing, given without
    --labels: a folder with one sub-folder per class (.npy, .npz or GeoTIFF
    chips), or an .npz / netCDF file with 'chips' (n, channel, y, x) and
    'labels' (n). The chip size is the patch size; a stratified random part
    of every class is held out for validation.

    \b
    Examples:
      georaster-cnn train a.tif b.tif --labels a_labels.tif --labels b_labels.tif \\
          --class-names water,forest,urban --epochs 20 -o landcover.safetensors
      georaster-cnn train utm32.tif utm33.tif --labels field_points.gpkg \\
          --label-column landcover --epochs 20 -o landcover.safetensors
      georaster-cnn train chips/ --epochs 20 -o chips.safetensors
    """
    state = get_state(ctx)
    chips_given = chip_inputs(inputs, labels)
    if chips_given and (stride is not None or bands or label_column is not None):
        given = "--stride" if stride is not None else "--bands" if bands else "--label-column"
        raise click.UsageError(
            f"{given} applies to rasters; chips are used whole, with all their channels and "
            "their own labels"
        )
    pairs = [] if chips_given else pair_labels(inputs, labels, column=label_column)
    if output.exists() and not overwrite:
        fail(f"{output} exists; pass --overwrite to replace it")
    import georaster_cnn as gc  # deferred: torch/Dask/GDAL load only when a command runs

    try:
        gc.resolve_device(device)
    except gc.GeorasterCNNError as exc:
        fail(f"--device {device}: {exc}")
    if arch not in gc.ARCHITECTURES:  # checked now, not after reading all the data
        known = ", ".join(sorted(gc.ARCHITECTURES))
        fail(f"--arch {arch}: unknown architecture; choose one of {known}")

    live = shows_progress(state)
    metrics_column = TextColumn("{task.fields[metrics]}")
    with report_warnings(state), make_progress(state, extra=[metrics_column]) as progress:
        task = progress.add_task(
            "preparing",
            total=None,
            metrics="reading chips" if chips_given else "reading training windows",
        )
        reporter = _EpochReporter(state, progress, task, live=live)
        if chips_given:
            names = list(class_names) if class_names else None
            chipset = merge_chips([gc.load_chips(p, class_names=names) for p in inputs])
            model = gc.train_chips(
                chipset,
                arch=arch,
                epochs=epochs,
                batch_size=batch_size,
                device=device,
                seed=seed,
                val_fraction=val_fraction,
                patience=patience,
                augment=augment,
                progress=reporter,
            )
        datas, labs = [], []
        cache: dict[Path, Any] = {}
        for data_path, label_source in pairs:
            data = gc.open_raster(data_path, bands=bands, **open_options)
            datas.append(data)
            labs.append(read_labels(label_source, like=data, cache=cache))
        if not chips_given:
            model = gc.train(
                datas,
                labs,
                label_column=label_column,
                min_cover=min_cover,
                val_block=val_block,
                val_fraction=val_fraction,
                class_names=list(class_names) if class_names else None,
                arch=arch,
                epochs=epochs,
                batch_size=batch_size,
                stride=stride,
                device=device,
                seed=seed,
                patience=patience,
                augment=augment,
                progress=reporter,
            )
    with report_warnings(state):
        saved = gc.save_model(model, output, overwrite=overwrite)
    _print_result(state, model, saved, reporter.last)


def _print_result(state: CLIState, model: GeoModel, path: Path, last: Mapping[str, Any]) -> None:
    """One line: what was saved and how well it validates."""
    best = model.provenance.get("metrics") or last
    epochs = model.provenance.get("epochs", len(model.provenance.get("history", [])))
    accuracy = best.get("val_accuracy")
    where = f" (best epoch {best['epoch']})" if "epoch" in best else ""
    summary = (
        f"saved {path}: {model.arch}, {plural(len(model.band_names), 'band')}, "
        f"{plural(len(model.class_names), 'class')} ({', '.join(model.class_names)}), "
        f"{plural(int(epochs), 'epoch')}; validation accuracy {_fmt(accuracy)}{where}"
    )
    if state.quiet:
        return
    state.out.print(summary, highlight=False, soft_wrap=True)
