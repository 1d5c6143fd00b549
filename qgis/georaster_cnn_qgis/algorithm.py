"""What the five algorithms share: group, icon, help with the docs link, running the CLI."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
)
from qgis.PyQt.QtCore import QUrl

from .layers import layer_file, raster_file
from .settings import WHERE, configured_executable, docs_path, icon

#: Where the docs page lives in the sources, said when no local copy was recorded.
DOCS_PAGE = "docs/qgis.md"


class GeorasterCnnAlgorithm(QgsProcessingAlgorithm):
    """Base of the provider's algorithms: each says its id, name, help and command line."""

    ALG_ID = ""
    DISPLAY = ""
    HELP = ""

    def createInstance(self):
        return type(self)()

    def name(self) -> str:
        return self.ALG_ID

    def displayName(self) -> str:
        return self.DISPLAY

    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    def icon(self):
        return icon()

    def shortHelpString(self) -> str:
        docs = docs_path()
        link = (
            f'<a href="{QUrl.fromLocalFile(docs).toString()}#{self.ALG_ID}">{DOCS_PAGE}</a>'
            if docs
            else f"{DOCS_PAGE} in the georaster-cnn sources"
        )
        return f"{self.HELP}<p>More: {link} (section “{self.DISPLAY}”).</p>"

    def helpUrl(self) -> str:
        docs = docs_path()
        return f"{QUrl.fromLocalFile(docs).toString()}#{self.ALG_ID}" if docs else ""

    def canExecute(self):
        exe = configured_executable()
        if not exe:
            return False, f"No georaster-cnn executable is set; {WHERE}."
        return True, ""

    # -------------------------------------------------------------- helpers

    def optional(self, parameter: QgsProcessingParameterDefinition, advanced: bool = False):
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagOptional)
        if advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(parameter)

    @staticmethod
    def given(parameters, name: str) -> bool:
        """Whether an optional parameter has a value (not absent, empty or NULL)."""
        value = parameters.get(name)
        if value is None or value == "":
            return False
        return not (hasattr(value, "isNull") and value.isNull())

    def raster(self, parameters, name: str, context, feedback) -> str:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(f"{name}: not a raster layer or raster file")
        return raster_file(layer, context, feedback)

    def layer(self, parameters, name: str, context, feedback) -> str:
        layer = self.parameterAsLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(f"{name}: not a raster or vector layer")
        return layer_file(layer, context, feedback)
