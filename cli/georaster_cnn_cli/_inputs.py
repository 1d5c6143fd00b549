"""INPUT arguments -> files, and files -> the class maps ``predict`` writes.

Which suffixes are rasters and which class-map format each input gets come from
:mod:`georaster_cnn.io.formats` (the library's one table; importing it loads
neither torch nor GDAL, so ``--help`` stays fast).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from georaster_cnn.errors import InputError
from georaster_cnn.io.formats import (
    INPUT_SUFFIXES,
    OutputFormat,
    is_network_location,
    is_zarr_store,
    location_name,
    output_path,
    resolve_output_format,
)
from georaster_cnn_cli._stac import StacInput

__all__ = [
    "RASTER_SUFFIXES",
    "ExpandedInputs",
    "InputProblem",
    "Job",
    "TileResult",
    "expand_inputs",
    "plan_output_file",
    "plan_outputs",
]

#: Files taken from folders and glob matches (every suffix the reader accepts).
#: Files named explicitly are always tried.
RASTER_SUFFIXES: frozenset[str] = frozenset(INPUT_SUFFIXES)

_GLOB_CHARS = frozenset("*?[")

Status = Literal["written", "skipped", "failed"]


@dataclass(frozen=True)
class InputProblem:
    """An INPUT argument that yielded no file, and why."""

    spec: str
    message: str


@dataclass(frozen=True)
class ExpandedInputs:
    """Files found for a list of INPUT arguments, in order and without duplicates.

    ``items`` keeps argument order: each entry is a file found, or an
    :class:`InputProblem` for an argument that yielded no file.
    """

    items: tuple[Path | str | StacInput | InputProblem, ...]

    @property
    def paths(self) -> tuple[Path | str | StacInput, ...]:
        """Files found, and network locations (``/vsicurl/…``, ``https://…``) as typed."""
        return tuple(i for i in self.items if not isinstance(i, InputProblem))

    @property
    def problems(self) -> tuple[InputProblem, ...]:
        return tuple(i for i in self.items if isinstance(i, InputProblem))


def _is_input(path: Path, suffixes: frozenset[str]) -> bool:
    """A raster file by its suffix, or a Zarr store; hidden names are not inputs."""
    if path.name.startswith("."):
        return False
    return (path.is_file() and path.suffix.lower() in suffixes) or is_zarr_store(path)


def _expand_one(spec: str, suffixes: frozenset[str]) -> list[Path | str] | InputProblem:
    listed = ", ".join(sorted(suffixes))
    if is_network_location(spec):  # as typed (a Path would fold the // of a URL); the
        return [spec]  # reader refuses it unless --allow-remote
    p = Path(spec).expanduser()
    if is_zarr_store(p):  # a folder, but one input
        return [p]
    if p.is_dir():
        inside: list[Path | str] = sorted(c for c in p.iterdir() if _is_input(c, suffixes))
        return inside or InputProblem(spec, f"folder holds no raster files ({listed})")
    if p.exists():
        return [p]
    if not _GLOB_CHARS & set(spec):
        return InputProblem(spec, "no such file or folder")
    matches = [Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True)]
    found: list[Path | str] = sorted(m for m in matches if _is_input(m, suffixes))
    if not matches:
        return InputProblem(spec, "pattern matches nothing")
    if not found:
        return InputProblem(
            spec, f"pattern matches {len(matches)} path(s) but no raster files ({listed})"
        )
    return found


def expand_inputs(
    specs: Iterable[str], *, suffixes: frozenset[str] = RASTER_SUFFIXES
) -> ExpandedInputs:
    """Turn INPUT arguments (files, folders, glob patterns) into a list of files.

    An existing file is taken as given, whatever its suffix, and so is a Zarr store
    (a folder). A folder contributes the files directly inside it whose suffix is
    in ``suffixes``, and the Zarr stores in it (not recursive).
    A network location (``/vsicurl/…``, ``https://…``, ``s3://…``) is kept as typed:
    the reader opens it only with ``--allow-remote``.
    Anything else containing ``*``, ``?`` or ``[`` is a glob pattern (``**``
    recurses), expanded here because quoted patterns reach us unexpanded; its
    matches are filtered like a folder's. Files reached twice (by any route) are
    kept once, at their first position. Hidden files are ignored in folders and
    patterns.

    Parameters
    ----------
    specs
        The INPUT arguments as typed.
    suffixes
        Lower-case suffixes (with the dot) that count as raster files; default:
        every suffix the reader accepts (:data:`georaster_cnn.io.formats.INPUT_SUFFIXES`).

    Returns
    -------
    ExpandedInputs
        The files, and an :class:`InputProblem` for each argument that yielded none.

    Examples
    --------
    >>> expand_inputs(["tiles/", "extra/*.tif", "scene.nc"])  # doctest: +SKIP
    """
    seen: set[Path | str] = set()
    items: list[Path | str | InputProblem] = []
    for spec in specs:
        found = _expand_one(spec, suffixes)
        if isinstance(found, InputProblem):
            items.append(found)
            continue
        for f in found:
            key = f.resolve() if isinstance(f, Path) else f
            if key not in seen:
                seen.add(key)
                items.append(f)
    return ExpandedInputs(tuple(items))


