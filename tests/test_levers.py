"""Levers for the rare classes: class-weighted loss and label smoothing (train.class_weights,
train.label_smoothing), and early stopping. Off by default, and then the seed recipe trains to
the same bytes; on, they move the loss and the predictions the expected way."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import set_params, tiny_params, workdir

from emotion_pipeline.config import TrainConfig
from emotion_pipeline.errors import UserError, run_stage
from stages.train import class_weight_vector, rare_class_loss

IMBALANCED = np.array([0] * 8 + [1] * 2)  # class 1 is rare


def test_balanced_weights_favour_the_rare_class():
    weights = class_weight_vector("balanced", IMBALANCED, 2)
    assert weights.tolist() == [10 / (2 * 8), 10 / (2 * 2)]  # scikit-learn's 'balanced'
    assert class_weight_vector("none", IMBALANCED, 2) is None
    with pytest.raises(UserError, match="one weight per class"):
        class_weight_vector([1.0, 2.0, 3.0], IMBALANCED, 2)


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


def test_levers_off_train_the_seed_recipe_to_the_same_bytes_and_on_change_it(stage_folder):
    """On the tiny Qwen3: explicit 'off' values are the default recipe, byte for byte; the levers on change the weights."""
    default = train_adapter(stage_folder, {})
    explicit_off = train_adapter(stage_folder, {"class_weights": "none", "label_smoothing": 0.0, "early_stopping_patience": 0})
    levers_on = train_adapter(stage_folder, {"class_weights": "balanced", "label_smoothing": 0.1, "early_stopping_patience": 1})
    assert explicit_off == default
    assert levers_on != default
