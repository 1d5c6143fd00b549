"""The window store: every labelled training window on disk or object storage, in Zarr v3 shards.

A store (a folder ``windows.zarr`` or a URL) holds, in order, the normalised windows of
all rasters and, per window, its raw label, centre pixel, raster of origin and split::

    windows  (n, band, p, p) float32   normalised, NaN -> 0; sharded (a shard: a few
                                       thousand windows at most, ~64 MiB), chunks inside
    labels   (n,) float64              class id as the labels hold it
    centres  (n, 2) int64              centre pixel (row, col) in its raster
    raster   (n,) int32                index into the recorded rasters
    val      (n,) bool                 validation window
    dropped  (m,) float64              labels of training windows dropped in the buffer

Its attributes record the per-channel statistics, the split's provenance, the
options and inputs it was built from (:func:`recorded_options`), and last, a
completion record: a store without it (a build that died) is never read. A local
store is built under a temporary name and renamed into place
(:func:`~georaster_cnn.io.staging.staged`), so it appears whole or not at all.

Built by :func:`build_window_store` (or ``train(..., store=...)``, which builds it
when it does not exist and checks it when it does: a store of other rasters, labels
or window options is refused, naming what differs). How it is built:
:mod:`georaster_cnn.training._store_build`; how it is streamed:
:mod:`georaster_cnn.training.streaming`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from georaster_cnn.errors import InputError, OutputExistsError
from georaster_cnn.io.formats import is_network_location
from georaster_cnn.io.staging import output_exists, staged
from georaster_cnn.options import (
    DEFAULT_MIN_COVER,
    DEFAULT_MIN_VALID,
    DEFAULT_PATCH,
    DEFAULT_VAL_BLOCK,
    DEFAULT_VAL_FRACTION,
    check_fraction,
    check_min_valid,
)
from georaster_cnn.stats import ChannelStats
from georaster_cnn.training._store_record import recorded_options, store_differences
from georaster_cnn.training.vector_labels import VectorLabels
from georaster_cnn.training.windows import TrainingWindows, WindowSpec

__all__ = [
    "STORE_FORMAT",
    "FoundWindows",
    "build_window_store",
    "StoreSamples",
    "WindowStore",
    "build_store",
    "check_store_location",
    "open_window_store",
    "recorded_options",
    "store_differences",
]

log = logging.getLogger(__name__)

#: Version of the store's layout, recorded in it.
STORE_FORMAT = 1
#: Bytes of windows per shard (at most :data:`_MAX_SHARD` windows).
SHARD_BYTES = 64 * 1024**2
_MAX_SHARD = 8192
#: Bytes of windows per chunk inside a shard: the smallest read.
CHUNK_BYTES = 1024**2


def shard_layout(
    window_bytes: int, shard: int | None = None, memory_bytes: int | None = None
) -> tuple[int, int]:
    """Windows per shard and per chunk for windows of ``window_bytes``.

    A shard is written whole by one task: with a memory budget, at most a sixteenth of it.
    """
    chunk = int(np.clip(CHUNK_BYTES // window_bytes, 1, 256))
    if shard is None:
        cap = SHARD_BYTES if memory_bytes is None else min(SHARD_BYTES, memory_bytes // 16)
        shard = int(np.clip(cap // window_bytes, chunk, _MAX_SHARD))
    chunk = min(chunk, shard)
    return max(chunk, shard // chunk * chunk), chunk


def check_store_location(location: str | os.PathLike[str], allow_remote: bool) -> None:
    """Refuse a window store on the network unless ``allow_remote`` (as every network input).

    Raises
    ------
    InputError
        ``location`` is a URL (``http(s)://``, ``s3://``, ``/vsicurl/`` ...) and
        ``allow_remote`` is false.
    """
    name = str(location)
    if (is_network_location(name) or "://" in name) and not allow_remote:
        raise InputError(
            f"window store {name} is on the network; reading or writing it needs "
            "allow_remote=True (--allow-remote), as every network input does"
        )


def _open_group(location: str | os.PathLike[str], mode: str) -> Any:
    import zarr

    name = str(location)
    if is_network_location(name) or "://" in name:
        from zarr.storage import FsspecStore

        url = name[len("/vsicurl/") :] if name.startswith("/vsicurl/") else name
        store = FsspecStore.from_url(url, read_only=mode == "r")
        return zarr.open_group(store, mode=mode, zarr_format=3)  # type: ignore[arg-type]
    return zarr.open_group(name, mode=mode, zarr_format=3)  # type: ignore[arg-type]


@dataclass
class WindowStore:
    """An opened, complete window store (:func:`open_window_store`).

    The per-window arrays (``labels``, ``centres``, ``raster``, ``val``) are read
    into memory (a few bytes a window); the windows are read on demand (:meth:`read`).
    """

    location: str
    group: Any
    labels: np.ndarray
    centres: np.ndarray
    raster: np.ndarray
    val: np.ndarray
    dropped: np.ndarray
    stats: ChannelStats
    split: dict[str, Any]
    recorded: dict[str, Any]
    shard: int
    chunk: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def window_shape(self) -> tuple[int, int, int]:
        shape = self.group["windows"].shape
        return int(shape[1]), int(shape[2]), int(shape[3])

    @property
    def window_bytes(self) -> int:
        return 4 * int(np.prod(self.window_shape))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Windows ``start:stop`` as float32 ``(n, band, p, p)``."""
        return np.asarray(self.group["windows"][start:stop], dtype=np.float32)


def open_window_store(
    location: str | os.PathLike[str], *, allow_remote: bool = False
) -> WindowStore:
    """Open a complete window store (a folder, or a URL with ``allow_remote``) for reading.

    Raises
    ------
    InputError
        Not a window store, of another format version, or incomplete (its build died);
        a URL without ``allow_remote``.
    """
    check_store_location(location, allow_remote)
    try:
        group = _open_group(location, "r")
        attrs = dict(group.attrs)
    except (OSError, ValueError, KeyError, FileNotFoundError) as exc:
        raise InputError(
            f"{location} is not a window store this toolkit can read ({exc}); build one with "
            "`georaster-cnn windows build` or train(..., store=...)"
        ) from exc
    meta = attrs.get("georaster_cnn_window_store")
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise InputError(
            f"{location} is not a window store of format {STORE_FORMAT} (found "
            f"{meta!r}); rebuild it (overwrite)"
        )
    if not meta.get("complete"):
        raise InputError(
            f"{location} is an incomplete window store (its build stopped); rebuild it"
        )
    return WindowStore(
        location=str(location),
        group=group,
        labels=np.asarray(group["labels"][:]),
        centres=np.asarray(group["centres"][:]),
        raster=np.asarray(group["raster"][:]),
        val=np.asarray(group["val"][:]).astype(bool),
        dropped=np.asarray(group["dropped"][:]),
        stats=ChannelStats.from_dict(meta["stats"]),
        split=dict(meta["split"]),
        recorded=dict(meta["recorded"]),
        shard=int(meta["shard_windows"]),
        chunk=int(meta["chunk_windows"]),
    )


def _create(
    group: Any, n: int, n_dropped: int, shape: tuple[int, ...], shard: int, chunk: int
) -> Any:
    """The store's arrays, empty; the windows array returned."""
    from zarr.codecs import BloscCodec

    windows = group.create_array(
        "windows", shape=(n, *shape), dtype="float32", chunks=(chunk, *shape),
        shards=(shard, *shape), fill_value=0.0,
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    )  # fmt: skip
    one = max(1, min(n, 1 << 20))
    group.create_array("labels", shape=(n,), dtype="float64", chunks=(one,))
    group.create_array("centres", shape=(n, 2), dtype="int64", chunks=(one, 2))
    group.create_array("raster", shape=(n,), dtype="int32", chunks=(one,))
    group.create_array("val", shape=(n,), dtype="bool", chunks=(one,))
    group.create_array("dropped", shape=(n_dropped,), dtype="float64", chunks=(max(1, n_dropped),))
    return windows


def _write(location: str, datas: Sequence[xr.DataArray], items: Sequence[Any], spec: WindowSpec,
           recorded: dict[str, Any], shard: int | None, memory: int | None,
           **split: Any) -> None:  # fmt: skip
    """Index, split and cut the windows into a new store at ``location`` (a folder or URL)."""
    from georaster_cnn.training import _store_build

    bands = int(datas[0].sizes.get("band", 1))
    shard, chunk = shard_layout(4 * bands * spec.patch**2, shard, memory)
    index = _store_build.index_windows(datas, items, spec, chunk=shard, **split)
    group = _open_group(location, "w")
    windows = _create(
        group, len(index), len(index.dropped), (bands, spec.patch, spec.patch), shard, chunk
    )
    group["labels"][:] = index.labels
    group["centres"][:] = index.centres
    group["raster"][:] = index.raster
    group["val"][:] = index.val
    group["dropped"][:] = index.dropped
    _store_build.cut_into(windows, index, spec, shard)
    meta = {
        "format": STORE_FORMAT, "stats": index.stats.to_dict(), "split": index.split,
        "recorded": recorded, "shard_windows": shard, "chunk_windows": chunk,
        "n_windows": len(index), "complete": True,
    }  # fmt: skip
    group.attrs["georaster_cnn_window_store"] = json.loads(json.dumps(meta, default=float))


def build_store(
    location: str | os.PathLike[str],
    datas: Sequence[xr.DataArray],
    items: Sequence[xr.DataArray | VectorLabels],
    spec: WindowSpec,
    *,
    recorded: dict[str, Any],
    val_block: int,
    val_fraction: float,
    overwrite: bool = False,
    reuse: bool = True,
    shard_windows: int | None = None,
    memory_bytes: int | None = None,
    allow_remote: bool = False,
) -> tuple[WindowStore, float]:
    """The store at ``location`` for these windows: reused if it exists and matches, else built.

    Returns the opened store and the seconds spent building it (0 when reused). The
    Dask work runs on the active scheduler. A new store's shards hold ``shard_windows``
    windows, or at most a sixteenth of ``memory_bytes`` (at most ~64 MiB).

    Raises
    ------
    InputError
        The store exists but records other rasters, labels or options (named), or is
        not a readable store; pass ``overwrite`` to rebuild it. A URL without
        ``allow_remote``.
    """
    check_store_location(location, allow_remote)
    name = str(location)
    remote = is_network_location(name) or "://" in name
    exists = _exists(name, remote)
    if exists and not overwrite and reuse:
        store = open_window_store(name, allow_remote=True)  # checked above
        diff = store_differences(store.recorded, recorded)
        if diff:
            raise InputError(
                f"window store {name} was built from other inputs or options: "
                + "; ".join(diff)
                + ". Use the options it records, another store, or rebuild it "
                "(`georaster-cnn windows build ... --overwrite`)"
            )
        log.info("reusing window store %s (%d windows)", name, len(store))
        return store, 0.0
    if exists and not overwrite:
        raise OutputExistsError(f"window store {name} exists; pass --overwrite to rebuild it")
    started = time.perf_counter()
    split = {"val_block": val_block, "val_fraction": val_fraction}
    if remote:
        _write(name, datas, items, spec, recorded, shard_windows, memory_bytes, **split)
    else:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        with staged(name, folder=True, overwrite=overwrite) as st:
            # absolute: a cluster's workers write the shards from their own folders
            _write(
                os.path.abspath(st.path), datas, items, spec, recorded, shard_windows,
                memory_bytes, **split,
            )  # fmt: skip
    took = time.perf_counter() - started
    store = open_window_store(name, allow_remote=True)  # checked above
    log.info("built window store %s: %d windows in %.1f s", name, len(store), took)
    return store, took


def _exists(name: str, remote: bool) -> bool:
    if not remote:
        return output_exists(name)
    try:
        _open_group(name, "r")
    except (OSError, ValueError, KeyError, FileNotFoundError):
        return False
    return True


@dataclass(frozen=True)
class StoreSamples:
    """The training loop's samples as a window store streamed within ``memory_bytes``."""

    store: WindowStore
    memory_bytes: int


@dataclass(frozen=True)
class FoundWindows:
    """A run's labelled windows and split, in memory or in a store (what training needs).

    ``labels`` (raw), ``val`` and ``dropped`` as in
    :class:`~georaster_cnn.training.windows.TrainingWindows`; ``store`` the store's
    location (``None``: in memory).
    """

    labels: np.ndarray
    val: np.ndarray
    dropped: np.ndarray
    stats: ChannelStats
    split: dict[str, Any]
    store: str | None
    _samples: Any

    @classmethod
    def of(cls, found: TrainingWindows) -> FoundWindows:
        """Windows cut into memory."""
        w = found.windows
        return cls(w.labels, found.val, found.dropped, found.stats, found.split, None, w.chips)

    @classmethod
    def of_store(cls, store: WindowStore, memory_bytes: int) -> FoundWindows:
        """Windows of a store: read into memory if they fit in ``memory_bytes``, else streamed."""
        fits = len(store) * store.window_bytes <= memory_bytes
        samples: Any = store if fits else StoreSamples(store, memory_bytes)
        log.info(
            "%d windows (%.0f MiB) %s (memory budget %.0f MiB)", len(store),
            len(store) * store.window_bytes / 2**20,
            "read into memory" if fits else "streamed from the store", memory_bytes / 2**20,
        )  # fmt: skip
        return cls(
            store.labels, store.val, store.dropped, store.stats, store.split,
            store.location, samples,
        )  # fmt: skip

    def samples(self) -> Any:
        """The training loop's samples: an array (read now, if from a store) or a stream."""
        if isinstance(self._samples, WindowStore):
            return self._samples.read(0, len(self._samples))
        return self._samples


def build_window_store(
    data: xr.DataArray | Sequence[xr.DataArray],
    labels: Any,
    store: str | os.PathLike[str],
    *,
    label_column: str | None = None,
    patch_size: int = DEFAULT_PATCH,
    stride: int | None = None,
    min_valid: float | None = None,
    min_cover: float = DEFAULT_MIN_COVER,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_block: int = DEFAULT_VAL_BLOCK,
    seed: int = 0,
    scheduler: Any = None,
    scheduler_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    shard_windows: int | None = None,
    allow_remote: bool = False,
) -> WindowStore:
    """Build the window store of rasters and labels once, to train on many times.

    ``train(data, labels, store=store, ...)`` with the same inputs and options then
    reads it instead of cutting windows. The options are those of
    :func:`~georaster_cnn.train` (``seed`` seeds the split); ``scheduler`` is where the
    windows are cut and written (a cluster's workers write the shards, so the store
    must be reachable from them: a shared folder or object storage; a URL needs
    ``allow_remote``). ``shard_windows``
    sets the windows per shard (default: ~64 MiB of them, at most 8192); a chunk, the
    smallest read, is ~1 MiB of windows (at most 256, at most a shard).

    Returns
    -------
    WindowStore
        The store, opened.

    Raises
    ------
    InputError
        Bad options or inputs (as :func:`~georaster_cnn.train`).
    OutputExistsError
        ``store`` exists and ``overwrite`` is false.
    """
    from georaster_cnn.cluster.scheduler import use_scheduler
    from georaster_cnn.io._user_arrays import as_canonical
    from georaster_cnn.training.labels import resolve_labels
    from georaster_cnn.training.windows import window_spec

    datas = [as_canonical(d) for d in ([data] if isinstance(data, xr.DataArray) else data)]
    fraction = check_fraction("val_fraction", val_fraction, high_open=True)
    valid = check_min_valid(DEFAULT_MIN_VALID if min_valid is None else min_valid)
    spec = window_spec(
        datas, patch_size=patch_size, stride=stride, min_valid=valid, min_cover=min_cover,
        val_block=val_block, max_chip_bytes=2**62, seed=seed,
    )  # fmt: skip
    with use_scheduler(scheduler, scheduler_file=scheduler_file):
        items, _ = resolve_labels(datas, labels, label_column=label_column, class_names=None)
        recorded = recorded_options(
            datas, items, spec, val_block=val_block, val_fraction=fraction,
            label_column=label_column,
        )  # fmt: skip
        built, _ = build_store(
            store, datas, items, spec, recorded=recorded, val_block=val_block,
            val_fraction=fraction, overwrite=overwrite, reuse=False, shard_windows=shard_windows,
            allow_remote=allow_remote,
        )  # fmt: skip
    return built
