"""Typed, validated view of ``params.yaml``.

params.yaml is parsed once per stage into these objects; nothing else in the
project reads the YAML. Every field documents itself, and every constraint is
checked before any heavy work starts, so a typo such as ``train.lrr`` or a
negative learning rate stops the stage with a message that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emotion_pipeline.errors import UserError
from emotion_pipeline.paths import PARAMS_FILE

# compute.device and the predict command's --device (emotion_pipeline.device.choose_device).
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
# Marks a field whose value changes how a stage runs but never what it writes (where processes
# meet, how long they wait): a stage that reads it leaves it out of its dvc.yaml `params:`, so
# changing it re-runs nothing. tests/test_dvc_deps.py reads the mark.
NO_RESULT_EFFECT = {"changes_results": False}


def changes_results(section: type[BaseModel], key: str) -> bool:
    """False for a field marked NO_RESULT_EFFECT, else True."""
    extra = section.model_fields[key].json_schema_extra
    return not (isinstance(extra, dict) and extra.get("changes_results") is False)


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(Section):
    source: str = Field("dair-ai/emotion", description="Hub dataset id, or a local folder with train/validation/test files "
                        "(.txt 'text;label' lines, .csv, .jsonl or .parquet).")
    labels: list[str] = Field(["sadness", "joy", "love", "anger", "fear", "surprise"],
                              description="Class names; the position of a name is its class id.")
    revision: str | None = Field(None, description="Hub dataset revision (branch, tag or commit sha); pin a commit so "
                                 "that the same params always mean the same data. None: the default branch. Not used "
                                 "for local folders.")
    text_column: str = Field("text", min_length=1, description="Column holding the text (CSV/JSONL/Parquet/hub).")
    label_column: str = Field("label", min_length=1, description="Column holding the label (CSV/JSONL/Parquet/hub).")
    drop_label_issues: bool = Field(
        False, description="Drop the train texts whose label the audit flags as probably wrong (confident learning: "
        "emotion_pipeline.data.label_issues); validation and test are never changed. Off: train as given.")
    audit_fold: int | None = Field(None, ge=0, description="Hold out fold k (0-based) of train, the audit's folds, as the "
                                   "test split: the audit's fine-tune probabilities (its test scores are train scores). None: off.")
    audit_folds: int = Field(5, ge=2, description="How many folds of train data.audit_fold counts.")

    @field_validator("labels")
    @classmethod
    def _labels_are_distinct(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2:
            raise ValueError("needs at least two class names")
        if any(not name.strip() for name in labels):
            raise ValueError("class names must be non-empty")
        duplicates = sorted({name for name in labels if labels.count(name) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique; repeated: {', '.join(duplicates)}")
        return labels

    @model_validator(mode="after")
    def _audit_fold_fits(self) -> DataConfig:
        if self.audit_fold is not None and self.audit_fold >= self.audit_folds:
            raise ValueError(f"audit_fold {self.audit_fold} is not a fold of data.audit_folds = {self.audit_folds} "
                             f"(valid: 0 to {self.audit_folds - 1}, or null)")
        if self.audit_fold is not None and self.drop_label_issues:
            raise ValueError("audit_fold holds out rows of train as given: it cannot be combined with drop_label_issues: true")
        return self


class ModelConfig(Section):
    name: str = Field("Qwen/Qwen3-0.6B", min_length=1, description="Hub model id or local model folder.")
    revision: str | None = Field(None, description="Hub model revision (branch, tag or commit sha) for every load of "
                                 "model.name; None: the default branch. Not used for local folders.")
    max_length: int = Field(128, gt=0, description="Tokens kept per text; longer texts are truncated.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub; off for safety.")


class LoraParams(Section):
    enabled: bool = Field(True, description="False: no adapter, every weight of the model trains (full fine-tuning; "
                                            "for small encoders, with a much smaller train.lr). r, alpha, dropout and "
                                            "target_modules are then unused.")
    r: int = Field(8, gt=0, description="Rank of the LoRA update matrices.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["auto", "all-linear"] = Field("auto", description="Module names that get LoRA "
        "adapters; 'auto' picks per architecture (emotion_pipeline.training.modeling.LORA_TARGETS), 'all-linear' every "
        "linear layer but the head.")


class TrainConfig(Section):
    lr: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate (AdamW).")
    batch_size: int = Field(8, gt=0, description="Examples per device per optimiser step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches accumulated per optimiser step.")
    epochs: float = Field(3, gt=0, description="Passes over the training split.")
    warmup_steps: int = Field(500, ge=0, description="Linear warm-up steps before the linear decay.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    seed: int = Field(42, ge=0, description="Seed for weight init of the head, LoRA, dropout and data order.")
    eval_batch_size: int = Field(32, gt=0, description="Batch size for validation during training.")
    logging_steps: int = Field(50, gt=0, description="Optimiser steps between logged training losses.")
    group_by_length: bool = Field(True, description="Batch texts of similar length together to cut padding.")
    # Levers for the rare classes (love 8 %, surprise 4 % of train); all off by default, so the
    # seed recipe trains exactly as without them.
    class_weights: Literal["none", "balanced"] | list[Annotated[float, Field(gt=0)]] = Field(
        "none", description="Cross-entropy class weights: 'none', 'balanced' (n / (classes x count) from the train "
        "label counts), or one weight per class in data.labels order.")
    class_weight_power: float = Field(1.0, ge=0, le=1, description="Tempers 'balanced': each weight to this power "
                                      "(1: balanced, 0: no weights, between: part of the way).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss; 0: off.")
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many evaluations without a better validation macro-F1; 0: off.")
    fit_class_bias: bool = Field(
        False, description="After training, fit one logit bias per class on the validation split to maximise macro-F1; "
        "stored with the model and applied by every predict path (emotion_pipeline.training.class_bias).")


class ComputeConfig(Section):
    """Where and on how many processes the stages run. The train stage reads all of it; evaluate and
    export read only ``device``."""

    device: str = Field("auto", pattern=f"^({DEVICE_PATTERN})$",
                        description="auto (the GPU when torch sees one, else the CPU), cpu, cuda or cuda:<index>.")
    deterministic: bool = Field(
        True, description="Deterministic kernels, so the same params and data give the same weights. On a GPU, ops "
        "without a deterministic CUDA kernel then warn instead of failing; false: faster, not bit-reproducible.")
    portable: bool = Field(
        False, description="Cap the CPU kernel dispatch at AVX2 (ATen, MKL, oneDNN), so a CPU run gives the same bytes on "
        "any x86-64 host with AVX2, not only on hosts of one CPU kind; costs speed on CPUs with AVX-512 or AMX. Set "
        "before torch loads (python -m stages does it) and recorded in each output's environment block.")
    nproc_per_node: int = Field(1, gt=0, description="Training processes per machine (one per GPU); above 1 (or with "
                                "nnodes above 1), train runs under torchrun.")
    nnodes: int = Field(1, gt=0, description="Machines taking part in one training run (torchrun --nnodes).")
    rdzv_endpoint: str = Field("127.0.0.1:29400", pattern=r"^[^:\s]+:\d+$", description="host:port where the "
                               "processes of a multi-node run meet (torchrun --rdzv-endpoint); unused on one machine.",
                               json_schema_extra=NO_RESULT_EFFECT)
    rdzv_timeout_s: int = Field(600, gt=0, description="Seconds the nodes of a multi-node run wait at compute.rdzv_endpoint "
                                "for each other (torchrun's rendezvous join_timeout) before giving up with a message "
                                "naming what is missing; unused on one machine.", json_schema_extra=NO_RESULT_EFFECT)


class EvaluateConfig(Section):
    batch_size: int = Field(64, gt=0, description="Sentences per forward pass when predicting the test split.")


class MetricsConfig(Section):
    """How a test score is computed; shared by evaluate and baseline so their files compare."""

    calibration_bins: int = Field(10, gt=0, description="Confidence bins for expected calibration error.")
    top_mistakes: int = Field(50, ge=0, description="Most confident wrong predictions listed in the quality report.")
    # Intervals beside every test score and in comparisons of two models (emotion_pipeline.evaluation.uncertainty).
    bootstrap_resamples: int = Field(
        2000, ge=100, description="Bootstrap resamples of the test examples behind each interval; 2,000 keep the "
        "bounds within about 0.001 of their limit and cost about 0.5 s on 2,000 test examples.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals; 1 - confidence is the "
                              "significance level of a comparison's verdict.")
    bootstrap_seed: int = Field(0, ge=0, description="Seed of the resampling: the same predictions give the same intervals.")


class ExportConfig(Section):
    check_samples: int = Field(64, gt=0, description="Test sentences on which the export must agree with the adapter.")
    max_prob_diff: float = Field(1e-4, gt=0, description="Largest allowed probability difference in that check.")
    base_model_id: str | None = Field(
        None, description="Hub id named as base model on the model card; None: model.name when it is a hub id, "
        "or the id a local model folder's config came from. Never a local path.")
    dataset_id: str | None = Field(
        None, description="Hub id named as dataset on the model card; None: data.source when it is a hub id.")


class QuantizeConfig(Section):
    """The int8 CPU model (models/int8) built from the export, for serving without a GPU."""

    enabled: bool = Field(True, description="Build the int8 model; false: the stage writes only a note saying it is off.")
    max_f1_drop: float = Field(
        0.005, ge=0, description="Largest allowed test macro-F1 drop below the fp32 model; above it the stage fails "
        "and the previous models/int8 stays.")
    batch_size: int = Field(64, gt=0, description="Test sentences per forward pass when scoring the int8 model.")


class BaselineConfig(Section):
    """A search space, not one setting: the baseline is chosen on the validation split, never on test."""

    ngram_max: list[Annotated[int, Field(gt=0)]] = Field([1, 2], min_length=1, description="Longest word n-grams to try.")
    c: list[Annotated[float, Field(gt=0)]] = Field(
        [1.0, 3.0, 10.0, 30.0], min_length=1, description="Inverse regularisation strengths of the logistic regression to try.")
    class_weight: list[Literal["balanced"] | None] = Field(
        [None, "balanced"], min_length=1, description="Class weightings to try: null (none) or 'balanced'.")
    sublinear_tf: list[bool] = Field([True, False], min_length=1, description="Whether to try 1 + log(tf) term frequencies.")
    max_features: int | None = Field(None, gt=0, description="Vocabulary cap of the TF-IDF vectoriser; null: no cap.")
    seed: int = Field(42, ge=0, description="Seed of the solver.")


class Params(Section):
    """All of params.yaml. Each stage uses only its own sections."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraParams = LoraParams()
    train: TrainConfig = TrainConfig()
    compute: ComputeConfig = ComputeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    metrics: MetricsConfig = MetricsConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    baseline: BaselineConfig = BaselineConfig()


def read_yaml(path: Path, if_missing: str):
    """A YAML file's content; a UserError naming the file when it is missing (``if_missing``: what to do) or not YAML."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found: {if_missing}.") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise UserError naming the offending key."""
    path = Path(path)
    raw = read_yaml(path, "run the stage from the project root, where params.yaml lives")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of sections ({', '.join(Params.model_fields)}).")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: {validation_problems(exc, Params)}.") from None


def validation_problems(exc: ValidationError, root: type[BaseModel]) -> str:
    """pydantic's report on a settings file read into ``root`` as one sentence, one clause per problem, each naming
    its key: the one wording of params.yaml's and tune.yaml's errors."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            section_model = _model_at(err["loc"][:-1], root)
            valid = ", ".join(section_model.model_fields) if section_model else "?"
            problems.append(f"unknown key '{key}' (valid keys here: {valid})")
        elif key:
            problems.append(f"'{key}' is invalid: {problem_message(err)} (given: {err.get('input')!r})")
        else:
            problems.append(problem_message(err))
    return "; ".join(problems)


def problem_message(err: dict) -> str:
    """One of pydantic's errors in our words: its message without the 'Value error, ' that our validators get."""
    return err["msg"].removeprefix("Value error, ")


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model
