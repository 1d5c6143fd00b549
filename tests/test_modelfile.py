"""The model file: safetensors + JSON card, atomic, safe to open, strict on bad input."""

from __future__ import annotations

import itertools
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
from georaster_cnn.model.modelfile import FORMAT, FORMAT_VERSION, _pack

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
    def boom(src: object, dst: object, **kwargs: object) -> None:
        raise OSError("disk full")

    from georaster_cnn.io import _fs

    # every way a finished file is published fails: replace (with overwrite), link + unlink,
    # renameat2(RENAME_NOREPLACE) or a checked rename (without)
    for name in ("replace", "link", "rename"):
        monkeypatch.setattr(os, name, boom)
    monkeypatch.setattr(_fs, "_renameat2", lambda: None)
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
    model: GeoModel,
    *,
    meta: dict[str, str] | None = None,
    card: dict | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> bytes:
    """The file of ``model`` with ``card``/``state`` swapped in, valid digests, then ``meta`` applied.

    Digests match whatever is written (unless ``meta`` overrides them), so a test of a
    malformed card reaches the card checks rather than the digest check.
    """
    state = state or {k: v.contiguous() for k, v in model.module.state_dict().items()}
    raw = _pack(state, card or model.card())
    if not meta:
        return raw
    header = _metadata(raw)
    header.update(meta)
    return st_save(state, metadata={k: v for k, v in header.items() if v is not None})


def _metadata(raw: bytes) -> dict[str, str]:
    header_len = int.from_bytes(raw[:8], "little")
    return dict(json.loads(raw[8 : 8 + header_len])["__metadata__"])


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


# --------------------------------------------------------------------------- verified files


def _data_section(raw: bytes) -> tuple[int, int]:
    start = 8 + int.from_bytes(raw[:8], "little")
    return start, len(raw)


def _flip(raw: bytes, offset: int, bit: int) -> bytes:
    data = bytearray(raw)
    data[offset] ^= 1 << bit
    return bytes(data)


def test_digests_are_stored_and_give_the_checksum(tmp_path: Path, model: GeoModel) -> None:
    import hashlib

    path = save_model(model, tmp_path / "m.gcnn")
    meta = _metadata(path.read_bytes())
    assert meta["format_version"] == "2" == str(FORMAT_VERSION)
    card_digest, weights_digest = meta["card_sha256"], meta["weights_sha256"]
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in (card_digest, weights_digest))
    assert card_digest == hashlib.sha256(meta["card"].encode()).hexdigest()
    back = load_model(path)
    assert back.verified and back.format_version == 2
    expected = hashlib.sha256((card_digest + weights_digest).encode()).hexdigest()[:16]
    assert back.checksum == model.checksum == expected
    assert not model.verified  # made in memory, not checked against a file


