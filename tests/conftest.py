"""Shared fixtures: the local copy of dair-ai/emotion, a tiny Qwen3, and throw-away project copies.

End-to-end tests copy the project into a temporary git repository and run the real stages and
the real `dvc`, so nothing here replaces a library with a mock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# In-process tests load models and datasets too: never wait on the hub (read when huggingface_hub is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# These machines set PYTHONDONTWRITEBYTECODE=1. The stage, dvc and CLI processes the tests start run the project's
# own modules from a copy of it, so each of them would compile those again: let them keep their bytecode, as
# Python does by default (git and DVC ignore __pycache__; installed packages were compiled at install).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# Under pytest-xdist the workers share the cores: each worker's torch (in-process, and in every dvc stage,
# torchrun and Ray process it starts, which inherit this) computes on its share. Else each process runs one
# OpenMP thread per core, and their spin-waits between the tiny model's small ops take the CPU the other
# worker's tests need. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

REPO = Path(__file__).resolve().parents[1]
LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]  # data.labels' default order
SHARED_EMOTION = REPO.parent / "shared" / "data" / "emotion"
SPLIT_FILES = {"train": "train.txt", "validation": "validation.txt", "test": "test.txt"}

# The test files that take minutes, longest first (measured on CI's 2 cores): pytest-xdist hands whole files to
# its workers in collection order (--dist loadfile --no-loadscope-reorder), so starting with the long ones keeps
# the workers finishing together instead of one of them running a 6-minute file alone at the end. The first two
# start at once: test_pipeline_e2e builds the shared finished project, test_team_workflow does not need it.
LONGEST_FIRST = ["test_pipeline_e2e", "test_team_workflow", "test_tune", "test_crash", "test_reliability",
                 "test_distributed", "test_compare", "test_rendezvous", "test_int8", "test_levers", "test_learning",
                 "test_audit", "test_batch_ray", "test_serve", "test_demo"]


def pytest_collection_modifyitems(config, items):
    """Files in LONGEST_FIRST order, then the rest as collected; the tests inside a file keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # a stable sort: file order is kept


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (each worker's tests start dvc, torch and Ray processes of their
    own, so more workers mostly add memory), and 2 on a 1-core machine (waiting on subprocesses overlaps)."""
    return min(max(os.cpu_count() or 1, 2), 4)


# Params overrides that must be refused, each with the key its message must name. Used by the
# config unit tests and by the stage-level bad-input tests.
BAD_PARAMS = [
    pytest.param({"train": {"lrr": 1e-4}}, "train.lrr", id="unknown-key"),
    pytest.param({"train": {"batch_size": "eight"}}, "train.batch_size", id="wrong-type"),
    pytest.param({"train": {"lr": 0}}, "train.lr", id="lr-0"),
    pytest.param({"train": {"lr": -1e-4}}, "train.lr", id="lr-negative"),
    pytest.param({"train": {"batch_size": 0}}, "train.batch_size", id="batch-0"),
    pytest.param({"train": {"epochs": 0}}, "train.epochs", id="epochs-0"),
    pytest.param({"lora": {"r": 0}}, "lora.r", id="r-0"),
    pytest.param({"data": {"labels": []}}, "data.labels", id="no-labels"),
    pytest.param({"data": {"labels": ["joy", "fear", "joy"]}}, "data.labels", id="duplicate-labels"),
    pytest.param({"model": {"max_length": 0}}, "model.max_length", id="max-length-0"),
    pytest.param({"compute": {"device": "gpu"}}, "compute.device", id="device-gpu"),
    pytest.param({"compute": {"nproc_per_node": 0}}, "compute.nproc_per_node", id="nproc-0"),
    pytest.param({"compute": {"rdzv_endpoint": "head-node"}}, "compute.rdzv_endpoint", id="endpoint-no-port"),
    pytest.param({"quantize": {"max_f1_drop": -0.01}}, "quantize.max_f1_drop", id="negative-f1-drop"),
]


def subprocess_env() -> dict[str, str]:
    """Environment for stage and dvc subprocesses: offline hub, this interpreter's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
               DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def emotion_dir() -> Path:
    """The local exact copy of dair-ai/emotion. Missing: a failure under CI, a skip elsewhere."""
    if not all((SHARED_EMOTION / name).is_file() for name in SPLIT_FILES.values()):
        message = f"the emotion data is not at {SHARED_EMOTION} (see the README, 'Data')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_EMOTION


