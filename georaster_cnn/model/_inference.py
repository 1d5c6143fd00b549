"""classify: the one place where a model meets a device.

:func:`resolve_device` maps ``auto|cpu|cuda[:N]|mps`` to a :class:`torch.device`;
:class:`Classifier` runs normalised windows through a model on that device (batched,
``inference_mode``, fp16 autocast on CUDA, softmax) for :func:`~georaster_cnn.predict`
and :func:`~georaster_cnn.evaluate` alike.

How a classifier travels to Dask workers: it pickles as the model's checksum and a
device *name*. When the model was shipped to the cluster
(:func:`georaster_cnn.cluster.ship_model`, done by the cluster layer for the active
client when :func:`~georaster_cnn.predict` or :func:`~georaster_cnn.evaluate` builds
its graph, and by :func:`~georaster_cnn.write_prediction`), that is all a task
carries: the worker finds the model file's bytes in its
:class:`~georaster_cnn.cluster.ModelPlugin`. Otherwise the model file's bytes travel
with the classifier, as a fallback. Either way the model is loaded lazily, on a
worker's first model call, and once per process (cached by checksum): a scheduler
that unpickles a graph never loads it. A worker whose environment sets
``GCNN_DEVICE`` (e.g. ``cuda`` on GPU workers) runs the model there, whatever device
the client resolved.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from georaster_cnn.cluster._shipping import is_shipped, remember_model, shipped_bytes
from georaster_cnn.cluster._shipping import local_model as _remembered
from georaster_cnn.errors import InputError, ModelFileError

if TYPE_CHECKING:
    from georaster_cnn.model.modelfile import GeoModel

__all__ = ["Classifier", "class_probabilities", "device_name", "probabilities", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|mps`` (or ``cuda:N``) to an available :class:`torch.device`.

    ``auto`` picks CUDA, then MPS, then the CPU; a :class:`torch.device` is returned
    as given.

    Raises
    ------
    InputError
        The device was asked for explicitly but is not available, or is unknown.
    """
    if isinstance(device, torch.device):
        return device
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


def device_name(device: str | torch.device = "auto") -> str:
    """What runs the model, in words: ``"CUDA NVIDIA H200 (cuda:0)"``, ``"Apple MPS"``, ``"CPU"``.

    ``device`` is resolved first (:func:`resolve_device`), so ``"auto"`` names the
    device that ``auto`` picks: the answer to "is my GPU used?".

    Raises
    ------
    InputError
        As :func:`resolve_device`.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"CUDA {torch.cuda.get_device_name(index)} (cuda:{index})"
    if dev.type == "mps":
        return "Apple MPS"
    return "CPU" if dev.type == "cpu" else str(dev)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities: softmax over dim 1, in float32 whatever autocast gave.

    The one place logits become probabilities, for windows and dense feature maps alike,
    and inside the exported ONNX graphs (:mod:`georaster_cnn.model._portable`).
    """
    return torch.softmax(logits.float(), dim=1)


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """:func:`class_probabilities` as NumPy."""
    return class_probabilities(logits).cpu().numpy()


# One model call at a time per process: torch already uses every core (or the GPU)
# for one batch, so concurrent calls from Dask threads would only oversubscribe.
_MODEL_LOCK = threading.Lock()
# One model resident per process, keyed by (checksum, device): modules moved to the
# device, and models unpickled on Dask workers.
_MODULE_CACHE: dict[tuple[str, str], torch.nn.Module] = {}
_MODEL_CACHE: dict[str, GeoModel] = {}
_RESOLVE_LOCK = threading.Lock()


