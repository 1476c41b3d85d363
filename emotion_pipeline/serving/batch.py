"""The `emotion-batch` command: classify a file of any size with Ray Data, into Parquet or JSON Lines.

    pip install -e ".[serve]"
    emotion-batch models/int8 --input tweets.txt --output labelled.parquet            # one text per line
    emotion-batch models/int8 --input reviews.csv --column review --output labelled.jsonl --actors 4
    emotion-batch models/export --input corpus.parquet --column body --output out.parquet --address ray://head:10001

The output rows are emotion-predict's records for the same file, in the same order: the line (for
.csv, .jsonl and .parquet, as emotion-predict numbers rows: a CSV's first row is line 2, its header
line 1), the text, the label and its score, and every class's score (or the --top-k best). As in
emotion-predict, empty texts are skipped with a warning naming their line, and a file with no text at
all is an error. The output appears complete or not at all (it is written beside its destination, then
moved into place).

How it runs: Ray Data reads the file in pieces (a text file in byte ranges cut at line ends), streams
them to --actors actors that each load the model once (predict.load_exported, computing on their share
of the CPUs) and score --batch-size texts at a time with predict_proba, and streams the scored rows back
in file order to this process, which numbers them and writes them out. Nothing holds the whole file:
memory stays flat however long the input is. Every 10 s a line on stderr says how many texts are scored.

On a cluster (--address ray://HEAD:10001, or RAY_ADDRESS), the input file and the model folder must be at
the same path on every node (a shared filesystem), and every node needs this project installed; the
output is written on the machine that runs the command.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from emotion_pipeline.commands import run_command
from emotion_pipeline.empty_texts import is_empty, no_text_at_all, skipped_empty
from emotion_pipeline.errors import UserError
from emotion_pipeline.io import atomic_file
from emotion_pipeline.serving.common import check_model, command_parser, require_ray, start_ray, stop_ray, worker_threads
from emotion_pipeline.text_input import check_text_file

try:
    from ray.data import Datasource
except ImportError:  # the core install, without the serve extra: main() says what to install
    Datasource = object

TABLES = (".csv", ".jsonl", ".parquet")  # read by column (--column); any other file by line, as emotion-predict does
PIECE_BYTES = 4 * 2**20  # a text file is read in ranges of about this size: ~40,000 tweets, one read task each
ROWS_PER_BLOCK = 8192
# Texts per call of an actor: predict_proba sorts each call's texts by length before cutting them into forward
# passes of --batch-size, so a call of many texts pads little (a call of 64 consecutive tweets pads to its
# longest: measured ~2.7x slower than emotion-predict, which sorts the whole file).
TEXTS_PER_CALL = 4096
# CPUs Ray may count for the read tasks. The actors take the rest: had they all of them, no read task could be
# scheduled and the run would wait forever (reading is light beside the model).
READ_CPUS = 0.25
# Read tasks at once: reading is far faster than scoring, and each concurrent read task is one more Ray worker
# process (on a 2-core machine Ray started eight of them, ~3 GiB in all).
READERS = 2
PROGRESS_EVERY_S = 10  # a line on stderr this often: Ray Data's own progress bars are off (they need a terminal)


# --------------------------------------------------------------------------- reading


def check_input(path: Path, column: str) -> int:
    """A readable input with the text column; returns the line number of its first text (emotion-predict's numbering)."""
    check_text_file(path, column, "--input")
    if not path.is_file():
        raise UserError(f"--input: '{path}' is not a regular file (a pipe, a device): emotion-batch reads its input in "
                        f"byte ranges, several at once; save it to a file first, or pipe it to emotion-predict.")
    return 2 if path.suffix == ".csv" else 1  # a CSV's line 1 is its header


def read_texts(path: Path, column: str, num_cpus: float, piece_bytes: int | None = None):
    """The input as a Ray Dataset with the text column (for a .txt file: "text"), one row per line or row, in file order.

    Empty texts stay in (as ""): the rows are numbered by position when they come back (write_records). The
    Scorer picks the column itself: a select or rename step would be one more task needing a whole CPU.
    """
    import pyarrow as pa
    import ray.data

    path = path.resolve()  # read tasks run in Ray's workers, whose working folder need not be this one's
    if path.suffix not in TABLES:
        return ray.data.read_datasource(TextLinesDatasource(path, piece_bytes), num_cpus=num_cpus, concurrency=READERS)
    if path.suffix == ".csv":
        from pyarrow import csv

        # Every value a string, none of them null, as emotion-predict reads a CSV (pandas with dtype=str,
        # keep_default_na=False): "007" stays "007", "NA" stays "NA".
        return ray.data.read_csv(str(path), convert_options=csv.ConvertOptions(
            include_columns=[column], column_types={column: pa.string()}, strings_can_be_null=False), num_cpus=num_cpus,
            concurrency=READERS)
    if path.suffix == ".jsonl":
        return ray.data.read_json(str(path), lines=True, num_cpus=num_cpus, concurrency=READERS)
    return ray.data.read_parquet(str(path), columns=[column], num_cpus=num_cpus, concurrency=READERS)


def piece_bounds(path: Path, piece_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of a text file that cover it and each start at a line's start: every line is in exactly one."""
    size = path.stat().st_size
    starts = [0]
    with path.open("rb") as handle:
        for target in range(piece_bytes, size, piece_bytes):
            if target <= starts[-1]:
                continue
            handle.seek(target)
            handle.readline()  # on to the next line's start (a range never cuts a line, nor a '\r\n')
            if handle.tell() < size:
                starts.append(handle.tell())
    return list(zip(starts, starts[1:] + [size]))


def piece_lines(path: Path, start: int, stop: int) -> Iterator[str]:
    """The lines of one byte range as emotion-predict reads a text file: UTF-8 with a leading BOM dropped,
    universal newlines ('\\n', '\\r\\n' or '\\r' ends a line), the line end stripped."""
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read(stop - start)
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig" if start == 0 else "utf-8")
    for line in text:
        yield line.rstrip("\r\n")


def _text_block_reader(path: Path, start: int, stop: int):
    """A read task's body: blocks of up to ROWS_PER_BLOCK lines of one byte range."""

    def read() -> Iterator:
        import pyarrow as pa

        lines: list[str] = []
        for line in piece_lines(path, start, stop):
            lines.append(line)
            if len(lines) == ROWS_PER_BLOCK:
                yield pa.table({"text": pa.array(lines, pa.string())})
                lines = []
        if lines:
            yield pa.table({"text": pa.array(lines, pa.string())})

    return read


class TextLinesDatasource(Datasource):
    """A text file as a Ray Data source: one read task per byte range (piece_bounds), its lines as rows in order.

    (Ray Data's read_text reads a file in one task and keeps a BOM, a '\\r' and Ray's own idea of a line.)
    """

    def __init__(self, path: Path, piece_bytes: int | None = None):
        super().__init__()
        self.path, self.piece_bytes = path.resolve(), piece_bytes or PIECE_BYTES

    def estimate_inmemory_data_size(self) -> int:
        return self.path.stat().st_size

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        return [ReadTask(_text_block_reader(self.path, start, stop),
                         BlockMetadata(num_rows=None, size_bytes=stop - start, exec_stats=None, input_files=(str(self.path),)),
                         per_task_row_limit=per_task_row_limit)
                for start, stop in piece_bounds(self.path, self.piece_bytes)]


# --------------------------------------------------------------------------- scoring (in the actors)


def output_schema(labels: list[str], top_k: int | None):
    """The scored rows' columns, fixed up front: a block of only empty texts must not change the file's schema."""
    import pyarrow as pa

    ranked = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    last = ("top_k", ranked) if top_k else ("scores", pa.struct([(name, pa.float64()) for name in labels]))
    return pa.schema([("text", pa.string()), ("label", pa.string()), ("score", pa.float64()), last])


class Scorer:
    """A Ray Data actor: the model, loaded once; each call scores one batch of texts (empty ones left unlabelled)."""

    def __init__(self, model_dir: str, threads: int, column: str, batch_size: int, top_k: int | None):
        from emotion_pipeline.inference.predict import class_names
        from emotion_pipeline.serving.common import load_in_worker

        self.model, self.tokenizer = load_in_worker(model_dir, threads)
        self.labels = class_names(self.model.config)
        self.column, self.batch_size, self.top_k = column, batch_size, top_k
        self.schema = output_schema(self.labels, top_k)

    def __call__(self, batch):
        import pyarrow as pa

        from emotion_pipeline.inference.predict import predict_proba, score_fields

        # A JSON or Parquet value may be a number or null: emotion-predict reads it as str(value), null as no text.
        texts = ["" if value is None else str(value) for value in batch.column(self.column).to_pylist()]
        kept = [i for i, text in enumerate(texts) if not is_empty(text)]
        probs = predict_proba(self.model, self.tokenizer, [texts[i] for i in kept], self.batch_size)
        rows = [{"text": text, "label": None, "score": None} for text in texts]
        for i, row in zip(kept, probs):
            rows[i].update(score_fields(self.labels, row, self.top_k))
        return pa.Table.from_pylist(rows, schema=self.schema)


# --------------------------------------------------------------------------- writing (in this process)


def write_records(batches: Iterator, output: Path, first_number: int) -> tuple[int, int]:
    """Number the scored rows as they stream back in file order, warn about and drop the empty ones, and write
    them to ``output`` (.parquet or .jsonl), complete or not at all. Returns (texts written, empty texts skipped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number, written, skipped = first_number, 0, 0
    writer = None
    began = reported = time.monotonic()
    with atomic_file(output, binary=True) as handle:  # complete, flushed to disk, or not there at all
        for batch in batches:
            numbers = np.arange(number, number + batch.num_rows)
            number += batch.num_rows
            if time.monotonic() - reported >= PROGRESS_EVERY_S:
                reported = time.monotonic()
                done = number - first_number
                print(f"emotion-batch: {done:,} texts scored ({done / (reported - began):,.0f}/s)", file=sys.stderr,
                      flush=True)
            empty = batch.column("label").is_null().to_numpy(zero_copy_only=False)
            for line in numbers[empty]:
                print(skipped_empty("line", line), file=sys.stderr)
            skipped += int(empty.sum())
            table = batch.filter(pa.array(~empty)).add_column(0, "line", pa.array(numbers[~empty], pa.int64()))
            written += table.num_rows
            if output.suffix == ".parquet":
                writer = writer or pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
            else:
                handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n"
                                     for record in table.to_pylist()).encode("utf-8"))
        if writer is not None:
            writer.close()
        if not written:
            raise no_text_at_all()
    return written, skipped


# --------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(
        "emotion-batch",
        "%(prog)s MODEL_DIR --input FILE --output OUT.parquet|OUT.jsonl [--column NAME] [--actors N] "
        "[--batch-size N] [--top-k K] [--threads N] [--piece-bytes N] [--address ADDR]",
        "Classify every text of a file with Ray Data: N actors, streamed, into Parquet or JSON Lines.", workers="actor")
    parser.add_argument("--input", type=Path, required=True, help="one text per line (.txt), or a .csv, .jsonl or "
                                                                  ".parquet file with --column")
    parser.add_argument("--output", type=Path, required=True, help="where to write the records: .parquet or .jsonl")
    parser.add_argument("--column", default="text", help="the text column of a .csv, .jsonl or .parquet file (default: text)")
    parser.add_argument("--actors", type=int, default=2, help="model copies scoring in parallel (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--top-k", type=int, help="keep the K most likely classes instead of every class's score")
    parser.add_argument("--piece-bytes", type=int, default=PIECE_BYTES,
                        help=f"a .txt input is read in ranges of about this many bytes, one read task each (default: {PIECE_BYTES})")
    args = parser.parse_args(argv)
    # On Ctrl-C or SIGTERM the staging file is removed and Ray stopped on the way out, then one line (run_command).
    run_command(lambda: run(args), interrupted=f"nothing was written to {args.output}")


def run(args: argparse.Namespace) -> None:
    require_ray("emotion-batch")
    for name in ("actors", "batch_size", "threads", "top_k", "piece_bytes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: {getattr(args, name)}; it must be at least 1.")
    if args.output.suffix not in (".parquet", ".jsonl"):
        raise UserError(f"--output: '{args.output}' must end in .parquet or .jsonl (the format to write).")
    if not args.output.parent.is_dir():
        raise UserError(f"--output: the folder {args.output.parent.absolute()} does not exist; create it first.")
    first_number = check_input(args.input, args.column)
    labels = check_model(args.model_dir)
    if args.top_k is not None and args.top_k > len(labels):
        raise UserError(f"--top-k: {args.top_k}, but the model has {len(labels)} classes; give 1 to {len(labels)}.")

    import ray

    started = not ray.is_initialized()  # a caller (a test, a notebook) may have connected already: use its Ray
    ray = start_ray(args.address) if started else ray
    try:
        from ray.data import DataContext

        context = DataContext.get_current()
        # Rows come back in file order, so their position gives their line number (write_records).
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # write_records prints progress lines, terminal or not
        # ... and Ray Data says once that its bars are off, which is this command's choice, not news to the user.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        # A file that fits one read task gets a warning that READERS tasks could not all start: true, and harmless.
        warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks", category=UserWarning)
        from ray.data import ActorPoolStrategy

        threads, cpus = worker_threads(args.actors, ray.cluster_resources().get("CPU", 1) - READ_CPUS, args.threads)
        model_dir = str(Path(args.model_dir).resolve()) if Path(args.model_dir).is_dir() else args.model_dir
        scored = read_texts(args.input, args.column, READ_CPUS, args.piece_bytes).map_batches(
            Scorer, fn_constructor_kwargs={"model_dir": model_dir, "threads": threads, "batch_size": args.batch_size,
                                           "column": args.column if args.input.suffix in TABLES else "text", "top_k": args.top_k},
            batch_size=TEXTS_PER_CALL, batch_format="pyarrow", compute=ActorPoolStrategy(size=args.actors), num_cpus=cpus)
        written, skipped = write_records(scored.iter_batches(batch_format="pyarrow", batch_size=None), args.output,
                                         first_number)
    finally:
        if started:
            stop_ray(ray)
    print(f"emotion-batch: {written:,} texts classified into {args.output}"
          f"{f' ({skipped:,} empty text(s) skipped)' if skipped else ''}.", file=sys.stderr)


if __name__ == "__main__":
    main()
