"""The shapes of OpenAI-style results, as typed dicts (what llama-cpp-python returns, and what
the ``openai`` package's own types validate)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypedDict

if TYPE_CHECKING:  # typing.NotRequired is 3.11+; annotations are not evaluated at run time
    from typing_extensions import NotRequired

__all__ = [
    "ChatCompletion", "ChatCompletionChoice", "ChatCompletionChunk", "ChatCompletionChunkChoice",
    "ChatCompletionChunkDelta", "ChatCompletionChunkToolCall", "ChatCompletionMessage",
    "ChatCompletionMessageToolCall", "Completion", "CompletionChoice", "CompletionChunk",
    "CompletionChunkChoice", "CompletionUsage", "FinishReason", "ToolCallFunction",
]

#: Why an answer ended: the model's own end or a stop string ("stop"), the token limit
#: ("length"), or a function call ("tool_calls", chat only).
FinishReason = Literal["stop", "length", "tool_calls"]


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallFunction(TypedDict):
    name: str
    arguments: str  # JSON


class ChatCompletionMessageToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatCompletionMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    tool_calls: NotRequired[list[ChatCompletionMessageToolCall]]


class ChatCompletionChoice(TypedDict):
    index: int
    message: ChatCompletionMessage
    logprobs: None
    finish_reason: FinishReason


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None  # None where the runtime does not count prompt tokens


class ChatCompletionChunkToolCall(TypedDict):
    index: int
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatCompletionChunkDelta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str
    tool_calls: list[ChatCompletionChunkToolCall]


class ChatCompletionChunkChoice(TypedDict):
    index: int
    delta: ChatCompletionChunkDelta
    logprobs: None
    finish_reason: FinishReason | None


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]  # [] in the final usage chunk
    usage: NotRequired[CompletionUsage | None]  # with stream_options={"include_usage": True}


class CompletionChoice(TypedDict):
    text: str
    index: int
    logprobs: None
    finish_reason: Literal["stop", "length"]


class Completion(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None


class CompletionChunkChoice(TypedDict):
    text: str
    index: int
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class CompletionChunk(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: NotRequired[CompletionUsage | None]
