"""georaster_cnn.testing: the dense-vs-per-window check users run on their own architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from georaster_cnn.testing import assert_dense_matches_per_window, test_raster, tiny_dense_model


def test_a_dense_capable_model_passes_at_every_stride() -> None:
    model = tiny_dense_model(patch=12, widths=(4, 8), seed=3)
    data = test_raster(23, 19, seed=3)
    for stride in range(1, 13):
        assert_dense_matches_per_window(data, model, stride, chunks=9, block_cells=2)


def test_a_network_whose_windows_see_more_than_their_pixels_fails() -> None:
    # The per-window path calls forward(); dense evaluation uses trunk and head. A forward
    # that does something else (here: favours class 0) is what a non-local or wrongly
    # declared architecture looks like to the check.
    model = tiny_dense_model(patch=12, widths=(4, 8), seed=4242)
    plain = model.module.forward

    def skewed(x: torch.Tensor) -> torch.Tensor:
        out = plain(x)
        out[:, 0] += 50.0
        return out

    model.module.forward = skewed  # type: ignore[method-assign]
    with pytest.raises(AssertionError):
        assert_dense_matches_per_window(test_raster(23, 19, seed=5), model, 4)


def test_the_test_raster_is_georeferenced_with_holes() -> None:
    data = test_raster(30, 20, bands=3, seed=1)
    assert data.dims == ("band", "y", "x") and data.shape == (3, 30, 20)
    assert data.rio.crs.to_epsg() == 32633
    assert np.isnan(data.values).any() and not np.isnan(data.values).all()
