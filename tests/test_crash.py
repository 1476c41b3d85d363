"""A kill at any moment loses nothing: `dvc repro` killed at random moments (SIGKILL, SIGINT, SIGTERM to its whole
process group), then run again, ends with the bytes of an uninterrupted run, a clean `dvc status`, no staging or
swapped-out folder and no process of the killed runs alive (emotion_pipeline.dev.chaos; benchmarks/README.md has a
longer run). The same for an emotion-batch output file: after a kill it is complete or absent, never cut short.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_project, hashseed_env, subprocess_env, tiny_params

from emotion_pipeline.dev.chaos import check_recovered, kill_and_recover, output_digests

# Seconds each stage of the tiny project takes alone here (what `python -m emotion_pipeline.dev.chaos` measures); a
# kill lands a seeded random part of that after the stage starts, later on a slower machine's, so inside it still.
TINY_STAGE_SECONDS = {"prepare": 1, "train": 9, "baseline": 12, "evaluate": 7, "export": 6, "quantize": 17}


@pytest.mark.slow
def test_random_kills_of_dvc_repro_end_in_the_uninterrupted_bytes(finished_run, small_data, tiny_model, tmp_path):
    """Three kills, then `dvc repro` finishes: SIGTERM into train, SIGINT into evaluate, and SIGKILL into quantize,
    which spends most of its time building models/int8 in a staging folder (what a kill -9 leaves there must be
    cleared by the next run: with the atomic_dir of before issue 34 it stayed, and this test failed)."""
    project = copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))
    plan = {stage: TINY_STAGE_SECONDS[stage] for stage in ("train", "evaluate", "quantize")}
    log: list[str] = []
    kills = kill_and_recover(project, hashseed_env(1), plan, kills=3, seed=int(os.environ.get("CHAOS_SEED", "0")),
                             log=log.append, signals=(signal.SIGTERM, signal.SIGINT, signal.SIGKILL),
                             restart_finished=False)  # never a forced run: the documented run-cache corner
    print("\n".join(log))  # the moments and the stages they hit, in the test's output
    assert all(kill.survivors == 0 for kill in kills), log
    assert {kill.signal for kill in kills} == {"SIGKILL", "SIGINT", "SIGTERM"}
    problems = check_recovered(project, output_digests(finished_run.path), hashseed_env(1))
    assert not problems, "\n".join([*log, *problems])


def numbered_lines(path: Path, count: int) -> Path:
    path.write_text("".join(f"text number {i} and i feel so happy today\n" for i in range(count)))
    return path


@pytest.mark.slow
def test_a_killed_emotion_batch_leaves_its_output_complete_or_absent(tiny_classifier, tmp_path):
    """SIGKILL to its process group and SIGTERM to the command (as `kill PID` or a supervisor sends it) at seeded
    random moments of an emotion-batch run, then the same command to the end. (SIGTERM to the whole group also ends
    the local Ray under it, and with it the command at once: the output is then absent all the same.)"""
    source = numbered_lines(tmp_path / "texts.txt", 20_000)
    output = tmp_path / "labelled.jsonl"
    command = [str(Path(sys.executable).with_name("emotion-batch")), str(tiny_classifier), "--input", str(source),
               "--output", str(output), "--actors", "1", "--piece-bytes", "100000"]
    rng = random.Random(0)
    for signum in (signal.SIGKILL, signal.SIGTERM):
        process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        time.sleep(rng.uniform(2, 20))
        if signum == signal.SIGKILL:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        if output.exists():  # it finished before the kill: then it is whole
            assert sum(1 for _ in output.open()) == 20_000
            output.unlink()
        if signum == signal.SIGTERM and process.returncode != 0:
            assert process.returncode == 143 and err.decode().strip().splitlines()[-1].startswith("interrupted (SIGTERM)")
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = output.read_text().splitlines()
    assert len(lines) == 20_000 and json.loads(lines[-1])["line"] == 20_000
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labelled.jsonl", "texts.txt"]  # no staging file left
