"""QGIS plugin "georaster-cnn": a Processing provider that runs the georaster-cnn CLI.

The plugin imports neither torch nor ``georaster_cnn``: every algorithm runs the
``georaster-cnn`` executable recorded by ``georaster-cnn qgis install`` as a separate
process (``--progress jsonl``) and turns its JSON lines into Processing feedback.
Nothing is imported here at module level, so the package can be found (and copied by
``georaster-cnn qgis install``) outside QGIS.
"""


def classFactory(iface):
    """The plugin instance QGIS loads (the desktop and qgis_process alike)."""
    from .plugin import GeorasterCnnPlugin

    return GeorasterCnnPlugin(iface)
