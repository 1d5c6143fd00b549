"""georaster_cnn:train — ``georaster-cnn train`` on raster layers and labels, a model file as OUTPUT."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsRasterLayer,
)

from .algorithm import GeorasterCnnAlgorithm
from .layers import raster_file
from .runner import run_cli


class TrainAlgorithm(GeorasterCnnAlgorithm):
    ALG_ID = "train"
    DISPLAY = "Train model"
    HELP = (
        "<p>Trains a CNN on rasters and class labels (<code>georaster-cnn train</code>) and "
        "saves it as a model file for Classify. Square blocks are held out for validation; "
        "the weights of the epoch with the lowest validation loss are kept. The per-class "
        "table of training and validation windows goes to the log.</p>"
        "<p><b>INPUT</b>: one or more rasters (layers or files).<br>"
        "<b>LABELS</b>: a vector layer of points or polygons with a class attribute (any CRS; "
        "one for all inputs; memory layers, database tables and filtered layers are exported "
        "first), or a class-id raster (0..K-1, nodata = unlabelled) on exactly the grid of a "
        "single INPUT.<br>"
        "<b>FIELD</b>: vector labels: the attribute holding each feature's class, as names or "
        "ids 0..K-1. Default: the layer's only attribute.<br>"
        "<b>EPOCHS</b>: training epochs. Default: the CLI's (10).<br>"
        "<b>ARCH</b>: the network architecture (<code>cnn_dense</code>, <code>cnn</code>, <code>resnet</code>, <code>mlp</code>). "
        "Default: the CLI's (cnn_dense).<br>"
        "<b>PATCH</b>: side of the training windows in pixels (the model's patch size). "
        "Default: 64.<br>"
        "<b>OUTPUT</b>: the model file (.safetensors).</p>"
    )

    def initAlgorithm(self, config=None):
        self.addParameter(
            QgsProcessingParameterMultipleLayers("INPUT", "Input rasters", QgsProcessing.TypeRaster)
        )
        self.addParameter(
            QgsProcessingParameterMapLayer(
                "LABELS",
                "Labels (vector layer, or a class-id raster)",
                types=[QgsProcessing.TypeVectorAnyGeometry, QgsProcessing.TypeRaster],
            )
        )
        self.optional(
            QgsProcessingParameterField(
                "FIELD", "Class field (vector labels)", parentLayerParameterName="LABELS"
            )
        )
        self.optional(
            QgsProcessingParameterNumber(
                "EPOCHS", "Epochs", QgsProcessingParameterNumber.Integer, minValue=1
            )
        )
        self.optional(QgsProcessingParameterString("ARCH", "Architecture"))
        self.optional(
            QgsProcessingParameterNumber(
                "PATCH",
                "Patch size (pixels)",
                QgsProcessingParameterNumber.Integer,
                minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Model file", fileFilter="Model files (*.safetensors)"
            )
        )

    def processAlgorithm(self, parameters, context, feedback):
        layers = self.parameterAsLayerList(parameters, "INPUT", context)
        if not layers:
            raise QgsProcessingException("INPUT: no raster layer given")
        rasters = []
        for layer in layers:
            if not isinstance(layer, QgsRasterLayer):
                raise QgsProcessingException(f"INPUT: {layer.name()!r} is not a raster layer")
            rasters.append(raster_file(layer, context, feedback))
        labels = self.layer(parameters, "LABELS", context, feedback)
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = ["train", *rasters, "--labels", labels, "-o", output, "--overwrite"]
        field = self.parameterAsString(parameters, "FIELD", context).strip()
        if field:
            args += ["--label-column", field]
        if self.given(parameters, "EPOCHS"):
            args += ["--epochs", str(self.parameterAsInt(parameters, "EPOCHS", context))]
        arch = self.parameterAsString(parameters, "ARCH", context).strip()
        if arch:
            args += ["--arch", arch]
        if self.given(parameters, "PATCH"):
            args += ["--patch", str(self.parameterAsInt(parameters, "PATCH", context))]
        run_cli(args, feedback)
        return {"OUTPUT": output}
