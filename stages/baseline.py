"""baseline: TF-IDF + logistic regression on data/prepared -> metrics/baseline.json.

Reads params sections: baseline, metrics. Scored with the same metric code as evaluate, so the two
files have the same keys and sit side by side in `dvc metrics show` and `dvc exp show`.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from emotion_pipeline.config import load_params
from emotion_pipeline.io import write_json, write_text
from emotion_pipeline.metrics import (
    classification_metrics,
    headline,
    predictions_table,
    quality_report,
)
from emotion_pipeline.paths import BASELINE_DETAILS, BASELINE_METRICS, BASELINE_QUALITY_REPORT, PREPARED_DIR
from emotion_pipeline.prepared import read_prepared

log = logging.getLogger("baseline")



def main() -> None:
    params = load_params()
    cfg = params.baseline
    splits, labels = read_prepared(PREPARED_DIR)
    train, test = splits["train"], splits["test"]

    classifier = make_pipeline(
        TfidfVectorizer(ngram_range=(1, cfg.ngram_max), max_features=cfg.max_features, sublinear_tf=True),
        LogisticRegression(C=cfg.c, max_iter=2000, random_state=cfg.seed),
    )
    classifier.fit(train["text"], train["label"])
    # predict_proba columns follow classifier.classes_; place them at their class ids, since a
    # class absent from train would otherwise shift every column after it.
    probs = _full_proba(classifier.predict_proba(test["text"]), classifier.classes_, len(labels))

    y_true = test["label"].to_numpy()
    metrics = classification_metrics(y_true, probs, labels, params.metrics.calibration_bins)
    write_json(BASELINE_METRICS, headline(metrics))
    write_json(BASELINE_DETAILS, metrics)
    table = predictions_table(test["text"].tolist(), y_true, probs, labels)
    write_text(BASELINE_QUALITY_REPORT, quality_report(metrics, table, labels, params.metrics.top_mistakes, "Test quality of the TF-IDF baseline"))
    log.info("baseline test accuracy %.4f, macro-F1 %.4f", metrics["accuracy"], metrics["macro_f1"])


def _full_proba(partial: np.ndarray, classes: np.ndarray, num_labels: int) -> np.ndarray:
    probs = np.zeros((partial.shape[0], num_labels))
    probs[:, classes] = partial
    return probs
