"""Reproducibility and crash recovery, with the real `dvc repro` on the tiny model and data.

- Two from-scratch runs with the same params, code and data, under different PYTHONHASHSEED
  values, give byte-identical outputs: every file of every stage's outputs, adapter and export
  weights included. Only metrics/train_run.json (wall time, throughput) differs by design.
- A forced re-run of a stage leaves `dvc status` clean: nothing downstream looks changed.
- Training killed with SIGKILL after a checkpoint resumes on the next `dvc repro` and ends with
  the same outputs as an uninterrupted run; after an edit of a code dependency of train or of a
  base-model file it starts from step 0 instead, and says which file changed.
- Ctrl-C in a stage, while it imports torch or while it writes its new output, exits 130 with one
  line and leaves the earlier outputs as they were.

The uninterrupted run compared against is the session's shared finished project
(conftest.finished_run, PYTHONHASHSEED=1), only read here; every run that is killed, interrupted
or forced works in a project of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    copy_finished,
    copy_project,
    hashseed_env,
    importing_torch,
    interrupt_when,
    run,
    set_params,
    subprocess_env,
    tiny_params,
)

from emotion_pipeline.training.checkpoints import COMPLETE_FILE

pytestmark = pytest.mark.slow

# Run facts that vary by nature; no stage depends on this file.
VARIES_BY_DESIGN = {"metrics/train_run.json"}


def output_files(project: Path) -> dict[str, bytes]:
    """Every file of every output declared in dvc.yaml, by path relative to the project."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    files = {}
    for stage in stages.values():
        for out in stage["outs"]:
            root = project / (next(iter(out)) if isinstance(out, dict) else out)
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                files[str(path.relative_to(project))] = path.read_bytes()
    return files


def reliability_params(small_data: Path, tiny_model: Path) -> dict:
    """The shared finished project's params: 2 epochs, a checkpoint per epoch, so there is a whole epoch
    to kill training in after the first one (a kill that comes too late fails the test, never passes it)."""
    return tiny_params(small_data, tiny_model)


@pytest.fixture(scope="module")
def reference_run(finished_project: Path) -> Path:
    """The uninterrupted from-scratch run (PYTHONHASHSEED=1) the others are compared with: the shared one, read only."""
    return finished_project


def assert_same_outputs(first: Path, second: Path) -> None:
    expected, got = output_files(first), output_files(second)
    assert sorted(expected) == sorted(got), "the two runs wrote different files"
    assert {"models/adapter/adapter_config.json", "models/adapter/adapter_model.safetensors",
            "models/export/model.safetensors", "data/prepared/train.parquet"} <= set(expected)
    differ = [name for name in expected if name not in VARIES_BY_DESIGN and expected[name] != got[name]]
    assert not differ, f"outputs differ between runs: {differ}"


def test_two_runs_from_scratch_are_byte_identical(reference_run: Path, tmp_path: Path, small_data, tiny_model) -> None:
    again = copy_project(tmp_path / "again", reliability_params(small_data, tiny_model))
    run(["dvc", "repro"], again, env=hashseed_env(2))
    assert_same_outputs(reference_run, again)

    # A forced re-run of training (another hash seed again) must not make evaluate or export look changed.
    run(["dvc", "repro", "-f", "-s", "train"], again, env=hashseed_env(3))
    status = run(["dvc", "status"], again)
    assert "up to date" in status.stdout, status.stdout


def complete_checkpoints(project: Path) -> list[Path]:
    """Checkpoints marked complete (every process has saved its part)."""
    return [path.parent for path in (project / "models/checkpoints").glob(f"checkpoint-*/{COMPLETE_FILE}")]


def kill_training_after_a_checkpoint(project: Path, *repro_args: str) -> int:
    """Start training as `dvc repro train` does, SIGKILL dvc and the stage process once a checkpoint is complete;
    return its step."""
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *repro_args, "train"], cwd=project,
                               env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while not complete_checkpoints(project):
        assert process.poll() is None, "training ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (project / "models/checkpoints/fingerprint.json").read_text().count('"finished": true'), \
        "training finished before the kill; nothing was tested"
    return max(int(path.name.split("-")[1]) for path in complete_checkpoints(project))


