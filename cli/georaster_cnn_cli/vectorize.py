"""``georaster-cnn vectorize``: class maps as polygons in a GIS vector file."""

from __future__ import annotations

from pathlib import Path

import click

from georaster_cnn_cli._common import get_state
from georaster_cnn_cli._options import overwrite_option
from georaster_cnn_cli._vectors import VECTOR_SUFFIXES, check_vector_output, write_vectors_of
from georaster_cnn_cli._warnings import report_warnings

__all__ = ["vectorize"]


@click.command("vectorize", short_help="Polygons of a class map, as GeoPackage/GeoJSON/...")
@click.argument("prediction", type=click.Path(path_type=Path))  # a Zarr store is a folder
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="OUT",
    help="Vector file to write; its suffix picks the format: "
    f"{', '.join('.' + s for s in VECTOR_SUFFIXES)} (.parquet/.geoparquet need pyarrow).",
)
@click.option(
    "--min-area",
    type=float,
    default=0.0,
    show_default=True,
    help="Drop polygons smaller than this (CRS units squared, e.g. m^2; >= 0); their cells "
    "are left out, not merged into neighbours.",
)
@click.option(
    "--simplify",
    type=float,
    default=0.0,
    show_default=True,
    help="Simplify outlines with this tolerance (CRS units, >= 0); area and cells stay those "
    "of the exact outlines. 0 keeps cell edges.",
)
@overwrite_option("Replace OUT if it exists.")
@click.pass_context
def vectorize(
    ctx: click.Context,
    prediction: Path,
    output: Path,
    min_area: float,
    simplify: float,
    overwrite: bool,
) -> None:
    """Turn the class map PREDICTION into polygons in OUT.

    PREDICTION is a class map written by 'predict', in any of its formats: a
    COG or GeoTIFF, a netCDF file or a Zarr store (a folder). One polygon per
    connected region of a class (cells sharing an edge), with class_id,
    class_name, area (CRS units squared), cells and, when PREDICTION has
    probability bands, mean_probability (0-1). Nodata cells are left out.

    \b
    Example:
      georaster-cnn vectorize maps/scene.tif -o maps/scene.gpkg --min-area 2700
    """
    state = get_state(ctx)
    check_vector_output(output, str(output))
    with report_warnings(state, context=str(prediction)):
        written, summary = write_vectors_of(
            prediction, output, overwrite=overwrite, min_area=min_area, simplify=simplify
        )
    if not state.quiet:
        state.out.print(f"{written}: {summary}", highlight=False, soft_wrap=True)
