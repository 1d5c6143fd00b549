"""open_stac and catalogued maps, offline: COGs in two UTM zones behind a loopback range server.

The server (tests/loopback_http.py) honours ``Range``, logs each request with its
bytes, and answers 404, stalls or cuts a response on request. Scenes A1 and A2 lie
side by side in UTM 32N on one grid; B lies in UTM 33N. Each scene is one COG per
band (``B04``, ``B08``, ``B11``, with ``eo:bands`` common names red, nir, swir16) and a
local three-band GeoTIFF of the same pixels (for the local-file comparison).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.features
import rasterio.warp
from loopback_http import Served, serve
from shapely.geometry import box, mapping, shape
from stac_fixtures import (
    MODEL_BANDS,
    QUIET_WARP,
    SCHEMAS,
    SIZE,
    TILE,
    make_item,
    write_collection,
    write_scenes,
)

import georaster_cnn as gc
from georaster_cnn.errors import InputError, ReadError, StacReadWarning

pytestmark = pytest.mark.filterwarnings(QUIET_WARP)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("stac"))


@pytest.fixture(scope="module")
def model(make_model: Callable[..., gc.GeoModel], scenes: Path) -> gc.GeoModel:
    stats = gc.compute_stats(gc.open_raster(scenes / "A1.tif"))
    return make_model(
        3, ("low", "mid", "high"), band_names=MODEL_BANDS, patch_size=16, stats=stats,
        source_dtype="uint16",
    )  # fmt: skip


@pytest.fixture
def served(scenes: Path) -> Iterator[Served]:
    with serve(scenes) as s:
        yield s


def _classes(data: Any, model: gc.GeoModel) -> np.ndarray:
    return np.asarray(gc.predict(data, model, device="cpu")["class"].values)


def _tile_bytes(path: Path) -> int:
    with rasterio.open(path) as src:
        rows, cols = -(-src.height // TILE), -(-src.width // TILE)
        return sum(src.block_size(1, i, j) for i in range(rows) for j in range(cols))


# --------------------------------------------------------------------------- HTTP mosaic


@pytest.fixture(scope="module")
def http_mosaic(scenes: Path, model: gc.GeoModel) -> dict[str, Any]:
    """A1 + A2 read through an HTTP catalogue: the classes, and the server's log."""
    with serve(scenes) as s:
        write_collection(scenes, ["A1", "A2"], f"{s.url}/", "http_items.json")
        data = gc.open_stac(f"{s.url}/http_items.json", bands=MODEL_BANDS, allow_remote=True)
        classes = _classes(data, model)
        return {"classes": classes, "data": data, "log": s.log}


def test_an_aligned_mosaic_equals_predict_on_the_local_files(
    http_mosaic: dict[str, Any], scenes: Path, model: gc.GeoModel
) -> None:
    data = http_mosaic["data"]
    assert data.dtype == np.float32 and data.dims == ("band", "y", "x")
    assert list(data["band"].values) == list(MODEL_BANDS)
    assert data.rio.crs.to_epsg() == 32632
    with rasterio.open(scenes / "A1.tif") as src:
        assert data.rio.transform() == src.transform
    a1 = _classes(gc.open_raster(scenes / "A1.tif"), model)
    a2 = _classes(gc.open_raster(scenes / "A2.tif"), model)
    mosaic = http_mosaic["classes"]
    assert mosaic.shape == (a1.shape[0], a1.shape[1] + a2.shape[1])
    np.testing.assert_array_equal(mosaic[:, : a1.shape[1]], a1)
    np.testing.assert_array_equal(mosaic[:, a1.shape[1] :], a2)
    assert (a1 == 255).any()  # the nodata corner came through as nodata


def test_bytes_fetched_stay_within_the_tiles_needed_and_headers_are_fetched_once(
    http_mosaic: dict[str, Any], scenes: Path
) -> None:
    log = [r for r in http_mosaic["log"] if r[1].endswith(".tif")]
    files = sorted({path.lstrip("/") for _, path, _, _ in log})
    assert len(files) == 6  # three bands of two scenes
    needed = sum(_tile_bytes(scenes / f) for f in files)
    fetched = sum(n for method, _, _, n in log if method == "GET")
    assert fetched <= 1.25 * needed, (fetched, needed)
    starts = Counter(
        path for method, path, rng, _ in log if method == "GET" and rng.startswith("bytes=0-")
    )
    assert all(n == 1 for n in starts.values()), starts  # each header once
    heads = Counter(path for method, path, _, _ in log if method == "HEAD")
    assert all(n <= 1 for n in heads.values()), heads


