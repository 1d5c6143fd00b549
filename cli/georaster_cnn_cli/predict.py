"""``georaster-cnn predict``: classify many rasters with one model, tile by tile."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from georaster_cnn.formats import INPUT_SUFFIXES, OUTPUT_FORMATS
from georaster_cnn.options import DEFAULT_BATCH_SIZE, InferenceOptions
from georaster_cnn_cli._cluster import SchedulerChoice, check_scheduler, cluster_session
from georaster_cnn_cli._common import (
    EXIT_FAILED,
    CLIState,
    error_message,
    escape,
    fail,
    get_state,
    load_model_or_exit,
    plural,
    report_error,
    report_selected,
    report_warnings,
    usage_errors,
)
from georaster_cnn_cli._inputs import Job, TileResult, expand_inputs, plan_outputs
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
from georaster_cnn_cli._progress import DaskProgress, make_progress
from georaster_cnn_cli._vectors import check_vector_output, vector_option, write_vectors_of

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from georaster_cnn import GeoModel

__all__ = ["predict"]

_STATUS_STYLE = {"written": "green", "skipped": "yellow", "failed": "bold red"}


@dataclass(frozen=True)
class _Extra:
    """One more file made from each class map: ``--vector``, ``--qml``, ``--quicklook``.

    Attributes
    ----------
    what
        Names the output in error messages ("vector output", "QGIS style", ...).
    suffix
        Of the extra file, which lies beside the class map.
    write
        ``write(class map, overwrite)`` -> (file written, short summary or "").
    """

    what: str
    suffix: str
    write: Callable[[Path, bool], tuple[Path, str]]


@dataclass(frozen=True)
class _Settings:
    """What every tile of one call shares: checked options and the outputs asked for."""

    options: InferenceOptions
    probabilities: bool
    overwrite: bool
    bands: list[int | str] | None = None
    open_options: dict[str, Any] = field(default_factory=dict)
    extras: Sequence[_Extra] = ()
    dense: bool | None = None


def _extras(vector: str | None, qml: bool, quicklook: bool) -> list[_Extra]:
    """The extra outputs asked for, in the order they are made."""
    import georaster_cnn as gc

    def vectors(cmap: Path, overwrite: bool) -> tuple[Path, str]:
        return write_vectors_of(cmap, cmap.with_suffix(f".{vector}"), overwrite=overwrite)

    def style(cmap: Path, overwrite: bool) -> tuple[Path, str]:
        return gc.write_qml(cmap, overwrite=overwrite), ""

    def preview(cmap: Path, overwrite: bool) -> tuple[Path, str]:
        return gc.write_quicklook(cmap, overwrite=overwrite), ""

    asked = [
        (vector is not None, _Extra("vector output", f".{vector}", vectors)),
        (qml, _Extra("QGIS style", ".qml", style)),
        (quicklook, _Extra("quicklook", ".png", preview)),
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
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-o",
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the class maps (created if missing); INPUT a/b/scene.tif -> OUTDIR/scene.tif, "
    "a/b/scene.nc -> OUTDIR/scene.nc (see --format).",
    metavar="OUTDIR",
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
@overwrite_option("Replace outputs that exist. [default: skip them]")
@min_valid_option()
@vector_option()
@click.option(
    "--qml",
    is_flag=True,
    help="Also write a QGIS style OUTDIR/<stem>.qml (classes in their colours, named), "
    "which QGIS applies when it opens the class map.",
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
@scheduler_options()
@click.pass_context
def predict(
    ctx: click.Context,
    model: Path,
    inputs: tuple[str, ...],
    output_dir: Path,
    stride: int | None,
    batch_size: int,
    device: str,
    probabilities: bool,
    bands: list[int | str] | None,
    open_options: dict[str, Any],
    overwrite: bool,
    min_valid: float | None,
    vector: str | None,
    qml: bool,
    quicklook: bool,
    output_format: str | None,
    dense: bool | None,
    cluster: SchedulerChoice,
) -> None:
    """Classify rasters with MODEL and write one class map per INPUT.

    INPUT is a raster file, a folder (its raster files, by the suffixes listed
    under --format, and its Zarr stores; not recursive) or a quoted glob
    pattern such as 'tiles/*.tif' ('**' recurses). Outputs that exist are
    skipped unless --overwrite. A tile that fails is reported and the others
    go on; the exit status is 1 if any tile failed, 2 if nothing was tried
    (unusable model or option).

    The class map is a COG OUTDIR/<stem>.tif, or a CF-1.8 netCDF OUTDIR/<stem>.nc
    for a netCDF input; --format cog|gtiff|zarr|netcdf chooses one for all.
    By default each output cell is one window of the model's patch size.

    With --vector SUFFIX each class map is also vectorised into
    OUTDIR/<stem>.SUFFIX (as 'vectorize' does); --qml adds a QGIS style
    OUTDIR/<stem>.qml and --quicklook a PNG preview OUTDIR/<stem>.png. They are
    made from the class map in whatever format it was written. Such an extra
    file that exists is skipped unless --overwrite, a missing one is made from
    an existing class map, and a failed one fails its tile.

    \b
    Example:
      georaster-cnn predict landcover.safetensors 'tiles/*.tif' scene.nc -o maps/ --stride 32
    """
    state = get_state(ctx)
    started = time.perf_counter()
    check_scheduler(cluster)  # a bad --scheduler fails before the model is read
    geo_model = load_model_or_exit(state, model)
    with usage_errors():  # checked once, the device resolved once: a bad option fails no tile
        options = InferenceOptions.resolve(
            geo_model, stride=stride, batch_size=batch_size, min_valid=min_valid, device=device
        )
    if vector is not None:
        check_vector_output(output_dir / f"<stem>.{vector}", f"--vector {vector}")
    settings = _Settings(
        options,
        probabilities=probabilities,
        overwrite=overwrite,
        bands=bands,
        open_options=open_options,
        extras=_extras(vector, qml, quicklook),
        dense=dense,
    )
    plan = _plan(state, inputs, output_dir, output_format)
    with cluster_session(state, cluster) as session:
        results = _run(state, plan, geo_model, settings, distributed=session.distributed)
    if not state.quiet:
        _print_summary(state, results, time.perf_counter() - started)
    if any(r.status == "failed" for r in results):
        ctx.exit(EXIT_FAILED)


def _plan(
    state: CLIState, inputs: Sequence[str], output_dir: Path, fmt: str | None
) -> list[Job | TileResult]:
    """Inputs -> jobs; an input that cannot be run is reported now and fails in the plan."""
    plan = plan_outputs(expand_inputs(inputs), output_dir, format=fmt)
    for r in plan:
        if isinstance(r, TileResult):
            report_error(state, r.message, context=r.input)
    if any(isinstance(j, Job) for j in plan):
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create output folder {output_dir}: {error_message(exc)}")
    return plan


def _run(
    state: CLIState,
    plan: Sequence[Job | TileResult],
    model: GeoModel,
    settings: _Settings,
    *,
    distributed: bool = False,
) -> list[TileResult]:
    """Run the jobs in order under one progress display; the result of every input.

    On a distributed cluster too the tiles run one after another (each one's
    blocks spread over the workers); the block bar then follows the blocks
    written, the tile bar the tiles finished.
    """
    results: list[TileResult] = []
    with make_progress(state) as progress:
        overall = progress.add_task("tiles", total=sum(isinstance(j, Job) for j in plan))
        chunks = progress.add_task("", total=None, visible=False)
        for item in plan:
            if isinstance(item, TileResult):
                results.append(item)
                continue
            progress.reset(chunks, total=None, description=escape(item.source.name), visible=True)
            results.append(
                _predict_one(
                    state, item, model, settings, progress, chunks, distributed=distributed
                )
            )
            progress.advance(overall)
        progress.update(chunks, visible=False)
    return results


def _predict_one(
    state: CLIState,
    job: Job,
    model: GeoModel,
    settings: _Settings,
    progress: Progress,
    task: TaskID,
    *,
    distributed: bool = False,
) -> TileResult:
    """open -> predict -> write one tile; every failure becomes a failed result, never a raise."""
    import georaster_cnn as gc

    name = str(job.source)
    t0 = time.perf_counter()
    if job.output.exists() and not settings.overwrite:
        skipped = TileResult(name, "skipped", job.output, message="output exists (--overwrite)")
        return _add_extras(state, skipped, settings.extras, overwrite=False, t0=t0)
    opts = settings.options
    try:
        with report_warnings(state, context=name):
            data = gc.open_raster(job.source, bands=settings.bands, **settings.open_options)
            select = settings.open_options.get("select")
            report_selected(state, data.attrs.get("selected"), select, context=name)
            pred = gc.predict(
                data,
                model,
                stride=opts.stride,
                batch_size=opts.batch_size,
                # resolved once for all tiles; predict takes the torch.device as it is,
                # though its annotation still says str
                device=opts.device,
                min_valid=opts.min_valid,
                dense=settings.dense,
            )

            def blocks(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            # Dask's local callbacks never fire on a cluster; the writer reports blocks there
            with nullcontext() if distributed else DaskProgress(progress, task):
                written = gc.write_prediction(
                    pred,
                    job.output,
                    format=job.format,
                    probabilities=settings.probabilities,
                    overwrite=settings.overwrite,
                    progress=blocks if distributed else None,
                )
    except Exception as exc:  # one bad tile must not stop the batch
        report_error(state, exc, context=name)
        message = error_message(exc, job.source)
        return TileResult(name, "failed", job.output, time.perf_counter() - t0, message)
    done = TileResult(name, "written", written, time.perf_counter() - t0)
    return _add_extras(state, done, settings.extras, overwrite=settings.overwrite, t0=t0)


def _add_extras(
    state: CLIState,
    result: TileResult,
    extras: Sequence[_Extra],
    *,
    overwrite: bool,
    t0: float,
) -> TileResult:
    """Make the tile's extra outputs from its class map, each unless it exists.

    An extra file that exists is kept without ``--overwrite``; a missing one is
    made even when the class map itself was skipped. Each extra is tried; any
    failure fails the tile (the class map and the other extras stay).
    """
    if result.output is None or not extras:
        return result
    made, notes, failures = False, [result.message], []
    for extra in extras:
        out = result.output.with_suffix(extra.suffix)
        if out.exists() and not overwrite:
            notes.append(f"{out.name} exists (--overwrite)")
            continue
        try:
            with report_warnings(state, context=result.input):
                written, summary = extra.write(result.output, overwrite)
        except Exception as exc:  # that tile's failure; the class map itself stays
            message = f"{extra.what} {out}: {error_message(exc, out)}"
            report_error(state, message, context=result.input)
            failures.append(message)
            continue
        made = True
        notes.append(f"+ {written.name} ({summary})" if summary else f"+ {written.name}")
    seconds = time.perf_counter() - t0
    if failures:
        return replace(result, status="failed", seconds=seconds, message=_join(*failures))
    if not made:
        return replace(result, message=_join(*notes))
    return replace(result, status="written", seconds=seconds, message=_join(*notes))


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _print_summary(state: CLIState, results: list[TileResult], seconds: float) -> None:
    """A table of all inputs, then one line of counts."""
    if results:
        table = Table(title="predict", title_justify="left", show_lines=False)
        table.add_column("input", overflow="fold")
        table.add_column("status")
        table.add_column("output", overflow="fold")
        table.add_column("seconds", justify="right")
        table.add_column("message", overflow="fold")
        for r in results:
            table.add_row(
                Text(r.input),
                Text(r.status, style=_STATUS_STYLE[r.status]),
                Text(str(r.output) if r.output and r.status != "failed" else "-"),
                f"{r.seconds:.1f}" if r.status != "skipped" and r.seconds else "-",
                Text(r.message),
            )
        state.out.print(table)
    counts = Counter(r.status for r in results)
    line = (
        f"{counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed "
        f"({plural(len(results), 'input')}) in {seconds:.1f} s"
    )
    state.out.print(line, style="bold red" if counts["failed"] else None, highlight=False)
