"""georaster_cnn:inspect — ``georaster-cnn inspect``: is my grid image-like? An HTML report."""

from __future__ import annotations

from qgis.core import QgsProcessingParameterFileDestination, QgsProcessingParameterRasterLayer

from .algorithm import GeorasterCnnAlgorithm
from .runner import run_cli


class InspectAlgorithm(GeorasterCnnAlgorithm):
    ALG_ID = "inspect"
    DISPLAY = "Inspect raster (is it image-like?)"
    HELP = (
        "<p>Describes a raster (<code>georaster-cnn inspect</code>): bands, dtype, CRS, "
        "resolution, nodata, per-band statistics, and Moran's I of every band at lags of "
        "1, 2, 4, 8 and 16 pixels: near 1 where neighbouring cells are alike, near 0 where "
        "they behave like unrelated values. A verdict says whether a CNN can exploit local "
        "patterns in it. Large rasters are described from a seeded sample.</p>"
        "<p><b>INPUT</b>: the raster (a layer or a file).<br>"
        "<b>OUTPUT</b>: the report as an HTML page.</p>"
    )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Report", fileFilter="HTML files (*.html)"
            )
        )

    def processAlgorithm(self, parameters, context, feedback):
        source = self.raster(parameters, "INPUT", context, feedback)
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        run_cli(["inspect", source, "--html", output], feedback)
        return {"OUTPUT": output}
