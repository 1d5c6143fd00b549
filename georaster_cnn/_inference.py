"""classify: the one place where a model meets a device.

:func:`resolve_device` maps ``auto|cpu|cuda[:N]|mps`` to a :class:`torch.device`;
:class:`Classifier` runs normalised windows through a model on that device (batched,
``inference_mode``, fp16 autocast on CUDA, softmax) for :func:`~georaster_cnn.predict`
and :func:`~georaster_cnn.evaluate` alike. A classifier pickles as the model file's
bytes and a device *name*, and rebuilds once per process (cached by the model's
checksum), so a Dask worker loads the model once, not per task.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from georaster_cnn.errors import InputError

if TYPE_CHECKING:
    from georaster_cnn.modelfile import GeoModel

__all__ = ["Classifier", "resolve_device"]


def resolve_device(device: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|mps`` (or ``cuda:N``) to an available :class:`torch.device`.

    ``auto`` picks CUDA, then MPS, then the CPU.

    Raises
    ------
    InputError
        The device was asked for explicitly but is not available, or is unknown.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"device {device!r} asked for, but this torch build sees no CUDA GPU; "
                "use device='cpu' or 'auto'"
            )
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise InputError(f"unknown device {device!r}; use cuda or cuda:N") from exc
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(
                "device 'mps' asked for, but Apple MPS is not available; use device='cpu' or 'auto'"
            )
        return torch.device("mps")
    raise InputError(f"unknown device {device!r}; choose auto, cpu, cuda or mps")


# One model call at a time per process: torch already uses every core (or the GPU)
# for one batch, so concurrent calls from Dask threads would only oversubscribe.
_MODEL_LOCK = threading.Lock()
# One model resident per process, keyed by (checksum, device): modules moved to the
# device, and models unpickled on Dask workers.
_MODULE_CACHE: dict[tuple[str, str], torch.nn.Module] = {}
_MODEL_CACHE: dict[tuple[str, str], GeoModel] = {}


class Classifier:
    """Callable ``windows (n, band, p, p) -> probabilities (n, classes)``.

    Windows are normalised (NaN already 0). The device is resolved once, here.

    Parameters
    ----------
    model
        The trained model.
    device
        A device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) or a
        :class:`torch.device`.
    """

    def __init__(self, model: GeoModel, device: str | torch.device = "auto") -> None:
        self.model = model
        # A torch.device was resolved by the caller (once per call, in InferenceOptions).
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.key = (model.checksum, str(self.device))

    def __dask_tokenize__(self) -> tuple[str, str]:
        return self.key

    def __getstate__(self) -> dict[str, Any]:
        return {"raw": self.model.to_bytes(), "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from georaster_cnn.modelfile import GeoModel

        self.key = state["key"]
        self.device = torch.device(self.key[1])
        cached = _MODEL_CACHE.get(self.key)
        self.model = cached if cached is not None else GeoModel.from_bytes(state["raw"])
        _MODEL_CACHE.clear()
        _MODEL_CACHE[self.key] = self.model
        _cap_torch_threads_on_worker()

    def _module(self) -> torch.nn.Module:
        mod = _MODULE_CACHE.get(self.key)
        if mod is None:
            mod = self.model.module
            if self.device.type != "cpu":  # never move the caller's module
                mod = copy.deepcopy(mod)
            mod = mod.to(self.device).eval()
            _MODULE_CACHE.clear()  # keep one model per process resident
            _MODULE_CACHE[self.key] = mod
        return mod

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, classes)`` of one batch of windows, as ``float32``."""
        with _MODEL_LOCK:
            mod = self._module()
            dev = self.device
            x = torch.from_numpy(np.ascontiguousarray(windows)).to(dev, non_blocking=True)
            with (
                torch.inference_mode(),
                torch.autocast(
                    device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"
                ),
            ):
                logits = mod(x)
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def batches(self, windows: np.ndarray, batch_size: int) -> Iterator[tuple[slice, np.ndarray]]:
        """``(slice, probabilities)`` for consecutive batches of ``batch_size`` windows."""
        for i in range(0, len(windows), batch_size):
            sl = slice(i, min(i + batch_size, len(windows)))
            yield sl, self(windows[sl])

    def classes(self, windows: np.ndarray, batch_size: int) -> np.ndarray:
        """Class ids ``(n,)`` of ``windows``, classified ``batch_size`` at a time."""
        out = np.empty(len(windows), dtype=np.int64)
        for sl, probs in self.batches(windows, batch_size):
            out[sl] = probs.argmax(axis=1)
        return out


def _cap_torch_threads_on_worker() -> None:
    """On a Dask worker, give torch ``cores // worker threads`` threads, not all cores."""
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, nthreads)))
