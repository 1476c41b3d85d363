"""The TF-IDF + logistic regression classifier: the baseline stage's model, and the audit's cheap out-of-sample one."""

from __future__ import annotations

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline


def tfidf_classifier(setting: dict, max_features: int | None, seed: int):
    """An unfitted pipeline for ``setting`` (ngram_max, c, class_weight, sublinear_tf: one point of params.baseline)."""
    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, setting["ngram_max"]), max_features=max_features, sublinear_tf=setting["sublinear_tf"]),
        LogisticRegression(C=setting["c"], class_weight=setting["class_weight"], max_iter=3000, random_state=seed),
    )
