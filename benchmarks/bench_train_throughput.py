#!/usr/bin/env python
"""Training throughput of the whole ``train`` pipeline against a bare PyTorch loop.

The pipeline is ``georaster_cnn.train`` end to end, from files: ``open_raster`` /
``open_labels``, per-channel statistics and window extraction with Dask, then every
epoch the shuffled minibatch loop with augmentation (flips, 90-degree rotations),
batch-norm recalibration and validation. Its throughput is the training windows
it processed (provenance ``n_train`` x ``epochs_run``) per second of wall time.

The bare loop trains the same architecture (``build_model("cnn", ...)``, or ``--arch cnn_dense``, library
defaults) on the same number of random in-memory float32 chips, with the same batch
size, Adam and cross-entropy, for the same number of epochs: a plain ``for`` loop over
shuffled minibatches, no augmentation, no validation. Its throughput is chips x epochs
per second of the epochs.

The check: the pipeline must not be the bottleneck, **ratio pipeline / bare >= 0.8**.
The exit status is 1 when it fails, 2 when no round was clean: a round counts only if
other processes used at most ``--max-others`` CPU cores (default 0.05) in every epoch of
either loop, measured from ``/proc/stat`` (the machine's busy time minus this process's).

By default the two alternate epoch by epoch: one bare epoch runs inside ``train()``'s
``progress`` callback after each of its epochs, and the callback's time is taken off the
pipeline's, so both see the same competition for the cores on a shared machine
(``--sequential``: the bare loop after ``train()``). ``--repeat`` runs several rounds.

Inputs: a seeded synthetic scene written by ``sample_data/make_sample.py`` (3 float32
bands, DEFLATE GeoTIFF with nodata holes, 4 classes, aligned uint8 label raster) of
``--size`` pixels a side, or your own pair with ``--scene`` and ``--labels``.

The breakdown of the pipeline's time comes from wrapping a few functions of the library
(``georaster_cnn.training.windows._read_raster``: statistics and windows of a raster in one pass;
``georaster_cnn.training.trainer.fit``; ``georaster_cnn.training._fit``'s ``_recalibrate_bn``, ``_evaluate``,
``_augment``) with timers; epochs end at the ``progress`` callback. The wrappers cost
microseconds per call. If the library renames one, its column shows "n/a".

Diagnosis options change what ``train()`` runs through the same wrappers, to measure a
proposed change without editing the library: ``--recal-batches``, ``--val-batch``,
``--no-augment`` (and ``--bare-augment`` for the bare loop).

Run ``python benchmarks/bench_train_throughput.py --quick`` (512 x 512, 2 epochs) or
without ``--quick`` (1024 x 1024, 3 epochs); ``--help`` lists the options. CPU only.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

import georaster_cnn as gc
from georaster_cnn.training import _fit as _fit_mod
from georaster_cnn.training import trainer as _train_mod
from georaster_cnn.training import windows as _windows_mod

ROOT = Path(__file__).resolve().parent.parent
PATCH = 64
#: Architecture of both loops (``--arch``).
ARCH = "cnn"
SIZE, QUICK_SIZE = 1024, 512
EPOCHS, QUICK_EPOCHS = 3, 2
STRIDE = 16
BATCH = 64
#: The pipeline must reach this fraction of the bare loop's throughput.
THRESHOLD = 0.8
#: Rounds where other processes used more CPU cores than this in an epoch are left out.
MAX_OTHERS = 0.05
#: Functions whose time the breakdown reports, by the module that calls them (through its
#: globals, so replacing the global wraps every call).
TIMED: dict[str, ModuleType] = {
    "_read_raster": _windows_mod,
    "fit": _train_mod,
    "_recalibrate_bn": _fit_mod,
    "_evaluate": _fit_mod,
    "_augment": _fit_mod,
}
#: Further functions that diagnosis options may replace (their timers are not reported).
REPLACEABLE: dict[str, ModuleType] = {"_bn_batches": _fit_mod}
LEGEND = """\
chips/s: training windows x epochs / seconds. pipeline: train() from files to the returned
model (open, stats, extraction, epochs with augmentation, BN recalibration, validation, best
weights); bare: only the epochs of a plain loop on random in-memory tensors (model and data
creation not timed). CPU s: process CPU time of the same span (all threads). Paired: one bare
epoch runs after each train() epoch (in its progress callback, time taken off train()'s).
loop: the minibatch loop with augmentation (epoch minus BN recalibration and validation);
_augment: time inside its calls; others: mean CPU cores used by other processes meanwhile
(/proc/stat busy time minus this process's CPU time, per second)."""


# --------------------------------------------------------------------------- helpers


def _git_revision() -> str:
    """Short commit of the checkout, ``+dirty`` when ``georaster_cnn/`` has local changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "georaster_cnn"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have used so far, summed over CPUs (``/proc/stat``; Linux)."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall time, this process's CPU time (all threads) and the machine's busy CPU time."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        self.busy = _machine_busy_seconds()


def _others(spans: Sequence[tuple[Clock, Clock]]) -> float | None:
    """Mean CPU cores used by *other* processes over the spans (``None``: unknown).

    Machine busy time minus this process's CPU time, per second of wall time: 0 on an
    otherwise idle machine, 1 when another process kept one core busy meanwhile.
    """
    wall = other = 0.0
    for a, b in spans:
        if a.busy is None or b.busy is None:
            return None
        wall += b.wall - a.wall
        other += (b.busy - a.busy) - (b.cpu - a.cpu)
    return max(0.0, other / wall) if wall > 0 else None


def _make_sample() -> ModuleType:
    """``sample_data/make_sample.py`` as a module (it is a script, not a package)."""
    path = ROOT / "sample_data" / "make_sample.py"
    spec = importlib.util.spec_from_file_location("make_sample", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_sample"] = module  # dataclasses and pickling look the module up
    spec.loader.exec_module(module)
    return module


def _prepare_inputs(workdir: Path, size: int, seed: int) -> tuple[Path, Path]:
    """The synthetic scene and labels of ``size`` pixels (reused when already in ``workdir``)."""
    out = workdir / f"scene_{size}_seed{seed}"
    scene, labels = out / "scene.tif", out / "labels.tif"
    if scene.exists() and labels.exists():
        print(f"  inputs in {out} exist, reused", flush=True)
        return scene, labels
    t0 = time.perf_counter()
    _make_sample().generate(out, size=size, seed=seed)
    print(f"  wrote {size} x {size} scene in {time.perf_counter() - t0:.1f} s", flush=True)
    return scene, labels


class PhaseTimer:
    """Time calls of library functions by wrapping them in the modules that call them.

    The library calls them through its module globals, so replacing the globals is
    enough; :meth:`restore` puts the originals back.
    """

    def __init__(
        self, names: dict[str, ModuleType], overrides: dict[str, Callable[..., Any]]
    ) -> None:
        self.calls: dict[str, list[tuple[float, float]]] = {}
        self._saved: dict[str, tuple[ModuleType, Callable[..., Any]]] = {}
        for name, module in names.items():
            original = getattr(module, name, None)
            if original is None:
                continue
            self._saved[name] = (module, original)
            target = overrides.get(name, original)
            setattr(module, name, self._wrap(name, target))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        calls = self.calls.setdefault(name, [])

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((t0, time.perf_counter()))

        return timed

    def restore(self) -> None:
        for name, (module, fn) in self._saved.items():
            setattr(module, name, fn)

    def total(self, name: str, since: float = -1.0, until: float = float("inf")) -> float | None:
        """Seconds spent in ``name`` by calls that started in ``[since, until)``."""
        if name not in self.calls:
            return None
        return sum(b - a for a, b in self.calls[name] if since <= a < until)


def _warm_up(bands: int, n_classes: int, seed: int) -> None:
    """A few training steps and inference batches: oneDNN kernels and allocator warm for both."""
    torch.manual_seed(seed)
    module = gc.build_model(ARCH, in_channels=bands, n_classes=n_classes, patch_size=PATCH)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(BATCH, bands, PATCH, PATCH)
    y = torch.randint(0, n_classes, (BATCH,))
    module.train()
    for _ in range(3):
        loss = loss_fn(module(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        module(x)
    module.eval()
    with torch.inference_mode():
        module(torch.randn(4 * BATCH, bands, PATCH, PATCH))


# --------------------------------------------------------------------------- measurements


class BareLoop:
    """The bare loop, one epoch per call, so its epochs can alternate with ``train()``'s.

    The same model (``build_model("cnn", ...)``, library defaults), batch size, Adam and
    cross-entropy as ``train()``, on random in-memory float32 chips: shuffled minibatches,
    no augmentation (unless ``augment``, a diagnosis: the library's ``_augment`` on every
    batch), no validation. Creating the data and the model is not timed.
    """

    def __init__(self, seed: int, *, augment: bool = False) -> None:
        self.seed, self.augment = seed, augment
        self.epochs: list[dict[str, Any]] = []
        self.n_train = 0

    def setup(self, n_train: int, bands: int, n_classes: int) -> None:
        self.n_train = n_train
        self.gen = torch.Generator().manual_seed(self.seed)
        self.x = torch.randn(n_train, bands, PATCH, PATCH, generator=self.gen)
        self.y = torch.randint(0, n_classes, (n_train,), generator=self.gen)
        torch.manual_seed(self.seed)
        self.module = gc.build_model(ARCH, in_channels=bands, n_classes=n_classes, patch_size=PATCH)
        self.opt = torch.optim.Adam(self.module.parameters(), lr=1e-3)
        self.loss_fn = nn.CrossEntropyLoss()

    def run_epoch(self) -> None:
        module, opt, loss_fn, x, y = self.module, self.opt, self.loss_fn, self.x, self.y
        module.train()
        start = Clock()
        order = torch.randperm(self.n_train, generator=self.gen)
        for i in range(0, self.n_train, BATCH):
            idx = order[i : i + BATCH]
            if len(idx) < 2:
                continue  # as train(): batch norm needs two samples
            xb = _fit_mod._augment(x[idx], self.gen) if self.augment else x[idx]
            loss = loss_fn(module(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        end = Clock()
        self.epochs.append({
            "seconds": end.wall - start.wall,
            "cpu_seconds": end.cpu - start.cpu,
            "others": _others([(start, end)]),
        })  # fmt: skip

    def result(self) -> dict[str, Any]:
        seconds = sum(e["seconds"] for e in self.epochs)
        return {
            "kind": "bare",
            "n_train": self.n_train,
            "epochs_run": len(self.epochs),
            "augment": self.augment,
            "seconds": seconds,
            "cpu_seconds": sum(e["cpu_seconds"] for e in self.epochs),
            "chips_per_s": self.n_train * len(self.epochs) / seconds,
            "epochs": self.epochs,
        }


def run_round(scene: Path, labels: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``train()`` end to end from files, and the bare loop for as many chips and epochs.

    Paired (default): one bare epoch runs inside ``train()``'s ``progress`` callback after
    each of its epochs, and the callback's time is taken off the pipeline's, so both see
    the same competition for the cores over time. ``--sequential``: the bare loop runs
    after ``train()`` returns.
    """
    bare = BareLoop(args.seed, augment=args.bare_augment)
    sizes: dict[str, int] = {}
    original_fit = _train_mod.fit

    def fit_capturing_sizes(*a: Any, **kw: Any) -> Any:
        try:  # fit(x, y, val, *, spec, ...); if that changes: --sequential
            x, val = a[0], a[2]
            sizes.update(
                n_train=int((~val).sum()), bands=x.shape[1], n_classes=kw["spec"].n_classes
            )
        except (IndexError, KeyError, TypeError, AttributeError):
            sizes.clear()
        return original_fit(*a, **kw)

    overrides: dict[str, Callable[..., Any]] = {"fit": fit_capturing_sizes}
    if args.recal_batches is not None:
        overrides["_bn_batches"] = lambda n_batches: args.recal_batches
    if args.val_batch is not None:
        original_evaluate = _fit_mod._evaluate

        def evaluate_with_batch(*a: Any) -> Any:
            # _evaluate(module, x, y, dev, loss_fn, batch)
            return original_evaluate(*a[:5], args.val_batch)

        overrides["_evaluate"] = evaluate_with_batch
    ends: list[Clock] = []  # train()'s epochs end where the callback starts
    resumes: list[Clock] = []  # ... and the next one starts where it returns

    def progress(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        ends.append(Clock())
        if not args.sequential and sizes:
            if not bare.n_train:
                bare.setup(**sizes)
            bare.run_epoch()
        resumes.append(Clock())

    timer = PhaseTimer({**TIMED, **REPLACEABLE}, overrides)
    try:
        start = Clock()
        data = gc.open_raster(scene)
        labs = gc.open_labels(labels)
        model = gc.train(
            data,
            labs,
            arch=ARCH,
            epochs=args.epochs,
            batch_size=BATCH,
            stride=args.stride,
            patch_size=PATCH,
            device="cpu",
            seed=args.seed,
            augment=not args.no_augment,
            patience=0,
            on_epoch=progress,
        )
        stop = Clock()
    finally:
        timer.restore()
    prov = model.provenance
    n_train, epochs_run = int(prov["n_train"]), int(prov["epochs_run"])
    if not bare.n_train:
        bare.setup(n_train, data.sizes["band"], len(model.class_names))
    while len(bare.epochs) < epochs_run:
        bare.run_epoch()
    # train()'s own spans: start -> end of epoch 1 -> (callback) -> resume -> ... -> stop
    spans = list(zip([start, *resumes], [*ends, stop], strict=True))
    seconds = sum(b.wall - a.wall for a, b in spans)
    fit = timer.calls.get("fit")
    fit_start = fit[0][0] if fit else start.wall
    epochs = []
    for k, ((a_clock, _), b_clock) in enumerate(zip(spans, ends, strict=False), start=1):
        a, b = (fit_start if k == 1 else a_clock.wall), b_clock.wall
        recal = timer.total("_recalibrate_bn", a, b)
        val = timer.total("_evaluate", a, b)
        epochs.append({
            "epoch": k,
            "seconds": b - a,
            "recalibrate_bn": recal,
            "validation": val,
            "augment_calls": timer.total("_augment", a, b),
            "train_loop": (b - a) - (recal or 0.0) - (val or 0.0),
            "others": _others([(a_clock, b_clock)]),
        })  # fmt: skip
    pipe = {
        "kind": "pipeline",
        "n_train": n_train,
        "n_val": int(prov["n_val"]),
        "epochs_run": epochs_run,
        "seconds": seconds,
        "cpu_seconds": sum(b.cpu - a.cpu for a, b in spans),
        "others": _others(spans),
        "chips_per_s": n_train * epochs_run / seconds,
        "before_first_epoch": (fit_start - start.wall) if fit else None,
        "read_rasters": timer.total("_read_raster"),
        "after_last_epoch": spans[-1][1].wall - spans[-1][0].wall if resumes else None,
        "epochs": epochs,
        "final_metrics": prov.get("metrics"),
    }
    result = bare.result()
    if result["n_train"] != n_train:
        raise SystemExit(f"bare loop has {result['n_train']} chips but train() had {n_train}")
    others = [pipe["others"], *(e["others"] for e in epochs), *(e["others"] for e in bare.epochs)]
    known = [v for v in others if v is not None]
    return {
        "pipeline": pipe,
        "bare": result,
        "ratio": pipe["chips_per_s"] / result["chips_per_s"],
        "paired": not args.sequential and bool(sizes),
        # the most CPU other processes used in any epoch of either loop (cores)
        "others_max": max(known) if len(known) == len(others) else None,
    }


# --------------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def _mean(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else statistics.fmean(v or 0.0 for v in values)


def _format_round(r: dict[str, Any]) -> str:
    pipe, bare = r["pipeline"], r["bare"]
    header = f"{'':22}{'chips':>7} {'epochs':>7} {'seconds':>8} {'chips/s':>8} {'CPU s':>7}"
    lines = [header, "-" * len(header)]
    for name, row in (("pipeline (train())", pipe), ("bare PyTorch loop", bare)):
        lines.append(
            f"{name:22}{row['n_train']:>7,} {row['epochs_run']:>7} {row['seconds']:>8.1f} "
            f"{row['chips_per_s']:>8.1f} {row['cpu_seconds']:>7.1f}"
        )
    lines.append(
        f"ratio {r['ratio']:.2f}; {'paired epochs' if r['paired'] else 'sequential'}; other "
        f"processes used up to {_fmt(r['others_max'], '.2f')} CPU cores in an epoch "
        f"({'clean' if r['clean'] else 'NOT clean'}: limit {r['max_others']:g})"
    )
    lines += [
        f"pipeline breakdown, seconds ({pipe['n_val']:,} validation windows):",
        f"  before first epoch {_fmt(pipe['before_first_epoch']):>6}  (statistics and "
        f"windows, one pass {_fmt(pipe['read_rasters'])}; the rest: opening, checks, "
        "normalisation, split)",
        f"  after last epoch   {_fmt(pipe['after_last_epoch'], '.2f'):>6}  (best weights, "
        "provenance)",
        f"  {'epoch':>5} {'total':>7} {'= loop':>7} {'+ BN recal':>10} {'+ valid.':>8}"
        f"  {'(_augment)':>10} {'others':>6} | {'bare':>6} {'others':>6} {'loop/bare':>9}",
    ]
    for e, b in zip(pipe["epochs"], bare["epochs"], strict=False):
        lines.append(
            f"  {e['epoch']:>5} {e['seconds']:>7.1f} {e['train_loop']:>7.1f} "
            f"{_fmt(e['recalibrate_bn']):>10} {_fmt(e['validation']):>8}  "
            f"{_fmt(e['augment_calls'], '.2f'):>10} {_fmt(e['others'], '.2f'):>6} | "
            f"{b['seconds']:>6.1f} {_fmt(b['others'], '.2f'):>6} "
            f"{e['train_loop'] / b['seconds']:>9.2f}"
        )
    ep = pipe["epochs"]
    share = [
        (name, _mean([e[key] for e in ep]))
        for name, key in (
            ("minibatch loop", "train_loop"),
            ("BN recalibration", "recalibrate_bn"),
            ("validation", "validation"),
        )
    ]
    per_epoch = _mean([e["seconds"] for e in ep]) or 1.0
    lines.append(
        "  share of an epoch: "
        + ", ".join(f"{name} {_fmt(v and 100 * v / per_epoch, '.0f')} %" for name, v in share)
    )
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Training throughput (chips/s) of georaster_cnn.train end to end from files "
            "against a bare PyTorch loop with the same model on in-memory tensors (CPU)."
        )
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"side of the generated scene in pixels (default {SIZE}, --quick {QUICK_SIZE})",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs of both loops (default {EPOCHS}, --quick {QUICK_EPOCHS})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SIZE} x {QUICK_SIZE} scene, {QUICK_EPOCHS} epochs",
    )
    p.add_argument(
        "--stride", type=int, default=STRIDE, help=f"training-window stride (default {STRIDE})"
    )
    p.add_argument("--scene", type=Path, default=None, help="use this raster instead")
    p.add_argument("--labels", type=Path, default=None, help="label raster of --scene")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for both loops (default: one per CPU)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of pipeline + bare, interleaved; the verdict uses the median ratio",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the scene, weights and shuffling")
    p.add_argument(
        "--arch",
        choices=["cnn", "cnn_dense"],
        default="cnn",
        help="architecture of both loops (default cnn)",
    )
    p.add_argument(
        "--max-others",
        type=float,
        default=MAX_OTHERS,
        help=(
            "a round counts only if other processes used at most this many CPU cores in every "
            f"epoch (default {MAX_OTHERS}; from /proc/stat)"
        ),
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run the bare loop after train() instead of one bare epoch after each of its epochs",
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="diagnosis: train(augment=False)",
    )
    p.add_argument(
        "--bare-augment",
        action="store_true",
        help="diagnosis: the bare loop also applies the library's _augment to every batch",
    )
    p.add_argument(
        "--recal-batches",
        type=int,
        default=None,
        help=(
            "diagnosis: recalibrate batch norm over N batches after each epoch (_bn_batches) "
            "instead of the library's choice; the verdict is then not the library's as shipped"
        ),
    )
    p.add_argument(
        "--val-batch",
        type=int,
        default=None,
        help="diagnosis: run train() with validation batches of N instead of what it passes",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the generated scene (default: a new temp dir)",
    )
    p.add_argument("--keep", action="store_true", help="keep the generated scene")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    args.size = args.size or (QUICK_SIZE if args.quick else SIZE)
    args.epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)
    if (args.scene is None) != (args.labels is None):
        p.error("--scene and --labels go together")
    if args.size < PATCH or args.epochs < 1 or args.stride < 1 or args.repeat < 1:
        p.error(f"size must be >= {PATCH}; epochs, stride and repeat >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    global ARCH
    args = _parse_args(argv)
    ARCH = args.arch
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    revision = _git_revision()
    made_workdir = args.workdir is None and args.scene is None
    workdir: Path | None = None
    if args.scene is not None:
        scene, labels = args.scene, args.labels
        what = f"{scene} + {labels}"
    else:
        workdir = (
            Path(tempfile.mkdtemp(prefix="bench_train_throughput_"))
            if args.workdir is None
            else args.workdir
        )
        workdir.mkdir(parents=True, exist_ok=True)
        what = f"synthetic {args.size} x {args.size} scene (make_sample.py, seed {args.seed})"
    diag = []
    if args.no_augment:
        diag.append("augment=False")
    if args.bare_augment:
        diag.append("bare loop with _augment")
    if args.recal_batches is not None:
        diag.append(f"BN recalibration over {args.recal_batches} batches")
    if args.val_batch is not None:
        diag.append(f"validation batch {args.val_batch}")
    print(
        f"georaster_cnn train() vs bare PyTorch loop: {what}, stride {args.stride}, "
        f"patch {PATCH}, batch {BATCH}, {args.epochs} epoch(s), torch threads {threads}, "
        f"{args.repeat} round(s)" + (f"; DIAGNOSIS: {', '.join(diag)}" if diag else "") + "\n"
        f"commit {revision}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU(s), "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}; "
        f"georaster_cnn from {Path(gc.__file__).parent}",
        flush=True,
    )
    rounds: list[dict[str, Any]] = []
    try:
        if workdir is not None:
            print("generating inputs ...", flush=True)
            scene, labels = _prepare_inputs(workdir, args.size, args.seed)
        _warm_up(gc.open_raster(scene).sizes["band"], 4, args.seed)
        for k in range(1, args.repeat + 1):
            print(f"round {k} ...", flush=True)
            r = run_round(scene, labels, args)
            others = r["others_max"]
            r["max_others"] = args.max_others
            r["clean"] = others is None or others <= args.max_others
            rounds.append({"round": k, **r})
            print(
                f"  pipeline {r['pipeline']['chips_per_s']:.1f} chips/s, bare "
                f"{r['bare']['chips_per_s']:.1f} chips/s, ratio {r['ratio']:.2f}; other "
                f"processes up to {_fmt(others, '.2f')} cores"
                + ("" if r["clean"] else " (not clean)"),
                flush=True,
            )
    finally:
        if workdir is not None and not args.keep:
            if made_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                shutil.rmtree(workdir / f"scene_{args.size}_seed{args.seed}", ignore_errors=True)
        elif workdir is not None:
            print(f"kept the generated scene in {workdir}")

    for r in rounds:
        print(f"\nround {r['round']}:")
        print(_format_round(r))
    print(LEGEND)
    clean = [r for r in rounds if r["clean"]]
    ratios = [r["ratio"] for r in (clean or rounds)]
    ratio = statistics.median(ratios)
    ok: bool | None = ratio >= THRESHOLD if clean else None
    spread = f" (rounds: {', '.join(f'{v:.2f}' for v in ratios)})" if len(ratios) > 1 else ""
    verdict = {True: "PASS", False: "FAIL", None: "INCONCLUSIVE"}[ok]
    print(
        f"{verdict}: pipeline / bare throughput {ratio:.2f}{spread}, threshold {THRESHOLD}, "
        f"{len(clean)} of {len(rounds)} round(s) clean"
        + (f"  [diagnosis run: {', '.join(diag)}]" if diag else "")
    )
    if len(clean) < len(rounds):
        print(
            f"note: other processes used more than {args.max_others:g} CPU cores during "
            f"{len(rounds) - len(clean)} round(s), left out of the verdict"
            + ("" if clean else " (none left: run again when the machine is quieter)")
        )
    if any(r["others_max"] is None for r in rounds):
        print("note: /proc/stat unreadable; competition from other processes not checked")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": sys.argv[1:],
                    "commit": revision,
                    "library": str(Path(gc.__file__).parent),
                    "date": time.strftime("%Y-%m-%d"),
                    "cpus": os.cpu_count(),
                    "torch_threads": threads,
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                    "input": what,
                    "threshold": THRESHOLD,
                    "ratio_median": ratio,
                    "pass": ok,
                    "verdict": verdict,
                    "rounds": rounds,
                },
                indent=2,
            )
            + "\n"
        )
    return {True: 0, False: 1, None: 2}[ok]


if __name__ == "__main__":
    sys.exit(main())
