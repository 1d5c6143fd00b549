"""``georaster-cnn predict``: classify many rasters with one model, tile by tile."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import click
from rich.table import Table
from rich.text import Text

from georaster_cnn_cli._common import (
    EXIT_FAILED,
    CLIState,
    DaskProgress,
    ExpandedInputs,
    InputProblem,
    error_message,
    escape,
    expand_inputs,
    fail,
    get_state,
    load_model_or_exit,
    make_progress,
    plural,
    report_error,
    report_warnings,
)
from georaster_cnn_cli._options import (
    bands_option,
    batch_size_option,
    dataset_options,
    device_option,
    min_valid_option,
    overwrite_option,
    stride_option,
)
from georaster_cnn_cli.vectorize import (
    check_vector_suffix,
    vector_option,
    write_vector_for,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from georaster_cnn import GeoModel
    from georaster_cnn.writer import OutputFormat

__all__ = ["TileResult", "output_format_for", "plan_outputs", "predict"]

Status = Literal["written", "skipped", "failed"]
_STATUS_STYLE = {"written": "green", "skipped": "yellow", "failed": "bold red"}


@dataclass
class TileResult:
    """What happened to one INPUT (a file, or an argument that matched nothing)."""

    input: str
    status: Status
    output: Path | None = None
    seconds: float = 0.0
    message: str = ""


@dataclass(frozen=True)
class _Job:
    source: Path
    output: Path
    format: OutputFormat = "cog"


@dataclass(frozen=True)
class _Extra:
    """One more file made from each class map: ``--vector``, ``--qml``, ``--quicklook``.

    Attributes
    ----------
    what
        Names the output in error messages ("vector output", "QGIS style", ...).
    path
        Class map -> the extra file beside it.
    write
        ``write(class map, overwrite)`` -> (file written, short summary or "").
    """

    what: str
    path: Callable[[Path], Path]
    write: Callable[[Path, bool], tuple[Path, str]]


def _extras(vector: str | None, qml: bool, quicklook: bool) -> list[_Extra]:
    """The extra outputs asked for, in the order they are made."""
    import georaster_cnn as gc

    extras = []
    if vector is not None:
        suffix = f".{vector.lower()}"
        extras.append(
            _Extra(
                "vector output",
                lambda p: p.with_suffix(suffix),
                lambda p, ow: write_vector_for(p, vector, overwrite=ow),
            )
        )
    if qml:
        extras.append(
            _Extra(
                "QGIS style",
                lambda p: p.with_suffix(".qml"),
                lambda p, ow: (gc.write_qml(p, overwrite=ow), ""),
            )
        )
    if quicklook:
        extras.append(
            _Extra(
                "quicklook",
                lambda p: p.with_suffix(".png"),
                lambda p, ow: (gc.write_quicklook(p, overwrite=ow), ""),
            )
        )
    return extras


_NETCDF_INPUTS = frozenset({".nc", ".nc4"})
_OUTPUT_SUFFIX = {"cog": ".tif", "gtiff": ".tif", "zarr": ".zarr", "netcdf": ".nc"}


def output_format_for(source: Path, format: str | None) -> OutputFormat:
    """``format``, or when None the input's family: netCDF for .nc/.nc4 inputs, else COG."""
    if format is not None:
        return cast("OutputFormat", format)
    return "netcdf" if source.suffix.lower() in _NETCDF_INPUTS else "cog"


