"""emotion_pipeline.data.raw: every local format loads the same way, and every bad row is named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from emotion_pipeline.config import DataConfig
from emotion_pipeline.data.raw import load_splits
from emotion_pipeline.data.report import data_report
from emotion_pipeline.errors import UserError

ROWS = [("i feel great; really", "joy"), ("i am so sad", "sadness"), ("what a shock", "surprise")]
OK_TXT = "i feel fine;joy\ni feel low;sadness\n"


def write_split(folder: Path, name: str, rows: list[tuple[str, object]], fmt: str) -> Path:
    """Write ``rows`` (text, label) to ``folder/name.fmt`` in one of the supported formats."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{fmt}"
    frame = pd.DataFrame(rows, columns=["text", "label"])
    if fmt == "txt":
        path.write_text("".join(f"{text};{label}\n" for text, label in rows), encoding="utf-8")
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows), encoding="utf-8")
    else:
        frame.to_parquet(path, index=False)
    return path


def make_folder(folder: Path, fmt: str = "txt", rows=ROWS, **files: str | bytes) -> Path:
    """A folder with all three splits in ``fmt``; ``files`` replaces or adds raw files by name."""
    for split in ("train", "validation", "test"):
        write_split(folder, split, rows, fmt)
    for name, content in files.items():
        name = name.replace("_", ".")
        for stale in folder.glob(f"{name.split('.')[0]}.*"):
            stale.unlink()
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return folder


def load(folder: Path, **cfg) -> dict[str, pd.DataFrame]:
    return load_splits(DataConfig(source=str(folder), **cfg))


def load_error(folder: Path, **cfg) -> str:
    with pytest.raises(UserError) as err:
        load(folder, **cfg)
    return str(err.value)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_each_format_loads_text_and_int_label(tmp_path, fmt):
    splits = load(make_folder(tmp_path, fmt))
    assert set(splits) == {"train", "validation", "test"}
    for frame in splits.values():
        assert list(frame.columns) == ["text", "label"]
        assert frame["label"].dtype == "int64"
        assert frame["text"].tolist() == [text for text, _ in ROWS]
        assert frame["label"].tolist() == [1, 0, 5]


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_a_byte_order_mark_is_not_part_of_the_first_text(tmp_path, fmt):
    """Windows editors start UTF-8 files with a BOM; every format drops it rather than keep or choke on it."""
    folder = make_folder(tmp_path, fmt)
    path = folder / f"train.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load(folder)["train"]["text"].tolist() == [text for text, _ in ROWS]


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_windows_line_endings_load_the_same(tmp_path, fmt):
    folder = make_folder(tmp_path, fmt)
    path = folder / f"train.{fmt}"
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    frame = load(folder)["train"]
    assert frame["text"].tolist() == [text for text, _ in ROWS]
    assert frame["label"].tolist() == [1, 0, 5]


def test_txt_splits_on_the_last_semicolon(tmp_path):
    folder = make_folder(tmp_path, train_txt="a; b; c;anger\nx;y ; fear \n")
    frame = load(folder)["train"]
    assert frame["text"].tolist() == ["a; b; c", "x;y "]
    assert frame["label"].tolist() == [3, 4]


def test_val_txt_is_the_validation_split(tmp_path):
    folder = make_folder(tmp_path)
    (folder / "validation.txt").rename(folder / "val.txt")
    (folder / "val.txt").write_text("only one;love\n")
    assert load(folder)["validation"].to_dict("list") == {"text": ["only one"], "label": [2]}


def test_custom_label_list_gives_the_ids(tmp_path):
    folder = make_folder(tmp_path, rows=[("good", "pos"), ("bad", "neg"), ("fine", "pos")])
    assert load(folder, labels=["neg", "pos"])["train"]["label"].tolist() == [1, 0, 1]


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_integer_labels_are_taken_as_ids(tmp_path, fmt):
    folder = make_folder(tmp_path, fmt, rows=[("a", 0), ("b", 5), ("c", 3)])
    assert load(folder)["test"]["label"].tolist() == [0, 5, 3]


