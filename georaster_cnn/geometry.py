"""Grids: where a raster lies (:class:`RasterGrid`) and where each window sits (:class:`PatchGrid`).

A :class:`RasterGrid` is the georeferencing of a raster: its size, affine transform
and CRS, with pixel <-> world conversions, cell-centre coordinates and sub-grids.
Readers, label alignment, vector-label placement and prediction outputs all use it.
A :class:`PatchGrid` is the window geometry of a prediction:

Let ``p`` be the patch size and ``s`` the stride (``1 <= s <= p``). The output grid
starts at the input's origin and has cells of ``s x s`` input pixels:

* ``out_shape = (ceil(H / s), ceil(W / s))``
* ``out_transform = in_transform * Affine.scale(s)`` (also for rotated transforms)
* output cell ``(i, j)`` holds the class of the ``p x p`` window whose top-left
  input pixel is ``(s*i + (s - p) // 2, s*j + (s - p) // 2)``: the window centred
  on that cell. Pixels of a window outside the raster are padding (invalid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine

from georaster_cnn.errors import InputError
from georaster_cnn.options import DEFAULT_PATCH, check_stride

__all__ = ["DEFAULT_PATCH", "PatchGrid", "RasterGrid", "output_transform", "pixel_size_metres"]


def pixel_size_metres(crs: Any, transform: Affine) -> float | None:
    """The side of a square, north-up pixel in metres; ``None`` for any other grid.

    ``None`` when the CRS is missing or geographic, counts in another unit than the
    metre, or the pixels are not square and axis-aligned. Deepness's ``resolution``
    (exported models) and a trained model's provenance use it.
    """
    if crs is None or not getattr(crs, "is_projected", False):
        return None
    if (crs.linear_units or "").lower() not in ("metre", "meter", "m"):
        return None
    if transform.b or transform.d or not math.isclose(abs(transform.a), abs(transform.e)):
        return None
    return float(abs(transform.a))


def output_transform(transform: Affine, stride: int) -> Affine:
    """Affine transform of the output grid for ``stride``: ``transform * Affine.scale(stride)``.

    Parameters
    ----------
    transform
        The input raster's affine transform (may be rotated or sheared).
    stride
        Output cell size in input pixels.

    Returns
    -------
    Affine
        Transform anchored on the input's origin with cells ``stride`` pixels wide.
    """
    return transform @ Affine.scale(stride)


@dataclass(frozen=True)
class PatchGrid:
    """Geometry of windows and output cells for an ``height x width`` raster.

    Parameters
    ----------
    height, width
        Input raster size in pixels (``y``, ``x``).
    patch
        Window size ``p`` in pixels.
    stride
        Output cell size ``s`` in pixels, ``1 <= s <= p``.

    Examples
    --------
    >>> g = PatchGrid(100, 130, patch=64, stride=32)
    >>> g.out_shape
    (4, 5)
    >>> g.window_origin(0, 0)
    (-16, -16)
    """

    height: int
    width: int
    patch: int = DEFAULT_PATCH
    stride: int = DEFAULT_PATCH

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(
                f"raster must have at least one pixel; found {self.height} x {self.width}"
            )
        if self.patch < 1:
            raise InputError(f"patch size must be >= 1; found {self.patch}")
        check_stride(self.stride, self.patch)

    @property
    def out_shape(self) -> tuple[int, int]:
        """``(ceil(H / s), ceil(W / s))``: output cells covering the whole input."""
        return (math.ceil(self.height / self.stride), math.ceil(self.width / self.stride))

    @property
    def offset(self) -> int:
        """Offset (``<= 0``) of a window's top-left pixel from its cell's top-left pixel."""
        return (self.stride - self.patch) // 2

    @property
    def halo_before(self) -> int:
        """Pixels a window reaches before its cell (towards the origin)."""
        return -self.offset

    @property
    def halo_after(self) -> int:
        """Pixels a window reaches past the far edge of its cell."""
        return self.patch - self.stride + self.offset

    @property
    def center_offset(self) -> int:
        """Offset of a window's centre pixel from its cell's top-left pixel."""
        return self.offset + self.patch // 2

    def window_origin(self, i: int, j: int) -> tuple[int, int]:
        """Top-left input pixel ``(row, col)`` of the window for output cell ``(i, j)``."""
        return (self.stride * i + self.offset, self.stride * j + self.offset)

    def out_transform(self, transform: Affine) -> Affine:
        """Output transform for an input with ``transform``."""
        return output_transform(transform, self.stride)


@dataclass(frozen=True)
class RasterGrid:
    """Where a raster lies: ``height x width`` pixels, affine ``transform``, ``crs``.

    Parameters
    ----------
    height, width
        Size in pixels (``y``, ``x``).
    transform
        Pixel ``(col, row)`` -> world ``(x, y)`` of the pixel's top-left corner;
        may be rotated or sheared.
    crs
        Anything rasterio/pyproj understands, or ``None`` (pixel coordinates).

    Examples
    --------
    >>> g = RasterGrid(100, 130, Affine(10, 0, 500000, 0, -10, 4600000), "EPSG:32633")
    >>> g.xy(0, 0)
    (500005.0, 4599995.0)
    >>> g.output(stride=32).shape
    (4, 5)
    """

    height: int
    width: int
    transform: Affine
    crs: Any = None

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(
                f"raster must have at least one pixel; found {self.height} x {self.width}"
            )

    @classmethod
    def of(cls, data: Any) -> RasterGrid:
        """The grid of a georeferenced xarray object (``y``/``x`` sizes, ``.rio`` transform/CRS)."""
        return cls(int(data.sizes["y"]), int(data.sizes["x"]), data.rio.transform(), data.rio.crs)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def north_up(self) -> bool:
        """No rotation or shear: x depends on columns only, y on rows only."""
        return self.transform.b == 0 and self.transform.d == 0

    def xy(self, row: Any, col: Any, *, corner: bool = False) -> tuple[Any, Any]:
        """World ``(x, y)`` of pixel ``(row, col)``: its centre, or its top-left ``corner``."""
        off = 0.0 if corner else 0.5
        t = self.transform
        c, r = np.asarray(col) + off, np.asarray(row) + off
        return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f

    def rowcol(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Integer pixel ``(rows, cols)`` containing world points (may fall outside the grid)."""
        inv = ~self.transform
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        cols = inv.a * xs + inv.b * ys + inv.c
        rows = inv.d * xs + inv.e * ys + inv.f
        return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)

    def centre_coords(self) -> dict[str, np.ndarray]:
        """Pixel-centre ``x``/``y`` coordinate vectors (as rioxarray writes them); ``{}`` if rotated."""
        if not self.north_up:
            return {}
        t = self.transform
        return {
            "x": t.c + t.a * (np.arange(self.width) + 0.5),
            "y": t.f + t.e * (np.arange(self.height) + 0.5),
        }

    def window(self, row: int, col: int, height: int, width: int) -> RasterGrid:
        """The sub-grid of ``height x width`` pixels whose top-left pixel is ``(row, col)``."""
        return RasterGrid(height, width, self.transform @ Affine.translation(col, row), self.crs)

    def output(self, *, stride: int) -> RasterGrid:
        """The class-map grid at ``stride``: same origin and CRS, cells of ``stride`` pixels."""
        return RasterGrid(
            math.ceil(self.height / stride),
            math.ceil(self.width / stride),
            output_transform(self.transform, stride),
            self.crs,
        )

    def same_as(self, other: RasterGrid, *, precision: float = 1e-6) -> bool:
        """Same size, (almost) the same transform and the same CRS."""
        return (
            self.shape == other.shape
            and self.transform.almost_equals(other.transform, precision=precision)
            and _same_crs(self.crs, other.crs)
        )


def _same_crs(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(a == b)
