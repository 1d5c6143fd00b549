"""Layers as files for the CLI: a plain file as it is, anything else exported to a temporary file.

Memory layers, database tables, web services and layers with a subset filter (or a
GeoPackage layer that is not the file's only one) have no file the CLI could read
as the user sees them; Processing's own conversion writes them to a temporary
GeoPackage (vectors) and a raster writer to a temporary GeoTIFF (rasters), as
Processing does for its external tools.
"""

from __future__ import annotations

import os

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterBlockFeedback,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsVectorLayer,
)

#: Vector files the CLI reads as labels as they are (its suffixes; others are converted).
VECTOR_FORMATS = ["gpkg", "shp", "geojson", "json", "fgb", "parquet", "geoparquet", "kml", "gml"]


def _plain_file(layer: QgsMapLayer) -> str | None:
    """The file (or Zarr folder) a GDAL raster layer reads as it is, if any."""
    if layer.providerType() != "gdal":
        return None
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or layer.source()
    if parts.get("layerName") or parts.get("vsiPrefix"):
        return None  # a subdataset or a file inside an archive: exported
    return path if os.path.exists(path) else None


def raster_file(
    layer: QgsRasterLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
) -> str:
    """A raster layer's file, or a temporary GeoTIFF of it."""
    path = _plain_file(layer)
    if path is not None:
        return path
    provider = layer.dataProvider()
    if provider is None or not layer.isValid():
        raise QgsProcessingException(f"raster layer {layer.name()!r} is not valid")
    out = QgsProcessingUtils.generateTempFilename(f"{_safe(layer.name())}.tif")
    feedback.pushInfo(f"{layer.name()}: not a plain file, exported to {out}")
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise QgsProcessingException(f"cannot export raster layer {layer.name()!r}")
    writer = QgsRasterFileWriter(out)
    writer.setOutputFormat("GTiff")
    blocks = QgsRasterBlockFeedback()  # the writer's own kind; cancelled with the algorithm
    feedback.canceled.connect(blocks.cancel)
    error = writer.writeRaster(
        pipe,
        provider.xSize(),
        provider.ySize(),
        provider.extent(),
        provider.crs(),
        context.transformContext(),
        blocks,
    )
    if error != QgsRasterFileWriter.NoError:
        raise QgsProcessingException(f"cannot export raster layer {layer.name()!r} ({error})")
    return out


def vector_file(
    layer: QgsVectorLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
) -> str:
    """A vector layer's file, or a temporary GeoPackage of what the layer shows.

    Processing's conversion: a memory layer, a database table, a subset filter, or a
    file with several layers is written out; a plain file in a format the CLI reads
    is passed as it is.
    """
    path = QgsProcessingUtils.convertToCompatibleFormat(
        layer, False, _safe(layer.name()), VECTOR_FORMATS, "gpkg", context, feedback
    )
    if not path:
        raise QgsProcessingException(f"cannot export vector layer {layer.name()!r}")
    if path != layer.source():
        feedback.pushInfo(f"{layer.name()}: used as {path}")
    return path


def layer_file(
    layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
) -> str:
    """A raster or vector layer as a file the CLI reads."""
    if isinstance(layer, QgsRasterLayer):
        return raster_file(layer, context, feedback)
    if isinstance(layer, QgsVectorLayer):
        return vector_file(layer, context, feedback)
    raise QgsProcessingException(f"layer {layer.name()!r} is neither a raster nor a vector layer")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "layer"
