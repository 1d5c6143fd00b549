"""The training loop shared by rasters and chips (:func:`fit`).

Flips and 90-degree rotations, class-weighted loss, batch-norm recalibration after
each epoch, early stopping on the validation loss, and the weights of the best epoch.
Mixed precision on CUDA.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from georaster_cnn.errors import TrainingError
from georaster_cnn.model._inference import resolve_device
from georaster_cnn.model.architectures import build_model
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.options import (
    check_batch_size,
    check_epochs,
    check_non_negative,
    check_patience,
)
from georaster_cnn.training._run import Best, Run
from georaster_cnn.training.checkpoint import Checkpoint
from georaster_cnn.training.store import StoreSamples
from georaster_cnn.training.streaming import StreamedWindows, stream_layout

__all__ = ["EpochFn", "FitOptions", "fit", "untrained"]

log = logging.getLogger(__name__)

EpochFn = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class FitOptions:
    """How to train: the optimiser, the loop and its stopping rule.

    Build with :meth:`checked`, which validates the values once for
    :func:`~georaster_cnn.train` and :func:`~georaster_cnn.train_chips` alike.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    device: str
    seed: int
    augment: bool
    patience: int | None
    on_epoch: EpochFn | None = None

    @classmethod
    def checked(
        cls,
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        device: str,
        seed: int,
        augment: bool,
        patience: int | None,
        on_epoch: EpochFn | None,
    ) -> FitOptions:
        """The options, checked (epochs, batch size, learning rate, patience)."""
        return cls(
            epochs=check_epochs(epochs),
            batch_size=check_batch_size(batch_size),
            learning_rate=check_non_negative("learning_rate", learning_rate),
            device=device,
            seed=seed,
            augment=augment,
            patience=check_patience(patience),
            on_epoch=on_epoch,
        )


