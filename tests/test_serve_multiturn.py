"""Multi-turn without re-prefill: over 5 turns through the OpenAI API, each turn sends only
the new message to the runtime (the simulator's trace), prefills only it (usage), and answers
as a full re-prefill does."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
sys.path.insert(0, os.path.dirname(__file__))
from serve_support import ServeProcess  # noqa: E402

TURNS = ["Tell me about the river", "And the sea?", "What about mountains?",
         "Name a city", "Thank you"]
SYSTEM = {"role": "system", "content": "You answer briefly."}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(["demo", "--runtime", "sim:1.3.0"], tmp_path_factory.mktemp("mt")) as srv:
        yield srv


def converse(client: Any, fresh_each_turn: bool = False, greedy: bool = True
             ) -> tuple[list[str], list[int]]:
    """Five turns; the answers and the prompt tokens prefilled per turn."""
    messages: list[dict[str, str]] = [SYSTEM]
    answers, prefilled = [], []
    for text in TURNS:
        messages.append({"role": "user", "content": text})
        if fresh_each_turn:  # something else in between: the server must prefill in full
            client.completions.create(model="demo", prompt="unrelated", max_tokens=2)
        # answers end by themselves: one cut by max_tokens is not kept (its end differs)
        got = client.chat.completions.create(model="demo", messages=messages,
                                             **({"temperature": 0} if greedy else {}))
        assert got.choices[0].finish_reason == "stop"
        answer = got.choices[0].message.content or ""
        messages.append({"role": "assistant", "content": answer})
        answers.append(answer)
        usage = got.usage
        prefilled.append(usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens)
    return answers, prefilled


def runs_since(srv: ServeProcess, start: int) -> list[dict[str, Any]]:
    return [e for e in srv.trace()[start:]
            if e["call"] in ("rkllm_run", "rkllm_clear_kv_cache", "rkllm_set_chat_template")]


def saved(srv: ServeProcess) -> float:
    for line in httpx.get(srv.url + "/metrics").text.splitlines():
        if line.startswith("rkllm_prefill_tokens_saved_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_each_turn_sends_and_prefills_only_the_new_message(server: ServeProcess) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    start = len(server.trace())
    before = saved(server)
    answers, prefilled = converse(client)
    calls = runs_since(server, start)
    runs = [c for c in calls if c["call"] == "rkllm_run"]
    assert [r["args"]["rkllm_input"]["prompt_input"] for r in runs] == TURNS
    assert all(r["args"]["rkllm_infer_params"]["keep_history"] == 1 for r in runs)
    # the kv cache is set up once (system prompt), then only added to
    first_run = calls.index(runs[0])
    assert all(c["call"] == "rkllm_run" for c in calls[first_run:])
    # the runtime's own count: turn 1 prefills system + first message, later turns only theirs
    assert prefilled[0] > max(prefilled[1:])
    for text, count in zip(TURNS[1:], prefilled[1:]):
        assert count <= len(text.split()) + 12, (text, count)  # words + the template's tokens
    assert saved(server) - before > sum(prefilled[1:])


def test_answers_equal_a_full_re_prefill(server: ServeProcess) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    kept, _ = converse(client)
    start = len(server.trace())
    full, prefilled = converse(client, fresh_each_turn=True)
    assert any(c["call"] == "rkllm_set_chat_template" for c in runs_since(server, start))
    assert prefilled == sorted(prefilled)  # each turn prefilled the whole conversation
    assert full == kept


def test_a_changed_history_is_prefilled_again(server: ServeProcess, tmp_path: Path) -> None:
    """The system part stays in the kv cache; the edited conversation is prefilled again."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    first = client.chat.completions.create(model="demo", max_tokens=8, messages=[
        {"role": "user", "content": TURNS[0]}])
    edit = (first.choices[0].message.content or "") + " X"
    edited = [{"role": "user", "content": TURNS[0]},
              {"role": "assistant", "content": edit},
              {"role": "user", "content": TURNS[1]}]
    start = len(server.trace())
    client.chat.completions.create(model="demo", messages=edited, max_tokens=8)
    calls = runs_since(server, start)
    assert [c["call"] for c in calls] == ["rkllm_clear_kv_cache", "rkllm_run"]
    assert calls[0]["args"]["keep_system_prompt"] == 1
    text = calls[1]["args"]["rkllm_input"]["prompt_input"]
    assert text.startswith(TURNS[0]) and edit in text and text.endswith(TURNS[1])


def test_runtime_1_1_renders_the_whole_conversation_every_turn(tmp_path: Path) -> None:
    with ServeProcess(["demo", "--runtime", "sim:1.1.0"], tmp_path) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        converse(client, greedy=False)  # per-request sampling needs 1.3.0
        runs = srv.trace("rkllm_run")
        assert len(runs) == len(TURNS)
        prompts = [r["args"]["rkllm_input"]["prompt_input"] for r in runs]
        for n, prompt in enumerate(prompts):  # every turn so far, through the template
            assert prompt.startswith("<|im_start|>system\nYou answer briefly.<|im_end|>")
            assert all(text in prompt for text in TURNS[:n + 1])


def test_keep_alive_comments_while_a_long_prompt_is_prefilled(tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text('{"sse_keepalive": 0.1}')
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", "--config", str(config)], tmp_path,
                      env={"RKLLM_SIM_PREFILL_US": "40000"}) as srv:  # ~1 s of prefill
        lines = []
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=60, json={
                "model": "demo", "stream": True, "max_tokens": 2,
                "messages": [{"role": "user", "content": "Tell me about the river"}]}) as r:
            lines = [line for line in r.iter_lines() if line]
        first_content = next(i for i, line in enumerate(lines) if '"content":"' in line
                             and '"content":""' not in line)
        assert ": keep-alive" in lines[:first_content]
        assert lines[-1] == "data: [DONE]"
