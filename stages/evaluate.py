"""evaluate: adapter + test split -> metrics/test.json, classification report, predictions, quality report.

Reads params sections: model (to load the base under the adapter), evaluate, metrics, compute.device.
"""

from __future__ import annotations

import logging

from emotion_pipeline.class_bias import carry_stored_bias
from emotion_pipeline.config import load_params
from emotion_pipeline.device import choose_device
from emotion_pipeline.io import write_json, write_text
from emotion_pipeline.metrics import (
    classification_metrics,
    headline,
    predictions_table,
    quality_report,
    report_text,
)
from emotion_pipeline.modeling import load_adapter_model, merged
from emotion_pipeline.paths import (
    ADAPTER_DIR,
    CLASSIFICATION_REPORT,
    PREDICTIONS,
    PREPARED_DIR,
    QUALITY_REPORT,
    TEST_DETAILS,
    TEST_METRICS,
)
from emotion_pipeline.predict import predict_proba
from emotion_pipeline.prepared import read_prepared

log = logging.getLogger("evaluate")


def main() -> None:
    params = load_params()
    cfg = params.evaluate
    splits, labels = read_prepared(PREPARED_DIR)
    test = splits["test"]

    device = choose_device(params.compute.device)
    model, tokenizer = load_adapter_model(params.model, ADAPTER_DIR, device)
    log.info("predicting the test split on %s", device)
    # Merging LoRA into the base weights once makes every forward pass as cheap as the base model's.
    model = merged(model)
    carry_stored_bias(model, ADAPTER_DIR)  # train.fit_class_bias: predicted with, as the export will
    probs = predict_proba(model, tokenizer, test["text"].tolist(), cfg.batch_size, params.model.max_length)

    y_true = test["label"].to_numpy()
    metrics = classification_metrics(y_true, probs, labels, params.metrics.calibration_bins)
    table = predictions_table(test["text"].tolist(), y_true, probs, labels)

    write_json(TEST_METRICS, headline(metrics))
    write_json(TEST_DETAILS, metrics)
    write_text(CLASSIFICATION_REPORT, report_text(y_true, probs.argmax(axis=1), labels))
    write_text(PREDICTIONS, table.to_csv(index=False))
    write_text(QUALITY_REPORT, quality_report(metrics, table, labels, params.metrics.top_mistakes, f"Test quality of {params.model.name} + LoRA"))
    log.info("test accuracy %.4f, macro-F1 %.4f, ECE %.4f", metrics["accuracy"], metrics["macro_f1"], metrics["ece"])
