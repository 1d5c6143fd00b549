"""``--scheduler`` / ``--scheduler-file`` on the CLI: same outputs on a local cluster, clean refusals."""

from __future__ import annotations

import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner, Result
from dask_processes import DaskProcesses
from georaster_cnn_cli._tiles import tiles_in_flight
from georaster_cnn_cli.main import cli

import georaster_cnn as gc

ENV: dict[str, str | None] = {"COLUMNS": "250", "NO_COLOR": "1", "FORCE_COLOR": None}


def run(args: Sequence[str | Path]) -> Result:
    return CliRunner(env=ENV).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def model_path(
    tmp_path_factory: pytest.TempPathFactory, make_model: Callable[..., gc.GeoModel]
) -> Path:
    # a built-in architecture: worker processes know it without this test's conftest
    path = tmp_path_factory.mktemp("cluster_model") / "model.safetensors"
    return gc.save_model(make_model(3, arch="cnn", patch_size=16, min_valid=0.5), path)


@pytest.fixture
def tiles(tmp_path: Path) -> list[Path]:
    """Three small 3-band float32 tiles."""
    out = []
    for i in range(3):
        rng = np.random.default_rng(i)
        path = tmp_path / "tiles" / f"tile_{i}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {
            "driver": "GTiff", "height": 48, "width": 64, "count": 3, "dtype": "float32",
            "crs": "EPSG:32633", "transform": rasterio.Affine(10, 0, 500000, 0, -10, 6000000),
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(rng.normal(0, 1, (3, 48, 64)).astype("float32"))
        out.append(path)
    return out


def predict(model: Path, inputs: Sequence[Path], outdir: Path, *extra: str) -> Result:
    return run(
        ["predict", model, *inputs, "-o", outdir, "--stride", "8", "--device", "cpu", *extra]
    )


def test_local_cluster_matches_threads(model_path: Path, tiles: list[Path], tmp_path: Path) -> None:
    threads = predict(model_path, tiles, tmp_path / "threads", "--scheduler", "threads")
    assert threads.exit_code == 0, threads.output
    local = predict(model_path, tiles, tmp_path / "local", "--scheduler", "local:2")
    assert local.exit_code == 0, local.output
    assert "3 written, 0 skipped, 0 failed" in local.stdout
    for tile in tiles:
        with (
            rasterio.open(tmp_path / "threads" / tile.name) as a,
            rasterio.open(tmp_path / "local" / tile.name) as b,
        ):
            assert a.profile == b.profile
            np.testing.assert_array_equal(a.read(), b.read())


@pytest.mark.parametrize("spec", ["local:0", "bogus", "local:x"])
def test_bad_scheduler_is_one_line(
    model_path: Path, tiles: list[Path], tmp_path: Path, spec: str
) -> None:
    result = predict(model_path, tiles, tmp_path / "out", "--scheduler", spec)
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1, result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_missing_scheduler_file(model_path: Path, tiles: list[Path], tmp_path: Path) -> None:
    missing = tmp_path / "scheduler.json"
    result = predict(model_path, tiles, tmp_path / "out", "--scheduler-file", str(missing))
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "scheduler.json" in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_scheduler_and_file_conflict(model_path: Path, tiles: list[Path], tmp_path: Path) -> None:
    sched = tmp_path / "s.json"
    sched.write_text("{}")
    result = predict(
        model_path,
        tiles,
        tmp_path / "out",
        "--scheduler",
        "local:2",
        "--scheduler-file",
        str(sched),
    )
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1, result.stderr


@pytest.mark.parametrize("command", ["predict", "evaluate", "train"])
def test_help_shows_scheduler(command: str) -> None:
    result = run([command, "--help"])
    assert "--scheduler SPEC" in result.stdout and "--scheduler-file PATH" in result.stdout


# --------------------------------------------------------------------------- tiles on a cluster


def test_tiles_in_flight_is_bounded() -> None:
    assert [tiles_in_flight(n) for n in (1, 2, 4, 6, 8, 64)] == [2, 2, 2, 3, 4, 4]


