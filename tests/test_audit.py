"""The label audit (python -m emotion_pipeline.audit): labels flipped on purpose are found, an unflipped split is not
flagged at those rows, and the command writes its CSV and report from a prepared project."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import copy_project, run, set_params, tiny_params

from emotion_pipeline.data.label_issues import label_issues, out_of_sample_probabilities

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
ROWS, FLIPPED = 8000, 80  # 1 % of the labels flipped, each to another class at random (seeded)


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
