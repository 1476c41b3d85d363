"""Training on several processes, GPUs or machines: torchrun launches, the HF Trainer syncs.

Nothing here is a launcher or a gradient sync of our own. The train stage hands itself to
`torchrun` when params ask for more than one process; torchrun starts one copy of the stage per
process, and the Trainer (through accelerate) wraps the model in DistributedDataParallel, gives
each process its share of every global batch and averages gradients (NCCL on GPUs; gloo on CPUs,
which the Trainer uses only with use_cpu=True). What is ours: building the torchrun command from
params, one writer (global rank 0), one shared choice of checkpoint to resume, and a check that
the ranks really hold the same weights.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from emotion_pipeline.config import ComputeConfig
from emotion_pipeline.errors import StageInterrupted, UserError

log = logging.getLogger(__name__)


RDZV_ID = "emotion-train"
WATCHED_C10D = "c10d-emotion-watched"  # torch's c10d rendezvous, registered under a name of ours so we see its state
REPORT_EVERY_S = 30  # while the nodes gather, how often the wait is reported
RESOLVE_TIMEOUT_S = 10
PARENT_POLL_S = 0.5
# Shells that may stand between dvc and this process: DVC runs a stage's cmd as `$SHELL -c cmd`
# (`/bin/sh -c` where SHELL is unset), and dash, unlike bash, does not exec its last command.
WRAPPER_SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})


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


def run_torchrun(args: list[str]) -> None:
    """Run torchrun with ``args`` in this process (it is torchrun's own entry point, `torch.distributed.run`).

    In this process rather than exec'd, so that its ends read like every stage's: Ctrl-C or
    SIGTERM (which torchrun passes on to its workers) is StageInterrupted, one line and exit
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
        meeting = Rendezvous.from_torchrun(parsed)
        meeting.check_endpoint()
        parsed.rdzv_backend = _watched_c10d_backend(meeting)
    watch = _Watch(meeting)
    watch.start()
    try:
        run(parsed)
    except SignalException as exc:
        raise StageInterrupted(int(exc.sigval)) from None
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


def _watched_c10d_backend(meeting: Rendezvous) -> str:
    """The name of torch's c10d rendezvous backend, registered again so that ``meeting`` holds its handler.

    Built exactly as torch's own "c10d" entry builds it (torch.distributed.elastic.rendezvous.registry).
    """
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import create_backend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import RendezvousBackend, create_handler

    class Renamed(RendezvousBackend):
        """torch's c10d backend under our name (the registry checks that a handler's backend has the name asked for)."""

        def __init__(self, backend):
            self.backend = backend

        @property
        def name(self) -> str:
            return WATCHED_C10D

        def get_state(self):
            return self.backend.get_state()

        def set_state(self, state, token=None):
            return self.backend.set_state(state, token)

    def create(params):
        backend, store = create_backend(params)
        meeting.handler = create_handler(store, Renamed(backend), params)
        return meeting.handler

    _current_meeting[0] = create
    if WATCHED_C10D not in _registered:
        rendezvous_handler_registry.register(WATCHED_C10D, lambda params: _current_meeting[0](params))
        _registered.add(WATCHED_C10D)
    return WATCHED_C10D


_current_meeting: list = [None]
_registered: set[str] = set()


class Rendezvous:
    """Where and how long the nodes of one multi-node run meet, and what to say when they do not."""

    def __init__(self, endpoint: str, nnodes: int, timeout_s: int):
        self.endpoint = endpoint
        self.host, port = endpoint.rsplit(":", 1)
        self.port = int(port)
        self.nnodes = nnodes
        self.timeout_s = timeout_s
        self.head = False  # does this machine host the rendezvous (the endpoint is one of its addresses)?
        self.handler = None  # torch's rendezvous handler, once torch has made it
        self.last_joined: list = []
        self.started = time.monotonic()

    @classmethod
    def from_torchrun(cls, parsed) -> Rendezvous:
        from torch.distributed.elastic.rendezvous.utils import _parse_rendezvous_config

        conf = _parse_rendezvous_config(parsed.rdzv_conf)
        return cls(parsed.rdzv_endpoint, int(str(parsed.nnodes).split(":")[-1]), int(conf.get("join_timeout", 600)))

    # -- before torch starts ---------------------------------------------------------------------
    def check_endpoint(self) -> None:
        """UserError, within seconds, for an endpoint where no rendezvous can take place.

        A host that does not resolve, on any node. On the head node (the endpoint is this machine,
        by torch's own test for hosting the store), a port that another program listens on: torch
        would connect to it as if it were a rendezvous and wait, silent, for its timeout. A port
        held by the train stage of this same project folder is fine: that is another node of this
        run started first on this machine (its store hosts the rendezvous). On any other node the
        port is the head's business (its store listens there).
        """
        from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname

        error = _resolve(self.host)
        if error:
            raise UserError(f"compute.rdzv_endpoint = {self.endpoint}: the host {self.host!r} does not resolve to an "
                            f"address ({error}). Use the head node's hostname or IP address as every node can reach "
                            "it (under Slurm, the first of `scontrol show hostnames`).")
        self.head = _matches_machine_hostname(self.host)
        if not self.head or not _port_in_use(self.port):
            return
        owner = _listener(self.port)
        if owner is not None and _is_this_runs_stage(owner):
            log.info("port %d is held by another node of this run on this machine (pid %d): joining its rendezvous",
                     self.port, owner.pid)
            return
        raise UserError(f"compute.rdzv_endpoint = {self.endpoint}: port {self.port} on this machine (the head node) is "
                        f"already in use by {_describe(owner)}, so the nodes cannot meet there. Stop that program, or "
                        f"choose a free port (`dvc exp run -S compute.rdzv_endpoint={self.host}:<port>`, the same on "
                        "every node; queued experiments run side by side need one port each).")

    # -- while torch waits -----------------------------------------------------------------------
    def state(self):
        """torch's view of the rendezvous (participants, complete, closed), or None before it has one."""
        try:
            return self.handler._state_holder.state  # refreshed by torch's join loop about every second
        except AttributeError:
            return None

    def joined(self) -> list | None:
        """The nodes in the rendezvous (torch's node descriptors: addr, pid), or None before torch has a state.

        Remembered until the timeout: at it, torch takes this node out again before it gives up.
        """
        state = self.state()
        if state is None:
            return None
        if time.monotonic() < self.started + self.timeout_s:
            self.last_joined = sorted(state.participants)
        return self.last_joined

    def complete(self) -> bool:
        state = self.state()
        return bool(state is not None and state.complete and len(state.participants) >= self.nnodes)

    def waiting(self) -> str:
        left = max(0, round(self.started + self.timeout_s - time.monotonic()))
        joined = self.joined()
        if joined is None and not self.head:
            return (f"waiting for the head node's rendezvous at {self.endpoint} (compute.rdzv_endpoint): nothing "
                    f"answers there yet; waiting {left} s more (compute.rdzv_timeout_s = {self.timeout_s}). On the "
                    "head node, run `dvc repro` in the project folder.")
        count = 0 if joined is None else len(joined)
        return (f"waiting at the rendezvous {self.endpoint} (compute.rdzv_endpoint): {count} of {self.nnodes} nodes "
                f"joined; waiting {left} s more (compute.rdzv_timeout_s = {self.timeout_s}). Every other node runs "
                "`python -m stages train` in this project folder, with the same params.yaml.")

    # -- when it did not work ----------------------------------------------------------------------
    def _others(self) -> str:
        return ("`python -m stages train` in this same project folder (on a filesystem every node sees), with the "
                "same params.yaml")

    def timed_out(self) -> str:
        self.joined()
        joined = self.last_joined
        names = ", ".join(f"{node.addr} pid {node.pid}{' (this node)' if node.pid == os.getpid() else ''}"
                          for node in joined) or "none"
        return (f"only {len(joined)} of the {self.nnodes} nodes (compute.nnodes) joined the rendezvous at "
                f"{self.endpoint} (compute.rdzv_endpoint) within {self.timeout_s} s (compute.rdzv_timeout_s); joined: "
                f"{names}. Each other node must run {self._others()}, and reach {self.endpoint}: start them, then this "
                "again (`dvc repro` on the head node). Or set compute.nnodes to the nodes you have.")

    def unreachable(self, exc: BaseException | None = None) -> str:
        cause = exc.__cause__ or exc if exc else None
        cause = f" ({str(cause).strip().splitlines()[0]})" if cause and str(cause).strip() else ""  # C++ traces follow
        return (f"no rendezvous answered at {self.endpoint} (compute.rdzv_endpoint) within {self.timeout_s} s "
                f"(compute.rdzv_timeout_s){cause}. Start the head node first (`dvc repro` in the project folder on "
                f"{self.host}), check that this machine reaches {self.host} on port {self.port} and that nothing else "
                f"listens there, then run {self._others()} here again.")

    def closed(self) -> str:
        return (f"the rendezvous at {self.endpoint} (compute.rdzv_endpoint) is closed: the run it belonged to has "
                f"ended or is ending. Start all nodes again: `dvc repro` on the head node, then on each other node "
                f"{self._others()}.")


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


def _resolve(host: str) -> str | None:
    """None when ``host`` resolves within RESOLVE_TIMEOUT_S seconds, else why not."""
    outcome: list[str | None] = []

    def lookup():
        try:
            socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            outcome.append(None)
        except (OSError, UnicodeError) as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(RESOLVE_TIMEOUT_S)
    return outcome[0] if outcome else f"no answer within {RESOLVE_TIMEOUT_S} s"


def _port_in_use(port: int) -> bool:
    """Does a program listen on ``port`` on this machine? Tried as torch's store binds: every address, SO_REUSEADDR."""
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((address, port))
                return False
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def _listener(port: int):
    """The psutil.Process listening on ``port``, or None when this user cannot see it."""
    import psutil

    try:
        pids = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr
                and c.laddr.port == port and c.pid}
        return psutil.Process(pids.pop()) if pids else None
    except (psutil.Error, OSError, KeyError):
        return None