def test_load_hashes_the_weights_once(
    tmp_path: Path, model: GeoModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from georaster_cnn.model import modelfile

    path = save_model(model, tmp_path / "m.gcnn")
    expected = model.checksum
    calls = []
    real = modelfile._weights_digest

    def counted(state: dict[str, torch.Tensor]) -> str:
        calls.append(1)
        return real(state)

    monkeypatch.setattr(modelfile, "_weights_digest", counted)
    back = load_model(path)
    assert back.checksum == expected and back.checksum == expected
    assert len(calls) == 1


@pytest.mark.parametrize("seed", range(2))
def test_any_flipped_bit_in_the_weights_is_refused(
    tmp_path: Path, make_model: MakeModel, seed: int
) -> None:
    model = make_model(3, ("a", "b", "c"), arch="cnn", patch_size=16, seed=seed)
    raw = model.to_bytes()
    start, end = _data_section(raw)
    rng = np.random.default_rng(seed)
    # Every tensor's bytes: one offset in each 1/150 of the data section, a random bit each.
    edges = np.linspace(start, end, 151).astype(int)
    offsets = [int(rng.integers(lo, max(lo + 1, hi))) for lo, hi in itertools.pairwise(edges)]
    offsets += [start, end - 1]
    for offset in offsets:
        bit = int(rng.integers(8))
        with pytest.raises(ModelFileError, match="weights do not match the digest") as info:
            GeoModel.from_bytes(_flip(raw, offset, bit), source="m.gcnn")
        assert "m.gcnn" in str(info.value) and "retrain" in str(info.value)


def test_flipped_bits_in_the_header_are_refused_or_harmless(model: GeoModel) -> None:
    raw = model.to_bytes()
    start, _ = _data_section(raw)
    rng = np.random.default_rng(1)
    loaded = 0
    for offset in range(start):  # every byte of the length and the header, one random bit
        try:
            back = GeoModel.from_bytes(_flip(raw, offset, int(rng.integers(8))))
        except ModelFileError:
            continue
        # Only a flip that changes nothing the model is made of may load (e.g. in the padding).
        loaded += 1
        assert back.card() == model.card() and back.checksum == model.checksum
    assert loaded < start // 20


def test_card_edit_is_refused(tmp_path: Path, model: GeoModel) -> None:
    raw = model.to_bytes()
    meta = _metadata(raw)
    card = json.loads(meta["card"])
    card["min_valid"] = 0.75  # still a valid card, but not the one the digest was made of
    path = tmp_path / "edited.gcnn"
    path.write_bytes(_rewrite(model, meta={"card": json.dumps(card, sort_keys=True)}))
    with pytest.raises(ModelFileError, match=r"edited\.gcnn.*card does not match the digest"):
        load_model(path)


@pytest.mark.parametrize("key", ["card_sha256", "weights_sha256"])
def test_format_2_without_digest_is_refused(tmp_path: Path, model: GeoModel, key: str) -> None:
    path = tmp_path / "nodigest.gcnn"
    path.write_bytes(_rewrite(model, meta={key: None}))  # type: ignore[dict-item]
    with pytest.raises(ModelFileError, match=rf"nodigest\.gcnn.*no digest.*{key}"):
        load_model(path)


def test_format_1_file_loads_unverified(
    tmp_path: Path, model: GeoModel, make_raster: Callable[..., Path]
) -> None:
    state = {k: v.contiguous() for k, v in model.module.state_dict().items()}
    card = {**model.card(), "format_version": 1}
    path = tmp_path / "v1.gcnn"
    meta = {"format": FORMAT, "format_version": "1", "card": json.dumps(card, sort_keys=True)}
    path.write_bytes(st_save(state, metadata=meta))
    back = load_model(path)
    assert back.format_version == 1 and not back.verified
    assert len(back.checksum) == 16
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        np.testing.assert_array_equal(model.module(x).numpy(), back.module(x).numpy())
    # Saved again, it is a verified format 2 file with the same weights and card.
    again = load_model(save_model(back, tmp_path / "v2.gcnn"))
    assert again.verified and again.format_version == 2
    assert {**again.card(), "format_version": 1} == back.card()


def test_weights_of_another_dtype_are_refused(tmp_path: Path, model: GeoModel) -> None:
    state = {
        k: v.double() if v.is_floating_point() else v for k, v in model.module.state_dict().items()
    }
    path = tmp_path / "f64.gcnn"
    path.write_bytes(_rewrite(model, state=state))
    with pytest.raises(
        ModelFileError, match=r"f64\.gcnn.*do not fit.*expected float32.*found float64"
    ):
        load_model(path)


def test_card_asking_for_a_huge_network_is_refused_cheaply(
    tmp_path: Path, make_model: MakeModel
) -> None:
    model = make_model(2, arch="cnn", patch_size=16)
    path = tmp_path / "huge.gcnn"
    # A real network of this size would need terabytes; the check builds no storage.
    card = {**model.card(), "hparams": {"widths": [10**6, 10**6]}}
    path.write_bytes(_rewrite(model, card=card))
    with pytest.raises(ModelFileError, match=r"huge\.gcnn.*do not fit"):
        load_model(path)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_device_file_is_refused_without_reading() -> None:
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model("/dev/zero")


# --------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_refused_on_save_and_load(
    tmp_path: Path, make_model: MakeModel, bad: float
) -> None:
    model = make_model(2, arch="cnn", patch_size=16)
    key = "classifier.weight" if "classifier.weight" in model.module.state_dict() else None
    key = key or next(k for k, v in model.module.state_dict().items() if v.is_floating_point())
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    state[key].view(-1)[3] = bad
    path = tmp_path / "nan.gcnn"
    path.write_bytes(_rewrite(model, state=state))  # digests match: the values are the fault
    with pytest.raises(ModelFileError, match=rf"nan\.gcnn.*{key}.*NaN or infinite"):
        load_model(path)
    model.module.load_state_dict(state)
    with pytest.raises(ModelFileError, match=rf"out\.gcnn.*cannot save.*{key}"):
        save_model(model, tmp_path / "out.gcnn")
    assert not (tmp_path / "out.gcnn").exists()


