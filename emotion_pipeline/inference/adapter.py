"""A trained run's model as evaluate and export load it: the base from model.name plus the adapter, head and
tokenizer from models/adapter (or the whole fine-tuned classifier saved there), and LoRA merged into the base."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
)

from emotion_pipeline.config import ModelConfig
from emotion_pipeline.data.prepared import read_labels
from emotion_pipeline.errors import UserError
from emotion_pipeline.training.modeling import load_classifier_base, load_tokenizer, resolve_model


def merged(model: PeftModel | PreTrainedModel) -> PreTrainedModel:
    """A plain transformers model: LoRA folded into the base weights (as cheap to run as the base), or
    a fully fine-tuned model as it is."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def load_adapter_model(cfg: ModelConfig, adapter_dir: Path, device: torch.device,
                       dtype: torch.dtype = torch.float32) -> tuple[PeftModel | PreTrainedModel, object]:
    """Base model from ``model.name`` plus the trained adapter, head and tokenizer from ``adapter_dir``,
    on ``device`` and in eval mode; or, after full fine-tuning (lora.enabled false), the whole trained
    classifier saved there.

    The base comes from params, not from the adapter's base_model_name_or_path, so a base that
    was moved (or built from a config, which records no name) still loads.
    """
    has_adapter = (adapter_dir / "adapter_config.json").is_file()
    if not has_adapter and not (adapter_dir / "config.json").is_file():
        raise UserError(f"{adapter_dir}: no trained adapter found; run the train stage first (dvc repro train).")
    tokenizer = load_tokenizer(str(adapter_dir))
    if not has_adapter:  # lora.enabled false: train saved the whole fine-tuned classifier
        model = AutoModelForSequenceClassification.from_pretrained(adapter_dir, dtype=dtype, use_safetensors=True,
                                                                   trust_remote_code=cfg.trust_remote_code)
    else:
        labels = read_labels(adapter_dir)
        base = load_classifier_base(resolve_model(cfg.name), cfg, labels, tokenizer.pad_token_id, dtype)
        model = PeftModel.from_pretrained(base, adapter_dir)
    model.to(device).eval()
    return model, tokenizer
