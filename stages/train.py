"""train: LoRA fine-tune of model.name on data/prepared -> models/adapter + metrics/train.json.

Reads params sections: model, lora, train.

The story: load the prepared splits, tokenise them once, load the base model with a fresh
classification head, wrap it with LoRA, and let the HF Trainer run with dynamic padding and
length-grouped batches, evaluating macro-F1 on validation each epoch and keeping the best
epoch. Checkpoints go to models/checkpoints (a persistent DVC output), so a killed run
resumes where it stopped on the next `dvc repro`, provided params and data are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from dvclive import Live
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from emotion_pipeline.config import load_params
from emotion_pipeline.data import read_prepared
from emotion_pipeline.errors import run_stage
from emotion_pipeline.io import atomic_dir, write_json
from emotion_pipeline.modeling import (
    add_lora,
    best_dtype,
    check_model_source,
    default_device,
    load_classifier_base,
    load_tokenizer,
)
from emotion_pipeline.paths import (
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    LABELS_FILE,
    PREPARED_DIR,
    TRAIN_LOG_DIR,
    TRAIN_METRICS,
    TRAIN_RUN_INFO,
    TRAINING_PARAMS_FILE,
)

log = logging.getLogger("train")

FINGERPRINT_FILE = CHECKPOINT_DIR / "fingerprint.json"


def main() -> None:
    params = load_params()
    model_cfg, lora_cfg, train_cfg = params.model, params.lora, params.train
    splits, labels = read_prepared()
    check_model_source(model_cfg.name)

    # Seed before the model is built: the new classification head and LoRA matrices are random.
    set_seed(train_cfg.seed)
    device = default_device()
    dtype = best_dtype(device)
    tokenizer = load_tokenizer(model_cfg.name, model_cfg.trust_remote_code)
    model = load_classifier_base(model_cfg, labels, tokenizer.pad_token_id, dtype)
    model = add_lora(model, lora_cfg)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("%s on %s (%s): %s of %s parameters trainable (%.2f%%)", model_cfg.name, device, str(dtype).removeprefix("torch."),
             f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    def tokenize(frame):
        dataset = datasets.Dataset.from_pandas(frame, preserve_index=False)
        dataset = dataset.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=model_cfg.max_length),
                              batched=True, remove_columns=["text"])
        return dataset.rename_column("label", "labels")

    train_set, validation_set = tokenize(splits["train"]), tokenize(splits["validation"])

    train_params = params.model_dump(include={"model", "lora", "train"})
    fingerprint = _run_fingerprint(train_params)
    resume_from = _resumable_checkpoint(fingerprint)

    args = TrainingArguments(
        output_dir=str(CHECKPOINT_DIR),
        learning_rate=train_cfg.lr,
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=train_cfg.eval_batch_size,
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
        num_train_epochs=train_cfg.epochs,
        warmup_steps=train_cfg.warmup_steps,
        weight_decay=train_cfg.weight_decay,
        lr_scheduler_type="linear",
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        full_determinism=True,  # deterministic kernels: same params + data -> same metrics
        train_sampling_strategy="group_by_length" if train_cfg.group_by_length else "random",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,  # the best and the latest epoch: enough to resume and to pick the best
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_steps=train_cfg.logging_steps,
        logging_first_step=True,
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",
        report_to="none",  # dvclive is attached explicitly below, with dvcyaml=False
        dataloader_num_workers=0,
    )
    live = Live(TRAIN_LOG_DIR, dvcyaml=False, save_dvc_exp=False, report=None)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=validation_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # pad each batch to its own longest text
        compute_metrics=_validation_metrics,
        callbacks=[LogAtEpochEnd(), LiveLogger(live)],
    )

    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    runtime = time.perf_counter() - started

    # load_best_model_at_end: trainer.model now holds the epoch with the best validation macro-F1.
    with atomic_dir(ADAPTER_DIR) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / LABELS_FILE).write_text(json.dumps({"labels": labels}, indent=2) + "\n")
        (staging / TRAINING_PARAMS_FILE).write_text(json.dumps(train_params, indent=2, sort_keys=True) + "\n")

    state = trainer.state
    best = max((e for e in state.log_history if "eval_macro_f1" in e), key=lambda e: e["eval_macro_f1"])
    write_json(TRAIN_METRICS, {
        "best_validation_macro_f1": round(best["eval_macro_f1"], 6),
        "best_validation_accuracy": round(best["eval_accuracy"], 6),
        "best_epoch": round(best["epoch"], 4),
        "best_step": best["step"],
        "steps": state.global_step,
        "train_loss": round(_mean_train_loss(state.log_history), 6),
        "trainable_params": trainable,
        "total_params": total,
    })
    # Timing differs run to run, so it lives apart from the reproducible summary above.
    write_json(TRAIN_RUN_INFO, {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "resumed_from_step": _step_of(resume_from),
        "runtime_s": round(runtime, 1),
        "train_samples_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 2),
    })
    # The adapter is safe; checkpoints only serve crash recovery, and a finished run must not be
    # "resumed" by a forced re-run.
    for checkpoint in CHECKPOINT_DIR.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    write_json(FINGERPRINT_FILE, {"fingerprint": fingerprint, "finished": True})
    log.info("best validation macro-F1 %.4f at epoch %s; adapter saved to %s", best["eval_macro_f1"], best["epoch"], ADAPTER_DIR)


def _validation_metrics(prediction) -> dict[str, float]:
    predicted = np.asarray(prediction.predictions).argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(prediction.label_ids, predicted)),
        "macro_f1": float(f1_score(prediction.label_ids, predicted, average="macro", zero_division=0)),
    }


def _mean_train_loss(log_history: list[dict]) -> float:
    """Mean training loss over all steps, from the logged window means.

    Trainer's own train_loss only covers the steps since the last resume; the log history,
    restored from the checkpoint, covers the whole run.
    """
    total, previous_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - previous_step)
            previous_step = entry["step"]
    return total / max(previous_step, 1)


class LogAtEpochEnd(TrainerCallback):
    """Close the training-loss window at each epoch end, where checkpoints are saved.

    A run resumed from a checkpoint then logs exactly the windows an uninterrupted run logs,
    so its loss curve and mean loss are identical too.
    """

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step % args.logging_steps != 0:  # otherwise this step was just logged
            control.should_log = True


class LiveLogger(TrainerCallback):
    """Sends Trainer logs to dvclive at the optimiser step they belong to.

    On resume, Trainer restores the log history from the checkpoint; replaying it into a fresh
    Live makes the plots of a resumed run identical to those of an uninterrupted one.
    """

    def __init__(self, live: Live):
        self.live = live

    def on_train_begin(self, args, state, control, **kwargs):
        for entry in state.log_history:
            self._log(entry)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._log({**(logs or {}), "step": state.global_step})

    def on_train_end(self, args, state, control, **kwargs):
        self.live.end()

    def _log(self, entry: dict) -> None:
        if "train_runtime" in entry:  # the end-of-training summary: single values, not curves
            return
        self.live.step = entry["step"]
        for key, value in entry.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not key.endswith(("runtime", "_per_second")):
                section = "eval" if key.startswith("eval_") else "train"
                self.live.log_metric(f"{section}/{key.removeprefix('eval_')}", value)
        self.live.make_summary()


def _run_fingerprint(train_params: dict) -> str:
    """Hash of everything a checkpoint depends on: the params sections and the prepared data."""
    digest = hashlib.sha256(json.dumps(train_params, sort_keys=True).encode())
    for path in sorted(PREPARED_DIR.iterdir()):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _resumable_checkpoint(fingerprint: str) -> Path | None:
    """The latest checkpoint of an interrupted run with the same params and data, else None."""
    # Trainer writes trainer_state.json last: a checkpoint without it was cut off mid-save.
    checkpoints = sorted((path.parent for path in CHECKPOINT_DIR.glob("checkpoint-*/trainer_state.json")), key=_step_of)
    saved = json.loads(FINGERPRINT_FILE.read_text())["fingerprint"] if FINGERPRINT_FILE.is_file() else None
    if checkpoints and saved == fingerprint:
        log.info("resuming from %s (an interrupted run with the same params and data)", checkpoints[-1])
        return checkpoints[-1]
    if checkpoints:
        log.warning("ignoring %d checkpoint(s) in %s: they come from a run with other params or data; starting fresh",
                    len(checkpoints), CHECKPOINT_DIR)
    shutil.rmtree(CHECKPOINT_DIR, ignore_errors=True)
    CHECKPOINT_DIR.mkdir(parents=True)
    write_json(FINGERPRINT_FILE, {"fingerprint": fingerprint, "finished": False})
    return None


def _step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0


if __name__ == "__main__":
    run_stage(main)
