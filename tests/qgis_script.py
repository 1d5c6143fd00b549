"""A PyQGIS script run by tests/test_qgis.py with QGIS's own (system) Python, headless.

It loads the installed georaster-cnn plugin the way QGIS does (its ``classFactory``
and ``initProcessing``), runs the tasks given as JSON in ``argv[1]`` through
``processing.run`` and prints one JSON object of what it saw. Never run by pytest
itself (no ``test_`` name) and never with the project's environment: it imports
only QGIS, Processing and the plugin.
"""

import json
import os
import sys
import traceback

config = json.loads(sys.argv[1])
sys.path[:0] = [config["plugins"], "/usr/share/qgis/python/plugins"]

from qgis.core import (  # noqa: E402 - after the path is set
    QgsApplication,
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant  # noqa: E402

app = QgsApplication([], True)  # with widgets: the settings dialog is built too
app.initQgis()

from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()
import georaster_cnn_qgis  # noqa: E402
import processing  # noqa: E402

plugin = georaster_cnn_qgis.classFactory(None)
plugin.initProcessing()


class Recorder(QgsProcessingFeedback):
    """Feedback that keeps what the algorithm said; cancels at ``cancel_at`` percent."""

    def __init__(self, cancel_at=None):
        super().__init__()
        self.progress, self.info, self.errors, self.warnings = [], [], [], []
        self.cancel_at = cancel_at
        self.progressChanged.connect(self.on_progress)

    def on_progress(self, value):
        self.progress.append(value)
        if self.cancel_at is not None and value >= self.cancel_at and not self.isCanceled():
            self.cancel()

    def pushInfo(self, text):
        self.info.append(text)
        super().pushInfo(text)

    def pushWarning(self, text):
        self.warnings.append(text)
        super().pushWarning(text)

    def reportError(self, text, fatalError=False):
        self.errors.append(text)
        super().reportError(text, fatalError)

    def said(self):
        return {
            "progress": self.progress,
            "info": self.info,
            "errors": self.errors,
            "warnings": self.warnings,
        }


def run(alg, params, feedback, load=False):
    """``processing.run``; with ``load``, as the toolbox does: outputs loaded into the project."""
    try:
        how = processing.runAndLoadResults if load else processing.run
        result = how(alg, dict(params), feedback=feedback)  # runAndLoadResults edits it
    except QgsProcessingException as exc:
        return {"raised": str(exc), **feedback.said()}
    return {"result": {k: str(v) for k, v in result.items()}, **feedback.said()}


def task_classify(task):
    out = run("georaster_cnn:classify", task["params"], Recorder(), load=True)
    # the layer Processing loaded into the project, as the toolbox does, and the file opened
    loaded = list(QgsProject.instance().mapLayers().values())
    opened = QgsRasterLayer(task["params"]["OUTPUT"], "classes")
    for name, layers in (("loaded", loaded), ("opened", [opened])):
        renderer = layers[0].renderer() if len(layers) == 1 else None
        out[f"{name}_renderer"] = renderer.type() if renderer else None
        classes = renderer.classes() if hasattr(renderer, "classes") else []
        out[f"{name}_legend"] = [c.label for c in classes]
    return out


def task_cancel_resume(task):
    folder = os.path.dirname(task["params"]["OUTPUT"])
    first = run("georaster_cnn:classify", task["params"], Recorder(cancel_at=task["cancel_at"]))
    first["left"] = sorted(os.listdir(folder))
    second = run("georaster_cnn:classify", task["params"], Recorder())
    second["left"] = sorted(os.listdir(folder))
    return {"cancelled": first, "rerun": second}


def memory_points(task):
    layer = QgsVectorLayer(f"Point?crs={task['crs']}", "field points", "memory")
    provider = layer.dataProvider()
    provider.addAttributes([QgsField(task["field"], QVariant.String)])
    layer.updateFields()
    features = []
    for x, y, name in task["points"]:
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        f.setAttribute(task["field"], name)
        features.append(f)
    provider.addFeatures(features)
    layer.updateExtents()
    return layer


def task_train_memory(task):
    params = dict(task["params"], LABELS=memory_points(task))
    return run("georaster_cnn:train", params, Recorder())


def task_evaluate_subset(task):
    layer = QgsVectorLayer(task["gpkg"], "checks", "ogr")
    layer.setSubsetString(task["subset"])
    params = dict(task["params"], LABELS=layer)
    out = run("georaster_cnn:evaluate", params, Recorder())
    out["features_shown"] = layer.featureCount()
    return out


def task_inspect(task):
    """Inspect a raster layer given by a GDAL connection string (not a plain file)."""
    layer = QgsRasterLayer(task["source"], "layer", "gdal")
    out = run("georaster_cnn:inspect", dict(task["params"], INPUT=layer), Recorder())
    out["valid"] = layer.isValid()
    return out


def task_help(task):
    registry = QgsApplication.processingRegistry()
    out = {}
    for alg_id in task["ids"]:
        alg = registry.algorithmById(alg_id)
        out[alg_id] = {
            "help": alg.shortHelpString(),
            "parameters": [p.name() for p in alg.parameterDefinitions()],
        }
    return out


def task_settings(task):
    """The settings dialog's executable, the Processing setting, and a check of each."""
    from georaster_cnn_qgis import settings
    from processing.core.ProcessingConfig import ProcessingConfig
    from qgis.PyQt.QtWidgets import QLineEdit

    dialog = settings.settings_dialog(None)
    shown = dialog.findChild(QLineEdit).text()
    out = {
        "shown": shown,
        "configured": settings.configured_executable(),
        "check": settings.check_executable(shown),
        "check_missing": settings.check_executable(task["missing"]),
    }
    # another executable set in Processing's options (which takes existing files only),
    # then gone (an environment deleted since), or broken
    for name in ("missing", "broken"):
        if name == "missing":
            with open(task[name], "w") as placeholder:
                placeholder.write("")
        ProcessingConfig.setSettingValue(settings.EXECUTABLE_SETTING, task[name])
        if name == "missing":
            os.remove(task[name])
        out[f"run_{name}"] = run("georaster_cnn:inspect", task["params"], Recorder())
    ProcessingConfig.setSettingValue(settings.EXECUTABLE_SETTING, shown)
    out["configured_after"] = settings.configured_executable()
    return out


TASKS = {
    "classify": task_classify,
    "cancel_resume": task_cancel_resume,
    "train_memory": task_train_memory,
    "evaluate_subset": task_evaluate_subset,
    "help": task_help,
    "inspect": task_inspect,
    "settings": task_settings,
}

results = {}
for name, task in config["tasks"].items():
    try:
        results[name] = TASKS[task["kind"]](task)
    except Exception:  # said in the output: the test shows it
        results[name] = {"crashed": traceback.format_exc()}
results["modules"] = sorted(
    m for m in sys.modules if m.split(".")[0] in ("torch", "georaster_cnn", "georaster_cnn_cli")
)
print("RESULTS " + json.dumps(results))
sys.stdout.flush()
app.exitQgis()
