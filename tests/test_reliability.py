"""Reproducibility and crash recovery, with the real `dvc repro` on the tiny model and data.

- Two from-scratch runs with the same params, code and data give byte-identical metrics and
  predictions.
- Training killed with SIGKILL after a checkpoint resumes on the next `dvc repro` and ends with
  the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_project, run, subprocess_env, tiny_params

# Outputs that must be identical across runs. train_run.json (wall time) is excluded on purpose.
REPRODUCIBLE = [
    "metrics/data_report.json",
    "metrics/train.json",
    "metrics/test.json",
    "metrics/predictions.csv",
    "metrics/classification_report.txt",
    "metrics/baseline.json",
    "metrics/export.json",
    "metrics/train_log/plots/metrics/train/loss.tsv",
    "metrics/train_log/plots/metrics/eval/macro_f1.tsv",
]


def reliability_params(small_data: Path, tiny_model: Path) -> dict:
    params = tiny_params(small_data, tiny_model)
    params["train"] = {**params["train"], "epochs": 3}  # a checkpoint per epoch: room to kill between them
    return params


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, small_data: Path, tiny_model: Path) -> Path:
    project = copy_project(tmp_path_factory.mktemp("reference"), reliability_params(small_data, tiny_model))
    run(["dvc", "repro"], project)
    return project


def assert_same_outputs(first: Path, second: Path) -> None:
    for name in REPRODUCIBLE:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between runs"


def test_two_runs_from_scratch_are_byte_identical(reference_run: Path, tmp_path: Path, small_data, tiny_model) -> None:
    again = copy_project(tmp_path / "again", reliability_params(small_data, tiny_model))
    run(["dvc", "repro"], again)
    assert_same_outputs(reference_run, again)


def complete_checkpoints(project: Path) -> list[Path]:
    """Checkpoints whose trainer_state.json (the last file Trainer writes) is in place."""
    return [path.parent for path in (project / "models/checkpoints").glob("checkpoint-*/trainer_state.json")]


def test_killed_training_resumes_and_matches_uninterrupted_run(reference_run: Path, tmp_path: Path,
                                                                 small_data, tiny_model) -> None:
    project = copy_project(tmp_path / "killed", reliability_params(small_data, tiny_model))
    run(["dvc", "repro", "prepare"], project)

    # Start training, wait for the first complete checkpoint, then SIGKILL dvc and the stage process.
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train"], cwd=project, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not complete_checkpoints(project):
        assert process.poll() is None, "training ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (project / "models/adapter").exists(), "training finished before the kill; nothing was tested"
    killed_at = max(int(path.name.split("-")[1]) for path in complete_checkpoints(project))

    # The next repro resumes from the checkpoint rather than starting over, and finishes the job.
    resumed = run(["dvc", "repro"], project)
    assert "resuming from models/checkpoints/checkpoint-" in resumed.stdout + resumed.stderr
    run_info = json.loads((project / "metrics/train_run.json").read_text())
    assert run_info["resumed_from_step"] >= killed_at > 0
    assert_same_outputs(reference_run, project)


def test_checkpoints_from_other_params_are_not_resumed(tmp_path: Path, small_data, tiny_model) -> None:
    project = copy_project(tmp_path / "stale", reliability_params(small_data, tiny_model))
    run(["dvc", "repro", "prepare"], project)
    # Leave a complete checkpoint behind from a run with other params, as a crash would.
    stale = project / "models/checkpoints/checkpoint-38"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    (project / "models/checkpoints/fingerprint.json").write_text(json.dumps({"fingerprint": "other params"}))

    result = run(["dvc", "repro", "train"], project)
    output = result.stdout + result.stderr
    assert "from a run with other params or data; starting fresh" in output
    assert "resuming from" not in output
    assert json.loads((project / "metrics/train_run.json").read_text())["resumed_from_step"] == 0
