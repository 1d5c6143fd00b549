"""Property tests of the output grid (DESIGN.md, "Geometry")."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray
from affine import Affine
from geo import NORTH_UP, ROTATED
from hypothesis import assume, given
from hypothesis import strategies as st

from georaster_cnn import InputError, PatchGrid, output_transform

MakeRaster = Callable[..., Path]


@st.composite
def grids(draw: st.DrawFn, max_side: int = 300, max_patch: int = 80) -> PatchGrid:
    patch = draw(st.integers(1, max_patch))
    stride = draw(st.integers(1, patch))
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    return PatchGrid(height, width, patch=patch, stride=stride)


@given(grids())
def test_out_shape_is_ceil(g: PatchGrid) -> None:
    assert g.out_shape == (math.ceil(g.height / g.stride), math.ceil(g.width / g.stride))


@given(grids())
def test_window_origin_matches_design_formula(g: PatchGrid) -> None:
    s, p = g.stride, g.patch
    oh, ow = g.out_shape
    for i in (0, oh // 2, oh - 1):
        for j in (0, ow // 2, ow - 1):
            assert g.window_origin(i, j) == (s * i + (s - p) // 2, s * j + (s - p) // 2)


@given(grids(max_side=120))
def test_window_centred_on_its_cell(g: PatchGrid) -> None:
    """The window's centre lies inside its ``s x s`` cell, for every cell."""
    s, p = g.stride, g.patch
    oh, ow = g.out_shape
    ii, jj = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    r0 = s * ii + g.offset
    c0 = s * jj + g.offset
    # Geometric centre of the window (continuous coordinates) and of the cell.
    wr, wc = r0 + p / 2, c0 + p / 2
    cr, cc = s * ii + s / 2, s * jj + s / 2
    # Exactly centred when p - s is even, half a pixel off otherwise.
    assert np.all(np.abs(wr - cr) <= 0.5) and np.all(np.abs(wc - cc) <= 0.5)
    # The window's centre pixel (row/col p // 2 of the window) is a pixel of the cell.
    cen_r, cen_c = r0 + p // 2, c0 + p // 2
    assert np.all((s * ii <= cen_r) & (cen_r < s * ii + s))
    assert np.all((s * jj <= cen_c) & (cen_c < s * jj + s))
    assert np.all(cen_r - s * ii == g.center_offset)
    # The window reaches halo_before before and halo_after past the cell.
    assert g.halo_before == -g.offset >= 0
    assert g.halo_after >= 0
    assert g.halo_before + s + g.halo_after == p


@given(grids(max_side=150))
def test_windows_cover_every_input_pixel(g: PatchGrid) -> None:
    """Cells tile the input with no gap; every pixel lies in at least one window and one cell."""
    oh, ow = g.out_shape
    win_cover = np.zeros((g.height, g.width), dtype=np.int32)
    cell_cover = np.zeros((g.height, g.width), dtype=np.int32)
    for i in range(oh):
        r0, _ = g.window_origin(i, 0)
        for j in range(ow):
            _, c0 = g.window_origin(i, j)
            win_cover[max(r0, 0) : max(r0 + g.patch, 0), max(c0, 0) : max(c0 + g.patch, 0)] += 1
            cell_cover[g.stride * i : g.stride * (i + 1), g.stride * j : g.stride * (j + 1)] += 1
    assert win_cover.min() >= 1
    assert np.all(cell_cover == 1)  # the cells partition the input exactly


@st.composite
def affines(draw: st.DrawFn) -> Affine:
    res = draw(st.floats(0.01, 1000.0))
    angle = draw(st.floats(-180.0, 180.0))
    sx = draw(st.floats(-30.0, 30.0))
    sy = draw(st.floats(-30.0, 30.0))
    x0 = draw(st.floats(-1e6, 1e6))
    y0 = draw(st.floats(-1e7, 1e7))
    flip = draw(st.sampled_from([-1.0, 1.0]))
    return (
        Affine.translation(x0, y0)
        @ Affine.rotation(angle)
        @ Affine.shear(sx, sy)
        @ Affine.scale(res, flip * res)
    )


@given(affines(), st.integers(1, 64))
def test_output_transform_is_scaled_input(t: Affine, s: int) -> None:
    out = output_transform(t, s)
    expected = t @ Affine.scale(s)
    assert out.almost_equals(expected, precision=1e-9)
    # Same origin, and output pixel (i, j) starts at input pixel (s*i, s*j).
    assert out.c == t.c and out.f == t.f
    for i, j in [(0, 1), (1, 0), (3, 7)]:
        ox, oy = out @ (j, i)
        ix, iy = t @ (s * j, s * i)
        assert ox == pytest.approx(ix, rel=1e-12, abs=1e-6)
        assert oy == pytest.approx(iy, rel=1e-12, abs=1e-6)


