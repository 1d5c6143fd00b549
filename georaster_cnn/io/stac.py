"""open_stac: STAC Items (a file, a URL, a search) -> the canonical lazy ``(band, y, x)`` array.

odc-stac does the work (``odc.stac.load``: items mosaicked and reprojected lazily onto
one grid, read through rasterio); this module decides what it is asked:

- **which Items** (:mod:`georaster_cnn.io._stac_items`: documents recognised by
  content, asset hrefs made absolute and checked: network only with ``allow_remote``,
  an HTTP catalogue never references local files, a local one only files next to it);
- **which bands**, by the model's names (asset key, then ``common_name``, then band
  ``name``; a mapping chooses explicitly), with the raster extension's scale/offset;
- **which grid**: the most common CRS of the matched assets and their finest
  resolution unless ``crs=``/``resolution=`` say otherwise, clipped to ``bbox``;
  its size is checked against ``max_pixels`` before any pixel is read;
- **how reads fail**: each asset's header is opened once first (a 404 or a timeout
  is a :class:`~georaster_cnn.errors.ReadError` naming the href, or, with
  ``skip_failed``, a warning and a mosaic without it); a read that fails later names
  its href too. GDAL's HTTP settings are :mod:`georaster_cnn.io.cloud`'s, carried
  into every read (Dask workers included) by the reader driver.

The result is what :func:`~georaster_cnn.io.reader.open_raster` returns: ``float32``,
NaN where no item has a valid pixel, CRS and transform on ``.rio``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from odc.loader import RioDriver
from odc.loader._rio import RioReader, capture_rio_env

from georaster_cnn.chips import BLOCK_PX
from georaster_cnn.errors import InputError, ReadError, StacReadWarning
from georaster_cnn.io._canonical import _canonical, _check_size, _root_message
from georaster_cnn.io._stac_assets import (
    Header,
    asset_of,
    describe_assets,
    is_described,
    probe_assets,
)
from georaster_cnn.io._stac_items import (
    BandMatch,
    StacSource,
    is_stac_document,
    match_bands,
    read_items,
)
from georaster_cnn.io.cloud import http_options, http_timeout
from georaster_cnn.options import DEFAULT_MAX_PIXELS, check_max_pixels

__all__ = ["is_stac_document", "open_stac", "stac_items", "stac_search"]

log = logging.getLogger(__name__)


def stac_items(
    source: Any, *, allow_remote: bool = False, datetime: str | None = None
) -> list[Any]:
    """The pystac Items of ``source`` (checked as :func:`open_stac` checks them), e.g. for ``per_item``."""
    return list(read_items(source, allow_remote=allow_remote, datetime_range=datetime).items)


def stac_search(
    url: str,
    *,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    allow_remote: bool = False,
) -> Any:
    """A pystac-client ``ItemSearch`` of the STAC API at ``url`` (run when its items are read).

    Raises
    ------
    InputError
        Without ``allow_remote`` (a search is a network request).
    ReadError
        The API cannot be reached or is not a STAC API.
    """
    if not allow_remote:
        raise InputError(
            f"{url}: a STAC search goes over the network; allow it with allow_remote=True"
        )
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        client = Client.open(url, timeout=http_timeout())
        return client.search(
            collections=list(collections) if collections else None,
            bbox=None if bbox is None else list(_four(bbox)),
            datetime=datetime,
        )
    except (APIError, OSError, ValueError) as exc:
        raise ReadError(f"{url}: cannot search this STAC API ({_root_message(exc)})") from exc


def open_stac(
    source: Any,
    *,
    bands: Sequence[str] | Mapping[str, str] | None = None,
    crs: Any = None,
    resolution: float | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    groupby: str = "solar_day",
    allow_remote: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_failed: bool = False,
) -> xr.DataArray:
    """Open STAC Items lazily as one ``float32`` ``(band, y, x)`` DataArray, ready for ``predict``.

    Parameters
    ----------
    source
        A STAC Item or ItemCollection: a file or ``http(s)`` URL (recognised by its
        content), a ``pystac.Item``, ``ItemCollection`` or list of Items, or a
        pystac-client ``ItemSearch``.
    bands
        The band names to load, in order (a model's ``band_names``): each matches an
        asset key, else an ``eo:bands``/``bands`` ``common_name``, else a band
        ``name``. A mapping ``{"red": "B04", ...}`` names the asset (or ``ASSET.N``)
        of each. ``None``: every data asset, named by its key.
    crs, resolution
        The output grid's CRS (anything pyproj reads) and cell size in its units;
        default: the most common CRS of the matched assets and their finest resolution
        (in that CRS). A ``crs`` no asset has needs a ``resolution``.
    bbox
        ``(west, south, east, north)`` in degrees (EPSG:4326): the extent to load;
        default: all the items' footprints.
    datetime
        ``"START/END"`` (RFC 3339 or dates; ``..`` for an open end): Items outside are
        left out (a search does this on the server).
    groupby
        How items make one layer (odc-stac: ``"solar_day"``, ``"time"``, ``"id"`` or a
        property name). Layers are then mosaicked into one, the first valid pixel in
        time order.
    allow_remote
        Allow network catalogues and assets (``http(s)://``, ``s3://``).
    max_pixels
        The largest output grid accepted (height x width x bands); checked before any
        pixel is read.
    skip_failed
        An asset that cannot be opened or read is left out (a :class:`StacReadWarning`
        names it) instead of failing the whole mosaic.

    Returns
    -------
    xarray.DataArray
        The canonical array (see :func:`georaster_cnn.open_raster`); attrs ``source``,
        ``source_dtype``, ``source_nodata`` and ``stac_items`` (JSON: each item's
        ``id``, ``href`` and ``datetime``, for the map's ``derived_from`` links).

    Raises
    ------
    InputError
        A band no item offers (named, with what they offer); a network location
        without ``allow_remote``; an asset the catalogue may not reference; a grid over
        ``max_pixels``; no Items.
    ReadError
        The catalogue cannot be read; an asset cannot be opened (404, timeout,
        truncated), naming its href. While computing: a failed read, naming its href.

    Examples
    --------
    >>> da = gc.open_stac("items.json", bands=model.band_names)  # doctest: +SKIP
    >>> da = gc.open_stac(search, bands={"red": "B04", "nir": "B08"}, crs="EPSG:32633",
    ...                   resolution=10, allow_remote=True)  # doctest: +SKIP
    """
    max_pixels = check_max_pixels(max_pixels)
    src = _within(read_items(source, allow_remote=allow_remote, datetime_range=datetime), bbox)
    matches = match_bands(src.items, bands, src.label)
    keys = [m.key for m in matches]

    def grid(items: StacSource) -> Any:
        gbox = _output_grid(items, keys, crs, resolution, bbox)
        ny, nx = gbox.shape.yx
        _check_size(src.label, len(keys), ny, nx, max_pixels)
        return gbox

    # with the grid in the Items' metadata, its size is checked before any request for an
    # asset; else the asset headers describe it first (no pixel is read either way)
    described = is_described(src.items, keys)
    gbox = grid(src) if described else None
    headers = probe_assets(src, keys, skip_failed=skip_failed)
    if bands is None:  # every band of every data asset, multi-band ones too
        matches = _every_band(src, matches, headers)
        keys[:] = [m.key for m in matches]
    items = StacSource(tuple(describe_assets(src.items, keys, headers)), src.label)
    if gbox is None:
        gbox = grid(items)
    ny, nx = gbox.shape.yx
    _check_size(src.label, len(keys), ny, nx, max_pixels)  # bands may be more now
    return _load(items, matches, headers, gbox, groupby=groupby, skip_failed=skip_failed)


# --------------------------------------------------------------------------- loading


class _Reader(RioReader):
    """odc-stac's rasterio reader, with failures that name the href (or are skipped)."""

    def __init__(self, src: Any, ctx: Any, skip_failed: bool) -> None:
        super().__init__(src, ctx)
        self._skip = skip_failed

    def read(self, cfg: Any, dst_geobox: Any, *, dst: Any = None, selection: Any = None) -> Any:
        try:
            return super().read(cfg, dst_geobox, dst=dst, selection=selection)
        except Exception as exc:  # rasterio's errors do not pickle: a plain ReadError does
            why = _root_message(exc)
        if not self._skip:
            raise ReadError(f"{self._src.uri}: cannot read pixels of this STAC asset ({why})")
        warnings.warn(
            f"{self._src.uri}: left out of the mosaic ({why})", StacReadWarning, stacklevel=2
        )
        empty = np.empty((0, 0), dtype=cfg.dtype) if dst is None else dst[0:0, 0:0]
        return np.s_[0:0, 0:0], empty


class _Driver(RioDriver):
    """odc-stac's rasterio driver with :mod:`~georaster_cnn.io.cloud`'s settings in every read.

    ``capture_env`` is what odc-loader ships with each task and restores around the
    read, on whichever worker runs it: the HTTP settings travel with the graph.
    """

    def __init__(self, skip_failed: bool = False) -> None:
        super().__init__()
        self._skip = skip_failed

    def capture_env(self) -> dict[str, Any]:
        return {**capture_rio_env(), **http_options()}

    def open(self, src: Any, ctx: Any) -> _Reader:
        return _Reader(src, ctx, self._skip)


def _grid(
    parsed: list[Any], keys: list[str], crs: Any, resolution: float | None
) -> tuple[Any, float, Any]:
    """CRS (most common), resolution (finest in that CRS) and pixel alignment of the output.

    The alignment is that of the finest asset in the output CRS at the output
    resolution, so that such assets are pasted, not resampled; else pixel edges at
    multiples of the resolution.
    """
    from odc.geo import CRS, xy_

    boxes = [g for p in parsed for g in p.geoboxes(keys)]
    if crs is None:
        if not boxes:
            raise InputError(
                "the items carry no projection (proj:) metadata for their assets; give crs= "
                "and resolution="
            )
        crs = Counter(g.crs for g in boxes).most_common(1)[0][0]
    crs = CRS(crs)
    same = sorted((abs(g.resolution.x), i) for i, g in enumerate(boxes) if g.crs == crs)
    if resolution is None:
        if not same:
            raise InputError(
                f"no matched asset is in {crs}, so the resolution cannot be chosen from them; "
                "give resolution= in the units of that CRS"
            )
        resolution = same[0][0]
    res = float(resolution)
    align = None
    for r, i in same:
        a = boxes[i].affine
        if np.isclose(r, res) and np.isclose(abs(a.e), res):
            align = xy_(a.c % res, a.f % res)
            break
    return crs, res, align


def _within(src: StacSource, bbox: Sequence[float] | None) -> StacSource:
    """The Items whose footprint (``bbox``, degrees) meets ``bbox``: no other is opened."""
    if bbox is None:
        return src
    w, s, e, n = _four(bbox)
    items = tuple(
        i for i in src.items
        if i.bbox is None or (i.bbox[0] <= e and i.bbox[2] >= w and i.bbox[1] <= n and i.bbox[3] >= s)
    )  # fmt: skip
    if not items:
        raise InputError(f"{src.label}: no STAC Item lies in bbox {list(bbox)}")
    return StacSource(items, src.label)


def _every_band(
    src: StacSource, matches: list[BandMatch], headers: Mapping[str, Header]
) -> list[BandMatch]:
    """``matches`` (one per data asset) with a multi-band asset as ``ASSET.1`` ... ``ASSET.N``."""
    wanted: dict[str, str] = {}
    for m in matches:
        counts = [headers[str(a.href)].count for it in src.items
                  if (a := asset_of(it, m.key)) is not None and str(a.href) in headers]  # fmt: skip
        n = max(counts, default=1)
        bands = {m.name: m.key} if n == 1 or "." in m.key else {
            f"{m.name}.{i}": f"{m.key}.{i}" for i in range(1, n + 1)
        }  # fmt: skip
        wanted.update(bands)
    return match_bands(src.items, wanted, src.label)  # with each band's scale/offset


def _output_grid(
    src: StacSource, keys: list[str], crs: Any, resolution: float | None,
    bbox: Sequence[float] | None,
) -> Any:  # fmt: skip
    """The odc-geo GeoBox of the output (module docstring: the grid choice)."""
    import odc.stac

    parsed = list(odc.stac.parse_items(src.items))
    out_crs, res, align = _grid(parsed, keys, crs, resolution)
    try:
        gbox = odc.stac.output_geobox(
            parsed, keys, crs=out_crs, resolution=res, align=align,
            bbox=None if bbox is None else _four(bbox),
        )  # fmt: skip
    except ValueError as exc:
        raise InputError(f"{src.label}: cannot make the output grid ({exc})") from exc
    if gbox is None:
        raise InputError(f"{src.label}: cannot make the output grid; give crs= and resolution=")
    return gbox


def _load(
    src: StacSource, matches: list[BandMatch], headers: Mapping[str, Header], gbox: Any, *,
    groupby: str, skip_failed: bool,
) -> xr.DataArray:  # fmt: skip
    import odc.stac

    keys = [m.key for m in matches]
    ds = odc.stac.load(
        src.items, bands=keys, geobox=gbox, groupby=groupby, dtype="float32",
        chunks={"y": BLOCK_PX, "x": BLOCK_PX}, driver=_Driver(skip_failed),
        fail_on_error=True, nodata=float("nan"),
    )  # fmt: skip
    layers = [ds[k] for k in keys]
    arr = xr.concat(layers, dim="band", coords="minimal", compat="override", join="override")
    mosaic = arr.isel(time=0)
    for t in range(1, arr.sizes["time"]):  # the first valid pixel, in time order
        mosaic = mosaic.fillna(arr.isel(time=t))
    scale = np.array([m.scale for m in matches], dtype="float32")[:, None, None]
    offset = np.array([m.offset for m in matches], dtype="float32")[:, None, None]
    data = mosaic.data
    if (scale != 1).any() or (offset != 0).any():
        data = data * scale + offset
    data = data.astype("float32").rechunk({0: -1})
    dtypes = {h.dtype for h in headers.values()}
    nodatas = {h.nodata for h in headers.values()}
    return _canonical(
        data,
        names=[m.name for m in matches],
        transform=gbox.transform,
        crs=gbox.crs.to_wkt(),
        attrs={
            "source": src.label,
            "source_dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
            "source_nodata": _one(nodatas),
            "stac_items": json.dumps([_record(i, keys) for i in src.items]),
        },
    )


def _four(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    if len(bbox) != 4:
        raise InputError(f"bbox must be (west, south, east, north) in degrees; found {bbox!r}")
    w, s, e, n = (float(v) for v in bbox)
    return w, s, e, n


def _one(nodatas: set[float | None]) -> float | None:
    value = next(iter(nodatas)) if len(nodatas) == 1 else None
    return None if value is None else float(value)


def _record(item: Any, keys: Sequence[str]) -> dict[str, Any]:
    """What a map's STAC Item and resume key say of a source Item: its id, href, times, assets."""
    props = item.properties
    return {
        "assets": sorted({str(a.href) for k in keys if (a := asset_of(item, k)) is not None}),
        "id": item.id,
        "href": item.get_self_href(),
        "datetime": props.get("datetime"),
        "start_datetime": props.get("start_datetime") or props.get("datetime"),
        "end_datetime": props.get("end_datetime") or props.get("datetime"),
    }
