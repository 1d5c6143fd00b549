"""Staged outputs: everything the library writes appears whole or not at all.

An output is written under a hidden temporary name in its own folder
(``.NAME.gcnn-<host>-<pid>-<random>.partial<suffix>``), optionally validated, then
renamed into place; on any failure (including Ctrl-C, and SIGTERM once the CLI has
turned it into an exception) the temporaries are removed. A process killed outright
(SIGKILL, power loss) cannot clean up: the next write of the same output removes the
temporaries that a dead process of this host left for it. Sidecars (``.aux.xml``)
are staged with their raster and renamed after it, so a sidecar never appears
before its raster. Folders (Zarr stores) replace an existing folder through a
rename-away, so at no moment is a partial store under the final name.

The final rename never replaces an output that another run wrote in the meantime
unless the caller asked to overwrite (``staged(..., overwrite=False)``): a file is
published with ``link`` + ``unlink``, a folder with a no-replace rename, and the
loser gets :class:`~georaster_cnn.errors.OutputExistsError`. Temporary and resume
names are created exclusively and never through a link; a name about to be reused
must be a regular file (or a real folder) of ours, and removal never follows a
link (:mod:`georaster_cnn.io._fs`).

Resumable outputs (a class map computed block by block) are staged under a name
derived from a *resume key* instead of the process id
(``.NAME.gcnn-resume-<key>.partial<suffix>``, with more names of the same form from
:meth:`Staged.resumable`). The key is a digest of everything the output's content
depends on (inputs, model, options), so a rerun with the same key finds and
continues the unfinished output, and one with another key never does. Such names
are exempt from the dead-process cleanup (they carry no process id); instead every
staged write of an output removes the resumable temporaries of other keys, unless a
live run holds their lock. An interrupted resumable write (Ctrl-C, SIGTERM turned
into an exception, any ``BaseException`` that is not an ``Exception``) keeps its
resumable names for the rerun once the writer has something worth resuming
(:attr:`Staged.worth_resuming` set: a finished block); an error removes them as any
temporary.

Used for COG/GeoTIFF class maps and their sidecars, Zarr and netCDF outputs,
model files, evaluation reports, QGIS styles, quicklooks and vector files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from georaster_cnn.errors import ClusterError, GeorasterCNNError, OutputExistsError
from georaster_cnn.io._fs import (
    LockFile,
    chmod_like_new,
    create_file,
    is_entry,
    publish,
    remove_entry,
    reusable,
)

__all__ = [
    "RESUME_TAG",
    "Staged",
    "atomic_write",
    "check_output",
    "has_resume_state",
    "output_exists",
    "remove_stale_temporaries",
    "resume_key",
    "staged",
    "staging_folder",
]

#: Marks every temporary name the library makes, so strays are recognisable.
TEMP_TAG = "gcnn"
#: Marks resumable temporaries: ``.NAME.gcnn-resume-<key>...`` (no host, no process id).
RESUME_TAG = f"{TEMP_TAG}-resume"
#: Free space below which a failed write is reported as a full disk (GDAL and HDF5
#: often say "IO error" or "HDF error" when the disk is full).
FULL_DISK_BYTES = 16 * 1024**2


def output_exists(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is taken: a file, a folder, or a link (even a dangling one).

    The one test of "does the output exist?" for every writer and front end
    (``Path.exists()`` alone misses a dangling link, which a rename would replace).
    """
    p = Path(path)
    return p.exists() or p.is_symlink()


