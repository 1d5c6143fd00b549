"""Resume at block level: a killed or interrupted write continues from its finished blocks.

Interruptions are made deterministic with the ``progress`` callback (it raises
``KeyboardInterrupt`` after a few blocks, on the single-threaded scheduler); the
SIGKILL test kills a real process. Every resumed output must equal, cell for cell,
the output of an uninterrupted run, and nothing may be left beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from georaster_cnn import GeoModel, OutputExistsError, open_raster, predict, write_prediction
from georaster_cnn.io._resume import _CRC, _HEAD, _MAGIC, BlockJournal, JournalPlan, _pack
from georaster_cnn.io.staging import remove_stale_temporaries, staged

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks and signals")


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _resume_files(folder: Path) -> list[str]:
    return [n for n in _names(folder) if ".gcnn-resume-" in n]


class _Stop:
    """A progress callback that interrupts the write after ``after`` newly finished blocks."""

    def __init__(self, after: int | None = None) -> None:
        self.after = after
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if self.after is not None and len(self.calls) > self.after:  # call 0: the start
            raise KeyboardInterrupt

    @property
    def resumed_from(self) -> int:
        """Blocks already finished when the write started."""
        return self.calls[0][0]


@pytest.fixture
def scene(tmp_path: Path, make_raster: MakeRaster) -> Path:
    return make_raster(
        tmp_path / "in", "scene.tif", height=300, width=260, count=2, nan_holes=True, seed=3
    )


@pytest.fixture
def model(make_model: MakeModel) -> GeoModel:
    return make_model(2, ("a", "b", "c"), arch="cnn", patch_size=16)


def _pred(scene: Path, model: GeoModel, stride: int = 4) -> xr.Dataset:
    # Blocks of 8 x 8 cells: 10 x 9 blocks at stride 4.
    return predict(open_raster(scene), model, stride=stride, block_cells=8)


def _read(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        with rasterio.open(path) as src:
            return src.read()
    with xr.open_dataset(path, mask_and_scale=False, engine=None) as ds:
        parts = [ds["class"].values[None]]
        if "probability" in ds:
            parts.append(ds["probability"].values)
        return np.concatenate(parts)


@pytest.mark.parametrize(
    ("name", "probabilities"), [("map.tif", True), ("map.zarr", True), ("map.nc", False)]
)
def test_interrupted_write_resumes_to_the_uninterrupted_output(
    tmp_path: Path, scene: Path, model: GeoModel, name: str, probabilities: bool
) -> None:
    ref = write_prediction(
        _pred(scene, model), tmp_path / "ref" / name, probabilities=probabilities, resume=False
    )
    out = tmp_path / "out" / name
    stop = _Stop(after=7)
    with pytest.raises(KeyboardInterrupt):
        write_prediction(
            _pred(scene, model), out, probabilities=probabilities, scheduler="sync", progress=stop
        )
    assert stop.resumed_from == 0
    assert not out.exists()
    assert _resume_files(out.parent)  # kept for the rerun

    again = _Stop()
    write_prediction(_pred(scene, model), out, probabilities=probabilities, progress=again)
    assert again.resumed_from == 7  # the finished blocks were not computed again
    assert again.calls[-1] == (90, 90)
    np.testing.assert_array_equal(_read(out), _read(ref))
    expected = [name, f"{name}.aux.xml"] if name.endswith(".tif") else [name]
    assert _names(out.parent) == expected  # nothing stray


@pytest.mark.parametrize("change", ["stride", "model", "input", "probabilities"])
def test_a_changed_model_option_or_input_never_reuses_blocks(
    tmp_path: Path,
    scene: Path,
    model: GeoModel,
    make_model: MakeModel,
    change: str,
) -> None:
    out = tmp_path / "out" / "map.tif"
    with pytest.raises(KeyboardInterrupt):
        write_prediction(_pred(scene, model), out, scheduler="sync", progress=_Stop(after=5))
    left = _resume_files(out.parent)
    assert left

    stride, probabilities = 4, False
    if change == "stride":
        stride = 8
    elif change == "model":
        model = make_model(2, ("a", "b", "c"), arch="cnn", patch_size=16, seed=1)
    elif change == "input":
        st = scene.stat()
        os.utime(scene, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    else:
        probabilities = True
    again = _Stop()
    write_prediction(
        _pred(scene, model, stride=stride), out, probabilities=probabilities, progress=again
    )
    assert again.resumed_from == 0
    assert _names(out.parent) == ["map.tif", "map.tif.aux.xml"]  # the old blocks are gone
    ref = write_prediction(
        _pred(scene, model, stride=stride),
        tmp_path / "ref.tif",
        probabilities=probabilities,
        resume=False,
    )
    np.testing.assert_array_equal(_read(out), _read(ref))


def test_without_resume_an_interruption_leaves_nothing(
    tmp_path: Path, scene: Path, model: GeoModel
) -> None:
    out = tmp_path / "out" / "map.tif"
    with pytest.raises(KeyboardInterrupt):
        write_prediction(
            _pred(scene, model), out, scheduler="sync", resume=False, progress=_Stop(after=5)
        )
    assert _names(out.parent) == []


def test_an_error_removes_the_resume_state(
    tmp_path: Path, scene: Path, model: GeoModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only interruptions keep blocks for a rerun; a failed write leaves nothing."""
    out = tmp_path / "out" / "map.tif"

    def failing(done: int, total: int) -> None:
        if done >= 3:
            raise RuntimeError("simulated failure")

    with pytest.raises(RuntimeError, match="simulated"):
        write_prediction(_pred(scene, model), out, scheduler="sync", progress=failing)
    assert _names(out.parent) == []


