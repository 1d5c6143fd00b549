#!/usr/bin/env python
"""Cost of a class map against its stride: dense evaluation, per-window, bare forward.

One 4096 x 4096 4-band float32 GeoTIFF (seeded, tiled, uncompressed) and one untrained
``cnn_dense`` network (the library's default widths 16, 32, 64; patch 64; batch-norm
running statistics reset, so eval mode is defined). For strides 64, 16, 8, 4 and 1:

* **dense**: ``open_raster`` + ``predict(..., dense=True)`` + computing the class band
  and the probabilities (no writing). Strides 64..4 on the whole tile; stride 1 on the
  central 1024 x 1024 crop, scaled by the number of cells (x 16). The strides are
  interleaved round by round (``--repeat`` rounds, best wall time of each); the CPU
  time of the process (all threads) is reported beside it.
* **per-window**: the same with ``dense=False``. Stride 64 on the whole tile; the
  others on a central crop of about 4096 windows (64 * stride pixels a side), scaled
  by the number of classified windows (windows below ``min_valid`` near the crop's
  edge are not classified, so the time per classified window is what is scaled).
* **bare forward**: the network alone (``module(x)`` under ``inference_mode``, batches
  of 256 random windows already in memory), timed right after each per-window
  measurement on as many windows as it classified, and scaled the same way.

Targets on a 2-core CPU (``docs/resolution-and-cost.md``): dense stride 16 and 8 within
1.5 x of the dense stride-64 map, dense stride 1 within 25 x. Exit status 1 when a
target is missed.

    python benchmarks/bench_dense.py --quick    # 1024^2 tile, stride 1 on 256^2; ~1 min
    python benchmarks/bench_dense.py            # the 4096^2 tile; ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

PATCH = 64
BANDS = 4
CLASSES = 4
STRIDES = (64, 16, 8, 4, 1)
#: Per-window crops hold about this many windows.
CROP_WINDOWS = 4096
BATCH = 256


def _write_tile(path: Path, size: int, seed: int) -> None:
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": BANDS,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
    }
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 512):
            h = min(512, size - r)
            dst.write(
                rng.standard_normal((BANDS, h, size)).astype(np.float32),
                window=((r, r + h), (0, size)),
            )


def _model(path: Path, seed: int) -> Any:
    import torch

    import georaster_cnn as gc
    from georaster_cnn.io.classmap import default_colors

    data = gc.open_raster(path)
    torch.manual_seed(seed)
    module = gc.build_model("cnn_dense", in_channels=BANDS, n_classes=CLASSES, patch_size=PATCH)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    return gc.GeoModel(
        module=module.eval(),
        arch="cnn_dense",
        hparams={},
        band_names=tuple(str(b) for b in data["band"].values),
        class_names=tuple(f"class_{k}" for k in range(CLASSES)),
        class_colors=default_colors(CLASSES),
        stats=gc.compute_stats(data.isel(y=slice(0, 512), x=slice(0, 512))),
        patch_size=PATCH,
        source_dtype="float32",
        provenance={"note": "untrained; benchmarks/bench_dense.py"},
    )


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _map(
    path: Path, model: Any, stride: int, dense: bool, crop: int | None, device: str = "cpu"
) -> tuple[int, int]:
    """Compute one class map (and its probabilities); (cells, classified cells)."""
    import dask

    import georaster_cnn as gc

    data = gc.open_raster(path)
    if crop is not None:
        h = data.sizes["y"]
        o = max(0, (h - crop) // 2)
        data = data.isel(y=slice(o, o + crop), x=slice(o, o + crop))
    pred = gc.predict(
        data, model, stride=stride, dense=dense, check=False, batch_size=BATCH, device=device
    )
    cls, _ = dask.compute(pred["class"].data, pred["probability"].data)
    return int(cls.size), int((np.asarray(cls) != 255).sum())


def _bare_rate(model: Any, n: int, device: str) -> float:
    """Seconds per window of the bare network on ``n`` random in-memory windows."""
    import torch

    from georaster_cnn.model._inference import resolve_device

    dev = resolve_device(device)
    module = model.module.to(dev).eval()
    x = torch.randn(n, BANDS, PATCH, PATCH)
    with torch.inference_mode():
        module(x[:BATCH].to(dev))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            module(x[i : i + BATCH].to(dev)).cpu()
        return (time.perf_counter() - t0) / n


def _cells(size: int, stride: int) -> int:
    return math.ceil(size / stride) ** 2


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    size = 1024 if args.quick else args.size
    fine_crop = 256 if args.quick else 1024
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dense_", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    tile = workdir / f"tile_{size}x{size}x{BANDS}.tif"
    try:
        if not tile.exists():
            _write_tile(tile, size, args.seed)
        return _measure(tile, size, fine_crop, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(tile: Path, size: int, fine_crop: int, args: argparse.Namespace) -> dict[str, Any]:
    dev = args.device
    model = _model(tile, args.seed)
    # warm-up: imports, thread pools, first-call allocations
    _map(tile, model, 16, True, 256, dev)
    _map(tile, model, 64, False, 256, dev)

    # Dense maps first, the strides interleaved round by round (best of --repeat), so a
    # burst of other load on a shared machine does not fall on one stride only.
    dense: dict[int, list[float]] = {s: [] for s in STRIDES}
    dense_cpu: dict[int, list[float]] = {s: [] for s in STRIDES}
    dense_cells: dict[int, int] = {}
    for _ in range(args.repeat):
        for stride in STRIDES:
            crop = fine_crop if stride == 1 else None
            t0, c0 = time.perf_counter(), time.process_time()
            dense_cells[stride], _ = _map(tile, model, stride, True, crop, dev)
            dense[stride].append(time.perf_counter() - t0)
            dense_cpu[stride].append(time.process_time() - c0)
    rows = []
    for stride in STRIDES:
        full = _cells(size, stride)
        row: dict[str, Any] = {"stride": stride, "cells": full}
        scale = full / dense_cells[stride]
        row["dense_s"] = min(dense[stride]) * scale
        row["dense_cpu_s"] = min(dense_cpu[stride]) * scale
        row["dense_runs_s"] = [t * scale for t in dense[stride]]
        row["dense_note"] = f"{fine_crop}^2 crop x {scale:.0f}" if stride == 1 else "measured"
        # per-window
        pw_crop = None if stride == PATCH else min(size, PATCH * stride)
        if stride == 1 and args.skip_per_window_1:
            row["per_window_s"], row["per_window_note"] = math.nan, "skipped"
            done = CROP_WINDOWS
        else:
            t, (_, done) = _timed(
                partial(_map, tile, model, stride, False, pw_crop, dev), args.repeat
            )
            row["per_window_s"] = t / max(done, 1) * full
            row["per_window_note"] = (
                "measured" if pw_crop is None else f"{pw_crop}^2 crop, {done} windows, scaled"
            )
        rate = min(_bare_rate(model, max(done, BATCH), dev) for _ in range(args.repeat))
        row["bare_s"] = rate * full
        row["bare_windows"] = max(done, BATCH)
        rows.append(row)
        print(
            f"  stride {stride:>2}: dense {row['dense_s']:8.2f} s, per-window "
            f"{row['per_window_s']:10.1f} s, bare forward {row['bare_s']:10.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return {"size": size, "fine_crop": fine_crop, "rows": rows}


def _ratio(x: float) -> str:
    return f"{x:.1f}" if x < 10 else f"{x:,.0f}"


def report(result: dict[str, Any]) -> tuple[str, bool]:
    rows = result["rows"]
    base = rows[0]["dense_s"]
    lines = [
        f"one {result['size']}^2 {BANDS}-band tile, cnn_dense (widths 16, 32, 64; patch {PATCH}); "
        "seconds for the whole tile's map",
        "",
        "| stride | cells | dense s | dense / dense@64 | dense CPU s | per-window s "
        "| per-window / dense | bare forward s | per-window note | dense note |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stride']} | {r['cells']:,} | {r['dense_s']:.2f} | {r['dense_s'] / base:.2f} "
            f"| {r['dense_cpu_s']:.1f} | {r['per_window_s']:,.1f} | {_ratio(r['per_window_s'] / r['dense_s'])} "
            f"| {r['bare_s']:,.1f} | {r['per_window_note']} | {r['dense_note']} |"
        )
    by = {r["stride"]: r["dense_s"] / base for r in rows}
    checks = [
        (f"dense stride 16 within 1.5x of stride 64 ({by[16]:.2f}x)", by[16] <= 1.5),
        (f"dense stride 8 within 1.5x of stride 64 ({by[8]:.2f}x)", by[8] <= 1.5),
        (f"dense stride 1 within 25x of stride 64 ({by[1]:.2f}x)", by[1] <= 25),
    ]
    lines.append("")
    lines += [f"{'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
    return "\n".join(lines), all(ok for _, ok in checks)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--quick", action="store_true", help="1024^2 tile, stride 1 on a 256^2 crop")
    p.add_argument("--size", type=int, default=4096, help="tile side in pixels (default 4096)")
    p.add_argument("--repeat", type=int, default=1, help="best of N runs per cell (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="predict(device=...) (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-per-window-1", action="store_true", help="skip per-window stride 1")
    p.add_argument("--workdir", default=None, help="where the tile goes (kept if given)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPU(s), device {args.device}, {time.strftime('%Y-%m-%d')}",
        flush=True,
    )
    result = run(args)
    text, ok = report(result)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
