"""Where Dask work runs: scheduler resolution, cluster lifecycle, streaming blocks.

One option names where a job's Dask graphs compute, for every entry point
(:func:`~georaster_cnn.write_prediction`, evaluation, training-window extraction and
the CLI's ``--scheduler``):

* ``None`` (default): an active :class:`distributed.Client` if there is one,
  otherwise Dask's threaded scheduler;
* ``"threads"``: Dask's threaded scheduler in this process (even with a client
  active); ``"sync"``: one thread, for debugging;
* ``"local"`` or ``"local:N"``: a :class:`distributed.LocalCluster` of ``N`` worker
  processes (default: one per core), one thread each, torch threads capped so the
  workers together use the cores once; started on entry and closed on exit;
* ``"tcp://HOST:PORT"`` (any ``scheme://`` address) or ``scheduler_file=PATH`` (as
  written by ``dask scheduler --scheduler-file``): an existing cluster, connected
  on entry and disconnected on exit (the cluster keeps running);
* a :class:`distributed.Client`: that client.

:func:`use_scheduler` is the context manager behind all of them: whatever computes
inside it uses the chosen scheduler (and, given a model, the model is shipped to the
cluster's workers first, :mod:`georaster_cnn.cluster._shipping`), and its
:class:`ClusterSession` gives the dashboard link (``None`` without one).

:func:`stream_blocks` computes one Dask array block by block on a client with a
bounded number of blocks in flight and hands each finished block to the caller,
in the caller's process (the writer streams them into a staged GeoTIFF this way).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask

from georaster_cnn.cluster import _client
from georaster_cnn.cluster._client import (
    address,
    cancelled,
    check_workers,
    current_client,
    followed,
    is_live,
    lost,
)
from georaster_cnn.cluster._shipping import Shippable, ship_model
from georaster_cnn.errors import InputError

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "ClusterSession",
    "SchedulerSpec",
    "parse_scheduler",
    "stream_blocks",
    "torch_threads_for",
    "use_scheduler",
]

log = logging.getLogger(__name__)

#: Environment variable a worker reads for its torch thread count (set by
#: ``local:N`` clusters; set it on remote workers that share a machine).
TORCH_THREADS_ENV = "GCNN_TORCH_THREADS"
#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT_S = 30
#: Local schedulers Dask has in this process.
LOCAL_SCHEDULERS = ("threads", "sync")

_LOCAL_RE = re.compile(r"^local(?::(\d+))?$")
_ADDRESS_RE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class SchedulerSpec:
    """A parsed ``scheduler=`` / ``scheduler_file=``.

    Attributes
    ----------
    kind
        ``auto`` (an active client, else threads), ``threads``, ``sync``, ``local``
        (a new LocalCluster), ``address``, ``file`` or ``client``.
    workers
        Worker processes of a ``local`` cluster.
    target
        The address or scheduler file.
    """

    kind: str
    workers: int = 0
    target: str = ""


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parse_scheduler(
    scheduler: str | Client | None = None, *, scheduler_file: str | os.PathLike[str] | None = None
) -> SchedulerSpec:
    """Check and parse a scheduler option (see the module docstring for the forms).

    Raises
    ------
    InputError
        An unknown form, ``local:0``, both ``scheduler`` and ``scheduler_file``, or a
        scheduler file that does not exist.
    """
    if scheduler_file is not None:
        if scheduler is not None:
            raise InputError(
                f"scheduler={scheduler!r} and scheduler_file={str(scheduler_file)!r} both given; "
                "name the cluster one way only"
            )
        path = Path(scheduler_file)
        if not path.is_file():
            raise InputError(
                f"scheduler file {path} does not exist; start the scheduler with "
                f"`dask scheduler --scheduler-file {path}` or pass its address as scheduler="
            )
        return SchedulerSpec("file", target=str(path))
    if scheduler is None:
        return SchedulerSpec("auto")
    if not isinstance(scheduler, str):
        if type(scheduler).__name__ == "Client" and hasattr(scheduler, "get"):
            return SchedulerSpec("client")
        raise InputError(
            f"scheduler= must be a string or a distributed.Client; found {type(scheduler).__name__}"
        )
    text = scheduler.strip()
    low = text.lower()
    if low in ("threads", "threading"):
        return SchedulerSpec("threads")
    if low in ("sync", "synchronous", "single-threaded"):
        return SchedulerSpec("sync")
    m = _LOCAL_RE.match(low)
    if m:
        n = int(m.group(1)) if m.group(1) else _cores()
        if n < 1:
            raise InputError(f"scheduler={text!r}: a local cluster needs at least 1 worker")
        return SchedulerSpec("local", workers=n)
    if _ADDRESS_RE.match(text):
        return SchedulerSpec("address", target=text)
    raise InputError(
        f"unknown scheduler {text!r}; expected threads, local, local:N (N worker processes), "
        "a scheduler address such as tcp://10.0.0.5:8786, or scheduler_file=PATH"
    )


def torch_threads_for(cores: int, processes: int, threads_per_process: int) -> int:
    """Torch threads per worker process so that ``processes`` of them use ``cores`` once.

    One model call runs at a time in a process (a lock), so a process needs
    ``cores // processes`` threads, whatever its Dask thread count; at least 1.
    """
    del threads_per_process  # model calls in one process are serialised
    return max(1, cores // max(1, processes))


@dataclass(frozen=True)
class ClusterSession:
    """Where a job computes, as :func:`use_scheduler` resolved it.

    Attributes
    ----------
    scheduler
        ``threads``, ``sync``, ``local:N``, the scheduler's address, or ``client``
        (an active client used as found).
    client
        The :class:`distributed.Client`, or ``None`` on a local scheduler.
    dashboard_link
        The dashboard's URL, when the cluster serves one (it needs ``bokeh``).
    """

    scheduler: str
    client: Client | None = None
    dashboard_link: str | None = None

    @property
    def distributed(self) -> bool:
        """Whether work goes to a distributed cluster."""
        return self.client is not None

    def worker_threads(self) -> int:
        """Threads of all workers (1 for ``sync``, the cores for ``threads``)."""
        if self.client is None:
            return 1 if self.scheduler == "sync" else _cores()
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


def _dashboard_link(client: Client) -> str | None:
    try:
        info = client.scheduler_info(n_workers=0)
    except Exception:  # an old or unusual scheduler: no link, no failure
        return None
    if "dashboard" not in info.get("services", {}):
        return None
    link = client.dashboard_link
    return str(link) if link and _serves_a_dashboard(client) else None


def _serves_a_dashboard(client: Client) -> bool:
    """Whether the scheduler can serve its dashboard: it needs bokeh where it runs.

    distributed lists a ``dashboard`` service either way (without bokeh its page only
    says to install it). Asked of the scheduler itself, with a function of the
    standard library (no network request of ours); ``True`` when it cannot be asked.
    """
    import importlib.util

    try:
        return client.run_on_scheduler(importlib.util.find_spec, "bokeh") is not None
    except Exception:  # an old or locked-down scheduler: keep the link
        return True


def _connect(spec: SchedulerSpec) -> Client:
    from distributed import Client

    try:
        if spec.kind == "file":
            return Client(scheduler_file=spec.target, timeout=CONNECT_TIMEOUT_S)
        return Client(spec.target, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        where = (
            f"the scheduler in {spec.target}" if spec.kind == "file" else f"scheduler {spec.target}"
        )
        raise InputError(
            f"could not connect to {where} within {CONNECT_TIMEOUT_S} s ({exc}); check that "
            "`dask scheduler` runs there and that this machine can reach its port"
        ) from exc


def _start_local(n: int) -> tuple[Any, Client]:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # a free port: several jobs may run at once
        env={TORCH_THREADS_ENV: str(torch_threads_for(_cores(), n, 1))},
    )
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return cluster, client


@contextmanager
def use_scheduler(
    scheduler: str | Client | None = None,
    *,
    scheduler_file: str | os.PathLike[str] | None = None,
    model: Shippable | str | None = None,
) -> Iterator[ClusterSession]:
    """Compute everything inside the block on the chosen scheduler.

    Parameters
    ----------
    scheduler
        ``None`` (an active client, else threads), ``"threads"``, ``"sync"``,
        ``"local"``, ``"local:N"``, a scheduler address (``tcp://HOST:PORT``) or a
        :class:`distributed.Client`.
    scheduler_file
        A scheduler file written by ``dask scheduler --scheduler-file``.
    model
        On a cluster, ship this model (or the checksum of a model this process
        holds) to the workers once (:func:`ship_model`); ignored on local schedulers.

    Yields
    ------
    ClusterSession
        The scheduler's name, the client (``None`` on a local scheduler) and the
        dashboard link. A cluster started here (``local``) is closed on exit; a
        client connected here is closed on exit, its cluster keeps running.

    Raises
    ------
    InputError
        A malformed option or an unreachable scheduler.

    Examples
    --------
    >>> with use_scheduler("local:2") as session:  # doctest: +SKIP
    ...     print(session.dashboard_link)
    ...     write_prediction(predict(open_raster("big.tif"), model), "big.tif")
    """
    spec = parse_scheduler(scheduler, scheduler_file=scheduler_file)
    with ExitStack() as stack:
        session = _enter(spec, scheduler, stack)
        if session.client is not None and model:
            ship_model(session.client, model)  # tasks then carry only the model's digest
        yield session


def _enter(spec: SchedulerSpec, given: Any, stack: ExitStack) -> ClusterSession:
    """Make ``spec`` the scheduler until ``stack`` closes; the session it is."""
    if spec.kind == "auto":
        client = current_client()
        if client is None:
            return ClusterSession("threads")
        # Used as the user set it up: no process-wide scheduler is set here (concurrent
        # tiles in other threads share the process's dask configuration).
        return ClusterSession("client", client, _dashboard_link(client))
    if spec.kind in LOCAL_SCHEDULERS:
        stack.enter_context(dask.config.set(scheduler=spec.kind))
        return ClusterSession(spec.kind)
    if spec.kind == "client":
        client, name = given, "client"
    elif spec.kind == "local":
        cluster, client = _start_local(spec.workers)
        stack.callback(cluster.close)
        stack.callback(client.close)
        name = f"local:{spec.workers}"
        log.info("started a local cluster of %d worker process(es)", spec.workers)
    else:
        client = _connect(spec)
        stack.callback(client.close)
        name = address(client) if spec.kind == "file" else spec.target
    stack.enter_context(client.as_current())
    stack.enter_context(dask.config.set(scheduler=followed(client)))
    return ClusterSession(name, client, _dashboard_link(client))


# --------------------------------------------------------------------------- streaming


def stream_blocks(
    client: Client,
    tasks: Iterable[tuple[Any, Any]],
    on_done: Callable[[Any, Any], None],
    *,
    max_in_flight: int,
) -> int:
    """Compute Dask tasks on a cluster, at most ``max_in_flight`` at a time, as they finish.

    Parameters
    ----------
    client
        The client to compute on.
    tasks
        ``(ident, dask.delayed object)`` pairs; they are submitted in this order,
        in batches, so the scheduler's graph stays small and only finished blocks
        wait on the workers.
    on_done
        ``on_done(ident, result)``, called in this thread as each result arrives.
    max_in_flight
        Most tasks submitted and not yet handed to ``on_done``.

    Returns
    -------
    int
        The number of tasks computed.

    Raises
    ------
    ClusterError
        The cluster had no worker for ``NO_WORKERS_TIMEOUT_S`` seconds (all lost,
        none started), or its scheduler stopped answering for as long.
    Exception
        The first task's exception (the others are cancelled).

    Notes
    -----
    Finished tasks are waited for in short polls (``POLL_S`` of
    :mod:`georaster_cnn.cluster._client`), so Ctrl-C and
    SIGTERM are handled within about a second, and the workers are counted meanwhile.
    """
    from distributed import wait

    todo = iter(tasks)
    max_in_flight = max(1, max_in_flight)
    refill = max(1, max_in_flight // 2)
    pending: dict[Any, tuple[Any, Any]] = {}  # future key -> (ident, future)
    count = 0
    starved_since: float | None = None

    def submit(n: int) -> None:
        batch = list(islice(todo, n))
        if not batch:
            return
        futures = client.compute([d for _, d in batch])
        for (ident, _), fut in zip(batch, futures, strict=True):
            pending[fut.key] = (ident, fut)

    try:
        submit(max_in_flight)
        while pending:
            try:
                finished = wait(
                    [f for _, f in pending.values()],
                    timeout=_client.POLL_S,
                    return_when="FIRST_COMPLETED",
                ).done
            except TimeoutError:
                finished = set()
            except Exception as exc:
                if is_live(client) and not cancelled(exc):
                    raise
                raise lost(client, exc) from exc  # the client lost its scheduler
            if not finished:
                starved_since = check_workers(client, starved_since)
                continue
            starved_since = None
            for fut in finished:
                ident, _ = pending.pop(fut.key)
                if fut.status == "cancelled":  # by the scheduler's loss, not by the task
                    raise lost(client, None)
                try:
                    result = fut.result()
                except Exception as exc:
                    if cancelled(exc):
                        raise lost(client, exc) from exc
                    raise
                fut.release()
                on_done(ident, result)
                count += 1
            if max_in_flight - len(pending) >= refill:
                submit(max_in_flight - len(pending))
    finally:
        if pending:
            try:
                client.cancel([f for _, f in pending.values()])
            except Exception:  # a scheduler that is gone cancels nothing; keep the first error
                log.debug("could not cancel %d pending task(s)", len(pending))
    return count