def test_resume_state_is_exempt_from_the_dead_process_cleanup(
    tmp_path: Path, scene: Path, model: GeoModel
) -> None:
    out = tmp_path / "out" / "map.tif"
    with pytest.raises(KeyboardInterrupt):
        write_prediction(_pred(scene, model), out, scheduler="sync", progress=_Stop(after=3))
    before = _resume_files(out.parent)
    assert remove_stale_temporaries(out) == []
    assert _resume_files(out.parent) == before


def test_a_live_run_keeps_its_state_and_blocks_a_second_run_with_the_same_key(
    tmp_path: Path,
) -> None:
    out = tmp_path / "map.tif"
    with staged(out, suffix=".tif", resume_key="a" * 20) as st:
        st.resumable(".blocks").write_bytes(b"x")
        # Another key's write does not remove what a live run holds...
        with staged(out, suffix=".tif", resume_key="b" * 20) as other:
            other.path.write_bytes(b"y")
            assert st.path.exists() and st.resumable(".blocks").exists()
        # ...and the same key is refused while the first run holds it.
        with (
            pytest.raises(OutputExistsError, match="another run is writing"),
            staged(out, suffix=".tif", resume_key="a" * 20),
        ):
            pass
        st.path.write_bytes(b"z")
    assert out.read_bytes() == b"z"
    assert _names(tmp_path) == ["map.tif"]


# --------------------------------------------------------------------------- the journal


def test_a_torn_last_record_is_dropped_and_overwritten(tmp_path: Path) -> None:
    path, manifest = tmp_path / "j.blocks", tmp_path / "j.manifest.json"
    fields = {"model": "m", "stride": 4}
    blocks = {(0, 0): np.full((2, 3, 4), 7, np.uint8), (0, 1): np.arange(24, dtype=np.uint8)}
    with BlockJournal(path, manifest, fields, keep_data=True) as j:
        j.record((0, 0), blocks[(0, 0)])
        j.record((0, 1), blocks[(0, 1)].reshape(2, 3, 4))
    with open(path, "r+b") as f:  # a process killed in the middle of the second record
        f.truncate(path.stat().st_size - 5)
    with BlockJournal(path, manifest, fields, keep_data=True) as j:
        assert j.done == {(0, 0)}
        np.testing.assert_array_equal(j.read((0, 0)), blocks[(0, 0)])
        j.record((1, 0), np.ones((1, 2, 2), np.uint8))
    with BlockJournal(path, manifest, fields, keep_data=True) as j:
        assert j.done == {(0, 0), (1, 0)}
        assert [ij for ij, _ in j.blocks()] == [(0, 0), (1, 0)]


def test_a_different_manifest_starts_afresh(tmp_path: Path) -> None:
    path, manifest = tmp_path / "j.blocks", tmp_path / "j.manifest.json"
    with BlockJournal(path, manifest, {"stride": 4}, keep_data=False) as j:
        j.record((0, 0))
    with BlockJournal(path, manifest, {"stride": 4}, keep_data=False) as j:
        assert j.done == {(0, 0)}
    with BlockJournal(path, manifest, {"stride": 8}, keep_data=False) as j:
        assert j.done == set()


def _journal(folder: Path) -> Path:
    (name,) = [n for n in _names(folder) if n.endswith(".blocks")]
    return folder / name


