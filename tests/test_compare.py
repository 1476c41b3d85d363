"""`python -m emotion_pipeline.compare`: two runs compared on the same test texts, read through DVC.

The slow tests take the session's finished tiny project (a private copy), commit it, run a
two-seed sweep through the real DVC queue (`-S 'train.seed=range(1,3)'`) and compare its experiments
with each other, with the commit and with their TF-IDF baseline, and aggregate them (mean ± std
over the seeds, `python -m emotion_pipeline.aggregate`); then the bad cases: an unknown revision, a revision without
predictions, and predictions over another order of the test texts, each refused with exit 2 and one
paragraph. Real `dvc`, no mocks. The statistics themselves are tested in tests/test_uncertainty.py.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import copy_finished, run, start_queue_worker, wait_for_queue

from emotion_pipeline import aggregate
from emotion_pipeline import compare as compare_module
from emotion_pipeline.compare import main
from emotion_pipeline.errors import UserError

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
SEEDS = (1, 2)  # the sweep: `-S train.seed=range(1,3)`, Hydra's range, as README's seed idiom


@pytest.mark.parametrize("argv, message", [
    ([], "give two revisions to compare"),
    (["HEAD"], "got 1"),
    (["--baseline", "HEAD", "HEAD"], "not both"),
    (["A", "B", "--confidence", "1.5"], "--confidence between 0 and 1"),
])
def test_wrong_arguments_exit_2_with_one_paragraph(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def exp_row(name: str, seed: float, lr: float, macro_f1: float) -> dict:
    """A row as `dvc.api.exp_show()` gives one (a few of its columns)."""
    return {"Experiment": name, "rev": name, "State": "Success", "train.seed": seed, "train.lr": lr,
            "compute.rdzv_endpoint": f"host-{name}:1", "metrics/test.json:accuracy": macro_f1 + 0.1,
            "metrics/test.json:macro_f1": macro_f1, "metrics/test.json:weighted_f1": macro_f1 + 0.05}


def test_aggregate_groups_runs_that_differ_only_in_their_seed(monkeypatch):
    rows = [exp_row("s1", 1, 1e-4, 0.80), exp_row("s2", 2, 1e-4, 0.84), exp_row("s3", 3, 1e-4, 0.82),
            exp_row("other-lr", 1, 2e-4, 0.70), exp_row("alone", 1, 5e-4, 0.60)]
    # Where processes meet changes no result (NO_RESULT_EFFECT): it does not split a group.
    found = aggregate.groups(rows, [], None)
    assert [[row["Experiment"] for row in group] for group in found] == [["s1", "s2", "s3"]]
    assert [row["Experiment"] for row in aggregate.groups(rows, [], "s2")[0]] == ["s1", "s2", "s3"]
    monkeypatch.setattr(aggregate, "half_widths", lambda rev: {"accuracy": 0.01, "macro_f1": 0.02, "weighted_f1": 0.015})
    summary = aggregate.summary(found[0])
    assert summary["scores"]["macro_f1"] == {"mean": 0.82, "std": 0.02, "min": 0.8, "max": 0.84, "bootstrap_half_width": 0.02}
    assert "0.8200 ± 0.0200" in aggregate.report(summary)
    with pytest.raises(UserError, match="no finished experiment named 'nope'"):
        aggregate.groups(rows, ["nope"], None)
    with pytest.raises(UserError, match="two or more"):
        aggregate.groups(rows, [], "alone")


def test_the_environment_section_lists_the_lines_that_differ_per_stage():
    """The upgrade workflow's answer to "what changed": after a lock update, the versions that moved."""
    old = {"cpu": "AMD EPYC", "versions": {"transformers": "5.24.0", "peft": "0.21.2"}}
    new = {"cpu": "AMD EPYC", "versions": {"transformers": "5.25.0", "peft": "0.21.2"}}
    assert compare_module.environment_section({"train": old, "evaluate": old}, {"train": new, "evaluate": None}) == [
        "  train: transformers: 5.24.0 (A) -> 5.25.0 (B)",
        "  evaluate: no environment block recorded for B (a run from before they were written)",
    ]


def compare(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["python", "-m", "emotion_pipeline.compare", *args], project, check=check)


