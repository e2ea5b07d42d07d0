"""`rkllm serve` through the real `openai` client (sync and async), on the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")
sys.path.insert(0, os.path.dirname(__file__))
from serve_support import ServeProcess  # noqa: E402

QUESTION = [{"role": "user", "content": "Tell me about the river"}]
WEATHER_TOOL = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(["demo", "--runtime", "sim:1.3.0"], tmp_path_factory.mktemp("srv")) as srv:
        yield srv


@pytest.fixture
def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "demo" in ids
    assert client.models.retrieve("demo").id == "demo"


def test_chat_completion_matches_the_in_process_answer(client: openai.OpenAI) -> None:
    import rkllm

    got = client.chat.completions.create(model="demo", messages=QUESTION, max_tokens=24)
    with rkllm.LLM(rkllm.sim.demo_model_path(), runtime="sim:1.3.0", max_context_len=4096,
                   skip_special_token=True) as llm:
        want = llm.create_chat_completion(QUESTION, max_tokens=24)
    assert got.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert got.choices[0].finish_reason == "length"
    assert got.usage is not None and got.usage.completion_tokens == 24
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"] > 0
    assert got.model == "demo" and got.object == "chat.completion"


def test_stream_pieces_join_to_the_whole_answer_with_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="demo", messages=QUESTION)
    chunks = list(client.chat.completions.create(
        model="demo", messages=QUESTION, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert "<|im_end|>" not in text and "<|" not in text


def test_stream_events_in_order_role_first(server: ServeProcess) -> None:
    """The role chunk leaves with the first piece; the events keep OpenAI's order."""
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60, json={
            "model": "demo", "messages": QUESTION, "stream": True, "max_tokens": 3}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all(set(d) == {"content"} and d["content"] for d in deltas[1:-1])
    assert len(deltas) > 2 and deltas[-1] == {}
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert len({(e["id"], e["created"], e["model"], e["object"]) for e in events}) == 1


def test_answering_routes_other_methods_and_cors(tmp_path: Path) -> None:
    origin = "http://ui.example"
    with ServeProcess(["demo", "--runtime", "sim:1.3.0", "--cors", origin], tmp_path) as srv:
        got = httpx.get(srv.url + "/v1/chat/completions")
        assert got.status_code == 405 and "GET" in got.json()["error"]["message"]
        assert httpx.get(srv.url + "/api/chat").json() == {
            "error": "method GET is not allowed on /api/chat"}
        answer = httpx.post(srv.url + "/v1/chat/completions", headers={"Origin": origin},
                            json={"model": "demo", "messages": QUESTION, "max_tokens": 2})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        assert answer.headers["access-control-allow-origin"] == origin
        bad = httpx.post(srv.url + "/api/chat", headers={"Origin": origin}, content=b"{")
        assert bad.status_code == 400 and list(bad.json()) == ["error"]
        assert bad.headers["access-control-allow-origin"] == origin


def test_tools_give_tool_calls(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "What does get_weather say for Paris?"}]
    got = client.chat.completions.create(model="demo", messages=msgs, tools=WEATHER_TOOL)
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.type == "function"
    chunks = list(client.chat.completions.create(model="demo", messages=msgs,
                                                 tools=WEATHER_TOOL, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]  # type: ignore[union-attr]
    assert not any("<tool_call>" in (c.choices[0].delta.content or "") for c in chunks
                   if c.choices)
    # the tool's answer goes back with role "tool"
    back = client.chat.completions.create(model="demo", messages=[
        *msgs, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}])
    assert back.choices[0].message.content
    none = client.chat.completions.create(model="demo", messages=msgs, tools=WEATHER_TOOL,
                                          tool_choice="none", max_tokens=8)
    assert not none.choices[0].message.tool_calls


def test_stop_sequence_cuts_the_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="demo", messages=QUESTION)
    text = whole.choices[0].message.content or ""
    stop = text.split()[3]
    cut = client.chat.completions.create(model="demo", messages=QUESTION, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="demo", messages=QUESTION, stop=stop, stream=True) if c.choices)
    assert streamed == text[:text.index(stop)]


