"""Bootstrap intervals and paired comparisons (emotion_pipeline.evaluation.uncertainty) on synthetic predictions.

Fast unit tests: the vectorised scores against scikit-learn, intervals that hold the point estimate
and repeat byte for byte under the same seed, a clear improvement found significant, identical
models at p = 1, and predictions over different test sets refused.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom
from sklearn.metrics import accuracy_score, f1_score

from emotion_pipeline.errors import UserError
from emotion_pipeline.evaluation.metrics import classification_metrics, predictions_table
from emotion_pipeline.evaluation.reports import per_class_table, quality_report, verdict
from emotion_pipeline.evaluation.uncertainty import paired_comparison, paired_labels, score_intervals, scores

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
# The class balance of dair-ai/emotion's test split (surprise: 66 of 2,000).
SHARES = [0.2905, 0.3475, 0.0795, 0.1375, 0.112, 0.033]


def synthetic(n: int = 2000, right: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True labels with the test split's class balance, and a model right on about ``right`` of them."""
    rng = np.random.default_rng(seed)
    y_true = rng.choice(len(LABELS), n, p=SHARES)
    y_pred = np.where(rng.random(n) < right, y_true, rng.integers(0, len(LABELS), n))
    return y_true, y_pred


def improved(y_true: np.ndarray, y_pred: np.ndarray, share: float, seed: int = 1) -> np.ndarray:
    """``y_pred`` with about ``share`` of its mistakes corrected: a strictly better model on the same texts."""
    fix = np.random.default_rng(seed).random(len(y_true)) < share
    return np.where(fix, y_true, y_pred)


def test_vectorised_scores_match_scikit_learn():
    y_true, y_pred = synthetic(500, right=0.6)
    y_pred[y_pred == 5] = 0  # surprise never predicted: F1 0, as scikit-learn's zero_division=0
    got = scores(y_true, y_pred, len(LABELS))
    assert got[0] == pytest.approx(accuracy_score(y_true, y_pred))
    assert got[1] == pytest.approx(f1_score(y_true, y_pred, labels=range(6), average="macro", zero_division=0))
    assert got[2] == pytest.approx(f1_score(y_true, y_pred, labels=range(6), average="weighted", zero_division=0))
    np.testing.assert_allclose(got[3:], f1_score(y_true, y_pred, labels=range(6), average=None, zero_division=0))
    # Vectorised over resamples: each row scored on its own.
    rows = scores(np.stack([y_true, y_true[::-1]]), np.stack([y_pred, y_true[::-1]]), len(LABELS))
    assert rows.shape == (9, 2)
    np.testing.assert_allclose(rows[:, 0], got)
    np.testing.assert_allclose(rows[:3, 1], 1.0)


def test_intervals_hold_the_scores_and_repeat_byte_for_byte():
    y_true, y_pred = synthetic()
    metrics = classification_metrics(y_true, np.eye(len(LABELS))[y_pred], LABELS)
    intervals = score_intervals(y_true, y_pred, LABELS, resamples=2000, confidence=0.95, seed=0)
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        low, high = intervals[key]
        assert low < metrics[key] < high, key
    for name in LABELS:
        low, high = intervals["per_class_f1"][name]
        assert low < metrics["per_class"][name]["f1"] < high, name
    # On 2,000 texts at ~90 % accuracy the interval is about ±0.013; the 66 surprise texts' F1 swings far more.
    assert 0.015 < intervals["accuracy"][1] - intervals["accuracy"][0] < 0.04
    surprise = intervals["per_class_f1"]["surprise"]
    assert surprise[1] - surprise[0] > 2 * (intervals["accuracy"][1] - intervals["accuracy"][0])
    assert intervals["bootstrap"] == {"method": "percentile bootstrap over the test examples, paired", "resamples": 2000,
                                      "confidence": 0.95, "seed": 0}
    again = score_intervals(y_true, y_pred, LABELS, resamples=2000, confidence=0.95, seed=0)
    assert json.dumps(again) == json.dumps(intervals)
    other_seed = score_intervals(y_true, y_pred, LABELS, resamples=2000, confidence=0.95, seed=1)
    assert other_seed != intervals
    assert other_seed["macro_f1"] == pytest.approx(intervals["macro_f1"], abs=0.005)  # the seed moves bounds a little
    wider = score_intervals(y_true, y_pred, LABELS, resamples=2000, confidence=0.99, seed=0)
    assert wider["macro_f1"][0] < intervals["macro_f1"][0] and wider["macro_f1"][1] > intervals["macro_f1"][1]


def test_a_clear_improvement_is_significant_and_its_interval_holds_the_difference():
    y_true, a = synthetic()
    b = improved(y_true, a, share=0.4)
    result = paired_comparison(y_true, a, b, len(LABELS), resamples=2000, confidence=0.95, seed=0)
    for key in ("accuracy", "macro_f1"):
        low, high = result[key]["difference_interval"]
        assert 0 < low <= result[key]["difference"] <= high, key
        assert result[key]["difference"] == pytest.approx(result[key]["b"] - result[key]["a"], abs=2e-6)
    assert result["mcnemar"]["only_a_right"] == 0 and result["mcnemar"]["only_b_right"] > 50
    assert result["mcnemar"]["p_value"] < 1e-6
    assert verdict(result).startswith("B better, p = ")
    # Swapped, the same evidence points the other way.
    swapped = paired_comparison(y_true, b, a, len(LABELS), resamples=2000, confidence=0.95, seed=0)
    assert swapped["accuracy"]["difference"] == -result["accuracy"]["difference"]
    assert verdict(swapped).startswith("A better, p = ")


