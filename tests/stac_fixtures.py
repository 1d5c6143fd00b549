"""STAC test data: COG scenes (one COG per band, and a local three-band GeoTIFF) and their Items.

Shared by tests/test_stac.py (the library) and tests/test_stac_cli.py (the commands).
Scenes are ``SIZE`` x ``SIZE`` pixels of ``RES`` metres in ``TILE``-pixel COG tiles;
each band's asset key is a Sentinel-2 name (``B04``, ``B08``, ``B11``) with its
``eo:bands`` common name (red, nir, swir16), which are a model's band names.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.warp
from pystac.extensions.projection import ProjectionExtension
from rasterio.transform import from_origin
from shapely.geometry import box, mapping, shape

BANDS = (("B04", "red"), ("B08", "nir"), ("B11", "swir16"))
MODEL_BANDS = ("red", "nir", "swir16")
SIZE, RES, TILE = 512, 10.0, 256
SCHEMAS = Path(__file__).parent / "stac_schemas"

#: odc-loader's reprojecting reads call rasterio.warp.reproject, which warns about the
#: in-memory destination it makes (rasterio's, not a property of the data)
QUIET_WARP = "ignore:Dataset has no geotransform:rasterio.errors.NotGeoreferencedWarning"


def write_scene(
    root: Path, name: str, epsg: int, x0: float, y0: float, seed: int, holes: bool
) -> None:
    """One COG per band, and the local three-band GeoTIFF of the same pixels."""
    rng = np.random.default_rng(seed)
    t = from_origin(x0, y0, RES, RES)
    stack = []
    for key, _ in BANDS:
        a = rng.integers(1, 10000, (SIZE, SIZE), dtype="uint16")
        if holes:
            a[:40, :40] = 0
        stack.append(a)
        profile = {
            "driver": "COG", "width": SIZE, "height": SIZE, "count": 1, "dtype": "uint16",
            "crs": f"EPSG:{epsg}", "transform": t, "nodata": 0, "BLOCKSIZE": TILE,
            "COMPRESS": "DEFLATE", "OVERVIEWS": "NONE",
        }  # fmt: skip
        with rasterio.open(root / f"{name}_{key}.tif", "w", **profile) as dst:
            dst.write(a, 1)
    profile = {
        "driver": "GTiff", "width": SIZE, "height": SIZE, "count": 3, "dtype": "uint16",
        "crs": f"EPSG:{epsg}", "transform": t, "nodata": 0, "tiled": True,
    }  # fmt: skip
    with rasterio.open(root / f"{name}.tif", "w", **profile) as dst:
        dst.write(np.stack(stack))
        dst.descriptions = MODEL_BANDS


def make_item(root: Path, name: str, base: str) -> pystac.Item:
    with rasterio.open(root / f"{name}_B04.tif") as src:
        crs, t, shp, b = src.crs, src.transform, src.shape, src.bounds
    wgs = rasterio.warp.transform_geom(crs, "EPSG:4326", mapping(box(*b)))
    item = pystac.Item(name, wgs, list(shape(wgs).bounds), datetime(2024, 6, 1, 10, tzinfo=UTC), {})
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code, proj.shape, proj.transform = f"EPSG:{crs.to_epsg()}", list(shp), list(t)[:6]
    for key, common in BANDS:
        item.add_asset(key, pystac.Asset(
            f"{base}{name}_{key}.tif", media_type=pystac.MediaType.COG, roles=["data"],
            extra_fields={"eo:bands": [{"name": key, "common_name": common}],
                          "raster:bands": [{"nodata": 0, "data_type": "uint16"}]},
        ))  # fmt: skip
    return item


def write_collection(root: Path, names: list[str], base: str, file: str = "items.json") -> Path:
    items = pystac.ItemCollection([make_item(root, n, base) for n in names])
    (root / file).write_text(json.dumps(items.to_dict(transform_hrefs=False)))
    return root / file


def write_scenes(root: Path) -> Path:
    """A1 and A2 side by side on one UTM 32N grid (nodata corners), A3 (UTM 32N) and B (33N)."""
    write_scene(root, "A1", 32632, 730000, 5000000, seed=1, holes=True)
    write_scene(root, "A2", 32632, 730000 + SIZE * RES, 5000000, seed=2, holes=True)
    write_scene(root, "B", 32633, 266000, 4998000, seed=3, holes=False)
    write_scene(root, "A3", 32632, 730000, 4990000, seed=4, holes=False)
    return root


def write_search_api(root: Path, url: str, names: list[str]) -> str:
    """A static STAC API under ``root`` (served at ``url``): a landing page ``api`` whose
    search (``search``, answered to POST by the loopback server) finds the Items ``names``.
    Returns the API's URL.
    """
    landing = {
        "type": "Catalog", "id": "api", "stac_version": "1.0.0", "description": "test API",
        "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                       "https://api.stacspec.org/v1.0.0/item-search"],
        "links": [
            {"rel": "self", "href": f"{url}/api"},
            {"rel": "root", "href": f"{url}/api"},
            {"rel": "search", "href": f"{url}/search", "type": "application/geo+json",
             "method": "POST"},
        ],
    }  # fmt: skip
    (root / "api").write_text(json.dumps(landing))
    found = pystac.ItemCollection([make_item(root, n, f"{url}/") for n in names])
    (root / "search").write_text(json.dumps(found.to_dict(transform_hrefs=False)))
    return f"{url}/api"
