"""Formats: which reader a file goes to, and which class-map format comes out.

One table of input suffixes and one of output formats; the reader, the writer,
the CLI's input expansion and output planning, and the docs all read these.
Importing this module imports neither torch nor GDAL.

=================================================  ===========  =====================
input suffix                                       reader       default class map
=================================================  ===========  =====================
``.tif .tiff .vrt .img .jp2`` (any GDAL raster)    GDAL         COG ``.tif``
``.nc .nc4 .netcdf .cdf .h5 .hdf5``                netCDF       netCDF ``.nc``
``.zarr`` (or any folder with Zarr metadata)       Zarr         COG ``.tif``
=================================================  ===========  =====================

A GDAL file is opened only by the drivers its suffix names (:data:`GDAL_DRIVERS`:
a ``.tif`` is a GeoTIFF, never a VRT in disguise). A file named explicitly with
another suffix is read by any GDAL raster driver except those that read other
files or the network by reference (:data:`REFERENCING_DRIVERS`, VRT among them);
folders and glob patterns contribute only the suffixes above.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from georaster_cnn.errors import InputError

__all__ = [
    "GDAL_DRIVERS",
    "INPUT_SUFFIXES",
    "NETCDF_SUFFIXES",
    "OUTPUT_FORMATS",
    "InputFamily",
    "InputFormat",
    "OutputFormat",
    "OutputSpec",
    "REFERENCING_DRIVERS",
    "default_output_format",
    "gdal_drivers",
    "input_family",
    "is_network_location",
    "is_zarr_store",
    "location_name",
    "output_format_for_path",
    "output_path",
    "resolve_output_format",
    "VECTOR_FORMATS",
    "VECTOR_LABEL_SUFFIXES",
    "is_vector_file",
    "vector_output_format",
]

InputFamily = Literal["gdal", "netcdf", "zarr"]
OutputFormat = Literal["cog", "gtiff", "zarr", "netcdf"]


@dataclass(frozen=True)
class InputFormat:
    """How files with one suffix are read, and what their class map defaults to."""

    family: InputFamily
    default_output: OutputFormat
    #: GDAL drivers that may open it (GDAL family only).
    drivers: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputSpec:
    """One class-map format: the suffix it is written under and the family it belongs to."""

    name: OutputFormat
    suffix: str
    family: str
    description: str


#: GDAL suffix -> the drivers that may open it, the first one the format's own. ``.img``
#: is Erdas Imagine, or an ENVI/EHdr raw file with its header beside it; ``.jp2`` any
#: JPEG 2000 driver GDAL has.
GDAL_DRIVERS: dict[str, tuple[str, ...]] = {
    ".tif": ("GTiff",),
    ".tiff": ("GTiff",),
    ".vrt": ("VRT",),
    ".img": ("HFA", "ENVI", "EHdr"),
    ".jp2": ("JP2OpenJPEG", "JP2KAK", "JP2ECW", "JP2MrSID", "JPEG2000"),
}

#: GDAL drivers that read other files or the network by what a file says (VRT, tile
#: indexes, web services, catalogues, some product formats): never used for a file
#: whose suffix does not name them (a ``.vrt`` is checked before GDAL opens it).
REFERENCING_DRIVERS = frozenset(
    {
        "VRT", "GTI", "DERIVED", "HTTP", "WMS", "WMTS", "WCS", "DAAS", "EEDA", "EEDAI",
        "PLMOSAIC", "STACIT", "STACTA", "ESRIC", "KMLSUPEROVERLAY", "MRF", "TIL",
        "ECRGTOC", "RPFTOC", "OGCAPI", "NGW", "GNMFile", "GNMDatabase", "Rasterlite",
    }
)  # fmt: skip

#: Lower-case suffix -> how it is read. Folders and glob patterns take these suffixes.
INPUT_SUFFIXES: dict[str, InputFormat] = {
    **{s: InputFormat("gdal", "cog", d) for s, d in GDAL_DRIVERS.items()},
    **{
        s: InputFormat("netcdf", "netcdf")
        for s in (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5")
    },
    ".zarr": InputFormat("zarr", "cog"),
}

#: Suffixes read as netCDF (with xarray), not through GDAL.
NETCDF_SUFFIXES = frozenset(s for s, f in INPUT_SUFFIXES.items() if f.family == "netcdf")

#: Output format name -> its suffix and family.
OUTPUT_FORMATS: dict[OutputFormat, OutputSpec] = {
    "cog": OutputSpec("cog", ".tif", "GeoTIFF", "Cloud Optimized GeoTIFF with overviews"),
    "gtiff": OutputSpec("gtiff", ".tif", "GeoTIFF", "plain tiled GeoTIFF"),
    "zarr": OutputSpec("zarr", ".zarr", "Zarr", "CF-1.8 Zarr v3 store (a folder)"),
    "netcdf": OutputSpec("netcdf", ".nc", "netCDF", "CF-1.8 netCDF-4 file"),
}

#: Output file suffix -> the format it implies when none is named.
_OUTPUT_SUFFIXES: dict[str, OutputFormat] = {
    ".tif": "cog",
    ".tiff": "cog",
    ".zarr": "zarr",
    **{s: "netcdf" for s in NETCDF_SUFFIXES},
}


def is_zarr_store(path: str | os.PathLike[str]) -> bool:
    """A Zarr store: a ``*.zarr`` folder or any folder with Zarr v2/v3 group metadata."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() == ".zarr" or any(
        (p / n).exists() for n in ("zarr.json", ".zgroup", ".zattrs")
    )


