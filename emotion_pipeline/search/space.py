"""A study's settings and search space (tune.yaml, typed and checked against params.yaml), and what Optuna makes
of them: distributions, a grid, the sampler, the pruner's settings; `-S key=value` as a trial passes its params."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emotion_pipeline.config import Params, Section, problem_message, read_yaml, validation_problems
from emotion_pipeline.errors import UserError
from emotion_pipeline.paths import PARAMS_FILE

# Objectives that would choose params on the test split, whose scores must stay an unbiased estimate.
TEST_METRIC_FILES = ("metrics/test.json", "metrics/test_details.json", "metrics/int8.json", "metrics/int8_details.json",
                     "metrics/baseline.json", "metrics/baseline_details.json")


Scalar = bool | int | float | str | None


class SearchRange(BaseModel):
    """One param's search space: `choices`, or a `low`..`high` range (integers when both ends are)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: int | float | None = Field(None, description="Smallest value (inclusive).")
    high: int | float | None = Field(None, description="Largest value (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (learning rates): low must be > 0.")
    step: int | float | None = Field(None, description="Only values low + k x step (no log scale with a step).")
    choices: list[Scalar] | None = Field(None, min_length=1, description="The values to choose from (numbers, strings, "
                                                                         "true/false, null).")

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        if self.choices is not None:
            if (self.low, self.high, self.step) != (None, None, None) or self.log:
                raise ValueError("give either 'choices' or 'low'/'high' (with 'log' or 'step'), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give 'low' and 'high' (a range) or 'choices' (a list)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("'log' and 'step' cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0 (got {self.step})")
        return self

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in (self.low, self.high, self.step if self.step is not None else 1))


class TuneConfig(Section):
    """tune.yaml: what to search, how, and for how long."""

    study: str = Field("emotion", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.]*$",
                       description="Study name; its trials run as experiments named <study>-<trial number> (so no '-').")
    objective: str = Field("metrics/train.json:val_macro_f1", pattern=r"^[^:]+\.json:[^:]+$",
                           description="<metrics file>:<key> the trial's experiment writes; validation, never test.")
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="tpe (Bayesian), random, or grid (every "
                                                                       "combination of choices / stepped ranges).")
    seed: int = Field(0, description="Seeds the sampler: the same study file proposes the same first trials.")
    trials: int = Field(20, ge=1, description="Finished trials (complete or pruned) the study runs to.")
    jobs: int = Field(1, ge=1, description="Trials running at once on this machine (DVC queue workers).")
    max_failed_trials: int = Field(5, ge=1, description="This command stops after this many failed trials of its own.")
    targets: list[str] = Field(["evaluate"], min_length=1,
                               description="dvc.yaml stages each trial runs up to; evaluate gives predictions for compare.")
    storage: str | None = Field(None, description="Optuna storage URL; null: sqlite file tune/optuna.db in the project.")
    pruner: Literal["none", "median", "threshold"] = Field("none", description="Stop unpromising trials after an epoch: "
                                                           "median (worse than the median of earlier trials at that "
                                                           "epoch) or threshold (below prune_below).")
    pruner_startup_trials: int = Field(2, ge=0, description="median: finished trials before any pruning.")
    pruner_warmup_epochs: int = Field(0, ge=0, description="Epochs every trial runs before it can be pruned.")
    prune_below: float | None = Field(None, description="threshold: prune a trial whose epoch score is below this.")
    space: dict[str, SearchRange] = Field(..., min_length=1, description="Per params.yaml key (section.key), its range.")

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        file = self.objective.split(":")[0]
        if file in TEST_METRIC_FILES:
            raise ValueError(f"objective '{self.objective}' is a test score: choosing params on the test split makes its "
                             f"scores optimistic. Use a validation score, e.g. metrics/train.json:val_macro_f1")
        if self.pruner != "none" and self.objective_key not in EPOCH_METRICS:
            raise ValueError(f"pruner '{self.pruner}' follows the objective epoch by epoch, which exists for "
                             f"{', '.join('metrics/train.json:' + k for k in EPOCH_METRICS)} only")
        if self.pruner == "threshold" and self.prune_below is None:
            raise ValueError("pruner 'threshold' needs prune_below (the lowest epoch score a trial may have)")
        if self.sampler == "grid":
            for key, spec in self.space.items():
                if spec.choices is None and spec.step is None and not spec.is_int:
                    raise ValueError(f"sampler 'grid' needs choices or a step for every param; '{key}' has neither")
        return self

    @property
    def objective_file(self) -> str:
        return self.objective.split(":")[0]

    @property
    def objective_key(self) -> str:
        return self.objective.split(":")[1]


