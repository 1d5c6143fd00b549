"""Files in and out: every reader, the output formats, the class-map contract and the writers.

This subpackage owns how bytes on disk (or behind a URL) become the canonical lazy
``(band, y, x)`` array (:mod:`~georaster_cnn.io.reader` over GDAL,
:mod:`~georaster_cnn.io._gdal_open`, and CF/xarray, :mod:`~georaster_cnn.io._xarray_open`,
with netCDF-3 truncation checks; STAC Items mosaicked by odc-stac,
:mod:`~georaster_cnn.io.stac`, reading through the HTTP settings of
:mod:`~georaster_cnn.io.cloud`), which format a file is and which one a class map
is written in (:mod:`~georaster_cnn.io.formats`), how a class map describes itself
(:mod:`~georaster_cnn.io.classmap`), and how outputs are written whole or not at all:
the COG/GeoTIFF writer (:mod:`~georaster_cnn.io.writer`), Zarr/netCDF
(:mod:`~georaster_cnn.io._cf_writer`), block-by-block computation with resume
(:mod:`~georaster_cnn.io._blocks`, :mod:`~georaster_cnn.io._resume`) and staging
(:mod:`~georaster_cnn.io.staging`, also the one home of "does the output exist?").
It imports the core and :mod:`georaster_cnn.cluster` (writers compute on any
scheduler), never a model.
"""