def write_subset(source: Path, dest: Path, rows: int) -> Path:
    """The first ``rows`` lines of each split file of ``source``, written to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FILES.values():
        with (source / name).open(encoding="utf-8") as handle:
            lines = [line for _, line in zip(range(rows), handle)]
        (dest / name).write_text("".join(lines), encoding="utf-8")
    return dest


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per test session, even when pytest-xdist runs it in several worker processes:
    the first worker builds under a file lock in the session's shared temp folder, the others wait and use
    it. So every worker sees the same paths (params that name them give the same DVC run-cache keys)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def small_data(emotion_dir: Path, tmp_path_factory) -> Path:
    """300 rows per split of the real data: every class appears in each split."""
    return built_once(tmp_path_factory, "emotion-300", lambda folder: write_subset(emotion_dir, folder, 300))


@pytest.fixture(scope="session")
def tiny_model(emotion_dir: Path, tmp_path_factory) -> Path:
    """A 2-layer random Qwen3, saved as a normal model folder, with the Qwen3 tokenizer retrained on the
    training texts to 4,096 tokens: the real 151,669 would be the whole tiny model and ~1 s of loading in
    every stage process (a tiny `dvc repro` here took 73 s with them, 56 s without)."""
    from emotion_pipeline.dev.tiny import build_tiny_qwen3, train_texts

    def build(folder: Path) -> None:
        build_tiny_qwen3(folder / "model", vocab_size=4096, corpus=train_texts(emotion_dir))

    return built_once(tmp_path_factory, "tiny-qwen3", build) / "model"


def save_classifier(base: Path | str, out: Path, labels: list[str] = LABELS, head_scale: float = 1.0,
                    seed: int = 0) -> Path:
    """A classifier on ``base`` with a fresh, seeded head for ``labels``, saved as the export stage saves one.

    head_scale > 1 makes the head decisive: a fresh head's logits are ~0 (uniform probabilities),
    scaled up it makes clear choices to compare between two ways of predicting.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)  # the new head
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model.config.pad_token_id = tokenizer.pad_token_id
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(labels)][-1]
    head.weight.data *= head_scale
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model: Path, tmp_path_factory) -> Path:
    """save_classifier(tiny_model) once per session: a six-class folder like models/export. Read it, never change it."""
    return built_once(tmp_path_factory, "tiny-classifier", lambda folder: save_classifier(tiny_model, folder / "export")) \
        / "export"


def tiny_params(data_dir: Path, model_dir: Path) -> dict:
    """Overrides that make the real pipeline run in seconds on the tiny model and data."""
    return {
        "data": {"source": str(data_dir)},
        "model": {"name": str(model_dir), "max_length": 64},
        "train": {"epochs": 2, "warmup_steps": 5, "batch_size": 8, "logging_steps": 10, "eval_batch_size": 64},
        # The 300 rows are a slice of dair-ai/emotion: the card may name it (and so carry a model-index).
        "export": {"check_samples": 32, "dataset_id": "dair-ai/emotion"},
    }


def set_params(project: Path, overrides: dict) -> None:
    """Deep-merge ``overrides`` into the project's params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())

    def merge(target: dict, changes: dict) -> None:
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                merge(target[key], value)
            else:
                target[key] = value

    merge(params, overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def workdir(path: Path, overrides: dict) -> Path:
    """A folder with the project's params.yaml and ``overrides``: all an in-process stage needs."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    set_params(path, overrides)
    return path


