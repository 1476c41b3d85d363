"""The `emotion-predict` command: classify texts with an exported model, printing JSON Lines as it goes.

    emotion-predict models/export "i feel so happy today" "that noise scared me"
    emotion-predict models/export --file texts.txt                 # one text per line
    emotion-predict models/export --file reviews.csv --column review   # or .jsonl, .parquet
    cat texts.txt | emotion-predict models/export --top-k 2

Output is one JSON object per text, in input order: its line (or argument) number, the text, the
predicted label and its probability, and every class's probability (or the --top-k best). Input is
read and scored CHUNK texts at a time and each chunk's records printed at once, so memory stays flat
however long the input and the first records appear within seconds. Empty texts are skipped with a
warning naming their line (the rule: emotion_pipeline.empty_texts); input with no text at all is an
error. Bad input (a missing or wrong model folder, a file without the column, bytes that are not
UTF-8) is one paragraph on stderr and exit status 2.

The library this runs on is emotion_pipeline.inference.predict (what the stages use too).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from emotion_pipeline.commands import run_command
from emotion_pipeline.empty_texts import is_empty, no_text_at_all, skipped_empty
from emotion_pipeline.errors import UserError
from emotion_pipeline.inference.predict import (  # noqa: F401 (the library's names, importable from here too)
    MAX_LENGTH,
    OnnxClassifier,
    class_names,
    load_classifier,
    load_exported,
    predict_proba,
    score_fields,
)
from emotion_pipeline.text_input import check_text_file, numbered_texts, utf8_lines

# Texts read, scored and printed at a time: sorted by length within a chunk, 1,024 tweets pad about as little as a
# whole sorted file, and a chunk takes about a second on the CPU, so output and progress keep coming.
CHUNK = 1024


def read_texts(args: argparse.Namespace) -> Iterator[tuple[int, str | None]]:
    """(line or argument number, text) for every input text, from arguments, a file or stdin, streamed."""
    if args.texts:
        yield from enumerate(args.texts, start=1)
    elif args.file is None:
        if sys.stdin.isatty():
            raise UserError("no texts: give them as arguments, with --file, or on standard input.")
        yield from utf8_lines(sys.stdin.buffer, "standard input")
    else:
        yield from numbered_texts(args.file, args.column)


def write_records(lines: Iterable[str]) -> None:
    """Each record to stdout in one write(2): to a pipe, a write of up to PIPE_BUF (4 KiB) is all or nothing, so
    Ctrl-C or SIGTERM, which may come while a reader that paused has filled the pipe, never leaves half a record
    (one over 4 KiB, from a very long text, could be cut). Through sys.stdout where it has no file descriptor."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        sys.stdout.write("".join(lines))
        return
    sys.stdout.flush()
    for line in lines:
        data = line.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]


def warn_if_cut(tokenizer, numbered: list[tuple[int, str]], where: str, progress) -> None:
    """Say so when the model will read only the start of a text (a 5,000-word text is cut to MAX_LENGTH tokens)."""
    # A token is at least one byte, and at most two special tokens are added: shorter texts cannot be cut.
    long = [(number, text) for number, text in numbered if len(text.encode("utf-8")) + 2 > MAX_LENGTH]
    if not long:
        return
    counts = tokenizer([text for _, text in long], return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    for (number, _), ids in zip(long, counts):
        if len(ids) > MAX_LENGTH:
            progress.write(f"warning: the text at {where} {number} is {len(ids):,} tokens long; the model reads its "
                           f"first {MAX_LENGTH}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="emotion-predict",
        usage="%(prog)s MODEL_DIR [TEXT ...] [--file PATH [--column NAME]] [--top-k K] [--batch-size N] [--device D]",
        description="Classify the emotion of each text with an exported model; prints one JSON object per text.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by the export stage, e.g. models/export")
    parser.add_argument("texts", nargs="*", default=[], metavar="TEXT",
                        help="texts to classify (optional: without them, --file or standard input is read)")
    parser.add_argument("--file", type=Path, help="one text per line (.txt), or a .csv / .jsonl / .parquet file with --column")
    parser.add_argument("--column", default="text", help="the text column of a .csv, .jsonl or .parquet file (default: text)")
    parser.add_argument("--top-k", type=int, help="print the K most likely classes instead of every class's score")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1, ... (default: auto)")
    args = parser.parse_intermixed_args(argv)  # options may come before or after the texts
    run_command(lambda: run(args), interrupted="the records printed so far are complete")


def run(args: argparse.Namespace) -> None:
    if args.texts and args.file:
        raise UserError("give texts as arguments or with --file, not both.")
    if args.batch_size < 1 or (args.top_k is not None and args.top_k < 1):
        raise UserError("--batch-size and --top-k must be at least 1.")
    if args.file is not None:
        check_text_file(args.file, args.column, "--file")
    model, tokenizer = load_exported(args.model_dir, args.device)
    labels = class_names(model.config)
    if args.top_k is not None and args.top_k > len(labels):
        raise UserError(f"--top-k: {args.top_k}, but the model has {len(labels)} classes; give 1 to {len(labels)}.")
    where = "argument" if args.texts else "line"
    from tqdm.auto import tqdm

    # A count of texts on a terminal (a file's or stdin's length is not known ahead); nothing in a log.
    progress = tqdm(desc="emotion-predict", unit=" texts", file=sys.stderr, mininterval=1,
                    disable=bool(args.texts) or not sys.stderr.isatty())
    numbered, written = read_texts(args), 0
    try:
        while chunk := list(itertools.islice(numbered, CHUNK)):
            kept = []
            for number, text in chunk:
                if is_empty(text):
                    progress.write(skipped_empty(where, number), file=sys.stderr)
                else:
                    kept.append((number, text))
            warn_if_cut(tokenizer, kept, where, progress)
            probs = predict_proba(model, tokenizer, [text for _, text in kept], args.batch_size)
            write_records(json.dumps({where: number, "text": text, **score_fields(labels, row, args.top_k)},
                                     ensure_ascii=False) + "\n" for (number, text), row in zip(kept, probs))
            written += len(kept)
            progress.update(len(chunk))
    finally:
        progress.close()  # its line ends before any message that follows
    if not written:
        raise no_text_at_all()


if __name__ == "__main__":
    main()
