"""The Processing provider ``georaster_cnn``: five algorithms and the executable setting."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider

from .classify import ClassifyAlgorithm
from .evaluate import EvaluateAlgorithm
from .inspect import InspectAlgorithm
from .settings import EXECUTABLE_SETTING, icon, recorded_executable
from .train import TrainAlgorithm
from .vectorize import VectorizeAlgorithm

ALGORITHMS = (
    ClassifyAlgorithm,
    TrainAlgorithm,
    EvaluateAlgorithm,
    VectorizeAlgorithm,
    InspectAlgorithm,
)


class GeorasterCnnProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "georaster_cnn"

    def name(self) -> str:
        return "georaster-cnn"

    def longName(self) -> str:
        return "georaster-cnn (CNN classification of rasters)"

    def icon(self):
        return icon()

    def load(self) -> bool:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:  # Processing plugin absent: the recorded executable is used
            self.refreshAlgorithms()
            return True
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(
            Setting(
                self.name(),
                EXECUTABLE_SETTING,
                "georaster-cnn executable (recorded by `georaster-cnn qgis install`)",
                recorded_executable(),
                valuetype=Setting.FILE,
            )
        )
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self) -> None:
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
