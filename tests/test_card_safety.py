"""The model card refuses control characters and patches too large for memory, on save and load.

Files with such cards are crafted the way ``test_modelfile.py`` crafts them: the card is
swapped in and the digests recomputed (``_pack``), so loading reaches the card checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from georaster_cnn import GeoModel, InputError, ModelFileError, load_model, save_model
from georaster_cnn.model._card import MAX_PATCH_SIZE, MAX_WINDOW_BYTES
from georaster_cnn.model.architectures import build_model
from georaster_cnn.model.modelfile import _pack

MakeModel = Callable[..., GeoModel]


@pytest.fixture
def model(make_model: MakeModel) -> GeoModel:
    return make_model(
        3,
        ("water", "forest", "urban"),
        arch="cnn",
        band_names=("B02", "B03", "B04"),
        patch_size=16,
        provenance={"data": ["scene.tif"], "epochs": 3},
    )


def _crafted(tmp_path: Path, model: GeoModel, card: dict[str, Any]) -> Path:
    """A model file holding ``card`` and ``model``'s weights, with matching digests."""
    state = {k: v.contiguous() for k, v in model.module.state_dict().items()}
    path = tmp_path / "crafted.gcnn"
    path.write_bytes(_pack(state, card))
    return path


# --------------------------------------------------------------------------- control characters

#: name -> (the character, how the message shows it)
CONTROLS = {
    "ESC": ("\x1b", r"'\\x1b' \(U\+001B\)"),
    "BEL": ("\x07", r"'\\x07' \(U\+0007\)"),
    "NUL": ("\x00", r"'\\x00' \(U\+0000\)"),
    "CR": ("\r", r"'\\r' \(U\+000D\)"),
    "LF": ("\n", r"'\\n' \(U\+000A\)"),
    "TAB": ("\t", r"'\\t' \(U\+0009\)"),
    "DEL": ("\x7f", r"'\\x7f' \(U\+007F\)"),
    "C1 CSI": ("\x9b", r"'\\x9b' \(U\+009B\)"),
    "C1 NEL": ("\x85", r"'\\x85' \(U\+0085\)"),
}


@pytest.mark.parametrize("name", CONTROLS)
def test_control_character_in_a_class_name_is_refused_on_save_and_load(
    tmp_path: Path, model: GeoModel, name: str
) -> None:
    char, shown = CONTROLS[name]
    classes = ["water", f"for{char}[31mest", "urban"]
    card = {**model.card(), "classes": classes}
    with pytest.raises(ModelFileError, match=rf"crafted\.gcnn.*'classes\[1\]'.*{shown}") as info:
        load_model(_crafted(tmp_path, model, card))
    assert "position 3" in str(info.value) and "control character" in str(info.value)

    model.class_names = tuple(classes)
    with pytest.raises(
        ModelFileError, match=rf"m\.gcnn: cannot save.*'classes\[1\]'.*{shown}"
    ) as info:
        save_model(model, tmp_path / "out" / "m.gcnn")
    assert "class_names" in str(info.value)  # the fix names the attribute to change
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda c: c.__setitem__("bands", ["B02", "B03\x1b]0;pwned\x07", "B04"]), r"'bands\[1\]'"),
        (lambda c: c["stats"].__setitem__("names", ["B02", "B03", "B\x0704"]), r"'stats.names\[2\]'"),
        (lambda c: c.__setitem__("arch", "cnn\x1b"), "'arch'"),
        (lambda c: c["provenance"]["data"].append("x\x1b[2J.tif"), r"'provenance.data\[1\]'"),
        (lambda c: c["provenance"].__setitem__("not\x1bes", "x"), "'provenance key'"),
        (lambda c: c["provenance"].__setitem__("notes", {"a": "\x9b31m"}), "'provenance.notes.a'"),
        (lambda c: c.__setitem__("hparams", {"widths": [4, 8], "\x07": 1}), "'hparams key'"),
        (lambda c: c.__setitem__("classes", ["water", "\ud800", "urban"]), r"'classes\[1\]'"),
    ],
    ids=["band", "stats name", "arch", "provenance text", "provenance key", "nested",
         "hparams key", "lone surrogate"],
)  # fmt: skip
def test_control_character_in_any_text_of_the_card_is_refused(
    tmp_path: Path, model: GeoModel, change: Callable[[dict], None], where: str
) -> None:
    card = json.loads(json.dumps(model.card()))
    change(card)
    with pytest.raises(ModelFileError, match=rf"crafted\.gcnn: model card field {where} holds"):
        load_model(_crafted(tmp_path, model, card))


def test_band_and_provenance_control_characters_refused_on_save(
    tmp_path: Path, model: GeoModel
) -> None:
    model.band_names = ("B02", "B\x1b03", "B04")
    with pytest.raises(ModelFileError, match=r"cannot save.*'bands\[1\]'.*band_names"):
        save_model(model, tmp_path / "m.gcnn")
    model.band_names = ("B02", "B03", "B04")
    model.provenance = {"data": ["a\x1b[31m.tif"]}
    with pytest.raises(ModelFileError, match=r"cannot save.*'provenance.data\[0\]'.*provenance"):
        save_model(model, tmp_path / "m.gcnn")
    assert list(tmp_path.iterdir()) == []


