"""Window extraction: summed-area valid fractions, zero-copy views, blockwise plans."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from georaster_cnn.chips import (
    BlockPlan,
    iter_batches,
    plan_blocks,
    register_windowed,
    valid_fraction,
    window_view,
)
from georaster_cnn.geometry import PatchGrid


def _n_windows(length: int, patch: int, stride: int) -> int:
    return (length - patch) // stride + 1 if length >= patch else 0


@st.composite
def masks_and_windows(draw: st.DrawFn) -> tuple[np.ndarray, int, int, tuple[int, int]]:
    patch = draw(st.integers(1, 12))
    stride = draw(st.integers(1, patch))
    h = draw(st.integers(patch, 40))
    w = draw(st.integers(patch, 40))
    mask = draw(hnp.arrays(np.bool_, (h, w)))
    ny = draw(st.integers(1, _n_windows(h, patch, stride)))
    nx = draw(st.integers(1, _n_windows(w, patch, stride)))
    return mask, patch, stride, (ny, nx)


@given(masks_and_windows())
def test_valid_fraction_equals_brute_force(
    case: tuple[np.ndarray, int, int, tuple[int, int]],
) -> None:
    mask, patch, stride, (ny, nx) = case
    got = valid_fraction(mask, patch, stride, (ny, nx))
    want = np.array(
        [
            [
                mask[stride * i : stride * i + patch, stride * j : stride * j + patch].mean()
                for j in range(nx)
            ]
            for i in range(ny)
        ]
    )
    assert got.shape == (ny, nx)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@given(masks_and_windows(), st.integers(1, 3))
def test_window_view_is_a_view_matching_slices(
    case: tuple[np.ndarray, int, int, tuple[int, int]], bands: int
) -> None:
    mask, patch, stride, (ny, nx) = case
    h, w = mask.shape
    block = np.arange(bands * h * w, dtype=np.float32).reshape(bands, h, w)
    view = window_view(block, patch, stride, (ny, nx))
    assert view.shape == (bands, ny, nx, patch, patch)
    assert np.shares_memory(view, block)
    for i in {0, ny // 2, ny - 1}:
        for j in {0, nx // 2, nx - 1}:
            np.testing.assert_array_equal(
                view[:, i, j],
                block[:, stride * i : stride * i + patch, stride * j : stride * j + patch],
            )


def test_iter_batches_copies_bounded_batches_with_nan_as_zero() -> None:
    block = np.arange(2 * 10 * 10, dtype=np.float64).reshape(2, 10, 10)
    block[0, 0, 0] = np.nan
    windows = window_view(block, 4, 2, (4, 4))
    rows, cols = np.nonzero(np.ones((4, 4), dtype=bool))
    seen = 0
    for sl, chips in iter_batches(windows, rows, cols, 3):
        assert chips.dtype == np.float32 and chips.flags.c_contiguous
        assert chips.shape[1:] == (2, 4, 4) and 1 <= len(chips) <= 3
        assert not np.isnan(chips).any()
        for k, (r, c) in enumerate(zip(rows[sl], cols[sl], strict=True)):
            want = np.nan_to_num(block[:, 2 * r : 2 * r + 4, 2 * c : 2 * c + 4])
            np.testing.assert_array_equal(chips[k], want.astype(np.float32))
        seen += len(chips)
    assert seen == 16
    assert np.isnan(block[0, 0, 0])  # the source is never modified


# --------------------------------------------------------------------------- blockwise plans


def _block_means(block: np.ndarray, *, grid: PatchGrid) -> np.ndarray:
    """Per cell of an overlapped block: (window mean of band 0 with NaN -> 0, valid fraction)."""
    s, p, halo = grid.stride, grid.patch, grid.halo_before
    ny = (block.shape[1] - 2 * halo) // s
    nx = (block.shape[2] - 2 * halo) // s
    windows = window_view(block, p, s, (ny, nx))
    assert np.shares_memory(windows, block)
    means = np.nan_to_num(windows[0]).sum(axis=(2, 3)) / p**2
    frac = valid_fraction(~np.isnan(block).any(axis=0), p, s, (ny, nx))
    return np.stack([means, frac])


def blockwise_windows(
    arr: np.ndarray, patch: int, stride: int, *, chunks: int | str, block_cells: int
) -> tuple[np.ndarray, np.ndarray, BlockPlan]:
    """Window means/valid fractions through plan_blocks, as predict and train use it."""
    grid = PatchGrid(arr.shape[1], arr.shape[2], patch=patch, stride=stride)
    darr = da.from_array(arr, chunks=(arr.shape[0], chunks, chunks) if chunks != "whole" else -1)
    plan = plan_blocks(darr, grid, block_cells=block_cells)
    out = plan.blocks.map_blocks(
        _block_means, grid=grid, chunks=((2,), *plan.cell_chunks), dtype=np.float64
    )
    oh, ow = grid.out_shape
    with dask.config.set(scheduler="synchronous"):
        res = out[:, :oh, :ow].compute()
    return res[0], res[1], plan


def _raster(h: int, w: int, bands: int, seed: int, holes: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.standard_normal((bands, h, w))
    if holes:
        arr[:, rng.random((h, w)) < 0.15] = np.nan  # scattered invalid pixels (all bands)
        arr[-1, : h // 3, : w // 4] = np.nan  # a block invalid in one band only
    return arr


@pytest.mark.parametrize("stride", [1, 5, 16, 32, 64])
@pytest.mark.parametrize(("h", "w"), [(5, 3), (70, 45), (130, 97)])
@pytest.mark.parametrize("chunks", [7, 13, 64, "whole"])
def test_plan_blocks_windows_match_brute_force(
    h: int, w: int, stride: int, chunks: int | str, brute_force: Callable[..., Any]
) -> None:
    if stride == 1 and h * w > 5000:
        pytest.skip(
            "covered by the smaller rasters; stride 1 on big rasters is slow in the reference"
        )
    arr = _raster(h, w, 2, seed=h * 1000 + w)
    means, frac, plan = blockwise_windows(arr, 64, stride, chunks=chunks, block_cells=4)
    want_means, want_frac = brute_force(arr, 64, stride)
    assert means.shape == want_means.shape == PatchGrid(h, w, stride=stride).out_shape
    np.testing.assert_allclose(frac, want_frac, rtol=0, atol=1e-12)
    np.testing.assert_allclose(means, want_means, rtol=1e-12, atol=1e-12)
    # Every block but the halo is a whole number of cells.
    assert all(c >= 1 for c in plan.cell_chunks[0] + plan.cell_chunks[1])


@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    patch=st.sampled_from([1, 2, 7, 16, 33, 64]),
    stride_frac=st.floats(0.0, 1.0),
    chunks=st.one_of(st.integers(1, 100), st.just("whole")),
    block_cells=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_blockwise_windows_independent_of_chunking(
    h: int,
    w: int,
    patch: int,
    stride_frac: float,
    chunks: int | str,
    block_cells: int,
    seed: int,
    brute_force: Callable[..., Any],
) -> None:
    """Whatever the input chunking and block size, each cell sees exactly its window."""
    stride = max(1, round(stride_frac * patch))
    # Keep the task count small (at most ~10 x 10 blocks) so each example stays fast.
    oh, ow = PatchGrid(h, w, patch=patch, stride=stride).out_shape
    block_cells = max(block_cells, math.ceil(max(oh, ow) / 10))
    if chunks != "whole":
        chunks = max(chunks, math.ceil(max(h, w) / 10))
    arr = _raster(h, w, 1, seed)
    means, frac, _ = blockwise_windows(arr, patch, stride, chunks=chunks, block_cells=block_cells)
    want_means, want_frac = brute_force(arr, patch, stride)
    np.testing.assert_allclose(frac, want_frac, rtol=0, atol=1e-12)
    np.testing.assert_allclose(means, want_means, rtol=1e-12, atol=1e-12)


@given(
    h=st.integers(1, 200),
    w=st.integers(1, 200),
    patch=st.integers(1, 64),
    stride_frac=st.floats(0.0, 1.0),
    block_cells=st.integers(1, 64),
)
def test_plan_blocks_shapes(
    h: int, w: int, patch: int, stride_frac: float, block_cells: int
) -> None:
    """Blocks hold whole cells plus a halo; cell chunks cover at least the output grid."""
    stride = max(1, round(stride_frac * patch))
    grid = PatchGrid(h, w, patch=patch, stride=stride)
    oh, ow = grid.out_shape
    block_cells = max(block_cells, math.ceil(max(oh, ow) / 10))  # bound the graph size
    plan = plan_blocks(da.zeros((2, h, w), chunks=(2, 17, 23)), grid, block_cells=block_cells)
    ych, xch = plan.cell_chunks
    assert sum(ych) >= oh and sum(xch) >= ow
    halo = grid.halo_before
    assert plan.blocks.chunks[1] == tuple(c * stride + 2 * halo for c in ych)
    assert plan.blocks.chunks[2] == tuple(c * stride + 2 * halo for c in xch)
    assert plan.blocks.chunks[0] == (2,)
    # A window of the last cell fits in the last block.
    assert halo + stride + grid.halo_after <= stride + 2 * halo


def test_plan_blocks_rejects_wrong_grid() -> None:
    with pytest.raises(ValueError, match="grid"):
        plan_blocks(da.zeros((1, 10, 10)), PatchGrid(10, 11, patch=4, stride=4))


class _CountingSource:
    """A windowed source over an in-memory array that records every window read."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.shape = arr.shape
        self.reads: list[tuple[slice, slice, slice]] = []

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        self.reads.append(key)
        return self.arr[key].copy()


