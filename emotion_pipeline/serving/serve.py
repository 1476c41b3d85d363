"""The `emotion-serve` command: an HTTP service for an exported model, with dynamic batching.

    emotion-serve models/int8 --port 8000                         # one process on this machine (the default engine)
    emotion-serve models/int8 --engine ray --replicas 2           # Ray Serve: replicas, a Ray cluster (--address)
    curl -s localhost:8000/classify -d '{"texts": ["i feel so happy today", "that noise scared me"], "top_k": 2}'

Routes:
    POST /classify  {"texts": ["...", ...], "top_k": K}  ->  {"results": [{"label", "score", "scores" | "top_k"}, ...]}
                    one result per text, in order, with emotion-predict's fields and rounding ("top_k" is optional:
                    without it every class's score is given). The response header X-Batch-Requests says how many
                    requests shared a forward pass with this one's texts (1: it was not batched with another).
    GET  /healthz   {"status": "ok", "model": ..., "labels": [...]} once the model answers
    GET  /stats     the answering replica's batches so far: how many texts and requests each forward pass held

Two engines run the same service (emotion_pipeline.serving.service: one request parser, one scorer, one error
format, one micro-batcher), and differ only in how a request reaches the model:
- ``--engine local`` (default): uvicorn and the model in this one process. Serving costs little more CPU per text
  than emotion-predict spends on the same texts (benchmarks/README.md, "Serving overhead"): use it on one machine.
- ``--engine ray``: Ray Serve's HTTP proxy and ``--replicas`` model replicas (actors), on this machine or a Ray
  cluster (--address or RAY_ADDRESS; every node needs this project installed and the model folder at the same
  path). Each request crosses two more processes: use it to spread replicas over machines, not for one machine.

Concurrent texts share forward passes: a pass takes up to --max-batch-size texts, waiting at most
--batch-wait-timeout-s for them. A bad request gets a 4xx status and one line of JSON, {"error": "..."}, naming
what was wrong and what is valid; the service goes on. Ctrl-C (or SIGTERM) drains and stops it: one line on
stderr, exit status 128 + the signal number (130 for Ctrl-C). A bad model folder is emotion-predict's
one-paragraph error, exit 2, before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time

from emotion_pipeline.commands import run_command
from emotion_pipeline.errors import UserError, catch_interrupts, exit_interrupted
from emotion_pipeline.serving.common import (
    check_model,
    command_parser,
    quiet_ray_loggers,
    require_ray,
    start_ray,
    worker_threads,
)
from emotion_pipeline.serving.service import ClassifierService, Limits, Page, asgi_app

APP_NAME = "emotion"
ENGINES = ("local", "ray")
DRAIN_S = 10  # on Ctrl-C, the longest wait for requests in flight


# --------------------------------------------------------------------------- the Ray engine


class EmotionClassifier:
    """One Ray Serve replica: a ClassifierService (the model, loaded once, and its routes). A deployment by build_app."""

    def __init__(self, model_dir: str, threads: int, limits: Limits, batching: bool, max_batch_size: int,
                 batch_wait_timeout_s: float):
        self.service = ClassifierService(model_dir, threads, limits, batching, max_batch_size, batch_wait_timeout_s)

    async def __call__(self, request):
        return await self.service.handle(request)


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
    run_command(lambda: run(parser("emotion-serve").parse_args(argv)))


def parser(prog: str) -> argparse.ArgumentParser:
    """emotion-serve's arguments (emotion-demo takes them too)."""
    parser = command_parser(
        prog,
        "%(prog)s MODEL_DIR [--engine local|ray] [--replicas N] [--host H] [--port P] [--max-batch-size N] "
        "[--batch-wait-timeout-s S] [--no-batching] [--max-texts N] [--max-chars N] [--threads N] [--address ADDR]",
        "Serve an exported emotion classifier over HTTP (POST /classify), in this process or on Ray Serve.",
        workers="replica")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: uvicorn and the model in this process (one machine); ray: Ray Serve replicas, "
                             "on this machine or a Ray cluster (default: local)")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas, each on its share of the CPUs; "
                                                                "above 1 with --engine ray (default: 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="most texts per forward pass (default: 32)")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.01,
                        help="longest wait for more texts before a forward pass starts (default: 0.01)")
    parser.add_argument("--no-batching", dest="batching", action="store_false",
                        help="one forward pass per request (to measure what batching gains)")
    parser.add_argument("--max-texts", type=int, default=256, help="most texts in one request (default: 256)")
    parser.add_argument("--max-chars", type=int, default=5000, help="most characters in one text (default: 5000)")
    return parser


