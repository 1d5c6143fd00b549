"""``scheduler=`` on evaluate and train, and progress on any scheduler (``track_progress``).

Everything is compared with the threaded result: a report or a model never depends
on where its Dask work ran. The fast tests use an in-process ``LocalCluster``
(``processes=False``: a real scheduler and workers, threads for processes); the slow
ones start ``local:2`` (worker processes), as the CLI's ``--scheduler local:2`` does.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.progress import Progress

from georaster_cnn import (
    EvaluationReport,
    GeoModel,
    InputError,
    evaluate,
    open_labels,
    open_raster,
    predict,
    train,
)
from georaster_cnn import cluster as gcc

distributed = pytest.importorskip("distributed")

# A tiny scene: its validation set has fewer than 100 windows.
pytestmark = pytest.mark.filterwarnings("ignore::georaster_cnn.errors.ValidationWarning")

MakeRaster = Callable[..., Path]

H, W, STRIDE = 64, 1100, 4  # 16 x 275 cells: 2 blocks of 1024 px
TRAIN = {"patch_size": 16, "stride": 8, "hparams": {"widths": [4, 8]}, "batch_size": 32}
TRAIN.update(device="cpu", epochs=1, seed=3, val_fraction=0.25, val_block=32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, make_raster: MakeRaster) -> tuple[Path, Path]:
    """3 bands, brighter on the right (class 1) than on the left (class 0), with a hole.

    10 % of the labels are nodata.
    """
    folder = tmp_path_factory.mktemp("cluster_api")
    rng = np.random.default_rng(5)
    right = (np.arange(W) >= W // 2) * np.ones((H, 1))
    values = (rng.normal(0, 1, (3, H, W)) + right).astype("float32")
    values[:, 10:30, 100:160] = np.nan
    data = make_raster(folder, "scene.tif", height=H, width=W, count=3, values=values)
    lab = right.copy()
    lab[rng.random((H, W)) < 0.1] = 255
    labels = make_raster(
        folder, "labels.tif", height=H, width=W, dtype="uint8", nodata=255,
        values=lab.astype("uint8"),
    )  # fmt: skip
    return data, labels


@pytest.fixture(scope="module")
def inproc_cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        yield cluster


@pytest.fixture
def client(inproc_cluster: Any) -> Iterator[Any]:
    """An active client (the default one while the test runs)."""
    with distributed.Client(inproc_cluster) as c:
        yield c


def _evaluate(scene: tuple[Path, Path], model: GeoModel, **kw: Any) -> EvaluationReport:
    data, labels = scene
    lab = open_labels(labels)
    return evaluate(open_raster(data), model, lab, stride=STRIDE, device="cpu", **kw)


def _train(scene: tuple[Path, Path], **kw: Any) -> GeoModel:
    data, labels = scene
    return train(open_raster(data), open_labels(labels), **TRAIN, **kw)  # type: ignore[arg-type]


def _n_blocks(scene: tuple[Path, Path], model: GeoModel) -> int:
    """Blocks of cells an evaluation computes (each one output on a cluster)."""
    blocks = predict(open_raster(scene[0]), model, stride=STRIDE)["class"].data.numblocks
    assert math.prod(blocks) >= 2  # the case exercises several
    return math.prod(blocks)


def _same_report(a: EvaluationReport, b: EvaluationReport) -> None:
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert a.n_excluded == b.n_excluded
    assert a.n_evaluated > 0


def _weights(model: GeoModel) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _same_model(a: GeoModel, b: GeoModel) -> None:
    assert _weights(a) == _weights(b)
    for key in ("windows_per_class", "split", "n_train", "n_val", "class_counts"):
        assert a.provenance[key] == b.provenance[key], key


@pytest.fixture(scope="module")
def reference(scene: tuple[Path, Path]) -> dict[str, Any]:
    """The threaded results everything else is compared with."""
    trained = _train(scene, scheduler="threads")
    report = _evaluate(scene, trained, scheduler="threads")
    assert (report.predicted > 0).all()  # both classes: the comparisons mean something
    return {"report": report, "model": trained}


@pytest.fixture(scope="module")
def model(reference: dict[str, Any]) -> GeoModel:
    """The model evaluated (``cnn_dense``, registered: worker processes know it)."""
    return reference["model"]  # type: ignore[no-any-return]


class _Calls:
    """A progress callback that records its calls (from any thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            self.calls.append((done, total))

    def check_finished(self, at_least: int) -> None:
        assert self.calls, "no progress reported"
        done, total = self.calls[-1]
        assert done == total >= at_least
        assert all(d <= t for d, t in self.calls)
        assert [d for d, _ in self.calls] == sorted(d for d, _ in self.calls)  # never back


# --------------------------------------------------------------------------- scheduler=


def test_an_active_client_is_used_and_gives_the_threaded_report(
    scene: tuple[Path, Path], model: GeoModel, reference: dict[str, Any], client: Any
) -> None:
    _same_report(_evaluate(scene, model), reference["report"])
    assert gcc.is_shipped(model.checksum)  # the model went to the workers once
    assert gcc.current_client() is client  # an active client is left as it was


def test_a_client_passed_as_scheduler_gives_the_threaded_results(
    scene: tuple[Path, Path], model: GeoModel, reference: dict[str, Any], inproc_cluster: Any
) -> None:
    with distributed.Client(inproc_cluster, set_as_default=False) as c:
        _same_report(_evaluate(scene, model, scheduler=c), reference["report"])
        _same_model(_train(scene, scheduler=c), reference["model"])
        assert gcc.current_client() is None  # only for the call


def test_training_windows_on_an_active_client_give_the_same_model(
    scene: tuple[Path, Path], reference: dict[str, Any], client: Any
) -> None:
    _same_model(_train(scene), reference["model"])


def _vector_labels(scene: tuple[Path, Path]) -> Any:
    """Points all over the scene and a polygon on each half, classes as ids."""
    import geopandas as gpd
    from rasterio.transform import xy
    from shapely.geometry import box

    data = open_raster(scene[0])
    t = data.rio.transform()
    rng = np.random.default_rng(8)
    rows, cols = rng.integers(0, H, 80), rng.integers(0, W, 80)
    xs, ys = xy(t, rows, cols)
    (x0, y0), (x1, y1) = t * (0, H), t * (W, 0)
    polys = [box(x0 + 0.05 * (x1 - x0), y0, x0 + 0.3 * (x1 - x0), y1),
             box(x0 + 0.7 * (x1 - x0), y0, x0 + 0.95 * (x1 - x0), y1)]  # fmt: skip
    return gpd.GeoDataFrame(
        {"cls": [*(cols >= W // 2).astype(int), 0, 1]},
        geometry=[*gpd.points_from_xy(xs, ys), *polys],
        crs=data.rio.crs,
    )


def test_vector_labels_on_a_client_give_the_threaded_results(
    scene: tuple[Path, Path], model: GeoModel, client: Any
) -> None:
    """Points are cut on the cluster and classified here; polygons rasterised on the cluster."""
    data, labels = open_raster(scene[0]), _vector_labels(scene)
    kw: dict[str, Any] = {"label_column": "cls", "stride": STRIDE, "device": "cpu"}
    threads = evaluate(data, model, labels, scheduler="threads", **kw)
    assert threads.unit == "cells+points"
    _same_report(evaluate(data, model, labels, **kw), threads)
    opts = {**TRAIN, "label_column": "cls", "class_names": ["class_0", "class_1"]}
    _same_model(
        train(data, labels, **opts, scheduler="threads"),  # type: ignore[arg-type]
        train(data, labels, **opts),  # type: ignore[arg-type]
    )


def test_threads_ignores_an_active_client(
    scene: tuple[Path, Path], model: GeoModel, reference: dict[str, Any], client: Any
) -> None:
    calls = _Calls()  # the threaded scheduler reports every task to local callbacks
    with gcc.track_progress(calls):
        report = _evaluate(scene, model, scheduler="threads")
    _same_report(report, reference["report"])
    calls.check_finished(at_least=10)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"scheduler": "bogus"}, r"unknown scheduler 'bogus'; expected threads, local"),
        ({"scheduler": "local:0"}, "at least 1 worker"),
        ({"scheduler": "127.0.0.1:8786"}, "tcp://"),
        ({"scheduler_file": "missing.json"}, "scheduler file missing.json does not exist"),
        ({"scheduler": "threads", "scheduler_file": "s.json"}, "name the cluster one way only"),
    ],
)
def test_bad_scheduler_values_are_input_errors(
    scene: tuple[Path, Path], model: GeoModel, kw: dict[str, str], match: str
) -> None:
    with pytest.raises(InputError, match=match):
        _evaluate(scene, model, **kw)
    with pytest.raises(InputError, match=match):
        _train(scene, **kw)


