"""The assets of a STAC mosaic, opened once before it is built: checked, and described when the Items are not.

:func:`probe_assets` opens the header of every asset a mosaic needs (in a few
threads), by the reader's rules (:func:`georaster_cnn.io._gdal_open.open_input`: a
``.tif`` is a GeoTIFF, never a VRT), under :mod:`georaster_cnn.io.cloud`'s settings.
An asset that cannot be opened (404, timeout, a truncated answer, not a raster) is a
:class:`~georaster_cnn.errors.ReadError` naming its href, or, with ``skip_failed``, a
:class:`~georaster_cnn.errors.StacReadWarning` and its Item left out. The headers
stay in GDAL's cache of this process: the reads that follow do not fetch them again.

:func:`describe_assets` fills in what odc-stac needs and an Item may not say: the
asset's grid (``proj:code``/``proj:wkt2``, ``proj:shape``, ``proj:transform``) and
its bands' data type, nodata and count (``raster:bands``), from the header.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from georaster_cnn.errors import ReadError, StacReadWarning
from georaster_cnn.io._canonical import _root_message
from georaster_cnn.io._gdal_open import open_input
from georaster_cnn.io._stac_items import StacSource
from georaster_cnn.io.cloud import http_env
from georaster_cnn.io.formats import is_network_location

__all__ = ["Header", "asset_of", "describe_assets", "is_described", "probe_assets"]

#: Headers opened at once (each a few small range requests).
PROBES = 8

_CRS_FIELDS = ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson")  # one says the CRS


@dataclass(frozen=True)
class Header:
    """What an asset's header says."""

    dtype: str
    nodata: float | None
    count: int
    crs: str | None  # "EPSG:n", else WKT
    transform: tuple[float, ...]
    shape: tuple[int, int]


def asset_of(item: Any, key: str) -> Any:
    """The asset a band key (``ASSET`` or ``ASSET.N``) names in ``item``, or None."""
    if key in item.assets:
        return item.assets[key]
    return item.assets.get(key.rpartition(".")[0])


def probe_assets(src: StacSource, keys: Sequence[str], *, skip_failed: bool) -> dict[str, Header]:
    """The header of every asset of ``keys`` in ``src``, by href (module docstring).

    With ``skip_failed``, ``src.items`` loses the Items with an asset that failed (the
    returned mapping has only the good hrefs).
    """
    hrefs = sorted({str(a.href) for it in src.items for k in keys if (a := asset_of(it, k))})
    with ThreadPoolExecutor(min(PROBES, max(1, len(hrefs)))) as pool:
        found = dict(zip(hrefs, pool.map(_header, hrefs), strict=True))
    failed = {h: why for h, why in found.items() if isinstance(why, str)}
    if failed and not skip_failed:
        h, why = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more asset(s))" if len(failed) > 1 else ""
        raise ReadError(
            f"{h}: cannot open this STAC asset ({why}){more}; check the href, or leave "
            "failing assets out with skip_failed=True"
        )
    for h, why in failed.items():
        warnings.warn(f"{h}: left out of the mosaic ({why})", StacReadWarning, stacklevel=4)
    return {h: v for h, v in found.items() if not isinstance(v, str)}


def _header(href: str) -> Header | str:
    """The asset's :class:`Header`, or why it cannot be opened."""
    try:
        with (
            http_env(is_network_location(href)),
            open_input(href, allow_remote=True, quiet=True) as ds,
        ):
            epsg = ds.crs.to_epsg() if ds.crs is not None else None
            crs = f"EPSG:{epsg}" if epsg else (ds.crs.to_wkt() if ds.crs is not None else None)
            return Header(
                dtype=str(ds.dtypes[0]),
                nodata=None if ds.nodata is None else float(ds.nodata),
                count=int(ds.count),
                crs=crs,
                transform=tuple(ds.transform)[:6],
                shape=(int(ds.height), int(ds.width)),
            )
    except Exception as exc:  # any failure to open names the href; never a bare crash
        return _root_message(exc)


def _band_key(item: Any, key: str) -> tuple[str, int]:
    """odc-stac's ``(asset, band)`` for a band key (``ASSET`` or ``ASSET.N``)."""
    if key in item.assets:
        return key, 1
    asset, _, n = key.rpartition(".")
    return asset, int(n)


def _undescribed(items: Sequence[Any], keys: Sequence[str]) -> set[tuple[int, str]]:
    """``(item index, asset key)`` of the assets odc-stac sees no grid or band for."""
    import odc.stac

    out = set()
    for i, (item, parsed) in enumerate(zip(items, odc.stac.parse_items(items), strict=True)):
        for key in keys:
            if asset_of(item, key) is None:
                continue
            band = parsed.bands.get(_band_key(item, key))
            if getattr(band, "geobox", None) is None:  # no band, or no grid for it
                out.add((i, _band_key(item, key)[0]))
    return out


def is_described(items: Sequence[Any], keys: Sequence[str]) -> bool:
    """Whether the Items state every band of ``keys`` and its grid (as odc-stac reads them)."""
    return not _undescribed(items, keys)


def describe_assets(
    items: Sequence[Any], keys: Sequence[str], headers: Mapping[str, Header]
) -> list[Any]:
    """The Items (those whose assets all opened) with grids and bands their headers state.

    Only assets odc-stac sees no grid or band for are described; an Item with an asset
    that failed (not in ``headers``) is left out.
    """
    todo = _undescribed(items, keys)
    out = []
    for i, item in enumerate(items):
        used = {k: a for k in keys if (a := asset_of(item, k)) is not None}
        if any(str(a.href) not in headers for a in used.values()):
            continue  # skipped (skip_failed): its warning was given
        item = item.clone()
        for key in sorted({_band_key(item, k)[0] for k in used}):
            if (i, key) in todo:
                _describe(item, item.assets[key], headers[str(item.assets[key].href)])
        out.append(item)
    if not out:
        raise ReadError("no STAC asset could be opened; nothing to read")
    return out


def _describe(item: Any, asset: Any, h: Header) -> None:
    """State the header's grid and bands on the asset (odc-stac reads asset fields first)."""
    from pystac.extensions.projection import ProjectionExtension

    ProjectionExtension.add_to(item)
    fields = asset.extra_fields
    for f in _CRS_FIELDS:
        fields.pop(f, None)
    if h.crs is not None:
        fields["proj:code" if h.crs.startswith("EPSG:") else "proj:wkt2"] = h.crs
    fields["proj:shape"] = list(h.shape)
    fields["proj:transform"] = list(h.transform)
    bands = fields.get("raster:bands")
    known = bands if isinstance(bands, list) else []
    if len(known) < h.count:
        nodata = {} if h.nodata is None else {"nodata": h.nodata}
        extra = [{"data_type": h.dtype, **nodata} for _ in range(h.count - len(known))]
        fields["raster:bands"] = known + extra