def exp_rows(project: Path) -> dict[str, dict]:
    """`dvc exp show --csv`: experiment name -> its row (params and headline metrics)."""
    rows = csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], project).stdout))
    return {row["Experiment"]: row for row in rows if row["Experiment"]}


@pytest.fixture(scope="module")
def swept(finished_project: Path, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The finished tiny project, committed, plus a queued seed sweep of two experiments (one epoch each, no int8 build)."""
    project = copy_finished(finished_project, tmp_path_factory.mktemp("compare") / "project")
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-qm", "tiny pipeline, run"], project)
    run(["dvc", "exp", "run", "--queue", "-S", f"train.seed=range({SEEDS[0]},{SEEDS[-1] + 1})", "-S", "train.epochs=1",
         "-S", "quantize.enabled=false"], project)
    start_queue_worker(project)
    wait_for_queue(project, experiments=len(SEEDS))
    rows = exp_rows(project)
    assert sorted(int(row["train.seed"]) for row in rows.values()) == list(SEEDS), rows
    assert all(row["State"] == "Success" for row in rows.values()), rows
    return project, rows


def one_paragraph_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_compare_reads_queued_experiments_through_dvc_and_reports_the_paired_statistics(swept):
    project, rows = swept
    (first, first_row), (second, second_row) = sorted(rows.items(), key=lambda item: int(item[1]["train.seed"]))  # A, B

    shown = compare(project, first, second).stdout
    print(shown)
    assert f"A: metrics/predictions.csv of experiment {first}, commit " in shown
    assert f"B: metrics/predictions.csv of experiment {second}, commit " in shown
    assert "300 test texts, the same on both sides; 95% intervals from 2000 bootstrap resamples" in shown
    assert "McNemar's exact test: A alone is right on " in shown and "\nVerdict: " in shown
    # Both seeds ran in this one environment: compare says so, stage by stage.
    assert "  train: the same on both sides\n  evaluate: the same on both sides" in shown

    result = json.loads(compare(project, first, second, "--json").stdout)
    # Each side's scores are the ones its own run wrote into metrics/test.json, as `dvc exp show` lists them.
    for side, row in (("a", first_row), ("b", second_row)):
        assert result["accuracy"][side] == pytest.approx(float(row["metrics/test.json:accuracy"]), abs=1e-6)
        assert result["macro_f1"][side] == pytest.approx(float(row["metrics/test.json:macro_f1"]), abs=1e-6)
        low, high = result["intervals"][side]["macro_f1"]
        assert low <= result["macro_f1"][side] <= high
    for score in ("accuracy", "macro_f1"):
        low, high = result[score]["difference_interval"]
        assert low <= result[score]["difference"] <= high
    assert 0 <= result["mcnemar"]["p_value"] <= 1 and result["examples"] == 300
    assert result["verdict"].startswith(("B better, p = ", "A better, p = ", "no significant difference (p = "))
    assert f"{result['mcnemar']['p_value']:.3g}" in shown

    # The commit the sweep started from (a git revision) against one of its experiments.
    against_commit = json.loads(compare(project, "HEAD", second, "--json").stdout)
    assert against_commit["a"]["name"] == "HEAD" and against_commit["b"]["commit"] == result["b"]["commit"]
    # An experiment against its own TF-IDF baseline: the baseline's per-text predictions, restored there by
    # DVC's run cache, are the ones whose scores metrics/baseline.json holds.
    baseline = json.loads(compare(project, "--baseline", second, "--json").stdout)
    assert baseline["a"]["file"] == "metrics/baseline_predictions.csv" and baseline["b"]["file"] == "metrics/predictions.csv"
    assert baseline["accuracy"]["a"] == pytest.approx(float(second_row["metrics/baseline.json:accuracy"]), abs=1e-6)
    assert baseline["accuracy"]["b"] == result["accuracy"]["b"]


@pytest.mark.slow
def test_aggregate_finds_the_seed_sweep_in_dvc_and_summarises_it(swept):
    """The seed idiom end to end: the two runs that differ only in train.seed are one group, read from DVC."""
    project, rows = swept
    shown = run(["python", "-m", "emotion_pipeline.aggregate"], project).stdout
    print(shown)
    assert shown.startswith("2 runs: ") and "mean ± std over seeds" in shown
    (group,) = json.loads(run(["python", "-m", "emotion_pipeline.aggregate", "--json"], project).stdout)
    assert sorted(group["experiments"]) == sorted(rows) and sorted(group["seeds"]) == list(SEEDS)
    scores = [float(row["metrics/test.json:macro_f1"]) for row in rows.values()]
    macro_f1 = group["scores"]["macro_f1"]
    assert macro_f1["mean"] == pytest.approx(sum(scores) / 2, abs=1e-6)
    assert macro_f1["min"] == pytest.approx(min(scores), abs=1e-6) and macro_f1["max"] == pytest.approx(max(scores), abs=1e-6)
    # Each run's interval, read from its test_details.json through DVC: half its width, averaged.
    assert 0 < macro_f1["bootstrap_half_width"] < 0.5
    like = json.loads(run(["python", "-m", "emotion_pipeline.aggregate", "--like", next(iter(rows)), "--json"],
                          project).stdout)
    assert like == [group]


@pytest.mark.slow
def test_compare_refuses_what_it_cannot_compare_with_one_paragraph(swept):
    project, rows = swept
    some_experiment = next(iter(rows))

    unknown = one_paragraph_error(compare(project, "HEAD", "no-such-experiment", check=False))
    assert "unknown revision 'no-such-experiment'" in unknown and "dvc exp show" in unknown

    # The project's first commit precedes every run: no dvc.lock, no predictions.
    missing = one_paragraph_error(compare(project, "HEAD~1", some_experiment, check=False))
    assert "no predictions for 'HEAD~1'" in missing and "metrics/predictions.csv" in missing

    # The same test texts in another order: a paired comparison would pair the wrong texts.
    predictions = project / "metrics/predictions.csv"
    original = predictions.read_bytes()
    try:
        table = pd.read_csv(predictions, keep_default_na=False)
        table.iloc[::-1].to_csv(predictions, index=False)
        pears = one_paragraph_error(compare(project, "HEAD", "workspace", check=False))
    finally:
        predictions.write_bytes(original)
    assert "predictions over different test sets" in pears and "the first at row 1" in pears
    assert "same texts, in the same order" in pears


def test_macro_f1_counts_every_class_of_data_labels_as_evaluate_does(tmp_path, monkeypatch):
    """A test split and predictions that cover 3 of the 6 classes: compare's macro-F1 is metrics/test.json's (a class
    neither present nor predicted counts as F1 0), not an average over the classes it happens to see."""
    import pandas as pd
    from sklearn.metrics import f1_score

    from emotion_pipeline.config import DataConfig

    labels = DataConfig().labels
    actual = ["sadness", "joy", "joy", "anger", "sadness", "joy"]
    predicted = ["sadness", "joy", "sadness", "anger", "sadness", "anger"]
    table = pd.DataFrame({"text": [f"text {i}" for i in range(6)], "actual": actual, "predicted": predicted})
    monkeypatch.chdir(tmp_path)  # no DVC project here: each side's data.labels are the defaults, as the stages read them
    monkeypatch.setattr(compare_module, "read_predictions", lambda side: table)
    monkeypatch.setattr(compare_module, "read_environments", lambda side: {})
    side = compare_module.Side("workspace", None, "workspace", "metrics/predictions.csv")
    result = compare_module.compare(side, side, 200, 0.95, 0)
    expected = f1_score([labels.index(x) for x in actual], [labels.index(x) for x in predicted], labels=range(6),
                        average="macro", zero_division=0)
    seen_only = f1_score(actual, predicted, average="macro", zero_division=0)  # the old, wrong way
    assert result["macro_f1"]["a"] == pytest.approx(expected, abs=1e-6) != pytest.approx(seen_only, abs=1e-3)
    assert result["intervals"]["a"]["macro_f1"][0] <= expected <= result["intervals"]["a"]["macro_f1"][1]


def test_predictions_recorded_but_gone_from_the_cache_say_so(monkeypatch):
    """After `dvc gc`, a revision's dvc.lock still records its predictions: the message says the cache lost them
    and how to get them back, not that evaluate never ran there."""
    import dvc.api
    import yaml
    from dvc.exceptions import PathMissingError

    lock = yaml.safe_dump({"stages": {"evaluate": {"outs": [{"path": "metrics/predictions.csv", "md5": "0" * 32}]}}})

    def read(path, rev=None, **kwargs):
        if path == "dvc.lock":
            return lock
        raise PathMissingError(path, "the repository")

    monkeypatch.setattr(dvc.api, "read", read)
    side = compare_module.Side("exp-older", "a" * 40, "experiment", "metrics/predictions.csv")
    with pytest.raises(UserError) as refused:
        compare_module.read_predictions(side)
    message = str(refused.value)
    assert "recorded in that revision's dvc.lock" in message and "dvc pull" in message and "never ran" not in message
    monkeypatch.setattr(dvc.api, "read", lambda path, rev=None, **kwargs: (_ for _ in ()).throw(
        PathMissingError(path, "the repository")))
    with pytest.raises(UserError, match="never ran there"):
        compare_module.read_predictions(side)


@pytest.mark.slow
def test_ensemble_averages_the_sweeps_probabilities_and_picks_its_best_member_on_validation(swept, tmp_path):
    import dvc.api
    import numpy as np

    project, rows = swept
    names = sorted(rows, key=lambda name: int(rows[name]["train.seed"]))
    out = tmp_path / "ensemble.csv"
    specs = [*names, f"{names[1]}:baseline"]
    result = json.loads(run(["python", "-m", "emotion_pipeline.ensemble", *specs, "--json", "--out", str(out)], project).stdout)
    shown = run(["python", "-m", "emotion_pipeline.ensemble", *specs], project).stdout
    print(shown)
    assert "ensemble" in shown and "\nVerdict: " in shown
    # Each member's scores are its own run's metrics/test.json (or baseline.json), as `dvc exp show` lists them.
    for member, name in zip(result["members"], names):
        assert member["macro_f1"]["value"] == pytest.approx(float(rows[name]["metrics/test.json:macro_f1"]), abs=1e-6)
        # `dvc exp show` names a metric by its key alone where no other metrics file has the key
        validation = rows[name].get("metrics/train.json:val_macro_f1") or rows[name]["val_macro_f1"]
        assert member["validation_macro_f1"] == pytest.approx(float(validation), abs=1e-6)
    baseline = result["members"][2]
    assert baseline["file"] == "metrics/baseline_predictions.csv"
    assert baseline["macro_f1"]["value"] == pytest.approx(float(rows[names[1]]["metrics/baseline.json:macro_f1"]), abs=1e-6)
    # The best member is chosen on validation, never on test.
    best = max(result["members"], key=lambda member: member["validation_macro_f1"])
    assert result["best_member"] == best["name"] and result["verdict"].endswith(("excludes 0", "contains 0"))
    # The ensemble's class is the argmax of the members' mean probability, text by text.
    labels = json.loads((project / "data" / "prepared" / "labels.json").read_text())["labels"]
    columns = [f"prob_{name}" for name in labels]
    tables = [pd.read_csv(io.StringIO(dvc.api.read(member["file"], repo=str(project), rev=member["commit"])),
                          keep_default_na=False) for member in result["members"]]
    mean = np.mean([table[columns].to_numpy() for table in tables], axis=0)
    ensemble = pd.read_csv(out, keep_default_na=False)
    assert ensemble["predicted"].tolist() == [labels[i] for i in mean.argmax(axis=1)]
    assert ensemble["text"].tolist() == tables[0]["text"].tolist() and len(ensemble) == 300
    low, high = result["ensemble"]["macro_f1"]["interval"]
    assert low <= result["ensemble"]["macro_f1"]["value"] <= high


def test_ensemble_refuses_runs_without_probabilities_and_single_members(monkeypatch, tmp_path, capsys):
    from emotion_pipeline import ensemble

    old = pd.DataFrame({"text": ["a", "b"], "actual": ["joy", "sadness"], "predicted": ["joy", "joy"]})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ensemble, "read_predictions", lambda side: old)
    side = compare_module.Side("exp-old", None, "workspace", "metrics/predictions.csv")
    with pytest.raises(UserError, match="has no class probabilities .* Re-run its evaluate stage"):
        ensemble.ensemble([side, side], 200, 0.95, 0)
    with pytest.raises(SystemExit) as exited:
        ensemble.main(["workspace"])
    assert exited.value.code == 2 and "give two or more different members" in capsys.readouterr().err
