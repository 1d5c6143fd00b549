"""``georaster-cnn export``: a model as ONNX for QGIS (Deepness), ArcGIS Pro and STAC MLM."""

from __future__ import annotations

from pathlib import Path

import click
from rich.text import Text

from georaster_cnn_cli._common import get_state, kv_table
from georaster_cnn_cli._options import overwrite_option
from georaster_cnn_cli._warnings import load_model_or_exit, report_warnings

__all__ = ["export"]

_TARGETS = "onnx,deepness,arcgis,mlm"


@click.command("export", short_help="Export a model as ONNX for Deepness, ArcGIS and STAC MLM.")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Folder to write the files into (created if missing).",
)
@click.option(
    "--target",
    "targets",
    default=None,
    metavar="LIST",
    help=f"Comma-separated targets out of {_TARGETS}; default: all the architecture allows "
    "(deepness and arcgis need a dense-capable one, e.g. cnn_dense).",
)
@click.option(
    "--stride",
    type=int,
    default=None,
    help="Cell size of the dense models (NAME_dense.onnx, NAME_map.onnx) in pixels, as "
    "predict --stride; default: the architecture's downsampling factor.",
)
@click.option(
    "--tile",
    type=int,
    default=None,
    help="Tile side in pixels for Deepness and ArcGIS (the patch plus whole strides, halo "
    "included); default: the first such size from 512.",
)
@click.option(
    "--resolution",
    type=float,
    default=None,
    metavar="CM",
    help="Pixel size in cm for Deepness; default: the training rasters' when readable here "
    "and in metres.",
)
@overwrite_option("Replace files of the same names in DIR.")
@click.pass_context
def export(
    ctx: click.Context,
    model: Path,
    output: Path,
    targets: str | None,
    stride: int | None,
    tile: int | None,
    resolution: float | None,
    overwrite: bool,
) -> None:
    """Write MODEL as ONNX with the metadata GIS tools read.

    For MODEL NAME.safetensors, DIR receives NAME.onnx (the chip classifier: raw
    pixels in, class probabilities out, normalisation and nodata inside),
    NAME_dense.onnx (for any ONNX runtime: one call classifies a tile, the cells of
    predict --stride S on the cell grid; the tile needs the halo 'info' shows),
    NAME_map.onnx (the same cells on the tile's pixel grid, with Deepness metadata:
    the file to load in Deepness; NAME_dense.onnx fails there), NAME.emd,
    GeorasterCNN.py and NAME.dlpk (ArcGIS Pro, running NAME_map.onnx) and
    NAME.mlm.json (a STAC MLM item). Target onnx writes NAME.onnx and
    NAME_dense.onnx, deepness NAME_dense.onnx and NAME_map.onnx, arcgis NAME_map.onnx
    and the ArcGIS files, mlm NAME.onnx and NAME.mlm.json. 'info MODEL' shows what
    an export will hold. Each graph is checked against torch with onnxruntime (when
    installed) before it is written.

    \b
    Examples:
      georaster-cnn export landcover.safetensors -o export/
      georaster-cnn export landcover.safetensors -o export/ --target deepness --stride 8
    """
    state = get_state(ctx)
    geo_model = load_model_or_exit(state, model)
    import georaster_cnn as gc  # deferred: importing torch takes seconds

    with report_warnings(state, context=str(model)):
        plan = gc.export_model(
            geo_model,
            output,
            targets=targets,
            stride=stride,
            tile=tile,
            name=model.stem,
            resolution=resolution,
            overwrite=overwrite,
        )
    if state.quiet:
        return
    table = kv_table(f"Exported {model} to {output}")
    for label, text in plan.describe():
        table.add_row(label, Text(text))
    for file, diff in plan.checks.items():
        said = "not checked (onnxruntime not installed)" if diff is None else f"{diff:.2g}"
        table.add_row("max |Δp| vs torch", Text(f"{file}: {said}"))
    state.out.print(table)