@pytest.mark.parametrize("label", [6, -1, "6"])
def test_out_of_range_integer_label_is_unknown(tmp_path, label):
    folder = make_folder(tmp_path, "jsonl", rows=[("a", 0), ("b", label)])
    assert "line 2: unknown label" in load_error(folder)


# --------------------------------------------------------------------------- errors name file and line


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("train.txt", "a;joy\nb;joy\nc;happiness\nd;joy\n", 3),
        ("train.csv", "text,label\na,joy\nb,joy\nc,happiness\n", 4),  # line 1 is the header
        ("train.jsonl", '{"text": "a", "label": "joy"}\n{"text": "c", "label": "happiness"}\n', 2),
    ],
    ids=["txt", "csv", "jsonl"],
)
def test_unknown_label_names_file_and_line(tmp_path, name, content, line):
    message = load_error(make_folder(tmp_path, **{name.replace(".", "_"): content}))
    assert f"{tmp_path / name}, line {line}: unknown label 'happiness'" in message
    assert "sadness, joy, love, anger, fear, surprise" in message


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("train.txt", "a;joy\n\nb;joy\nc;happiness\n", 4),
        ("train.csv", "text,label\na,joy\n\nc,happiness\n", 4),
        ("train.jsonl", '{"text": "a", "label": "joy"}\n\n{"text": "c", "label": "happiness"}\n', 3),
    ],
    ids=["txt", "csv", "jsonl"],
)
def test_blank_lines_do_not_shift_the_reported_line(tmp_path, name, content, line):
    """Blank lines are skipped, but the line number must still be the one an editor shows."""
    message = load_error(make_folder(tmp_path, **{name.replace(".", "_"): content}))
    assert f"{name}, line {line}: unknown label 'happiness'" in message


def test_parquet_unknown_label_names_the_row(tmp_path):
    # Parquet has no lines: rows are counted from 1, like the lines of the text formats.
    folder = make_folder(tmp_path, "parquet", rows=[("a", "joy"), ("b", "happiness")])
    assert f"{folder / 'train.parquet'}, row 2: unknown label 'happiness'" in load_error(folder)


def test_line_without_separator_names_file_and_line(tmp_path):
    message = load_error(make_folder(tmp_path, test_txt="a;joy\nb;joy\nno separator here\n"))
    assert f"{tmp_path / 'test.txt'}, line 3: no ';' separator" in message


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("train.txt", "a;joy\n  ;joy\n", 2),
        ("train.csv", 'text,label\na,joy\nb,joy\n"",joy\n', 4),
        ("train.jsonl", '{"text": "a", "label": "joy"}\n{"text": " ", "label": "joy"}\n', 2),
    ],
    ids=["txt", "csv", "jsonl"],
)
def test_empty_text_names_the_line(tmp_path, name, content, line):
    message = load_error(make_folder(tmp_path, **{name.replace(".", "_"): content}))
    assert f"{name}, line {line}: empty text" in message


@pytest.mark.parametrize("row", ['{"text": null, "label": "joy"}', '{"label": "joy"}'], ids=["null", "absent"])
def test_jsonl_missing_text_value_is_an_error(tmp_path, row):
    """A null or absent text must not become a NaN 'text' in the prepared data."""
    message = load_error(make_folder(tmp_path, train_jsonl='{"text": "a", "label": "joy"}\n' + row + "\n"))
    assert "train.jsonl, line 2" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("train.txt", b"a;joy\ncaf\xe9;joy\n"),
        ("train.csv", b"text,label\ncaf\xe9,joy\n"),
        ("train.jsonl", b'{"text": "a", "label": "joy"}\n{"text": "caf\xe9", "label": "joy"}\n'),
    ],
    ids=["txt", "csv", "jsonl"],
)
def test_non_utf8_bytes_name_the_line(tmp_path, name, content):
    message = load_error(make_folder(tmp_path, **{name.replace(".", "_"): content}))
    assert f"{name}, line 2: not valid UTF-8" in message


def test_empty_file_is_an_error(tmp_path):
    message = load_error(make_folder(tmp_path, validation_txt=""))
    assert f"{tmp_path / 'validation.txt'}: the file is empty" in message


