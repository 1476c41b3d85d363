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
import hashlib
import logging
import os
import signal
import sys

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from emotion_pipeline.config import ComputeConfig
from emotion_pipeline.errors import StageInterrupted

log = logging.getLogger(__name__)


def torchrun_args(cfg: ComputeConfig, module: str, *module_args: str) -> list[str] | None:
    """torchrun's arguments to run ``python -m module`` on cfg's processes; None for a single process.

    One machine uses --standalone: torchrun picks a free port itself, so queued experiments
    running side by side never collide. Several machines meet at cfg.rdzv_endpoint (c10d
    rendezvous, which needs no node ranks: the same command is run on every node).
    """
    if cfg.nproc_per_node * cfg.nnodes == 1:
        return None
    args = ["--nproc-per-node", str(cfg.nproc_per_node)]
    if cfg.nnodes == 1:
        args += ["--standalone"]
    else:
        args += ["--nnodes", str(cfg.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", cfg.rdzv_endpoint,
                 "--rdzv-id", "emotion-train"]
    return [*args, "-m", module, *module_args]


def run_torchrun(args: list[str]) -> None:
    """Run torchrun with ``args`` in this process (it is torchrun's own entry point, `torch.distributed.run`).

    In this process rather than exec'd, so that its ends read like every stage's: Ctrl-C or
    SIGTERM (which torchrun passes on to its workers) is StageInterrupted, one line and exit
    128 + signal, not torchrun's traceback; a failed worker, whose own error is printed above,
    ends this process with the worker's exit status.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(args))
    except SignalException as exc:
        raise StageInterrupted(int(exc.sigval)) from None
    except ChildFailedError as exc:
        failed = sorted(exc.failures.items())
        ranks = ", ".join(f"rank {rank} exit status {failure.exitcode}" for rank, failure in failed)
        print(f"error: {len(failed)} training process(es) failed ({ranks}); their messages are above.", file=sys.stderr)
        code = failed[0][1].exitcode
        sys.exit(code if 0 < code < 128 else 1)


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
