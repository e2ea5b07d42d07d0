"""A system prompt (and tools) seen before is not prefilled again: a new conversation with the
system part the kv cache starts with keeps it (``clear_kv_cache(keep_system_prompt=1)``), and
answers exactly as a full prefill does (the simulator's trace and usage, the real openai
client)."""

from __future__ import annotations

import json
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

SYSTEM = ("You are the house assistant. You know the rooms, the lights and the heating, "
          "and you answer in one or two short sentences.")
OTHER = "You are a pirate."
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
OTHER_TOOLS = [{"type": "function", "function": {
    "name": "set_light", "description": "Turns a light on or off",
    "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}}}}}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(["demo", "--runtime", "sim:1.3.0"], tmp_path_factory.mktemp("pc")) as srv:
        yield srv


@pytest.fixture
def client(server: ServeProcess) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def ask(client: Any, system: str, *turns: str, tools: list[Any] | None = None,
        greedy: bool = True, **extra: Any) -> Any:
    """One request: the system prompt, then user / assistant / user ... turns (greedy:
    temperature 0, which needs 1.3.0's per-request sampling)."""
    messages = [{"role": "system", "content": system}]
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                 for i, text in enumerate(turns)]
    if greedy:
        extra["temperature"] = 0
    return client.chat.completions.create(model="demo", messages=messages,
                                          **({"tools": tools} if tools else {}), **extra)


def calls_of(srv: ServeProcess, start: int) -> list[dict[str, Any]]:
    """The kv-cache and template calls, runs and run ends since trace line ``start``."""
    keep = ("rkllm_run", "rkllm_clear_kv_cache", "rkllm_set_chat_template",
            "rkllm_set_function_tools", "run_end")
    return [e for e in srv.trace()[start:] if e["call"] in keep]


def one_request(srv: ServeProcess, client: Any, *args: Any, **kwargs: Any
                ) -> tuple[Any, list[dict[str, Any]]]:
    start = len(srv.trace())
    got = ask(client, *args, **kwargs)
    return got, calls_of(srv, start)


def clear_of(calls: list[dict[str, Any]]) -> int:
    """keep_system_prompt of the request's clear_kv_cache."""
    (clear,) = [c for c in calls if c["call"] == "rkllm_clear_kv_cache"]
    return int(clear["args"]["keep_system_prompt"])


def prefilled(calls: list[dict[str, Any]]) -> int:
    (end,) = [c for c in calls if c["call"] == "run_end"]
    return int(end["args"]["prefill_tokens"])


def saved(srv: ServeProcess) -> float:
    for line in httpx.get(srv.url + "/metrics").text.splitlines():
        if line.startswith("rkllm_prefill_tokens_saved_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_new_conversation_keeps_the_system_prompt_and_answers_the_same(
        server: ServeProcess, client: Any) -> None:
    ask(client, SYSTEM, "Which lights are on?")                   # the system part is prefilled
    before = saved(server)
    kept, kept_calls = one_request(server, client, SYSTEM, "Is the heating on?")
    assert clear_of(kept_calls) == 1
    assert not any(c["call"] == "rkllm_set_chat_template" for c in kept_calls)
    (run,) = [c for c in kept_calls if c["call"] == "rkllm_run"]
    assert run["args"]["rkllm_input"]["prompt_input"] == "Is the heating on?"
    # the same request after another system prompt took the kv cache: a full prefill
    ask(client, OTHER, "Ahoy?")
    full, full_calls = one_request(server, client, SYSTEM, "Is the heating on?")
    assert clear_of(full_calls) == 0
    assert any(c["call"] == "rkllm_set_chat_template" for c in full_calls)
    system_tokens = prefilled(full_calls) - prefilled(kept_calls)
    assert system_tokens >= len(SYSTEM.split())                   # the system prompt's tokens
    cached = kept.usage.prompt_tokens_details.cached_tokens
    assert kept.usage.prompt_tokens - cached == prefilled(kept_calls)  # the runtime's count
    assert cached == system_tokens and full.usage.prompt_tokens_details.cached_tokens == 0
    assert kept.usage.prompt_tokens == full.usage.prompt_tokens   # the whole prompt either way
    assert saved(server) - before == system_tokens                # counted once, by /metrics
    assert kept.choices[0].message.content == full.choices[0].message.content


def test_tools_are_part_of_the_system_prompt_kept(server: ServeProcess, client: Any) -> None:
    ask(client, SYSTEM, "Anything?", tools=TOOLS)
    kept, kept_calls = one_request(server, client, SYSTEM, "Weather in Oslo?", tools=TOOLS)
    assert clear_of(kept_calls) == 1
    assert not any(c["call"] == "rkllm_set_function_tools" for c in kept_calls)
    # other tools (same system prompt): declared again, and prefilled in full
    _, other_calls = one_request(server, client, SYSTEM, "Weather in Oslo?", tools=OTHER_TOOLS)
    assert clear_of(other_calls) == 0
    (declared,) = [c for c in other_calls if c["call"] == "rkllm_set_function_tools"]
    assert "set_light" in json.dumps(declared["args"])
    full, full_calls = one_request(server, client, SYSTEM, "Weather in Oslo?", tools=TOOLS)
    assert clear_of(full_calls) == 0
    assert prefilled(full_calls) > prefilled(kept_calls)
    assert kept.choices[0].message == full.choices[0].message
    # the same tools under another system prompt are another system part
    _, calls = one_request(server, client, OTHER, "Weather in Oslo?", tools=TOOLS)
    assert clear_of(calls) == 0


def test_after_an_answer_cut_by_max_tokens_the_system_prompt_stays(
        server: ServeProcess, client: Any) -> None:
    """What the kv cache holds after a cut answer is not what the client saw: the
    conversation is prefilled again, but not the system prompt."""
    cut = ask(client, SYSTEM, "Tell me about the kitchen lights", max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    answer = cut.choices[0].message.content or ""
    turns = ("Tell me about the kitchen lights", answer, "And the hall?")
    kept, kept_calls = one_request(server, client, SYSTEM, *turns)
    assert clear_of(kept_calls) == 1
    (run,) = [c for c in kept_calls if c["call"] == "rkllm_run"]
    text = run["args"]["rkllm_input"]["prompt_input"]
    assert text.startswith(turns[0]) and answer in text and text.endswith(turns[2])
    ask(client, OTHER, "Ahoy?")
    full, full_calls = one_request(server, client, SYSTEM, *turns)
    assert clear_of(full_calls) == 0
    assert prefilled(full_calls) > prefilled(kept_calls)
    assert kept.choices[0].message.content == full.choices[0].message.content


@pytest.mark.parametrize("saving", [False, True], ids=["kept", "saving-its-cache"])
def test_a_run_stopped_before_its_first_token_is_not_trusted(tmp_path: Path,
                                                             saving: bool) -> None:
    """A client that leaves before the first token (of the answer, or of the short run that
    saves the system part's prompt cache): what the kv cache starts with is not known, so the
    next conversation is prefilled in full, and no cache file is left."""
    cache = tmp_path / "prompt-cache"
    extra = ["--prompt-cache", str(cache)] if saving else []
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", *extra], tmp_path,
                      env={"RKLLM_SIM_STALL_MS": "60000"}) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0,
                               timeout=1.0)
        with pytest.raises(openai.APITimeoutError):
            ask(client, SYSTEM, "Which lights are on?")
        for _ in range(200):  # the server noticed the disconnect and aborted
            if srv.trace("rkllm_abort"):
                break
            httpx.get(srv.url + "/health")
        assert srv.trace("rkllm_abort")
        # what follows would wait for the stall again: the kv cache call is enough
        start = len(srv.trace())
        slow = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            ask(slow, SYSTEM, "Is the heating on?")
        for _ in range(200):
            calls = calls_of(srv, start)
            if any(c["call"] == "rkllm_clear_kv_cache" for c in calls):
                break
            httpx.get(srv.url + "/health")
        assert clear_of(calls) == 0
        for _ in range(200):  # that client left too: the server is idle again
            if httpx.get(srv.url + "/health").json()["status"] == "ready":
                break
        assert httpx.get(srv.url + "/health").json()["status"] == "ready"
        assert not list(cache.glob("*/*")) if saving else not cache.exists()


# ---- saved prompt caches (--prompt-cache DIR) -------------------------------------------------

def test_a_system_prompt_seen_before_starts_from_its_saved_prompt_cache(tmp_path: Path) -> None:
    cache = tmp_path / "prompt-cache"
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", "--prompt-cache", str(cache)],
                      tmp_path) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        # first sight: a short run saves the system part's cache, the answer keeps it
        first, first_calls = one_request(srv, client, SYSTEM, "Which lights are on?")
        runs = [c for c in first_calls if c["call"] == "rkllm_run"]
        assert len(runs) == 2
        saving = runs[0]["args"]["rkllm_infer_params"]
        assert saving["prompt_cache_params"]["save_prompt_cache"] == 1
        assert saving["max_new_tokens"] == 1
        (saved_file,) = cache.glob("*/*.rkpc")
        # another system prompt takes the kv cache; then the first one comes back
        ask(client, OTHER, "Ahoy?")
        before = saved(srv)
        again, calls = one_request(srv, client, SYSTEM, "Is the heating on?")
        loads = [c for c in srv.trace("rkllm_load_prompt_cache")
                 if c["time"] >= calls[0]["time"]]
        assert [c["args"]["prompt_cache_path"] for c in loads] == [str(saved_file)]
        assert clear_of(calls) == 0
        (end,) = [c for c in calls if c["call"] == "run_end"]
        system_tokens = int(saved_file.name.rsplit("-", 1)[1].split(".")[0])
        assert end["args"]["cached_tokens"] >= system_tokens > len(SYSTEM.split())
        assert saved(srv) - before == system_tokens
        # the first sight's answer and this one are the answers of a server without caches
    (tmp_path / "plain").mkdir()
    with ServeProcess(["demo", "--runtime", "sim:1.3.0"], tmp_path / "plain") as plain:
        client = openai.OpenAI(base_url=plain.url + "/v1", api_key="x", max_retries=0)
        plain_first = ask(client, SYSTEM, "Which lights are on?")
        assert first.choices[0].message.content == plain_first.choices[0].message.content
        assert first.usage.prompt_tokens == plain_first.usage.prompt_tokens  # the whole prompt
        assert again.choices[0].message.content == \
            ask(client, SYSTEM, "Is the heating on?").choices[0].message.content


