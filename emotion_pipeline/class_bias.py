"""The per-class logit bias (the train.fit_class_bias lever): how it is fitted, where it is stored, how it is applied.

This module is the bias's one home; every stage and predict path goes through it.

Why: cross-entropy training makes the most accurate classifier, not the one with the best
macro-F1: the rare classes (love, surprise) are predicted too seldom. Adding one constant per
class to the logits moves the decision boundaries towards them without touching the model.

Its life, in order:
1. fitted (train) on the validation split after training, never on test, and kept only if it
   also helps on held-out halves of validation (``fit_on_validation``);
2. stored beside the adapter it belongs to, in ``class_bias.json`` (``write_class_bias``);
3. put into the model when evaluate and export build the merged classifier (``carry_stored_bias``):
   - into the bias of the layer that writes the logits when it has one (BERT's classifier), so
     anything that loads the export applies it, ``transformers.pipeline()`` included;
   - else (Qwen3's score layer has no bias) into config.json as ``class_logit_bias``;
4. applied when predicting: a head bias by the model itself; a config bias by
   ``emotion_pipeline.predict.predict_proba`` (``config_bias``), the one function every predict
   path uses (evaluate, export's check, quantize's scoring, the emotion-predict command, the
   int8 ONNX model, whose config.json is copied beside it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

BIAS_FILE = "class_bias.json"  # in the adapter folder, beside the weights it belongs to
CONFIG_KEY = "class_logit_bias"  # in config.json, for heads without a bias parameter


# --------------------------------------------------------------------------- 1. fitting (train)


def biased_macro_f1(logits: np.ndarray, labels: np.ndarray, bias: np.ndarray | float) -> float:
    """Macro-F1 over every class of argmax(logits + bias)."""
    from emotion_pipeline.metrics import macro_f1  # here: predicting must not import scikit-learn

    return macro_f1(labels, (logits + bias).argmax(axis=1), logits.shape[1])


def fit_class_bias(logits: np.ndarray, labels: np.ndarray, steps: np.ndarray | None = None,
                   rounds: int = 3) -> np.ndarray:
    """One additive bias per class that maximises macro-F1 of argmax(logits + bias) on (logits, labels).

    Coordinate ascent from zero: each class's bias in turn takes the value of ``steps`` (default
    -3 to 3 by 0.05) with the best macro-F1, the others held; a few rounds. Ties keep the value
    closest to zero, so a bias that does not help stays 0. Deterministic.
    """
    steps = np.round(np.arange(-3.0, 3.0001, 0.05), 4) if steps is None else steps
    steps = steps[np.argsort(np.abs(steps), kind="stable")]  # try small shifts first: ties keep them
    bias = np.zeros(logits.shape[1])
    best = biased_macro_f1(logits, labels, bias)
    for _ in range(rounds):
        improved = False
        for k in range(len(bias)):
            for value in steps:
                trial = bias.copy()
                trial[k] = value
                score = biased_macro_f1(logits, labels, trial)
                if score > best + 1e-12:
                    best, bias, improved = score, trial, True
        if not improved:
            break
    return bias - bias.mean()  # only differences between classes matter


def cross_checked_class_bias(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """fit_class_bias on all of (logits, labels), kept only if it also helps on data it was not fitted on.

    Six free biases can overfit a validation split of a few thousand texts. So the split is cut in
    two halves (alternate rows), a bias is fitted on each half and scored on the other; the bias
    fitted on everything is kept (returned) only if those held-out scores improve on average.
    Otherwise None: the model is left as trained. The second value records the check.
    """
    rows = np.arange(len(labels))
    halves = [rows % 2 == 0, rows % 2 == 1]
    without, with_bias = [], []
    for fit_on, held_out in (halves, halves[::-1]):
        bias = fit_class_bias(logits[fit_on], labels[fit_on])
        without.append(biased_macro_f1(logits[held_out], labels[held_out], 0.0))
        with_bias.append(biased_macro_f1(logits[held_out], labels[held_out], bias))
    check = {"held_out_macro_f1_without": round(float(np.mean(without)), 6),
             "held_out_macro_f1_with": round(float(np.mean(with_bias)), 6)}
    check["kept"] = check["held_out_macro_f1_with"] > check["held_out_macro_f1_without"]
    return (fit_class_bias(logits, labels) if check["kept"] else None), check


def fit_on_validation(logits: np.ndarray, label_ids: np.ndarray, labels: list[str]) -> tuple[np.ndarray | None, dict]:
    """The train stage's use of the lever: the cross-checked bias (None if not kept), and what the
    run's details file records about it (the check; and when kept, the bias and validation scores with it)."""
    from emotion_pipeline.metrics import accuracy, macro_f1

    bias, check = cross_checked_class_bias(logits, label_ids)
    record: dict = {"class_bias_check": check}
    log.info("class bias %s: on held-out halves of validation it moves macro-F1 %.4f -> %.4f",
             "kept" if check["kept"] else "not kept", check["held_out_macro_f1_without"], check["held_out_macro_f1_with"])
    if bias is not None:
        predicted, plain = (logits + bias).argmax(axis=-1), logits.argmax(axis=-1)
        record["class_bias"] = {name: round(float(value), 6) for name, value in zip(labels, bias)}
        record["val_macro_f1_with_bias"] = round(macro_f1(label_ids, predicted, len(labels)), 6)
        record["val_accuracy_with_bias"] = round(accuracy(label_ids, predicted), 6)
        log.info("class bias fitted on validation: macro-F1 %.4f -> %.4f", macro_f1(label_ids, plain, len(labels)),
                 record["val_macro_f1_with_bias"])
    return bias, record


