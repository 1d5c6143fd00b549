"""Progress of Dask computations on any scheduler: :func:`track_progress`.

Dask's local callbacks count the tasks of its threaded and synchronous schedulers,
but a distributed cluster calls none of them. Inside :func:`track_progress` the
client is therefore configured as a scheduler function that computes as
``client.get`` does and counts each output as it finishes (the client current on
entry, and any client :func:`~georaster_cnn.cluster.use_scheduler` connects inside
the block). :func:`~georaster_cnn.cluster.current_client` sees through it.

Re-exported by :mod:`georaster_cnn.cluster`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import dask
from dask.callbacks import Callback

from georaster_cnn.cluster._client import _TALLY, FollowedClient, Tally, current_client

if TYPE_CHECKING:
    pass

__all__ = ["track_progress"]


class _LocalTally(Callback):
    """Counts the tasks of Dask's local schedulers (threads, sync)."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self._tally = tally

    def _start_state(self, dsk: Any, state: Any) -> None:
        self._tally.add(total=sum(len(state.get(k, ())) for k in ("ready", "waiting", "running")))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self._tally.add(done=1)


@contextmanager
def track_progress(callback: Callable[[int, int], None]) -> Iterator[None]:
    """Report the progress of every Dask computation inside the block, wherever it runs.

    On Dask's local schedulers every task counts; on a distributed cluster (the
    client current on entry, or one :func:`~georaster_cnn.cluster.use_scheduler`
    connects inside the block) every output of a computation counts (a block of
    an evaluation, of training windows). Several computations add up.

    Parameters
    ----------
    callback
        Called as ``callback(finished, known)`` when a computation starts and each
        time a task (output) finishes; possibly from other threads, one call at a time.

    Examples
    --------
    >>> with use_scheduler("local:2"), track_progress(print):  # doctest: +SKIP
    ...     report = evaluate(open_raster("scene.tif"), model, open_labels("labels.tif"))
    """
    tally = Tally(callback)
    token = _TALLY.set(tally)
    try:
        with ExitStack() as stack:
            stack.enter_context(_LocalTally(tally))
            client = current_client()
            if client is not None:
                stack.enter_context(dask.config.set(scheduler=FollowedClient(client, tally)))
            yield
    finally:
        _TALLY.reset(token)