def input_family(path: str | os.PathLike[str]) -> InputFamily:
    """Which reader opens ``path``: ``zarr`` (a store), ``netcdf`` (by suffix) or ``gdal``."""
    if is_zarr_store(path):
        return "zarr"
    fmt = INPUT_SUFFIXES.get(location_name(path).suffix.lower())
    return "gdal" if fmt is None or fmt.family == "zarr" else fmt.family


def gdal_drivers(path: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The GDAL drivers that may open ``path``, by its suffix.

    ``None`` for another suffix: any GDAL raster driver except
    :data:`REFERENCING_DRIVERS`.
    """
    return GDAL_DRIVERS.get(location_name(path).suffix.lower())


# GDAL's network file systems, anywhere in a name (they chain: /vsizip//vsicurl/...),
# and URLs (GDAL opens http://... with its HTTP driver, others take s3:// etc.).
_NETWORK = re.compile(
    r"/vsi(?:curl|s3|gs|az|adls|oss|swift|webhdfs|hdfs)(?:_streaming)?/|\b[a-z][a-z0-9+.-]*://",
    re.IGNORECASE,
)


def is_network_location(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is (or goes through) a network location: ``/vsicurl/…``, ``https://…``."""
    return bool(_NETWORK.search(os.fspath(name)))


def location_name(name: str | os.PathLike[str]) -> Path:
    """The file name part of an input: a path as it is; a URL without scheme, query and fragment.

    ``Path("https://h/a/b.tif?sig=1")`` would fold the ``//`` and keep the query in the
    suffix; this gives ``b.tif`` for it (and for ``/vsicurl/https://h/a/b.tif``).
    """
    text = os.fspath(name)
    scheme = text.find("://")
    if scheme < 0:  # a path, or a GDAL network file system without URL (/vsis3/bucket/key.tif)
        return Path(text)
    rest = text[scheme + 3 :].split("?", 1)[0].split("#", 1)[0]  # host/path
    return Path(rest.partition("/")[2] or "input")


def default_output_format(path: str | os.PathLike[str]) -> OutputFormat:
    """The class-map format for an input: netCDF for netCDF inputs, else COG."""
    if is_zarr_store(path):
        return INPUT_SUFFIXES[".zarr"].default_output
    fmt = INPUT_SUFFIXES.get(location_name(path).suffix.lower())
    return "cog" if fmt is None else fmt.default_output


def output_path(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    format: str | None = None,
) -> tuple[Path, OutputFormat]:
    """``(output_dir/<stem><suffix>, format)`` of the class map of ``source``.

    ``format`` None follows the input (:func:`default_output_format`).

    Raises
    ------
    InputError
        Unknown ``format``.
    """
    fmt = _check_format(format) if format is not None else default_output_format(source)
    return Path(output_dir) / (location_name(source).stem + OUTPUT_FORMATS[fmt].suffix), fmt


def output_format_for_path(path: str | os.PathLike[str]) -> OutputFormat:
    """The output format a file name implies: ``.tif``/``.tiff`` COG, ``.zarr``, ``.nc`` (etc.).

    Raises
    ------
    InputError
        The suffix implies no output format.
    """
    suffix = Path(path).suffix.lower()
    fmt = _OUTPUT_SUFFIXES.get(suffix)
    if fmt is None:
        raise InputError(
            f"cannot tell the output format from {Path(path).name!r} (suffix {suffix or 'none'}); "
            "use .tif/.tiff (COG), .zarr or .nc, or pass format= "
            f"({', '.join(OUTPUT_FORMATS)})"
        )
    return fmt


def resolve_output_format(path: str | os.PathLike[str], format: str | None) -> OutputFormat:
    """``format``, checked against the suffix of ``path``; the suffix's format when None.

    Raises
    ------
    InputError
        Unknown format, no format implied by the suffix, or a format of another
        family than the suffix (e.g. ``zarr`` for ``map.tif``).
    """
    if format is None:
        return output_format_for_path(path)
    fmt = _check_format(format)
    p = Path(path)
    implied = _OUTPUT_SUFFIXES.get(p.suffix.lower())
    spec = OUTPUT_FORMATS[fmt]
    if implied is not None and OUTPUT_FORMATS[implied].family != spec.family:
        raise InputError(
            f"format {fmt!r} writes {spec.family}, but {p.name} has the suffix of "
            f"{OUTPUT_FORMATS[implied].family}; name the output *{spec.suffix} or pick another "
            "format"
        )
    return fmt


def _check_format(format: str) -> OutputFormat:
    name = format.lower()
    if name not in OUTPUT_FORMATS:
        raise InputError(
            f"unknown output format {format!r}; expected one of {', '.join(OUTPUT_FORMATS)}"
        )
    return name


# --------------------------------------------------------------------------- vectors

#: Vector output suffix -> format (GDAL driver, or ``"Parquet"`` for GeoParquet via pyarrow).
VECTOR_FORMATS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".parquet": "Parquet",
    ".geoparquet": "Parquet",
    ".shp": "ESRI Shapefile",
}

