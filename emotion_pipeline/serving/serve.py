"""The `emotion-serve` command: an HTTP service for an exported model on Ray Serve, with dynamic batching.

    pip install -e ".[serve]"
    emotion-serve models/int8 --replicas 2 --port 8000
    curl -s localhost:8000/classify -d '{"texts": ["i feel so happy today", "that noise scared me"], "top_k": 2}'

Routes:
    POST /classify  {"texts": ["...", ...], "top_k": K}  ->  {"results": [{"label", "score", "scores" | "top_k"}, ...]}
                    one result per text, in order, with emotion-predict's fields and rounding ("top_k" is optional:
                    without it every class's score is given). The response header X-Batch-Requests says how many
                    requests shared a forward pass with this one's texts (1: it was not batched with another).
    GET  /healthz   {"status": "ok", "model": ..., "labels": [...]} once a replica answers
    GET  /stats     the answering replica's batches so far: how many texts and requests each forward pass held

Each replica loads the model once with emotion-predict's own code (predict.load_exported and
predict_proba: fp32 export or int8 ONNX, stored class bias included) and computes on its share of the
CPUs. Concurrent requests are batched by Ray Serve (serve.batch): every text is one item, and a
forward pass takes up to --max-batch-size texts, waiting at most --batch-wait-timeout-s for them.

A bad request gets a 4xx status and one line of JSON, {"error": "..."}, naming what was wrong and what
is valid; the replica goes on serving. Ctrl-C (or SIGTERM) drains and stops the service: one line on
stderr, exit status 128 + the signal number (130 for Ctrl-C). A bad model folder is emotion-predict's
one-paragraph error, exit 2, before Ray starts. With --address or RAY_ADDRESS the service runs on that
Ray cluster (every node needs this project installed and the model folder at the same path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

from emotion_pipeline.commands import run_command
from emotion_pipeline.empty_texts import empty_refusal
from emotion_pipeline.errors import UserError, catch_interrupts, exit_interrupted
from emotion_pipeline.serving.common import (
    check_model,
    command_parser,
    quiet_ray_loggers,
    require_ray,
    start_ray,
    worker_threads,
)

APP_NAME = "emotion"
KEYS = ("texts", "top_k")
DRAIN_S = 10  # on Ctrl-C, the longest wait for requests in flight


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Limits:
    """What one request may hold (--max-texts, --max-chars)."""

    max_texts: int = 256
    max_chars: int = 5000

    @property
    def max_body_bytes(self) -> int:
        # Every character may take 4 bytes of UTF-8 or 6 of a JSON escape; the rest is room for the keys and quotes.
        return self.max_texts * (self.max_chars * 6 + 8) + 1024


class BadRequest(ValueError):
    """A request the service refuses, with the HTTP status to answer and a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def too_large(size: str, limits: Limits) -> BadRequest:
    return BadRequest(f"body: {size} bytes, more than {limits.max_texts} texts of {limits.max_chars} characters can "
                      f"take; send fewer or shorter texts per request.", 413)


async def read_body(request, limits: Limits) -> bytes:
    """The request body, refused (413) as soon as it is known to be too large: from its Content-Length before a
    byte of it is read, else while it streams in. Nothing past the limit is ever held in this replica."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_large(f"{int(declared):,}", limits)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise too_large(f"over {limits.max_body_bytes:,}", limits)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, limits: Limits, num_labels: int) -> tuple[list[str], int | None]:
    """The texts and top_k of a /classify body, or BadRequest saying what is wrong and what would be valid."""
    if len(body) > limits.max_body_bytes:
        raise too_large(f"{len(body):,}", limits)
    try:
        request = json.loads(body.decode("utf-8"))  # UTF-8 only: json.loads would guess UTF-16 from a BOM
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f'body: not JSON ({exc}); send {{"texts": ["..."], "top_k": K}} as UTF-8 JSON.') from None
    if not isinstance(request, dict):
        raise BadRequest(f'body: a JSON {_kind(request)}, not an object; send {{"texts": ["..."], "top_k": K}}.')
    unknown = sorted(set(request) - set(KEYS))
    if unknown:
        raise BadRequest(f"body: unknown key '{unknown[0]}'; the keys are {' and '.join(KEYS)}.")
    if "texts" not in request:
        raise BadRequest('texts: missing; send {"texts": ["..."]}, a list of the texts to classify.')
    texts = request["texts"]
    if not isinstance(texts, list):
        raise BadRequest(f"texts: a {_kind(texts)}, not a list; send a list of strings, even for one text.")
    if not texts:
        raise BadRequest("texts: an empty list; send at least one text.")
    if len(texts) > limits.max_texts:
        raise BadRequest(f"texts: {len(texts)} texts, more than this service's --max-texts {limits.max_texts} per request; "
                         f"split them over several requests.", 413)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(f"texts[{i}]: a {_kind(text)}, not a string.")
    refusal = empty_refusal(texts)  # the answers are matched to the texts by position
    if refusal:
        raise BadRequest(refusal)
    for i, text in enumerate(texts):
        if len(text) > limits.max_chars:
            raise BadRequest(f"texts[{i}]: {len(text):,} characters, more than this service's --max-chars "
                             f"{limits.max_chars}; shorten it (the model reads only its first 128 tokens).", 413)
    top_k = request.get("top_k")
    # bool is a subclass of int in Python, but `"top_k": true` is a mistake, not 1.
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_labels):
        raise BadRequest(f"top_k: {json.dumps(top_k)} is not a whole number from 1 to {num_labels} (the model's classes); "
                         f"leave it out for every class's score.")
    return texts, top_k


def _kind(value: object) -> str:
    """A JSON value's type as JSON names it."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- the deployment


