"""Reading the raw emotion data, from the hub or a local folder: used by the prepare stage only.

Local folders hold one file per split in one of four formats (.txt 'text;label' lines, .csv,
.jsonl, .parquet); all are read alike: UTF-8 with or without a byte-order mark, blank lines
skipped, line numbers as an editor shows them. Every split becomes a DataFrame with two columns, ``text`` (str) and ``label`` (int class id,
the position of the class name in ``data.labels``). Anything that cannot be mapped is a
UserError naming the file and line, never a silently dropped row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emotion_pipeline.config import DataConfig
from emotion_pipeline.data.prepared import SPLITS
from emotion_pipeline.errors import UserError, first_line
from emotion_pipeline.paths import RAW_DATA_DIR
from emotion_pipeline.sources import not_local_either, resolve_source, warn_if_untracked
from emotion_pipeline.text_input import FORMATS, check_utf8, json_objects, missing_columns, utf8_lines

# Other names a split file goes by (Kaggle ships the validation split as val.txt).
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}


def load_splits(cfg: DataConfig) -> dict[str, pd.DataFrame]:
    """Load train/validation/test from ``cfg.source`` with labels mapped to class ids."""
    source = resolve_source(cfg.source, "data.source", f"an existing local folder holding train/validation/test files "
                            f"({', '.join(FORMATS)}) or a Hugging Face dataset id such as dair-ai/emotion")
    if isinstance(source, Path):
        warn_if_untracked(source, RAW_DATA_DIR, "data.source")
        if not source.is_dir():
            raise UserError(f"data.source: '{cfg.source}' is a file, not a folder; give the folder that holds the "
                            f"train/validation/test files ({', '.join(FORMATS)}).")
        return {split: load_local_split(source, split, cfg) for split in SPLITS}
    return load_hub_splits(cfg)


def load_hub_splits(cfg: DataConfig) -> dict[str, pd.DataFrame]:
    """Load a hub dataset through ``datasets.load_dataset``; ClassLabel ids are mapped by name."""
    import datasets  # imported here: slow, and not needed for local folders

    try:
        dataset = datasets.load_dataset(cfg.source, revision=cfg.revision)
    except Exception as exc:  # the hub raises many types: connection, auth, missing repo
        raise UserError(
            f"data.source: could not load '{cfg.source}' from the Hugging Face hub ({type(exc).__name__}: "
            f"{first_line(exc, 'no detail')}), and {not_local_either(cfg.source)}. Offline, set data.source to a local folder "
            f"with train/validation/test files, for example ../shared/data/emotion."
        ) from None
    splits = {}
    for split in SPLITS:
        name = next((alias for alias in SPLIT_ALIASES[split] if alias in dataset), None)
        if name is None:
            raise UserError(f"data.source: hub dataset '{cfg.source}' has no '{split}' split (it has: {', '.join(dataset)}).")
        part = dataset[name]
        _require_columns(list(part.column_names), cfg, f"hub dataset {cfg.source} [{name}]")
        raw_labels = part[cfg.label_column]
        feature = part.features[cfg.label_column]
        if hasattr(feature, "int2str"):  # a ClassLabel: map the id to its name, then through our label list
            raw_labels = [feature.int2str(int(value)) for value in raw_labels]
        frame = pd.DataFrame({"text": part[cfg.text_column], "label": raw_labels}, index=range(1, len(part) + 1))
        splits[split] = _finish(frame, cfg.labels, f"hub dataset {cfg.source} [{name}]", line_word="row")
    return splits


def find_split_file(folder: Path, split: str) -> Path:
    """The one file in ``folder`` that holds ``split``, e.g. train.txt or val.csv."""
    candidates = [folder / f"{alias}{ext}" for alias in SPLIT_ALIASES[split] for ext in FORMATS]
    found = [path for path in candidates if path.is_file()]
    if not found:
        names = ", ".join(f"{alias}{{{','.join(FORMATS)}}}" for alias in SPLIT_ALIASES[split])
        raise UserError(f"data.source: no {split} split file in '{folder}'; expected one of {names}.")
    if len(found) > 1:
        raise UserError(
            f"data.source: several files could hold the {split} split in '{folder}': "
            f"{', '.join(p.name for p in found)}; keep exactly one."
        )
    return found[0]


def load_local_split(folder: Path, split: str, cfg: DataConfig) -> pd.DataFrame:
    """One split file as text/label-id rows; the frame index of each reader is the row's file line."""
    path = find_split_file(folder, split)
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty; the {split} split needs at least one example.")
    line_word = "line"
    if path.suffix == ".txt":
        frame = _read_semicolon_lines(path)
    elif path.suffix == ".csv":
        frame = _read_csv(path)
    elif path.suffix == ".jsonl":
        frame = _read_jsonl(path, cfg)
    else:
        frame, line_word = pd.read_parquet(path), "row"
        frame.index = range(1, len(frame) + 1)
    if frame.empty:
        raise UserError(f"{path}: the file has no rows; the {split} split needs at least one example.")
    if path.suffix != ".txt":
        _require_columns(list(frame.columns), cfg, str(path))
        frame = frame[[cfg.text_column, cfg.label_column]].set_axis(["text", "label"], axis=1)
    return _finish(frame, cfg.labels, str(path), line_word)


