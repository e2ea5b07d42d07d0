"""The Pythonic API: load a model on a runtime, stream text from it, close it.

    with rkllm.LLM("model.rkllm", max_context_len=4096, top_k=1) as llm:
        for piece in llm.generate("Why is the sky blue?", max_new_tokens=256):
            print(piece, end="", flush=True)
        result = llm.complete("Hi")

``LLM`` is :class:`rkllm.core.CoreLLM` plus the methods that live in higher-level modules
(chat sessions, OpenAI-shaped completions, asyncio), kept here as methods so that code
written for llama-cpp-python ports unchanged; each delegates down to its module.
Runtime selection: see :mod:`rkllm.runtime_finder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rkllm.core import CoreLLM
from rkllm.stream import Result

if TYPE_CHECKING:
    from rkllm.aio import AsyncStream
    from rkllm.chat import ChatSession


class LLM(CoreLLM):
    """A model loaded on a runtime (see :class:`rkllm.core.CoreLLM` for the parameters)."""

    def agenerate(self, prompt: str | None = None, *, chunked: bool = False,
                  **options: Any) -> AsyncStream:
        """:meth:`generate` for asyncio: ``async for piece in llm.agenerate(...)``
        (see :mod:`rkllm.aio`)."""
        from rkllm.aio import agenerate

        return agenerate(self, prompt, chunked=chunked, **options)

    async def acomplete(self, prompt: str | None = None, **options: Any) -> Result:
        """:meth:`complete` without blocking the event loop."""
        from rkllm.aio import acomplete

        return await acomplete(self, prompt, **options)

    def chat(self, system: str | None = None, **options: Any) -> ChatSession:
        """A :class:`rkllm.chat.ChatSession` on this model (history, templates, tools)."""
        from rkllm.chat import ChatSession

        return ChatSession(self, system, **options)

    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]],
                               **options: Any) -> Any:
        """OpenAI-shaped chat completion (a dict, or an iterator of chunk dicts with
        ``stream=True``); see :func:`rkllm.chat.create_chat_completion`."""
        from rkllm.chat import create_chat_completion

        return create_chat_completion(self, messages, **options)

    def __enter__(self) -> LLM:
        return self
