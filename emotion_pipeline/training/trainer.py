"""The HF Trainer as the train stage runs it: its settings from the train section (AdamW, warm-up and decay, an
evaluation and a checkpoint per epoch, the best epoch kept), the tokenised splits, the callbacks, the validation scores."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from sklearn.metrics import f1_score
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments

from emotion_pipeline.config import ComputeConfig, TrainConfig
from emotion_pipeline.evaluation.scores import accuracy, macro_f1
from emotion_pipeline.paths import CHECKPOINT_DIR, TRAIN_LOG_DIR
from emotion_pipeline.search.trial import pruning_callback
from emotion_pipeline.training.checkpoints import MarkCheckpointComplete
from emotion_pipeline.training.ddp import LogWeightsChecksum
from emotion_pipeline.training.losses import rare_class_loss
from emotion_pipeline.training.train_log import LiveLogger, LogAtEpochEnd


def build_trainer(model, tokenizer, args: TrainingArguments, train_set, validation_set, cfg: TrainConfig,
                  labels: list[str], train_labels: np.ndarray) -> Trainer:
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=validation_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # pad each batch to its own longest text
        compute_metrics=lambda prediction: validation_metrics(prediction, labels),
        # None when every lever is off: the model's own loss, exactly as the seed recipe trains.
        compute_loss_func=rare_class_loss(cfg, train_labels, len(labels)),
        callbacks=[LogAtEpochEnd(), LogWeightsChecksum(), MarkCheckpointComplete(), LiveLogger(TRAIN_LOG_DIR)]
        + ([EarlyStoppingCallback(cfg.early_stopping_patience)] if cfg.early_stopping_patience else [])
        # In a tune trial with pruning on (emotion_pipeline.tune), each epoch's score goes to the trial.
        + ([reporter] if (reporter := pruning_callback()) else []),
    )


def tokenized(frame, tokenizer, max_length: int) -> datasets.Dataset:
    """A prepared split as token ids (no padding) and ``labels``, the column name the Trainer expects."""
    # One call over the whole split, not Dataset.map: map fingerprints its function by pickling what the
    # function holds, here the tokenizer with its 151,669-token vocabulary, seconds per split for a cache
    # this stage never reads.
    encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({"labels": frame["label"].tolist(), **encoded})


def training_arguments(cfg: TrainConfig, compute: ComputeConfig, device: torch.device, dtype: torch.dtype) -> TrainingArguments:
    """The HF Trainer's settings for the train section: AdamW with linear warm-up and decay, an evaluation and
    a checkpoint per epoch, the best epoch by validation macro-F1 kept at the end."""
    # Deterministic kernels: on the CPU the Trainer's full_determinism; on a GPU, make_deterministic (in main).
    return TrainingArguments(
        output_dir=str(CHECKPOINT_DIR),
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.epochs,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        seed=cfg.seed,
        data_seed=cfg.seed,
        full_determinism=compute.deterministic and device.type == "cpu",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,  # the best and the latest epoch: enough to resume and to pick the best
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        bf16=dtype == torch.bfloat16,
        # On a CPU the Trainer syncs processes over gloo only when told it runs on the CPU.
        use_cpu=device.type == "cpu",
        ddp_find_unused_parameters=False,  # every trainable weight (LoRA, head) takes part in each forward pass
        # On, the Trainer multiplies the loss by the number of processes for models that accept loss
        # kwargs, expecting a sum over tokens; a classifier's loss is already a mean, so the reported
        # and back-propagated loss would double on 2 processes. Off, each process's mean is averaged.
        average_tokens_across_devices=False,
        report_to="none",  # dvclive is attached explicitly (LiveLogger), with dvcyaml=False
        dataloader_num_workers=0,
    )


def validation_metrics(prediction, labels: list[str]) -> dict[str, float]:
    """Scores of one validation pass: accuracy, macro-F1 (picks the best epoch) and F1 per class.

    Per-class F1 goes to the dvclive log as curves (eval/f1_<class>), so the rare classes, where
    macro-F1 is lost, are visible per epoch and in `dvc plots diff` across experiments.
    """
    predicted = np.asarray(prediction.predictions).argmax(axis=-1)
    per_class = f1_score(prediction.label_ids, predicted, labels=list(range(len(labels))), average=None, zero_division=0)
    return {
        "accuracy": accuracy(prediction.label_ids, predicted),
        "macro_f1": macro_f1(prediction.label_ids, predicted, len(labels)),
        **{f"f1_{name}": float(score) for name, score in zip(labels, per_class)},
    }
