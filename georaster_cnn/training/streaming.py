"""Streaming a window store to the training loop within a memory budget.

:class:`StreamedWindows` is a :class:`torch.utils.data.IterableDataset` of batches
``(x, y)`` over the windows of a store that a mask selects (training or validation).
The store is read in *units* (runs of whole chunks, at most a shard), in an order
shuffled with the epoch's seed, by background threads that stay a bounded number of
units ahead (read in parallel: remote stores answer slowly); windows then pass through
a shuffle buffer of bounded size, which emits random windows of everything seen so far. Validation reads units in
order, unshuffled.

Everything held is bounded by :func:`stream_layout`: the read-ahead, the unit being
shuffled in, the batches being formed and the buffer share the budget. Given the
same seed, the batches are the same whatever the read timing: the reading threads
only decide *when* a unit arrives, never *which*.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from georaster_cnn.errors import InputError
from georaster_cnn.training.store import WindowStore

__all__ = ["StreamLayout", "StreamedWindows", "stream_layout"]

#: Units read ahead of the one being used.
READ_AHEAD = 2
#: Units' worth of windows in flight besides the buffer: the read-ahead, the unit
#: being read, its selected copy, the windows emitted from the buffer and the batches
#: being formed.
_UNITS_HELD = READ_AHEAD + 4


@dataclass(frozen=True)
class StreamLayout:
    """How a stream holds its windows: ``unit`` windows a read, ``buffer`` windows shuffled,
    and at most ``recal`` windows kept for the batch-norm recalibration after an epoch."""

    unit: int
    buffer: int
    recal: int


def stream_layout(store: WindowStore, memory_bytes: int, batch_size: int) -> StreamLayout:
    """Read unit, shuffle buffer and recalibration sample for ``memory_bytes`` of windows.

    A quarter of the budget goes to the units in flight (at least a chunk each), up to
    an eighth to the recalibration sample (2 to 10 batches), a batch to the step being
    computed, and the rest to the shuffle buffer.

    Raises
    ------
    InputError
        The budget does not hold the smallest layout (a chunk a read, a buffer of a chunk).
    """
    w = store.window_bytes
    per_unit = memory_bytes // 4 // _UNITS_HELD // w
    unit = min(store.shard, max(store.chunk, per_unit // store.chunk * store.chunk))
    recal = min(10 * batch_size, max(2 * batch_size, memory_bytes // 8 // w))
    rest = memory_bytes // w - _UNITS_HELD * unit - recal - batch_size
    if rest < store.chunk:
        need = (_UNITS_HELD * store.chunk + store.chunk + 3 * batch_size) * w
        raise InputError(
            f"a memory budget of {memory_bytes / 2**20:.0f} MiB is too small to stream "
            f"windows of {w / 1024:.0f} KiB in batches of {batch_size}: it needs at least "
            f"{-(-need // 2**20)} MiB; raise memory (--memory) or lower the batch size"
        )
    return StreamLayout(unit=unit, buffer=int(rest), recal=int(recal))


class StreamedWindows(torch.utils.data.IterableDataset):
    """Batches of the windows of ``store`` where ``select`` is true, with class ids ``y``.

    Parameters
    ----------
    store
        An opened window store.
    select
        Which windows (training or validation), a mask over the store.
    y
        Class ids of all the store's windows (int64).
    batch_size
        Windows per batch; the last batch of an epoch may be smaller.
    layout
        Read unit and buffer (:func:`stream_layout`).
    shuffle
        Shuffle (training) or read in order (validation). Set each epoch's seed with
        :meth:`set_epoch_seed`.
    """

    def __init__(
        self,
        store: WindowStore,
        select: np.ndarray,
        y: np.ndarray,
        *,
        batch_size: int,
        layout: StreamLayout,
        shuffle: bool,
    ) -> None:
        self.store = store
        self.select = np.asarray(select, bool)
        self.y = np.asarray(y, np.int64)
        self.batch_size = batch_size
        self.layout = layout
        self.shuffle = shuffle
        self.seed = 0
        self.wait_s = 0.0
        starts = range(0, len(store), layout.unit)
        self.units = [
            (a, min(a + layout.unit, len(store)))
            for a in starts
            if self.select[a : a + layout.unit].any()
        ]

    def __len__(self) -> int:
        """Windows selected."""
        return int(self.select.sum())

    def set_epoch_seed(self, seed: int) -> None:
        """Seed the next pass: its unit order and shuffle buffer."""
        self.seed = seed

    def _read(self, unit: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        a, b = unit
        sel = self.select[a:b]
        x = self.store.read(a, b)
        return (x if sel.all() else x[sel]), self.y[a:b][sel]

    def _units(self, order: list[tuple[int, int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The units' selected windows, in ``order``, read ahead by a thread."""
        with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="gcnn-stream") as pool:
            pending: deque[Future[tuple[np.ndarray, np.ndarray]]] = deque()
            it = iter(order)
            for unit in it:
                pending.append(pool.submit(self._read, unit))
                if len(pending) > READ_AHEAD:
                    break
            while pending:
                started = time.perf_counter()
                got = pending.popleft().result()
                self.wait_s += time.perf_counter() - started
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._read, nxt))
                yield got

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(self.seed)
        units = list(self.units)
        info = torch.utils.data.get_worker_info()
        if info is not None:  # a DataLoader's worker: every num_workers-th unit
            units = units[info.id :: info.num_workers]
        if self.shuffle:
            units = [units[i] for i in rng.permutation(len(units))]
            source = _shuffled(self._units(units), self.layout.buffer, rng)
        else:
            source = self._units(units)
        yield from _batches(source, self.batch_size)


