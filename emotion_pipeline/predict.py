"""Predicting emotions with a trained model: a batched library function, and the `emotion-predict` command.

    emotion-predict models/export "i feel so happy today" "that noise scared me"
    emotion-predict models/export --file texts.txt                 # one text per line
    emotion-predict models/export --file reviews.csv --column review   # or .jsonl
    cat texts.txt | emotion-predict models/export --top-k 2

Output is JSON Lines, one object per text, in input order: its line (or argument) number, the
text, the predicted label and its probability, and every class's probability (or the --top-k
best). The rule for empty texts: they are skipped with a warning naming their line, never
given a label; input with no text at all is an error. Bad input (a missing or wrong model
folder, a file without the column) is one paragraph on stderr and exit status 2.

predict_proba is what evaluate and export use: texts are tokenised once and batched
shortest-first, so each batch pads only to its own longest text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy.special import softmax
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from emotion_pipeline.commands import run_command
from emotion_pipeline.device import choose_device
from emotion_pipeline.errors import UserError, first_line
from emotion_pipeline.inference.class_bias import config_bias
from emotion_pipeline.sources import check_model_folder, resolve_source

ONNX_FILE = "model.onnx"  # the int8 model's graph (quantize stage, emotion_pipeline.int8)
# Beside it, the ONNX Runtime session config entries that graph is built for (emotion_pipeline.int8 writes them).
SESSION_OPTIONS_FILE = "onnxruntime_session.json"


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128,
                  progress: bool = False) -> np.ndarray:
    """Class probabilities, shape (len(texts), num_labels), in the order of ``texts``.

    Texts are tokenised once, then batched shortest-first so each batch pads only to its own
    longest text: with short tweets this removes nearly all padding work. An empty text has
    nothing to classify and is refused (ValueError) rather than given a label.
    """
    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ValueError(f"{len(empty)} empty text(s) (first at position {empty[0]}): nothing to classify")
    # A per-class bias fitted on validation (train.fit_class_bias), when the model's head had no bias
    # parameter to hold it (emotion_pipeline.training.class_bias).
    device = model.device
    bias = config_bias(model.config)
    # Token ids only: each batch's mask comes with its padding below (and BERT's token types are all 0).
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    probs = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="predicting", unit="batch", file=sys.stderr)
    for start in starts:
        index = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in index]}, return_tensors="pt").to(device)
        # Softmax in numpy: a torch op on a (64, 6) tensor right after an ONNX Runtime run waits ~10 ms for
        # torch's thread pool while ORT's threads still spin (measured: 4 % of the int8 path's time).
        logits = model(**batch).logits.float().cpu().numpy()
        if bias is not None:
            logits = logits + bias
        probs[index] = softmax(logits, axis=-1)
    return probs


DIGITS = 6  # every probability emotion-predict, emotion-serve and emotion-batch give out, rounded to this


def ranked(labels: list[str], row: np.ndarray, k: int) -> list[dict]:
    """The ``k`` most likely classes of one text's probabilities, most likely first (ties in class order)."""
    return [{"label": labels[i], "score": float(row[i])} for i in np.argsort(-row, kind="stable")[:k]]


def score_fields(labels: list[str], row: np.ndarray, top_k: int | None = None) -> dict:
    """One text's fields from its probabilities: label and score, then every class's score ("scores") or the
    top_k best ("top_k", most likely first). What emotion-predict prints, emotion-serve answers and
    emotion-batch writes."""
    best = int(row.argmax())
    fields = {"label": labels[best], "score": round(float(row[best]), DIGITS)}
    if top_k:
        fields["top_k"] = [{**best, "score": round(best["score"], DIGITS)} for best in ranked(labels, row, top_k)]
    else:
        fields["scores"] = {name: round(float(p), DIGITS) for name, p in zip(labels, row)}
    return fields


def class_names(config) -> list[str]:
    """A classifier's class names in class-id order (its config's id2label)."""
    return [config.id2label[i] for i in range(config.num_labels)]


class OnnxClassifier:
    """An ONNX classifier behind the interface predict_proba uses: ``.config``, ``.device`` and
    ``model(input_ids=..., attention_mask=...).logits``. CPU only."""

    device = torch.device("cpu")

    def __init__(self, folder: Path):
        import onnxruntime as ort

        try:
            # The session options the graph was built for, as the quantize stage wrote them beside it
            # (a folder without the file gets ONNX Runtime's defaults).
            options = ort.SessionOptions()
            if (folder / SESSION_OPTIONS_FILE).is_file():
                settings = json.loads((folder / SESSION_OPTIONS_FILE).read_text(encoding="utf-8"))
                for key, value in settings["session_config_entries"].items():
                    options.add_session_config_entry(key, value)
            self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's load errors share no base class beyond Exception
            raise UserError(f"model folder: could not load the ONNX model {folder / ONNX_FILE} ({first_line(exc)}). Give the "
                            f"folder written by the quantize stage, e.g. models/int8, complete.") from None
        self.config = AutoConfig.from_pretrained(folder)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **unused) -> SimpleNamespace:
        logits = self.session.run(None, {"input_ids": input_ids.numpy().astype(np.int64),
                                         "attention_mask": attention_mask.numpy().astype(np.int64)})[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))


