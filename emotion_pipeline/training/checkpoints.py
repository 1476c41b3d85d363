"""Crash recovery for training: which checkpoint to resume from, and clearing up after a finished run.

Trainer saves a checkpoint into ``models/checkpoints`` at each epoch end: scratch, not a DVC output, so `dvc repro`
never deletes it and a clone that pulled a finished run does not miss it. Beside it, ``fingerprint.json`` holds what
decides the run (run_inputs): a checkpoint is resumed only by a run with the same inputs, so a crash followed by a
change of params, code, data, base model or environment never mixes two runs, and the log names what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch.distributed as dist
import yaml
from transformers import TrainerCallback

from emotion_pipeline.io import write_json
from emotion_pipeline.paths import BASE_MODELS_DIR, RUNTIME_LOCK
from emotion_pipeline.training.ddp import broadcast_from_rank0

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
# Written into a checkpoint once every process has saved its part of it. Trainer's own last file
# (trainer_state.json) is not enough: with several processes each one writes its own RNG state,
# possibly after rank 0 has written trainer_state.json, so a kill could leave it truncated.
COMPLETE_FILE = "checkpoint_complete.json"
# Where the stage code that is running lives (the project root for `python -m stages`, also in a DVC
# experiment's copy), and the dvc.yaml dep folders that are code.
CODE_ROOT = Path(__file__).resolve().parents[2]
CODE_PACKAGES = ("stages", "emotion_pipeline")


def run_inputs(train_params: dict, world_size: int, model_location: str, stage: str = "train") -> dict[str, str]:
    """One entry per thing that decides a training run, keyed by how a message names it: the params, the number of
    processes, and a sha256 of every file of the stage's dvc.yaml deps (its code, the runtime lock, the prepared data,
    the base models folder) and of the base model folder wherever it is. dvc.yaml's list is read, not repeated here,
    so that what re-runs the stage and what restarts its training cannot drift apart."""
    inputs = {"params": _sha256(json.dumps(train_params, sort_keys=True).encode()), "processes": str(world_size)}
    for dep in declared_deps(stage):
        # Code as this process imported it (the code that runs); data and models from the working directory.
        inputs.update(_file_hashes(CODE_ROOT / dep if is_code(dep) else Path(dep), shown_from=CODE_ROOT if is_code(dep) else None))
    model = Path(model_location)
    if model.is_dir() and not model.resolve().is_relative_to(BASE_MODELS_DIR.resolve()):
        # A local base model outside models/base (README: allowed, with a warning). A hub id is in the params.
        inputs.update(_file_hashes(model))
    return inputs


def declared_deps(stage: str) -> list[str]:
    """The deps dvc.yaml declares for ``stage`` (the project's dvc.yaml; the code's own when run elsewhere)."""
    project = Path("dvc.yaml") if Path("dvc.yaml").is_file() else CODE_ROOT / "dvc.yaml"
    return yaml.safe_load(project.read_text())["stages"][stage]["deps"]


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in CODE_PACKAGES


def changed_inputs(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between two run_inputs, in words ('the code of stages/train.py', 'models/base/q/config.json')."""
    def name(key: str) -> str:
        if is_code(key):
            return f"the code of {key}"
        return {"params": "the params (model, lora, train)", "processes": "the number of processes",
                str(RUNTIME_LOCK): f"the runtime lock {RUNTIME_LOCK}"}.get(key, key)

    return [name(key) + ("" if key in now else " (removed)") + ("" if key in saved else " (added)")
            for key in sorted(saved.keys() | now.keys()) if saved.get(key) != now.get(key)]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_hashes(root: Path, shown_from: Path | None = None) -> dict[str, str]:
    """path -> sha256 for a file, or for every file under a folder (streamed: base models are gigabytes); paths
    shown relative to ``shown_from`` when given."""
    def shown(path: Path) -> str:
        return str(path.relative_to(shown_from)) if shown_from else str(path)

    if not root.exists():
        return {shown(root): "missing"}
    # Byte-code caches are Python's, not the project's (the tests' stage processes keep theirs).
    files = [root] if root.is_file() else sorted(path for path in root.rglob("*") if path.is_file() and "__pycache__" not in path.parts)
    hashes = {}
    for path in files:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
        hashes[shown(path)] = digest.hexdigest()
    return hashes


def resumable_checkpoint(checkpoint_dir: Path, inputs: dict[str, str]) -> Path | None:
    """The latest complete checkpoint of an interrupted run with these inputs, else None.

    When there is none to resume, the folder is emptied and stamped with the new inputs, so the checkpoints this
    run writes are recognised if it is interrupted in turn. A checkpoint of other inputs is never resumed: a run
    trained half by one version of the code, data or base model and half by another would be credited to the second.
    """
    # A checkpoint without the marker was cut off mid-save (by any of the processes).
    checkpoints = sorted((path.parent for path in checkpoint_dir.glob(f"checkpoint-*/{COMPLETE_FILE}")), key=step_of)
    stamp = checkpoint_dir / FINGERPRINT_FILE
    saved = json.loads(stamp.read_text()).get("inputs") if stamp.is_file() else None
    if checkpoints and saved == inputs:
        log.info("resuming from %s (an interrupted run with the same params, data, code, base model and environment)",
                 checkpoints[-1])
        return checkpoints[-1]
    if checkpoints:
        changed = changed_inputs(saved, inputs) if isinstance(saved, dict) else ["the checkpoint format"]
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        log.warning("%s changed since %s: training starts from step 0", shown, checkpoints[-1])
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    checkpoint_dir.mkdir(parents=True)
    write_json(stamp, {"inputs": inputs, "finished": False})
    return None


def is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def resume_point(checkpoint_dir: Path, inputs: dict[str, str] | None) -> Path | None:
    """resumable_checkpoint as global rank 0 decides it (only it hashes the inputs, reads and stamps the folder;
    other ranks pass None), on every rank, so that all processes resume from the same checkpoint. Call it once the
    processes are connected."""
    return broadcast_from_rank0(resumable_checkpoint(checkpoint_dir, inputs) if is_rank0() else None)


def finish(checkpoint_dir: Path, inputs: dict[str, str]) -> None:
    """After the adapter is saved: drop the checkpoints, so a forced re-run starts afresh instead of "resuming"."""
    for checkpoint in checkpoint_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    write_json(checkpoint_dir / FINGERPRINT_FILE, {"inputs": inputs, "finished": True})


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
