"""One NPU, many clients: FIFO queue with a bound, abort on disconnect, draining.

The server runs the simulator at a board's pace (RKLLM_SIM_TOKEN_US); the assertions count
tokens and read the simulator's trace, never the wall clock.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
sys.path.insert(0, os.path.dirname(__file__))
from serve_support import ServeProcess  # noqa: E402

PACE = {"RKLLM_SIM_TOKEN_US": "20000"}  # 20 ms per token
LONG = {**PACE, "RKLLM_SIM_IGNORE_EOS": "1"}  # answers as long as max_tokens says


def ask(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell me about the river number {n}"}]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def health(srv: ServeProcess) -> dict[str, Any]:
    return dict(httpx.get(srv.url + "/health").json())


def in_flight(srv: ServeProcess) -> int:
    state = health(srv)
    return int(state["queue_depth"] + state["running"])


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", "--queue-size", "15",
                       "--name", "board-a"], tmp_path_factory.mktemp("paced"), env=LONG) as srv:
        yield srv


def test_sixteen_clients_fifo_and_the_seventeenth_is_refused(paced: ServeProcess) -> None:
    client = openai.OpenAI(base_url=paced.url + "/v1", api_key="x", max_retries=0, timeout=120)
    answers: dict[int, str] = {}
    threads = []
    # the first answer is long (500 tokens, 10 s at this pace) so that all 16 are in at once
    limits = [500] + [6] * 15
    for n in range(16):
        def one(n: int = n) -> None:
            got = client.chat.completions.create(model="demo", messages=ask(n),
                                                 max_tokens=limits[n])
            answers[n] = got.choices[0].message.content or ""
        threads.append(threading.Thread(target=one))
        threads[-1].start()
        # the next one is sent once this one is in (so the arrival order is known)
        wait_for(lambda n=n: in_flight(paced) >= n + 1, f"request {n} to arrive")
    state = health(paced)
    assert not answers, "the first answer ended before all 16 were in (machine too slow)"
    assert state["status"] == "busy" and state["name"] == "board-a"
    assert state["queue_depth"] == 15 and state["running"] == 1  # the bound: 15 waiting
    full = httpx.post(paced.url + "/v1/chat/completions",
                      json={"model": "demo", "messages": ask(99)})
    assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["code"] == "server_busy"
    assert full.headers["x-rkllm-board"] == "board-a"
    for t in threads:
        t.join(120)
    assert sorted(answers) == list(range(16)) and all(answers.values())
    runs = [e["args"]["rkllm_input"]["prompt_input"] for e in paced.trace("rkllm_run")]
    mine = [p for p in runs if p.startswith("Tell me about the river number")]
    assert mine == [ask(n)[0]["content"] for n in range(16)]  # FIFO
    # each answer is the one a lone request gets
    for n in (0, 7, 15):
        alone = client.chat.completions.create(model="demo", messages=ask(n),
                                               max_tokens=limits[n])
        assert alone.choices[0].message.content == answers[n]
    metrics = httpx.get(paced.url + "/metrics").text
    assert 'rkllm_rejected_requests_total{board="board-a",model="demo",reason="full"}' in metrics
    assert 'rkllm_queue_depth{board="board-a"} 0' in metrics


def generated_tokens(srv: ServeProcess) -> float:
    for line in httpx.get(srv.url + "/metrics").text.splitlines():
        if line.startswith("rkllm_generated_tokens_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_dropped_stream_aborts_within_one_token(tmp_path: Path) -> None:
    env = {**LONG, "RKLLM_SIM_TOKEN_US": "50000"}
    with ServeProcess(["demo", "--runtime", "sim:1.3.0"], tmp_path, env=env) as srv:
        before = generated_tokens(srv)
        got = 0
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=60, json={
                "model": "demo", "messages": ask(1), "max_tokens": 100000,
                "stream": True}) as response:
            for line in response.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    got += 1
                if got == 5:
                    break
        wait_for(lambda: bool(srv.trace("rkllm_abort")), "rkllm_abort in the trace")
        wait_for(lambda: health(srv)["running"] == 0, "the model to be free")
        spent = generated_tokens(srv) - before
        assert got <= spent <= got + 2, spent  # the one in flight, at most one more
        # the next request starts at once and completes (not after 100000 tokens)
        nxt = httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                         json={"model": "demo", "messages": ask(2), "max_tokens": 3})
        assert nxt.status_code == 200
        runs = {e["args"]["rkllm_input"]["prompt_input"]: e["time"]
                for e in srv.trace("rkllm_run")}
        first_abort = min(e["time"] for e in srv.trace("rkllm_abort"))
        assert runs[ask(1)[0]["content"]] < first_abort < runs[ask(2)[0]["content"]]
        assert 'rkllm_aborted_runs_total{model="demo",reason="disconnect"} 1' in \
            httpx.get(srv.url + "/metrics").text


def stream_text(url: str, n: int, out: dict[int, str], max_tokens: int = 10) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    parts = []
    for chunk in client.chat.completions.create(model="demo", messages=ask(n), stream=True,
                                                max_tokens=max_tokens):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                parts.append(f"<{chunk.choices[0].finish_reason}>")
    out[n] = "".join(parts)


def test_sigterm_drains_running_and_queued_then_exits_0(tmp_path: Path) -> None:
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", "--grace", "60"], tmp_path,
                      env=LONG) as srv:
        done: dict[int, str] = {}
        # the first answer is long enough (2 s) for the other two to be queued behind it
        threads = [threading.Thread(target=stream_text, args=(srv.url, n, done, limit))
                   for n, limit in enumerate((100, 10, 10))]
        for t in threads:
            t.start()
        wait_for(lambda: health(srv)["queue_depth"] == 2, "two queued requests")
        srv.signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(srv.url + "/health").status_code == 503, "draining")
        assert health(srv)["status"] == "draining"
        refused = httpx.post(srv.url + "/v1/chat/completions",
                             json={"model": "demo", "messages": ask(9)})
        assert refused.status_code == 503 and "draining" in refused.json()["error"]["message"]
        for t in threads:
            t.join(120)
        assert srv.proc.wait(60) == 0
        assert sorted(done) == [0, 1, 2]
        assert all(text.endswith("<length>") for text in done.values())  # nothing cut


def test_second_signal_aborts_at_once(tmp_path: Path) -> None:
    env = LONG
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", "--grace", "600"], tmp_path,
                      env=env) as srv:
        done: dict[int, str] = {}
        t = threading.Thread(target=lambda: _quiet(stream_text, srv.url, 0, done, 100000))
        t.start()
        wait_for(lambda: health(srv)["running"] == 1, "a running answer")
        srv.signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(srv.url + "/health").status_code == 503, "draining")
        srv.signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0  # not the 600 s grace, nor 100000 tokens
        t.join(30)
        assert srv.trace("rkllm_abort") and srv.trace("rkllm_destroy")


def _quiet(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the stream is cut by the stop; that is the point
        pass


def test_admin_drain_needs_the_key_and_ends_the_server(tmp_path: Path) -> None:
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", "--api-key", "k3y"], tmp_path) as srv:
        assert httpx.post(srv.url + "/admin/drain").status_code == 401
        ok = httpx.post(srv.url + "/admin/drain", headers={"Authorization": "Bearer k3y"})
        assert ok.status_code == 200 and ok.json()["status"] == "draining"
        assert srv.proc.wait(30) == 0


def test_a_client_giving_up_on_a_whole_answer_aborts_it(tmp_path: Path) -> None:
    env = {**LONG, "RKLLM_SIM_TOKEN_US": "50000"}
    with ServeProcess(["demo", "--runtime", "sim:1.3.0"], tmp_path, env=env) as srv:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url + "/v1/chat/completions", timeout=1.0, json={
                "model": "demo", "messages": ask(1), "max_tokens": 100000})
        wait_for(lambda: bool(srv.trace("rkllm_abort")), "rkllm_abort in the trace")
        wait_for(lambda: health(srv)["running"] == 0, "the model to be free")


def test_least_recently_used_model_is_evicted_and_idle_ones_unloaded(tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text('{"models": {"a": {"model": "demo"}, "b": {"model": "demo"}, '
                      '"c": {"model": "demo", "keep_alive": 0}}, "max_loaded": 2}')
    with ServeProcess(["--runtime", "sim:1.3.0", "--config", str(config)], tmp_path) as srv:
        def loaded() -> list[str]:
            return sorted(m["name"] for m in httpx.get(srv.url + "/api/ps").json()["models"])

        def chat(model: str) -> None:
            got = httpx.post(srv.url + "/api/chat", timeout=60, json={
                "model": model, "stream": False, "messages": ask(0),
                "options": {"num_predict": 2}})
            assert got.status_code == 200, got.text

        assert loaded() == ["a", "b"]  # the first max_loaded of the config, at start
        chat("a")                      # b is now the least recently used
        chat("c")
        # b evicted for c, and c (keep_alive 0) unloaded right after its answer
        wait_for(lambda: loaded() == ["a"], "c to be unloaded")
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'rkllm_model_unloads_total{model="b",reason="evicted"} 1' in metrics
        assert 'rkllm_model_unloads_total{model="c",reason="keep_alive"} 1' in metrics
