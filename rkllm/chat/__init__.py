"""Chat: conversations with memory, and OpenAI-shaped completions at this edge only.

    import rkllm
    from rkllm.chat import ChatSession, create_chat_completion

    with rkllm.LLM("model.rkllm") as llm:
        chat = ChatSession(llm, system="You answer in one sentence.")
        for piece in chat.send("Name a river."):
            print(piece, end="", flush=True)
        print(chat.send("How long is it?", stream=False).text)
        chat.history      # [{"role": "system", ...}, {"role": "user", ...}, ...]
        chat.reset()      # forget the conversation (and the kv cache)

        create_chat_completion(llm, [{"role": "user", "content": "Hi"}], max_tokens=64)

The package: templates.py (chat templates), messages.py (OpenAI messages, tools, tool calls),
session.py (ChatSession, Reply), options.py (request fields, stop strings), completions.py
(OpenAI-shaped results). It builds on rkllm.core.CoreLLM only (rkllm.LLM builds on it).
"""

from rkllm.chat.completions import (
    AsyncChunkIterator,
    ChunkIterator,
    acreate_chat_completion,
    create_chat_completion,
    create_completion,
)
from rkllm.chat.messages import ROLES, check_messages, parse_tool_calls
from rkllm.chat.session import ChatSession, Reply, settle_model
from rkllm.chat.templates import TEMPLATES, ChatTemplate, detect_template

# names the single-module rkllm.chat also had (importable, not part of __all__)
from rkllm.core import CoreLLM as LLM  # noqa: F401
from rkllm.errors import ParamError, RKLLMError  # noqa: F401
from rkllm.stream import Perf, Stream  # noqa: F401

__all__ = [
    "ROLES",
    "TEMPLATES",
    "AsyncChunkIterator",
    "ChatSession",
    "ChatTemplate",
    "ChunkIterator",
    "Reply",
    "acreate_chat_completion",
    "check_messages",
    "create_chat_completion",
    "create_completion",
    "detect_template",
    "parse_tool_calls",
    "settle_model",
]
