"""Crash recovery: which checkpoint a run resumes from, and what decides that a checkpoint belongs to this run
(the stage-level kill-and-resume tests are in test_reliability)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from emotion_pipeline.training import checkpoints
from emotion_pipeline.training.checkpoints import COMPLETE_FILE, changed_inputs, finish, resumable_checkpoint, run_inputs, step_of

REPO = Path(__file__).resolve().parents[1]


def leave_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint as training leaves it; the completion marker is written once every process has saved."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (checkpoint / "trainer_state.json").write_text("{}")
        (checkpoint / COMPLETE_FILE).write_text("{}")
    return checkpoint


def stamp(folder: Path, inputs: dict) -> None:
    (folder / "fingerprint.json").write_text(json.dumps({"inputs": inputs, "finished": False}))


SAME = {"params": "p1", "processes": "1", "stages/train.py": "c1"}


def test_the_latest_complete_checkpoint_of_the_same_run_is_resumed(tmp_path):
    folder = tmp_path / "checkpoints"
    leave_checkpoint(folder, 38)
    latest = leave_checkpoint(folder, 76)
    leave_checkpoint(folder, 114, complete=False)  # cut off mid-save by the crash
    # Rank 0's files all there, another process's RNG state cut off: not complete either.
    (leave_checkpoint(folder, 152, complete=False) / "trainer_state.json").write_text("{}")
    stamp(folder, SAME)
    assert resumable_checkpoint(folder, dict(SAME)) == latest
    assert step_of(latest) == 76


def test_checkpoints_of_other_inputs_are_dropped_with_one_line_naming_what_changed(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    leave_checkpoint(folder, 38)
    stamp(folder, SAME)
    now = {**SAME, "stages/train.py": "c2"}
    with caplog.at_level(logging.WARNING):
        assert resumable_checkpoint(folder, now) is None
    assert f"the code of stages/train.py changed since {folder / 'checkpoint-38'}: training starts from step 0" in caplog.text
    assert not list(folder.glob("checkpoint-*"))
    # The folder is stamped for this run, so its own checkpoints are recognised after a crash.
    assert json.loads((folder / "fingerprint.json").read_text()) == {"inputs": now, "finished": False}


def test_checkpoints_of_an_older_fingerprint_format_are_not_resumed(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    leave_checkpoint(folder, 38)
    (folder / "fingerprint.json").write_text(json.dumps({"fingerprint": "abc", "finished": False}))
    with caplog.at_level(logging.WARNING):
        assert resumable_checkpoint(folder, SAME) is None
    assert "the checkpoint format changed since" in caplog.text


def test_a_finished_run_leaves_nothing_to_resume(tmp_path):
    folder = tmp_path / "checkpoints"
    leave_checkpoint(folder, 38)
    stamp(folder, SAME)
    finish(folder, SAME)
    assert not list(folder.glob("checkpoint-*"))
    assert resumable_checkpoint(folder, SAME) is None


@pytest.fixture
def train_project(tmp_path, monkeypatch) -> Path:
    """A project folder as train sees it: its code (a copy, so it can be edited), dvc.yaml, the runtime lock, prepared
    data and a base model under models/base; run_inputs then hashes the code this copy holds."""
    for folder in ("stages", "emotion_pipeline"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "requirements/runtime.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "data/prepared").mkdir(parents=True)
    pd.DataFrame({"text": ["a"], "label": [0]}).to_parquet(tmp_path / "data/prepared/train.parquet")
    (tmp_path / "models/base/tiny").mkdir(parents=True)
    (tmp_path / "models/base/tiny/config.json").write_text('{"hidden_size": 8}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoints, "CODE_ROOT", tmp_path)
    return tmp_path


PARAMS = {"model": {"name": "models/base/tiny"}, "train": {"lr": 1e-4}}


def test_run_inputs_name_each_change_that_decides_a_training_run(train_project):
    first = run_inputs(PARAMS, 1, str(train_project / "models/base/tiny"))
    assert run_inputs(PARAMS, 1, str(train_project / "models/base/tiny")) == first
    assert {"stages/train.py", "emotion_pipeline/training/modeling.py", "requirements/runtime.txt",
            "data/prepared/train.parquet", "models/base/tiny/config.json"} <= set(first)

    def changes(edit) -> list[str]:
        edit()
        return changed_inputs(first, run_inputs(PARAMS, 1, str(train_project / "models/base/tiny")))

    assert changed_inputs(first, run_inputs({"model": PARAMS["model"], "train": {"lr": 2e-4}}, 1, "x")) == \
        ["the params (model, lora, train)"]
    assert changed_inputs(first, run_inputs(PARAMS, 2, "x")) == ["the number of processes"]
    assert changes(lambda: (train_project / "stages/train.py").write_text(
        (train_project / "stages/train.py").read_text() + "# loss * 0.5\n")) == ["the code of stages/train.py"]
    first = run_inputs(PARAMS, 1, "x")
    assert changes(lambda: (train_project / "models/base/tiny/config.json").write_text('{"hidden_size": 16}')) == \
        ["models/base/tiny/config.json"]
    first = run_inputs(PARAMS, 1, "x")
    assert changes(lambda: (train_project / "requirements/runtime.txt").write_text("torch==9.9\n")) == \
        ["the runtime lock requirements/runtime.txt"]
    first = run_inputs(PARAMS, 1, "x")
    assert changes(lambda: pd.DataFrame({"text": ["b"], "label": [0]}).to_parquet("data/prepared/train.parquet")) == \
        ["data/prepared/train.parquet"]


def test_the_code_is_hashed_where_the_stage_imports_it_from():
    """The project root (where dvc.yaml lies), found from the module's own place in the package."""
    assert (checkpoints.CODE_ROOT / "dvc.yaml").is_file() and (checkpoints.CODE_ROOT / "stages" / "train.py").is_file()


def test_a_base_model_outside_the_project_is_hashed_too(train_project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "model"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"weights 1")
    first = run_inputs(PARAMS, 1, str(outside))
    (outside / "model.safetensors").write_bytes(b"weights 2")
    assert changed_inputs(first, run_inputs(PARAMS, 1, str(outside))) == [str(outside / "model.safetensors")]
