"""File-system steps of staging that never follow a planted link nor replace what they must not.

The library's temporary and resume names are predictable (``.NAME.gcnn-resume-<key>...``),
so anyone who can write to the output folder could plant a symbolic link there that
points elsewhere; a write through that link would overwrite or truncate a file outside
the output folder. And two runs may publish the same output at the same time. Hence:

* names the library creates are created exclusively, without following a link
  (``O_CREAT | O_EXCL | O_NOFOLLOW``; ``mkdir`` never follows one);
* a name about to be reused (a resumable output, its journal, its lock) is
  ``lstat``-ed first: only a regular file (with no other hard link) or a real folder
  is reused, anything else is removed (a link itself, never its target);
* removal never follows a link into a folder (``shutil.rmtree`` only on real folders);
* publishing a finished output refuses an existing one unless asked to replace it:
  ``link`` + ``unlink`` for files (``link`` fails when the target exists), and
  ``renameat2(RENAME_NOREPLACE)`` for folders on Linux, else a check and a rename
  (which refuses a non-empty folder; only an empty one could be raced).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

try:  # advisory locks; without them (Windows) concurrent resumable runs are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "NOFOLLOW",
    "LockFile",
    "chmod_like_new",
    "create_file",
    "is_entry",
    "open_reusable",
    "publish",
    "remove_entry",
    "reusable",
]

#: ``O_NOFOLLOW`` where the platform has it (not on Windows, where links are rare).
NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def is_entry(path: Path) -> bool:
    """Whether anything (a file, folder, link, even a dangling one) is at ``path``."""
    return _lstat(path) is not None


def remove_entry(path: Path) -> None:
    """Remove whatever is at ``path``: a real folder with its content, else the entry itself.

    A link is unlinked, never followed (not even a link to a folder).
    """
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def reusable(path: Path, *, folder: bool = False) -> bool:
    """Whether ``path`` is ours to continue: a real folder, or a regular file with one link.

    Anything else found there (a link, a FIFO, a file hard-linked elsewhere, the wrong
    kind) is removed, so that the caller starts afresh under that name.
    """
    st = _lstat(path)
    if st is None:
        return False
    if folder and stat.S_ISDIR(st.st_mode):
        return True
    if not folder and stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        return True
    remove_entry(path)
    return False


def create_file(path: Path, mode: int = 0o600) -> int:
    """Create ``path`` exclusively, never through a link; a read-write descriptor.

    Raises
    ------
    FileExistsError
        Something (a link too) is at ``path``.
    """
    return os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | NOFOLLOW | _CLOEXEC, mode)


def open_reusable(path: Path) -> int | None:
    """A read-write descriptor of the regular file at ``path``, or ``None`` if it is not one.

    The file is opened without following a link and checked on the open descriptor
    (no race between the check and the use): a regular file with a single link.
    """
    try:
        fd = os.open(path, os.O_RDWR | NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        return None
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return fd


def chmod_like_new(path: Path) -> None:
    """The mode a plain ``open``/``mkdir`` would give under the current umask, without following a link."""
    umask = os.umask(0)
    os.umask(umask)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"{path} became a symbolic link; refusing to follow it")
    mode = (0o777 if stat.S_ISDIR(st.st_mode) else 0o666) & ~umask
    if not NOFOLLOW:  # pragma: no cover - Windows
        os.chmod(path, mode)
        return
    flags = os.O_RDONLY | NOFOLLOW | _NONBLOCK | _CLOEXEC
    fd = os.open(path, flags | (_DIRECTORY if stat.S_ISDIR(st.st_mode) else 0))
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


@functools.cache
def _renameat2() -> Any:
    """glibc's ``renameat2`` (Linux, glibc >= 2.28), or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with :class:`FileExistsError` if ``dst`` exists."""
    func = _renameat2()
    if func is not None:
        rc = func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src))
    # No RENAME_NOREPLACE here (another OS, NFS, some FUSE): check, then rename. A
    # rename onto a non-empty folder or onto a file fails anyway; only an empty
    # folder made in between could be replaced.
    if is_entry(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from exc
        raise


def _publish_file(tmp: Path, out: Path) -> None:
    try:
        os.link(tmp, out, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system (FAT, some network shares)
        _rename_noreplace(tmp, out)
        return
    os.unlink(tmp)


def publish(tmp: Path, out: Path, *, overwrite: bool, aside: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is replaced only with ``overwrite``.

    Without ``overwrite`` the rename refuses an existing ``out`` (file, folder or link)
    atomically where the file system allows (see the module docstring). With it, a
    file replaces a file (``os.replace``), and an existing folder is first renamed to
    ``aside``, put back if the new one cannot be renamed in, and removed after.

    Raises
    ------
    FileExistsError
        ``out`` exists (appeared since the write began) and ``overwrite`` is false.
    """
    folder = stat.S_ISDIR(os.lstat(tmp).st_mode)
    if not overwrite:
        if folder:
            _rename_noreplace(tmp, out)
        else:
            _publish_file(tmp, out)
        return
    if not folder:
        os.replace(tmp, out)  # a file never replaces a folder (IsADirectoryError)
        return
    old: Path | None = None
    if is_entry(out):
        old = aside
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        remove_entry(old)


class LockFile:
    """An exclusive advisory lock (``flock``) on the file ``path``, held while a run writes.

    The kernel drops it when the process dies, so a SIGKILLed run never blocks the
    rerun. The lock file is opened without following a link (``O_CREAT`` through a
    planted link would create its target); a link or non-file there is removed and
    the lock file made afresh.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _open(self) -> int:
        for _ in range(3):  # another run may create or remove the file in between
            try:
                fd = os.open(
                    self.path, os.O_CREAT | os.O_RDWR | NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o600
                )
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK):
                    raise
            else:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    return fd
                os.close(fd)
            remove_entry(self.path)
            try:
                return create_file(self.path)
            except FileExistsError:
                continue
        raise OSError(errno.EEXIST, f"cannot create the lock file {self.path}")

    def acquire(self) -> bool:
        """Take the lock; ``False`` when another process holds it."""
        fd = self._open()
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
        self._fd = fd
        return True

    def release(self, *, remove: bool) -> None:
        """Release the lock, removing the lock file first when ``remove``."""
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # also releases the lock
        self._fd = None
