"""Cluster jobs with real components on loopback: the result never depends on where it ran.

* scheduler option parsing and sessions (fast);
* how a classifier travels: the digest alone once the model is shipped (fast);
* a ``LocalCluster`` with worker processes, and an active client picked up by
  ``write_prediction`` (slow);
* ``dask scheduler`` plus two ``dask worker`` processes started here on 127.0.0.1,
  reached by address and by scheduler file (slow);
* a worker killed mid-job, on both (slow).

Every output is compared cell for cell with the single-process (threaded) result.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import socket
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from dask_processes import START_TIMEOUT_S, DaskProcesses

from georaster_cnn import (
    GeoModel,
    InputError,
    ModelFileError,
    open_raster,
    predict,
    write_prediction,
)
from georaster_cnn import cluster as gcc
from georaster_cnn.cluster import _shipping, scheduler
from georaster_cnn.model import _inference
from georaster_cnn.model._inference import Classifier

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]

distributed = pytest.importorskip("distributed")


# --------------------------------------------------------------------------- fast


@pytest.mark.parametrize(
    ("given", "kind", "workers", "target"),
    [
        (None, "auto", 0, ""),
        ("threads", "threads", 0, ""),
        ("sync", "sync", 0, ""),
        ("local:3", "local", 3, ""),
        ("LOCAL:1", "local", 1, ""),
        ("tcp://127.0.0.1:8786", "address", 0, "tcp://127.0.0.1:8786"),
        ("tls://scheduler.example:8786", "address", 0, "tls://scheduler.example:8786"),
    ],
)
def test_scheduler_forms(given: str | None, kind: str, workers: int, target: str) -> None:
    spec = gcc.parse_scheduler(given)
    assert (spec.kind, spec.workers, spec.target) == (kind, workers, target)


def test_local_defaults_to_one_worker_per_core() -> None:
    assert gcc.parse_scheduler("local").workers == scheduler._cores()


@pytest.mark.parametrize("given", ["local:0", "local:x", "processes", "127.0.0.1:8786", ""])
def test_bad_scheduler_forms_are_refused(given: str) -> None:
    with pytest.raises(InputError, match="scheduler"):
        gcc.parse_scheduler(given)


def test_scheduler_file_checks(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        gcc.parse_scheduler(scheduler_file=tmp_path / "none.json")
    f = tmp_path / "s.json"
    f.write_text("{}")
    assert gcc.parse_scheduler(scheduler_file=f).kind == "file"
    with pytest.raises(InputError, match="one way only"):
        gcc.parse_scheduler("threads", scheduler_file=f)


def test_local_schedulers_are_local_sessions() -> None:
    import dask

    for name in ("threads", "sync"):
        with gcc.use_scheduler(name) as session:
            assert session.client is None and session.dashboard_link is None
            assert session.scheduler == name
            assert dask.config.get("scheduler") == name
            assert gcc.current_client() is None
    with gcc.use_scheduler() as session:
        assert session.scheduler == "threads" and session.client is None


def test_unreachable_scheduler_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        pytest.raises(InputError, match="could not connect"),
        gcc.use_scheduler(f"tcp://127.0.0.1:{port}"),
    ):
        pass


def test_torch_threads_share_the_cores() -> None:
    assert gcc.torch_threads_for(16, 4, 1) == 4
    assert gcc.torch_threads_for(2, 2, 1) == 1
    assert gcc.torch_threads_for(2, 8, 1) == 1


class _FakeClient:
    """Stands for a live client the model was shipped to (only its status is read)."""

    status = "running"


def test_a_shipped_classifier_pickles_as_its_digest(
    make_model: MakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(3, ("a", "b"), arch="cnn", seed=7)
    clf = Classifier(model, "cpu")
    raw = len(model.to_bytes())
    assert len(pickle.dumps(clf)) > raw  # not shipped: the model's bytes travel
    fake = _FakeClient()
    _shipping._SHIPPED.setdefault(model.checksum, weakref.WeakSet()).add(fake)
    try:
        digest_only = pickle.dumps(clf)
    finally:
        _shipping._SHIPPED.pop(model.checksum)
    assert len(digest_only) < 300 < raw
    # Unpickled where the model is loaded: found by checksum, loaded lazily.
    back = pickle.loads(digest_only)
    assert back.key == clf.key
    x = np.zeros((2, 3, 64, 64), np.float32)
    np.testing.assert_array_equal(back(x), clf(x))
    # Where neither the bytes nor a plugin are: a clear error, not a wrong model.
    monkeypatch.setattr(_inference, "_MODEL_CACHE", {})
    monkeypatch.setattr(_inference, "_MODULE_CACHE", {})
    monkeypatch.setattr(_shipping, "_LOCAL_MODELS", weakref.WeakValueDictionary())
    lost = pickle.loads(digest_only)
    with pytest.raises(ModelFileError, match="ship_model"):
        lost(x)


def test_a_worker_device_overrides_the_clients(
    make_model: MakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GPU workers started with GCNN_DEVICE run there, whatever the client resolved."""
    clf = Classifier(make_model(3, ("a", "b"), arch="cnn", seed=8), "cpu")
    state = {**clf.__getstate__(), "key": (clf.key[0], "cuda")}  # as a GPU client would send
    monkeypatch.setenv("GCNN_DEVICE", "cpu")
    outside = Classifier.__new__(Classifier)
    outside.__setstate__(state)
    assert outside.device.type == "cuda"  # not on a worker: the variable is ignored
    monkeypatch.setattr(distributed, "get_worker", lambda: object())
    on_worker = Classifier.__new__(Classifier)
    on_worker.__setstate__(state)
    assert on_worker.device.type == "cpu"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def job(
    tmp_path_factory: pytest.TempPathFactory, make_raster: MakeRaster, make_model: MakeModel
) -> dict[str, Any]:
    """A raster with nodata holes, a small CNN, and the threaded (reference) outputs."""
    folder = tmp_path_factory.mktemp("cluster")
    scene = make_raster(folder, "scene.tif", height=420, width=390, count=3, nan_holes=True)
    # A registered architecture: worker processes know "cnn", not the tests' stand-in.
    model = make_model(3, ("a", "b", "c"), arch="cnn", patch_size=16, seed=2)
    ref = {
        name: write_prediction(
            _pred(scene, model),
            folder / "ref" / name,
            probabilities=True,
            scheduler="threads",
            resume=False,
        )
        for name in ("map.tif", "map.zarr", "map.nc")
    }
    return {"scene": scene, "model": model, "ref": ref}


