"""The study in its Optuna storage, as the tune command opens and counts it; the file that tells an experiment's train
stage which trial it runs for (read by emotion_pipeline.search.trial); a storage URL every process opens alike."""

from __future__ import annotations

import json
from pathlib import Path

from emotion_pipeline.errors import UserError, first_line
from emotion_pipeline.search.space import TuneConfig, pruner_settings, sampler_for
from emotion_pipeline.search.trial import make_pruner, trial_file, trial_storage


def write_trial_file(project: Path, experiment: str, storage: str, study: str, trial_id: int, number: int,
                     epoch_metric: str | None, pruner: dict) -> Path:
    """What the experiment's train stage needs to report to its trial (epoch_metric None: no pruning), and the
    study's pruner settings (Optuna keeps no pruner in its storage: whoever asks should_prune brings one)."""
    path = trial_file(project, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"storage": storage, "study": study, "trial_id": trial_id, "number": number, "epoch_metric": epoch_metric,
              "pruner": pruner}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def absolute_storage_url(url: str) -> str:
    """The storage URL with a sqlite: file made absolute (SQLAlchemy reads a relative one from the working folder).
    Each trial's train stage opens the study too, from the copy of the project DVC runs it in (.dvc/tmp/exps/):
    there a relative file would be another one, in a tune/ folder that is not there (it is git-ignored)."""
    database = sqlite_file(url) if url.startswith("sqlite:") else None
    if database is None:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database.as_posix()).render_as_string(hide_password=False)


TUNE_FILE = Path("tune.yaml")


STUDY_DIR = Path("tune")  # storage, trial files and reports; git-ignored


DEFAULT_STORAGE_FILE = STUDY_DIR / "optuna.db"


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


def stored_trial(study, number: int):
    """A trial as the storage has it now (other processes may have changed it since this one asked)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def trial_state(study, number: int):
    return stored_trial(study, number).state


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def running_count(study) -> int:
    """Trials running anywhere (this command, another one, another machine). Not WAITING ones: those are
    params queued for the next ask (a retried trial), which the ask below runs first."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def open_storage(url: str):
    """The study's Optuna storage as the tune command (and whoever may create the study) opens it: an RDB URL, SQLite by
    default, PostgreSQL or MySQL for several machines."""
    database = sqlite_file(url) if url.startswith("sqlite:") else None
    if database is None or not database.parent.is_dir():  # a server, in memory, or a folder SQLite's error will name
        return trial_storage(url)
    # Opening creates the file's tables and Optuna's schema version unless they exist, and SQLite's lock does not
    # cover that check-then-create: two processes opening a new file at once fail with "table studies already
    # exists" or "UNIQUE constraint failed: alembic_version" (two tune commands started together, or a reader
    # polling a study while the command creates it). So one process at a time opens it.
    from filelock import FileLock

    with FileLock(str(database) + ".lock"):
        return trial_storage(url)


def sqlite_file(url: str) -> Path | None:
    """The file of a sqlite: storage URL (relative to the working folder, as SQLAlchemy reads it); None in memory."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return None if not database or database == ":memory:" else Path(database).absolute()
