"""Interruptions: Ctrl-C, SIGTERM and SIGKILL during ``predict`` leave nothing half-done.

A real ``georaster-cnn predict`` process is signalled once its staged output exists
(it is then computing blocks); after SIGINT and SIGTERM it cleans up and exits
130/143; after three SIGKILLs a rerun removes the dead run's temporaries and writes the
same map as an uninterrupted run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result
from georaster_cnn_cli.main import cli

import georaster_cnn as gc
from georaster_cnn import GeoModel, save_model

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", "from georaster_cnn_cli.main import cli; cli()", *map(str, args)]


@pytest.fixture
def job(
    tmp_path: Path, make_raster: Callable[..., Path], make_model: Callable[..., GeoModel]
) -> tuple[Path, Path]:
    model = save_model(make_model(1, arch="cnn", patch_size=16), tmp_path / "m.safetensors")
    scene = make_raster(tmp_path, "scene.tif", height=1024, width=1024, count=1, seed=5)
    return model, scene


def _start_and_wait_for_staging(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and any(".gcnn-" in p.name for p in out.iterdir()):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"predict never staged an output: {proc.communicate()[1].decode()[-2000:]}")


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_clean_up_and_exit_128_plus_signal(
    tmp_path: Path, job: tuple[Path, Path], sig: int, status: int
) -> None:
    model, scene = job
    out = tmp_path / "out"
    proc = _start_and_wait_for_staging(
        _cli("predict", model, scene, "-o", out, "--stride", "2"), out
    )
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err.decode()[-2000:]
    assert "no partial output left in place" in err.decode()
    # nothing half-written under a final name; at most the hidden resume state of the
    # blocks finished before the signal (a rerun continues from it, and the message says so)
    assert all(p.name.startswith(".scene.tif.gcnn-resume-") for p in out.iterdir())
    if any(out.iterdir()):
        assert "rerun the same command to continue" in err.decode()


@pytest.mark.slow
def test_sigkilled_run_then_rerun_gives_the_uninterrupted_map(
    tmp_path: Path, job: tuple[Path, Path]
) -> None:
    model, scene = job
    out = tmp_path / "out"
    args = _cli("predict", model, scene, "-o", out, "--stride", "2")
    rng = np.random.default_rng(11)
    for _ in range(3):  # three SIGKILLs at random moments of the computation
        proc = _start_and_wait_for_staging(args, out)
        time.sleep(float(rng.uniform(0.0, 2.0)))
        proc.kill()
        proc.communicate()
    assert any(".gcnn-" in p.name for p in out.iterdir())  # a dead run's temporaries
    assert not (out / "scene.tif").exists()
    subprocess.run(args, check=True, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == ["scene.tif", "scene.tif.aux.xml"]
    ref = tmp_path / "ref"
    subprocess.run(_cli("predict", model, scene, "-o", ref, "--stride", "2"), check=True)
    with rasterio.open(out / "scene.tif") as a, rasterio.open(ref / "scene.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.transform == b.transform and a.crs == b.crs


# --------------------------------------------------------------------------- resume, in process


_WRITE = gc.write_prediction  # the library's, whatever a test patches


def _interrupting(after: int) -> Callable[..., Path]:
    """``write_prediction`` that raises Ctrl-C once ``after`` blocks are finished (0: never);
    it records the finished count of its first progress report in ``.first``."""
    first: list[int] = []

    def write(pred: Any, path: Path, **kwargs: Any) -> Path:
        cli_progress = kwargs.get("progress")

        def progress(done: int, total: int) -> None:
            if not first:
                first.append(done)
            if cli_progress is not None:  # the CLI's own (the bar on a cluster, the resume note)
                cli_progress(done, total)
            if after and done >= after:
                raise KeyboardInterrupt

        return _WRITE(pred, path, **{**kwargs, "progress": progress})

    write.first = first  # type: ignore[attr-defined]
    return write


def _resume_state(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".gcnn-resume-" in p.name)


def test_interrupted_blocks_are_kept_and_no_resume_discards_them(
    tmp_path: Path,
    make_raster: Callable[..., Path],
    make_model: Callable[..., GeoModel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = save_model(make_model(1, arch="cnn", patch_size=16), tmp_path / "m.safetensors")
    scene = make_raster(tmp_path, "scene.tif", height=1024, width=3072, count=1, seed=3)
    out, ref = tmp_path / "out", tmp_path / "ref"
    args = ["predict", model, scene, "-o", out, "--stride", "16", "--device", "cpu"]

    def run(*extra: str, after: int = 0) -> tuple[Result, list[int]]:
        write = _interrupting(after)
        monkeypatch.setattr(gc, "write_prediction", write)
        runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})
        result = runner.invoke(cli, [str(a) for a in [*args, *extra]], catch_exceptions=False)
        return result, write.first  # type: ignore[attr-defined]

    # interrupted after a block (of 3): its record is kept, and the message says so
    result, _ = run(after=1)
    assert result.exit_code == 130, result.output
    assert (
        f"finished blocks of {out / 'scene.tif'} are kept: rerun the same command to continue (or --no-resume to start afresh)"
        in result.stderr
    )
    assert _resume_state(out) and not (out / "scene.tif").exists()
    # --no-resume discards them when it starts and keeps nothing of its own
    result, first = run("--no-resume", after=1)
    assert result.exit_code == 130 and first == [0], result.output
    assert "rerun" not in result.stderr
    assert list(out.iterdir()) == []
    # interrupted again, then the same command continues from the kept block
    run(after=1)
    result, first = run()
    assert result.exit_code == 0 and first == [1], result.output
    assert f"{scene}: resuming: 1 of 3 blocks already done" in result.stderr  # it says so
    assert sorted(p.name for p in out.iterdir()) == ["scene.tif", "scene.tif.aux.xml"]
    monkeypatch.undo()
    assert (
        CliRunner()
        .invoke(cli, [*map(str, args[:3]), "-o", str(ref), *map(str, args[5:])])
        .exit_code
        == 0
    )
    with rasterio.open(out / "scene.tif") as a, rasterio.open(ref / "scene.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_help_shows_resume() -> None:
    result = CliRunner().invoke(cli, ["predict", "--help"])
    assert "--resume / --no-resume" in result.stdout


# --------------------------------------------------------------------------- tiles on a cluster


@pytest.mark.slow
def test_ctrl_c_during_concurrent_tiles_on_a_cluster(
    tmp_path: Path,
    make_raster: Callable[..., Path],
    make_model: Callable[..., GeoModel],
    dask_processes: Any,
) -> None:
    """Ctrl-C while tiles run concurrently on a scheduler + 2 workers: exit 130 after the
    tiles in flight stop at their next block; only finished maps and resume state are
    left; the same command then completes with the maps of --scheduler threads."""
    model = save_model(make_model(1, arch="cnn", patch_size=16), tmp_path / "m.safetensors")
    for i in range(4):  # 2 blocks each; 2 tiles in flight on 2 worker threads
        make_raster(tmp_path / "tiles", f"t{i}.tif", height=1024, width=2048, seed=i)
    out = tmp_path / "out"
    args = _cli("predict", model, tmp_path / "tiles", "-o", out, "--stride", "4")
    args += ["--scheduler", dask_processes.address()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and any(
            p.name.endswith(".blocks") and p.stat().st_size for p in out.iterdir()
        ):
            break  # a block of some tile is recorded: the job is under way
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "no partial output left in place" in err.decode()
    finished = [p for p in out.iterdir() if p.suffix == ".tif" and ".gcnn-" not in p.name]
    assert len(finished) < 4  # stopped before the end
    if any(".gcnn-resume-" in p.name for p in out.iterdir()):
        assert "rerun the same command to continue" in err.decode()
    for p in out.iterdir():  # finished maps, and the resume state of unfinished ones
        assert ".gcnn-resume-" in p.name or p.name.endswith((".tif", ".tif.aux.xml")), p
        if p in finished:
            with rasterio.open(p) as src:
                src.read()
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    ref = CliRunner().invoke(
        cli,
        [
            str(a)
            for a in ["predict", model, tmp_path / "tiles", "-o", tmp_path / "ref", "--stride", "4"]
        ],
    )
    assert ref.exit_code == 0, ref.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n for i in range(4) for n in (f"t{i}.tif", f"t{i}.tif.aux.xml")
    )
    for i in range(4):
        with (
            rasterio.open(out / f"t{i}.tif") as a,
            rasterio.open(tmp_path / "ref" / f"t{i}.tif") as b,
        ):
            np.testing.assert_array_equal(a.read(), b.read())
