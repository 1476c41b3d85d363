"""Classification metrics shared by evaluate and baseline, so both write exactly the same keys (their wording for
people is emotion_pipeline.evaluation.reports: an edit there re-runs no training).

scikit-learn is imported inside the functions that compute scores, not here: the stages that only format
scores (export's model card, a disabled quantize stage) import this module too, and sklearn.metrics costs
about a second of every such process.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str], calibration_bins: int = 10) -> dict:
    """Accuracy, macro/weighted precision/recall/F1, per-class scores and calibration error.

    Values are rounded to 6 decimals: enough for any comparison, and it keeps the JSON
    identical across runs that differ only in the last float bits of a sum.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_pred = probs.argmax(axis=1)
    class_ids = list(range(len(labels)))
    result: dict = {"accuracy": accuracy_score(y_true, y_pred), "examples": int(len(y_true))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=class_ids, average=average, zero_division=0
        )
        result.update({f"{average}_precision": precision, f"{average}_recall": recall, f"{average}_f1": f1})
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=class_ids, average=None, zero_division=0
    )
    result["per_class"] = {
        name: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(support[i])}
        for i, name in enumerate(labels)
    }
    result["ece"] = expected_calibration_error(y_true, probs, calibration_bins)
    return _rounded(result)


HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "ece")


def headline(metrics: dict) -> dict:
    """The few scores `dvc metrics show` and `dvc exp show` print; the rest stays in the details file."""
    return {key: metrics[key] for key in HEADLINE}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins (Guo et al., 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    # Bin i holds confidences in (i/bins, (i+1)/bins]; the clip puts an exact 0 into the first bin.
    bin_ids = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = bin_ids == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> pd.DataFrame:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    return pd.DataFrame(matrix, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))


PROB_PREFIX = "prob_"  # metrics/predictions.csv's probability columns: prob_sadness, prob_joy, ...


def predictions_table(texts: list[str], y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """One row per example: the table behind the confusion plot and error analysis, with every class's probability
    (``prob_<class>``, what an ensemble averages: emotion_pipeline.ensemble)."""
    y_pred = probs.argmax(axis=1)
    return pd.DataFrame({
        "text": texts,
        "actual": [labels[i] for i in y_true],
        "predicted": [labels[i] for i in y_pred],
        "confidence": np.round(probs.max(axis=1), 6),
        "correct": y_true == y_pred,
        **{f"{PROB_PREFIX}{name}": np.round(probs[:, i], 6) for i, name in enumerate(labels)},
    })


def _rounded(value):
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value


def full_proba(partial: np.ndarray, classes: np.ndarray, num_labels: int) -> np.ndarray:
    probs = np.zeros((partial.shape[0], num_labels))
    probs[:, classes] = partial
    return probs
