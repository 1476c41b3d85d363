"""prepare: raw data (hub id or local folder) -> data/prepared/*.parquet + metrics/data_report.json.

Reads params section: data.
"""

from __future__ import annotations

import json
import logging

from emotion_pipeline.config import load_params
from emotion_pipeline.data import data_report, load_splits
from emotion_pipeline.errors import run_stage
from emotion_pipeline.io import atomic_dir, write_json
from emotion_pipeline.paths import DATA_REPORT, LABELS_FILE, PREPARED_DIR

log = logging.getLogger("prepare")


def main() -> None:
    cfg = load_params().data
    log.info("loading %s", cfg.source)
    splits = load_splits(cfg)

    report = data_report(splits, cfg.labels)
    for warning in report["warnings"]:
        log.warning(warning)
    for pair, count in report["overlap"].items():
        if count:
            log.warning("%d texts appear in both %s splits (kept; see %s)", count, pair, DATA_REPORT)

    with atomic_dir(PREPARED_DIR) as staging:
        for split, frame in splits.items():
            frame.to_parquet(staging / f"{split}.parquet", index=False)
            log.info("%s: %d rows", split, len(frame))
        (staging / LABELS_FILE).write_text(json.dumps({"labels": cfg.labels}, indent=2) + "\n")
    write_json(DATA_REPORT, report)


if __name__ == "__main__":
    run_stage(main)
