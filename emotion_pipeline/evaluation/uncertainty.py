"""How sure a test score is: bootstrap intervals over the test examples, and paired comparisons of two models.

Why: a test split is a sample. On dair-ai/emotion's 2,000 test texts (66 of them surprise), which
texts happen to be in it moves macro-F1 by about ±0.02, more than most differences between two
experiments. So every score written beside a point estimate gets an interval, and a claim that one
model beats another is checked on the same test texts, pair by pair:

- ``score_intervals``: a percentile-bootstrap interval (``scipy.stats.bootstrap``) of accuracy,
  macro-F1, weighted-F1 and each class's F1. One bootstrap call for all of them: every score is
  computed on the same resampled indices, so the intervals describe the same resamples.
- ``paired_comparison``: the difference B − A of accuracy and macro-F1 with a paired-bootstrap
  interval (both models scored on the same resampled texts each time), and McNemar's exact test on
  the texts where exactly one of the two is right (``scipy.stats.binomtest``, which is what
  statsmodels' ``mcnemar(exact=True)`` computes).

Seeded with a fixed ``numpy`` Generator: the same predictions give the same intervals, byte for byte
once rounded. The percentile method, not BCa: BCa adds a jackknife pass over every test text (5x the
time at 2,000 texts) and returns NaN when a score does not vary across resamples (a class never
predicted, two identical models), which the small test runs hit; percentile intervals stay defined.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest, bootstrap

from emotion_pipeline.errors import UserError
from emotion_pipeline.evaluation.scores import accuracy, macro_f1

HEADLINE_SCORES = ("accuracy", "macro_f1", "weighted_f1")  # each gets an interval, then each class's F1
COMPARED_SCORES = ("accuracy", "macro_f1")  # what a comparison of two models reports


def scores(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int, axis: int = -1) -> np.ndarray:
    """Accuracy, macro-F1, weighted-F1 and the F1 of each class 0..num_labels-1, along ``axis``.

    Vectorised over every other axis (one row per bootstrap resample), from per-class counts, so
    that thousands of resamples of 2,000 texts take well under a second. Same definitions as
    emotion_pipeline.evaluation.metrics (scikit-learn's, zero_division=0): F1 = 2 TP / (support + predicted),
    0 for a class neither present nor predicted. Returns shape (3 + num_labels, *other axes).
    """
    y_true, y_pred = np.moveaxis(np.asarray(y_true), axis, -1), np.moveaxis(np.asarray(y_pred), axis, -1)
    shape, n = y_true.shape[:-1], y_true.shape[-1]
    true, pred = y_true.reshape(-1, n).astype(np.int64), y_pred.reshape(-1, n).astype(np.int64)
    offsets = np.arange(true.shape[0])[:, None] * num_labels  # one block of class counts per row

    def per_class(labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        counts = np.bincount((offsets + labels).ravel(), None if weights is None else weights.ravel(),
                             minlength=true.shape[0] * num_labels)
        return counts.reshape(-1, num_labels)

    right = true == pred
    support, predicted, hits = per_class(true), per_class(pred), per_class(true, right)
    total = support + predicted
    f1 = np.divide(2 * hits, total, out=np.zeros(total.shape), where=total > 0)
    result = np.column_stack([right.mean(axis=1), f1.mean(axis=1), (f1 * support).sum(axis=1) / n, f1])
    return result.T.reshape(3 + num_labels, *shape)


def score_intervals(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], resamples: int, confidence: float,
                    seed: int) -> dict:
    """The ``confidence`` bootstrap interval of each headline score and each class's F1 over these test examples.

    What evaluate, baseline and quantize write into their details files (key ``intervals``), so
    that every score there can be read with its uncertainty: ``{"accuracy": [low, high], "macro_f1":
    ..., "weighted_f1": ..., "per_class_f1": {class: [low, high]}, "bootstrap": how it was drawn}``.
    """
    low, high = _bootstrap((y_true, y_pred), lambda t, p, axis=-1: scores(t, p, len(labels), axis),
                           resamples, confidence, seed)
    bounds = [[round(float(lo), 6), round(float(hi), 6)] for lo, hi in zip(low, high)]
    return {
        **dict(zip(HEADLINE_SCORES, bounds)),
        "per_class_f1": dict(zip(labels, bounds[len(HEADLINE_SCORES):])),
        "bootstrap": _settings(resamples, confidence, seed),
    }


def paired_comparison(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, num_labels: int, resamples: int,
                      confidence: float, seed: int) -> dict:
    """Model A against model B on the same test examples: each score, B − A with a paired-bootstrap
    interval, and McNemar's exact test on the examples exactly one of them gets right.

    Paired, because both models saw the same texts: most of the sampling noise is shared and cancels
    in the difference, so a paired interval is much narrower than the two models' own intervals
    side by side would suggest. McNemar's p is the two-sided binomial test of "A alone right" against
    "B alone right" at 1/2; with no such texts at all the two models are indistinguishable, p = 1.
    """
    y_true, pred_a, pred_b = (np.asarray(values) for values in (y_true, pred_a, pred_b))

    def difference(t, a, b, axis=-1):
        return scores(t, b, num_labels, axis)[:2] - scores(t, a, num_labels, axis)[:2]

    low, high = _bootstrap((y_true, pred_a, pred_b), difference, resamples, confidence, seed)
    point = {"accuracy": (accuracy(y_true, pred_a), accuracy(y_true, pred_b)),
             "macro_f1": (macro_f1(y_true, pred_a, num_labels), macro_f1(y_true, pred_b, num_labels))}
    a_right, b_right = pred_a == y_true, pred_b == y_true
    only_a, only_b = int((a_right & ~b_right).sum()), int((b_right & ~a_right).sum())
    p_value = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "examples": int(len(y_true)),
        **{name: {"a": round(a, 6), "b": round(b, 6), "difference": round(b - a, 6),
                  "difference_interval": [round(float(low[i]), 6), round(float(high[i]), 6)]}
           for i, (name, (a, b)) in enumerate(point.items())},
        "mcnemar": {"only_a_right": only_a, "only_b_right": only_b, "p_value": float(f"{p_value:.6g}")},
        "bootstrap": _settings(resamples, confidence, seed),
    }


def paired_labels(a: pd.DataFrame, b: pd.DataFrame, a_name: str, b_name: str,
                  labels: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True class ids and each side's predicted ids from two prediction tables (the columns of
    metrics/predictions.csv: text, actual, predicted) over one and the same test set.

    Refuses, with a UserError naming the first difference, tables over other texts, the same texts in
    another order, or other true labels: a paired comparison of two test sets would compare apples
    to pears. ``labels``: the class names, in id order; None: every class either table mentions.
    """
    for table, name in ((a, a_name), (b, b_name)):
        missing = [column for column in ("text", "actual", "predicted") if column not in table.columns]
        if missing:
            raise UserError(f"{name} is not a predictions table: it has no column {', '.join(missing)} (expected the "
                            f"columns of metrics/predictions.csv: text, actual, predicted, ...).")
    if len(a) != len(b):
        raise UserError(f"{a_name} and {b_name} are predictions over different test sets ({len(a)} and {len(b)} texts): "
                        "a paired comparison needs both models scored on the same texts, in the same order.")
    for column, what in (("text", "texts"), ("actual", "true labels")):
        differ = np.flatnonzero(a[column].astype(str).to_numpy() != b[column].astype(str).to_numpy())
        if len(differ):
            row = int(differ[0])
            raise UserError(
                f"{a_name} and {b_name} are predictions over different test sets: {len(differ)} of {len(a)} rows have "
                f"other {what}, the first at row {row + 1} ({_short(a[column].iloc[row])!r} vs {_short(b[column].iloc[row])!r}). "
                "A paired comparison needs both models scored on the same texts, in the same order (the same "
                "data/prepared test split).")
    if labels is None:
        labels = sorted(set(a["actual"]) | set(a["predicted"]) | set(b["predicted"]))
    ids = {name: i for i, name in enumerate(labels)}
    for table, name in ((a, a_name), (b, b_name)):
        unknown = sorted((set(table["actual"]) | set(table["predicted"])) - set(ids))
        if unknown:
            raise UserError(f"{name} names classes that are not among {labels}: {unknown}.")
    return tuple(table[column].map(ids).to_numpy() for table, column in ((a, "actual"), (a, "predicted"), (b, "predicted")))


def _short(text: object, length: int = 60) -> str:
    text = str(text)
    return text if len(text) <= length else text[: length - 1] + "…"


def _bootstrap(data: tuple, statistic, resamples: int, confidence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap bounds of a vector-valued statistic, the examples of every array resampled together."""
    result = bootstrap(data, statistic, n_resamples=resamples, confidence_level=confidence, method="percentile",
                       paired=True, vectorized=True, rng=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high


def _settings(resamples: int, confidence: float, seed: int) -> dict:
    return {"method": "percentile bootstrap over the test examples, paired", "resamples": resamples,
            "confidence": confidence, "seed": seed}
