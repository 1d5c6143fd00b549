"""Resumable training: a checkpoint after each epoch; a rerun after a kill ends with the same weights."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_raster

import georaster_cnn as gc

pytestmark = pytest.mark.filterwarnings("ignore::georaster_cnn.errors.ValidationWarning")

H, W = 96, 96
FAST = {
    "patch_size": 16, "stride": 3, "val_block": 32, "val_fraction": 0.2, "seed": 5,
    "hparams": {"widths": [4, 8]}, "batch_size": 16, "device": "cpu",
}  # fmt: skip


def _scene(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    lab = np.zeros((H, W), np.uint8)
    lab[:, W // 2 :] = 1
    lab[rng.random((H, W)) < 0.3] = 255
    vals = rng.standard_normal((3, H, W)).astype("float32")
    vals[:, lab == 1] *= 3
    data = write_raster(tmp, "scene.tif", height=H, width=W, count=3, values=vals, blocksize=48)
    labels = write_raster(
        tmp, "labels.tif", height=H, width=W, dtype="uint8", nodata=255, values=lab, blocksize=48
    )
    return data, labels


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Any, Any]:
    data, labels = _scene(tmp_path)
    return gc.open_raster(data, chunks=48), gc.open_labels(labels)


def _digest(model: gc.GeoModel) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.module.state_dict().items()):
        h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Kill(BaseException):
    """Stands for a kill at the end of an epoch (before its checkpoint is written)."""


def _killer(at: int) -> Any:
    def on_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        if epoch == at:
            raise _Kill

    return on_epoch


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_a_rerun_continues_and_ends_with_the_same_weights(
    scene: Any, tmp_path: Path, streamed: bool
) -> None:
    data, labels = scene
    extra: dict[str, Any] = {"stride": 6}  # few windows: fast
    if streamed:  # small shards, so that a budget of 1 MiB streams
        windows = {
            k: FAST[k] for k in ("patch_size", "stride", "val_block", "val_fraction", "seed")
        }
        store = gc.build_window_store(
            data, labels, tmp_path / "w.zarr", shard_windows=16, **windows
        )
        assert len(store) * store.window_bytes > 2**20
        extra = {"store": tmp_path / "w.zarr", "memory": 1, "stride": FAST["stride"]}
    whole = gc.train(data, labels, epochs=2, checkpoint=tmp_path / "a.ckpt", **{**FAST, **extra})
    assert "resumed" not in whole.provenance
    assert ("streamed" in whole.provenance) is streamed
    ckpt = tmp_path / "b.ckpt"
    with pytest.raises(_Kill):
        gc.train(data, labels, epochs=2, checkpoint=ckpt, on_epoch=_killer(2), **{**FAST, **extra})
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = gc.train(data, labels, epochs=2, checkpoint=ckpt, **{**FAST, **extra})
    assert resumed.provenance["resumed"] == {"after_epoch": 1}
    assert _digest(resumed) == _digest(whole)
    assert resumed.provenance["history"] == whole.provenance["history"]
    assert torch.load(ckpt, weights_only=True)["finished"]
    # a finished checkpoint gives the same model again without training
    seen: list[int] = []
    again = gc.train(data, labels, epochs=2, checkpoint=ckpt, on_epoch=lambda e, n, m: seen.append(e),
                     **{**FAST, **extra})  # fmt: skip
    assert seen == [] and _digest(again) == _digest(whole)


def test_no_resume_and_other_runs_start_afresh(
    scene: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, labels = scene
    few = {**FAST, "stride": 8}
    ckpt = tmp_path / "m.ckpt"
    with pytest.raises(_Kill):
        gc.train(data, labels, epochs=2, checkpoint=ckpt, on_epoch=_killer(2), **few)
    fresh = gc.train(data, labels, epochs=2, checkpoint=ckpt, resume=False, **few)
    assert "resumed" not in fresh.provenance
    with caplog.at_level(logging.WARNING, logger="georaster_cnn"):
        other = gc.train(data, labels, epochs=2, checkpoint=ckpt, **{**few, "seed": 6})
    assert "resumed" not in other.provenance
    assert "checkpoint of a run with other data or options" in caplog.text
    ckpt.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="georaster_cnn"):
        gc.train(data, labels, epochs=1, checkpoint=ckpt, **few)
    assert "not a readable checkpoint" in caplog.text


def _cli(*args: str) -> list[str]:
    code = "import sys; from georaster_cnn_cli.main import cli; sys.exit(cli())"
    return [sys.executable, "-c", code, *args]


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """The CLI killed with SIGKILL after a checkpoint, rerun as is: the same model file."""
    data, labels = _scene(tmp_path)
    common = [
        "-q", "train", str(data), "--labels", str(labels), "--stride", "4", "--val-block", "32",
        "--epochs", "4", "--batch-size", "16", "--device", "cpu", "--seed", "2",
        "--store", str(tmp_path / "w.zarr"), "--memory", "12",  # ~20 MiB of windows: streamed
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    whole = tmp_path / "whole.safetensors"
    subprocess.run(_cli(*common, "-o", str(whole)), check=True, env=env, timeout=600)
    out = tmp_path / "killed.safetensors"
    ckpt = gc.checkpoint_path(out)
    proc = subprocess.Popen(_cli(*common, "-o", str(out)), env=env)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists() and ckpt.exists()
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= done < 4
    subprocess.run(_cli(*common, "-o", str(out)), check=True, env=env, timeout=600)
    a, b = gc.load_model(whole), gc.load_model(out)
    assert _digest(a) == _digest(b)
    assert b.provenance["resumed"]["after_epoch"] == done
    assert a.provenance["streamed"] and a.provenance["n_train"] + a.provenance["n_val"] > 200
    assert not ckpt.exists()  # removed once the model is saved
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []
