"""georaster_cnn:evaluate — ``georaster-cnn evaluate``: a model against reference labels."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputFile,
    QgsProcessingOutputHtml,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterRasterLayer,
)

from .algorithm import GeorasterCnnAlgorithm
from .runner import run_cli


class EvaluateAlgorithm(GeorasterCnnAlgorithm):
    ALG_ID = "evaluate"
    DISPLAY = "Evaluate model"
    HELP = (
        "<p>Compares a model's classes on a raster with reference labels "
        "(<code>georaster-cnn evaluate</code>): per-class precision, recall and F1, overall "
        "accuracy and the confusion matrix, as a report folder with an HTML page.</p>"
        "<p><b>INPUT</b>: the raster (a layer or a file).<br>"
        "<b>MODEL</b>: the model file (.safetensors).<br>"
        "<b>LABELS</b>: reference labels: a vector layer of points or polygons with a class "
        "attribute (filtered, memory and database layers are exported first), or a class-id "
        "raster on the INPUT's grid.<br>"
        "<b>FIELD</b>: vector labels: the attribute holding the class, as the model's class "
        "names or ids. Default: the only attribute.<br>"
        "<b>OUTPUT</b>: the report folder: report.html, metrics.json, per_class.csv, "
        "confusion_matrix.csv and confusion_matrix.png.</p>"
        "<p>The stride is the one the model was trained with. Evaluate on data the model "
        "was not trained on: scores on training data are optimistic.</p>"
    )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(
            QgsProcessingParameterFile("MODEL", "Model file", extension="safetensors")
        )
        self.addParameter(
            QgsProcessingParameterMapLayer(
                "LABELS",
                "Reference labels (vector layer, or a class-id raster)",
                types=[QgsProcessing.TypeVectorAnyGeometry, QgsProcessing.TypeRaster],
            )
        )
        self.optional(
            QgsProcessingParameterField(
                "FIELD", "Class field (vector labels)", parentLayerParameterName="LABELS"
            )
        )
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Report folder"))
        self.addOutput(QgsProcessingOutputHtml("HTML", "Evaluation report"))
        self.addOutput(QgsProcessingOutputFile("CONFUSION_MATRIX", "Confusion matrix (PNG)"))
        self.addOutput(QgsProcessingOutputFile("METRICS", "Metrics (JSON)"))

    def processAlgorithm(self, parameters, context, feedback):
        source = self.raster(parameters, "INPUT", context, feedback)
        model = self.parameterAsFile(parameters, "MODEL", context)
        labels = self.layer(parameters, "LABELS", context, feedback)
        folder = self.parameterAsString(parameters, "OUTPUT", context)
        html = os.path.join(folder, "report.html")
        args = ["evaluate", model, source, "--labels", labels, "-o", folder, "--html", html]
        args.append("--overwrite")
        field = self.parameterAsString(parameters, "FIELD", context).strip()
        if field:
            args += ["--label-column", field]
        run_cli(args, feedback)
        return {
            "OUTPUT": folder,
            "HTML": html,
            "CONFUSION_MATRIX": os.path.join(folder, "confusion_matrix.png"),
            "METRICS": os.path.join(folder, "metrics.json"),
        }
