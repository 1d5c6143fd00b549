"""Atomic file writes: a temporary name in the target folder, then ``os.replace``.

Readers never see a half-written file under the final name; an interrupted write
leaves at most a hidden ``.NAME.*.partial`` file, which is removed on failure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "chmod_like_new"]


def chmod_like_new(path: Path) -> None:
    """Give a ``mkstemp`` file (0600) or ``mkdtemp`` folder (0700) the mode a plain
    ``open``/``mkdir`` would have given it under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then rename it.

    Parameters
    ----------
    path
        Final file; its folder must exist.
    write
        Writes the content to the open binary file it is given.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        chmod_like_new(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
