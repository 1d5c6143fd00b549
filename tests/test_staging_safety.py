"""Staging that neither replaces another run's output nor writes through a planted link.

* Two runs writing one output: without ``overwrite`` the second to finish fails
  (``OutputExistsError``) and the first's output stays; with it, the last replaces.
* Links planted at the predictable resume names (``.NAME.gcnn-resume-<key>...``):
  a write never writes, truncates or removes through them; the file they point at
  stays as it was (content and modification time) and the output is correct.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_resume import _read, _Stop

import georaster_cnn.io._fs as fs
from georaster_cnn import GeoModel, OutputExistsError, open_raster, predict, write_prediction
from georaster_cnn.io.staging import (
    RESUME_TAG,
    TEMP_TAG,
    remove_other_resume_state,
    remove_stale_temporaries,
    staged,
)

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and renames")


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- two runs, one output


@pytest.mark.parametrize("folder", [False, True])
def test_the_second_run_to_finish_does_not_replace_the_first(tmp_path: Path, folder: bool) -> None:
    out = tmp_path / ("store.zarr" if folder else "map.tif")

    def fill(st_path: Path, text: str) -> None:
        if folder:
            (st_path / "zarr.json").write_text(text)
        else:
            st_path.write_text(text)

    with (
        pytest.raises(OutputExistsError, match=r"written by another run meanwhile.*overwrite=True"),
        staged(out, folder=folder, suffix=out.suffix, overwrite=False) as first,
    ):
        fill(first.path, "first")
        with staged(out, folder=folder, suffix=out.suffix, overwrite=False) as second:
            fill(second.path, "second")
        # the second finished first: its output is in place
    written = out / "zarr.json" if folder else out
    assert written.read_text() == "second"
    assert _names(tmp_path) == [out.name]  # the refused run left nothing


@pytest.mark.parametrize("folder", [False, True])
def test_with_overwrite_the_last_to_finish_replaces(tmp_path: Path, folder: bool) -> None:
    out = tmp_path / ("store.zarr" if folder else "map.tif")
    with staged(out, folder=folder, overwrite=True) as first:
        with staged(out, folder=folder, overwrite=True) as second:
            (second.path / "x" if folder else second.path).write_text("second")
        (first.path / "x" if folder else first.path).write_text("first")
    assert (out / "x" if folder else out).read_text() == "first"
    assert _names(tmp_path) == [out.name]


@pytest.mark.parametrize("folder", [False, True])
def test_no_replace_without_link_or_renameat2(
    tmp_path: Path, folder: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallbacks (no hard links, no RENAME_NOREPLACE) refuse an existing output too."""

    def no_link(*args: object, **kw: object) -> None:
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(fs.os, "link", no_link)
    monkeypatch.setattr(fs, "_renameat2", lambda: None)
    out = tmp_path / "out"
    with staged(out, folder=folder, overwrite=False) as st:
        (st.path / "x" if folder else st.path).write_text("new")
    assert (out / "x" if folder else out).read_text() == "new"
    with (
        pytest.raises(OutputExistsError, match="written by another run"),
        staged(out, folder=folder, overwrite=False) as st,
    ):
        (st.path / "x" if folder else st.path).write_text("newer")
    assert (out / "x" if folder else out).read_text() == "new"
    assert _names(tmp_path) == ["out"]


@pytest.fixture
def scene(tmp_path: Path, make_raster: MakeRaster) -> Path:
    return make_raster(tmp_path / "in", "scene.tif", height=96, width=80, count=1, seed=3)


@pytest.fixture
def model(make_model: MakeModel) -> GeoModel:
    return make_model(1, ("a", "b", "c"), arch="cnn", patch_size=16)


def _pred(scene: Path, model: GeoModel, stride: int = 4) -> object:
    return predict(open_raster(scene), model, stride=stride, block_cells=4)


@pytest.mark.parametrize("name", ["map.tif", "map.zarr", "map.nc"])
def test_two_writes_with_different_options_one_path(
    tmp_path: Path, scene: Path, model: GeoModel, name: str
) -> None:
    """Run A is overtaken by run B (other options): A fails, B's map stays, nothing stray."""
    out = tmp_path / "out" / name

    def overtake(done: int, total: int) -> None:
        if done == 3:  # while A is writing, B writes the whole map
            write_prediction(_pred(scene, model, stride=8), out, probabilities=True)

    with pytest.raises(OutputExistsError, match="written by another run meanwhile"):
        write_prediction(_pred(scene, model), out, scheduler="sync", progress=overtake)
    ref = write_prediction(
        _pred(scene, model, stride=8), tmp_path / "ref" / name, probabilities=True, resume=False
    )
    np.testing.assert_array_equal(_read(out), _read(ref))
    expected = [name, f"{name}.aux.xml"] if name.endswith(".tif") else [name]
    assert _names(out.parent) == expected


