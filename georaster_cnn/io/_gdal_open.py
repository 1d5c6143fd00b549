"""Opening a GDAL raster of user input on purpose: its suffix's driver, checked VRTs, no network.

Every open of an input raster through GDAL goes through :func:`open_input`:

- The file is opened only by the drivers its suffix names
  (:data:`georaster_cnn.io.formats.GDAL_DRIVERS`): a ``.tif`` is a GeoTIFF (COG
  included), never a VRT or anything else in disguise. A file named with another
  suffix may use any GDAL raster driver except those that read other files or the
  network by what the file says (:data:`~georaster_cnn.io.formats.REFERENCING_DRIVERS`).
- A ``.vrt`` is parsed here (a size-limited, entity-free XML read of local text)
  before GDAL sees it, and through every nested VRT: it may reference local
  rasters, but never a raw file outside a raster driver (``VRTRawRasterBand``),
  Python pixel functions, other virtual file systems, non-VRT dataset descriptions
  (XML/JSON) or non-regular files, and network sources only with ``allow_remote``.
- A network location (``/vsicurl/``, ``/vsis3/``, ``http://`` ...) as the input
  itself is refused unless ``allow_remote``.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from georaster_cnn.errors import InputError, ReadError
from georaster_cnn.io.formats import GDAL_DRIVERS, REFERENCING_DRIVERS, gdal_drivers
from georaster_cnn.io.formats import is_network_location as is_remote
from georaster_cnn.quiet import ignore_warnings

__all__ = ["check_vrt", "input_drivers", "is_remote", "open_input", "unreadable"]

#: A VRT larger than this is not parsed (nor opened).
MAX_VRT_BYTES = 16 * 2**20
#: Deepest nesting of VRTs followed.
MAX_VRT_DEPTH = 16

# A driver-prefixed name, e.g. NETCDF:"file.nc":var or GTIFF_DIR:2:file.tif (two or
# more letters, so that C:\... is a path).
_PREFIXED = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$", re.DOTALL)
_XML_ROOT = re.compile(rb"<([A-Za-z_][\w.:-]*)")
_SOURCE_TAGS = frozenset({"SourceFilename", "SourceDataset"})

#: Human names of the formats a suffix names, by its first driver.
_FORMAT_NAMES = {
    "GTiff": "GeoTIFF",
    "VRT": "VRT",
    "HFA": "Erdas Imagine (HFA) or ENVI/EHdr raster",
    "JP2OpenJPEG": "JPEG 2000 file",
}


@functools.cache
def _safe_drivers() -> tuple[str, ...]:
    """Every GDAL driver but :data:`REFERENCING_DRIVERS` (GDAL opens rasters only)."""
    import rasterio

    with rasterio.Env() as env:
        names = env.drivers()
    refs = {d.upper() for d in REFERENCING_DRIVERS}
    return tuple(sorted(n for n in names if n.upper() not in refs))


def input_drivers(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The GDAL drivers allowed to open the input ``path`` (see the module docstring)."""
    return gdal_drivers(path) or _safe_drivers()


def open_input(
    path: str | os.PathLike[str], *, allow_remote: bool = False, quiet: bool = False
) -> Any:
    """Open an input raster read-only with rasterio, by the rules of this module.

    Parameters
    ----------
    path
        A local file, or a network location when ``allow_remote``.
    allow_remote
        Allow a network location as the input and as VRT sources.
    quiet
        Without rasterio's NotGeoreferencedWarning (the reader logs it once instead).

    Returns
    -------
    rasterio.io.DatasetReader

    Raises
    ------
    InputError
        A network location without ``allow_remote``; a VRT that references what is
        refused (see :func:`check_vrt`).
    ReadError
        The file cannot be opened (the OS's reason: "No such file or directory",
        "Permission denied"), is not in the format its suffix names, or is not a
        raster at all.
    """
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    name = os.fspath(path)
    remote = is_remote(name)
    if remote and not allow_remote:
        raise InputError(
            f"{name}: a network location; inputs are read from local files only unless "
            "allow_remote=True"
        )
    drivers = input_drivers(name)
    if "VRT" in drivers:
        if remote:
            raise InputError(
                f"{name}: a remote VRT cannot be checked before GDAL follows its sources; "
                "download it (and its sources) first"
            )
        check_vrt(name, allow_remote=allow_remote)
    try:
        if not quiet:
            return _reader(name, list(drivers))
        with ignore_warnings(NotGeoreferencedWarning):  # only the open, where rasterio warns
            return _reader(name, list(drivers))
    except RasterioIOError as exc:
        if remote:
            raise
        why = unreadable(name)
        if why is not None:  # the OS's reason, not a guess about the format
            raise ReadError(f"{name}: cannot open the file ({why})") from exc
        raise _wrong_format(name, drivers, exc) from exc


