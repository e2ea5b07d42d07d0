"""Every result and chunk validates with the ``openai`` package's own pydantic types, on every
simulated family: chat completions (plain, with a system prompt and history, tools, stop
strings, the usage chunk), text completions, and the asyncio variant."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import rkllm
from rkllm.params import family_key

openai_types = pytest.importorskip("openai.types")
from openai.types import Completion  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
CONVERSATIONS: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
    ([{"role": "user", "content": "Tell me about the river."}], {}),
    ([{"role": "developer", "content": "Be brief."},
      {"role": "user", "content": "Tell me about the river."},
      {"role": "assistant", "content": "It is long."},
      {"role": "user", "content": [{"type": "text", "text": "And the mountain?"}]}],
     {"stop": [".", "\n"]}),
    ([{"role": "user", "content": "Tell me about the river."}],
     {"seed": 1, "n": 1, "user": "me"}),
]


def _requests(family: str) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    out = list(CONVERSATIONS)
    if family_key(family) >= (1, 2, 1):
        out.append(([{"role": "user", "content": "Please call get_weather for Paris."}],
                    {"tools": TOOLS}))
    return out


def _check_chunks(chunks: list[Any]) -> None:
    assert chunks
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert len({c["id"] for c in chunks}) == 1


def test_chat_completions_validate(llm: rkllm.LLM, family: str) -> None:
    for messages, kw in _requests(family):
        whole = llm.create_chat_completion(messages, max_tokens=16, **kw)
        typed = ChatCompletion.model_validate(whole)
        assert typed.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert (typed.usage is None) == (family_key(family) < (1, 2, 1))
        for options in ({}, {"stream_options": {"include_usage": True}}):
            chunks = list(llm.create_chat_completion(messages, max_tokens=16, stream=True,
                                                     **kw, **options))
            _check_chunks(chunks)
            if options:
                assert ChatCompletionChunk.model_validate(chunks[-1]).choices == []


def test_asyncio_chat_completions_validate(llm: rkllm.LLM, family: str) -> None:
    async def main() -> None:
        for messages, kw in _requests(family):
            ChatCompletion.model_validate(
                await llm.acreate_chat_completion(messages, max_tokens=8, **kw))
            stream = await llm.acreate_chat_completion(messages, max_tokens=8, stream=True,
                                                       stream_options={"include_usage": True},
                                                       **kw)
            _check_chunks([c async for c in stream])

    asyncio.run(main())


def test_text_completions_validate(llm: rkllm.LLM) -> None:
    for kw in ({}, {"stop": ". "}, {"echo": True, "max_tokens": 4}, {"max_tokens": None}):
        Completion.model_validate(llm("Tell me about the river.", **kw))
        chunks = list(llm("Tell me about the river.", stream=True,
                          stream_options={"include_usage": True}, **kw))
        *body, usage = chunks
        assert Completion.model_validate(usage).choices == []
        for chunk in body[:-1]:
            # OpenAI streams send finish_reason null until the last chunk, while the openai
            # package's Completion type (which its client also parses chunks into) declares
            # it non-null: checked as null here, everything else validated as it is
            (choice,) = chunk["choices"]
            assert choice["finish_reason"] is None
            Completion.model_validate({**chunk, "choices": [{**choice, "finish_reason": "stop"}]})
        assert Completion.model_validate(body[-1]).choices[0].finish_reason in ("stop", "length")
