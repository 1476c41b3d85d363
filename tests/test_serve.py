"""`emotion-serve`: the real command, on the tiny Qwen3 classifier, answers like emotion-predict, refuses bad
requests with a 4xx and one line of JSON and goes on answering, batches concurrent requests, and stops on
Ctrl-C with one line and exit 130.

The service starts once per engine (the one-process default, and Ray Serve with 2 replicas; batching with a 50 ms
wait so concurrent requests surely meet) and the last test stops it with SIGINT, so the tests run in file order.
The request rules themselves (parse_request) are checked without Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("ray")

from conftest import subprocess_env  # noqa: E402

from emotion_pipeline import predict  # noqa: E402
from emotion_pipeline.serving import serve  # noqa: E402
from emotion_pipeline.serving.service import BadRequest, Limits, parse_request  # noqa: E402

MAX_TEXTS, MAX_CHARS = 8, 200
TEXTS = ["i feel so happy today", "that noise scared me", "i am so angry at them", "what a lovely surprise"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    process: subprocess.Popen
    url: str
    stderr: list[str] = field(default_factory=list)  # filled by reader, line by line, until the process ends
    reader: threading.Thread | None = None

    def wait_for_line(self, prefix: str, deadline: float) -> str:
        while time.monotonic() < deadline:
            found = [line for line in self.stderr if line.startswith(prefix)]
            if found:
                return found[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no '{prefix}' line from emotion-serve (exit {self.process.poll()}):\n" + "".join(self.stderr)[-4000:])


def call(service: Service, path: str, body: bytes | None = None, method: str | None = None) -> tuple[int, dict, str, dict]:
    """(status, JSON body, raw body, headers) of one request; a 4xx or 5xx is an answer like any other."""
    request = urllib.request.Request(service.url + path, data=body, method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status, headers = response.read().decode(), response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, headers = error.read().decode(), error.code, dict(error.headers)
    return status, json.loads(raw), raw, headers


def classify(service: Service, texts: list, **extra) -> tuple[int, dict, str, dict]:
    return call(service, "/classify", json.dumps({"texts": texts, **extra}).encode())


# Both engines run the same tests: the one-process default, and Ray Serve with two replicas.
ENGINES = {"local": [], "ray": ["--engine", "ray", "--replicas", "2"]}


@pytest.fixture(scope="module", params=list(ENGINES))
def service(tiny_classifier, request):
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("emotion-serve")), str(tiny_classifier), *ENGINES[request.param], "--port",
         str(port := free_port()), "--batch-wait-timeout-s", "0.05", "--max-texts", str(MAX_TEXTS), "--max-chars",
         str(MAX_CHARS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        start_new_session=True)  # its own process group, as a terminal's foreground job is: Ctrl-C reaches all of it
    running = Service(process, f"http://127.0.0.1:{port}")
    running.reader = threading.Thread(target=lambda: running.stderr.extend(iter(process.stderr.readline, "")), daemon=True)
    running.reader.start()
    try:
        running.wait_for_line("emotion-serve: ", time.monotonic() + 240)  # printed once the replicas are ready
        yield running
    finally:  # the last test stops it; after a failure before that, stop it here (SIGKILL if Ctrl-C does not)
        for signum, grace in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
            if process.poll() is None:
                os.killpg(process.pid, signum)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(grace)


# --------------------------------------------------------------------------- the request rules (no Ray)

LIMITS = Limits(max_texts=MAX_TEXTS, max_chars=MAX_CHARS)
BAD_REQUESTS = [
    pytest.param(b"texts=hello", 400, "not JSON", id="not-json"),
    pytest.param(b"\xff\xfe{}", 400, "not JSON", id="not-utf8"),
    pytest.param(b'["hello"]', 400, "not an object", id="a-list"),
    pytest.param(b"{}", 400, "texts: missing", id="no-texts"),
    pytest.param(b'{"text": ["hello"]}', 400, "unknown key 'text'", id="misspelt-key"),
    pytest.param(b'{"texts": "hello"}', 400, "a string, not a list", id="texts-a-string"),
    pytest.param(b'{"texts": []}', 400, "an empty list", id="no-text"),
    pytest.param(b'{"texts": ["ok", 3]}', 400, "texts[1]: a number, not a string", id="a-number"),
    pytest.param(b'{"texts": ["ok", null]}', 400, "texts[1]: a null", id="a-null"),
    pytest.param(b'{"texts": ["ok", ""]}', 400, "texts[1]: empty", id="empty-text"),
    pytest.param(b'{"texts": [" \\t\\n"]}', 400, "texts[0]: empty", id="blank-text"),
    pytest.param(json.dumps({"texts": ["hi"] * (MAX_TEXTS + 1)}).encode(), 413, "--max-texts 8", id="too-many-texts"),
    pytest.param(json.dumps({"texts": ["a" * (MAX_CHARS + 1)]}).encode(), 413, "--max-chars 200", id="too-long"),
    pytest.param(b'{"texts": ["ok"], "top_k": 0}', 400, "top_k: 0", id="top-k-0"),
    pytest.param(b'{"texts": ["ok"], "top_k": 7}', 400, "from 1 to 6", id="top-k-over-classes"),
    pytest.param(b'{"texts": ["ok"], "top_k": "2"}', 400, 'top_k: "2"', id="top-k-a-string"),
    pytest.param(b'{"texts": ["ok"], "top_k": 1.5}', 400, "top_k: 1.5", id="top-k-a-float"),
    pytest.param(b'{"texts": ["ok"], "top_k": true}', 400, "top_k: true", id="top-k-a-bool"),
]


@pytest.mark.parametrize("body, status, needle", BAD_REQUESTS)
def test_parse_request_refuses_with_a_status_and_says_why(body, status, needle):
    with pytest.raises(BadRequest) as refused:
        parse_request(body, LIMITS, num_labels=6)
    assert refused.value.status == status and needle in str(refused.value) and "\n" not in str(refused.value)


def test_parse_request_takes_texts_and_an_optional_top_k():
    assert parse_request(b'{"texts": ["a", "b"]}', LIMITS, 6) == (["a", "b"], None)
    assert parse_request(b'{"texts": ["a"], "top_k": 6}', LIMITS, 6) == (["a"], 6)
    assert parse_request(b'{"texts": ["a"], "top_k": null}', LIMITS, 6) == (["a"], None)


def test_a_bad_model_folder_is_one_paragraph_and_exit_2_before_ray_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        serve.main([str(tmp_path / "models" / "export")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("error: model folder") and "does not exist" in err
    with pytest.raises(SystemExit) as exit:
        serve.main([str(tmp_path), "--replicas", "0"])
    assert exit.value.code == 2 and "--replicas: 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- the running service


@pytest.mark.slow
def test_healthz_names_the_model_and_its_classes(service, tiny_classifier):
    status, body, _, _ = call(service, "/healthz")
    assert status == 200 and body["status"] == "ok" and len(body["labels"]) == 6


@pytest.mark.slow
@pytest.mark.parametrize("top_k", [None, 2])
def test_classify_answers_like_emotion_predict(service, tiny_classifier, capsys, top_k):
    predict.main([str(tiny_classifier), *TEXTS, *(["--top-k", str(top_k)] if top_k else [])])
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    status, body, _, _ = classify(service, TEXTS, **({"top_k": top_k} if top_k else {}))
    assert status == 200 and len(body["results"]) == len(TEXTS)
    for got, want in zip(body["results"], expected):
        assert set(got) == set(want) - {"argument", "text"} and got["label"] == want["label"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        if top_k:
            assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
            assert [t["score"] for t in got["top_k"]] == pytest.approx([t["score"] for t in want["top_k"]], abs=1e-5)
        else:
            assert list(got["scores"]) == list(want["scores"])  # the classes in the model's order
            assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


@pytest.mark.slow
def test_bad_requests_get_a_4xx_and_one_line_of_json_and_the_service_goes_on(service):
    status, body, _, _ = classify(service, TEXTS[:1])
    good = body["results"]
    cases = [(values[0], values[1], values[2]) for values in (case.values for case in BAD_REQUESTS)]
    cases += [(None, 405, "use POST"), (b"{}", 404, "no such route")]
    for number, (request_body, status, needle) in enumerate(cases):
        path, method = ("/classify", "GET") if request_body is None else ("/nowhere" if status == 404 else "/classify", None)
        got, body, raw, _ = call(service, path, request_body, method)
        assert got == status and list(body) == ["error"] and needle in body["error"], (number, got, raw)
        assert "\n" not in raw.strip(), raw  # one line
    for _ in range(4):  # both replicas, most likely: each one still answers, and the same
        status, body, _, _ = classify(service, TEXTS[:1])
        assert status == 200 and body["results"] == good


@pytest.mark.slow
def test_a_body_over_the_limit_is_refused_before_it_is_read(service):
    """413 with one line from the declared Content-Length alone (the client never sends the rest), and, for a
    chunked body that declares nothing, as soon as the bytes read pass the limit."""
    import http.client
    from urllib.parse import urlparse

    address = urlparse(service.url)
    declared = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    declared.putrequest("POST", "/classify")
    declared.putheader("Content-Type", "application/json")
    declared.putheader("Content-Length", str(200 * 2**20))  # 200 MB announced, 64 KB sent
    declared.endheaders()
    declared.send(b'{"texts": ["' + b"a" * 65536)
    answer = declared.getresponse()
    raw = answer.read().decode()
    assert answer.status == 413 and "body: 209,715,200 bytes" in json.loads(raw)["error"] and "\n" not in raw.strip()
    declared.close()

    chunked = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    chunked.request("POST", "/classify", body=iter([b'{"texts": ["', *[b"a" * 4096] * 8, b'"]}']), encode_chunked=True,
                    headers={"Content-Type": "application/json"})
    answer = chunked.getresponse()
    assert answer.status == 413 and "body: over" in json.loads(answer.read())["error"]
    chunked.close()
    status, _, _, _ = classify(service, TEXTS[:1])
    assert status == 200


@pytest.mark.slow
def test_concurrent_requests_are_batched(service):
    """Single-text requests sent at once share forward passes: X-Batch-Requests (and /stats) say how many did."""
    shared = []
    for _ in range(5):  # a loaded machine may spread one round's requests out: try again rather than fail
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda text: classify(service, [text]), TEXTS * 3))
        assert all(status == 200 for status, *_ in answers)
        shared = [int(headers["x-batch-requests"]) for *_, headers in answers]
        if max(shared) > 1:
            break
    assert max(shared) > 1, shared
    stats = [call(service, "/stats")[1] for _ in range(6)]
    assert all(s["batching"] and s["max_batch_size"] == 32 for s in stats)
    assert any(int(size) > 1 for s in stats for size in s["requests_per_batch"]), stats


@pytest.mark.slow
def test_ctrl_c_stops_the_service_with_one_line_and_exit_130(service):
    """Last: it stops the module's service. SIGINT to its process group, as a terminal's Ctrl-C sends it."""
    before = len(service.stderr)
    os.killpg(service.process.pid, signal.SIGINT)
    assert service.process.wait(90) == 130
    service.reader.join(30)  # it has read everything once the process's stderr closes
    after = [line for line in service.stderr[before:] if line.strip()]
    assert len(after) == 1 and after[0].startswith("interrupted (SIGINT): emotion-serve stopped"), after