def load_tune_config(path: Path, overrides: dict) -> TuneConfig:
    """tune.yaml with the command line's overrides, checked; every problem is one paragraph naming the key."""
    raw = read_yaml(path, "write the search space there (README, 'Search'), or give --config")
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of settings ({', '.join(TuneConfig.model_fields)}).")
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        config = TuneConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: {validation_problems(exc, TuneConfig)}.") from None
    check_space_against_params(config.space, path)
    return config


def check_space_against_params(space: dict[str, SearchRange], path: Path) -> None:
    """Each key must be a params.yaml key, and each end of its range (each choice) a value its stages accept."""
    params = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8")) or {}
    for key, spec in space.items():
        section, _, field = key.partition(".")
        model = Params.model_fields.get(section)
        if not field or "." in field or model is None or field not in model.annotation.model_fields:
            known = ", ".join(f"{s}.<key>" for s in Params.model_fields)
            raise UserError(f"{path}: space key '{key}' is not a params.yaml key (give section.key, one of {known}; "
                            f"e.g. train.lr, lora.r).")
        for value in spec.choices if spec.choices is not None else (spec.low, spec.high):
            candidate = {**params, section: {**params.get(section, {}), field: value}}
            try:
                Params.model_validate(candidate)
            except ValidationError as exc:
                message = "; ".join(problem_message(err) for err in exc.errors())
                raise UserError(f"{path}: space '{key}': {value!r} is not a valid {key} ({message}).") from None


def distributions(config: TuneConfig) -> dict:
    """The space as Optuna distributions, in tune.yaml order."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    result = {}
    for key, spec in config.space.items():
        if spec.choices is not None:
            result[key] = CategoricalDistribution(spec.choices)
        elif spec.is_int:
            result[key] = IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step or 1)
        else:
            result[key] = FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)
    return result


def grid(config: TuneConfig) -> dict[str, list]:
    """Every value of each param, for the grid sampler."""
    values = {}
    for key, spec in config.space.items():
        if spec.choices is not None:
            values[key] = list(spec.choices)
        else:
            step = spec.step or 1
            count = int(round((spec.high - spec.low) / step)) + 1
            values[key] = [spec.low + i * step for i in range(count)] if spec.is_int else \
                [round(spec.low + i * step, 12) for i in range(count)]
    return values


def sampler_for(config: TuneConfig, trials_so_far: int):
    """The sampler that proposes the next trial, seeded with tune.yaml's seed + the number of trials the study
    already has: a study run again from scratch proposes the same trials, and two commands sharing a study
    never draw the same random numbers (each asks in turn, so each sees a different count)."""
    import optuna

    seed = config.seed + trials_so_far
    return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "grid": lambda: optuna.samplers.GridSampler(grid(config), seed=seed)}[config.sampler]()


def pruner_settings(config: TuneConfig) -> dict:
    return {"type": config.pruner, "startup_trials": config.pruner_startup_trials,
            "warmup_epochs": config.pruner_warmup_epochs, "prune_below": config.prune_below}


def override(key: str, value: Scalar) -> str:
    """One `-S key=value` for DVC's override parser (the Hydra grammar): floats in full precision, and a string
    quoted unless it is a plain word that cannot be read as a number, bool or null."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = str(value)
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) and value.lower() not in ("true", "false", "null", "none", "nan", "inf"):
        text = value
    else:
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"


# metrics/train.json keys a pruner can follow epoch by epoch, and the Trainer's name for each per-epoch value.
EPOCH_METRICS = {"val_macro_f1": "eval_macro_f1", "val_accuracy": "eval_accuracy"}
