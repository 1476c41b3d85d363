"""Predicting emotions with an exported model: what evaluate, export, quantize, emotion-predict, emotion-serve and
emotion-batch all classify with, so a text gets the same label and scores from each of them.

    from emotion_pipeline.inference.predict import load_classifier
    classify = load_classifier("models/int8")          # or models/export
    classify(["i feel so happy today"])                # [{'label': 'joy', 'score': 0.98}]

predict_proba tokenises the texts once and batches them shortest-first, so each batch pads only to its
own longest text; it applies the class bias stored in the model's config (emotion_pipeline.training.class_bias)
and refuses empty texts (the rule: emotion_pipeline.empty_texts).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy.special import softmax
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from emotion_pipeline.device import choose_device
from emotion_pipeline.empty_texts import empty_refusal
from emotion_pipeline.errors import UserError, first_line
from emotion_pipeline.inference.class_bias import config_bias
from emotion_pipeline.sources import check_model_folder, resolve_source

ONNX_FILE = "model.onnx"  # the int8 model's graph (quantize stage, emotion_pipeline.int8)
# Beside it, the ONNX Runtime session config entries that graph is built for (emotion_pipeline.int8 writes them).
SESSION_OPTIONS_FILE = "onnxruntime_session.json"


MAX_LENGTH = 128  # tokens of a text the model reads by default (params.yaml model.max_length trains on as many)


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = MAX_LENGTH,
                  progress: bool = False) -> np.ndarray:
    """Class probabilities, shape (len(texts), num_labels), in the order of ``texts``.

    Texts are tokenised once, then batched shortest-first so each batch pads only to its own
    longest text: with short tweets this removes nearly all padding work. An empty text is refused
    (ValueError): the rows are matched to texts by position (emotion_pipeline.empty_texts).
    """
    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    refusal = empty_refusal(texts)
    if refusal:
        raise ValueError(refusal)
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

    def __init__(self, folder: Path, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        try:
            # The session options the graph was built for, as the quantize stage wrote them beside it
            # (a folder without the file gets ONNX Runtime's defaults).
            options = ort.SessionOptions()
            if (folder / SESSION_OPTIONS_FILE).is_file():
                settings = json.loads((folder / SESSION_OPTIONS_FILE).read_text(encoding="utf-8"))
                for key, value in settings["session_config_entries"].items():
                    options.add_session_config_entry(key, value)
            if not spinning:  # a service idles between requests: its threads must sleep then, not spin
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if threads:  # a share of the cores (a Ray worker beside others); else one thread per core
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's load errors share no base class beyond Exception
            raise UserError(f"model folder: could not load the ONNX model {folder / ONNX_FILE} ({first_line(exc)}). Give the "
                            f"folder written by the quantize stage, e.g. models/int8, complete.") from None
        self.config = AutoConfig.from_pretrained(folder)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **unused) -> SimpleNamespace:
        logits = self.session.run(None, {"input_ids": input_ids.numpy().astype(np.int64),
                                         "attention_mask": attention_mask.numpy().astype(np.int64)})[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))


def locate_exported(model_dir: str) -> Path | str:
    """An exported model's folder, checked to be a model folder (not an adapter, not empty), or a hub id. Relative
    paths start in the current folder: this is what commands are given."""
    location = resolve_source(model_dir, "model folder", "the folder written by the export stage, e.g. models/export",
                              "the current folder")
    if isinstance(location, Path):
        check_model_folder(model_dir, location, "model folder")
    return location


def not_loadable(model_dir: str, exc: BaseException) -> UserError:
    return UserError(f"model folder: could not load '{model_dir}' ({first_line(exc)}). Give the folder written by the "
                     f"export stage, e.g. models/export.")


def load_exported(model_dir: str, device: str = "auto", threads: int | None = None, spinning: bool = True):
    """An exported classifier and its tokenizer, ready for predict_proba: the merged fp32 model
    (models/export) with transformers, or the int8 one (models/int8) with onnxruntime, computing on
    ``threads`` threads of ONNX Runtime (the caller sets torch's).

    ``model_dir`` is checked first: a missing folder, a folder holding only a LoRA adapter, or
    one without config.json is a UserError that says what to give instead.
    """
    location = locate_exported(model_dir)
    if isinstance(location, Path):
        if (location / ONNX_FILE).is_file():  # the quantize stage's int8 model
            if device != "auto" and choose_device(device, key="--device").type != "cpu":
                raise UserError(f"--device {device}: '{model_dir}' is the int8 ONNX model, which runs on the CPU; "
                                f"use --device cpu, or the fp32 export (models/export) on a GPU.")
            return OnnxClassifier(location, threads, spinning), AutoTokenizer.from_pretrained(str(location))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(location))
        model = AutoModelForSequenceClassification.from_pretrained(str(location), use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise not_loadable(model_dir, exc) from None
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
