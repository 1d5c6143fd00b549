"""Inputs opened on purpose: the suffix's driver, checked VRTs, no network, sizes and types first."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from geo import NORTH_UP

from georaster_cnn import (
    DataRangeWarning,
    InputError,
    ReadError,
    check_inputs,
    inspect_raster,
    open_raster,
)
from georaster_cnn.io._gdal_open import check_vrt
from georaster_cnn.io.formats import GDAL_DRIVERS, INPUT_SUFFIXES
from georaster_cnn.options import DEFAULT_MAX_PIXELS

MakeRaster = Callable[..., Path]

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO standing for a file that must never be opened: opening it to read blocks.

    After the test, nobody may hold it open for reading (opening it to write without
    blocking then fails with ENXIO).
    """
    path = tmp_path / "never_read.bin"
    os.mkfifo(path)
    yield path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        assert exc.errno == errno.ENXIO  # no reader: nothing opened it
    else:  # a reader is blocked on it: release it, then fail
        os.close(fd)
        pytest.fail(f"{path} was opened for reading")


def _call(fn: Callable[[], Any], path: Path, timeout: float = 20.0) -> BaseException | None:
    """Run ``fn`` in a thread; a call still blocked (on the FIFO at ``path``) fails the test."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # unblock the reader
        os.close(fd)
        t.join(5)
        pytest.fail(f"the call blocked opening {path}: it followed a VRT source")
    return outcome[0]


def _raw_vrt(source: Path, *, relative: bool = False) -> str:
    name = source.name if relative else str(source)
    return f"""<VRTDataset rasterXSize="16" rasterYSize="16">
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativeToVRT="{int(relative)}">{name}</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>16</LineOffset>
  </VRTRasterBand>
</VRTDataset>
"""


def _source_vrt(*sources: str, width: int = 20, height: int = 10, relative: bool = False) -> str:
    """A VRT of ``width`` x ``height`` Float32 placing each source side by side (10 columns)."""
    items = "".join(
        f"""<SimpleSource><SourceFilename relativeToVRT="{int(relative)}">{s}</SourceFilename>
        <SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="10" ySize="{height}"/>
        <DstRect xOff="{10 * i}" yOff="0" xSize="10" ySize="{height}"/></SimpleSource>"""
        for i, s in enumerate(sources)
    )
    return f"""<VRTDataset rasterXSize="{width}" rasterYSize="{height}">
  <SRS>EPSG:32633</SRS>
  <GeoTransform>500000, 30, 0, 4600000, 0, -30</GeoTransform>
  <VRTRasterBand dataType="Float32" band="1">{items}</VRTRasterBand>
