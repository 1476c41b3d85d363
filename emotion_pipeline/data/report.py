"""What the prepare stage reports about the data (metrics/data_report.json): rows, label counts, text lengths,
duplicates and texts shared between splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from emotion_pipeline.data.prepared import SPLITS


def data_report(splits: dict[str, pd.DataFrame], labels: list[str]) -> dict:
    """Rows, label counts, text lengths, duplicates and cross-split overlap, per split."""
    report: dict = {"labels": labels, "splits": {}, "overlap": {}, "warnings": []}
    for split, frame in splits.items():
        counts = np.bincount(frame["label"], minlength=len(labels))
        words = frame["text"].str.split().str.len()
        report["splits"][split] = {
            "rows": len(frame),
            "label_counts": {name: int(count) for name, count in zip(labels, counts)},
            "words": {f"p{q}": float(np.percentile(words, q)) for q in (5, 50, 95, 100)},
            "chars": {f"p{q}": float(np.percentile(frame["text"].str.len(), q)) for q in (5, 50, 95, 100)},
            "duplicate_texts": int(frame["text"].duplicated().sum()),
            "duplicate_rows": int(frame.duplicated().sum()),
        }
        missing = [name for name, count in zip(labels, counts) if count == 0]
        if missing:
            report["warnings"].append(f"{split} split has no example of: {', '.join(missing)}")
    texts = {split: set(frame["text"]) for split, frame in splits.items()}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            report["overlap"][f"{first}/{second}"] = len(texts[first] & texts[second])
    return report
