"""Staged outputs: content appears only under the final name, whole, with ordinary permissions."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from georaster_cnn.io.staging import TEMP_TAG, atomic_write, staged


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
    assert f".{TEMP_TAG}-" in name and f"-{os.getpid()}-" in name
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


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "map.tif"
    # A process that made temporaries for map.tif and died without cleaning up.
    code = (
        "import sys; from pathlib import Path; from georaster_cnn.io.staging import staged;"
        "cm = staged(Path(sys.argv[1]), suffix='.tif'); st = cm.__enter__();"
        "st.path.write_bytes(b'partial'); st.sidecar('.aux.xml').write_text('x');"
        "st.scratch('.staging.tif').write_bytes(b'x'); import os; os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=False)
    strays = sorted(p.name for p in tmp_path.iterdir())
    assert len(strays) == 3 and all(f".{TEMP_TAG}-" in n for n in strays)
    # A live process's temporaries, and another output's, are left alone.
    alive = tmp_path / f".map.tif.{TEMP_TAG}-otherhost-1-00.partial.tif"
    alive.write_bytes(b"x")
    other = tmp_path / f".other.tif.{TEMP_TAG}-{os.getpid()}-00.partial.tif"
    other.write_bytes(b"x")
    with staged(out, suffix=".tif") as st:
        st.path.write_bytes(b"raster")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "map.tif"])


def test_failed_write_on_a_full_disk_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import shutil

    import georaster_cnn.io.staging as staging

    monkeypatch.setattr(
        staging.shutil,
        "disk_usage",
        lambda p: shutil._ntuple_diskusage(100, 100, 0),  # type: ignore[attr-defined]
    )
    with (
        pytest.raises(OSError, match="no space left on device while writing") as info,
        staged(tmp_path / "map.nc", suffix=".nc"),
    ):
        raise RuntimeError("NetCDF: HDF error")
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    # Ctrl-C is never reported as a full disk
    with pytest.raises(KeyboardInterrupt), staged(tmp_path / "map.nc", suffix=".nc"):
        raise KeyboardInterrupt


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: never left mounted


@pytest.mark.parametrize("name", ["map.tif", "map.nc", "map.zarr"])
def test_a_real_full_disk(
    tiny_disk: Path, name: str, make_raster: Callable[..., Path], make_model: Callable[..., Any]
) -> None:
    from georaster_cnn import open_raster, predict, write_prediction

    src = make_raster(tiny_disk.parent, "s.tif", height=512, width=512, count=1, seed=3)
    pred = predict(open_raster(src), make_model(1, [f"c{i}" for i in range(8)]), stride=1)
    with pytest.raises(OSError, match=f"no space left on device while writing .*{name}"):
        write_prediction(pred, tiny_disk / name, probabilities=True)
    assert list(tiny_disk.iterdir()) == []  # nothing half-written, nothing stray