</VRTDataset>
"""


def _tile(tmp_path: Path, name: str, values: np.ndarray, x0: float = 500000.0) -> Path:
    path = tmp_path / name
    profile = {
        "driver": "GTiff", "height": values.shape[0], "width": values.shape[1], "count": 1,
        "dtype": "float32", "crs": "EPSG:32633", "transform": Affine(30, 0, x0, 0, -30, 4600000),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values[None])
    return path


# --------------------------------------------------------------------------- the suffix's driver


def test_suffix_drivers_are_in_the_format_registry() -> None:
    for suffix, drivers in GDAL_DRIVERS.items():
        assert INPUT_SUFFIXES[suffix].drivers == drivers
        assert INPUT_SUFFIXES[suffix].family == "gdal"
    assert INPUT_SUFFIXES[".tif"].drivers == ("GTiff",)
    assert INPUT_SUFFIXES[".vrt"].drivers == ("VRT",)


def test_vrt_disguised_as_tif_never_reads_its_raw_source(tmp_path: Path, fifo: Path) -> None:
    fake = tmp_path / "scene.tif"
    fake.write_text(_raw_vrt(fifo))
    exc = _call(lambda: open_raster(fake), fifo)
    assert isinstance(exc, ReadError)
    assert str(exc) == (f"{fake}: not a GeoTIFF (GDAL sees a VRT); rename it .vrt if you mean it")


def test_chip_disguised_as_tif_is_refused(tmp_path: Path, fifo: Path) -> None:
    from georaster_cnn import load_chips

    for cls in ("a", "b"):
        (tmp_path / "chips" / cls).mkdir(parents=True)
        np.save(tmp_path / "chips" / cls / "0.npy", np.zeros((1, 8, 8), dtype="float32"))
    (tmp_path / "chips" / "a" / "1.tif").write_text(_raw_vrt(fifo))
    exc = _call(lambda: load_chips(tmp_path / "chips"), fifo)
    assert isinstance(exc, ReadError) and "not a GeoTIFF (GDAL sees a VRT)" in str(exc)


def test_vrt_disguised_as_tif_never_reads_its_simple_source(tmp_path: Path, fifo: Path) -> None:
    fake = tmp_path / "scene.tiff"
    fake.write_text(_source_vrt(str(fifo), width=10))
    exc = _call(lambda: open_raster(fake), fifo)
    assert isinstance(exc, ReadError) and "GDAL sees a VRT" in str(exc)


def test_vrt_under_another_suffix_is_refused(tmp_path: Path, fifo: Path) -> None:
    fake = tmp_path / "scene.dat"
    fake.write_text(_raw_vrt(fifo))
    exc = _call(lambda: open_raster(fake), fifo)
    assert isinstance(exc, ReadError)
    assert "GDAL sees a VRT" in str(exc) and "named .vrt" in str(exc)


def test_other_format_under_tif_names_what_it_is(tmp_path: Path) -> None:
    png = tmp_path / "image.png"
    profile = {"driver": "PNG", "width": 8, "height": 6, "count": 1, "dtype": "uint8"}
    with rasterio.open(png, "w", **profile, crs="EPSG:32633", transform=NORTH_UP) as dst:
        dst.write(np.ones((1, 6, 8), dtype="uint8"))
    assert open_raster(png).shape == (1, 6, 8)  # named as what it is: any safe driver
    disguised = png.rename(tmp_path / "image.tif")
    with pytest.raises(ReadError, match=r"not a GeoTIFF \(GDAL sees a PNG file\); rename it"):
        open_raster(disguised)


# --------------------------------------------------------------------------- VRTs given explicitly


def test_vrt_over_local_geotiffs_equals_the_geotiffs(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    left, right = (rng.standard_normal((10, 10)).astype("float32") for _ in range(2))
    _tile(tmp_path, "left.tif", left)
    _tile(tmp_path, "right.tif", right, x0=500300.0)
    whole = _tile(tmp_path, "whole.tif", np.concatenate([left, right], axis=1))
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(_source_vrt("left.tif", "right.tif", relative=True))
    got, ref = open_raster(vrt), open_raster(whole)
    assert got.rio.crs == ref.rio.crs and got.rio.transform() == ref.rio.transform()
    np.testing.assert_array_equal(got.values, ref.values)


def test_vrt_with_raw_band_is_refused_even_with_allow_remote(tmp_path: Path, fifo: Path) -> None:
    vrt = tmp_path / "raw.vrt"
    vrt.write_text(_raw_vrt(fifo))
    for allow in (False, True):
        exc = _call(lambda allow=allow: open_raster(vrt, allow_remote=allow), fifo)
        assert isinstance(exc, InputError)
        assert "VRTRawRasterBand" in str(exc) and "refused" in str(exc)


def test_raw_band_in_a_nested_vrt_is_refused(tmp_path: Path, fifo: Path) -> None:
    """Nested as .vrt, and as a VRT disguised as .tif (GDAL opens sources with any driver)."""
    for inner_name in ("inner.vrt", "inner.tif"):
        (tmp_path / inner_name).write_text(_raw_vrt(fifo))
        outer = tmp_path / "outer.vrt"
        outer.write_text(_source_vrt(inner_name, width=10, relative=True))
        exc = _call(lambda outer=outer: open_raster(outer), fifo)
        assert isinstance(exc, InputError), exc
        assert "VRTRawRasterBand" in str(exc) and "nested" in str(exc)


def test_vrt_source_that_is_not_a_regular_file_is_refused(tmp_path: Path, fifo: Path) -> None:
    vrt = tmp_path / "fifo.vrt"
    vrt.write_text(_source_vrt(str(fifo), width=10))
    exc = _call(lambda: open_raster(vrt), fifo)
    assert isinstance(exc, InputError) and "not a regular file" in str(exc)


@pytest.mark.parametrize(
    "source",
    [
        "/vsicurl/https://example.com/scene.tif",
        "/vsis3/bucket/scene.tif",
        "/vsigs/bucket/scene.tif",
        "/vsiaz/container/scene.tif",
        "/vsicurl_streaming/http://example.com/scene.tif",
        "https://example.com/scene.tif",
        "/vsizip//vsicurl/https://example.com/a.zip/scene.tif",
    ],
)
def test_vrt_network_source_is_refused_without_network(tmp_path: Path, source: str) -> None:
    vrt = tmp_path / "remote.vrt"
    vrt.write_text(_source_vrt(source, width=10))
    start = time.perf_counter()
    with pytest.raises(InputError, match="is a network location") as info:
        open_raster(vrt)
    assert "allow_remote=True" in str(info.value) and source in str(info.value)
    assert time.perf_counter() - start < 2.0  # refused from the XML: no connection tried
    check_vrt(vrt, allow_remote=True)  # allowed on request (GDAL would then fetch it)


def test_network_source_in_a_nested_vrt_is_refused(tmp_path: Path) -> None:
    (tmp_path / "inner.vrt").write_text(_source_vrt("/vsicurl/https://example.com/a.tif", width=10))
    outer = tmp_path / "outer.vrt"
    outer.write_text(_source_vrt("inner.vrt", width=10, relative=True))
    with pytest.raises(InputError, match="network location"):
        open_raster(outer)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/vsizip/archive.zip/scene.tif", "virtual file system"),
        ("/vsisparse/pieces.xml", "virtual file system"),
        ("/vsistdin/", "virtual file system"),
        ("vrt://scene.tif?bands=1", "vrt:// connection string"),
        ("&lt;VRTDataset/&gt;", "inline dataset description"),
    ],
)
def test_vrt_sources_outside_plain_files_are_refused(
    tmp_path: Path, source: str, message: str
) -> None:
    vrt = tmp_path / "odd.vrt"
    vrt.write_text(_source_vrt(source, width=10))
    with pytest.raises(InputError, match=message):
        open_raster(vrt, allow_remote=True)


def test_vrt_python_pixel_function_is_refused(tmp_path: Path) -> None:
    vrt = tmp_path / "code.vrt"
    vrt.write_text(
        """<VRTDataset rasterXSize="4" rasterYSize="4">
  <VRTRasterBand dataType="Float32" band="1" subClass="VRTDerivedRasterBand">
    <PixelFunctionType>f</PixelFunctionType>
    <PixelFunctionLanguage>Python</PixelFunctionLanguage>
    <PixelFunctionCode>import os</PixelFunctionCode>
  </VRTRasterBand>
