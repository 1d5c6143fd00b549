"""Resume never reuses blocks of an input that changed in a way its path, size and mtime miss.

Each test interrupts a write (a progress callback that raises, as in
``test_resume.py``), changes the input so that its path, size and modification time
stay the same, and reruns: the rerun must start afresh and give the map of the new
input. Keyed on path, size and mtime alone, each of them resumed from stale blocks.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from geo import NORTH_UP
from test_resume import _read, _Stop

import georaster_cnn.io._identity as identity
from georaster_cnn import GeoModel, open_raster, predict, write_prediction
from georaster_cnn.io._identity import input_identity

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file times")

H, W = 96, 80  # 6 x 5 blocks of 4 x 4 cells at stride 4
BLOCKS = 30


@pytest.fixture
def model(make_model: MakeModel) -> GeoModel:
    return make_model(1, ("a", "b", "c"), arch="cnn", patch_size=16)


def _write(source: Path, model: GeoModel, out: Path, **kw: object) -> Path:
    pred = predict(open_raster(source), model, stride=4, block_cells=4)
    return write_prediction(pred, out, **kw)  # type: ignore[arg-type]


def _interrupt_then_rerun(
    source: Path, model: GeoModel, out: Path, change: Callable[[], None]
) -> _Stop:
    """Interrupt a write of ``source`` after 5 blocks, ``change()`` the input, write again."""
    with pytest.raises(KeyboardInterrupt):
        _write(source, model, out, scheduler="sync", progress=_Stop(after=5))
    assert [n for n in os.listdir(out.parent) if ".gcnn-resume-" in n]
    change()
    again = _Stop()
    _write(source, model, out, progress=again)
    return again


def _same_times(path: Path) -> Callable[[], None]:
    """A check that ``path`` kept its size, and a restore of its times (``touch -r``)."""
    st = path.stat()

    def restore() -> None:
        assert path.stat().st_size == st.st_size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    return restore


def test_same_size_rewrite_with_mtime_restored_is_a_new_input(
    tmp_path: Path, make_raster: MakeRaster, model: GeoModel
) -> None:
    scene = make_raster(tmp_path / "in", "scene.tif", height=H, width=W, seed=1)
    new = make_raster(tmp_path / "new", "scene.tif", height=H, width=W, seed=2)
    assert new.stat().st_size == scene.stat().st_size  # uncompressed: same layout, same size
    restore = _same_times(scene)
    inode = scene.stat().st_ino

    def rewrite_in_place() -> None:
        with open(scene, "r+b") as f:  # same inode, same size
            f.write(new.read_bytes())
        restore()

    again = _interrupt_then_rerun(scene, model, tmp_path / "out" / "map.tif", rewrite_in_place)
    assert scene.stat().st_ino == inode
    assert again.resumed_from == 0
    ref = _write(new, model, tmp_path / "ref.tif", resume=False)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "map.tif"), _read(ref))
    assert sorted(os.listdir(tmp_path / "out")) == ["map.tif", "map.tif.aux.xml"]


def _vrt(source_name: str, *, relative: bool) -> str:
    return f"""<VRTDataset rasterXSize="{W}" rasterYSize="{H}">
  <SRS>EPSG:32633</SRS>
  <GeoTransform>{", ".join(str(v) for v in NORTH_UP.to_gdal())}</GeoTransform>
  <VRTRasterBand dataType="Float32" band="1">
    <SimpleSource><SourceFilename relativeToVRT="{int(relative)}">{source_name}</SourceFilename>
    <SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>
