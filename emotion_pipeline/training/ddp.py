"""The processes of one training run: what they share (a value decided by global rank 0), a check that every rank
really holds the same weights, and a worker's tie to its launcher (emotion_pipeline.training.launch, which the stage
execs: not imported here, nor by the stage)."""

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

log = logging.getLogger(__name__)

# The launcher the train stage hands over to (exec, by module name: it is a program, like torchrun, not a dependency).
LAUNCHER = "emotion_pipeline.training.launch"


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