</VRTDataset>"""
    )
    with pytest.raises(InputError, match="Python pixel function"):
        open_raster(vrt)


def test_vrt_with_doctype_is_refused(tmp_path: Path) -> None:
    vrt = tmp_path / "entities.vrt"
    vrt.write_text('<!DOCTYPE x [<!ENTITY a "aaaa">]><VRTDataset rasterXSize="1" rasterYSize="1"/>')
    with pytest.raises(InputError, match="DOCTYPE"):
        open_raster(vrt)


def test_xml_description_as_vrt_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tiles.xml").write_text("<GDAL_WMS><Service name='TMS'/></GDAL_WMS>")
    vrt = tmp_path / "wms.vrt"
    vrt.write_text(_source_vrt("tiles.xml", width=10, relative=True))
    with pytest.raises(InputError, match="XML or JSON dataset description"):
        open_raster(vrt)


def test_network_input_is_refused_unless_allowed() -> None:
    for name in ("/vsicurl/https://example.com/scene.tif", "https://example.com/scene.tif"):
        with pytest.raises(InputError, match=r"network location.*allow_remote=True"):
            open_raster(name)
    with pytest.raises(InputError, match="must be local"):
        open_raster("/vsicurl/https://example.com/scene.nc", allow_remote=True)


# --------------------------------------------------------------------------- not regular files


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_character_device_is_refused_before_reading() -> None:
    with pytest.raises(ReadError, match="/dev/zero: not a regular file"):
        open_raster("/dev/zero")


def test_fifo_input_is_refused_without_blocking(tmp_path: Path, fifo: Path) -> None:
    named = tmp_path / "pipe.tif"
    os.mkfifo(named)
    for name in (fifo, named):
        exc = _call(lambda name=name: open_raster(name), name)
        assert isinstance(exc, ReadError) and "not a regular file" in str(exc)


# --------------------------------------------------------------------------- sizes


def _sparse_tif(path: Path, height: int, width: int, count: int) -> Path:
    """A GeoTIFF declaring ``count x height x width`` pixels, with no tile written (tiny file)."""
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8",
        tiled=True, blockxsize=1024, blockysize=1024, sparse_ok=True, compress="deflate",
        crs="EPSG:32633", transform=NORTH_UP,
    ):  # fmt: skip
        pass
    return path


_MEASURE = """
import json, resource, sys, time
from georaster_cnn import InputError, open_raster
open_raster(sys.argv[2])  # warm up imports and GDAL on a small file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    open_raster(sys.argv[1])
    message = None
