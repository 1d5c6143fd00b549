"""Vector outputs of class maps, shared by ``vectorize`` and ``predict --vector``."""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from georaster_cnn_cli._common import fail, plural

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "VECTOR_SUFFIXES",
    "check_vector_suffix",
    "summary_line",
    "vector_option",
    "write_vectors_of",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Output suffixes (without the dot) and so formats; the library's
#: ``georaster_cnn.vectorize.VECTOR_FORMATS`` is the reference (a test keeps them
#: equal). Repeated here so ``--help`` does not import geopandas and GDAL.
VECTOR_SUFFIXES: tuple[str, ...] = ("gpkg", "geojson", "json", "parquet", "geoparquet", "shp")
_PARQUET = frozenset({"parquet", "geoparquet"})


def check_vector_suffix(suffix: str, what: str) -> None:
    """Stop with exit status 2 unless ``suffix`` (no dot) names a format that can be written.

    Checked before any work: the library refuses such an output only when it writes it,
    after vectorising (and ``predict --vector`` would fail every tile alike).
    """
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


def write_vectors_of(
    prediction: Path,
    output: Path,
    *,
    overwrite: bool,
    min_area: float = 0.0,
    simplify: float = 0.0,
) -> tuple[Path, str]:
    """Vectorise the class map ``prediction`` into ``output``; the file written and a summary.

    Errors propagate (``vectorize`` reports them, ``predict`` makes them that tile's failure).
    """
    import georaster_cnn as gc

    gdf = gc.vectorize(prediction, min_area=min_area, simplify=simplify)
    written = gc.write_vectors(gdf, output, overwrite=overwrite)
    return written, summary_line(gdf)
