"""quantize: models/export -> models/int8, an int8 ONNX model for CPU serving, scored on the test split.

Reads params sections: quantize, model.max_length, metrics.calibration_bins and the bootstrap keys of
metrics (bootstrap_resamples, confidence, bootstrap_seed). The fp32 reference is
what the evaluate stage measured (metrics/test_details.json and the per-text predictions in
metrics/predictions.csv); the export stage has checked that the export predicts like it.

The int8 model must stay within quantize.max_f1_drop of the fp32 test macro-F1: otherwise the
stage fails and the previous models/int8 stays. Its accuracy and macro-F1 go to metrics/int8.json,
so `dvc metrics show` prints them under the fp32 ones of metrics/test.json and `dvc metrics diff` shows
how they move; metrics/int8_details.json adds the drop, label agreement with fp32, size and fusions,
a bootstrap interval beside each score, and int8 against fp32 on the same test texts (paired interval
of the difference, McNemar's p): whether the drop is more than the noise of the test sample.
"""

from __future__ import annotations

import json
import logging

from emotion_pipeline.config import load_params
from emotion_pipeline.data.prepared import read_prepared
from emotion_pipeline.environment import check_kernel_dispatch, environment_record
from emotion_pipeline.errors import UserError
from emotion_pipeline.evaluation.metrics import classification_metrics
from emotion_pipeline.evaluation.reports import with_interval
from emotion_pipeline.io import atomic_dir, write_json, write_text
from emotion_pipeline.paths import (
    EXPORT_DIR,
    INT8_DETAILS,
    INT8_DIR,
    INT8_METRICS,
    PREDICTIONS,
    PREPARED_DIR,
    TEST_DETAILS,
)

log = logging.getLogger("quantize")


class QuantisationTooLossy(UserError):
    """The int8 model scores more than quantize.max_f1_drop below the fp32 model."""


