"""Loading tokenizers and models, attaching LoRA, and the adapter/merged model used downstream.

Everything goes through ``from_pretrained`` with either a hub id or a local folder, so the
same code serves the real Qwen3-0.6B job, an air-gapped copy of it, and the tiny test model.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from emotion_pipeline.config import LoraParams, ModelConfig
from emotion_pipeline.errors import UserError, first_line
from emotion_pipeline.paths import BASE_MODELS_DIR
from emotion_pipeline.sources import check_model_folder, not_local_either, resolve_source, warn_if_untracked

log = logging.getLogger(__name__)

# LoRA targets per architecture (config.model_type), used when lora.target_modules is 'auto'.
# Qwen3: every linear projection of attention (q/k/v/o) and of the SwiGLU MLP (gate/up/down).
# Adapting the MLP as well as attention is what matches full fine-tuning quality (QLoRA,
# Dettmers et al. 2023), at ~10M trainable parameters for r=8, about 1.7% of the 0.6B model.
# Architectures not listed get 'all-linear': every nn.Linear except the classification head.
LORA_TARGETS: dict[str, list[str]] = {
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def resolve_model(name: str, key: str = "model.name") -> str:
    """Where to load ``name`` from: an absolute local model folder, or a hub id (checked when loaded)."""
    source = resolve_source(name, key, "an existing local model folder (saved with save_pretrained) or a hub id "
                                       "such as Qwen/Qwen3-0.6B")
    if isinstance(source, Path):
        check_model_folder(name, source, key)
        warn_if_untracked(source, BASE_MODELS_DIR, key)
    return str(source)


def _hub_error(location: str, exc: Exception, key: str = "model.name") -> UserError:
    if Path(location).exists():
        return UserError(f"{key}: could not load the model in '{location}': {first_line(exc)}")
    return UserError(
        f"{key}: could not load '{location}' from the Hugging Face hub ({first_line(exc)}), and {not_local_either(location)}. "
        f"Offline, fetch it on a connected machine (hf download {location} --local-dir <folder>), copy the folder here "
        f"and set {key} to it."
    )


def load_tokenizer(source: str, trust_remote_code: bool = False, revision: str | None = None):
    """The tokenizer saved in ``source`` (a resolved model or adapter folder, or a hub id at ``revision``)
    with a pad token for batching."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc) from None
    if tokenizer.pad_token is None:
        # Decoder-only models (Qwen3 base among some releases) ship without a pad token. Reusing EOS
        # is safe here: the classifier pools the last non-pad token, and our texts never contain EOS.
        if tokenizer.eos_token is None:
            raise UserError(f"model.name: the tokenizer of '{source}' has neither a pad nor an EOS token to pad with.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier_base(location: str, cfg: ModelConfig, labels: list[str], pad_token_id: int,
                         dtype: torch.dtype) -> PreTrainedModel:
    """The base model at ``location`` (from resolve_model) with a classification head for ``labels``
    (newly initialised unless it matches)."""
    try:
        existing = AutoConfig.from_pretrained(location, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    except (OSError, ValueError) as exc:
        raise _hub_error(location, exc) from None
    _check_existing_head(cfg.name, existing, labels)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            location,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision,
            use_safetensors=True,
        )
    except (OSError, ValueError) as exc:
        raise _hub_error(location, exc) from None
    # Sequence classification pools the last non-pad token; without pad_token_id a batch of more
    # than one padded text cannot be classified (Qwen3 configs leave it unset).
    model.config.pad_token_id = pad_token_id
    return model


def trainable_model(location: str, cfg: ModelConfig, lora: LoraParams, labels: list[str], pad_token_id: int,
                    compute_dtype: torch.dtype) -> PreTrainedModel | PeftModel:
    """What the train stage trains: the base with a fresh head, LoRA on top (lora.enabled), every trained weight fp32.

    Mixed precision as PEFT advises it: the frozen base is loaded in ``compute_dtype`` (bf16 on a GPU that has it:
    half the memory), the Trainer's autocast runs the matmuls in it, and the weights that are updated (the LoRA
    matrices and the head; every weight in full fine-tuning) stay fp32, with fp32 AdamW state. PEFT upcasts the
    LoRA matrices itself, but its copy of the head (ModulesToSaveWrapper) keeps the base's dtype, and a bf16 weight
    (8 bits of mantissa) loses every update smaller than ~1/256 of itself: most of warm-up and of the decay.
    On a CPU everything is fp32 already and nothing changes.
    """
    base_dtype = compute_dtype if lora.enabled else torch.float32  # full fine-tuning: every weight is trained
    model = load_classifier_base(location, cfg, labels, pad_token_id, base_dtype)
    if lora.enabled:
        model = add_lora(model, lora)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model


def precision_record(model: PreTrainedModel | PeftModel, autocast: torch.dtype | None) -> dict:
    """The dtypes a run really trained with, for train_run.json: autocast, trained and frozen weights."""
    def names(trained: bool) -> list[str]:
        return sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad == trained})

    return {"autocast": None if autocast in (None, torch.float32) else str(autocast).removeprefix("torch."),
            "trainable": names(True), "frozen": names(False)}


def _check_existing_head(name: str, config, labels: list[str]) -> None:
    """A checkpoint that already is a classifier must have our classes, or its head would be silently dropped."""
    architectures = getattr(config, "architectures", None) or []
    is_classifier = any(arch.endswith("ForSequenceClassification") for arch in architectures)
    if is_classifier and config.num_labels != len(labels):
        raise UserError(
            f"model.name: '{name}' already has a classification head for {config.num_labels} classes "
            f"({', '.join(map(str, config.id2label.values()))}), but data.labels lists {len(labels)}. "
            f"Start from the base model instead, or make data.labels match the head."
        )


def lora_targets(model: PreTrainedModel, params: LoraParams) -> list[str] | str:
    if params.target_modules == "auto":
        return LORA_TARGETS.get(model.config.model_type, "all-linear")
    return params.target_modules


def trainable_parameters(model: PreTrainedModel | PeftModel) -> tuple[int, int]:
    """(trainable, total) parameter counts, with or without an adapter."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    return model.num_parameters(only_trainable=True), model.num_parameters()


def add_lora(model: PreTrainedModel, params: LoraParams) -> PeftModel:
    """Wrap ``model`` with LoRA; SEQ_CLS makes peft train and save the classification head in full."""
    targets = lora_targets(model, params)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=params.r, lora_alpha=params.alpha,
                        lora_dropout=params.dropout, target_modules=targets)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"lora.target_modules: {targets!r} does not fit {model.config.model_type} ({exc}). "
                        f"Use 'auto', 'all-linear' or module names that exist in the model.") from None
    _sort_set_fields(config)
    return peft_model


def _sort_set_fields(config: LoraConfig) -> None:
    """Replace the sets peft builds (target_modules, ...) by sorted lists.

    peft turns module lists into sets, and a set's order follows PYTHONHASHSEED: saved as is,
    adapter_config.json would differ between identical runs and DVC would re-run evaluate and export.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, (set, frozenset)):
            setattr(config, field.name, sorted(value))
