"""OpenAI-shaped completions, as llama-cpp-python's ``Llama`` makes them: chat completions
(``create_chat_completion``, and ``acreate_chat_completion`` for asyncio) and text completions
(``create_completion``), whole or as chunks (``stream=True``).

Stateless: whatever a request installs in the model (its system prompt and history in the
chat template, its function tools) is taken back when it ends, however it ends (the last
chunk, ``close()``, an error, Ctrl-C), and the kv cache is empty before and after.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from rkllm.chat.iterators import AsyncChunkIterator, ChunkIterator
from rkllm.chat.messages import check_tool_choice, check_tools, parse_tool_calls, split_messages
from rkllm.chat.options import RequestOptions, StopScanner, request_options
from rkllm.chat.session import ChatSession, EndOfTurn
from rkllm.chat.state import settle_model
from rkllm.chat.templates import ChatTemplate
from rkllm.core import CoreLLM
from rkllm.errors import ParamError
from rkllm.stream import Stream

if TYPE_CHECKING:
    from rkllm.types import (
        ChatCompletion,
        ChatCompletionChunk,
        Completion,
        CompletionChunk,
        CompletionUsage,
    )

__all__ = ["AsyncChunkIterator", "ChunkIterator", "acreate_chat_completion",
           "create_chat_completion", "create_completion"]

_TOOL_START = "<tool_call>"

G = TypeVar("G")


# ---- pieces of text -> what is handed out ----------------------------------------------------

class _Answer:
    """One answer's pieces, filtered: the end-of-turn token dropped, cut at the first stop
    string, and (with tools, when streaming) text that may open a tool call held back."""

    def __init__(self, marker: str, stops: tuple[str, ...], hold_tool_calls: bool) -> None:
        self._turn_end = EndOfTurn(marker)
        self._stop = StopScanner(stops)
        self._holds = hold_tool_calls
        self._held = ""
        self.text: list[str] = []  # everything handed out or held, for the whole answer

    @property
    def stopped(self) -> bool:
        return self._stop.hit

    def feed(self, piece: str) -> list[str]:
        out = []
        for part in self._turn_end.feed(piece):
            safe = self._stop.feed(part)
            if safe:
                out.extend(self._hold(safe))
            if self._stop.hit:
                break
        return out

    def _hold(self, text: str) -> list[str]:
        self.text.append(text)
        if not self._holds:
            return [text]
        self._held += text
        start = self._held.lstrip()
        if start.startswith(_TOOL_START) or _TOOL_START.startswith(start):
            return []
        out, self._held = self._held, ""
        return [out]

    def finish(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The rest of the text and, with tools held back, the tool calls found in it."""
        rest = [] if self._stop.hit else self._hold(self._stop.flush())
        rest = [r for r in rest if r]
        held, self._held = self._held, ""
        calls = parse_tool_calls(held)[1] if held else []
        if held and not calls:
            rest.append(held)
        return rest, calls


def _usage(stream: Stream) -> CompletionUsage | None:
    """None where the runtime does not count prompt tokens (before 1.2.1): no made-up number."""
    perf = stream.perf
    if perf is None or perf.prefill_tokens is None:
        return None
    completion = stream.n_tokens
    return {"prompt_tokens": perf.prefill_tokens, "completion_tokens": completion,
            "total_tokens": perf.prefill_tokens + completion}


def _finish_reason(stream: Stream, answer: _Answer) -> Literal["stop", "length"]:
    # "abort" (llm.abort() from elsewhere) is not an OpenAI reason: the answer stopped
    return "length" if stream.finish_reason == "length" and not answer.stopped else "stop"


def _meta(llm: CoreLLM, model: str | None, prefix: str) -> dict[str, Any]:
    name = model or os.path.basename(llm.model_path).removesuffix(".rkllm")
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}


# ---- chat completions ------------------------------------------------------------------------

class _RequestSession(ChatSession):
    """A request's conversation. It holds the model's state while the request's generator
    (``owner``) runs or waits; once that has finished or was dropped, however far its
    clean-up got (Ctrl-C), the next call on the model undoes what is left (settle_model)."""

    def __init__(self, owner: weakref.ref[Any], llm: CoreLLM, system: str | None, *,
                 messages: list[dict[str, str]], template: ChatTemplate | str | None,
                 tools: list[Any] | None) -> None:
        self._owner = owner
        super().__init__(llm, system, messages=messages, template=template, tools=tools)

    def _holder(self) -> Callable[[], bool]:
        owner = self._owner

        def held() -> bool:  # a finished generator has no frame (an async one: ag_frame)
            gen = owner()
            return getattr(gen, "gi_frame", getattr(gen, "ag_frame", None)) is not None
        return held


