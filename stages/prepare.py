"""prepare: raw data (hub id or local folder) -> data/prepared/*.parquet + metrics/data_report.json.

Reads params section: data.

The story: read the three splits in whatever format they come (emotion_pipeline.data.raw checks
every row and names the file and line of a bad one), describe them in a data report (rows,
label counts, lengths, duplicates, texts shared between splits), optionally drop the train texts
whose label the audit flags (data.drop_label_issues; never validation or test, so scores stay
comparable) or, for the audit's fine-tune probabilities only, hold out one fold of train as the test
split (data.audit_fold), and write them as Parquet with the label file, which every later stage reads.
"""

from __future__ import annotations

import logging

from emotion_pipeline.config import load_params
from emotion_pipeline.data.label_issues import SEED, flagged_train_rows, train_folds
from emotion_pipeline.data.prepared import write_prepared
from emotion_pipeline.data.raw import load_splits
from emotion_pipeline.data.report import data_report
from emotion_pipeline.environment import environment_record
from emotion_pipeline.io import atomic_dir, write_json
from emotion_pipeline.paths import DATA_REPORT, PREPARED_DIR

log = logging.getLogger("prepare")


def main() -> None:
    cfg = load_params().data
    log.info("loading %s", cfg.source)
    splits = load_splits(cfg)

    report = data_report(splits, cfg.labels)  # of the data as given, before any lever
    if cfg.drop_label_issues:
        flagged = flagged_train_rows(splits, cfg.labels)
        log.info("data.drop_label_issues: dropping %d of %d train texts the label audit flags", len(flagged),
                 len(splits["train"]))
        splits["train"] = splits["train"].drop(index=splits["train"].index[flagged]).reset_index(drop=True)
        report["dropped_label_issues"] = {"train_rows": flagged.tolist(), "train_rows_left": len(splits["train"])}
    if cfg.audit_fold is not None:
        held_out = train_folds(splits["train"], cfg.audit_folds, SEED)[cfg.audit_fold]
        log.warning("data.audit_fold: fold %d of %d of train (%d texts) is this run's test split, for the label audit's "
                    "fine-tune probabilities: its test scores are out-of-fold train scores, not test scores",
                    cfg.audit_fold, cfg.audit_folds, len(held_out))
        train = splits["train"]
        splits["test"] = train.iloc[held_out].reset_index(drop=True)
        splits["train"] = train.drop(index=train.index[held_out]).reset_index(drop=True)
        report["audit_fold"] = {"fold": cfg.audit_fold, "folds": cfg.audit_folds, "seed": SEED,
                                "held_out_train_rows": held_out.tolist()}
    report["source"] = {"data.source": cfg.source, "data.revision": cfg.revision}  # which data this run used
    report["environment"] = environment_record()  # which versions read and wrote it
    for warning in report["warnings"]:
        log.warning(warning)
    for pair, count in report["overlap"].items():
        if count:
            log.warning("%d texts appear in both %s splits (kept; see %s)", count, pair, DATA_REPORT)

    with atomic_dir(PREPARED_DIR) as staging:
        write_prepared(staging, splits, cfg.labels)
    for split, frame in splits.items():
        log.info("%s: %d rows", split, len(frame))
    write_json(DATA_REPORT, report)
