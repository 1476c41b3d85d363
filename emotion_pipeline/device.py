"""The one device choice of the project: train, evaluate, export (params `compute.device`) and the
predict command (`--device`) all go through choose_device, so a GPU is used wherever there is one.
"""

from __future__ import annotations

import re

import torch

from emotion_pipeline.config import DEVICE_PATTERN
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
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{key} = {setting!r}, but this machine has {torch.cuda.device_count()} GPU(s) "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
    return device


def best_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 is ~50x slower there); bf16 on a GPU that supports it."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