def check_output(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """``path`` as a :class:`~pathlib.Path`, refused when it exists and ``overwrite`` is false.

    Every writer asks this before its work; callers may ask it earlier, before slow
    work, to fail fast.

    Raises
    ------
    OutputExistsError
        ``path`` (a file, folder or link) exists and ``overwrite`` is false.
    """
    p = Path(path)
    if output_exists(p) and not overwrite:
        raise OutputExistsError(f"{p} exists; pass overwrite=True to replace it")
    return p


def has_resume_state(path: str | os.PathLike[str]) -> bool:
    """Whether an interrupted resumable write of ``path`` kept its finished blocks beside it."""
    p = Path(path)
    prefix = f".{p.name}.{RESUME_TAG}-"
    try:
        return any(q.name.startswith(prefix) for q in p.parent.iterdir())
    except OSError:
        return False


def _host() -> str:
    """This machine's name, reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def _temp_name(path: Path, suffix: str) -> Path:
    token = f"{TEMP_TAG}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}.{token}.partial{suffix}")


def resume_key(fields: Any) -> str:
    """The key of a resumable output: a digest of the JSON of ``fields``.

    ``fields`` holds everything the output's content depends on; any change gives
    another key, so old blocks are never reused for a different output.
    """
    text = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _resume_name(path: Path, key: str, ext: str) -> Path:
    return path.with_name(f".{path.name}.{RESUME_TAG}-{key}{ext}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries that dead processes of this host left for ``path``.

    Only names this module makes are touched (``.NAME.gcnn-<host>-<pid>-...``), only
    for this host (another machine's process may share the folder) and only when
    that process no longer runs.

    Returns
    -------
    list of Path
        What was removed.
    """
    final = Path(path)
    pattern = re.compile(
        rf"^\.{re.escape(final.name)}\.{TEMP_TAG}-{re.escape(_host())}-(\d+)-[0-9a-f]+\."
    )
    removed: list[Path] = []
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            remove_entry(entry)
            removed.append(entry)
    return removed


def remove_other_resume_state(path: str | os.PathLike[str], keep: str | None = None) -> list[Path]:
    """Remove the resumable temporaries of ``path`` whose key is not ``keep``.

    They were left by an interrupted run with other inputs, model or options and can
    never be reused. Those of a run still in progress (its lock is held) stay.

    Returns
    -------
    list of Path
        What was removed.
    """
    final = Path(path)
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.{RESUME_TAG}-([0-9a-f]+)\.")
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return []
    by_key: dict[str, list[Path]] = {}
    for entry in entries:
        m = pattern.match(entry.name)
        if m and m.group(1) != keep:
            by_key.setdefault(m.group(1), []).append(entry)
    removed: list[Path] = []
    for key, found in by_key.items():
        lock = LockFile(_resume_name(final, key, ".lock"))
        if not lock.acquire():
            continue  # a live run writes this output with other options
        try:
            for entry in found:
                if entry != lock.path:
                    remove_entry(entry)
                    removed.append(entry)
        finally:
            lock.release(remove=True)
    return removed


def _as_full_disk(exc: BaseException, final: Path) -> OSError | None:
    """``exc`` as "no space left on device while writing FINAL", if the disk is full."""
    if not isinstance(exc, Exception) or isinstance(exc, GeorasterCNNError):
        return None  # Ctrl-C, SystemExit, or a failure the library already explained
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        full = True
    else:
        try:
            full = shutil.disk_usage(final.parent).free < FULL_DISK_BYTES
        except OSError:
            full = False
    if not full:
        return None
    return OSError(errno.ENOSPC, f"no space left on device while writing {final}")


class Staged:
    """Temporary names for one output (and its sidecars); see :func:`staged`.

    Attributes
    ----------
    final
        Where the output will be.
    path
        The temporary file or folder to write.
    key
        The resume key, or ``None`` for an ordinary staged output.
    resumed
        Whether :attr:`path` was left by an interrupted run with the same key
        (always ``False`` without a key).
    worth_resuming
        Set by the writer once a rerun would have something to continue from; an
        interruption before that removes the resumable names too.
    """

    def __init__(
        self,
        final: Path,
        *,
        folder: bool,
        suffix: str,
        key: str | None = None,
        overwrite: bool = True,
    ) -> None:
        self.final = final
        self.folder = folder
        self.key = key
        self.overwrite = overwrite
        self.resumed = False
        self.worth_resuming = False
        self._sidecars: dict[str, Path] = {}
        self._scratch: list[Path] = []
        self._resumables: list[Path] = []
        self._lock: LockFile | None = None
        if key is not None:
            self._lock = LockFile(_resume_name(final, key, ".lock"))
            if not self._lock.acquire():
                raise OutputExistsError(
                    f"another run is writing {final} with the same inputs, model and options "
                    f"(it holds {self._lock.path.name}); wait for it to finish or stop it"
                )
            self.path = _resume_name(final, key, ".partial" + suffix)
            remove_entry(Path(str(self.path) + ".aux.xml"))  # only ever a stray
            # Continued only if it is what this module made: a real folder, or a regular
            # file with no other link (a planted link, a FIFO, a file hard-linked to a
            # published output are removed, never written through).
            if reusable(self.path, folder=folder):
                self.resumed = True
                return
        else:
            self.path = _temp_name(final, suffix)
        if folder:
            self.path.mkdir()  # never follows a link; fails if anything is there
        else:
            # Exclusive creation: two writers never share a temporary file.
            os.close(create_file(self.path))

    def resumable(self, ext: str) -> Path:
        """One more name kept with a resumable output (e.g. its block journal).

        Same lifecycle as :attr:`path`: kept when the write is interrupted, removed
        when it completes or fails. Only for outputs staged with a resume key.
        """
        if self.key is None:
            raise ValueError("resumable names need staged(..., resume_key=...)")
        p = _resume_name(self.final, self.key, ext)
        if p not in self._resumables:
            self._resumables.append(p)
        return p

    def sidecar(self, ext: str) -> Path:
        """The staged name of ``<final><ext>`` (e.g. ``.aux.xml``), renamed in after the output."""
        if ext not in self._sidecars:
            self._sidecars[ext] = Path(str(self.path) + ext)
            # Written afresh: whatever is there (a planted link too) goes, never followed.
            remove_entry(self._sidecars[ext])
        return self._sidecars[ext]

    def scratch(self, suffix: str) -> Path:
        """A temporary name beside the output, removed at the end whatever happens."""
        p = _temp_name(self.final, suffix)
        self._scratch.append(p)
        return p

    def _commit(self) -> None:
        chmod_like_new(self.path)
        _replace(self.path, self.final, overwrite=self.overwrite)
        for ext, tmp in self._sidecars.items():
            if is_entry(tmp):
                chmod_like_new(tmp)
                os.replace(tmp, Path(str(self.final) + ext))

    def _cleanup(self, *, failed: bool, interrupted: bool = False) -> None:
        """Remove the temporaries; an interrupted resumable write keeps what a rerun continues."""
        leftovers = [*self._scratch, *(Path(str(s) + ".aux.xml") for s in self._scratch)]
        keep = interrupted and self.key is not None and self.worth_resuming
        if failed:
            leftovers += [Path(str(self.path) + ".aux.xml"), *self._sidecars.values()]
            if not keep:
                leftovers.append(self.path)
        if not keep:
            leftovers += self._resumables
        for p in leftovers:
            if output_exists(p):
                remove_entry(p)
        if self._lock is not None:
            self._lock.release(remove=not keep)


@contextmanager
def staged(
    path: str | os.PathLike[str],
    *,
    folder: bool = False,
    suffix: str = "",
    validate: Callable[[Path], None] | None = None,
    resume_key: str | None = None,
    overwrite: bool = True,
) -> Iterator[Staged]:
    """Write an output under a temporary name, then rename it (and its sidecars) into place.

    Parameters
    ----------
    path
        The final file or folder; its parent folder must exist.
    folder
        Stage a folder (a Zarr store) instead of a file.
    suffix
        Suffix of the temporary name, for writers that choose a format by it
        (``.tif``, ``.nc``, ``.zarr``).
    validate
        Called on the finished temporary output before the rename; raising
        aborts the write.
    resume_key
        Make the output resumable (see the module docstring): its temporary name
        comes from this key (:func:`resume_key`), ``.resumed`` says whether an
        interrupted run left it, and an interruption keeps it for the rerun.
    overwrite
        Replace an output that exists when this one is renamed into place. ``False``:
        the rename refuses it atomically (no-replace link or rename), so that of two
        runs writing one output the second to finish fails instead of silently
        replacing the first's. Callers that refused an existing output up front
        (:func:`check_output`) pass the same ``overwrite`` here.

    Yields
    ------
    Staged
        ``.path`` to write to, ``.sidecar(ext)`` and ``.scratch(suffix)`` for more
        names, ``.resumable(ext)`` for names kept with a resumable output.

    Raises
    ------
    OutputExistsError
        A live run holds the resumable output of the same key; without
        ``overwrite``, ``path`` appeared (written by another run) before the rename.

    Examples
    --------
    >>> with staged(Path("map.tif"), suffix=".tif") as st:  # doctest: +SKIP
    ...     write_tiff(st.path)
    ...     write_pam(st.sidecar(".aux.xml"))
    """
    remove_stale_temporaries(path)
    # A write that does not continue them supersedes other runs' resumable temporaries.
    remove_other_resume_state(path, keep=resume_key)
    st = Staged(Path(path), folder=folder, suffix=suffix, key=resume_key, overwrite=overwrite)
    try:
        yield st
        if validate is not None:
            validate(st.path)
        st._commit()
    except BaseException as exc:
        # An interruption (Ctrl-C, SIGTERM), or a cluster that went away under the write,
        # keeps what a rerun continues; any other error removes everything.
        lost = isinstance(exc, ClusterError)
        st._cleanup(failed=True, interrupted=lost or not isinstance(exc, Exception))
        full = _as_full_disk(exc, st.final)
        if full is not None:
            raise full from exc
        raise
    st._cleanup(failed=False)


@contextmanager
def staging_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A private temporary folder beside ``path``, removed at the end whatever happens.

    For outputs made of several files named after the output (a Shapefile and its
    sidecars, a GeoPackage whose layer takes the file's name): write them inside,
    under their final names, then move them into place.
    """
    remove_stale_temporaries(path)
    tmp = _temp_name(Path(path), "")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        remove_entry(tmp)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], Any], *, overwrite: bool = True
) -> Path:
    """Call ``write(binary file)`` on a staged file, then rename it to ``path``.

    Parameters
    ----------
    path
        Final file; its folder must exist.
    write
        Writes the content to the open binary file it is given.
    overwrite
        Replace an existing ``path`` (see :func:`staged`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with staged(path, overwrite=overwrite) as st, open(st.path, "wb") as f:
        write(f)
    return Path(path)


def _replace(tmp: Path, out: Path, *, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out`` (:func:`georaster_cnn.io._fs.publish`).

    With ``overwrite`` an existing folder is first renamed away, then deleted (put
    back if the new one cannot be renamed in); without it an existing ``out`` is
    refused atomically.

    Raises
    ------
    OutputExistsError
        ``out`` exists and ``overwrite`` is false: another run wrote it meanwhile.
    """
    try:
        publish(tmp, out, overwrite=overwrite, aside=_temp_name(out, ".old"))
    except FileExistsError as exc:
        if overwrite:
            raise
        raise OutputExistsError(
            f"{out} exists (written by another run meanwhile); pass overwrite=True to replace it"
        ) from exc
