"""Plumbing shared by the commands: state, input expansion, errors, logging, progress.

Nothing here imports the library at module level, so ``--help`` stays fast; the
library's exception classes are looked up only when an exception is being
classified (by which time the library has been imported by whoever raised it).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from dask.callbacks import Callback
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from georaster_cnn import GeoModel

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "RASTER_SUFFIXES",
    "CLIError",
    "CLIState",
    "DaskProgress",
    "ExpandedInputs",
    "InputProblem",
    "configure_logging",
    "error_message",
    "escape",
    "expand_inputs",
    "fail",
    "get_state",
    "is_reportable",
    "load_model_or_exit",
    "make_progress",
    "plural",
    "report_error",
    "report_warnings",
    "shows_progress",
    "strip_path",
]

#: Some of the work failed (e.g. one tile of a batch); the rest was done.
EXIT_FAILED = 1
#: Nothing was done: bad usage, an unusable model, a refused overwrite.
EXIT_USAGE = 2

#: Files taken from folders and glob matches. Files named explicitly are always tried.
RASTER_SUFFIXES: frozenset[str] = frozenset(
    {".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc", ".nc4"}
)

_GLOB_CHARS = frozenset("*?[")


# --------------------------------------------------------------------------- state


@dataclass
class CLIState:
    """Per-invocation settings and consoles, kept in ``click.Context.obj``.

    Attributes
    ----------
    verbosity
        ``-1`` under ``-q``, else the number of ``-v`` flags.
    out, err
        Rich consoles on stdout (results: tables, model cards) and stderr
        (progress, log records, warnings, errors).
    """

    verbosity: int = 0
    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0


def get_state(ctx: click.Context) -> CLIState:
    """The :class:`CLIState` of this invocation (a default one if the group did not run)."""
    state = ctx.find_object(CLIState)
    if state is None:
        state = ctx.ensure_object(CLIState)
    return state


# --------------------------------------------------------------------------- inputs


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

    items: tuple[Path | InputProblem, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(i for i in self.items if isinstance(i, Path))

    @property
    def problems(self) -> tuple[InputProblem, ...]:
        return tuple(i for i in self.items if isinstance(i, InputProblem))


def _is_raster_name(path: Path, suffixes: frozenset[str]) -> bool:
    return path.suffix.lower() in suffixes and not path.name.startswith(".")


def expand_inputs(
    specs: Iterable[str], *, suffixes: frozenset[str] = RASTER_SUFFIXES
) -> ExpandedInputs:
    """Turn INPUT arguments (files, folders, glob patterns) into a list of files.

    An existing file is taken as given, whatever its suffix, and so is a Zarr store
    (a folder). A folder contributes the files directly inside it whose suffix is
    in ``suffixes``, and the Zarr stores in it (not recursive).
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
        Lower-case suffixes (with the dot) that count as raster files.

    Returns
    -------
    ExpandedInputs
        The files, and an :class:`InputProblem` for each argument that yielded none.

    Examples
    --------
    >>> expand_inputs(["tiles/", "extra/*.tif", "scene.nc"])  # doctest: +SKIP
    """
    from georaster_cnn.reader import is_zarr_store  # a Zarr store is a folder but one input

    def is_input(c: Path) -> bool:
        return (c.is_file() and _is_raster_name(c, suffixes)) or (
            is_zarr_store(c) and not c.name.startswith(".")
        )

    seen: set[Path] = set()
    items: list[Path | InputProblem] = []
    listed = ", ".join(sorted(suffixes))
    for spec in specs:
        p = Path(spec).expanduser()
        if is_zarr_store(p):
            found = [p]
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if is_input(c))
            if not found:
                items.append(InputProblem(spec, f"folder holds no raster files ({listed})"))
        elif p.exists():
            found = [p]
        elif _GLOB_CHARS & set(spec):
            matches = [Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True)]
            found = sorted(m for m in matches if is_input(m))
            if not matches:
                items.append(InputProblem(spec, "pattern matches nothing"))
            elif not found:
                items.append(
                    InputProblem(
                        spec,
                        f"pattern matches {len(matches)} path(s) but no raster files ({listed})",
                    )
                )
        else:
            items.append(InputProblem(spec, "no such file or folder"))
            found = []
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                items.append(f)
    return ExpandedInputs(tuple(items))


# --------------------------------------------------------------------------- errors


class CLIError(click.ClickException):
    """A failure the CLI reports as one ``error: ...`` line, with exit status 2 (nothing done).

    Raise it ``from`` the underlying exception: under ``-v`` the traceback of the
    whole chain is shown.
    """

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        """Fallback when raised outside the group (the group prints it itself)."""
        click.echo(f"error: {self.format_message()}", file=file, err=True)


def is_reportable(exc: BaseException) -> bool:
    """Whether ``exc`` is an expected failure (library error or OSError), not a bug."""
    if isinstance(exc, BrokenPipeError):
        return False  # click's own handling of a closed pipe is right
    if isinstance(exc, OSError):
        return True
    errors = sys.modules.get("georaster_cnn.errors")
    root = getattr(errors, "GeorasterCNNError", None)
    return root is not None and isinstance(exc, root)


def strip_path(message: str, path: str | os.PathLike[str] | None) -> str:
    """``message`` on one line, without a leading ``<path>: `` that the caller prints anyway.

    Library messages name the file they are about; when the CLI prints the file
    itself (``error: <input>: <message>``) the repetition is removed.
    """
    msg = " ".join(message.split())
    if path is not None:
        p = Path(path)
        prefixes = {os.fspath(path), str(p), os.fspath(p.absolute()), os.fspath(p.resolve())}
        for prefix in sorted(prefixes, key=len, reverse=True):
            if msg.startswith(prefix + ": "):
                return msg[len(prefix) + 2 :]
    return msg


def error_message(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """One line describing ``exc`` (see :func:`strip_path`); unexpected errors name their type."""
    msg = strip_path(str(exc), path) or type(exc).__name__
    if not is_reportable(exc) and not isinstance(exc, click.ClickException):
        msg = f"{type(exc).__name__}: {msg}"  # an unexpected error: say what kind
    return msg


def report_error(
    state: CLIState, exc: BaseException | str, *, context: str | os.PathLike[str] | None = None
) -> None:
    """Print ``error: [<context>: ]<message>`` on stderr; the traceback too under ``-v``."""
    msg = error_message(exc, context) if isinstance(exc, BaseException) else " ".join(exc.split())
    line = f"{os.fspath(context)}: {msg}" if context is not None else msg
    state.err.print(
        Text.assemble(("error:", "bold red"), " ", line), soft_wrap=True, highlight=False
    )
    if isinstance(exc, BaseException) and state.verbosity >= 1:
        tb = "".join(traceback.format_exception(exc))
        state.err.print(Text(tb.rstrip()), soft_wrap=True, highlight=False)


def fail(message: str) -> NoReturn:
    """Stop the command with one ``error:`` line and exit status 2."""
    raise CLIError(message)


def load_model_or_exit(state: CLIState, path: Path) -> GeoModel:
    """Load MODEL; any failure ends the command with one line and exit status 2."""
    import georaster_cnn as gc  # deferred: importing torch takes seconds

    try:
        with report_warnings(state, context=str(path)):
            return gc.load_model(path)
    except (gc.GeorasterCNNError, OSError) as exc:
        raise CLIError(f"cannot load model {path}: {error_message(exc, path)}") from exc


@contextmanager
def report_warnings(state: CLIState, *, context: str | None = None) -> Iterator[None]:
    """Show each distinct Python warning raised inside the block as one ``warning:`` line.

    Warnings are printed as they happen (above any progress bar) rather than
    turned into errors or lost, whatever the process-wide filters say.
    Deprecation warnings are hidden unless ``-vv``; everything is hidden under ``-q``.
    """
    seen: set[tuple[type[Warning], str]] = set()
    prefix = f"{context}: " if context else ""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        text = strip_path(str(message), context)
        if (category, text) in seen:
            return  # the same warning from every Dask chunk is said once
        seen.add((category, text))
        if state.verbosity >= 2:
            text = f"{text} ({category.__name__}, {filename}:{lineno})"
        state.err.print(
            Text.assemble(("warning:", "bold yellow"), " ", prefix + text),
            soft_wrap=True,
            highlight=False,
        )

    with warnings.catch_warnings():
        if state.quiet:
            warnings.simplefilter("ignore")
        else:
            warnings.simplefilter("always")
            if state.verbosity < 2:
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.showwarning = show
        yield


# --------------------------------------------------------------------------- logging


class _ConsoleHandler(logging.Handler):
    """Logging handler printing through a rich console, so records and progress bars mix."""

    def __init__(self, console: Console, *, show_names: bool) -> None:
        super().__init__()
        self.console = console
        self.show_names = show_names

    def format(self, record: logging.LogRecord) -> str:
        head = record.levelname.lower()
        if self.show_names:
            head = f"{head}: {record.name}"
        text = f"{head}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            style = "yellow" if record.levelno == logging.WARNING else None
            if record.levelno >= logging.ERROR:
                style = "red"
            self.console.print(Text(self.format(record), style=style or ""), soft_wrap=True)
        except Exception:
            self.handleError(record)


_OUR_LOGGERS = ("georaster_cnn", "georaster_cnn_cli")


def configure_logging(verbosity: int, console: Console) -> Callable[[], None]:
    """Route log records to ``console`` at a level set by ``-v``/``-q``.

    ====================  =============================  ==================
    flags                 georaster_cnn loggers          other libraries
    ====================  =============================  ==================
    ``-q``                ERROR                          ERROR
    (none)                WARNING                        WARNING
    ``-v``                INFO                           WARNING
    ``-vv``               DEBUG (with logger names)      WARNING
    ``-vvv``              DEBUG                          DEBUG
    ====================  =============================  ==================

    Returns
    -------
    callable
        Restores the previous logging configuration (the CLI calls it on exit,
        which keeps repeated in-process invocations, e.g. in tests, independent).
    """
    levels = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
    ours = levels.get(max(verbosity, -1), logging.DEBUG)
    if verbosity < 0:
        others = logging.ERROR
    elif verbosity >= 3:
        others = logging.DEBUG
    else:
        others = logging.WARNING
    root = logging.getLogger()
    handler = _ConsoleHandler(console, show_names=verbosity >= 2)
    saved: Mapping[str, int] = {name: logging.getLogger(name).level for name in _OUR_LOGGERS}
    saved_root = root.level
    root.addHandler(handler)
    root.setLevel(others)
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(ours)

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

    return restore


# --------------------------------------------------------------------------- progress


def shows_progress(state: CLIState) -> bool:
    """Whether progress bars are drawn: not under ``-q``, and only on a terminal."""
    return not state.quiet and state.err.is_terminal


def make_progress(
    state: CLIState, *, extra: Sequence[ProgressColumn] = (), transient: bool = False
) -> Progress:
    """A rich progress display on stderr; silent under ``-q`` or when stderr is no terminal.

    ``extra`` columns go after the standard ones (spinner, description, bar,
    done/total, elapsed time).
    """
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra,
        console=state.err,
        disable=not shows_progress(state),
        transient=transient,
    )


class DaskProgress(Callback):
    """Advance a rich progress task as the local Dask scheduler finishes tasks.

    Use as a context manager around a call that computes (e.g.
    ``write_prediction``). Several computations inside one block add up into
    one bar. Only local schedulers (threads, processes, synchronous) report
    progress; a ``distributed`` cluster does not call these hooks.

    Parameters
    ----------
    progress
        The rich :class:`~rich.progress.Progress` display.
    task
        The task to drive; its total is set from the Dask graphs.
    """

    def __init__(self, progress: Progress, task: TaskID) -> None:
        super().__init__()
        self._progress = progress
        self._task = task
        self._total = 0
        self._done = 0

    def _start_state(self, dsk: Mapping[Any, Any], state: Mapping[str, Any]) -> None:
        pending = sum(len(state.get(k, ())) for k in ("ready", "waiting", "running"))
        self._total += pending
        self._progress.update(self._task, total=self._total, completed=self._done)

    def _posttask(
        self,
        key: Any,
        result: Any,
        dsk: Mapping[Any, Any],
        state: Mapping[str, Any],
        worker_id: Any,
    ) -> None:
        self._done += 1
        self._progress.update(self._task, completed=min(self._done, self._total))


def plural(n: int, word: str) -> str:
    """``"1 tile"``, ``"3 tiles"``, ``"2 classes"``."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def kv_table(title: str) -> Table:
    """A two-column key/value grid with a bold, left-aligned title (model cards, reports)."""
    table = Table.grid(padding=(0, 2))
    table.title = title
    table.title_justify = "left"
    table.title_style = "bold"
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    return table