@given(grids(), affines())
def test_grid_out_transform_rotated(g: PatchGrid, t: Affine) -> None:
    assert g.out_transform(t) == t @ Affine.scale(g.stride)


@given(grids(), affines())
def test_last_cell_sticks_out_less_than_one_cell(g: PatchGrid, t: Affine) -> None:
    """The far corner of the output lies past the input's far edge by less than one cell."""
    assume(abs(t.determinant) > 1e-6)
    oh, ow = g.out_shape
    s = g.stride
    over_y, over_x = oh * s - g.height, ow * s - g.width
    assert 0 <= over_y < s and 0 <= over_x < s
    # The same in map coordinates: map the output's far corner back into input pixels.
    out_t = g.out_transform(t)
    corner = out_t @ (ow, oh)
    col, row = ~t @ corner
    assert col == pytest.approx(ow * s, abs=1e-5 * max(1, ow * s))
    assert row == pytest.approx(oh * s, abs=1e-5 * max(1, oh * s))
    assert g.width <= col + 1e-4 and col - g.width < s
    assert g.height <= row + 1e-4 and row - g.height < s


def test_output_transform_emits_no_warning() -> None:
    """No deprecation noise: affine 3 deprecates ``Affine * Affine`` in favour of ``@``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output_transform(Affine(30.0, 0.0, 0.0, 0.0, -30.0, 0.0), 4)


@pytest.mark.parametrize(("patch", "stride"), [(64, 0), (64, -1), (64, 65), (8, 9), (1, 2)])
def test_invalid_stride_raises_input_error(patch: int, stride: int) -> None:
    with pytest.raises(InputError, match="stride") as info:
        PatchGrid(100, 100, patch=patch, stride=stride)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("h", "w", "patch"), [(0, 5, 64), (5, 0, 64), (5, 5, 0)])
def test_invalid_size_or_patch_raises(h: int, w: int, patch: int) -> None:
    with pytest.raises(ValueError):
        PatchGrid(h, w, patch=patch, stride=1)


def test_docstring_example() -> None:
    g = PatchGrid(100, 130, patch=64, stride=32)
    assert g.out_shape == (4, 5)
    assert g.window_origin(0, 0) == (-16, -16)


def test_grid_is_immutable() -> None:
    g = PatchGrid(10, 10)
    with pytest.raises(AttributeError):
        g.stride = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- RasterGrid


@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    stride=st.integers(1, 64),
    rotated=st.booleans(),
)
def test_raster_grid_round_trips_pixels_and_places_outputs(
    h: int, w: int, stride: int, rotated: bool
) -> None:
    from georaster_cnn.geometry import RasterGrid

    t = ROTATED if rotated else NORTH_UP
    grid = RasterGrid(h, w, t, "EPSG:32633")
    rows = np.array([0, h - 1, h // 2])
    cols = np.array([0, w - 1, w // 3])
    x, y = grid.xy(rows, cols)
    back_r, back_c = grid.rowcol(x, y)
    np.testing.assert_array_equal(back_r, rows)
    np.testing.assert_array_equal(back_c, cols)
    out = grid.output(stride=stride)
    assert out.shape == (-(-h // stride), -(-w // stride))
    assert out.transform == t * Affine.scale(stride)
    assert out.xy(0, 0, corner=True) == grid.xy(0, 0, corner=True)  # same origin
    sub = grid.window(rows[2], cols[2], 1, 1)
    np.testing.assert_allclose(sub.xy(0, 0), grid.xy(rows[2], cols[2]), rtol=0, atol=1e-6)
    assert grid.same_as(RasterGrid(h, w, t, "EPSG:32633"))
    assert not grid.same_as(RasterGrid(h, w, t, None))
    assert bool(grid.centre_coords()) is not rotated


def test_raster_grid_centre_coords_match_rioxarray(tmp_path: Path, make_raster: MakeRaster) -> None:
    from georaster_cnn import open_raster
    from georaster_cnn.geometry import RasterGrid

    path = make_raster(tmp_path, "s.tif", height=7, width=5, count=1)
    data = open_raster(path)
    grid = RasterGrid.of(data)
    ref = rioxarray.open_rasterio(path)
    np.testing.assert_allclose(grid.centre_coords()["x"], ref.x.values)
    np.testing.assert_allclose(grid.centre_coords()["y"], ref.y.values)
    with rasterio.open(path) as src:  # GDAL's own reading of the file
        assert grid.transform == src.transform and grid.crs == src.crs