# --------------------------------------------------------------------------- planted links


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the output folder that a planted link points at."""
    path = tmp_path / "outside" / "precious.bin"
    path.parent.mkdir()
    path.write_bytes(b"do not touch " * 100)
    os.utime(path, ns=(10**18, 10**18))
    return path


def _untouched(victim: Path) -> None:
    assert victim.read_bytes() == b"do not touch " * 100
    assert victim.stat().st_mtime_ns == 10**18


def _plant(link: Path, target: Path) -> None:
    if os.path.lexists(link):
        fs.remove_entry(link)
    link.symlink_to(target)


_RESUME_NAMES = [
    ".partial{suffix}",
    ".partial{suffix}.aux.xml",
    ".blocks",
    ".manifest.json",
    ".manifest.json.tmp",
    ".lock",
]


@pytest.mark.parametrize("name", ["map.tif", "map.nc"])
@pytest.mark.parametrize("planted", [*_RESUME_NAMES, "all"])
def test_links_planted_at_resume_names_are_never_followed(
    tmp_path: Path, scene: Path, model: GeoModel, victim: Path, name: str, planted: str
) -> None:
    out = tmp_path / "out" / name
    with pytest.raises(KeyboardInterrupt):
        write_prediction(_pred(scene, model), out, scheduler="sync", progress=_Stop(after=5))
    (partial,) = [n for n in _names(out.parent) if ".partial" in n]
    base = out.parent / partial[: partial.index(".partial")]  # .NAME.gcnn-resume-<key>
    for ext in _RESUME_NAMES if planted == "all" else [planted]:
        _plant(Path(str(base) + ext.format(suffix=out.suffix)), victim)

    again = _Stop()
    write_prediction(_pred(scene, model), out, progress=again)
    _untouched(victim)
    ref = write_prediction(_pred(scene, model), tmp_path / "ref" / name, resume=False)
    np.testing.assert_array_equal(_read(out), _read(ref))
    expected = [name, f"{name}.aux.xml"] if name.endswith(".tif") else [name]
    assert _names(out.parent) == expected  # the links went, not their target


@pytest.mark.parametrize("planted", [".partial.zarr", ".blocks", ".manifest.json"])
def test_links_planted_in_a_zarr_write_are_never_followed(
    tmp_path: Path, scene: Path, model: GeoModel, victim: Path, planted: str
) -> None:
    """A link to a folder at the resumable store's name: the folder's content stays."""
    out = tmp_path / "out" / "map.zarr"
    with pytest.raises(KeyboardInterrupt):
        write_prediction(_pred(scene, model), out, scheduler="sync", progress=_Stop(after=5))
    (partial,) = [n for n in _names(out.parent) if ".partial" in n]
    base = out.parent / partial[: partial.index(".partial")]
    _plant(Path(str(base) + planted), victim.parent if planted == ".partial.zarr" else victim)

    write_prediction(_pred(scene, model), out)
    _untouched(victim)
    assert _names(victim.parent) == [victim.name]
    ref = write_prediction(_pred(scene, model), tmp_path / "ref" / "map.zarr", resume=False)
    np.testing.assert_array_equal(_read(out), _read(ref))
    assert _names(out.parent) == ["map.zarr"]


def test_dangling_links_create_nothing_outside(tmp_path: Path, victim: Path) -> None:
    """O_CREAT through a dangling link would create its target: never done."""
    out = tmp_path / "map.tif"
    key = "c" * 20
    target = victim.parent / "created.bin"
    for ext in (".partial.tif", ".blocks", ".lock"):
        _plant(tmp_path / f".map.tif.{RESUME_TAG}-{key}{ext}", target)
    with staged(out, suffix=".tif", resume_key=key) as st:
        assert not st.resumed and not st.path.is_symlink()
        st.path.write_bytes(b"map")
    assert not target.exists()
    assert out.read_bytes() == b"map"


def test_a_resumable_file_with_another_link_is_not_reused(tmp_path: Path) -> None:
    """A partial file hard-linked elsewhere (e.g. to a published output) is never written in."""
    out = tmp_path / "map.tif"
    key = "d" * 20
    partial = tmp_path / f".map.tif.{RESUME_TAG}-{key}.partial.tif"
    partial.write_bytes(b"published")
    os.link(partial, tmp_path / "published.tif")
    with staged(out, suffix=".tif", resume_key=key) as st:
        assert not st.resumed
        st.path.write_bytes(b"new")
    assert (tmp_path / "published.tif").read_bytes() == b"published"
    assert out.read_bytes() == b"new"


def test_removal_of_temporaries_unlinks_links_to_folders(tmp_path: Path, victim: Path) -> None:
    """Cleanup (failure, other keys, dead processes) removes a link, never its folder's content."""
    out = tmp_path / "map.tif"
    other_key = tmp_path / f".map.tif.{RESUME_TAG}-{'e' * 20}.partial.zarr"
    dead = tmp_path / f".map.tif.{TEMP_TAG}-{_host()}-999999999-00.partial.tif"
    _plant(other_key, victim.parent)
    _plant(dead, victim.parent)
    assert remove_stale_temporaries(out) == [dead]
    assert remove_other_resume_state(out) == [other_key]
    with pytest.raises(RuntimeError), staged(out, resume_key="f" * 20) as st:
        _plant(st.resumable(".blocks"), victim.parent)
        raise RuntimeError("failed")
    _untouched(victim)
    assert _names(victim.parent) == [victim.name]
    assert _names(tmp_path) == ["outside"]


def _host() -> str:
    from georaster_cnn.io.staging import _host as host

    return host()


def test_a_vector_file_written_meanwhile_by_another_run_is_not_replaced(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import Point

    import georaster_cnn as gc
    from georaster_cnn import OutputExistsError

    gdf = gpd.GeoDataFrame({"class": ["a"]}, geometry=[Point(0, 0)], crs="EPSG:4326")
    out = tmp_path / "v.gpkg"
    real = gpd.GeoDataFrame.to_file

    def racing(self: gpd.GeoDataFrame, path: object, *args: object, **kwargs: object) -> None:
        out.write_text("the other run's output")  # appears while this one writes
        real(self, path, *args, **kwargs)

    gpd.GeoDataFrame.to_file = racing  # type: ignore[method-assign]
    try:
        with pytest.raises(OutputExistsError, match="another run meanwhile"):
            gc.write_vectors(gdf, out)
    finally:
        gpd.GeoDataFrame.to_file = real  # type: ignore[method-assign]
    assert out.read_text() == "the other run's output"
    assert [p.name for p in tmp_path.iterdir()] == ["v.gpkg"]  # nothing of ours left
