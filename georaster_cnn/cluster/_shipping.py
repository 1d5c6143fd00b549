"""Shipping the model to a cluster once per worker, not with every task.

:func:`ship_model` registers a :class:`~georaster_cnn.cluster._plugin.ModelPlugin`
(the model file's bytes) with the scheduler, which hands it to every worker,
including workers that join later (a replacement for a lost worker gets it on
start). Tasks then carry only the model's digest
(:attr:`~georaster_cnn.GeoModel.checksum`); the classifier
(:mod:`georaster_cnn.model._inference`) loads the model from the plugin once per
worker process (:func:`shipped_bytes`).

The model layer stays below this one: a classifier only *remembers* its model here
(:func:`remember_model`), so that a prediction's checksum can be shipped later;
shipping is done by whoever chooses the scheduler (:func:`use_scheduler
<georaster_cnn.cluster.use_scheduler>` given a model, and :func:`ship_to_active_client`,
called by :func:`~georaster_cnn.predict` and :func:`~georaster_cnn.evaluate` when they
build their graph). Importing this module does not import ``distributed``.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from georaster_cnn.cluster._client import address, current_client, is_live

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "Shippable",
    "is_shipped",
    "local_model",
    "plugin_name",
    "remember_model",
    "ship_model",
    "ship_to_active_client",
    "shipped_bytes",
]

log = logging.getLogger(__name__)


class Shippable(Protocol):
    """What shipping needs of a model: its digest and its file's bytes."""

    @property
    def checksum(self) -> str: ...

    def to_bytes(self) -> bytes: ...


def plugin_name(checksum: str) -> str:
    """The worker plugin that holds the model with this checksum."""
    return f"georaster-cnn-model-{checksum}"


# The models classifiers of this process were made of (or loaded), by checksum, for
# shipping a prediction's model to a cluster by the checksum in its attributes.
_LOCAL_MODELS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
# Clients this process shipped each model to (weak: a closed, collected client drops out).
_SHIPPED: dict[str, weakref.WeakSet[Any]] = {}
_SHIP_LOCK = threading.Lock()


def remember_model(model: Shippable) -> None:
    """Keep (weakly) a model this process classifies with, so it can be shipped by checksum."""
    _LOCAL_MODELS[model.checksum] = model


def local_model(checksum: str) -> Any:
    """The model with this checksum that this process holds, or ``None``."""
    return _LOCAL_MODELS.get(checksum)


def is_shipped(checksum: str) -> bool:
    """Whether a live client of this process has the model's plugin registered.

    Then a classifier pickles as the digest alone. Called while Dask serialises a
    graph (possibly on the client's event-loop thread): it only reads local state.
    """
    return any(is_live(c) for c in _SHIPPED.get(checksum, ()))


def ship_model(client: Client, model: Shippable | str) -> bool:
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
    from georaster_cnn.cluster._plugin import ModelPlugin

    checksum = model if isinstance(model, str) else model.checksum
    with _SHIP_LOCK:
        shipped = _SHIPPED.setdefault(checksum, weakref.WeakSet())
        if client in shipped and is_live(client):
            return True
        found = local_model(checksum) if isinstance(model, str) else model
        if found is None:
            return False
        name = plugin_name(checksum)
        client.register_plugin(ModelPlugin(found.to_bytes(), checksum, name), name=name)
        shipped.add(client)
    log.info("model %s shipped to the workers of %s", checksum, address(client))
    return True


def ship_to_active_client(model: Shippable) -> None:
    """Ship ``model`` to the client Dask would compute on now, if any and not inside a task.

    Called when a graph that classifies with ``model`` is built, so that its tasks
    carry the digest alone. A failure is logged, not raised: tasks then carry the
    model's bytes (slower, not wrong).
    """
    if "distributed" not in sys.modules:
        return  # no client can exist without it
    from distributed import get_worker

    try:
        get_worker()
        return  # built inside a task: the model is already where it runs
    except ValueError:
        pass
    client = current_client()
    if client is not None and is_live(client):
        try:
            ship_model(client, model)
        except Exception as exc:
            log.warning("could not ship model %s to the cluster (%s)", model.checksum, exc)


def shipped_bytes(checksum: str) -> tuple[bytes | None, str]:
    """The model file's bytes from this Dask worker's plugin, and where they were looked for.

    ``(None, where)`` outside a worker or when the worker holds no such plugin.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None, "this process (not a Dask worker)"
    raw = getattr(worker.plugins.get(plugin_name(checksum)), "raw", None)
    return (raw if isinstance(raw, bytes) else None), f"worker {worker.address}"
