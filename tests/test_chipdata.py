"""chipdata + train_chips + evaluate_chips: labelled chips without georeferencing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

from georaster_cnn import (
    BandMismatchError,
    ChipSet,
    InputError,
    TrainingError,
    evaluate_chips,
    is_chip_dataset,
    load_chips,
    load_model,
    save_model,
    train_chips,
)
from georaster_cnn.errors import ValidationWarning
from georaster_cnn.training.splits import stratified_split

SIDE = 16
FAST = {"hparams": {"widths": [4, 8]}, "batch_size": 16, "device": "cpu"}
CLASSES = ("smooth", "white")  # sorted: the folder order


def _smooth(noise: np.ndarray, sigma: float) -> np.ndarray:
    """Periodic Gaussian filter via FFT (NumPy only)."""
    fy = np.fft.fftfreq(noise.shape[0])[:, None]
    fx = np.fft.rfftfreq(noise.shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=noise.shape)


def make_chips(n_per_class: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 1, 16, 16)`` chips: class 0 smoothed noise, class 1 white noise.

    Every chip is standardised to mean 0, std 1: the classes differ only in their
    spatial structure, not in their values' distribution.
    """
    rng = np.random.default_rng(seed)
    chips, labels = [], []
    for k in range(2):
        for _ in range(n_per_class):
            a = rng.standard_normal((SIDE, SIDE))
            if k == 0:
                a = _smooth(a, 2.0)
            chips.append(((a - a.mean()) / a.std())[None].astype("float32"))
            labels.append(k)
    return np.stack(chips), np.array(labels, dtype=np.int64)


def write_npy_folder(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    for i, (chip, k) in enumerate(zip(x, y, strict=True)):
        d = root / CLASSES[k]
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"{i:04d}.npy", chip[0] if i % 2 else chip)  # 2-D and 3-D chips
    return root


def write_tif_folder(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    for i, (chip, k) in enumerate(zip(x, y, strict=True)):
        d = root / CLASSES[k]
        d.mkdir(parents=True, exist_ok=True)
        profile = {"driver": "GTiff", "height": SIDE, "width": SIDE, "count": 1, "dtype": "float32"}
        with warnings.catch_warnings():  # no georeferencing, on purpose
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(d / f"{i:04d}.tif", "w", **profile) as dst:
                dst.write(chip)
    return root


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, chips=x, labels=y, class_names=np.array(CLASSES))
    return path


