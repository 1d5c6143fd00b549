"""Progress display on stderr: rich bars, driven by hand or by the local Dask scheduler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dask.callbacks import Callback
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

from georaster_cnn_cli._common import CLIState

__all__ = ["DaskProgress", "make_progress", "shows_progress"]


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
