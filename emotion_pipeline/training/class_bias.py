"""The per-class logit bias (the train.fit_class_bias lever): how it is fitted and where it is stored (here, the
train stage's side), how it is applied (emotion_pipeline.inference.class_bias, the side of evaluate, export and
every predict path). Each side has one home; the split keeps the applying code out of training's dependencies.

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

from emotion_pipeline.paths import CLASS_BIAS_FILE

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- 1. fitting (train)


def biased_macro_f1(logits: np.ndarray, labels: np.ndarray, bias: np.ndarray | float) -> float:
    """Macro-F1 over every class of argmax(logits + bias)."""
    from emotion_pipeline.evaluation.scores import macro_f1

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
    from emotion_pipeline.evaluation.scores import accuracy, macro_f1

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
    (folder / CLASS_BIAS_FILE).write_text(json.dumps(record, indent=2) + "\n")


# --------------------------------------------------------------------------- 3. into the model (evaluate, export)


# --------------------------------------------------------------------------- 4. applying (predict)