def plan_outputs(
    found: ExpandedInputs, output_dir: Path, *, format: str | None = "cog"
) -> list[_Job | TileResult]:
    """Pair each input file with ``output_dir/<stem>.<suffix>``, in input order.

    ``format`` picks the suffix (``.tif`` for cog/gtiff, ``.zarr``, ``.nc``); None
    follows each input's family (see :func:`output_format_for`).

    Returns a job per input to run, and in its place a failed :class:`TileResult`
    for an argument that matched nothing, an input whose output name an earlier
    input already took, or an input that would be its own output.
    """
    plan: list[_Job | TileResult] = []
    taken: dict[str, Path] = {}
    for item in found.items:
        if isinstance(item, InputProblem):
            plan.append(TileResult(item.spec, "failed", message=item.message))
            continue
        out = output_dir / (item.stem + _OUTPUT_SUFFIX[output_format_for(item, format)])
        # casefold: on macOS/Windows scene.tif and Scene.tif are the same file
        key = out.name.casefold()
        if key in taken:
            message = (
                f"output {out} would also be written from {taken[key]}; "
                "rename one input or predict it into another --output-dir"
            )
            plan.append(TileResult(str(item), "failed", out, message=message))
        elif out.exists() and out.resolve() == item.resolve():
            message = "the output would replace this input; choose another --output-dir"
            plan.append(TileResult(str(item), "failed", out, message=message))
        else:
            taken[key] = item
            plan.append(_Job(item, out, output_format_for(item, format)))
    return plan


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
@stride_option(default=64)
@batch_size_option(default=256)
@device_option()
@click.option(
    "--probabilities", is_flag=True, help="Also write one probability band (percent) per class."
)
@bands_option()
@dataset_options()
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
    type=click.Choice(["cog", "gtiff", "zarr", "netcdf"], case_sensitive=False),
    default=None,
    help="Class map format: cog, gtiff (plain tiled GeoTIFF), zarr (OUTDIR/<stem>.zarr) or "
    "netcdf (OUTDIR/<stem>.nc, CF-1.8). [default: netcdf for .nc/.nc4 inputs, cog for others; "
    "cog for all with --vector/--qml/--quicklook]",
)
@click.pass_context
def predict(
    ctx: click.Context,
    model: Path,
    inputs: tuple[str, ...],
    output_dir: Path,
    stride: int,
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
) -> None:
    """Classify rasters with MODEL and write one class map per INPUT.

    INPUT is a raster file, a folder (its .tif/.tiff/.vrt/.img/.jp2/.nc/.nc4
    files, not recursive) or a quoted glob pattern such as 'tiles/*.tif'
    ('**' recurses). Outputs that exist are skipped unless --overwrite. A tile
    that fails is reported and the others go on; the exit status is 1 if any
    tile failed, 2 if nothing was tried (unusable model or option).

    The class map is a COG OUTDIR/<stem>.tif, or a CF-1.8 netCDF OUTDIR/<stem>.nc
    for a netCDF input; --format cog|gtiff|zarr|netcdf chooses one for all.

    With --vector SUFFIX each class map is also vectorised into
    OUTDIR/<stem>.SUFFIX (as 'vectorize' does); --qml adds a QGIS style
    OUTDIR/<stem>.qml and --quicklook a PNG preview OUTDIR/<stem>.png. Such an
    extra file that exists is skipped unless --overwrite, a missing one is made
    from an existing class map, and a failed one fails its tile.

    \b
    Example:
      georaster-cnn predict landcover.safetensors 'tiles/*.tif' scene.nc -o maps/ --stride 32
    """
    state = get_state(ctx)
    import georaster_cnn as gc  # deferred: torch/Dask/GDAL load only when a command runs

    geo_model = load_model_or_exit(state, model)
    try:
        gc.resolve_device(device)
    except gc.GeorasterCNNError as exc:  # it would fail every tile alike: say it once
        fail(f"--device {device}: {error_message(exc)}")
    if stride > geo_model.patch_size:
        fail(
            f"--stride {stride} is larger than the model's patch size {geo_model.patch_size}; "
            f"use 1..{geo_model.patch_size} (windows would skip pixels)"
        )
    if vector is not None:
        check_vector_suffix(vector, f"--vector {vector}")
    extras = _extras(vector, qml, quicklook)
    if output_format is not None:
        output_format = output_format.lower()
    if extras and output_format in ("zarr", "netcdf"):
        flags = [
            f for f, on in (("--vector", vector), ("--qml", qml), ("--quicklook", quicklook)) if on
        ]
        fail(
            f"{', '.join(flags)} need(s) a GeoTIFF class map; found --format {output_format}. "
            "Use --format cog or gtiff, or leave these flags out"
        )
    if extras and output_format is None:
        output_format = "cog"  # the extras are made from a GeoTIFF class map

    started = time.perf_counter()
    found = expand_inputs(inputs)
    plan = plan_outputs(found, output_dir, format=output_format)
    jobs = [j for j in plan if isinstance(j, _Job)]
    for r in plan:
        if isinstance(r, TileResult):
            report_error(state, r.message, context=r.input)
    if jobs:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create output folder {output_dir}: {error_message(exc)}")

    results: list[TileResult] = []
    with make_progress(state) as progress:
        overall = progress.add_task("tiles", total=len(jobs))
        chunks = progress.add_task("", total=None, visible=False)
        for item in plan:
            if isinstance(item, TileResult):
                results.append(item)
                continue
            progress.reset(chunks, total=None, description=escape(item.source.name), visible=True)
            result = _predict_one(
                state,
                item,
                geo_model,
                progress=progress,
                task=chunks,
                stride=stride,
                batch_size=batch_size,
                device=device,
                probabilities=probabilities,
                bands=bands,
                open_options=open_options,
                overwrite=overwrite,
                min_valid=min_valid,
                extras=extras,
            )
            results.append(result)
            progress.advance(overall)
        progress.update(chunks, visible=False)

    if not state.quiet:
        _print_summary(state, results, time.perf_counter() - started)
    if any(r.status == "failed" for r in results):
        ctx.exit(EXIT_FAILED)


