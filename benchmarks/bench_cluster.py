#!/usr/bin/env python
"""Threaded scheduler versus a local cluster: many tiles and one huge raster.

Two jobs, each run on ``--schedulers`` (default ``threads`` and ``local:2``):

* **tiles**: 48 GeoTIFF tiles of 512 x 512 pixels (``--quick``: 12 of 256 x 256),
  written ``--tiles-in-flight`` at a time (a thread pool of ``write_prediction``
  calls; on a cluster their blocks run on the workers concurrently);
* **huge**: one 8192 x 8192 raster (``--quick``: 2048 x 2048), one
  ``write_prediction`` (on a cluster, blocks stream back into the staged COG).

Every (job, scheduler) runs in a fresh Python process that reports:

* start seconds: starting the cluster and importing torch and the library in its
  workers (0 for threads);
* end-to-end wall seconds (``open_raster`` + ``predict`` + ``write_prediction``, all
  tiles) and CPU seconds (user + system of the client and of every worker during the
  job): on a shared machine wall time follows the neighbours' load, CPU time much less;
* the bare model forward for the same number of windows, measured in the same process
  first (the model on random windows, batches of 256, torch with all cores,
  ``inference_mode``), wall and CPU seconds, and the ratio of CPU seconds end-to-end /
  forward (the cost of everything around the model);
* bytes per task: the pickle of one prediction task as it travels to a worker,
  before (the classifier carries the model file's bytes, as it did before the model
  was shipped once) and after (the model shipped as a worker plugin; the task
  carries the digest);
* peak memory (``VmHWM``, reset at the start of the job through
  ``/proc/self/clear_refs``) of the client process and of each worker.

The parent process uses only the standard library (a child's ``ru_maxrss`` starts
at its parent's high-water mark on Linux). Linux only (``/proc``).

Usage::

    python benchmarks/bench_cluster.py --quick     # about 2 minutes on 2 cores
    python benchmarks/bench_cluster.py             # about 8 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# A sibling script in benchmarks/ (on sys.path when this file runs as a script).
from bench_predict_memory import _git_revision

PATCH = 64
BANDS = 3
CLASS_NAMES = ("water", "forest", "field", "urban")
WIDTHS = [8, 16]  # the tiny SmallCNN of bench_predict_memory.py
BATCH = 256
MIB = 1 << 20
RESULT_PREFIX = "RESULT "
FULL = {"tiles": 48, "tile": 512, "huge": 8192}
QUICK = {"tiles": 12, "tile": 256, "huge": 2048}


# --------------------------------------------------------------------------- helpers


def _hwm() -> int:
    """Peak RSS (``VmHWM``) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> int:
    """Reset this process's peak RSS to its current RSS; return the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _hwm()


# --------------------------------------------------------------------------- children


def _generate(path: Path, size: int, seed: int) -> None:
    """A ``size x size x BANDS`` tiled GeoTIFF of seeded noise (the memory benchmark's inputs)."""
    from bench_predict_memory import _generate as generate

    generate(path, size, BANDS, seed)


def _child_prepare(cfg: dict[str, Any]) -> None:
    """Inputs and the model file."""
    import torch

    import georaster_cnn as gc
    from georaster_cnn.io.classmap import default_colors

    work = Path(cfg["workdir"])
    tiles = work / f"tiles_{cfg['tiles']}x{cfg['tile']}"
    tiles.mkdir(parents=True, exist_ok=True)
    for i in range(cfg["tiles"]):
        path = tiles / f"tile_{i:03d}.tif"
        if not path.exists():
            _generate(path, cfg["tile"], seed=i)
    huge = work / f"huge_{cfg['huge']}.tif"
    if not huge.exists():
        _generate(huge, cfg["huge"], seed=1000)
    model_path = work / "model.safetensors"
    if not model_path.exists():
        torch.manual_seed(0)
        module = gc.build_model(
            "cnn", in_channels=BANDS, n_classes=len(CLASS_NAMES), patch_size=PATCH, widths=WIDTHS
        ).eval()
        sample = gc.open_raster(tiles / "tile_000.tif")
        stats = gc.compute_stats(sample)
        model = gc.GeoModel(
            module=module, arch="cnn", hparams={"widths": WIDTHS},
            band_names=tuple(str(b) for b in sample["band"].values),
            class_names=CLASS_NAMES, class_colors=default_colors(len(CLASS_NAMES)),
            stats=stats, patch_size=PATCH, min_valid=0.5, source_dtype="float32",
            provenance={"data": ["bench_cluster noise"], "epochs": 0},
        )  # fmt: skip
        gc.save_model(model, model_path)


def _task_bytes(pred: Any) -> int:
    """Bytes of one prediction task pickled as the scheduler sends it to a worker."""
    import pickle

    graph = pred["probability"].data.__dask_graph__()
    for name, layer in graph.layers.items():
        if name.startswith("predict-"):
            key = next(iter(layer.get_output_keys()))
            return len(pickle.dumps(layer[key], protocol=5))
    raise RuntimeError("no prediction layer in the graph")


def _cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _warm_worker() -> None:
    """Import what a prediction task needs (torch, the library) before the clock starts."""
    import georaster_cnn.model._inference
    import georaster_cnn.prediction.blockwise  # noqa: F401


def _forward_seconds(model: Any, windows: int) -> tuple[float, float]:
    """Wall and CPU seconds of the bare model forward for ``windows`` windows (batches of BATCH)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    module = model.module.eval()
    x = torch.randn(BATCH, BANDS, PATCH, PATCH)
    with torch.inference_mode():
        module(x[:8])  # warm-up
        start, cpu = time.perf_counter(), _cpu_seconds()
        for i in range(0, windows, BATCH):
            module(x[: min(BATCH, windows - i)])
        return time.perf_counter() - start, _cpu_seconds() - cpu


def _child_measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """One (job, scheduler): end-to-end time, forward time, bytes per task, peak memory."""
    from concurrent.futures import ThreadPoolExecutor

    import georaster_cnn as gc

    work = Path(cfg["workdir"])
    model = gc.load_model(work / "model.safetensors")
    if cfg["job"] == "tiles":
        inputs = sorted((work / f"tiles_{cfg['tiles']}x{cfg['tile']}").glob("tile_*.tif"))
    else:
        inputs = [work / f"huge_{cfg['huge']}.tif"]
    out = work / f"out_{cfg['job']}_{cfg['scheduler'].replace(':', '')}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    # Before: a classifier made with no client pickles with the model's bytes.
    before = _task_bytes(gc.predict(gc.open_raster(inputs[0]), model, check=False))
    # The forward time first, with no cluster running beside it.
    windows = 0
    for path in inputs:
        pred = gc.predict(gc.open_raster(path), model, check=False)
        windows += int(pred.sizes["y"] * pred.sizes["x"])
    forward, forward_cpu = _forward_seconds(model, windows)

    def one(path: Path) -> None:
        pred = gc.predict(gc.open_raster(path), model, check=False)
        gc.write_prediction(pred, out / path.name, resume=False)

    worker_base: dict[str, int] = {}
    worker_cpu: dict[str, float] = {}
    start = time.perf_counter()
    with gc.use_scheduler(cfg["scheduler"]) as session:
        client = session.client
        if client is not None:
            client.wait_for_workers(1, timeout=120)
            client.run(_warm_worker)
            worker_base = client.run(_reset_hwm)
            worker_cpu = client.run(_cpu_seconds)
        started = time.perf_counter() - start
        client_base = _reset_hwm()
        start, cpu = time.perf_counter(), _cpu_seconds()
        with ThreadPoolExecutor(max_workers=cfg["tiles_in_flight"]) as pool:
            list(pool.map(one, inputs))
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        client_peak = _hwm()
        if client is not None:
            worker_peak = client.run(_hwm)
            cpu += sum(client.run(_cpu_seconds)[w] - worker_cpu[w] for w in worker_cpu)
        else:
            worker_peak = {}
        after = _task_bytes(gc.predict(gc.open_raster(inputs[0]), model, check=False))
    return {
        "job": cfg["job"],
        "scheduler": cfg["scheduler"],
        "inputs": len(inputs),
        "windows": windows,
        "seconds": seconds,
        "cpu": cpu,
        "start": started,
        "forward": forward,
        "forward_cpu": forward_cpu,
        "bytes_before": before if client is not None else 0,
        "bytes_after": after if client is not None else 0,
        "client_base": client_base,
        "client_peak": client_peak,
        "worker_base": sorted(worker_base.values()),
        "worker_peak": sorted(worker_peak.values()),
    }


def _child(args: argparse.Namespace) -> None:
    cfg = json.loads(args.child)
    if cfg["what"] == "prepare":
        _child_prepare(cfg)
        return
    print(RESULT_PREFIX + json.dumps(_child_measure(cfg)), flush=True)


# --------------------------------------------------------------------------- parent


def _run_child(cfg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"child failed: {cfg}")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX) :]))
    return None


def _mib(n: int) -> str:
    return f"{n / MIB:.0f}"


def _table(rows: list[dict[str, Any]], sizes: dict[str, int]) -> str:
    head = (
        "| job | scheduler | windows | start s | wall s | CPU s | forward wall s | forward CPU s "
        "| CPU ratio | bytes/task before → after | client peak MiB | worker peaks MiB |"
    )
    lines = [head, "|" + "---|" * 12]
    names = {
        "tiles": f"{sizes['tiles']} x {sizes['tile']}²",
        "huge": f"1 x {sizes['huge']}²",
    }
    for r in rows:
        moved = (
            f"{r['bytes_before']:,} → {r['bytes_after']:,}"
            if r["bytes_before"]
            else "— (in process)"
        )
        workers = ", ".join(_mib(w) for w in r["worker_peak"]) or "—"
        lines.append(
            f"| {names[r['job']]} | {r['scheduler']} | {r['windows']:,} | {r['start']:.1f} "
            f"| {r['seconds']:.1f} | {r['cpu']:.1f} | {r['forward']:.1f} | {r['forward_cpu']:.1f} "
            f"| {r['cpu'] / r['forward_cpu']:.2f} | {moved} "
            f"| {_mib(r['client_peak'])} | {workers} |"
        )
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 tiles of 256², one 2048²")
    parser.add_argument("--schedulers", default="threads,local:2", help="comma-separated")
    parser.add_argument("--jobs", default="tiles,huge", help="tiles, huge or both")
    parser.add_argument("--tiles-in-flight", type=int, default=4, help="tiles written at once")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args)
        return
    sizes = dict(QUICK if args.quick else FULL)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    work.mkdir(parents=True, exist_ok=True)
    base = {"workdir": str(work), **sizes, "tiles_in_flight": args.tiles_in_flight}
    load_before = _load()
    try:
        t = time.perf_counter()
        _run_child({**base, "what": "prepare"}, timeout=1800)
        print(f"inputs ready in {work} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        rows = []
        for job in args.jobs.split(","):
            for sched in args.schedulers.split(","):
                cfg = {**base, "what": "measure", "job": job, "scheduler": sched}
                r = _run_child(cfg, timeout=3600)
                if r is not None:
                    rows.append(r)
                    print(
                        f"{job} {sched}: {r['seconds']:.1f} s (forward {r['forward']:.1f} s)",
                        file=sys.stderr,
                    )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nbench_cluster ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPU(s), "
        f"library {_git_revision()}, stride {PATCH}, SmallCNN widths {WIDTHS}, "
        f"{args.tiles_in_flight} tiles in flight; load average {load_before} before, "
        f"{_load()} after\n"
    )
    print(_table(rows, sizes))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
