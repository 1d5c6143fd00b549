"""STAC sources -> pystac Items whose asset hrefs are absolute and allowed; bands matched by name.

What :func:`georaster_cnn.open_stac` reads before any pixel: the Item or
ItemCollection document (a local file or a URL, recognised by its content), or
the pystac objects a user holds (an Item, an ItemCollection, a list of Items, a
pystac-client ``ItemSearch``).

Where an asset may live (the rule of the reader, as strict as for rasters):

- a network location (``http(s)://``, ``s3://``) only with ``allow_remote``;
- a catalogue read over HTTP references network assets only, never local paths
  or ``file://``: a server must not make us read this machine's files;
- a local catalogue references local files next to it (its folder or below), or
  network assets (with ``allow_remote``);
- Items held in memory (built by the user) may reference any local file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from georaster_cnn.errors import InputError, ReadError
from georaster_cnn.io.cloud import http_timeout
from georaster_cnn.io.formats import INPUT_SUFFIXES, is_network_location, location_name

__all__ = [
    "MAX_STAC_BYTES",
    "BandMatch",
    "StacSource",
    "is_stac_document",
    "match_bands",
    "read_items",
]

#: The largest Item/ItemCollection document read (a JSON file is parsed whole).
MAX_STAC_BYTES = 64 * 2**20

_REMOTE_SCHEMES = ("http", "https", "s3")
_STAC_TYPES = ("Feature", "FeatureCollection")


@dataclass(frozen=True)
class StacSource:
    """The Items read, and where their catalogue came from (for the asset rules)."""

    items: tuple[Any, ...]  # pystac.Item
    label: str  # names the source in messages and attrs


# --------------------------------------------------------------------------- documents


def is_stac_document(location: str | os.PathLike[str], *, allow_remote: bool = False) -> bool:
    """Whether ``location`` holds a STAC Item or ItemCollection, by its content (not its suffix).

    A local file is sniffed by its first bytes (a JSON object naming ``"type":
    "Feature"`` or ``"FeatureCollection"``); a URL only with ``allow_remote`` (its first
    bytes are fetched), else ``False``. Folders, devices and unreadable files: ``False``;
    so are names with a raster suffix (``.tif``, ``.nc`` ...: never fetched to be sniffed).
    """
    name = os.fspath(location)
    if location_name(name).suffix.lower() in INPUT_SUFFIXES:
        return False
    if is_network_location(name):
        if not allow_remote or urlparse(name).scheme not in ("http", "https"):
            return False
        try:
            head = _fetch(name, limit=4096)
        except ReadError:
            return False
    else:
        try:
            if not stat.S_ISREG(os.stat(name).st_mode):
                return False
            with open(name, "rb") as f:
                head = f.read(4096)
        except OSError:
            return False
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"{"):
        return False
    return re.search(rb'"type"\s*:\s*"(Feature|FeatureCollection)"', head) is not None


def _fetch(url: str, *, limit: int = MAX_STAC_BYTES) -> bytes:
    """The body of ``url`` (at most ``limit`` bytes), within the HTTP timeout."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": "application/json, */*"})
    if limit < MAX_STAC_BYTES:
        req.add_header("Range", f"bytes=0-{limit - 1}")
    try:
        with urllib.request.urlopen(req, timeout=http_timeout()) as resp:
            data = bytes(resp.read(limit + 1))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ReadError(f"{url}: cannot read the STAC document ({exc})") from exc
    if len(data) > limit and limit == MAX_STAC_BYTES:
        raise InputError(f"{url}: a STAC document over {MAX_STAC_BYTES // 2**20} MiB; refused")
    return data[:limit]


