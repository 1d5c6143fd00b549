"""Products made from rasters and class maps: vectors, styles, spatial statistics, inspection.

This subpackage owns what a GIS user takes away besides the class map itself:
class polygons and their vector files (:mod:`~georaster_cnn.products.polygons`),
a QGIS layer style and a PNG quicklook (:mod:`~georaster_cnn.products.styles`),
Moran's I per band and lag (:mod:`~georaster_cnn.products.spatial`), the "is my
grid image-like?" report (:mod:`~georaster_cnn.products.inspection`) and models that
travel: ONNX with the metadata Deepness, ArcGIS Pro and STAC MLM read
(:mod:`~georaster_cnn.products.export`). It reads through :mod:`georaster_cnn.io`;
only the exporter needs :mod:`georaster_cnn.model`.
"""