def test_a_saved_prompt_cache_survives_a_restart_and_a_bad_one_is_dropped(
        tmp_path: Path) -> None:
    cache = tmp_path / "prompt-cache"
    args = ["demo", "--runtime", "sim:1.3.0", "--prompt-cache", str(cache)]
    runs = iter(range(3))

    def server() -> ServeProcess:  # each with a trace of its own
        run = tmp_path / f"run{next(runs)}"
        run.mkdir()
        return ServeProcess(args, run)

    with server() as srv:
        ask(openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0),
            SYSTEM, "Which lights are on?")
    (saved_file,) = cache.glob("*/*.rkpc")
    with server() as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        ask(client, SYSTEM, "Is the heating on?")
        (end,) = srv.trace("run_end")
        assert end["args"]["cached_tokens"] > len(SYSTEM.split())
    saved_file.write_bytes(saved_file.read_bytes()[:-7])  # truncated
    with server() as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        got = ask(client, SYSTEM, "Is the heating on?")  # answered all the same
        assert got.choices[0].finish_reason == "stop"
        assert [c["rc"] for c in srv.trace("rkllm_load_prompt_cache")] == [-1]
        assert not saved_file.exists()


@pytest.mark.parametrize("family", ["1.2.0", "1.2.1"])
def test_older_runtimes_keep_the_system_prompt_and_save_its_cache_from_1_2_1(
        tmp_path: Path, family: str) -> None:
    cache = tmp_path / "prompt-cache"
    with ServeProcess(["demo", "--runtime", f"sim:{family}", "--prompt-cache", str(cache)],
                      tmp_path) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        first, _ = one_request(srv, client, SYSTEM, "Which lights are on?", greedy=False)
        kept, kept_calls = one_request(srv, client, SYSTEM, "Is the heating on?", greedy=False)
        assert clear_of(kept_calls) == 1
        ask(client, OTHER, "Ahoy?", greedy=False)
        full, full_calls = one_request(srv, client, SYSTEM, "Is the heating on?",
                                       greedy=False)
        assert kept.choices[0].message.content == full.choices[0].message.content
        if family == "1.2.0":  # no kv_cache_size: no saved caches (their size is unknown)
            assert not cache.exists()
            assert clear_of(full_calls) == 0
        else:
            (end,) = [c for c in full_calls if c["call"] == "run_end"]
            assert end["args"]["cached_tokens"] > len(SYSTEM.split())