@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    patch=st.sampled_from([1, 4, 16, 33, 64]),
    stride_frac=st.floats(0.0, 1.0),
    block_cells=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_halo_reads_equal_overlap_blocks(
    h: int, w: int, patch: int, stride_frac: float, block_cells: int, seed: int
) -> None:
    """A registered windowed source gives the same blocks as dask's overlap, read directly:
    one read per block, each inside the raster, nothing shared between blocks."""
    stride = max(1, round(stride_frac * patch))
    grid = PatchGrid(h, w, patch=patch, stride=stride)
    block_cells = max(block_cells, math.ceil(max(grid.out_shape) / 8))
    arr = _raster(h, w, 2, seed).astype(np.float32)
    source = _CountingSource(arr)
    direct = da.from_array(arr, chunks=(2, 16, 16), name=False)
    register_windowed(direct, source)
    plan = plan_blocks(direct, grid, block_cells=block_cells)
    reference = plan_blocks(
        da.from_array(arr, chunks=(2, 16, 16), name=False), grid, block_cells=block_cells
    )
    assert plan.blocks.name.startswith("halo-reads-")
    assert plan.blocks.chunks == reference.blocks.chunks
    assert plan.cell_chunks == reference.cell_chunks
    np.testing.assert_array_equal(plan.blocks.compute(), reference.blocks.compute())
    assert len(source.reads) <= plan.blocks.npartitions
    for _, ysl, xsl in source.reads:
        assert 0 <= ysl.start < ysl.stop <= h and 0 <= xsl.start < xsl.stop <= w


