"""Vector outputs of class maps, shared by ``vectorize`` and ``predict --vector``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from georaster_cnn.errors import InputError
from georaster_cnn.io.formats import VECTOR_FORMATS, vector_output_format
from georaster_cnn_cli._common import error_message, fail, plural

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "VECTOR_SUFFIXES",
    "check_vector_output",
    "summary_line",
    "vector_option",
    "write_vectors_of",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Output suffixes without the dot (``--vector`` choices), from the library's
#: torch- and GDAL-free format registry, so ``--help`` stays light.
VECTOR_SUFFIXES: tuple[str, ...] = tuple(s.lstrip(".") for s in VECTOR_FORMATS)


def check_vector_output(path: Path, what: str) -> None:
    """Stop with exit status 2 unless the library can write vectors to ``path``.

    Checked before any work with :func:`georaster_cnn.io.formats.vector_output_format`
    (a known suffix; pyarrow for GeoParquet): the library refuses such an output only
    when it writes it, after vectorising (and ``predict --vector`` would fail every
    tile alike). ``what`` names the output in the message (the file, or the option).
    """
    try:
        vector_output_format(path)
    except InputError as exc:
        fail(f"{what}: {error_message(exc, path)}")


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
