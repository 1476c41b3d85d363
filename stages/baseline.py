"""baseline: TF-IDF + logistic regression on data/prepared -> metrics/baseline.json.

Reads params sections: baseline, metrics.

The story: fit every combination of the baseline's search space (n-gram range, C, class weighting,
sublinear tf) on train, score each by macro-F1 on validation, keep the best, and only then score
it on test, with the same metric code as evaluate, so the two files have the same keys and sit
side by side in `dvc metrics show` and `dvc exp show`, with the same bootstrap intervals in the
details file. Test never takes part in the choice. The per-text predictions
(metrics/baseline_predictions.csv, the columns of evaluate's predictions.csv) let evaluate and
`python -m emotion_pipeline.compare --baseline` set the fine-tune against the baseline text by text.
"""

from __future__ import annotations

import logging

from sklearn.model_selection import ParameterGrid

from emotion_pipeline.config import load_params
from emotion_pipeline.data.prepared import read_prepared
from emotion_pipeline.environment import environment_record
from emotion_pipeline.evaluation.metrics import classification_metrics, full_proba, headline, predictions_table
from emotion_pipeline.evaluation.reports import quality_report
from emotion_pipeline.evaluation.scores import accuracy, macro_f1
from emotion_pipeline.evaluation.tfidf import tfidf_classifier
from emotion_pipeline.evaluation.uncertainty import score_intervals
from emotion_pipeline.io import write_json, write_text
from emotion_pipeline.paths import (
    BASELINE_CHOICE,
    BASELINE_DETAILS,
    BASELINE_METRICS,
    BASELINE_PREDICTIONS,
    BASELINE_QUALITY_REPORT,
    PREPARED_DIR,
)

log = logging.getLogger("baseline")


def main() -> None:
    params = load_params()
    cfg = params.baseline
    splits, labels = read_prepared(PREPARED_DIR)
    train, validation, test = splits["train"], splits["validation"], splits["test"]

    space = ParameterGrid({"ngram_max": cfg.ngram_max, "c": cfg.c, "class_weight": cfg.class_weight,
                           "sublinear_tf": cfg.sublinear_tf})
    candidates = []
    for setting in space:
        classifier = fit(train, setting, cfg.max_features, cfg.seed)
        predicted = classifier.predict(validation["text"])
        candidates.append({**setting, "validation_macro_f1": round(macro_f1(validation["label"], predicted, len(labels)), 6),
                           "validation_accuracy": round(accuracy(validation["label"], predicted), 6)})
        log.info("%s: validation macro-F1 %.4f", setting, candidates[-1]["validation_macro_f1"])
    # Ties go to the first in grid order, so the choice is the same on every run.
    best = max(candidates, key=lambda candidate: candidate["validation_macro_f1"])
    chosen = {key: best[key] for key in ("ngram_max", "c", "class_weight", "sublinear_tf")}
    classifier = fit(train, chosen, cfg.max_features, cfg.seed)
    # predict_proba columns follow classifier.classes_; place them at their class ids, since a
    # class absent from train would otherwise shift every column after it.
    probs = full_proba(classifier.predict_proba(test["text"]), classifier.classes_, len(labels))

    y_true = test["label"].to_numpy()
    scoring = params.metrics
    metrics = classification_metrics(y_true, probs, labels, scoring.calibration_bins)
    metrics["intervals"] = score_intervals(y_true, probs.argmax(axis=1), labels, scoring.bootstrap_resamples,
                                           scoring.confidence, scoring.bootstrap_seed)
    metrics["environment"] = environment_record()
    write_json(BASELINE_METRICS, headline(metrics))
    write_json(BASELINE_DETAILS, metrics)
    write_json(BASELINE_CHOICE, {"chosen": chosen, "validation_macro_f1": best["validation_macro_f1"],
                                 "validation_accuracy": best["validation_accuracy"], "candidates": candidates})
    table = predictions_table(test["text"].tolist(), y_true, probs, labels)
    write_text(BASELINE_PREDICTIONS, table.to_csv(index=False))
    title = f"Test quality of the TF-IDF baseline ({describe(chosen)}, chosen on validation)"
    write_text(BASELINE_QUALITY_REPORT, quality_report(metrics, table, labels, scoring.top_mistakes, title))
    log.info("chose %s (validation macro-F1 %.4f); test accuracy %.4f, macro-F1 %.4f",
             describe(chosen), best["validation_macro_f1"], metrics["accuracy"], metrics["macro_f1"])


def fit(train, setting: dict, max_features: int | None, seed: int):
    return tfidf_classifier(setting, max_features, seed).fit(train["text"], train["label"])


def describe(setting: dict) -> str:
    return (f"1-{setting['ngram_max']}-grams, C={setting['c']:g}, class weights {setting['class_weight'] or 'none'}, "
            f"sublinear tf {'on' if setting['sublinear_tf'] else 'off'}")