def test_two_utm_zones_mosaic_in_the_requested_crs_without_a_gap(scenes: Path) -> None:
    items = write_collection(scenes, ["A3", "B"], "./", "two_zones.json")
    data = gc.open_stac(items, bands=MODEL_BANDS, crs="EPSG:32633", resolution=20)
    assert data.rio.crs.to_epsg() == 32633
    assert data.rio.resolution() == (20.0, -20.0)
    valid = ~np.isnan(data.values).any(axis=0)
    inside = np.zeros(valid.shape, bool)
    for name in ("A3", "B"):
        with rasterio.open(scenes / f"{name}.tif") as src:
            foot = rasterio.warp.transform_geom(src.crs, "EPSG:32633", mapping(box(*src.bounds)))
        shrunk = shape(foot).buffer(-30)  # one output cell and a half in from the edge
        covered = rasterio.features.rasterize(
            [shrunk], out_shape=valid.shape, transform=data.rio.transform()
        ).astype(bool)
        assert covered.sum() > 1000
        inside |= covered
    assert valid[inside].all()  # both scenes, no gap
    assert not valid.all()  # and the grid reaches beyond them (the union's bounding box)


# --------------------------------------------------------------------------- failures


def test_a_missing_band_names_itself_and_what_the_items_offer(scenes: Path) -> None:
    items = write_collection(scenes, ["A1"], "./", "one.json")
    with pytest.raises(InputError, match="'blue'") as err:
        gc.open_stac(items, bands=["red", "blue"])
    assert "B04" in str(err.value) and "red" in str(err.value)
    data = gc.open_stac(items, bands={"rot": "B04", "nah": "B08"})  # explicit mapping
    assert list(data["band"].values) == ["rot", "nah"]


def test_a_404_asset_is_a_read_error_naming_it_or_is_skipped(scenes: Path) -> None:
    with serve(scenes, missing={"A1_B08.tif"}) as s:
        items = [make_item(scenes, n, f"{s.url}/") for n in ("A1", "A2")]
        with pytest.raises(ReadError, match=r"A1_B08\.tif"):
            gc.open_stac(items, bands=MODEL_BANDS, allow_remote=True)
        with pytest.warns(StacReadWarning, match=r"A1_B08\.tif"):
            data = gc.open_stac(items, bands=MODEL_BANDS, allow_remote=True, skip_failed=True)
        values = data.values
    assert np.isnan(values[:, :, :SIZE]).all()  # A1 left out
    assert not np.isnan(values[:, 40:, SIZE:]).any()  # A2 read


def test_a_truncated_response_while_reading_names_the_asset(scenes: Path) -> None:
    with serve(scenes, cut={"A2_B11.tif"}) as s:
        items = [make_item(scenes, "A2", f"{s.url}/")]
        with pytest.raises(ReadError, match=r"A2_B11\.tif"):
            gc.open_stac(items, bands=MODEL_BANDS, allow_remote=True).compute()


def test_a_stalled_server_times_out(scenes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "2")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    with serve(scenes, stall={"A1_B04.tif"}) as s:
        items = [make_item(scenes, "A1", f"{s.url}/")]
        t0 = datetime.now(UTC)
        with pytest.raises(ReadError, match=r"A1_B04\.tif"):
            gc.open_stac(items, bands=MODEL_BANDS, allow_remote=True)
        assert (datetime.now(UTC) - t0).total_seconds() < 30


def test_an_http_catalogue_may_not_reference_local_files(scenes: Path, served: Served) -> None:
    file_url = write_collection(scenes, ["A1"], f"file://{scenes}/", "file_hrefs.json")
    with pytest.raises(InputError, match="never local files"):
        gc.open_stac(f"{served.url}/{file_url.name}", allow_remote=True)
    assert not any(path.endswith(".tif") for _, path, _, _ in served.log)


