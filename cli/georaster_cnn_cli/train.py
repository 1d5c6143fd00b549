"""``georaster-cnn train``: fit a model on rasters with label rasters or vector labels, or on chips."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import TextColumn

from georaster_cnn import options
from georaster_cnn.io.staging import check_output
from georaster_cnn_cli._cluster import SchedulerChoice, check_scheduler, cluster_session
from georaster_cnn_cli._common import (
    CLIState,
    class_counts_table,
    escape,
    format_metrics,
    format_number,
    get_state,
    plural,
    report_device,
    scale_summary,
    usage_errors,
)
from georaster_cnn_cli._labels import (
    LabelledInputs,
    labelled_inputs,
    labels_options,
    open_labelled,
)
from georaster_cnn_cli._options import (
    LOCATION,
    NameList,
    batch_size_option,
    device_option,
    input_options,
    overwrite_option,
    scheduler_options,
    store_options,
    stride_option,
)
from georaster_cnn_cli._progress import DaskProgress, make_progress, shows_progress
from georaster_cnn_cli._stac import stac_options
from georaster_cnn_cli._warnings import report_warnings

if TYPE_CHECKING:
    import torch
    from rich.progress import Progress, TaskID

    from georaster_cnn import GeoModel

__all__ = ["train"]


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
            stage="epochs",
        )
        if not self.live and not self.state.quiet:
            # No progress bar (not a terminal): one line per epoch keeps logs informative.
            self.state.err.print(f"epoch {epoch}/{epochs} {text}", highlight=False, soft_wrap=True)


def _checked(common: Mapping[str, Any], rasters: Mapping[str, Any] | None) -> torch.device:
    """Check the options once, before any data is read, with the library's own checks.

    ``common`` (every training) and ``rasters`` (rasters only; None for chips) are the
    keyword arguments of :func:`georaster_cnn.train`. Returns the device, resolved once.
    """
    import georaster_cnn as gc
    from georaster_cnn.model.architectures import (
        check_arch,  # imports torch: only when a command runs
    )

    with usage_errors():
        check_arch(common["arch"])  # the library looks only after reading the data
        options.check_epochs(common["epochs"])
        options.check_patience(common["patience"])
        options.check_batch_size(common["batch_size"])
        options.check_fraction("val_fraction", common["val_fraction"], high_open=True)
        if rasters is not None:
            options.check_positive("patch", rasters["patch_size"], unit=" pixel")  # as --patch
            options.training_stride(rasters["patch_size"], rasters["stride"])
            options.check_positive("val_block", rasters["val_block"], unit=" pixel")
            options.check_fraction("min_cover", rasters["min_cover"])
        return gc.resolve_device(common["device"])


def _fit(
    state: CLIState,
    found: LabelledInputs,
    *,
    common: dict[str, Any],
    rasters: dict[str, Any] | None,
    class_names: tuple[str, ...] | None,
    read: dict[str, Any],
    scale: dict[str, Any],
) -> tuple[GeoModel, dict[str, Any]]:
    """Read the chips or rasters and labels, and train; the model and the last epoch's metrics."""
    import georaster_cnn as gc
    from georaster_cnn.training.chipdata import merge_chips

    names = list(class_names) if class_names else None
    metrics_column = TextColumn("{task.fields[metrics]}")
    with report_warnings(state), make_progress(state, extra=[metrics_column]) as progress:
        reading = "reading training windows" if rasters is not None else "reading chips"
        task = progress.add_task("preparing", total=None, metrics=reading, stage="reading")
        reporter = _EpochReporter(state, progress, task, live=shows_progress(state))
        if rasters is None:
            with usage_errors():
                chipset = merge_chips([gc.load_chips(p, class_names=names) for p in found.chips])
            model = gc.train_chips(chipset, **common, on_epoch=reporter)
        else:
            datas, labs = open_labelled(state, found.pairs, **read)
            # the bar follows the window reading (on any scheduler), then the epochs
            with DaskProgress(progress, task):
                model = gc.train(
                    datas, labs, **common, **rasters, **scale, class_names=names,
                    on_epoch=reporter,
                )  # fmt: skip
    return model, reporter.last


