"""Metrics shared by evaluate and baseline, checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_pipeline.evaluation.metrics import classification_metrics, expected_calibration_error, full_proba, predictions_table
from emotion_pipeline.evaluation.reports import quality_report

LABELS = ["a", "b", "c"]
# true:      a    a    b    b    c
# predicted: a    b    b    b    a      -> 3 of 5 right
Y_TRUE = np.array([0, 0, 1, 1, 2])
PROBS = np.array([
    [0.8, 0.1, 0.1],
    [0.3, 0.6, 0.1],  # wrong, confidence 0.6
    [0.1, 0.7, 0.2],
    [0.2, 0.5, 0.3],
    [0.9, 0.05, 0.05],  # wrong, confidence 0.9
])


def test_classification_metrics_match_hand_computed_values():
    m = classification_metrics(Y_TRUE, PROBS, LABELS)
    # a: precision 1/2, recall 1/2, F1 1/2; b: precision 2/3, recall 1, F1 0.8; c: all 0.
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["examples"] == 5
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 0) / 3, abs=1e-6)
    assert m["macro_recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3, abs=1e-6)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 1 * 0) / 5, abs=1e-6)
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.666667, "recall": 1.0, "f1": 0.8, "support": 2})
    assert {name: scores["support"] for name, scores in m["per_class"].items()} == {"a": 2, "b": 2, "c": 1}


def test_classification_metrics_keys_and_ranges():
    m = classification_metrics(Y_TRUE, PROBS, LABELS, calibration_bins=5)
    expected = {f"{avg}_{score}" for avg in ("macro", "weighted") for score in ("precision", "recall", "f1")}
    assert set(m) == expected | {"accuracy", "examples", "per_class", "ece"}
    values = [m[key] for key in expected | {"accuracy", "ece"}]
    values += [v for scores in m["per_class"].values() for k, v in scores.items() if k != "support"]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(v == round(v, 6) for v in values)


def test_ece_is_zero_when_confidence_equals_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(np.array([0, 0, 0, 1]), probs) == 0.0
    assert expected_calibration_error(np.array([1, 0]), np.array([[0.0, 1.0], [1.0, 0.0]])) == 0.0


def test_ece_of_an_overconfident_model():
    # Half the examples at confidence 0.9 and half at 0.6, each group right half the time:
    # 0.5 * |0.5 - 0.9| + 0.5 * |0.5 - 0.6| = 0.25.
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    y_true = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    assert expected_calibration_error(y_true, probs) == pytest.approx(0.25)
    # The 0.9 group always right, the 0.6 group never: 0.5 * |1 - 0.9| + 0.5 * |0 - 0.6| = 0.35 with
    # 10 bins; a single bin pools them into accuracy 0.5 at confidence 0.75.
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert expected_calibration_error(y_true, probs, bins=10) == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    assert expected_calibration_error(y_true, probs, bins=1) == pytest.approx(abs(0.5 - 0.75))


def test_quality_report_has_the_class_table_and_the_most_confident_mistakes_first():
    texts = ["t0", "t1 | piped", "t2", "t3", "t4"]
    table = predictions_table(texts, Y_TRUE, PROBS, LABELS)
    metrics = classification_metrics(Y_TRUE, PROBS, LABELS)
    report = quality_report(metrics, table, LABELS, top_mistakes=5, title="Test quality")
    assert report.startswith("# Test quality\n")
    assert "| a | 0.5000 | 0.5000 | 0.5000 | 2 |" in report
    assert "| b | 0.6667 | 1.0000 | 0.8000 | 2 |" in report
    assert "| c | 0.0000 | 0.0000 | 0.0000 | 1 |" in report
    assert "| c | 1 | 0 | 0 |" in report  # confusion row: the c example was predicted a
    assert "## The 2 most confident mistakes" in report
    first, second = report.index("| 0.9000 | c | a | t4 |"), report.index("| 0.6000 | a | b | t1 \\| piped |")
    assert first < second

    short = quality_report(metrics, table, LABELS, top_mistakes=1, title="Test quality")
    assert "## The 1 most confident mistakes" in short
    assert "| 0.9000 | c | a | t4 |" in short and "t1" not in short


def test_predictions_keep_every_class_probability():
    table = predictions_table([f"t{i}" for i in range(len(Y_TRUE))], Y_TRUE, PROBS, LABELS)
    assert list(table.columns) == ["text", "actual", "predicted", "confidence", "correct"] + [f"prob_{name}" for name in LABELS]
    np.testing.assert_allclose(table[[f"prob_{name}" for name in LABELS]].to_numpy(), PROBS, atol=1e-6)


def test_full_proba_places_columns_at_class_ids():
    partial = np.array([[0.7, 0.3], [0.2, 0.8]])
    full = full_proba(partial, np.array([0, 2]), 4)  # classes 1 and 3 absent from train
    np.testing.assert_array_equal(full, [[0.7, 0.0, 0.3, 0.0], [0.2, 0.0, 0.8, 0.0]])