def main() -> None:
    params = load_params()
    cfg = params.quantize
    check_kernel_dispatch(params.compute.portable, "quantize")
    if not cfg.enabled:
        with atomic_dir(INT8_DIR) as staging:
            write_text(staging / "README.md", "No int8 model: quantize.enabled is false in params.yaml.\n")
        write_json(INT8_METRICS, {})
        write_json(INT8_DETAILS, {"enabled": False})
        log.info("quantize.enabled is false: no int8 model built")
        return
    # Imported only now: they load torch, transformers, ONNX and SciPy (seconds), which the placeholder above
    # never needs.
    import pandas as pd

    from emotion_pipeline.evaluation.reports import verdict
    from emotion_pipeline.evaluation.uncertainty import paired_comparison, paired_labels, score_intervals
    from emotion_pipeline.inference.predict import ONNX_FILE, load_exported, predict_proba
    from emotion_pipeline.int8 import build_int8

    splits, labels = read_prepared(PREPARED_DIR)
    test = splits["test"]
    fp32 = json.loads(TEST_DETAILS.read_text())
    fp32_table = pd.read_csv(PREDICTIONS, keep_default_na=False)

    with atomic_dir(INT8_DIR) as staging:
        fusions = build_int8(EXPORT_DIR, staging)
        log.info("ONNX Runtime fusions: %s", ", ".join(f"{name} x{count}" for name, count in fusions.items()) or "none")
        model, tokenizer = load_exported(str(staging))
        probs = predict_proba(model, tokenizer, test["text"].tolist(), cfg.batch_size, params.model.max_length)
        # Paired text by text with evaluate's predictions, refusing another test set or another order.
        int8_table = pd.DataFrame({"text": test["text"], "actual": [labels[i] for i in test["label"]],
                                   "predicted": [labels[i] for i in probs.argmax(axis=1)]})
        y_true, fp32_labels, int8_labels = paired_labels(fp32_table, int8_table, f"{PREDICTIONS} (evaluate's)",
                                                         "the test split in data/prepared", labels)
        scores = classification_metrics(y_true, probs, labels, params.metrics.calibration_bins)
        drop = round(fp32["macro_f1"] - scores["macro_f1"], 6)
        agreement = round(float((probs.argmax(axis=1) == fp32_labels).mean()), 6)
        if drop > cfg.max_f1_drop:
            raise QuantisationTooLossy(
                f"the int8 model's test macro-F1 is {scores['macro_f1']:.4f}, {drop:.4f} below the fp32 model's "
                f"{fp32['macro_f1']:.4f} (allowed: quantize.max_f1_drop = {cfg.max_f1_drop:g}; labels agree on "
                f"{agreement:.1%} of the test texts). {INT8_DIR} was left as it was. Serve the fp32 export, raise "
                f"quantize.max_f1_drop, or set quantize.enabled: false.")
        scoring = params.metrics
        intervals = score_intervals(y_true, int8_labels, labels, scoring.bootstrap_resamples, scoring.confidence,
                                    scoring.bootstrap_seed)
        versus_fp32 = paired_comparison(y_true, fp32_labels, int8_labels, len(labels), scoring.bootstrap_resamples,
                                        scoring.confidence, scoring.bootstrap_seed)
        size_mb = round(sum(path.stat().st_size for path in staging.glob(f"{ONNX_FILE}*")) / 2**20, 1)
        paired_verdict = verdict(versus_fp32, "fp32", "int8")
        write_text(staging / "README.md", _readme(scores, intervals, fp32, paired_verdict, drop, agreement, size_mb))
    headline = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
    write_json(INT8_METRICS, headline)  # same keys as metrics/test.json: `dvc metrics show` lines them up
    write_json(INT8_DETAILS, {**headline, "weighted_f1": scores["weighted_f1"], "per_class": scores["per_class"],
                              "intervals": intervals, "fp32_accuracy": fp32["accuracy"], "fp32_macro_f1": fp32["macro_f1"],
                              "macro_f1_drop": drop, "agreement_with_fp32": agreement, "vs_fp32": versus_fp32,
                              "size_mb": size_mb, "fusions": fusions, "environment": environment_record()})
    log.info("int8 model in %s (%.1f MB): test macro-F1 %.4f (fp32 %.4f, drop %.4f), labels agree with fp32 on %.2f%%",
             INT8_DIR, size_mb, scores["macro_f1"], fp32["macro_f1"], drop, 100 * agreement)


def _readme(scores: dict, intervals: dict, fp32: dict, paired_verdict: str, drop: float, agreement: float,
            size_mb: float) -> str:
    fp32_intervals = fp32.get("intervals")  # evaluate writes them; a hand-made reference may not have them

    def fp32_score(key: str) -> str:
        return with_interval(fp32[key], fp32_intervals[key]) if fp32_intervals else f"{fp32[key]:.4f}"

    return f"""# Emotion classifier, int8 ONNX (CPU serving)

The model of `{EXPORT_DIR}` exported to ONNX, its transformer blocks fused for ONNX Runtime, and
quantised to int8 (per-channel weights, dynamic activations). Runs with `onnxruntime` alone.

| test split ({scores["examples"]} texts; {intervals["bootstrap"]["confidence"]:.0%} bootstrap intervals) | int8 | fp32 |
| --- | --- | --- |
| accuracy | {with_interval(scores["accuracy"], intervals["accuracy"])} | {fp32_score("accuracy")} |
| macro F1 | {with_interval(scores["macro_f1"], intervals["macro_f1"])} | {fp32_score("macro_f1")} |

Macro-F1 drop {drop:+.4f}; labels agree with fp32 on {agreement:.2%} of the test texts; {size_mb} MB on disk.
On the same texts, paired (bootstrap interval of the difference, McNemar's exact test), int8 against fp32:
{paired_verdict}.

```python
from emotion_pipeline.inference.predict import load_classifier

classify = load_classifier("{INT8_DIR}")
print(classify(["i feel so happy today", "this noise scares me"]))
```

Or from the shell: `emotion-predict {INT8_DIR} "i feel so happy today"`.
"""
