"""A per-class logit bias fitted on validation to maximise macro-F1 (the train.fit_class_bias lever).

Cross-entropy training makes the most accurate classifier, not the one with the best macro-F1:
the rare classes (love, surprise) are predicted too seldom. Adding one constant per class to the
logits moves the decision boundaries towards them without touching the model. The bias is fitted
on the validation split after training (never on test), stored beside the adapter, and from
there put into the model itself, so every way of predicting applies it:

- a head with a bias parameter (BERT's classifier): the bias is added to it, so anything that
  loads the export, `transformers.pipeline()` included, predicts with it;
- a head without one (Qwen3's score layer): it is stored in config.json as ``class_logit_bias``,
  applied by emotion_pipeline.predict (evaluate, export's check, the emotion-predict command).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

BIAS_FILE = "class_bias.json"  # in the adapter folder, beside the weights it belongs to
CONFIG_KEY = "class_logit_bias"  # in config.json, for heads without a bias parameter


def biased_macro_f1(logits: np.ndarray, labels: np.ndarray, bias: np.ndarray | float) -> float:
    """Macro-F1 over every class of argmax(logits + bias)."""
    from sklearn.metrics import f1_score  # here, so that predicting does not import scikit-learn

    return f1_score(labels, (logits + bias).argmax(axis=1), labels=list(range(logits.shape[1])), average="macro",
                    zero_division=0)


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


def write_class_bias(folder: Path, bias: np.ndarray, labels: list[str]) -> None:
    record = {"labels": labels, "bias": [round(float(value), 6) for value in bias]}
    (folder / BIAS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_class_bias(folder: Path) -> np.ndarray | None:
    """The bias stored with an adapter, or None when the lever was off."""
    path = folder / BIAS_FILE
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["bias"], dtype=np.float32)


def apply_class_bias(model, bias: np.ndarray) -> None:
    """Put ``bias`` into a (merged) classifier: into its head's bias parameter if it has one, else into its config."""
    head = getattr(model, "classifier", None) or getattr(model, "score", None)
    if isinstance(head, torch.nn.Linear) and head.bias is not None:
        with torch.no_grad():
            head.bias += torch.as_tensor(bias, dtype=head.bias.dtype, device=head.bias.device)
    else:
        setattr(model.config, CONFIG_KEY, [round(float(value), 6) for value in bias])


def config_bias(config) -> np.ndarray | None:
    """The bias a model's config carries (heads without a bias parameter), or None."""
    bias = getattr(config, CONFIG_KEY, None)
    return None if bias is None else np.asarray(bias, dtype=np.float32)


def shift_probs(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(logits + bias) from softmax(logits): each row times exp(bias), renormalised."""
    shifted = probs * np.exp(bias)[None, :]
    return shifted / shifted.sum(axis=1, keepdims=True)
