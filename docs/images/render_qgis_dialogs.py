"""Render the georaster-cnn algorithms' dialogs to docs/images/qgis-*.png, headless.

Run with QGIS's (system) Python, a desktop user's environment and no display::

    env -i HOME=$HOME PATH=/usr/bin:/bin QT_QPA_PLATFORM=offscreen \
        XDG_RUNTIME_DIR=$(mktemp -d) /usr/bin/python3 docs/images/render_qgis_dialogs.py \
        sample_data/scene.tif field_points.gpkg

The plugin is loaded from this checkout's qgis/ folder; the scene and a vector layer
of labels fill the layer choices, the other values are examples.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1] / "qgis"), "/usr/share/qgis/python/plugins"]

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer  # noqa: E402
from qgis.PyQt.QtCore import QSize  # noqa: E402

app = QgsApplication([], True)
app.initQgis()

from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()
import georaster_cnn_qgis  # noqa: E402
from processing.gui.AlgorithmDialog import AlgorithmDialog  # noqa: E402

plugin = georaster_cnn_qgis.classFactory(None)  # kept: it holds the provider
plugin.initProcessing()

scene = QgsRasterLayer(sys.argv[1], "scene")
points = QgsVectorLayer(sys.argv[2], "field points", "ogr")
QgsProject.instance().addMapLayers([scene, points])
VALUES = {
    "classify": {
        "INPUT": scene, "MODEL": "/data/landcover.safetensors", "STRIDE": 16,
        "OUTPUT": "/data/maps/landcover.tif",
    },
    "train": {
        "INPUT": [scene], "LABELS": points, "FIELD": "landcover", "EPOCHS": 20,
        "OUTPUT": "/data/landcover.safetensors",
    },
    "evaluate": {
        "INPUT": scene, "MODEL": "/data/landcover.safetensors", "LABELS": points,
        "FIELD": "landcover", "OUTPUT": "/data/report",
    },
    "vectorize": {"INPUT": scene, "OUTPUT": "/data/maps/landcover.gpkg"},
    "inspect": {"INPUT": scene, "OUTPUT": "/data/scene-inspect.html"},
}  # fmt: skip
registry = QgsApplication.processingRegistry()
for name, values in VALUES.items():
    algorithm = registry.createAlgorithmById(f"georaster_cnn:{name}")  # kept: the dialog uses it
    dialog = AlgorithmDialog(algorithm, False, None)
    dialog.resize(QSize(900, 640))
    dialog.setParameters(values)
    dialog.show()
    for _ in range(20):
        app.processEvents()
    if not dialog.grab().save(str(HERE / f"qgis-{name}.png")):
        raise SystemExit(f"could not write qgis-{name}.png")
    dialog.close()
app.exitQgis()
