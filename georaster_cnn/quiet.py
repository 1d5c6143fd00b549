"""The process-wide warning filters, changed safely while other threads run.

``warnings.catch_warnings`` saves the process-wide warning filters on entry and
restores them on exit. Two threads inside it at once restore each other's state:
the one that leaves last can put back a filter that ignores warnings for the rest
of the process (or drop one that another thread just added). Dask runs the
library's reads on threads, and the CLI runs tiles concurrently on a cluster, so
every swap of the filters, the library's and the CLI's, goes through this module
and its one lock: :func:`ignore_warnings` silences a known warning around one call
(the lock held throughout), :func:`warning_filters` sets the filters for a long
block (the lock held while they are swapped in and out, so that the block's own
work, which may wait on threads that silence a warning, never waits on it).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["ignore_warnings", "warning_filters"]

#: Held while the warning filters are swapped; re-entrant, so quiet calls may nest.
_LOCK = threading.RLock()


@contextmanager
def ignore_warnings(category: type[Warning] = Warning, message: str = "") -> Iterator[None]:
    """Ignore warnings of ``category`` whose text starts with ``message`` inside the block.

    The block runs under a process-wide lock: keep it to the one call that warns.
    """
    with _LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message, category)
        yield


@contextmanager
def warning_filters(configure: Callable[[], None]) -> Iterator[None]:
    """Filters (and ``warnings.showwarning``) set by ``configure`` for the block, then restored.

    ``configure`` runs right after the current filters are saved; saving, configuring
    and restoring each happen under the lock of :func:`ignore_warnings`, but the
    block itself does not hold it.
    """
    saved = warnings.catch_warnings()
    with _LOCK:
        saved.__enter__()
        try:
            configure()
        except BaseException:
            saved.__exit__(None, None, None)
            raise
    try:
        yield
    finally:
        with _LOCK:
            saved.__exit__(None, None, None)
