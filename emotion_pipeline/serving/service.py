"""The service every engine of emotion-serve runs: request rules, micro-batching and routes, in one place.

One request parser (``parse_request``), one scorer (emotion-predict's ``predict_proba`` and ``score_fields``, on
the model ``load_exported`` loads, stored class bias included) and one error format (a 4xx status and one line
of JSON, ``{"error": "..."}``). Both engines hand every HTTP request to ``ClassifierService.handle``: the
one-process engine (uvicorn, emotion-serve's default) and Ray Serve's replicas (``--engine ray``), so they answer
byte for byte alike and differ only in how a request reaches a model.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from emotion_pipeline.empty_texts import empty_refusal

KEYS = ("texts", "top_k")
ROUTES = {"/classify": "POST", "/healthz": "GET", "/stats": "GET"}


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
    byte of it is read, else while it streams in. Nothing past the limit is ever held in memory."""
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


# --------------------------------------------------------------------------- batching


class MicroBatcher:
    """Concurrent ``submit(item)`` calls gathered into one ``run(items)`` call: a batch starts once it holds
    ``max_batch_size`` items or ``wait_s`` after its first item arrived, one batch at a time; what arrives while a
    batch computes forms the next. Each caller gets its own item's result (or the batch's exception)."""

    def __init__(self, run: Callable[[list], Awaitable[list]], max_batch_size: int, wait_s: float):
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self.queue: asyncio.Queue | None = None  # made on the serving event loop, at the first item
        self.worker: asyncio.Task | None = None

    async def submit(self, item):
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._batches())
        answer = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((time.monotonic(), item, answer))
        return await answer

    async def _batches(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = batch[0][0] + self.wait_s
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                results = await self.run([item for _, item, _ in batch])
            except Exception as exc:  # noqa: BLE001  every caller of this batch gets it; the next batch runs
                results = [exc] * len(batch)
            for (_, _, answer), result in zip(batch, results):
                if answer.done():  # its client went away
                    continue
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)


# --------------------------------------------------------------------------- the service


Page = Callable[[object, "ClassifierService"], Awaitable[object]]  # (starlette Request, the service) -> a Response


class ClassifierService:
    """The model, loaded once, behind POST /classify, GET /healthz and GET /stats (and ``pages``: more routes, as
    emotion-demo adds its page). Concurrent texts share forward passes (MicroBatcher) unless ``batching`` is off."""

    def __init__(self, model_dir: str, threads: int, limits: Limits, batching: bool = True, max_batch_size: int = 32,
                 wait_s: float = 0.01, pages: dict[tuple[str, str], Page] | None = None):
        from emotion_pipeline.inference.predict import class_names
        from emotion_pipeline.serving.common import load_in_worker

        self.model_dir, self.limits, self.batching, self.max_batch_size = model_dir, limits, batching, max_batch_size
        self.model, self.tokenizer = load_in_worker(model_dir, threads, spinning=False)
        self.labels = class_names(self.model.config)
        self.pages = pages or {}
        # Each text is one item tagged with its request, so a forward pass knows how many requests it served.
        self.batcher = MicroBatcher(self.score_batch, max_batch_size, wait_s)
        self.forward_lock = asyncio.Lock()  # one forward pass at a time: its threads are this service's cores
        self.texts_per_batch: Counter[int] = Counter()
        self.requests_per_batch: Counter[int] = Counter()

    async def handle(self, request):
        """Any HTTP request -> its response; a refused one is a 4xx with one line of JSON, and the service goes on."""
        from starlette.responses import JSONResponse

        try:
            route = (request.method, request.url.path.rstrip("/") or "/")
            if route == ("POST", "/classify"):
                return await self.classify(await read_body(request, self.limits))
            if route == ("GET", "/healthz"):
                return JSONResponse({"status": "ok", "model": self.model_dir, "labels": self.labels})
            if route == ("GET", "/stats"):
                return JSONResponse(self.stats())
            if route in self.pages:
                return await self.pages[route](request, self)
            known = {**ROUTES, **{path: method for method, path in self.pages}}
            if route[1] in known:
                raise BadRequest(f"{route[1]}: use {known[route[1]]}, not {route[0]}.", 405)
            listed = ", ".join(f"{method} {path}" for path, method in known.items())
            raise BadRequest(f"{route[1]}: no such route; the routes are {listed}.", 404)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception as exc:  # anything else is our bug: answer it, keep serving
            detail = str(exc).splitlines()[0] if str(exc) else ""
            return JSONResponse({"error": f"internal error ({type(exc).__name__}: {detail})"}, status_code=500)

    async def classify(self, body: bytes):
        from starlette.responses import JSONResponse

        texts, top_k = parse_request(body, self.limits, len(self.labels))
        results, shared = await self.score(texts, top_k)
        return JSONResponse({"results": results}, headers={"X-Batch-Requests": str(shared)})

    async def score(self, texts: list[str], top_k: int | None = None) -> tuple[list[dict], int]:
        """emotion-predict's fields for each text, and how many requests shared a forward pass with them."""
        from emotion_pipeline.inference.predict import score_fields

        if self.batching:
            tag = object()
            scored = await asyncio.gather(*(self.batcher.submit((tag, text)) for text in texts))
            rows, shared = [row for row, _ in scored], max(requests for _, requests in scored)
        else:
            rows, shared = await self.forward(texts, requests=1), 1
        return [score_fields(self.labels, row, top_k) for row in rows], shared

    async def score_batch(self, items: list[tuple[object, str]]) -> list[tuple[object, int]]:
        """Texts of concurrent requests as the batcher gathered them: (probabilities, requests in this pass) per text."""
        requests = len({id(tag) for tag, _ in items})
        rows = await self.forward([text for _, text in items], requests)
        return [(row, requests) for row in rows]

    async def forward(self, texts: list[str], requests: int):
        """predict_proba on a worker thread, so the service keeps taking requests (and forming the next batch)."""
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


def asgi_app(service: ClassifierService):
    """The service as a bare ASGI application (no router, no middleware: the fewest steps per request)."""
    from starlette.requests import Request

    async def app(scope, receive, send):
        if scope["type"] != "http":  # uvicorn runs with lifespan off; nothing else is spoken here
            return
        response = await service.handle(Request(scope, receive))
        await response(scope, receive, send)

    return app
