"""Crash recovery for training: which checkpoint to resume from, and clearing up after a finished run.

Trainer saves a checkpoint into ``models/checkpoints`` at each epoch end. That folder is scratch,
not a DVC output: `dvc repro` never deletes it, and a clone that pulled a finished run does not
miss it. A fingerprint of the params and the prepared data is stored
beside the checkpoints: a checkpoint is resumed only by a run with the same fingerprint, so a
crash followed by a params change never mixes two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

from emotion_pipeline.distributed import broadcast_from_rank0
from emotion_pipeline.io import write_json

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
# Written into a checkpoint once every process has saved its part of it. Trainer's own last file
# (trainer_state.json) is not enough: with several processes each one writes its own RNG state,
# possibly after rank 0 has written trainer_state.json, so a kill could leave it truncated.
COMPLETE_FILE = "checkpoint_complete.json"


def run_fingerprint(train_params: dict, prepared_dir: Path) -> str:
    """Hash of everything a checkpoint depends on: the params sections and the prepared data files."""
    digest = hashlib.sha256(json.dumps(train_params, sort_keys=True).encode())
    for path in sorted(prepared_dir.iterdir()):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def resumable_checkpoint(checkpoint_dir: Path, fingerprint: str) -> Path | None:
    """The latest complete checkpoint of an interrupted run with this fingerprint, else None.

    When there is none to resume, the folder is emptied and stamped with the new fingerprint,
    so the checkpoints this run writes are recognised if it is interrupted in turn.
    """
    # A checkpoint without the marker was cut off mid-save (by any of the processes).
    checkpoints = sorted((path.parent for path in checkpoint_dir.glob(f"checkpoint-*/{COMPLETE_FILE}")), key=step_of)
    stamp = checkpoint_dir / FINGERPRINT_FILE
    saved = json.loads(stamp.read_text())["fingerprint"] if stamp.is_file() else None
    if checkpoints and saved == fingerprint:
        log.info("resuming from %s (an interrupted run with the same params and data)", checkpoints[-1])
        return checkpoints[-1]
    if checkpoints:
        log.warning("ignoring %d checkpoint(s) in %s: they come from a run with other params or data; starting fresh",
                    len(checkpoints), checkpoint_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    checkpoint_dir.mkdir(parents=True)
    write_json(stamp, {"fingerprint": fingerprint, "finished": False})
    return None


def resume_point(checkpoint_dir: Path, fingerprint: str) -> Path | None:
    """resumable_checkpoint as global rank 0 decides it (only it reads and stamps the folder), on every
    rank, so that all processes resume from the same checkpoint. Call it once the processes are connected."""
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    return broadcast_from_rank0(resumable_checkpoint(checkpoint_dir, fingerprint) if rank0 else None)


def finish(checkpoint_dir: Path, fingerprint: str) -> None:
    """After the adapter is saved: drop the checkpoints, so a forced re-run starts afresh instead of "resuming"."""
    for checkpoint in checkpoint_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    write_json(checkpoint_dir / FINGERPRINT_FILE, {"fingerprint": fingerprint, "finished": True})


class MarkCheckpointComplete(TrainerCallback):
    """After each checkpoint save: wait for every process to finish its part, then rank 0 marks it complete."""

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_json(checkpoint / COMPLETE_FILE, {"step": state.global_step, "processes": args.world_size})


def step_of(checkpoint: Path | None) -> int:
    """The optimiser step a checkpoint folder (checkpoint-<step>) was saved at; 0 for none."""
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0
