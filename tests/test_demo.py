"""emotion-demo's page in headless Chromium (Debian's `chromium`, driven by playwright; no browser download).

On the session's finished tiny project: the page loads with every request outside the service refused (and none
made), a typed text shows emotion-predict's label and scores (to 1e-5), a click on a confusion-matrix cell lists
exactly the test texts behind it (metrics/predictions.csv), a file gets its table and download, bad input (an empty
text, a text over --max-chars, a binary file) is one message on the page, and Ctrl-C stops it with one line and exit
130. Set DEMO_SCREENSHOTS=<folder> to keep the screenshots.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import subprocess_env

PAGE = Path(__file__).resolve().parents[1] / "emotion_pipeline" / "serving" / "demo.html"
TEXT = "i feel so happy and grateful today"


def test_the_page_fetches_nothing_from_outside():
    """No script, style, font or image from a URL: everything is inline, so the page works air-gapped."""
    html = PAGE.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "a remote resource in demo.html"
    assert "@import" not in html and "url(" not in html and "fonts.g" not in html


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "no chromium on PATH (Debian: apt install chromium); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def demo(finished_project: Path):
    from test_serve import free_port

    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).with_name("emotion-demo")), "--project", str(finished_project),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env(), start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 180
    while not any(line.startswith("emotion-demo: ") for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.2)
    try:
        yield process, f"http://127.0.0.1:{port}", lines
    finally:
        for signum, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
            if process.poll() is None:
                os.killpg(process.pid, signum)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(grace)


@pytest.mark.slow
def test_the_page_in_headless_chromium(demo, finished_project, tmp_path):
    from playwright.sync_api import sync_playwright

    process, url, _ = demo
    shots = Path(os.environ.get("DEMO_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    model = finished_project / ("models/int8" if (finished_project / "models/int8/model.onnx").is_file() else "models/export")
    expected = json.loads(subprocess.run([str(Path(sys.executable).with_name("emotion-predict")), str(model), TEXT],
                                         capture_output=True, text=True, check=True, env=subprocess_env()).stdout)
    predictions = pd.read_csv(finished_project / "metrics" / "predictions.csv", keep_default_na=False)

    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1400})

        def only_the_service(route):  # the network is off for everything but the service
            if route.request.url.startswith(url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_service)
        page.goto(url + "/")
        page.wait_for_selector("#matrix td.cell")
        assert page.text_content("#headline").startswith("300 test texts: accuracy ")

        # A typed text: emotion-predict's label and scores.
        page.fill("#text", TEXT)
        page.click("#classify")
        page.wait_for_selector("#bars .bar-row")
        shown = {row.get_attribute("data-label"): float(row.get_attribute("data-score"))
                 for row in page.query_selector_all("#bars .bar-row")}
        assert page.get_attribute("#bars", "data-label") == expected["label"]
        assert list(shown) == list(expected["scores"])
        assert shown == pytest.approx(expected["scores"], abs=1e-5)
        page.screenshot(path=str(shots / "demo-typed-text.png"))

        # A confusion-matrix cell: the texts behind it, in the file's order.
        counts = predictions.groupby(["actual", "predicted"]).size()
        (actual, predicted), count = max(((key, n) for key, n in counts.items() if key[0] != key[1]),
                                         key=lambda item: item[1], default=(counts.idxmax(), counts.max()))
        page.click(f'#matrix td[data-actual="{actual}"][data-predicted="{predicted}"]')
        listed = [item.text_content() for item in page.query_selector_all("#cell-texts li")]
        behind = predictions[(predictions["actual"] == actual) & (predictions["predicted"] == predicted)]["text"].tolist()
        assert listed == behind[:200] and len(behind) == count
        page.locator("#matrix").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "demo-confusion-click.png"), full_page=True)

        # A file: its table, a download, the empty line named.
        page.set_input_files("#file", files=[{"name": "three.txt", "mimeType": "text/plain",
                                               "buffer": b"i am thrilled\n\ni feel awful\nwhat a shock\n"}])
        page.wait_for_selector("#file-table tbody tr")
        assert len(page.query_selector_all("#file-table tbody tr")) == 3
        assert "skipped 1 empty line(s): 2" in page.text_content("#message") and page.is_visible("#download")

        # Bad input: one message on the page each, never a stack trace.
        for text, needle in (("   ", "Type a text first"), ("a" * 6000, "--max-chars 5000")):
            page.fill("#text", text)
            page.click("#classify")
            page.wait_for_function("needle => document.getElementById('message').textContent.includes(needle)", arg=needle)
        page.set_input_files("#file", files=[{"name": "picture.png", "mimeType": "image/png",
                                               "buffer": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x01"}])
        page.wait_for_function("() => document.getElementById('message').textContent.includes('not valid UTF-8')")
        message = page.text_content("#message")
        assert message.startswith("picture.png, line 1: not valid UTF-8") and "\n" not in message.strip()
        assert "Traceback" not in page.content()
        page.screenshot(path=str(shots / "demo-bad-file.png"))
        browser.close()
    assert outside == [], f"the page asked for something outside the service: {outside}"


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_with_one_line_and_exit_130(demo):
    process, _, lines = demo
    before = len(lines)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(60) == 130
    time.sleep(0.5)
    after = [line for line in lines[before:] if line.strip()]
    assert len(after) == 1 and after[0].startswith("interrupted (SIGINT): emotion-demo stopped"), after
