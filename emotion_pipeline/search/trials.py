"""A trial's life as an experiment: asked of Optuna and claimed by this command, queued (`dvc exp run --queue`),
settled when its experiment finishes (complete, pruned or failed), taken over when the command that waited for it
died, stopped on Ctrl-C."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from emotion_pipeline.errors import UserError, first_line
from emotion_pipeline.experiments import dvc, failure_message, last_error
from emotion_pipeline.search.space import EPOCH_METRICS, TuneConfig, override, pruner_settings, sampler_for
from emotion_pipeline.search.study import stored_trial, write_trial_file
from emotion_pipeline.search.trial import PRUNED_AT_EPOCH


def experiment_name(study: str, number: int) -> str:
    return f"{study}-{number}"


def objective_value(row: dict, config: TuneConfig) -> float | None:
    metrics = row["data"].get("metrics") or {}
    value = ((metrics.get(config.objective_file) or {}).get("data") or {}).get(config.objective_key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class Running:
    """A trial this command waits for: the Optuna trial (its attributes live in the storage) and its experiment."""

    trial: object  # optuna.trial.Trial
    experiment: str
    started: float

    @property
    def number(self) -> int:
        return self.trial.number


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
    known = {t.number for t in study.get_trials(deepcopy=False)}
    try:
        trial = study.ask(space)
    except ValueError as exc:
        # The trial Optuna made of the enqueued params: new since this ask began, enqueued, not claimed yet. (Another
        # machine's trial asked this very moment is new and unclaimed too, but not one of enqueued params that fail.)
        orphans = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in known
                   and "owner" not in t.user_attrs and "fixed_params" in t.system_attrs]
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


# A trial's owner renews its claim every LEASE_RENEW_S; another machine takes it over once the claim is LEASE_S old
# (a preempted node, a lost network): long enough for a loaded machine and clocks a little apart, short beside a trial.
LEASE_RENEW_S = 60
LEASE_S = 600


def claim(trial) -> None:
    """Mark the trial as waited for by this process (host, pid and start time: a pid alone may be reused), now."""
    import psutil

    trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid(),
                                  "started": psutil.Process().create_time(), "renewed": time.time()})


def owner_alive(trial) -> bool:
    """Whether the process that asked for a trial still waits for it: on this machine, while that process lives; on
    another, while it renews its claim (LEASE_S). A trial without an owner counts as alive for its first minute (it
    is claimed right after it is asked for)."""
    import datetime

    import psutil

    owner = trial.user_attrs.get("owner")
    if owner is None:
        started = trial.datetime_start or datetime.datetime.now()
        return (datetime.datetime.now() - started).total_seconds() < 60
    if owner.get("host") != socket.gethostname():
        return time.time() - owner.get("renewed", 0) < LEASE_S
    try:
        return psutil.Process(owner["pid"]).create_time() == owner["started"]
    except psutil.NoSuchProcess:
        return False


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
            pushed = dvc("exp", "push", push, run.experiment, check=False)
            if pushed.returncode != 0:  # the result is in the study; only the experiment's copy on the remote is missing
                print(f"warning: trial {run.number}: `dvc exp push {push} {run.experiment}` failed "
                      f"({last_error(pushed.stderr + pushed.stdout)}); the study goes on. Push it later with the same "
                      f"command.", file=sys.stderr)
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
        if row is None:  # no experiment of it here: never queued, or queued on a machine that is gone
            owner = frozen.user_attrs.get("owner") or {}
            lost = owner.get("host") not in (None, socket.gethostname())
            why = f"its machine {owner['host']} stopped renewing its claim" if lost else "interrupted before it was queued"
            trial.set_user_attr("error", why)
            study.tell(frozen.number, state=TrialState.FAIL)
            study.enqueue_trial(frozen.params, skip_if_exists=False)
            print(f"trial {frozen.number}: {why}; its params are tried again", file=sys.stderr)
            continue
        claim(trial)
        print(f"trial {frozen.number} ({name}): taken over from an earlier run ({row['state']})", file=sys.stderr)
        yield Running(trial, name, time.monotonic())


def renew(running: dict[str, Running]) -> None:
    """Renew this command's claim on the trials it waits for (owner_alive, on the other machines)."""
    for run in running.values():
        claim(run.trial)


def run_fingerprint(project: Path) -> tuple:
    """A cheap sign that some queued experiment changed state: DVC's executor info files, their sizes and times."""
    files = sorted((project / ".dvc" / "tmp" / "exps" / "run").glob("*/*.run"))
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())


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
