"""The launcher of a training run on several processes, GPUs or machines: torchrun, run by us.

When params ask for more than one process, `python -m stages train` replaces itself (exec: the same process, the
same parent) with `python -m emotion_pipeline.training.launch <compute section> -m stages train`. This module
builds torchrun's arguments from that section and runs torchrun in that process, which starts one copy of the
train stage per process; the HF Trainer (through accelerate) then wraps the model in DistributedDataParallel, gives
each process its share of every global batch and averages gradients (NCCL on GPUs; gloo on CPUs).

A program of its own, like torchrun itself, and not imported by the stage: it decides how the processes start and
meet (emotion_pipeline.training.rendezvous) and what is said when they do not, never what they compute. So, like
torchrun's code, its code is not in the train stage's dvc.yaml deps, and editing a message here re-runs no training.
How many processes, and so the global batch, is the stage's params (compute.*), which are deps.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from emotion_pipeline.config import ComputeConfig
from emotion_pipeline.errors import UserError, run_stage, stage_interrupted
from emotion_pipeline.training.rendezvous import Rendezvous, check_torch_internals, watched_c10d_backend

log = logging.getLogger(__name__)

RDZV_ID = "emotion-train"
REPORT_EVERY_S = 30  # while the nodes gather, how often the wait is reported
PARENT_POLL_S = 0.5
# Shells that may stand between dvc and this process: DVC runs a stage's cmd as `$SHELL -c cmd`
# (`/bin/sh -c` where SHELL is unset), and dash, unlike bash, does not exec its last command.
WRAPPER_SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})


def run_torchrun(args: list[str]) -> None:
    """Run torchrun with ``args`` in this process (it is torchrun's own entry point, `torch.distributed.run`).

    In this process rather than exec'd, so that its ends read like every stage's: Ctrl-C or
    SIGTERM (which torchrun passes on to its workers) ends it as it ends a stage, one line and exit
    128 + signal, not torchrun's traceback; a failed worker (its own error is printed above) or a
    rendezvous that did not gather is a UserError paragraph, exit 2. When the process that started
    this one ends (dvc killed, a closed terminal, a scheduler's kill), this one stops its workers
    and ends too, instead of waiting or training on as an orphan. Several nodes: the endpoint is
    checked first, and the wait for the other nodes is reported every REPORT_EVERY_S seconds.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousClosedError,
        RendezvousConnectionError,
        RendezvousTimeoutError,
    )
    from torch.distributed.run import parse_args, run

    parsed = parse_args(args)
    meeting = None
    if not parsed.standalone and parsed.rdzv_backend == "c10d":
        check_torch_internals()
        meeting = Rendezvous.from_torchrun(parsed)
        meeting.check_endpoint()
        parsed.rdzv_backend = watched_c10d_backend(meeting)
    watch = _Watch(meeting)
    watch.start()
    interrupted = None
    try:
        run(parsed)
    except SignalException as exc:  # torchrun caught it first, and stopped its workers
        interrupted = int(exc.sigval)
    except ChildFailedError as exc:
        failed = sorted(exc.failures.items())
        ranks = ", ".join(f"rank {rank} exit status {failure.exitcode}" for rank, failure in failed)
        raise UserError(f"{len(failed)} training process(es) failed ({ranks}); their messages are above. "
                        "`dvc repro` (once the cause is dealt with) resumes training from the last complete "
                        "checkpoint, on the same number of processes.") from None
    except (RendezvousTimeoutError, RendezvousClosedError, RendezvousConnectionError) as exc:
        if meeting is None:
            raise
        if isinstance(exc, RendezvousTimeoutError):
            raise UserError(meeting.timed_out()) from None
        if isinstance(exc, RendezvousClosedError):
            raise UserError(meeting.closed()) from None
        raise UserError(meeting.unreachable(exc)) from None
    finally:
        watch.stop()
    if interrupted is not None:
        stage_interrupted("train", interrupted)


class _Watch(threading.Thread):
    """Watches, in the background, the parent of this process and (several nodes) the rendezvous.

    The parent: when it ends, this process is an orphan (`timeout dvc repro` ends dvc, not its
    children; so does a scheduler killing one pid); SIGTERM to this process then stops the workers
    and ends it as any SIGTERM does. The rendezvous: its count of joined nodes, reported once and
    then every REPORT_EVERY_S s until all have joined; and a watchdog for a node whose connection
    to the head never completes (torch's client then waits on a foreign listener without end):
    past the timeout, one paragraph and exit 2 (no worker has started yet).
    """

    def __init__(self, meeting: Rendezvous | None):
        super().__init__(name="emotion-launch-watch", daemon=True)
        self.meeting = meeting
        self.parent = os.getppid()
        self.starters = _starters()
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()

    def run(self) -> None:
        meeting = self.meeting
        gathering = meeting is not None
        next_report = time.monotonic() + 2  # torch needs a moment to join; then the first count
        last: int | None = None
        reported = False
        while not self._done.wait(PARENT_POLL_S):
            ended = self.parent if os.getppid() != self.parent else _first_ended(self.starters)
            if ended is not None:
                log.warning("the process that started this stage (pid %d) has ended: stopping training", ended)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if not gathering:
                continue
            if meeting.complete():
                log.info("all %d nodes joined the rendezvous at %s: training starts", meeting.nnodes, meeting.endpoint)
                gathering = False
                continue
            now = time.monotonic()
            if meeting.handler is None:  # torch is still connecting to the head's store
                if now > meeting.started + meeting.timeout_s + 15:  # torch's own timeout passed too: it hangs
                    print(f"error: {meeting.unreachable()}", file=sys.stderr, flush=True)
                    sys.stdout.flush()
                    os._exit(2)
                count = None
            elif (joined := meeting.joined()) is not None:
                count = len(joined)
            else:
                continue  # a torch whose state we cannot read: its own messages must do
            if now > meeting.started + meeting.timeout_s:
                continue  # torch gives up now: its error says the rest
            if now >= next_report or (reported and count != last):  # once, every REPORT_EVERY_S, and at each join
                log.info("%s", meeting.waiting())
                next_report = now + REPORT_EVERY_S
                reported = True
            last = count


def _starters() -> list:
    """This process's parent and, through any `sh -c` wrappers, the program that started the stage (dvc).

    The parent alone is not enough: under `sh -c` (dash keeps running while its command runs) the
    parent is the shell, which outlives a killed dvc and waits for this process forever.
    """
    import psutil  # installed with accelerate, which the Trainer needs

    starters = []
    try:
        process = psutil.Process(os.getppid())
        while process is not None and process.pid > 1:
            starters.append(process)
            command = process.cmdline()
            if process.name() not in WRAPPER_SHELLS or "-c" not in command[1:]:
                break  # not a wrapper shell: the starter itself (dvc, a terminal's shell, a scheduler)
            process = process.parent()
    except psutil.Error:
        pass  # an ancestor this user cannot see, or one that ended meanwhile: watch those seen so far
    return starters


def _first_ended(processes: list) -> int | None:
    """The pid of the first of ``processes`` that has ended, else None.

    Ended: gone, its pid reused (psutil compares start times) or a zombie (dead, not yet reaped
    by its own parent, as dvc is between a SIGTERM and its caller's wait).
    """
    import psutil

    for process in processes:
        try:
            if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                return process.pid
        except psutil.Error:
            return process.pid
    return None


def main() -> None:
    """`python -m emotion_pipeline.training.launch <compute section as JSON> -m <module> [args]`, as the stage execs it."""
    _, compute, _, module, *module_args = sys.argv
    cfg = ComputeConfig.model_validate_json(compute)
    launch = torchrun_args(cfg, module, *module_args)
    log.info("launching %d processes: torchrun %s", cfg.nproc_per_node * cfg.nnodes, " ".join(launch))
    run_torchrun(launch)


def torchrun_args(cfg: ComputeConfig, module: str, *module_args: str) -> list[str] | None:
    """torchrun's arguments to run ``python -m module`` on cfg's processes; None for a single process.

    One machine uses --standalone: torchrun picks a free port itself, so queued experiments
    running side by side never collide. Several machines meet at cfg.rdzv_endpoint (c10d
    rendezvous, which needs no node ranks: the same command is run on every node) and wait there
    cfg.rdzv_timeout_s for each other: join_timeout for all nodes to join, read_timeout for the
    head's store to answer at all (torch's default, 60 s, would give up on a head that is slower
    to start than that).
    """
    if cfg.nproc_per_node * cfg.nnodes == 1:
        return None
    args = ["--nproc-per-node", str(cfg.nproc_per_node)]
    if cfg.nnodes == 1:
        args += ["--standalone"]
    else:
        timeout = cfg.rdzv_timeout_s
        args += ["--nnodes", str(cfg.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", cfg.rdzv_endpoint,
                 "--rdzv-id", RDZV_ID, "--rdzv-conf", f"join_timeout={timeout},read_timeout={timeout}"]
    return [*args, "-m", module, *module_args]


if __name__ == "__main__":
    # Ctrl-C, SIGTERM and bad input end it as they end the train stage it stands for: one line, 128 + signal or 2.
    run_stage(__spec__.name, stage="train")