def unreadable(name: str) -> str | None:
    """Why the local file ``name`` cannot be opened, in the OS's words; ``None`` if it can.

    ``None`` too for what is not a plain local path (``/vsi...`` names, driver-prefixed
    names, network locations): GDAL's own message says more there. Never blocks (a FIFO
    is opened without waiting for a writer).
    """
    if name.startswith("/vsi") or _PREFIXED.match(name) or is_remote(name):
        return None
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    return None


def _reader(name: str, drivers: list[str]) -> Any:
    # rasterio.open takes one driver name; the dataset class takes GDAL's list of
    # allowed drivers. The wrapper gives it the environment that rasterio.open would.
    from rasterio.env import ensure_env_with_credentials
    from rasterio.io import DatasetReader

    @ensure_env_with_credentials
    def reader(fp: str) -> Any:
        return DatasetReader(fp, driver=drivers)

    return reader(name)


def _wrong_format(name: str, drivers: tuple[str, ...], exc: Exception) -> ReadError:
    """The error for a file that the drivers of its suffix cannot open: what is it really?"""
    from georaster_cnn.io._canonical import _root_message

    detail = _root_message(exc)
    seen = _sniff(Path(name))
    if seen is None and drivers != _safe_drivers():
        seen = _identify(name, exclude=drivers)
    suffix = Path(name).suffix.lower()
    if seen is None or seen in drivers:
        return ReadError(f"{name}: not a raster GDAL can open ({detail})")
    if suffix in GDAL_DRIVERS:
        want = _FORMAT_NAMES.get(drivers[0], f"{drivers[0]} file")
        return ReadError(
            f"{name}: not a {want} (GDAL sees {_a(seen)}); rename it {_suffix_for(seen)} "
            "if you mean it"
        )
    return ReadError(
        f"{name}: GDAL sees {_a(seen)}, which reads other files by reference; such files are "
        f"read only when named {_suffix_for(seen)}"
        + (" (and checked first)" if seen == "VRT" else " (not supported)")
    )


def _a(driver: str) -> str:
    return f"a {driver}" if driver in ("VRT", "GTI") else f"a {driver} file"


def _sniff(path: Path) -> str | None:
    """``"VRT"`` when the file is a VRT's XML (GDAL would open it as one), else None."""
    head = _head(path)
    root = _xml_root(head) if head is not None else None
    return "VRT" if root == "VRTDataset" else ("GTI" if root == "GDALTileIndexDataset" else None)


def _identify(name: str, *, exclude: tuple[str, ...]) -> str | None:
    """The driver among the safe ones (minus ``exclude``) that opens ``name``, if any."""
    from rasterio.errors import RasterioError

    others = [d for d in _safe_drivers() if d not in exclude]
    try:
        with ignore_warnings(), _reader(name, others) as src:
            return str(src.driver)
    except (RasterioError, OSError):
        return None


def _suffix_for(driver: str) -> str:
    for suffix, drivers in GDAL_DRIVERS.items():
        if driver in drivers:
            return suffix
    from rasterio.drivers import raster_driver_extensions

    exts = sorted(e for e, d in raster_driver_extensions().items() if d == driver)
    return f".{exts[0]}" if exts else f"with the suffix a {driver} file has"


def _head(path: Path, size: int = 1024) -> bytes | None:
    """The first bytes of a regular file (never opens a FIFO or device), or None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return None


def _xml_root(head: bytes) -> str | None:
    """The root element's name when ``head`` starts an XML document, else None."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"<"):
        return None
    m = _XML_ROOT.search(text)  # the first element: <?xml ...?> and <!-- --> do not match
    return "" if m is None else m.group(1).decode("ascii", "replace").split(":")[-1]


# --------------------------------------------------------------------------- VRT


def check_vrt(
    path: str | os.PathLike[str],
    *,
    allow_remote: bool = False,
    _top: str | None = None,
    _depth: int = 0,
    _seen: set[Path] | None = None,
) -> None:
    """Refuse a VRT that would read what an input may not, before GDAL opens it.

    Allowed: local rasters (regular files or folders, read by their own drivers),
    nested VRTs that obey the same rules, and network sources when
    ``allow_remote``. Refused: ``VRTRawRasterBand`` (raw bytes of any file, outside
    a raster driver), Python pixel functions, inline XML or ``vrt://`` sources,
    other ``/vsi`` file systems (archives, ``/vsisparse/``, ``/vsistdin/`` ...),
    sources that are not regular files (FIFOs, devices), XML/JSON dataset
    descriptions other than VRT, a DOCTYPE, more than :data:`MAX_VRT_BYTES` or
    nesting deeper than :data:`MAX_VRT_DEPTH`.

    Raises
    ------
    InputError
        A refused source or feature, naming the input and the VRT that holds it.
    ReadError
        The file is not a VRT's XML.
    """
    p = Path(path)
    top = _top or str(p)
    where = "" if _depth == 0 else f" (in {p}, nested)"
    seen = _seen if _seen is not None else set()
    key = p.resolve()
    if key in seen:
        return  # a cycle: GDAL reports it; nothing new to check
    seen.add(key)
    if _depth > MAX_VRT_DEPTH:
        raise InputError(f"{top}: VRTs nested more than {MAX_VRT_DEPTH} deep{where}; refused")
    root = _parse_vrt(p, top, where)
    for el in root.iter():
        if el.tag == "VRTRasterBand" and el.get("subClass") == "VRTRawRasterBand":
            src = (el.findtext("SourceFilename") or "").strip()
            raise InputError(
                f"{top}: a VRTRawRasterBand{where} reads the raw bytes of {src or 'a file'} "
                "outside any raster driver; refused. Convert the raw file to GeoTIFF "
                "(or describe it with an ENVI .hdr header and open that file)"
            )
        if el.tag == "PixelFunctionCode" or (
            el.tag == "PixelFunctionLanguage" and (el.text or "").strip().lower() == "python"
        ):
            raise InputError(
                f"{top}: the VRT{where} holds a Python pixel function, which would run code; "
                "refused. Compute the band first (e.g. with gdal_calc.py) and reference the result"
            )
        if el.tag in _SOURCE_TAGS:
            relative = el.get("relativeToVRT", "0").strip() == "1"
            _check_source(
                el.text or "", p, relative, top=top, where=where, allow_remote=allow_remote,
                depth=_depth, seen=seen,
            )  # fmt: skip