@pytest.fixture
def many_tiles(tmp_path: Path, make_raster: Callable[..., Path]) -> list[Path]:
    """Five small 3-band tiles (one prediction block each)."""
    return [
        make_raster(tmp_path / "tiles", f"t{i}.tif", height=160, width=192, count=3, seed=i)
        for i in range(5)
    ]


@pytest.fixture
def big_tiles(tmp_path: Path, make_raster: Callable[..., Path]) -> list[Path]:
    """Four 3-band tiles of 2 x 2 prediction blocks each (blocks are 1024 input pixels)."""
    return [
        make_raster(tmp_path / "big", f"b{i}.tif", height=1056, width=1056, count=3, seed=i)
        for i in range(4)
    ]


def _assert_same_maps(a: Path, b: Path, tiles: Sequence[Path]) -> None:
    for tile in tiles:
        with rasterio.open(a / tile.name) as x, rasterio.open(b / tile.name) as y:
            assert x.profile == y.profile
            np.testing.assert_array_equal(x.read(), y.read())
    assert [p.name for p in b.iterdir() if ".gcnn-" in p.name] == []  # nothing stray


def _rows(result: Result, tiles: Sequence[Path]) -> list[str]:
    """The summary table's inputs, in the order printed."""
    names = {str(t) for t in tiles}
    return [w for line in result.stdout.splitlines() for w in line.split() if w in names]


@pytest.fixture
def inproc_cluster() -> Iterator[str]:
    """A LocalCluster of 2 one-thread workers in this process, on a loopback TCP address."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
        host="127.0.0.1", dashboard_address=":0",
    ) as cluster:  # fmt: skip
        yield str(cluster.scheduler_address)


def test_cluster_runs_tiles_concurrently_bounded_with_their_own_warnings(
    model_path: Path,
    many_tiles: list[Path],
    tmp_path: Path,
    inproc_cluster: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2 worker threads: 2 tiles in flight at once, never more; each warning names its tile."""
    ref = predict(model_path, many_tiles, tmp_path / "threads", "--stride", "4")
    assert ref.exit_code == 0, ref.output
    real = gc.write_prediction
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most
    pair = threading.Barrier(2, timeout=20)  # two tiles meet here, or the test fails

    def write(pred: Any, path: Path, **kwargs: Any) -> Path:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
        try:
            if Path(path).stem != many_tiles[-1].stem:  # 5 tiles: the last one alone
                pair.wait()
            # both tiles of the pair are inside their warning blocks now
            warnings.warn(f"look at {Path(path).stem}", UserWarning, stacklevel=1)
            time.sleep(0.2)
            return real(pred, path, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(gc, "write_prediction", write)
    out = tmp_path / "cluster"
    result = predict(model_path, many_tiles, out, "--stride", "4", "--scheduler", inproc_cluster)
    assert result.exit_code == 0, result.output
    assert "5 written, 0 skipped, 0 failed" in result.stdout
    assert in_flight[1] == 2  # concurrent, and bounded by tiles_in_flight(2 threads)
    said = [line for line in result.stderr.splitlines() if "look at" in line]
    assert sorted(said) == sorted(f"warning: {t}: look at {t.stem}" for t in many_tiles)
    assert _rows(result, many_tiles) == [str(t) for t in many_tiles]  # input order
    _assert_same_maps(tmp_path / "threads", out, many_tiles)


def test_one_failing_tile_on_a_cluster_does_not_stop_the_others(
    model_path: Path, many_tiles: list[Path], tmp_path: Path, inproc_cluster: str
) -> None:
    broken = many_tiles[1]
    broken.write_bytes(broken.read_bytes()[:2000])  # truncated: fails when its pixels are read
    out = tmp_path / "cluster"
    result = predict(model_path, many_tiles, out, "--stride", "4", "--scheduler", inproc_cluster)
    assert result.exit_code == 1, result.output
    assert "4 written, 0 skipped, 1 failed" in result.stdout
    # (the in-process workers' own log records are error lines too: only the tiles' count)
    errors = [line for line in error_lines(result) if str(tmp_path) in line]
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: "), result.stderr
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tif") == sorted(
        t.name for t in many_tiles if t != broken
    )


