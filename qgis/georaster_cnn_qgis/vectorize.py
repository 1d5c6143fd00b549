"""georaster_cnn:vectorize — ``georaster-cnn vectorize``: class polygons of a class map."""

from __future__ import annotations

from qgis.core import QgsProcessingParameterRasterLayer, QgsProcessingParameterVectorDestination

from .algorithm import GeorasterCnnAlgorithm
from .runner import run_cli


class VectorizeAlgorithm(GeorasterCnnAlgorithm):
    ALG_ID = "vectorize"
    DISPLAY = "Vectorize class map"
    HELP = (
        "<p>Turns a class map written by Classify into polygons "
        "(<code>georaster-cnn vectorize</code>): one polygon per connected region of a class "
        "(cells sharing an edge), with the attributes class_id, class_name, area (CRS units "
        "squared), cells and, when the map has probability bands, mean_probability. Nodata "
        "cells are left out.</p>"
        "<p><b>INPUT</b>: the class map (a file written by Classify: its class names are "
        "read from it).<br>"
        "<b>OUTPUT</b>: the polygons (GeoPackage by default; .shp, .geojson, .fgb too).</p>"
    )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class map"))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT", "Class polygons"))

    def processAlgorithm(self, parameters, context, feedback):
        source = self.raster(parameters, "INPUT", context, feedback)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        run_cli(["vectorize", source, "-o", output, "--overwrite"], feedback)
        return {"OUTPUT": output}
