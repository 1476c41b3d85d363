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
stage's one-paragraph error, or pruned (emotion_pipeline.search.trial). At the end: the table of trials, the
best one, Optuna's history and importance plots as PNG files, and the command that adopts the winner.

Trials are experiments like any other: `dvc exp show`, `dvc plots diff`, `dvc exp push`, `compare` and
`aggregate` work on them; stages whose inputs a trial does not change (prepare, baseline) come from DVC's
run cache. Several machines share one study through an RDB storage URL (`--storage postgresql://...`),
each running this command in its own clone with `--push <remote>` (README, "Search").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from emotion_pipeline.commands import run_command
from emotion_pipeline.errors import UserError
from emotion_pipeline.experiments import check_dvc_version, dvc, experiment_rows
from emotion_pipeline.search.report import summary, write_report
from emotion_pipeline.search.space import TuneConfig, distributions, load_tune_config, override
from emotion_pipeline.search.study import (
    DEFAULT_STORAGE_FILE,
    STUDY_DIR,
    TUNE_FILE,
    absolute_storage_url,
    finished_count,
    open_study,
    running_count,
    trial_state,
)
from emotion_pipeline.search.trial import TRIALS_DIR
from emotion_pipeline.search.trials import (
    LEASE_RENEW_S,
    TrialNotRun,
    ask,
    queue_trial,
    renew,
    run_fingerprint,
    settle,
    stop_trials,
    take_over,
    too_many_failures,
)

# A trial queued this long while none of ours runs: the queue's workers are restarted (run_study says why).
STUCK_S = 180


def run_study(config: TuneConfig, storage_url: str, push: str | None) -> None:
    from filelock import FileLock
    from optuna.trial import TrialState

    project = Path.cwd()
    check_dvc_version()
    study = open_study(config, storage_url)
    space = distributions(config)
    running = {run.experiment: run for run in take_over(study, config, experiment_rows())}
    failed = 0
    # Several commands on one SQLite study (on this machine) ask in turn, so they stop at exactly `trials`.
    ask_lock = FileLock(str(project / STUDY_DIR / f".{config.study}.ask.lock"))
    fingerprint, last_look, last_start, last_renewal = None, 0.0, 0.0, time.monotonic()
    stuck_since: float | None = None  # since when our trials wait, queued, and none of them runs
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
            if time.monotonic() - last_renewal > LEASE_RENEW_S:
                renew(running)
                last_renewal = time.monotonic()
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
            waiting = "queued" in states and "running" not in states
            stuck_since = (stuck_since or time.monotonic()) if waiting else None
            if "queued" in states and states.count("running") < config.jobs and time.monotonic() - last_start > 10:
                # A trial waits while a slot is free: its worker stopped (idle timeout, or the broker's hiccup).
                # A worker can also stay alive but deaf (seen on a loaded CI machine: waiting on its broker while
                # the trial stays queued), and then `queue start` starts none: after STUCK_S with nothing of ours
                # running, stop the workers (what they run finishes first) and start them afresh.
                if stuck_since is not None and time.monotonic() - stuck_since > STUCK_S:
                    print(f"a trial stayed queued for {STUCK_S} s with no worker taking it: restarting the queue's "
                          "workers", file=sys.stderr)
                    dvc("queue", "stop", check=False, timeout_s=120)
                    stuck_since = time.monotonic()
                dvc("queue", "start", "--jobs", str(config.jobs))
                last_start = time.monotonic()
    except KeyboardInterrupt:
        stop_trials(study, running)
        raise


# --------------------------------------------------------------------------- results


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
        # Ctrl-C or SIGTERM while waiting: this command's trials are stopped, then one line (run_command).
        run_study(config, storage_url, args.push)
    study = open_study(config, storage_url)
    out = write_report(study, config, storage_url)
    print(summary(study, config, out))


if __name__ == "__main__":
    main()