class _ChatRequest:
    """A chat request: checked when made (nothing runs yet); its generator (:meth:`bind`)
    then installs its conversation in the model (a ChatSession), starts the run and yields
    the chunks; :meth:`close` takes it all back, however far the start got."""

    def __init__(self, llm: CoreLLM, messages: Any, *, stream: bool, tools: Any,
                 tool_choice: Any, template: ChatTemplate | str | None, model: str | None,
                 options: dict[str, Any]) -> None:
        self.llm = llm
        self.split = split_messages(messages)
        checked = check_tools(tools)
        if tool_choice is not None and checked is None:
            raise ParamError("tool_choice needs tools")
        self.tools = check_tool_choice(tool_choice, checked)
        self.template = template
        self.opts: RequestOptions = request_options(llm, stream=stream, **options)
        self.meta = _meta(llm, model, "chatcmpl")
        self.hold_calls = self.tools is not None and stream  # tool calls come whole
        self.session: ChatSession | None = None
        self.owner: weakref.ref[Any] = weakref.ref(self)  # replaced by bind()

    def bind(self, chunks: G) -> G:
        """``chunks``, the generator that runs this request (only a weak reference is kept:
        dropping the generator ends the request)."""
        self.owner = weakref.ref(chunks)
        return chunks

    def start(self) -> Stream:
        system, history, role, content = self.split
        self.session = _RequestSession(self.owner, self.llm, system, messages=history,
                                       template=self.template, tools=self.tools)
        self.answer = _Answer(self.session.end_marker, self.opts.stops, self.hold_calls)
        self.stream = self.session.start(content, role=role, **self.opts.run)
        return self.stream

    def close(self) -> None:
        """Ends the run and gives the model back its own state; idempotent."""
        if self.session is not None:
            self.session.close()
            self.session = None

    def abandon(self) -> None:
        """:meth:`close` when the request is failing already (Ctrl-C, an error): that is
        what the caller sees, not an error of the clean-up; what close() could not undo
        stays marked and is undone by the next call on the model."""
        with contextlib.suppress(Exception):
            self.close()

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
        out: Any = {**self.meta, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]}
        if self.opts.include_usage:
            out["usage"] = None
        return out  # type: ignore[no-any-return]

    def pieces(self) -> Iterator[ChatCompletionChunk]:
        """The chunks of the whole answer (the run ends before the last ones)."""
        yield self.chunk({"role": "assistant", "content": ""})
        for piece in self.stream:
            for text in self.answer.feed(piece):
                yield self.chunk({"content": text})
            if self.answer.stopped:
                break
        self.stream.close()  # after a stop string: the run is aborted here
        yield from self.last()

    def last(self) -> list[ChatCompletionChunk]:
        """After the run has ended: the held-back text or tool calls, the finish reason,
        and the usage chunk if asked for."""
        rest, calls = self.answer.finish()
        out = [self.chunk({"content": text}) for text in rest]
        if calls:
            out.append(self.chunk({"tool_calls": [{"index": i, **c}
                                                  for i, c in enumerate(calls)]}))
        out.append(self.chunk({}, "tool_calls" if calls else
                              _finish_reason(self.stream, self.answer)))
        if self.opts.include_usage:
            usage: Any = {**self.meta, "object": "chat.completion.chunk", "choices": [],
                          "usage": _usage(self.stream)}
            out.append(usage)
        return out

    def result(self) -> ChatCompletion:
        """After the run has ended: the whole answer."""
        self.answer.finish()
        text = "".join(self.answer.text)
        content, calls = parse_tool_calls(text) if self.tools is not None else (text, [])
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        out: Any = {**self.meta, "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": "tool_calls" if calls else
                                 _finish_reason(self.stream, self.answer)}],
                    "usage": _usage(self.stream)}
        return out  # type: ignore[no-any-return]


# Where a request starts, a placeholder chunk is yielded, so that the caller can return the
# generator itself (its clean-up cannot be skipped by Ctrl-C in a wrapper's frame).
_STARTED = cast("ChatCompletionChunk", None)


def _chunks(req: _ChatRequest) -> Generator[ChatCompletionChunk, None, None]:
    """Runs ``req``: starts it, yields _STARTED, then the chunks. However it ends (read to
    the end, close(), dropped, an error, Ctrl-C at any line), what it installed is taken
    back, here or (a clean-up cut short) by the next call on the model."""
    try:
        req.start()
        yield _STARTED
        yield from req.pieces()
    except BaseException:
        req.abandon()
        raise
    req.close()