def _pred(scene: Path, model: GeoModel) -> xr.Dataset:
    # stride 4: 105 x 98 cells, blocks of 16 x 16 cells: 7 x 7 = 49 blocks.
    return predict(open_raster(scene, chunks=128), model, stride=4, block_cells=16)


def _read(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        with rasterio.open(path) as src:
            return src.read()
    with xr.open_dataset(path, mask_and_scale=False) as ds:
        return np.concatenate([ds["class"].values[None], ds["probability"].values])


def _assert_same(out: Path, ref: Path) -> None:
    np.testing.assert_array_equal(_read(out), _read(ref))
    extra = [p.name for p in out.parent.iterdir() if ".gcnn-" in p.name]
    assert extra == []  # nothing stray


def _has_plugin(client: Any, checksum: str) -> dict[str, bool]:
    name = gcc.plugin_name(checksum)
    return client.run(lambda dask_worker: name in dask_worker.plugins)  # type: ignore[no-any-return]


def _killer(kill: Callable[[], None], after: int) -> Callable[[int, int], None]:
    """A progress callback that calls ``kill`` once, when ``after`` blocks are finished."""
    fired: list[bool] = []

    def progress(done: int, total: int) -> None:
        if done >= after and not fired:
            fired.append(True)
            kill()

    progress.fired = fired  # type: ignore[attr-defined]
    return progress


# --------------------------------------------------------------------------- LocalCluster


@pytest.mark.slow
def test_local_cluster_writes_what_threads_write(job: dict[str, Any], tmp_path: Path) -> None:
    out = write_prediction(
        _pred(job["scene"], job["model"]),
        tmp_path / "map.tif",
        probabilities=True,
        scheduler="local:2",
    )
    _assert_same(out, job["ref"]["map.tif"])
    assert gcc.current_client() is None  # the cluster was closed


@pytest.fixture(scope="module")
def local_client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("name", ["map.tif", "map.zarr", "map.nc"])
def test_an_active_client_is_used_and_the_model_ships_once(
    job: dict[str, Any], local_client: Any, tmp_path: Path, name: str
) -> None:
    pred = _pred(job["scene"], job["model"])
    with gcc.use_scheduler() as session:
        assert session.client is local_client
        if importlib.util.find_spec("bokeh") is not None:  # the dashboard needs it
            assert session.dashboard_link and session.dashboard_link.startswith("http")
        else:  # the scheduler serves no dashboard: no link that answers 404
            assert session.dashboard_link is None
    out = write_prediction(pred, tmp_path / name, probabilities=True)
    _assert_same(out, job["ref"][name])
    assert all(_has_plugin(local_client, job["model"].checksum).values())
    assert gcc.is_shipped(job["model"].checksum)


@pytest.mark.slow
def test_local_worker_killed_mid_job(
    job: dict[str, Any], local_client: Any, tmp_path: Path
) -> None:
    """The nanny restarts the killed worker; the new worker gets the model from its plugin."""
    pids = local_client.run(os.getpid)
    victim = sorted(pids.values())[0]
    progress = _killer(lambda: os.kill(victim, signal.SIGKILL), after=3)
    out = write_prediction(
        _pred(job["scene"], job["model"]), tmp_path / "map.tif", probabilities=True,
        progress=progress, max_in_flight=8,
    )  # fmt: skip
    assert progress.fired  # type: ignore[attr-defined]
    _assert_same(out, job["ref"]["map.tif"])
    local_client.wait_for_workers(2, timeout=START_TIMEOUT_S)
    assert victim not in local_client.run(os.getpid).values()
    assert all(_has_plugin(local_client, job["model"].checksum).values())


# --------------------------------------------------------------------------- dask scheduler + dask worker


@pytest.mark.slow
def test_scheduler_and_worker_processes(
    job: dict[str, Any], dask_processes: DaskProcesses, tmp_path: Path
) -> None:
    """By address (COG) and by scheduler file (Zarr, written by the workers themselves)."""
    pred = _pred(job["scene"], job["model"])
    before = gcc.current_client()
    tif = write_prediction(
        pred, tmp_path / "out" / "map.tif", probabilities=True, scheduler=dask_processes.address()
    )
    _assert_same(tif, job["ref"]["map.tif"])
    zarr = write_prediction(
        pred,
        tmp_path / "out" / "map.zarr",
        probabilities=True,
        scheduler_file=dask_processes.scheduler_file,
    )
    _assert_same(zarr, job["ref"]["map.zarr"])
    assert gcc.current_client() is before  # disconnected again; the cluster still runs
    with distributed.Client(dask_processes.address(), timeout=START_TIMEOUT_S) as client:
        assert all(_has_plugin(client, job["model"].checksum).values())
        assert len(client.scheduler_info()["workers"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["map.tif", "map.zarr"])
def test_worker_process_killed_mid_job(
    job: dict[str, Any], dask_processes: DaskProcesses, tmp_path: Path, name: str
) -> None:
    victim = dask_processes.workers[0]
    progress = _killer(lambda: victim.send_signal(signal.SIGKILL), after=3)
    out = write_prediction(
        _pred(job["scene"], job["model"]), tmp_path / "out" / name, probabilities=True,
        scheduler=dask_processes.address(), progress=progress, max_in_flight=8,
    )  # fmt: skip
    assert progress.fired  # type: ignore[attr-defined]
    assert victim.wait(timeout=10) == -signal.SIGKILL
    _assert_same(out, job["ref"][name])


@pytest.mark.slow
def test_resource_annotation_keeps_the_model_on_gpu_workers(
    job: dict[str, Any], dask_processes: DaskProcesses, tmp_path: Path
) -> None:
    """docs/cluster.md: ``dask.annotate(resources={"GPU": 1})`` around ``predict``."""
    import dask

    with (
        distributed.Client(dask_processes.address(), timeout=START_TIMEOUT_S) as client,
        distributed.get_task_stream(client) as stream,
    ):
        # With the client active: predict's input check computes a few blocks, inside
        # the annotation, so on this cluster's GPU worker too.
        with dask.annotate(resources={"GPU": 1}):
            pred = _pred(job["scene"], job["model"])
        out = write_prediction(pred, tmp_path / "out" / "map.tif", probabilities=True)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    ran = {names[t["worker"]] for t in stream.data if str(t["key"][0]).startswith("predict-")}
    assert ran == {"worker-1"}
    _assert_same(out, job["ref"]["map.tif"])


def test_a_dashboard_link_only_where_the_scheduler_serves_one() -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
        gcc.use_scheduler(client) as session,
    ):
        assert session.distributed
        if importlib.util.find_spec("bokeh") is None:  # no dashboard: its page only says so
            assert session.dashboard_link is None
        else:
            assert session.dashboard_link and session.dashboard_link.startswith("http")


def test_streaming_gives_up_when_every_worker_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import dask
    from distributed import Client, LocalCluster

    from georaster_cnn.cluster import _client
    from georaster_cnn.errors import ClusterError

    monkeypatch.setattr(_client, "NO_WORKERS_TIMEOUT_S", 1.5)
    monkeypatch.setattr(_client, "POLL_S", 0.2)
    got: list[int] = []

    def on_done(ident: int, value: int) -> None:
        got.append(value)
        if len(got) == 2:  # lose the only worker while blocks are queued
            cluster.scale(0)

    slow = dask.delayed(lambda i: (time.sleep(0.2), i)[1])
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        started = time.monotonic()
        with pytest.raises(ClusterError, match=r"no worker .* for 2 s; start workers"):
            scheduler.stream_blocks(
                client, ((i, slow(i)) for i in range(20)), on_done, max_in_flight=4
            )
        assert time.monotonic() - started < 15  # bounded, not a hang
    assert got[:2] == [0, 1] or len(got) >= 2


@pytest.mark.slow
def test_losing_the_scheduler_keeps_the_finished_blocks(
    job: dict[str, Any],
    dask_processes: DaskProcesses,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 17 item 12: the scheduler dies mid-write; a rerun continues from the blocks."""
    from georaster_cnn.cluster import _client
    from georaster_cnn.errors import ClusterError
    from georaster_cnn.io.staging import has_resume_state

    monkeypatch.setattr(_client, "NO_WORKERS_TIMEOUT_S", 5.0)
    out = tmp_path / "out" / "map.tif"
    progress = _killer(lambda: dask_processes.procs[0].send_signal(signal.SIGKILL), after=3)
    with pytest.raises(ClusterError, match="kept"):
        write_prediction(
            _pred(job["scene"], job["model"]), out, probabilities=True,
            scheduler=dask_processes.address(), progress=progress, max_in_flight=2,
        )  # fmt: skip
    assert progress.fired  # type: ignore[attr-defined]
    assert not out.exists() and has_resume_state(out)
    first: list[int] = []
    again = write_prediction(
        _pred(job["scene"], job["model"]), out, probabilities=True, scheduler="threads",
        progress=lambda done, total: first.append(done) if not first else None,
    )  # fmt: skip
    assert first and first[0] >= 3  # resumed from the blocks finished before the loss
    _assert_same(again, job["ref"]["map.tif"])


def test_a_computation_on_a_client_gives_up_when_every_worker_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """evaluate and train compute through the client (not streamed): bounded too."""
    import threading
    import time

    import dask.array as dsa
    from distributed import Client, LocalCluster

    from georaster_cnn.cluster import _client
    from georaster_cnn.errors import ClusterError

    monkeypatch.setattr(_client, "NO_WORKERS_TIMEOUT_S", 1.5)
    monkeypatch.setattr(_client, "POLL_S", 0.2)

    def slow(block: Any) -> Any:
        time.sleep(0.2)
        return block

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        work = dsa.ones((40, 10), chunks=(1, 10)).map_blocks(slow).sum()
        threading.Timer(1.0, cluster.scale, [0]).start()
        started = time.monotonic()
        with gcc.use_scheduler(client), pytest.raises(ClusterError, match="no worker"):
            work.compute()  # a client given to use_scheduler is followed
        assert time.monotonic() - started < 20
