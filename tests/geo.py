"""Grids shared by the tests (imported as ``from geo import NORTH_UP, ROTATED``)."""

from __future__ import annotations

from affine import Affine

#: North-up, 30 m pixels, EPSG:32633-like origin (conftest's default raster transform).
NORTH_UP = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_600_000.0)

#: Rotated and sheared, same origin and pixel size.
ROTATED = (
    Affine.translation(500_000.0, 4_600_000.0)
    @ Affine.rotation(30.0)
    @ Affine.shear(5.0, 0.0)
    @ Affine.scale(30.0, -30.0)
)
