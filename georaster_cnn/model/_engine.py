"""The onnxruntime engine: the same classifier, the network run by onnxruntime on the CPU.

``predict(engine="onnxruntime")`` keeps every step of the blockwise path (blocks, halos,
normalisation, the NaN -> 0 rule, valid fractions, nodata) and replaces only the model
call: :class:`OnnxClassifier` is a :class:`~georaster_cnn.model._inference.Classifier`
whose windows, and whose dense blocks (:func:`~georaster_cnn.model._dense.dense_logits`
then softmax, at the cells' resolution), go through ONNX graphs of the network built
once per process from the model (:mod:`georaster_cnn.model._onnx`, checked against torch
when built). Why it exists: ``benchmarks/bench_export.py`` (numbers in
``benchmarks/README.md``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from georaster_cnn.errors import InputError
from georaster_cnn.model._dense import dense_logits
from georaster_cnn.model._inference import _MODEL_LOCK, Classifier, class_probabilities
from georaster_cnn.model._onnx import check_against_torch, onnx_graph

if TYPE_CHECKING:
    from georaster_cnn.model.modelfile import GeoModel

__all__ = ["ENGINES", "OnnxClassifier", "check_engine"]

#: ``predict(engine=...)``: who runs the network.
ENGINES = ("torch", "onnxruntime")

# One model's sessions per process, keyed by (checksum, kind, stride).
_SESSIONS: dict[tuple[str, str, int], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def check_engine(engine: str) -> str:
    """``engine`` if known (and onnxruntime importable for it), else an :class:`InputError`."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise InputError(
                "engine 'onnxruntime' needs the onnxruntime package: pip install onnxruntime "
                "(or use the default engine, torch)"
            ) from exc
    return engine


class _Windows(nn.Module):
    """Normalised windows (NaN already 0) -> probabilities: what Classifier computes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_probabilities(self.net(x))


class _Cells(nn.Module):
    """A normalised block (NaN already 0) -> probabilities of its cells, as the dense path."""

    def __init__(self, net: nn.Module, patch: int, stride: int) -> None:
        super().__init__()
        self.net, self.patch, self.stride = net, patch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_probabilities(dense_logits(self.net, x, patch=self.patch, stride=self.stride))


def _session(model: GeoModel, kind: str, stride: int) -> Any:
    """The onnxruntime session of ``model``'s windows or cells graph (built once)."""
    key = (model.checksum, kind, stride)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            return session
        import onnxruntime as ort

        p, b = model.patch_size, model.n_bands
        gen = torch.Generator().manual_seed(0)
        if kind == "windows":
            module: nn.Module = _Windows(model.module).eval()
            example = torch.randn(2, b, p, p, generator=gen)
            checks = [torch.randn(n, b, p, p, generator=gen) for n in (1, 5)]
            dynamic = {0: "batch"}
        else:
            module = _Cells(model.module, p, stride).eval()
            example = torch.randn(1, b, p + 2 * stride, p + 3 * stride, generator=gen)
            checks = [torch.randn(1, b, p + 3 * stride, p + 5 * stride + 1, generator=gen)]
            dynamic = {0: "batch", 2: "height", 3: "width"}
        graph = onnx_graph(
            module, example, dynamic=dynamic, arch=model.arch, metadata={}, doc="engine"
        )
        check_against_torch(graph, module, checks, what=f"the {kind} graph of {model.checksum}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        if not any(k[0] == model.checksum for k in _SESSIONS):
            _SESSIONS.clear()  # keep one model's sessions resident
        _SESSIONS[key] = session
        return session


class OnnxClassifier(Classifier):
    """A :class:`Classifier` whose network runs in onnxruntime (CPU).

    Raises
    ------
    InputError
        onnxruntime is not installed, or a device other than the CPU was asked for.
    """

    def __init__(self, model: GeoModel, device: str | torch.device = "cpu") -> None:
        check_engine("onnxruntime")
        if str(device) not in ("cpu", "auto"):
            raise InputError(
                f"engine 'onnxruntime' runs on the CPU; found device {str(device)!r}. "
                "Use device='cpu' (or 'auto'), or the torch engine for GPUs."
            )
        super().__init__(model, "cpu")

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        session = _session(self.model, "windows", 0)
        x = np.ascontiguousarray(windows, dtype=np.float32)
        with _MODEL_LOCK:
            return np.asarray(session.run(None, {"raw": x})[0], dtype=np.float32)

    def dense_probabilities(self, x: np.ndarray, *, patch: int, stride: int) -> np.ndarray:
        """Probabilities ``(classes, ny, nx)`` of the windows ``stride`` apart in a block.

        ``x``: the normalised block ``(band, H, W)``, NaN already 0.
        """
        session = _session(self.model, "cells", stride)
        with _MODEL_LOCK:
            out = session.run(None, {"raw": np.ascontiguousarray(x[None], dtype=np.float32)})
        return np.asarray(out[0][0], dtype=np.float32)