# --------------------------------------------------------------------------- progress


def test_progress_on_a_client_reaches_the_total(
    scene: tuple[Path, Path], model: GeoModel, reference: dict[str, Any], client: Any
) -> None:
    """Dask's local callbacks never fire here; the outputs are followed instead."""
    calls = _Calls()
    with gcc.track_progress(calls):
        assert gcc.current_client() is client  # seen through the followed scheduler
        report = _evaluate(scene, model)
    _same_report(report, reference["report"])
    calls.check_finished(at_least=_n_blocks(scene, model))  # one output per block and more

    calls = _Calls()
    with gcc.track_progress(calls):
        trained = _train(scene)
    _same_model(trained, reference["model"])
    calls.check_finished(at_least=2)


def test_progress_follows_a_cluster_connected_inside(
    scene: tuple[Path, Path], model: GeoModel, reference: dict[str, Any], inproc_cluster: Any
) -> None:
    calls = _Calls()
    with (
        distributed.Client(inproc_cluster, set_as_default=False) as c,
        gcc.track_progress(calls),
    ):
        report = _evaluate(scene, model, scheduler=c)
    _same_report(report, reference["report"])
    calls.check_finished(at_least=_n_blocks(scene, model))


def test_a_failing_task_on_a_client_raises_and_stops(client: Any) -> None:
    import dask

    def boom(x: int) -> int:
        raise RuntimeError(f"block {x} failed")

    calls = _Calls()
    tasks = [dask.delayed(boom)(i) for i in range(3)]
    with gcc.track_progress(calls), pytest.raises(RuntimeError, match="failed"):
        dask.compute(*tasks)
    assert calls.calls and calls.calls[-1][0] < calls.calls[-1][1]


