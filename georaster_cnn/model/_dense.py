"""classify, densely: the trunk once per block, then every window pooled from its features.

For a network whose output for a window depends only on the window's own pixels
(:class:`~georaster_cnn.model.architectures.DenseCNN`: valid convolutions, eval-mode batch norm,
max-pools of known alignment, a global average and a linear head), the probabilities
of all windows of a block follow from one pass of the trunk over the block:

* the block (with the halo its windows need, as :func:`~georaster_cnn.chips.plan_blocks`
  makes it) is cropped to the pixels its windows cover, NaN set to 0 after
  normalisation, exactly as :func:`~georaster_cnn.chips.iter_batches` does per window;
* the trunk runs with feature step ``e = gcd(stride, D)``: window ``(i, j)`` starts at
  block pixel ``(s*i, s*j)``, a multiple of ``e``, so its features are the block's
  features ``s*i/e + (D/e)*k``, ``k < f`` (``f`` feature pixels per window side). For
  ``e < D`` the pools beyond ``e`` keep step 1 and the later convolutions are dilated
  (à trous, :meth:`~georaster_cnn.model.architectures.DenseCNN.trunk`);
* the linear head commutes with the average, so it is applied first as a 1x1
  convolution (classes are far fewer than channels), then each window's ``f x f``
  features are averaged: an average pool with kernel ``f``, step ``s/e`` and dilation
  ``D/e``, written as a grouped convolution with a constant kernel;
* softmax; windows with a valid fraction below ``min_valid`` (computed exactly as the
  per-window path does) are NaN.

The result equals the per-window evaluation up to float rounding (tests/test_dense.py).
The working set is the block's feature maps, so the block size is chosen from the
network's widths (:func:`dense_block_cells`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from georaster_cnn.chips import BLOCK_PX, valid_fraction
from georaster_cnn.model._inference import Classifier, probabilities
from georaster_cnn.model.architectures import DenseGeometry, dense_geometry

__all__ = [
    "DENSE_BLOCK_BYTES",
    "classify_block_dense",
    "dense_block_cells",
    "dense_logits",
    "feature_step",
]

#: Target working set of one dense block's largest layer (input plus output), in bytes.
#: One block at a time runs the trunk in a process (the model lock), so this bounds
#: the feature-map memory of a prediction whatever the raster's size.
DENSE_BLOCK_BYTES = 256 * 2**20


def feature_step(stride: int, geometry: DenseGeometry) -> int:
    """Feature spacing ``gcd(stride, D)`` in input pixels for windows ``stride`` apart."""
    return math.gcd(stride, geometry.downsampling)


def dense_block_cells(
    module: torch.nn.Module,
    *,
    stride: int,
    halo: int,
    budget: int = DENSE_BLOCK_BYTES,
    max_px: int = BLOCK_PX,
) -> int:
    """Block side in output cells so one block's feature maps stay within ``budget`` bytes.

    A block of ``B`` pixels a side (halo included) needs about
    ``B**2 * module.activation_bytes(step)`` bytes for its largest layer; ``B`` is
    capped at ``max_px`` plus the halo, and a block holds at least one cell.

    Parameters
    ----------
    module
        A dense-capable network (:func:`~georaster_cnn.model.architectures.dense_geometry` not None).
    stride, halo
        The prediction's geometry (:class:`~georaster_cnn.geometry.PatchGrid`).
    budget
        Bytes for the largest layer's input plus output.
    max_px
        Largest block side in input pixels, halo excluded.
    """
    geometry = dense_geometry(module)
    if geometry is None:
        raise TypeError(f"{type(module).__name__} cannot be evaluated densely")
    per_px = module.activation_bytes(feature_step(stride, geometry))  # type: ignore[operator]
    side = int(math.sqrt(budget / max(float(per_px), 1.0)))
    return max(1, min(side - 2 * halo, max_px) // stride)


def dense_logits(
    module: torch.nn.Module, x: torch.Tensor, *, patch: int, stride: int
) -> torch.Tensor:
    """Class logits ``(n, classes, ny, nx)`` of all windows ``stride`` apart in ``x``.

    Window ``(i, j)`` is ``x[..., s*i : s*i + patch, s*j : s*j + patch]``; ``x`` is
    ``(n, band, H, W)`` with NaN already 0, ``ny = (H - patch) // stride + 1``.
    Equal (up to rounding) to ``module(window)`` for every window, with the module in
    eval mode.
    """
    geometry = dense_geometry(module)
    if geometry is None:
        raise TypeError(f"{type(module).__name__} cannot be evaluated densely")
    head = module.head
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(module).__name__}.head is not a linear layer")
    step = feature_step(stride, geometry)
    dilation = geometry.downsampling // step
    f = geometry.feature_size(patch)
    feats = module.trunk(x, step=step)  # type: ignore[operator]
    logits = F.conv2d(feats, head.weight[:, :, None, None], head.bias)
    del feats
    k = head.out_features  # a Python int (not the traced shape): the ONNX export needs it
    if dilation == 1:
        pooled = F.avg_pool2d(logits, f, stride=stride // step)
    else:
        kernel = torch.full((k, 1, f, f), 1.0 / (f * f), dtype=logits.dtype, device=logits.device)
        pooled = F.conv2d(logits, kernel, stride=stride // step, dilation=dilation, groups=k)
    ny = (x.shape[-2] - patch) // stride + 1
    nx = (x.shape[-1] - patch) // stride + 1
    return pooled[:, :, :ny, :nx]


def classify_block_dense(
    block: np.ndarray,
    *,
    classifier: Classifier,
    patch: int,
    stride: int,
    halo: int,
    min_valid: float,
    n_classes: int,
) -> np.ndarray:
    """Probabilities ``(classes, ny, nx)`` of one overlapped block; NaN where no prediction.

    The dense counterpart of :func:`georaster_cnn.prediction.blockwise._classify_block`: the same
    block, the same cells, the same nodata policy.
    """
    ny = (block.shape[1] - 2 * halo) // stride
    nx = (block.shape[2] - 2 * halo) // stride
    out = np.full((n_classes, ny, nx), np.nan, dtype=np.float32)
    valid = ~np.isnan(block).any(axis=0)
    keep = valid_fraction(valid, patch, stride, (ny, nx)) >= min_valid
    if not keep.any():
        return out
    # Only the pixels the windows cover: window (ny-1, nx-1) ends at s*(n-1) + p.
    x = np.array(
        block[:, : stride * (ny - 1) + patch, : stride * (nx - 1) + patch],
        dtype=np.float32,
        copy=True,
    )
    np.nan_to_num(x, copy=False, nan=0.0)
    engine = getattr(classifier, "dense_probabilities", None)  # the onnxruntime engine
    if engine is not None:
        probs = engine(x, patch=patch, stride=stride)
    else:
        with classifier.running() as module:
            t = torch.from_numpy(x).to(classifier.device, non_blocking=True)[None]
            logits = dense_logits(module, t, patch=patch, stride=stride)
            probs = probabilities(logits)[0]
    out[:, keep] = probs[:, keep]
    return out
