"""Multi-node runs that say what they wait for and fail fast: the real `dvc repro` and torchrun, two
"nodes" on 127.0.0.1 (or one that nobody joins), the tiny Qwen3 and 300 rows of the real data.

Every wait here is bounded in time; every port is a 127.0.0.1 port outside the kernel's ephemeral
range (free_port), so no other job's connections or torchrun --standalone can take it meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import copy_project, run, set_params, subprocess_env, tiny_params
from test_distributed import free_port, processes_in

from emotion_pipeline.training.checkpoints import COMPLETE_FILE

TWO_NODES = {"compute": {"nnodes": 2}, "train": {"batch_size": 4}}


class Streamed:
    """A command whose output lines are collected, each with the monotonic time it arrived."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None):
        self.process = subprocess.Popen(args, cwd=cwd, env=env or subprocess_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def when(self, text: str, timeout: float) -> float:
        """The time the first line containing ``text`` arrived; waits at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} within {timeout} s; output:\n{self.output[-4000:]}")

    def wait(self, timeout: float) -> tuple[int, float]:
        """(exit status, the time it ended); the whole process group is killed if it outlives ``timeout``."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s; output:\n{self.output[-4000:]}") from None
        ended = time.monotonic()
        self._reader.join(timeout=10)
        return code, ended

    def kill(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def dvc_repro(project: Path, *targets: str, shell: str | None = None) -> Streamed:
    """`dvc repro`; ``shell``: the $SHELL dvc runs each stage's cmd with (`$SHELL -c cmd`)."""
    env = subprocess_env()
    if shell is not None:
        env["SHELL"] = shell
    return Streamed([sys.executable, "-m", "dvc", "repro", *targets], project, env)


def no_process_left(project: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while survivors := processes_in(project):
        assert time.monotonic() < deadline, f"processes of the run still alive after {within} s: {survivors}"
        time.sleep(0.2)


@pytest.fixture
def nodes_project(tmp_path: Path, small_data: Path, tiny_model: Path) -> tuple[Path, int]:
    """A project of 2 nodes meeting at 127.0.0.1:<free port>, its data already prepared."""
    port = free_port()
    project = copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))
    set_params(project, TWO_NODES)
    set_params(project, {"compute": {"rdzv_endpoint": f"127.0.0.1:{port}"}})
    run(["dvc", "repro", "prepare"], project)
    return project, port


# -- the endpoint, checked before torchrun starts (in-process: seconds) ----------------------------------

def test_a_free_port_on_the_head_passes_the_check():
    from emotion_pipeline.training.rendezvous import Rendezvous

    meeting = Rendezvous(f"127.0.0.1:{free_port()}", 2, 10)
    meeting.check_endpoint()
    assert meeting.head  # 127.0.0.1 is this machine: it hosts the rendezvous


def test_a_port_held_by_another_program_on_the_head_is_one_paragraph():
    from emotion_pipeline.errors import UserError
    from emotion_pipeline.training.rendezvous import Rendezvous

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(UserError) as caught:
            Rendezvous(f"127.0.0.1:{port}", 2, 10).check_endpoint()
    message = str(caught.value)
    print(message)
    assert f"port {port}" in message and "compute.rdzv_endpoint" in message and "already in use" in message
    assert f"pid {os.getpid()}" in message  # the program that holds it, named


def test_a_host_that_does_not_resolve_is_one_paragraph():
    from emotion_pipeline.errors import UserError
    from emotion_pipeline.training.rendezvous import Rendezvous

    started = time.monotonic()
    with pytest.raises(UserError, match=r"compute.rdzv_endpoint = no-such-head.invalid:29400: the host .* does not "
                                        r"resolve"):
        Rendezvous("no-such-head.invalid:29400", 2, 10).check_endpoint()
    assert time.monotonic() - started < 15


def test_torchrun_waits_as_long_as_params_say():
    from emotion_pipeline.config import ComputeConfig
    from emotion_pipeline.training.launch import torchrun_args

    args = torchrun_args(ComputeConfig(nnodes=3, rdzv_timeout_s=45), "stages", "train")
    assert args[args.index("--rdzv-conf") + 1] == "join_timeout=45,read_timeout=45"
    assert ComputeConfig().rdzv_timeout_s == 600


# -- the real dvc repro --------------------------------------------------------------------------------

