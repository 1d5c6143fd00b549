"""``georaster-cnn predict``: classify many rasters with one model, tile by tile."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import click
from rich.table import Table
from rich.text import Text

from georaster_cnn.io.formats import INPUT_SUFFIXES, OUTPUT_FORMATS
from georaster_cnn.options import DEFAULT_BATCH_SIZE, InferenceOptions
from georaster_cnn_cli._cluster import SchedulerChoice, check_scheduler, cluster_session
from georaster_cnn_cli._common import (
    EXIT_FAILED,
    CLIState,
    error_message,
    fail,
    get_state,
    plural,
    report_device,
    report_error,
    usage_errors,
)
from georaster_cnn_cli._inputs import (
    ExpandedInputs,
    Job,
    TileResult,
    expand_inputs,
    plan_output_file,
    plan_outputs,
)
from georaster_cnn_cli._options import (
    bands_option,
    batch_size_option,
    device_option,
    min_valid_option,
    overwrite_option,
    scheduler_options,
    source_options,
    stride_option,
)
from georaster_cnn_cli._stac import stac_options, stac_sources
from georaster_cnn_cli._tiles import Extra, TileSettings, run_tiles, tiles_in_flight
from georaster_cnn_cli._vectors import check_vector_output, vector_option, write_vectors_of
from georaster_cnn_cli._warnings import load_model_or_exit

__all__ = ["predict"]

_STATUS_STYLE = {"written": "green", "skipped": "yellow", "failed": "bold red"}


def _extras(vector: str | None, qml: bool, quicklook: bool) -> list[Extra]:
    """The extra outputs asked for, in the order they are made."""
    import georaster_cnn as gc
    from georaster_cnn.products.styles import QML_SUFFIX, QUICKLOOK_SUFFIX

    def vectors(cmap: Path, overwrite: bool) -> tuple[Path, str]:
        return write_vectors_of(cmap, cmap.with_suffix(f".{vector}"), overwrite=overwrite)

    def style(cmap: Path, overwrite: bool) -> tuple[Path, str]:
        return gc.write_qml(cmap, overwrite=overwrite), ""

    def preview(cmap: Path, overwrite: bool) -> tuple[Path, str]:
        return gc.write_quicklook(cmap, overwrite=overwrite), ""

    asked = [
        (vector is not None, Extra("vector output", f".{vector}", vectors)),
        (qml, Extra("QGIS style", QML_SUFFIX, style)),
        (quicklook, Extra("quicklook", QUICKLOOK_SUFFIX, preview)),
    ]
    return [extra for on, extra in asked if on]


def _format_help() -> str:
    """``--format`` help from the library's format tables."""
    kinds = "; ".join(
        f"{name}: {spec.description}, OUTDIR/<stem>{spec.suffix}"
        for name, spec in OUTPUT_FORMATS.items()
    )
    by_default: dict[str, list[str]] = {}
    for suffix, fmt in INPUT_SUFFIXES.items():
        by_default.setdefault(fmt.default_output, []).append(suffix)
    defaults = ", ".join(f"{fmt} for {' '.join(s)} inputs" for fmt, s in by_default.items())
    return f"Class map format ({kinds}). [default: {defaults}]"


