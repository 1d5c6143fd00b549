"""The training loop shared by rasters and chips (:func:`fit`).

Flips and 90-degree rotations, class-weighted loss, batch-norm recalibration after
each epoch, early stopping on the validation loss, and the weights of the best epoch.
Mixed precision on CUDA.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from collections.abc import Callable, Sequence
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
    x: torch.Tensor,
    y: torch.Tensor,
    dev: torch.device,
    loss_fn: nn.Module,
    batch: int,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``module`` on ``(x, y)``, in eval mode."""
    module.eval()
    tot_loss, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb, yb = x[i : i + batch].to(dev), y[i : i + batch].to(dev)
            out = module(xb)
            tot_loss += float(loss_fn(out, yb)) * len(xb)
            correct += int((out.argmax(1) == yb).sum())
    return tot_loss / max(1, len(x)), correct / max(1, len(x))


def _class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse class frequencies, normalised to a mean of 1 over the classes (0: absent)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return torch.tensor(
        np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0),
        dtype=torch.float32,
    )


class _Loop:
    """One training run's state: module, optimiser, data on the host, random generator."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, val: np.ndarray, model: GeoModel, opts: FitOptions
    ) -> None:
        self.opts = opts
        self.dev = resolve_device(opts.device)
        self.module = model.module.to(self.dev)
        weights = _class_weights(y[~val], model.n_classes)
        self.loss_fn = nn.CrossEntropyLoss(weight=weights.to(self.dev))
        self.opt = torch.optim.Adam(self.module.parameters(), lr=opts.learning_rate)
        self.xt, self.yt = torch.from_numpy(x[~val]), torch.from_numpy(y[~val])
        self.xv, self.yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
        self.gen = torch.Generator().manual_seed(opts.seed)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dev.type == "cuda")

    def _step(self, idx: torch.Tensor) -> tuple[float, int]:
        """One optimiser step on the training samples ``idx``: summed loss, correct count."""
        dev, xb = self.dev, self.xt[idx]
        if self.opts.augment:
            xb = _augment(xb, self.gen)
        xb, yb = xb.to(dev), self.yt[idx].to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            out = self.module(xb)
            loss = self.loss_fn(out, yb)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(loss.detach()) * len(idx), int((out.argmax(1) == yb).sum())

    def epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch, recalibrate batch norm, validate; the epoch's metrics."""
        batch = self.opts.batch_size
        self.module.train()
        order = torch.randperm(len(self.xt), generator=self.gen)
        tot_loss, correct = 0.0, 0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            if len(idx) < 2:
                continue  # batch-norm needs more than one sample
            loss, right = self._step(idx)
            tot_loss += loss
            correct += right
        n_recal = _bn_batches(-(-len(order) // batch)) * batch
        _recalibrate_bn(self.module, self.xt[order[:n_recal]], self.dev, batch)
        n = len(self.xt)
        metrics: dict[str, float] = {"epoch": epoch, "loss": tot_loss / n, "accuracy": correct / n}
        if len(self.xv):
            # at the training batch size: larger batches were slower on CPU
            metrics["val_loss"], metrics["val_accuracy"] = _evaluate(
                self.module, self.xv, self.yv, self.dev, self.loss_fn, batch
            )
        return metrics


class _Best:
    """The best weights so far, and the early-stopping rule on the validation loss."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.score = float("inf")
        self.state: dict[str, torch.Tensor] | None = None
        self.ref, self.ref_epoch = float("inf"), 0

    def update(self, epoch: int, metrics: dict[str, float], module: nn.Module) -> None:
        score = metrics.get("val_loss", metrics["loss"])
        if self.state is None or score < self.score:
            self.score = score
            self.state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        # Patience counts from the last *meaningful* improvement (relative 1e-4): the
        # loss also wobbles by tiny amounts when nothing is learned.
        if epoch == 1 or score < self.ref - 1e-4 * abs(self.ref):
            self.ref, self.ref_epoch = score, epoch

    def stop(self, epoch: int, epochs: int, validated: bool) -> bool:
        """Whether to stop after ``epoch``: no better validation loss for ``patience`` epochs."""
        waited = epoch - self.ref_epoch
        return bool(self.patience and validated and waited >= self.patience and epoch < epochs)


def fit(
    x: np.ndarray,
    y: np.ndarray,
    val: np.ndarray,
    *,
    model: GeoModel,
    options: FitOptions,
    provenance: dict[str, Any],
    unit: str = "samples",
) -> GeoModel:
    """Train ``model`` on normalised samples; it with the weights of the epoch with the lowest loss.

    Parameters
    ----------
    x
        Normalised ``(n, band, p, p)`` float32 samples (NaN already 0).
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
    """
    loop = _Loop(x, y, val, model, options)
    log.info(
        "training %s on %d %s (%d validation), %d classes",
        model.arch, len(loop.yt), unit, len(loop.yv), model.n_classes,
    )  # fmt: skip
    history: list[dict[str, float]] = []
    best, stopped_at = _Best(options.patience), None
    for epoch in range(1, options.epochs + 1):
        metrics = loop.epoch(epoch)
        history.append(metrics)
        log.info("epoch %d/%d %s", epoch, options.epochs, metrics)
        best.update(epoch, metrics, loop.module)
        if options.on_epoch is not None:
            options.on_epoch(epoch, options.epochs, metrics)
        if best.stop(epoch, options.epochs, validated=len(loop.xv) > 0):
            stopped_at = epoch
            log.info(
                "early stop after epoch %d: no better validation loss for %d",
                epoch, options.patience,
            )  # fmt: skip
            break
    if best.state is None:  # unreachable: epochs >= 1 was checked
        raise TrainingError("no epoch completed")
    loop.module.load_state_dict(best.state)
    loop.module.cpu().eval()
    trained = _provenance(provenance, y, history, stopped_at, loop, options, model.n_classes)
    return dataclasses.replace(model, module=loop.module, provenance=trained)


def _provenance(
    source: dict[str, Any],
    y: np.ndarray,
    history: Sequence[dict[str, float]],
    stopped_at: int | None,
    loop: _Loop,
    opts: FitOptions,
    n_classes: int,
) -> dict[str, Any]:
    """The model's provenance: ``source``'s entries and the run's settings and results."""
    best_epoch = min(history, key=lambda m: m.get("val_loss", m["loss"]))
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **source,
        "epochs": opts.epochs,
        "epochs_run": len(history),
        "early_stopping": {"patience": opts.patience or 0, "stopped_after": stopped_at},
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
    }