def test_sampling_fields_are_accepted_and_greedy_is_reproducible(client: openai.OpenAI) -> None:
    kw = dict(model="demo", messages=QUESTION, max_completion_tokens=12, temperature=0,
              top_p=0.9, seed=7, presence_penalty=0.1, frequency_penalty=0.1, user="someone")
    a = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    b = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == 12  # type: ignore[union-attr]


def test_errors_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert "nope" in nf.value.message and nf.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="demo", messages=QUESTION,
                                       extra_body={"mirostat": 2})
    assert "mirostat" in br.value.message and br.value.body["param"] == "mirostat"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as fmt:
        client.chat.completions.create(model="demo", messages=QUESTION,
                                       response_format={"type": "json_object"})
    assert "response_format" in fmt.value.message
    with pytest.raises(openai.BadRequestError, match="seed"):
        client.chat.completions.create(model="demo", messages=QUESTION, seed=3)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="demo", messages=QUESTION, temperature="hot")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="user"):
        client.chat.completions.create(model="demo", messages=[{"role": "assistant",
                                                                 "content": "hi"}])
    # what the package refuses names the request's field (OpenAI's param)
    with pytest.raises(openai.BadRequestError) as zero:
        client.chat.completions.create(model="demo", messages=QUESTION, top_p=0)
    assert zero.value.body["param"] == "top_p"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as part:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert part.value.body["param"] == "messages"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="at least 1, got 0") as none:
        client.chat.completions.create(model="demo", messages=QUESTION, max_tokens=0)
    assert none.value.body["param"] == "max_tokens"  # type: ignore[index]


def test_prompt_longer_than_the_context_is_an_error_and_the_server_goes_on(
        client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="demo", messages=[
            {"role": "user", "content": "word " * 6000}])
    assert err.value.status_code in (400, 500) and "context" in err.value.message
    assert client.chat.completions.create(model="demo", messages=QUESTION,
                                          max_tokens=3).choices[0].message.content


def test_completions_and_embeddings(client: openai.OpenAI) -> None:
    done = client.completions.create(model="demo", prompt="Tell me about the river",
                                     max_tokens=10)
    assert done.choices[0].text and done.usage.completion_tokens == 10  # type: ignore[union-attr]
    pieces = [c.choices[0].text for c in client.completions.create(
        model="demo", prompt="Tell me about the river", max_tokens=10, stream=True)]
    assert "".join(pieces) == done.choices[0].text
    emb = client.embeddings.create(model="demo", input=["the river", "the sea"])
    a, b = (d.embedding for d in emb.data)
    assert len(a) == len(b) == 128 and a != b
    assert abs(sum(x * x for x in a) - 1) < 1e-4  # unit length (mean of the last layer)
    same = client.embeddings.create(model="demo", input="the river", encoding_format="float")
    assert same.data[0].embedding == pytest.approx(a, abs=1e-6)


def test_async_client_stream_and_not(server: ServeProcess) -> None:
    async def main() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        whole = await client.chat.completions.create(model="demo", messages=QUESTION)
        parts = []
        async for chunk in await client.chat.completions.create(
                model="demo", messages=QUESTION, stream=True):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        await client.close()
        return whole.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(main())
    assert whole == streamed and whole


def test_special_tokens_never_leak_even_when_the_runtime_spells_them(tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"models": {"raw": {
        "model": "demo", "params": {"skip_special_token": False}}}}))
    with ServeProcess(["--runtime", "sim:1.3.0", "--config", str(config)], tmp_path) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        whole = client.chat.completions.create(model="raw", messages=QUESTION)
        text = whole.choices[0].message.content or ""
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="raw", messages=QUESTION, stream=True) if c.choices)
        assert text and streamed == text and "<|" not in text
        params = [e["args"]["param"] for e in srv.trace("rkllm_init")]
        assert params[-1]["skip_special_token"] == 0  # the runtime did spell them out
