"""The train stage's side of a tune study (emotion_pipeline.tune): report each epoch's validation score to
the trial the experiment runs for, and stop the run when the study's pruner says the trial is hopeless.

A trial is an ordinary DVC experiment; what makes it one is a small file the tune command writes in the
project before queueing it, ``tune/trials/<experiment name>.json``, holding the study's storage URL, the
study name and the trial. DVC gives every stage of an experiment its name (DVC_EXP_NAME) and the project
folder it was queued from (DVC_ROOT; the run itself happens in a copy under .dvc/tmp/exps/), so the stage
finds the file without any param: the run-cache key and `dvc exp show` of a trial are those of a hand-run
experiment with the same params. Without the file (every run that is not a tune trial) nothing happens.

A pruned trial fails its train stage (one paragraph, exit 2) rather than finishing early, so that no half-trained
run enters DVC's run cache under the trial's params (docs/experiments.md, "Pruning").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from emotion_pipeline.errors import UserError, first_line

TRIALS_DIR = Path("tune") / "trials"  # in the project folder the tune command runs in; git-ignored
PRUNED_AT_EPOCH = "pruned_at_epoch"  # the trial's user attribute: the epoch after which it stopped


def trial_file(project: Path, experiment: str) -> Path:
    return project / TRIALS_DIR / f"{experiment}.json"


def make_pruner(settings: dict):
    """An Optuna pruner from {"type": none|median|threshold, "startup_trials", "warmup_epochs", "prune_below"}."""
    import optuna

    if settings["type"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                           n_warmup_steps=settings["warmup_epochs"])
    if settings["type"] == "threshold":
        return optuna.pruners.ThresholdPruner(lower=settings["prune_below"], n_warmup_steps=settings["warmup_epochs"])
    return optuna.pruners.NopPruner()


def trial_storage(url: str):
    """The study's Optuna storage as a trial's train stage opens it: the study exists (the tune command made it before
    queueing the trial). A SQLite file is written by several processes at once (the command, each trial): wait for
    its lock as long as a busy machine needs, rather than fail with "database is locked"."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 300}} if url.startswith("sqlite:") else None)


def pruning_callback():
    """The Trainer callback that reports to this experiment's trial, or None when the run is not a tune trial
    with pruning on."""
    experiment, project = os.environ.get("DVC_EXP_NAME"), os.environ.get("DVC_ROOT")
    if not experiment or not project or not trial_file(Path(project), experiment).is_file():
        return None
    record = json.loads(trial_file(Path(project), experiment).read_text(encoding="utf-8"))
    if record["epoch_metric"] is None:
        return None
    import optuna
    from transformers import TrainerCallback  # here, not above: the tune command imports this module too

    try:
        study = optuna.load_study(study_name=record["study"], storage=trial_storage(record["storage"]),
                                  pruner=make_pruner(record["pruner"]))
    except Exception as exc:  # noqa: BLE001  SQLAlchemy/driver errors share no base class worth naming here
        raise UserError(f"tune trial {experiment}: cannot open its study '{record['study']}' in {record['storage']} "
                        f"({first_line(exc)}). The storage must be reachable from where the experiment runs (a "
                        f"sqlite: file by its absolute path, or a database server).") from None
    trial = optuna.trial.Trial(study, record["trial_id"])

    class ReportToTrial(TrainerCallback):
        """After each epoch's validation pass: report the score to the trial; stop the run if it is to be pruned."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero or not metrics or record["epoch_metric"] not in metrics:
                return
            epoch = round(state.epoch or 0)
            score = metrics[record["epoch_metric"]]
            trial.report(score, step=epoch)
            if trial.should_prune():
                trial.set_user_attr(PRUNED_AT_EPOCH, epoch)
                raise UserError(
                    f"pruned: tune study '{record['study']}' trial {record['number']} stops after epoch {epoch} "
                    f"(validation {record['epoch_metric'].removeprefix('eval_')} {score:.4f}; the study's pruner "
                    f"judged it unpromising). The experiment is recorded as failed, and the trial as pruned.")

    return ReportToTrial()
