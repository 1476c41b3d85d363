"""train: LoRA fine-tune of model.name on data/prepared -> models/adapter + metrics/train.json.

Reads params sections: model, lora, train, compute (device, deterministic, portable and the process counts; where
processes meet and how long they wait change no result).

The story (main): launch -> model -> data -> trainer -> run -> outputs. Above one process, hand over to the
launcher (torchrun), which runs this stage once per process. Load the base with a fresh head and wrap it with LoRA;
tokenise the splits once; let the HF Trainer run with dynamic padding and length-grouped batches, keeping the epoch
with the best validation macro-F1. A killed run resumes from models/checkpoints on the next `dvc repro` when nothing
that decides it changed. Only global rank 0 writes outputs; every rank trains and predicts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import numpy as np
import torch
from transformers import Trainer, set_seed

from emotion_pipeline.config import ComputeConfig, TrainConfig, load_params
from emotion_pipeline.data.prepared import read_prepared, write_labels
from emotion_pipeline.device import best_dtype, choose_device, make_deterministic
from emotion_pipeline.environment import check_kernel_dispatch, environment_record
from emotion_pipeline.errors import UserError, first_line, under_torchrun
from emotion_pipeline.io import atomic_dir, write_json
from emotion_pipeline.paths import (
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    ENVIRONMENT_FILE,
    PREPARED_DIR,
    TRAIN_DETAILS,
    TRAIN_METRICS,
    TRAIN_RUN_INFO,
    TRAINING_PARAMS_FILE,
)
from emotion_pipeline.training.checkpoints import finish, is_rank0, resume_point, run_inputs, step_of
from emotion_pipeline.training.class_bias import fit_on_validation, write_class_bias
from emotion_pipeline.training.ddp import LAUNCHER, die_with_launcher
from emotion_pipeline.training.modeling import (
    load_tokenizer,
    precision_record,
    resolve_model,
    trainable_model,
    trainable_parameters,
)
from emotion_pipeline.training.train_log import StepTimer, mean_train_loss
from emotion_pipeline.training.trainer import build_trainer, tokenized, training_arguments

log = logging.getLogger("train")


def main() -> None:
    params = load_params()
    model_cfg, train_cfg, compute = params.model, params.train, params.compute
    check_kernel_dispatch(compute.portable, "train")
    splits, labels = read_prepared(PREPARED_DIR)
    location = resolve_model(model_cfg.name)

    # Launch. More than one process: hand over to torchrun, which runs this stage once per process.
    # Params, data and model path were checked above, so a mistake is reported once, not by every process.
    if not under_torchrun() and compute.nproc_per_node * compute.nnodes > 1:
        become_launcher(compute)  # exec: the launcher then runs this stage once per process
    if under_torchrun():
        die_with_launcher()

    # Model: the base with a fresh classification head, seeded first (the head and LoRA matrices are random);
    # on a GPU with bf16 the frozen base computes in bf16 and every trained weight stays fp32.
    device = choose_device(compute.device)
    dtype = best_dtype(device)
    if compute.deterministic:
        make_deterministic(device)  # on a GPU; before the first matmul there (the CPU's is the Trainer's, below)
    set_seed(train_cfg.seed)
    tokenizer = load_tokenizer(location, model_cfg.trust_remote_code, model_cfg.revision)
    model = trainable_model(location, model_cfg, params.lora, labels, tokenizer.pad_token_id, dtype)

    # Data: tokenised once; each batch is padded to its own longest text by the collator below.
    train_set, validation_set = (tokenized(splits[name], tokenizer, model_cfg.max_length) for name in ("train", "validation"))

    # Trainer, resuming an interrupted run only if nothing that decides it changed (params, processes, and every file
    # train depends on: code, runtime lock, prepared data, base model; hashed by global rank 0 alone).
    args = training_arguments(train_cfg, compute, device, dtype)
    if args.n_gpu > 1:  # pin_training_gpu narrows what `python -m stages train` sees; in-process callers land here
        raise UserError(f"one training process sees {args.n_gpu} GPUs: the Trainer would split each batch over them "
                        f"(DataParallel). Run `python -m stages train`, or set compute.nproc_per_node for several GPUs.")
    train_params = params.model_dump(include={"model", "lora", "train"})
    inputs = run_inputs(train_params, args.world_size, location) if is_rank0() else None
    resume_from = resume_point(CHECKPOINT_DIR, inputs)
    trainer = build_trainer(model, tokenizer, args, train_set, validation_set, train_cfg, labels,
                            splits["train"]["label"].to_numpy())
    trainer.add_callback(timer := StepTimer())
    if trainer.is_world_process_zero():
        log_run_shape(trainer, model_cfg.name, device, dtype, train_cfg)

    # Run. load_best_model_at_end: trainer.model then holds the epoch with the best validation macro-F1.
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except RuntimeError as exc:
        if "deterministic" not in str(exc):
            raise
        raise UserError(f"compute.deterministic is true, but an operation of this run has no deterministic kernel on "
                        f"{device}: {first_line(exc)} Set compute.deterministic: false to train with it (faster, not "
                        f"bit-reproducible).") from None
    runtime = time.perf_counter() - started
    # train.fit_class_bias: the kept epoch's validation logits (every rank takes part in predicting).
    validation = trainer.predict(validation_set) if train_cfg.fit_class_bias else None

    # Outputs, from global rank 0 only.
    if trainer.is_world_process_zero():
        class_bias, bias_record = (None, {}) if validation is None else \
            fit_on_validation(np.asarray(validation.predictions), validation.label_ids, labels)
        run_info = run_record(trainer, device, dtype, train_cfg, resume_from, runtime, result.metrics, timer,
                              sum(map(len, train_set["input_ids"])) * train_cfg.epochs)
        write_outputs(trainer, tokenizer, labels, train_params, class_bias, bias_record, run_info)
        finish(CHECKPOINT_DIR, inputs)  # the adapter is safe; checkpoints only served crash recovery


def become_launcher(section: ComputeConfig) -> None:
    """Replace this process by the launcher (emotion_pipeline.training.launch), handing it the compute section."""
    sys.stdout.flush(), sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", LAUNCHER, section.model_dump_json(), "-m", "stages", "train"])


def global_batch_size(cfg: TrainConfig, processes: int) -> int:
    """Examples per optimiser step, over every process."""
    return cfg.batch_size * processes * cfg.gradient_accumulation_steps


def run_record(trainer: Trainer, device: torch.device, dtype: torch.dtype, cfg: TrainConfig, resumed_from, runtime: float,
               trainer_metrics: dict, timer: StepTimer, train_tokens: int) -> dict:
    """How the run was computed: metrics/train_run.json, apart from the reproducible scores (timings differ run to run)."""
    args, processes = trainer.args, trainer.args.world_size
    return {
        "device": str(args.device),  # what the Trainer trained on, not only what params asked for
        "gpus_used": args.n_gpu if device.type == "cuda" else 0,  # per process; 1 on a GPU, never DataParallel
        "dtype": str(dtype).removeprefix("torch."),
        "precision": precision_record(trainer.model, dtype if args.bf16 else None),
        "processes": processes,
        "global_batch_size": global_batch_size(cfg, processes),
        "resumed_from_step": step_of(resumed_from),
        "optimizer_steps": trainer.state.global_step,
        "train_tokens": train_tokens,  # tokens of the training texts (no padding) x epochs, one process's share
        "runtime_s": round(runtime, 1),
        "step_time_median_s": timer.median(),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
        "train_samples_per_second": round(trainer_metrics.get("train_samples_per_second", 0.0), 2),
        "environment": environment_record(device, dtype),
    }


def log_run_shape(trainer: Trainer, name: str, device: torch.device, dtype: torch.dtype, cfg: TrainConfig) -> None:
    trainable, total = trainable_parameters(trainer.model)
    processes = trainer.args.world_size
    log.info("%s on %s (%s): %s of %s parameters trainable (%.2f%%)", name, device.type, str(dtype).removeprefix("torch."),
             f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    log.info("global batch %d = %d per process x %d process(es) x %d accumulation step(s)",
             global_batch_size(cfg, processes), cfg.batch_size, processes, cfg.gradient_accumulation_steps)


def write_outputs(trainer: Trainer, tokenizer, labels: list[str], train_params: dict, class_bias: np.ndarray | None,
                  bias_record: dict, run_info: dict) -> None:
    """Everything the stage writes (rank 0): the adapter of the best epoch, the headline and detailed
    validation scores, and how the run was computed."""
    with atomic_dir(ADAPTER_DIR) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_labels(staging, labels)
        if class_bias is not None:  # evaluate and export put it into the model (emotion_pipeline.training.class_bias)
            write_class_bias(staging, class_bias, labels)
        (staging / TRAINING_PARAMS_FILE).write_text(json.dumps(train_params, indent=2, sort_keys=True) + "\n")
        write_json(staging / ENVIRONMENT_FILE, run_info["environment"])  # the model card shows what trained it

    history = trainer.state.log_history
    best = max((entry for entry in history if "eval_macro_f1" in entry), key=lambda entry: entry["eval_macro_f1"])
    trainable, total = trainable_parameters(trainer.model)
    summary = {
        "val_macro_f1": round(best["eval_macro_f1"], 6),
        "val_accuracy": round(best["eval_accuracy"], 6),
        "best_epoch": round(best["epoch"], 4),
        "best_step": best["step"],
        "steps": trainer.state.global_step,
        "train_loss": round(mean_train_loss(history), 6),
        "trainable_params": trainable,
        "total_params": total,
        **bias_record,
    }
    # The best validation scores are the headline (`dvc metrics show`); the whole summary is a plain output.
    write_json(TRAIN_METRICS, {key: summary[key] for key in ("val_macro_f1", "val_accuracy", "best_epoch")})
    write_json(TRAIN_DETAILS, summary)
    write_json(TRAIN_RUN_INFO, run_info)
    log.info("best validation macro-F1 %.4f at epoch %s; adapter saved to %s", best["eval_macro_f1"], best["epoch"], ADAPTER_DIR)