def test_a_tool_round_trip_answers_the_same_kept_or_prefilled_in_full(
        server: ServeProcess, client: Any) -> None:
    """The tool's result is the last turn either way: the model answers it (it does not call
    the tool again because the earlier call is in the same run's text)."""
    messages: list[Any] = [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": "Use get_weather for Oslo"}]
    call = client.chat.completions.create(model="demo", messages=messages, tools=TOOLS,
                                          temperature=0).choices[0].message
    assert call.tool_calls and call.tool_calls[0].function.name == "get_weather"
    messages += [call.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.tool_calls[0].id,
                  "content": '{"temperature": 5}'}]
    start = len(server.trace())
    kept = client.chat.completions.create(model="demo", messages=messages, tools=TOOLS,
                                          temperature=0).choices[0]
    (run,) = [c for c in calls_of(server, start) if c["call"] == "rkllm_run"]
    assert run["args"]["rkllm_input"]["prompt_input"].startswith("<tool_response>")
    ask(client, OTHER, "Ahoy?")
    start = len(server.trace())
    full = client.chat.completions.create(model="demo", messages=messages, tools=TOOLS,
                                          temperature=0).choices[0]
    assert clear_of(calls_of(server, start)) == 0
    assert kept.finish_reason == full.finish_reason == "stop"
    assert not kept.message.tool_calls and kept.message.content
    assert kept.message == full.message