def test_network_needs_allow_remote_and_local_catalogues_stay_in_their_folder(
    scenes: Path, served: Served, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="allow_remote"):
        gc.open_stac(f"{served.url}/items.json")
    remote = write_collection(scenes, ["A1"], f"{served.url}/", "remote_hrefs.json")
    with pytest.raises(InputError, match="allow_remote"):
        gc.open_stac(remote)
    assert served.log == []
    elsewhere = tmp_path / "catalogue"
    elsewhere.mkdir()
    outside = write_collection(scenes, ["A1"], f"{scenes}/", "x.json")
    (elsewhere / "items.json").write_text(outside.read_text())
    with pytest.raises(InputError, match="outside the catalogue's folder"):
        gc.open_stac(elsewhere / "items.json")


def test_max_pixels_is_checked_on_the_grid_before_any_request(scenes: Path, served: Served) -> None:
    items = [make_item(scenes, n, f"{served.url}/") for n in ("A1", "A2")]
    with pytest.raises(InputError, match="max_pixels"):
        gc.open_stac(items, bands=MODEL_BANDS, allow_remote=True, max_pixels=3 * SIZE * SIZE)
    assert served.log == []


# --------------------------------------------------------------------------- catalogued maps


def _validator() -> Any:
    """pystac's validator reading the schemas vendored in tests/stac_schemas (never the network)."""
    from pystac.validation import JsonSchemaSTACValidator

    def uri(p: Path) -> str:
        rel = p.relative_to(SCHEMAS).as_posix()
        if rel.startswith("stac-spec/"):
            version, name = rel.split("/")[1:]
            spec = "item" if name != "catalog.json" and name != "collection.json" else name[:-5]
            return f"https://schemas.stacspec.org/{version}/{spec}-spec/json-schema/{name}"
        if rel.startswith("geojson/"):
            return f"https://geojson.org/schema/{p.name}"
        ext, version, _ = rel.split("/")
        return f"https://stac-extensions.github.io/{ext}/{version}/schema.json"

    v = JsonSchemaSTACValidator()
    v.schema_cache = {uri(p): json.loads(p.read_text()) for p in SCHEMAS.rglob("*.json")}

    def offline(schema_uri: str) -> dict[str, Any]:
        if schema_uri not in v.schema_cache:
            raise AssertionError(f"schema {schema_uri} is not vendored in tests/stac_schemas")
        return v.schema_cache[schema_uri]

    v._get_schema = offline  # type: ignore[method-assign]
    return v


def test_the_map_item_validates_and_reads_back(
    scenes: Path, model: gc.GeoModel, tmp_path: Path
) -> None:
    items = write_collection(scenes, ["A1", "A2"], "./", "local_items.json")
    pred = gc.predict(gc.open_stac(items, bands=MODEL_BANDS), model, device="cpu")
    out = gc.write_prediction(pred, tmp_path / "maps" / "mosaic.tif", stac_item="tiny")  # fmt: skip
    item_path = out.with_suffix(".json")
    doc = json.loads(item_path.read_text())
    from pystac.validation import validate_dict

    assert doc["stac_version"] == "1.0.0"
    checked = validate_dict(doc, validator=_validator())  # as written: no migration first
    assert "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json" in checked
    for ext in ("projection", "raster", "classification"):
        assert any(f"/{ext}/" in s for s in checked), checked
    assert doc["properties"]["proj:code"] == "EPSG:32632"
    assert doc["properties"]["georaster_cnn:model"]["checksum"] == model.checksum
    assert doc["properties"]["georaster_cnn:model"]["name"] == "tiny"
    classes = doc["assets"]["class_map"]["classification:classes"]
    assert [c["title"] for c in classes] == ["low", "mid", "high"]
    derived = [link["href"] for link in doc["links"] if link["rel"] == "derived_from"]
    assert derived == [f"{items}#A1", f"{items}#A2"]
    # the resume key knows each asset read (a changed asset is another input)
    from georaster_cnn.io._identity import stac_identity

    known = {Path(e["path"]).name for e in stac_identity(pred.attrs["stac_items"])}
    assert known == {f"{n}_{k}.tif" for n in ("A1", "A2") for k in ("B04", "B08", "B11")}
    back = gc.open_stac(item_path)
    with rasterio.open(out) as src:
        written = src.read(1).astype("float32")
        assert back.rio.transform() == src.transform
        assert back.rio.crs == src.crs
    written[written == 255] = np.nan
    np.testing.assert_array_equal(back.values[0], written)


