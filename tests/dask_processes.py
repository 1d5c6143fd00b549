"""A ``dask scheduler`` and ``dask worker`` processes on loopback, for the cluster tests.

Imported as ``from dask_processes import DaskProcesses``; the ``dask_processes`` fixture
(tests/conftest.py) starts a scheduler and two workers for one test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Bounded waits for processes started here.
START_TIMEOUT_S = 60


class DaskProcesses:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, stopped at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []
        env = {**os.environ, "GCNN_TORCH_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.env = env
        self._start(
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--scheduler-file", str(self.scheduler_file),
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.1)

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{args[0]}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dask", *args],  # = the `dask` command
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        self.procs.append(proc)
        return proc

    def add_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        # No nanny: a killed worker stays dead, so the job must finish without it.
        w = self._start(
            "worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
            "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60",
            "--name", f"worker-{len(self.workers)}", *extra,
        )  # fmt: skip
        self.workers.append(w)
        return w

    def address(self) -> str:
        return str(json.loads(self.scheduler_file.read_text())["address"])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        for log in self._logs:
            log.close()