def _shuffled(
    units: Iterator[tuple[np.ndarray, np.ndarray]], capacity: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Windows through a shuffle buffer of ``capacity``: random picks of all seen so far.

    When a unit arrives and the buffer would overflow, the overflow is emitted: a random
    choice among the buffer's and the unit's windows; the unit's others take the freed
    places. At the end the buffer is emitted in random order.
    """
    buf_x: np.ndarray | None = None
    buf_y = np.empty(capacity, np.int64)
    n = 0
    for x, y in units:
        if buf_x is None:
            buf_x = np.empty((capacity, *x.shape[1:]), np.float32)
        m = len(y)
        k = max(0, n + m - capacity)
        if k == 0:
            buf_x[n : n + m], buf_y[n : n + m] = x, y
            n += m
            continue
        emit = rng.choice(n + m, k, replace=False)
        old = emit < n
        out_x = np.empty((k, *x.shape[1:]), np.float32)
        out_y = np.empty(k, np.int64)
        out_x[old], out_y[old] = buf_x[emit[old]], buf_y[emit[old]]
        new_taken = emit[~old] - n
        out_x[~old], out_y[~old] = x[new_taken], y[new_taken]
        kept_new = np.setdiff1d(np.arange(m), new_taken)
        freed = np.sort(emit[old])
        f = len(freed)  # kept_new has at least f windows, since n <= capacity
        buf_x[freed], buf_y[freed] = x[kept_new[:f]], y[kept_new[:f]]
        rest = kept_new[f:]
        buf_x[n : n + len(rest)], buf_y[n : n + len(rest)] = x[rest], y[rest]
        n += len(rest)
        yield out_x, out_y
    if buf_x is not None and n:
        last = rng.permutation(n)
        yield buf_x[last], buf_y[last]


def _batches(
    source: Iterator[tuple[np.ndarray, np.ndarray]], batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``batch`` windows from runs of windows; the last one may be smaller.

    Only a batch that straddles two runs is copied; the others are views of their run.
    """
    carry_x: list[np.ndarray] = []
    carry_y: list[np.ndarray] = []
    held = 0
    for x, y in source:
        start = 0
        if held:
            start = min(batch - held, len(y))
            carry_x.append(x[:start])
            carry_y.append(y[:start])
            held += start
            if held < batch:
                continue
            yield (
                torch.from_numpy(np.concatenate(carry_x)),
                torch.from_numpy(np.concatenate(carry_y)),
            )
            carry_x, carry_y, held = [], [], 0
        full = start + (len(y) - start) // batch * batch
        for i in range(start, full, batch):
            yield torch.from_numpy(x[i : i + batch]), torch.from_numpy(y[i : i + batch])
        if full < len(y):
            carry_x, carry_y, held = [x[full:]], [y[full:]], len(y) - full
    if held:
        yield torch.from_numpy(np.concatenate(carry_x)), torch.from_numpy(np.concatenate(carry_y))