def copy_project(dest: Path, overrides: dict | None = None) -> Path:
    """Copy the project's tracked and unignored files to ``dest``, make it a git repo with one commit."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if overrides:
        set_params(dest, overrides)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "project copy"], cwd=dest, check=True)
    return dest


@pytest.fixture
def project(tmp_path: Path, small_data: Path, tiny_model: Path) -> Path:
    """A fresh project copy configured for the tiny model and 300-row data."""
    return copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))


def hashseed_env(seed: int) -> dict[str, str]:
    """The subprocess environment with a fixed PYTHONHASHSEED (two runs under different ones must agree)."""
    return {**subprocess_env(), "PYTHONHASHSEED": str(seed)}


@dataclass(frozen=True)
class FinishedRun:
    """A project copy after one `dvc repro` from scratch, and what that repro printed."""

    path: Path
    repro: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, small_data: Path, tiny_model: Path) -> FinishedRun:
    """The tiny project (tiny_params, every stage) after one `dvc repro` from scratch under PYTHONHASHSEED=1.

    One run for the whole session: the tests that only read its outputs take it as it is; a test that
    changes a project works on copy_finished(), a private copy. Nothing may write into this one. Under
    pytest-xdist each worker reads its own copy of the one run (two DVC commands at once in one project
    would wait on each other's repo lock).
    """
    def build(folder: Path) -> None:
        project = copy_project(folder / "project", tiny_params(small_data, tiny_model))
        result = run(["dvc", "repro"], project, env=hashseed_env(1))
        (folder / "repro.json").write_text(json.dumps({"args": result.args, "returncode": result.returncode,
                                                       "stdout": result.stdout, "stderr": result.stderr}))

    built = built_once(tmp_path_factory, "finished", build)
    repro = subprocess.CompletedProcess(**json.loads((built / "repro.json").read_text()))
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return FinishedRun(built / "project", repro)
    return FinishedRun(copy_finished(built / "project", tmp_path_factory.mktemp("finished") / "project"), repro)


@pytest.fixture(scope="session")
def finished_project(finished_run: FinishedRun) -> Path:
    """The shared finished tiny project (see finished_run): read it, never change it."""
    return finished_run.path


def copy_finished(source: Path, dest: Path) -> Path:
    """A private copy of a finished project, for a test that changes it: workspace, outputs, git history and DVC cache."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def run(args: list[str], cwd: Path, check: bool = True, timeout: int = 900,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command (python modules via this interpreter) and return its output; on failure show it."""
    if args[0] in ("python", "dvc"):
        args = [sys.executable, *(["-m", "dvc"] if args[0] == "dvc" else []), *args[1:]]
    result = subprocess.run(args, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                             f"\n--- stderr\n{result.stderr[-6000:]}")
    return result


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def run_stage(project: Path, stage: str, check: bool = False) -> subprocess.CompletedProcess:
    return run(["python", "-m", "stages", stage], cwd=project, check=check)


def start_queue_worker(project: Path) -> None:
    """`dvc queue start`. The worker outlives the command: its output must not go to a pipe we wait on."""
    subprocess.run([sys.executable, "-m", "dvc", "queue", "start"], cwd=project, env=subprocess_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def finished_experiments(project: Path) -> int:
    """How many experiments of ``project`` DVC has finished: it keeps each as a git ref, refs/exps/<baseline>/<name>."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=project, check=True,
                          capture_output=True, text=True).stdout.split()
    return sum(1 for ref in refs if re.fullmatch(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+", ref))


def wait_for_queue(project: Path, experiments: int, timeout: float = 1800) -> str:
    """Until no experiment of ``project`` is queued or running, ``experiments`` being how many it has when they have
    all succeeded; returns the last `dvc queue status`.

    That command costs about a second of CPU, which the running experiments need on this 2-core machine, so it is
    asked every 20 s, and every 2 s once the git refs (a look each second that costs nothing) show every experiment
    finished; a failure shows there. A worker that stopped with work left is started again: on a loaded machine
    DVC's worker has been seen to read a half-written message of its file-based broker (kombu), log the JSON error
    and exit after its task, leaving the next one queued.
    """
    now = time.monotonic()
    deadline, worker_started, next_status = now + timeout, now, now + 20
    status, refs_done = "(not asked yet)", False
    while True:
        if not refs_done and finished_experiments(project) >= experiments:
            refs_done, next_status = True, time.monotonic()
        if time.monotonic() >= next_status:
            status = run(["dvc", "queue", "status"], project).stdout
            if not any(word in status for word in ("Queued", "Running")):
                return status
            if "Running" not in status and "0 active" in status and time.monotonic() - worker_started > 60:
                start_queue_worker(project)
                worker_started = time.monotonic()
            next_status = time.monotonic() + (2 if refs_done else 20)
        assert time.monotonic() < deadline, f"the queue did not finish:\n{status}"
        time.sleep(1)


def importing_torch(pid: int) -> bool:
    """The stage or command process is importing torch under our handlers (run_stage, import_for_command): they
    are in place (it catches SIGTERM, which Python alone does not) and torch's native library is loaded, while
    the imports (torch, then transformers and peft) go on for seconds after that. Seen in /proc, not guessed
    from a clock: a fixed delay lands before the handlers on a busy machine and after the imports on a fast one."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        return bool(caught & (1 << (signal.SIGTERM - 1))) and "/libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except (OSError, StopIteration):  # gone (the caller's poll() says so) or not yet readable
        return False


def interrupt_when(args: list[str], ready, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Start a command, send it SIGINT (a terminal's Ctrl-C) once ``ready(pid)`` holds, return the finished process."""
    process = subprocess.Popen(args, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not ready(process.pid):
        assert process.poll() is None, f"{args[-1]} finished before it could be interrupted"
        assert time.monotonic() < deadline, f"the moment to interrupt {args[-1]} never came"
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
