"""Options and parameter types shared by several commands (one definition each)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from georaster_cnn.options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS

__all__ = [
    "BandList",
    "NameList",
    "SelectItem",
    "allow_remote_option",
    "bands_option",
    "batch_size_option",
    "dataset_options",
    "device_option",
    "inference_options",
    "input_options",
    "max_pixels_option",
    "min_valid_option",
    "overwrite_option",
    "scheduler_options",
    "source_options",
    "store_option",
    "store_options",
    "stride_option",
]

F = TypeVar("F", bound=Callable[..., Any])


class Location(click.ParamType):
    """A file or folder as a :class:`~pathlib.Path`; a network location as typed (``str``).

    ``Path("https://h/a.tif")`` would fold the ``//``; ``/vsicurl/…``, ``https://…`` and
    ``s3://…`` stay strings for the reader, which opens them only with ``--allow-remote``.
    """

    name = "location"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from georaster_cnn.io.formats import is_network_location

        if isinstance(value, Path) or not is_network_location(str(value)):
            return Path(value).expanduser()
        return str(value)


#: INPUT and --labels of train and evaluate: local paths or network locations.
LOCATION = Location()


class BandList(click.ParamType):
    """``1,2,4`` or ``red,nir`` (or a mix) -> ``[1, 2, 4]`` / ``["red", "nir"]``.

    Numbers are 1-based band indexes; anything else is a band name (GeoTIFF band
    description or netCDF variable).
    """

    name = "BANDS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[int | str]:
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",")]
        if not items or any(not v for v in items):
            self.fail(
                f"{value!r} has an empty item; give comma-separated band numbers or names, "
                "e.g. 1,2,4 or red,nir",
                param,
                ctx,
            )
        out: list[int | str] = []
        for v in items:
            if v.isdigit():
                if int(v) < 1:
                    self.fail(f"band numbers start at 1; found {v}", param, ctx)
                out.append(int(v))
            else:
                out.append(v)
        if len(set(out)) != len(out):
            self.fail(f"{value!r} names a band twice", param, ctx)
        return out


class NameList(click.ParamType):
    """``water,forest,urban`` -> ``("water", "forest", "urban")``; no empty or repeated names."""

    name = "A,B,..."

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        items = tuple(v.strip() for v in str(value).split(","))
        if any(not v for v in items):
            self.fail(f"{value!r} has an empty name", param, ctx)
        if len(set(items)) != len(items):
            self.fail(f"{value!r} repeats a name", param, ctx)
        return items


def stride_option(text: str, default_text: str) -> Callable[[F], F]:
    """``--stride``: window spacing in input pixels; the library checks it (1..patch size)."""
    return click.option(
        "--stride", type=int, default=None, help=f"{text} [default: {default_text}]"
    )


def batch_size_option(default: int) -> Callable[[F], F]:
    """``--batch-size``: windows per forward pass."""
    return click.option(
        "--batch-size",
        type=int,
        default=default,
        show_default=True,
        help="Windows per batch on the device (>= 1); lower it if memory runs out.",
    )


def _lower(ctx: click.Context, param: click.Parameter, value: str) -> str:
    return value.lower()


def device_option() -> Callable[[F], F]:
    """``--device auto|cpu|cuda[:N]|mps``; the library checks that it exists."""
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        metavar="DEVICE",
        callback=_lower,
        help="Where the network runs: auto, cpu, cuda, cuda:N or mps; auto picks cuda, then "
        "mps, then cpu.",
    )


def bands_option() -> Callable[[F], F]:
    """``--bands``: select and order input bands."""
    return click.option(
        "--bands",
        type=BandList(),
        default=None,
        help="Input bands to use, in order: 1-based numbers or names, e.g. 1,2,4 or red,nir. "
        "[default: all]",
    )


def overwrite_option(text: str) -> Callable[[F], F]:
    """``--overwrite``: never replace files without it."""
    return click.option("--overwrite", is_flag=True, help=text)


def min_valid_option() -> Callable[[F], F]:
    """``--min-valid``: nodata policy override; the library checks the range."""
    return click.option(
        "--min-valid",
        type=float,
        default=None,
        help="Least fraction of valid (not nodata) pixels a window needs to be classified, "
        "in (0, 1]; cells below it become nodata. [default: the model's]",
    )


class SelectItem(click.ParamType):
    """``time=2020-01-01`` -> ``("time", "2020-01-01")``; the reader converts the value."""

    name = "DIM=VALUE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        dim, sep, label = str(value).partition("=")
        if not sep or not dim.strip() or not label.strip():
            self.fail(
                f"{value!r} is not DIM=VALUE; e.g. --select time=2020-01-01 --select level=850",
                param,
                ctx,
            )
        return dim.strip(), label.strip()


def _into_open_options(f: F, take: Callable[[dict[str, Any]], dict[str, Any]]) -> F:
    """``f`` receiving the values ``take`` pops from its keyword arguments inside ``open_options``.

    Several such decorators add to one ``open_options`` dict, in any order.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = dict(kwargs.pop("open_options", None) or {})
        opts.update(take(kwargs))
        return f(*args, open_options=opts, **kwargs)

    return wrapper  # type: ignore[return-value]


