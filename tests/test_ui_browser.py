"""The chat page at `/`, driven in a real headless Chromium against `rkllm serve` on the simulator.

Needs Debian's `chromium` and the `playwright` package (both installed by .ci/run; the page
test extra is `pip install -e '.[browser]'`); skipped with a message where either is missing.
Screenshots are kept in ``$RKLLM_TEST_ARTIFACTS`` (default: ``test-artifacts/`` at the root of
the checkout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_support import ServeProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("RKLLM_TEST_ARTIFACTS", ROOT / "test-artifacts"))
KEY = "page-test-key"

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install -e '.[browser]'; .ci/run installs it)")
if not os.path.exists(CHROMIUM):
    pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs "
                "it)", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def script_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated model whose every answer is markup that would run if inserted as HTML."""
    d = tmp_path_factory.mktemp("xss")
    corpus = d / "corpus.txt"
    corpus.write_text("<script>window.__pwned = 1</script> <b>bold</b> "
                      "<img src=x onerror=window.__pwned=2> " * 50)
    model = d / "xss.rkllm"
    subprocess.run([sys.executable, str(ROOT / "csrc" / "sim" / "make_model.py"), "-o",
                    str(model), "--corpus", str(corpus), "--name", "xss"], check=True)
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, script_model: Path
           ) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("ui")
    # a board's pace, so that streaming and stopping can be seen
    with ServeProcess(["demo", str(script_model), "--api-key", KEY, "--max-loaded", "2"], tmp,
                      env={"RKLLM_SIM_TOKEN_US": "20000", "RKLLM_SIM_IGNORE_EOS": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            # no sandbox as root; no background connections on a machine without a network
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        yield b
        b.close()


def open_page(browser: Any, server: ServeProcess, **context: Any) -> Any:
    page = browser.new_context(**context).new_page()
    page.goto(server.url + "/")
    # the page asks for the key once (401 on /v1/models), then keeps it
    page.locator("#apikey").fill(KEY)
    page.locator("#keyform button").click()
    page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
    return page


def send(page: Any, text: str) -> Any:
    before = page.locator(".msg.assistant").count()
    page.locator("#prompt").fill(text)
    page.locator("#prompt").press("Enter")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant').length > {before}")
    return page.locator(".msg.assistant").nth(before)


def watch_stream(page: Any, answer: Any, timeout: float = 60) -> list[int]:
    """The lengths of the answer's text seen while it streams in, until its stats appear."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(answer.locator(".body").inner_text())
        if not seen or seen[-1] != n:
            seen.append(n)
        if answer.locator(".stats").count():
            return seen
        page.wait_for_timeout(10)
    raise AssertionError(f"the answer did not finish in {timeout}s (lengths seen: {seen})")


def test_two_turns_stream_in_with_their_figures(browser: Any, server: ServeProcess) -> None:
    page = open_page(browser, server)
    page.locator("#settings summary").click()
    page.locator("#max_tokens").fill("40")
    first = send(page, "Tell me about the sea.")
    lengths = watch_stream(page, first)
    assert len([n for n in lengths if n > 0]) >= 3, f"no streaming seen: {lengths}"
    second = send(page, "And about rivers?")
    lengths2 = watch_stream(page, second)
    assert len([n for n in lengths2 if n > 0]) >= 3, f"no streaming seen: {lengths2}"
    for answer in (first, second):
        assert answer.locator(".body").inner_text().strip()
        stats = answer.locator(".stats").inner_text()
        assert "time to first token" in stats and "tokens/s" in stats, stats
    # both turns went to the server as one conversation: the second answer is what the
    # server gives for the same three messages
    texts = [m.locator(".body").inner_text() for m in page.locator(".msg").all()]
    assert len(texts) == 4
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
    page.context.close()


def test_stop_aborts_the_run(browser: Any, server: ServeProcess) -> None:
    page = open_page(browser, server)
    page.locator("#settings summary").click()
    page.locator("#max_tokens").fill("400")   # 8 s at the board's pace: stopped long before
    aborts_before = len(server.trace("rkllm_abort"))
    answer = send(page, "Tell me a long story.")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant .body')[document.querySelectorAll("
        "'.msg.assistant .body').length - 1].innerText.length > 20")
    page.locator("#stop").click()
    page.wait_for_function("document.querySelector('#stop').disabled")
    assert answer.locator(".stats").inner_text() == "stopped"
    deadline = time.monotonic() + 10
    while len(server.trace("rkllm_abort")) <= aborts_before:
        assert time.monotonic() < deadline, "the server never called rkllm_abort"
        time.sleep(0.05)
    # the model is free again: the next question is answered
    page.locator("#max_tokens").fill("5")
    after = send(page, "Hello?")
    watch_stream(page, after)
    assert after.locator(".body").inner_text().strip()
    page.context.close()


def test_markup_in_an_answer_is_shown_as_text(browser: Any, server: ServeProcess,
                                              script_model: Path) -> None:
    page = open_page(browser, server)
    page.locator("#model").select_option(script_model.stem)
    page.locator("#settings summary").click()
    page.locator("#max_tokens").fill("30")
    answer = send(page, "hi")
    watch_stream(page, answer)
    text = answer.locator(".body").inner_text()
    assert "<script>" in text or "<img" in text or "<b>" in text, text
    assert answer.locator("script, img, b").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.context.close()


def test_phone_sized_screen_and_busy_server(browser: Any, server: ServeProcess,
                                            tmp_path: Path) -> None:
    page = open_page(browser, server, viewport={"width": 390, "height": 844},
                     device_scale_factor=2, is_mobile=True, has_touch=True)
    assert page.evaluate("document.documentElement.scrollWidth <= "
                         "document.documentElement.clientWidth")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page-phone.png"))
    page.context.close()
    # a server whose queue holds nobody: while one answer streams, the model is taken, so the
    # page's request is refused (503 + Retry-After) and the page says the server is busy
    with ServeProcess(["demo", "--queue-size", "0"], tmp_path,
                      env={"RKLLM_SIM_TOKEN_US": "20000", "RKLLM_SIM_IGNORE_EOS": "1"}) as busy:
        page = browser.new_context().new_page()
        page.goto(busy.url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length >= 1")
        with httpx.Client(timeout=60) as client, client.stream(
                "POST", busy.url + "/v1/chat/completions",
                json={"model": "demo", "stream": True, "max_tokens": 300,
                      "messages": [{"role": "user", "content": "a long story"}]}) as running:
            lines = running.iter_lines()        # kept: dropping it would close the stream
            for line in lines:                  # the other answer has its turn: text comes
                if '"content":"' in line and '"content":""' not in line:
                    break
            # (not send(): the refused answer's placeholder may be gone before it is seen)
            page.locator("#prompt").fill("Am I served?")
            page.locator("#prompt").press("Enter")
            page.wait_for_selector(".msg.error")
            assert "busy" in page.locator(".msg.error").inner_text().lower()
        page.context.close()


def test_root_answers_browsers_with_the_page_and_others_as_ollama(server: ServeProcess,
                                                                   tmp_path: Path) -> None:
    html = httpx.get(server.url + "/", headers={"Accept": "text/html,*/*"})
    assert html.status_code == 200 and "<title>rkllm chat</title>" in html.text
    plain = httpx.get(server.url + "/")
    assert plain.text == "Ollama is running"
    with ServeProcess(["demo", "--no-ui"], tmp_path) as no_ui:
        r = httpx.get(no_ui.url + "/", headers={"Accept": "text/html"})
        assert r.text == "Ollama is running"