@pytest.mark.parametrize(("name", "content"), [("train.txt", "\n\n"), ("train.csv", "text,label\n")], ids=["txt", "csv"])
def test_file_without_examples_is_an_error(tmp_path, name, content):
    assert name in load_error(make_folder(tmp_path, **{name.replace(".", "_"): content}))


def test_missing_split_lists_the_expected_names(tmp_path):
    folder = make_folder(tmp_path)
    (folder / "validation.txt").unlink()
    message = load_error(folder)
    assert "no validation split file" in message
    for expected in ("validation{", "val{", "dev{", ".txt", ".csv", ".jsonl", ".parquet"):
        assert expected in message


def test_two_files_for_one_split_is_an_error(tmp_path):
    folder = make_folder(tmp_path)
    write_split(folder, "train", ROWS, "csv")
    assert "train.txt, train.csv" in load_error(folder)


def test_missing_source_folder_is_named(tmp_path):
    assert "does not exist" in load_error(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("name", "content"),
    [("train.csv", "sentence,label\na,joy\n"), ("train.jsonl", '{"sentence": "a", "label": "joy"}\n')],
    ids=["csv", "jsonl"],
)
def test_missing_text_column_is_named(tmp_path, name, content):
    message = load_error(make_folder(tmp_path, **{name.replace(".", "_"): content}))
    assert f"{tmp_path / name}: no column 'text' (it has: sentence, label)" in message


def test_configured_columns_are_used(tmp_path):
    folder = make_folder(tmp_path, "csv", train_csv="sentence,emotion\nhi there,love\n")
    for split in ("validation", "test"):
        (folder / f"{split}.csv").write_text("sentence,emotion\nok,fear\n")
    assert load(folder, text_column="sentence", label_column="emotion")["train"].to_dict("list") == {
        "text": ["hi there"], "label": [2]}


# --------------------------------------------------------------------------- data report


def test_data_report_counts_rows_labels_duplicates_and_overlap():
    labels = ["a", "b", "c"]
    frame = lambda rows: pd.DataFrame(rows, columns=["text", "label"])  # noqa: E731
    splits = {
        "train": frame([("x", 0), ("x", 0), ("x", 1), ("y", 1), ("z", 2)]),
        "validation": frame([("x", 0), ("v", 1)]),  # no 'c'
        "test": frame([("x", 0), ("y", 1), ("v", 2), ("t", 2)]),
    }
    report = data_report(splits, labels)
    assert report["labels"] == labels
    train = report["splits"]["train"]
    assert train["rows"] == 5
    assert train["label_counts"] == {"a": 2, "b": 2, "c": 1}
    assert (train["duplicate_texts"], train["duplicate_rows"]) == (2, 1)
    assert report["splits"]["validation"]["label_counts"] == {"a": 1, "b": 1, "c": 0}
    assert report["overlap"] == {"train/validation": 1, "train/test": 2, "validation/test": 2}
    assert report["warnings"] == ["validation split has no example of: c"]
    json.dumps(report)  # written as JSON by prepare


def test_real_emotion_data(emotion_dir):
    splits = load(emotion_dir)
    report = data_report(splits, DataConfig().labels)
    assert {split: info["rows"] for split, info in report["splits"].items()} == {
        "train": 16000, "validation": 2000, "test": 2000}
    counts = report["splits"]["train"]["label_counts"]
    assert (counts["joy"], counts["sadness"]) == (5362, 4666)
    assert sum(counts.values()) == 16000
    assert report["overlap"] == {"train/validation": 5, "train/test": 11, "validation/test": 3}
    assert report["warnings"] == []


def test_hub_dataset_revision_is_passed_to_load_dataset(monkeypatch):
    """data.revision pins the hub dataset; no network here, so the loader is stopped at the call."""
    import datasets

    calls = []

    def offline(source, **kwargs):
        calls.append((source, kwargs))
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="could not load 'dair-ai/emotion'"):
        load_splits(DataConfig(source="dair-ai/emotion", revision="abc123"))
    assert calls == [("dair-ai/emotion", {"revision": "abc123"})]
