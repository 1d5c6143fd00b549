#!/usr/bin/env python
"""Peak memory, time and throughput of ``predict`` + ``write_prediction`` as rasters grow.

The raster side doubles from 2048 to 16384 pixels (64 times the pixels). If the
pipeline is blockwise, peak memory must stay flat. For every size:

1. a tiled (512 x 512) float32 GeoTIFF of seeded noise is written block by block
   (never the whole raster in memory), EPSG:32633, no compression;
2. a fresh Python process opens it, runs ``predict`` and ``write_prediction`` and
   reports its peak RSS (``getrusage`` and ``/proc`` ``VmHWM``, plus the maximum
   of a psutil sampling thread), wall time and throughput.

The model is an untrained ``SmallCNN`` (``--model tiny`` by default: widths 8, 16)
with statistics from a 512 x 512 sample, saved with ``save_model`` and loaded by
every measuring process. Its accuracy is irrelevant: the point is memory.

The parent process only uses the standard library and does all heavy work
(generation, model) in a subprocess too: on Linux a child's ``ru_maxrss`` starts
at its parent's high-water mark (``execve`` keeps it), so a heavy parent would
inflate every measurement.

Run ``python benchmarks/bench_predict_memory.py --quick`` (2048 and 4096) or
without ``--quick`` for all sizes; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SIZES = (2048, 4096, 8192, 16384)
QUICK_SIZES = (2048, 4096)
TILE = 512
PATCH = 64
CLASS_NAMES = ("water", "forest", "field", "urban")
#: ``SmallCNN`` hyper-parameters per ``--model`` choice (``{}``: the library default).
MODELS: dict[str, dict[str, Any]] = {"tiny": {"widths": [8, 16]}, "default": {}}
#: Peak memory of the largest size may exceed the smallest's by at most this fraction.
FLAT_TOLERANCE = 0.25
#: Free disk to keep beyond the generated inputs.
DISK_MARGIN = 1 << 30
MIB = 1 << 20
RESULT_PREFIX = "RESULT "
LEGEND = """\
peak RSS: getrusage(RUSAGE_SELF).ru_maxrss of the measuring process (MiB); ratio: to the
first row; seconds: open_raster + predict + write_prediction; Mpx/s: input pixels per second.
sampled: max RSS of a psutil thread sampling every 10 ms; ready: RSS after the imports and
load_model; predict(): peak RSS during open_raster + the lazy predict() call (graph building
and check_inputs, which computes a few blocks); write: peak RSS during write_prediction (all
the inference); tasks: Dask graph size of the class band (all in MiB but tasks)."""


# --------------------------------------------------------------------------- helpers


def _ru_maxrss_bytes() -> int:
    """Peak RSS of this process from ``getrusage`` (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _vm_hwm_bytes() -> int | None:
    """``VmHWM`` from ``/proc/self/status`` (Linux only): the peak RSS of this address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _end_phase() -> int:
    """Peak RSS of the phase that ends now; then reset the peak so the next phase starts afresh.

    Reads ``ru_maxrss`` and, where Linux allows (``/proc/self/clear_refs``), resets the
    address space's high-water mark, which ``ru_maxrss`` reports. The process's overall
    peak is the maximum over its phases.
    """
    peak = _ru_maxrss_bytes()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return peak


def _git_revision() -> str:
    """Short commit of the checkout, ``+dirty`` when ``georaster_cnn/`` has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "georaster_cnn"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _input_bytes(size: int, bands: int) -> int:
    return size * size * bands * 4


def _input_path(workdir: Path, size: int, bands: int) -> Path:
    return workdir / f"noise_{size}x{size}x{bands}.tif"


# --------------------------------------------------------------------------- children


class RssSampler(threading.Thread):
    """Background thread recording the maximum RSS seen every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def current(self) -> int:
        return int(self.proc.memory_info().rss)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return int(self.peak)


def _generate(path: Path, size: int, bands: int, seed: int) -> None:
    """Write a ``size x size x bands`` float32 tiled GeoTIFF of noise, one 512 x 512 block at a time."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": from_origin(399960.0, 5_300_040.0, 10.0, 10.0),
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "NONE",
        "BIGTIFF": "IF_SAFER",
    }
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for (row, col), window in dst.block_windows(1):
            # One generator per block: the file does not depend on the write order.
            rng = np.random.default_rng([seed, size, row, col])
            noise = rng.standard_normal((bands, window.height, window.width), dtype=np.float32)
            # Reflectance-like values: positive, different per band.
            offsets = np.linspace(0.05, 0.35, bands, dtype=np.float32)[:, None, None]
            dst.write(offsets + np.float32(0.05) * noise, window=window)
    tmp.replace(path)


