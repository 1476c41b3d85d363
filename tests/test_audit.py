"""The label audit (python -m emotion_pipeline.audit): labels flipped on purpose are found, an unflipped split is not
flagged at those rows, and the command writes its CSV and report from a prepared project."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import copy_finished, copy_project, run, set_params, start_queue_worker, tiny_params, wait_for_queue

from emotion_pipeline.data.label_issues import SEED, label_issues, out_of_sample_probabilities, train_folds

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
ROWS, FLIPPED = 8000, 80  # 1 % of the labels flipped, each to another class at random (seeded)
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def read_split(emotion_dir: Path, split: str, rows: int) -> pd.DataFrame:
    lines = (emotion_dir / f"{split}.txt").read_text(encoding="utf-8").splitlines()[:rows]
    pairs = [line.rsplit(";", 1) for line in lines]
    return pd.DataFrame({"text": [text for text, _ in pairs], "label": [LABELS.index(label) for _, label in pairs]})


@pytest.mark.slow
def test_flipped_labels_are_at_the_top_of_the_audit(emotion_dir):
    train = read_split(emotion_dir, "train", ROWS)
    rng = np.random.default_rng(0)
    flipped = rng.choice(ROWS, FLIPPED, replace=False)
    noisy = train.copy()
    noisy.loc[flipped, "label"] = (noisy.loc[flipped, "label"] + rng.integers(1, len(LABELS), FLIPPED)) % len(LABELS)
    held_out = {split: read_split(emotion_dir, split, 100) for split in ("validation", "test")}
    found = {}
    for name, frame in (("flipped", noisy), ("clean", train)):
        probs = out_of_sample_probabilities({"train": frame, **held_out}, len(LABELS), folds=5, seed=0)
        found[name] = label_issues(frame, probs["train"], LABELS, "train")
    top = set(found["flipped"]["row"].head(FLIPPED))
    caught = len(top & set(flipped))
    print(f"top {FLIPPED} of the audit: {caught} of the {FLIPPED} flipped labels; flagged {len(found['flipped'])} "
          f"(flipped split) vs {len(found['clean'])} (clean split)")
    assert caught >= FLIPPED // 2
    # The same texts, their labels as given: those rows are not what the audit flags (the data's own noise is).
    assert len(set(found["clean"]["row"].head(FLIPPED)) & set(flipped)) <= FLIPPED // 10
    assert len(found["clean"]) < len(found["flipped"])
    suggested = found["flipped"].set_index("row").loc[sorted(top & set(flipped)), "suggested"]
    original = [LABELS[label] for label in train.loc[sorted(top & set(flipped)), "label"]]
    assert (suggested.to_numpy() == np.array(original)).mean() > 0.6  # mostly it suggests the label before the flip


def test_the_command_writes_its_csv_and_report(small_data, tiny_model, tmp_path):
    project = copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))
    run(["dvc", "repro", "prepare"], project)
    result = run(["python", "-m", "emotion_pipeline.audit", "--folds", "3", "--top", "5"], project)
    assert result.stdout.startswith("label audit: flagged train ") and "Traceback" not in result.stderr
    issues = pd.read_csv(project / "audit" / "label_issues.csv", keep_default_na=False)
    assert list(issues.columns) == ["split", "row", "text", "given", "suggested", "quality"]
    prepared = {split: pd.read_parquet(project / "data" / "prepared" / f"{split}.parquet") for split in ("train", "test")}
    for row in issues.itertuples():  # each flag names a real row of data/prepared, with its text and given label
        if row.split in prepared:
            assert prepared[row.split]["text"].iloc[row.row] == row.text
            assert LABELS[prepared[row.split]["label"].iloc[row.row]] == row.given
    report = (project / "audit" / "report.md").read_text()
    assert "## Given -> suggested" in report and "## Test texts that also appear in train" in report


def test_the_lever_drops_the_flagged_train_texts_and_nothing_else(small_data, tiny_model, tmp_path):
    project = copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))
    prepared = project / "data" / "prepared"
    run(["python", "-m", "stages", "prepare"], project)
    before = {path.name: path.read_bytes() for path in prepared.iterdir()}
    run(["python", "-m", "emotion_pipeline.audit"], project)  # the audit's defaults are the lever's
    listed = pd.read_csv(project / "audit" / "label_issues.csv", keep_default_na=False).query("split == 'train'")
    assert len(listed) > 0
    set_params(project, {"data": {"drop_label_issues": True}})
    run(["python", "-m", "stages", "prepare"], project)
    after = {path.name: path.read_bytes() for path in prepared.iterdir()}
    assert after["validation.parquet"] == before["validation.parquet"] and after["test.parquet"] == before["test.parquet"]
    train_before, train_after = (pd.read_parquet(io.BytesIO(files["train.parquet"])) for files in (before, after))
    kept = np.setdiff1d(np.arange(len(train_before)), listed["row"].to_numpy())
    assert len(train_after) == len(train_before) - len(listed)
    assert train_after.equals(train_before.iloc[kept].reset_index(drop=True))  # the rest in order, as given
    report = json.loads((project / "metrics" / "data_report.json").read_text())
    assert sorted(report["dropped_label_issues"]["train_rows"]) == sorted(listed["row"].tolist())


def test_an_audit_fold_run_tests_on_one_fold_of_train_and_trains_on_the_rest(small_data, tiny_model, tmp_path):
    project = copy_project(tmp_path / "project", tiny_params(small_data, tiny_model))
    prepared = project / "data" / "prepared"
    run(["python", "-m", "stages", "prepare"], project)
    before = {path.name: path.read_bytes() for path in prepared.iterdir()}
    train = pd.read_parquet(prepared / "train.parquet")
    set_params(project, {"data": {"audit_fold": 1, "audit_folds": 3}})
    result = run(["python", "-m", "stages", "prepare"], project)
    assert "fold 1 of 3 of train" in result.stderr
    held_out = train_folds(train, 3, SEED)[1]
    report = json.loads((project / "metrics" / "data_report.json").read_text())
    assert report["audit_fold"] == {"fold": 1, "folds": 3, "seed": SEED, "held_out_train_rows": held_out.tolist()}
    assert (prepared / "validation.parquet").read_bytes() == before["validation.parquet"]
    assert pd.read_parquet(prepared / "test.parquet").equals(train.iloc[held_out].reset_index(drop=True))
    kept = np.setdiff1d(np.arange(len(train)), held_out)
    assert pd.read_parquet(prepared / "train.parquet").equals(train.iloc[kept].reset_index(drop=True))

    # A fold that is not one of the folds, or a fold with the lever, stops prepare with one paragraph, outputs kept.
    for overrides, words in (({"audit_fold": 3}, "audit_fold 3 is not a fold of data.audit_folds = 3 (valid: 0 to 2"),
                             ({"drop_label_issues": True}, "cannot be combined with drop_label_issues")):
        set_params(project, {"data": {"audit_fold": 1, "audit_folds": 3, **overrides}})
        failed = run(["python", "-m", "stages", "prepare"], project, check=False)
        assert failed.returncode != 0 and words in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
        assert pd.read_parquet(prepared / "train.parquet").equals(train.iloc[kept].reset_index(drop=True))


@pytest.mark.slow
def test_the_audit_takes_train_probabilities_from_one_fine_tune_per_fold(finished_project, tmp_path):
    import dvc.api

    project = copy_finished(finished_project, tmp_path / "project")
    run(["git", "add", "-A"], project)
    run([*GIT, "commit", "-qm", "tiny pipeline, run"], project)
    run(["dvc", "exp", "run", "--queue", "-S", "data.audit_fold=range(0,2)", "-S", "data.audit_folds=2",
         "-S", "train.epochs=1", "evaluate"], project)
    start_queue_worker(project)
    wait_for_queue(project, experiments=2)
    rows = [row for row in csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], project).stdout))
            if row["Experiment"]]
    runs = {int(row["data.audit_fold"]): row for row in rows}
    assert sorted(runs) == [0, 1] and all(row["State"] == "Success" for row in rows), rows
    names = [runs[fold]["Experiment"] for fold in (1, 0)]  # in any order

    shown = run(["python", "-m", "emotion_pipeline.audit", "--finetune", *names, "--top", "5"], project)
    assert shown.stdout.startswith("label audit: flagged train ") and "Traceback" not in shown.stderr
    report = (project / "audit" / "report.md").read_text()
    assert f"train from the fine-tune, 2-fold out-of-fold (runs {', '.join(names)})" in report

    # Each train text's probabilities are those of the run that held it out: the quality of every flagged train text is
    # its given label's probability in that run's predictions.csv, and the two runs' rows cover train once.
    train = pd.read_parquet(project / "data" / "prepared" / "train.parquet")
    given_probability, covered = {}, []
    for fold, row in runs.items():
        held_out = json.loads(dvc.api.read("metrics/data_report.json", repo=str(project), rev=row["rev"]))["audit_fold"]
        predictions = pd.read_csv(io.StringIO(dvc.api.read("metrics/predictions.csv", repo=str(project), rev=row["rev"])),
                                  keep_default_na=False)
        assert held_out["fold"] == fold and predictions["text"].tolist() == train["text"].iloc[held_out["held_out_train_rows"]].tolist()
        for position, train_row in enumerate(held_out["held_out_train_rows"]):
            given_probability[train_row] = predictions[f"prob_{LABELS[train['label'].iloc[train_row]]}"].iloc[position]
        covered += held_out["held_out_train_rows"]
    assert sorted(covered) == list(range(len(train)))
    flagged = pd.read_csv(project / "audit" / "label_issues.csv", keep_default_na=False).query("split == 'train'")
    assert len(flagged) > 0
    for row in flagged.itertuples():
        assert row.quality == pytest.approx(given_probability[row.row], abs=1e-5)

    # One fold missing, or a run that is not a fold run: one paragraph, exit 2.
    for argv, words in (([names[0]], "no run of fold "), ([*names, "workspace"], "'workspace' is not a run of one audit fold")):
        failed = run(["python", "-m", "emotion_pipeline.audit", "--finetune", *argv], project, check=False)
        lines = failed.stderr.strip().splitlines()
        assert failed.returncode == 2 and len(lines) == 1 and words in lines[0], failed.stderr
