"""evaluate: a confusion matrix known by construction, exclusions, validation, report files, CLI.

The stand-in model (conftest ``WindowMean``) predicts class 1 (``high``) iff the window
mean of band 1 is > 0, so with ``patch=8, stride=4`` on a raster whose left half is +1
and right half -1, the class of every cell is known by hand:

* cell ``(i, j)`` has window columns ``4j-2 .. 4j+5`` and centre pixel ``(4i+2, 4j+2)``;
* columns 0, 1 of cells are ``high`` (more +1 than -1 pixels), columns 2, 3 ``low``;
* rows 0..7 of the raster are NaN, so cell rows 0 and 1 (windows with < 50 % valid
  pixels) get no prediction;
* the raster is 26 rows high: ``ceil(26/4) = 7`` rows of cells, the last one's centre
  (row 26) lies outside the raster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from click.testing import CliRunner, Result
from geo import NORTH_UP
from georaster_cnn_cli.main import cli

from georaster_cnn import (
    EvaluationReport,
    GeoModel,
    InputError,
    OutputExistsError,
    PatchGrid,
    evaluate,
    open_labels,
    open_raster,
    save_model,
)
from georaster_cnn.evaluation.report import REPORT_FILES

MakeRaster = Callable[..., Path]
MakeModel = Callable[..., GeoModel]

H, W, PATCH, STRIDE = 26, 16, 8, 4
ENV: dict[str, str | None] = {
    "COLUMNS": "250",
    "NO_COLOR": "1",
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
}

#: Rows = true, columns = predicted (0 low, 1 high); see make_case.
EXPECTED = np.array([[5, 1], [3, 6]])
EXPECTED_EXCLUDED = {"centre_outside_raster": 4, "unlabelled": 2, "no_prediction": 7}


def scene_values() -> np.ndarray:
    values = np.where(np.arange(W) < W // 2, 1.0, -1.0) * np.ones((H, 1))
    values[:8] = np.nan  # cell rows 0 and 1: no prediction
    return values.astype("float32")


def label_values(seed: int = 0) -> np.ndarray:
    """Random 0/1 everywhere (only centres count), then the centres set on purpose."""
    lab = np.random.default_rng(seed).integers(0, 2, (H, W)).astype("uint8")
    for i in range(7):
        for j in range(4):
            r, c = 4 * i + 2, 4 * j + 2
            if r < H:
                lab[r, c] = 1 if j < 2 else 0  # the truth the model gets right
    lab[2, 2] = 255  # cell (0, 0): unlabelled (and no prediction: counted as unlabelled)
    lab[22, 6] = 255  # cell (5, 1): unlabelled, predicted high
    lab[10, 2] = 0  # cell (2, 0): true low, predicted high
    lab[14, 10] = 1  # cell (3, 2): true high, predicted low
    lab[18, 14] = 1  # cell (4, 3): true high, predicted low
    lab[10, 14] = 1  # cell (2, 3): true high, predicted low
    return lab


@pytest.fixture
def case(tmp_path: Path, make_raster: MakeRaster) -> tuple[Path, Path]:
    data = make_raster(tmp_path, "scene.tif", height=H, width=W, values=scene_values())
    labels = make_raster(
        tmp_path, "labels.tif", height=H, width=W, dtype="uint8", nodata=255, values=label_values()
    )
    return data, labels


@pytest.fixture
def model(make_model: MakeModel) -> GeoModel:
    return make_model(1, patch_size=PATCH, provenance={"stride": STRIDE})


def run_eval(model: GeoModel, data: Path, labels: Path, **kw: Any) -> EvaluationReport:
    return evaluate(open_raster(data), model, open_labels(labels), device="cpu", **kw)


# --------------------------------------------------------------------------- metrics


def test_confusion_matrix_known_by_construction(model: GeoModel, case: tuple[Path, Path]) -> None:
    report = run_eval(model, *case)
    np.testing.assert_array_equal(report.confusion, EXPECTED)
    assert report.class_names == ("low", "high")
    assert report.n_evaluated == 15
    assert report.n_excluded == EXPECTED_EXCLUDED
    assert report.n_evaluated + sum(report.n_excluded.values()) == 7 * 4  # every cell accounted
    assert report.stride == STRIDE  # from the model's provenance
    assert report.accuracy == pytest.approx(11 / 15)
    # low: TP 5, FP 3, FN 1; high: TP 6, FP 1, FN 3
    np.testing.assert_allclose(report.precision, [5 / 8, 6 / 7])
    np.testing.assert_allclose(report.recall, [5 / 6, 6 / 9])
    np.testing.assert_allclose(report.f1, [10 / 14, 12 / 16])
    np.testing.assert_array_equal(report.support, [6, 9])
    assert report.macro_f1 == pytest.approx((10 / 14 + 12 / 16) / 2)
    assert report.weighted_f1 == pytest.approx((6 * 10 / 14 + 9 * 12 / 16) / 15)
    assert report.zero_division == {"precision": [], "recall": [], "f1": []}
    with pytest.raises(ValueError, match="read-only"):
        report.confusion[0, 0] = 1


def test_matches_brute_force_reference(
    tmp_path: Path,
    make_raster: MakeRaster,
    make_model: MakeModel,
    int_values: Callable[..., np.ndarray],
    expected: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    """Random data with holes, random labels, a stride that does not divide the size."""
    h, w, patch, stride = 37, 29, 8, 3
    arr = int_values((1, h, w), seed=3)
    arr[:, 5:12, 4:15] = np.nan
    rng = np.random.default_rng(4)
    lab = rng.integers(0, 2, (h, w)).astype("uint8")
    lab[rng.random((h, w)) < 0.2] = 255
    data = make_raster(tmp_path, "d.tif", height=h, width=w, values=arr)
    labels = make_raster(
        tmp_path, "l.tif", height=h, width=w, dtype="uint8", nodata=255, values=lab
    )
    m = make_model(1, patch_size=patch, min_valid=0.6)
    report = run_eval(m, data, labels, stride=stride)

    cls, _ = expected(arr, patch, stride, 0.6)
    c = PatchGrid(h, w, patch=patch, stride=stride).center_offset
    cm = np.zeros((2, 2), int)
    excluded = dict.fromkeys(EXPECTED_EXCLUDED, 0)
    for i in range(cls.shape[0]):
        for j in range(cls.shape[1]):
            r, col = stride * i + c, stride * j + c
            if r >= h or col >= w:
                excluded["centre_outside_raster"] += 1
            elif lab[r, col] == 255:
                excluded["unlabelled"] += 1
            elif cls[i, j] == 255:
                excluded["no_prediction"] += 1
            else:
                cm[lab[r, col], cls[i, j]] += 1
    np.testing.assert_array_equal(report.confusion, cm)
    assert report.n_excluded == excluded
    assert min(excluded.values()) > 0  # the case exercises every reason


def test_default_stride(make_model: MakeModel, case: tuple[Path, Path]) -> None:
    m = make_model(1, patch_size=PATCH)  # no stride in the provenance: patch // 4
    assert run_eval(m, *case).stride == PATCH // 4


def test_several_rasters_add_up(model: GeoModel, case: tuple[Path, Path]) -> None:
    data, labels = open_raster(case[0]), open_labels(case[1])
    report = evaluate([data, data], model, [labels, labels], device="cpu")
    np.testing.assert_array_equal(report.confusion, 2 * EXPECTED)
    assert report.n_excluded == {k: 2 * v for k, v in EXPECTED_EXCLUDED.items()}
    assert report.accuracy == pytest.approx(11 / 15)
    assert len(report.sources) == 2


def test_zero_division_is_zero_and_listed() -> None:
    # b: predicted once, never a label; c: a label, never predicted; d: neither
    cm = np.array([[3, 1, 0, 0], [0, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])
    report = EvaluationReport(("a", "b", "c", "d"), cm)
    np.testing.assert_allclose(report.precision, [3 / 5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(report.recall, [3 / 4, 0.0, 0.0, 0.0])
    assert report.zero_division == {
        "precision": ["c", "d"],
        "recall": ["b", "d"],
        "f1": ["b", "c", "d"],
    }
    # d occurs neither as label nor as prediction: not part of the macro average
    f1_a = 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)
    assert report.macro_f1 == pytest.approx(f1_a / 3)
    assert report.weighted_f1 == pytest.approx(f1_a * 4 / 6)
    assert report.to_dict()["macro_f1_classes"] == ["a", "b", "c"]
    with pytest.raises(InputError, match="4 x 4"):
        EvaluationReport(("a", "b", "c", "d"), cm[:3])


# --------------------------------------------------------------------------- validation


def test_label_ids_out_of_range(
    tmp_path: Path, make_raster: MakeRaster, model: GeoModel, case: tuple[Path, Path]
) -> None:
    lab = label_values()
    lab[0, 1] = 5  # not a window centre: still caught
    lab[3, 3] = 7
    bad = make_raster(tmp_path, "bad.tif", height=H, width=W, dtype="uint8", nodata=255, values=lab)
    with pytest.raises(InputError, match=r"5, 7 .*2 classes \(0 low, 1 high\)"):
        run_eval(model, case[0], bad)


def test_misaligned_labels(
    tmp_path: Path, make_raster: MakeRaster, model: GeoModel, case: tuple[Path, Path]
) -> None:
    small = make_raster(tmp_path, "small.tif", height=H - 2, width=W, dtype="uint8", nodata=255)
    with pytest.raises(InputError, match="same grid"):
        run_eval(model, case[0], small)
    shifted = make_raster(
        tmp_path, "shifted.tif", height=H, width=W, dtype="uint8", nodata=255,
        transform=NORTH_UP @ Affine.translation(1, 0),
    )  # fmt: skip
    with pytest.raises(InputError, match="transform"):
        run_eval(model, case[0], shifted)


def test_bad_inputs(model: GeoModel, case: tuple[Path, Path]) -> None:
    data, labels = open_raster(case[0]), open_labels(case[1])
    with pytest.raises(InputError, match="one label raster per input raster"):
        evaluate([data, data], model, [labels])
    with pytest.raises(InputError, match=r"dims \(y, x\)"):
        evaluate(data, model, labels.expand_dims("band"))
    none = xr.full_like(labels, np.nan)
    with pytest.raises(InputError, match="nothing to evaluate"):
        evaluate(data, model, none, device="cpu")


# --------------------------------------------------------------------------- report files


def test_report_files(tmp_path: Path, model: GeoModel, case: tuple[Path, Path]) -> None:
    report = run_eval(model, *case)
    out = tmp_path / "report" / "nested"
    written = report.write(out)
    assert sorted(p.name for p in written) == sorted(REPORT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # no temporary files

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(11 / 15)
    assert metrics["confusion_matrix"] == EXPECTED.tolist()
    assert metrics["n_excluded"] == EXPECTED_EXCLUDED
    assert metrics["per_class"]["high"]["recall"] == pytest.approx(6 / 9)
    assert metrics["stride"] == STRIDE
    assert metrics["sources"][0]["labels"].endswith("labels.tif")

    per_class = (out / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class_id,class,precision,recall,f1,support,predicted"
    assert per_class[1].startswith("0,low,0.625000,0.833333,0.714286,6,8")
    cm = (out / "confusion_matrix.csv").read_text().splitlines()
    assert cm == ["true \\ predicted,low,high", "low,5,1", "high,3,6"]

    png = (out / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000

    with pytest.raises(OutputExistsError, match="overwrite"):
        report.write(out)
    report.write(out, overwrite=True)


# --------------------------------------------------------------------------- CLI


def run(args: list[str | Path]) -> Result:
    return CliRunner(env=ENV).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_end_to_end(tmp_path: Path, model: GeoModel, case: tuple[Path, Path]) -> None:
    model_path = save_model(model, tmp_path / "m.safetensors")
    data, labels = case
    out = tmp_path / "rep"
    args: list[str | Path] = [
        "evaluate", model_path, data, data, "--labels", labels, "--labels", labels,
        "-o", out, "--device", "cpu",
    ]  # fmt: skip
    res = run(args)
    assert res.exit_code == 0, res.output
    assert "accuracy 0.733" in res.stdout
    assert "excluded: 8 centre outside the raster, 4 unlabelled, 14 no prediction" in res.stdout
    assert "confusion matrix" in res.stdout and "recall" in res.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == (2 * EXPECTED).tolist()

    res = run(args)  # a report is there: refused, nothing done
    assert res.exit_code == 2
    assert "--overwrite" in res.stderr
    assert run(["-q", *args, "--overwrite"]).exit_code == 0


def test_cli_failures(tmp_path: Path, model: GeoModel, case: tuple[Path, Path]) -> None:
    model_path = save_model(model, tmp_path / "m.safetensors")
    data, labels = case
    out = tmp_path / "rep"
    base: list[str | Path] = ["evaluate", model_path, data, "-o", out, "--device", "cpu"]

    res = run([*base, data, "--labels", labels])  # two INPUTs, one --labels
    assert res.exit_code == 2 and "once per INPUT" in res.stderr
    res = run([*base, "--labels", labels, "--label-column", "cls"])
    assert res.exit_code == 2 and "drop --label-column" in res.stderr
    res = run([*base, "--labels", tmp_path / "labels.gpkg", "--label-column", "cls"])
    assert res.exit_code == 1 and "labels.gpkg: no such vector label file" in res.stderr
    res = run([*base, "--labels", labels, "--stride", "9"])
    assert res.exit_code == 2 and "patch size 8" in res.stderr
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    res = run(["evaluate", tmp_path / "junk.safetensors", data, "--labels", labels, "-o", out])
    assert res.exit_code == 2 and "cannot load model" in res.stderr
    assert not out.exists()  # nothing written on failure