def _read_document(location: str, *, allow_remote: bool) -> dict[str, Any]:
    if is_network_location(location):
        if not allow_remote:
            raise InputError(
                f"{location}: a network location; STAC catalogues are read from local files "
                "only unless allow_remote=True"
            )
        if urlparse(location).scheme not in ("http", "https"):
            raise InputError(f"{location}: STAC documents are read over http(s) only")
        data = _fetch(location)
    else:
        p = Path(location)
        try:
            st = os.stat(p)
            if not stat.S_ISREG(st.st_mode):
                raise ReadError(f"{location}: not a regular file; give a STAC Item JSON file")
            if st.st_size > MAX_STAC_BYTES:
                raise InputError(
                    f"{location}: {st.st_size:,} bytes, over the {MAX_STAC_BYTES // 2**20} MiB "
                    "read for a STAC document; refused"
                )
            data = p.read_bytes()
        except OSError as exc:
            raise ReadError(f"{location}: cannot read ({exc.strerror or exc})") from exc
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReadError(f"{location}: not a JSON document ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("type") not in _STAC_TYPES:
        found = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(
            f"{location}: expected a STAC Item (type Feature) or ItemCollection "
            f"(type FeatureCollection); found type {found!r}"
        )
    return doc


# --------------------------------------------------------------------------- items


def read_items(
    source: Any,
    *,
    allow_remote: bool = False,
    datetime_range: str | None = None,
) -> StacSource:
    """The Items of ``source`` with absolute, allowed asset hrefs (module docstring).

    Raises
    ------
    InputError
        A network catalogue or asset without ``allow_remote``; an asset a catalogue may
        not reference; a document that is no Item/ItemCollection; no Items (after the
        ``datetime_range`` filter).
    ReadError
        The document cannot be read.
    """
    import pystac

    base: str | None = None  # the catalogue's location, when read from one
    single = False  # the document is one Item (its location is the item's own)
    if isinstance(source, (str, os.PathLike)):
        location = os.fspath(source)
        if not is_network_location(location):
            location = str(Path(location).absolute())
        doc = _read_document(location, allow_remote=allow_remote)
        if doc["type"] == "Feature":
            items = [pystac.Item.from_dict(doc, preserve_dict=False)]
        else:
            items = list(pystac.ItemCollection.from_dict(doc, preserve_dict=False).items)
        base, label, single = location, os.fspath(source), doc["type"] == "Feature"
    elif isinstance(source, pystac.Item):
        items, label = [source], source.get_self_href() or source.id
    elif isinstance(source, pystac.ItemCollection):
        items, label = list(source.items), "an ItemCollection"
    elif hasattr(source, "items") and callable(source.items) and hasattr(source, "url"):
        # a pystac-client ItemSearch: its items came over the network (the HTTP rules)
        items, label = _search_results(source), str(source.url)
        base = label
    elif isinstance(source, Iterable):
        items, label = list(source), "the Items given"
        bad = [type(i).__name__ for i in items if not isinstance(i, pystac.Item)]
        if bad:
            raise InputError(f"expected pystac Items; found {', '.join(sorted(set(bad)))}")
    else:
        raise InputError(
            "open_stac: expected a STAC Item/ItemCollection file or URL, a pystac Item, "
            f"ItemCollection or list of Items, or a pystac-client ItemSearch; found "
            f"{type(source).__name__}"
        )
    items = [_with_checked_assets(i, base, allow_remote=allow_remote, single=single) for i in items]
    if datetime_range:
        items = [i for i in items if _in_range(i, datetime_range)]
    if not items:
        raise InputError(
            f"{label}: no STAC Items"
            + (f" in {datetime_range}" if datetime_range else "")
            + "; widen the search or the datetime range"
        )
    return StacSource(tuple(items), label)


def _search_results(search: Any) -> list[Any]:
    """The Items a pystac-client search finds (the requests run here)."""
    from pystac_client.exceptions import APIError
    from requests import RequestException

    try:
        return list(search.items())
    except (APIError, RequestException, OSError) as exc:
        raise ReadError(f"{search.url}: the STAC search failed ({exc})") from exc


def _with_checked_assets(
    item: Any, base: str | None, *, allow_remote: bool, single: bool = False
) -> Any:
    """A copy of ``item`` with every asset href absolute and checked."""
    from pystac.utils import make_absolute_href

    out = item.clone()
    start = base or item.get_self_href()
    for key, asset in out.assets.items():
        href = make_absolute_href(asset.href, start) if start else asset.href
        asset.href = _allowed(href, key, item.id, start, base_given=base is not None,
                              allow_remote=allow_remote)  # fmt: skip
    if out.get_self_href() is None and base is not None:
        # where the item was read (an ItemCollection's member: the document, #its id)
        out.set_self_href(base if single else f"{base}#{item.id}")
    return out


def _allowed(
    href: str, key: str, item_id: str, catalogue: str | None, *, base_given: bool,
    allow_remote: bool,
) -> str:  # fmt: skip
    """``href`` as GDAL should read it, if the rules allow it (module docstring)."""
    what = f"asset {key!r} of item {item_id!r} ({href})"
    scheme = urlparse(href).scheme.lower()
    if scheme in _REMOTE_SCHEMES or (scheme != "file" and is_network_location(href)):
        if scheme not in _REMOTE_SCHEMES:
            raise InputError(f"{what}: only http(s) and s3 assets are read; refused")
        if not allow_remote:
            raise InputError(
                f"{what} is a network location; assets are read from local files only "
                "unless allow_remote=True"
            )
        return href
    remote_catalogue = catalogue is not None and is_network_location(catalogue)
    if remote_catalogue:
        raise InputError(
            f"{what}: a catalogue read over the network ({catalogue}) may reference only "
            "http(s) and s3 assets, never local files; refused"
        )
    if scheme == "file":
        href = unquote(urlparse(href).path)
    elif scheme and len(scheme) > 1:
        raise InputError(f"{what}: a {scheme}:// asset; only http(s), s3 and local files")
    path = Path(href)
    if catalogue is not None and base_given:
        folder = Path(catalogue).resolve().parent
        if not path.resolve().is_relative_to(folder):
            raise InputError(
                f"{what} lies outside the catalogue's folder {folder}; a local catalogue "
                "may reference files next to it (its folder or below) only; refused"
            )
    return str(path.absolute())


def _in_range(item: Any, interval: str) -> bool:
    """Whether the item's time (or start/end) meets ``A/B`` (``..`` open; a date: the whole day)."""
    lo, hi = _interval(interval)
    props = item.properties
    start = props.get("start_datetime") or props.get("datetime")
    end = props.get("end_datetime") or props.get("datetime")
    if start is None:
        return True
    from pystac.utils import str_to_datetime

    t0, t1 = str_to_datetime(start), str_to_datetime(end)
    return (hi is None or t0 <= hi) and (lo is None or t1 >= lo)


def _interval(text: str) -> tuple[datetime | None, datetime | None]:
    from pystac.utils import str_to_datetime

    def one(s: str, end: bool) -> datetime | None:
        s = s.strip()
        if s in ("", ".."):
            return None
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            s += "T23:59:59.999999Z" if end else "T00:00:00Z"
        try:
            t = str_to_datetime(s)
        except ValueError as exc:
            raise InputError(
                f"datetime {text!r}: expected START/END in RFC 3339 (2024-06-01/2024-06-30, "
                "'..' for an open end)"
            ) from exc
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    a, _, b = text.partition("/")
    return one(a, False), one(b if b else a, True)


# --------------------------------------------------------------------------- bands


@dataclass(frozen=True)
class BandMatch:
    """The band loaded for one wanted name: odc-stac's band key and the raster metadata."""

    name: str  # the name the band gets (the model's)
    key: str  # asset key, or ASSET.N for band N of a multi-band asset
    scale: float = 1.0
    offset: float = 0.0


def _asset_bands(asset: Any) -> list[dict[str, Any]]:
    fields = asset.extra_fields
    bands = fields.get("bands") or fields.get("eo:bands") or []
    return [b for b in bands if isinstance(b, dict)]


def _raster_bands(asset: Any) -> list[dict[str, Any]]:
    """Per band: scale, offset (raster:bands of STAC 1.0, or bands' raster: fields of 1.1)."""
    fields = asset.extra_fields
    if isinstance(fields.get("raster:bands"), list):
        return [b if isinstance(b, dict) else {} for b in fields["raster:bands"]]
    out = []
    for b in fields.get("bands") or []:
        b = b if isinstance(b, dict) else {}
        out.append({"scale": b.get("raster:scale"), "offset": b.get("raster:offset")})
    return out


def _is_raster(asset: Any) -> bool:
    roles = asset.roles or []
    kind = (asset.media_type or "").lower()
    if any(r in roles for r in ("thumbnail", "overview", "metadata")):
        return False
    return "data" in roles or "tiff" in kind or "jp2" in kind or not kind


def match_bands(
    items: Sequence[Any], wanted: Sequence[str] | Mapping[str, str] | None, label: str
) -> list[BandMatch]:
    """The band to load for each wanted name, in order (the issue's matching rules).

    Each name is looked up as an asset key, then as a ``common_name`` of an asset's
    ``eo:bands``/``bands``, then as a band ``name``; a mapping names the asset (or
    ``ASSET.N``) for each name. ``None``: every raster asset, by its key.

    Raises
    ------
    InputError
        A wanted band that no item offers (naming it and listing what they offer), or
        items that disagree on a band's scale/offset.
    """
    assets: dict[str, list[Any]] = {}
    for item in items:
        for k, a in item.assets.items():
            if _is_raster(a):
                assets.setdefault(k, []).append(a)
    if wanted is None:
        names = {k: k for k in assets}
    elif isinstance(wanted, Mapping):
        names = {str(n): str(k) for n, k in wanted.items()}
    else:
        names = {str(n): "" for n in wanted}
    out = []
    for name, explicit in names.items():
        key = explicit or _find(name, assets)
        asset_key, _, idx = key.partition(".") if key not in assets else (key, "", "")
        if not key or asset_key not in assets:
            raise InputError(_missing(name, explicit, assets, label))
        out.append(_with_raster(name, key, asset_key, int(idx or 1), assets[asset_key], label))
    return out


def _find(name: str, assets: Mapping[str, list[Any]]) -> str:
    if name in assets:
        return name
    for field in ("common_name", "name"):
        for key, versions in assets.items():
            bands = _asset_bands(versions[0])
            for i, b in enumerate(bands):
                if b.get(field) == name:
                    return key if len(bands) == 1 else f"{key}.{i + 1}"
    return ""


def _missing(name: str, explicit: str, assets: Mapping[str, list[Any]], label: str) -> str:
    common = sorted({str(b["common_name"]) for v in assets.values() for b in _asset_bands(v[0])
                     if b.get("common_name")})  # fmt: skip
    offered = f"assets {', '.join(sorted(assets)) or '(none)'}"
    if common:
        offered += f"; common names {', '.join(common)}"
    if explicit:
        return f"{label}: band {name!r} is mapped to {explicit!r}, which no item has; they offer {offered}"
    return (
        f"{label}: the model's band {name!r} matches no asset key, common_name or band name of "
        f"the items; they offer {offered}. Map it explicitly, e.g. bands={{{name!r}: 'ASSET'}}"
    )


def _with_raster(
    name: str, key: str, asset_key: str, idx: int, versions: list[Any], label: str
) -> BandMatch:
    """The match with its scale/offset from the raster extension (the same in every item)."""
    seen = set()
    for asset in versions:
        rb = _raster_bands(asset)
        meta = rb[idx - 1] if len(rb) >= idx else {}
        seen.add((float(meta.get("scale") or 1.0), float(meta.get("offset") or 0.0)))
    if len(seen) > 1:
        raise InputError(
            f"{label}: the items disagree on the scale/offset of asset {asset_key!r} "
            f"({sorted(seen)}); load them one at a time (per item)"
        )
    scale, offset = seen.pop()
    return BandMatch(name, key, scale, offset)
