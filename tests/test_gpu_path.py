"""The GPU path, tested where it can fail on a CPU: mixed precision keeps the trained weights in fp32, determinism
on CUDA is strict and has no launch-blocking side effect, bf16 only where a GPU has it natively, and one training
process sees exactly the GPU that compute.device names. benchmarks/gpu_smoke.py runs the rest on a real GPU; its
CPU mode runs here, in the slow tier.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LABELS, subprocess_env

from emotion_pipeline import environment
from emotion_pipeline.config import ComputeConfig, LoraParams, ModelConfig, TrainConfig
from emotion_pipeline.device import best_dtype
from emotion_pipeline.training.modeling import load_tokenizer, trainable_model

REPO = Path(__file__).resolve().parents[1]


def precision_of(model) -> tuple[set, set]:
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    return trainable, frozen


def test_under_bf16_the_base_is_bf16_and_every_trained_weight_and_its_adam_state_fp32(tiny_model, tmp_path, monkeypatch):
    """PEFT copies the base's bf16 head into ModulesToSaveWrapper; trained in bf16, updates below ~1/256 of a weight
    round away. The train stage's model and Trainer (bf16 autocast, here on the CPU) keep them fp32."""
    import datasets

    from emotion_pipeline.training.trainer import build_trainer, training_arguments

    tokenizer = load_tokenizer(str(tiny_model))
    model = trainable_model(str(tiny_model), ModelConfig(name=str(tiny_model)), LoraParams(), LABELS,
                            tokenizer.pad_token_id, torch.bfloat16)
    trainable, frozen = precision_of(model)
    assert trainable == {torch.float32}, f"trainable weights in {trainable}"
    assert frozen == {torch.bfloat16}, f"frozen base weights in {frozen}"
    head = [name for name, p in model.named_parameters() if p.requires_grad and "score" in name]
    assert head, "the classification head is not trained"

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(epochs=1, batch_size=4, warmup_steps=0, logging_steps=1)
    args = training_arguments(cfg, ComputeConfig(device="cpu"), torch.device("cpu"), torch.bfloat16)
    assert args.bf16, "no bf16 autocast"
    texts = ["i feel happy", "i am scared", "this is sad", "so angry now", "what a surprise", "i love it", "fine", "ok"]
    encoded = tokenizer(texts)
    data = datasets.Dataset.from_dict({"labels": [i % 6 for i in range(len(texts))], **encoded})
    trainer = build_trainer(model, tokenizer, args, data, data, cfg, LABELS, data["labels"])
    trainer.train()
    states = [trainer.optimizer.state[p] for p in model.parameters() if p.requires_grad]
    assert states and {state["exp_avg"].dtype for state in states} == {torch.float32}
    assert {state["exp_avg_sq"].dtype for state in states} == {torch.float32}
    assert precision_of(model) == ({torch.float32}, {torch.bfloat16})


def test_full_fine_tuning_trains_fp32_weights_under_autocast(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    model = trainable_model(str(tiny_model), ModelConfig(name=str(tiny_model)), LoraParams(enabled=False), LABELS,
                            tokenizer.pad_token_id, torch.bfloat16)
    assert precision_of(model) == ({torch.float32}, set())


@pytest.mark.parametrize(("capability", "expected"), [
    ((7, 0), torch.float32),  # V100: bf16 only emulated (torch.cuda.is_bf16_supported() says yes)
    ((7, 5), torch.float32),  # T4, the same
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4, RTX 40xx
    ((9, 0), torch.bfloat16),  # H100 / H200
])
def test_bf16_only_on_gpus_that_have_it_natively(capability, expected):
    assert best_dtype(torch.device("cuda"), capability) == expected


def test_the_cpu_trains_in_fp32():
    assert best_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.parametrize(("device", "processes", "visible", "expected"), [
    ("cuda:1", 1, None, "1"),  # cuda:1 on an 8-GPU machine: that one alone, not DataParallel over all 8
    ("cuda:1", 1, "4,5,6", "5"),  # indexes count within what the user made visible
    ("cuda", 1, None, "0"),
    ("auto", 1, "3,2", "3"),
    ("cuda:7", 1, "0,1", None),  # no such GPU: left to choose_device's one-paragraph error
    ("cpu", 1, None, None),
    ("cuda", 2, None, None),  # torchrun: each process takes the GPU of its LOCAL_RANK
    ("auto", 1, "", None),  # no GPU made visible: nothing to narrow
])
def test_one_training_process_sees_exactly_the_gpu_params_name(device, processes, visible, expected):
    assert environment.visible_gpu_for(device, processes, visible) == expected


def test_determinism_on_cuda_is_strict_and_does_not_block_launches():
    """enable_full_determinism(warn_only=True) left SDPA's backward on its non-deterministic kernels and set
    CUDA_LAUNCH_BLOCKING=1 (every launch synchronous); what the train stage does instead, in a fresh process."""
    code = """
import json, os, torch
from emotion_pipeline.device import make_deterministic
os.environ.pop("CUDA_LAUNCH_BLOCKING", None)
os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
make_deterministic(torch.device("cuda"))
print(json.dumps({"strict": torch.are_deterministic_algorithms_enabled()
                  and not torch.is_deterministic_algorithms_warn_only_enabled(),
                  "cudnn": torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark,
                  "launch_blocking": os.environ.get("CUDA_LAUNCH_BLOCKING"),
                  "workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads(result.stdout)
    assert settings == {"strict": True, "cudnn": True, "launch_blocking": None, "workspace": ":4096:8"}


@pytest.mark.slow
def test_gpu_smoke_runs_its_cpu_checks_green(emotion_dir):
    """benchmarks/gpu_smoke.py stays alive without a GPU: the tiny Qwen3 through the real stage entry points."""
    result = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--texts", "160", "--data", str(emotion_dir)],
                            cwd=REPO, capture_output=True, text=True, env=subprocess_env(), timeout=1200)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    table = result.stdout
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("|")] for line in table.splitlines())}
    assert rows["deterministic: two runs, adapter bytes"] == ["equal", "ok"] and "FAILED" not in table
    assert "skipped (no GPU)" in table and rows["one device, as params name it"] == ["cpu (GPUs used: 0)", "ok"]
    assert "attention kernels (profiler)" in table and "MFU" in table and "scaled_dot_product" in table
