"""train: tiny, fast training runs; window/label geometry; input validation; reproducibility."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import dask.array
import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine
from geo import NORTH_UP

from georaster_cnn import (
    ChipSet,
    GeoModel,
    InputError,
    PatchGrid,
    TrainingError,
    load_model,
    open_labels,
    open_raster,
    predict,
    save_model,
    train,
    train_chips,
)
from georaster_cnn.errors import ValidationWarning
from georaster_cnn.training.splits import MIN_VALIDATION_SAMPLES, blocked_split
from georaster_cnn.training.windows import grid_windows

# The scenes here are tiny: their validation sets have fewer than 100 windows. The tests
# of the validation checks below catch their warnings explicitly.
pytestmark = pytest.mark.filterwarnings("ignore::georaster_cnn.errors.ValidationWarning")

MakeRaster = Callable[..., Path]

FAST = {
    "patch_size": 16,
    "stride": 8,
    "hparams": {"widths": [4, 8]},
    "batch_size": 32,
    "device": "cpu",
}


def _smooth(noise: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter (periodic) via FFT; NumPy only."""
    fy = np.fft.fftfreq(noise.shape[0])[:, None]
    fx = np.fft.rfftfreq(noise.shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=noise.shape)


def _standardise(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / a.std()


def two_texture_scene(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left half white noise (class 0), right half smooth noise (class 1), both N(0, 1)."""
    rng = np.random.default_rng(seed)
    white = _standardise(rng.standard_normal((size, size)))
    smooth = _standardise(_smooth(rng.standard_normal((size, size)), 3.0))
    scene = white.copy()
    scene[:, size // 2 :] = smooth[:, size // 2 :]
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[:, size // 2 :] = 1
    return scene[None].astype("float32"), labels


@pytest.fixture
def scene_files(tmp_path: Path, make_raster: MakeRaster) -> tuple[Path, Path]:
    scene, labels = two_texture_scene()
    data = make_raster(
        tmp_path,
        "scene.tif",
        height=128,
        width=128,
        values=scene,
        transform=NORTH_UP,
        descriptions=["reading"],
    )
    lab = make_raster(
        tmp_path,
        "labels.tif",
        height=128,
        width=128,
        dtype="uint8",
        nodata=255,
        values=labels,
        transform=NORTH_UP,
    )
    with rasterio.open(lab, "r+") as dst:
        dst.update_tags(CLASS_NAMES=json.dumps(["noise", "smooth"]))
    return data, lab


def weights_digest(model: GeoModel) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_open_labels(scene_files: tuple[Path, Path]) -> None:
    _, lab = scene_files
    labels = open_labels(lab)
    assert labels.dims == ("y", "x")
    assert labels.attrs["class_names"] == ["noise", "smooth"]
    assert labels.rio.transform() == NORTH_UP
    vals = labels.values
    assert set(np.unique(vals)) == {0.0, 1.0}


def test_tiny_training_run(scene_files: tuple[Path, Path], tmp_path: Path) -> None:
    data_path, lab_path = scene_files
    seen: list[tuple[int, int, dict[str, float]]] = []
    model = train(
        open_raster(data_path), open_labels(lab_path), epochs=2,
        on_epoch=lambda e, n, m: seen.append((e, n, m)), **FAST,
    )  # fmt: skip
    assert isinstance(model, GeoModel)
    assert model.arch == "cnn_dense" and model.hparams == {"widths": [4, 8]}  # the default
    assert model.class_names == ("noise", "smooth")  # from the labels' CLASS_NAMES tag
    assert model.band_names == ("reading",)
    assert model.patch_size == 16 and model.min_valid == 0.5
    assert model.source_dtype == "float32"
    assert not model.module.training
    assert abs(model.stats.mean[0]) < 0.2 and 0.8 < model.stats.std[0] < 1.2
    prov = model.provenance
    assert [h["epoch"] for h in prov["history"]] == [1, 2]
    for h in prov["history"]:
        assert {"loss", "accuracy"} <= set(h) and np.isfinite(h["loss"])
    assert prov["epochs"] == 2 and prov["seed"] == 0 and prov["stride"] == 8
    assert prov["data"] == [str(data_path)] and prov["labels"] == [str(lab_path)]
    assert prov["n_train"] + prov["n_val"] == sum(prov["class_counts"]) == 256
    assert prov["class_counts"] == [128, 128]
    per_class = prov["windows_per_class"]
    assert set(per_class) == {"train", "validation", "dropped_in_buffer"}
    assert all(list(c) == ["noise", "smooth"] for c in per_class.values())
    assert sum(per_class["train"].values()) == prov["n_train"]
    assert sum(per_class["validation"].values()) == prov["n_val"]
    for name, n in zip(("noise", "smooth"), prov["class_counts"], strict=True):
        assert per_class["train"][name] + per_class["validation"][name] == n
        assert per_class["validation"][name] > 0  # the random fallback split is stratified
    assert prov["device"] == "cpu"
    assert [s[:2] for s in seen] == [(1, 2), (2, 2)]
    # The model is usable straight away and round-trips through a file.
    back = load_model(save_model(model, tmp_path / "m.gcnn"))
    assert back.provenance == json.loads(json.dumps(model.provenance))
    pred = predict(open_raster(data_path), back, stride=16).compute()
    assert pred["class"].shape == (8, 8)
    assert set(np.unique(pred["class"].values)) <= {0, 1}


def test_reproducible_with_same_seed(scene_files: tuple[Path, Path]) -> None:
    data_path, lab_path = scene_files
    runs = [
        train(open_raster(data_path), open_labels(lab_path), epochs=1, seed=s, **FAST)
        for s in (7, 7, 8)
    ]
    a, b, c = (weights_digest(m) for m in runs)
    assert a == b
    assert a != c
    assert runs[0].provenance["history"] == runs[1].provenance["history"]
    assert runs[0].provenance["windows_per_class"] == runs[1].provenance["windows_per_class"]


def test_labels_wrong_size(
    scene_files: tuple[Path, Path], tmp_path: Path, make_raster: MakeRaster
) -> None:
    data_path, _ = scene_files
    lab = make_raster(
        tmp_path,
        "small.tif",
        height=100,
        width=128,
        dtype="uint8",
        values=np.zeros((100, 128)),
        transform=NORTH_UP,
    )
    with pytest.raises(InputError, match="100 x 128"):
        train(open_raster(data_path), open_labels(lab), epochs=1, **FAST)


def test_labels_wrong_transform(
    scene_files: tuple[Path, Path], tmp_path: Path, make_raster: MakeRaster
) -> None:
    data_path, _ = scene_files
    _, labels = two_texture_scene()
    shifted = Affine.translation(30.0, 0.0) @ NORTH_UP
    lab = make_raster(
        tmp_path,
        "shift.tif",
        height=128,
        width=128,
        dtype="uint8",
        values=labels,
        transform=shifted,
    )
    with pytest.raises(InputError, match="transform"):
        train(open_raster(data_path), open_labels(lab), epochs=1, **FAST)


def test_labels_wrong_crs(
    scene_files: tuple[Path, Path], tmp_path: Path, make_raster: MakeRaster
) -> None:
    data_path, _ = scene_files
    _, labels = two_texture_scene()
    lab = make_raster(
        tmp_path,
        "crs.tif",
        height=128,
        width=128,
        dtype="uint8",
        values=labels,
        transform=NORTH_UP,
        crs="EPSG:32632",
    )
    with pytest.raises(InputError, match="CRS"):
        train(open_raster(data_path), open_labels(lab), epochs=1, **FAST)


def test_all_nodata_labels(
    scene_files: tuple[Path, Path], tmp_path: Path, make_raster: MakeRaster
) -> None:
    data_path, _ = scene_files
    lab = make_raster(
        tmp_path,
        "none.tif",
        height=128,
        width=128,
        dtype="uint8",
        nodata=255,
        values=np.full((128, 128), 255),
        transform=NORTH_UP,
    )
    with pytest.raises(TrainingError, match="no labelled window"):
        train(open_raster(data_path), open_labels(lab), epochs=1, **FAST)


def test_single_class(
    scene_files: tuple[Path, Path], tmp_path: Path, make_raster: MakeRaster
) -> None:
    data_path, _ = scene_files
    lab = make_raster(
        tmp_path,
        "one.tif",
        height=128,
        width=128,
        dtype="uint8",
        nodata=255,
        values=np.ones((128, 128)),
        transform=NORTH_UP,
    )
    with pytest.raises(TrainingError, match="single class"):
        train(open_raster(data_path), open_labels(lab), epochs=1, **FAST)


def test_bad_training_options(scene_files: tuple[Path, Path]) -> None:
    data_path, lab_path = scene_files
    data, labels = open_raster(data_path), open_labels(lab_path)
    with pytest.raises(InputError, match="epochs"):
        train(data, labels, epochs=0, **FAST)
    with pytest.raises(InputError, match="one label raster per input"):
        train([data, data], [labels], epochs=1, **FAST)
    with pytest.raises(InputError, match="class name"):
        train(data, labels, class_names=["only"], epochs=1, **FAST)


def test_negative_class_ids(
    scene_files: tuple[Path, Path], tmp_path: Path, make_raster: MakeRaster
) -> None:
    data_path, _ = scene_files
    _, labels = two_texture_scene()
    vals = labels.astype("int16") - 1  # -1 and 0
    lab = make_raster(
        tmp_path, "neg.tif", height=128, width=128, dtype="int16", values=vals, transform=NORTH_UP
    )
    with pytest.raises(InputError, match="class ids"):
        train(open_raster(data_path), open_labels(lab), epochs=1, **FAST)


@pytest.mark.parametrize(
    ("value", "match"), [(255, "0..254"), (1000, "0..254"), (0.5, "non-integer")]
)
def test_unusable_label_values(
    scene_files: tuple[Path, Path],
    tmp_path: Path,
    make_raster: MakeRaster,
    value: float,
    match: str,
) -> None:
    data_path, _ = scene_files
    _, labels = two_texture_scene()
    vals = labels.astype("float32")
    vals[:, 64:] = value  # no nodata set: the value is a label
    lab = make_raster(tmp_path, "odd.tif", height=128, width=128, values=vals, transform=NORTH_UP)
    with pytest.raises(InputError, match=match):
        train(open_raster(data_path), open_labels(lab), epochs=1, **FAST)


def test_unknown_architecture_fails_before_extraction(scene_files: tuple[Path, Path]) -> None:
    data_path, lab_path = scene_files
    opts = {**FAST, "hparams": None}
    with pytest.raises(InputError, match="unknown architecture"):
        train(open_raster(data_path), open_labels(lab_path), arch="nope", epochs=1, **opts)


def test_memory_cap_subsamples_reproducibly(scene_files: tuple[Path, Path]) -> None:
    data_path, lab_path = scene_files
    chip = 1 * 16 * 16 * 4  # bytes per window: 1 band, 16 x 16 float32
    runs = [
        train(
            open_raster(data_path),
            open_labels(lab_path),
            epochs=1,
            max_chip_bytes=100 * chip,
            **FAST,
        )
        for _ in range(2)
    ]
    prov = runs[0].provenance
    n = prov["n_train"] + prov["n_val"]
    assert 40 < n < 170  # ~100 of 256 labelled windows kept
    assert prov["class_counts"] == runs[1].provenance["class_counts"]
    assert weights_digest(runs[0]) == weights_digest(runs[1])


@pytest.mark.parametrize(("patch", "stride"), [(16, 16), (16, 5), (9, 4), (8, 1)])
def test_training_windows_follow_the_grid(
    tmp_path: Path, make_raster: MakeRaster, patch: int, stride: int
) -> None:
    """Each training chip is the window of PatchGrid.window_origin (raw, NaN where invalid);
    its label is the centre pixel's."""
    h, w = 37, 29
    rng = np.random.default_rng(patch * 100 + stride)
    values = rng.integers(-50, 50, (1, h, w)).astype("float32")
    values[0, rng.random((h, w)) < 0.1] = np.nan
    ids = np.arange(h * w, dtype="float32").reshape(h, w)  # label = pixel id
    ids[rng.random((h, w)) < 0.1] = np.nan  # unlabelled pixels
    data = open_raster(make_raster(tmp_path, "d.tif", height=h, width=w, values=values), chunks=16)
    labels = xr.DataArray(ids, dims=("y", "x"))
    grid = PatchGrid(h, w, patch=patch, stride=stride)
    windows = grid_windows(data, labels, grid, min_valid=0.5, max_windows=10**9)
    padded = np.full((h + 4 * patch, w + 4 * patch), np.nan, dtype="float32")
    padded[2 * patch : 2 * patch + h, 2 * patch : 2 * patch + w] = values[0]
    oh, ow = grid.out_shape
    expected = {}  # centre pixel -> window
    for i in range(oh):
        for j in range(ow):
            r0, c0 = grid.window_origin(i, j)
            win = padded[r0 + 2 * patch : r0 + 3 * patch, c0 + 2 * patch : c0 + 3 * patch]
            cr, cc = r0 + patch // 2, c0 + patch // 2  # centre pixel
            inside = 0 <= cr < h and 0 <= cc < w
            if (~np.isnan(win)).mean() >= 0.5 and inside and not np.isnan(ids[cr, cc]):
                expected[(cr, cc)] = win
    centres = [tuple(c) for c in windows.centres.tolist()]
    assert set(centres) == set(expected)
    assert len(centres) == len(expected)  # no duplicates
    for chip, label, centre in zip(windows.chips, windows.labels, centres, strict=True):
        np.testing.assert_array_equal(chip[0], expected[centre])
        assert label == ids[centre]


def test_several_rasters(tmp_path: Path, make_raster: MakeRaster) -> None:
    """Two tiles with their own labels train one model; provenance lists both."""
    scene, labels = two_texture_scene(seed=3)
    paths = []
    for k, sl in enumerate((slice(0, 64), slice(64, 128))):
        t = Affine.translation(0.0, -30.0 * 64 * k) @ NORTH_UP
        d = make_raster(
            tmp_path, f"d{k}.tif", height=64, width=128, values=scene[:, sl], transform=t
        )
        lab = make_raster(
            tmp_path, f"l{k}.tif", height=64, width=128, dtype="uint8", nodata=255,
            values=labels[sl], transform=t,
        )  # fmt: skip
        paths.append((d, lab))
    model = train(
        [open_raster(d) for d, _ in paths], [open_labels(lab) for _, lab in paths], epochs=1, **FAST
    )
    assert model.provenance["data"] == [str(d) for d, _ in paths]
    assert model.provenance["class_counts"] == [128, 128]


def test_model_takes_label_colours(scene_files: tuple[Path, Path]) -> None:
    data_path, lab_path = scene_files
    plain = train(open_raster(data_path), open_labels(lab_path), epochs=1, **FAST)
    with rasterio.open(lab_path, "r+") as dst:
        dst.write_colormap(1, {0: (10, 20, 30, 255), 1: (200, 100, 50, 255)})
    labels = open_labels(lab_path)
    assert labels.attrs["class_colors"][:2] == [(10, 20, 30), (200, 100, 50)]
    model = train(open_raster(data_path), labels, epochs=1, **FAST)
    assert model.class_colors == ((10, 20, 30), (200, 100, 50))
    assert plain.class_colors != model.class_colors  # without a table: the default palette


def test_early_stopping_on_validation_loss(scene_files: tuple[Path, Path]) -> None:
    """A validation loss that never improves stops training after ``patience`` epochs.

    Learning rate 0 and a model without batch norm (mlp): the weights, hence the
    validation loss, stay exactly the same from epoch to epoch.
    """
    data_path, lab_path = scene_files
    data, labels = open_raster(data_path), open_labels(lab_path)
    frozen = {**FAST, "arch": "mlp", "hparams": {"hidden": 8}, "learning_rate": 0.0}
    stopped = train(data, labels, patience=2, **{**frozen, "epochs": 10})
    assert len({m["val_loss"] for m in stopped.provenance["history"]}) == 1
    assert len(stopped.provenance["history"]) == 3
    assert stopped.provenance["early_stopping"] == {"patience": 2, "stopped_after": 3}
    assert stopped.provenance["epochs_run"] == 3
    full = train(data, labels, patience=0, **{**frozen, "epochs": 4})
    assert len(full.provenance["history"]) == 4
    assert full.provenance["early_stopping"]["stopped_after"] is None


@pytest.mark.parametrize(
    ("n_chips", "batch_size", "expected"), [(200, 8, 3), (200, 64, 2), (400, 2, 10)]
)
def test_batchnorm_recalibrated_after_each_epoch(
    n_chips: int, batch_size: int, expected: int
) -> None:
    """Running statistics are exact averages over a few batches after the epoch.

    An eighth of the epoch's batches, at least 2 and at most 10: 160 training chips
    in 20 batches of 8 (an eighth, rounded up: 3) or 64 + 64 + 32 (at least 2); 320
    in 160 batches of 2 (at most 10). The batch-norm momentum is back at its default
    afterwards.
    """
    from georaster_cnn import ChipSet, train_chips

    rng = np.random.default_rng(0)
    chips = ChipSet(
        chips=rng.normal(size=(n_chips, 1, 16, 16)).astype(np.float32),
        labels=np.repeat([0, 1], n_chips // 2),
        class_names=("a", "b"),
        band_names=("v",),
    )
    model = train_chips(
        chips, epochs=2, batch_size=batch_size, val_fraction=0.2, device="cpu",
        hparams={"widths": [4, 8]},
    )  # fmt: skip
    assert model.provenance["n_train"] == n_chips * 4 // 5
    bns = [m for m in model.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert int(bn.num_batches_tracked) == expected
        assert bn.momentum == 0.1
        assert torch.isfinite(bn.running_var).all() and (bn.running_var > 0).all()


def test_each_raster_is_read_once() -> None:
    """Statistics and windows come from one pass over the data; the labels are read once
    unless the memory cap makes train() count them first."""
    reads: collections.Counter[tuple[str, tuple[int, ...]]] = collections.Counter()
    lock = threading.Lock()

    def counted(block: np.ndarray, tag: str, block_info: dict | None = None) -> np.ndarray:
        with lock:
            reads[(tag, tuple(block_info[None]["chunk-location"]))] += 1  # type: ignore[index]
        return block

    scene, ids = two_texture_scene()
    t = NORTH_UP

    def lazy(values: np.ndarray, tag: str) -> dask.array.Array:
        arr = dask.array.from_array(values, chunks=(*values.shape[:-2], 32, 32))
        return arr.map_blocks(counted, tag=tag, dtype=values.dtype)

    data = xr.DataArray(lazy(scene, "data"), dims=("band", "y", "x"), coords={"band": ["v"]})
    labels = xr.DataArray(lazy(ids.astype("float32"), "labels"), dims=("y", "x"))
    data, labels = (a.rio.write_transform(t).rio.write_crs("EPSG:32633") for a in (data, labels))
    for cap, label_reads in ((2 * 1024**3, 1), (100 * 16 * 16 * 4, 2)):
        reads.clear()
        train(data, labels, epochs=1, max_chip_bytes=cap, **FAST)
        most = {tag: max(n for (t_, _), n in reads.items() if t_ == tag) for tag, _ in reads}
        assert most == {"data": 1, "labels": label_reads}


# --------------------------------------------------------------------------- validation


def _in_memory(scene: np.ndarray, labels: np.ndarray) -> tuple[xr.DataArray, xr.DataArray]:
    """A scene and its label raster as in-memory arrays on one north-up grid."""
    data = xr.DataArray(scene, dims=("band", "y", "x"), coords={"band": ["v"]})
    lab = xr.DataArray(labels.astype("float32"), dims=("y", "x"))
    return tuple(  # type: ignore[return-value]
        a.rio.write_transform(NORTH_UP).rio.write_crs("EPSG:32633") for a in (data, lab)
    )


def textured(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(1, y, x)`` white noise where ``labels`` is 0, smooth noise where 1; both N(0, 1)."""
    rng = np.random.default_rng(seed)
    white = _standardise(rng.standard_normal(labels.shape))
    smooth = _standardise(_smooth(rng.standard_normal(labels.shape), 3.0))
    return np.where(labels == 1, smooth, white)[None].astype("float32")


def strip_labels(size: int = 256, strip: int = 96) -> np.ndarray:
    """Class 1 in a strip along the top edge, class 0 elsewhere.

    With 128-px blocks the two top blocks hold both classes and the two bottom
    blocks only class 0: holding out one random block of four (the split's share at
    ``val_fraction=0.2``) validates on class 0 alone half of the time.
    """
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[:strip] = 1
    return labels


def _window_centres(size: int, patch: int, stride: int) -> np.ndarray:
    grid = PatchGrid(size, size, patch=patch, stride=stride)
    rows = np.arange(grid.out_shape[0]) * stride + grid.center_offset
    cols = np.arange(grid.out_shape[1]) * stride + grid.center_offset
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    keep = (rr < size) & (cc < size)
    return np.stack([rr[keep], cc[keep]], axis=1)


def _recorded(fn: Callable[[], GeoModel]) -> tuple[GeoModel, list[str]]:
    """``fn()`` and the messages of the ValidationWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = fn()
    return model, [str(w.message) for w in caught if issubclass(w.category, ValidationWarning)]


def test_blocked_split_covers_both_classes_of_a_small_raster() -> None:
    """A raster of four blocks, two of them one-class: the split holds out a two-class one."""
    size, patch, block = 256, 16, 128
    centres = _window_centres(size, patch, 8)
    labels = strip_labels(size)[centres[:, 0], centres[:, 1]].astype(np.float64)
    one_class = 0
    for seed in range(20):
        # 0.1: a block (a quarter) is beyond the share covering squares may take, but one
        # block is held out anyway: a covering one.
        val, drop = blocked_split(
            centres, (size, size), patch=patch, block=block, fraction=(0.1, 0.2)[seed % 2],
            rng=np.random.default_rng(seed), labels=labels,
        )  # fmt: skip
        assert set(np.unique(labels[val])) == {0.0, 1.0}, seed
        assert set(np.unique(labels[~val & ~drop])) == {0.0, 1.0}, seed
        assert val.sum() == size**2 // 64 // 4  # one block: the share nearest 0.2
        # Without labels the block is any of the four: half of the seeds validate on class 0 only.
        plain, _ = blocked_split(
            centres, (size, size), patch=patch, block=block, fraction=0.2,
            rng=np.random.default_rng(seed),
        )  # fmt: skip
        one_class += len(np.unique(labels[plain])) == 1
    assert 0 < one_class < 20


def test_training_on_a_small_raster_validates_every_class() -> None:
    """Seed 3 made the old split (one random block of four) hold out a bottom block, all
    class 0: validation accuracy near 1 while training accuracy was near a half."""
    data, labels = _in_memory(textured(strip_labels()), strip_labels())
    model, warned = _recorded(lambda: train(data, labels, epochs=1, val_block=128, seed=3, **FAST))
    assert warned == []
    per_class = model.provenance["windows_per_class"]
    assert per_class["validation"]["class_0"] > 0 and per_class["validation"]["class_1"] > 0
    assert sum(per_class["validation"].values()) == model.provenance["n_val"] == 256
    n_dropped = model.provenance["split"]["n_dropped_in_buffer"]
    assert sum(per_class["dropped_in_buffer"].values()) == n_dropped > 0


def test_validation_missing_a_class_warns() -> None:
    """Class 1 lies inside one block: holding that block out would leave it no training
    window, so it trains, validation lacks it, and a warning says so."""
    lab = np.zeros((256, 256), dtype=np.uint8)
    lab[172:212, 172:212] = 1
    data, labels = _in_memory(textured(lab), lab)
    with pytest.warns(ValidationWarning, match=r"no window of class_1 \(\d+ in training\)"):
        model = train(data, labels, epochs=1, val_block=128, **FAST)
    per_class = model.provenance["windows_per_class"]
    assert per_class["validation"]["class_1"] == 0 and per_class["train"]["class_1"] > 0
    assert per_class["validation"]["class_0"] >= MIN_VALIDATION_SAMPLES


@pytest.mark.parametrize("held", ["validation", "buffer"])
def test_class_without_training_window_is_an_error(
    scene_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    """A split that holds out every window of a class (the old split could) is refused."""
    import georaster_cnn.training.windows

    def naive(
        centres: np.ndarray, *args: object, labels: np.ndarray, **kwargs: object
    ) -> tuple[np.ndarray, np.ndarray]:
        smooth = labels == 1
        if held == "validation":
            return smooth, np.zeros_like(smooth)
        return ~smooth & (centres[:, 0] < 32), smooth  # some validation, class 1 in the buffer

    monkeypatch.setattr(georaster_cnn.training.windows, "blocked_split", naive)
    data_path, lab_path = scene_files
    where = "128 in validation" if held == "validation" else "128 dropped in the buffer"
    with pytest.raises(
        TrainingError, match=rf"class smooth has no training window.*{where}.*val_block"
    ):
        train(open_raster(data_path), open_labels(lab_path), epochs=1, **FAST)


def test_tiny_validation_set_warns(
    scene_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    data_path, lab_path = scene_files
    data, labels = open_raster(data_path), open_labels(lab_path)
    names = ["noise", "smooth", "ice"]
    tiny = r"only 52 windows \(fewer than 100\)"
    with (
        caplog.at_level(logging.INFO, "georaster_cnn"),
        pytest.warns(ValidationWarning, match=tiny),
    ):
        model = train(data, labels, class_names=names, epochs=1, **FAST)
    assert model.provenance["windows_per_class"]["validation"] == {
        "noise": 26, "smooth": 26, "ice": 0,
    }  # fmt: skip
    assert "windows per class (train / validation / dropped in buffer): noise 102 / 26" in (
        caplog.text
    )
    assert "class ice has no labelled window" in caplog.text
    # No validation asked for: nothing to warn about.
    _, warned = _recorded(lambda: train(data, labels, val_fraction=0.0, epochs=1, **FAST))
    assert warned == []


@pytest.mark.parametrize("seed", range(6))
def test_blocked_split_with_classes_keeps_its_guarantees(seed: int) -> None:
    """Random labelled windows: no validation window overlaps a training window, every
    class keeps training windows, the share is near the fraction, a seed fixes it."""
    rng = np.random.default_rng(seed)
    p, block, shape, n = 16, 24, (150, 170), 400
    centres = np.stack([rng.integers(0, 150, n), rng.integers(0, 170, n)], axis=1)
    labels = rng.choice([0.0, 1.0, 2.0, 7.0], n, p=[0.6, 0.3, 0.08, 0.02])
    split = [
        blocked_split(centres, shape, patch=p, block=block, fraction=0.25,
                      rng=np.random.default_rng(s), labels=labels)
        for s in (seed, seed, seed + 100)
    ]  # fmt: skip
    (val, drop), again, other = split
    np.testing.assert_array_equal(val, again[0])
    np.testing.assert_array_equal(drop, again[1])
    assert not np.array_equal(val, other[0])
    train_ = ~val & ~drop
    gap = np.abs(centres[train_][:, None, :] - centres[val][None, :, :]).max(axis=2)
    assert gap.min() >= p  # windows p apart or more never share a pixel
    # Dropped exactly where a held block is within p - 1 pixels along both axes.
    held = np.unique(centres[val] // block, axis=0)
    lo, hi = held * block, (held + 1) * block - 1
    near = np.zeros(n, dtype=bool)
    for (r0, c0), (r1, c1) in zip(lo, hi, strict=True):
        dr = np.maximum(0, np.maximum(r0 - centres[:, 0], centres[:, 0] - r1))
        dc = np.maximum(0, np.maximum(c0 - centres[:, 1], centres[:, 1] - c1))
        near |= (dr <= p - 1) & (dc <= p - 1)
    np.testing.assert_array_equal(drop, near & ~val)
    assert set(np.unique(labels[train_])) == set(np.unique(labels))
    assert set(np.unique(labels[val])) == set(np.unique(labels))  # many blocks: all covered
    largest = np.bincount((centres[:, 0] // block) * 8 + centres[:, 1] // block).max()
    assert abs(val.sum() - 0.25 * n) <= largest


def test_progress_is_the_old_name_of_on_epoch() -> None:
    rng = np.random.default_rng(0)
    chips = ChipSet(
        rng.normal(size=(40, 1, 16, 16)).astype(np.float32), np.arange(40) % 2, ("a", "b"), ("b1",)
    )
    fast = {k: v for k, v in FAST.items() if k != "stride" and k != "patch_size"}
    seen: list[int] = []
    with pytest.warns(DeprecationWarning, match="now on_epoch="):
        train_chips(chips, epochs=1, progress=lambda e, n, m: seen.append(e), **fast)
    assert seen == [1]
    with pytest.raises(InputError, match="both given"):
        train_chips(chips, epochs=1, progress=print, on_epoch=print, **fast)
