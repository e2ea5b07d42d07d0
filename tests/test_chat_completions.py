"""The request fields of llama-cpp-python / OpenAI completions: honoured (stop, seed,
max_tokens / max_completion_tokens, stream_options, n=1), or refused with one clear error
naming the field; text completions; asyncio chat completions; typed messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import rkllm
from rkllm.chat import acreate_chat_completion, create_chat_completion, create_completion
from rkllm.errors import ParamError
from rkllm.params import family_key

Q = "Tell me about the river."
MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": Q}]
N = 24


def _text(out: Any) -> str:
    return str(out["choices"][0]["message"]["content"])


def _streamed(chunks: Any) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def _pieces(llm: rkllm.LLM) -> list[str]:
    """The answer to MSGS, one piece per token."""
    return [d for c in create_chat_completion(llm, MSGS, max_tokens=N, stream=True)
            if (d := c["choices"][0]["delta"].get("content"))]


def test_stop_cuts_the_answer_also_across_pieces(llm: rkllm.LLM) -> None:
    pieces = _pieces(llm)
    whole = "".join(pieces)
    at = len(pieces[0]) + len(pieces[1])  # where the third piece starts
    for stop in (pieces[2], pieces[1][-2:] + pieces[2][:2], [" zz", whole[at - 1:at + 3]]):
        first = min(whole.find(s) for s in ([stop] if isinstance(stop, str) else stop)
                    if s in whole)
        out = create_chat_completion(llm, MSGS, max_tokens=N, stop=stop)
        assert _text(out) == whole[:first]
        assert out["choices"][0]["finish_reason"] == "stop"
        chunks = list(create_chat_completion(llm, MSGS, max_tokens=N, stop=stop, stream=True))
        assert _streamed(chunks) == whole[:first]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # a stop string that never comes changes nothing
    assert _text(create_chat_completion(llm, MSGS, max_tokens=N, stop=["\x07"])) == whole


@pytest.mark.parametrize("family", ["1.3.0"])
def test_stop_aborts_the_run(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    word = _pieces(llm)[1]
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "2000")  # a run of 500 tokens takes a second
    out = create_chat_completion(llm, MSGS, max_tokens=500, stop=word)
    assert out["usage"] is not None and out["usage"]["completion_tokens"] < 500
    assert not llm.is_running


def test_bad_stop(llm: rkllm.LLM) -> None:
    with pytest.raises(ParamError, match="must not be empty"):
        create_chat_completion(llm, MSGS, stop=["a", ""])
    with pytest.raises(TypeError, match="stop must be a str or a list of str"):
        create_chat_completion(llm, MSGS, stop=3)


@pytest.mark.parametrize(("content", "error"), [
    ("a\x00b", r"messages\[1\]\.content contains a NUL character at index 1"),
    ("\udc80", r"messages\[1\]\.content contains a lone surrogate U\+DC80"),
    ([{"type": "text", "text": "x"}, {"type": "text", "text": "\x00"}],
     r"messages\[1\]\.content contains a NUL character at index 1"),
])
def test_nul_or_surrogate_in_a_message_is_refused(llm: rkllm.LLM, content: Any,
                                                  error: str) -> None:
    # C would cut the prompt at the NUL (finding 6); checked before anything is rendered
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    for stream in (False, True):
        with pytest.raises(ParamError, match=error):
            create_chat_completion(llm, messages, stream=stream)
    assert not llm.is_running


def test_seed_max_tokens_and_n(llm: rkllm.LLM) -> None:
    same = [_text(create_chat_completion(llm, MSGS, max_tokens=N, seed=7)) for _ in range(2)]
    assert same[0] == same[1] and same[0]
    with pytest.raises(TypeError, match="seed must be an int"):
        create_chat_completion(llm, MSGS, seed="7")
    short = create_chat_completion(llm, MSGS, max_completion_tokens=5)
    assert short["choices"][0]["finish_reason"] == "length"
    assert _text(short) == _text(create_chat_completion(llm, MSGS, max_tokens=5))
    assert _text(create_chat_completion(llm, MSGS, max_tokens=5, max_completion_tokens=5)) == \
        _text(short)
    with pytest.raises(ParamError, match="disagree"):
        create_chat_completion(llm, MSGS, max_tokens=5, max_completion_tokens=6)
    assert _text(create_chat_completion(llm, MSGS, max_tokens=5, n=1, user="me",
                                        logprobs=False, response_format={"type": "text"},
                                        min_p=0.0, logit_bias={})) == _text(short)


@pytest.mark.parametrize(("field", "value"), [
    ("response_format", {"type": "json_object"}), ("logprobs", True), ("top_logprobs", 2),
    ("n", 2), ("n", True), ("min_p", 0.05), ("logit_bias", {"15": 3}), ("typical_p", 0.9),
    ("functions", [{"name": "f"}]), ("grammar", "root ::= x"), ("parallel_tool_calls", False),
])
def test_fields_the_runtime_cannot_honour(llm: rkllm.LLM, field: str, value: Any) -> None:
    with pytest.raises(ParamError, match=f"not supported by the RKLLM runtime: {field}=") as e:
        create_chat_completion(llm, MSGS, **{field: value})
    assert "did you mean" not in str(e.value)
    assert not llm.is_running


def test_several_unsupported_fields_make_one_error(llm: rkllm.LLM) -> None:
    with pytest.raises(ParamError) as e:
        create_chat_completion(llm, MSGS, logprobs=True, n=3, stream=True)
    assert "logprobs=True" in str(e.value) and "n=3" in str(e.value)


def test_stream_options_include_usage(llm: rkllm.LLM, family: str) -> None:
    chunks = list(create_chat_completion(llm, MSGS, max_tokens=N, stream=True,
                                         stream_options={"include_usage": True}))
    *body, last = chunks
    assert last["choices"] == [] and all(c["usage"] is None for c in body)
    if family_key(family) >= (1, 2, 1):
        assert last["usage"] == create_chat_completion(llm, MSGS, max_tokens=N)["usage"]
        assert last["usage"]["completion_tokens"] == N
    else:
        assert last["usage"] is None
    assert "usage" not in create_chat_completion(llm, MSGS, max_tokens=2, stream=True).__next__()
    with pytest.raises(ParamError, match="only allowed with stream=True"):
        create_chat_completion(llm, MSGS, stream_options={"include_usage": True})
    with pytest.raises(ParamError, match="unknown field"):
        create_chat_completion(llm, MSGS, stream=True, stream_options={"usage": True})


def test_text_completion(llm: rkllm.LLM) -> None:
    expected = llm.complete(Q, max_new_tokens=16).text
    out = create_completion(llm, Q)  # 16 tokens by default, as in llama-cpp-python
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    (choice,) = out["choices"]
    assert choice["text"] == expected and choice["finish_reason"] == "length"
    assert llm(Q)["choices"][0]["text"] == expected  # __call__
    chunks = list(llm(Q, stream=True, stream_options={"include_usage": True}))
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == expected
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-1]["choices"] == []
    echoed = llm(Q, echo=True, stop=expected[10:14])["choices"][0]
    assert echoed["text"] == Q + expected[:10] and echoed["finish_reason"] == "stop"
    tokens = llm.complete(Q, max_new_tokens=4).token_ids
    assert llm(tokens, max_tokens=4)["choices"][0]["text"] == \
        llm.complete(tokens=tokens, max_new_tokens=4).text
    with pytest.raises(ParamError, match="echo=True needs a text prompt"):
        llm(tokens, echo=True)
    with pytest.raises(ParamError, match="not supported by the RKLLM runtime: suffix="):
        llm(Q, suffix="end")
    with pytest.raises(ParamError, match="text completions take max_tokens"):
        llm(Q, max_completion_tokens=4)


def test_asyncio_chat_completion(llm: rkllm.LLM) -> None:
    whole = create_chat_completion(llm, MSGS, max_tokens=N, stop="zz")

    async def main() -> None:
        out = await llm.acreate_chat_completion(MSGS, max_tokens=N, stop="zz")
        assert out["choices"] == whole["choices"] and out["usage"] == whole["usage"]
        chunks = [c async for c in await acreate_chat_completion(llm, MSGS, max_tokens=N,
                                                                  stream=True)]
        assert _streamed(chunks) == _text(whole)
        async for _ in await llm.acreate_chat_completion(MSGS, max_tokens=N, stream=True):
            break  # ends the run
        gen = await llm.acreate_chat_completion(MSGS, max_tokens=N, stream=True)
        await gen.__anext__()
        await gen.aclose()
        again = await llm.acreate_chat_completion(MSGS, max_tokens=N, stop="zz")
        assert again["choices"] == whole["choices"]

    asyncio.run(main())
    assert not llm.is_running


def test_cancelling_an_asyncio_completion_leaves_a_fresh_model(llm: rkllm.LLM) -> None:
    plain = [MSGS[-1]]
    fresh = _text(create_chat_completion(llm, plain, max_tokens=N))

    async def main() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in await llm.acreate_chat_completion(MSGS, max_tokens=2000,
                                                             stream=True):
                started.set()
                await asyncio.sleep(0)

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _text(create_chat_completion(llm, plain, max_tokens=N)) == fresh
    assert llm.complete(Q, max_new_tokens=N).text == \
        create_completion(llm, Q, max_tokens=N)["choices"][0]["text"]


def test_openai_typed_messages(llm: rkllm.LLM) -> None:
    from openai.types.chat import ChatCompletion, ChatCompletionMessage

    first = create_chat_completion(llm, MSGS, max_tokens=N)
    typed = ChatCompletion.model_validate(first).choices[0].message
    assert isinstance(typed, ChatCompletionMessage)
    follow = [*MSGS, typed, {"role": "user", "content": "And the mountain?"}]
    as_dicts = [*MSGS, first["choices"][0]["message"],
                {"role": "user", "content": "And the mountain?"}]
    assert _text(create_chat_completion(llm, follow, max_tokens=N)) == \
        _text(create_chat_completion(llm, as_dicts, max_tokens=N))
