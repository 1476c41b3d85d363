"""train: LoRA fine-tune of model.name on data/prepared -> models/adapter + metrics/train.json.

Reads params sections: model, lora, train.

The story: load the prepared splits, tokenise them once, load the base model with a fresh
classification head, wrap it with LoRA, and let the HF Trainer run with dynamic padding and
length-grouped batches, evaluating macro-F1 on validation each epoch and keeping the best
epoch. Checkpoints go to models/checkpoints, a scratch folder DVC does not track, so a killed
run resumes where it stopped on the next `dvc repro`, provided params and data are unchanged.
"""

from __future__ import annotations

import json
import logging
import time

import datasets
import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from emotion_pipeline.checkpoints import finish, resumable_checkpoint, run_fingerprint, step_of
from emotion_pipeline.config import load_params
from emotion_pipeline.io import atomic_dir, write_json
from emotion_pipeline.modeling import add_lora, best_dtype, default_device, load_classifier_base, load_tokenizer, resolve_model
from emotion_pipeline.paths import (
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    PREPARED_DIR,
    TRAIN_DETAILS,
    TRAIN_LOG_DIR,
    TRAIN_METRICS,
    TRAIN_RUN_INFO,
    TRAINING_PARAMS_FILE,
)
from emotion_pipeline.prepared import read_prepared, write_labels
from emotion_pipeline.train_log import LiveLogger, LogAtEpochEnd, mean_train_loss, open_live

log = logging.getLogger("train")


def main() -> None:
    params = load_params()
    model_cfg, lora_cfg, train_cfg = params.model, params.lora, params.train
    splits, labels = read_prepared(PREPARED_DIR)

    # Seed before the model is built: the new classification head and LoRA matrices are random.
    set_seed(train_cfg.seed)
    device = default_device()
    dtype = best_dtype(device)
    location = resolve_model(model_cfg.name)
    tokenizer = load_tokenizer(location, model_cfg.trust_remote_code, model_cfg.revision)
    model = load_classifier_base(location, model_cfg, labels, tokenizer.pad_token_id, dtype)
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
    fingerprint = run_fingerprint(train_params, PREPARED_DIR)
    resume_from = resumable_checkpoint(CHECKPOINT_DIR, fingerprint)

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
    live = open_live(TRAIN_LOG_DIR)
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
        write_labels(staging, labels)
        (staging / TRAINING_PARAMS_FILE).write_text(json.dumps(train_params, indent=2, sort_keys=True) + "\n")

    state = trainer.state
    best = max((e for e in state.log_history if "eval_macro_f1" in e), key=lambda e: e["eval_macro_f1"])
    summary = {
        "val_macro_f1": round(best["eval_macro_f1"], 6),
        "val_accuracy": round(best["eval_accuracy"], 6),
        "best_epoch": round(best["epoch"], 4),
        "best_step": best["step"],
        "steps": state.global_step,
        "train_loss": round(mean_train_loss(state.log_history), 6),
        "trainable_params": trainable,
        "total_params": total,
    }
    # The best validation scores are the headline; the whole summary is a plain output.
    write_json(TRAIN_METRICS, {key: summary[key] for key in ("val_macro_f1", "val_accuracy", "best_epoch")})
    write_json(TRAIN_DETAILS, summary)
    # Timing differs run to run, so it lives apart from the reproducible summary above.
    write_json(TRAIN_RUN_INFO, {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "resumed_from_step": step_of(resume_from),
        "runtime_s": round(runtime, 1),
        "train_samples_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 2),
    })
    finish(CHECKPOINT_DIR, fingerprint)  # the adapter is safe; checkpoints only served crash recovery
    log.info("best validation macro-F1 %.4f at epoch %s; adapter saved to %s", best["eval_macro_f1"], best["epoch"], ADAPTER_DIR)


def _validation_metrics(prediction) -> dict[str, float]:
    predicted = np.asarray(prediction.predictions).argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(prediction.label_ids, predicted)),
        "macro_f1": float(f1_score(prediction.label_ids, predicted, average="macro", zero_division=0)),
    }