@click.command(
    "train", short_help="Train a model on rasters with label rasters or vector labels, or on chips."
)
@click.argument(
    "inputs", nargs=-1, required=True, type=LOCATION, metavar="INPUT...",
)  # fmt: skip
@labels_options(
    "Class-id raster on the INPUT's grid (0..K-1, nodata = unlabelled), once per INPUT "
    "in the same order; or a vector file (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, "
    "GeoParquet) of points or polygons in any CRS, once for all INPUTs. Not for chip "
    "datasets, which hold their labels.",
    "Vector labels: the attribute holding each feature's class, as names or ids 0..K-1. "
    "[default: the only attribute]",
)
@click.option(
    "--min-cover",
    type=float,
    default=options.DEFAULT_MIN_COVER,
    show_default=True,
    help="Polygon labels: minimum share of a window inside polygons of its class, in [0, 1] "
    "(1 = wholly inside).",
)
@click.option(
    "--val-block",
    type=int,
    default=options.DEFAULT_VAL_BLOCK,
    show_default=True,
    metavar="PIXELS",
    help="Side of the square blocks of the spatially blocked validation split. Training "
    "windows within a patch of a validation block are dropped, so none overlaps a "
    "validation window.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=options.DEFAULT_VAL_FRACTION,
    show_default=True,
    help="Share of blocks (rasters) or of every class's chips (chips) held out for validation, "
    "in [0, 1).",
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
    "--epochs", type=int, default=options.DEFAULT_EPOCHS, show_default=True,
    help="Training epochs (>= 1).",
)  # fmt: skip
@batch_size_option(default=options.DEFAULT_TRAIN_BATCH_SIZE)
@click.option(
    "--patch",
    type=int,
    default=None,
    metavar="PIXELS",
    help="Side of the square training windows (the model's patch size) in pixels; rasters "
    f"only (a chip's size is its patch size). [default: {options.DEFAULT_PATCH}]",
)
@stride_option("Spacing of training windows in pixels, 1..patch size.", "patch size / 4")
@click.option(
    "--arch", default=options.DEFAULT_ARCH, show_default=True, help="Network architecture."
)
@click.option(
    "--patience",
    type=int,
    default=options.DEFAULT_PATIENCE,
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
@input_options()
@stac_options(search=False)
@click.option(
    "--class-names",
    type=NameList(),
    default=None,
    help="Names of classes 0, 1, ... e.g. water,forest,urban. "
    "[default: from the labels' CLASS_NAMES tag, else class_0, class_1, ...]",
)
@overwrite_option("Replace MODEL if it exists.")
@store_options()
@scheduler_options()
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
    patch: int | None,
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
    store: str | Path | None,
    memory: int | None,
    resume: bool,
    cluster: SchedulerChoice,
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
      georaster-cnn train tile.tif --labels tile_labels.tif --store tile_windows.zarr \\
          --memory 4096 --epochs 20 -o tile.safetensors
    """
    state = get_state(ctx)
    check_scheduler(cluster)
    found = labelled_inputs(inputs, labels, column=label_column, stride=stride, bands=bands)
    if found.chips and (store is not None or memory is not None):
        raise click.UsageError("--store and --memory apply to rasters; chip sets are read whole")
    with usage_errors():  # the library refuses only when it saves, after training
        check_output(output, overwrite=overwrite)
    common: dict[str, Any] = {
        "arch": arch, "epochs": epochs, "batch_size": batch_size, "device": device,
        "seed": seed, "val_fraction": val_fraction, "patience": patience, "augment": augment,
    }  # fmt: skip
    if found.chips and patch is not None:
        raise click.UsageError("--patch is for rasters: a chip's size is its patch size")
    rasters = None if found.chips else {
        "label_column": label_column, "min_cover": min_cover, "val_block": val_block,
        "stride": stride, "patch_size": options.DEFAULT_PATCH if patch is None else patch,
    }  # fmt: skip
    common["device"] = str(report_device(state, _checked(common, rasters)))  # resolved once
    read = {"bands": bands, "open_options": open_options}
    import georaster_cnn as gc

    checkpoint = gc.checkpoint_path(output)
    scale = {
        "store": store, "memory": memory, "checkpoint": checkpoint, "resume": resume,
        "allow_remote": open_options["allow_remote"],
    }  # fmt: skip
    with cluster_session(state, cluster):  # reading the training windows computes on it
        model, last = _fit(
            state, found, common=common, rasters=rasters, class_names=class_names, read=read,
            scale={} if found.chips else scale,
        )  # fmt: skip
    with report_warnings(state):
        saved = gc.save_model(model, output, overwrite=overwrite)
    checkpoint.unlink(missing_ok=True)  # the model holds all a rerun would continue
    if not state.quiet:
        _print_result(state, model, saved, last)


def _print_result(state: CLIState, model: GeoModel, path: Path, last: Mapping[str, Any]) -> None:
    """The windows (chips) per class in training and validation; what was saved, how it validates."""
    counts = class_counts_table(model)
    if counts is not None:
        state.out.print(counts)
    best = model.provenance.get("metrics") or last
    epochs = model.provenance.get("epochs", len(model.provenance.get("history", [])))
    where = f" (best epoch {best['epoch']})" if "epoch" in best else ""
    summary = (
        f"saved {path}: {model.arch}, {plural(len(model.band_names), 'band')}, "
        f"{plural(len(model.class_names), 'class')} ({', '.join(model.class_names)}), "
        f"{plural(int(epochs), 'epoch')}; validation accuracy "
        f"{format_number(best.get('val_accuracy'))}{where}"
    )
    state.out.print(summary, highlight=False, soft_wrap=True)
    scale = scale_summary(model.provenance)
    if scale:
        state.out.print(scale, highlight=False, soft_wrap=True)
