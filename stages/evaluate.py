"""evaluate: adapter + test split -> metrics/test.json, classification report, predictions, quality report.

Reads params sections: model (to load the base under the adapter), evaluate, metrics, compute.device.

The story: predict the test split, score it, put a bootstrap interval beside every score (how much
the score would move on another sample of test texts), and set the fine-tune against the TF-IDF
baseline on the very same texts (metrics/baseline_predictions.csv, a dep: baseline runs first), so
the quality report says whether the fine-tune is better, and by how much, with a paired interval and
McNemar's p. The comparison has a file of its own, metrics/test_vs_baseline.json, not in
test_details.json: export and quantize read test_details.json, so a change to the baseline alone
re-runs evaluate, and export and quantize find their inputs unchanged.
"""

from __future__ import annotations

import logging

import pandas as pd

from emotion_pipeline.config import load_params
from emotion_pipeline.data.label_issues import label_issues
from emotion_pipeline.data.prepared import read_prepared
from emotion_pipeline.device import choose_device
from emotion_pipeline.environment import check_kernel_dispatch, environment_record
from emotion_pipeline.evaluation.metrics import classification_metrics, headline, predictions_table
from emotion_pipeline.evaluation.reports import comparison_section, markdown_cell, quality_report, report_text
from emotion_pipeline.evaluation.uncertainty import paired_comparison, paired_labels, score_intervals
from emotion_pipeline.inference.adapter import load_adapter_model, merged
from emotion_pipeline.inference.class_bias import carry_stored_bias
from emotion_pipeline.inference.predict import predict_proba
from emotion_pipeline.io import write_json, write_text
from emotion_pipeline.paths import (
    ADAPTER_DIR,
    BASELINE_PREDICTIONS,
    CLASSIFICATION_REPORT,
    PREDICTIONS,
    PREPARED_DIR,
    QUALITY_REPORT,
    TEST_DETAILS,
    TEST_METRICS,
    VS_BASELINE,
)

log = logging.getLogger("evaluate")


def main() -> None:
    params = load_params()
    cfg = params.evaluate
    check_kernel_dispatch(params.compute.portable, "evaluate")
    splits, labels = read_prepared(PREPARED_DIR)
    test = splits["test"]

    device = choose_device(params.compute.device)
    model, tokenizer = load_adapter_model(params.model, ADAPTER_DIR, device)
    log.info("predicting the test split on %s", device)
    # Merging LoRA into the base weights once makes every forward pass as cheap as the base model's.
    model = merged(model)
    carry_stored_bias(model, ADAPTER_DIR)  # train.fit_class_bias: predicted with, as the export will
    probs = predict_proba(model, tokenizer, test["text"].tolist(), cfg.batch_size, params.model.max_length)

    y_true, y_pred = test["label"].to_numpy(), probs.argmax(axis=1)
    scoring = params.metrics
    metrics = classification_metrics(y_true, probs, labels, scoring.calibration_bins)
    metrics["intervals"] = score_intervals(y_true, y_pred, labels, scoring.bootstrap_resamples, scoring.confidence,
                                           scoring.bootstrap_seed)
    metrics["environment"] = environment_record(device)
    table = predictions_table(test["text"].tolist(), y_true, probs, labels)
    versus, section = against_baseline(table, labels, scoring)
    section += label_audit_section(test, probs, labels)

    write_json(TEST_METRICS, headline(metrics))
    write_json(TEST_DETAILS, metrics)
    write_json(VS_BASELINE, versus)
    write_text(CLASSIFICATION_REPORT, report_text(y_true, y_pred, labels))
    write_text(PREDICTIONS, table.to_csv(index=False))
    write_text(QUALITY_REPORT, quality_report(metrics, table, labels, scoring.top_mistakes,
                                              f"Test quality of {params.model.name} + LoRA", section))
    log.info("test accuracy %.4f, macro-F1 %.4f %s, ECE %.4f", metrics["accuracy"], metrics["macro_f1"],
             metrics["intervals"]["macro_f1"], metrics["ece"])


def label_audit_section(test: pd.DataFrame, probs, labels: list[str], top: int = 10) -> list[str]:
    """Test labels the model itself calls probably wrong (confident learning on its probabilities, which never saw
    the test split; emotion_pipeline.data.label_issues): part of every mistake count above may be the label's."""
    flagged = label_issues(test, probs, labels, "test")
    pairs = flagged.groupby(["given", "suggested"]).size().sort_values(ascending=False, kind="stable").head(6)
    lines = ["", "## Label audit of the test split", "",
             f"Confident learning on this model's own test probabilities flags {len(flagged)} of {len(test)} test labels "
             f"as probably wrong ({', '.join(f'{g} -> {s} {n}' for (g, s), n in pairs.items()) or 'none'}). A flag is a "
             "text to read, not a verdict; `python -m emotion_pipeline.audit` lists every split.", ""]
    if len(flagged):
        lines += ["| quality | given | suggested | text |", "| --- | --- | --- | --- |"]
        lines += [f"| {r.quality:.4f} | {r.given} | {r.suggested} | {markdown_cell(r.text)} |"
                  for r in flagged.head(top).itertuples()]
    return lines


def against_baseline(table: pd.DataFrame, labels: list[str], scoring) -> tuple[dict, list[str]]:
    """The fine-tune (B) against the TF-IDF baseline (A) on the same test texts, for the JSON file and the report.

    Under `dvc repro` the baseline's predictions are always there (a dep of this stage); a stage run
    by hand before the baseline gets an empty comparison and a report that says so.
    """
    title = ["", "## Against the TF-IDF baseline, on the same test texts", ""]
    if not BASELINE_PREDICTIONS.is_file():
        log.warning("%s not found: no comparison with the baseline (run the baseline stage first)", BASELINE_PREDICTIONS)
        return {}, [*title, f"Not compared: {BASELINE_PREDICTIONS} is missing (the baseline stage has not run)."]
    baseline = pd.read_csv(BASELINE_PREDICTIONS, keep_default_na=False)
    y_true, pred_a, pred_b = paired_labels(baseline, table, f"the baseline's {BASELINE_PREDICTIONS}",
                                           "this evaluation's predictions", labels)
    comparison = paired_comparison(y_true, pred_a, pred_b, len(labels), scoring.bootstrap_resamples, scoring.confidence,
                                   scoring.bootstrap_seed)
    log.info("against the baseline: macro-F1 %+.4f %s, McNemar p = %.3g", comparison["macro_f1"]["difference"],
             comparison["macro_f1"]["difference_interval"], comparison["mcnemar"]["p_value"])
    return ({"a": f"TF-IDF baseline ({BASELINE_PREDICTIONS})", "b": f"fine-tune ({PREDICTIONS})", **comparison},
            [*title, *comparison_section(comparison, "baseline", "fine-tune")])
