"""Hyperparameter search whose every trial is an ordinary DVC experiment: Optuna's ask-and-tell loop over
`dvc exp run --queue`.

    python -m emotion_pipeline.tune                      # the study in tune.yaml, to its number of trials
    python -m emotion_pipeline.tune --trials 30 --jobs 2 # more trials, two at a time (DVC queue workers)
    python -m emotion_pipeline.tune --report             # the results of the study so far, nothing run

The story: read and check the search space (tune.yaml); open the study in its Optuna storage (a SQLite
file in the project by default, `tune/optuna.db`, git-ignored, not a DVC output); take over the trials a
killed earlier run of this command left behind; then, until the study has its number of finished trials,
ask Optuna for a trial, queue it as the experiment `<study>-<trial number>` with `-S` for its params, keep
`--jobs` DVC queue workers busy, and tell Optuna each result as it lands: the objective read from the
experiment's own metrics file (validation macro-F1 by default, never a test score), or failed with the
stage's one-paragraph error, or pruned (emotion_pipeline.tune_trial). At the end: the table of trials, the
best one, Optuna's history and importance plots as PNG files, and the command that adopts the winner.

Trials are experiments like any other: `dvc exp show`, `dvc plots diff`, `dvc exp push`, `compare` and
`aggregate` work on them; stages whose inputs a trial does not change (prepare, baseline) come from DVC's
run cache. Several machines share one study through an RDB storage URL (`--storage postgresql://...`),
each running this command in its own clone with `--push <remote>` (README, "Search").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emotion_pipeline.config import Params, Section, read_yaml
from emotion_pipeline.errors import UserError, first_line, run_command
from emotion_pipeline.paths import PARAMS_FILE
from emotion_pipeline.tune_trial import (
    EPOCH_METRICS,
    PRUNED_AT_EPOCH,
    TRIALS_DIR,
    absolute_storage_url,
    make_pruner,
    open_storage,
    write_trial_file,
)

TUNE_FILE = Path("tune.yaml")
STUDY_DIR = Path("tune")  # storage, trial files and reports; git-ignored
DEFAULT_STORAGE_FILE = STUDY_DIR / "optuna.db"
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


# --------------------------------------------------------------------------- the search space


def load_tune_config(path: Path, overrides: dict) -> TuneConfig:
    """tune.yaml with the command line's overrides, checked; every problem is one paragraph naming the key."""
    raw = read_yaml(path, "write the search space there (README, 'Search'), or give --config")
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of settings ({', '.join(TuneConfig.model_fields)}).")
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        config = TuneConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"unknown key '{key}' (valid: {', '.join(TuneConfig.model_fields)})"
                            if err["type"] == "extra_forbidden" and len(err["loc"]) == 1 else
                            f"'{key}' is invalid: {message}" if key else message)
        raise UserError(f"{path}: " + "; ".join(problems) + ".") from None
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
                message = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
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


def open_study(config: TuneConfig, storage_url: str):
    import optuna

    sampler = sampler_for(config, 0)
    pruner = make_pruner(pruner_settings(config))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=config.study, storage=open_storage(storage_url), sampler=sampler,
                                    pruner=pruner, direction=config.direction, load_if_exists=True)
    except Exception as exc:  # noqa: BLE001  SQLAlchemy/driver errors share no base class worth naming here
        raise UserError(f"storage '{storage_url}': cannot open the study ({first_line(exc)}). Give a reachable Optuna "
                        f"storage URL with --storage or tune.yaml's storage (e.g. sqlite:///tune/optuna.db, "
                        f"postgresql://user@host/db).") from None
    if study.direction.name.lower() != config.direction:
        raise UserError(f"study '{config.study}' in {storage_url} was created to {study.direction.name.lower()}, tune.yaml "
                        f"says direction: {config.direction}. Name a new study (--study) or fix the direction.")
    return study


# --------------------------------------------------------------------------- trials as DVC experiments


@dataclass
class Running:
    """A trial this command waits for: the Optuna trial (its attributes live in the storage) and its experiment."""

    trial: object  # optuna.trial.Trial
    experiment: str
    started: float

    @property
    def number(self) -> int:
        return self.trial.number


