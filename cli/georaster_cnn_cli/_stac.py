"""STAC inputs on the command line: one place for every command that reads rasters.

- :func:`stac_options` adds ``--stac-search URL --collections C --bbox W S E N
  --datetime A/B``, ``--crs``, ``--resolution``, ``--per-item`` and ``--skip-failed``;
  their values reach the command inside ``open_options`` (key ``"stac"``), like the
  other options of how inputs are opened.
- :func:`stac_sources` turns INPUTs into what is opened: an INPUT holding a STAC Item
  or ItemCollection (recognised by its content, not its suffix; a URL only with
  ``--allow-remote``) becomes a :class:`StacInput`, and so does a ``--stac-search``;
  with ``--per-item`` each of their Items becomes one.
- :func:`open_source` opens any of them: ``gc.open_stac`` for STAC inputs (bands by
  the model's names, or ``--bands NAME=ASSET,...``), ``gc.open_raster`` otherwise.

The library decides (:mod:`georaster_cnn.io.stac`): these functions pass flags on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from georaster_cnn.options import DEFAULT_MAX_PIXELS

__all__ = ["StacInput", "StacOptions", "open_source", "stac_options", "stac_sources"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class StacOptions:
    """The STAC flags of one command."""

    search: str | None = None
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    crs: str | None = None
    resolution: float | None = None
    per_item: bool = False
    skip_failed: bool = False


@dataclass(frozen=True)
class StacInput:
    """One STAC input: a document (path or URL), a search, or one Item of either.

    ``name`` is the stem of its class map (the document's, the Item's id, or
    ``search`` for a search).
    """

    name: str
    source: Any
    shown: str

    def __str__(self) -> str:
        return self.shown

    def __fspath__(self) -> str:  # messages name it as they name a file (error_message)
        return self.shown


def stac_options(*, search: bool = True) -> Callable[[F], F]:
    """The STAC flags, folded into ``open_options["stac"]`` (a :class:`StacOptions`).

    ``search=False`` (``train``, ``evaluate``: each INPUT pairs with its labels) leaves
    out ``--stac-search``, ``--collections`` and ``--per-item``.
    """
    searching = {"--stac-search", "--collections", "--per-item"}
    options = [
        click.option(
            "--stac-search",
            metavar="URL",
            help="Read the Items a STAC API search finds (with --collections, --bbox, "
            "--datetime; needs --allow-remote) as one more INPUT.",
        ),
        click.option(
            "--collections", metavar="C[,C...]", help="Collections searched (--stac-search)."
        ),
        click.option(
            "--bbox",
            nargs=4,
            type=float,
            default=None,
            metavar="W S E N",
            help="Extent of a STAC input, in degrees (EPSG:4326): searched, and loaded.",
        ),
        click.option(
            "--datetime",
            "stac_datetime",
            metavar="A/B",
            help="Time range of a STAC input (RFC 3339 or dates, '..' for an open end).",
        ),
        click.option(
            "--crs",
            metavar="CRS",
            help="Grid of a STAC input: its CRS (e.g. EPSG:32633). [default: the most "
            "common CRS of the assets]",
        ),
        click.option(
            "--resolution",
            type=click.FloatRange(min=0, min_open=True),
            metavar="R",
            help="Grid of a STAC input: its cell size in CRS units. [default: the finest "
            "of the assets in that CRS]",
        ),
        click.option(
            "--per-item",
            is_flag=True,
            help="One map per STAC Item, each on its own grid, instead of one mosaic.",
        ),
        click.option(
            "--skip-failed",
            is_flag=True,
            help="Leave a STAC asset that cannot be read (404, timeout, truncated) out of "
            "the mosaic, with a warning naming it, instead of failing the input.",
        ),
    ]

    if not search:
        options = [o for o, flag in zip(options, _FLAGS, strict=True) if flag not in searching]

    def decorator(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            collections = kwargs.pop("collections", None)
            stac = StacOptions(
                search=kwargs.pop("stac_search", None),
                collections=tuple(c for c in (collections or "").split(",") if c),
                bbox=kwargs.pop("bbox") or None,
                datetime=kwargs.pop("stac_datetime"),
                crs=kwargs.pop("crs"),
                resolution=kwargs.pop("resolution"),
                per_item=kwargs.pop("per_item", False),
                skip_failed=kwargs.pop("skip_failed"),
            )
            opts = dict(kwargs.pop("open_options", None) or {})
            opts["stac"] = stac
            return f(*args, open_options=opts, **kwargs)

        out: Any = wrapper
        for option in reversed(options):
            out = option(out)
        return out

    return decorator


#: The flags of :func:`stac_options`, in its order.
_FLAGS = (
    "--stac-search", "--collections", "--bbox", "--datetime", "--crs", "--resolution",
    "--per-item", "--skip-failed",
)  # fmt: skip


def _stem(location: str) -> str:
    from georaster_cnn.io.formats import location_name

    return location_name(location).stem or "items"


def stac_sources(found: Sequence[Any], open_options: Mapping[str, Any]) -> list[Any]:
    """``found`` (files, URLs, problems) with STAC documents as :class:`StacInput`, plus a search.

    With ``--per-item`` every Item of a STAC input becomes one input. Reading the
    documents or the search may fail: the library's errors go to the caller.
    """
    from georaster_cnn.io.formats import is_network_location
    from georaster_cnn.io.stac import is_stac_document, stac_items, stac_search

    stac: StacOptions = open_options.get("stac") or StacOptions()
    remote = bool(open_options.get("allow_remote"))
    out: list[Any] = []
    for f in found:
        if isinstance(f, (str, Path)) and is_stac_document(f, allow_remote=remote):
            shown = str(f) if is_network_location(str(f)) else os.fspath(f)
            out.append(StacInput(_stem(str(f)), str(f), shown))
        else:
            out.append(f)
    if stac.search:
        search = stac_search(
            stac.search, collections=stac.collections, bbox=stac.bbox, datetime=stac.datetime,
            allow_remote=remote,
        )  # fmt: skip
        out.append(StacInput("search", search, f"{stac.search} (search)"))
    if not stac.per_item:
        return out
    split: list[Any] = []
    for f in out:
        if not isinstance(f, StacInput):
            split.append(f)
            continue
        for item in stac_items(f.source, allow_remote=remote, datetime=stac.datetime):
            split.append(StacInput(item.id, item, f"{f.shown} [{item.id}]"))
    return split


def _stac_bands(
    bands: Sequence[int | str] | None, model_bands: Sequence[str] | None
) -> Sequence[str] | Mapping[str, str] | None:
    """``--bands`` for a STAC input: names, or ``NAME=ASSET`` pairs; default: the model's."""
    if not bands:
        return list(model_bands) if model_bands else None
    if any(isinstance(b, int) for b in bands):
        raise click.UsageError(
            "STAC bands are chosen by name (asset keys or common names), or mapped with "
            "--bands NAME=ASSET,...; band numbers apply to raster files"
        )
    pairs = [str(b).partition("=") for b in bands]
    if all(sep for _, sep, _ in pairs):
        return {name: asset for name, _, asset in pairs}
    if any(sep for _, sep, _ in pairs):
        raise click.UsageError("--bands: map every band (NAME=ASSET,...) or none")
    return [str(b) for b in bands]