def _child_prepare(cfg: dict[str, Any]) -> None:
    """Generate the inputs and the model file (runs in a subprocess)."""
    import torch

    import georaster_cnn as gc
    from georaster_cnn.io.classmap import default_colors

    workdir = Path(cfg["workdir"])
    bands, seed = int(cfg["bands"]), int(cfg["seed"])
    for size in cfg["sizes"]:
        path = _input_path(workdir, size, bands)
        if path.exists():
            print(f"  input {path.name} exists, reused", file=sys.stderr, flush=True)
            continue
        t0 = time.perf_counter()
        _generate(path, size, bands, seed)
        print(
            f"  wrote {path.name} ({path.stat().st_size / MIB:,.0f} MiB) "
            f"in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    # Statistics from a small sample, not from the full raster.
    data = gc.open_raster(_input_path(workdir, min(cfg["sizes"]), bands))
    stats = gc.compute_stats(data.isel(y=slice(0, TILE), x=slice(0, TILE)))
    torch.manual_seed(seed)
    hparams = MODELS[cfg["model"]]
    arch = str(cfg.get("arch", "cnn"))
    module = gc.build_model(
        arch, in_channels=bands, n_classes=len(CLASS_NAMES), patch_size=PATCH, **hparams
    )
    model = gc.GeoModel(
        module=module.eval(),
        arch=arch,
        hparams=hparams,
        band_names=tuple(str(b) for b in data["band"].values),
        class_names=CLASS_NAMES,
        class_colors=default_colors(len(CLASS_NAMES)),
        stats=stats,
        patch_size=PATCH,
        source_dtype="float32",
        provenance={"note": "untrained; benchmarks/bench_predict_memory.py"},
    )
    gc.save_model(model, cfg["model_path"], overwrite=True)


def _child_measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """open -> predict -> write_prediction on one input; returns the measurements."""
    # ru_maxrss above VmHWM at start-up: the high-water mark was inherited from the parent.
    inherited = _ru_maxrss_bytes() - (_vm_hwm_bytes() or 0)
    sampler = RssSampler(float(cfg["sample_interval"]))
    sampler.start()
    import dask

    import georaster_cnn as gc

    if cfg["threads"] is not None:
        dask.config.set(num_workers=int(cfg["threads"]))
    model = gc.load_model(cfg["model_path"])
    rss_ready = sampler.current()
    kwargs: dict[str, Any] = {
        "stride": cfg["stride"],
        "device": cfg["device"],
        "check": bool(cfg["check"]),
    }
    if cfg["block_cells"] is not None:
        kwargs["block_cells"] = cfg["block_cells"]
    peak_ready = _end_phase()

    t0 = time.perf_counter()
    data = gc.open_raster(cfg["input"])
    pred = gc.predict(data, model, **kwargs)
    t_graph = time.perf_counter() - t0
    peak_predict = _end_phase()
    gc.write_prediction(pred, cfg["output"], overwrite=True)
    seconds = time.perf_counter() - t0
    peak_write = _end_phase()
    peak_sampled = sampler.stop()

    n_tasks = len(pred["class"].data.__dask_graph__())
    # Sanity check of the result (small: one cell per stride x stride pixels).
    import numpy as np
    import rasterio

    with rasterio.open(cfg["output"]) as src:
        classes = src.read(1)
        out_shape = (src.height, src.width)
        crs = str(src.crs)
    expect = math.ceil(data.sizes["y"] / cfg["stride"]), math.ceil(data.sizes["x"] / cfg["stride"])
    # Windows near the edge reach past the raster; below stride 64 some corner ones
    # fall under min_valid (class 255), as they should. Everything inside is classified.
    rim = math.ceil(PATCH / 2 / cfg["stride"])
    inside = classes[rim:-rim, rim:-rim] if rim else classes
    ok = bool(np.all(inside < len(CLASS_NAMES))) and bool(
        np.all((classes < len(CLASS_NAMES)) | (classes == 255))
    )
    if out_shape != expect or not ok:
        raise RuntimeError(
            f"bad output {cfg['output']}: shape {out_shape} (expected {expect}), "
            f"classes {np.unique(classes).tolist()}"
        )
    return {
        "size": data.sizes["y"],
        "bands": data.sizes["band"],
        "pixels": data.sizes["y"] * data.sizes["x"],
        "ru_maxrss": max(peak_ready, peak_predict, peak_write),
        "peak_ready": peak_ready,
        "peak_predict_call": peak_predict,
        "peak_write": peak_write,
        "sampled_peak": peak_sampled,
        "samples": sampler.samples,
        "rss_ready": rss_ready,
        "seconds": seconds,
        "graph_seconds": t_graph,
        "tasks": n_tasks,
        "windows": out_shape[0] * out_shape[1],
        "output_crs": crs,
        "dask_threads": dask.config.get("num_workers", None) or os.cpu_count(),
        "check": bool(cfg["check"]),
        "inherited_maxrss": inherited,
    }


# --------------------------------------------------------------------------- parent


def _run_child(mode: str, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Run this file as ``mode`` in a fresh interpreter; parse its ``RESULT`` line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(cfg)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} subprocess failed with exit status {proc.returncode}")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    return None


def _plan_disk(workdir: Path, sizes: list[int], bands: int) -> tuple[list[int], int, list[str]]:
    """Sizes and bands that fit on the disk (fewer bands first, then fewer sizes)."""
    free = shutil.disk_usage(workdir).free
    notes: list[str] = []

    def need(ss: Sequence[int], b: int) -> int:
        missing = [s for s in ss if not _input_path(workdir, s, b).exists()]
        return sum(_input_bytes(s, b) for s in missing) + DISK_MARGIN

    if need(sizes, bands) <= free:
        return sizes, bands, notes
    for b in range(bands - 1, 0, -1):
        if need(sizes, b) <= free:
            notes.append(
                f"not enough free disk in {workdir} for {bands} band(s) "
                f"({need(sizes, bands) / MIB:,.0f} MiB needed, {free / MIB:,.0f} MiB free): "
                f"using {b} band(s)"
            )
            return sizes, b, notes
    kept = list(sizes)
    while kept and need(kept, 1) > free:
        dropped = kept.pop()
        notes.append(f"not enough free disk in {workdir} for {dropped} x {dropped}: skipped")
    if kept and bands > 1:
        notes.append("using 1 band to fit on the disk")
    return kept, 1, notes


def _format_table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["ru_maxrss"]
    header = (
        f"{'size':>13} {'pixels':>13} {'peak RSS MiB':>12} {'ratio':>6} {'seconds':>8} "
        f"{'Mpx/s':>6} | {'sampled':>7} {'ready':>6} {'predict()':>9} {'write':>6} {'tasks':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['size']:>6} x {r['size']:<6}{r['pixels']:>13,} {r['ru_maxrss'] / MIB:>12,.0f} "
            f"{r['ru_maxrss'] / base:>6.2f} {r['seconds']:>8.1f} "
            f"{r['pixels'] / 1e6 / r['seconds']:>6.2f} | {r['sampled_peak'] / MIB:>7,.0f} "
            f"{r['rss_ready'] / MIB:>6,.0f} {r['peak_predict_call'] / MIB:>9,.0f} "
            f"{r['peak_write'] / MIB:>6,.0f} {r['tasks']:>6}"
        )
    return "\n".join(lines)


def _verdict(rows: list[dict[str, Any]]) -> tuple[bool | None, str]:
    if len(rows) < 2:
        return None, "n/a: need at least two sizes to judge whether memory is flat"
    small, large = rows[0], rows[-1]
    growth = large["pixels"] / small["pixels"]
    ratio = large["ru_maxrss"] / small["ru_maxrss"]
    ok = ratio <= 1 + FLAT_TOLERANCE
    text = (
        f"{'PASS' if ok else 'FAIL'}: peak memory {'flat' if ok else 'NOT flat'} within "
        f"{FLAT_TOLERANCE:.0%} while the raster grows {growth:g}-fold "
        f"({small['ru_maxrss'] / MIB:,.0f} MiB at {small['size']}^2 -> "
        f"{large['ru_maxrss'] / MIB:,.0f} MiB at {large['size']}^2, ratio {ratio:.2f})"
    )
    return ok, text


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Peak memory, wall time and throughput of georaster_cnn.predict + "
            "write_prediction for growing rasters, each size in a fresh process."
        )
    )
    p.add_argument(
        "--sizes",
        type=lambda s: sorted({int(v) for v in s.split(",")}),
        default=None,
        help=f"comma-separated raster sides in pixels (default {','.join(map(str, SIZES))})",
    )
    p.add_argument(
        "--quick", action="store_true", help=f"only sizes {','.join(map(str, QUICK_SIZES))}"
    )
    p.add_argument("--bands", type=int, default=3, help="bands of the input rasters (default 3)")
    p.add_argument("--stride", type=int, default=64, help="output cell size in pixels (default 64)")
    p.add_argument(
        "--block-cells",
        type=int,
        default=None,
        help="predict(block_cells=...) (default: the library's default)",
    )
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="tiny",
        help="untrained SmallCNN: 'tiny' (widths 8, 16; default) or 'default' (16, 32, 64, 64)",
    )
    p.add_argument(
        "--arch",
        choices=["cnn", "cnn_dense"],
        default="cnn",
        help="architecture of the untrained model (default cnn; cnn_dense is evaluated densely)",
    )
    p.add_argument("--device", default="auto", help="predict(device=...) (default auto)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Dask threaded-scheduler workers (default: Dask's, one per CPU)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="predict(check=False): skip check_inputs' sampling of the raster",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the weights")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the generated rasters and outputs (default: a new temp dir in /tmp)",
    )
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument(
        "--sample-interval",
        type=float,
        default=0.01,
        help="seconds between psutil RSS samples (default 0.01)",
    )
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else SIZES)
    if min(args.sizes) < PATCH or args.bands < 1 or args.stride < 1:
        p.error(f"sizes must be >= {PATCH}, bands and stride >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        import psutil  # noqa: F401  (checked here: the children need it)
    except ImportError:
        print("this benchmark needs psutil: pip install psutil", file=sys.stderr)
        return 2

    made_workdir = args.workdir is None
    workdir: Path = (
        Path(tempfile.mkdtemp(prefix="bench_predict_memory_", dir="/tmp"))
        if args.workdir is None
        else args.workdir
    )
    workdir.mkdir(parents=True, exist_ok=True)
    sizes, bands, notes = _plan_disk(workdir, args.sizes, args.bands)
    for note in notes:
        print(f"NOTE: {note}")
    if not sizes:
        print("nothing to run: not enough free disk for even the smallest raster")
        return 2
    model_path = workdir / f"model_{args.arch}_{args.model}_{bands}band.safetensors"
    revision = _git_revision()
    print(
        f"georaster_cnn predict + write_prediction: sizes {sizes}, {bands} band(s), "
        f"stride {args.stride}, model {args.arch} {args.model} "
        f"{MODELS[args.model] or '(library default)'}, "
        f"device {args.device}, Dask threads {args.threads or 'default'}, "
        f"check_inputs {'off' if args.no_check else 'on'}\n"
        f"commit {revision}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU(s), "
        f"Python {sys.version.split()[0]}; workdir {workdir}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    try:
        print("generating inputs and model ...", flush=True)
        base_cfg = {"workdir": str(workdir), "bands": bands, "seed": args.seed}
        _run_child(
            "_prepare",
            {
                **base_cfg,
                "sizes": sizes,
                "model": args.model,
                "arch": args.arch,
                "model_path": str(model_path),
            },
        )
        for size in sizes:
            print(f"measuring {size} x {size} ...", flush=True)
            cfg = {
                **base_cfg,
                "input": str(_input_path(workdir, size, bands)),
                "output": str(workdir / f"pred_{size}.tif"),
                "model_path": str(model_path),
                "stride": args.stride,
                "block_cells": args.block_cells,
                "threads": args.threads,
                "check": not args.no_check,
                "device": args.device,
                "sample_interval": args.sample_interval,
            }
            row = _run_child("_measure", cfg)
            if row is None:
                raise SystemExit(f"no result from the {size} x {size} run")
            if row["inherited_maxrss"] > 16 * MIB:
                print(
                    f"  warning: the child started with ru_maxrss "
                    f"{row['inherited_maxrss'] / MIB:,.0f} MiB above its own RSS (inherited "
                    "from this process); peaks may be inflated"
                )
            rows.append(row)
            print(f"  peak {row['ru_maxrss'] / MIB:,.0f} MiB, {row['seconds']:.1f} s", flush=True)
    finally:
        if not args.keep:
            if made_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                for s in sizes:
                    _input_path(workdir, s, bands).unlink(missing_ok=True)
                    (workdir / f"pred_{s}.tif").unlink(missing_ok=True)
                    Path(str(workdir / f"pred_{s}.tif") + ".aux.xml").unlink(missing_ok=True)
                model_path.unlink(missing_ok=True)
        elif rows:
            print(f"kept the generated files in {workdir}")

    print()
    print(_format_table(rows))
    print(LEGEND)
    ok, verdict = _verdict(rows)
    print(verdict)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": sys.argv[1:],
                    "commit": revision,
                    "date": time.strftime("%Y-%m-%d"),
                    "cpus": os.cpu_count(),
                    "bands": bands,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if ok is False else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("_prepare", "_measure"):
        config = json.loads(sys.argv[2])
        if sys.argv[1] == "_prepare":
            _child_prepare(config)
        else:
            print(RESULT_PREFIX + json.dumps(_child_measure(config)), flush=True)
        sys.exit(0)
    sys.exit(main())
