"""The environment is an input: the installed packages are the locked ones, every stage records what computed it,
the runtime lock re-runs the stages it decides (and the dev lock none), and compute.portable pins the kernel dispatch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from conftest import copy_finished, run, set_params, stages_run, subprocess_env

from emotion_pipeline.compare import environment_differences
from emotion_pipeline.environment import (
    PORTABLE_DISPATCH,
    RESULT_PACKAGES,
    check_kernel_dispatch,
    environment_record,
    portable_requested,
)
from emotion_pipeline.errors import UserError
from emotion_pipeline.evaluation.reports import environment_lines

REPO = Path(__file__).resolve().parents[1]
LOCKS = (REPO / "requirements/runtime.txt", REPO / "requirements/dev.txt")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def locked_versions(lock: Path) -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, version in PIN.findall(lock.read_text())}


def test_the_installed_packages_are_the_locked_ones():
    """CI installs from requirements/dev.txt: a package at another version (or missing) means the lock was not
    what got installed, or the lock is stale against pyproject.toml. The one allowed difference: a CUDA build of
    torch in place of the locked CPU build (same version, another local label), as the README's GPU setup does."""
    wrong = []
    for name, locked in locked_versions(LOCKS[1]).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: locked {locked}, not installed")
            continue
        if name == "torch" and "+cu" in installed and installed.split("+")[0] == locked.split("+")[0]:
            continue
        if installed != locked:
            wrong.append(f"{name}: locked {locked}, installed {installed}")
    assert not wrong, ("the environment differs from requirements/dev.txt:\n  " + "\n  ".join(wrong) +
                       "\nInstall from the lock (README, 'Setup'), or update the lock: bash requirements/update")


def test_the_runtime_and_dev_locks_agree_and_cover_every_result_package():
    runtime, dev = (locked_versions(lock) for lock in LOCKS)
    assert runtime, "no pins found in requirements/runtime.txt"
    assert {name: dev.get(name) for name in runtime} == runtime, "dev.txt pins a runtime package at another version"
    assert set(RESULT_PACKAGES) - {"dvclive"} <= set(runtime) | {"dvclive"}
    assert {"pytest", "ruff"} <= set(dev) - set(runtime), "dev-only tools belong to dev.txt alone"
    assert runtime["torch"].endswith("+cpu"), "the lock is made for the CPU build of torch"
    # Hashes for every pin, so pip and uv check what they download.
    for lock in LOCKS:
        text = lock.read_text()
        assert text.count("--hash=sha256:") >= len(PIN.findall(text)), f"{lock.name}: a pin without a hash"


def test_the_environment_block_names_what_decides_a_result():
    import torch

    record = environment_record(torch.device("cpu"), torch.float32)
    assert record["torch_build"] == ("cpu" if torch.version.cuda is None else f"cuda {torch.version.cuda}")
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == torch.get_num_threads()
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["versions"]["transformers"] == metadata.version("transformers")
    assert record["runtime_lock_sha256"] is None or len(record["runtime_lock_sha256"]) == 64
    assert environment_record(torch.device("cpu"), torch.float32) == record, "the block must repeat byte for byte"
    lines = environment_lines(record)
    assert f"peft: {metadata.version('peft')}" in lines and f"cpu: {record['cpu']}" in lines


def test_differences_list_only_the_lines_that_differ():
    a = {"cpu": "AMD EPYC", "threads": 2, "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0"}}
    b = {"cpu": "AMD EPYC", "threads": 1, "versions": {"torch": "2.13.0+cpu", "transformers": "5.25.0", "onnx": "1.2"}}
    assert environment_differences(a, b) == [("threads", "2", "1"), ("transformers", "5.24.0", "5.25.0"),
                                             ("onnx", "-", "1.2")]
    assert environment_differences(a, a) == []


def test_portable_mode_is_read_before_torch_and_checked_by_the_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portable_requested() is False  # no params.yaml: the stage's own load_params reports that
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"compute": {"portable": True}}))
    assert portable_requested() is True
    (tmp_path / "params.yaml").write_text("compute: [unreadable")
    assert portable_requested() is False
    for name in PORTABLE_DISPATCH:
        monkeypatch.delenv(name, raising=False)
    check_kernel_dispatch(False, "train")
    with pytest.raises(UserError, match="compute.portable is true, but the train stage was started without"):
        check_kernel_dispatch(True, "train")


def test_portable_pins_cap_torch_kernel_dispatch_at_avx2():
    """Through `python -m stages`' own pinning function, in a fresh interpreter (the caps act when torch loads)."""
    code = ("from emotion_pipeline.environment import pin_kernel_dispatch, environment_record\n"
            "pin_kernel_dispatch(True)\nimport torch, json\nprint(json.dumps(environment_record()))")
    record = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       env=subprocess_env(), cwd=REPO).stdout)
    assert record["cpu_capability"] == "AVX2", record
    assert record["kernel_dispatch"] == ", ".join(f"{k}={v}" for k, v in PORTABLE_DISPATCH.items())


@pytest.mark.slow
def test_outputs_and_model_card_carry_the_environment(finished_project: Path):
    for output in ("metrics/test_details.json", "metrics/baseline_details.json", "metrics/data_report.json",
                   "metrics/export.json", "metrics/train_run.json", "models/adapter/environment.json"):
        data = json.loads((finished_project / output).read_text())
        record = data if output.endswith("environment.json") else data["environment"]
        assert record["versions"]["transformers"] == metadata.version("transformers"), output
        assert record["runtime_lock_sha256"], output
    trained = json.loads((finished_project / "metrics/train_run.json").read_text())["environment"]
    assert trained["device"] == "cpu" and trained["dtype"] == "float32" and trained["kernel_dispatch"] == "default"
    card = (finished_project / "models/export/README.md").read_text()
    assert "## Trained in" in card and "## Exported in" in card
    assert f"torch: {metadata.version('torch')}" in card and f"cpu_capability: {trained['cpu_capability']}" in card


@pytest.mark.slow
def test_dvc_status_names_the_stages_a_runtime_lock_change_decides_and_none_for_a_dev_lock_change(
        finished_project: Path, tmp_path: Path):
    project = copy_finished(finished_project, tmp_path / "project")
    assert "up to date" in run(["dvc", "status"], project).stdout
    dev = project / "requirements/dev.txt"
    dev.write_text(dev.read_text().replace("pytest==", "pytest==0.0.0.dev0 # was ", 1))  # a dev-only bump
    assert "up to date" in run(["dvc", "status"], project).stdout
    runtime = project / "requirements/runtime.txt"
    runtime.write_text(runtime.read_text() + "# transformers upgraded\n")
    status = run(["dvc", "status", "--json"], project).stdout
    changed = set(json.loads(status))
    stages = set(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    assert changed == stages, f"dvc status after a runtime-lock change: {status}"


@pytest.mark.slow
def test_portable_mode_reruns_the_torch_stages_and_records_the_pins(finished_project: Path, tmp_path: Path):
    project = copy_finished(finished_project, tmp_path / "project")
    set_params(project, {"compute": {"portable": True}, "quantize": {"enabled": False}})
    result = run(["dvc", "repro"], project)
    assert stages_run(result.stdout) == {"train", "evaluate", "export", "quantize"}
    for output in ("metrics/train_run.json", "metrics/test_details.json", "metrics/export.json"):
        record = json.loads((project / output).read_text())["environment"]
        assert record["cpu_capability"] == "AVX2" and record["kernel_dispatch"].startswith("ATEN_CPU_CAPABILITY=avx2"), output