def _read_semicolon_lines(path: Path) -> pd.DataFrame:
    """Parse 'text;label' lines, splitting on the last ';' (texts may contain ';')."""
    rows, numbers = [], []
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        if ";" not in line:
            raise UserError(f"{path}, line {number}: no ';' separator; each line must be 'text;label', got {line[:80]!r}.")
        text, label = line.rsplit(";", 1)
        rows.append((text, label.strip()))
        numbers.append(number)
    return pd.DataFrame(rows, columns=["text", "label"], index=numbers)


def _read_csv(path: Path) -> pd.DataFrame:
    check_utf8(path)
    # Blank lines are kept while reading, so that row i is file line i + 2 (line 1 is the header).
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    frame.index = frame.index + 2
    return frame[(frame != "").any(axis=1)]


def _read_jsonl(path: Path, cfg: DataConfig) -> pd.DataFrame:
    example = f'{{"{cfg.text_column}": "...", "{cfg.label_column}": "joy"}}'
    rows = list(json_objects(path, example))
    return pd.DataFrame.from_records([record for _, record in rows], index=[number for number, _ in rows])


def _require_columns(columns: list[str], cfg: DataConfig, where: str) -> None:
    missing = [column for column in (cfg.text_column, cfg.label_column) if column not in columns]
    if missing:
        raise missing_columns(where, missing, columns, "rename them or set data.text_column / data.label_column")


def _finish(frame: pd.DataFrame, labels: list[str], where: str, line_word: str = "line") -> pd.DataFrame:
    """Check texts, map labels to ids; errors name the file and the line (the frame index) of the bad row."""
    for number, text in frame["text"].items():
        if pd.isna(text) or not str(text).strip():
            raise UserError(f"{where}, {line_word} {number}: empty text ({text!r}); every example needs some text.")
    label_ids = {name: index for index, name in enumerate(labels)}
    ids = []
    for number, value in frame["label"].items():
        label_id = _label_id(value, label_ids)
        if label_id is None:
            raise UserError(
                f"{where}, {line_word} {number}: unknown label {value!r}; valid labels are "
                f"{', '.join(labels)} (or their ids 0-{len(labels) - 1}), as set in data.labels."
            )
        ids.append(label_id)
    return pd.DataFrame({"text": frame["text"].astype(str).tolist(), "label": np.asarray(ids, dtype=np.int64)})


def _label_id(value: object, label_ids: dict[str, int]) -> int | None:
    """A class name maps through data.labels; an integer is taken as the id itself."""
    if isinstance(value, str):
        value = value.strip()
        if value in label_ids:
            return label_ids[value]
        if value.isdigit():
            value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= int(value) < len(label_ids):
        return int(value)
    return None
