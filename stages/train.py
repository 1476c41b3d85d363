"""train: LoRA fine-tune of model.name on data/prepared -> models/adapter + metrics/train.json.

Reads params sections: model, lora, train, compute.

The story: load the prepared splits, tokenise them once, load the base model with a fresh
classification head, wrap it with LoRA, and let the HF Trainer run with dynamic padding and
length-grouped batches, evaluating macro-F1 on validation each epoch and keeping the best
epoch. Checkpoints go to models/checkpoints, a scratch folder DVC does not track, so a killed
run resumes where it stopped on the next `dvc repro`, provided params and data are unchanged.
With compute.nproc_per_node or compute.nnodes above 1, the stage re-runs itself under torchrun
(emotion_pipeline.distributed): each process trains on its share of every batch, and only global
rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import enable_full_determinism

from emotion_pipeline.checkpoints import (
    MarkCheckpointComplete,
    finish,
    resumable_checkpoint,
    run_fingerprint,
    step_of,
)
from emotion_pipeline.class_bias import cross_checked_class_bias, write_class_bias
from emotion_pipeline.config import load_params
from emotion_pipeline.device import best_dtype, choose_device
from emotion_pipeline.distributed import (
    LogWeightsChecksum,
    broadcast_from_rank0,
    die_with_launcher,
    run_torchrun,
    torchrun_args,
)
from emotion_pipeline.errors import UserError, under_torchrun
from emotion_pipeline.io import atomic_dir, write_json
from emotion_pipeline.modeling import add_lora, load_classifier_base, load_tokenizer, resolve_model, trainable_parameters
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
    model_cfg, lora_cfg, train_cfg, compute = params.model, params.lora, params.train, params.compute
    splits, labels = read_prepared(PREPARED_DIR)
    location = resolve_model(model_cfg.name)

    # More than one process: hand over to torchrun, which runs this stage once per process. Params,
    # data and model path were checked above, so a mistake is reported once, not by every process.
    if not under_torchrun() and (launch := torchrun_args(compute, "stages", "train")):
        log.info("launching %d processes: torchrun %s", compute.nproc_per_node * compute.nnodes, " ".join(launch))
        run_torchrun(launch)
        return
    if under_torchrun():
        die_with_launcher()

    device = choose_device(compute.device)
    dtype = best_dtype(device)
    # Seed before the model is built: the new classification head and LoRA matrices are random.
    set_seed(train_cfg.seed)
    tokenizer = load_tokenizer(location, model_cfg.trust_remote_code, model_cfg.revision)
    model = load_classifier_base(location, model_cfg, labels, tokenizer.pad_token_id, dtype)
    if lora_cfg.enabled:
        model = add_lora(model, lora_cfg)
    trainable, total = trainable_parameters(model)

    def tokenize(frame):
        dataset = datasets.Dataset.from_pandas(frame, preserve_index=False)
        dataset = dataset.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=model_cfg.max_length),
                              batched=True, remove_columns=["text"])
        return dataset.rename_column("label", "labels")

    train_set, validation_set = tokenize(splits["train"]), tokenize(splits["validation"])

    # Deterministic kernels: same params + data -> same weights. Some ops have no deterministic CUDA
    # kernel; on a GPU they warn (naming the op) rather than stop the run.
    deterministic_gpu = compute.deterministic and device.type == "cuda"
    if deterministic_gpu:
        enable_full_determinism(train_cfg.seed, warn_only=True)
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
        full_determinism=compute.deterministic and not deterministic_gpu,
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
        # On a CPU the Trainer syncs processes over gloo only when told it runs on the CPU.
        use_cpu=device.type == "cpu",
        ddp_find_unused_parameters=False,  # every trainable weight (LoRA, head) takes part in each forward pass
        # On, the Trainer multiplies the loss by the number of processes for models that accept loss
        # kwargs, expecting a sum over tokens; a classifier's loss is already a mean, so the reported
        # and back-propagated loss would double on 2 processes. Off, each process's mean is averaged.
        average_tokens_across_devices=False,
        report_to="none",  # dvclive is attached explicitly below, with dvcyaml=False
        dataloader_num_workers=0,
    )
    # From here on, in several processes, only global rank 0 writes: the fingerprint, the dvclive
    # log, the adapter and the metrics. The Trainer saves checkpoints from rank 0 only, too.
    writer = args.process_index == 0
    global_batch = train_cfg.batch_size * args.world_size * train_cfg.gradient_accumulation_steps
    if writer:
        log.info("%s on %s (%s): %s of %s parameters trainable (%.2f%%)", model_cfg.name, device.type,
                 str(dtype).removeprefix("torch."), f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        log.info("global batch %d = %d per process x %d process(es) x %d accumulation step(s)", global_batch,
                 train_cfg.batch_size, args.world_size, train_cfg.gradient_accumulation_steps)

    train_params = params.model_dump(include={"model", "lora", "train"})
    # A checkpoint resumes only on as many processes as wrote it: their data shards and RNG states.
    fingerprint = run_fingerprint({**train_params, "world_size": args.world_size}, PREPARED_DIR)
    resume_from = resumable_checkpoint(CHECKPOINT_DIR, fingerprint) if writer else None
    resume_from = broadcast_from_rank0(resume_from)  # every rank resumes from the same checkpoint

    live = open_live(TRAIN_LOG_DIR) if writer else None
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=validation_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # pad each batch to its own longest text
        compute_metrics=lambda prediction: validation_metrics(prediction, labels),
        # None when every lever is off: the model's own loss, exactly as the seed recipe trains.
        compute_loss_func=rare_class_loss(train_cfg, splits["train"]["label"].to_numpy(), len(labels)),
        callbacks=[LogAtEpochEnd(), LogWeightsChecksum(), MarkCheckpointComplete()]
        + ([LiveLogger(live)] if writer else [])
        + ([EarlyStoppingCallback(train_cfg.early_stopping_patience)] if train_cfg.early_stopping_patience else []),
    )

    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    runtime = time.perf_counter() - started
    # The fitted-bias lever: validation logits of the kept epoch (every rank takes part in predicting).
    class_bias = bias_check = None
    if train_cfg.fit_class_bias:
        validation = trainer.predict(validation_set)
        class_bias, bias_check = cross_checked_class_bias(np.asarray(validation.predictions), validation.label_ids)
    if not writer:
        return

    # load_best_model_at_end: trainer.model now holds the epoch with the best validation macro-F1.
    with atomic_dir(ADAPTER_DIR) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_labels(staging, labels)
        if class_bias is not None:  # evaluate and export put it into the model (emotion_pipeline.class_bias)
            write_class_bias(staging, class_bias, labels)
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
    if bias_check is not None:
        summary["class_bias_check"] = bias_check
        log.info("class bias %s: on held-out halves of validation it moves macro-F1 %.4f -> %.4f",
                 "kept" if bias_check["kept"] else "not kept", bias_check["held_out_macro_f1_without"],
                 bias_check["held_out_macro_f1_with"])
    if class_bias is not None:
        biased = validation_metrics(SimpleNamespace(predictions=validation.predictions + class_bias,
                                                    label_ids=validation.label_ids), labels)
        summary["class_bias"] = {name: round(float(value), 6) for name, value in zip(labels, class_bias)}
        summary["val_macro_f1_with_bias"] = round(biased["macro_f1"], 6)
        summary["val_accuracy_with_bias"] = round(biased["accuracy"], 6)
        log.info("class bias fitted on validation: macro-F1 %.4f -> %.4f", best["eval_macro_f1"], biased["macro_f1"])
    # The best validation scores are the headline; the whole summary is a plain output.
    write_json(TRAIN_METRICS, {key: summary[key] for key in ("val_macro_f1", "val_accuracy", "best_epoch")})
    write_json(TRAIN_DETAILS, summary)
    # How the run was computed (timing differs run to run), apart from the reproducible summary above.
    write_json(TRAIN_RUN_INFO, {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "processes": args.world_size,
        "global_batch_size": global_batch,
        "resumed_from_step": step_of(resume_from),
        "runtime_s": round(runtime, 1),
        "train_samples_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 2),
    })
    finish(CHECKPOINT_DIR, fingerprint)  # the adapter is safe; checkpoints only served crash recovery
    log.info("best validation macro-F1 %.4f at epoch %s; adapter saved to %s", best["eval_macro_f1"], best["epoch"], ADAPTER_DIR)


def class_weight_vector(setting: str | list[float], train_labels: np.ndarray, num_labels: int) -> np.ndarray | None:
    """train.class_weights as one weight per class: 'balanced' is n / (classes x count), as scikit-learn's."""
    if setting == "none":
        return None
    if setting == "balanced":
        counts = np.bincount(train_labels, minlength=num_labels)
        return len(train_labels) / (num_labels * np.maximum(counts, 1))
    if len(setting) != num_labels:
        raise UserError(f"'train.class_weights' = {setting} is invalid: needs one weight per class ({num_labels}, "
                        f"in data.labels order), or 'none' or 'balanced'.")
    return np.asarray(setting, dtype=np.float64)