@pytest.mark.slow
def test_nobody_joins_reports_the_wait_then_fails_at_the_timeout(nodes_project):
    project, port = nodes_project
    timeout = 20
    set_params(project, {"compute": {"rdzv_timeout_s": timeout}})
    head = dvc_repro(project, "train")
    try:
        launched = head.when("launching 2 processes", timeout=300)
        head.when(f"waiting at the rendezvous 127.0.0.1:{port} (compute.rdzv_endpoint): 1 of 2 nodes joined",
                  timeout=30)
        code, ended = head.wait(timeout=timeout + 60)
    finally:
        head.kill()
    output = head.output
    print(output[-3000:])
    print(f"ended {ended - launched:.1f} s after the launch line")
    assert code != 0
    assert ended - launched < timeout + 15, "the run did not give up soon after compute.rdzv_timeout_s"
    error = next(line for line in output.splitlines() if line.startswith("error: "))
    assert (f"only 1 of the 2 nodes (compute.nnodes) joined the rendezvous at 127.0.0.1:{port} "
            f"(compute.rdzv_endpoint) within {timeout} s (compute.rdzv_timeout_s)") in error
    assert "(this node)" in error
    assert "Each other node must run `python -m stages train` in this same project folder" in error
    assert "Traceback" not in output
    no_process_left(project, within=10)


@pytest.mark.slow
def test_a_foreign_listener_on_the_port_fails_within_seconds(nodes_project):
    project, port = nodes_project
    accepted = []
    with socket.socket() as listener:  # accepts connections and never answers, like any non-rendezvous server
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listener.settimeout(0.5)

        def accept():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and len(accepted) < 20:
                try:
                    accepted.append(listener.accept()[0])
                except (TimeoutError, OSError):
                    if listener.fileno() == -1:
                        return

        threading.Thread(target=accept, daemon=True).start()
        head = dvc_repro(project, "train")
        try:
            launched = head.when("launching 2 processes", timeout=300)
            code, ended = head.wait(timeout=120)
        finally:
            head.kill()
            for connection in accepted:
                connection.close()
    output = head.output
    print(output[-3000:])
    print(f"ended {ended - launched:.1f} s after the launch line")
    assert code != 0 and ended - launched < 10
    error = next(line for line in output.splitlines() if line.startswith("error: "))
    assert f"port {port} on this machine (the head node) is already in use by another program (pid {os.getpid()}" in error
    assert "compute.rdzv_endpoint" in error
    assert not accepted, "torch connected to the foreign listener: the check came too late"


@pytest.mark.slow
@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_sigterm_to_dvc_while_waiting_ends_the_launcher(nodes_project, shell):
    """SIGTERM to dvc alone (as `timeout` or a scheduler sends it): the stage's launcher must not live on.

    Under both shells dvc may run the cmd with: bash execs the command, so the launcher's parent
    is dvc; dash (/bin/sh on Debian, what dvc uses where SHELL is unset) stays as the parent and
    outlives dvc.
    """
    if not Path(shell).exists():
        pytest.skip(f"{shell} is not on this machine")
    project, port = nodes_project
    head = dvc_repro(project, "train", shell=shell)
    try:
        head.when("1 of 2 nodes joined", timeout=300)
        launchers = [p for p in processes_in(project) if "stages" in " ".join(p.cmdline())]
        assert launchers, processes_in(project)
        head.process.send_signal(signal.SIGTERM)  # dvc only, not its process group
        head.wait(timeout=30)
        no_process_left(project, within=10)
    finally:
        head.kill()
    print(head.output[-2000:])
    with socket.socket() as sock:  # and nothing listens on the rendezvous port any more (its connections may linger)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


@pytest.mark.slow
def test_a_killed_worker_is_one_paragraph_and_the_next_repro_resumes(tmp_path, small_data, tiny_model):
    project = copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))
    set_params(project, {"compute": {"nproc_per_node": 2}, "train": {"batch_size": 4}})
    run(["dvc", "repro", "prepare"], project)
    first = dvc_repro(project, "train")
    try:
        deadline = time.monotonic() + 600
        while not list((project / "models/checkpoints").glob(f"checkpoint-*/{COMPLETE_FILE}")):
            assert first.process.poll() is None, first.output[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        rank1 = [p for p in processes_in(project) if _env(p).get("RANK") == "1" and "TORCHELASTIC_RUN_ID" in _env(p)]
        assert len(rank1) == 1, processes_in(project)
        rank1[0].send_signal(signal.SIGKILL)
        code, _ = first.wait(timeout=120)
    finally:
        first.kill()
    output = first.output
    print(output[-3000:])
    assert code != 0
    error = next(line for line in output.splitlines() if line.startswith("error: "))
    assert "training process(es) failed (" in error and "rank 1 exit status -9" in error
    assert "`dvc repro` (once the cause is dealt with) resumes training from the last complete checkpoint" in error
    assert "exited with 2" in output  # dvc's report of the stage's exit status: a UserError
    # Rank 0's own traceback (its peer vanished mid-allreduce) may be above: the paragraph comes last.
    assert output.rindex("error: ") > output.rfind("Traceback")
    no_process_left(project, within=30)

    resumed = run(["dvc", "repro", "train"], project)
    assert "resuming from models/checkpoints/checkpoint-" in resumed.stdout + resumed.stderr
    assert json.loads((project / "metrics/train_run.json").read_text())["resumed_from_step"] > 0


def _env(process: psutil.Process) -> dict[str, str]:
    try:
        return process.environ()
    except psutil.Error:
        return {}