"""


@pytest.mark.parametrize("relative", [True, False])
def test_vrt_whose_source_was_replaced_is_a_new_input(
    tmp_path: Path, make_raster: MakeRaster, model: GeoModel, relative: bool
) -> None:
    folder = tmp_path / "in"
    tile = make_raster(folder, "tile.tif", height=H, width=W, seed=1)
    new = make_raster(tmp_path / "new", "tile.tif", height=H, width=W, seed=2)
    vrt = folder / "mosaic.vrt"
    vrt.write_text(_vrt(tile.name if relative else str(tile), relative=relative))
    vrt_stat = vrt.stat()

    def replace_source() -> None:
        shutil.copy(new, folder / "incoming.tif")
        os.replace(folder / "incoming.tif", tile)  # the VRT itself is untouched

    again = _interrupt_then_rerun(vrt, model, tmp_path / "out" / "map.tif", replace_source)
    assert vrt.stat().st_mtime_ns == vrt_stat.st_mtime_ns
    assert again.resumed_from == 0
    ref = _write(new, model, tmp_path / "ref.tif", resume=False)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "map.tif"), _read(ref))


def _zarr_input(path: Path, values: np.ndarray) -> Path:
    t = NORTH_UP
    x = t.c + t.a * (np.arange(W) + 0.5)
    y = t.f + t.e * (np.arange(H) + 0.5)
    ds = xr.Dataset({"b1": (("y", "x"), values)}, coords={"y": y, "x": x})
    ds.rio.write_crs("EPSG:32633").to_zarr(
        path, zarr_format=3, consolidated=False, encoding={"b1": {"chunks": (32, 32)}}
    )
    return path


def test_zarr_store_edited_in_place_is_a_new_input(tmp_path: Path, model: GeoModel) -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(0, 1, (H, W)).astype("float32")
    store = _zarr_input(tmp_path / "in" / "scene.zarr", values)
    edited = values.copy()
    edited[:64, :64] = -values[:64, :64]
    folder_mtime = store.stat().st_mtime_ns

    def edit_chunks() -> None:
        import zarr

        zarr.open_array(store, path="b1", mode="r+")[:64, :64] = edited[:64, :64]

    again = _interrupt_then_rerun(store, model, tmp_path / "out" / "map.tif", edit_chunks)
    assert store.stat().st_mtime_ns == folder_mtime  # the store's own folder did not change
    assert again.resumed_from == 0
    ref_store = _zarr_input(tmp_path / "ref" / "scene.zarr", edited)
    ref = _write(ref_store, model, tmp_path / "ref.tif", resume=False)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "map.tif"), _read(ref))


@pytest.mark.parametrize("kind", ["vrt", "zarr"])
def test_an_unchanged_input_still_resumes(
    tmp_path: Path, make_raster: MakeRaster, model: GeoModel, kind: str
) -> None:
    """The finer identity does not lose resumption: reading changes none of it."""
    folder = tmp_path / "in"
    if kind == "vrt":
        make_raster(folder, "tile.tif", height=H, width=W, seed=1)
        source = folder / "mosaic.vrt"
        source.write_text(_vrt("tile.tif", relative=True))
    else:
        values = np.random.default_rng(5).normal(0, 1, (H, W)).astype("float32")
        source = _zarr_input(folder / "scene.zarr", values)
    again = _interrupt_then_rerun(source, model, tmp_path / "out" / "map.tif", lambda: None)
    assert again.resumed_from == 5
    assert again.calls[-1] == (BLOCKS, BLOCKS)


# --------------------------------------------------------------------------- the identity


def test_identity_of_files_folders_and_vrt_sources(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"12345")
    (entry,) = input_identity(str(a))
    st = a.stat()
    assert entry == {
        "path": str(a.resolve()),
        "size": 5,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }
    store = tmp_path / "s.zarr"
    (store / "v" / "c").mkdir(parents=True)
    (store / "v" / "c" / "0").write_bytes(b"xy")
    (tree,) = input_identity(str(store))
    assert tree["tree"]["files"] == 1 and tree["tree"]["bytes"] == 2
    # several inputs; a glob pattern; a name that is not a file
    both = input_identity(f"{a};{tmp_path / 'missing.nc'}")
    assert both[0]["path"] == str(a.resolve()) and both[1] == {"path": str(tmp_path / "missing.nc")}
    (pattern,) = input_identity(str(tmp_path / "*.bin"))
    assert [f["path"] for f in pattern["files"]] == [str(a.resolve())]
    # a nested VRT names its sources in turn, relative to the VRT that holds them
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.vrt").write_text(_vrt("../a.bin", relative=True))
    outer = tmp_path / "outer.vrt"
    outer.write_text(_vrt(str(tmp_path / "sub" / "inner.vrt"), relative=False))
    (top,) = input_identity(str(outer))
    (inner,) = top["sources"]
    assert inner["path"] == str((tmp_path / "sub" / "inner.vrt").resolve())
    assert inner["sources"][0]["path"] == str(a.resolve())


class _Files:
    """A loopback HTTP server of a few files, answering HEAD and GET with ETag/Last-Modified."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def _head(self) -> bytes | None:
                if self.path not in files:
                    self.send_error(404)
                    return None
                body, etag, modified = files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", modified)
                self.end_headers()
                return body

            def do_HEAD(self) -> None:
                self._head()

            def do_GET(self) -> None:
                body = self._head()
                if body is not None:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def http_files() -> Iterator[_Files]:
    files = _Files()
    try:
        yield files
    finally:
        files.close()


def test_remote_file_changed_at_the_same_url_gets_another_identity(http_files: _Files) -> None:
    http_files.files["/x.tif"] = (b"a" * 100, '"v1"', "Mon, 01 Jan 2024 00:00:00 GMT")
    url = f"{http_files.url}/x.tif"
    (first,) = input_identity(f"/vsicurl/{url}")
    assert first == {
        "path": f"/vsicurl/{url}",
        "content-length": "100",
        "etag": '"v1"',
        "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT",
    }
    assert input_identity(url) == [{**first, "path": url}]  # a bare URL: through /vsicurl/
    # same size, same date, new content: the ETag says so
    http_files.files["/x.tif"] = (b"b" * 100, '"v2"', "Mon, 01 Jan 2024 00:00:00 GMT")
    (second,) = input_identity(f"/vsicurl/{url}")
    assert second["etag"] == '"v2"' and second != first


def test_remote_file_without_identifying_headers_is_keyed_on_its_location(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(identity, "_gdal_headers", lambda name: {"server": "x"})
    url = "/vsicurl/http://127.0.0.1:9/x.tif"
    assert input_identity(url) == [{"path": url}]
    assert input_identity("s3://bucket/x.tif") == [{"path": "s3://bucket/x.tif"}]