def _is_this_runs_stage(process) -> bool:
    """Is ``process`` the train stage (its torchrun agent) of this project folder?"""
    import psutil

    try:
        command = process.cmdline()
        return (command[-3:] == ["-m", "stages", "train"] or command[-2:] == ["stages", "train"]) \
            and os.path.samefile(process.cwd(), os.getcwd())
    except (psutil.Error, OSError):
        return False


def _describe(process) -> str:
    import psutil

    if process is None:
        return "a program this user cannot see"
    try:
        command = " ".join(" ".join(process.cmdline()).split()) or process.name()
        if "stages" in command and "train" in command:
            return f"the training run of another project folder or experiment ({process.cwd()}, pid {process.pid})"
        return f"another program (pid {process.pid}: {command[:80]})"
    except psutil.Error:
        return f"another program (pid {process.pid})"


def die_with_launcher() -> None:
    """Ask Linux to SIGKILL this process when its parent (the torchrun agent) dies.

    torchrun starts each worker in a session of its own, so when torchrun itself is killed
    (kill -9, an OOM kill, a lost Slurm node), its workers would train on, orphaned, and write
    checkpoints that the next run then finds half-made.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the launcher died before the request was in place
        os._exit(128 + signal.SIGKILL)


def broadcast_from_rank0(value):
    """``value`` as global rank 0 has it, on every rank (unchanged in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def weights_checksum(model: torch.nn.Module) -> str:
    """sha256 of the trainable weights, in name order: equal on every rank if and only if gradients were synced."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class LogWeightsChecksum(TrainerCallback):
    """Each rank logs the checksum of its trainable weights at each epoch end (after the epoch's last step).

    Logged before load_best_model_at_end reloads a checkpoint from disk, which would make every
    rank equal whether or not they trained together.
    """

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        log.info("rank %d/%d: trainable weights after step %d: sha256 %s", args.process_index, args.world_size,
                 state.global_step, weights_checksum(model))