# --------------------------------------------------------------------------- outputs


@dataclass
class TileResult:
    """What happened to one INPUT (a file, or an argument that matched nothing)."""

    input: str
    status: Status
    output: Path | None = None
    seconds: float = 0.0
    message: str = ""


@dataclass(frozen=True)
class Job:
    """One input to classify, and the class map it becomes."""

    source: Path | str | StacInput
    output: Path
    format: OutputFormat = "cog"

    @property
    def name(self) -> str:
        """The input's file name, for progress bars (a URL's without its query)."""
        if isinstance(self.source, StacInput):
            return self.source.name
        return location_name(self.source).name


def plan_outputs(
    found: ExpandedInputs, output_dir: Path, *, format: str | None = None
) -> list[Job | TileResult]:
    """Pair each input file with its class map in ``output_dir``, in input order.

    The name and format are the library's (:func:`georaster_cnn.io.formats.output_path`):
    ``<stem>.tif`` (COG) for GDAL rasters and Zarr stores, ``<stem>.nc`` for netCDF
    inputs; ``format`` (cog, gtiff, zarr, netcdf) chooses one for all.

    Returns a job per input to run, and in its place a failed :class:`TileResult`
    for an argument that matched nothing, an input whose output name an earlier
    input already took, or an input that would be its own output.
    """
    plan: list[Job | TileResult] = []
    taken: dict[str, Path | str | StacInput] = {}
    for item in found.items:
        if isinstance(item, InputProblem):
            plan.append(TileResult(item.spec, "failed", message=item.message))
            continue
        # a STAC input's map is named after its document, its Item, or "search"
        named = f"{item.name}.tif" if isinstance(item, StacInput) else item
        out, fmt = output_path(named, output_dir, format)
        # casefold: on macOS/Windows scene.tif and Scene.tif are the same file
        key = out.name.casefold()
        if key in taken:
            message = (
                f"output {out} would also be written from {taken[key]}; "
                "rename one input or predict it into another --output-dir"
            )
            plan.append(TileResult(str(item), "failed", out, message=message))
        elif isinstance(item, Path) and out.exists() and out.resolve() == item.resolve():
            message = "the output would replace this input; choose another --output-dir"
            plan.append(TileResult(str(item), "failed", out, message=message))
        else:
            taken[key] = item
            plan.append(Job(item, out, fmt))
    return plan


def plan_output_file(
    found: ExpandedInputs, output: Path, *, format: str | None = None
) -> list[Job | TileResult]:
    """The one input of ``predict --output FILE`` paired with FILE, its format from its suffix.

    The format is the library's reading of the name
    (:func:`georaster_cnn.io.formats.resolve_output_format`: ``.tif`` COG, ``.nc``,
    ``.zarr``; ``format`` checked against it).

    Raises
    ------
    InputError
        The suffix implies no format, or one of another family than ``format``.
    """
    if len(found.items) != 1:
        what = "none" if not found.items else f"{len(found.items)}"
        raise InputError(
            f"--output names one class map, for exactly one INPUT, but the INPUTs give {what}; "
            "use --output-dir for several"
        )
    (item,) = found.items
    if isinstance(item, InputProblem):
        return [TileResult(item.spec, "failed", message=item.message)]
    fmt = resolve_output_format(output, format)
    if isinstance(item, Path) and output.exists() and output.resolve() == item.resolve():
        message = "the output would replace this input; choose another --output"
        return [TileResult(str(item), "failed", output, message=message)]
    return [Job(item, output, fmt)]
