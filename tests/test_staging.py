"""Staged outputs: content appears only under the final name, whole, with ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from georaster_cnn._staging import TEMP_TAG, atomic_write, staged


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


def test_staged_folder_gets_umask_mode_and_replaces_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "store.zarr"
    out.mkdir()
    (out / "old").write_text("old")
    with staged(out, folder=True, suffix=".zarr") as st:
        assert st.path.is_dir() and st.path.parent == tmp_path
        (st.path / "new").write_text("new")
        assert (out / "old").exists()  # the old store stays whole until the rename
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_temporary_names_are_hidden_tagged_and_carry_the_pid(tmp_path: Path) -> None:
    with staged(tmp_path / "map.tif", suffix=".tif") as st:
        name = st.path.name
        scratch = st.scratch(".staging.tif")
        scratch.write_bytes(b"x")
    assert name.startswith(".map.tif.") and name.endswith(".partial.tif")
    assert f"{TEMP_TAG}-{os.getpid()}-" in name
    assert not scratch.exists()  # scratch files go whatever happens


def test_sidecar_is_renamed_after_its_raster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "map.tif"
    order: list[str] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        order.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    with staged(out, suffix=".tif") as st:
        st.path.write_bytes(b"raster")
        st.sidecar(".aux.xml").write_text("<PAMDataset/>")
    assert order == ["map.tif", "map.tif.aux.xml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map.tif.aux.xml"]


def test_failure_removes_raster_sidecar_and_scratch(tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    with pytest.raises(RuntimeError, match="boom"), staged(out, suffix=".tif") as st:
        st.path.write_bytes(b"raster")
        st.sidecar(".aux.xml").write_text("<PAMDataset/>")
        st.scratch(".staging.tif").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_validation_failure_keeps_the_old_output(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")

    def refuse(path: Path) -> None:
        raise ValueError(f"{path.name} is not valid")

    with pytest.raises(ValueError, match="not valid"), staged(out, validate=refuse) as st:
        st.path.write_bytes(b"new")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
