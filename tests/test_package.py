"""The package surface: lazy top-level names and LLM's convenience methods over chat/aio."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import rkllm
from rkllm.chat import ChatSession


def test_import_stays_light() -> None:
    code = ("import sys, rkllm; heavy = [m for m in ('asyncio', 'huggingface_hub', 'numpy', "
            "'rkllm.cli', 'rkllm.chat', 'rkllm.models') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_names_resolve() -> None:
    assert rkllm.ChatSession is ChatSession
    assert callable(rkllm.inspect_model) and callable(rkllm.create_chat_completion)
    assert rkllm.sim.demo_model_path().endswith("demo.rkllm")
    try:
        rkllm.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_agenerate_matches_generate(llm: rkllm.LLM) -> None:
    expected = list(llm.generate("Tell me about rivers", max_new_tokens=20))

    async def collect() -> list[str]:
        return [p async for p in llm.agenerate("Tell me about rivers", max_new_tokens=20)]

    assert asyncio.run(collect()) == expected
    result = asyncio.run(llm.acomplete("Tell me about rivers", max_new_tokens=20))
    assert result.text == "".join(expected)


def test_chat_and_completion_methods(llm: rkllm.LLM) -> None:
    session = llm.chat()
    assert isinstance(session, ChatSession)
    answer = session.send("Hello there", stream=False, max_new_tokens=8)
    assert session.history[-1] == {"role": "assistant", "content": answer.text}
    session.close()
    out = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=6)
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["choices"][0]["message"]["content"]
