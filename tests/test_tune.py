"""The tune command (emotion_pipeline.tune): Optuna studies whose trials are real DVC experiments.

The slow tests run real studies on the finished tiny project (one epoch per trial, up to evaluate)
through DVC's real queue: two commands on one SQLite study with two jobs each, a SIGKILL of the
command in the middle of a trial then the same command again, and a pruned trial. The fast ones
check the search-space file's errors and the -S formatting without running anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_finished, run, subprocess_env

optuna = pytest.importorskip("optuna")

from emotion_pipeline.search.space import SearchRange, TuneConfig, distributions, grid, override  # noqa: E402

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
TUNE = [sys.executable, "-m", "emotion_pipeline.tune"]


def write_tune_file(project: Path, **settings) -> None:
    space = settings.pop("space", {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "lora.r": {"choices": [4, 8]}})
    (project / "tune.yaml").write_text(yaml.safe_dump({"sampler": "random", "seed": 0, **settings, "space": space}))


def tune(project: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run([*TUNE, *args], cwd=project, env=subprocess_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"tune exited {result.returncode}\n{result.stdout}\n{result.stderr[-5000:]}"
    return result


def study_trials(project: Path, study: str) -> list:
    """The study's trials, read as the command and the trials read it (through open_storage)."""
    from emotion_pipeline.search.study import open_storage

    storage = open_storage(f"sqlite:///{project / 'tune' / 'optuna.db'}")
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def experiments(project: Path) -> dict[str, dict]:
    """`dvc exp show --json` by experiment name: state, params and metrics of each."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    rows = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0].get("data") or {}
            rows[experiment["name"]] = {"state": (experiment.get("executor") or {}).get("state") or "success",
                                        "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                                        "rev": experiment["revs"][0]["rev"]}
    return rows


def train_metrics(project: Path, rev: str) -> dict:
    import dvc.api

    return json.loads(dvc.api.read("metrics/train.json", repo=str(project), rev=rev))


@pytest.fixture
def tune_project(finished_project: Path, tmp_path: Path) -> Path:
    """The finished tiny project, committed, with one-epoch trials (prepare and baseline come from the run cache)."""
    project = copy_finished(finished_project, tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-qm", "tiny pipeline, run"], project)
    return project


@pytest.mark.slow
def test_two_commands_share_one_study_of_dvc_experiments(tune_project: Path):
    """A 3-trial study run by two commands at once, two jobs each, plus a trial that fails: every trial is an
    experiment with its params, the failure is recorded with its error, and the best is the best experiment."""
    write_tune_file(tune_project, study="shared", trials=3, jobs=2,
                    space={"train.lr": {"low": 1e-4, "high": 1e-2}, "lora.r": {"choices": [4, 8]}})
    (tune_project / "tune").mkdir()
    storage = f"sqlite:///{tune_project / 'tune' / 'optuna.db'}"
    study = optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    # Out of its range on purpose (Optuna warns and runs it): the train stage refuses it, the study goes on.
    study.enqueue_trial({"train.lr": -1.0, "lora.r": 4})
    commands = [subprocess.Popen(TUNE, cwd=tune_project, env=subprocess_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    # A guard against a hang, not a speed target: ~4 min here alone, several times that beside other work.
    outputs = [command.communicate(timeout=1800) for command in commands]
    for command, (_, err) in zip(commands, outputs):
        assert command.returncode == 0, err[-4000:]

    trials = study_trials(tune_project, "shared")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(complete) == 3 and len(failed) == 1, [(t.number, t.state.name) for t in trials]
    assert "train.lr" in failed[0].user_attrs["error"] and "greater than 0" in failed[0].user_attrs["error"]
    assert all(any(f"({t.user_attrs['experiment']}) queued" in err for _, err in outputs) for t in complete)
    assert all(any("queued" in err for err in errs.splitlines()) for _, errs in outputs)  # both commands ran trials
    # Each trial its own proposal: two commands never draw the same random numbers.
    assert len({t.params["train.lr"] for t in complete}) == 3

    shown = experiments(tune_project)
    for trial in complete:
        row = shown[trial.user_attrs["experiment"]]
        assert row["state"] == "success"
        assert row["params"]["train"]["lr"] == trial.params["train.lr"]
        assert row["params"]["lora"]["r"] == trial.params["lora.r"]
        assert train_metrics(tune_project, row["rev"])["val_macro_f1"] == trial.value
    assert shown[failed[0].user_attrs["experiment"]]["state"] == "failed"

    best = max(complete, key=lambda t: t.value)
    report = tune(tune_project, "--report")
    assert f"best: trial {best.number} (shared-{best.number})" in report.stdout
    assert f"dvc exp apply shared-{best.number}" in report.stdout
    table = (tune_project / "tune" / "shared" / "trials.md").read_text()
    assert table.count("| complete |") == 3 and "| fail |" in table and "greater than 0" in table
    for plot in ("history.png", "importance.png"):
        assert (tune_project / "tune" / "shared" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_killed_study_goes_on_to_exactly_its_number_of_trials(tune_project: Path):
    """SIGKILL of the command at a seeded random moment once its first trial is queued (while it runs, or later),
    then the same command: what was running is taken over (DVC's queue worker outlived the command), and the study
    ends with exactly 2 complete trials."""
    import random

    write_tune_file(tune_project, study="killed", trials=2, jobs=1)
    first = subprocess.Popen(TUNE, cwd=tune_project, env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not any(t.state.name == "RUNNING" and t.user_attrs.get("experiment")
                  for t in study_trials_or_none(tune_project, "killed")):
        if first.poll() is not None:
            pytest.fail(f"tune exited {first.returncode} before its first trial was queued:\n{first.stderr.read()[-5000:]}")
        assert time.monotonic() < deadline, "the first trial was never queued"
        time.sleep(0.5)
    moment = random.Random(int(os.environ.get("CHAOS_SEED", "0"))).uniform(0, 20)
    time.sleep(moment)
    running = [t.number for t in study_trials(tune_project, "killed") if t.state.name == "RUNNING"]
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=60)

    again = tune(tune_project)
    assert ("taken over from an earlier run" in again.stderr) == bool(running), (moment, running, again.stderr)
    trials = study_trials(tune_project, "killed")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], [(t.number, t.state.name) for t in trials]
    shown = experiments(tune_project)
    assert {f"killed-{t.number}" for t in trials} <= set(shown)


@pytest.mark.slow
def test_a_lost_machines_trial_is_taken_over_and_a_failed_push_is_a_warning(tune_project: Path):
    """Two machines on one study: the other one (faked through its claim: another host, renewed long ago, its
    experiment in its own queue) was preempted with a trial RUNNING. This command fails that trial, tries its params
    again, and ends with exactly `trials` complete; a `dvc exp push` that fails is a warning and the study goes on."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from emotion_pipeline.search.trials import LEASE_S

    write_tune_file(tune_project, study="two", trials=2, jobs=1)
    (tune_project / "tune").mkdir()
    study = optuna.create_study(study_name="two", storage=f"sqlite:///{tune_project / 'tune' / 'optuna.db'}",
                                direction="maximize")
    lost = study.ask({"train.lr": FloatDistribution(1e-4, 1e-2, log=True), "lora.r": CategoricalDistribution([4, 8])})
    lost.set_user_attr("owner", {"host": "preempted-node", "pid": 4242, "started": 0.0,
                                 "renewed": time.time() - LEASE_S - 5})
    lost.set_user_attr("experiment", "two-0")  # queued on that machine: this project has no such experiment

    result = tune(tune_project, "--push", "no-such-remote")
    assert "trial 0: its machine preempted-node stopped renewing its claim; its params are tried again" in result.stderr
    assert "warning: trial" in result.stderr and "dvc exp push no-such-remote" in result.stderr, result.stderr
    trials = study_trials(tune_project, "two")
    assert [t.state.name for t in trials].count("COMPLETE") == 2 and trials[0].state.name == "FAIL"
    assert any(t.params == lost.params for t in trials[1:] if t.state.name == "COMPLETE")  # its params, tried again


def test_a_claim_is_alive_while_renewed_on_another_machine(monkeypatch):
    from types import SimpleNamespace

    from emotion_pipeline.search.trials import LEASE_S, owner_alive

    def trial(host: str, age_s: float) -> SimpleNamespace:
        return SimpleNamespace(user_attrs={"owner": {"host": host, "pid": 1, "started": 0.0,
                                                     "renewed": time.time() - age_s}}, datetime_start=None)

    assert owner_alive(trial("other-node", 30)) and not owner_alive(trial("other-node", LEASE_S + 1))


def study_trials_or_none(project: Path, study: str) -> list:
    try:
        return study_trials(project, study)
    except Exception:  # noqa: BLE001  the study or its database does not exist yet
        return []


@pytest.mark.slow
def test_a_pruned_trial_stops_and_shows_as_pruned_not_as_a_result(tune_project: Path):
    """A threshold no trial can reach prunes the trial after its first epoch: pruned in Optuna, Failed in
    `dvc exp show` (never a finished experiment with a score), and the reason in its DVC log. The storage is
    given as a relative sqlite: URL (the default file, named as a user would): the trial's train stage, run in
    DVC's copy of the project, must still find it to report its epoch."""
    params = yaml.safe_load((tune_project / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (tune_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([*GIT, "commit", "-qam", "two epochs"], tune_project)
    write_tune_file(tune_project, study="pruned", trials=1, pruner="threshold", prune_below=1.01,
                    space={"train.lr": {"low": 1e-4, "high": 1e-3, "log": True}})
    result = tune(tune_project, "--storage", "sqlite:///tune/optuna.db")
    assert "pruned after epoch 1" in result.stderr, result.stderr
    (trial,) = study_trials(tune_project, "pruned")
    assert trial.state.name == "PRUNED" and trial.user_attrs["pruned_at_epoch"] == 1
    assert trial.intermediate_values.keys() == {1}
    assert experiments(tune_project)["pruned-0"]["state"] == "failed"
    log = run(["dvc", "queue", "logs", "pruned-0"], tune_project).stdout
    assert "pruned: tune study 'pruned' trial 0 stops after epoch 1" in log
    assert "| pruned |" in (tune_project / "tune" / "pruned" / "trials.md").read_text()


# --------------------------------------------------------------------------- the storage, fast

OPEN_AT_ONCE = """
import sys, time
from pathlib import Path

import optuna
from emotion_pipeline.search.study import open_storage

url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
optuna.create_study(study_name="s", storage=open_storage(url), load_if_exists=True, direction="maximize")
"""


def test_processes_opening_a_new_sqlite_study_at_once_all_get_it(tmp_path: Path):
    """Opening a new SQLite file creates Optuna's tables: four processes doing it at the same moment (two tune
    commands started together, a reader polling while the command creates the study) all get the study."""
    url, go = f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    openers = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(flag), str(go)], env=subprocess_env(),
                                stderr=subprocess.PIPE, text=True) for flag in ready]
    deadline = time.monotonic() + 300  # a guard against a hang: each process imports Optuna first
    while not all(flag.exists() for flag in ready):
        assert all(p.poll() is None for p in openers) and time.monotonic() < deadline, "an opener never got ready"
        time.sleep(0.05)
    go.touch()
    for opener in openers:
        _, err = opener.communicate(timeout=300)
        assert opener.returncode == 0, err[-3000:]
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["s"]


def test_a_relative_sqlite_storage_is_made_absolute_other_urls_are_kept(tmp_path: Path, monkeypatch):
    from emotion_pipeline.search.study import absolute_storage_url

    monkeypatch.chdir(tmp_path)
    assert absolute_storage_url("sqlite:///tune/optuna.db") == f"sqlite:///{tmp_path.as_posix()}/tune/optuna.db"
    assert absolute_storage_url("sqlite:///tune/a.db?timeout=5") == f"sqlite:///{tmp_path.as_posix()}/tune/a.db?timeout=5"
    for url in (f"sqlite:///{tmp_path.as_posix()}/x.db", "sqlite://", "postgresql://user:secret@db-host/optuna"):
        assert absolute_storage_url(url) == url


# --------------------------------------------------------------------------- the search space, fast


@pytest.fixture
def tune_dir(tmp_path: Path) -> Path:
    """A folder with the project's dvc.yaml and params.yaml: enough for the checks that run before any DVC work."""
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    return tmp_path


@pytest.mark.parametrize(("space_or_settings", "named"), [
    ({"space": {"train.lrr": {"low": 1e-4, "high": 1e-3}}}, "'train.lrr' is not a params.yaml key"),
    ({"space": {"train.lr": {"low": 1e-3, "high": 1e-4}}}, "low (0.001) is above high (0.0001)"),
    ({"space": {"train.lr": {"low": 0.0, "high": 1e-3, "log": True}}}, "a log scale needs low > 0"),
    ({"space": {"train.lr": {"low": 0.0, "high": 1e-3}}}, "space 'train.lr': 0.0 is not a valid train.lr"),
    ({"space": {"lora.r": {"choices": [8, 0]}}}, "space 'lora.r': 0 is not a valid lora.r"),
    ({"space": {"lora.r": {"low": 4}}}, "give 'low' and 'high'"),
    ({"space": {"lora.r": {"choices": [4], "low": 1, "high": 2}}}, "either 'choices' or 'low'/'high'"),
    ({"space": {}}, "'space' is invalid"),
    ({"objective": "metrics/test.json:macro_f1"}, "is a test score"),
    ({"pruner": "median", "objective": "metrics/train.json:best_epoch"}, "follows the objective epoch by epoch"),
    ({"sampler": "grid", "space": {"train.lr": {"low": 1e-4, "high": 1e-3}}}, "sampler 'grid' needs choices or a step"),
    ({"trails": 5}, "unknown key 'trails'"),
    ({"targets": ["evaluatee"]}, "targets ['evaluatee'] are not stages of dvc.yaml"),
    ({"study": "my-study"}, "'study' is invalid"),
])
def test_a_bad_search_space_is_one_paragraph_and_exit_2(tune_dir: Path, space_or_settings: dict, named: str):
    settings = {"space": {"train.lr": {"low": 1e-4, "high": 1e-3, "log": True}}, **space_or_settings}
    (tune_dir / "tune.yaml").write_text(yaml.safe_dump(settings))
    result = subprocess.run(TUNE, cwd=tune_dir, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tune.yaml") and "Traceback" not in result.stderr, result.stderr
    assert named in lines[0], lines[0]
    assert not (tune_dir / "tune").exists()  # nothing was written


def test_missing_or_unreadable_tune_files_are_named(tune_dir: Path):
    result = subprocess.run(TUNE, cwd=tune_dir, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "tune.yaml not found" in result.stderr
    (tune_dir / "tune.yaml").write_text("space: [unclosed\n")
    result = subprocess.run(TUNE, cwd=tune_dir, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "tune.yaml is not valid YAML" in result.stderr


def test_the_shipped_tune_file_is_valid():
    """tune.yaml as committed checks against params.yaml and dvc.yaml (what `python -m emotion_pipeline.tune` reads)."""
    from emotion_pipeline.search.space import load_tune_config

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        config = load_tune_config(REPO / "tune.yaml", {})
    finally:
        os.chdir(cwd)
    assert config.objective == "metrics/train.json:val_macro_f1" and config.sampler == "tpe"
    assert set(distributions(config)) == set(config.space)


def test_overrides_keep_every_value_as_dvc_reads_it(tmp_path: Path):
    """Each -S value, read back by DVC's own override parser into params.yaml, is exactly Optuna's value."""
    from dvc.utils.hydra import apply_overrides

    values = {"train.lr": 0.00012520653814999472, "lora.r": 16, "train.class_weights": "balanced",
              "train.fit_class_bias": True, "model.revision": None, "data.text_column": "my text",
              "data.label_column": "null", "export.dataset_id": "org/data-set"}
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(tmp_path / "params.yaml"), [override(key, value) for key, value in values.items()])
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for key, value in values.items():
        section, field = key.split(".")
        assert params[section][field] == value and type(params[section][field]) is type(value), key


def test_ranges_become_optuna_distributions_and_grids():
    config = TuneConfig(sampler="grid", space={
        "lora.r": SearchRange(choices=[4, 8]), "train.epochs": SearchRange(low=1, high=3),
        "train.warmup_steps": SearchRange(low=0, high=200, step=100), "train.lr": SearchRange(low=1e-4, high=3e-4, step=1e-4)})
    found = distributions(config)
    assert type(found["train.epochs"]).__name__ == "IntDistribution"
    assert type(found["train.lr"]).__name__ == "FloatDistribution"
    assert grid(config) == {"lora.r": [4, 8], "train.epochs": [1, 2, 3], "train.warmup_steps": [0, 100, 200],
                            "train.lr": [1e-4, 2e-4, 3e-4]}


VANISHED = "ERROR: failed to show experiments - directory '/p/.dvc/tmp/exps/tmpw6qlic5p/.dvc' does not exist\n"
NOT_FOUND = "ERROR: failed to show experiments - _pygit2.NotFoundError: 'object not found - no match for id (75ea7)'\n"
HUNG = None  # the command does not answer: subprocess.TimeoutExpired


@pytest.mark.parametrize(("failures", "error", "calls", "read"), [
    (2, VANISHED, 3, True),    # a running experiment's copy removed mid-listing: asked again, read
    (1, NOT_FOUND, 2, True),   # its git objects gone mid-read
    (2, HUNG, 3, True),        # no answer in time: killed, asked again, read
    (9, VANISHED, 5, False),   # it never settles: the last error, after 5 tries
    (9, HUNG, 5, False),
])
def test_exp_show_is_asked_again_while_it_fails_or_hangs(monkeypatch, failures, error, calls, read):
    """The race seen in CI: `dvc exp show` opens a running experiment's copy that its end has just removed, and
    fails or hangs. Each failure is tried again; only the last of 5 is the command's error."""
    from emotion_pipeline import experiments as tune
    from emotion_pipeline.errors import UserError

    asked = []

    def dvc_failing_first(*args, check=True, timeout_s=None):
        asked.append((args, timeout_s))
        if len(asked) > failures:
            return subprocess.CompletedProcess(args, 0, "[]", "")
        if error is HUNG:
            raise subprocess.TimeoutExpired(args, timeout_s)
        return subprocess.CompletedProcess(args, 255, "", error)

    monkeypatch.setattr(tune, "dvc", dvc_failing_first)
    if read:
        assert tune.show_experiments(pause_s=0) == []
    else:
        last = "it did not answer within 120 s" if error is HUNG else "failed to show experiments - directory"
        with pytest.raises(UserError, match=f"dvc exp show --json failed 5 times in a row; the last time: {last}"):
            tune.show_experiments(pause_s=0)
    assert asked == [(("exp", "show", "--json"), tune.EXP_SHOW_TIMEOUT_S)] * calls
