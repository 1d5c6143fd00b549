"""georaster_cnn:classify — ``georaster-cnn predict`` on one raster, its class map as OUTPUT."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .algorithm import GeorasterCnnAlgorithm
from .runner import run_cli


class ClassifyAlgorithm(GeorasterCnnAlgorithm):
    ALG_ID = "classify"
    DISPLAY = "Classify raster"
    HELP = (
        "<p>Classifies a raster with a trained model (<code>georaster-cnn predict</code>) "
        "and writes a georeferenced class map (Cloud Optimized GeoTIFF), which opens with "
        "the class names and colours (a .qml style beside it).</p>"
        "<p><b>INPUT</b>: the raster (a layer or a file; a layer that is not a plain file is "
        "exported to a temporary GeoTIFF first).<br>"
        "<b>MODEL</b>: the model file (.safetensors) written by train.<br>"
        "<b>STRIDE</b>: output cell size in input pixels, 1 to the model's patch size; "
        "smaller overlaps the windows for a finer map. Default: the model's patch size.<br>"
        "<b>DENSE</b>: run the network's trunk once per block and pool every window from it "
        "(same classes, a fine stride at about the cost of the coarsest) when the model's "
        "architecture allows it; off: one forward pass per window. Default: on.<br>"
        "<b>PROBABILITIES</b>: also write one probability band (percent) per class. "
        "Default: off.<br>"
        "<b>BANDS</b>: the input bands the model reads, as numbers or names, comma-separated "
        "(e.g. <code>1,2,4</code>). Default: the input's bands as they are.<br>"
        "<b>OUTPUT</b>: the class map (.tif; .nc or .zarr for those formats).</p>"
        "<p>The log names the device (CUDA GPU or CPU). Cancel stops at the next block; "
        "run it again with the same OUTPUT file and it continues from the finished blocks.</p>"
    )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(
            QgsProcessingParameterFile("MODEL", "Model file", extension="safetensors")
        )
        self.optional(
            QgsProcessingParameterNumber(
                "STRIDE",
                "Stride (input pixels per output cell)",
                QgsProcessingParameterNumber.Integer,
                minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean("DENSE", "Dense evaluation when possible", True)
        )
        self.addParameter(
            QgsProcessingParameterBoolean("PROBABILITIES", "Also write class probabilities", False)
        )
        self.optional(
            QgsProcessingParameterString("BANDS", "Bands (numbers or names, comma-separated)")
        )
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Class map"))

    def processAlgorithm(self, parameters, context, feedback):
        source = self.raster(parameters, "INPUT", context, feedback)
        model = self.parameterAsFile(parameters, "MODEL", context)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["predict", model, source, "--output", output, "--qml", "--overwrite"]
        if self.given(parameters, "STRIDE"):
            args += ["--stride", str(self.parameterAsInt(parameters, "STRIDE", context))]
        if not self.parameterAsBool(parameters, "DENSE", context):
            args.append("--no-dense")
        if self.parameterAsBool(parameters, "PROBABILITIES", context):
            args.append("--probabilities")
        bands = self.parameterAsString(parameters, "BANDS", context).strip()
        if bands:
            args += ["--bands", bands]
        run_cli(args, feedback)
        return {"OUTPUT": output}
