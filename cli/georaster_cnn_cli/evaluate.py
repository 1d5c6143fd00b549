"""``georaster-cnn evaluate``: accuracy of a model against reference labels."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from georaster_cnn.options import InferenceOptions, evaluation_stride
from georaster_cnn_cli._cluster import SchedulerChoice, check_scheduler, cluster_session
from georaster_cnn_cli._common import (
    CLIState,
    get_state,
    plural,
    report_device,
    usage_errors,
)
from georaster_cnn_cli._html import write_html
from georaster_cnn_cli._labels import (
    LabelSource,
    labelled_inputs,
    labels_options,
    open_labelled,
)
from georaster_cnn_cli._options import (
    LOCATION,
    inference_options,
    input_options,
    overwrite_option,
    scheduler_options,
)
from georaster_cnn_cli._progress import DaskProgress, make_progress
from georaster_cnn_cli._stac import stac_options
from georaster_cnn_cli._warnings import load_model_or_exit, report_warnings

if TYPE_CHECKING:
    from georaster_cnn import EvaluationReport, GeoModel

__all__ = ["evaluate", "print_report"]

_REASONS = {
    "centre_outside_raster": "centre outside the raster",
    "unlabelled": "unlabelled",
    "no_prediction": "no prediction",
}


def _options(
    model: GeoModel,
    *,
    chips: bool,
    stride: int | None,
    batch_size: int,
    min_valid: float | None,
    device: Any,
) -> InferenceOptions:
    """Every option checked once, up front, by the library; the device resolved once."""
    import georaster_cnn as gc

    with usage_errors():
        return InferenceOptions.resolve(
            model,
            stride=None if chips else evaluation_stride(model, stride),
            batch_size=batch_size,
            min_valid=min_valid,
            device=gc.resolve_device(device),
        )


def _evaluate_chips(
    state: CLIState, model: GeoModel, inputs: Sequence[Path], opts: InferenceOptions
) -> EvaluationReport:
    """Every chip classified whole and compared with its label."""
    import georaster_cnn as gc
    from georaster_cnn.training.chipdata import merge_chips

    with report_warnings(state), make_progress(state) as progress:
        with usage_errors():
            chipset = merge_chips([gc.load_chips(p) for p in inputs])
        task = progress.add_task(
            f"evaluating {plural(len(chipset), 'chip')}", total=None, stage="evaluating"
        )
        report = gc.evaluate_chips(
            chips=chipset,
            model=model,
            options=opts,  # resolved once, passed as they are
        )
        progress.update(task, completed=1, total=1)
    return report


def _evaluate_rasters(
    state: CLIState,
    model: GeoModel,
    pairs: Sequence[tuple[Path, LabelSource]],
    opts: InferenceOptions,
    *,
    label_column: str | None,
    read: dict[str, Any],
) -> EvaluationReport:
    """The rasters opened and their labels read, then one report over all of them."""
    import georaster_cnn as gc

    with report_warnings(state), make_progress(state) as progress:
        datas, labs = open_labelled(state, pairs, model_bands=model.band_names, **read)
        task = progress.add_task(
            f"evaluating {plural(len(datas), 'raster')}", total=None, stage="evaluating"
        )
        with DaskProgress(progress, task):
            return gc.evaluate(
                data=datas,
                model=model,
                labels=labs,
                label_column=label_column,
                options=opts,  # resolved once, passed as they are
            )


@click.command(
    "evaluate",
    short_help="Accuracy of a model against labels (rasters, vectors, chips); writes a report.",
)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument(
    "inputs", nargs=-1, required=True, type=LOCATION, metavar="INPUT...",
)  # fmt: skip
@labels_options(
    "Reference class-id raster on the INPUT's grid (the model's ids 0..K-1, nodata = "
    "unlabelled), once per INPUT in the same order; or a vector file of points or polygons "
    "in any CRS, once for all INPUTs. Not for chip datasets, which hold their labels.",
    "Vector labels: the attribute holding each feature's class, as the model's class "
    "names or ids. [default: the only attribute]",
)
@click.option(
    "-o",
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="REPORT_DIR",
    help="Folder for metrics.json, per_class.csv, confusion_matrix.csv/.png (created if missing).",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also write the report, as printed, with the confusion matrix plot, to the HTML page "
    "FILE (e.g. REPORT_DIR/report.html; replaced if it exists).",
)
@inference_options(
    "Spacing of the evaluated windows in pixels (one cell per stride x stride pixels), "
    "1..patch size.",
    "the model's training stride, else patch size / 4",
)
@input_options()
@stac_options(search=False)
@overwrite_option("Replace a report that exists in REPORT_DIR.")
@scheduler_options()
@click.pass_context
def evaluate(
    ctx: click.Context,
    model: Path,
    inputs: tuple[Path, ...],
    labels: tuple[Path, ...],
    label_column: str | None,
    output_dir: Path,
    html_file: Path | None,
    stride: int | None,
    batch_size: int,
    device: str,
    bands: list[int | str] | None,
    open_options: dict[str, Any],
    min_valid: float | None,
    overwrite: bool,
    cluster: SchedulerChoice,
) -> None:
    """Compare MODEL's classes on INPUT rasters with reference labels.

    Every output cell (one per --stride pixels, as `predict` makes them) is
    compared with the label of its window's centre pixel (a label raster's
    pixel, or the polygon holding it); cells whose centre is unlabelled or
    outside the raster, or that get no prediction, are left out and counted.
    Point labels: the window centred on each point is compared with the
    point's class. All INPUTs add up into one report: a table on screen and
    metrics.json, per_class.csv, confusion_matrix.csv and confusion_matrix.png
    in REPORT_DIR. The stride defaults to the one the model was trained with.

    INPUTs may instead be labelled chips (as for `train`, without --labels):
    every chip is classified whole and compared with its label; class
    folders are matched to the model's classes by name.

    Evaluate on data the model was not trained on: scores on training data
    are optimistic.

    \b
    Examples:
      georaster-cnn evaluate landcover.safetensors test.tif --labels test_labels.tif -o report/
      georaster-cnn evaluate landcover.safetensors a.tif b.tif --labels checks.gpkg \\
          --label-column landcover -o report/
      georaster-cnn evaluate chips.safetensors test_chips/ -o report/
    """
    state = get_state(ctx)
    check_scheduler(cluster)
    resolved = report_device(state, device)  # said first; resolved once
    found = labelled_inputs(inputs, labels, column=label_column, stride=stride, bands=bands)
    from georaster_cnn.evaluation.report import check_report_folder

    with usage_errors():  # the library refuses only when it writes, after evaluating
        check_report_folder(output_dir, overwrite=overwrite)
    geo_model = load_model_or_exit(state, model)
    opts = _options(
        geo_model,
        chips=bool(found.chips),
        stride=stride,
        batch_size=batch_size,
        min_valid=min_valid,
        device=resolved,
    )
    with cluster_session(state, cluster):
        if found.chips:
            report = _evaluate_chips(state, geo_model, found.chips, opts)
        else:
            read = {"bands": bands, "open_options": open_options}
            report = _evaluate_rasters(
                state, geo_model, found.pairs, opts, label_column=label_column, read=read
            )
    written = _write_and_print(state, report, output_dir, overwrite=overwrite)
    if html_file is not None:
        plots = [p for p in written if p.suffix == ".png"]
        png = os.path.relpath(plots[0], html_file.parent.absolute())
        plot = f'<p><img src="{html.escape(Path(png).as_posix())}" alt="confusion matrix"></p>'
        title = f"georaster-cnn evaluate: {model.name}"
        write_html(html_file, title, lambda console: print_report(CLIState(out=console), report),
                   extra=plot)  # fmt: skip


def _write_and_print(
    state: CLIState, report: EvaluationReport, output_dir: Path, *, overwrite: bool
) -> list[Path]:
    with report_warnings(state):
        written = report.write(output_dir, overwrite=overwrite)
    if not state.quiet:
        print_report(state, report)
        state.out.print(f"report written to {output_dir}/", highlight=False, soft_wrap=True)
    return written


def _score(value: float, undefined: bool) -> str:
    return f"{value:.3f}{'*' if undefined else ''}"


def print_report(state: CLIState, report: EvaluationReport) -> None:
    """Per-class metrics, overall scores and the confusion matrix on stdout."""
    undefined = report.zero_division
    table = Table(title="per class", title_justify="left")
    table.add_column("class")
    for name in ("precision", "recall", "F1", "support", "predicted"):
        table.add_column(name, justify="right")
    for k, name in enumerate(report.class_names):
        table.add_row(
            Text(name),
            _score(report.precision[k], name in undefined["precision"]),
            _score(report.recall[k], name in undefined["recall"]),
            _score(report.f1[k], name in undefined["f1"]),
            f"{int(report.support[k]):,}",
            f"{int(report.predicted[k]):,}",
        )
    state.out.print(table)
    if any(undefined.values()):
        state.out.print(
            "* undefined (0/0: class never predicted or absent from the labels); shown as 0",
            highlight=False,
        )

    cm = Table(title="confusion matrix (rows: label, columns: predicted)", title_justify="left")
    cm.add_column("label \\ predicted")
    for name in report.class_names:
        cm.add_column(Text(name), justify="right")
    for i, name in enumerate(report.class_names):
        cells = [
            Text(f"{int(n):,}", style="bold" if i == j else "")
            for j, n in enumerate(report.confusion[i])
        ]
        cm.add_row(Text(name), *cells)
    state.out.print(cm)

    excluded = ", ".join(
        f"{n:,} {_REASONS.get(reason, reason)}" for reason, n in report.n_excluded.items() if n
    )
    unit = getattr(report, "unit", "cells")
    where = f" (stride {report.stride} px)" if unit == "cells" else ""
    state.out.print(
        f"accuracy {report.accuracy:.3f}, macro F1 {report.macro_f1:.3f}, "
        f"weighted F1 {report.weighted_f1:.3f} over {report.n_evaluated:,} {unit}"
        f"{where}; excluded: {excluded or 'none'}",
        highlight=False,
        soft_wrap=True,
    )
