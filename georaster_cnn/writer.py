"""write: georeferenced prediction rasters, atomically.

The default output is a Cloud Optimized GeoTIFF:

* band 1: class index, ``uint8``, nodata 255, with a colour table, description
  ``class`` and the class names in the metadata (``CLASS_NAMES`` JSON tag and one
  ``CLASS_<i>`` tag per class);
* with ``probabilities=True``, one more ``uint8`` band per class holding the
  probability in percent (0-100, nodata 255, GDAL scale 0.01 so tools that apply
  scales read 0-1).

Writing a COG straight from a Dask array is unreliable (rioxarray #410/#439), so
the Dask graph is streamed block by block into a tiled GeoTIFF, which GDAL's COG
driver then copies with nearest-neighbour overviews. Both files are temporary
names in the output folder; only the finished COG is renamed into place, so an
interrupted run never leaves a file that looks finished.

Other formats (``format=``, or the output's suffix):

* ``gtiff``: the same bands, tags and sidecar as the COG, as a plain tiled
  GeoTIFF (no COG layout, no overviews);
* ``zarr`` (a ``.zarr`` folder) and ``netcdf`` (a ``.nc`` file): CF-1.8 datasets
  (metadata and coordinates written with xarray, data block by block), with the variables ``class`` (``uint8``,
  ``_FillValue`` 255, CF ``flag_values``/``flag_meanings``) and, with
  ``probabilities=True``, ``probability`` ``(class_name, y, x)`` (``uint8``
  percent, ``_FillValue`` 255, ``scale_factor`` 0.01, so decoders read 0-1),
  the CRS as a CF grid-mapping variable ``spatial_ref`` (with a GDAL
  ``GeoTransform`` attribute, the only georeferencing of rotated grids) and
  ``x``/``y`` cell-centre coordinates on north-up grids. Both are written under a
  temporary name in the output folder and renamed into place when complete.

Where the blocks are computed (``scheduler=``, :mod:`georaster_cnn.cluster`): on the
threaded scheduler each finished block is written by the thread that computed it;
on a distributed cluster, GeoTIFF blocks stream back to this process (a bounded
number in flight), which writes them into the staged file, so workers need not
see the output folder, while Zarr blocks are written by the workers themselves,
each into its own chunks (the output folder must then be shared with them).
netCDF blocks come back to this process too, into the block journal, from which
the file is written here.

Resume (``resume=True``, the default, every format): every finished
block is recorded in a journal beside the staged output (:mod:`georaster_cnn._resume`),
under a key made of the inputs, the model and every option the output depends on.
A write that was killed (SIGKILL, a lost node) or interrupted (Ctrl-C) and is run
again with the same arguments continues from the recorded blocks; the result is
the same as an uninterrupted run's. A different key (another model, stride, format,
input file...) never reuses them, and the next write of the output removes them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.windows import Window

from georaster_cnn._resume import BlockIndex, BlockJournal, input_identity
from georaster_cnn._staging import Staged, resume_key, staged
from georaster_cnn.classmap import (
    CLASS_NODATA,
    PREDICTION_ATTRS,
    cf_class_attrs,
    pam_xml,
    tiff_tags,
)
from georaster_cnn.errors import ReadError
from georaster_cnn.formats import OUTPUT_FORMATS, OutputFormat, resolve_output_format
from georaster_cnn.options import check_output

if TYPE_CHECKING:
    from distributed import Client

    from georaster_cnn.cluster import ClusterSession

__all__ = ["OutputFormat", "write_prediction"]

log = logging.getLogger(__name__)

_BLOCK = 512


def _overview_levels(height: int, width: int, smallest: int = 64) -> int:
    """Halvings until the coarsest overview fits in ``smallest`` pixels.

    At least one level unless the map is a single pixel. GDAL's default stops at the
    512-pixel block size, so class maps smaller than a block (most maps at stride 64)
    would get no overview at all.
    """
    levels, side = 0, max(height, width)
    while side > smallest:
        side = (side + 1) // 2
        levels += 1
    return max(levels, 1 if max(height, width) >= 2 else 0)


def _overview_options(height: int, width: int) -> dict[str, str]:
    levels = _overview_levels(height, width)
    return {"OVERVIEW_COUNT": str(levels)} if levels else {"OVERVIEWS": "NONE"}


class _Sink:
    """An open dataset shared by the writer threads; closed to them before it is closed.

    When the computation stops early (an error, Ctrl-C, SIGTERM) Dask threads may
    still be finishing blocks: they must not write into a dataset being closed.
    """

    def __init__(self, dst: Any) -> None:
        self.dst = dst
        self.lock = threading.Lock()
        self.open = True

    def close(self) -> None:
        with self.lock:
            self.open = False


def _probability_percent(p: np.ndarray) -> np.ndarray:
    out = np.where(np.isnan(p), CLASS_NODATA, np.rint(np.nan_to_num(p) * 100))
    return out.astype(np.uint8)


def write_prediction(
    pred: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    format: OutputFormat | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    compress: str = "DEFLATE",
    scheduler: str | Client | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    max_in_flight: int | None = None,
) -> Path:
    """Compute a prediction and write it, atomically, as a COG, GeoTIFF, Zarr or netCDF.

    Parameters
    ----------
    pred
        Result of :func:`~georaster_cnn.predict`.
    path
        Output file (``.tif``, ``.nc``) or Zarr folder (``.zarr``). Its folder is
        created if needed.
    format
        ``cog`` (Cloud Optimized GeoTIFF), ``gtiff`` (plain tiled GeoTIFF), ``zarr``
        or ``netcdf``; default: from the suffix of ``path`` (``.tif``/``.tiff`` ->
        ``cog``, ``.zarr`` -> ``zarr``, ``.nc`` and the other netCDF suffixes -> ``netcdf``;
        :mod:`georaster_cnn.formats` has the table).
    probabilities
        Also write the per-class probabilities in percent (``uint8``, scale 0.01):
        one band per class in a GeoTIFF, a ``probability`` variable in Zarr/netCDF.
    overwrite
        Replace an existing output.
    compress
        GDAL compression for the GeoTIFF formats (Zarr uses zarr's default codec,
        netCDF zlib level 4).
    scheduler
        Where the blocks are computed: ``None`` (an active ``distributed.Client``,
        else threads), ``"threads"``, ``"local"``/``"local:N"`` (a local cluster of
        N worker processes, started and closed here), a scheduler address
        ``"tcp://HOST:PORT"`` or a client (:func:`georaster_cnn.cluster.use_scheduler`).
        On a cluster the inputs must be readable by the workers under the same
        paths; a Zarr output's folder too.
    scheduler_file
        A scheduler file (``dask scheduler --scheduler-file``) instead of ``scheduler``.
    resume
        Record finished blocks beside the staged output, and continue from those a
        killed or interrupted write with the same arguments recorded (every
        format). ``False``: start from scratch, remove everything on interruption.
    progress
        Called as ``progress(finished blocks, all blocks)`` when the work is known
        and after every block (from Dask threads on the threaded scheduler).
    max_in_flight
        On a cluster, most blocks submitted and not yet written; default four per
        worker thread (at least 8).

    Returns
    -------
    pathlib.Path
        The written file or folder.

    Raises
    ------
    InputError
        Unknown ``format``, a suffix that implies none, or one that contradicts
        ``format`` (e.g. ``format="zarr"`` for ``map.tif``); a malformed or
        unreachable ``scheduler``.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false; another run is writing it with
        the same arguments.
    ReadError
        An input block could not be read (corrupt or truncated file).

    Examples
    --------
    >>> write_prediction(pred, "maps/scene.tif")  # doctest: +SKIP
    >>> write_prediction(pred, "maps/scene.zarr", probabilities=True)  # doctest: +SKIP
    >>> write_prediction(pred, "maps/scene.tif", scheduler="tcp://10.0.0.5:8786")  # doctest: +SKIP
    """
    from georaster_cnn.cluster import ship_model, use_scheduler

    out = check_output(path, overwrite=overwrite)
    fmt = resolve_output_format(out, format)
    out.parent.mkdir(parents=True, exist_ok=True)
    with use_scheduler(scheduler, scheduler_file=scheduler_file) as session:
        checksum = str(pred.attrs.get("model_checksum", ""))
        if session.client is not None and checksum:
            ship_model(session.client, checksum)  # tasks then carry only the digest
        job = _BlockJob(
            pred,
            probabilities=probabilities,
            session=session,
            resume=resume,
            progress=progress,
            max_in_flight=max_in_flight,
        )
        if fmt == "netcdf":
            return _write_netcdf(pred, out, job)
        if fmt == "zarr":
            return _write_zarr(pred, out, job)
        return _write_tiff(pred, out, job, cog=fmt == "cog", compress=compress)


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
            "inputs": input_identity(str(attrs.get("source", ""))),
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
        journal = BlockJournal(
            name(".blocks"),
            name(".manifest.json"),
            fields,
            keep_data=keep_data,
            on_record=lambda: setattr(st, "progress", True),
        )
        st.progress = bool(journal.done)
        try:
            yield journal
        finally:
            journal.close()

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
        from georaster_cnn.cluster import stream_blocks

        limit = self._max_in_flight or max(8, 4 * self.session.worker_threads())
        with _reading(self.pred):
            stream_blocks(client, pieces, on_done, max_in_flight=limit)


def _deliver(result: Any, index: BlockIndex, on_done: Callable[[BlockIndex, Any], None]) -> None:
    on_done(index, result)


def _write_tiff(pred: xr.Dataset, out: Path, job: _BlockJob, *, cog: bool, compress: str) -> Path:
    """COG (tiled GeoTIFF streamed block by block, then GDAL's COG driver) or the tiled GeoTIFF alone."""
    names = json.loads(pred.attrs["class_names"])
    colors = json.loads(pred.attrs["class_colors"])
    count, height, width = job.bands.shape
    crs = pred.rio.crs
    transform = pred.rio.transform()
    fields = job.fields("cog" if cog else "gtiff", compress=compress)

    with (
        staged(out, suffix=".tif", resume_key=job.key(fields)) as st,
        job.journal(st, fields, keep_data=True) as journal,
    ):
        # The COG is a copy of a staging GeoTIFF; a plain GeoTIFF is the staging file itself.
        staging = st.scratch(".staging.tif") if cog else st.path
        profile: dict[str, Any] = {
            "driver": "GTiff", "height": height, "width": width, "count": count,
            "dtype": "uint8", "nodata": CLASS_NODATA, "transform": transform, "crs": crs,
            "tiled": True, "blockxsize": _BLOCK, "blockysize": _BLOCK,
            "compress": "DEFLATE" if cog else compress, "BIGTIFF": "IF_SAFER",
            # Not RGB(A): with 3-4 uint8 bands GTiff would call probability bands
            # green/blue/alpha, and GIS tools would use one as transparency.
            "photometric": "MINISBLACK", "alpha": "NO",
        }  # fmt: skip
        if crs is None:
            profile.pop("crs")
        with rasterio.open(staging, "w", **profile) as dst:
            sink = _Sink(dst)

            def write(index: BlockIndex, block: np.ndarray) -> None:
                ysl, xsl = job.region(index)
                with sink.lock:
                    if sink.open:
                        dst.write(block, window=Window.from_slices(ysl, xsl))
                if journal is not None:  # the record, not the GeoTIFF, is what a rerun trusts
                    journal.record(index, block)
                job.advance()

            try:
                if journal is not None:
                    for index, block in journal.blocks():  # finished by an earlier run
                        ysl, xsl = job.region(index)
                        dst.write(block, window=Window.from_slices(ysl, xsl))
                job.run(lambda _, block: block, write, done=journal.done if journal else set())
            finally:
                sink.close()
            _describe(dst, names, colors, pred.attrs, job.probabilities)
        if cog:
            rasterio.shutil.copy(
                staging, st.path, driver="COG", COMPRESS=compress, BLOCKSIZE=_BLOCK,
                OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER",
                **_overview_options(height, width),
            )  # fmt: skip
        # GDAL may have written PAM for the staged file; the sidecar is ours, staged
        # with the raster and renamed in after it.
        st.sidecar(".aux.xml").write_text(pam_xml(names, colors), encoding="utf-8")
    log.info(
        "wrote %s (%s, %d x %d, %d band(s))", out, "COG" if cog else "GeoTIFF", height, width, count
    )
    return out


def _uniform_chunks(arr: da.Array) -> da.Array:
    """Rechunk to regular chunks (all equal but the last), which Zarr needs; a no-op if already."""
    return arr.rechunk(tuple(c[0] for c in arr.chunks))


def _cf_dataset(pred: xr.Dataset, *, probabilities: bool) -> xr.Dataset:
    """The CF-1.8 dataset written to Zarr and netCDF (still lazy, integer-coded)."""
    names = json.loads(pred.attrs["class_names"])
    colors = json.loads(pred.attrs["class_colors"])
    cls = _uniform_chunks(da.asarray(pred["class"].data))
    variables: dict[str, xr.DataArray] = {
        "class": xr.DataArray(cls, dims=("y", "x"), attrs=cf_class_attrs(names, colors))
    }
    if probabilities:
        probs = _uniform_chunks(da.asarray(pred["probability"].data))
        variables["probability"] = xr.DataArray(
            da.map_blocks(_probability_percent, probs, dtype=np.uint8),
            dims=("class_name", "y", "x"),
            # Already packed as percent: scale_factor is an attribute (decoders apply
            # it), not an encoding (xarray would divide by it again).
            attrs={
                "long_name": "class probability",
                "units": "1",
                "scale_factor": np.float32(0.01),
            },
        )
    coords = {str(k): v for k, v in pred.coords.items() if k in ("x", "y", "spatial_ref")}
    if probabilities:
        coords["class_name"] = pred.coords["class_name"]
    attrs = {k: pred.attrs[k] for k in PREDICTION_ATTRS if k in pred.attrs}
    ds = xr.Dataset(variables, coords=coords, attrs={"Conventions": "CF-1.8", **attrs})
    if "spatial_ref" in ds.coords:
        ds = ds.rio.write_grid_mapping("spatial_ref")
        if "x" in ds.coords and pred.rio.crs is not None:
            # CF axis attributes (standard_name, units) so CF tools know longitude/latitude
            # or projection_x/y_coordinate.
            ds = ds.rio.write_crs(pred.rio.crs).rio.write_coordinate_system()
    return ds


def _cf_encoding(ds: xr.Dataset, fmt: Literal["zarr", "netcdf"]) -> dict[str, dict[str, Any]]:
    # An ``encoding`` argument replaces each variable's encoding: keep grid_mapping.
    encoding: dict[str, dict[str, Any]] = {
        str(name): {**var.encoding, "_FillValue": np.uint8(CLASS_NODATA), "dtype": "uint8"}
        for name, var in ds.data_vars.items()
    }
    if fmt == "zarr":
        for name, enc in encoding.items():
            # Zarr's own fill value too: a chunk never written then reads as "no
            # prediction", not as class 0. One chunk per prediction block, so each
            # block's write touches its own chunks only.
            enc["fill_value"] = CLASS_NODATA
            enc["chunks"] = tuple(c[0] for c in ds[name].chunks or ())
    else:
        for enc in encoding.values():
            enc.update(zlib=True, complevel=4)
    return encoding


def _write_zarr_block(block: np.ndarray, store: str, region: tuple[slice, slice]) -> int:
    """Write one block's class (and percent) chunks into the Zarr store; runs on a worker.

    Idempotent: a retried task (a lost worker) writes the same bytes to the same chunks.
    """
    import zarr

    ysl, xsl = region
    zarr.open_array(store, path="class", mode="r+")[ysl, xsl] = block[0]
    if block.shape[0] > 1:
        zarr.open_array(store, path="probability", mode="r+")[:, ysl, xsl] = block[1:]
    return int(block.shape[1] * block.shape[2])


def _zarr_store_ready(path: Path, probabilities: bool) -> bool:
    """Whether an earlier run's staged store has its variables (then its blocks are reused)."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        return "class" in group and (not probabilities or "probability" in group)
    except Exception:  # missing or broken metadata: start the store afresh
        return False


def _write_zarr(pred: xr.Dataset, out: Path, job: _BlockJob) -> Path:
    """Zarr folder: metadata here, then every block's chunks written where it is computed."""
    ds = _cf_dataset(pred, probabilities=job.probabilities)
    encoding = _cf_encoding(ds, "zarr")
    fields = job.fields("zarr")
    with (
        staged(out, folder=True, suffix=".zarr", resume_key=job.key(fields)) as st,
        job.journal(st, fields, keep_data=False) as journal,
    ):
        done: set[BlockIndex] = set(journal.done) if journal is not None else set()
        if not (done and _zarr_store_ready(st.path, job.probabilities)):
            done.clear()
            with warnings.catch_warnings():
                # Consolidated metadata lets xarray open the store in one read and
                # without a fallback warning; zarr flags it as not (yet) in the v3 spec.
                warnings.filterwarnings(
                    "ignore", "Consolidated metadata is currently not part", UserWarning
                )
                # Metadata and coordinates only; the data are written block by block.
                ds.to_zarr(
                    st.path,
                    mode="w",
                    zarr_format=3,
                    consolidated=True,
                    encoding=encoding,
                    compute=False,
                )
        store = str(st.path.resolve())  # workers open it by this path

        def finished(index: BlockIndex, _: Any) -> None:
            if journal is not None:  # the completion record: the chunks are complete
                journal.record(index)
            job.advance()

        job.run(
            lambda ij, block: dask.delayed(_write_zarr_block, pure=True)(
                block, store, job.region(ij), dask_key_name=("zarr-block", job.bands.name, *ij)
            ),
            finished,
            done=done,
        )
    log.info("wrote %s (zarr, %d x %d)", out, ds.sizes["y"], ds.sizes["x"])
    return out


def _write_netcdf(pred: xr.Dataset, out: Path, job: _BlockJob) -> Path:
    """netCDF file: blocks computed into a journal, then written here from it, then renamed.

    One file cannot take writes from many workers, so the blocks come back to this
    process first (their journal doubles as the resume record), and the file is
    written from them on this process's threads.
    """
    ds = _cf_dataset(pred, probabilities=job.probabilities)
    encoding = _cf_encoding(ds, "netcdf")
    if "probability" in ds:  # netCDF keeps the type: float32 scale, float32 values
        ds["probability"].attrs["scale_factor"] = np.float32(0.01)
    fields = job.fields("netcdf")
    with (
        staged(out, suffix=OUTPUT_FORMATS["netcdf"].suffix, resume_key=job.key(fields)) as st,
        job.scratch_journal(st, fields, keep_data=True) as journal,
    ):

        def finished(index: BlockIndex, block: np.ndarray) -> None:
            journal.record(index, block)
            job.advance()

        job.run(lambda _, block: block, finished, done=journal.done)
        bands = da.map_blocks(
            _journal_block,
            journal=journal,
            chunks=job.bands.chunks,
            dtype=np.uint8,
            name=f"journal-{job.bands.name}",
        )
        ds["class"] = ds["class"].copy(data=bands[0])
        if "probability" in ds:
            ds["probability"] = ds["probability"].copy(data=bands[1:])
        with dask.config.set(scheduler="threads"):  # the journal is this process's
            ds.to_netcdf(st.path, mode="w", format="NETCDF4", engine="netcdf4", encoding=encoding)
    log.info("wrote %s (netcdf, %d x %d)", out, ds.sizes["y"], ds.sizes["x"])
    return out


def _journal_block(journal: BlockJournal, block_id: tuple[int, int, int]) -> np.ndarray:
    return journal.read((block_id[1], block_id[2]))


def _describe(
    dst: Any, names: list[str], colors: list[list[int]], attrs: dict[str, Any], probabilities: bool
) -> None:
    """Band descriptions, scales and metadata tags (the colour table goes to the sidecar).

    The colour table is not embedded in the TIFF: TIFF palettes always have 256
    entries for a byte band, and GDAL (and so QGIS's legend) would then list 256
    classes. The PAM sidecar holds a table of exactly one entry per class.
    """
    if probabilities:
        dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * len(names)
    dst.set_band_description(1, "class")
    tags, band_tags = tiff_tags(names, colors, attrs)
    dst.update_tags(**tags)
    dst.update_tags(1, **band_tags)
    if probabilities:
        scales = [1.0] + [0.01] * len(names)
        dst.scales = tuple(scales)
        dst.offsets = tuple([0.0] * len(scales))
        for i, n in enumerate(names):
            dst.set_band_description(i + 2, f"probability_{n}")
            dst.update_tags(i + 2, CLASS=n, UNITS="percent")
