"""Resume at block level: which blocks of a staged output are finished, kept beside it.

A class map is computed block by block (one Dask block of output cells at a time).
Two files beside the staged output, named with its resume key
(:func:`georaster_cnn.io.staging.resume_key`, a digest of the inputs, the model and
every option the output depends on), let a rerun of the same write continue:

* ``.NAME.gcnn-resume-<key>.manifest.json``: the key's fields in plain JSON (input
  path, size and modification time; model digest; stride, ``min_valid``, format,
  probabilities, ...; the block grid), for people and as a check;
* ``.NAME.gcnn-resume-<key>.blocks``: an append-only journal, one record per
  finished block: its index, shape and (for outputs the client writes) its bytes,
  zlib-compressed, with a CRC. A block is recorded only once it is safely written
  (GeoTIFF: its bytes are in this record; Zarr: the worker's region write returned),
  so a record is the completion record that a Zarr chunk cannot give: a chunk a
  killed worker never finished reads back as the fill value, silently.

A killed process leaves at most one torn record at the end; reading stops there
and the next append overwrites it. A manifest whose fields differ from the run's
(which the key makes unlikely) discards the journal: old blocks are only ever
reused for the very same output.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BlockJournal", "input_identity"]

log = logging.getLogger(__name__)

#: Journal format version (part of the manifest).
JOURNAL_VERSION = 1
_MAGIC = b"GCNB"
# magic, block row, block column, bands, rows, columns, payload bytes, CRC-32 of the payload
_HEADER = struct.Struct("<4sIIIIIQI")

BlockIndex = tuple[int, int]


def input_identity(source: str) -> list[dict[str, Any]]:
    """``[{path, size, mtime_ns}]`` of the input files a prediction names, for a resume key.

    ``source`` is a prediction's ``source`` attribute (one path, or several joined
    by ``;`` or ``,`` for multi-file inputs). Names that are not existing paths
    are kept as given.
    """
    out: list[dict[str, Any]] = []
    parts = [source]
    if not Path(source).exists():
        parts = [p.strip() for p in source.replace(";", ",").split(",") if p.strip()] or [source]
    for part in parts:
        p = Path(part)
        try:
            st = p.stat()
        except OSError:
            out.append({"path": part})
            continue
        out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


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
    ) -> None:
        self.path = path
        self._on_record = on_record
        self.manifest = manifest
        self.keep_data = keep_data
        self.done: set[BlockIndex] = set()
        self._records: dict[BlockIndex, tuple[int, tuple[int, int, int], int]] = {}
        self._lock = threading.Lock()
        wanted = {"journal_version": JOURNAL_VERSION, "keep_data": keep_data, **fields}
        wanted = json.loads(json.dumps(wanted, default=str))  # as it reads back
        end = 0
        if path.exists() and self._manifest_matches(wanted):
            end = self._scan()
        else:
            path.unlink(missing_ok=True)
            tmp = self.manifest.with_name(self.manifest.name + ".tmp")
            tmp.write_text(json.dumps(wanted, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.manifest)
        self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.ftruncate(self._fd, end)  # drop a torn last record
        os.lseek(self._fd, end, os.SEEK_SET)
        if self.done:
            log.info("%s: resuming, %d block(s) already finished", path.name, len(self.done))

    def _manifest_matches(self, wanted: dict[str, Any]) -> bool:
        try:
            found = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if found != wanted:
            log.warning("%s: manifest differs from this run's; starting afresh", self.manifest.name)
            return False
        return True

    def _scan(self) -> int:
        """Index the journal's records; the offset after the last whole one."""
        end = 0
        with open(self.path, "rb") as f:
            while True:
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    break
                magic, i, j, bands, ny, nx, size, crc = _HEADER.unpack(head)
                if magic != _MAGIC:
                    break
                payload = f.read(size)
                if len(payload) < size or zlib.crc32(payload) != crc:
                    break
                self._records[(i, j)] = (end + _HEADER.size, (bands, ny, nx), size)
                self.done.add((i, j))
                end = f.tell()
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
            shape = (arr.shape[0], arr.shape[1], arr.shape[2])
        else:
            payload, shape = b"", (0, 0, 0)
        head = _HEADER.pack(_MAGIC, index[0], index[1], *shape, len(payload), zlib.crc32(payload))
        with self._lock:
            offset = os.lseek(self._fd, 0, os.SEEK_END)
            data = memoryview(head + payload)
            while data:
                data = data[os.write(self._fd, data) :]
            self._records[index] = (offset + _HEADER.size, shape, len(payload))
            self.done.add(index)
        if self._on_record is not None:
            self._on_record()

    def read(self, index: BlockIndex) -> np.ndarray:
        """A finished block's ``uint8`` array ``(bands, rows, columns)``."""
        offset, shape, size = self._records[index]
        payload = os.pread(self._fd, size, offset)
        return np.frombuffer(zlib.decompress(payload), dtype=np.uint8).reshape(shape)

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