def write_netcdf(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    ds = xr.Dataset(
        {"chips": (("n", "channel", "y", "x"), x), "labels": (("n",), y.astype("int32"))},
        attrs={"class_names": json.dumps(list(CLASSES))},
    )
    ds.to_netcdf(path)
    return path


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_chips()


@pytest.fixture
def npy_folder(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> Path:
    return write_npy_folder(tmp_path / "npy", *data)


# --------------------------------------------------------------------------- reading


def test_formats_load_equal(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    sets = {
        "npy": load_chips(write_npy_folder(tmp_path / "npy", x, y)),
        "tif": load_chips(write_tif_folder(tmp_path / "tif", x, y)),
        "npz": load_chips(write_npz(tmp_path / "chips.npz", x, y)),
        "nc": load_chips(write_netcdf(tmp_path / "chips.nc", x, y)),
    }
    for name, cs in sets.items():
        assert cs.class_names == CLASSES, name
        assert cs.band_names == ("band_1",), name
        assert cs.chips.dtype == np.float32 and cs.labels.dtype == np.int64, name
        assert cs.shape == (1, SIDE, SIDE) and cs.patch_size == SIDE, name
        # folders are read class by class, files in name order: the order of make_chips
        np.testing.assert_array_equal(cs.labels, y, err_msg=name)
        np.testing.assert_array_equal(cs.chips, x, err_msg=name)
    for p in ("npy", "tif", "chips.npz", "chips.nc"):
        assert is_chip_dataset(tmp_path / p)


def test_nested_folders_and_raster_folders(tmp_path: Path, npy_folder: Path) -> None:
    """A sub-folder inside a class folder is an error, not silently skipped; a folder with
    rasters at its top level is not a chip set even when it has a sub-folder."""
    (npy_folder / "white" / "more").mkdir()
    with pytest.raises(InputError, match=r"holds sub-folder\(s\) more"):
        load_chips(npy_folder)
    rasters = tmp_path / "rasters"
    (rasters / "sub").mkdir(parents=True)
    (rasters / "scene.tif").write_bytes(b"")
    assert not is_chip_dataset(rasters)
    (rasters / "scene.tif").unlink()
    assert is_chip_dataset(rasters)


def test_class_names_order_folder(npy_folder: Path) -> None:
    cs = load_chips(npy_folder, class_names=["white", "smooth"])
    assert cs.class_names == ("white", "smooth")
    assert cs.class_counts.tolist() == [40, 40]
    assert (cs.chips[cs.labels == 1].std(axis=(2, 3)) > 0).all()
    with pytest.raises(InputError, match="white"):
        load_chips(npy_folder, class_names=["smooth", "water"])


def test_wrong_shape_chip_names_file(npy_folder: Path) -> None:
    np.save(npy_folder / "white" / "9999.npy", np.zeros((1, 8, 8), "float32"))
    with pytest.raises(InputError, match=r"9999\.npy.*\(1, 8, 8\).*\(1, 16, 16\)"):
        load_chips(npy_folder)


def test_non_square_npz_is_input_error(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez(path, chips=np.zeros((4, 1, 8, 6), "float32"), labels=np.array([0, 1, 0, 1]))
    with pytest.raises(InputError, match="square"):
        load_chips(path)


def test_empty_class_is_training_error(npy_folder: Path) -> None:
    (npy_folder / "empty").mkdir()
    with pytest.raises(TrainingError, match="empty"):
        load_chips(npy_folder)


def test_single_class_cannot_train(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    cs = ChipSet(x[y == 0], y[y == 0], CLASSES, ())
    with pytest.raises(TrainingError, match="two classes"):
        train_chips(cs, epochs=1, **FAST)


def test_nan_and_min_valid(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    x = x.copy()
    x[0, :, :, : SIDE * 3 // 4] = np.nan  # 25 % valid: dropped at min_valid 0.5
    x[1, :, :2] = np.nan  # mostly valid: kept
    with pytest.warns(ValidationWarning, match="only 16 chips"):
        model = train_chips(ChipSet(x, y, CLASSES, ()), epochs=1, **FAST)
    assert model.provenance["n_dropped_invalid"] == 1
    assert model.provenance["n_train"] + model.provenance["n_val"] == len(y) - 1
    assert np.isfinite(model.stats.mean).all()


# --------------------------------------------------------------------------- training


def test_stratified_split_keeps_every_class() -> None:
    y = np.array([0] * 50 + [1] * 5 + [2] * 2 + [3])
    val = stratified_split(y, 0.2, np.random.default_rng(0))
    assert [int(val[y == k].sum()) for k in range(4)] == [10, 1, 1, 0]
    assert not stratified_split(y, 0.0, np.random.default_rng(0)).any()


def test_train_chips_reports_a_class_missing_from_validation(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    """A class of one chip trains on it; validation lacks it, and a warning says so."""
    x, y = make_chips(60)
    x, y = np.concatenate([x, data[0][:1]]), np.concatenate([y, [2]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = train_chips(ChipSet(x, y, (*CLASSES, "rare"), ()), epochs=1, **FAST)
    messages = [str(w.message) for w in caught if w.category is ValidationWarning]
    assert len(messages) == 2  # and: only 24 validation chips
    assert messages[1].startswith("validation holds no chip of rare (1 in training)")
    per_class = model.provenance["chips_per_class"]
    assert per_class["train"] == {"smooth": 48, "white": 48, "rare": 1}
    assert per_class["validation"] == {"smooth": 12, "white": 12, "rare": 0}


@pytest.fixture(scope="module")
def trained(data: tuple[np.ndarray, np.ndarray]):  # type: ignore[no-untyped-def]
    with pytest.warns(ValidationWarning, match=r"only 16 chips \(fewer than 100\)"):
        return train_chips(ChipSet(*data, CLASSES, (), source="gen"), epochs=6, seed=1, **FAST)


def test_train_chips_learns_structure(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prov = trained.provenance
    assert prov["split"]["kind"] == "stratified_random"
    assert prov["n_val"] == 16 and prov["class_counts"] == [40, 40]
    assert prov["chips_per_class"] == {
        "train": {"smooth": 32, "white": 32},
        "validation": {"smooth": 8, "white": 8},
    }
    assert trained.patch_size == SIDE and trained.class_names == CLASSES
    # held-out chips from another seed
    test = ChipSet(*make_chips(30, seed=99), CLASSES, (), source="test")
    report = evaluate_chips(test, trained, device="cpu")
    assert report.unit == "chips" and report.n_evaluated == 60
    assert report.accuracy >= 0.8, report.confusion
    assert report.to_dict()["matching"].startswith("each chip")
    written = report.write(tmp_path / "report")
    assert {p.name for p in written} >= {"metrics.json", "confusion_matrix.png"}


def test_train_chips_reproducible_and_round_trip(
    trained,  # type: ignore[no-untyped-def]
    data: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    with pytest.warns(ValidationWarning):
        again = train_chips(ChipSet(*data, CLASSES, (), source="gen"), epochs=6, seed=1, **FAST)
    for (k, a), (_, b) in zip(
        sorted(trained.module.state_dict().items()),
        sorted(again.module.state_dict().items()),
        strict=True,
    ):
        assert np.array_equal(a.numpy(), b.numpy()), k
    path = save_model(trained, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.checksum == trained.checksum
    test = ChipSet(*make_chips(10, seed=5), CLASSES, ())
    a = evaluate_chips(test, trained, device="cpu")
    b = evaluate_chips(test, loaded, device="cpu")
    np.testing.assert_array_equal(a.confusion, b.confusion)


def test_evaluate_chips_maps_class_names(trained) -> None:  # type: ignore[no-untyped-def]
    x, y = make_chips(10, seed=7)
    swapped = ChipSet(x, 1 - y, ("white", "smooth"), ())  # same chips, other id order
    plain = evaluate_chips(ChipSet(x, y, CLASSES, ()), trained, device="cpu")
    np.testing.assert_array_equal(evaluate_chips(swapped, trained, device="cpu").confusion,
                                  plain.confusion)  # fmt: skip
    with pytest.raises(InputError, match="water"):
        evaluate_chips(ChipSet(x, y, ("smooth", "water"), ()), trained, device="cpu")


def test_evaluate_chips_checks_shape(trained) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BandMismatchError, match="1 band"):
        evaluate_chips(ChipSet(np.zeros((2, 2, SIDE, SIDE)), [0, 1], CLASSES, ()), trained)
    with pytest.raises(InputError, match=r"16 x 16.*8 x 8"):
        evaluate_chips(ChipSet(np.zeros((2, 1, 8, 8)), [0, 1], CLASSES, ()), trained)


# --------------------------------------------------------------------------- CLI


def test_cli_train_and_evaluate_chip_folder(tmp_path: Path, npy_folder: Path) -> None:
    from georaster_cnn_cli.main import cli

    runner = CliRunner()
    model = tmp_path / "m.safetensors"
    res = runner.invoke(
        cli,
        ["train", str(npy_folder), "-o", str(model), "--epochs", "2", "--device", "cpu",
         "--batch-size", "16"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "saved" in res.output and load_model(model).patch_size == SIDE
    test = write_npz(tmp_path / "test.npz", *make_chips(5, seed=3))
    res = runner.invoke(cli, ["evaluate", str(model), str(test), "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["unit"] == "chips" and metrics["n_evaluated"] == 10
    # chips and --labels do not mix
    res = runner.invoke(
        cli, ["train", str(npy_folder), "--labels", str(test), "-o", str(tmp_path / "x")]
    )
    assert res.exit_code != 0 and "chip" in res.output
