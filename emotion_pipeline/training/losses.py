"""The rare-class levers of the loss (train.class_weights, train.label_smoothing): off by default, and then the
Trainer uses the model's own loss, exactly as the seed recipe trains."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from emotion_pipeline.errors import UserError


def class_weight_vector(setting: str | list[float], train_labels: np.ndarray, num_labels: int,
                        power: float = 1.0) -> np.ndarray | None:
    """train.class_weights as one weight per class: 'balanced' is (n / (classes x count)) ** train.class_weight_power."""
    if power != 1 and setting != "balanced":
        raise UserError(f"'train.class_weight_power' = {power} tempers 'balanced' weights only; train.class_weights is {setting!r}.")
    if setting == "none":
        return None
    if setting == "balanced":
        counts = np.bincount(train_labels, minlength=num_labels)
        return (len(train_labels) / (num_labels * np.maximum(counts, 1))) ** power
    if len(setting) != num_labels:
        raise UserError(f"'train.class_weights' = {setting} is invalid: needs one weight per class ({num_labels}, "
                        f"in data.labels order), or 'none' or 'balanced'.")
    return np.asarray(setting, dtype=np.float64)


def rare_class_loss(cfg, train_labels: np.ndarray, num_labels: int):
    """A Trainer loss function with class weights and/or label smoothing; None when both are off."""
    weights = class_weight_vector(cfg.class_weights, train_labels, num_labels, cfg.class_weight_power)
    if weights is None and cfg.label_smoothing == 0:
        return None
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits.float()
        total = F.cross_entropy(logits, labels, weight=None if weight is None else weight.to(logits.device),
                                label_smoothing=cfg.label_smoothing, reduction="sum")
        # Trainer expects a loss normalised by the examples of the whole accumulated batch.
        return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    return loss
