"""GDAL's HTTP settings for network reads, chosen once: the one home of every remote read's options.

Every read of a network location goes through these settings: a remote raster opened
with ``allow_remote`` (:mod:`georaster_cnn.io.reader`) and every asset a STAC mosaic
reads (:mod:`georaster_cnn.io.stac`, whose reads run in odc-stac's tasks, on Dask
workers too: the settings travel with the graph, see :func:`http_options`).

- ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: opening ``a.tif`` never lists its folder
  nor asks for ``a.tif.aux.xml``/``a.tif.ovr`` sidecars (each a request; on object
  stores a listing of thousands of keys).
- ``GDAL_HTTP_MERGE_CONSECUTIVE_RANGES=YES``: neighbouring tiles are fetched in one
  range request; ``GDAL_HTTP_MULTIPLEX=YES``: HTTP/2 streams share a connection.
- ``VSI_CACHE``: a block cache per open file over GDAL's process-wide cache of
  downloaded regions, so that a COG's header is fetched once per process and tiles
  read twice (a chunk's halo, a neighbouring chunk) are not fetched again.
- ``GDAL_HTTP_TIMEOUT`` / ``GDAL_HTTP_CONNECTTIMEOUT``: a stalled server is an error
  after this many seconds, not a hang; ``GDAL_HTTP_MAX_RETRY`` /
  ``GDAL_HTTP_RETRY_DELAY``: 429 and 5xx answers are retried with a growing delay.
- ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` is left unset: STAC assets do not all end in
  ``.tif``.

A variable of the same name in the process environment wins over the value here
(``GDAL_HTTP_TIMEOUT=120 georaster-cnn predict ...``), as it does for GDAL itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["GDAL_HTTP_OPTIONS", "http_env", "http_options"]

#: GDAL configuration for every network read (module docstring). Change it here.
GDAL_HTTP_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_TIMEOUT": "30",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 2**20),
    "CPL_VSIL_CURL_CACHE_SIZE": str(256 * 2**20),
}


def http_options() -> dict[str, str]:
    """:data:`GDAL_HTTP_OPTIONS`, each overridden by an environment variable of its name."""
    return {k: os.environ.get(k, v) for k, v in GDAL_HTTP_OPTIONS.items()}


def http_timeout() -> float:
    """The seconds a network read waits for an answer (``GDAL_HTTP_TIMEOUT``)."""
    try:
        return float(http_options()["GDAL_HTTP_TIMEOUT"])
    except ValueError:
        return float(GDAL_HTTP_OPTIONS["GDAL_HTTP_TIMEOUT"])


@contextmanager
def http_env(remote: bool = True) -> Iterator[Any]:
    """Within the block, GDAL reads with :func:`http_options` (nothing changes unless ``remote``).

    A ``rasterio.Env``: the options are set for this thread's GDAL calls while the
    block runs (opening a file and reading its pixels must both be inside).
    """
    if not remote:
        yield None
        return
    import rasterio

    with rasterio.Env(**http_options()) as env:
        yield env