@overload
def create_chat_completion(llm: CoreLLM, messages: Sequence[Any], *,
                           stream: Literal[False] = False, tools: Sequence[Any] | None = None,
                           tool_choice: Any = None, template: ChatTemplate | str | None = None,
                           model: str | None = None, **options: Any) -> ChatCompletion: ...


@overload
def create_chat_completion(llm: CoreLLM, messages: Sequence[Any], *, stream: Literal[True],
                           tools: Sequence[Any] | None = None, tool_choice: Any = None,
                           template: ChatTemplate | str | None = None, model: str | None = None,
                           **options: Any) -> Iterator[ChatCompletionChunk]: ...


@overload
def create_chat_completion(llm: CoreLLM, messages: Sequence[Any], *, stream: bool,
                           **options: Any) -> ChatCompletion | Iterator[ChatCompletionChunk]: ...


def create_chat_completion(llm: CoreLLM, messages: Sequence[Any], *, stream: bool = False,
                           tools: Sequence[Any] | None = None, tool_choice: Any = None,
                           template: ChatTemplate | str | None = None, model: str | None = None,
                           **options: Any) -> ChatCompletion | Iterator[ChatCompletionChunk]:
    """Answers an OpenAI-style conversation, like llama-cpp-python's
    ``Llama.create_chat_completion``: a ``chat.completion`` dict, or with ``stream=True`` an
    iterator of ``chat.completion.chunk`` dicts. Messages are dicts or the ``openai``
    package's message objects.

    Honoured: ``max_tokens`` / ``max_completion_tokens``, ``stop`` (a str or a list: the run
    is aborted where one appears, and it is not returned), ``seed`` (see docs/chat.md),
    ``stream_options={"include_usage": True}``, ``tools`` and ``tool_choice`` ("auto",
    "none", or a named function: only that one is declared), ``n=1``, and sampling
    (``temperature``, ``top_p``, ``top_k``, penalties, mirostat; per request on runtime
    1.3.0, before only the values the model was loaded with). Fields the runtime cannot
    honour (``logprobs``, ``n`` > 1, ``response_format``, ``min_p``, ``logit_bias``, ...)
    raise ParamError naming them. Other keyword arguments are run options
    (``enable_thinking``, ...). ``usage`` is None where the runtime does not count prompt
    tokens (before 1.2.1)."""
    req = _ChatRequest(llm, messages, stream=stream, tools=tools, tool_choice=tool_choice,
                       template=template, model=model, options=options)
    if not stream:
        # the generator lives only on this loop (no name holds it): Ctrl-C here drops it,
        # and dropping it ends the request
        for _ in req.bind(_chunks(req)):
            pass
        return req.result()
    chunks = req.bind(_chunks(req))
    try:
        next(chunks)  # starts the run: its errors raise here
        return chunks
    except BaseException:
        chunks.close()
        raise


async def _async_chunks(req: _ChatRequest) -> AsyncIterator[ChatCompletionChunk]:
    """:func:`_chunks` for asyncio."""
    from rkllm.aio import AsyncStream

    try:
        req.start()
        yield _STARTED
        yield req.chunk({"role": "assistant", "content": ""})
        pieces = AsyncStream(req.stream)
        async for piece in pieces:
            for text in req.answer.feed(piece):
                yield req.chunk({"content": text})
            if req.answer.stopped:
                break
        await pieces.aclose()  # after a stop string: the run is aborted here
        for chunk in req.last():
            yield chunk
    except BaseException:
        req.abandon()
        raise
    req.close()


@overload
async def acreate_chat_completion(llm: CoreLLM, messages: Sequence[Any], *,
                                  stream: Literal[False] = False, **options: Any
                                  ) -> ChatCompletion: ...


@overload
async def acreate_chat_completion(llm: CoreLLM, messages: Sequence[Any], *,
                                  stream: Literal[True], **options: Any
                                  ) -> AsyncIterator[ChatCompletionChunk]: ...


@overload
async def acreate_chat_completion(llm: CoreLLM, messages: Sequence[Any], *, stream: bool,
                                  **options: Any
                                  ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]: ...