def run(args: argparse.Namespace, pages: dict[tuple[str, str], Page] | None = None, name: str = "emotion-serve") -> None:
    """Serve until Ctrl-C or SIGTERM; ``pages``: more routes (emotion-demo's page), local engine only."""
    check_args(args)
    require_ray(name, "ray" if args.engine == "ray" else "uvicorn")
    # Ctrl-C and SIGTERM end the service the same way, from here on (model loading and Ray's start-up included).
    received: list[int] = []

    def interrupt(signum, frame):
        if received:  # a second Ctrl-C while draining: stop at once
            _exit_interrupted(signum, name, drained=False)
        received.append(signum)
        raise KeyboardInterrupt

    catch_interrupts(interrupt)
    try:
        labels = check_model(args.model_dir)
        serve = serve_locally if args.engine == "local" else serve_on_ray
        serve(args, labels, Limits(args.max_texts, args.max_chars), pages or {}, name)
    except KeyboardInterrupt:
        if not received:
            raise
    except UserError:
        raise
    except Exception as exc:
        if received:
            _exit_interrupted(received[0], name, drained=False)
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise UserError(f"the service did not start ({type(exc).__name__}: {detail}). Is port {args.port} free on "
                        f"{args.host}?" + (" (Ray's logs are under /tmp/ray/session_latest/logs.)" if args.engine == "ray"
                                           else "")) from None
    drained = True if args.engine == "local" else _stop_serving(timeout_s=DRAIN_S + 10)
    _exit_interrupted(received[0], name, drained=drained)


def ready_line(name: str, args: argparse.Namespace, labels: list[str], engine: str, pages: dict) -> str:
    """The line that says the service answers: where (its page, if it has one, else /classify) and how it batches."""
    batching = (f"batches of up to {args.max_batch_size} texts, {args.batch_wait_timeout_s * 1000:g} ms wait"
                if args.batching else "no batching")
    path = "/" if ("GET", "/") in pages else "/classify"
    return (f"{name}: {args.model_dir} ({len(labels)} classes) on http://{args.host}:{args.port}{path}, {engine}, "
            f"{batching}; Ctrl-C stops it.")


def serve_locally(args: argparse.Namespace, labels: list[str], limits: Limits, pages: dict, name: str) -> None:
    """uvicorn and the model in this process, until a signal: uvicorn drains the requests in flight (at most
    DRAIN_S seconds), then hands the signal back to ``run``'s handler."""
    import uvicorn

    threads, _ = worker_threads(1, os.cpu_count() or 1, args.threads)
    try:  # bound here, so a port in use is our one paragraph, not uvicorn's log and exit
        listening = socket.create_server((args.host, args.port))
    except OSError as exc:
        raise UserError(f"--port {args.port} on {args.host}: cannot listen there ({exc.strerror}); choose a free port "
                        f"or stop what uses it.") from None
    service = ClassifierService(args.model_dir, threads, limits, args.batching, args.max_batch_size,
                                args.batch_wait_timeout_s, pages)
    config = uvicorn.Config(asgi_app(service), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=DRAIN_S)
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.05)
        if server.started:
            print(ready_line(name, args, labels, f"1 process x {threads} thread(s)", pages), file=sys.stderr, flush=True)

    async def serve() -> None:
        await asyncio.gather(server.serve(sockets=[listening]), announce())

    asyncio.run(serve())


def serve_on_ray(args: argparse.Namespace, labels: list[str], limits: Limits, pages: dict, name: str) -> None:
    ray = start_ray(args.address)
    from ray import serve

    threads, cpus = worker_threads(args.replicas, ray.cluster_resources().get("CPU", 1), args.threads)
    serve.start(http_options={"host": args.host, "port": args.port}, logging_config={"log_level": "WARNING"})
    quiet_ray_loggers()
    app = build_app(args.model_dir, args.replicas, threads, cpus, limits, args.batching, args.max_batch_size,
                    args.batch_wait_timeout_s)
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING", "enable_access_log": False})
    print(ready_line(name, args, labels, f"Ray Serve, {args.replicas} replica(s) x {threads} thread(s)", pages),
          file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


def check_args(args: argparse.Namespace) -> None:
    """Options that can be wrong whatever the model: one paragraph each, before anything starts."""
    for name in ("replicas", "max_batch_size", "max_texts", "max_chars"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: {getattr(args, name)}; it must be at least 1.")
    if args.engine == "local" and (args.replicas != 1 or args.address):
        raise UserError(f"--engine local serves one model in this process: {'--replicas' if args.replicas != 1 else '--address'} "
                        "needs --engine ray (Ray Serve replicas, on this machine or a cluster).")
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


def _exit_interrupted(signum: int, name: str, drained: bool) -> None:
    how = "requests in flight were answered" if drained else "without waiting for requests in flight"
    exit_interrupted(signum, f"{name} stopped, {how}")


if __name__ == "__main__":
    main()