def test_the_http_settings_reach_every_read(scenes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """io/cloud.py's options (an environment override too) are GDAL's inside odc-stac's reads."""
    import odc.loader._rio as rio

    seen: list[dict[str, Any]] = []
    original = rio.rio_read

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(dict(rasterio.env.getenv()))
        return original(*args, **kwargs)

    monkeypatch.setattr(rio, "rio_read", spy)
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "7")
    items = write_collection(scenes, ["A1"], "./", "env.json")
    gc.open_stac(items, bands=MODEL_BANDS).compute()
    assert len(seen) >= 3  # a read per band at least
    for env in seen:
        assert str(env["GDAL_HTTP_TIMEOUT"]) == "7"
        assert env["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
        assert str(env["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"]).upper() in ("YES", "TRUE")


def test_a_multiband_asset_without_proj_or_raster_metadata_is_described_by_its_header(
    scenes: Path,
) -> None:
    """Items that say only hrefs and eo:bands: the grid and band count come from the header."""
    items = []
    for name in ("A1", "A2"):
        item = make_item(scenes, name, "./")
        for key in list(item.assets):
            del item.assets[key]
        item.stac_extensions = []
        item.add_asset("image", pystac.Asset(
            f"./{name}.tif", media_type=pystac.MediaType.GEOTIFF, roles=["data"],
            extra_fields={"eo:bands": [{"name": f"b{i}", "common_name": n}
                                       for i, n in enumerate(MODEL_BANDS)]},
        ))  # fmt: skip
        items.append(item)
    doc = scenes / "bare.json"
    doc.write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))
    data = gc.open_stac(doc, bands=MODEL_BANDS)
    assert data.rio.crs.to_epsg() == 32632
    values = data.values
    for i, name in enumerate(("A1", "A2")):
        local = gc.open_raster(scenes / f"{name}.tif").values
        np.testing.assert_array_equal(values[:, :, i * SIZE : (i + 1) * SIZE], local)


@pytest.mark.slow  # a scheduler and two worker processes: about 25 s
def test_workers_read_with_the_http_settings(scenes: Path, dask_processes: Any) -> None:
    """On a cluster of processes (no cache of this one), reads still list no folder and ask
    for no sidecar: GDAL_DISABLE_READDIR_ON_OPEN reached the workers (without it GDAL asks
    for ``/`` and ``A1_B04.tif.aux.xml``, ``.msk`` ...)."""
    import distributed

    with serve(scenes) as s:
        items = [make_item(scenes, n, f"{s.url}/") for n in ("A1", "A2")]
        data = gc.open_stac(items, bands=MODEL_BANDS, allow_remote=True)
        before = len(s.log)
        with distributed.Client(dask_processes.address()) as client:
            values = client.compute(data.data).result()
        log = s.log[before:]
    assert log  # the workers read over HTTP
    assets = {f"/{n}_{k}.tif" for n in ("A1", "A2") for k in ("B04", "B08", "B11")}
    assert {path for _, path, _, _ in log} <= assets, {path for _, path, _, _ in log} - assets
    local = gc.open_stac(
        [make_item(scenes, n, f"{scenes}/") for n in ("A1", "A2")], bands=MODEL_BANDS
    )
    np.testing.assert_array_equal(values, local.values)


def test_open_raster_over_http_reads_with_the_same_settings(scenes: Path, served: Served) -> None:
    """The one home of the HTTP settings serves remote rasters too: no folder listing, no
    sidecar probes, the header once."""
    data = gc.open_raster(f"{served.url}/A1.tif", allow_remote=True)
    np.testing.assert_array_equal(data.values, gc.open_raster(scenes / "A1.tif").values)
    assert {path for _, path, _, _ in served.log} == {"/A1.tif"}
    starts = [rng for m, _, rng, _ in served.log if m == "GET" and rng.startswith("bytes=0-")]
    assert len(starts) == 1


