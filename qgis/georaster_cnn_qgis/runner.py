"""Run the georaster-cnn CLI as a subprocess and turn its JSON lines into Processing feedback.

The CLI is started with ``--progress jsonl``: its stderr carries one JSON object per
line (``device``, ``progress``, ``warning``, ``error``, ``log``, ``message``; see
docs/cli.md), its stdout the results as text (tables), which go to the log as they
are. Cancel sends SIGINT: the CLI stops at its next block, removes what it was
writing, keeps the finished blocks and exits 130; the same run started again
continues from them. Nothing is decided here: the command line is the CLI's.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from qgis.core import QgsProcessingException, QgsProcessingFeedback

from .settings import WHERE, executable

#: Exit status of the CLI after SIGINT.
EXIT_INTERRUPTED = 130
#: How long a cancelled run may take to stop cleanly before it is terminated.
STOP_GRACE_S = 60.0

# Variables that QGIS sets for its own Python and GDAL/PROJ; the CLI is another
# environment, with its own (QGIS's would make it load the wrong stdlib or data).
_NOT_INHERITED = (
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONEXECUTABLE",
    "PYTHONUSERBASE",
    "GDAL_DATA",
    "GDAL_DRIVER_PATH",
    "PROJ_LIB",
    "PROJ_DATA",
)


def child_environment() -> dict[str, str]:
    """QGIS's environment without its Python/GDAL variables; plain, wide, UTF-8 output."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update(NO_COLOR="1", COLUMNS="160", PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
    return env


class _Reader(threading.Thread):
    """Puts ``(stream name, line)`` on a queue, then ``(stream name, None)`` at its end."""

    def __init__(self, name: str, stream, out: queue.Queue) -> None:
        super().__init__(daemon=True)
        self.stream_name, self.stream, self.out = name, stream, out

    def run(self) -> None:
        try:
            for line in self.stream:
                self.out.put((self.stream_name, line.rstrip("\r\n")))
        finally:
            self.out.put((self.stream_name, None))


class CliRun:
    """One run of the CLI: the events it sent, its errors, how it ended."""

    def __init__(self, feedback: QgsProcessingFeedback | None) -> None:
        self.feedback = feedback or QgsProcessingFeedback()
        self.events = 0
        self.errors: list[str] = []
        self.stdout: list[str] = []
        self.other: list[str] = []  # stderr lines that are not JSON (a broken environment)
        self.stage: str | None = None
        self.device: str | None = None

    # -------------------------------------------------------------- events -> feedback

    def line(self, stream: str, text: str) -> None:
        fb = self.feedback
        if stream == "stdout":
            self.stdout.append(text)
            fb.pushConsoleInfo(text)
            return
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self.other.append(text)
            fb.pushConsoleInfo(text)
            return
        self.events += 1
        self.event(event)

    def event(self, event: dict) -> None:
        fb = self.feedback
        kind = event.get("event")
        where = f"{event['input']}: " if event.get("input") else ""
        if kind == "device":
            self.device = str(event.get("name") or event.get("device"))
            fb.pushInfo(f"device: {self.device}")
        elif kind == "progress":
            stage, done, total = event.get("stage"), event.get("done"), event.get("total")
            if stage != self.stage:
                self.stage = stage
                item = f" ({event['item']})" if event.get("item") else ""
                fb.pushInfo(f"{stage}{item}")
            if total:
                fb.setProgress(min(100.0, 100.0 * float(done or 0) / float(total)))
        elif kind == "warning":
            fb.pushWarning(f"{where}{event.get('message', '')}")
        elif kind == "error":
            message = f"{where}{event.get('message', '')}"
            self.errors.append(message)
            fb.reportError(message, False)
            if event.get("traceback"):
                fb.pushDebugInfo(str(event["traceback"]))
        elif kind == "log":
            level, message = event.get("level"), str(event.get("message", ""))
            if level in ("warning", "error", "critical"):
                fb.pushWarning(message)
            elif level == "debug":
                fb.pushDebugInfo(message)
            else:
                fb.pushInfo(message)
        else:  # "message" and any event this version does not know
            fb.pushInfo(str(event.get("message", event)))


def run_cli(args: Sequence[str], feedback: QgsProcessingFeedback | None) -> CliRun:
    """Run ``georaster-cnn --progress jsonl ARGS...``; returns when it ended successfully.

    Raises
    ------
    QgsProcessingException
        The executable is missing or does not run, the command failed (its error
        lines), or the run was cancelled (what a rerun continues).
    """
    exe = executable()
    command = [exe, "--progress", "jsonl", *map(str, args)]
    run = CliRun(feedback)
    fb = run.feedback
    fb.pushCommandInfo(" ".join(shlex.quote(c) for c in command))
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=child_environment(),
            creationflags=flags,
        )
    except OSError as exc:
        raise QgsProcessingException(
            f"georaster-cnn does not start ({exe}: {exc}); {WHERE}."
        ) from exc
    lines: queue.Queue = queue.Queue()
    readers = [_Reader("stdout", proc.stdout, lines), _Reader("stderr", proc.stderr, lines)]
    for r in readers:
        r.start()
    open_streams, cancelled_at = len(readers), None
    while open_streams:
        try:
            stream, text = lines.get(timeout=0.1)
        except queue.Empty:
            stream, text = None, None
        if stream is not None:
            if text is None:
                open_streams -= 1
            else:
                run.line(stream, text)
        if fb.isCanceled() and proc.poll() is None:
            if cancelled_at is None:
                cancelled_at = time.monotonic()
                fb.pushInfo("cancelling: georaster-cnn stops at its next block…")
                _interrupt(proc)
            elif time.monotonic() - cancelled_at > STOP_GRACE_S:
                proc.terminate()
    status = proc.wait()
    for r in readers:
        r.join()
    proc.stdout.close()
    proc.stderr.close()
    if status == 0:
        return run
    if cancelled_at is not None or status == EXIT_INTERRUPTED:
        said = run.errors[-1] if run.errors else "interrupted"
        raise QgsProcessingException(
            f"cancelled: {said}. Run the algorithm again with the same parameters and output "
            "to continue."
        )
    if not run.events:  # it never got as far as its first event: a broken installation
        tail = "; ".join(run.other[-3:]) or "no output"
        raise QgsProcessingException(
            f"georaster-cnn at {exe} did not run (exit status {status}): {tail}. {WHERE}."
        )
    said = "; ".join(run.errors) or "; ".join(run.other[-3:]) or "no message"
    raise QgsProcessingException(f"georaster-cnn failed (exit status {status}): {said}")


def _interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C for the CLI (on Windows Ctrl-Break, to its own process group)."""
    try:
        if sys.platform == "win32":
            proc.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            proc.send_signal(signal.SIGINT)
    except OSError:  # it has just ended
        pass
