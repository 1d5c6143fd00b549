#!/usr/bin/env python
"""Where the NumPy memory of a prediction goes, step by step (``tracemalloc``).

Companion to ``bench_predict_memory.py``: run it on rasters that benchmark kept
(``--keep --workdir DIR``) to see which step's memory depends on the raster size::

    python benchmarks/diag_block_memory.py DIR/model_tiny_3band.safetensors DIR/noise_*.tif

For each raster it reports the peak of NumPy allocations (``tracemalloc`` sees
NumPy's buffers, not PyTorch's or GDAL's) of ``check_inputs`` and, for the first
block, of reading, reading + normalising, and ``_classify_block``. Everything runs
on Dask's synchronous scheduler, so the numbers are per step, not per thread pool.
"""

from __future__ import annotations

import argparse
import tracemalloc
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import dask

import georaster_cnn as gc
from georaster_cnn.chips import BLOCK_PX, plan_blocks
from georaster_cnn.prediction import blockwise as _predict_mod

MIB = 1 << 20


def _traced(label: str, fn: Callable[[], Any]) -> Any:
    tracemalloc.start()
    try:
        out = fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"  {label:<40} peak {peak / MIB:7.1f} MiB   still held {current / MIB:6.1f} MiB")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("rasters", nargs="+", help="rasters to examine")
    p.add_argument("--stride", type=int, default=64)
    args = p.parse_args(argv)
    dask.config.set(scheduler="synchronous")
    model = gc.load_model(args.model)
    for path in args.rasters:
        data = gc.open_raster(path)
        arr = data.data
        print(
            f"{path}: {data.sizes['band']} x {data.sizes['y']} x {data.sizes['x']}, "
            f"{arr.numblocks[1]} x {arr.numblocks[2]} chunks of {arr.chunksize} "
            f"({arr.nbytes / arr.npartitions / MIB:.0f} MiB each)"
        )
        _traced("check_inputs (whole raster)", partial(_predict_mod.check_inputs, data, model))
        _traced("read first chunk", arr.blocks[0, 0, 0].compute)
        grid = gc.PatchGrid(
            data.sizes["y"], data.sizes["x"], patch=model.patch_size, stride=args.stride
        )
        block_cells = max(1, BLOCK_PX // args.stride)
        plan = plan_blocks(gc.normalize(data, model.stats).data, grid, block_cells=block_cells)
        first = plan.blocks.blocks[0, 0, 0]
        block = _traced("read + normalize first block", first.compute)
        classifier = _predict_mod._Classifier(model, "cpu")
        _traced(
            "_classify_block on it (NumPy side only)",
            partial(
                _predict_mod._classify_block,
                block,
                classifier=classifier,
                patch=grid.patch,
                stride=grid.stride,
                halo=grid.halo_before,
                min_valid=model.min_valid,
                batch_size=256,
                n_classes=model.n_classes,
            ),
        )


if __name__ == "__main__":
    main()
