"""The output grid of a prediction: where each window sits and what it maps to.

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

from affine import Affine

from georaster_cnn.errors import InputError

__all__ = ["DEFAULT_PATCH", "PatchGrid", "output_transform"]

DEFAULT_PATCH = 64


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
        if not 1 <= self.stride <= self.patch:
            raise InputError(
                f"stride must be between 1 and the patch size {self.patch}; found {self.stride}. "
                f"Pick a stride such as {self.patch}, {self.patch // 2} or {self.patch // 4}."
            )

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
