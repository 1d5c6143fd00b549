"""``georaster-cnn windows build``: cut every labelled window once into a window store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from georaster_cnn import options
from georaster_cnn_cli._cluster import SchedulerChoice, check_scheduler, cluster_session
from georaster_cnn_cli._common import escape, get_state, kv_table, usage_errors
from georaster_cnn_cli._labels import labelled_inputs, labels_options, open_labelled
from georaster_cnn_cli._options import (
    LOCATION,
    input_options,
    overwrite_option,
    scheduler_options,
    store_option,
    stride_option,
)
from georaster_cnn_cli._progress import DaskProgress, make_progress
from georaster_cnn_cli._warnings import report_warnings

__all__ = ["windows"]


@click.group("windows", short_help="Window stores: every labelled window, cut once.")
def windows() -> None:
    """Window stores: the labelled training windows of rasters, cut once into a Zarr store.

    `train --store` builds one too; building it apart (on a cluster with
    --scheduler) lets many trainings share it.
    """


@windows.command("build", short_help="Cut the labelled windows of rasters into a window store.")
@click.argument("inputs", nargs=-1, required=True, type=LOCATION, metavar="INPUT...")
@labels_options(
    "Class-id raster on the INPUT's grid, once per INPUT in the same order; or one vector "
    "file of points or polygons in any CRS for all INPUTs (as for `train`).",
    "Vector labels: the attribute holding each feature's class. [default: the only attribute]",
)
@store_option(required=True)
@click.option(
    "--min-cover", type=float, default=options.DEFAULT_MIN_COVER, show_default=True,
    help="Polygon labels: minimum share of a window inside polygons of its class.",
)  # fmt: skip
@click.option(
    "--val-block", type=int, default=options.DEFAULT_VAL_BLOCK, show_default=True,
    metavar="PIXELS", help="Side of the blocks of the spatially blocked validation split.",
)  # fmt: skip
@click.option(
    "--val-fraction", type=float, default=options.DEFAULT_VAL_FRACTION, show_default=True,
    help="Share of blocks held out for validation, in [0, 1).",
)  # fmt: skip
@click.option(
    "--patch", type=int, default=options.DEFAULT_PATCH, show_default=True, metavar="PIXELS",
    help="Side of the square windows (the model's patch size), as `train --patch`.",
)  # fmt: skip
@stride_option("Spacing of training windows in pixels, 1..patch size.", "patch size / 4")
@click.option(
    "--seed", type=int, default=0, show_default=True,
    help="Seed of the split; train with the same --seed to use the store.",
)  # fmt: skip
@input_options()
@overwrite_option("Replace the store if it exists.")
@scheduler_options()
@click.pass_context
def build(
    ctx: click.Context,
    inputs: tuple[Path, ...],
    labels: tuple[Path, ...],
    label_column: str | None,
    store: str | Path,
    min_cover: float,
    val_block: int,
    val_fraction: float,
    patch: int,
    stride: int | None,
    seed: int,
    bands: list[int | str] | None,
    open_options: dict[str, Any],
    overwrite: bool,
    cluster: SchedulerChoice,
) -> None:
    """Cut the labelled windows of INPUT rasters into the window store --store.

    The windows, their labels, centres, raster of origin and split are written
    blockwise, shard by shard, by the Dask workers (--scheduler; the store must
    be reachable from them). Train on it with `georaster-cnn train` given the
    same INPUTs, labels and options and --store.

    \b
    Example:
      georaster-cnn windows build tile.tif --labels tile_labels.tif \\
          --store tile_windows.zarr --scheduler local:4
      georaster-cnn train tile.tif --labels tile_labels.tif \\
          --store tile_windows.zarr --memory 4096 -o tile.safetensors
    """
    import georaster_cnn as gc

    state = get_state(ctx)
    check_scheduler(cluster)
    found = labelled_inputs(inputs, labels, column=label_column, stride=stride, bands=bands)
    if found.chips:
        raise click.UsageError("windows build takes rasters with --labels; chip sets are stores")
    with usage_errors():
        options.check_fraction("val_fraction", val_fraction, high_open=True)
        options.check_positive("val_block", val_block, unit=" pixel")
        options.check_positive("patch", patch, unit=" pixel")  # as --patch
        options.training_stride(patch, stride)
    with cluster_session(state, cluster), report_warnings(state), make_progress(state) as bar:
        datas, labs = open_labelled(state, found.pairs, bands=bands, open_options=open_options)
        task = bar.add_task("cutting windows", total=None)
        with DaskProgress(bar, task):
            built = gc.build_window_store(
                datas, labs, store, label_column=label_column, patch_size=patch, stride=stride,
                min_cover=min_cover, val_fraction=val_fraction, val_block=val_block,
                seed=seed, overwrite=overwrite, allow_remote=open_options["allow_remote"],
            )  # fmt: skip
    if not state.quiet:
        n_val = int(built.val.sum())
        table = kv_table("Window store")
        table.add_row("store", escape(str(store)))
        table.add_row(
            "windows", f"{len(built):,} ({len(built) - n_val:,} training, {n_val:,} validation)"
        )
        table.add_row("dropped in buffer", f"{len(built.dropped):,}")
        table.add_row("shards", f"{-(-len(built) // built.shard):,} of {built.shard:,} windows")
        state.out.print(table)
