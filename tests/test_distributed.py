"""Training on several processes and machines: the real `dvc repro` hands the train stage to the real
`torchrun`, and the HF Trainer syncs gradients over gloo (this machine has no GPU). The tiny Qwen3
and 300 rows of the real data, as in the other end-to-end tests.

The runs compared here take the same examples in each global batch (8): one process of 8, or two
of 4. Plain random batches and no LoRA dropout make that exact; the length-grouped sampler groups
each process's batches, so with it on, two processes see the data in another order.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import copy_project, run, set_params, stages_run, subprocess_env, tiny_params
from safetensors.numpy import load_file

from emotion_pipeline.training.checkpoints import COMPLETE_FILE

SAME_BATCHES = {"train": {"group_by_length": False, "epochs": 3}, "lora": {"dropout": 0.0}}
TWO_PROCESSES = {"compute": {"nproc_per_node": 2}, "train": {"batch_size": 4}}
TWO_NODES = {"compute": {"nnodes": 2}, "train": {"batch_size": 4}}
STEPS_PER_EPOCH = 38  # 300 rows, global batch 8
CHECKSUM = re.compile(r"rank (\d+)/(\d+): trainable weights after step (\d+): sha256 ([0-9a-f]{64})")
# One process of 8 vs two of 4 differ only in float summation order (the mean of two half-batch
# gradients vs one full-batch gradient), which Adam carries on: measured after 3 epochs, the same
# validation scores to 6 decimals, train loss 1.77726 vs 1.77707, max weight difference 1.2e-3
# (weights up to ~0.2).
SCORE_TOLERANCE = 0.005
LOSS_TOLERANCE = 0.002
WEIGHT_TOLERANCE = 0.01


def make_project(path: Path, small_data: Path, tiny_model: Path, *overrides: dict) -> Path:
    project = copy_project(path, tiny_params(small_data, tiny_model))
    for override in (SAME_BATCHES, *overrides):
        set_params(project, override)
    return project


def weights_by_step(output: str) -> dict[int, dict[int, str]]:
    """{step: {rank: checksum}} from the lines each rank logs at every epoch end."""
    found: dict[int, dict[int, str]] = {}
    for rank, _, step, checksum in CHECKSUM.findall(output):
        found.setdefault(int(step), {})[int(rank)] = checksum
    return found


def train_details(project: Path) -> dict:
    return json.loads((project / "metrics/train_details.json").read_text())


def adapter_weights(project: Path) -> dict[str, np.ndarray]:
    return load_file(project / "models/adapter/adapter_model.safetensors")


def free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range.

    Not port 0's pick: that comes from the ephemeral range, from which every outgoing connection
    and every port-0 listener on this machine (another CI job's torchrun --standalone, its
    workers' stores) also takes ports, so that the port could be taken between this pick and the
    run's bind, seconds later.
    """
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    for _ in range(100):
        port = random.randrange(20000, ephemeral)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in 20000-{ephemeral - 1}")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, small_data: Path, tiny_model: Path) -> tuple[Path, str]:
    project = make_project(tmp_path_factory.mktemp("two-processes"), small_data, tiny_model, TWO_PROCESSES)
    result = run(["dvc", "repro", "train"], project)
    return project, result.stdout + result.stderr