@pytest.mark.slow
def test_scheduler_and_worker_processes_match_threads(
    model_path: Path,
    big_tiles: list[Path],
    tmp_path: Path,
    dask_processes: DaskProcesses,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`predict --scheduler tcp://...` on a scheduler and two worker processes, then with
    one of them SIGKILLed mid-job: the same maps as --scheduler threads."""
    ref = predict(model_path, big_tiles, tmp_path / "threads", "--stride", "16")
    assert ref.exit_code == 0, ref.output
    address = dask_processes.address()
    result = predict(
        model_path, big_tiles, tmp_path / "tcp", "--stride", "16", "--scheduler", address
    )
    assert result.exit_code == 0, result.output
    assert "4 written, 0 skipped, 0 failed" in result.stdout
    _assert_same_maps(tmp_path / "threads", tmp_path / "tcp", big_tiles)

    victim = dask_processes.workers[0]
    real = gc.write_prediction
    blocks = [0]

    def write(pred: Any, path: Path, **kwargs: Any) -> Path:
        report = kwargs["progress"]

        def progress(done: int, total: int) -> None:
            report(done, total)
            if done:
                blocks[0] += 1
                if blocks[0] == 3:  # 3 of 16 blocks in, 2 tiles in flight
                    victim.send_signal(signal.SIGKILL)

        return real(pred, path, **{**kwargs, "progress": progress})

    monkeypatch.setattr(gc, "write_prediction", write)
    killed = predict(
        model_path, big_tiles, tmp_path / "killed", "--stride", "16", "--scheduler", address
    )
    assert killed.exit_code == 0, killed.output
    assert victim.wait(timeout=10) == -signal.SIGKILL
    _assert_same_maps(tmp_path / "threads", tmp_path / "killed", big_tiles)


def test_ctrl_c_stops_the_tiles_in_flight(
    model_path: Path,
    big_tiles: list[Path],
    tmp_path: Path,
    inproc_cluster: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C (in the main thread) while 2 tiles are in flight: both stop at their next
    block, keep the resume state of their finished blocks, and no other tile starts."""
    real = gc.write_prediction
    started: list[str] = []

    def write(pred: Any, path: Path, **kwargs: Any) -> Path:
        started.append(Path(path).name)
        report = kwargs["progress"]

        def progress(done: int, total: int) -> None:
            if done == 1 and Path(path).name == big_tiles[0].name:
                # Ctrl-C: SIGINT to the main thread, which waits for the tiles
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            report(done, total)

        return real(pred, path, **{**kwargs, "progress": progress})

    monkeypatch.setattr(gc, "write_prediction", write)
    out = tmp_path / "out"
    result = predict(model_path, big_tiles, out, "--stride", "16", "--scheduler", inproc_cluster)
    assert result.exit_code == 130, result.output
    assert sorted(started) == ["b0.tif", "b1.tif"]
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]  # no map finished
    assert all(".gcnn-resume-" in p.name for p in out.iterdir())
    assert f"finished blocks of {out / 'b0.tif'}" in result.stderr
    assert "rerun the same command to continue (or --no-resume to start afresh)" in result.stderr


def test_netcdf_tiles_on_a_cluster_match_threads(
    model_path: Path, many_tiles: list[Path], tmp_path: Path, inproc_cluster: str
) -> None:
    """netCDF maps, written by the client while other tiles are in flight (the writer's
    threaded assembly stays local to it), equal threads' maps."""
    tiles = many_tiles[:3]
    ref = predict(model_path, tiles, tmp_path / "threads", "--format", "netcdf")
    assert ref.exit_code == 0, ref.output
    out = tmp_path / "cluster"
    result = predict(model_path, tiles, out, "--format", "netcdf", "--scheduler", inproc_cluster)
    assert result.exit_code == 0, result.output
    assert _rows(result, tiles) == [str(t) for t in tiles]
    for tile in tiles:
        name = tile.with_suffix(".nc").name
        with (
            xr.open_dataset(tmp_path / "threads" / name, mask_and_scale=False) as a,
            xr.open_dataset(out / name, mask_and_scale=False) as b,
        ):
            np.testing.assert_array_equal(a["class"].values, b["class"].values)
