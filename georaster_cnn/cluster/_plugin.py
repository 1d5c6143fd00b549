"""The worker plugin that carries a model file's bytes to every worker of a cluster.

Apart from :mod:`georaster_cnn.cluster._shipping` because it subclasses
``distributed``'s :class:`~distributed.diagnostics.plugin.WorkerPlugin`: importing it
imports ``distributed``, which shipping only needs once there is a client.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import WorkerPlugin

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["ModelPlugin"]

log = logging.getLogger(__name__)


class ModelPlugin(WorkerPlugin):
    """A model file's bytes, on every worker of a cluster (also on workers that join later).

    Registered by :func:`~georaster_cnn.cluster.ship_model`. Tasks name the model by
    its checksum, and :mod:`georaster_cnn.model._inference` loads it from here once
    per worker process.

    Parameters
    ----------
    raw
        The model file's bytes (:meth:`~georaster_cnn.GeoModel.to_bytes`).
    checksum
        :attr:`~georaster_cnn.GeoModel.checksum` of the model.
    name
        The plugin's name on the workers
        (:func:`~georaster_cnn.cluster.plugin_name` of the checksum).
    """

    idempotent = True  # the same name always holds the same bytes

    def __init__(self, raw: bytes, checksum: str, name: str) -> None:
        self.raw = raw
        self.checksum = checksum
        self.name = name

    def setup(self, worker: Worker) -> None:
        log.debug("model %s available on worker %s", self.checksum, worker.address)
