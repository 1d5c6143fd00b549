"""options: defaults and checks live once, in the library; predict resolves and hashes once."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import torch

import georaster_cnn.model._inference as inference
from georaster_cnn import GeoModel, InputError, open_raster, predict, write_prediction
from georaster_cnn.options import (
    InferenceOptions,
    check_fraction,
    check_non_negative,
    check_stride,
    evaluation_stride,
    training_stride,
)

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]


@pytest.mark.parametrize("patch", [16, 32])
def test_stride_defaults_to_the_models_patch_size(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel, patch: int
) -> None:
    model = make_model(1, patch_size=patch)
    path = make_raster(tmp_path, "s.tif", height=70, width=50, count=1)
    pred = predict(open_raster(path), model)
    assert pred.attrs["stride"] == patch
    assert pred["class"].shape == (-(-70 // patch), -(-50 // patch))
    assert InferenceOptions.resolve(model).stride == patch


def test_resolve_applies_model_defaults_and_checks(make_model: MakeModel) -> None:
    model = make_model(2, min_valid=0.25)
    opts = InferenceOptions.resolve(model, device="cpu")
    assert (opts.stride, opts.batch_size, opts.min_valid) == (64, 256, 0.25)
    assert opts.device == "cpu"  # a name: the classifier resolves it (options import no torch)
    assert InferenceOptions.resolve(model, device=torch.device("cpu")).device == torch.device("cpu")
    assert InferenceOptions.resolve(model, device="cuda:1").device == "cuda:1"
    assert InferenceOptions.resolve(model, default_stride=8).stride == 8
    for bad in ({"stride": 0}, {"stride": 65}, {"stride": 2.5}, {"batch_size": 0},
                {"batch_size": True}, {"min_valid": 0.0}, {"min_valid": "x"}, {"device": "tpu"}, {"device": "cuda:x"}, {"device": 3}):  # fmt: skip
        with pytest.raises(InputError) as info:
            InferenceOptions.resolve(model, **bad)  # type: ignore[arg-type]
        # library messages name the Python keyword, never a command-line flag
        assert "--" not in str(info.value)
        assert f"{next(iter(bad))}" in str(info.value)


def test_small_checks() -> None:
    assert check_stride(16, 16) == 16
    assert check_fraction("f", 0.0) == 0.0
    with pytest.raises(InputError, match=r"f= must be in \[0, 1\)"):
        check_fraction("f", 1.0, high_open=True)
    with pytest.raises(InputError, match="min_area= must be >= 0"):
        check_non_negative("min_area", float("nan"))
    assert training_stride(64) == 16 and training_stride(4) == 1


def test_evaluation_stride_follows_training(make_model: MakeModel) -> None:
    model = make_model(1, provenance={"stride": 8})
    assert evaluation_stride(model) == 8
    assert evaluation_stride(make_model(1)) == 16  # patch // 4 without provenance
    with pytest.raises(InputError, match="stride"):
        evaluation_stride(model, 128)


def test_predict_resolves_the_device_once_and_hashes_the_model_once(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"device": 0, "hash": 0}
    real_resolve = inference.resolve_device
    real_checksum = GeoModel.checksum.func  # type: ignore[attr-defined]

    def resolve(device: str = "auto") -> torch.device:
        calls["device"] += 1
        return real_resolve(device)

    def checksum(self: GeoModel) -> str:
        calls["hash"] += 1
        return real_checksum(self)  # type: ignore[no-any-return]

    counted = cached_property(checksum)
    counted.__set_name__(GeoModel, "checksum")
    monkeypatch.setattr(inference, "resolve_device", resolve)
    monkeypatch.setattr(GeoModel, "checksum", counted)
    model = make_model(2)
    path = make_raster(tmp_path, "s.tif", height=150, width=140, count=2)
    out = write_prediction(
        predict(open_raster(path, chunks=64), model, stride=32), tmp_path / "m.tif"
    )
    assert out.exists()
    assert calls == {"device": 1, "hash": 1}
    assert np.isfinite(np.float64(len(model.checksum)))  # still one hash after more uses
    assert calls["hash"] == 1


def test_output_patience_and_architecture_checks(tmp_path: Path) -> None:
    from georaster_cnn import OutputExistsError
    from georaster_cnn.io.staging import check_output
    from georaster_cnn.model.architectures import check_arch
    from georaster_cnn.options import check_patience

    out = tmp_path / "m.safetensors"
    assert check_output(out, overwrite=False) == out
    out.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        check_output(out, overwrite=False)
    assert check_output(out, overwrite=True) == out
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    with pytest.raises(OutputExistsError):  # a dangling link is not silently replaced
        check_output(tmp_path / "link", overwrite=False)
    assert check_patience(None) is None and check_patience(0) == 0
    with pytest.raises(InputError, match="patience= must be"):
        check_patience(-1)
    assert check_arch("cnn") == "cnn"
    with pytest.raises(InputError, match="unknown architecture 'vit'; choose one of"):
        check_arch("vit")


def test_training_checks_patience_and_learning_rate(make_model: MakeModel) -> None:
    from georaster_cnn import ChipSet, train_chips

    rng = np.random.default_rng(0)
    chips = ChipSet(
        rng.normal(size=(8, 1, 8, 8)).astype("float32"),
        np.array([0, 1] * 4),
        ("a", "b"),
        ("band_1",),
        "mem",
    )
    with pytest.raises(InputError, match="patience="):
        train_chips(chips, epochs=1, patience=-2)
    with pytest.raises(InputError, match="learning_rate="):
        train_chips(chips, epochs=1, learning_rate=-0.1)


def test_options_resolved_once_are_passed_as_they_are(
    tmp_path: Path, make_raster: MakeRaster, make_model: MakeModel
) -> None:
    model = make_model(1)
    data = open_raster(make_raster(tmp_path, "s.tif", height=90, width=70, count=1))
    opts = InferenceOptions.resolve(model, stride=16, batch_size=7, min_valid=0.25, device="cpu")
    by_options = predict(data, model, options=opts)
    by_keywords = predict(data, model, stride=16, batch_size=7, min_valid=0.25, device="cpu")
    assert by_options["class"].shape == (-(-90 // 16), -(-70 // 16))
    np.testing.assert_array_equal(by_options["class"].values, by_keywords["class"].values)
    with pytest.raises(InputError, match="options= already holds stride, device"):
        predict(data, model, options=opts, stride=16, device="cpu")
    with pytest.raises(InputError, match="must be an InferenceOptions"):
        predict(data, model, options={"stride": 16})  # type: ignore[arg-type]
    small = make_model(1, patch_size=8)  # options of another model: its stride is checked
    with pytest.raises(InputError, match="stride= must be between 1 and the patch size 8"):
        predict(data, small, options=opts)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "mps"])
def test_device_names_are_checked_without_torch(device: str) -> None:
    from georaster_cnn.options import check_device

    assert check_device(device) == device
    with pytest.raises(InputError, match="unknown device"):
        check_device(device.upper() + "x")
