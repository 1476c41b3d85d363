"""Fault injection for the whole pipeline: `dvc repro` killed at random moments, then run again, must end with the
bytes of an uninterrupted run (the idea of SQLite's crash tests and Jepsen's fault injection, on one machine).

    python -m emotion_pipeline.dev.chaos PROJECT --kills 24 --seed 0    # PROJECT: a copy with no outputs yet

Each kill is aimed at a stage (in pipeline order, `kills / stages` each, so every stage is hit): the harness starts
`dvc repro` in a process group of its own, waits until DVC prints that stage's start (or a later one's, when that
stage finished in an earlier run), sleeps a seeded random part of the stage's duration in the uninterrupted run, and
sends SIGKILL, SIGINT or SIGTERM (in turn) to the whole group.
The stage that was really running then (the last one DVC announced) and the moment are logged. After the kills, one
uninterrupted `dvc repro` finishes; `check_recovered` then compares. The tests use a few kills, benchmarks/README.md
reports a long run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

OUTPUT_FOLDERS = ("data", "models", "metrics")
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)
# Fields of metrics/train_run.json that record how this run went, not what it computed: its timings (two uninterrupted
# runs differ there) and the step a killed run resumed from.
RUN_HISTORY = ("runtime_s", "step_time_median_s", "train_samples_per_second", "train_steps_per_second",
               "resumed_from_step")
STARTED = re.compile(r"^Running stage '([^']+)'")


@dataclass
class Kill:
    aimed_at: str  # the stage the kill waited for (a later one when that one had nothing left to do)
    hit: str  # the stage DVC had announced last when the signal went out ('' once the pipeline had finished)
    signal: str
    after_s: float  # seconds after the aimed stage's start
    exit_status: int  # of dvc repro
    survivors: int  # processes of the run still alive 30 s after the signal (must be 0)


def dvc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def timed_repro(project: Path, env: dict[str, str]) -> dict[str, float]:
    """An uninterrupted `dvc repro`: each stage's seconds (from its announcement to the next one's or the end)."""
    started, order = {}, []
    process = subprocess.Popen(dvc_command("repro"), cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        match = STARTED.match(line)
        if match:
            started[match.group(1)] = time.monotonic()
            order.append(match.group(1))
    end = time.monotonic()
    if process.wait() != 0:
        raise RuntimeError("dvc repro failed:\n" + "".join(lines[-60:]))
    return {stage: (started[order[i + 1]] if i + 1 < len(order) else end) - started[stage] for i, stage in enumerate(order)}


def session_processes(session: int) -> list[int]:
    """The live processes of a session (what `start_new_session` started, and everything it spawned)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session and "Z" not in (entry / "stat").read_text().split(")")[-1][:3]:
                    alive.append(int(entry.name))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue
    return alive


