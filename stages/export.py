"""export: adapter merged into the base -> models/export, a plain transformers model with a model card.

Reads params sections: model (to load the base), export.

The exported folder loads with AutoModelForSequenceClassification alone, no peft needed. Before
it is moved into place, it is reloaded from disk and must predict the same labels as the
adapter on a sample of the test split; otherwise the stage fails and nothing is replaced.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from emotion_pipeline.config import load_params
from emotion_pipeline.io import atomic_dir, write_json
from emotion_pipeline.modeling import load_adapter_model
from emotion_pipeline.paths import ADAPTER_DIR, EXPORT_CHECK, EXPORT_DIR, PREPARED_DIR, TEST_DETAILS, TRAINING_PARAMS_FILE
from emotion_pipeline.predict import load_exported, predict_proba
from emotion_pipeline.prepared import read_prepared

log = logging.getLogger("export")



class ExportMismatch(RuntimeError):
    """The reloaded export does not predict like the adapter it came from."""


def main() -> None:
    params = load_params()
    cfg = params.export
    splits, labels = read_prepared(PREPARED_DIR)
    sample = splits["test"]["text"].tolist()[: cfg.check_samples]

    adapter_model, tokenizer = load_adapter_model(params.model, ADAPTER_DIR)
    adapter_probs = predict_proba(adapter_model, tokenizer, sample, max_length=params.model.max_length)
    merged = adapter_model.merge_and_unload()

    with atomic_dir(EXPORT_DIR) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        exported, exported_tokenizer = load_exported(str(staging), device="cpu")
        export_probs = predict_proba(exported, exported_tokenizer, sample, max_length=params.model.max_length)
        check = _compare(adapter_probs, export_probs, cfg.max_prob_diff)
        (staging / "README.md").write_text(model_card(params.model.name, params.model.revision, labels))
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


def model_card(base_name: str, base_revision: str | None, labels: list[str]) -> str:
    metrics = json.loads(TEST_DETAILS.read_text())
    training = json.loads((ADAPTER_DIR / TRAINING_PARAMS_FILE).read_text())
    per_class = "\n".join(
        f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
        for name, s in metrics["per_class"].items()
    )
    params_yaml = json.dumps(training, indent=2, sort_keys=True)
    return f"""---
library_name: transformers
pipeline_tag: text-classification
base_model: {base_name}
tags: [emotion, lora, dvc]
---

# Emotion classifier: {base_name} + LoRA (merged)

Classifies English text into six emotions: {", ".join(labels)}.
Base model: `{base_name}`, revision `{base_revision or "default branch"}`.
Fine-tuned with LoRA by the emotion-pipeline DVC pipeline and merged into the base weights,
so it loads with plain `transformers` (no `peft`).

## Test metrics ({metrics["examples"]} examples)

| metric | value |
| --- | --- |
| accuracy | {metrics["accuracy"]:.4f} |
| macro F1 | {metrics["macro_f1"]:.4f} |
| weighted F1 | {metrics["weighted_f1"]:.4f} |
| expected calibration error | {metrics["ece"]:.4f} |

| class | precision | recall | F1 | support |
| --- | --- | --- | --- | --- |
{per_class}

## Use

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{EXPORT_DIR}")
model = AutoModelForSequenceClassification.from_pretrained("{EXPORT_DIR}").eval()
batch = tokenizer(["i feel so happy today", "this noise scares me"], padding=True, return_tensors="pt")
with torch.inference_mode():
    probs = model(**batch).logits.softmax(-1)
print([model.config.id2label[i] for i in probs.argmax(-1).tolist()])
```

Or from the shell: `python -m emotion_pipeline.predict {EXPORT_DIR} "i feel so happy today"`.

## Training parameters (params.yaml sections model, lora, train)

```json
{params_yaml}
```
"""
