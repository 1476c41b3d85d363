"""The two scores the project selects by: macro-F1 (best epoch, baseline choice, class bias) and accuracy, apart
from the other metrics so that training depends on these lines alone. sklearn is imported inside: ~1 s a process."""

from __future__ import annotations

import numpy as np


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of the F1 of every class id 0..num_labels-1 (a class never predicted nor present
    scores 0): the project's model-selection score (best epoch, baseline choice, class bias)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(num_labels)), average="macro", zero_division=0))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))
