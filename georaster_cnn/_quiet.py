"""Silencing a known warning around one call, safely while other threads run.

``warnings.catch_warnings`` saves the process-wide warning filters on entry and
restores them on exit. Two threads inside it at once restore each other's state:
the one that leaves last can put back a filter that ignores warnings for the rest
of the process (or drop one that another thread just added). Dask runs the
library's reads on threads, and the CLI runs tiles concurrently on a cluster, so
every place in the library that silences a warning goes through
:func:`ignore_warnings`, which serialises the swaps with one lock.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ignore_warnings"]

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
