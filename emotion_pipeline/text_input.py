"""Reading texts from files, one way for every entry point: the raw data (prepare), emotion-predict, emotion-batch.

Four formats: .txt (one text per line; for the raw data 'text;label'), .csv, .jsonl and .parquet (a named
column). Every reader takes UTF-8 with or without a byte-order mark, ends lines where an editor does ('\\n',
'\\r\\n' or '\\r'), numbers rows as emotion-predict prints them (a .txt or .jsonl file by line, a .csv by row
with its header as line 1, a .parquet by row from 1), and turns what it cannot read into a UserError that
names the file and line. Nothing here holds a whole file: the readers stream. (What becomes of an empty text:
emotion_pipeline.empty_texts.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from emotion_pipeline.errors import UserError, first_line

FORMATS = (".txt", ".csv", ".jsonl", ".parquet")
ROWS_PER_CHUNK = 4096  # rows a reader holds at once (a .csv or .parquet file is read this many rows at a time)
_LINE_END = re.compile("\r\n|\r|\n")


def missing_columns(where: str, missing: list[str], present: list, fix: str) -> UserError:
    """The one message for a table without the column(s) it needs: what is missing, what is there, how to fix it."""
    names = ", ".join(f"'{name}'" for name in missing)
    return UserError(f"{where}: no column{'s' if len(missing) > 1 else ''} {names} (it has: "
                     f"{', '.join(map(str, present))}); {fix}.")


def utf8_lines(source: Path | BinaryIO, name: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line without its line end) of a file or a binary stream (``name`` in messages), decoded as
    UTF-8, a leading byte-order mark dropped (Windows editors write one); a line that is not UTF-8 is a UserError
    naming it (a PNG given as text, a latin-1 file)."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            yield from utf8_lines(handle, str(source))
        return
    number = 0
    for raw in source:
        try:
            text = raw.decode("utf-8-sig" if number == 0 else "utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{name}, line {number + 1}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                            f"give UTF-8 text.") from None
        lines = _LINE_END.split(text)
        if lines[-1] == "":  # the line end of the last one
            lines.pop()
        for line in lines:
            number += 1
            yield number, line


def check_utf8(path: Path) -> None:
    for _ in utf8_lines(path):
        pass


def json_objects(path: Path, example: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON Lines file; a line that is not a JSON object is a
    UserError naming it and showing ``example``."""
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            record, detail = None, exc.msg
        else:
            detail = f"a JSON {type(record).__name__}"
        if not isinstance(record, dict):
            raise UserError(f"{path}, line {number}: not a JSON object ({detail}); each line must be an object such "
                            f"as {example}.")
        yield number, record


def table_columns(path: Path) -> list[str]:
    """The columns of a .csv (its header), .jsonl (its first object) or .parquet file (its schema)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(path).names
        except Exception as exc:  # pyarrow's errors share no base class: a file that is not Parquet
            raise UserError(f"{path}: not a Parquet file ({first_line(exc)}).") from None
    if path.suffix == ".jsonl":
        return next((list(record) for _, record in json_objects(path, '{"text": "..."}')), [])
    check_utf8(path)
    import csv

    with path.open(encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle), [])


def check_text_file(path: Path, column: str, option: str) -> None:
    """A file that ``numbered_texts`` can read: it exists and, unless read by line, has ``column``; read by line,
    it is UTF-8 throughout. ``option`` is the command's option that named the file (--file, --input)."""
    if path.is_dir():
        raise UserError(f"{option}: '{path}' is a folder; give a file (one text per line, or a .csv, .jsonl or .parquet "
                        f"file with --column).")
    if not path.exists():
        raise UserError(f"{option}: '{path}' does not exist (looked for {path.absolute()}).")
    if not path.is_file():  # a pipe (`--file <(zcat texts.gz)`), a device: read once, line by line, as it comes
        if path.suffix in (".csv", ".jsonl", ".parquet"):
            raise UserError(f"{option}: '{path}' is not a regular file; a .csv, .jsonl or .parquet file must be one.")
        return
    if path.suffix in (".csv", ".jsonl", ".parquet"):
        columns = table_columns(path)
        if column not in columns:
            raise missing_columns(str(path), [column], columns, "name the text column with --column")
        if path.suffix == ".jsonl":  # every line an object, before any record is printed
            for _ in json_objects(path, f'{{"{column}": "..."}}'):
                pass
    else:
        check_utf8(path)  # a file given by mistake (a picture, a latin-1 export) is refused before any model loads


def numbered_texts(path: Path, column: str) -> Iterator[tuple[int, str | None]]:
    """(line or row number, text) for every text of a file (check_text_file first), streamed: a .csv, .jsonl or
    .parquet file's ``column``, any other file's lines. A missing or null value is None (an empty text)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_CHUNK, columns=[column]):
            for value in batch.column(0).to_pylist():
                number += 1
                yield number, None if value is None else str(value)
    elif path.suffix == ".jsonl":
        for number, record in json_objects(path, f'{{"{column}": "..."}}'):
            value = record.get(column)
            yield number, None if value is None else str(value)
    elif path.suffix == ".csv":
        yield from _csv_texts(path, column)
    else:
        yield from utf8_lines(path)


def _csv_texts(path: Path, column: str) -> Iterator[tuple[int, str]]:
    import pandas as pd

    check_utf8(path)  # pandas would say only that some byte somewhere is not UTF-8
    # Every value a string, none of them null, as emotion-batch reads a CSV: "007" stays "007", "NA" stays "NA".
    chunks = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", usecols=[column],
                         chunksize=ROWS_PER_CHUNK)
    number = 1  # line 1 is the header
    try:
        for chunk in chunks:
            for value in chunk[column]:
                number += 1
                yield number, value
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: not a CSV file that can be read ({first_line(exc)}).") from None
