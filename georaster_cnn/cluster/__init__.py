"""Where Dask work runs: scheduler choice, model shipping and progress, for every layer above.

This subpackage owns the ``scheduler=`` option (:func:`use_scheduler`,
:class:`ClusterSession`, :func:`parse_scheduler`), streaming finished blocks back
from a cluster (:func:`stream_blocks`), shipping a model to every worker once
(:func:`ship_model`, :class:`ModelPlugin`) and progress on any scheduler
(:func:`track_progress`). It sits just above the core: the readers, writers,
classifier, training and evaluation compute through it, and it knows of a model
only what shipping needs (a checksum and the file's bytes). Its names are
imported lazily: ``import georaster_cnn.cluster`` does not import ``distributed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from georaster_cnn._lazy import lazy_exports

#: Public name -> the module of this package that defines it.
_LAZY: dict[str, str] = {
    "ClusterSession": "scheduler",
    "ModelPlugin": "_plugin",
    "SchedulerSpec": "scheduler",
    "current_client": "_client",
    "is_shipped": "_shipping",
    "parse_scheduler": "scheduler",
    "plugin_name": "_shipping",
    "ship_model": "_shipping",
    "stream_blocks": "scheduler",
    "torch_threads_for": "scheduler",
    "track_progress": "_progress",
    "use_scheduler": "scheduler",
}

if TYPE_CHECKING:
    from georaster_cnn.cluster._client import current_client
    from georaster_cnn.cluster._plugin import ModelPlugin
    from georaster_cnn.cluster._progress import track_progress
    from georaster_cnn.cluster._shipping import is_shipped, plugin_name, ship_model
    from georaster_cnn.cluster.scheduler import (
        ClusterSession,
        SchedulerSpec,
        parse_scheduler,
        stream_blocks,
        torch_threads_for,
        use_scheduler,
    )

__all__ = [
    "ClusterSession",
    "ModelPlugin",
    "SchedulerSpec",
    "current_client",
    "is_shipped",
    "parse_scheduler",
    "plugin_name",
    "ship_model",
    "stream_blocks",
    "torch_threads_for",
    "track_progress",
    "use_scheduler",
]

if not TYPE_CHECKING:  # hidden from type checkers, which would type any unknown name as Any
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
