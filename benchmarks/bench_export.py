"""onnxruntime against torch for the exported chip and map models, alone and end to end.

Does an ONNX engine for ``predict`` pay on this CPU? Three measurements with the bundled
sample model (``cnn_dense``, 3 bands, 64-pixel windows), each repeated ``--repeat``
times (median, min and max printed):

1. **chip model**: ``--chips`` windows, ``--batch`` at a time: torch (the library's
   :class:`Classifier` on normalised windows) against ``NAME.onnx`` on raw windows.
2. **map model**: one block of ``--block`` pixels plus its halo: torch
   (``classify_block_dense``) against ``NAME_dense.onnx`` (its cell-grid output).
3. **end to end**: ``predict(...)`` computed on a ``--size``² raster (the sample scene
   tiled, in memory) at ``--stride`` (dense) and at stride 64 per window
   (``dense=False``), with ``engine="torch"`` and ``engine="onnxruntime"`` (the same
   blockwise path; the classes must be identical). The onnxruntime engine's one-off
   graph building (first call in a process) is reported apart.

Usage::

    python benchmarks/bench_export.py                  # about 2 minutes on 2 cores
    python benchmarks/bench_export.py --repeat 5 --size 2048
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import onnxruntime as ort
import torch
import xarray as xr

import georaster_cnn as gc
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.model._dense import classify_block_dense
from georaster_cnn.model._inference import Classifier
from georaster_cnn.stats import normalize_bands

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _row(label: str, torch_t: list[float], onnx_t: list[float], unit: str = "s") -> None:
    mt, mo = statistics.median(torch_t), statistics.median(onnx_t)
    print(
        f"{label:<34} torch {mt:8.3f} {unit} [{min(torch_t):.3f}-{max(torch_t):.3f}]   "
        f"onnxruntime {mo:8.3f} {unit} [{min(onnx_t):.3f}-{max(onnx_t):.3f}]   "
        f"onnxruntime/torch {mo / mt:5.2f}"
    )


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _iter_batches_raw(raw: np.ndarray, batch: int):  # type: ignore[no-untyped-def]
    for i in range(0, len(raw), batch):
        yield raw[i : i + batch]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chips", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--stride", type=int, default=4)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {ort.__version__}; repeat {args.repeat}: median [min-max]"
    )
    model = gc.load_model(ROOT / "sample_data" / "model.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        gc.export_model(model, tmp, targets="onnx", stride=args.stride, name="m")
        chip_s, dense_s = _session(Path(tmp) / "m.onnx"), _session(Path(tmp) / "m_dense.onnx")
    rng = np.random.default_rng(0)
    scene = gc.open_raster(ROOT / "sample_data" / "scene.tif").load()
    b, p = model.n_bands, model.patch_size

    # 1. chip model
    idx = rng.integers(0, 512 - p, size=(args.chips, 2))
    raw = np.stack([scene.values[:, r : r + p, c : c + p] for r, c in idx]).astype(np.float32)
    norm = normalize_bands(raw.transpose(1, 0, 2, 3), model.stats).transpose(1, 0, 2, 3)
    norm = np.ascontiguousarray(np.nan_to_num(norm, nan=0.0))
    classify = Classifier(model, "cpu")
    t_torch, ref = _timed(
        lambda: np.concatenate([classify(x) for x in _iter_batches_raw(norm, args.batch)]),
        args.repeat,
    )
    t_onnx, got = _timed(
        lambda: np.concatenate(
            [chip_s.run(None, {"raw": x})[0] for x in _iter_batches_raw(raw, args.batch)]
        ),
        args.repeat,
    )
    assert np.array_equal(ref.argmax(1), got.argmax(1)), "chip classes differ"
    _row(f"chip model, {args.chips} windows", t_torch, t_onnx)

    # 2. map model on one block (+ halo)
    grid = PatchGrid(args.block, args.block, patch=p, stride=args.stride)
    halo = grid.halo_before
    tiled = np.tile(scene.values, (1, 4, 4))[:, : args.block + 2 * halo, : args.block + 2 * halo]
    block = np.ascontiguousarray(tiled.astype(np.float32))
    nblock = normalize_bands(block, model.stats)
    n = args.block // args.stride
    kw = {
        "classifier": classify,
        "patch": p,
        "stride": args.stride,
        "halo": halo,
        "min_valid": model.min_valid,
        "n_classes": model.n_classes,
    }
    t_torch, ref = _timed(lambda: classify_block_dense(nblock, **kw), args.repeat)
    x = block[None, :, : args.stride * (n - 1) + p, : args.stride * (n - 1) + p]
    t_onnx, got = _timed(lambda: dense_s.run(None, {"raw": x})[0][0], args.repeat)
    assert np.array_equal(ref.argmax(0), got.argmax(0))  # NAME_dense.onnx: the cell grid
    _row(f"map model, one {args.block}² block", t_torch, t_onnx)

    # 3. end to end: predict with each engine (the onnxruntime graphs built once, first)
    size = args.size
    big = np.tile(scene.values, (1, size // 512 + 1, size // 512 + 1))[:, :size, :size]
    data = xr.DataArray(
        da.from_array(big.astype(np.float32), chunks=(b, 1024, 1024)), dims=("band", "y", "x")
    ).rio.write_crs("EPSG:32633")
    for stride, dense in ((args.stride, True), (64, False)):

        def run(engine: str, s: int = stride, d: bool = dense) -> np.ndarray:
            pred = gc.predict(
                data, model, stride=s, dense=d, device="cpu", check=False, engine=engine
            )
            return np.asarray(pred["class"].values)

        t0 = time.perf_counter()
        run("onnxruntime")  # builds and checks the graphs once per process
        build = time.perf_counter() - t0
        t_torch, ref = _timed(lambda: run("torch"), args.repeat)
        t_onnx, got = _timed(lambda: run("onnxruntime"), args.repeat)
        assert np.array_equal(ref, got), f"end-to-end classes differ (stride {stride})"
        how = "dense" if dense else "per window"
        _row(f"predict {size}², stride {stride} ({how})", t_torch, t_onnx)
        print(f"{'':<34} (first onnxruntime call, graphs built: {build:.2f} s)")


if __name__ == "__main__":
    main()