def _dataset_values(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``--variables/--select/--stack`` as ``open_raster`` keywords (only those given)."""
    variables = kwargs.pop("variables", None)
    select: tuple[tuple[str, str], ...] = kwargs.pop("select", ())
    stack = kwargs.pop("stack", None)
    chosen: dict[str, str] = {}
    for dim, label in select:
        if dim in chosen:
            raise click.BadParameter(
                f"dimension {dim!r} is selected twice ({chosen[dim]}, {label})",
                param_hint="'--select'",
            )
        chosen[dim] = label
    opts: dict[str, Any] = {}
    if variables is not None:
        opts["variables"] = list(variables)
    if chosen:
        opts["select"] = chosen
    if stack is not None:
        opts["stack"] = stack
    return opts


def dataset_options() -> Callable[[F], F]:
    """``--variables``, ``--select`` (repeatable) and ``--stack`` for netCDF and Zarr inputs.

    The command receives them in its ``open_options`` keyword: a dict holding only
    the options given, ready to pass on as ``open_raster(path, **open_options)``
    (the reader rejects them for GDAL rasters with a clear message). A ``~`` before
    a ``--select`` value (``time=~2005-07-15``) reaches the reader as it is: the
    nearest step, however far.
    """

    def decorator(f: F) -> F:
        wrapper = _into_open_options(f, _dataset_values)
        wrapper = click.option(
            "--stack",
            metavar="DIM",
            default=None,
            help="netCDF/Zarr: make each step of dimension DIM (e.g. time) a band, "
            "named VARIABLE@STEP.",
        )(wrapper)
        wrapper = click.option(
            "--select",
            type=SelectItem(),
            multiple=True,
            help="netCDF/Zarr: keep one value of an extra dimension, e.g. time=2020-01-01 "
            "(the step within half a step of it) or level=850 (exact); time=~2005-07-15 "
            "takes the nearest step however far. The value picked is printed. Repeatable.",
        )(wrapper)
        return click.option(
            "--variables",
            type=NameList(),
            default=None,
            help="netCDF/Zarr: data variables to use as bands, in order, e.g. t2m,tp. "
            "[default: all on the grid]",
        )(wrapper)

    return decorator


def _check_max_pixels(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """The library's check of ``max_pixels=``, as a usage error naming ``--max-pixels``."""
    from georaster_cnn.errors import InputError
    from georaster_cnn.options import check_max_pixels

    try:
        return check_max_pixels(value)
    except InputError as exc:
        from georaster_cnn_cli._common import flag_wording

        # click names the option itself: "Invalid value for '--max-pixels': must be ..."
        message = flag_wording(str(exc)).removeprefix("--max-pixels ")
        raise click.BadParameter(message, ctx, param) from exc


def _open_option(keyword: str, option: Callable[[F], F]) -> Callable[[F], F]:
    """``option``, whose value the command receives as ``open_options[keyword]``."""

    def decorator(f: F) -> F:
        return option(_into_open_options(f, lambda kwargs: {keyword: kwargs.pop(keyword)}))

    return decorator


def max_pixels_option() -> Callable[[F], F]:
    """``--max-pixels N``: the largest input opened (API ``open_raster(max_pixels=)``).

    The command receives it in ``open_options`` (see :func:`dataset_options`).
    """
    return _open_option(
        "max_pixels",
        click.option(
            "--max-pixels",
            type=int,
            default=DEFAULT_MAX_PIXELS,
            show_default=True,
            metavar="N",
            callback=_check_max_pixels,
            help="Refuse an input declaring more than N pixel values (height x width x "
            "bands) before reading any; the default is 2**36.",
        ),
    )


def allow_remote_option() -> Callable[[F], F]:
    """``--allow-remote``: network inputs and VRT sources (API ``open_raster(allow_remote=True)``).

    The command receives it in ``open_options`` (see :func:`dataset_options`).
    """
    return _open_option(
        "allow_remote",
        click.option(
            "--allow-remote",
            is_flag=True,
            help="Let inputs, and the sources of a .vrt, be network locations (/vsicurl/, "
            "/vsis3/, https://, ...). [default: local files only]",
        ),
    )


def _stacked(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several option decorators as one; options show in ``--help`` in the order given."""

    def decorator(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return decorator


def source_options() -> Callable[[F], F]:
    """How any input is opened: ``--variables/--select/--stack``, ``--max-pixels``, ``--allow-remote``.

    The command receives them all in one ``open_options`` keyword.
    """
    return _stacked(dataset_options(), max_pixels_option(), allow_remote_option())


def input_options() -> Callable[[F], F]:
    """How INPUT rasters are read: ``--bands`` and :func:`source_options`."""
    return _stacked(bands_option(), source_options())


def inference_options(stride_text: str, stride_default: str) -> Callable[[F], F]:
    """How a model is applied: ``--stride``, ``--batch-size``, ``--device``, ``--min-valid``.

    The library checks them all (:class:`georaster_cnn.options.InferenceOptions`).
    """
    return _stacked(
        stride_option(stride_text, stride_default),
        batch_size_option(DEFAULT_BATCH_SIZE),
        device_option(),
        min_valid_option(),
    )


def _scheduler_values(f: F) -> F:
    """``f`` receiving ``--scheduler``/``--scheduler-file`` as one ``cluster`` keyword."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from georaster_cnn_cli._cluster import SchedulerChoice

        choice = SchedulerChoice(kwargs.pop("scheduler"), kwargs.pop("scheduler_file"))
        return f(*args, cluster=choice, **kwargs)

    return wrapper  # type: ignore[return-value]


def scheduler_options() -> Callable[[F], F]:
    """``--scheduler SPEC`` and ``--scheduler-file PATH``: where the Dask work runs.

    The command receives both in one ``cluster`` keyword
    (:class:`georaster_cnn_cli._cluster.SchedulerChoice`), checked when the command
    starts (:func:`georaster_cnn_cli._cluster.cluster_session`).
    """

    def decorator(f: F) -> F:
        wrapper = _scheduler_values(f)
        wrapper = click.option(
            "--scheduler-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            metavar="PATH",
            help="Use the existing Dask cluster whose scheduler wrote PATH "
            "(`dask scheduler --scheduler-file PATH`); instead of --scheduler.",
        )(wrapper)
        return click.option(
            "--scheduler",
            default=None,
            metavar="SPEC",
            help="Where the Dask work runs: threads (this process), local or local:N (a "
            "cluster of N worker processes on this machine, started and closed here; "
            "default N: one per core), or tcp://HOST:PORT (an existing cluster). "
            "[default: threads]",
        )(wrapper)

    return decorator


def store_option(*, required: bool) -> Callable[[F], F]:
    """``--store DIR|URL``: a window store (a Zarr folder, or a URL of object storage)."""
    return click.option(
        "--store",
        type=LOCATION,
        required=required,
        default=None,
        metavar="DIR|URL",
        help="Window store (Zarr v3) of every labelled window: a folder such as windows.zarr, "
        "or a URL (s3://..., or http(s):// to read). Built when missing, reused when it "
        "records the same inputs and window options, refused otherwise.",
    )


def store_options() -> Callable[[F], F]:
    """``--store``, ``--memory MiB`` and ``--resume/--no-resume`` of ``train``."""
    return _stacked(
        store_option(required=False),
        click.option(
            "--memory",
            type=click.IntRange(min=1),
            default=None,
            metavar="MiB",
            help="Memory budget for training windows. With --store, windows beyond it are "
            "streamed from the store (shuffled within the budget); without, a random subset "
            "that fits is used. [default: 2048]",
        ),
        click.option(
            "--resume/--no-resume",
            default=True,
            show_default=True,
            help="Continue from MODEL.checkpoint, written after each epoch, when it is of the "
            "same run; --no-resume starts afresh.",
        ),
    )