@click.command("predict", short_help="Classify rasters with a model; one class map per INPUT.")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the class maps (created if missing); INPUT a/b/scene.tif -> OUTDIR/scene.tif, "
    "a/b/scene.nc -> OUTDIR/scene.nc (see --format).",
    metavar="OUTDIR",
)
@click.option(
    "--output",
    "output_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Instead of --output-dir, for one INPUT: its class map FILE, the format from its "
    "suffix (.tif COG, .nc netCDF, .zarr); extras beside it (FILE.qml ...).",
)
@stride_option(
    "Output cell size in input pixels: one class per stride x stride pixels, 1..patch size; "
    "smaller strides overlap the windows for a finer map.",
    "the model's patch size",
)
@batch_size_option(default=DEFAULT_BATCH_SIZE)
@device_option()
@click.option(
    "--probabilities", is_flag=True, help="Also write one probability band (percent) per class."
)
@bands_option()
@source_options()
@stac_options()
@overwrite_option("Replace outputs that exist. [default: skip them]")
@min_valid_option()
@vector_option()
@click.option(
    "--qml/--no-qml",
    default=None,
    help="Also write a QGIS style OUTDIR/<stem>.qml (classes in their colours, named), "
    "which QGIS applies when it opens the class map. [default: with --probabilities, "
    "whose extra bands QGIS would otherwise show as an RGB image]",
)
@click.option(
    "--quicklook",
    is_flag=True,
    help="Also write a PNG preview OUTDIR/<stem>.png with a legend (at most 1024 px).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(list(OUTPUT_FORMATS), case_sensitive=False),
    default=None,
    help=_format_help(),
)
@click.option(
    "--dense/--no-dense",
    default=None,
    help="Run the network's convolutional trunk once per block and pool every window from "
    "it (same classes, a fine --stride at about the cost of the coarsest), or one forward "
    "pass per window. [default: dense when the model's architecture allows it (cnn_dense)]",
)
@click.option(
    "--engine",
    type=click.Choice(["torch", "onnxruntime"]),
    default="torch",
    show_default=True,
    help="Who runs the network: torch (any --device) or onnxruntime (CPU only, needs the "
    "onnxruntime package; same classes, faster on CPUs: see benchmarks/README.md).",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    help="Record each finished block beside the staged output, so that the same command "
    "rerun after an interruption (Ctrl-C, SIGTERM, a killed process) continues from them; "
    "--no-resume starts afresh and discards what an interrupted run kept. [default: resume]",
)
@click.option(
    "--stac-item",
    is_flag=True,
    help="Also write a STAC Item OUTDIR/<stem>.json beside each COG/GeoTIFF class map "
    "(footprint, proj: fields, classes, derived_from links, the model).",
)
@scheduler_options()
@click.pass_context
def predict(
    ctx: click.Context,
    model: Path,
    inputs: tuple[str, ...],
    output_dir: Path | None,
    output_file: Path | None,
    stride: int | None,
    batch_size: int,
    device: str,
    probabilities: bool,
    bands: list[int | str] | None,
    open_options: dict[str, Any],
    overwrite: bool,
    min_valid: float | None,
    vector: str | None,
    qml: bool | None,
    quicklook: bool,
    output_format: str | None,
    dense: bool | None,
    engine: str,
    resume: bool,
    stac_item: bool,
    cluster: SchedulerChoice,
) -> None:
    """Classify rasters with MODEL and write one class map per INPUT.

    INPUT is a raster file, a folder (its raster files, by the suffixes listed
    under --format, and its Zarr stores; not recursive) or a quoted glob
    pattern such as 'tiles/*.tif' ('**' recurses). Outputs that exist are
    skipped unless --overwrite. A tile that fails is reported and the others
    go on; the exit status is 1 if any tile failed, 2 if nothing was tried
    (unusable model or option). On a cluster (--scheduler local, an address or
    --scheduler-file) a few tiles run at once. An interrupted run keeps the
    finished blocks of the tiles it was writing: the same command continues
    from them, --no-resume starts afresh.

    INPUT may also be a STAC Item or ItemCollection (a JSON file, or a URL with
    --allow-remote; recognised by its content), and --stac-search URL adds the
    Items a STAC API finds: their assets are mosaicked onto one grid (--crs,
    --resolution; --bbox, --datetime) and matched to the model's bands by name
    (--bands NAME=ASSET,... maps them); --per-item makes one map per Item.

    The class map is a COG OUTDIR/<stem>.tif, or a CF-1.8 netCDF OUTDIR/<stem>.nc
    for a netCDF input; --format cog|gtiff|zarr|netcdf chooses one for all.
    By default each output cell is one window of the model's patch size.

    With --vector SUFFIX each class map is also vectorised into
    OUTDIR/<stem>.SUFFIX (as 'vectorize' does); --qml adds a QGIS style
    OUTDIR/<stem>.qml and --quicklook a PNG preview OUTDIR/<stem>.png. They are
    made from the class map in whatever format it was written. Such an extra
    file that exists is skipped unless --overwrite, a missing one is made from
    an existing class map, and a failed one fails its tile.

    With --output FILE instead of -o, the one INPUT's class map is FILE (its
    suffix picks the format) and the extras lie beside it (FILE.qml ...).

    \b
    Examples:
      georaster-cnn predict landcover.safetensors 'tiles/*.tif' scene.nc -o maps/ --stride 32
      georaster-cnn predict landcover.safetensors scene.tif --output maps/landcover.tif
    """
    state = get_state(ctx)
    started = time.perf_counter()
    _check_usage(inputs, output_dir, output_file, open_options)
    check_scheduler(cluster)  # a bad --scheduler fails before the model is read
    resolved = report_device(state, device)  # said first; resolved once for all tiles
    geo_model = load_model_or_exit(state, model)

    with usage_errors():  # checked once, the device resolved once: a bad option fails no tile
        options = InferenceOptions.resolve(
            geo_model, stride=stride, batch_size=batch_size, min_valid=min_valid, device=resolved
        )
    folder = output_dir if output_dir is not None else cast(Path, output_file).parent
    if vector is not None:
        check_vector_output(folder / f"<stem>.{vector}", f"--vector {vector}")
    settings = TileSettings(
        options,
        probabilities=probabilities,
        overwrite=overwrite,
        bands=bands,
        open_options=open_options,
        extras=_extras(vector, probabilities if qml is None else qml, quicklook),
        dense=dense,
        resume=resume,
        stac_item=model.stem if stac_item else False,
        engine=engine,
    )
    one = output_file is not None
    plan = _plan(state, inputs, output_file or folder, output_format, open_options, one=one)
    with cluster_session(state, cluster) as session:  # on a cluster a few tiles at once
        in_flight = tiles_in_flight(session.worker_threads()) if session.distributed else None
        results = run_tiles(state, plan, geo_model, settings, in_flight=in_flight)
    if not state.quiet:
        _print_summary(state, results, time.perf_counter() - started, folder)
    if any(r.status == "failed" for r in results):
        ctx.exit(EXIT_FAILED)


