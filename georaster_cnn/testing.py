"""Testing aids: check a dense-capable architecture against the per-window reference.

Dense evaluation (the trunk once per block, each window pooled from its features) is
exact only for networks whose output for a window depends on that window's pixels
alone. An architecture of your own that claims dense support
(:func:`~georaster_cnn.register_architecture` with ``dense_geometry``) can be checked
the way the library's own ``cnn_dense`` is, in your test suite::

    from georaster_cnn.testing import assert_dense_matches_per_window, test_raster

    model = my_trained_or_seeded_geomodel()
    for stride in range(1, model.patch_size + 1):
        assert_dense_matches_per_window(test_raster(47, 53), model, stride, chunks=17)

:func:`tiny_dense_model` is the small seeded ``cnn_dense`` model the library's tests
use (non-trivial batch-norm statistics and normalisation, a wide logit spread), and
:func:`test_raster` the odd-sized raster with NaN holes they classify. This module
sits above the whole library (it uses the model and prediction layers) and is never
imported by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor)
import torch
import xarray as xr
from affine import Affine
from torch import nn

from georaster_cnn.io.classmap import default_colors
from georaster_cnn.model.architectures import build_model
from georaster_cnn.model.modelfile import GeoModel
from georaster_cnn.prediction.blockwise import predict
from georaster_cnn.stats import ChannelStats

__all__ = [
    "assert_dense_matches_per_window",
    "randomise_batch_norm",
    "test_raster",
    "tiny_dense_model",
]

#: Narrow stages: per-window references at stride 1 stay fast.
TINY_WIDTHS = (4, 8, 8)


def randomise_batch_norm(module: nn.Module, rng: torch.Generator) -> None:
    """Running statistics and affine parameters away from (0, 1): eval-mode BN does something."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean = torch.rand(n, generator=rng) - 0.5
                m.running_var = torch.rand(n, generator=rng) + 0.5
                m.weight.copy_(torch.rand(n, generator=rng) + 0.5)
                m.bias.copy_(torch.rand(n, generator=rng) - 0.3)


def tiny_dense_model(
    n_bands: int = 2,
    n_classes: int = 3,
    *,
    patch: int = 36,
    widths: Sequence[int] = TINY_WIDTHS,
    min_valid: float = 0.5,
    seed: int = 0,
    arch: str = "cnn_dense",
) -> GeoModel:
    """A small dense-capable GeoModel with seeded weights, non-trivial BN and statistics.

    Parameters
    ----------
    n_bands, n_classes, patch
        Bands in, classes out, window side.
    widths
        The architecture's ``widths=`` hyper-parameter.
    min_valid
        The model's minimum valid fraction of a window.
    seed
        Seeds the weights and batch-norm statistics.
    arch
        A registered architecture that takes ``widths=`` and has a linear ``head``.
    """
    torch.manual_seed(seed)
    module = build_model(
        arch, in_channels=n_bands, n_classes=n_classes, patch_size=patch, widths=list(widths)
    )
    randomise_batch_norm(module, torch.Generator().manual_seed(seed))
    head = getattr(module, "head", None)
    if isinstance(head, nn.Linear):
        with torch.no_grad():  # a wide logit spread: no near-ties between classes
            head.weight.mul_(20.0)
    names = tuple(f"band_{i + 1}" for i in range(n_bands))
    count = np.full(n_bands, 1000.0)
    std = np.linspace(0.5, 2.0, n_bands)
    lo, hi = np.full(n_bands, -10.0), np.full(n_bands, 10.0)
    stats = ChannelStats(names, count, np.linspace(-0.3, 0.4, n_bands), count * std**2, lo, hi)
    return GeoModel(
        module=module.eval(),
        arch=arch,
        hparams={"widths": list(widths)},
        band_names=names,
        class_names=tuple(f"c{k}" for k in range(n_classes)),
        class_colors=default_colors(n_classes),
        stats=stats,
        patch_size=patch,
        min_valid=min_valid,
        source_dtype="float32",
        provenance={"data": ["<georaster_cnn.testing>"], "epochs": 0},
    )


def test_raster(height: int, width: int, *, bands: int = 2, seed: int = 0) -> xr.DataArray:
    """A canonical ``(band, y, x)`` array with NaN holes: rectangles, pixels, one-band gaps.

    North-up, 10 m pixels in EPSG:32633; values with some structure along ``x`` so that
    windows differ.
    """
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((bands, height, width)).astype(np.float32)
    values += np.sin(np.arange(width) / 3.0)[None, None, :].astype(np.float32)
    values[:, rng.random((height, width)) < 0.05] = np.nan
    h0, w0 = rng.integers(0, height), rng.integers(0, width)
    values[:, h0 : h0 + max(1, height // 3), w0 : w0 + max(1, width // 4)] = np.nan
    values[-1, : max(1, height // 4), -max(1, width // 3) :] = np.nan  # last band only
    if height > 8:
        values[:, 2:5, :] = np.nan  # whole rows of nodata
    data = xr.DataArray(
        values, dims=("band", "y", "x"), coords={"band": [f"band_{i + 1}" for i in range(bands)]}
    )
    north_up = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
    return data.rio.write_transform(north_up).rio.write_crs("EPSG:32633")


test_raster.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest to collect


def assert_dense_matches_per_window(
    data: xr.DataArray,
    model: GeoModel,
    stride: int,
    *,
    chunks: int | None = None,
    block_cells: int | None = None,
    atol: float = 1e-4,
) -> None:
    """Dense evaluation gives the per-window reference's classes and probabilities.

    Parameters
    ----------
    data
        A canonical ``(band, y, x)`` array (e.g. :func:`test_raster`).
    model
        A model whose architecture is dense-capable.
    stride
        The output cell size, ``1 <= stride <= patch``.
    chunks, block_cells
        Dask chunk side of ``data`` and block side in output cells (several blocks
        exercise the halos); default: as :func:`~georaster_cnn.predict` chooses.
    atol
        Largest difference of a probability (float rounding; 1e-4 holds for float32).

    Raises
    ------
    AssertionError
        Where a cell differs: its validity, class or a probability beyond ``atol``.
    """
    if chunks is not None:
        data = data.chunk({"band": -1, "y": chunks, "x": chunks})
    ref = predict(data, model, stride=stride, dense=False, check=False).compute()
    got = predict(
        data, model, stride=stride, dense=True, check=False, block_cells=block_cells
    ).compute()
    p_ref, p_got = ref["probability"].values, got["probability"].values
    if p_got.shape != p_ref.shape:
        raise AssertionError(f"dense output {p_got.shape} != per-window {p_ref.shape}")
    np.testing.assert_array_equal(np.isnan(p_got), np.isnan(p_ref))
    np.testing.assert_allclose(p_got, p_ref, rtol=0, atol=atol, equal_nan=True)
    np.testing.assert_array_equal(got["class"].values, ref["class"].values)