def _parse_vrt(p: Path, top: str, where: str) -> ET.Element:
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{top}: {p} is not a regular file{where}; refused")
        if st.st_size > MAX_VRT_BYTES:
            raise InputError(
                f"{top}: the VRT {p} is {st.st_size:,} bytes, more than the "
                f"{MAX_VRT_BYTES // 2**20} MiB checked{where}; refused"
            )
        data = p.read_bytes()[:MAX_VRT_BYTES]
    except OSError as exc:
        raise ReadError(f"{top}: cannot read the VRT {p}{where} ({exc.strerror or exc})") from exc
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise InputError(f"{top}: the VRT {p}{where} declares a DOCTYPE or entities; refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ReadError(f"{top}: {p} is not valid VRT XML{where} ({exc})") from exc
    if root.tag != "VRTDataset":
        raise ReadError(f"{top}: {p} is not a VRT{where} (its XML root is <{root.tag}>)")
    return root


def _check_source(
    text: str,
    vrt: Path,
    relative: bool,
    *,
    top: str,
    where: str,
    allow_remote: bool,
    depth: int,
    seen: set[Path],
) -> None:
    """One ``SourceFilename``/``SourceDataset`` of ``vrt``."""
    name = text.strip()
    if not name:
        return  # GDAL reports the empty source
    what = f"{top}: VRT source {name!r}{where}"
    if name.startswith("<"):
        raise InputError(f"{what} is an inline dataset description; refused")
    if name.lower().startswith("vrt://"):
        raise InputError(f"{what} is a vrt:// connection string; refused")
    if is_remote(name):
        if allow_remote:
            return
        raise InputError(
            f"{what} is a network location; inputs read local files only unless allow_remote=True"
        )
    if name.startswith("/vsi"):
        raise InputError(
            f"{what} goes through a GDAL virtual file system; refused. Extract the file "
            "and reference it by its path"
        )
    m = _PREFIXED.match(name)
    if m is not None:
        prefix, rest = m.group(1), m.group(2)
        if prefix.upper() in {d.upper() for d in REFERENCING_DRIVERS} | {"GTI", "WMS", "WMTS"}:
            raise InputError(f"{what} names the {prefix} driver, which reads by reference")
        quoted = re.findall(r'"([^"]*)"', rest)
        candidates = quoted or [c for c in rest.split(":") if c]
        for c in candidates:
            local = _local(c, vrt, relative)
            if local.exists():
                _check_local(local, what, top, allow_remote, depth, seen, nested_ok=False)
        return
    _check_local(_local(name, vrt, relative), what, top, allow_remote, depth, seen)


def _local(name: str, vrt: Path, relative: bool) -> Path:
    p = Path(name)
    return vrt.parent / p if relative and not p.is_absolute() else p


def _check_local(
    p: Path,
    what: str,
    top: str,
    allow_remote: bool,
    depth: int,
    seen: set[Path],
    *,
    nested_ok: bool = True,
) -> None:
    """A local source: a regular file or folder; a VRT is checked in turn."""
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return  # missing: GDAL reports it when opening
    if stat.S_ISDIR(mode):
        return
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} is not a regular file (a device, FIFO or socket); refused")
    if p.name.lower().endswith((".gti", ".gti.gpkg", ".gti.fgb")):
        raise InputError(f"{what} is a GDAL tile index, which reads by reference; refused")
    head = _head(p) or b""
    root = _xml_root(head)
    if root == "VRTDataset" and nested_ok:
        check_vrt(p, allow_remote=allow_remote, _top=top, _depth=depth + 1, _seen=seen)
        return
    if root is not None or head.lstrip().startswith(b"{"):
        raise InputError(
            f"{what} is an XML or JSON dataset description"
            + (f" (<{root}>)" if root else "")
            + " that may read other files or the network; refused"
        )
