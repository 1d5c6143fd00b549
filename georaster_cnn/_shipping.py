"""Shipping the model to a cluster once per worker, not with every task.

:func:`ship_model` registers a :class:`ModelPlugin` (the model file's bytes) with the
scheduler, which hands it to every worker, including workers that join later (a
replacement for a lost worker gets it on start). Tasks then carry only the model's
digest (:attr:`~georaster_cnn.GeoModel.checksum`); :mod:`georaster_cnn._inference`
loads the model from the plugin once per worker process. A new classifier ships its
model to the active client by itself (:func:`_ship_from_classifier`).

The public names are re-exported by :mod:`georaster_cnn.cluster`, where they are
documented for users.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

if TYPE_CHECKING:
    from distributed import Client, Worker

    from georaster_cnn.modelfile import GeoModel

__all__ = ["ModelPlugin", "is_shipped", "plugin_name", "ship_model"]

log = logging.getLogger(__name__)


def plugin_name(checksum: str) -> str:
    """The worker plugin that holds the model with this checksum."""
    return f"georaster-cnn-model-{checksum}"


class ModelPlugin(WorkerPlugin):
    """A model file's bytes, on every worker of a cluster (also on workers that join later).

    Registered by :func:`ship_model`. Tasks name the model by its checksum, and
    :mod:`georaster_cnn._inference` loads it from here once per worker process.

    Parameters
    ----------
    raw
        The model file's bytes (:meth:`~georaster_cnn.GeoModel.to_bytes`).
    checksum
        :attr:`~georaster_cnn.GeoModel.checksum` of the model.
    """

    idempotent = True  # the same name always holds the same bytes

    def __init__(self, raw: bytes, checksum: str) -> None:
        self.raw = raw
        self.checksum = checksum
        self.name = plugin_name(checksum)

    def setup(self, worker: Worker) -> None:
        log.debug("model %s available on worker %s", self.checksum, worker.address)


# Clients this process shipped each model to (weak: a closed, collected client drops out).
_SHIPPED: dict[str, weakref.WeakSet[Any]] = {}
_SHIP_LOCK = threading.Lock()


def _live(client: Any) -> bool:
    return getattr(client, "status", "closed") in ("running", "connecting", "newly-created")


def is_shipped(checksum: str) -> bool:
    """Whether a live client of this process has the model's plugin registered.

    Then a classifier pickles as the digest alone. Called while Dask serialises a
    graph (possibly on the client's event-loop thread): it only reads local state.
    """
    return any(_live(c) for c in _SHIPPED.get(checksum, ()))


def ship_model(client: Client, model: GeoModel | str) -> bool:
    """Make the model available on every worker of ``client``'s cluster, once.

    Parameters
    ----------
    client
        A connected :class:`distributed.Client`.
    model
        The model, or the checksum of a model a classifier of this process holds
        (as found in a prediction's ``model_checksum`` attribute).

    Returns
    -------
    bool
        Whether the model is shipped (``False``: the checksum names no model of
        this process; tasks then carry the model's bytes, as before).
    """
    from georaster_cnn._inference import local_model
    from georaster_cnn.cluster import _address  # imported here: cluster imports this module

    checksum = model if isinstance(model, str) else model.checksum
    with _SHIP_LOCK:
        shipped = _SHIPPED.setdefault(checksum, weakref.WeakSet())
        if client in shipped and _live(client):
            return True
        found = local_model(checksum) if isinstance(model, str) else model
        if found is None:
            return False
        client.register_plugin(ModelPlugin(found.to_bytes(), checksum), name=plugin_name(checksum))
        shipped.add(client)
    log.info("model %s shipped to the workers of %s", checksum, _address(client))
    return True


def _ship_from_classifier(model: GeoModel) -> None:
    """Ship a new classifier's model to the active client, if any (called by Classifier)."""
    from distributed import get_worker

    from georaster_cnn.cluster import current_client

    try:
        get_worker()
        return  # built inside a task: the model is already where it runs
    except ValueError:
        pass
    client = current_client()
    if client is not None and _live(client):
        try:
            ship_model(client, model)
        except Exception as exc:  # tasks then carry the bytes: slower, not wrong
            log.warning("could not ship model %s to the cluster (%s)", model.checksum, exc)