def experiment_name(study: str, number: int) -> str:
    return f"{study}-{number}"


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


def dvc(*args: str, check: bool = True, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """A dvc command in this project, through this interpreter's DVC. Its bin folder goes first on PATH: DVC
    starts queue workers as `dvc` from PATH, which must be this DVC even when the venv is not activated.
    With timeout_s, a command still running then is killed and subprocess.TimeoutExpired raised."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env,
                            timeout=timeout_s)
    if check and result.returncode != 0:
        raise UserError(f"dvc {' '.join(args[:3])} failed: {last_error(result.stderr + result.stdout)}")
    return result


class TrialNotRun(Exception):
    """A trial that failed before its experiment could run (its params do not fit, DVC refused to queue it)."""

    def __init__(self, trial, message: str):
        super().__init__(message)
        self.trial = trial


def ask(study, config: TuneConfig, space: dict):
    """The next trial, claimed at once. An enqueued trial whose params do not fit the space (a log-scale value
    <= 0, a choice not in the list) makes Optuna raise after creating it: that trial is failed with the reason."""
    from optuna.trial import Trial, TrialState

    study.sampler = sampler_for(config, len(study.get_trials(deepcopy=False)))
    try:
        trial = study.ask(space)
    except ValueError as exc:
        orphans = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if "owner" not in t.user_attrs]
        if orphans:
            trial = Trial(study, orphans[-1]._trial_id)
            claim(trial)
            raise TrialNotRun(trial, f"its enqueued params do not fit the search space ({first_line(exc)})") from None
        raise
    claim(trial)
    return trial


def queue_trial(config: TuneConfig, storage_url: str, trial, project: Path) -> Running:
    """Queue one trial as an experiment; record who waits for it (so a later run can take it over)."""
    name = experiment_name(config.study, trial.number)
    epoch_metric = EPOCH_METRICS[config.objective_key] if config.pruner != "none" else None
    write_trial_file(project, name, storage_url, config.study, trial._trial_id, trial.number, epoch_metric,
                     pruner_settings(config))
    trial.set_user_attr("experiment", name)
    try:
        dvc("exp", "run", "--queue", "--name", name, *[arg for key, value in trial.params.items()
                                                      for arg in ("-S", override(key, value))], *config.targets)
    except UserError as exc:
        raise TrialNotRun(trial, str(exc)) from None
    return Running(trial, name, time.monotonic())


def claim(trial) -> None:
    """Mark the trial as waited for by this process (host, pid and start time: a pid alone may be reused)."""
    import psutil

    trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid(),
                                  "started": psutil.Process().create_time()})


def owner_alive(trial) -> bool:
    """Whether the process that asked for a trial still waits for it. Another machine's trials count as alive;
    so does a trial without an owner for its first minute (it is claimed right after it is asked for)."""
    import datetime

    import psutil

    owner = trial.user_attrs.get("owner")
    if owner is None:
        started = trial.datetime_start or datetime.datetime.now()
        return (datetime.datetime.now() - started).total_seconds() < 60
    if owner.get("host") != socket.gethostname():
        return True
    try:
        return psutil.Process(owner["pid"]).create_time() == owner["started"]
    except psutil.NoSuchProcess:
        return False


# `dvc exp show` lists the running experiments, then opens each one's copy under .dvc/tmp/exps/. An experiment
# that finishes in between has removed its copy, and the command fails in one of several ways, each seen in CI:
# "directory '.../.dvc/tmp/exps/tmpXXXX/.dvc' does not exist", "_pygit2.NotFoundError: object not found", or no
# answer at all (its git library, pygit2's BlobIO, waits forever on a read of the vanished copy; pygit2 issue
# #1488 is a deadlock of the same reader). A moment later the experiment is listed as finished. So a failure or
# a command that outlives EXP_SHOW_TIMEOUT_S (alone it answers in seconds, under load in well under a minute) is
# asked again; only the last of EXP_SHOW_ATTEMPTS tries is reported.
EXP_SHOW_ATTEMPTS = 5
EXP_SHOW_TIMEOUT_S = 120.0


def show_experiments(attempts: int = EXP_SHOW_ATTEMPTS, pause_s: float = 2.0,
                     timeout_s: float = EXP_SHOW_TIMEOUT_S) -> list:
    """`dvc exp show --json`, asked up to `attempts` times while it fails or does not answer within timeout_s."""
    for attempt in range(1, attempts + 1):
        try:
            result = dvc("exp", "show", "--json", check=False, timeout_s=timeout_s)
        except subprocess.TimeoutExpired:
            problem = f"it did not answer within {timeout_s:g} s"
        else:
            if result.returncode == 0:
                return json.loads(result.stdout or "[]")
            problem = last_error(result.stderr + result.stdout)
        if attempt < attempts:
            time.sleep(pause_s)
    raise UserError(f"dvc exp show --json failed {attempts} times in a row; the last time: {problem}")


def experiment_rows() -> dict[str, dict]:
    """Every experiment of the project by name, from `dvc exp show --json`: executor state, log, params, metrics."""
    shown = show_experiments()
    rows = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            revision = (experiment.get("revs") or [{}])[0]
            executor = experiment.get("executor") or {}
            rows[experiment["name"]] = {"state": executor.get("state") or ("success" if revision.get("data") else None),
                                        "log": (executor.get("local") or {}).get("log"),
                                        "rev": revision.get("rev"), "data": revision.get("data") or {}}
    return rows


def objective_value(row: dict, config: TuneConfig) -> float | None:
    metrics = row["data"].get("metrics") or {}
    value = ((metrics.get(config.objective_file) or {}).get("data") or {}).get(config.objective_key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def last_error(text: str) -> str:
    """The one-paragraph error a failed experiment printed: our stages' `error: ...` line, else DVC's last ERROR."""
    ours = re.search(r"(?<![A-Za-z_])error: (.+)", text)  # not always at a line start: a progress bar may precede it
    if ours:
        return ours.group(1).strip()
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    theirs = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
    return theirs[-1] if theirs else lines[-1] if lines else "no output"


def failure_message(row: dict) -> str:
    log = Path(row["log"]) if row.get("log") else None
    if log is None or not log.is_file():
        return "the experiment failed (no log kept; see `dvc queue logs`)"
    return last_error(log.read_text(encoding="utf-8", errors="replace"))


def settle(study, config: TuneConfig, run: Running, row: dict, push: str | None) -> str:
    """Tell Optuna how a finished experiment went; the one line this command prints about it."""
    from optuna.trial import TrialState

    elapsed = time.monotonic() - run.started
    run.trial.set_user_attr("wall_time_s", round(elapsed, 1))
    if row["state"] == "success":
        value = objective_value(row, config)
        if value is None:
            run.trial.set_user_attr("error", f"no {config.objective} in the experiment's metrics")
            study.tell(run.number, state=TrialState.FAIL)
            return f"trial {run.number} ({run.experiment}) failed: no {config.objective} in its metrics (targets: " \
                   f"{' '.join(config.targets)})"
        study.tell(run.number, value)
        if push:
            dvc("exp", "push", push, run.experiment)
        return f"trial {run.number} ({run.experiment}) {config.objective_key} = {value:.6g} in {elapsed:.0f} s"
    # Read from the storage: the train stage set it there (a Trial object keeps the attributes it started with).
    pruned_at = stored_trial(study, run.number).user_attrs.get(PRUNED_AT_EPOCH)
    if pruned_at is not None:
        study.tell(run.number, state=TrialState.PRUNED)
        return f"trial {run.number} ({run.experiment}) pruned after epoch {pruned_at}"
    message = failure_message(row)
    run.trial.set_user_attr("error", message)
    study.tell(run.number, state=TrialState.FAIL)
    return f"trial {run.number} ({run.experiment}) failed: {message}"


def stored_trial(study, number: int):
    """A trial as the storage has it now (other processes may have changed it since this one asked)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def trial_state(study, number: int):
    return stored_trial(study, number).state


def take_over(study, config: TuneConfig, rows: dict[str, dict]) -> Iterator[Running]:
    """The trials a killed run of this command left RUNNING: adopted while their experiment is queued or
    running (DVC's queue workers outlive the command), settled if it finished, failed and retried (its
    params queued again) if no experiment ever came of it."""
    from optuna.trial import Trial, TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_alive(frozen):
            continue
        trial = Trial(study, frozen._trial_id)
        name = frozen.user_attrs.get("experiment")
        row = rows.get(name) if name else None
        if row is None:
            trial.set_user_attr("error", "interrupted before its experiment was queued")
            study.tell(frozen.number, state=TrialState.FAIL)
            study.enqueue_trial(frozen.params, skip_if_exists=False)
            print(f"trial {frozen.number}: interrupted before it was queued; its params are tried again", file=sys.stderr)
            continue
        claim(trial)
        print(f"trial {frozen.number} ({name}): taken over from an earlier run ({row['state']})", file=sys.stderr)
        yield Running(trial, name, time.monotonic())


def run_fingerprint(project: Path) -> tuple:
    """A cheap sign that some queued experiment changed state: DVC's executor info files, their sizes and times."""
    files = sorted((project / ".dvc" / "tmp" / "exps" / "run").glob("*/*.run"))
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def running_count(study) -> int:
    """Trials running anywhere (this command, another one, another machine). Not WAITING ones: those are
    params queued for the next ask (a retried trial), which the ask below runs first."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_study(config: TuneConfig, storage_url: str, push: str | None) -> None:
    from filelock import FileLock
    from optuna.trial import TrialState

    project = Path.cwd()
    study = open_study(config, storage_url)
    space = distributions(config)
    running = {run.experiment: run for run in take_over(study, config, experiment_rows())}
    failed = 0
    # Several commands on one SQLite study (on this machine) ask in turn, so they stop at exactly `trials`.
    ask_lock = FileLock(str(project / STUDY_DIR / f".{config.study}.ask.lock"))
    fingerprint, last_look, last_start = None, 0.0, 0.0
    print(f"study '{config.study}' ({storage_url}): {finished_count(study)} of {config.trials} trials finished; "
          f"{config.jobs} at a time", file=sys.stderr)
    try:
        while True:
            with ask_lock:
                while len(running) < config.jobs and finished_count(study) + running_count(study) < config.trials:
                    try:
                        trial = ask(study, config, space)
                        run = queue_trial(config, storage_url, trial, project)
                    except TrialNotRun as exc:
                        exc.trial.set_user_attr("error", str(exc))
                        study.tell(exc.trial.number, state=TrialState.FAIL)
                        print(f"trial {exc.trial.number} failed before it ran: {exc}", file=sys.stderr)
                        failed += 1
                        if failed >= config.max_failed_trials:
                            raise too_many_failures(config, failed) from None
                        continue
                    running[run.experiment] = run
                    print(f"trial {trial.number} ({run.experiment}) queued: "
                          f"{', '.join(override(k, v) for k, v in trial.params.items())}", file=sys.stderr)
                    last_start = 0.0  # start workers below, once every free slot has its trial
            if not running:
                if finished_count(study) >= config.trials:
                    break
                # Other commands' trials are finishing the study; take over any whose command died meanwhile.
                time.sleep(5)
                running = {run.experiment: run for run in take_over(study, config, experiment_rows())}
                continue
            if last_start == 0.0:
                # DVC's queue workers stop after 10 s without work, and each takes one experiment at a time:
                # started after the trials are queued, `jobs` workers run `jobs` trials side by side.
                dvc("queue", "start", "--jobs", str(config.jobs))
                last_start = time.monotonic()
            time.sleep(1)
            now_print = run_fingerprint(project)
            if now_print == fingerprint and time.monotonic() - last_look < 10:
                continue
            fingerprint, last_look = now_print, time.monotonic()
            rows = experiment_rows()
            for name, run in list(running.items()):
                row = rows.get(name)
                if row is None or row["state"] not in ("success", "failed"):
                    continue
                line = settle(study, config, run, row, push)
                print(line, file=sys.stderr)
                del running[name]
                if trial_state(study, run.number) == TrialState.FAIL:
                    failed += 1
                    if failed >= config.max_failed_trials:
                        raise too_many_failures(config, failed)
            states = [(rows.get(name) or {}).get("state") for name in running]
            if "queued" in states and states.count("running") < config.jobs and time.monotonic() - last_start > 10:
                # A trial waits while a slot is free: its worker stopped (idle timeout, or the broker's hiccup).
                dvc("queue", "start", "--jobs", str(config.jobs))
                last_start = time.monotonic()
    except KeyboardInterrupt:
        stop_trials(study, running)
        raise


def too_many_failures(config: TuneConfig, failed: int) -> UserError:
    return UserError(f"study '{config.study}': {failed} trials failed in this run (max_failed_trials = "
                     f"{config.max_failed_trials}); their errors are in the table (--report) and `dvc queue logs "
                     f"<experiment>`. Fix the space or the cause, then run the command again to go on.")


def stop_trials(study, running: dict[str, Running]) -> None:
    """Ctrl-C: stop this command's experiments and record their trials as failed (a rerun goes on without them)."""
    from optuna.trial import TrialState

    if running:
        dvc("queue", "kill", *running, check=False)
        dvc("queue", "remove", *running, check=False)
    for run in running.values():
        run.trial.set_user_attr("error", "interrupted (Ctrl-C)")
        study.tell(run.number, state=TrialState.FAIL, skip_if_finished=True)


# --------------------------------------------------------------------------- results


def trials_table(study, config: TuneConfig) -> str:
    """Markdown: every trial, its state, params, objective and wall time; the best first among the complete ones."""
    keys = list(config.space)
    header = ["trial", "experiment", "state", *keys, config.objective_key, "queued to done", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in study.get_trials(deepcopy=False):
        pruned_at = trial.user_attrs.get(PRUNED_AT_EPOCH)
        note = trial.user_attrs.get("error") or ("" if pruned_at is None else
                                                 f"after epoch {pruned_at} ({trial.intermediate_values.get(pruned_at, 0):.4f})")
        wall = trial.user_attrs.get("wall_time_s")
        value = "" if trial.value is None or trial.state.name != "COMPLETE" else f"{trial.value:.4f}"
        cells = [str(trial.number), trial.user_attrs.get("experiment", ""), trial.state.name.lower(),
                 *[format_value(trial.params.get(key)) for key in keys], value, f"{wall:.0f} s" if wall else "",
                 note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_value(value) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def write_report(study, config: TuneConfig, storage_url: str) -> Path:
    """tune/<study>/: trials.md (table, best trial, adopt command) and the history / importance plots as PNG."""
    out = STUDY_DIR / config.study
    out.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    text = [f"# Study {config.study}\n", f"Objective: {config.objective} ({config.direction}), sampler {config.sampler} "
            f"(seed {config.seed}), pruner {config.pruner}; storage {storage_url}.\n"]
    counts = {state: sum(t.state.name.lower() == state for t in study.get_trials(deepcopy=False))
              for state in ("complete", "pruned", "fail", "running")}
    text.append(", ".join(f"{n} {state}" for state, n in counts.items() if n) + ".\n")
    if complete:
        best = study.best_trial
        name = best.user_attrs.get("experiment")
        text.append(f"**Best: trial {best.number} ({name}), {config.objective_key} = {best.value:.6g}**: "
                    + ", ".join(override(k, v) for k, v in best.params.items()) + f".\n\nAdopt it: `dvc exp apply {name}` "
                    f"(then `dvc repro` for the stages the trials did not run, and commit).\n")
    text.append(trials_table(study, config))
    plots = write_plots(study, out) if complete else []
    text.extend(f"\n![{p.stem}]({p.name})\n" for p in plots)
    (out / "trials.md").write_text("\n".join(text), encoding="utf-8")
    return out


def write_plots(study, out: Path) -> list[Path]:
    """Optuna's optimisation history and (with two complete trials or more) param importances, as PNG files:
    matplotlib, no browser or CDN needed."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # "the interface can change": ours is pinned here

    written = []
    plots = [("history", optuna_plots.plot_optimization_history)]
    if sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) >= 2 and len(study.best_trial.params) > 1:
        plots.append(("importance", optuna_plots.plot_param_importances))
    for name, plot in plots:
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances of params that never varied
            print(f"warning: no {name} plot ({first_line(exc)})", file=sys.stderr)
            continue
        axes.figure.set_size_inches(8, 4.5)
        axes.figure.tight_layout()
        axes.figure.savefig(out / f"{name}.png", dpi=100)
        plt.close(axes.figure)
        written.append(out / f"{name}.png")
    return written


def summary(study, config: TuneConfig, out: Path) -> str:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return f"no complete trial yet; table in {out / 'trials.md'}"
    best = study.best_trial
    return (f"best: trial {best.number} ({best.user_attrs.get('experiment')}), {config.objective_key} = {best.value:.6g}: "
            + ", ".join(override(k, v) for k, v in best.params.items())
            + f"\ntable and plots: {out}/trials.md\nadopt it: dvc exp apply {best.user_attrs.get('experiment')}")


# --------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emotion_pipeline.tune",
                                     description="Optuna search whose trials are DVC experiments (README, 'Search').")
    parser.add_argument("--config", type=Path, default=TUNE_FILE, help="the search space and settings (default: tune.yaml)")
    parser.add_argument("--study", help="study name (overrides tune.yaml)")
    parser.add_argument("--trials", type=int, help="finished trials to reach (overrides tune.yaml)")
    parser.add_argument("--jobs", type=int, help="trials at once on this machine (overrides tune.yaml)")
    parser.add_argument("--storage", help="Optuna storage URL shared by several machines, e.g. postgresql://host/db")
    parser.add_argument("--push", metavar="REMOTE", help="`dvc exp push REMOTE` each finished trial (several machines)")
    parser.add_argument("--report", action="store_true", help="only write and print the results so far")
    args = parser.parse_args(argv)
    run_command(lambda: run(args), interrupted="this command's running trials were stopped and recorded as failed; "
                                              "finished ones are kept. Run the same command to go on")


def run(args: argparse.Namespace) -> None:
    if not Path("dvc.yaml").is_file():
        raise UserError("no dvc.yaml here: run the tune command from the project folder.")
    config = load_tune_config(args.config, {"study": args.study, "trials": args.trials, "jobs": args.jobs,
                                            "storage": args.storage})
    stages = set((yaml.safe_load(Path("dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {}))
    unknown = [target for target in config.targets if target not in stages]
    if unknown:
        raise UserError(f"{args.config}: targets {unknown} are not stages of dvc.yaml ({', '.join(sorted(stages))}).")
    storage_url = absolute_storage_url(config.storage or f"sqlite:///{DEFAULT_STORAGE_FILE.as_posix()}")
    (Path.cwd() / STUDY_DIR / TRIALS_DIR.name).mkdir(parents=True, exist_ok=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", str(TRIALS_DIR / "x.json")], capture_output=True).returncode
    if ignored == 128:
        raise UserError("not a git repository: trials are DVC experiments, which live in git (`git init`, commit the "
                        "project, then tune).")
    if ignored != 0:
        raise UserError(f"{STUDY_DIR}/ is not git-ignored: DVC would copy the study's storage and trial files into every "
                        f"experiment. Add '/{STUDY_DIR}/' to .gitignore.")
    if not args.report:
        # Ctrl-C or SIGTERM while waiting: stop this command's trials, then one line (run_command) and exit 130.
        # Set for SIGINT too: a shell script's `cmd &` starts it with SIGINT ignored.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.default_int_handler)
        run_study(config, storage_url, args.push)
    study = open_study(config, storage_url)
    out = write_report(study, config, storage_url)
    print(summary(study, config, out))


if __name__ == "__main__":
    main()
