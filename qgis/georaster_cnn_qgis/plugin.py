"""The plugin object: registers the Processing provider; in the desktop, a settings menu entry."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import GeorasterCnnProvider


class GeorasterCnnPlugin:
    """Registered with QGIS by :func:`classFactory`.

    ``initProcessing`` runs in the desktop and in ``qgis_process`` (plugins whose
    metadata says ``hasProcessingProvider=yes``); ``initGui`` only in the desktop.
    """

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: GeorasterCnnProvider | None = None
        self.action = None

    def initProcessing(self) -> None:
        if self.provider is None:
            self.provider = GeorasterCnnProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtWidgets import QAction

        from .settings import icon

        self.action = QAction(icon(), "georaster-cnn settings…", self.iface.mainWindow())
        self.action.triggered.connect(self.show_settings)
        self.iface.addPluginToMenu("georaster-cnn", self.action)

    def show_settings(self) -> None:
        from .settings import settings_dialog

        settings_dialog(self.iface.mainWindow() if self.iface else None).exec_()

    def unload(self) -> None:
        if self.action is not None and self.iface is not None:
            self.iface.removePluginMenu("georaster-cnn", self.action)
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
