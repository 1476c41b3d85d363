"""GPU smoke check: the real job's path on one GPU in under 10 minutes, before anyone pays for the real job.

    python benchmarks/gpu_smoke.py                  # GPU: Qwen3-0.6B's architecture (random weights), 2,400 texts
    python benchmarks/gpu_smoke.py --texts 400      # quicker; without a GPU: the tiny Qwen3 and the CPU checks

Through the stages' own entry points (`python -m stages <name>`, in a copy of this project under a temporary folder):
1. a Qwen3 with Qwen3-0.6B's shapes (random weights, the real 151,669-token tokenizer; nothing from the hub) is
   saved as a model folder; without a GPU, the tiny Qwen3 of the tests;
2. prepare, then train twice with compute.deterministic true: the adapters must be byte-equal (else the first
   step whose logged loss differs is named);
3. train once more with deterministic false, for speed: median step time, tokens/s, peak memory, MFU against a
   bf16 matmul peak measured here, and the projected training time of the real job (3 epochs of 16,000 texts);
4. mixed precision as train_run.json records it: base weights bf16, trainable weights (LoRA, head) fp32, autocast on;
5. one training step of the same model profiled in this process: which attention kernels really ran;
6. evaluate and export (the export stage's own check: export vs adapter within export.max_prob_diff = 1e-4), then the
   export's probabilities on the GPU against the CPU's, within 1e-5.
Prints one table and exits 1 if a check failed; checks that need a GPU are listed as skipped on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("EMOTION_DATA", REPO.parent / "shared" / "data" / "emotion"))
# Qwen3-0.6B's config.json shapes (the embeddings are the tokenizer's size; tied, as in the real checkpoint).
QWEN3_0_6B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6)
REAL_JOB_STEPS = 3 * math.ceil(16_000 / 8)  # params.yaml defaults: 3 epochs, batch 8, one process
LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


class Table:
    """Rows of (check, value, status): status 'ok', 'FAILED', 'skipped (why)' or '' for a plain figure."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def figure(self, name: str, value: str) -> None:
        self.rows.append((name, value, ""))

    def check(self, name: str, value: str, ok: bool) -> None:
        self.rows.append((name, value, "ok" if ok else "FAILED"))

    def skip(self, name: str, why: str) -> None:
        self.rows.append((name, "-", f"skipped ({why})"))

    def failed(self) -> list[str]:
        return [name for name, _, status in self.rows if status == "FAILED"]

    def render(self) -> str:
        widths = [max(len(row[i]) for row in [("check", "value", "status"), *self.rows]) for i in range(3)]
        lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                 for row in [("check", "value", "status"), tuple("-" * w for w in widths), *self.rows]]
        return "\n".join(lines)


def write_data(source: Path, dest: Path, train_texts: int) -> Path:
    """The first ``train_texts`` training lines and 300 of validation and test, in prepare's text format."""
    dest.mkdir(parents=True)
    for split, rows in (("train", train_texts), ("validation", 300), ("test", 300)):
        with (source / f"{split}.txt").open(encoding="utf-8") as handle:
            (dest / f"{split}.txt").write_text("".join(line for _, line in zip(range(rows), handle)), encoding="utf-8")
    return dest


def copy_project(dest: Path) -> Path:
    """The project's tracked and unignored files (code, dvc.yaml, params.yaml, the lock), without outputs."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, names):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def set_params(project: Path, overrides: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(project: Path, name: str) -> float:
    """Run one stage as dvc.yaml does; its wall time. A failure stops the smoke check with the stage's output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "stages", name], cwd=project, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"gpu_smoke: `python -m stages {name}` exited {result.returncode}:\n{result.stderr[-6000:]}")
    return time.perf_counter() - started


def train_run(project: Path) -> dict:
    return json.loads((project / "metrics/train_run.json").read_text())


def logged_losses(project: Path) -> dict[int, str]:
    """step -> training loss as dvclive logged it (train.logging_steps 1: every step)."""
    lines = (project / "metrics/train_log/plots/metrics/train/loss.tsv").read_text().splitlines()
    columns = lines[0].split("\t")
    rows = [dict(zip(columns, line.split("\t"))) for line in lines[1:]]
    return {int(row["step"]): row["loss"] for row in rows}