def load_exported(model_dir: str, device: str = "auto"):
    """An exported classifier and its tokenizer, ready for predict_proba: the merged fp32 model
    (models/export) with transformers, or the int8 one (models/int8) with onnxruntime.

    ``model_dir`` is checked first: a missing folder, a folder holding only a LoRA adapter, or
    one without config.json is a UserError that says what to give instead.
    """
    location = resolve_source(model_dir, "model folder", "the folder written by the export stage, e.g. models/export")
    if isinstance(location, Path):
        check_model_folder(model_dir, location, "model folder")
        if (location / ONNX_FILE).is_file():  # the quantize stage's int8 model
            if device != "auto" and choose_device(device, key="--device").type != "cpu":
                raise UserError(f"--device {device}: '{model_dir}' is the int8 ONNX model, which runs on the CPU; "
                                f"use --device cpu, or the fp32 export (models/export) on a GPU.")
            return OnnxClassifier(location), AutoTokenizer.from_pretrained(str(location))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(location))
        model = AutoModelForSequenceClassification.from_pretrained(str(location), use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"model folder: could not load '{model_dir}' ({first_line(exc)}). Give the folder written by the "
                        f"export stage, e.g. models/export.") from None
    model.to(choose_device(device, key="--device")).eval()
    return model, tokenizer


def load_classifier(model_dir: str, device: str = "auto", batch_size: int = 64, max_length: int = 128):
    """A `pipeline("text-classification")`-style function for an fp32 export or the int8 model:
    ``classify(texts, top_k=1)`` gives, per text, {"label", "score"} (or a list of the top_k best).

        classify = load_classifier("models/int8")
        classify(["i feel so happy today"])  # [{'label': 'joy', 'score': 0.98}]
    """
    model, tokenizer = load_exported(model_dir, device)
    labels = class_names(model.config)

    def classify(texts: str | list[str], top_k: int = 1) -> list:
        probs = predict_proba(model, tokenizer, [texts] if isinstance(texts, str) else list(texts), batch_size, max_length)
        best = [ranked(labels, row, top_k) for row in probs]
        return [first[0] for first in best] if top_k == 1 else best

    return classify


# --------------------------------------------------------------------------- the command


def read_texts(args: argparse.Namespace) -> Iterator[tuple[int, str]]:
    """(line or argument number, text) for every input text, from arguments, a file or stdin."""
    if args.texts:
        yield from enumerate(args.texts, start=1)
        return
    if args.file is None:
        if sys.stdin.isatty():
            raise UserError("no texts: give them as arguments, with --file, or on standard input.")
        yield from _lines(sys.stdin)
        return
    path = args.file
    if not path.is_file():
        raise UserError(f"--file: '{path}' does not exist (looked for {path.absolute()}).")
    if path.suffix in (".csv", ".jsonl"):
        import pandas as pd

        frame = pd.read_csv(path, dtype=str, keep_default_na=False) if path.suffix == ".csv" else \
            pd.read_json(path, lines=True, dtype=False)
        if args.column not in frame.columns:
            raise UserError(f"{path}: no column '{args.column}' (it has: {', '.join(map(str, frame.columns))}); "
                            f"name the text column with --column.")
        first_number = 2 if path.suffix == ".csv" else 1  # a CSV's line 1 is its header
        yield from ((first_number + i, "" if value is None else str(value)) for i, value in enumerate(frame[args.column]))
        return
    with path.open(encoding="utf-8-sig") as handle:
        yield from _lines(handle)


def _lines(handle) -> Iterator[tuple[int, str]]:
    """Numbered lines without their line ending, '\\r\\n' included (it would reach the model otherwise)."""
    for number, line in enumerate(handle, start=1):
        yield number, line.rstrip("\r\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="emotion-predict",
        usage="%(prog)s MODEL_DIR [TEXT ...] [--file PATH [--column NAME]] [--top-k K] [--batch-size N] [--device D]",
        description="Classify the emotion of each text with an exported model; prints one JSON object per text.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by the export stage, e.g. models/export")
    parser.add_argument("texts", nargs="*", default=[], metavar="TEXT",
                        help="texts to classify (optional: without them, --file or standard input is read)")
    parser.add_argument("--file", type=Path, help="one text per line (.txt), or a .csv / .jsonl file with --column")
    parser.add_argument("--column", default="text", help="the text column of a .csv or .jsonl file (default: text)")
    parser.add_argument("--top-k", type=int, help="print the K most likely classes instead of every class's score")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1, ... (default: auto)")
    args = parser.parse_intermixed_args(argv)  # options may come before or after the texts
    run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    if args.texts and args.file:
        raise UserError("give texts as arguments or with --file, not both.")
    if args.batch_size < 1 or (args.top_k is not None and args.top_k < 1):
        raise UserError("--batch-size and --top-k must be at least 1.")
    numbered = list(read_texts(args))
    kept = [(number, text) for number, text in numbered if text.strip()]
    where = "argument" if args.texts else "line"
    for number, text in numbered:
        if not text.strip():
            print(f"warning: skipped the empty text at {where} {number}", file=sys.stderr)
    if not kept:
        raise UserError("no text to classify: the input is empty or holds only empty texts.")
    model, tokenizer = load_exported(args.model_dir, args.device)
    labels = class_names(model.config)
    probs = predict_proba(model, tokenizer, [text for _, text in kept], args.batch_size, progress=args.file is not None)
    for (number, text), row in zip(kept, probs):
        print(json.dumps({where: number, "text": text, **score_fields(labels, row, args.top_k)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
