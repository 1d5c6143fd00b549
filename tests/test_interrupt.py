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

import numpy as np
import pytest
import rasterio

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
    # blocks finished before the signal (a rerun continues from it)
    assert all(p.name.startswith(".scene.tif.gcnn-resume-") for p in out.iterdir())


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
