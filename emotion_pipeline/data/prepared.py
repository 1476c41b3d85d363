"""The prepared data every stage reads: one Parquet file per split and the label file.

prepare writes them (``write_prepared``); train, evaluate, export and baseline read them
(``read_prepared``). The label file, ``labels.json``, is also saved beside the trained adapter,
so the class names travel with the model: ``write_labels`` / ``read_labels`` are its only
reader and writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emotion_pipeline.errors import UserError

SPLITS = ("train", "validation", "test")
LABELS_FILE = "labels.json"  # the class names, in id order


def write_labels(folder: Path, labels: list[str]) -> None:
    (folder / LABELS_FILE).write_text(json.dumps({"labels": labels}, indent=2) + "\n", encoding="utf-8")


def read_labels(folder: Path) -> list[str]:
    path = folder / LABELS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: {folder} was not written by this pipeline, or only in part; "
                        f"re-run the stage that writes it (dvc repro).")
    return json.loads(path.read_text(encoding="utf-8"))["labels"]


def write_prepared(folder: Path, splits: dict[str, pd.DataFrame], labels: list[str]) -> None:
    """Each split as ``<split>.parquet`` (columns text, label id) and the label file, into ``folder``."""
    for split in SPLITS:
        splits[split].to_parquet(folder / f"{split}.parquet", index=False)
    write_labels(folder, labels)


def read_prepared(prepared_dir: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The prepared splits and the label list that prepare wrote."""
    if not (prepared_dir / LABELS_FILE).is_file():
        raise UserError(f"{prepared_dir / LABELS_FILE} not found: run the prepare stage first (dvc repro prepare).")
    return {split: pd.read_parquet(prepared_dir / f"{split}.parquet") for split in SPLITS}, read_labels(prepared_dir)
