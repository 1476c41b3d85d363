"""load_params: the repo's defaults are the real job, and every bad value is a UserError naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import BAD_PARAMS

from emotion_pipeline.config import Params, load_params
from emotion_pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_are_the_documented_real_job():
    params = load_params(REPO / "params.yaml")
    assert params.model.name == "Qwen/Qwen3-0.6B"
    assert params.data.source == "dair-ai/emotion"
    assert params.data.labels == ["sadness", "joy", "love", "anger", "fear", "surprise"]  # hub order
    assert (params.lora.r, params.lora.alpha) == (8, 16)
    assert params.train.lr == 2e-4
    assert (params.train.batch_size, params.train.epochs, params.train.warmup_steps) == (8, 3, 500)
    assert params.train.weight_decay == 0.01
    assert params.train.seed == 42


def test_missing_keys_fall_back_to_the_same_values_as_params_yaml(tmp_path):
    """Deleting a key from params.yaml must not silently change the job."""
    empty = tmp_path / "params.yaml"
    empty.write_text("")
    assert load_params(empty) == load_params(REPO / "params.yaml") == Params()


def _load(tmp_path: Path, params: dict | str) -> Params:
    path = tmp_path / "params.yaml"
    path.write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    return load_params(path)


def test_unknown_key_is_named_with_the_valid_keys(tmp_path):
    with pytest.raises(UserError) as err:
        _load(tmp_path, {"train": {"lrr": 1e-4}})
    message = str(err.value)
    assert "'train.lrr'" in message
    assert "valid keys here: lr, batch_size" in message
    assert "warmup_steps" in message


def test_unknown_section_is_named_with_the_valid_sections(tmp_path):
    with pytest.raises(UserError) as err:
        _load(tmp_path, {"optimizer": {"lr": 1e-4}})
    message = str(err.value)
    assert "'optimizer'" in message
    assert all(section in message for section in ("data", "model", "lora", "train", "evaluate", "baseline"))


@pytest.mark.parametrize(("params", "key"), BAD_PARAMS)
def test_invalid_value_names_the_key(tmp_path, params, key):
    with pytest.raises(UserError) as err:
        _load(tmp_path, params)
    assert f"'{key}'" in str(err.value)
    assert str(tmp_path / "params.yaml") in str(err.value)


def test_duplicate_labels_are_listed(tmp_path):
    with pytest.raises(UserError, match="repeated: joy"):
        _load(tmp_path, {"data": {"labels": ["joy", "fear", "joy"]}})


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(UserError) as err:
        _load(tmp_path, {"train": {"lr": 0, "batch_size": 0}})
    assert "'train.lr'" in str(err.value) and "'train.batch_size'" in str(err.value)


def test_invalid_yaml_names_the_file(tmp_path):
    with pytest.raises(UserError, match="not valid YAML"):
        _load(tmp_path, "train:\n  lr: [2e-4\n")


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(UserError, match="must be a mapping"):
        _load(tmp_path, "- train\n- lr\n")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(UserError, match="not found") as err:
        load_params(missing)
    assert str(missing) in str(err.value)
