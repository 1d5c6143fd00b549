"""``rio gcnn``: the georaster-cnn commands as a rasterio CLI plugin.

rio registers a plugin under the *command's* name (click-plugins calls
``group.add_command(entry_point.load())``), not the entry point's, so the plugin
is the same group as ``georaster-cnn`` under the name ``gcnn``. Registered in
``pyproject.toml``::

    [project.entry-points."rasterio.rio_plugins"]
    gcnn = "georaster_cnn_cli.rio:gcnn"
"""

from __future__ import annotations

import copy

from georaster_cnn_cli.main import cli

__all__ = ["gcnn"]

#: ``georaster-cnn`` as ``rio gcnn``: same options and commands (shared, not copied).
gcnn = copy.copy(cli)
gcnn.name = "gcnn"