# --------------------------------------------------------------------------- 2. storing (train)


def write_class_bias(folder: Path, bias: np.ndarray, labels: list[str]) -> None:
    record = {"labels": labels, "bias": [round(float(value), 6) for value in bias]}
    (folder / BIAS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_class_bias(folder: Path) -> np.ndarray | None:
    """The bias stored with an adapter, or None when the lever was off or the bias was not kept."""
    path = folder / BIAS_FILE
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["bias"], dtype=np.float32)


# --------------------------------------------------------------------------- 3. into the model (evaluate, export)


def carry_stored_bias(model, adapter_dir: Path) -> np.ndarray | None:
    """Put the bias stored with the adapter (if any) into the merged classifier ``model``; return it."""
    bias = read_class_bias(adapter_dir)
    if bias is not None:
        apply_class_bias(model, bias)
    return bias


def logits_layer(model) -> torch.nn.Linear | None:
    """The layer that writes a classifier's logits: the last Linear with one output per class
    (BERT's ``classifier``, Qwen3's ``score``, RoBERTa's ``classifier.out_proj``), or None."""
    linears = [module for module in model.modules()
               if isinstance(module, torch.nn.Linear) and module.out_features == model.config.num_labels]
    return linears[-1] if linears else None


def apply_class_bias(model, bias: np.ndarray) -> None:
    """Put ``bias`` into a (merged) classifier: into the bias of its logits layer if it has one, else into its config."""
    head = logits_layer(model)
    if head is not None and head.bias is not None:
        with torch.no_grad():
            head.bias += torch.as_tensor(bias, dtype=head.bias.dtype, device=head.bias.device)
    else:
        setattr(model.config, CONFIG_KEY, [round(float(value), 6) for value in bias])


# --------------------------------------------------------------------------- 4. applying (predict)


def config_bias(config) -> np.ndarray | None:
    """The bias a model's config carries (heads without a bias parameter), or None: predict_proba adds it to the logits."""
    bias = getattr(config, CONFIG_KEY, None)
    return None if bias is None else np.asarray(bias, dtype=np.float32)


def shift_probs(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(logits + bias) from softmax(logits): each row times exp(bias), renormalised."""
    shifted = probs * np.exp(bias)[None, :]
    return shifted / shifted.sum(axis=1, keepdims=True)
