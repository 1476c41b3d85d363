"""Fast batched prediction: one model load, texts sorted by length, dynamic padding, inference mode.

Used by the evaluate and export stages, and by users:

    python -m emotion_pipeline.predict models/export "i feel so happy today" "this is scary"
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Class probabilities, shape (len(texts), num_labels), in the order of ``texts``.

    Texts are tokenised once, then batched shortest-first so each batch pads only to its own
    longest text: with short tweets this removes nearly all padding work.
    """
    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    device = next(model.parameters()).device
    probs = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in index]}, return_tensors="pt").to(device)
        logits = model(**batch).logits
        probs[index] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probs


def load_exported(model_dir: str, device: str | None = None):
    """An exported (merged) classifier and its tokenizer, ready for predict_proba."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return model, tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Classify the emotion of each text with an exported model.")
    parser.add_argument("model_dir", help="folder written by the export stage, e.g. models/export")
    parser.add_argument("texts", nargs="*", help="texts to classify; read from stdin, one per line, if none")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    model, tokenizer = load_exported(args.model_dir)
    probs = predict_proba(model, tokenizer, texts, args.batch_size)
    for text, row in zip(texts, probs):
        label = model.config.id2label[int(row.argmax())]
        print(f"{label}\t{row.max():.4f}\t{text}")


if __name__ == "__main__":
    main()