def test_killed_training_resumes_and_matches_uninterrupted_run(reference_run: Path, tmp_path: Path,
                                                                 small_data, tiny_model) -> None:
    project = copy_project(tmp_path / "killed", reliability_params(small_data, tiny_model))
    run(["dvc", "repro", "prepare"], project)

    # Start training, wait for the first complete checkpoint, then SIGKILL dvc and the stage process.
    killed_at = kill_training_after_a_checkpoint(project)
    assert not (project / "models/adapter").exists(), "training finished before the kill; nothing was tested"

    # The next repro resumes from the checkpoint rather than starting over, and finishes the job.
    resumed = run(["dvc", "repro"], project)
    assert "resuming from models/checkpoints/checkpoint-" in resumed.stdout + resumed.stderr
    run_info = json.loads((project / "metrics/train_run.json").read_text())
    assert run_info["resumed_from_step"] >= killed_at > 0
    assert_same_outputs(reference_run, project)


def test_after_a_kill_a_changed_code_dependency_or_base_model_restarts_training_and_says_why(
        tmp_path: Path, small_data, tiny_model) -> None:
    """A resumed run never mixes two versions: trained half by the old code (or on the old base model) and half by
    the new, while dvc.lock credits the new."""
    project = copy_project(tmp_path / "changed", reliability_params(small_data, tiny_model))
    shutil.copytree(tiny_model, project / "models/base/tiny")  # a base model of its own, to change
    set_params(project, {"model": {"name": "models/base/tiny"}})
    run(["dvc", "repro", "prepare"], project)

    killed_at = kill_training_after_a_checkpoint(project)
    code = project / "stages/train.py"
    code.write_text(code.read_text() + "\n# edited after the crash\n")
    result = run(["dvc", "repro", "train"], project)
    said = result.stdout + result.stderr
    assert (f"the code of stages/train.py changed since models/checkpoints/checkpoint-{killed_at}: "
            "training starts from step 0") in said, said[-3000:]
    assert "resuming from" not in said
    assert json.loads((project / "metrics/train_run.json").read_text())["resumed_from_step"] == 0

    killed_at = kill_training_after_a_checkpoint(project, "-f", "-s")
    config = project / "models/base/tiny/config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "note": "replaced after the crash"}))
    result = run(["dvc", "repro", "train"], project)
    said = result.stdout + result.stderr
    assert (f"models/base/tiny/config.json changed since models/checkpoints/checkpoint-{killed_at}: "
            "training starts from step 0") in said, said[-3000:]
    assert json.loads((project / "metrics/train_run.json").read_text())["resumed_from_step"] == 0


def interrupt_export(project: Path, ready) -> subprocess.CompletedProcess:
    """Start the export stage as dvc runs it, send SIGINT once ``ready(pid)`` holds, return the finished process."""
    return interrupt_when([sys.executable, "-m", "stages", "export"], ready, cwd=project)


@pytest.mark.parametrize("moment", ["while-importing-torch", "while-writing-the-new-export"])
def test_ctrl_c_in_a_stage_is_one_line_exit_130_and_keeps_earlier_outputs(reference_run: Path, tmp_path: Path,
                                                                          moment) -> None:
    project = copy_finished(reference_run, tmp_path / "project")  # the export it runs must not touch the shared one
    models = project / "models"
    before = {path: path.read_bytes() for path in (models / "export").rglob("*") if path.is_file()}
    ready = importing_torch if moment == "while-importing-torch" else lambda pid: any(models.glob(".export.*.tmp"))
    result = interrupt_export(project, ready)
    assert result.returncode == 130, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if line.startswith("interrupted")]
    assert message and "export stage stopped" in message[0] and "earlier outputs are intact" in message[0], result.stderr
    assert {path: path.read_bytes() for path in (models / "export").rglob("*") if path.is_file()} == before
    assert not list(models.glob(".export.*")), "staging folder left behind"