@pytest.mark.parametrize("field", ["mean", "m2", "min", "max", "count"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_statistics_refused_on_save_and_load(
    tmp_path: Path, make_model: MakeModel, field: str, bad: float
) -> None:
    from georaster_cnn.stats import ChannelStats

    model = make_model(3, band_names=("B02", "B03", "B04"))
    d = model.stats.to_dict()
    d[field][1] = bad
    card = {**model.card(), "stats": d}
    path = tmp_path / "s.gcnn"
    path.write_bytes(_rewrite(model, card=card))
    with pytest.raises(ModelFileError, match=r"s\.gcnn.*statistics of band 'B03' are not finite"):
        load_model(path)
    model.stats = ChannelStats.from_dict(d)
    with pytest.raises(ModelFileError, match=r"cannot save.*band 'B03'"):
        save_model(model, tmp_path / "out.gcnn")
    assert not (tmp_path / "out.gcnn").exists()


def test_negative_variance_refused(tmp_path: Path, model: GeoModel) -> None:
    d = model.stats.to_dict()
    d["m2"][2] = -1.0
    path = tmp_path / "neg.gcnn"
    path.write_bytes(_rewrite(model, card={**model.card(), "stats": d}))
    with pytest.raises(ModelFileError, match=r"neg\.gcnn.*band 'B04'.*negative variance"):
        load_model(path)


def test_band_without_values_may_have_infinite_range(tmp_path: Path, model: GeoModel) -> None:
    d = model.stats.to_dict()
    d["count"][0], d["mean"][0], d["m2"][0] = 0.0, 0.0, 0.0
    d["min"][0], d["max"][0] = float("inf"), -float("inf")  # what an empty band's stats hold
    path = tmp_path / "empty_band.gcnn"
    path.write_bytes(_rewrite(model, card={**model.card(), "stats": d}))
    assert load_model(path).stats.count[0] == 0


# --------------------------------------------------------------------------- malformed cards


def _drop(key: str) -> Callable[[dict], None]:
    return lambda card: card.pop(key)


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda card: card.__setitem__(key, value)


def _set_stats(key: str, value: object) -> Callable[[dict], None]:
    return lambda card: card["stats"].__setitem__(key, value)


def _short_stats(card: dict) -> None:
    for key in ("names", "count", "mean", "m2", "min", "max", "std"):
        card["stats"][key] = card["stats"][key][:-1]


MALFORMED: dict[str, tuple[Callable[[dict], None], str]] = {
    "missing colors": (_drop("colors"), "'colors'.*missing"),
    "missing stats": (_drop("stats"), "'stats'.*missing"),
    "missing arch": (_drop("arch"), "'arch'"),
    "missing bands": (_drop("bands"), "'bands'"),
    "missing classes": (_drop("classes"), "'classes'"),
    "missing patch_size": (_drop("patch_size"), "'patch_size'"),
    "missing min_valid": (_drop("min_valid"), "'min_valid'"),
    "missing hparams": (_drop("hparams"), "'hparams'"),
    "short stats": (_short_stats, r"'stats.names'.*one band name per band \(3\)"),
    "stats key missing": (lambda c: c["stats"].pop("m2"), "'stats'"),
    "stats mean short": (_set_stats("mean", [0.0]), "'stats.mean'"),
    "stats count text": (_set_stats("count", ["1", "2", "3"]), "'stats.count'"),
    "stats mean beyond float": (_set_stats("mean", [0, 10**400, 0]), "'stats.mean'"),
    "format_version other": (_set("format_version", 1), "'format_version'"),
    "format_version text": (_set("format_version", "2"), "'format_version'"),
    "stats not object": (_set("stats", [1, 2, 3]), "'stats'"),
    "min_valid string": (_set("min_valid", "0.5"), "'min_valid'.*number in"),
    "min_valid zero": (_set("min_valid", 0), "'min_valid'"),
    "min_valid above 1": (_set("min_valid", 1.5), "'min_valid'"),
    "min_valid NaN": (_set("min_valid", float("nan")), "'min_valid'"),
    "min_valid bool": (_set("min_valid", True), "'min_valid'"),
    "patch_size zero": (_set("patch_size", 0), "'patch_size'.*whole number from 1"),
    "patch_size huge": (_set("patch_size", 10**30), "'patch_size'"),
    "patch_size negative": (_set("patch_size", -16), "'patch_size'"),
    "patch_size float": (_set("patch_size", 16.0), "'patch_size'"),
    "patch_size string": (_set("patch_size", "16"), "'patch_size'"),
    "patch_size null": (_set("patch_size", None), "'patch_size'"),
    "classes string": (_set("classes", "water"), "'classes'"),
    "one class": (_set("classes", ["water"]), "'classes'.*2 to 255"),
    "no classes": (_set("classes", []), "'classes'"),
    "class not a string": (_set("classes", ["water", 3, "urban"]), "'classes'"),
    "too many classes": (_set("classes", [f"c{i}" for i in range(256)]), "'classes'"),
    "colors not triples": (_set("colors", [[1, 2], [3, 4], [5, 6]]), "'colors'.*RGB"),
    "colors too few": (_set("colors", [[1, 2, 3]]), "'colors'.*one RGB triple per class"),
    "colors out of range": (_set("colors", [[256, 0, 0]] * 3), "'colors'"),
    "colors text": (_set("colors", [["r", "g", "b"]] * 3), "'colors'"),
    "colors not a list": (_set("colors", "red"), "'colors'"),
    "bands string": (_set("bands", "B02"), "'bands'"),
    "bands empty": (_set("bands", []), "'bands'"),
    "bands numbers": (_set("bands", [1, 2, 3]), "'bands'"),
    "hparams list": (_set("hparams", [1]), "'hparams'"),
    "hparams string": (_set("hparams", "widths=4"), "'hparams'"),
    "arch number": (_set("arch", 5), "'arch'"),
    "unknown arch": (_set("arch", "no_such_arch"), "can build.*no_such_arch"),
    "bogus hparam": (_set("hparams", {"bogus": 1}), "can build.*bogus"),
    "provenance string": (_set("provenance", "x"), "'provenance'"),
    "source_dtype complex": (_set("source_dtype", "complex64"), "'source_dtype'"),
    "source_dtype nonsense": (_set("source_dtype", "nonsense"), "'source_dtype'"),
    "source_dtype number": (_set("source_dtype", 7), "'source_dtype'"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_card_field(tmp_path: Path, model: GeoModel, case: str) -> None:
    change, match = MALFORMED[case]
    card = json.loads(json.dumps(model.card()))
    change(card)
    path = tmp_path / "bad.gcnn"
    path.write_bytes(_rewrite(model, card=card))
    with pytest.raises(ModelFileError, match=rf"bad\.gcnn.*{match}"):
        load_model(path)


@pytest.mark.parametrize("card", [[1, 2], "text", 3, None])
def test_card_not_an_object(tmp_path: Path, model: GeoModel, card: object) -> None:
    path = tmp_path / "bad.gcnn"
    path.write_bytes(_rewrite(model, meta={"card": json.dumps(card)}))
    with pytest.raises(ModelFileError, match=r"bad\.gcnn"):
        load_model(path)


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("min_valid", 0.0, "'min_valid'"),
        ("patch_size", 0, "'patch_size'"),
        ("class_names", ("only",), "'classes'"),
        ("class_colors", ((1, 2, 3),), "'colors'"),
    ],
)
def test_save_refuses_a_malformed_card(
    tmp_path: Path, model: GeoModel, attr: str, value: object, match: str
) -> None:
    setattr(model, attr, value)
    with pytest.raises(ModelFileError, match=rf"m\.gcnn: cannot save.*{match}"):
        save_model(model, tmp_path / "m.gcnn")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- info


def test_info_says_verified(tmp_path: Path, model: GeoModel) -> None:
    from click.testing import CliRunner
    from georaster_cnn_cli.main import cli

    v2 = save_model(model, tmp_path / "v2.gcnn")
    state = {k: v.contiguous() for k, v in model.module.state_dict().items()}
    v1 = tmp_path / "v1.gcnn"
    card = {**model.card(), "format_version": 1}
    meta = {"format": FORMAT, "format_version": "1", "card": json.dumps(card)}
    v1.write_bytes(st_save(state, metadata=meta))
    runner = CliRunner()
    out = runner.invoke(cli, ["info", str(v2)])
    assert out.exit_code == 0, out.output
    assert "verified" in out.stdout and "not verified" not in out.stdout
    out = runner.invoke(cli, ["info", str(v1)])
    assert out.exit_code == 0, out.output
    assert "not verified (format 1 file, no digest)" in out.stdout
    for path, verified in ((v2, True), (v1, False)):
        out = runner.invoke(cli, ["info", str(path), "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["verified"] is verified
    raw = v2.read_bytes()
    start, end = _data_section(raw)
    bad = tmp_path / "flipped.gcnn"
    bad.write_bytes(_flip(raw, (start + end) // 2, 0))
    out = runner.invoke(cli, ["info", str(bad)])
    assert out.exit_code == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and "flipped.gcnn" in lines[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_named_pipe_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gcnn"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match=r"pipe\.gcnn: not a regular file"):
        load_model(fifo)  # opening it for reading would wait for a writer


@pytest.mark.parametrize(
    ("provenance", "shown", "hidden"),
    [
        (
            {
                "epochs": 5,
                "epochs_run": 5,
                "early_stopping": {"patience": 0, "stopped_after": None},
            },
            "stopped early  no (ran all 5 epochs; early stopping off)",
            "None",
        ),
        (
            {
                "epochs": 8,
                "epochs_run": 8,
                "early_stopping": {"patience": 2, "stopped_after": None},
            },
            "stopped early  no (ran all 8 epochs; patience 2)",
            "None",
        ),
        (
            {"epochs": 10, "epochs_run": 3, "early_stopping": {"patience": 2, "stopped_after": 3}},
            "stopped early  yes, after epoch 3 of 10 (patience 2)",
            "stopped_after",
        ),
    ],
)
def test_info_says_whether_training_stopped_early(
    tmp_path: Path, model: GeoModel, provenance: dict, shown: str, hidden: str
) -> None:
    from click.testing import CliRunner
    from georaster_cnn_cli.main import cli

    model.provenance = provenance
    path = save_model(model, tmp_path / "m.gcnn")
    out = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(cli, ["info", str(path)])
    assert out.exit_code == 0, out.output
    lines = [" ".join(line.split()) for line in out.stdout.splitlines()]
    assert " ".join(shown.split()) in lines
    assert hidden not in out.stdout
