"""ignore_warnings: silencing a warning from many threads at once leaves the filters intact."""

from __future__ import annotations

import threading
import time
import warnings

import pytest

from georaster_cnn.quiet import ignore_warnings


def test_ignores_only_what_it_names() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with ignore_warnings(UserWarning, "known"):
            warnings.warn("known noise", UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
            warnings.warn("known but another kind", RuntimeWarning, stacklevel=1)
        warnings.warn("known noise", UserWarning, stacklevel=1)  # outside: shown again
    assert [str(w.message) for w in seen] == [
        "something else",
        "known but another kind",
        "known noise",
    ]


def test_concurrent_threads_restore_the_filters() -> None:
    """Threads entering and leaving overlap; unserialised, the last to leave would restore
    another thread's 'ignore' filter for the whole process."""
    before = list(warnings.filters)
    start = threading.Barrier(8)

    def work(k: int) -> None:
        start.wait()
        for i in range(50):
            with ignore_warnings(UserWarning, f"thread {k}"):
                time.sleep(0.0001 * ((i + k) % 3))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before
    with pytest.warns(UserWarning, match="thread 3"):
        warnings.warn("thread 3 still warns", UserWarning, stacklevel=1)
