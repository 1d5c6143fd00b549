"""Resume at block level: which blocks of a staged output are finished, kept beside it.

A class map is computed block by block (one Dask block of output cells at a time).
Two files beside the staged output, named with its resume key
(:func:`georaster_cnn.io.staging.resume_key`, a digest of the inputs, the model and
every option the output depends on), let a rerun of the same write continue:

* ``.NAME.gcnn-resume-<key>.manifest.json``: the key's fields in plain JSON (the
  identity of every input read, :mod:`georaster_cnn.io._identity`; model digest;
  stride, ``min_valid``, format, probabilities, ...; the block grid), for people
  and as a check;
* ``.NAME.gcnn-resume-<key>.blocks``: an append-only journal, one record per
  finished block: its index, shape, data type and (for outputs the client writes)
  its bytes, zlib-compressed, with a CRC of the whole record. A block is recorded
  only once it is safely written
  (GeoTIFF: its bytes are in this record; Zarr: the worker's region write returned),
  so a record is the completion record that a Zarr chunk cannot give: a chunk a
  killed worker never finished reads back as the fill value, silently.

A killed process leaves at most one torn record at the end; reading stops there
and the next append overwrites it. A manifest whose fields differ from the run's
(which the key makes unlikely) discards the journal: old blocks are only ever
reused for the very same output.

A record whose CRC matches is still checked against the output's plan
(:class:`JournalPlan`) before anything of it is used or allocated: its block index
lies in the block grid, its shape is that block's, its data type ``uint8``, its
length fits that shape, and its values are class ids below the class count or 255
(probability percent bands: 0..100 or 255). One bad record discards the whole
journal and the write starts afresh: a damaged or edited journal costs time, never a
wrong map, a crash or a huge allocation.

Both files are opened without following links (:mod:`georaster_cnn.io._fs`): a link
or other non-file planted at their names is removed, never written through.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from georaster_cnn.io._fs import NOFOLLOW, create_file, is_entry, open_reusable, remove_entry
from georaster_cnn.io.classmap import CLASS_NODATA

__all__ = ["BlockJournal", "JournalPlan"]

log = logging.getLogger(__name__)

#: Journal format version (part of the manifest). 2: a data type and a CRC of the
#: whole record (version 1's CRC covered only the payload).
JOURNAL_VERSION = 2
_MAGIC = b"GCNB"
_DTYPE = b"u1"
# magic, data type, block row, block column, bands, rows, columns, payload bytes
_HEAD = struct.Struct("<4s2sIIIIIQ")
# the CRC-32 of the head and the payload, after the head
_CRC = struct.Struct("<I")
#: The largest manifest read (a planted huge file is not a manifest of ours).
_MAX_MANIFEST_BYTES = 64 * 2**20

BlockIndex = tuple[int, int]
Shape = tuple[int, int, int]


def _deflate_bound(n: int) -> int:
    """The most bytes zlib can make of ``n`` bytes (zlib's ``compressBound``)."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


class _BadRecord(Exception):
    """A journal record that does not fit the plan (the journal is discarded)."""


@dataclass(frozen=True)
class JournalPlan:
    """What every record of a journal must match: the output's block grid and values.

    Parameters
    ----------
    rows, columns
        Heights and widths of the blocks (the output's chunks along y and x).
    bands
        Bands of a block: the class, then one percent band per class with probabilities.
    classes
        The number of classes (class ids are below it, or 255: no prediction).
    """

    rows: tuple[int, ...]
    columns: tuple[int, ...]
    bands: int
    classes: int

    def shape(self, index: BlockIndex) -> Shape:
        """The shape of block ``index``; :class:`_BadRecord` outside the grid."""
        i, j = index
        if not (i < len(self.rows) and j < len(self.columns)):
            raise _BadRecord(
                f"block {index} lies outside the {len(self.rows)} x {len(self.columns)} grid"
            )
        return (self.bands, self.rows[i], self.columns[j])

    def check_values(self, index: BlockIndex, block: np.ndarray) -> None:
        """:class:`_BadRecord` if ``block`` holds a value no class map can hold."""
        cls = block[0]
        if np.any((cls >= self.classes) & (cls != CLASS_NODATA)):
            raise _BadRecord(
                f"block {index} holds class id {int(cls[cls != CLASS_NODATA].max())}; "
                f"the output has {self.classes} class(es)"
            )
        percent = block[1:]
        if np.any((percent > 100) & (percent != CLASS_NODATA)):
            raise _BadRecord(f"block {index} holds a probability above 100 percent")


def _pack(index: BlockIndex, shape: Shape, payload: bytes, dtype: bytes = _DTYPE) -> bytes:
    """One journal record: head, CRC of head and payload, payload."""
    head = _HEAD.pack(_MAGIC, dtype, index[0], index[1], *shape, len(payload))
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def _decode(payload: bytes, shape: Shape) -> np.ndarray:
    """A record's block, inflated to at most the bytes of ``shape`` (never more)."""
    expected = shape[0] * shape[1] * shape[2]
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(payload, expected)
    except zlib.error as exc:
        raise _BadRecord(f"undecodable payload ({exc})") from exc
    if len(raw) != expected or inflate.unconsumed_tail or not inflate.eof:
        raise _BadRecord(f"payload is not {expected} bytes of uint8 data of shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


class BlockJournal:
    """The finished blocks of one resumable output (see the module docstring).

    Parameters
    ----------
    path
        The journal file.
    manifest
        The manifest file (JSON).
    fields
        The resume key's fields, written to the manifest.
    keep_data
        Store each block's bytes (outputs written by this process) or only that it
        is finished (outputs written by the workers, Zarr).
    on_record
        Called after each record is written.
    plan
        What each record must match; without it, only what needs no plan is
        checked (data type, length, a payload within the file).

    Attributes
    ----------
    done
        Indices ``(block row, block column)`` of the finished blocks.
    """

    def __init__(
        self,
        path: Path,
        manifest: Path,
        fields: dict[str, Any],
        *,
        keep_data: bool,
        on_record: Callable[[], None] | None = None,
        plan: JournalPlan | None = None,
    ) -> None:
        self.path = path
        self._on_record = on_record
        self.manifest = manifest
        self.keep_data = keep_data
        self.plan = plan
        self.done: set[BlockIndex] = set()
        self._records: dict[BlockIndex, tuple[int, Shape, int]] = {}
        self._lock = threading.Lock()
        wanted = {"journal_version": JOURNAL_VERSION, "keep_data": keep_data, **fields}
        wanted = json.loads(json.dumps(wanted, default=str))  # as it reads back
        fd = None
        if is_entry(path) and self._manifest_matches(wanted):
            fd = open_reusable(path)  # never through a link; a regular file of ours
        end = 0
        if fd is None:
            remove_entry(path)
            self._write_manifest(wanted)
            fd = create_file(path)
        else:
            try:
                end = self._scan(fd)
            except _BadRecord as exc:
                log.warning("%s: %s; discarding the journal, starting afresh", path.name, exc)
                self._records.clear()
                self.done.clear()
        self._fd = fd
        os.ftruncate(self._fd, end)  # drop a torn last record (or a discarded journal)
        os.lseek(self._fd, end, os.SEEK_SET)
        if self.done:
            log.info("%s: resuming, %d block(s) already finished", path.name, len(self.done))

    def _manifest_matches(self, wanted: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.manifest, os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return False
        try:
            with os.fdopen(fd, "rb") as f:
                found = json.loads(f.read(_MAX_MANIFEST_BYTES + 1)[:_MAX_MANIFEST_BYTES])
        except (OSError, ValueError):
            return False
        if found != wanted:
            log.warning("%s: manifest differs from this run's; starting afresh", self.manifest.name)
            return False
        return True

    def _write_manifest(self, wanted: dict[str, Any]) -> None:
        tmp = self.manifest.with_name(self.manifest.name + ".tmp")
        remove_entry(tmp)
        with os.fdopen(create_file(tmp), "w", encoding="utf-8") as f:
            f.write(json.dumps(wanted, indent=1, sort_keys=True))
        os.replace(tmp, self.manifest)  # replaces a link there, never its target

    def _check_head(self, index: BlockIndex, dtype: bytes, shape: Shape, size: int) -> None:
        """:class:`_BadRecord` unless the head fits the plan (before any payload is read)."""
        if dtype != _DTYPE:
            raise _BadRecord(f"block {index} has data type {dtype!r}, not uint8")
        if not self.keep_data:
            if shape != (0, 0, 0) or size:
                raise _BadRecord(f"block {index} carries data in a journal of completions")
            if self.plan is not None:
                self.plan.shape(index)
            return
        if self.plan is not None and shape != self.plan.shape(index):
            raise _BadRecord(f"block {index} has shape {shape}, expected {self.plan.shape(index)}")
        if size > _deflate_bound(shape[0] * shape[1] * shape[2]):
            raise _BadRecord(f"block {index} claims {size:,} bytes for shape {shape}")

    def _scan(self, fd: int) -> int:
        """Index the journal's records; the offset after the last whole one.

        Raises
        ------
        _BadRecord
            A whole record (its CRC matches) does not fit the plan.
        """
        file_size = os.fstat(fd).st_size
        start = end = 0
        while start + _HEAD.size + _CRC.size <= file_size:
            head = os.pread(fd, _HEAD.size + _CRC.size, start)
            magic, dtype, i, j, bands, ny, nx, size = _HEAD.unpack_from(head)
            if magic != _MAGIC:
                break  # a torn or zero-filled tail
            index, shape = (i, j), (bands, ny, nx)
            self._check_head(index, dtype, shape, size)
            offset = start + len(head)
            if offset + size > file_size:
                break  # torn: the payload was cut short
            payload = os.pread(fd, size, offset)
            (crc,) = _CRC.unpack_from(head, _HEAD.size)
            if zlib.crc32(payload, zlib.crc32(head[: _HEAD.size])) != crc:
                break  # torn
            if self.keep_data:
                block = _decode(payload, shape)
                if self.plan is not None:
                    self.plan.check_values(index, block)
            self._records[index] = (offset, shape, size)
            self.done.add(index)
            start = end = offset + size
        return end

    def record(self, index: BlockIndex, block: np.ndarray | None = None) -> None:
        """Append a finished block (its bytes, when the journal keeps data); thread-safe.

        One ``write`` per record on an ``O_APPEND``-like descriptor: a process
        killed here leaves at most this record torn, which the next run drops.
        """
        if self.keep_data:
            if block is None:
                raise ValueError("this journal keeps each block's bytes")
            arr = np.ascontiguousarray(block, dtype=np.uint8)
            if arr.ndim == 2:
                arr = arr[None]
            payload = zlib.compress(arr.tobytes(), 1)
            shape: Shape = (arr.shape[0], arr.shape[1], arr.shape[2])
        else:
            payload, shape = b"", (0, 0, 0)
        data = memoryview(_pack(index, shape, payload))
        with self._lock:
            offset = os.lseek(self._fd, 0, os.SEEK_END)
            while data:
                data = data[os.write(self._fd, data) :]
            self._records[index] = (offset + _HEAD.size + _CRC.size, shape, len(payload))
            self.done.add(index)
        if self._on_record is not None:
            self._on_record()

    def read(self, index: BlockIndex) -> np.ndarray:
        """A finished block's ``uint8`` array ``(bands, rows, columns)``."""
        offset, shape, size = self._records[index]
        return _decode(os.pread(self._fd, size, offset), shape)

    def blocks(self) -> Iterator[tuple[BlockIndex, np.ndarray]]:
        """``(index, array)`` of every finished block, in row-major order, one at a time."""
        for index in sorted(self._records):
            yield index, self.read(index)

    def close(self) -> None:
        """Close the journal file (it stays on disk; the staged output decides its fate)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> BlockJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