def test_busy_answers_are_retried(scenes: Path) -> None:
    """503 (and 429, 5xx) answers are retried with a growing delay (GDAL_HTTP_MAX_RETRY)."""
    with serve(scenes, busy={"A1_B04.tif": 2}) as s:
        items = [make_item(scenes, "A1", f"{s.url}/")]
        data = gc.open_stac(items, bands=MODEL_BANDS, allow_remote=True)
        values = data.values
        asked = [(m, n) for m, path, _, n in s.log if path == "/A1_B04.tif"]
    local = gc.open_raster(scenes / "A1.tif").values
    np.testing.assert_array_equal(values, local)
    assert len(asked) > 2 and asked[0][1] == 0 and asked[1][1] == 0  # two 503s, then served


def test_raster_extension_scale_offset_and_nodata_are_applied(scenes: Path) -> None:
    item = make_item(scenes, "A1", f"{scenes}/")
    for asset in item.assets.values():
        asset.extra_fields["raster:bands"] = [
            {"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}
        ]
    data = gc.open_stac([item], bands=MODEL_BANDS)
    raw = gc.open_raster(scenes / "A1.tif").values  # nodata 0 already NaN
    np.testing.assert_allclose(data.values, raw * np.float32(0.0001) - np.float32(0.1), rtol=1e-6)
    assert np.isnan(data.values[:, :40, :40]).all()
    item.assets["B08"].extra_fields["raster:bands"][0]["scale"] = 0.001
    other = make_item(scenes, "A2", f"{scenes}/")
    for asset in other.assets.values():
        asset.extra_fields["raster:bands"] = [{"scale": 0.0001, "offset": -0.1}]
    with pytest.raises(InputError, match="disagree on the scale/offset of asset 'B08'"):
        gc.open_stac([item, other], bands=MODEL_BANDS)


def test_without_bands_every_band_of_a_multiband_asset_is_loaded(scenes: Path) -> None:
    """An asset that says nothing of its bands: its header's band count decides."""
    item = make_item(scenes, "A1", f"{scenes}/")
    for key in list(item.assets):
        del item.assets[key]
    item.add_asset("data", pystac.Asset(f"{scenes}/A1.tif", roles=["data"]))
    data = gc.open_stac([item])
    assert list(data["band"].values) == ["data.1", "data.2", "data.3"]
    np.testing.assert_array_equal(data.values, gc.open_raster(scenes / "A1.tif").values)
    with pytest.raises(InputError, match="max_pixels"):  # three bands counted, not one
        gc.open_stac([item], max_pixels=2 * SIZE * SIZE)


def test_a_bbox_reads_only_the_tiles_it_touches(scenes: Path, served: Served) -> None:
    """A 200 x 200 pixel bbox inside the first tile of A1: that tile of each band, within
    budget, and nothing of A2 (its Item lies outside the bbox and is not even opened)."""
    x0, y1 = 730000 + 20 * 10.0, 5000000 - 20 * 10.0
    bbox = rasterio.warp.transform_bounds("EPSG:32632", "EPSG:4326", x0, y1 - 2000, x0 + 2000, y1)
    items = [make_item(scenes, n, f"{served.url}/") for n in ("A1", "A2")]
    data = gc.open_stac(items, bands=MODEL_BANDS, bbox=bbox, allow_remote=True)
    values = data.values
    log = [r for r in served.log if r[1].endswith(".tif")]
    assert {p for _, p, _, _ in log} == {f"/A1_{k}.tif" for k in ("B04", "B08", "B11")}
    needed = 0
    for key in ("B04", "B08", "B11"):
        with rasterio.open(scenes / f"A1_{key}.tif") as src:
            needed += src.block_size(1, 0, 0)
    fetched = sum(n for m, _, _, n in log if m == "GET")
    assert fetched <= 1.25 * needed, (fetched, needed)
    with rasterio.open(scenes / "A1.tif") as src:
        window = rasterio.windows.from_bounds(*data.rio.bounds(), transform=src.transform)
        local = src.read(window=window.round_offsets().round_lengths()).astype("float32")
    local[local == 0] = np.nan
    np.testing.assert_array_equal(values, local)
