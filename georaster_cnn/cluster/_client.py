"""The client Dask computes on now, and a client whose finished outputs are counted.

:func:`current_client` answers "would a computation started here go to a cluster?"
for every module of the package; :class:`FollowedClient` is what
:func:`~georaster_cnn.cluster.track_progress` configures as Dask's scheduler on a
distributed cluster, which calls none of Dask's local callbacks. The lowest module of
:mod:`georaster_cnn.cluster`: it imports nothing of the package.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import dask

from georaster_cnn.errors import ClusterError

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "FollowedClient",
    "Tally",
    "address",
    "cancelled",
    "check_workers",
    "current_client",
    "followed",
    "is_live",
    "lost",
    "worker_count",
]


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

log = logging.getLogger(__name__)

#: Seconds without any worker (or without an answer from the scheduler) before a
#: computation on a cluster gives up instead of waiting for ever.
NO_WORKERS_TIMEOUT_S = 60.0
#: Seconds between checks while waiting for results (also bounds how long Ctrl-C and
#: SIGTERM wait).
POLL_S = 1.0


class FollowedClient:
    """A Dask scheduler function that computes on ``client``, follows and counts its outputs.

    What ``client.get`` does, with the outputs followed as they finish: a
    distributed cluster calls none of Dask's local callbacks (``tally`` counts them
    inside :func:`~georaster_cnn.cluster.track_progress`), and a cluster that lost
    every worker or its scheduler ends the computation with a ``ClusterError``.
    """

    def __init__(self, client: Client, tally: Tally | None = None) -> None:
        self.client = client
        self._tally = tally

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        from distributed import futures_of, get_worker

        try:
            get_worker()
        except ValueError:
            pass  # not inside a task: followed below
        else:
            return self.client.get(dsk, keys, **kwargs)  # inside a task: as Dask would
        packed = self.client.get(dsk, keys, sync=False, **kwargs)
        futures = futures_of(packed)
        if self._tally is not None:
            self._tally.add(total=len(futures))
        try:
            self._follow(futures)
            return self.client.gather(packed)  # raises a failed task's error, as get would
        finally:
            for future in futures:
                future.release()

    def _follow(self, futures: list[Any]) -> None:
        """Wait for ``futures`` in short polls, counting them; stop at the first failure.

        A cluster without workers for :data:`NO_WORKERS_TIMEOUT_S`, or a lost scheduler,
        is a :class:`~georaster_cnn.errors.ClusterError`, never a wait for ever.
        """
        from distributed import wait

        remaining, starved = set(futures), None
        while remaining:
            try:
                done = wait(list(remaining), timeout=POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                done = set()
            except Exception as exc:
                if is_live(self.client) and not cancelled(exc):
                    raise
                raise lost(self.client, exc) from exc
            if not done:
                starved = check_workers(self.client, starved)
                continue
            starved = None
            for future in done:
                remaining.discard(future)
                if future.status == "cancelled":
                    raise lost(self.client, None)
                if future.status != "finished":
                    return  # gather raises its error now
                if self._tally is not None:
                    self._tally.add(done=1)


def followed(client: Client) -> FollowedClient:
    """The scheduler to configure for ``client``: followed (and counted inside :func:`track_progress`)."""
    return FollowedClient(client, _TALLY.get())


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


def worker_count(client: Client) -> int | None:
    """Workers the scheduler knows now; ``None`` when it cannot be asked."""
    try:
        return len(client.scheduler_info(n_workers=-1).get("workers", {}))
    except Exception:  # the scheduler is gone or busy: the caller's wait decides
        return None


def cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` says the futures were cancelled or the connection closed (not a task's error)."""
    names = {"CancelledError", "FutureCancelledError", "FuturesCancelledError", "CommClosedError"}
    return any(type(e).__name__ in names for e in (exc, exc.__cause__, exc.__context__) if e)


def lost(client: Client, exc: BaseException | None) -> ClusterError:
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return ClusterError(
        f"lost the scheduler at {address(client)}{detail}; the blocks written so far are "
        "kept: restart the cluster and rerun to continue from them"
    )


def check_workers(client: Client, starved_since: float | None) -> float | None:
    """The time since which the cluster has no worker (``None``: it has some); raise past the limit."""
    if worker_count(client):
        return None
    now = time.monotonic()
    if starved_since is None:
        log.warning("the cluster at %s has no worker; waiting for one", address(client))
        return now
    if now - starved_since >= NO_WORKERS_TIMEOUT_S:
        raise ClusterError(
            f"the cluster at {address(client)} has had no worker (or no answer) for "
            f"{NO_WORKERS_TIMEOUT_S:.0f} s; start workers (`dask worker {address(client)}`) "
            "and rerun: the blocks written so far are kept and the rerun continues from them"
        )
    return starved_since