def killed_repro(project: Path, env: dict[str, str], durations: dict[str, float], stage: str, signum: int,
                 rng: random.Random, force: bool = False) -> Kill:
    """`dvc repro` (``force``: every stage again), hit with ``signum`` a random part of a stage's duration
    after ``stage`` starts; when ``stage`` has nothing to do (it finished in an earlier run), after the first later
    stage starts; at the end if none does."""
    order = list(durations)
    # --no-run-cache: a stage DVC has run before with these inputs runs again instead of coming back from the run
    # cache in a moment, so that the kill meets it at work.
    # Ctrl-C's default action in the children, as in a terminal: started from a job with SIGINT ignored (a CI
    # runner, `cmd &`), DVC would inherit the ignore and let its stage finish through a SIGINT.
    process = subprocess.Popen(dvc_command("repro", "--no-run-cache", *(["--force"] if force else [])), cwd=project,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    announced: list[str] = []
    aimed = threading.Event()

    def read() -> None:
        for line in process.stdout:
            match = STARTED.match(line)
            if match:
                announced.append(match.group(1))
                if match.group(1) in order and order.index(match.group(1)) >= order.index(stage):
                    aimed.set()
        aimed.set()  # the output ended: the pipeline finished

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    aimed.wait()
    target = announced[-1] if announced else stage
    delay_s = rng.uniform(0, durations.get(target, 1.0))
    time.sleep(delay_s)
    hit = announced[-1] if process.poll() is None and announced else ""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        hit = ""
    try:
        status = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        status = process.wait()
    reader.join(30)
    deadline = time.monotonic() + 30
    while session_processes(process.pid) and time.monotonic() < deadline:  # SIGTERM and SIGINT: let them finish
        time.sleep(0.5)
    survivors = session_processes(process.pid)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    return Kill(target, hit, signal.Signals(signum).name, round(delay_s, 2), status, len(survivors))


def kill_and_recover(project: Path, env: dict[str, str], durations: dict[str, float], kills: int, seed: int,
                     log=print, signals: tuple = SIGNALS, restart_finished: bool = True) -> list[Kill]:
    """``kills`` kills spread over the stages of ``durations`` (pipeline order), ``signals`` in turn, then one
    uninterrupted `dvc repro`. ``restart_finished``: after a run the signal did not stop, run every stage again
    (`--force`); a forced run killed in a stage whose outputs were up to date leaves that writer's hidden staging
    until the stage next runs (the corner docs/reproducibility.md names), which check_recovered reports."""
    rng = random.Random(seed)
    stages = list(durations)
    done: list[Kill] = []
    for index in range(kills):
        stage = stages[index * len(stages) // kills]
        # A run the signal did not stop (it came as the last stage ended, or DVC let its stage finish) completes the
        # pipeline: the next one starts it all again, so that every kill meets a stage at work.
        finished = restart_finished and bool(done) and (not done[-1].hit or done[-1].exit_status == 0)
        kill = killed_repro(project, env, durations, stage, signals[index % len(signals)], rng, force=finished)
        log(f"kill {index + 1}/{kills}: {kill.signal} {kill.after_s:.2f} s into {kill.aimed_at} "
            f"(hit: {kill.hit or 'nothing, the pipeline had finished'}; dvc exited {kill.exit_status})")
        done.append(kill)
    # --no-run-cache as in the killed runs: a stage killed mid-write runs again, rather than coming back from DVC's run
    # cache (which would leave the killed writer's hidden staging folder until that stage next runs).
    result = subprocess.run(dvc_command("repro", "--no-run-cache"), cwd=project, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc repro after the kills failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return done


def output_digests(project: Path) -> dict[str, str]:
    """sha256 of every output file (RUN_HISTORY left out of train_run.json), by path."""
    digests = {}
    for folder in OUTPUT_FOLDERS:
        for path in sorted((project / folder).rglob("*")):
            if not path.is_file() or "checkpoints" in path.relative_to(project).parts:
                continue
            data = path.read_bytes()
            if path.name == "train_run.json":
                run = json.loads(data)
                data = json.dumps({key: value for key, value in run.items() if key not in RUN_HISTORY}, sort_keys=True).encode()
            digests[str(path.relative_to(project))] = hashlib.sha256(data).hexdigest()
    return digests


def leftovers(project: Path) -> list[str]:
    """Staging and swapped-out names (emotion_pipeline.io) anywhere in the outputs."""
    return sorted(str(path.relative_to(project)) for folder in OUTPUT_FOLDERS for path in (project / folder).rglob(".*")
                  if path.name.endswith((".tmp", ".old")))


def check_recovered(project: Path, reference: dict[str, str], env: dict[str, str]) -> list[str]:
    """What differs from an uninterrupted run: files, leftovers, `dvc status` (empty when all is well)."""
    problems = []
    got = output_digests(project)
    for path in sorted(set(reference) | set(got)):
        if reference.get(path) != got.get(path):
            problems.append(f"{path}: {'missing' if path not in got else 'extra' if path not in reference else 'differs'}")
    problems += [f"left over: {name}" for name in leftovers(project)]
    status = subprocess.run(dvc_command("status"), cwd=project, env=env, capture_output=True, text=True)
    if status.returncode != 0 or "up to date" not in status.stdout:
        problems.append(f"dvc status: {status.stdout.strip()[:500]}")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emotion_pipeline.dev.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path, help="a project copy whose params point at its model and data, no outputs yet")
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONHASHSEED": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    reference_copy = args.project.with_name(args.project.name + "-reference")
    subprocess.run(["cp", "-a", str(args.project), str(reference_copy)], check=True)
    durations = timed_repro(reference_copy, env)
    print("uninterrupted:", ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in durations.items()))
    began = time.monotonic()
    kills = kill_and_recover(args.project, env, durations, args.kills, args.seed)
    problems = check_recovered(args.project, output_digests(reference_copy), env)
    print(json.dumps({"kills": [asdict(kill) for kill in kills], "problems": problems,
                      "seconds": round(time.monotonic() - began)}, indent=1))
    sys.exit(1 if problems or any(kill.survivors for kill in kills) else 0)


if __name__ == "__main__":
    main()