def train_fresh(project: Path) -> float:
    shutil.rmtree(project / "models/checkpoints", ignore_errors=True)
    return stage(project, "train")


def matmul_peak(device) -> tuple[float, str]:
    """Measured dense matmul throughput (FLOP/s): bf16 on a GPU, fp32 on a CPU (what each trains in)."""
    import torch

    dtype, size = (torch.bfloat16, 8192) if device.type == "cuda" else (torch.float32, 1024)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    repeats, started = 20, time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started), str(dtype).removeprefix("torch.")


def attention_kernels(model_dir: Path, texts: list[str], device) -> list[str]:
    """Names of the attention kernels one training step of the LoRA model runs, as the profiler saw them."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from emotion_pipeline.config import LoraParams, ModelConfig
    from emotion_pipeline.device import best_dtype
    from emotion_pipeline.training.modeling import load_tokenizer, trainable_model

    dtype = best_dtype(device)
    tokenizer = load_tokenizer(str(model_dir))
    model = trainable_model(str(model_dir), ModelConfig(name=str(model_dir)), LoraParams(), LABELS,
                            tokenizer.pad_token_id, dtype).to(device)
    batch = tokenizer(texts[:8], padding=True, return_tensors="pt").to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as trace:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch, labels=torch.zeros(len(batch["input_ids"]), dtype=torch.long, device=device)).loss
        loss.backward()
    names = {event.name for event in trace.events()}
    words = ("flash", "fmha", "efficient_attention", "mem_eff", "scaled_dot_product", "attention")
    return sorted(name for name in names if any(word in name.lower() for word in words))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2400, help="training texts (default 2,400: 300 steps at batch 8)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dair-ai/emotion as text files ({DEFAULT_DATA})")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one, removed)")
    args = parser.parse_args()
    if not (args.data / "train.txt").is_file():
        sys.exit(f"gpu_smoke: no train.txt in {args.data}; pass --data or set EMOTION_DATA")

    import torch

    sys.path.insert(0, str(REPO))
    from emotion_pipeline.dev.tiny import build_tiny_qwen3
    from emotion_pipeline.inference.predict import load_exported, predict_proba

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    work = args.keep or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    table = Table()
    try:
        started = time.perf_counter()
        model_dir = work / "model"
        if not model_dir.is_dir():
            build_tiny_qwen3(model_dir, **QWEN3_0_6B) if gpu else build_tiny_qwen3(model_dir)
        table.figure("model", "Qwen3-0.6B shapes, random weights" if gpu else "tiny Qwen3 (no GPU here)")
        table.figure("device", torch.cuda.get_device_name(0) if gpu else "cpu")
        data = write_data(args.data, work / "data", args.texts) if not (work / "data").is_dir() else work / "data"
        project = copy_project(work / "project") if not (work / "project").is_dir() else work / "project"
        set_params(project, {
            "data": {"source": str(data)},
            "model": {"name": str(model_dir)},
            "train": {"epochs": 1, "warmup_steps": 30, "logging_steps": 1},
            "compute": {"device": "auto", "deterministic": True},
            "quantize": {"enabled": False},
        })

        # 2. Deterministic twice: the same bytes.
        stage(project, "prepare")
        train_fresh(project)
        first_adapter = (project / "models/adapter/adapter_model.safetensors").read_bytes()
        first_losses = logged_losses(project)
        deterministic_run = train_run(project)
        train_fresh(project)
        same = (project / "models/adapter/adapter_model.safetensors").read_bytes() == first_adapter
        second_losses = logged_losses(project)
        diverged = next((step for step in sorted(first_losses) if first_losses[step] != second_losses.get(step)), None)
        table.check("deterministic: two runs, adapter bytes", "equal" if same else
                    f"differ (first differing loss at step {diverged})" if diverged else "differ (losses equal)", same)

        # 4. Mixed precision as the train stage recorded it.
        precision = deterministic_run["precision"]
        if gpu and precision["autocast"] == "bfloat16":
            table.check("bf16: autocast, base bf16, trainable fp32",
                        f"autocast {precision['autocast']}, base {precision['frozen']}, trainable {precision['trainable']}",
                        precision["frozen"] == ["bfloat16"] and precision["trainable"] == ["float32"])
        elif gpu:
            table.check("bf16 on this GPU", f"not used: {precision}", False)
        else:
            table.skip("bf16: autocast, base bf16, trainable fp32", f"CPU trains in fp32: trainable {precision['trainable']}")
        table.check("one device, as params name it", f"{deterministic_run['device']} (GPUs used: {deterministic_run['gpus_used']})",
                    deterministic_run["gpus_used"] == (1 if gpu else 0))

        # 3. Speed, deterministic off.
        set_params(project, {"compute": {"deterministic": False}})
        train_fresh(project)
        fast = train_run(project)
        details = json.loads((project / "metrics/train_details.json").read_text())
        step_s = fast["step_time_median_s"]
        tokens = fast["train_tokens"] / max(fast["optimizer_steps"], 1)  # tokens per optimiser step
        tokens_per_s = tokens / step_s
        peak, peak_dtype = matmul_peak(device)
        # LoRA training: forward 2N and the backward's activation gradients 2N FLOPs per token (frozen weights get
        # no weight gradient), N the weights in matmuls: not the embedding table, a lookup (and the LM head it is
        # tied to is not used by a classifier); attention's own FLOPs are small at ~20 tokens per text.
        config = json.loads((model_dir / "config.json").read_text())
        matmul_params = details["total_params"] - config["vocab_size"] * config["hidden_size"]
        mfu = 4 * matmul_params * tokens_per_s / peak
        deterministic_step_s = deterministic_run["step_time_median_s"]
        table.figure("median step (deterministic off / on)", f"{step_s * 1000:.1f} / {deterministic_step_s * 1000:.1f} ms")
        table.figure("tokens/s (deterministic off)", f"{tokens_per_s:,.0f}")
        table.figure("peak memory", f"{fast['peak_memory_gib']:.2f} GiB" if gpu else "n/a on CPU")
        table.figure(f"matmul peak measured ({peak_dtype})", f"{peak / 1e12:.2f} TFLOP/s")
        table.figure("MFU (4N FLOPs per token, N without embeddings)", f"{100 * mfu:.2f} %")
        table.figure(f"real job's {REAL_JOB_STEPS:,} steps at this step time", f"{REAL_JOB_STEPS * step_s / 60:.1f} min"
                     + ("" if gpu else " (tiny model: says nothing of Qwen3-0.6B)"))

        # 5. Attention kernels that ran.
        texts = (data / "train.txt").read_text(encoding="utf-8").splitlines()
        kernels = attention_kernels(model_dir, [line.rsplit(";", 1)[0] for line in texts], device)
        table.check("attention kernels (profiler)", ", ".join(kernels[:3]) or "none found", bool(kernels))

        # 6. Evaluate and export: the export predicts like the adapter; GPU and CPU agree on the export.
        set_params(project, {"compute": {"deterministic": True}})
        stage(project, "evaluate")
        stage(project, "export")
        check = json.loads((project / "metrics/export.json").read_text())
        table.check("export vs adapter (<= 1e-4)", f"{check['max_prob_diff']:.2e}", check["max_prob_diff"] <= 1e-4)
        test = [line.rsplit(";", 1)[0] for line in (data / "test.txt").read_text(encoding="utf-8").splitlines()]
        if gpu:
            on = {}
            for where in ("cuda", "cpu"):
                model, tokenizer = load_exported(str(project / "models/export"), device=where)
                on[where] = predict_proba(model, tokenizer, test, 64, 128)
            diff = float(abs(on["cuda"] - on["cpu"]).max())
            table.check("export on GPU vs CPU (<= 1e-5)", f"{diff:.2e}", diff <= 1e-5)
        else:
            table.skip("export on GPU vs CPU (<= 1e-5)", "no GPU")
        table.figure("wall time of this check", f"{(time.perf_counter() - started) / 60:.1f} min")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(table.render())
    if table.failed():
        sys.exit(f"gpu_smoke: failed: {', '.join(table.failed())}")


if __name__ == "__main__":
    main()
