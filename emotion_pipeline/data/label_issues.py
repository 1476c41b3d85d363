"""Which labels are probably wrong: confident learning (cleanlab) on out-of-sample probabilities.

One definition, used by three readers: the audit command (python -m emotion_pipeline.audit) lists the flagged
texts of every split, prepare drops the flagged train texts when data.drop_label_issues is on, and evaluate's
quality report audits the test split with the trained model's own probabilities. So the lever drops exactly the
train rows the audit lists (same model, folds and seed), and nothing here depends on another stage's output.

Out of sample means a text is scored by a model that never saw it: train by K-fold out-of-fold probabilities of a
TF-IDF model (seconds on 2 cores, where K fine-tunes take hours), validation and test by a model fitted on train.
The audit command can take train's out-of-fold probabilities from K fine-tunes instead (data.audit_fold: the same
folds), a choice for a person with the hours; prepare's lever keeps the TF-IDF model, which needs no other run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The audit's TF-IDF model: fixed, not the baseline stage's search result, because prepare runs before the baseline
# and a lever of prepare must not move with another stage's output.
AUDIT_SETTING = {"ngram_max": 2, "c": 10.0, "class_weight": None, "sublinear_tf": True}
FOLDS = 5
SEED = 0


def train_folds(train: pd.DataFrame, folds: int = FOLDS, seed: int = SEED) -> list[np.ndarray]:
    """The held-out rows of each of the K folds of train (stratified by label, shuffled with the seed): the audit's
    TF-IDF folds, and the folds data.audit_fold holds out for the fine-tune's."""
    from sklearn.model_selection import StratifiedKFold

    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(train["text"], train["label"])
    return [held_out for _, held_out in split]


def out_of_sample_probabilities(splits: dict[str, pd.DataFrame], num_labels: int, folds: int = FOLDS,
                                seed: int = SEED) -> dict[str, np.ndarray]:
    """Each split's probabilities from models that never saw the text: K-fold for train, all of train for the rest."""
    return {"train": out_of_fold_probabilities(splits["train"], num_labels, folds, seed),
            **held_out_probabilities(splits, num_labels, seed)}


def out_of_fold_probabilities(train: pd.DataFrame, num_labels: int, folds: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """Train's probabilities, each text's from the TF-IDF model fitted on the other folds."""
    probs = np.zeros((len(train), num_labels))
    for held_out in train_folds(train, folds, seed):
        fitted_on = np.setdiff1d(np.arange(len(train)), held_out)
        probs[held_out] = _tfidf_probabilities(_tfidf_fitted(train.iloc[fitted_on], seed), train.iloc[held_out], num_labels)
    return probs


def held_out_probabilities(splits: dict[str, pd.DataFrame], num_labels: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Every split's but train's probabilities, from the TF-IDF model fitted once on all of train."""
    model = _tfidf_fitted(splits["train"], seed)
    return {name: _tfidf_probabilities(model, frame, num_labels) for name, frame in splits.items() if name != "train"}


def _tfidf_fitted(frame: pd.DataFrame, seed: int):
    from emotion_pipeline.evaluation.tfidf import tfidf_classifier

    return tfidf_classifier(AUDIT_SETTING, None, seed).fit(frame["text"], frame["label"])


def _tfidf_probabilities(model, frame: pd.DataFrame, num_labels: int) -> np.ndarray:
    """frame's probabilities under a fitted model; a class missing from the model's train gets probability 0."""
    from emotion_pipeline.evaluation.metrics import full_proba

    return full_proba(model.predict_proba(frame["text"]), model.classes_, num_labels)


def label_issues(frame: pd.DataFrame, probs: np.ndarray, labels: list[str], split: str) -> pd.DataFrame:
    """cleanlab's flagged texts of one split, worst first: split, row (as in data/prepared), text, given label,
    suggested label (the model's top class), quality (the probability of the given label)."""
    from cleanlab.filter import find_label_issues

    given = frame["label"].to_numpy()
    # n_jobs=1: a worker pool would be stopped with SIGTERM, which our commands turn into an interrupt.
    ranked = find_label_issues(given, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return pd.DataFrame({"split": split, "row": ranked, "text": frame["text"].to_numpy()[ranked],
                         "given": [labels[i] for i in given[ranked]],
                         "suggested": [labels[i] for i in probs[ranked].argmax(axis=1)],
                         "quality": np.round(probs[ranked, given[ranked]], 6)})


def flagged_train_rows(splits: dict[str, pd.DataFrame], labels: list[str]) -> np.ndarray:
    """The train rows the audit flags with its defaults, in row order: what data.drop_label_issues drops."""
    probs = out_of_fold_probabilities(splits["train"], len(labels))
    return np.sort(label_issues(splits["train"], probs, labels, "train")["row"].to_numpy())