def untrained(
    arch: str,
    hparams: dict[str, Any],
    *,
    in_channels: int,
    n_classes: int,
    patch_size: int,
    seed: int,
) -> nn.Module:
    """A new network of ``arch``, its initial weights set by ``seed`` alone.

    The training loop draws from torch's global generator too (dropout), seeded here:
    build it right before :func:`fit`, as :func:`~georaster_cnn.train` does, so that the
    weights depend on the seed only, not on what ran before.
    """
    torch.manual_seed(seed)
    return build_model(
        arch, in_channels=in_channels, n_classes=n_classes, patch_size=patch_size, **hparams
    )


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (the same for the whole batch)."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    if k:
        x = torch.rot90(x, k, dims=(2, 3))
    if int(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def _bn_batches(n_batches: int) -> int:
    """Batches of the batch-norm recalibration after an epoch of ``n_batches``.

    About an eighth of the epoch, at least 2 and at most 10: the statistics are averages
    over whole batches and spatial positions, so a few batches estimate them well
    (benchmarks/results/diag_bn_statistics.txt: 2 to 10 batches give the same validation
    loss within noise, 1 is noisier), while the pass stays a small share of an epoch
    (benchmarks/bench_train_throughput.py; at 50 batches it was 27 %).
    """
    return min(10, max(2, -(-n_batches // 8)))


def _recalibrate_bn(module: nn.Module, x: torch.Tensor, dev: torch.device, batch: int) -> None:
    """Re-estimate batch-norm running statistics as exact averages over ``x``.

    With few updates the exponential running averages are still far from the data's
    statistics, and the model in ``eval`` mode then predicts nonsense. ``x`` holds
    un-augmented training samples; the forward passes run with the epoch's final weights.
    (Accumulating the statistics during the last training batches instead costs nothing
    but mixes weights that still move: on a 512-px scene with 10 batches per epoch the
    validation accuracy after epoch 2 fell from 97 % to 33 %.)
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    module.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            if len(x[i : i + batch]) > 1:
                module(x[i : i + batch].to(dev))
    for bn, mom in zip(bns, saved, strict=True):
        bn.momentum = mom


def _evaluate(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    dev: torch.device,
    loss_fn: nn.Module,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``module`` over ``batches``, in eval mode."""
    module.eval()
    tot_loss, correct, n = 0.0, 0, 0
    with torch.inference_mode():
        for xb, yb in batches:
            xb, yb = xb.to(dev), yb.to(dev)
            out = module(xb)
            tot_loss += float(loss_fn(out, yb)) * len(xb)
            correct += int((out.argmax(1) == yb).sum())
            n += len(xb)
    return tot_loss / max(1, n), correct / max(1, n)


def _slices(
    x: torch.Tensor, y: torch.Tensor, batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(x), batch):
        yield x[i : i + batch], y[i : i + batch]


def _class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse class frequencies, normalised to a mean of 1 over the classes (0: absent)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return torch.tensor(
        np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0),
        dtype=torch.float32,
    )


class _Loop:
    """One training run's state: module, optimiser, data (in memory or streamed), random generator."""

    def __init__(
        self,
        x: np.ndarray | StoreSamples,
        y: np.ndarray,
        val: np.ndarray,
        model: GeoModel,
        opts: FitOptions,
    ) -> None:
        self.opts = opts
        self.dev = resolve_device(opts.device)
        self.module = model.module.to(self.dev)
        weights = _class_weights(y[~val], model.n_classes)
        self.loss_fn = nn.CrossEntropyLoss(weight=weights.to(self.dev))
        self.opt = torch.optim.Adam(self.module.parameters(), lr=opts.learning_rate)
        self.stream: tuple[StreamedWindows, StreamedWindows] | None = None
        if isinstance(x, StoreSamples):
            layout = stream_layout(x.store, x.memory_bytes, opts.batch_size)
            b = opts.batch_size
            self.stream = (
                StreamedWindows(x.store, ~val, y, batch_size=b, layout=layout, shuffle=True),
                StreamedWindows(x.store, val, y, batch_size=b, layout=layout, shuffle=False),
            )
            empty = torch.empty(0)
            self.xt, self.xv = empty, empty
            self.yt, self.yv = torch.from_numpy(y[~val]), torch.from_numpy(y[val])
        else:
            self.xt, self.yt = torch.from_numpy(x[~val]), torch.from_numpy(y[~val])
            self.xv, self.yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
        self.gen = torch.Generator().manual_seed(opts.seed)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dev.type == "cuda")

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting for streamed windows."""
        return sum(s.wait_s for s in self.stream) if self.stream else 0.0

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds of the loop (:meth:`restore`)."""
        return {
            "module": self.module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, int]:
        """One optimiser step on the batch: summed loss, correct count."""
        dev = self.dev
        if self.opts.augment:
            xb = _augment(xb, self.gen)
        xb, yb = xb.to(dev), yb.to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            out = self.module(xb)
            loss = self.loss_fn(out, yb)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(loss.detach()) * len(yb), int((out.argmax(1) == yb).sum())

    def _batches(self) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
        """The epoch's training batches (shuffled with the loop's generator) and their number."""
        batch, n = self.opts.batch_size, len(self.yt)
        if self.stream is not None:
            self.stream[0].set_epoch_seed(int(torch.randint(0, 2**62, (1,), generator=self.gen)))
            return iter(self.stream[0]), -(-n // batch)
        order = torch.randperm(n, generator=self.gen)
        batches = ((self.xt[order[i : i + batch]], self.yt[order[i : i + batch]])
                   for i in range(0, n, batch))  # fmt: skip
        return batches, -(-n // batch)

    def epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch, recalibrate batch norm, validate; the epoch's metrics."""
        batch = self.opts.batch_size
        self.module.train()
        batches, n_batches = self._batches()
        n_recal = _bn_batches(n_batches) * batch
        if self.stream is not None:  # within the memory budget
            n_recal = min(n_recal, self.stream[0].layout.recal)
        recal: list[torch.Tensor] = []
        held = 0
        tot_loss, correct = 0.0, 0
        for xb, yb in batches:
            if held < n_recal:  # the epoch's first samples, before augmentation
                recal.append(xb[: n_recal - held].clone())
                held += len(recal[-1])
            if len(yb) < 2:
                continue  # batch-norm needs more than one sample
            loss, right = self._step(xb, yb)
            tot_loss += loss
            correct += right
        _recalibrate_bn(self.module, torch.cat(recal) if recal else self.xt, self.dev, batch)
        del recal
        n = len(self.yt)
        metrics: dict[str, float] = {"epoch": epoch, "loss": tot_loss / n, "accuracy": correct / n}
        if len(self.yv):
            # at the training batch size: larger batches were slower on CPU
            val = iter(self.stream[1]) if self.stream else _slices(self.xv, self.yv, batch)
            metrics["val_loss"], metrics["val_accuracy"] = _evaluate(
                self.module, val, self.dev, self.loss_fn
            )
        return metrics


def fit(
    x: np.ndarray | StoreSamples,
    y: np.ndarray,
    val: np.ndarray,
    *,
    model: GeoModel,
    options: FitOptions,
    provenance: dict[str, Any],
    unit: str = "samples",
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
) -> GeoModel:
    """Train ``model`` on normalised samples; it with the weights of the epoch with the lowest loss.

    Parameters
    ----------
    x
        Normalised ``(n, band, p, p)`` float32 samples (NaN already 0), or a window
        store streamed within a memory budget (:class:`StoreSamples`).
    y
        Their class ids, int64.
    val
        Validation mask.
    model
        What the model file will describe (architecture, classes, statistics, ...),
        its module untrained (:func:`untrained`); trained in place.
    options
        Optimiser and loop settings.
    provenance
        The source-specific provenance entries (data, labels, split, ...); the loop
        adds its own.
    unit
        What a sample is, for the log (``windows``, ``chips``).
    checkpoint, resume
        A checkpoint file written after each epoch
        (:mod:`~georaster_cnn.training.checkpoint`); with ``resume``, one of the same run
        is continued.
    """
    loop = _Loop(x, y, val, model, options)
    log.info(
        "training %s on %d %s (%d validation)%s, %d classes",
        model.arch, len(loop.yt), unit, len(loop.yv),
        ", streamed from a window store" if loop.stream else "", model.n_classes,
    )  # fmt: skip
    ckpt = _checkpoint(checkpoint, model, options, provenance, y, val, loop)
    run = Run(history=[], best=Best(options.patience))
    if ckpt is not None and resume:
        state = run.resume(ckpt)
        if state is not None:
            loop.restore(state)
    while not run.finished and run.epoch < options.epochs:
        run.epoch += 1
        started, waited = time.perf_counter(), loop.waited_s
        metrics = loop.epoch(run.epoch)
        run.reading_s += loop.waited_s - waited
        run.computing_s += time.perf_counter() - started - (loop.waited_s - waited)
        run.history.append(metrics)
        log.info("epoch %d/%d %s", run.epoch, options.epochs, metrics)
        run.best.update(run.epoch, metrics, loop.module)
        if options.on_epoch is not None:
            options.on_epoch(run.epoch, options.epochs, metrics)
        if run.best.stop(run.epoch, options.epochs, validated=len(loop.yv) > 0):
            run.stopped_at = run.epoch
            log.info(
                "early stop after epoch %d: no better validation loss for %d",
                run.epoch, options.patience,
            )  # fmt: skip
        run.finished = run.stopped_at is not None or run.epoch >= options.epochs
        if ckpt is not None:
            ckpt.save(run.state(loop.state()))
    if run.best.state is None:  # unreachable: epochs >= 1 was checked
        raise TrainingError("no epoch completed")
    loop.module.load_state_dict(run.best.state)
    loop.module.cpu().eval()
    trained = _provenance(provenance, y, run, loop, options, model.n_classes)
    return dataclasses.replace(model, module=loop.module, provenance=trained)


def _checkpoint(
    path: str | os.PathLike[str] | None,
    model: GeoModel,
    options: FitOptions,
    provenance: dict[str, Any],
    y: np.ndarray,
    val: np.ndarray,
    loop: _Loop,
) -> Checkpoint | None:
    """The run's checkpoint, keyed by everything its result depends on."""
    if path is None:
        return None
    card = {k: v for k, v in model.card().items() if k != "provenance"}
    opts = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    del opts["on_epoch"]  # a callback (the CLI's holds a lock): not part of the result
    layout = dataclasses.asdict(loop.stream[0].layout) if loop.stream else None
    data = {k: v for k, v in provenance.items() if k != "timing"}
    fields = {
        "model": card, "options": {**opts, "device": loop.dev.type}, "data": data,
        "y": hashlib.sha256(y.tobytes() + val.tobytes()).hexdigest(), "stream": layout,
    }  # fmt: skip
    return Checkpoint(path, fields)


def _provenance(
    source: dict[str, Any],
    y: np.ndarray,
    run: Run,
    loop: _Loop,
    opts: FitOptions,
    n_classes: int,
) -> dict[str, Any]:
    """The model's provenance: ``source``'s entries and the run's settings and results."""
    history = run.history
    best_epoch = min(history, key=lambda m: m.get("val_loss", m["loss"]))
    timing = dict(source.get("timing", {}))
    timing["reading_s"] = round(timing.get("reading_s", 0.0) + run.reading_s, 3)
    timing["computing_s"] = round(run.computing_s, 3)
    out = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **source,
        "epochs": opts.epochs,
        "epochs_run": len(history),
        "early_stopping": {"patience": opts.patience or 0, "stopped_after": run.stopped_at},
        "batch_size": opts.batch_size,
        "learning_rate": opts.learning_rate,
        "seed": opts.seed,
        "augment": opts.augment,
        "n_train": len(loop.yt),
        "n_val": len(loop.yv),
        "class_counts": np.bincount(y, minlength=n_classes).tolist(),
        "history": list(history),
        "metrics": dict(best_epoch),
        "device": loop.dev.type,
        "timing": timing,
    }
    if run.resumed_from is not None:
        out["resumed"] = {"after_epoch": run.resumed_from}
    if loop.stream is not None:
        out["streamed"] = {"unit_windows": loop.stream[0].layout.unit,
                           "buffer_windows": loop.stream[0].layout.buffer}  # fmt: skip
    return out
