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

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import dask
from dask.callbacks import Callback

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["track_progress"]


class _Tally:
    """Finished and known outputs of the computations inside one :func:`track_progress`."""

    def __init__(self, callback: Callable[[int, int], None]) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0

    def add(self, *, done: int = 0, total: int = 0) -> None:
        with self._lock:  # reported under the lock: the counts never go backwards
            self._done += done
            self._total += total
            self._callback(min(self._done, self._total), self._total)


_TALLY: ContextVar[_Tally | None] = ContextVar("georaster_cnn_progress", default=None)


class _LocalTally(Callback):
    """Counts the tasks of Dask's local schedulers (threads, sync)."""

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self._tally = tally

    def _start_state(self, dsk: Any, state: Any) -> None:
        self._tally.add(total=sum(len(state.get(k, ())) for k in ("ready", "waiting", "running")))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self._tally.add(done=1)


class _FollowedClient:
    """A Dask scheduler function that computes on ``client`` and counts finished outputs.

    What ``client.get`` does, with the outputs followed as they finish: a
    distributed cluster calls none of Dask's local callbacks.
    """

    def __init__(self, client: Client, tally: _Tally) -> None:
        self.client = client
        self._tally = tally

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        from distributed import as_completed, futures_of, get_worker

        try:
            get_worker()
        except ValueError:
            pass  # not inside a task: followed below
        else:
            return self.client.get(dsk, keys, **kwargs)  # inside a task: as Dask would
        packed = self.client.get(dsk, keys, sync=False, **kwargs)
        futures = futures_of(packed)
        self._tally.add(total=len(futures))
        try:
            for future in as_completed(futures):
                if future.status != "finished":
                    break  # gather raises its error now, as client.get would
                self._tally.add(done=1)
            return self.client.gather(packed)
        finally:
            for future in futures:
                future.release()


def _followed(client: Client) -> Client | _FollowedClient:
    """The scheduler to configure for ``client``: followed inside :func:`track_progress`."""
    tally = _TALLY.get()
    return client if tally is None else _FollowedClient(client, tally)


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
    tally = _Tally(callback)
    token = _TALLY.set(tally)
    try:
        with ExitStack() as stack:
            stack.enter_context(_LocalTally(tally))
            from georaster_cnn.cluster import current_client  # cluster imports this module

            client = current_client()
            if client is not None:
                stack.enter_context(dask.config.set(scheduler=_FollowedClient(client, tally)))
            yield
    finally:
        _TALLY.reset(token)