async def acreate_chat_completion(llm: CoreLLM, messages: Sequence[Any], *,
                                  stream: bool = False, tools: Sequence[Any] | None = None,
                                  tool_choice: Any = None,
                                  template: ChatTemplate | str | None = None,
                                  model: str | None = None, **options: Any
                                  ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
    """:func:`create_chat_completion` for asyncio (the tokens come through
    :mod:`rkllm.aio`, without blocking the loop): ``await`` it for the ``chat.completion``,
    or with ``stream=True`` for an async iterator of chunks (``async for``; ``aclose()``
    or ``break`` ends the run)."""
    req = _ChatRequest(llm, messages, stream=stream, tools=tools, tool_choice=tool_choice,
                       template=template, model=model, options=options)
    chunks = AsyncChunkIterator(req.bind(_async_chunks(req)), req.close)
    try:
        await chunks.__anext__()  # starts the run: its errors raise here
        if stream:
            return chunks
        async for _ in chunks:
            pass
        return req.result()
    except BaseException:
        req.abandon()
        raise


# ---- text completions ------------------------------------------------------------------------

def _text_chunk(meta: Mapping[str, Any], text: str, finish: str | None,
                include_usage: bool) -> CompletionChunk:
    out: Any = {**meta, "object": "text_completion",
                "choices": [{"text": text, "index": 0, "logprobs": None,
                             "finish_reason": finish}]}
    if include_usage:
        out["usage"] = None
    return out  # type: ignore[no-any-return]


@overload
def create_completion(llm: CoreLLM, prompt: str | Sequence[int], *,
                      stream: Literal[False] = False, max_tokens: int | None = 16,
                      echo: bool = False, model: str | None = None, **options: Any
                      ) -> Completion: ...


@overload
def create_completion(llm: CoreLLM, prompt: str | Sequence[int], *, stream: Literal[True],
                      max_tokens: int | None = 16, echo: bool = False, model: str | None = None,
                      **options: Any) -> Iterator[CompletionChunk]: ...


@overload
def create_completion(llm: CoreLLM, prompt: str | Sequence[int], *, stream: bool,
                      **options: Any) -> Completion | Iterator[CompletionChunk]: ...


def create_completion(llm: CoreLLM, prompt: str | Sequence[int], *, stream: bool = False,
                      max_tokens: int | None = 16, echo: bool = False, model: str | None = None,
                      **options: Any) -> Completion | Iterator[CompletionChunk]:
    """A text completion, like llama-cpp-python's ``Llama.create_completion`` (and
    ``Llama.__call__``): a ``text_completion`` dict, or chunks with ``stream=True``.
    ``prompt`` is text (the runtime applies the model's chat template on 1.2.0+, as
    :meth:`rkllm.LLM.complete` does) or token ids. ``max_tokens`` defaults to 16 as in
    llama-cpp-python and OpenAI (None: the model's limit); ``echo=True`` puts the prompt
    before the answer. ``stop``, ``seed``, ``stream_options`` and the other fields are
    handled as in :func:`create_chat_completion`. Stateless."""
    if not isinstance(echo, bool):
        raise TypeError(f"echo must be a bool, got {type(echo).__name__}")
    if "max_completion_tokens" in options:
        raise ParamError("max_completion_tokens is a chat completion field; text completions "
                         "take max_tokens")
    if echo and not isinstance(prompt, str):
        raise ParamError("echo=True needs a text prompt (token ids cannot be written back)")
    opts = request_options(llm, stream=stream, max_tokens=max_tokens, **options)
    meta = _meta(llm, model, "cmpl")
    settle_model(llm)  # what an interrupted chat request left behind
    run = llm.generate(prompt, **opts.run) if isinstance(prompt, str) else \
        llm.generate(tokens=prompt, **opts.run)
    answer = _Answer("", opts.stops, False)
    head = [prompt] if echo and isinstance(prompt, str) else []

    def texts() -> Iterator[str]:
        try:
            yield from head
            for piece in run:
                yield from answer.feed(piece)
                if answer.stopped:
                    break
            run.close()
            yield from answer.finish()[0]
        finally:
            run.close()

    if stream:
        def chunks() -> Iterator[CompletionChunk]:
            for text in texts():
                yield _text_chunk(meta, text, None, opts.include_usage)
            yield _text_chunk(meta, "", _finish_reason(run, answer), opts.include_usage)
            if opts.include_usage:
                yield {**meta, "object": "text_completion", "choices": [],  # type: ignore[typeddict-item]
                       "usage": _usage(run)}
        return ChunkIterator(chunks(), run.close)
    text = "".join(texts())
    out: Any = {**meta, "object": "text_completion",
                "choices": [{"text": text, "index": 0, "logprobs": None,
                             "finish_reason": _finish_reason(run, answer)}],
                "usage": _usage(run)}
    return out  # type: ignore[no-any-return]
