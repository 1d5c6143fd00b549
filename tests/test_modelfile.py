"""The model file: safetensors + JSON card, atomic, safe to open, strict on bad input."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from georaster_cnn import (
    GeoModel,
    ModelFileError,
    OutputExistsError,
    load_model,
    open_raster,
    predict,
    save_model,
)
from georaster_cnn.modelfile import FORMAT, FORMAT_VERSION

MakeModel = Callable[..., GeoModel]


@pytest.fixture(params=["test_window_mean", "cnn"])
def model(request: pytest.FixtureRequest, make_model: MakeModel) -> GeoModel:
    return make_model(
        3,
        ("water", "forest", "urban"),
        arch=request.param,
        band_names=("B02", "B03", "B04"),
        patch_size=16,
        min_valid=0.25,
        provenance={"data": ["scene.tif"], "epochs": 3, "metrics": {"val_accuracy": 0.9}},
    )


def _no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load (pickle) must never be used to read a model file")

    monkeypatch.setattr(torch, "load", refuse)


def test_roundtrip(tmp_path: Path, model: GeoModel, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_model(model, tmp_path / "m.gcnn")
    assert path == tmp_path / "m.gcnn"
    _no_torch_load(monkeypatch)
    back = load_model(path)
    assert back.checksum == model.checksum
    assert back.card() == model.card()
    assert back.arch == model.arch and back.hparams == model.hparams
    assert back.band_names == ("B02", "B03", "B04")
    assert back.class_names == ("water", "forest", "urban")
    assert back.class_colors == model.class_colors
    assert all(len(c) == 3 for c in back.class_colors)
    assert back.patch_size == 16 and back.min_valid == 0.25
    assert back.source_dtype == "float32"
    assert back.provenance == model.provenance
    assert back.format_version == FORMAT_VERSION
    np.testing.assert_array_equal(back.stats.mean, model.stats.mean)
    np.testing.assert_array_equal(back.stats.std, model.stats.std)
    assert not back.module.training
    for (k1, v1), (k2, v2) in zip(
        sorted(model.module.state_dict().items()),
        sorted(back.module.state_dict().items()),
        strict=True,
    ):
        assert k1 == k2
        assert torch.equal(v1, v2)
    # Same outputs on the same input.
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        np.testing.assert_array_equal(model.module(x).numpy(), back.module(x).numpy())


def test_roundtrip_same_predictions(
    tmp_path: Path, make_model: MakeModel, make_raster: Callable[..., Path]
) -> None:
    model = make_model(2, arch="cnn", patch_size=16)
    raster = make_raster(tmp_path, "r.tif", height=40, width=37, count=2, nan_holes=True)
    data = open_raster(raster)
    before = predict(data, model, stride=8).compute()
    back = load_model(save_model(model, tmp_path / "m.gcnn"))
    after = predict(data, back, stride=8).compute()
    np.testing.assert_array_equal(before["class"].values, after["class"].values)
    np.testing.assert_array_equal(before["probability"].values, after["probability"].values)
    assert before.attrs["model_checksum"] == after.attrs["model_checksum"]


def test_file_is_safetensors_with_metadata(tmp_path: Path, model: GeoModel) -> None:
    path = save_model(model, tmp_path / "m.gcnn")
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    meta = header["__metadata__"]
    assert meta["format"] == FORMAT
    assert meta["format_version"] == str(FORMAT_VERSION)
    card = json.loads(meta["card"])
    assert card["bands"] == ["B02", "B03", "B04"]
    assert card["classes"] == ["water", "forest", "urban"]
    assert card["patch_size"] == 16
    assert card["stats"]["names"] == ["B02", "B03", "B04"]
    assert card["provenance"]["epochs"] == 3
    # No pickle anywhere: pickle streams start with the PROTO opcode 0x80.
    assert b"\x80\x04\x95" not in raw and b"\x80\x02" not in raw[: 8 + header_len]


def test_save_is_atomic_and_refuses_overwrite(
    tmp_path: Path, model: GeoModel, make_model: MakeModel
) -> None:
    target = tmp_path / "sub" / "m.gcnn"
    save_model(model, target)  # creates the folder
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gcnn"]
    before = target.read_bytes()
    other = make_model(3, ("a", "b", "c"), band_names=("B02", "B03", "B04"))
    with pytest.raises(OutputExistsError, match="overwrite") as info:
        save_model(other, target)
    assert isinstance(info.value, FileExistsError)
    assert target.read_bytes() == before
    save_model(other, target, overwrite=True)
    assert load_model(target).class_names == ("a", "b", "c")
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gcnn"]


def test_failed_save_leaves_nothing(
    tmp_path: Path, model: GeoModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tmp_path / "m.gcnn")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep", [0, 5, 8, 40, 0.5, -10])
def test_truncated_file(tmp_path: Path, model: GeoModel, keep: float) -> None:
    raw = model.to_bytes()
    n = (
        int(len(raw) * keep)
        if isinstance(keep, float)
        else (keep if keep >= 0 else len(raw) + keep)
    )
    path = tmp_path / "t.gcnn"
    path.write_bytes(raw[:n])
    with pytest.raises(ModelFileError, match=r"t\.gcnn"):
        load_model(path)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "r.gcnn"
    path.write_bytes(np.random.default_rng(seed).bytes(1000))
    with pytest.raises(ModelFileError):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"nope\.gcnn"):
        load_model(tmp_path / "nope.gcnn")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError):
        load_model(tmp_path)


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(st_save({"w": torch.zeros(3)}))
    with pytest.raises(ModelFileError, match="not a georaster_cnn model"):
        load_model(path)
    path.write_bytes(st_save({"w": torch.zeros(3)}, metadata={"format": "pt"}))
    with pytest.raises(ModelFileError, match="not a georaster_cnn model"):
        load_model(path)


def _rewrite(
    model: GeoModel, *, meta: dict[str, str] | None = None, card: dict | None = None
) -> bytes:
    state = {k: v.contiguous() for k, v in model.module.state_dict().items()}
    m = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "card": json.dumps(card or model.card()),
    }
    m.update(meta or {})
    return st_save(state, metadata=m)


def test_future_format_version(tmp_path: Path, model: GeoModel) -> None:
    path = tmp_path / "future.gcnn"
    path.write_bytes(_rewrite(model, meta={"format_version": str(FORMAT_VERSION + 1)}))
    with pytest.raises(ModelFileError, match="upgrade"):
        load_model(path)


@pytest.mark.parametrize(
    "change",
    [
        {"arch": "no_such_arch"},
        {"bands": ["only_one"]},  # weights do not fit the card
        {"hparams": {"bogus": 1}},
        {"classes": None},
    ],
)
def test_inconsistent_card(tmp_path: Path, make_model: MakeModel, change: dict) -> None:
    model = make_model(3, ("a", "b"), arch="cnn", patch_size=16)
    card = {**model.card(), **change}
    path = tmp_path / "bad.gcnn"
    path.write_bytes(_rewrite(model, card=card))
    with pytest.raises(ModelFileError, match=r"bad\.gcnn"):
        load_model(path)


def test_card_not_json(tmp_path: Path, model: GeoModel) -> None:
    path = tmp_path / "bad.gcnn"
    path.write_bytes(_rewrite(model, meta={"card": "{not json"}))
    with pytest.raises(ModelFileError):
        load_model(path)


def test_non_numeric_format_version(tmp_path: Path, model: GeoModel) -> None:
    path = tmp_path / "v.gcnn"
    path.write_bytes(_rewrite(model, meta={"format_version": "one"}))
    with pytest.raises(ModelFileError):
        load_model(path)


def test_header_not_an_object(tmp_path: Path) -> None:
    body = b"[1, 2, 3]"
    path = tmp_path / "list.gcnn"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(ModelFileError):
        load_model(path)


def test_loading_never_unpickles(
    tmp_path: Path, model: GeoModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    path = save_model(model, tmp_path / "m.gcnn")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling during model load")

    _no_torch_load(monkeypatch)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert load_model(path).checksum == model.checksum


def test_checksum_identifies_weights_and_card(make_model: MakeModel) -> None:
    a = make_model(2, arch="cnn", patch_size=16, seed=1)
    b = make_model(2, arch="cnn", patch_size=16, seed=1)
    c = make_model(2, arch="cnn", patch_size=16, seed=2)
    d = make_model(2, ("x", "y"), arch="cnn", patch_size=16, seed=1)
    assert a.checksum == b.checksum
    assert len({a.checksum, c.checksum, d.checksum}) == 3
    assert len(a.checksum) == 16