#: File name endings read as vector labels (``.zip`` only as ``.shp.zip``).
VECTOR_LABEL_SUFFIXES = frozenset(
    {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".parquet", ".geoparquet", ".kml", ".gml"}
)


def is_vector_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a vector file by its ending (``.gpkg``, ``.shp``, ``.shp.zip`` ...)."""
    name = Path(path).name.lower()
    return Path(name).suffix in VECTOR_LABEL_SUFFIXES or name.endswith(".shp.zip")


def vector_output_format(path: str | os.PathLike[str]) -> str:
    """The vector format a file name implies (see :data:`VECTOR_FORMATS`).

    Raises
    ------
    InputError
        Unknown suffix, or GeoParquet without ``pyarrow`` installed.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in VECTOR_FORMATS:
        raise InputError(
            f"{p}: unknown vector format {suffix or '(no suffix)'!r}; "
            f"name the output with one of {', '.join(VECTOR_FORMATS)}"
        )
    fmt = VECTOR_FORMATS[suffix]
    if fmt == "Parquet" and importlib.util.find_spec("pyarrow") is None:
        raise InputError(
            f"{p}: writing GeoParquet needs pyarrow, which is not installed; "
            "pip install pyarrow, or choose .gpkg, .geojson or .shp"
        )
    return fmt
