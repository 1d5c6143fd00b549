"""Logging for the commands: library records through the rich console, levels from ``-v``/``-q``.

The library logs and the CLI configures (a ``NullHandler`` in the package, levels here).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping

from rich.console import Console
from rich.text import Text

from georaster_cnn_cli._common import flag_wording
from georaster_cnn_cli._events import EventStream

__all__ = ["configure_logging"]

#: Other libraries' loggers that set their own level; held to the "other libraries" level.
_CHATTY_LOGGERS = ("distributed",)


class _ConsoleHandler(logging.Handler):
    """Logging handler printing through a rich console, so records and progress bars mix."""

    def __init__(
        self, console: Console, *, show_names: bool, events: EventStream | None = None
    ) -> None:
        super().__init__()
        self.console = console
        self.show_names = show_names
        self.events = events

    def format(self, record: logging.LogRecord) -> str:
        head = record.levelname.lower()
        if self.show_names:
            head = f"{head}: {record.name}"
        message = record.getMessage()
        if record.name.startswith("georaster_cnn."):
            message = flag_wording(message)  # the library names keywords, the CLI options
        text = f"{head}: {message}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.events is not None:  # --progress jsonl
                message = record.getMessage()
                if record.name.startswith("georaster_cnn."):
                    message = flag_wording(message)
                level = record.levelname.lower()
                self.events.emit("log", level=level, logger=record.name, message=message)
                return
            style = "yellow" if record.levelno == logging.WARNING else None
            if record.levelno >= logging.ERROR:
                style = "red"
            self.console.print(Text(self.format(record), style=style or ""), soft_wrap=True)
        except Exception:
            self.handleError(record)


_OUR_LOGGERS = ("georaster_cnn", "georaster_cnn_cli")


def configure_logging(
    verbosity: int, console: Console, events: EventStream | None = None
) -> Callable[[], None]:
    """Route log records to ``console`` at a level set by ``-v``/``-q``.

    ====================  =============================  ==================
    flags                 georaster_cnn loggers          other libraries
    ====================  =============================  ==================
    ``-q``                ERROR                          ERROR
    (none)                WARNING                        WARNING
    ``-v``                INFO                           WARNING
    ``-vv``               DEBUG (with logger names)      WARNING
    ``-vvv``              DEBUG                          DEBUG
    ====================  =============================  ==================

    Returns
    -------
    callable
        Restores the previous logging configuration (the CLI calls it on exit,
        which keeps repeated in-process invocations, e.g. in tests, independent).
    """
    levels = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
    ours = levels.get(max(verbosity, -1), logging.DEBUG)
    if verbosity < 0:
        others = logging.ERROR
    elif verbosity >= 3:
        others = logging.DEBUG
    else:
        others = logging.WARNING
    root = logging.getLogger()
    handler = _ConsoleHandler(console, show_names=verbosity >= 2, events=events)
    # distributed sets its own loggers to INFO when imported: a local cluster would
    # otherwise fill stderr with its start-up and shutdown chatter
    named = (*_OUR_LOGGERS, *_CHATTY_LOGGERS)
    saved: Mapping[str, int] = {name: logging.getLogger(name).level for name in named}
    saved_root = root.level
    root.addHandler(handler)
    root.setLevel(others)
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(others)

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

    return restore
