"""The identity of everything a prediction reads: part of its resume key.

A resumed write reuses blocks only while its inputs are the same; this module says
what "the same" means, cheaply and without reading pixels:

* a local file: its resolved path, size, modification time, change time (``ctime``,
  which cannot be set back: a same-size rewrite with its modification time restored,
  ``touch -r``, still changes it) and inode (a file replaced by another); with the
  GDAL sidecars that change what is read (``.aux.xml``: nodata, scales; ``.msk``);
* a folder (a Zarr store): the same of the folder, and of everything in it the
  number of files, their bytes and the newest modification and change times (a
  chunk rewritten in place leaves the store's own folder untouched);
* a VRT: the VRT file and, in turn, every source it names (``SourceFilename``,
  ``SourceDataset``; relative to the VRT with ``relativeToVRT="1"``), through nested
  VRTs;
* a network location (``/vsicurl/``, ``http(s)://``, GDAL's other network file
  systems): the ``ETag``, ``Last-Modified`` and ``Content-Length`` headers of a
  request through GDAL (``VSIGetFileMetadata(..., "HEADERS")``, a ``HEAD``), so a file
  changed at the same URL gets another key. Where GDAL cannot be asked or the server
  sends none of them, the location alone is the identity: a remote file changed in
  place is then *not* detected, and a rerun after such a change should not resume
  (``resume=False``);
* several files (``a.nc;b.nc``, ``a.nc, b.nc``, a glob pattern): each of them;
* a STAC mosaic (:func:`georaster_cnn.open_stac`): the catalogue, and each asset read
  (:func:`stac_identity`, from the prediction's ``stac_items`` attribute).

Names that are none of these (missing files) are kept as given.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from georaster_cnn.errors import GeorasterCNNError
from georaster_cnn.io._gdal_open import (
    _PREFIXED,
    _SOURCE_TAGS,
    MAX_VRT_DEPTH,
    _head,
    _local,
    _parse_vrt,
    _xml_root,
    is_remote,
)

__all__ = ["input_identity", "stac_identity"]

log = logging.getLogger(__name__)

#: GDAL sidecars that change what is read from a raster (nodata, scales, masks).
_SIDECARS = (".aux.xml", ".msk")
#: Response headers that identify a remote file's content.
_REMOTE_HEADERS = ("etag", "last-modified", "content-length")
_HTTP = re.compile(r"^https?://", re.IGNORECASE)
_GLOB = re.compile(r"[*?[]")


def input_identity(source: str) -> list[dict[str, Any]]:
    """The identity of every input a prediction names (see the module docstring).

    Parameters
    ----------
    source
        A prediction's ``source`` attribute: one path or location, or several
        joined by ``;`` or ``,``, or a glob pattern.

    Returns
    -------
    list of dict
        One JSON-ready entry per named input, ``{"path": ..., ...}``.
    """
    parts = [source]
    if not (os.path.lexists(source) or is_remote(source)):
        parts = [p.strip() for p in source.replace(";", ",").split(",") if p.strip()] or [source]
    out: list[dict[str, Any]] = []
    for part in parts:
        if not os.path.lexists(part) and not is_remote(part) and _GLOB.search(part):
            pattern = os.path.expanduser(part)
            files = sorted(m for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            out.append({"pattern": part, "files": [_identity(f, 0, set()) for f in files]})
        else:
            out.append(_identity(part, 0, set()))
    return out


def stac_identity(stac_items: str | None) -> list[dict[str, Any]]:
    """The identity of every asset a STAC mosaic read (``attrs["stac_items"]``, JSON)."""
    if not stac_items:
        return []
    import json

    records = json.loads(stac_items)
    hrefs = sorted({h for r in records for h in r.get("assets", [])})
    return [_identity(h, 0, set()) for h in hrefs]


def _identity(name: str, depth: int, seen: set[str]) -> dict[str, Any]:
    """One input: a network location, a driver-prefixed name, a file or a folder."""
    if is_remote(name):
        return _remote_identity(name)
    try:
        st = os.stat(name)  # what is read: a link's target
    except (OSError, ValueError):
        m = _PREFIXED.match(name)
        if m is None:
            return {"path": name}
        # NETCDF:"file.nc":var, GTIFF_DIR:2:file.tif: the files it names
        quoted = re.findall(r'"([^"]*)"', m.group(2))
        candidates = quoted or [c for c in m.group(2).split(":") if c]
        files = [_identity(c, depth, seen) for c in candidates if os.path.exists(c)]
        return {"path": name, "files": files}
    p = Path(name)
    entry = {"path": str(p.resolve()), **_stat_identity(st)}
    if stat.S_ISDIR(st.st_mode):
        entry["tree"] = _tree(p)
        return entry
    sidecars = {
        ext: _stat_identity(os.stat(name + ext)) for ext in _SIDECARS if _exists(name + ext)
    }
    if sidecars:
        entry["sidecars"] = sidecars
    if stat.S_ISREG(st.st_mode) and _xml_root(_head(p) or b"") == "VRTDataset":
        entry["sources"] = _vrt_sources(p, depth, seen)
    return entry


def _exists(name: str) -> bool:
    try:
        os.stat(name)
    except (OSError, ValueError):
        return False
    return True


def _stat_identity(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }


def _tree(root: Path) -> dict[str, int]:
    """Count, bytes and newest modification and change times of everything under ``root``."""
    files = size = newest_mtime = newest_ctime = 0
    for folder, _, names in os.walk(root):
        for path in (folder, *(os.path.join(folder, n) for n in names)):
            try:
                st = os.stat(path)
            except OSError:
                continue
            newest_mtime = max(newest_mtime, st.st_mtime_ns)
            newest_ctime = max(newest_ctime, st.st_ctime_ns)
            if path != folder:
                files += 1
                size += st.st_size
    return {
        "files": files,
        "bytes": size,
        "newest_mtime_ns": newest_mtime,
        "newest_ctime_ns": newest_ctime,
    }


def _vrt_sources(vrt: Path, depth: int, seen: set[str]) -> list[dict[str, Any]]:
    """The identity of every source a VRT names (nested VRTs in turn)."""
    key = str(vrt.resolve())
    if key in seen or depth > MAX_VRT_DEPTH:
        return []  # a cycle or too deep: the reader refuses or GDAL reports it
    seen.add(key)
    try:
        root = _parse_vrt(vrt, str(vrt), "")
    except GeorasterCNNError:
        return []  # the reader checked it; nothing more to know here
    out: list[dict[str, Any]] = []
    for el in root.iter():
        if el.tag not in _SOURCE_TAGS:
            continue
        name = (el.text or "").strip()
        if not name or name.startswith("<"):
            continue
        if is_remote(name) or _PREFIXED.match(name):
            out.append(_identity(name, depth + 1, seen))
            continue
        relative = el.get("relativeToVRT", "0").strip() == "1"
        out.append(_identity(str(_local(name, vrt, relative)), depth + 1, seen))
    return out


def _remote_identity(name: str) -> dict[str, Any]:
    """``{"path": name}`` with the identifying headers of a request through GDAL, if any."""
    if _HTTP.match(name):
        name_for_gdal = f"/vsicurl/{name}"
    elif name.startswith("/vsi"):
        name_for_gdal = name
    else:
        return {"path": name}  # s3://... and the like: GDAL reads them under /vsis3/ names
    headers = _gdal_headers(name_for_gdal)
    found = {k: v for k, v in headers.items() if k in _REMOTE_HEADERS}
    if not found:
        log.debug("%s: no ETag, Last-Modified or size known; identified by its name", name)
    return {"path": name, **dict(sorted(found.items()))}


@functools.cache
def _libgdal() -> Any:
    """The GDAL library rasterio uses, through ctypes, or ``None``."""
    import rasterio

    candidates: list[str] = []
    try:  # the very library loaded in this process (Linux)
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            candidates += [ln.split()[-1] for ln in maps if "libgdal" in ln and "/" in ln]
    except OSError:
        pass
    here = Path(rasterio.__file__).parent
    for folder in (here.parent / "rasterio.libs", here / ".dylibs"):
        candidates += sorted(str(p) for p in folder.glob("libgdal*"))
    found = ctypes.util.find_library("gdal")
    candidates += [found] if found else []
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            func, free = lib.VSIGetFileMetadata, lib.CSLDestroy
        except (OSError, AttributeError):
            continue
        func.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        func.restype = ctypes.POINTER(ctypes.c_char_p)
        free.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        free.restype = None
        lib.CPLErrorReset.restype = None
        return lib
    return None


def _gdal_headers(name: str) -> dict[str, str]:
    """The HTTP response headers GDAL gets for ``name`` (lower-case keys); ``{}`` if none."""
    lib = _libgdal()
    if lib is None:
        return {}
    result = lib.VSIGetFileMetadata(os.fsencode(name), b"HEADERS", None)
    lib.CPLErrorReset()  # an unreachable server is not an error of the next GDAL call
    if not result:
        return {}
    headers: dict[str, str] = {}
    try:
        i = 0
        while result[i] is not None:
            key, _, value = result[i].decode("utf-8", "replace").partition("=")
            headers[key.strip().lower()] = value.strip()
            i += 1
    finally:
        lib.CSLDestroy(result)
    return headers
