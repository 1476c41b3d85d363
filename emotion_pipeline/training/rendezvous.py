"""Where the nodes of a multi-node run meet (torch's c10d rendezvous at compute.rdzv_endpoint), and what to say
when they do not: an endpoint checked before torch starts, the wait reported while the nodes gather, one paragraph
when they never do. torch's own c10d backend, registered again under a name of ours so its state can be read.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time

from emotion_pipeline.errors import UserError

log = logging.getLogger(__name__)

WATCHED_C10D = "c10d-emotion-watched"  # torch's c10d rendezvous, registered under a name of ours so we see its state
RESOLVE_TIMEOUT_S = 10


def check_torch_internals() -> None:
    """The private parts of torch this module reads exist in the torch installed; else one paragraph at start-up, not a
    progress report that silently never comes. They were written against the torch of requirements/runtime.txt."""
    import inspect

    import torch
    from torch.distributed.elastic.rendezvous import utils
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler

    missing = [f"rendezvous.utils.{name}" for name in ("_parse_rendezvous_config", "_matches_machine_hostname")
               if not hasattr(utils, name)]
    if "self._state_holder" not in inspect.getsource(DynamicRendezvousHandler.__init__):
        missing.append("DynamicRendezvousHandler._state_holder")
    if missing:
        raise UserError(f"torch {torch.__version__} has no {', '.join(missing)}, which the multi-node launcher reads "
                        f"(written against the torch pinned in requirements/runtime.txt): install from the lock, "
                        f"`uv pip install --require-hashes -r requirements/dev.txt`.")


def watched_c10d_backend(meeting: Rendezvous) -> str:
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