except InputError as exc:
    message = str(exc)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
    "message": message,
}))
"""


def test_huge_declared_geotiff_is_refused_fast_with_flat_memory(
    tmp_path: Path, make_raster: MakeRaster
) -> None:
    big = _sparse_tif(tmp_path / "huge.tif", 600_000, 600_000, 3)
    assert big.stat().st_size < 32 * 2**20
    small = make_raster(tmp_path, "small.tif", height=8, width=8)
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(big), str(small)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["message"] is not None, "the raster was accepted"
    assert "600,000 x 600,000 pixels x 3 band(s)" in result["message"]
    assert "1,080,000,000,000" in result["message"] and "max_pixels=" in result["message"]
    assert result["seconds"] < 3.0
    assert result["peak_kib"] < 100 * 1024  # flat: no pixel was read


def test_max_pixels_counts_selected_bands_and_can_be_raised(
    tmp_path: Path, make_raster: MakeRaster
) -> None:
    path = make_raster(tmp_path, "three.tif", height=100, width=100, count=3)
    with pytest.raises(InputError, match=r"100 x 100 pixels x 3 band\(s\) = 30,000"):
        open_raster(path, max_pixels=25_000)
    assert open_raster(path, max_pixels=25_000, bands=[1]).shape == (1, 100, 100)
    assert open_raster(path, max_pixels=30_000).shape == (3, 100, 100)
    assert DEFAULT_MAX_PIXELS == 2**36


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "many"])
def test_bad_max_pixels(tmp_path: Path, make_raster: MakeRaster, bad: object) -> None:
    path = make_raster(tmp_path, "one.tif", height=4, width=4)
    with pytest.raises(InputError, match="max_pixels="):
        open_raster(path, max_pixels=bad)  # type: ignore[arg-type]


def _grid_dataset(h: int, w: int, **variables: Any) -> xr.Dataset:
    coords = {"y": 4_600_000.0 - 30.0 * (np.arange(h) + 0.5), "x": 500_000.0 + 30.0 * np.arange(w)}
    return xr.Dataset({k: (("y", "x"), v) for k, v in variables.items()}, coords=coords)


def test_netcdf_and_zarr_sizes_are_checked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ds = _grid_dataset(20, 30, a=rng.random((20, 30)), b=rng.random((20, 30)))
    nc, store = tmp_path / "two.nc", tmp_path / "two.zarr"
    ds.to_netcdf(nc)
    ds.to_zarr(store, mode="w", zarr_format=3, consolidated=False)
    for path in (nc, store):
        with pytest.raises(InputError, match=r"20 x 30 pixels x 2 band\(s\) = 1,200 .*max_pixels="):
            open_raster(path, max_pixels=1000)
        assert open_raster(path, max_pixels=1000, variables=["a"]).shape == (1, 20, 30)
    years = []
    for year in (2000, 2001):
        one = ds[["a"]].expand_dims(time=[np.datetime64(f"{year}-01-01", "ns")])
        one.to_netcdf(tmp_path / f"a_{year}.nc")
        years.append(tmp_path / f"a_{year}.nc")
    with pytest.raises(InputError, match=r"x 2 band\(s\) = 1,200 .*max_pixels="):
        open_raster(years, stack="time", max_pixels=1000)
    assert open_raster(years, stack="time", max_pixels=1200).shape == (2, 20, 30)


def test_huge_declared_netcdf_is_refused_before_the_graph_is_built(tmp_path: Path) -> None:
    netCDF4 = pytest.importorskip("netCDF4")
    path = tmp_path / "huge.nc"
    n = 400_000
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("y", n)
        ds.createDimension("x", n)
        ds.createVariable("y", "f8", ("y",))[:] = 4_600_000.0 - 30.0 * np.arange(n)
        ds.createVariable("x", "f8", ("x",))[:] = 500_000.0 + 30.0 * np.arange(n)
        ds.createVariable("t", "f4", ("y", "x"), zlib=True, chunksizes=(1024, 1024))
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"400,000 x 400,000 pixels x 1 band\(s\)"):
        open_raster(path)
    assert time.perf_counter() - start < 5.0  # building the Dask graph took 30 s


# --------------------------------------------------------------------------- bounded sampling


@pytest.fixture(scope="module")
def sparse_200k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sparse") / "wide.tif"
    return _sparse_tif(path, 200_000, 200_000, 1)


def test_inspect_on_a_huge_raster_reads_a_bounded_sample(sparse_200k: Path) -> None:
    start = time.perf_counter()
    report = inspect_raster(sparse_200k, lags=(1, 2))
    assert time.perf_counter() - start < 30.0
    assert report["shape"] == [1, 200_000, 200_000]
    assert report["sampling"]["subsampled"]
    assert report["stats"]["band_1"]["count"] == report["sampling"]["pixels"] <= 2_000_000
    assert report["nodata_fraction"]["overall"] == 0.0


def test_check_inputs_reads_a_bounded_number_of_chunks(
    sparse_200k: Path, make_model: Callable[..., Any], window_reads: list[tuple[slice, ...]]
) -> None:
    data = open_raster(sparse_200k)
    with pytest.warns(DataRangeWarning, match="far from the training data"):  # all zeros
        check_inputs(data, make_model(1, source_dtype="uint8"))
    reads = window_reads
    assert 1 <= len(reads) <= 4
    rows = {k[1].start for k in reads}
    cols = {k[2].start for k in reads}
    assert len(rows) == len(reads) and len(cols) == len(reads)  # spread over both axes


# --------------------------------------------------------------------------- data types


@pytest.mark.parametrize(
    ("dtype", "gdal"), [("complex64", "CFloat32"), ("complex_int16", "CInt16")]
)
def test_complex_geotiff_is_refused(tmp_path: Path, dtype: str, gdal: str) -> None:
    path = tmp_path / f"{dtype}.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=6, count=1, dtype=dtype,
        crs="EPSG:32633", transform=NORTH_UP,
    ):  # fmt: skip
        pass
    with pytest.raises(
        InputError, match=f"complex numbers \\({dtype} \\(GDAL {gdal}\\)\\)"
    ) as info:
        open_raster(path)
    assert "magnitude" in str(info.value) and "separate bands" in str(info.value)


def test_complex_netcdf_and_zarr_variables_are_refused(tmp_path: Path) -> None:
    z = (np.arange(20.0).reshape(4, 5) + 1j).astype("complex64")
    ds = _grid_dataset(4, 5, z=z, r=z.real.astype("float32"))
    store = tmp_path / "c.zarr"
    ds.to_zarr(store, mode="w", zarr_format=3, consolidated=False)
    paths = [store]
    nc = tmp_path / "c.nc"
    try:
        ds.to_netcdf(nc, engine="netcdf4", auto_complex=True)
        paths.append(nc)
    except (TypeError, ValueError):  # an older netCDF4 without complex support
        pass
    for path in paths:
        with pytest.raises(InputError, match=r"band\(s\) z hold complex numbers \(complex64"):
            open_raster(path)
        assert open_raster(path, variables=["r"]).shape == (1, 4, 5)


def test_one_bit_geotiff_reads_as_zero_and_one(tmp_path: Path) -> None:
    path = tmp_path / "mask.tif"
    bits = (np.arange(48).reshape(6, 8) % 3 == 0).astype("uint8")
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=6, count=1, dtype="uint8", nbits=1,
        crs="EPSG:32633", transform=NORTH_UP,
    ) as dst:  # fmt: skip
        dst.write(bits[None])
    np.testing.assert_array_equal(open_raster(path).values[0], bits.astype("float32"))


def test_label_rasters_follow_the_input_rules(
    tmp_path: Path, make_raster: Callable[..., Path]
) -> None:
    from georaster_cnn import open_labels

    labels = make_raster(tmp_path, "labels.tif", height=20, width=30, count=1)
    assert open_labels(labels).shape == (20, 30)
    with pytest.raises(InputError, match="max_pixels=100"):
        open_labels(labels, max_pixels=100)
    with pytest.raises(InputError, match="allow_remote=True"):
        open_labels("/vsicurl/https://example.com/labels.tif")


def test_unreachable_network_source_names_the_network_as_a_cause(tmp_path: Path) -> None:
    """With allow_remote, a VRT whose network source cannot be fetched fails at read time
    with a ReadError that names the network, not only a corrupt file (port 9: discard,
    closed on loopback, so nothing leaves the machine)."""
    from georaster_cnn import ReadError

    vrt = tmp_path / "remote.vrt"
    vrt.write_text(_source_vrt("/vsicurl/http://127.0.0.1:9/x.tif", width=10))
    data = open_raster(vrt, allow_remote=True)
    with pytest.raises(ReadError, match="a network source is unreachable"):
        data.compute()
