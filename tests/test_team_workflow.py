"""A team's workflow with real DVC storage: a queued sweep in one clone, shared through a bare git
origin and a local DVC remote, pulled and compared in another clone. Real `dvc`, no mocks.

Inputs are given the way a user gives them: the data as a DVC-tracked folder inside the project
(data/raw/emotion300, `dvc add`), the base model by a relative path outside it (../tiny-qwen3).
Queued experiments run in a copy of the project under .dvc/tmp/exps/, so both kinds of path
must resolve there too.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
from conftest import LABELS, copy_project, run, set_params, stages_run, start_queue_worker, tiny_params, wait_for_queue

pytestmark = pytest.mark.slow

GIT = ["git", "-c", "user.name=team", "-c", "user.email=team@example.com"]
LEARNING_RATES = ("0.0001", "0.001")


def exp_rows(project: Path) -> list[dict]:
    """`dvc exp show --csv` as dicts: one per workspace, baseline and experiment."""
    return list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], project).stdout)))


def experiments(project: Path) -> dict[str, dict]:
    return {row["Experiment"]: row for row in exp_rows(project) if row["Experiment"]}


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def export_files(project: Path) -> dict[str, bytes]:
    return folder_files(project / "models" / "export")


@pytest.fixture(scope="module")
def team(tmp_path_factory, small_data: Path, tiny_model: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("team")
    origin, storage = root / "origin.git", root / "dvc-storage"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root)
    shutil.copytree(tiny_model, root / "tiny-qwen3")

    a = copy_project(root / "a", tiny_params(small_data, tiny_model))
    shutil.copytree(small_data, a / "data" / "raw" / "emotion300")
    run(["dvc", "add", "-q", "data/raw/emotion300"], a)
    # The int8 build (~30 s a run) adds nothing to what is shared here; tests/test_int8.py covers it.
    set_params(a, {"data": {"source": "data/raw/emotion300"}, "model": {"name": "../tiny-qwen3"},
                   "quantize": {"enabled": False}, "train": {"epochs": 1}})  # one epoch: what is shared, not how well
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], a)
    run(["git", "remote", "add", "origin", str(origin)], a)
    run(["dvc", "repro"], a)
    run(["git", "add", "-A"], a)
    run([*GIT, "commit", "-qm", "baseline: tiny pipeline on tracked data"], a)
    run(["dvc", "push", "-q"], a)
    run(["git", "push", "-q", "origin", "HEAD:main"], a)
    baseline_export = export_files(a)

    # A two-point sweep through the queue, then shared: experiments' git refs and their outputs.
    run(["dvc", "exp", "run", "--queue", "-S", f"train.lr={','.join(LEARNING_RATES)}"], a)
    start_queue_worker(a)
    wait_for_queue(a, experiments=len(LEARNING_RATES))
    run(["dvc", "exp", "push", "origin"], a)
    return {"root": root, "a": a, "origin": origin, "baseline_export": baseline_export}


def test_a_queued_sweep_runs_every_point_and_prepare_once(team):
    a = team["a"]
    swept = experiments(a)
    assert sorted(row["train.lr"] for row in swept.values()) == sorted(LEARNING_RATES), swept
    for name, row in swept.items():
        assert row["State"] == "Success", row
        assert 0.0 <= float(row["metrics/test.json:macro_f1"]) <= 1.0
        assert row["model.name"] == "../tiny-qwen3" and row["data.source"] == "data/raw/emotion300"
        log = run(["dvc", "queue", "logs", name], a).stdout
        assert "Running stage 'train'" in log, log[-3000:]
        # prepare's inputs did not change: it ran once, for the baseline, never per point.
        assert "Running stage 'prepare'" not in log, log[-3000:]


def test_a_teammate_pulls_the_model_and_the_experiments_without_training(team):
    b = team["root"] / "b"
    run(["git", "clone", "-q", "-b", "main", str(team["origin"]), str(b)], team["root"])
    run(["dvc", "pull", "-q"], b)
    assert export_files(b) == team["baseline_export"]
    assert "up to date" in run(["dvc", "status"], b).stdout
    assert stages_run(run(["dvc", "repro"], b).stdout) == set()

    run(["dvc", "exp", "pull", "origin"], b)
    pulled, swept = experiments(b), experiments(team["a"])
    assert pulled.keys() == swept.keys()
    for name, row in pulled.items():
        assert row["metrics/test.json:macro_f1"] == swept[name]["metrics/test.json:macro_f1"]

    # Bring one experiment's model back: its outputs come from the remote, nothing re-trains.
    name = next(name for name, row in pulled.items() if row["train.lr"] == LEARNING_RATES[1])
    run(["dvc", "exp", "apply", name], b)
    run(["dvc", "checkout"], b)
    assert "up to date" in run(["dvc", "status"], b).stdout
    assert export_files(b) != team["baseline_export"]
    assert stages_run(run(["dvc", "repro"], b).stdout) == set()


def test_plots_render_offline_and_compare_experiments(team):
    a = team["a"]
    run(["python", "-m", "emotion_pipeline.dev.plots", "show"], a)
    page = (a / "dvc_plots" / "index.html").read_text()
    # No script from the network: the Vega libraries are inlined, DVC's CDN tags are gone.
    assert "<script src" not in page.replace(" ", "") and "cdn.jsdelivr" not in page
    assert "vegaEmbed" in page and len(page) > 500_000
    for plot in ("metrics/train_log/plots/metrics/train/loss.tsv", "metrics/train_log/plots/metrics/eval/macro_f1.tsv",
                 "Test confusion matrix"):
        assert plot in page, plot
    static = a / "dvc_plots" / "static"
    confusion = (static / "Test_confusion_matrix.svg").read_text()
    assert all(label in confusion for label in LABELS)
    for name in ("Test_confusion_matrix", "metrics_train_log_plots_metrics_train_loss",
                 "metrics_train_log_plots_metrics_eval_macro_f1"):
        assert (static / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # Two experiments of the sweep, side by side.
    names = sorted(experiments(a))
    run(["python", "-m", "emotion_pipeline.dev.plots", "diff", *names, "-o", "plots_diff"], a)
    compared = (a / "plots_diff" / "index.html").read_text()
    assert all(name in compared for name in names) and "cdn.jsdelivr" not in compared


def test_a_sweep_spread_over_two_machines_is_collected_in_a_third(team):
    """What each job of a Slurm array or a SkyPilot task does (profiles/cluster/): clone, pull the
    inputs, run one sweep point, push it. Two clones stand for two machines; a third collects."""
    root, origin = team["root"], str(team["origin"])
    points = {"machine-1": "0.0003", "machine-2": "0.003"}
    for name, lr in points.items():
        machine = root / name
        run(["git", "clone", "-q", "-b", "main", origin, str(machine)], root)
        run(["dvc", "pull", "-q"], machine)  # inputs and the baseline's outputs: only what changes re-runs
        ran = run(["dvc", "exp", "run", "-n", name, "-S", f"train.lr={lr}"], machine)
        assert stages_run(ran.stdout) == {"train", "evaluate", "export", "quantize"}
        run(["dvc", "exp", "push", "origin", name], machine)

    collector = root / "collector"
    run(["git", "clone", "-q", "-b", "main", origin, str(collector)], root)
    run(["dvc", "exp", "pull", "origin"], collector)
    collected = experiments(collector)
    for name, lr in points.items():
        assert name in collected, sorted(collected)
        row, on_machine = collected[name], experiments(root / name)[name]
        assert row["train.lr"] == lr
        assert row["metrics/test.json:macro_f1"] == on_machine["metrics/test.json:macro_f1"] != ""
    # Its model comes with it: apply + checkout, nothing re-trains.
    run(["dvc", "exp", "apply", "machine-2"], collector)
    run(["dvc", "checkout"], collector)
    assert stages_run(run(["dvc", "repro"], collector).stdout) == set()
    assert export_files(collector) == export_files(root / "machine-2")


def test_the_model_is_fetched_by_artifact_name_at_any_version(team, tmp_path):
    """`dvc artifacts get` from the origin and its DVC remote: no clone, no training. Versions are
    annotated git tags in the model-registry convention, <artifact>@v<semver>."""
    a, origin = team["a"], str(team["origin"])
    run([*GIT, "tag", "-a", "emotion-classifier@v1.0.0", "-m", "baseline model"], a)
    # A second version: the better experiment of the sweep, committed, shared and tagged.
    best = max(experiments(a).items(), key=lambda item: float(item[1]["metrics/test.json:macro_f1"]))[0]
    run(["dvc", "exp", "apply", best], a)
    run(["git", "add", "-A"], a)
    run([*GIT, "commit", "-qm", f"promote {best}"], a)
    run([*GIT, "tag", "-a", "emotion-classifier@v1.1.0", "-m", f"experiment {best}"], a)
    run(["dvc", "push", "-q"], a)
    run(["git", "push", "-q", "--tags", "origin", "HEAD:main"], a)

    latest, first = tmp_path / "latest", tmp_path / "v1"
    run(["dvc", "artifacts", "get", origin, "emotion-classifier", "-o", str(latest)], tmp_path)
    run(["dvc", "artifacts", "get", origin, "emotion-classifier", "--rev", "v1.0.0", "-o", str(first)], tmp_path)
    assert folder_files(first) == team["baseline_export"]
    assert folder_files(latest) == export_files(a) != team["baseline_export"]
