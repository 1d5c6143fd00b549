"""``georaster-cnn vectorize``: class maps as polygons in a GIS vector file."""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from georaster_cnn_cli._common import fail, get_state, plural, report_warnings
from georaster_cnn_cli._options import overwrite_option

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "VECTOR_SUFFIXES",
    "check_vector_suffix",
    "summary_line",
    "vector_option",
    "vectorize",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Output suffixes (without the dot) and so formats; the library's
#: ``georaster_cnn.vectorize.VECTOR_FORMATS`` is the reference (a test keeps them
#: equal). Repeated here so ``--help`` does not import the library (torch).
VECTOR_SUFFIXES: tuple[str, ...] = ("gpkg", "geojson", "json", "parquet", "geoparquet", "shp")
_PARQUET = frozenset({"parquet", "geoparquet"})


def check_vector_suffix(suffix: str, what: str) -> None:
    """Stop with exit status 2 unless ``suffix`` (no dot) names a format that can be written."""
    suffix = suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        fail(
            f"{what}: unknown vector format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(VECTOR_SUFFIXES)}"
        )
    if suffix in _PARQUET and importlib.util.find_spec("pyarrow") is None:
        fail(f"{what}: GeoParquet needs pyarrow: pip install pyarrow (or use gpkg)")


def vector_option() -> Callable[[F], F]:
    """``--vector SUFFIX``: also write polygons next to each class map."""
    return click.option(
        "--vector",
        type=click.Choice(VECTOR_SUFFIXES, case_sensitive=False),
        default=None,
        metavar="SUFFIX",
        help="Also vectorise each class map into OUTDIR/<stem>.SUFFIX: "
        f"{', '.join(VECTOR_SUFFIXES)} (see 'vectorize').",
    )


def summary_line(gdf: gpd.GeoDataFrame) -> str:
    """``"12 polygons: water 3, forest 7, urban 2"`` (classes with polygons, in id order)."""
    counts = Counter(zip(gdf["class_id"].tolist(), gdf["class_name"].tolist(), strict=True))
    detail = ", ".join(f"{name} {n}" for (_, name), n in sorted(counts.items()))
    head = plural(len(gdf), "polygon")
    return f"{head}: {detail}" if detail else head


@click.command("vectorize", short_help="Polygons of a class map, as GeoPackage/GeoJSON/...")
@click.argument("prediction", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="OUT",
    help="Vector file to write; its suffix picks the format: "
    ".gpkg, .geojson/.json, .parquet/.geoparquet (needs pyarrow), .shp.",
)
@click.option(
    "--min-area",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Drop polygons smaller than this (CRS units squared, e.g. m^2); their cells are "
    "left out, not merged into neighbours.",
)
@click.option(
    "--simplify",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Simplify outlines with this tolerance (CRS units); area and cells stay those of the "
    "exact outlines. 0 keeps cell edges.",
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
    """Turn the class map PREDICTION (a GeoTIFF from 'predict') into polygons in OUT.

    One polygon per connected region of a class (cells sharing an edge), with
    class_id, class_name, area (CRS units squared), cells and, when PREDICTION
    has probability bands, mean_probability (0-1). Nodata cells are left out.

    \b
    Example:
      georaster-cnn vectorize maps/scene.tif -o maps/scene.gpkg --min-area 2700
    """
    state = get_state(ctx)
    check_vector_suffix(output.suffix.lstrip("."), str(output))
    if output.exists() and not overwrite:
        fail(f"{output} exists; pass --overwrite to replace it")
    import georaster_cnn as gc  # deferred: importing torch takes seconds

    with report_warnings(state, context=str(prediction)):
        gdf = gc.vectorize(prediction, min_area=min_area, simplify=simplify)
        written = gc.write_vectors(gdf, output, overwrite=overwrite)
    if not state.quiet:
        state.out.print(f"{written}: {summary_line(gdf)}", highlight=False, soft_wrap=True)


def write_vector_for(prediction: Path, suffix: str, *, overwrite: bool) -> tuple[Path, str]:
    """Vectorise a class map just written by ``predict`` into ``<same stem>.<suffix>``.

    Returns the file written and a summary line. Errors propagate (the caller
    makes them that tile's failure).
    """
    import georaster_cnn as gc

    out = prediction.with_suffix(f".{suffix.lower()}")
    gdf = gc.vectorize(prediction)
    written = gc.write_vectors(gdf, out, overwrite=overwrite)
    return written, summary_line(gdf)
