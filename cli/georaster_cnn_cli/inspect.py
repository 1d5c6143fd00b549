"""``georaster-cnn inspect``: describe rasters and judge how image-like they are."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from georaster_cnn_cli._common import (
    EXIT_FAILED,
    CLIError,
    CLIState,
    error_message,
    get_state,
    kv_table,
    plural,
    report_error,
    report_selected,
    usage_errors,
)
from georaster_cnn_cli._html import write_html
from georaster_cnn_cli._inputs import InputProblem, expand_inputs
from georaster_cnn_cli._options import source_options
from georaster_cnn_cli._stac import open_source, stac_options, stac_sources
from georaster_cnn_cli._warnings import report_warnings

__all__ = ["LagList", "inspect_cmd"]


class LagList(click.ParamType):
    """``1,2,4,8,16`` -> ``[1, 2, 4, 8, 16]``; the library checks that they are positive."""

    name = "LAGS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return [int(v) for v in str(value).split(",")]
        except ValueError:
            self.fail(
                f"{value!r}: expected comma-separated positive whole numbers of pixels, "
                "e.g. 1,2,4,8,16",
                param,
                ctx,
            )


def _check_options(lags: list[int], sample_pixels: int) -> None:
    """Checked once by the library, not once per INPUT."""
    from georaster_cnn import options

    with usage_errors():
        for lag in lags:
            options.check_positive("lags", lag, unit=" pixel")
        options.check_positive("sample_pixels", sample_pixels)


def _report_failure(state: CLIState, exc: BaseException, item: Any) -> None:
    """One ``error:`` line; ``inspect_raster``'s ``max_pixels`` (its sample) is ``--sample-pixels``.

    (``--max-pixels`` is the size limit of :func:`georaster_cnn.open_raster`.)
    """
    message = error_message(exc, item)
    sampling = "--max-pixels to sample more"
    if sampling in message:
        message = message.replace(sampling, "--sample-pixels to sample more")
        report_error(state, message, context=item)
    else:
        report_error(state, exc, context=item)


@click.command("inspect", short_help="Describe rasters and how image-like they are.")
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option(
    "--lags",
    type=LagList(),
    default="1,2,4,8,16",
    show_default=True,
    help="Distances in pixels at which Moran's I is measured.",
)
@click.option(
    "--sample-pixels",
    type=int,
    default=2_000_000,
    show_default=True,
    metavar="N",
    help="Rasters of more than N cells are measured on a seeded sample of 512 x 512 "
    "windows, about N cells in all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as a JSON list.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also write the reports, as printed, to the HTML page FILE (replaced if it exists).",
)
@source_options()
@stac_options()
@click.pass_context
def inspect_cmd(
    ctx: click.Context,
    inputs: tuple[str, ...],
    lags: list[int],
    sample_pixels: int,
    as_json: bool,
    html_file: Path | None,
    open_options: dict[str, Any],
) -> None:
    """Describe each INPUT raster and measure its spatial structure.

    Shows bands, dtype, CRS, resolution, nodata, per-band statistics and
    Moran's I of every band at each lag: near 1 where neighbouring cells are
    alike, near 0 where cells behave like unrelated values. A verdict says
    whether a CNN can exploit local patterns (docs/image-like.md explains it).
    INPUT may be files, folders or quoted glob patterns. Large rasters are
    described from a sample (--sample-pixels), whatever their size.

    \b
    Examples:
      georaster-cnn inspect scene.tif
      georaster-cnn inspect 'tiles/*.tif' --lags 1,4,16 --json
    """
    state = get_state(ctx)
    _check_options(lags, sample_pixels)
    import georaster_cnn as gc  # deferred: torch/Dask/GDAL load only when a command runs

    if not inputs and not open_options["stac"].search:
        raise click.UsageError("give at least one INPUT (or --stac-search URL)")
    try:  # STAC documents and searches become inputs of their own
        found = stac_sources(expand_inputs(inputs).items, open_options)
    except gc.GeorasterCNNError as exc:
        raise CLIError(error_message(exc)) from exc
    failed = False
    reports: list[dict[str, Any]] = []
    for item in found:
        if isinstance(item, InputProblem):
            report_error(state, item.message, context=item.spec)
            failed = True
            continue
        try:
            with report_warnings(state, context=str(item)):
                # opened here: inspect_raster opens a path with the reader's defaults
                source = open_source(item, bands=None, open_options=open_options)
                select = open_options.get("select")
                report_selected(state, source.attrs.get("selected"), select, context=item)
                report = gc.inspect_raster(source, lags=lags, max_pixels=sample_pixels)
        except (gc.GeorasterCNNError, OSError) as exc:
            _report_failure(state, exc, item)
            failed = True
            continue
        reports.append(report)
        if not as_json:
            _print_report(state, report)
    if html_file is not None and reports:

        def render(console: Console) -> None:
            for report in reports:
                _print_report(CLIState(out=console), report)

        names = ", ".join(Path(str(r["path"])).name for r in reports)
        write_html(html_file, f"georaster-cnn inspect: {names}", render)
    if as_json:
        # click.echo, not rich: JSON must not be wrapped or highlighted
        click.echo(json.dumps(reports, indent=2, allow_nan=False))
    if failed:
        ctx.exit(EXIT_FAILED)


def _num(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.4g}"


def _resolution(report: Mapping[str, Any]) -> str:
    xres, yres = report["resolution"]
    units = f" {report['crs_units']}" if report.get("crs_units") else ""
    if report.get("crs") is None and report["transform"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]:
        text = "none (pixel coordinates)"
    else:
        text = f"{_num(xres)} x {_num(yres)}{units}"
    if report.get("rotated"):
        text += f", rotated {report['rotation_deg']:.3g} deg (not north-up)"
    return text


def _print_report(state: CLIState, report: Mapping[str, Any]) -> None:
    out = state.out
    names = report["bands"]
    nb, h, w = report["shape"]
    overview = kv_table(f"Raster {report['path']}")
    overview.add_row("format", Text(str(report.get("driver") or "unknown")))
    overview.add_row("size", f"{plural(nb, 'band')}, {h} x {w} pixels (rows x columns)")
    overview.add_row("dtype", Text(str(report["dtype"])))
    overview.add_row("CRS", Text(str(report["crs"] or "none")))
    overview.add_row("resolution", Text(_resolution(report)))
    nodata = report.get("nodata")
    overview.add_row("nodata value", "none" if nodata is None else _num(nodata))
    overview.add_row(
        "nodata cells", f"{report['nodata_fraction']['overall']:.2%} (any band invalid)"
    )
    out.print(overview)
    out.print()

    stats = Table(title=f"Bands ({nb})", title_justify="left")
    stats.add_column("#", justify="right")
    stats.add_column("name")
    for label in ("mean", "std", "min", "max", "nodata"):
        stats.add_column(label, justify="right")
    for k, name in enumerate(names):
        s = report["stats"][name]
        stats.add_row(
            str(k + 1),
            Text(name),
            _num(s["mean"]),
            _num(s["std"]),
            _num(s["min"]),
            _num(s["max"]),
            f"{report['nodata_fraction']['bands'][name]:.1%}",
        )
    out.print(stats)
    out.print()

    sampling = report["sampling"]
    title = "Moran's I by lag (pixels)"
    if sampling["subsampled"]:
        title += (
            f" - estimated from {plural(sampling['windows'], 'window')}, {sampling['pixels']} px"
        )
    moran = Table(title=title, title_justify="left")
    moran.add_column("band")
    for lag in report["lags"]:
        moran.add_column(f"{lag} px", justify="right")
    moran.add_column("structure")
    for name in names:
        values = report["morans_i"][name]
        moran.add_row(
            Text(name),
            *(_num(values.get(lag, values.get(str(lag)))) for lag in report["lags"]),
            report["structure"][name],
        )
    out.print(moran)
    out.print()

    verdict = kv_table("Verdict")
    for name in names:
        verdict.add_row(Text(name), Text(report["verdict"]["bands"][name]))
    verdict.add_row("overall", Text(report["verdict"]["overall"], style="bold"))
    out.print(verdict)
    out.print(Text(report["note"], style="dim"))
    out.print()
