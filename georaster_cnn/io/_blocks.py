"""Computing a prediction's output bands block by block, on any scheduler, for resume.

:class:`_BlockJob` holds the bands a class map is made of (the class, then percent
probabilities) as one ``uint8`` Dask array and computes its blocks wherever the
session says (threads, or a cluster with finished blocks streamed back), skipping the
blocks a resume journal already holds. The writers of each format
(:mod:`georaster_cnn.io.writer`, :mod:`georaster_cnn.io._cf_writer`) consume its blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from rasterio.errors import RasterioError

from georaster_cnn.errors import ReadError
from georaster_cnn.io._identity import input_identity, stac_identity
from georaster_cnn.io._resume import BlockIndex, BlockJournal, JournalPlan
from georaster_cnn.io.classmap import CLASS_NODATA, prediction_classes
from georaster_cnn.io.staging import Staged, resume_key

if TYPE_CHECKING:
    from georaster_cnn.cluster.scheduler import ClusterSession


__all__ = ["_BlockJob", "_journal_block", "_probability_percent", "_reading", "_uniform_chunks"]


def _probability_percent(p: np.ndarray) -> np.ndarray:
    out = np.where(np.isnan(p), CLASS_NODATA, np.rint(np.nan_to_num(p) * 100))
    return out.astype(np.uint8)


def _uniform_chunks(arr: da.Array) -> da.Array:
    """Rechunk to regular chunks (all equal but the last), which Zarr needs; a no-op if already."""
    return arr.rechunk(tuple(c[0] for c in arr.chunks))


@contextmanager
def _reading(pred: xr.Dataset) -> Iterator[None]:
    """A GDAL error while the graph computes is a failed read of the input."""
    try:
        yield
    except RasterioError as exc:
        raise ReadError(f"{pred.attrs.get('source', 'input')}: read failed ({exc})") from exc


class _BlockJob:
    """One prediction's output bands, computed block by block wherever ``session`` says.

    The bands are one ``uint8`` Dask array ``(1 + classes?, y, x)``: the class, then
    (with probabilities) one percent band per class, in chunks of whole prediction
    blocks (uniform, so Zarr chunks can match them one to one).
    """

    def __init__(
        self,
        pred: xr.Dataset,
        *,
        probabilities: bool,
        session: ClusterSession,
        resume: bool,
        progress: Callable[[int, int], None] | None,
        max_in_flight: int | None,
    ) -> None:
        self.pred = pred
        self.probabilities = probabilities
        self.session = session
        self.resume = resume
        self._progress = progress
        self._max_in_flight = max_in_flight
        cls = _uniform_chunks(da.asarray(pred["class"].data))
        parts = [cls[None]]
        if probabilities:
            probs = da.asarray(pred["probability"].data)
            parts.append(probs.map_blocks(_probability_percent, dtype=np.uint8))
        bands = da.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        self.bands = bands.rechunk({0: -1, 1: cls.chunks[0], 2: cls.chunks[1]})
        self.y0 = np.cumsum((0, *self.bands.chunks[1]))
        self.x0 = np.cumsum((0, *self.bands.chunks[2]))
        self.grid = (len(self.bands.chunks[1]), len(self.bands.chunks[2]))
        self._lock = threading.Lock()
        self._finished = 0

    def region(self, index: BlockIndex) -> tuple[slice, slice]:
        """Rows and columns of block ``index`` in the output."""
        i, j = index
        return (
            slice(int(self.y0[i]), int(self.y0[i + 1])),
            slice(int(self.x0[j]), int(self.x0[j + 1])),
        )

    def fields(self, fmt: str, **options: Any) -> dict[str, Any]:
        """Everything the output depends on: the resume key's fields."""
        attrs = self.pred.attrs
        transform = self.pred.rio.transform()
        crs = self.pred.rio.crs
        return {
            "inputs": input_identity(str(attrs.get("source", "")))
            + stac_identity(attrs.get("stac_items")),
            "model": str(attrs.get("model_checksum", "")),
            "stride": attrs.get("stride"),
            "patch_size": attrs.get("patch_size"),
            "classes": attrs.get("class_names"),
            "colors": attrs.get("class_colors"),
            # The Dask name digests the whole graph: the input's own token (path and
            # modification time), normalisation, device, min_valid, blocks, dense or not.
            "graph": self.bands.name,
            "format": fmt,
            "probabilities": self.probabilities,
            "shape": list(self.bands.shape),
            "chunks": [list(c) for c in self.bands.chunks[1:]],
            "transform": [
                transform.a,
                transform.b,
                transform.c,
                transform.d,
                transform.e,
                transform.f,
            ],
            "crs": crs.to_wkt() if crs is not None else None,
            **options,
        }

    @contextmanager
    def journal(
        self, st: Staged, fields: dict[str, Any], *, keep_data: bool
    ) -> Iterator[BlockJournal | None]:
        """The staged output's block journal (``None`` without resume)."""
        if st.key is None:
            yield None
            return
        with self.scratch_journal(st, fields, keep_data=keep_data) as journal:
            yield journal

    @contextmanager
    def scratch_journal(
        self, st: Staged, fields: dict[str, Any], *, keep_data: bool
    ) -> Iterator[BlockJournal]:
        """A block journal: resumable with a resume key, a scratch file without."""
        name = st.resumable if st.key is not None else st.scratch
        if st.key is not None:
            name(".manifest.json.tmp")  # the manifest's own temporary: removed with the rest
        journal = BlockJournal(
            name(".blocks"),
            name(".manifest.json"),
            fields,
            keep_data=keep_data,
            on_record=lambda: setattr(st, "worth_resuming", True),
            plan=self.plan(),
        )
        st.worth_resuming = bool(journal.done)
        try:
            yield journal
        finally:
            journal.close()

    def plan(self) -> JournalPlan:
        """What every journal record of this output must match (its blocks and values)."""
        return JournalPlan(
            rows=tuple(int(n) for n in self.bands.chunks[1]),
            columns=tuple(int(n) for n in self.bands.chunks[2]),
            bands=int(self.bands.shape[0]),
            classes=len(prediction_classes(self.pred.attrs)[0]),
        )

    def key(self, fields: dict[str, Any]) -> str | None:
        return resume_key(fields) if self.resume else None

    def advance(self, n: int = 1) -> None:
        """Count finished blocks and report progress."""
        with self._lock:
            self._finished += n
            if self._progress is not None:
                self._progress(self._finished, self.grid[0] * self.grid[1])

    def run(
        self,
        piece: Callable[[BlockIndex, Any], Any],
        on_done: Callable[[BlockIndex, Any], None],
        *,
        done: set[BlockIndex] | frozenset[BlockIndex] = frozenset(),
    ) -> None:
        """Compute every block not in ``done``: ``on_done(index, result of piece(index, block))``.

        ``piece`` turns a block's delayed value into the task to compute (the block
        itself, or a task that writes it where it is computed). ``on_done`` runs in
        a Dask thread (threaded scheduler) or in this thread (cluster).
        """
        ny, nx = self.grid
        todo = [(i, j) for i in range(ny) for j in range(nx) if (i, j) not in done]
        self.advance(len(done) if done else 0)
        if not todo:
            return
        # Unoptimised: graph optimisation would drop layer annotations such as
        # dask.annotate(resources={"GPU": 1}) (measured: no slower on threads).
        blocks = self.bands.to_delayed(optimize_graph=False)
        pieces = ((ij, piece(ij, blocks[0, ij[0], ij[1]])) for ij in todo)
        client = self.session.client
        if client is None:
            name = f"write-{self.bands.name}"
            tasks = [
                dask.delayed(_deliver, pure=True)(p, ij, on_done, dask_key_name=(name, *ij))
                for ij, p in pieces
            ]
            local = "sync" if self.session.scheduler == "sync" else "threads"
            with _reading(self.pred):
                dask.compute(*tasks, scheduler=local)
            return
        from georaster_cnn.cluster.scheduler import stream_blocks

        limit = self._max_in_flight or max(8, 4 * self.session.worker_threads())
        with _reading(self.pred):
            stream_blocks(client, pieces, on_done, max_in_flight=limit)


def _deliver(result: Any, index: BlockIndex, on_done: Callable[[BlockIndex, Any], None]) -> None:
    on_done(index, result)


def _journal_block(journal: BlockJournal, block_id: tuple[int, int, int]) -> np.ndarray:
    return journal.read((block_id[1], block_id[2]))
