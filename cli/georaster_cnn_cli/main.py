"""The ``georaster-cnn`` click group: global options, logging, errors at the edge."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from georaster_cnn_cli import __version__
from georaster_cnn_cli._common import (
    CLIError,
    CLIState,
    exit_status,
    get_state,
    is_reportable,
    learn_flags,
    report_error,
)
from georaster_cnn_cli._events import EventStream, event_console
from georaster_cnn_cli._logging import configure_logging
from georaster_cnn_cli.evaluate import evaluate
from georaster_cnn_cli.export import export
from georaster_cnn_cli.info import info
from georaster_cnn_cli.inspect import inspect_cmd
from georaster_cnn_cli.predict import predict
from georaster_cnn_cli.qgis import qgis
from georaster_cnn_cli.train import train
from georaster_cnn_cli.vectorize import vectorize
from georaster_cnn_cli.windows import windows

__all__ = ["cli"]

#: Exit status after Ctrl-C (SIGINT) and after SIGTERM: 128 + the signal number.
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` and cleanup runs.

    A ``BaseException`` like ``KeyboardInterrupt``: a batch's per-tile error
    handling (``except Exception``) does not swallow it.
    """


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _handle_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into :class:`Terminated` for this invocation; returns the restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be set from the main thread
    previous = signal.signal(signal.SIGTERM, _on_sigterm)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def _interrupted(what: str, exc: BaseException) -> str:
    """The one line said on an interruption, with the notes a command added (what a rerun continues)."""
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    return "; ".join([what, "no partial output left in place", *notes])


class _Group(click.Group):
    """A group that turns expected failures into one ``error:`` line and an exit status.

    Library errors (:class:`georaster_cnn.GeorasterCNNError`) and ``OSError``
    exit with status 1 (2 for a refused overwrite: nothing was written),
    :class:`CLIError` with its own status; library messages are reworded to name
    options, not Python keywords. The traceback is
    printed only under ``-v``; anything else is a bug and keeps its traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            report_error(get_state(ctx), _interrupted("interrupted (Ctrl-C)", exc))
            ctx.exit(EXIT_INTERRUPTED)
        except Terminated as exc:
            report_error(get_state(ctx), _interrupted("terminated (SIGTERM)", exc))
            ctx.exit(EXIT_TERMINATED)
        except CLIError as exc:
            report_error(get_state(ctx), exc)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            state = get_state(ctx)
            if state.events is None:
                raise  # click prints the usage and the message
            report_error(state, exc.format_message())  # --progress jsonl: as an event
            ctx.exit(exc.exit_code)
        except Exception as exc:
            if not is_reportable(exc):
                raise
            report_error(get_state(ctx), exc)
            ctx.exit(exit_status(exc))


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "-v", "--verbose", count=True, help="More detail: -v info, -vv debug, -vvv all libraries."
)
@click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress, tables or warnings.")
@click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(["auto", "jsonl"]),
    default="auto",
    show_default=True,
    help="auto: progress bars when stderr is a terminal. jsonl: for programs (the QGIS "
    "plugin): stderr carries one JSON object per line - the device, progress (stage, done, "
    "total), warnings and errors - and stdout the results as text (docs/cli.md).",
)
@click.version_option(__version__, "--version", prog_name="georaster-cnn")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, progress_mode: str) -> None:
    """Classify geospatial rasters (GeoTIFF/COG, netCDF) with CNNs.

    Train a model on rasters with class labels, inspect it, and apply it to
    many tiles at once; every output is a georeferenced class map.

    Exit status: 0 success, 1 something failed (e.g. one tile of a batch),
    2 bad usage or unusable model (nothing was done), 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM); an interrupted run leaves no partial output.

    \b
    Example:
      georaster-cnn train scene.tif --labels labels.tif -o landcover.safetensors
      georaster-cnn info landcover.safetensors
      georaster-cnn predict landcover.safetensors 'tiles/*.tif' -o maps/
    """
    if verbose and quiet:
        raise click.UsageError("-v and -q contradict each other; give one of them")
    state = CLIState(verbosity=-1 if quiet else verbose)
    if progress_mode == "jsonl":
        state.events = EventStream(sys.stderr)
        state.err = event_console(state.events)
    ctx.obj = state
    ctx.call_on_close(configure_logging(state.verbosity, state.err, state.events))
    ctx.call_on_close(_handle_sigterm())


cli.add_command(predict)
cli.add_command(train)
cli.add_command(info)
cli.add_command(evaluate)
cli.add_command(vectorize)
cli.add_command(inspect_cmd)
cli.add_command(windows)
cli.add_command(qgis)
cli.add_command(export)
learn_flags(cli)  # library keywords worded as these commands' options
