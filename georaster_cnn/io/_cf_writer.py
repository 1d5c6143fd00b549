"""Zarr and netCDF class maps (CF-1.8), written block by block with a resume journal.

Zarr blocks are written by whoever computes them (cluster workers too), one chunk per
block; netCDF blocks come back to the writing process. See :func:`~georaster_cnn.write_prediction`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from georaster_cnn.io._blocks import (
    _BlockJob,
    _journal_block,
    _probability_percent,
    _uniform_chunks,
)
from georaster_cnn.io._resume import BlockIndex
from georaster_cnn.io.classmap import (
    CLASS_NODATA,
    PREDICTION_ATTRS,
    cf_class_attrs,
    prediction_classes,
)
from georaster_cnn.io.formats import OUTPUT_FORMATS
from georaster_cnn.io.staging import staged
from georaster_cnn.quiet import ignore_warnings

__all__ = ["_write_netcdf", "_write_zarr"]

log = logging.getLogger(__name__)


def _cf_dataset(pred: xr.Dataset, *, probabilities: bool) -> xr.Dataset:
    """The CF-1.8 dataset written to Zarr and netCDF (still lazy, integer-coded)."""
    names, colors = prediction_classes(pred.attrs)
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


def _write_zarr(pred: xr.Dataset, out: Path, job: _BlockJob, *, overwrite: bool) -> Path:
    """Zarr folder: metadata here, then every block's chunks written where it is computed."""
    ds = _cf_dataset(pred, probabilities=job.probabilities)
    encoding = _cf_encoding(ds, "zarr")
    fields = job.fields("zarr")
    with (
        staged(
            out, folder=True, suffix=".zarr", resume_key=job.key(fields), overwrite=overwrite
        ) as st,
        job.journal(st, fields, keep_data=False) as journal,
    ):
        done: set[BlockIndex] = set(journal.done) if journal is not None else set()
        if not (done and _zarr_store_ready(st.path, job.probabilities)):
            done.clear()
            # Consolidated metadata lets xarray open the store in one read and without a
            # fallback warning; zarr flags it as not (yet) in the v3 spec.
            with ignore_warnings(UserWarning, "Consolidated metadata is currently not part"):
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


def _write_netcdf(pred: xr.Dataset, out: Path, job: _BlockJob, *, overwrite: bool) -> Path:
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
        staged(
            out,
            suffix=OUTPUT_FORMATS["netcdf"].suffix,
            resume_key=job.key(fields),
            overwrite=overwrite,
        ) as st,
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
        # the journal is this process's: threads here, for this computation only (a
        # process-wide setting would move other work running beside it off a cluster)
        ds.to_netcdf(
            st.path, mode="w", format="NETCDF4", engine="netcdf4", encoding=encoding, compute=False
        ).compute(scheduler="threads")
    log.info("wrote %s (netcdf, %d x %d)", out, ds.sizes["y"], ds.sizes["x"])
    return out
