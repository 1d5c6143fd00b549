"""Fuzz: mutated model files raise only ModelFileError, never hang, never load as another model.

Seeded and bounded (a few seconds). Byte-level cases flip bits, overwrite, truncate,
insert, delete or duplicate bytes of a saved model (half of them aimed at the
header, where the card lives) and load the result: it must be refused with a
:class:`~georaster_cnn.ModelFileError`, or load as exactly the saved model (the same
class map on a small raster). Card-level cases put random JSON values into the
card's fields and store it with matching digests (a crafted file, not a damaged
one): it must be refused with a ModelFileError or load and classify.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from fuzz import deadline

from georaster_cnn import GeoModel, ModelFileError, load_model, open_raster, predict, save_model
from georaster_cnn.model.modelfile import _pack

BYTE_CASES = 500
CARD_CASES = 200
SECONDS_PER_CASE = 10


def _mutate(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    data = bytearray(raw)
    header_end = 8 + int.from_bytes(raw[:8], "little")
    # Half the cases aim at the length field and header (card, digests, offsets).
    end = header_end if rng.random() < 0.5 else len(data)

    def pos() -> int:
        return int(rng.integers(0, end))

    def junk() -> bytes:
        return rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()

    kinds = ["flip", "overwrite", "truncate", "insert", "delete", "duplicate", "reformat"]
    kind = str(rng.choice(kinds))
    if kind == "reformat":  # same header, other bytes (order, spacing): harmless, must load
        header = json.loads(raw[8:header_end])
        keys = list(header)
        rng.shuffle(keys)
        text = json.dumps({k: header[k] for k in keys}, indent=int(rng.integers(0, 3))).encode()
        text += b" " * (-len(text) % 8)
        return kind, len(text).to_bytes(8, "little") + text + raw[header_end:]
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            data[pos()] ^= 1 << int(rng.integers(8))
    elif kind == "overwrite":
        p, j = pos(), junk()
        data[p : p + len(j)] = j
    elif kind == "truncate":
        del data[int(rng.integers(0, len(data))) :]
    elif kind == "insert":
        data[pos() : pos()] = junk() if rng.random() < 0.5 else b" " * int(rng.integers(1, 9))
    elif kind == "delete":
        p = pos()
        del data[p : p + int(rng.integers(1, 64))]
    else:
        p = pos()
        data[p:p] = data[p : p + int(rng.integers(1, 64))]
    return kind, bytes(data)


def _load_or_refuse(path: Path, raw: bytes, case: str) -> GeoModel | None:
    """``raw`` written to ``path`` and loaded: the model, or None when refused with a
    ModelFileError in time; any other exception (the bug these tests look for) fails."""
    path.write_bytes(raw)
    try:
        with deadline(SECONDS_PER_CASE):
            return load_model(path)
    except ModelFileError:
        return None
    except Exception as exc:
        pytest.fail(f"{case}: {type(exc).__name__}: {exc}")


@pytest.fixture
def saved(
    tmp_path: Path, make_model: Callable[..., GeoModel], make_raster: Callable[..., Path]
) -> tuple[GeoModel, Path, xr.DataArray, xr.Dataset]:
    model = make_model(2, ("a", "b", "c"), arch="cnn", patch_size=8)
    path = save_model(model, tmp_path / "good.safetensors")
    data = open_raster(make_raster(tmp_path, "r.tif", height=24, width=20, count=2))
    return model, path, data, predict(data, model, stride=4).compute()


def test_mutated_model_bytes(
    tmp_path: Path, saved: tuple[GeoModel, Path, xr.DataArray, xr.Dataset]
) -> None:
    model, good, data, expected = saved
    raw = good.read_bytes()
    rng = np.random.default_rng(10)
    outcomes = {"refused": 0, "loaded": 0}
    for case in range(BYTE_CASES):
        kind, mutated = _mutate(raw, rng)
        back = _load_or_refuse(tmp_path / "bad.safetensors", mutated, f"case {case} ({kind})")
        outcomes["refused" if back is None else "loaded"] += 1
        if back is None:
            continue
        # Whatever survived the checks is the saved model: the same map, the same id.
        assert back.checksum == model.checksum, f"case {case} ({kind})"
        got = predict(data, back, stride=4).compute()
        for var in ("class", "probability"):
            np.testing.assert_array_equal(got[var].values, expected[var].values, f"case {case}")
    assert outcomes["refused"] > BYTE_CASES * 0.8 and outcomes["loaded"] > 0


_VALUES: list[Any] = [
    None, True, 0, -1, 1, 2, 0.5, 1.5, -0.0, math.nan, math.inf, 10**30, "", "x", "float32",
    [], [0], [1, 2, 3], ["a", "b"], [[1, 2, 3]], [[0, 0, 0], [1, 1, 1], [2, 2, 2]], {},
    {"widths": [4]}, {"widths": [4, 8]}, {"dropout": 2.0}, {"widths": "x"}, [None, None, None],
]  # fmt: skip


def _mutate_card(card: dict[str, Any], rng: np.random.Generator) -> str:
    value = _VALUES[int(rng.integers(len(_VALUES)))]
    if rng.random() < 0.3:
        key = str(rng.choice(sorted(card["stats"])))
        if rng.random() < 0.5 and isinstance(card["stats"][key], list):
            card["stats"][key][int(rng.integers(len(card["stats"][key])))] = value
        else:
            card["stats"][key] = value
        return f"stats.{key} = {value!r}"
    key = str(rng.choice(sorted(card)))
    if rng.random() < 0.1:
        del card[key]
        return f"del {key}"
    card[key] = value
    return f"{key} = {value!r}"


def test_crafted_cards(
    tmp_path: Path, saved: tuple[GeoModel, Path, xr.DataArray, xr.Dataset]
) -> None:
    model, _, data, expected = saved
    state = {k: v.contiguous() for k, v in model.module.state_dict().items()}
    rng = np.random.default_rng(11)
    outcomes = {"refused": 0, "loaded": 0}
    for case in range(CARD_CASES):
        card = json.loads(json.dumps(model.card()))
        what = _mutate_card(card, rng)
        packed = _pack(state, card)
        back = _load_or_refuse(tmp_path / "crafted.safetensors", packed, f"case {case} ({what})")
        outcomes["refused" if back is None else "loaded"] += 1
        if back is None:
            continue
        got = predict(data, back, stride=4, check=False).compute()  # a loaded model classifies
        assert got["class"].shape == expected["class"].shape, what
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0
