"""Where a training run stands: the best weights, early stopping, epochs done, time spent.

:class:`Run` is what a checkpoint (:mod:`georaster_cnn.training.checkpoint`) holds besides
the loop's own state, and what the model's provenance reports of the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from georaster_cnn.training.checkpoint import Checkpoint

__all__ = ["Best", "Run"]

log = logging.getLogger(__name__)


class Best:
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

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint holds of it (:meth:`restore`)."""
        return {
            "score": self.score,
            "state": self.state,
            "ref": self.ref,
            "ref_epoch": self.ref_epoch,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.score, self.state = state["score"], state["state"]
        self.ref, self.ref_epoch = state["ref"], state["ref_epoch"]

    def stop(self, epoch: int, epochs: int, validated: bool) -> bool:
        """Whether to stop after ``epoch``: no better validation loss for ``patience`` epochs."""
        waited = epoch - self.ref_epoch
        return bool(self.patience and validated and waited >= self.patience and epoch < epochs)


@dataclass
class Run:
    """Where a run stands: epochs done, history, best weights, time spent; what a checkpoint holds."""

    history: list[dict[str, float]]
    best: Best
    epoch: int = 0
    stopped_at: int | None = None
    finished: bool = False
    resumed_from: int | None = None
    reading_s: float = 0.0
    computing_s: float = 0.0

    def state(self, loop_state: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's content: ``loop_state`` (weights, optimiser, random states) and this."""
        return {
            **loop_state, "epoch": self.epoch, "history": self.history,
            "best": self.best.snapshot(), "stopped_at": self.stopped_at,
            "finished": self.finished, "reading_s": self.reading_s,
            "computing_s": self.computing_s,
        }  # fmt: skip

    def resume(self, ckpt: Checkpoint) -> dict[str, Any] | None:
        """Continue from ``ckpt`` if it holds a finished epoch of this run; its state, for the loop."""
        state = ckpt.load()
        if state is None:
            return None
        self.best.restore(state["best"])
        self.history = list(state["history"])
        self.epoch = self.resumed_from = int(state["epoch"])
        self.stopped_at, self.finished = state["stopped_at"], bool(state["finished"])
        self.reading_s, self.computing_s = state["reading_s"], state["computing_s"]
        log.info("resuming training after epoch %d (%s)", self.epoch, ckpt.path)
        return state
