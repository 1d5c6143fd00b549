"""Progress display on stderr: rich bars, driven by hand or by Dask computations."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

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
from georaster_cnn_cli._events import EventProgress

__all__ = ["DaskProgress", "make_progress", "shows_progress"]


def shows_progress(state: CLIState) -> bool:
    """Whether progress bars are drawn: not under ``-q``, and only on a terminal."""
    return not state.quiet and state.err.is_terminal


def make_progress(
    state: CLIState, *, extra: Sequence[ProgressColumn] = (), transient: bool = False
) -> Progress:
    """A rich progress display on stderr; silent under ``-q`` or when stderr is no terminal.

    ``extra`` columns go after the standard ones (spinner, description, bar,
    done/total, elapsed time). Under ``--progress jsonl`` it draws nothing and
    emits ``progress`` events instead (:class:`~georaster_cnn_cli._events.EventProgress`).
    """
    if state.events is not None:
        return EventProgress(state.events)
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


class DaskProgress:
    """Advance a rich progress task as Dask computations finish, on any scheduler.

    Use as a context manager around a call that computes (e.g. ``evaluate``,
    ``train``). Several computations inside one block add up into one bar. On
    Dask's local schedulers every task counts; on a distributed client (the one
    current when the block starts) every output of a computation counts
    (:func:`georaster_cnn.cluster.track_progress`).

    Parameters
    ----------
    progress
        The rich :class:`~rich.progress.Progress` display.
    task
        The task to drive; its total is set from the Dask computations.
    """

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task
        self._stack = ExitStack()

    def _update(self, done: int, total: int) -> None:
        self._progress.update(self._task, total=total, completed=done)

    def __enter__(self) -> DaskProgress:
        from georaster_cnn.cluster import track_progress  # imports dask: only when used

        self._stack.enter_context(track_progress(self._update))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
