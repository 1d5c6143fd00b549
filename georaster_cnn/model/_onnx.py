"""ONNX graphs of a model: torch -> ONNX bytes, metadata, and a check against torch.

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript tracer, at
:data:`OPSET`. Both of torch's exporters give graphs that agree with torch to ~1e-7
for every shipped architecture with dynamic batch, height and width (measured for
``docs/export.md``); this one is chosen because

* it writes opset 17 / IR version 8 directly, which every onnxruntime from 1.12 on
  loads (Deepness pins ``onnxruntime <= 1.17``); the dynamo exporter writes opset 18 and
  IR version 10, which onnxruntime 1.17 refuses, and needs ``onnxscript`` at run time;
* it exports in about a second where the dynamo exporter takes 5-30 s on a laptop CPU.

Its weakness, a shape silently frozen when a network computes with Python ints taken
from a traced size, cannot pass unnoticed: every graph is run with onnxruntime on two
input sizes and compared with torch before it is written (:func:`check_against_torch`).
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from georaster_cnn.errors import ExportError
from georaster_cnn.quiet import warning_filters

__all__ = ["IR_VERSION", "OPSET", "TOLERANCE", "check_against_torch", "onnx_graph"]

log = logging.getLogger(__name__)

#: ONNX operator set of every exported graph: onnxruntime >= 1.12 runs it.
OPSET = 17
#: ONNX IR version written with :data:`OPSET` (the lowest that allows it).
IR_VERSION = 8
#: Largest difference in probability an export may show against torch.
TOLERANCE = 1e-4

_OPERATOR = re.compile(r"(?:operator|op) '?([a-z_]+::[A-Za-z0-9_.]+)'?")


def _quiet_torch_onnx() -> None:
    # The TorchScript exporter announces its deprecation, its constant-folding limits and
    # its tracer's doubts; the block is that one call, and check_against_torch decides.
    warnings.simplefilter("ignore")


@contextmanager
def _stdout_to_log() -> Iterator[None]:
    """File descriptor 1 into a temporary file for the block, then its text to the debug log.

    The TorchScript exporter prints the whole traced graph to the process's standard
    output (from C++, past ``sys.stdout``) when an operator fails; the CLI says one line.
    """
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no descriptor 1 to borrow
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                log.debug("torch.onnx.export said:\n%s", text)


def onnx_graph(
    module: torch.nn.Module,
    example: torch.Tensor,
    *,
    dynamic: Mapping[int, str],
    arch: str,
    metadata: Mapping[str, str],
    doc: str,
) -> bytes:
    """The ONNX bytes of ``module`` (input ``raw``, output ``probabilities``).

    Parameters
    ----------
    module
        A raw-input module (:mod:`georaster_cnn.model._portable`), in eval mode.
    example
        An input of the right bands and dtype to trace with.
    dynamic
        Input axes that are dynamic, by name (the output's are named after them).
    arch
        The architecture's name, for messages.
    metadata
        ``metadata_props`` of the graph (string keys and values).
    doc
        The graph's ``doc_string``.

    Raises
    ------
    ExportError
        The network uses an operator ONNX (opset :data:`OPSET`) lacks; the message
        names it.
    """
    import onnx

    buf = io.BytesIO()
    out_axes = {0: dynamic[0]} if 0 in dynamic else {}
    out_axes.update({k: f"out_{v}" for k, v in dynamic.items() if k > 0})
    try:
        with warning_filters(_quiet_torch_onnx), torch.no_grad(), _stdout_to_log():
            torch.onnx.export(
                module.eval(),
                (example,),
                buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
                dynamo=False,
                opset_version=OPSET,
                input_names=["raw"],
                output_names=["probabilities"],
                dynamic_axes={"raw": dict(dynamic), "probabilities": out_axes},
                do_constant_folding=True,
            )
    except Exception as exc:  # torch raises several types (and RuntimeError) for the same cause
        raise _export_error(exc, arch) from exc
    graph = onnx.load_from_string(buf.getvalue())
    graph.ir_version = IR_VERSION
    graph.producer_name = "georaster_cnn"
    graph.doc_string = doc
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    return bytes(graph.SerializeToString())


def _export_error(exc: Exception, arch: str) -> ExportError:
    """One clear error naming the operator torch could not export."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    found = _OPERATOR.search(str(exc))
    op = found.group(1) if found else None
    what = f"operator {op}" if op else "an operation"
    return ExportError(
        f"architecture {arch!r} cannot be exported to ONNX (opset {OPSET}): {what} has no "
        f"ONNX form ({text[:300]}). Write the network with operators ONNX supports "
        "(convolutions, pooling, linear layers, element-wise functions) or train a shipped "
        "architecture (cnn_dense, cnn, resnet, mlp)."
    )


def check_against_torch(
    graph: bytes, module: torch.nn.Module, inputs: Sequence[torch.Tensor], *, what: str
) -> float | None:
    """Run ``graph`` with onnxruntime on ``inputs`` and compare with ``module``.

    Returns the largest difference in probability, or ``None`` when onnxruntime is
    not installed (the check is skipped, with a log message).

    Raises
    ------
    ExportError
        A shape differs, or a probability differs by more than :data:`TOLERANCE`.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime is not installed: %s was not checked against torch", what)
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = module(x).numpy()
        found = session.run(None, {"raw": x.numpy()})[0]
        shape = "x".join(str(n) for n in x.shape)
        if found.shape != expected.shape:
            raise ExportError(
                f"{what}: the ONNX graph gives shape {found.shape} for an input of {shape}, "
                f"torch {expected.shape}; the network computes a shape torch could not trace. "
                "Report this with the architecture."
            )
        diff = float(np.max(np.abs(found - expected))) if found.size else 0.0
        if not diff <= TOLERANCE:
            raise ExportError(
                f"{what}: the ONNX graph differs from torch by {diff:.3g} in probability "
                f"(at most {TOLERANCE} expected) for an input of {shape}. Report this with "
                "the architecture."
            )
        worst = max(worst, diff)
    return worst