@pytest.mark.slow
def test_two_processes_train_in_sync_and_write_once(two_processes, tmp_path: Path, small_data, tiny_model):
    project, output = two_processes
    assert stages_run(output) == {"prepare", "train"}
    assert "launching 2 processes: torchrun --nproc-per-node 2 --standalone -m stages train" in output

    # Gradients were synced: after every epoch both ranks hold the same weights.
    checksums = weights_by_step(output)
    print("\n".join(f"step {step}: rank {rank} sha256 {value}" for step, ranks in checksums.items()
                    for rank, value in sorted(ranks.items())))
    assert sorted(checksums) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
    for step, ranks in checksums.items():
        assert sorted(ranks) == [0, 1] and ranks[0] == ranks[1], f"ranks differ after step {step}: {ranks}"
    assert checksums[STEPS_PER_EPOCH][0] != checksums[2 * STEPS_PER_EPOCH][0]  # and they did train

    # One writer: one validation row per epoch in the training log, one run record.
    rows = (project / "metrics/train_log/plots/metrics/eval/macro_f1.tsv").read_text().splitlines()
    assert len(rows) == 1 + 3, rows
    assert json.loads((project / "metrics/train_run.json").read_text())["processes"] == 2
    assert json.loads((project / "metrics/train_run.json").read_text())["global_batch_size"] == 8
    assert train_details(project)["steps"] == 3 * STEPS_PER_EPOCH

    # One process with the same global batch gets the same model, up to float summation order.
    single = make_project(tmp_path / "single", small_data, tiny_model)
    single_output = run(["dvc", "repro", "train"], single)
    assert "launching" not in single_output.stdout + single_output.stderr
    one, two = train_details(single), train_details(project)
    print(f"1 process: {one}\n2 processes: {two}")
    assert one["steps"] == two["steps"] and one["best_epoch"] == two["best_epoch"]
    for key in ("val_macro_f1", "val_accuracy"):
        assert abs(one[key] - two[key]) <= SCORE_TOLERANCE, key
    assert abs(one["train_loss"] - two["train_loss"]) <= LOSS_TOLERANCE  # the loss is not scaled by the process count
    a, b = adapter_weights(single), adapter_weights(project)
    assert max(float(np.abs(a[name] - b[name]).max()) for name in a) <= WEIGHT_TOLERANCE


@pytest.mark.slow
def test_two_nodes_of_one_process_match_two_processes(two_processes, tmp_path: Path, small_data, tiny_model):
    """Two "machines" on this one: the head runs `dvc repro`, the other node the stage itself; they
    meet at a c10d rendezvous on 127.0.0.1 and share the project folder (as nodes on a shared
    filesystem do).

    Byte for byte the same as two processes on one node, given the same CPU threads per process:
    torchrun gives each of 2 processes on one node 1 thread (OMP_NUM_THREADS=1), while a node of
    one process gets all the machine's cores from accelerate (here 2). The thread count decides
    how matrix products split their sums, so with 2 threads each the weights differ from the first
    epoch on (measured: 4432 of the adapter's 8384 floats, by up to 3e-8; the first differing byte
    at index 3592, as in issue 24), and two "nodes" of 2 threads on this 2-core machine
    oversubscribe it (3x slower here, and past the time limit under a second CI job). Here, as on
    any machine whose cores several nodes share, OMP_NUM_THREADS shares them out: 1 each.
    """
    project = make_project(tmp_path / "nodes", small_data, tiny_model, TWO_NODES)
    set_params(project, {"compute": {"rdzv_endpoint": f"127.0.0.1:{free_port()}"}})
    run(["dvc", "repro", "prepare"], project)
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    # To a file, not a pipe: nobody reads a pipe while the head runs, and a full pipe would stall the node.
    with (tmp_path / "worker.log").open("w") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "stages", "train"], cwd=project, env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT, text=True)
        try:
            head = run(["dvc", "repro", "train"], project, timeout=600, env=env)
            worker.wait(timeout=120)
        finally:
            worker.kill()
    worker_output = (tmp_path / "worker.log").read_text()
    assert worker.returncode == 0, worker_output[-4000:]
    output = head.stdout + head.stderr + worker_output
    assert "--nnodes 2 --rdzv-backend c10d" in output
    assert "all 2 nodes joined the rendezvous at 127.0.0.1:" in output
    checksums = weights_by_step(output)
    assert all(sorted(ranks) == [0, 1] and len(set(ranks.values())) == 1 for ranks in checksums.values()), checksums

    reference, _ = two_processes
    assert train_details(project) == train_details(reference)
    assert (project / "models/adapter/adapter_model.safetensors").read_bytes() == \
        (reference / "models/adapter/adapter_model.safetensors").read_bytes()


