"""A loopback HTTP file server for tests: byte ranges, a request log, injected failures.

GDAL reads remote rasters (``/vsicurl/``, ``https://``) with ``HEAD`` and ranged
``GET`` requests; Python's ``http.server`` alone answers neither ranges nor failures.
:func:`serve` serves one folder on ``127.0.0.1`` (a free port), logs every request
(method, path, range, bytes sent) and answers ``404`` for the paths in ``missing``;
it never answers for the paths in ``stall`` (the request hangs until the client
gives up), for the paths in ``cut`` sends the headers and half the body and closes
the connection (a truncated response), and answers 503 to the first requests of the
paths in ``busy``. A ``POST`` (a STAC API search) is
answered with the file at its path, as a ``GET`` would be.

The server runs in its own process: rasterio holds the GIL while GDAL opens a
file, so a server thread of the test process could not answer GDAL's requests.
It never listens beyond loopback and stops when the block ends.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Served:
    """The running server: its base URL, and what it was asked (read from its log file)."""

    url: str
    log_file: Path

    @property
    def log(self) -> list[tuple[str, str, str, int]]:
        """``(method, path, range header, body bytes sent)`` of every request so far."""
        if not self.log_file.exists():
            return []
        lines = self.log_file.read_text().splitlines()
        return [tuple(json.loads(line)) for line in lines if line]  # type: ignore[misc]

    def bytes_sent(self) -> int:
        return sum(n for *_, n in self.log)


def _handler(
    root: Path,
    log_file: Path,
    missing: set[str],
    stall: frozenset[str] = frozenset(),
    cut: frozenset[str] = frozenset(),
    busy: dict[str, int] | None = None,
) -> type[BaseHTTPRequestHandler]:
    busy = dict(busy or {})  # path -> 503 answers left (one server process: plain counts)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _log(self, asked: str, sent: int) -> None:
            with log_file.open("a") as f:
                f.write(json.dumps([self.command, self.path, asked, sent]) + "\n")

        def _file(self) -> Path | None:
            rel = self.path.split("?", 1)[0].lstrip("/")
            path = (root / rel).resolve()
            if rel in missing or root not in path.parents or not path.is_file():
                return None
            return path

        def _answer(self, body: bool) -> None:
            path = self._file()
            asked = self.headers.get("Range", "")
            rel = self.path.split("?", 1)[0].lstrip("/")
            if rel in stall:
                self._log(asked, 0)
                time.sleep(3600)  # until the client gives up (or the server stops)
                return
            if busy.get(rel, 0) > 0:
                busy[rel] -= 1
                self._log(asked, 0)
                self.send_error(503)
                return
            if path is None:
                self._log(asked, 0)
                self.send_error(404)
                return
            data = path.read_bytes()
            start, end, status = 0, len(data) - 1, 200
            m = _RANGE.match(asked)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), end) if m.group(2) else end
                else:  # the last N bytes
                    start = max(0, len(data) - int(m.group(2)))
                status = 206
            chunk = data[start : end + 1]
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Content-Type", "application/octet-stream")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if body and rel in cut:  # half the body, then the connection closes
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                self._log(asked, len(chunk) // 2)
                return
            if body:
                self.wfile.write(chunk)
            self._log(asked, len(chunk) if body else 0)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_POST(self) -> None:  # a STAC API search: the static file at the path answers
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(body=True)

    return Handler


@contextmanager
def serve(
    root: Path,
    *,
    missing: set[str] | None = None,
    stall: set[str] | None = None,
    cut: set[str] | None = None,
    busy: dict[str, int] | None = None,
) -> Iterator[Served]:
    """Serve ``root`` on a free loopback port for the block; yields the :class:`Served`.

    Paths (relative to ``root``) in ``missing`` answer 404, in ``stall`` never
    answer, in ``cut`` send half their body and close; a path in ``busy`` answers 503
    (Service Unavailable) to its first N requests.
    """
    root = root.resolve()
    log_file = root.parent / f".{root.name}.http-log.jsonl"
    log_file.unlink(missing_ok=True)
    args = [
        sys.executable, __file__, str(root), str(log_file), *sorted(missing or ()),
        *(f"stall:{p}" for p in sorted(stall or ())), *(f"cut:{p}" for p in sorted(cut or ())),
        *(f"busy:{p}:{n}" for p, n in sorted((busy or {}).items())),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())  # the server says its port once it listens
        yield Served(url=f"http://127.0.0.1:{port}", log_file=log_file)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":  # the server process: ROOT LOG_FILE [MISSING|stall:P|cut:P|busy:P:N ...]
    served_root, served_log = Path(sys.argv[1]), Path(sys.argv[2])
    rest = sys.argv[3:]
    handler = _handler(
        served_root,
        served_log,
        {a for a in rest if not a.startswith(("stall:", "cut:", "busy:"))},
        frozenset(a[6:] for a in rest if a.startswith("stall:")),
        frozenset(a[4:] for a in rest if a.startswith("cut:")),
        {
            a[5:].rpartition(":")[0]: int(a.rpartition(":")[2])
            for a in rest
            if a.startswith("busy:")
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
