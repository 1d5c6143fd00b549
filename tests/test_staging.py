"""Atomic writes: content appears only under the final name, with ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from georaster_cnn._atomic import atomic_write, chmod_like_new


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_written_file_gets_umask_mode_not_0600(tmp_path: Path) -> None:
    out = atomic_write(tmp_path / "a.bin", lambda f: f.write(b"xyz"))
    assert out.read_bytes() == b"xyz"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def boom(f: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_chmod_like_new_for_folders(tmp_path: Path) -> None:
    d = tmp_path / "store"
    d.mkdir(mode=0o700)
    chmod_like_new(d)
    assert d.stat().st_mode & 0o777 == 0o777 & ~_umask()