def processes_in(project: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cwd"]):
        if process.info["cwd"] and Path(process.info["cwd"]).is_relative_to(project):
            found.append(process)
    return found


@pytest.mark.slow
def test_killed_two_process_training_resumes_on_two_processes(two_processes, tmp_path: Path, small_data, tiny_model):
    project = make_project(tmp_path / "killed", small_data, tiny_model, TWO_PROCESSES)
    run(["dvc", "repro", "prepare"], project)

    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train"], cwd=project, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list((project / "models/checkpoints").glob(f"checkpoint-*/{COMPLETE_FILE}")):
        assert process.poll() is None, "training ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.005)
    # SIGKILL dvc, the stage (now torchrun) and everything in their process group. torchrun starts its
    # workers in sessions of their own: they must die with it rather than train on, orphaned.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while survivors := processes_in(project):
        assert time.monotonic() < deadline, f"processes still running after the kill: {survivors}"
        time.sleep(0.2)
    # (Checked: without the workers' parent-death signal, they train on after the kill and write the adapter.)
    assert not (project / "models/adapter").exists(), \
        "an adapter was written: training finished before the kill, or orphaned workers trained on after it"

    resumed = run(["dvc", "repro", "train"], project)
    output = resumed.stdout + resumed.stderr
    assert "resuming from models/checkpoints/checkpoint-" in output
    assert "launching 2 processes" in output
    run_info = json.loads((project / "metrics/train_run.json").read_text())
    assert run_info["resumed_from_step"] >= STEPS_PER_EPOCH and run_info["processes"] == 2
    reference, _ = two_processes
    assert train_details(project) == train_details(reference)
    assert (project / "models/adapter/adapter_model.safetensors").read_bytes() == \
        (reference / "models/adapter/adapter_model.safetensors").read_bytes()


def test_torchrun_command_follows_params():
    from emotion_pipeline.config import ComputeConfig
    from emotion_pipeline.training.launch import torchrun_args

    assert torchrun_args(ComputeConfig(), "stages", "train") is None  # the default: no torchrun, as before
    one_node = torchrun_args(ComputeConfig(nproc_per_node=4), "stages", "train")
    assert one_node == ["--nproc-per-node", "4", "--standalone", "-m", "stages", "train"]
    nodes = torchrun_args(ComputeConfig(nnodes=2, rdzv_endpoint="head:29400"), "stages", "train")
    assert nodes == ["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                     "head:29400", "--rdzv-id", "emotion-train", "--rdzv-conf", "join_timeout=600,read_timeout=600",
                     "-m", "stages", "train"]


@pytest.mark.parametrize("setting", ["gpu", "cuda:x", "CUDA", ""])
def test_a_bad_device_names_the_key_and_the_valid_values(setting):
    from emotion_pipeline.device import choose_device
    from emotion_pipeline.errors import UserError

    with pytest.raises(UserError, match=r"compute.device = .* use auto \(the GPU when present\), cpu, cuda"):
        choose_device(setting)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_one_clear_error():
    from emotion_pipeline.device import choose_device
    from emotion_pipeline.errors import UserError

    assert choose_device("auto").type == "cpu"
    with pytest.raises(UserError, match="torch sees no GPU here"):
        choose_device("cuda")


def test_cluster_examples_are_well_formed():
    """Not run here (no Slurm, no cloud): their syntax is, and that each sweep job pushes its experiment."""
    import yaml

    folder = Path(__file__).resolve().parents[1] / "profiles" / "cluster"
    for script in folder.glob("*.sbatch"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert "dvc exp push origin" in (folder / "slurm_sweep.sbatch").read_text()
    task = yaml.safe_load((folder / "skypilot_sweep_point.yaml").read_text())
    assert {"resources", "envs", "setup", "run"} <= set(task) and "dvc exp push origin" in task["run"]
