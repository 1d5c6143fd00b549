#!/usr/bin/env python
"""Training at scale: flat memory when windows outgrow the budget, and streaming throughput.

Two window stores are built (``georaster_cnn.build_window_store``) from seeded 4-band
rasters labelled everywhere (two textures): one whose windows are about 1x the memory
budget (``--memory``, 16 MiB) and one of about 8x. Each measurement runs
``georaster_cnn.train(..., store=...)`` in a fresh process and reports its peak RSS
(``getrusage``) and its training throughput (training windows per second of the epochs
after the first, from ``on_epoch`` timestamps):

* **memory**: the 8x store streamed within the budget against the 1x store (held in
  memory, as below the budget): peak RSS within ``FLAT_TOLERANCE`` (1.3x);
* **throughput**: the 8x store streamed from a local folder, and from the same folder
  through the loopback HTTP server of the tests (``tests/loopback_http.py``, its own
  process), against the same windows in memory (budget 4 GiB): at least
  ``SPEED_RATIO`` (0.8) of the in-memory windows/s.

Every measurement runs ``--repeat`` times (the machine is shared: the best run counts,
the others are printed). Results go to ``benchmarks/results/train_scale.txt``.

Run ``python benchmarks/bench_train_scale.py`` (``--help`` for the options). The parent
process uses the standard library only (a child's ``ru_maxrss`` starts at its parent's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # loopback_http: the tests' HTTP server

FLAT_TOLERANCE = 1.3
SPEED_RATIO = 0.8
RESULT_PREFIX = "RESULT "
PATCH, STRIDE, BANDS = 32, 8, 4
WINDOW_OPTIONS = {"patch_size": PATCH, "stride": STRIDE, "val_block": 128, "val_fraction": 0.1}
TRAIN_OPTIONS = {"hparams": {"widths": [8, 16]}, "batch_size": 64, "device": "cpu", "seed": 0}


# --------------------------------------------------------------------------- children


def _scene(folder: Path, side: int) -> tuple[Path, Path]:
    """A ``side`` x ``side`` 4-band raster: left half white noise, right half smoothed."""
    import numpy as np
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(side)
    vals = rng.standard_normal((BANDS, side, side)).astype("float32")
    half = side // 2
    k = np.ones(5, "float32") / 5
    smooth = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 2, vals[:, :, half:])
    vals[:, :, half:] = smooth * 2.2
    labels = np.zeros((side, side), "uint8")
    labels[:, half:] = 1
    profile = {
        "driver": "GTiff", "width": side, "height": side, "crs": "EPSG:32633",
        "transform": Affine(10, 0, 500000, 0, -10, 6000000), "tiled": True,
        "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip
    data, lab = folder / f"scene_{side}.tif", folder / f"labels_{side}.tif"
    with rasterio.open(data, "w", count=BANDS, dtype="float32", **profile) as dst:
        dst.write(vals)
    with rasterio.open(lab, "w", count=1, dtype="uint8", nodata=255, **profile) as dst:
        dst.write(labels[None])
    return data, lab


def child_prepare(folder: Path, side: int) -> dict[str, Any]:
    import georaster_cnn as gc

    data, lab = _scene(folder, side)
    started = time.perf_counter()
    store = gc.build_window_store(
        gc.open_raster(data), gc.open_labels(lab), folder / f"windows_{side}.zarr",
        **WINDOW_OPTIONS,
    )  # fmt: skip
    return {
        "side": side,
        "windows": len(store),
        "bytes": len(store) * store.window_bytes,
        "build_s": round(time.perf_counter() - started, 2),
    }


def child_train(folder: Path, side: int, store: str, memory: int, epochs: int) -> dict[str, Any]:
    import georaster_cnn as gc

    data = gc.open_raster(folder / f"scene_{side}.tif")
    labels = gc.open_labels(folder / f"labels_{side}.tif")
    stamps: list[float] = []
    started = time.perf_counter()
    model = gc.train(
        data, labels, store=store, memory=memory, epochs=epochs, patience=0,
        allow_remote=store.startswith("http"), on_epoch=lambda e, n, m: stamps.append(time.perf_counter()),
        **WINDOW_OPTIONS, **TRAIN_OPTIONS,
    )  # fmt: skip
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    n_train = model.provenance["n_train"]
    return {
        "mode": "streamed" if "streamed" in model.provenance else "in memory",
        "windows_per_s": round(n_train / (sum(steps) / len(steps)), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "timing": model.provenance["timing"],
        "n_train": n_train,
    }


# --------------------------------------------------------------------------- parent


def _run(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env
    )
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX) :]))
    raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")


def _best(runs: list[dict[str, Any]], key: str, high: bool) -> dict[str, Any]:
    return (max if high else min)(runs, key=lambda r: r[key])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--memory", type=int, default=16, help="memory budget, MiB [16]")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (>= 2) [2]")
    p.add_argument("--repeat", type=int, default=2, help="runs per measurement [2]")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=HERE / "results" / "train_scale.txt")
    a = p.parse_args(argv)
    if a.child:
        kind, folder, *rest = a.child
        if kind == "prepare":
            res = child_prepare(Path(folder), int(rest[0]))
        else:
            res = child_train(Path(folder), int(rest[0]), rest[1], int(rest[2]), int(rest[3]))
        print(RESULT_PREFIX + json.dumps(res), flush=True)
        return 0
    from loopback_http import serve

    # window bytes ~ budget x factor: 16 KiB windows, ~0.8 of the grid's windows kept
    sides = {f: int((a.memory * 2**20 * f / 16384 / 0.78) ** 0.5 * STRIDE) for f in (1, 8)}
    lines = [
        f"bench_train_scale.py  {time.strftime('%Y-%m-%d %H:%M:%S')}  budget {a.memory} MiB, "
        f"epochs {a.epochs}, repeat {a.repeat}, patch {PATCH}, stride {STRIDE}, {BANDS} bands, "
        f"widths [8, 16], batch 64; os.cpu_count() {os.cpu_count()} (shared machine)"
    ]
    with tempfile.TemporaryDirectory(prefix="bench_train_scale_") as tmp:
        folder = Path(tmp)
        built = {f: _run("prepare", tmp, str(s)) for f, s in sides.items()}
        for f, b in built.items():
            lines.append(
                f"store {f}x: {b['side']}^2 px, {b['windows']:,} windows, "
                f"{b['bytes'] / 2**20:.0f} MiB ({b['bytes'] / (a.memory * 2**20):.1f}x budget), "
                f"built in {b['build_s']} s"
            )
        s1, s8 = str(sides[1]), str(sides[8])
        local = lambda f: str(folder / f"windows_{sides[f]}.zarr")  # noqa: E731
        print("\n".join(lines), flush=True)
        runs: dict[str, list[dict[str, Any]]] = {}

        def measure(name: str, side: str, store: str, memory: str) -> None:
            r = _run("train", tmp, side, store, memory, str(a.epochs))
            runs.setdefault(name, []).append(r)
            lines.append(
                f"{name:14s} {r['mode']:9s} peak RSS {r['peak_rss_mib']:8.1f} MiB  "
                f"{r['windows_per_s']:8.1f} windows/s  wall {r['wall_s']:6.1f} s  {r['timing']}"
            )
            print(lines[-1], flush=True)  # a long run: what is measured shows as it comes

        with serve(folder) as served:
            url = f"{served.url}/windows_{s8}.zarr"
            for _ in range(a.repeat):  # interleaved: a busy spell hits every kind alike
                measure("1x, budget", s1, local(1), str(a.memory))
                measure("8x, budget", s8, local(8), str(a.memory))
                measure("8x, in memory", s8, local(8), "4096")
                measure("8x, HTTP", s8, url, str(a.memory))
    rss1 = _best(runs["1x, budget"], "peak_rss_mib", False)["peak_rss_mib"]
    rss8 = _best(runs["8x, budget"], "peak_rss_mib", False)["peak_rss_mib"]
    mem = _best(runs["8x, in memory"], "windows_per_s", True)["windows_per_s"]
    ok = rss8 <= FLAT_TOLERANCE * rss1
    lines.append(f"memory: peak RSS 8x / 1x = {rss8 / rss1:.2f} (<= {FLAT_TOLERANCE}): "
                 + ("PASS" if ok else "FAIL"))  # fmt: skip
    for name in ("8x, budget", "8x, HTTP"):
        speed = _best(runs[name], "windows_per_s", True)["windows_per_s"]
        good = speed >= SPEED_RATIO * mem
        ok &= good
        where = "local folder" if name == "8x, budget" else "loopback HTTP"
        lines.append(f"throughput streamed ({where}) / in memory = {speed / mem:.2f} "
                     f"(>= {SPEED_RATIO}): " + ("PASS" if good else "FAIL"))  # fmt: skip
    text = "\n".join(lines) + "\n"
    print("\n".join(lines[-3:]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
