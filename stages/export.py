"""export: adapter merged into the base -> models/export, a plain transformers model with a model card.

Reads params sections: model (to load the base), export, compute.device. The model card also reads the test
metrics and the data report (which data and revision the run used).

The exported folder loads with AutoModelForSequenceClassification alone, no peft needed. Before
it is moved into place, it is reloaded from disk and must predict the same labels as the
adapter on a sample of the test split; otherwise the stage fails and nothing is replaced.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from emotion_pipeline.config import load_params
from emotion_pipeline.data.prepared import read_prepared
from emotion_pipeline.device import choose_device
from emotion_pipeline.environment import check_kernel_dispatch, environment_record
from emotion_pipeline.evaluation.reports import environment_lines, format_interval, per_class_table
from emotion_pipeline.inference.adapter import load_adapter_model, merged
from emotion_pipeline.inference.class_bias import carry_stored_bias, config_bias, shift_probs
from emotion_pipeline.inference.predict import load_exported, predict_proba
from emotion_pipeline.io import atomic_dir, write_json
from emotion_pipeline.paths import (
    ADAPTER_DIR,
    DATA_REPORT,
    ENVIRONMENT_FILE,
    EXPORT_CHECK,
    EXPORT_DIR,
    PREPARED_DIR,
    TEST_DETAILS,
    TRAINING_PARAMS_FILE,
)
from emotion_pipeline.sources import resolve_source

log = logging.getLogger("export")


class ExportMismatch(RuntimeError):
    """The reloaded export does not predict like the adapter it came from."""


def main() -> None:
    params = load_params()
    cfg = params.export
    check_kernel_dispatch(params.compute.portable, "export")
    splits, labels = read_prepared(PREPARED_DIR)
    sample = splits["test"]["text"].tolist()[: cfg.check_samples]

    device = choose_device(params.compute.device)
    adapter_model, tokenizer = load_adapter_model(params.model, ADAPTER_DIR, device)
    adapter_probs = predict_proba(adapter_model, tokenizer, sample, max_length=params.model.max_length)
    model = merged(adapter_model)
    bias = carry_stored_bias(model, ADAPTER_DIR)  # train.fit_class_bias: the export carries it (emotion_pipeline.training.class_bias)
    if bias is not None:
        adapter_probs = shift_probs(adapter_probs, bias)

    with atomic_dir(EXPORT_DIR) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        exported, exported_tokenizer = load_exported(str(staging), device=str(device))
        export_probs = predict_proba(exported, exported_tokenizer, sample, max_length=params.model.max_length)
        check = {**_compare(adapter_probs, export_probs, cfg.max_prob_diff), "environment": environment_record(device)}
        model_card(params, labels, config_bias(model.config), check["environment"]).save(staging / "README.md")
    write_json(EXPORT_CHECK, check)
    log.info("exported to %s; %d sample predictions match the adapter (max prob diff %.2e)",
             EXPORT_DIR, check["samples"], check["max_prob_diff"])


def _compare(adapter_probs: np.ndarray, export_probs: np.ndarray, tolerance: float) -> dict:
    same_labels = adapter_probs.argmax(axis=1) == export_probs.argmax(axis=1)
    max_diff = float(np.abs(adapter_probs - export_probs).max())
    if not same_labels.all() or max_diff > tolerance:
        raise ExportMismatch(
            f"the merged export predicts differently from the adapter: {int((~same_labels).sum())} of "
            f"{len(same_labels)} labels differ, max probability difference {max_diff:.3g} (allowed "
            f"{tolerance:g}). {EXPORT_DIR} was left as it was."
        )
    return {"samples": int(len(same_labels)), "labels_equal": True, "max_prob_diff": round(max_diff, 8)}


def hub_id_of(name: str) -> str | None:
    """A hub id for the card: ``name`` itself if it is one; for a local folder, the id its config came from."""
    source = resolve_source(name, "model.name", "a hub id")
    if not isinstance(source, Path):
        return source
    origin = json.loads((source / "config.json").read_text()).get("_name_or_path", "") if (source / "config.json").is_file() else ""
    return origin if origin and not isinstance(resolve_source(origin, "model.name", "a hub id"), Path) else None


def model_card(params, labels: list[str], logit_bias: np.ndarray | None = None, environment: dict | None = None) -> ModelCard:
    """The export's README.md: HF card metadata (base model, dataset, pipeline tag, a model-index with the
    real test metrics) and a body with per-class scores, usage and the training params.

    Names on the card are hub ids users can find, never a folder of the training machine:
    export.base_model_id / export.dataset_id when set, else model.name / data.source when they are
    hub ids (or the id a local model folder's config came from), else left out.
    """
    metrics = json.loads(TEST_DETAILS.read_text())
    source = json.loads(DATA_REPORT.read_text())["source"]
    training = json.loads((ADAPTER_DIR / TRAINING_PARAMS_FILE).read_text())
    training["model"].pop("name")  # may be a folder of the training machine; the base model is named above
    lora = training["lora"].get("enabled", True)  # false: every weight was trained (full fine-tuning)
    base_model = params.export.base_model_id or hub_id_of(params.model.name)
    dataset = params.export.dataset_id or (None if isinstance(resolve_source(source["data.source"], "data.source", "a hub id"), Path)
                                           else source["data.source"])
    name = f"{(base_model or 'local base model').split('/')[-1]}-emotion" + ("-lora" if lora else "")
    evals = [
        EvalResult(task_type="text-classification", dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                   dataset_revision=source["data.revision"], metric_type=metric, metric_name=title,
                   metric_value=metrics[key], metric_config=config)
        for key, metric, title, config in (("accuracy", "accuracy", "accuracy", None), ("macro_f1", "f1", "macro F1", "macro"),
                                           ("weighted_f1", "f1", "weighted F1", "weighted"))
    ] if dataset else None
    data = ModelCardData(library_name="transformers", pipeline_tag="text-classification", base_model=base_model,
                         datasets=[dataset] if dataset else None, tags=["emotion", "lora", "dvc"] if lora else ["emotion", "dvc"], model_name=name,
                         eval_results=evals)
    intervals = metrics.get("intervals")  # bootstrap intervals over the test examples (emotion_pipeline.evaluation.uncertainty)
    per_class = "\n".join(per_class_table(metrics["per_class"], intervals["per_class_f1"] if intervals else None))
    if intervals:
        settings = intervals["bootstrap"]
        score_rows = "\n".join(f"| {title} | {metrics[key]:.4f} | {format_interval(intervals[key])} |" for key, title in
                               (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1")))
        scores_table = f"""| metric | value | {settings["confidence"]:.0%} interval |
| --- | --- | --- |
{score_rows}
| expected calibration error | {metrics["ece"]:.4f} | |

Intervals: percentile bootstrap over the {metrics["examples"]} test examples ({settings["resamples"]} resamples,
seed {settings["seed"]}): how far each score could move on another test sample of this size. A model that
scores higher by less than that is not shown to be better; compare two models on the same texts, pair by pair."""
    else:
        scores_table = f"""| metric | value |
| --- | --- |
| accuracy | {metrics["accuracy"]:.4f} |
| macro F1 | {metrics["macro_f1"]:.4f} |
| weighted F1 | {metrics["weighted_f1"]:.4f} |
| expected calibration error | {metrics["ece"]:.4f} |"""
    base_line = (f"`{base_model}`" if base_model else "a local model folder (set export.base_model_id to name it)") + \
        f", revision `{params.model.revision or 'default branch'}`"
    bias_note = "" if logit_bias is None else (
        f"\nThis model carries a per-class logit bias fitted on the validation split (config.json "
        f"`class_logit_bias`: {', '.join(f'{n} {b:+.3f}' for n, b in zip(labels, logit_bias))}). "
        f"`emotion-predict` and `emotion_pipeline.predict` add it to the logits; a plain `pipeline()` does not.\n")
    body = f"""
# Emotion classifier: {base_model or "local base model"} {"+ LoRA (merged)" if lora else "(fully fine-tuned)"}

Classifies English text into six emotions: {", ".join(labels)}.
Base model: {base_line}. Data: {f"`{dataset}`" if dataset else "a local dataset"}, revision
`{source["data.revision"] or "default branch"}`.
{"Fine-tuned with LoRA by the emotion-pipeline DVC pipeline and merged into the base weights," if lora else
   "Every weight fine-tuned by the emotion-pipeline DVC pipeline (lora.enabled false),"}
so it loads with plain `transformers` (no `peft`).

## Test metrics ({metrics["examples"]} examples)

{scores_table}

{per_class}

## Use

```python
from transformers import pipeline

classify = pipeline("text-classification", model="{EXPORT_DIR}")
print(classify(["i feel so happy today", "this noise scares me"]))
```

Or from the shell: `emotion-predict {EXPORT_DIR} "i feel so happy today"` (JSON Lines out).
{bias_note}
## Training parameters (params.yaml sections model, lora, train)

```json
{json.dumps(training, indent=2, sort_keys=True)}
```
"""
    trained_in = ADAPTER_DIR / ENVIRONMENT_FILE
    environments = [("Trained", json.loads(trained_in.read_text()) if trained_in.is_file() else None),
                    ("Exported", environment)]
    body += "".join(f"""
## {when} in

```
{chr(10).join(environment_lines(record))}
```
""" for when, record in environments if record)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
