"""The STAC Item that catalogues a class map: ``write_prediction(..., stac_item=True)``.

Beside ``maps/scene.tif`` goes ``maps/scene.json``: a STAC Item (built with pystac and
its projection and classification extensions) whose one asset, ``class_map``, is the
map (by a relative href), with the footprint in WGS 84 (``geometry``, ``bbox``), the
grid (``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox``), the classes
(``classification:classes``: value, name, title and colour), the class band's nodata and
type (``raster:bands``), a ``derived_from`` link to each STAC Item the map was made from, and the model's
name, digest and architecture (``georaster_cnn:model``). :func:`georaster_cnn.open_stac`
opens the Item and gives the map back. The Item is STAC 1.0.0 (the core, projection
v2.0.0, raster v1.1.0 and classification v1.1.0 schemas validate it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xarray as xr

from georaster_cnn.io.classmap import CLASS_NODATA, prediction_classes
from georaster_cnn.io.staging import atomic_write

__all__ = ["CLASS_MAP_ASSET", "STAC_ITEM_SUFFIX", "STAC_VERSION", "map_item", "write_map_item"]

#: The suffix of the Item written beside a class map (``scene.tif`` -> ``scene.json``).
STAC_ITEM_SUFFIX = ".json"
#: The key of the class map's asset in its Item.
CLASS_MAP_ASSET = "class_map"
#: The STAC version the Item is written in: 1.0, read by every STAC tool (1.1 readers too).
STAC_VERSION = "1.0.0"

# classification v1.1.0: the version of the extension's published schema (v2.0.0 adds no
# field used here); names are slugs there, the class name as given is the title
_CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
_GTIFF = "image/tiff; application=geotiff"


def map_item(pred: xr.Dataset, map_path: Path, *, cog: bool, model_name: str | None = None) -> Any:
    """The ``pystac.Item`` of the class map ``map_path`` written from ``pred`` (module docstring)."""
    import pystac
    from odc.geo.geobox import GeoBox
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    names, colors = prediction_classes(pred.attrs)
    height, width = pred["class"].shape
    transform, crs = pred.rio.transform(), pred.rio.crs
    gbox = GeoBox((height, width), transform, crs.to_wkt())
    footprint = gbox.footprint("EPSG:4326", npoints=20)
    sources = json.loads(pred.attrs.get("stac_items", "[]"))
    starts = sorted(s["start_datetime"] for s in sources if s.get("start_datetime"))
    ends = sorted(s["end_datetime"] for s in sources if s.get("end_datetime"))
    props: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "georaster_cnn:model": {
            "name": model_name or str(pred.attrs.get("model_arch", "")),
            "architecture": str(pred.attrs.get("model_arch", "")),
            "checksum": str(pred.attrs.get("model_checksum", "")),
            "stride": int(pred.attrs.get("stride", 0)),
        },
    }
    when: datetime | None = None
    if starts and ends:
        props["start_datetime"], props["end_datetime"] = starts[0], ends[-1]
    else:
        when = datetime.now(UTC)
    item = pystac.Item(
        id=map_path.stem,
        geometry=footprint.json,
        bbox=list(footprint.boundingbox),
        datetime=when,
        properties=props,
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = crs.to_wkt()
    proj.shape = [height, width]
    proj.transform = list(transform)[:6]
    proj.bbox = list(gbox.extent.boundingbox)
    asset = pystac.Asset(
        href=f"./{map_path.name}", media_type=_COG if cog else _GTIFF, roles=["data"],
        title="class map",
    )  # fmt: skip
    item.add_asset(CLASS_MAP_ASSET, asset)
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(nodata=CLASS_NODATA, data_type=DataType.UINT8)
    ]
    classes = [
        Classification.create(value=i, description=n, name=_slug(n), color_hint=_hex(c))
        for i, (n, c) in enumerate(zip(names, colors, strict=True))
    ]
    ClassificationExtension.ext(asset, add_if_missing=True).classes = classes
    for c, n in zip(asset.extra_fields["classification:classes"], names, strict=True):
        c["title"] = n
    item.stac_extensions = [
        _CLASSIFICATION if "/classification/" in e else e for e in item.stac_extensions
    ]
    for s in sources:
        if s.get("href"):
            item.add_link(pystac.Link("derived_from", s["href"], pystac.MediaType.GEOJSON))
    return item


def write_map_item(
    pred: xr.Dataset,
    map_path: Path,
    *,
    cog: bool,
    overwrite: bool,
    model_name: str | None = None,
) -> Path:
    """Write :func:`map_item` beside ``map_path`` (atomically); the Item's path."""
    item = map_item(pred, map_path, cog=cog, model_name=model_name)
    out = map_path.with_suffix(STAC_ITEM_SUFFIX)
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    doc["stac_version"] = STAC_VERSION  # every field used is STAC 1.0's (module docstring)
    text = json.dumps(doc, indent=2)
    atomic_write(out, lambda f: f.write(text.encode("utf-8")), overwrite=overwrite)
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or "class"


def _hex(color: Mapping[int, int] | Any) -> str:
    r, g, b = (int(v) for v in list(color)[:3])
    return f"{r:02X}{g:02X}{b:02X}"
