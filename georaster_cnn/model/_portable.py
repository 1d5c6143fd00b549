"""A model as a self-contained graph: raw pixels in, class probabilities out.

The torch modules here wrap a :class:`~georaster_cnn.GeoModel` so that everything
:func:`~georaster_cnn.predict` does between reading pixels and writing probabilities is
*inside* the network, and an exported graph (ONNX, :mod:`georaster_cnn.products.export`)
needs nothing else:

* normalisation ``(x - mean) * scale`` with the factors of
  :func:`~georaster_cnn.stats.band_factors` (the same float32 arithmetic as
  :func:`~georaster_cnn.stats.normalize_bands`);
* non-finite values (NaN, the canonical nodata, and +-inf, which the readers turn into
  NaN) become 0 after normalisation, as :func:`~georaster_cnn.chips.iter_batches` does;
* the network, then :func:`~georaster_cnn.model._inference.class_probabilities`.

:class:`RawChips` classifies windows ``(N, bands, p, p)``. :class:`RawDense` is the
fully convolutional map model of dense-capable architectures: it runs
:func:`~georaster_cnn.model._dense.dense_logits` over a tile and adds the nodata policy
(windows with fewer than ``min_valid`` valid pixels get all-zero probabilities, where
``predict`` writes nodata). Its output is laid out one of two ways (see
:class:`DenseLayout`): on the *cell grid*, one value per window at stride ``S``
(``NAME_dense.onnx``: what ``predict --stride S`` computes), or on the tile's *pixel
grid*, each cell's probabilities repeated over its ``S x S`` pixels less a margin
(``NAME_map.onnx``: for consumers that expect one value per input pixel, Deepness and
ArcGIS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from georaster_cnn.chips import min_valid_count
from georaster_cnn.errors import InputError
from georaster_cnn.geometry import PatchGrid
from georaster_cnn.model._dense import dense_logits, feature_step
from georaster_cnn.model._inference import class_probabilities
from georaster_cnn.model.architectures import dense_geometry
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.stats import band_factors

__all__ = ["DenseLayout", "RawChips", "RawDense", "dense_layout"]


class _RawInput(nn.Module):
    """Normalise raw values per band; non-finite values become 0 (after normalising)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, model: GeoModel) -> None:
        super().__init__()
        mean, scale = band_factors(model.stats)
        self.register_buffer("mean", torch.from_numpy(mean.copy()).reshape(1, -1, 1, 1))
        self.register_buffer("scale", torch.from_numpy(scale.copy()).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(normalised x with non-finite -> 0, finite mask)``."""
        x = (x - self.mean) * self.scale
        finite = torch.isfinite(x)
        return torch.where(finite, x, torch.zeros_like(x)), finite


class RawChips(nn.Module):
    """``(N, bands, p, p)`` raw values -> ``(N, classes)`` probabilities.

    What :class:`~georaster_cnn.model._inference.Classifier` computes for windows
    that ``predict`` or ``evaluate_chips`` normalised, with the normalisation inside.
    """

    def __init__(self, model: GeoModel) -> None:
        super().__init__()
        self.raw = _RawInput(model)
        self.net = model.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.raw(x)
        return class_probabilities(self.net(x))


@dataclass(frozen=True)
class DenseLayout:
    """Where the dense model's output lies on its input tile (one axis; both are the same).

    With patch ``p`` and stride ``S``, cell ``i`` of a tile is the window
    ``[S*i, S*i + p)`` of the tile, and it covers tile pixels
    ``[h + S*i, h + S*(i + 1))`` with ``h = halo_before`` (``predict``'s geometry,
    :class:`~georaster_cnn.geometry.PatchGrid`). A tile of ``T`` pixels has
    :meth:`cells` ``(T - p) // S + 1`` cells; to get ``predict``'s cells ``[k, k + n)``
    read the raster from ``S*k - halo_before`` to ``S*(k + n) + halo_after`` (a tile of
    ``p + (n - 1)*S`` pixels).

    The *cell* output (``NAME_dense.onnx``) is those cells. The *pixel* output
    (``NAME_map.onnx``) repeats every cell over its ``S`` pixels, then drops
    ``crop - h`` pixels at the start and ``crop - halo_after`` at the end, so that output
    pixel ``y`` is tile pixel ``y + crop``, and a tile of :meth:`fits` size ``T`` gives
    ``T - 2*crop`` pixels: a centred crop by the same margin on every side (what Deepness
    and ArcGIS's ``ModelPadding`` expect).

    Attributes
    ----------
    patch, stride
        ``p`` and ``S``.
    halo_before, halo_after
        Pixels a window reaches before and after its cell.
    crop
        The margin: ``halo_before`` when the halo is symmetric and even, else the
        next even number at least ``max(halo_before, halo_after)`` (Deepness refuses
        odd margins).
    """

    patch: int
    stride: int
    halo_before: int
    halo_after: int
    crop: int

    @property
    def start_drop(self) -> int:
        return self.crop - self.halo_before

    @property
    def end_drop(self) -> int:
        return self.crop - self.halo_after

    def fits(self, tile: int) -> bool:
        """Whether a tile of ``tile`` pixels is the patch plus whole strides (``>= 1`` cell)."""
        return tile >= self.patch and (tile - self.patch) % self.stride == 0

    def cells(self, tile: int) -> int:
        """Cells of a ``tile``-pixel side (the cell output's size): ``(tile - p) // S + 1``."""
        return max(0, (tile - self.patch) // self.stride + 1)

    def output_size(self, tile: int) -> int:
        """Pixels of the pixel output of a ``tile``-pixel side: ``S * cells - start_drop - end_drop``."""
        return max(0, self.stride * self.cells(tile) - self.start_drop - self.end_drop)

    def tile_near(self, tile: int) -> int:
        """The smallest fitting tile of at least ``tile`` pixels."""
        tile = max(tile, self.patch)
        return tile + (-(tile - self.patch)) % self.stride


def dense_layout(model: GeoModel, stride: int) -> DenseLayout:
    """The :class:`DenseLayout` of ``model``'s dense graph at ``stride``.

    Raises
    ------
    InputError
        A stride outside ``1 .. patch size``.
    """
    grid = PatchGrid(model.patch_size, model.patch_size, patch=model.patch_size, stride=stride)
    before, after = grid.halo_before, grid.halo_after
    crop = before if before == after and before % 2 == 0 else max(before, after)
    crop += crop % 2
    return DenseLayout(model.patch_size, stride, before, after, crop)


class RawDense(nn.Module):
    """``(N, bands, H, W)`` raw values -> ``(N, classes, H', W')`` probabilities.

    ``pixels=False`` (the cell grid): ``H' = (H - p) // S + 1``, output cell ``(i, j)``
    the window whose top-left is tile pixel ``(S*i, S*j)``. ``pixels=True`` (the tile's
    pixel grid): ``H' = S * ((H - p) // S + 1) - start_drop - end_drop``, output pixel
    ``(y, x)`` tile pixel ``(y + crop, x + crop)`` (see :class:`DenseLayout`).
    Cells whose window has fewer valid pixels than the model's ``min_valid`` needs
    (:func:`~georaster_cnn.chips.min_valid_count`) get probability 0 for every class.

    Raises
    ------
    InputError
        The architecture cannot be evaluated densely (``cnn_dense`` can).
    """

    def __init__(self, model: GeoModel, stride: int, *, pixels: bool = False) -> None:
        super().__init__()
        geometry = dense_geometry(model.module)
        if geometry is None:
            raise InputError(
                f"architecture {model.arch!r} has no dense (fully convolutional) form; only "
                "its chip model can be exported. Train with the 'cnn_dense' architecture "
                "for a map model."
            )
        self.layout = dense_layout(model, stride)
        self.pixels = pixels
        feature_step(stride, geometry)  # any stride works (à trous below D)
        self.raw = _RawInput(model)
        self.net = model.module
        self.n_classes = model.n_classes
        self.min_count = min_valid_count(model.patch_size, model.min_valid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, s, k = self.layout.patch, self.layout.stride, self.n_classes
        x, finite = self.raw(x)
        probs = class_probabilities(dense_logits(self.net, x, patch=p, stride=s))
        # Valid pixels of every window from a summed-area table, as chips.valid_fraction:
        # the slices start, step and stop where that function's indices do.
        valid = finite.all(dim=1, keepdim=True).to(torch.int32)
        sat = F.pad(valid.cumsum(2).cumsum(3), (1, 0, 1, 0))
        top, bottom = sat[:, :, :-p:s], sat[:, :, p::s]
        count = bottom[..., p::s] - bottom[..., :-p:s] - top[..., p::s] + top[..., :-p:s]
        probs = probs * (count >= self.min_count).to(probs.dtype)
        if not self.pixels:
            return probs
        n, _, ny, nx = probs.shape
        # Every cell over its S x S pixels: the output is on the tile's pixel grid.
        probs = probs[:, :, :, None, :, None].expand(n, k, ny, s, nx, s)
        probs = probs.reshape(n, k, ny * s, nx * s)
        a, b = self.layout.start_drop, self.layout.end_drop
        if a or b:
            probs = probs[:, :, a : ny * s - b, a : nx * s - b]
        return probs