def open_source(
    source: Any,
    *,
    bands: Sequence[int | str] | None,
    open_options: Mapping[str, Any],
    model_bands: Sequence[str] | None = None,
) -> Any:
    """Open one input: a STAC input with ``gc.open_stac``, anything else with ``gc.open_raster``.

    A path or URL that holds a STAC document is recognised here too (``train`` and
    ``evaluate`` take their INPUTs as typed).
    """
    import georaster_cnn as gc
    from georaster_cnn.io.stac import is_stac_document

    opts = dict(open_options)
    stac: StacOptions = opts.pop("stac", None) or StacOptions()
    remote = bool(opts.get("allow_remote"))
    if isinstance(source, (str, Path)) and is_stac_document(source, allow_remote=remote):
        source = StacInput(_stem(str(source)), str(source), str(source))
    if not isinstance(source, StacInput):
        return gc.open_raster(source, bands=bands, **opts)
    given = [k for k in ("variables", "select", "stack") if opts.get(k)]
    if given:
        raise click.UsageError(
            f"--{given[0]} applies to netCDF and Zarr inputs; {source} is a STAC input"
        )
    return gc.open_stac(
        source.source,
        bands=_stac_bands(bands, model_bands),
        crs=stac.crs,
        resolution=stac.resolution,
        bbox=stac.bbox,
        datetime=stac.datetime,
        allow_remote=remote,
        max_pixels=opts.get("max_pixels", DEFAULT_MAX_PIXELS),
        skip_failed=stac.skip_failed,
    )
