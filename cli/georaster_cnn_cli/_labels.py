"""Labelled inputs for ``train`` and ``evaluate``: rasters with ``--labels``, or chips."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from georaster_cnn_cli._common import CLIState, plural, report_selected
from georaster_cnn_cli._options import LOCATION
from georaster_cnn_cli._stac import open_source

if TYPE_CHECKING:
    import xarray as xr


__all__ = [
    "LabelSource",
    "LabelledInputs",
    "chip_inputs",
    "labelled_inputs",
    "labels_options",
    "open_labelled",
    "pair_labels",
    "read_labels",
]

F = TypeVar("F", bound=Callable[..., Any])


def labels_options(labels_help: str, column_help: str) -> Callable[[F], F]:
    """``--labels`` (repeatable) and ``--label-column``, with the command's help texts."""

    def decorator(f: F) -> F:
        f = click.option("--label-column", default=None, metavar="COLUMN", help=column_help)(f)
        return click.option(
            "--labels",
            multiple=True,
            type=LOCATION,
            metavar="LABELS",
            help=labels_help,
        )(f)

    return decorator


@dataclass(frozen=True)
class LabelSource:
    """Where the labels of one INPUT come from.

    Attributes
    ----------
    path
        A class-id raster on the INPUT's grid, or a vector file (points/polygons).
    column
        Attribute holding the class of each feature, for vector labels.
    """

    path: Path
    column: str | None = None

    @property
    def is_vector(self) -> bool:
        import georaster_cnn as gc

        return gc.is_vector_file(self.path)


def pair_labels(
    inputs: Sequence[Path], labels: Sequence[Path], *, column: str | None = None
) -> list[tuple[Path, LabelSource]]:
    """Match ``--labels`` to INPUTs: one per INPUT, in order; or one vector file for all.

    Raises
    ------
    click.UsageError
        The counts differ (and the single ``--labels`` is not a vector file), or
        ``--label-column`` is given with label rasters only.
    """
    sources = [LabelSource(lab, column) for lab in labels]
    if len(sources) == 1 and sources[0].is_vector:
        sources = sources * len(inputs)
    if len(sources) != len(inputs):
        raise click.UsageError(
            f"got {plural(len(inputs), 'INPUT')} and {len(labels)} --labels; give --labels "
            "once per INPUT, in the same order, or one vector file (points/polygons) for all"
        )
    if column is not None and not any(src.is_vector for src in sources):
        raise click.UsageError(
            "--label-column names the class attribute of vector labels, but the --labels "
            "are rasters whose pixel values are the class ids; drop --label-column"
        )
    return list(zip(inputs, sources, strict=True))


def chip_inputs(inputs: Sequence[Path], labels: Sequence[Path]) -> bool:
    """Whether the INPUTs are labelled chips (folders of class folders, .npz / netCDF chips).

    Chips carry their labels; rasters need ``--labels``. Mixing is refused.

    Raises
    ------
    click.UsageError
        Chips with ``--labels``, chips mixed with rasters, or rasters without ``--labels``.
    """
    import georaster_cnn as gc

    chips = [p for p in inputs if gc.is_chip_dataset(p)]
    if chips and labels:
        raise click.UsageError(
            f"{chips[0]} is a chip dataset, which holds its own labels (class sub-folders, or "
            "a 'labels' array); drop --labels, or give rasters as INPUTs"
        )
    if chips and len(chips) != len(inputs):
        rasters = [str(p) for p in inputs if p not in chips]
        raise click.UsageError(
            f"INPUTs mix chip datasets ({', '.join(map(str, chips))}) and rasters "
            f"({', '.join(rasters)}); give either chips or rasters with --labels"
        )
    if not chips and not labels:
        raise click.UsageError(
            "Missing option '--labels': give a label raster once per INPUT raster, or give "
            "chip datasets (a folder with one sub-folder per class, or an .npz / netCDF file "
            "with 'chips' and 'labels') as INPUTs"
        )
    return bool(chips)


@dataclass(frozen=True)
class LabelledInputs:
    """The INPUTs of ``train``/``evaluate``: chip datasets, or rasters paired with labels."""

    chips: Sequence[Path] = ()
    pairs: Sequence[tuple[Path, LabelSource]] = ()


def labelled_inputs(
    inputs: Sequence[Path],
    labels: Sequence[Path],
    *,
    column: str | None,
    stride: int | None = None,
    bands: Sequence[int | str] | None = None,
) -> LabelledInputs:
    """Sort INPUTs into chips or rasters with their ``--labels``; refuse what does not fit.

    ``--label-column``, ``--stride`` and ``--bands`` apply to rasters only.

    Raises
    ------
    click.UsageError
        See :func:`chip_inputs` and :func:`pair_labels`; or an option for rasters with chips.
    """
    if not chip_inputs(inputs, labels):
        return LabelledInputs(pairs=pair_labels(inputs, labels, column=column))
    for flag, given in (
        ("--stride", stride is not None),
        ("--bands", bool(bands)),
        ("--label-column", column is not None),
    ):
        if given:
            raise click.UsageError(
                f"{flag} applies to rasters; chips are used whole, with all their channels "
                "and their own labels"
            )
    return LabelledInputs(chips=tuple(inputs))


#: The options of ``open_raster`` that label rasters follow too (not bands or select).
_LABEL_RULES = frozenset({"max_pixels", "allow_remote"})


def read_labels(
    source: LabelSource,
    *,
    cache: dict[Path, Any] | None = None,
    open_options: Mapping[str, Any] | None = None,
) -> Any:
    """Labels of one INPUT: a label raster, or a GeoDataFrame for vector files.

    A vector file is read once per ``cache`` (the same GeoDataFrame then serves every
    INPUT, which the library treats as one set of labels). A label raster is opened
    with the input rules of ``open_options`` (``max_pixels``, ``allow_remote``).
    """
    import georaster_cnn as gc

    if not source.is_vector:
        rules = {k: v for k, v in (open_options or {}).items() if k in _LABEL_RULES}
        return gc.open_labels(source.path, **rules)
    cache = {} if cache is None else cache
    if source.path not in cache:
        cache[source.path] = gc.read_vector_labels(source.path)
    return cache[source.path]


def open_labelled(
    state: CLIState,
    pairs: Sequence[tuple[Path, LabelSource]],
    *,
    bands: list[int | str] | None,
    open_options: Mapping[str, Any],
    model_bands: Sequence[str] | None = None,
) -> tuple[list[xr.DataArray], list[Any]]:
    """Open every INPUT raster (lazily) and read its labels, in order.

    An INPUT holding STAC Items is mosaicked (:func:`~georaster_cnn_cli._stac.open_source`;
    bands by ``model_bands`` unless ``--bands``). What ``--select`` picked from each
    INPUT is said on stderr.
    """
    datas, labs = [], []
    cache: dict[Path, Any] = {}
    for data_path, label_source in pairs:
        data = open_source(
            data_path, bands=bands, open_options=open_options, model_bands=model_bands
        )
        select = open_options.get("select")
        report_selected(state, data.attrs.get("selected"), select, context=data_path)
        datas.append(data)
        labs.append(read_labels(label_source, cache=cache, open_options=open_options))
    return datas, labs
