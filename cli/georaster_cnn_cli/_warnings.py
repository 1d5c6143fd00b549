"""Python warnings shown as ``warning:`` lines, attributed to the work that raised them.

The warning filters and ``warnings.showwarning`` are process-wide and
``warnings.catch_warnings`` is not thread-safe: :func:`capture_warnings` swaps them
once, in the thread that starts the work, through the library's one lock
(:func:`georaster_cnn.quiet.warning_filters`); :func:`report_warnings` only names the
context of its own thread (or copied context), so concurrent tiles each name their
own warnings.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text

if TYPE_CHECKING:
    from georaster_cnn import GeoModel

from georaster_cnn.quiet import warning_filters
from georaster_cnn_cli._common import CLIError, CLIState, error_message, flag_wording, strip_path

__all__ = ["capture_warnings", "load_model_or_exit", "report_warnings"]


class _WarningSink:
    """Where the warnings of one piece of work go: ``warning: [<context>: ]<text>`` on stderr."""

    def __init__(self, state: CLIState, context: str | None) -> None:
        self.state = state
        self.context = context
        self.seen: set[tuple[type[Warning], str]] = set()
        self.lock = threading.Lock()

    def show(
        self, message: Warning | str, category: type[Warning], filename: str, lineno: int
    ) -> None:
        text = flag_wording(strip_path(str(message), self.context))
        with self.lock:  # a sink may hear from several threads (Dask's, a tile's)
            if (category, text) in self.seen:
                return  # the same warning from every Dask chunk is said once
            self.seen.add((category, text))
        if self.state.verbosity >= 2:
            text = f"{text} ({category.__name__}, {filename}:{lineno})"
        if self.state.events is not None:
            self.state.events.emit("warning", message=text, input=self.context)
            return
        prefix = f"{self.context}: " if self.context else ""
        self.state.err.print(
            Text.assemble(("warning:", "bold yellow"), " ", prefix + text),
            soft_wrap=True,
            highlight=False,
        )


#: The sink of the work running now, set by :func:`report_warnings`: each thread, and
#: each context copied into one (``contextvars.copy_context().run``), has its own.
_SINK: ContextVar[_WarningSink | None] = ContextVar("georaster_cnn_warning_sink", default=None)


class _Router:
    """The process-wide ``warnings.showwarning`` while :func:`capture_warnings` runs.

    Sends each warning to the sink of the context that raised it, else (a thread
    that set none: Dask's worker threads, distributed's event loop) to ``fallback``.
    """

    def __init__(self, fallback: _WarningSink) -> None:
        self.fallback = fallback

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        (_SINK.get() or self.fallback).show(message, category, filename, lineno)


@contextmanager
def capture_warnings(state: CLIState, *, context: str | None = None) -> Iterator[None]:
    """Show the Python warnings of the whole process as ``warning:`` lines while the block runs.

    The filters and ``warnings.showwarning`` are process-wide and
    ``warnings.catch_warnings`` is not thread-safe, so the thread that starts the
    work swaps them once, here; inside, :func:`report_warnings` only names the
    context of its own thread (or copied context). Warnings from threads that
    named none are said with ``context``.
    """

    def configure() -> None:
        if state.quiet:
            warnings.simplefilter("ignore")
        else:
            warnings.simplefilter("always")
            if state.verbosity < 2:
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.showwarning = _Router(_WarningSink(state, context))

    with warning_filters(configure):  # the library's lock: no swap interleaves with another
        yield


@contextmanager
def report_warnings(state: CLIState, *, context: str | None = None) -> Iterator[None]:
    """Show each distinct Python warning raised inside the block as one ``warning:`` line.

    Warnings are printed as they happen (above any progress bar) rather than
    turned into errors or lost, whatever the process-wide filters say, in the
    CLI's words (:func:`flag_wording`), after ``<context>: ``. Deprecation
    warnings are hidden unless ``-vv``; everything is hidden under ``-q``.

    Inside :func:`capture_warnings` (entered first by the thread that starts the
    threads) it is safe in several threads at once: each names its own warnings.
    Outside one it is ``capture_warnings(state, context=context)``, for the
    warnings of every thread (Dask's too).
    """
    with ExitStack() as stack:
        if isinstance(warnings.showwarning, _Router):
            sink = _WarningSink(state, context)
        else:
            stack.enter_context(capture_warnings(state, context=context))
            sink = cast(_Router, warnings.showwarning).fallback
        token = _SINK.set(sink)
        try:
            yield
        finally:
            _SINK.reset(token)


def load_model_or_exit(state: CLIState, path: Path) -> GeoModel:
    """Load MODEL, its warnings said; any failure ends the command with one line and exit status 2."""
    import georaster_cnn as gc  # deferred: importing torch takes seconds

    try:
        with report_warnings(state, context=str(path)):
            return gc.load_model(path)
    except (gc.GeorasterCNNError, OSError) as exc:
        message = f"cannot load model {path}: {error_message(exc, path)}"
        raise CLIError(message + _swapped_hint(path)) from exc


def _swapped_hint(path: Path) -> str:
    """A hint when MODEL names a raster, netCDF, Zarr or vector file: arguments swapped?"""
    from georaster_cnn.io.formats import INPUT_SUFFIXES, is_vector_file, is_zarr_store

    if path.suffix.lower() in INPUT_SUFFIXES or is_zarr_store(path) or is_vector_file(path):
        return (
            f". {path.name} looks like data, not a model: did you swap MODEL and INPUT? "
            "The model file (.safetensors) comes first, e.g. "
            "georaster-cnn predict model.safetensors scene.tif -o maps"
        )
    return ""