def _predict_one(
    state: CLIState,
    job: _Job,
    model: GeoModel,
    *,
    progress: Progress,
    task: TaskID,
    stride: int,
    batch_size: int,
    device: str,
    probabilities: bool,
    bands: list[int | str] | None,
    overwrite: bool,
    min_valid: float | None,
    extras: Sequence[_Extra] = (),
    open_options: dict[str, Any] | None = None,
) -> TileResult:
    """open -> predict -> write one tile; every failure becomes a failed result, never a raise."""
    import georaster_cnn as gc

    name = str(job.source)
    if job.output.exists() and not overwrite:
        skipped = TileResult(name, "skipped", job.output, message="output exists (--overwrite)")
        return _add_extras(state, skipped, extras, overwrite=False, t0=time.perf_counter())
    t0 = time.perf_counter()
    try:
        with report_warnings(state, context=name):
            data = gc.open_raster(job.source, bands=bands, **(open_options or {}))
            pred = gc.predict(
                data,
                model,
                stride=stride,
                batch_size=batch_size,
                device=device,
                min_valid=min_valid,
            )
            with DaskProgress(progress, task):
                written = gc.write_prediction(
                    pred,
                    job.output,
                    format=job.format,
                    probabilities=probabilities,
                    overwrite=overwrite,
                )
    except Exception as exc:  # one bad tile must not stop the batch
        report_error(state, exc, context=name)
        return TileResult(
            name,
            "failed",
            job.output,
            time.perf_counter() - t0,
            error_message(exc, job.source),
        )
    done = TileResult(name, "written", written, time.perf_counter() - t0)
    return _add_extras(state, done, extras, overwrite=overwrite, t0=t0)


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
    if result.output is None:
        return result
    status, notes, failures = result.status, [result.message], []
    for extra in extras:
        out = extra.path(result.output)
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
        status = "written"
        notes.append(f"+ {written.name} ({summary})" if summary else f"+ {written.name}")
    if failures:
        return TileResult(
            result.input, "failed", result.output, time.perf_counter() - t0, _join(*failures)
        )
    if status == result.status and len(notes) == 1:
        return result
    seconds = time.perf_counter() - t0 if status == "written" else result.seconds
    return TileResult(result.input, status, result.output, seconds, _join(*notes))


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