def _check_usage(
    inputs: Sequence[str],
    output_dir: Path | None,
    output_file: Path | None,
    open_options: dict[str, Any],
) -> None:
    """Something to read, and exactly one place to write."""
    if (output_dir is None) == (output_file is None):
        raise click.UsageError("give one of -o/--output-dir OUTDIR and --output FILE")
    if not inputs and not open_options["stac"].search:
        raise click.UsageError("give at least one INPUT (or --stac-search URL)")


def _plan(
    state: CLIState,
    inputs: Sequence[str],
    output: Path,
    fmt: str | None,
    open_options: dict[str, Any],
    *,
    one: bool,
) -> list[Job | TileResult]:
    """Inputs -> jobs; an input that cannot be run is reported now and fails in the plan.

    ``output`` is OUTDIR, or with ``one`` the FILE of ``--output``.
    """
    import georaster_cnn as gc

    try:  # a STAC search, or a document split --per-item, read now
        found = ExpandedInputs(tuple(stac_sources(expand_inputs(inputs).items, open_options)))
    except gc.GeorasterCNNError as exc:
        fail(error_message(exc))
    if one:
        with usage_errors():  # one INPUT, a FILE whose suffix names a format
            plan = plan_output_file(found, output, format=fmt)
    else:
        plan = plan_outputs(found, output, format=fmt)
    output_dir = output.parent if one else output
    for r in plan:
        if isinstance(r, TileResult):
            report_error(state, r.message, context=r.input)
    if any(isinstance(j, Job) for j in plan):
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create output folder {output_dir}: {error_message(exc)}")
    return plan


def _print_summary(
    state: CLIState, results: list[TileResult], seconds: float, output_dir: Path
) -> None:
    """A table of all inputs, then one line of counts.

    Paths are never wrapped (a wrapped path cannot be copied): outputs are named
    relative to OUTDIR (the title names it), and the table is as wide as its paths
    need, wider than the terminal if it must; only messages fold.
    """
    if results:
        table = Table(title=f"predict -> {output_dir}", title_justify="left", show_lines=False)
        table.add_column("input", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("output", no_wrap=True)
        table.add_column("seconds", justify="right", no_wrap=True)
        table.add_column("message", overflow="fold", min_width=20)
        rows = []
        for r in results:
            shown = "-"
            if r.output and r.status != "failed":
                shown = r.output.name if r.output.parent == output_dir else str(r.output)
            took = f"{r.seconds:.1f}" if r.status != "skipped" and r.seconds else "-"
            rows.append((r.input, r.status, shown, took, r.message))
        for row in rows:
            table.add_row(
                Text(row[0]), Text(row[1], style=_STATUS_STYLE[row[1]]), Text(row[2]), row[3],
                Text(row[4]),
            )  # fmt: skip
        heads = ("input", "status", "output", "seconds")
        needed = 24 + sum(3 + max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(heads))
        width = state.out.width  # rich renders at most this wide: widen it for the table
        state.out.width = max(width, needed)
        try:
            state.out.print(table, crop=False)
        finally:
            state.out.width = width
    counts = Counter(r.status for r in results)
    line = (
        f"{counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed "
        f"({plural(len(results), 'input')}) in {seconds:.1f} s"
    )
    state.out.print(line, style="bold red" if counts["failed"] else None, highlight=False)