class EmotionClassifier:
    """One replica: the model, loaded once, behind the three routes. Made a Ray Serve deployment by build_app."""

    def __init__(self, model_dir: str, threads: int, limits: Limits, batching: bool, max_batch_size: int,
                 batch_wait_timeout_s: float):
        from ray import serve

        from emotion_pipeline.inference.predict import class_names
        from emotion_pipeline.serving.common import load_in_worker

        self.model_dir, self.limits, self.batching, self.max_batch_size = model_dir, limits, batching, max_batch_size
        self.model, self.tokenizer = load_in_worker(model_dir, threads)
        self.labels = class_names(self.model.config)
        # Ray Serve's batching around this replica's score_batch, with this service's bounds: one call per text,
        # gathered into lists of up to max_batch_size texts.
        self.score_text = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)(self.score_batch)
        # One forward pass at a time per replica: its threads are its share of the cores.
        self.forward_lock = asyncio.Lock()
        self.texts_per_batch: Counter[int] = Counter()
        self.requests_per_batch: Counter[int] = Counter()

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        try:
            route = (request.method, request.url.path.rstrip("/") or "/")
            if route == ("POST", "/classify"):
                return await self.classify(await read_body(request, self.limits))
            if route == ("GET", "/healthz"):
                return JSONResponse({"status": "ok", "model": self.model_dir, "labels": self.labels})
            if route == ("GET", "/stats"):
                return JSONResponse(self.stats())
            known = {"/classify": "POST", "/healthz": "GET", "/stats": "GET"}
            if route[1] in known:
                raise BadRequest(f"{route[1]}: use {known[route[1]]}, not {route[0]}.", 405)
            raise BadRequest(f"{route[1]}: no such route; the routes are POST /classify, GET /healthz and GET /stats.", 404)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception as exc:  # anything else is our bug: answer it, keep the replica serving
            return JSONResponse({"error": f"internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"},
                                status_code=500)

    async def classify(self, body: bytes):
        from starlette.responses import JSONResponse

        from emotion_pipeline.inference.predict import score_fields

        texts, top_k = parse_request(body, self.limits, len(self.labels))
        if self.batching:
            # One item per text, tagged with this request: a forward pass knows how many requests it served.
            tag = object()
            scored = await asyncio.gather(*(self.score_text((tag, text)) for text in texts))
            rows, shared = [row for row, _ in scored], max(requests for _, requests in scored)
        else:
            rows, shared = await self.forward(texts, requests=1), 1
        results = [score_fields(self.labels, row, top_k) for row in rows]
        return JSONResponse({"results": results}, headers={"X-Batch-Requests": str(shared)})

    async def score_batch(self, items: list[tuple[object, str]]) -> list[tuple[object, int]]:
        """Texts of concurrent requests as Ray Serve batched them: (probabilities, requests in this pass) per text."""
        requests = len({id(tag) for tag, _ in items})
        rows = await self.forward([text for _, text in items], requests)
        return [(row, requests) for row in rows]

    async def forward(self, texts: list[str], requests: int):
        """predict_proba on a worker thread, so the replica keeps taking requests (and forming the next batch) meanwhile."""
        from emotion_pipeline.inference.predict import predict_proba

        async with self.forward_lock:
            probs = await asyncio.to_thread(predict_proba, self.model, self.tokenizer, texts, 64)
        self.texts_per_batch[len(texts)] += 1
        self.requests_per_batch[requests] += 1
        return probs

    def stats(self) -> dict:
        def table(counts: Counter) -> dict[str, int]:
            return {str(size): counts[size] for size in sorted(counts)}

        return {"replica": os.getpid(), "batching": self.batching, "max_batch_size": self.max_batch_size,
                "batches": sum(self.texts_per_batch.values()), "texts_per_batch": table(self.texts_per_batch),
                "requests_per_batch": table(self.requests_per_batch)}


