"""Training checkpoints: a run killed at epoch 19 of 20 continues from epoch 19.

After each epoch the loop (:func:`~georaster_cnn.training._fit.fit`) writes one file
beside the model it will write (:func:`checkpoint_path`): the network's weights and
buffers, the optimiser's and gradient scaler's state, the epoch, the random states
(the loop's generator and torch's global one), the best weights so far and the
early-stopping state, and the history. It is written through
:func:`~georaster_cnn.io.staging.atomic_write`, so a kill leaves the previous
checkpoint or the new one, never half of one.

A checkpoint carries a *key*, a digest of everything the run's result depends on
(data, split, model, options; :func:`~georaster_cnn.io.staging.resume_key`): a rerun
with the same key continues after the checkpoint's epoch and, with the same seed on
the CPU, ends with the same weights as an uninterrupted run; any other key starts
afresh (and the old checkpoint is replaced after the first epoch). A checkpoint of a
finished run lets a rerun return the same model without training; remove it once
the model is saved (the CLI does).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from georaster_cnn.io._fs import remove_entry
from georaster_cnn.io.staging import atomic_write, output_exists, resume_key

__all__ = ["CHECKPOINT_SUFFIX", "Checkpoint", "checkpoint_path"]

log = logging.getLogger(__name__)

#: Appended to the model file's name.
CHECKPOINT_SUFFIX = ".checkpoint"
#: Version of the checkpoint's content.
_FORMAT = 1


def checkpoint_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the checkpoint of a run writing ``model_path`` lives: ``<model_path>.checkpoint``."""
    p = Path(model_path)
    return p.with_name(p.name + CHECKPOINT_SUFFIX)


class Checkpoint:
    """The checkpoint file of one run: ``path``, and the ``key`` of what it may continue."""

    def __init__(self, path: str | os.PathLike[str], fields: Any) -> None:
        self.path = Path(path)
        self.key = resume_key({"format": _FORMAT, **fields})

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None``: no checkpoint, an unreadable one, or one of another run."""
        if not output_exists(self.path):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a foreign or damaged file: start afresh, say so
            log.warning(
                "%s: not a readable checkpoint (%s); training from the start", self.path, exc
            )
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            log.warning(
                "%s is the checkpoint of a run with other data or options; training from the "
                "start (it is replaced after the first epoch)",
                self.path,
            )
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (plus the key) atomically in place of the previous checkpoint."""
        payload = {**state, "key": self.key}
        # beside the model, whose folder save_model would create only after training
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda f: torch.save(payload, f))

    def remove(self) -> None:
        """Remove the checkpoint (the model is saved)."""
        if output_exists(self.path):
            remove_entry(self.path)
