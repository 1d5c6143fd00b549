"""The client Dask computes on now, and a client whose finished outputs are counted.

:func:`current_client` answers "would a computation started here go to a cluster?"
for every module of the package; :class:`FollowedClient` is what
:func:`~georaster_cnn.cluster.track_progress` configures as Dask's scheduler on a
distributed cluster, which calls none of Dask's local callbacks. The lowest module of
:mod:`georaster_cnn.cluster`: it imports nothing of the package.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import dask

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["FollowedClient", "Tally", "address", "current_client", "followed", "is_live"]


class Tally:
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


_TALLY: ContextVar[Tally | None] = ContextVar("georaster_cnn_progress", default=None)


class FollowedClient:
    """A Dask scheduler function that computes on ``client`` and counts finished outputs.

    What ``client.get`` does, with the outputs followed as they finish: a
    distributed cluster calls none of Dask's local callbacks.
    """

    def __init__(self, client: Client, tally: Tally) -> None:
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


def followed(client: Client) -> Client | FollowedClient:
    """The scheduler to configure for ``client``: followed inside :func:`track_progress`."""
    tally = _TALLY.get()
    return client if tally is None else FollowedClient(client, tally)


def current_client() -> Client | None:
    """The :class:`distributed.Client` that Dask would compute on now, or ``None``.

    ``None`` when the Dask configuration names a local scheduler (``threads``,
    ``sync``, ``processes``) or no client is active.
    """
    if "distributed" not in sys.modules:
        return None  # no client can exist without it
    configured = dask.config.get("scheduler", None)
    if isinstance(configured, FollowedClient):
        return configured.client
    if configured is not None:
        if type(configured).__name__ == "Client" and hasattr(configured, "get"):
            return configured
        if not (
            isinstance(configured, str)
            and configured.lower() in ("dask.distributed", "distributed")
        ):
            return None
    from distributed import Client

    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def address(client: Client) -> str:
    scheduler = client.scheduler
    return str(scheduler.address) if scheduler is not None else "a closed client"


def is_live(client: Any) -> bool:
    """Whether ``client`` is connected (or connecting)."""
    return getattr(client, "status", "closed") in ("running", "connecting", "newly-created")
