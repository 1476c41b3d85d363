"""The per-class logit bias (train.fit_class_bias) where it is used: read from beside the adapter, put into the
merged classifier (evaluate, export), applied when predicting. How it is fitted and stored, and why it exists:
emotion_pipeline.training.class_bias."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from emotion_pipeline.paths import CLASS_BIAS_FILE

CONFIG_KEY = "class_logit_bias"  # in config.json, for heads without a bias parameter


def read_class_bias(folder: Path) -> np.ndarray | None:
    """The bias stored with an adapter, or None when the lever was off or the bias was not kept."""
    path = folder / CLASS_BIAS_FILE
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["bias"], dtype=np.float32)


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


def config_bias(config) -> np.ndarray | None:
    """The bias a model's config carries (heads without a bias parameter), or None: predict_proba adds it to the logits."""
    bias = getattr(config, CONFIG_KEY, None)
    return None if bias is None else np.asarray(bias, dtype=np.float32)


def shift_probs(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(logits + bias) from softmax(logits): each row times exp(bias), renormalised."""
    shifted = probs * np.exp(bias)[None, :]
    return shifted / shifted.sum(axis=1, keepdims=True)
