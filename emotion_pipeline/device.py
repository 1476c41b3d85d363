"""The one device choice of the project: train, evaluate, export (params `compute.device`) and the
predict command (`--device`) all go through choose_device, so a GPU is used wherever there is one.
"""

from __future__ import annotations

import os
import re

import torch

from emotion_pipeline.config import DEVICE_PATTERN
from emotion_pipeline.environment import PINNED_GPU
from emotion_pipeline.errors import UserError


def choose_device(setting: str = "auto", key: str = "compute.device") -> torch.device:
    """'auto': the GPU when torch sees one, else the CPU; or 'cpu', 'cuda', 'cuda:1', ...

    Asking for a GPU that is not there is an error here, not a crash deep inside a forward pass.
    """
    if not re.fullmatch(DEVICE_PATTERN, setting):
        raise UserError(f"{key} = {setting!r} is invalid: use auto (the GPU when present), cpu, cuda or cuda:<index>.")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{key} = {setting!r}, but torch sees no GPU here (torch.cuda.is_available() is False); "
                            f"use auto or cpu.")
        if os.environ.get(PINNED_GPU) == setting:
            return torch.device("cuda", 0)  # `python -m stages train` made that GPU the only one this process sees
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{key} = {setting!r}, but this machine has {torch.cuda.device_count()} GPU(s) "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
    return device


def best_dtype(device: torch.device, capability: tuple[int, int] | None = None) -> torch.dtype:
    """The dtype the frozen base computes in: bf16 on a GPU that has it natively (compute capability 8.0 and up:
    A100, L4, H100...), fp32 everywhere else.

    Not ``torch.cuda.is_bf16_supported()``: by default it also says yes where bf16 is only emulated (T4, V100),
    which trains far slower than fp32 there. Not fp16 on those GPUs either: Qwen3's activations exceed fp16's
    range (a loss scaler protects gradients, not the forward pass), so fp32 is the one safe choice. On a CPU,
    bf16 is ~50x slower than fp32 on this project's machines. ``capability`` (major, minor): the GPU's, asked of
    torch when not given.
    """
    if device.type != "cuda":
        return torch.float32
    major, _ = capability if capability is not None else torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float32


def make_deterministic(device: torch.device) -> None:
    """compute.deterministic on a GPU: deterministic kernels or an error, never a silent fallback.

    transformers' enable_full_determinism(warn_only=True) only warned where an op has no deterministic CUDA kernel,
    which also leaves SDPA's flash and memory-efficient backward on their non-deterministic path (they take the
    deterministic one only in strict mode); and it set CUDA_LAUNCH_BLOCKING=1, which makes every kernel launch
    synchronous (slow, and known to hang NCCL). Here: strict mode, cuDNN's deterministic algorithms without
    autotuning, and cuBLAS's larger documented workspace (':4096:8', not ':16:8', which can slow Hopper's GEMMs).
    CUBLAS_WORKSPACE_CONFIG is read when cuBLAS starts: call this before the model's first matmul on the GPU.
    An op without a deterministic kernel then stops the run with torch's error (the train stage names the param).
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
