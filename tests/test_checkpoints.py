"""Crash recovery: which checkpoint a run resumes from (the stage-level kill-and-resume test is in test_reliability)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from emotion_pipeline.checkpoints import COMPLETE_FILE, finish, resumable_checkpoint, run_fingerprint, step_of


def leave_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint as training leaves it; the completion marker is written once every process has saved."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (checkpoint / "trainer_state.json").write_text("{}")
        (checkpoint / COMPLETE_FILE).write_text("{}")
    return checkpoint


def stamp(folder: Path, fingerprint: str) -> None:
    (folder / "fingerprint.json").write_text(json.dumps({"fingerprint": fingerprint, "finished": False}))


def test_the_latest_complete_checkpoint_of_the_same_run_is_resumed(tmp_path):
    folder = tmp_path / "checkpoints"
    leave_checkpoint(folder, 38)
    latest = leave_checkpoint(folder, 76)
    leave_checkpoint(folder, 114, complete=False)  # cut off mid-save by the crash
    # Rank 0's files all there, another process's RNG state cut off: not complete either.
    (leave_checkpoint(folder, 152, complete=False) / "trainer_state.json").write_text("{}")
    stamp(folder, "abc")
    assert resumable_checkpoint(folder, "abc") == latest
    assert step_of(latest) == 76


def test_checkpoints_from_other_params_are_dropped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    leave_checkpoint(folder, 38)
    stamp(folder, "other params")
    with caplog.at_level(logging.WARNING):
        assert resumable_checkpoint(folder, "abc") is None
    assert "from a run with other params or data; starting fresh" in caplog.text
    assert not list(folder.glob("checkpoint-*"))
    # The folder is stamped for this run, so its own checkpoints are recognised after a crash.
    assert json.loads((folder / "fingerprint.json").read_text()) == {"fingerprint": "abc", "finished": False}


def test_a_finished_run_leaves_nothing_to_resume(tmp_path):
    folder = tmp_path / "checkpoints"
    leave_checkpoint(folder, 38)
    stamp(folder, "abc")
    finish(folder, "abc")
    assert not list(folder.glob("checkpoint-*"))
    assert resumable_checkpoint(folder, "abc") is None


def test_fingerprint_follows_params_and_prepared_data(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pd.DataFrame({"text": ["a"], "label": [0]}).to_parquet(prepared / "train.parquet")
    params = {"train": {"lr": 1e-4}}
    first = run_fingerprint(params, prepared)
    assert run_fingerprint({"train": {"lr": 1e-4}}, prepared) == first
    assert run_fingerprint({"train": {"lr": 2e-4}}, prepared) != first
    pd.DataFrame({"text": ["b"], "label": [0]}).to_parquet(prepared / "train.parquet")
    assert run_fingerprint(params, prepared) != first
