"""Acceptance check through the CLI: chips that differ only in spatial structure.

A smaller version of ``benchmarks/check_chip_structure.py`` (which generates the data;
see docs/training-chips.md, "A chip set we did not make"): two classes of 64 x 64
float32 chips in which every chip is a permutation of the same 4096 values (so the
per-chip histogram and the per-pixel distribution are identical in both classes),
some with NaN holes. Class ``parcels`` holds piecewise-constant Voronoi maps, class
``surrogates`` IAAFT surrogates of other parcel maps: the same values and power
spectrum, but no edges. Only a model that looks at neighbourhoods can tell them apart.

``georaster-cnn train`` (a folder of class folders of ``.npy``) for ``--arch cnn`` and
``--arch mlp`` with the same epochs and seed, then ``georaster-cnn evaluate`` on a
held-out ``.npz`` made from another seed: the CNN must clearly beat the MLP, and the
MLP must stay near chance.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from click.testing import CliRunner
from georaster_cnn_cli.main import cli

CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "check_chip_structure.py"
N_TRAIN, N_TEST = 40, 50  # chips per class
EPOCHS, SEED = 2, 0
ENV: dict[str, str | None] = {"COLUMNS": "250", "NO_COLOR": "1", "FORCE_COLOR": None}


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_georaster_chip_structure", CHECK)
    assert spec is not None and spec.loader is not None, f"cannot import {CHECK}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # registered while it loads, as dataclasses etc. need
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return _load_check()


@pytest.fixture(scope="module")
def chip_data(check: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    names = check.DESIGNS["parcels"]
    out = tmp_path_factory.mktemp("chip_structure")
    tr_x, tr_y = check.make_chips(N_TRAIN, SEED, design="parcels")
    te_x, te_y = check.make_chips(N_TEST, SEED + 1000, design="parcels")
    return {
        "train": check.write_folder(out / "train_chips", tr_x, tr_y, names),
        "test": check.write_npz(out / "test_chips.npz", te_x, te_y, names),
    }


def _cli(*args: str | Path) -> str:
    result = CliRunner(env=ENV).invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_generated_classes_differ_only_in_structure(check: ModuleType) -> None:
    """Every chip holds the same values; the classes differ in edges, not in roughness."""
    chips, labels = check.make_chips(40, 7, design="parcels")
    assert chips.shape == (80, 64, 64) and chips.dtype == np.float32
    assert np.bincount(labels).tolist() == [40, 40]
    # NaN holes (nodata) in a few chips, never below the default min_valid of 0.5
    holed = np.isnan(chips).any(axis=(1, 2))
    assert 1 <= holed.sum() <= 12
    assert np.isfinite(chips).mean(axis=(1, 2)).min() >= 0.6
    # every chip without a hole is a permutation of the same 4096 values
    whole, y = chips[~holed].reshape(-1, 64 * 64), labels[~holed]
    sorted_chips = np.sort(whole, axis=1)
    values = check.quantile_values(64 * 64)
    np.testing.assert_array_equal(sorted_chips, np.broadcast_to(values, sorted_chips.shape))
    d = np.diff(chips[~holed], axis=2).reshape(len(y), -1)
    rough = (d**2).mean(axis=1)
    kurt = ((d / d.std(axis=1, keepdims=True)) ** 4).mean(axis=1)
    # the same mean squared neighbour difference (within 15 %) ...
    assert abs(rough[y == 0].mean() / rough[y == 1].mean() - 1) < 0.15
    # ... but the parcels' differences are heavy-tailed (edges), the surrogates' Gaussian
    assert kurt[y == 0].min() > kurt[y == 1].max()


def test_cnn_beats_mlp_on_structure_only_chips(chip_data: dict[str, Path], tmp_path: Path) -> None:
    accuracy: dict[str, float] = {}
    for arch in ("cnn", "mlp"):
        model = tmp_path / f"{arch}.safetensors"
        report = tmp_path / f"report_{arch}"
        _cli(
            "train", chip_data["train"], "--arch", arch, "--epochs", EPOCHS, "--seed", SEED,
            "--batch-size", 16, "--device", "cpu", "-o", model,
        )  # fmt: skip
        _cli("evaluate", model, chip_data["test"], "--device", "cpu", "-o", report)
        metrics = json.loads((report / "metrics.json").read_text())
        assert metrics["n_evaluated"] == 2 * N_TEST, metrics["n_excluded"]
        accuracy[arch] = float(metrics["accuracy"])
    cnn, mlp = accuracy["cnn"], accuracy["mlp"]
    print(f"test accuracy: cnn {cnn:.3f}, mlp {mlp:.3f}")  # shown with pytest -s / -rP
    assert cnn > 0.8, accuracy
    assert cnn > mlp + 0.15, accuracy
    assert mlp < 0.7, accuracy