def _bad_record(edit: str, journal: Path) -> bytes:
    """A record that passes its CRC but not the plan, made from the journal's first record."""
    _, _, i, j, bands, ny, nx, _ = _HEAD.unpack_from(journal.read_bytes()[: _HEAD.size])
    shape = (bands, ny, nx)
    block = np.zeros(shape, np.uint8)
    if edit == "index":
        return _pack((99, j), shape, zlib.compress(block.tobytes()))
    if edit == "shape":
        return _pack(
            (i, j),
            (bands, ny + 1, nx),
            zlib.compress(np.zeros((bands, ny + 1, nx), np.uint8).tobytes()),
        )
    if edit == "dtype":
        return _pack((i, j), shape, zlib.compress(block.tobytes()), dtype=b"f4")
    if edit == "float bytes":  # the right head, four times the bytes (float32 data)
        return _pack((i, j), shape, zlib.compress(block.astype(np.float32).tobytes()))
    if edit == "class":
        block[0, 0, 0] = 7  # three classes: 0, 1, 2 (or 255)
        return _pack((i, j), shape, zlib.compress(block.tobytes()))
    if edit == "percent":
        block[1, 0, 0] = 150
        return _pack((i, j), shape, zlib.compress(block.tobytes()))
    if edit == "length":  # an enormous length field (and no payload)
        head = _HEAD.pack(_MAGIC, b"u1", i, j, bands, ny, nx, 2**62)
        return head + _CRC.pack(zlib.crc32(head))
    if edit == "completion index":  # Zarr: a journal of completions, no shape, no payload
        return _pack((99, 0), (0, 0, 0), b"")
    raise AssertionError(edit)


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        *(
            ("map.tif", e)
            for e in ("index", "shape", "dtype", "float bytes", "class", "percent", "length")
        ),
        ("map.nc", "class"),
        ("map.zarr", "completion index"),
    ],
)
def test_an_edited_journal_is_discarded_and_the_rerun_is_complete_and_correct(
    tmp_path: Path,
    scene: Path,
    model: GeoModel,
    name: str,
    edit: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record whose CRC matches but that does not fit the output: never used, never a crash."""
    probabilities = name != "map.nc"
    out = tmp_path / "out" / name
    with pytest.raises(KeyboardInterrupt):
        write_prediction(
            _pred(scene, model),
            out,
            probabilities=probabilities,
            scheduler="sync",
            progress=_Stop(after=7),
        )
    journal = _journal(out.parent)
    record = _bad_record(edit, journal)
    with open(journal, "ab") as f:
        f.write(record)

    again = _Stop()
    write_prediction(_pred(scene, model), out, probabilities=probabilities, progress=again)
    assert again.resumed_from == 0  # nothing of the edited journal was trusted
    assert again.calls[-1] == (90, 90)
    assert "discarding the journal" in caplog.text
    ref = write_prediction(
        _pred(scene, model), tmp_path / "ref" / name, probabilities=probabilities, resume=False
    )
    np.testing.assert_array_equal(_read(out), _read(ref))
    expected = [name, f"{name}.aux.xml"] if name.endswith(".tif") else [name]
    assert _names(out.parent) == expected


def test_a_plan_bounds_every_record_before_reading_it(tmp_path: Path) -> None:
    path, manifest = tmp_path / "j.blocks", tmp_path / "j.manifest.json"
    plan = JournalPlan(rows=(4, 2), columns=(3,), bands=1, classes=2)
    good = np.array([[[0, 1, 255]] * 4], np.uint8)
    with BlockJournal(path, manifest, {}, keep_data=True, plan=plan) as j:
        j.record((0, 0), good)
        j.record((1, 0), good[:, :2])
    with BlockJournal(path, manifest, {}, keep_data=True, plan=plan) as j:
        assert j.done == {(0, 0), (1, 0)}
        np.testing.assert_array_equal(j.read((0, 0)), good)
    with open(path, "ab") as f:  # the last block again, with the first block's shape
        f.write(_pack((1, 0), (1, 4, 3), zlib.compress(good.tobytes())))
    with BlockJournal(path, manifest, {}, keep_data=True, plan=plan) as j:
        assert j.done == set()
    assert path.stat().st_size == 0  # discarded


# --------------------------------------------------------------------------- SIGKILL

_WRITER = textwrap.dedent(
    """
    import sys
    import georaster_cnn as gc

    model = gc.load_model(sys.argv[1])
    pred = gc.predict(gc.open_raster(sys.argv[2]), model, stride=2, block_cells=32)

    def progress(done, total):
        print(done, total, flush=True)

    gc.write_prediction(pred, sys.argv[3], progress=progress)
    """
)


@pytest.mark.slow
def test_sigkilled_write_resumes_from_its_finished_blocks(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    from georaster_cnn import save_model

    model_path = save_model(make_model(1, arch="cnn", patch_size=16), tmp_path / "m.safetensors")
    scene = make_raster(tmp_path, "scene.tif", height=512, width=512, count=1, seed=5)
    out = tmp_path / "out" / "scene.tif"
    args = [sys.executable, "-c", _WRITER, str(model_path), str(scene), str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        first = proc.stdout.readline().split()  # "0 64": the work is known
        assert first == ["0", "64"]
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or int(line.split()[0]) >= 20:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert not out.exists()
    assert _resume_files(out.parent)

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
    lines = rerun.stdout.split()
    assert 20 <= int(lines[0]) < 64  # continued from the blocks recorded before the kill
    assert _names(out.parent) == ["scene.tif", "scene.tif.aux.xml"]
    model = make_model(1, arch="cnn", patch_size=16)
    ref = write_prediction(
        predict(open_raster(scene), model, stride=2), tmp_path / "ref.tif", resume=False
    )
    np.testing.assert_array_equal(_read(out), _read(ref))