def local_model(checksum: str) -> GeoModel | None:
    """The model with this checksum that a classifier of this process holds, if any."""
    found = _remembered(checksum)
    return found if found is not None else _MODEL_CACHE.get(checksum)


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
        self._model: GeoModel | None = model
        self._raw: bytes | None = None
        self.device = resolve_device(device)  # once per call: one classifier per call
        self.key = (model.checksum, str(self.device))
        remember_model(model)  # so that a prediction's checksum can be shipped later

    @property
    def model(self) -> GeoModel:
        """The model; on a worker, loaded on first use (once per process)."""
        if self._model is None:
            self._model = _resolve_model(self.key[0], self._raw)
            self._raw = None
        return self._model

    def __dask_tokenize__(self) -> tuple[str, str]:
        return self.key

    def __getstate__(self) -> dict[str, Any]:
        # The digest alone once the model was shipped to the cluster; the bytes
        # otherwise (or what this copy received, when a scheduler forwards it).
        raw: bytes | None = None
        if not is_shipped(self.key[0]):
            raw = self._model.to_bytes() if self._model is not None else self._raw
        return {"key": self.key, "raw": raw}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.key = tuple(state["key"])
        self.device = _worker_device() or torch.device(self.key[1])
        self._raw = state["raw"]
        self._model = _MODEL_CACHE.get(self.key[0])  # None: loaded on first use

    def _module(self) -> torch.nn.Module:
        resident = (self.key[0], str(self.device))
        mod = _MODULE_CACHE.get(resident)
        if mod is None:
            mod = self.model.module
            if self.device.type != "cpu":  # never move the caller's module
                mod = copy.deepcopy(mod)
            mod = mod.to(self.device).eval()
            _MODULE_CACHE.clear()  # keep one model per process resident
            _MODULE_CACHE[resident] = mod
        return mod

    @contextmanager
    def running(self) -> Iterator[torch.nn.Module]:
        """The module on :attr:`device` in eval mode, under the model lock and inference mode.

        Autocast to fp16 on CUDA, as for :meth:`__call__`. For callers that use more of
        the network than its forward pass (dense evaluation, :mod:`georaster_cnn.model._dense`).
        """
        with _MODEL_LOCK:
            mod = self._module()
            dev = self.device
            with (
                torch.inference_mode(),
                torch.autocast(
                    device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"
                ),
            ):
                yield mod

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, classes)`` of one batch of windows, as ``float32``."""
        with self.running() as mod:
            x = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device, non_blocking=True)
            return probabilities(mod(x))

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


def _worker_device() -> torch.device | None:
    """``GCNN_DEVICE`` of a Dask worker: the device its model calls use, whatever the client chose.

    The client resolves ``device=`` where it runs (``auto`` is the CPU on a login node
    without GPU); a GPU worker started with ``GCNN_DEVICE=cuda`` runs on its GPU anyway.
    ``None`` outside workers or without the variable.
    """
    name = os.environ.get("GCNN_DEVICE", "")
    if not name:
        return None
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return None
    return resolve_device(name)


def _resolve_model(checksum: str, raw: bytes | None) -> GeoModel:
    """The model with ``checksum``: cached, from ``raw``, or from this worker's plugin.

    Raises
    ------
    ModelFileError
        Neither bytes came with the task nor does this worker hold the model.
    """
    from georaster_cnn.model.modelfile import GeoModel

    with _RESOLVE_LOCK:
        cached = local_model(checksum)  # this process's own, or loaded here before
        if cached is not None:
            return cached
        if raw is None:
            raw = _plugin_bytes(checksum)
        model = GeoModel.from_bytes(raw, source=f"model {checksum}")
        if model.checksum != checksum:
            raise ModelFileError(
                f"the model sent for {checksum} has checksum {model.checksum}; "
                "the cluster holds another model under this name. Restart the workers."
            )
        _MODEL_CACHE.clear()  # keep one model per process resident
        _MODEL_CACHE[checksum] = model
        remember_model(model)
        _cap_torch_threads_on_worker()
        return model


def _plugin_bytes(checksum: str) -> bytes:
    """The model file's bytes from this Dask worker's :class:`~georaster_cnn.cluster.ModelPlugin`."""
    raw, where = shipped_bytes(checksum)
    if raw is None:
        raise ModelFileError(
            f"model {checksum} is not available on {where}: the task carries only its "
            "digest, but the model was not shipped to this cluster. Compute through "
            "write_prediction, or call georaster_cnn.cluster.ship_model(client, model) first."
        )
    return raw


def _cap_torch_threads_on_worker() -> None:
    """On a Dask worker, cap torch's threads so the workers of a machine share its cores.

    ``GCNN_TORCH_THREADS`` in the worker's environment decides (``local:N`` clusters
    set it to ``cores // N``). Otherwise an ``OMP_NUM_THREADS`` set for the worker is
    kept as torch read it (Dask's nanny sets 1 for every worker process it starts:
    several workers of one machine, each with all cores' worth of torch threads,
    were measured 14 times slower on 2 cores). Otherwise ``cores // worker threads``.
    """
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    configured = os.environ.get("GCNN_TORCH_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        torch.set_num_threads(int(configured))
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, nthreads)))