def test_identical_models_do_not_differ():
    y_true, a = synthetic()
    result = paired_comparison(y_true, a, a.copy(), len(LABELS), resamples=2000, confidence=0.95, seed=0)
    assert result["mcnemar"] == {"only_a_right": 0, "only_b_right": 0, "p_value": 1.0}
    for key in ("accuracy", "macro_f1"):
        assert result[key]["difference"] == 0 and result[key]["difference_interval"] == [0.0, 0.0]
    assert verdict(result).startswith("no significant difference (p = 1)")


def test_a_small_difference_on_noisy_models_is_not_called():
    """Two models as good as each other, each wrong on its own ~10 % of the texts: no verdict either way,
    and the paired interval of the difference contains 0 (and the point difference)."""
    y_true, a = synthetic(seed=3)
    rng = np.random.default_rng(4)
    b = np.where(rng.random(len(y_true)) < 0.9, y_true, rng.integers(0, len(LABELS), len(y_true)))
    result = paired_comparison(y_true, a, b, len(LABELS), resamples=2000, confidence=0.95, seed=0)
    assert result["mcnemar"]["only_a_right"] + result["mcnemar"]["only_b_right"] > 200
    assert result["mcnemar"]["p_value"] > 0.05
    for key in ("accuracy", "macro_f1"):
        low, high = result[key]["difference_interval"]
        assert low < 0 < high and low <= result[key]["difference"] <= high, key
    assert verdict(result).startswith("no significant difference (p = ")


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_texts():
    """What statsmodels' mcnemar(exact=True) computes: 2 x P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), at most 1."""
    y_true = np.zeros(40, dtype=int)
    a = np.array([0] * 20 + [1] * 20)  # right on the first 20
    b = np.array([0] * 12 + [1] * 8 + [0] * 3 + [1] * 17)  # right on 12 of a's and 3 others: 8 vs 3 discordant
    result = paired_comparison(y_true, a, b, 2, resamples=500, confidence=0.95, seed=0)
    assert (result["mcnemar"]["only_a_right"], result["mcnemar"]["only_b_right"]) == (8, 3)
    assert result["mcnemar"]["p_value"] == pytest.approx(min(1.0, 2 * binom.cdf(3, 11, 0.5)), rel=1e-5)


def tables(texts: list[str], actual: list[str], a: list[str], b: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.DataFrame({"text": texts, "actual": actual, "predicted": a}),
            pd.DataFrame({"text": texts, "actual": actual, "predicted": b}))


def test_paired_labels_maps_both_tables_to_class_ids():
    a, b = tables(["t1", "t2", "t3"], ["joy", "fear", "joy"], ["joy", "joy", "joy"], ["fear", "fear", "joy"])
    y_true, pred_a, pred_b = paired_labels(a, b, "A", "B", LABELS)
    assert y_true.tolist() == [1, 4, 1] and pred_a.tolist() == [1, 1, 1] and pred_b.tolist() == [4, 4, 1]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.iloc[::-1].reset_index(drop=True), "other texts, the first at row 1"),
    (lambda t: t.assign(text=["t1", "t2", "another text"]), "1 of 3 rows have other texts, the first at row 3"),
    (lambda t: t.iloc[:2], "different test sets (3 and 2 texts)"),
    (lambda t: t.assign(actual=["joy", "joy", "joy"]), "other true labels, the first at row 2"),
    (lambda t: t.drop(columns="actual"), "no column actual"),
], ids=["order", "texts", "length", "labels", "columns"])
def test_predictions_over_different_test_sets_are_refused(change, message):
    a, b = tables(["t1", "t2", "t3"], ["joy", "fear", "joy"], ["joy", "joy", "joy"], ["fear", "fear", "joy"])
    with pytest.raises(UserError) as caught:
        paired_labels(a, change(b), "A", "B", LABELS)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_reports_show_each_score_with_its_interval():
    y_true, y_pred = synthetic(300)
    probs = np.eye(len(LABELS))[y_pred]
    metrics = classification_metrics(y_true, probs, LABELS)
    metrics["intervals"] = score_intervals(y_true, y_pred, LABELS, resamples=500, confidence=0.95, seed=0)
    report = quality_report(metrics, predictions_table([f"t{i}" for i in range(300)], y_true, probs, LABELS), LABELS,
                            top_mistakes=3, title="Test quality", sections=["", "## Extra", "", "text"])
    low, high = metrics["intervals"]["macro_f1"]
    assert f"macro-F1 {metrics['macro_f1']:.4f} [{low:.4f}, {high:.4f}]" in report
    assert "95% bootstrap intervals (500 resamples of the test examples, seed 0)" in report
    joy = metrics["per_class"]["joy"]
    joy_low, joy_high = metrics["intervals"]["per_class_f1"]["joy"]
    assert f"| joy | {joy['precision']:.4f} | {joy['recall']:.4f} | {joy['f1']:.4f} [{joy_low:.4f}, {joy_high:.4f}] |" in report
    assert report.index("## Per class") < report.index("## Extra") < report.index("## Confusion matrix")
    # Without intervals, the table is the one it always was.
    assert per_class_table(metrics["per_class"])[0] == "| class | precision | recall | F1 | support |"
