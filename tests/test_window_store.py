"""The window store: round trip against the in-memory windows, reuse checks, streaming, cluster, HTTP.

Tiny rasters with an odd band count, NaN holes and several Dask blocks; stores with
small shards so that windows span several shards and blocks share shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import write_raster
from georaster_cnn_cli.main import cli
from shapely.geometry import Point, box

import georaster_cnn as gc
from georaster_cnn.errors import InputError, OutputExistsError
from georaster_cnn.training.labels import resolve_labels
from georaster_cnn.training.store import (
    StoreSamples,
    build_store,
    open_window_store,
    recorded_options,
    store_differences,
)
from georaster_cnn.training.streaming import StreamedWindows, stream_layout
from georaster_cnn.training.windows import training_windows, window_spec

pytestmark = pytest.mark.filterwarnings("ignore::georaster_cnn.errors.ValidationWarning")

H, W = 150, 130
WINDOWS = {"patch_size": 16, "stride": 4, "val_block": 32, "val_fraction": 0.2, "seed": 3}
FAST = {**WINDOWS, "hparams": {"widths": [4, 8]}, "batch_size": 32, "device": "cpu"}


def _scene(tmp: Path) -> tuple[Path, Path]:
    """3 bands with a NaN hole, 3 classes in quadrants, 20 % unlabelled; 64-px tiles."""
    rng = np.random.default_rng(0)
    lab = np.full((H, W), 255, np.uint8)
    lab[: H // 2] = 0
    lab[H // 2 :, : W // 2] = 1
    lab[H // 2 :, W // 2 :] = 2
    lab[rng.random((H, W)) < 0.2] = 255
    vals = rng.standard_normal((3, H, W)).astype("float32")
    vals[1, 40:50, 40:60] = np.nan
    for k in range(3):
        vals[:, lab == k] += k
    data = write_raster(tmp, "scene.tif", height=H, width=W, count=3, values=vals, blocksize=64)
    labels = write_raster(
        tmp, "labels.tif", height=H, width=W, dtype="uint8", nodata=255, values=lab, blocksize=64
    )
    return data, labels


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Any, Any]:
    data, labels = _scene(tmp_path)
    return gc.open_raster(data, chunks=64), gc.open_labels(labels)


def _spec_items(data: Any, labels: Any, **over: Any) -> tuple[Any, Any, dict[str, Any]]:
    o = {**WINDOWS, **over}
    spec = window_spec(
        [data], patch_size=o["patch_size"], stride=o["stride"], min_valid=0.5, min_cover=0.5,
        val_block=o["val_block"], max_chip_bytes=2**40, seed=o["seed"],
    )  # fmt: skip
    items, _ = resolve_labels([data], labels, label_column=None, class_names=None)
    rec = recorded_options(
        [data], items, spec, val_block=o["val_block"], val_fraction=o["val_fraction"],
        label_column=None,
    )  # fmt: skip
    return spec, items, rec


def _build(path: Path, data: Any, labels: Any, *, shard: int = 128, **over: Any) -> Any:
    spec, items, rec = _spec_items(data, labels, **over)
    o = {**WINDOWS, **over}
    store, _ = build_store(
        path, [data], items, spec, recorded=rec, val_block=o["val_block"],
        val_fraction=o["val_fraction"], shard_windows=shard,
    )  # fmt: skip
    return store


def _digest(model: gc.GeoModel) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.module.state_dict().items()):
        h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_store_round_trip_equals_in_memory_windows(scene: Any, tmp_path: Path) -> None:
    data, labels = scene
    spec, items, _ = _spec_items(data, labels)
    mem = training_windows([data], items, spec, val_block=32, val_fraction=0.2)
    store = _build(tmp_path / "w.zarr", data, labels, shard=96)
    assert len(store) == len(mem.windows) > 4 * 96  # several shards
    assert np.array_equal(store.read(0, len(store)), mem.windows.chips)  # bit for bit
    assert np.array_equal(store.labels, mem.windows.labels)
    assert np.array_equal(store.centres, mem.windows.centres)
    assert np.array_equal(store.val, mem.val) and 0 < store.val.sum() < len(store)
    assert np.array_equal(store.dropped, mem.dropped)
    assert store.split == mem.split
    assert store.stats.to_dict() == mem.stats.to_dict()
    assert set(np.unique(store.raster)) == {0}
    group = zarr.open_group(tmp_path / "w.zarr", mode="r")
    assert group["windows"].shards == (96, 3, 16, 16)  # Zarr v3 sharding codec
    assert group.metadata.zarr_format == 3
    # published whole: no temporary left beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_two_rasters_and_polygons_round_trip(tmp_path: Path) -> None:
    """Windows of polygon labels (min_cover) on two rasters: the same as in memory."""
    a, _ = _scene(tmp_path / "a")
    b, _ = _scene(tmp_path / "b")
    datas = [gc.open_raster(a, chunks=64), gc.open_raster(b, chunks=48)]
    x0, y0 = datas[0].rio.transform() * (0, 0)
    x1, y1 = datas[0].rio.transform() * (W, H)
    polys = gpd.GeoDataFrame(
        {"cls": ["left", "right"]},
        geometry=[box(x0, y1, (x0 + x1) / 2, y0), box((x0 + x1) / 2, y1, x1, y0)],
        crs=datas[0].rio.crs,
    )
    spec = window_spec(
        datas, patch_size=16, stride=8, min_valid=0.5, min_cover=0.9, val_block=32,
        max_chip_bytes=2**40, seed=1,
    )  # fmt: skip
    items, _ = resolve_labels(datas, polys, label_column="cls", class_names=None)
    mem = training_windows(datas, items, spec, val_block=32, val_fraction=0.2)
    rec = recorded_options(datas, items, spec, val_block=32, val_fraction=0.2, label_column="cls")
    store, _ = build_store(
        tmp_path / "p.zarr", datas, items, spec, recorded=rec, val_block=32, val_fraction=0.2,
        shard_windows=64,
    )  # fmt: skip
    assert np.array_equal(store.read(0, len(store)), mem.windows.chips)
    assert np.array_equal(store.labels, mem.windows.labels)
    assert np.array_equal(store.raster, np.repeat([0, 1], np.bincount(store.raster)))
    assert np.bincount(store.raster).tolist()[1] > 0


def test_point_labels_in_a_store(scene: Any, tmp_path: Path) -> None:
    """Point windows (cut in this process, a chunk at a time) then grid-free: as in memory."""
    data, _ = scene
    t = data.rio.transform()
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, H, 40), rng.integers(0, W, 40)
    pts = gpd.GeoDataFrame(
        {"cls": np.where(cols < W // 2, "a", "b")},
        geometry=[Point(*(t * (c + 0.5, r + 0.5))) for r, c in zip(rows, cols, strict=True)],
        crs=data.rio.crs,
    )
    spec = window_spec(
        [data], patch_size=16, stride=4, min_valid=0.5, min_cover=0.5, val_block=32,
        max_chip_bytes=2**40, seed=2,
    )  # fmt: skip
    items, _ = resolve_labels([data], pts, label_column="cls", class_names=None)
    mem = training_windows([data], items, spec, val_block=32, val_fraction=0.2)
    rec = recorded_options([data], items, spec, val_block=32, val_fraction=0.2, label_column="cls")
    store, _ = build_store(
        tmp_path / "pts.zarr", [data], items, spec, recorded=rec, val_block=32,
        val_fraction=0.2, shard_windows=64,
    )  # fmt: skip
    assert len(store) == len(mem.windows) > 20
    assert np.array_equal(store.read(0, len(store)), mem.windows.chips)
    assert np.array_equal(store.centres, mem.windows.centres)


def test_training_from_a_store_equals_in_memory_training(scene: Any, tmp_path: Path) -> None:
    data, labels = scene
    fast = {**FAST, "stride": 8}  # few windows: fast
    mem = gc.train(data, labels, epochs=2, **fast)
    stored = gc.train(data, labels, epochs=2, store=tmp_path / "w.zarr", **fast)
    assert _digest(stored) == _digest(mem)
    assert stored.provenance["windows_per_class"] == mem.provenance["windows_per_class"]
    assert stored.provenance["window_store"] == str(tmp_path / "w.zarr")
    assert "streamed" not in stored.provenance  # it fitted the budget: read into memory
    again = gc.train(data, labels, epochs=2, store=tmp_path / "w.zarr", **fast)  # reused
    assert _digest(again) == _digest(mem)
    assert set(mem.provenance["timing"]) == {"reading_s", "computing_s"}


def test_streamed_training_counts_every_window_and_repeats(scene: Any, tmp_path: Path) -> None:
    data, labels = scene
    path = tmp_path / "w.zarr"
    _build(path, data, labels, shard=16, patch_size=32)
    store = open_window_store(path)
    assert len(store) * store.window_bytes > 2.5 * 2**20  # over twice the budget below
    opts = {**FAST, "patch_size": 32, "batch_size": 8}
    a = gc.train(data, labels, epochs=1, store=path, memory=2, **opts)
    b = gc.train(data, labels, epochs=1, store=path, memory=2, **opts)
    assert 0 < a.provenance["streamed"]["buffer_windows"] < len(store) / 2
    assert _digest(a) == _digest(b)  # the same seed, the same batches
    counts = a.provenance["windows_per_class"]
    assert sum(counts["train"].values()) + sum(counts["validation"].values()) == len(store)
    assert a.provenance["n_train"] == int((~store.val).sum())
    assert a.provenance["n_val"] == int(store.val.sum())
    assert a.provenance["history"][-1]["val_accuracy"] > 0.5


def test_stream_yields_each_selected_window_once_within_its_buffer(
    scene: Any, tmp_path: Path
) -> None:
    data, labels = scene
    store = _build(tmp_path / "w.zarr", data, labels, shard=16, stride=2)
    y = np.arange(len(store), dtype=np.int64)  # ids stand in for classes: trace each window
    layout = stream_layout(store, 2**20, 8)
    assert layout.buffer < (~store.val).sum() / 2 and layout.unit == store.chunk
    ds = StreamedWindows(store, ~store.val, y, batch_size=8, layout=layout, shuffle=True)
    all_x = store.read(0, len(store))
    seen: list[np.ndarray] = []
    ds.set_epoch_seed(7)
    for xb, yb in ds:
        assert len(yb) <= 8
        assert np.array_equal(xb.numpy(), all_x[yb.numpy()])  # windows travel with their ids
        seen.append(yb.numpy())
    order = np.concatenate(seen)
    assert sorted(order.tolist()) == np.flatnonzero(~store.val).tolist()
    assert not np.array_equal(order, np.sort(order))  # shuffled
    ds.set_epoch_seed(7)
    assert np.array_equal(np.concatenate([b.numpy() for _, b in ds]), order)
    ds.set_epoch_seed(8)
    assert not np.array_equal(np.concatenate([b.numpy() for _, b in ds]), order)
    val = StreamedWindows(store, store.val, y, batch_size=8, layout=layout, shuffle=False)
    assert (
        np.concatenate([b.numpy() for _, b in val]).tolist() == np.flatnonzero(store.val).tolist()
    )


def test_a_tiny_budget_is_refused_with_what_it_needs(scene: Any, tmp_path: Path) -> None:
    data, labels = scene
    store = _build(tmp_path / "w.zarr", data, labels)
    with pytest.raises(InputError, match=r"too small to stream .* needs at least \d+ MiB"):
        stream_layout(store, 64 * 1024, 32)
    assert isinstance(StoreSamples(store, 1).store, type(store))


def test_a_store_of_other_options_is_refused(scene: Any, tmp_path: Path) -> None:
    data, labels = scene
    path = tmp_path / "w.zarr"
    _build(path, data, labels)
    with pytest.raises(
        InputError, match=r"stride 4 recorded, 8 asked; val_block 32 recorded, 48 asked"
    ):
        gc.train(data, labels, store=path, **{**FAST, "val_block": 48, "stride": 8})
    with pytest.raises(InputError, match=r"seed 3 recorded, 4 asked"):
        gc.train(data, labels, store=path, **{**FAST, "seed": 4})
    other, _ = _scene(tmp_path / "other")
    with pytest.raises(InputError, match=r"data 1 \(.*other.*scene.tif\): .*source"):
        gc.train(gc.open_raster(other), labels, store=path, **FAST)
    with pytest.raises(OutputExistsError, match="exists"):
        gc.build_window_store(data, labels, path, **WINDOWS)
    assert store_differences({"a": 1}, {"a": 1}) == []


def test_an_incomplete_store_is_refused(scene: Any, tmp_path: Path) -> None:
    data, labels = scene
    path = tmp_path / "w.zarr"
    _build(path, data, labels)
    group = zarr.open_group(path, mode="r+")
    meta = dict(group.attrs["georaster_cnn_window_store"])
    meta["complete"] = False
    group.attrs["georaster_cnn_window_store"] = meta
    with pytest.raises(InputError, match="incomplete window store"):
        gc.train(data, labels, store=path, **FAST)
    with pytest.raises(InputError, match="not a window store"):
        open_window_store(tmp_path)


def test_store_built_on_a_cluster_equals_one_built_on_threads(
    dask_processes: Any, tmp_path: Path
) -> None:
    data_path, label_path = _scene(tmp_path)
    data, labels = gc.open_raster(data_path, chunks=64), gc.open_labels(label_path)
    threads = gc.build_window_store(
        data, labels, tmp_path / "t.zarr", scheduler="threads", **WINDOWS
    )
    cluster = gc.build_window_store(
        data, labels, tmp_path / "c.zarr", scheduler_file=dask_processes.scheduler_file, **WINDOWS
    )
    assert len(cluster) == len(threads) > 0
    assert np.array_equal(cluster.read(0, len(cluster)), threads.read(0, len(threads)))
    assert np.array_equal(cluster.val, threads.val)
    assert np.array_equal(cluster.labels, threads.labels)
    assert cluster.stats.to_dict() == threads.stats.to_dict()


def test_a_store_read_over_http_equals_the_folder(scene: Any, tmp_path: Path) -> None:
    from loopback_http import serve

    data, labels = scene
    root = tmp_path / "served"
    root.mkdir()
    local = _build(root / "w.zarr", data, labels, shard=16)
    with serve(root) as served:
        url = f"{served.url}/w.zarr"
        with pytest.raises(gc.InputError, match=r"on the network.*--allow-remote"):
            open_window_store(url)  # network access is asked for, as for every input
        with pytest.raises(gc.InputError, match="on the network"):
            gc.train(data, labels, store=url, epochs=1)
        assert served.log == []  # refused before any request
        remote = open_window_store(url, allow_remote=True)
        assert np.array_equal(remote.read(0, len(remote)), local.read(0, len(local)))
        assert np.array_equal(remote.val, local.val)
        layout = stream_layout(remote, 2**20, 8)
        ids = np.arange(len(remote), dtype=np.int64)
        ds = StreamedWindows(remote, ~remote.val, ids, batch_size=8, layout=layout, shuffle=True)
        got = [(xb.numpy(), yb.numpy()) for xb, yb in ds]
        assert any(path.endswith("/windows/c/0/0/0/0") for _, path, _, _ in served.log)
    order = np.concatenate([y for _, y in got])
    assert sorted(order.tolist()) == np.flatnonzero(~local.val).tolist()
    assert np.array_equal(np.concatenate([x for x, _ in got]), local.read(0, len(local))[order])


def test_cli_windows_build_then_train(tmp_path: Path) -> None:
    data, labels = _scene(tmp_path)
    store = tmp_path / "w.zarr"
    common = ["--labels", str(labels), "--stride", "16", "--seed", "1", "--val-block", "64"]
    built = CliRunner().invoke(cli, ["windows", "build", str(data), *common, "--store", str(store)])
    assert built.exit_code == 0, built.output
    assert "Window store" in built.output and "validation" in built.output
    out = tmp_path / "m.safetensors"
    args = ["train", str(data), *common, "--store", str(store), "--epochs", "1", "-o", str(out)]
    trained = CliRunner().invoke(cli, [*args, "--device", "cpu", "--batch-size", "8"])
    assert trained.exit_code == 0, trained.output
    assert "windows read from" in trained.output and "s computing" in trained.output
    assert not (tmp_path / "m.safetensors.checkpoint").exists()  # removed once saved
    prov = gc.load_model(out).provenance
    n = sum(sum(prov["windows_per_class"][k].values()) for k in ("train", "validation"))
    assert n == len(open_window_store(store))
    refused = CliRunner().invoke(
        cli, [*args[:-2], "-o", str(tmp_path / "n.safetensors"), "--val-block", "32"]
    )
    assert refused.exit_code == 1 and "32 asked" in refused.output
    again = CliRunner().invoke(cli, ["windows", "build", str(data), *common, "--store", str(store)])
    assert again.exit_code != 0 and "--overwrite" in again.output
    chips = tmp_path / "chips.npz"
    np.savez(chips, chips=np.zeros((4, 1, 8, 8), "float32"), labels=np.array([0, 1, 0, 1]))
    bad = CliRunner().invoke(cli, ["train", str(chips), "--store", str(store), "-o", str(out)])
    assert bad.exit_code == 2 and "--store and --memory apply to rasters" in bad.output
    assert json.loads(json.dumps(prov["timing"]))["computing_s"] > 0
