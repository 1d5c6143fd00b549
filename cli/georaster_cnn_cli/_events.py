"""``--progress jsonl``: progress, warnings and errors as one JSON object per line on stderr.

For programs that run ``georaster-cnn`` (the QGIS plugin, a workflow engine): stdout
keeps the command's results (tables, summaries) as text; stderr carries nothing but
JSON lines, each flushed as it happens, each an object with an ``event`` key:

=============  ====================================================================
``device``     ``device`` (``cpu``, ``cuda:0`` ...), ``name`` ("CUDA NVIDIA H200
               (cuda:0)", "CPU"): the first event of a command that runs a model
``progress``   ``stage`` (``tiles``, ``blocks``, ``reading``, ``epochs``,
               ``evaluating``), ``item`` (what the stage works on, e.g. a tile's
               name), ``done``, ``total`` (``null`` while unknown)
``warning``    ``message``, ``input`` (the file it is about, or ``null``)
``error``      ``message``, ``input``; ``traceback`` too under ``-v``
``log``        ``level``, ``logger``, ``message``: library log records (``-v``)
``message``    ``message``: any other line the command says on stderr (a resume
               note, an epoch's metrics)
=============  ====================================================================

A stage's events come at most every :data:`MIN_INTERVAL_S` seconds, plus its first
and its last (``done == total``). The exit status says how the command ended
(130 after SIGINT: the events before it say what a rerun continues).
"""

from __future__ import annotations

import io
import json
import threading
import time
from typing import IO, Any, cast

from rich.console import Console
from rich.progress import Progress, Task, TaskID

__all__ = ["MIN_INTERVAL_S", "EventProgress", "EventStream", "event_console"]

#: Least time between two progress events of one stage (the first and last always go).
MIN_INTERVAL_S = 0.2


class EventStream:
    """Writes events as JSON lines to a text stream, flushed one by one, from any thread."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        """One line ``{"event": event, **fields}``."""
        line = json.dumps({"event": event, **fields}, default=str, allow_nan=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class _LinesAsEvents(io.TextIOBase):
    """A text file whose every line written becomes a ``message`` event."""

    def __init__(self, events: EventStream) -> None:
        super().__init__()
        self._events = events
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self._events.emit("message", message=line.rstrip())
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._pending = self._pending, ""
        if line.strip():
            self._events.emit("message", message=line.rstrip())


def event_console(events: EventStream) -> Console:
    """A console for stderr whose printed lines become ``message`` events (plain text, wide)."""
    return Console(
        file=cast(IO[str], _LinesAsEvents(events)),
        force_terminal=False,
        no_color=True,
        highlight=False,
        width=200,
        soft_wrap=True,
    )


class EventProgress(Progress):
    """A progress display that draws nothing and emits ``progress`` events instead.

    A task's stage is its ``stage`` field (``add_task(..., stage="blocks")``), else
    its description when it was added; its item the description when that differs.
    """

    def __init__(self, events: EventStream) -> None:
        super().__init__(disable=True)
        self._events = events
        self._sent: dict[TaskID, tuple[float, tuple[str, str, float | None, float]]] = {}

    def _emit(self, task_id: TaskID) -> None:
        with self._lock:
            task: Task | None = self._tasks.get(task_id)
            if task is None or not task.visible:
                return
            stage = str(task.fields.get("stage") or task.fields.get("_stage", ""))
            item = task.description if task.description != stage else None
            done, total = task.completed, task.total
            now = time.monotonic()
            state = (stage, item or "", total, done)
            last = self._sent.get(task_id)
            if last is not None:
                when, before = last
                if before == state:
                    return  # nothing new
                finished = total is not None and done >= total
                if before[:3] == state[:3] and not finished and now - when < MIN_INTERVAL_S:
                    return
            self._sent[task_id] = (now, state)
        self._events.emit(
            "progress",
            stage=stage,
            item=item,
            done=int(done),
            total=None if total is None else int(total),
        )

    def add_task(
        self,
        description: str,
        start: bool = True,
        total: float | None = 100.0,
        completed: int = 0,
        visible: bool = True,
        **fields: Any,
    ) -> TaskID:
        fields.setdefault("_stage", description)
        task_id = super().add_task(
            description, start=start, total=total, completed=completed, visible=visible, **fields
        )
        self._emit(task_id)
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._emit(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._emit(task_id)

    def reset(self, task_id: TaskID, **kwargs: Any) -> None:
        super().reset(task_id, **kwargs)
        self._sent.pop(task_id, None)
        self._emit(task_id)