def test_the_cli_bar_reaches_its_total_on_a_client(
    scene: tuple[Path, Path], model: GeoModel, client: Any
) -> None:
    from georaster_cnn_cli._progress import DaskProgress

    with Progress(disable=True) as progress:
        task = progress.add_task("evaluating", total=None)
        with DaskProgress(progress, task):
            _evaluate(scene, model)
        state = progress.tasks[0]
    assert state.total is not None and state.total >= _n_blocks(scene, model)
    assert state.completed == state.total


# --------------------------------------------------------------------------- local:2


@pytest.mark.slow
def test_local_cluster_gives_the_threaded_results(
    scene: tuple[Path, Path], model: GeoModel, reference: dict[str, Any]
) -> None:
    calls = _Calls()
    with gcc.track_progress(calls):  # follows the cluster evaluate starts
        _same_report(_evaluate(scene, model, scheduler="local:2"), reference["report"])
    calls.check_finished(at_least=_n_blocks(scene, model))
    _same_model(_train(scene, scheduler="local:2"), reference["model"])
    assert gcc.current_client() is None  # the clusters were closed


def test_netcdf_writing_leaves_the_process_scheduler_alone(
    scene: tuple[Path, Path], model: GeoModel, client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The netCDF writer assembles its file on threads for that computation only: work
    running beside it in other threads (concurrent tiles) stays on the cluster."""
    import dask
    import xarray as xr

    from georaster_cnn import write_prediction

    seen: list[object] = []
    real = xr.Dataset.to_netcdf

    def spying(self: xr.Dataset, *args: Any, **kwargs: Any) -> Any:
        seen.append(dask.config.get("scheduler", None))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", spying)
    before = dask.config.get("scheduler", None)
    out = write_prediction(
        predict(open_raster(scene[0]), model, stride=STRIDE), tmp_path / "map.nc"
    )
    assert seen == [before]  # no process-wide scheduler while the file is assembled
    with xr.open_dataset(out) as ds:
        assert ds["class"].shape == (H // STRIDE, math.ceil(W / STRIDE))