def build_app(model_dir: str, replicas: int, threads: int, cpus_per_replica: float, limits: Limits, batching: bool,
              max_batch_size: int, batch_wait_timeout_s: float):
    """The Ray Serve application: EmotionClassifier as a deployment of ``replicas`` replicas, bound to its settings."""
    from ray import serve

    deployment = serve.deployment(
        EmotionClassifier, name="EmotionClassifier", num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
        # Ray Serve's default (5 requests in flight per replica) would cap a batch at 5 single-text requests.
        max_ongoing_requests=max(4 * max_batch_size, 64),
        health_check_period_s=5, graceful_shutdown_timeout_s=DRAIN_S)
    return deployment.bind(os.path.abspath(model_dir) if os.path.isdir(model_dir) else model_dir, threads, limits,
                           batching, max_batch_size, batch_wait_timeout_s)


# --------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(
        "emotion-serve",
        "%(prog)s MODEL_DIR [--replicas N] [--host H] [--port P] [--max-batch-size N] [--batch-wait-timeout-s S] "
        "[--no-batching] [--max-texts N] [--max-chars N] [--threads N] [--address ADDR]",
        "Serve an exported emotion classifier over HTTP (POST /classify) with Ray Serve.", workers="replica")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas, each on its share of the CPUs (default: 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="most texts per forward pass (default: 32)")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.01,
                        help="longest wait for more texts before a forward pass starts (default: 0.01)")
    parser.add_argument("--no-batching", dest="batching", action="store_false",
                        help="one forward pass per request (to measure what batching gains)")
    parser.add_argument("--max-texts", type=int, default=256, help="most texts in one request (default: 256)")
    parser.add_argument("--max-chars", type=int, default=5000, help="most characters in one text (default: 5000)")
    args = parser.parse_args(argv)
    run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    require_ray("emotion-serve")
    check_args(args)
    # Ctrl-C and SIGTERM end the service the same way, from here on (Ray's start-up included).
    received: list[int] = []

    def interrupt(signum, frame):
        if received:  # a second Ctrl-C while draining: stop at once
            _exit_interrupted(signum, drained=False)
        received.append(signum)
        raise KeyboardInterrupt

    catch_interrupts(interrupt)
    try:
        labels = check_model(args.model_dir)
        ray = start_ray(args.address)
        from ray import serve

        threads, cpus = worker_threads(args.replicas, ray.cluster_resources().get("CPU", 1), args.threads)
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config={"log_level": "WARNING"})
        quiet_ray_loggers()
        app = build_app(args.model_dir, args.replicas, threads, cpus, Limits(args.max_texts, args.max_chars), args.batching,
                        args.max_batch_size, args.batch_wait_timeout_s)
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING", "enable_access_log": False})
        batching = (f"batches of up to {args.max_batch_size} texts, {args.batch_wait_timeout_s * 1000:g} ms wait"
                    if args.batching else "no batching")
        print(f"emotion-serve: {args.model_dir} ({len(labels)} classes) on http://{args.host}:{args.port}/classify, "
              f"{args.replicas} replica(s) x {threads} thread(s), {batching}; Ctrl-C stops it.", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        if not received:
            raise
    except UserError:
        raise
    except Exception as exc:
        if received:
            _exit_interrupted(received[0], drained=False)
        raise UserError(f"the service did not start ({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}). "
                        f"Is port {args.port} free on {args.host}? (Ray's logs are under /tmp/ray/session_latest/logs.)") from None
    _exit_interrupted(received[0], drained=_stop_serving(timeout_s=DRAIN_S + 10))


def check_args(args: argparse.Namespace) -> None:
    """Options that can be wrong whatever the model: one paragraph each, before anything starts."""
    for name in ("replicas", "max_batch_size", "max_texts", "max_chars"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: {getattr(args, name)}; it must be at least 1.")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads: {args.threads}; it must be at least 1 (or leave it out for the CPUs / replicas).")
    if not 0 <= args.batch_wait_timeout_s <= 10:
        raise UserError(f"--batch-wait-timeout-s: {args.batch_wait_timeout_s}; give seconds from 0 to 10 (e.g. 0.01).")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port: {args.port}; give a TCP port from 1 to 65535 (0 is not allowed: clients must know it).")


def _stop_serving(timeout_s: float) -> bool:
    """Drain the replicas (requests in flight are answered) and stop Ray; False if that did not finish in time.

    A signal sent to the whole process group (a terminal's Ctrl-C is SIGINT to it; `kill -- -PGID` sends SIGTERM)
    also reaches the local Ray's own processes: after SIGTERM its raylet is gone and draining would wait forever.
    """
    import threading

    import ray
    from ray import serve

    def stop() -> None:
        try:
            # Deleting the application drains its replicas; Ray's shutdown then ends the controller and proxy with
            # everything else (serve.shutdown would print a retried task's error doing so).
            serve.delete(APP_NAME)
        finally:
            ray.shutdown()

    stopping = threading.Thread(target=stop, daemon=True)
    stopping.start()
    stopping.join(timeout_s)
    return not stopping.is_alive()


def _exit_interrupted(signum: int, drained: bool) -> None:
    how = "requests in flight were answered" if drained else "without waiting for requests in flight"
    exit_interrupted(signum, f"emotion-serve stopped, {how}")


if __name__ == "__main__":
    main()