def test_halo_reads_only_for_the_untouched_source() -> None:
    """An operation on the registered array (a new name) plans with dask's overlap."""
    arr = np.arange(2 * 40 * 50, dtype=np.float32).reshape(2, 40, 50)
    direct = da.from_array(arr, chunks=(2, 20, 20), name=False)
    register_windowed(direct, _CountingSource(arr))
    grid = PatchGrid(40, 50, patch=8, stride=2)
    assert plan_blocks(direct, grid, block_cells=4).blocks.name.startswith("halo-reads-")
    assert not plan_blocks(direct + 0, grid, block_cells=4).blocks.name.startswith("halo-reads-")
    with pytest.raises(ValueError, match="shape"):
        register_windowed(direct, _CountingSource(arr[:, :10]))


def test_open_raster_registers_its_windowed_reader(tmp_path: Any) -> None:
    """GDAL rasters opened by open_raster are read block by block with their halos."""
    import rasterio
    from rasterio.transform import from_origin

    from georaster_cnn import open_raster

    path = tmp_path / "r.tif"
    arr = _raster(70, 90, 3, 7).astype(np.float32)
    with rasterio.open(
        path, "w", driver="GTiff", width=90, height=70, count=3, dtype="float32",
        crs="EPSG:32633", transform=from_origin(500000, 6000000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(arr)
    data = open_raster(path, chunks=32)
    grid = PatchGrid(70, 90, patch=16, stride=4)
    plan = plan_blocks(data.data, grid, block_cells=5)
    assert plan.blocks.name.startswith("halo-reads-")
    reference = plan_blocks(da.from_array(arr, chunks=(3, 32, 32), name=False), grid, block_cells=5)
    np.testing.assert_array_equal(plan.blocks.compute(), reference.blocks.compute())