def rare_class_loss(cfg, train_labels: np.ndarray, num_labels: int):
    """A Trainer loss function with class weights and/or label smoothing; None when both are off."""
    weights = class_weight_vector(cfg.class_weights, train_labels, num_labels)
    if weights is None and cfg.label_smoothing == 0:
        return None
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits.float()
        total = F.cross_entropy(logits, labels, weight=None if weight is None else weight.to(logits.device),
                                label_smoothing=cfg.label_smoothing, reduction="sum")
        # Trainer expects a loss normalised by the examples of the whole accumulated batch.
        return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    return loss


def validation_metrics(prediction, labels: list[str]) -> dict[str, float]:
    """Scores of one validation pass: accuracy, macro-F1 (picks the best epoch) and F1 per class.

    Per-class F1 goes to the dvclive log as curves (eval/f1_<class>), so the rare classes, where
    macro-F1 is lost, are visible per epoch and in `dvc plots diff` across experiments.
    """
    predicted = np.asarray(prediction.predictions).argmax(axis=-1)
    class_ids = list(range(len(labels)))
    per_class = f1_score(prediction.label_ids, predicted, labels=class_ids, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(prediction.label_ids, predicted)),
        "macro_f1": float(f1_score(prediction.label_ids, predicted, labels=class_ids, average="macro", zero_division=0)),
        **{f"f1_{name}": float(score) for name, score in zip(labels, per_class)},
    }