def test_tab_and_line_feed_are_allowed_in_provenance_text(tmp_path: Path, model: GeoModel) -> None:
    model.provenance = {"notes": "first line\n\tindented second line", "data": ["scene.tif"]}
    back = load_model(save_model(model, tmp_path / "m.gcnn"))
    assert back.provenance == model.provenance
    # ... but not in names, nor in a provenance key
    model.provenance = {"two\nlines": 1}
    with pytest.raises(ModelFileError, match="'provenance key'"):
        save_model(model, tmp_path / "n.gcnn")


def test_printable_unicode_names_still_load(tmp_path: Path, model: GeoModel) -> None:
    model.class_names = ("Wasser ~ Sée", "森林", "urban 🏙 ½")
    model.band_names = ("B02 (blue, 490 nm)", "B03 ¶", "B04 \u00a0red")  # NBSP is not a control
    back = load_model(save_model(model, tmp_path / "m.gcnn"))
    assert back.class_names == model.class_names and back.band_names == model.band_names


# --------------------------------------------------------------------------- patch size and memory


def test_build_refuses_absurd_patch_sizes() -> None:
    with pytest.raises(
        InputError, match=rf"patch_size should be from 1 to {MAX_PATCH_SIZE}.*65536"
    ):
        build_model("cnn", in_channels=3, n_classes=2, patch_size=65536)
    limit = f"{MAX_WINDOW_BYTES // 2**20} MiB"
    with pytest.raises(InputError, match=rf"1,024 MiB \(2048 x 2048 pixels x 64 bands.*{limit}"):
        build_model("cnn_dense", in_channels=64, n_classes=2, patch_size=2048)
    for arch in ("cnn", "cnn_dense", "resnet", "mlp"):
        with pytest.raises(InputError, match="patch_size"):
            build_model(arch, in_channels=3, n_classes=2, patch_size=10**6)
        with pytest.raises(InputError, match="patch_size"):
            build_model(arch, in_channels=3, n_classes=2, patch_size=0)
    # at the limit, with few bands, a network is built (on the meta device: no storage)
    with torch.device("meta"):
        build_model("cnn", in_channels=4, n_classes=2, patch_size=MAX_PATCH_SIZE)


def test_card_with_a_huge_patch_is_refused_on_load_and_save(
    tmp_path: Path, model: GeoModel
) -> None:
    # 65536 x 65536 x 3 bands x 4 bytes: 48 GiB per window
    path = _crafted(tmp_path, model, {**model.card(), "patch_size": 65536})
    with pytest.raises(
        ModelFileError,
        match=rf"crafted\.gcnn: model card field 'patch_size'.*{MAX_PATCH_SIZE}.*65536",
    ):
        load_model(path)
    model.patch_size = 65536
    with pytest.raises(ModelFileError, match=rf"cannot save.*'patch_size'.*{MAX_PATCH_SIZE}"):
        save_model(model, tmp_path / "out.gcnn")
    assert not (tmp_path / "out.gcnn").exists()


def test_card_whose_windows_exceed_the_memory_bound_is_refused(
    tmp_path: Path, make_model: MakeModel
) -> None:
    five = make_model(5, arch="cnn", patch_size=16)
    # 4096 x 4096 x 5 bands x 4 bytes = 320 MiB > 256 MiB, though 4096 is allowed as such
    path = _crafted(tmp_path, five, {**five.card(), "patch_size": MAX_PATCH_SIZE})
    message = r"'patch_size' gives windows of 320 MiB \(4096 x 4096 pixels x 5 bands x 4 bytes\)"
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(path)
    assert re.search(r"limit is 256 MiB per window", str(info.value))
    five.patch_size = MAX_PATCH_SIZE
    with pytest.raises(ModelFileError, match=r"cannot save.*gives windows of 320 MiB"):
        save_model(five, tmp_path / "out.gcnn")


def test_card_at_the_limits_loads(tmp_path: Path, model: GeoModel) -> None:
    # 4096 x 4096 x 3 bands x 4 bytes = 192 MiB: allowed (the cnn's weights do not depend on p)
    path = _crafted(tmp_path, model, {**model.card(), "patch_size": MAX_PATCH_SIZE})
    assert load_model(path).patch_size == MAX_PATCH_SIZE


def test_control_characters_in_label_class_names_are_refused_when_read() -> None:
    import geopandas as gpd
    from shapely.geometry import Point

    from georaster_cnn.io.classmap import parse_names
    from georaster_cnn.training.vector_labels import prepare_vector_labels

    with pytest.raises(InputError, match="control character"):
        parse_names('["water", "fo\\u001b[31mrest"]', "labels.tif")
    gdf = gpd.GeoDataFrame(
        {"cls": ["water", "bad\x07name"]}, geometry=[Point(0, 0), Point(1, 1)], crs="EPSG:4326"
    )
    with pytest.raises(InputError, match="control character"):
        prepare_vector_labels(gdf, label_column="cls")


def test_training_refuses_an_absurd_patch_before_cutting_windows() -> None:
    import numpy as np
    import xarray as xr

    from georaster_cnn import train

    data = xr.DataArray(np.zeros((2, 8, 8), np.float32), dims=("band", "y", "x"))
    labels = xr.DataArray(np.zeros((8, 8), np.float32), dims=("y", "x"))
    with pytest.raises(InputError, match=rf"patch_size should be from 1 to {MAX_PATCH_SIZE}"):
        train(data, labels, patch_size=65536, epochs=1, device="cpu")
