"""The Pythonic API: load a model on a runtime, stream text from it, close it.

    with rkllm.LLM("model.rkllm", max_context_len=4096, top_k=1) as llm:
        for piece in llm.generate("Why is the sky blue?", max_new_tokens=256):
            print(piece, end="", flush=True)
        result = llm.complete("Hi")

``LLM`` is :class:`rkllm.core.CoreLLM` plus the methods that live in higher-level modules
(chat sessions, OpenAI-shaped completions, asyncio, the Hugging Face layer), kept here as
methods so that code written for llama-cpp-python ports with few changes; each delegates
down to its module. The model is a path, ``demo`` (the simulated demo model, on the
simulator) or ``REPO[:FILE]`` on the Hugging Face Hub (the cache first), as in the CLI.
Runtime selection: see :mod:`rkllm.runtime_finder`.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from rkllm.core import CoreLLM
from rkllm.request import check_path
from rkllm.stream import Result, Stream, Tensor

if TYPE_CHECKING:
    from rkllm.aio import AsyncStream
    from rkllm.chat import ChatSession
    from rkllm.types import ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk


def _resolve(model: str | os.PathLike[str], runtime: Any) -> tuple[str, Any]:
    """A model reference as the CLI takes it -> (a local path, the runtime to use)."""
    path = check_path(model, "model")
    if os.path.exists(path) or not isinstance(model, str):
        return path, runtime
    from rkllm.hub import parse_ref, resolve_model

    if path == "demo":
        if runtime is None and not os.environ.get("RKLLM_LIBRARY"):
            runtime = "sim"  # the demo model is a simulated one
    elif parse_ref(path) is None:
        return path, runtime  # a missing file: the loader says so
    return resolve_model(path), runtime


def _settle(llm: CoreLLM) -> None:
    """Undoes what an interrupted chat request left in the model (only if chat was used)."""
    session = sys.modules.get("rkllm.chat.session")
    if session is not None:
        session.settle_model(llm)


class LLM(CoreLLM):
    """A model loaded on a runtime (see :class:`rkllm.core.CoreLLM` for the parameters).
    ``model``: a ``.rkllm`` path, ``demo``, or ``REPO[:FILE]`` on the Hugging Face Hub."""

    def __init__(self, model: str | os.PathLike[str], *,
                 runtime: str | os.PathLike[str] | None = None, abi: str | None = None,
                 params: Mapping[str, Any] | None = None, check_model: bool = True,
                 **kwparams: Any) -> None:
        path, runtime = _resolve(model, runtime)
        super().__init__(path, runtime=runtime, abi=abi, params=params,
                         check_model=check_model, **kwparams)

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str | None = None, *,
                        revision: str | None = None, **kwargs: Any) -> LLM:
        """A model from the Hugging Face Hub, as llama-cpp-python's ``Llama.from_pretrained``:
        ``filename`` names the ``.rkllm`` file (a glob such as ``"*w8a8*.rkllm"`` is fine if
        one file matches; None: the one that fits this board and runtime). The cache is
        used first; the file is downloaded only when missing. Other keyword arguments go
        to :class:`LLM` (``runtime=``, ``max_context_len=``, ...)."""
        from rkllm.hub import resolve_model

        if filename is not None and any(c in filename for c in "*?["):
            filename = _match_file(repo_id, filename, revision)
        ref = f"{repo_id}:{filename}" if filename else repo_id
        return cls(resolve_model(ref, revision=revision), **kwargs)

    # ---- generation, after what an interrupted chat request left behind -------------------
    def generate(self, prompt: str | None = None, *, chunked: bool = False,
                 **options: Any) -> Stream:
        _settle(self)
        return super().generate(prompt, chunked=chunked, **options)

    def complete(self, prompt: str | None = None, **options: Any) -> Result:
        _settle(self)
        return super().complete(prompt, **options)

    def logits(self, prompt: str | None = None, **options: Any) -> Tensor:
        _settle(self)
        return super().logits(prompt, **options)

    def hidden_states(self, prompt: str | None = None, **options: Any) -> Tensor:
        _settle(self)
        return super().hidden_states(prompt, **options)

    # ---- asyncio ------------------------------------------------------------------------------
    def agenerate(self, prompt: str | None = None, *, chunked: bool = False,
                  **options: Any) -> AsyncStream:
        """:meth:`generate` for asyncio: ``async for piece in llm.agenerate(...)``
        (see :mod:`rkllm.aio`)."""
        from rkllm.aio import agenerate

        return agenerate(self, prompt, chunked=chunked, **options)

    async def acomplete(self, prompt: str | None = None, **options: Any) -> Result:
        """:meth:`complete` without blocking the event loop."""
        from rkllm.aio import acomplete

        _settle(self)
        return await acomplete(self, prompt, **options)

    # ---- chat ---------------------------------------------------------------------------------
    def chat(self, system: str | None = None, **options: Any) -> ChatSession:
        """A :class:`rkllm.chat.ChatSession` on this model (history, templates, tools)."""
        from rkllm.chat import ChatSession

        return ChatSession(self, system, **options)

    @overload
    def create_chat_completion(self, messages: Sequence[Any], *,
                               stream: Literal[False] = False, **options: Any
                               ) -> ChatCompletion: ...

    @overload
    def create_chat_completion(self, messages: Sequence[Any], *, stream: Literal[True],
                               **options: Any) -> Iterator[ChatCompletionChunk]: ...

    @overload
    def create_chat_completion(self, messages: Sequence[Any], *, stream: bool,
                               **options: Any
                               ) -> ChatCompletion | Iterator[ChatCompletionChunk]: ...

    def create_chat_completion(self, messages: Sequence[Any], *, stream: bool = False,
                               **options: Any
                               ) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        """OpenAI-shaped chat completion (a dict, or an iterator of chunk dicts with
        ``stream=True``); see :func:`rkllm.chat.create_chat_completion`."""
        from rkllm.chat import create_chat_completion

        return create_chat_completion(self, messages, stream=stream, **options)

    @overload
    async def acreate_chat_completion(self, messages: Sequence[Any], *,
                                      stream: Literal[False] = False, **options: Any
                                      ) -> ChatCompletion: ...

    @overload
    async def acreate_chat_completion(self, messages: Sequence[Any], *,
                                      stream: Literal[True], **options: Any
                                      ) -> AsyncIterator[ChatCompletionChunk]: ...

    @overload
    async def acreate_chat_completion(self, messages: Sequence[Any], *, stream: bool,
                                      **options: Any
                                      ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]: ...

    async def acreate_chat_completion(self, messages: Sequence[Any], *, stream: bool = False,
                                      **options: Any
                                      ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        """:meth:`create_chat_completion` for asyncio; see
        :func:`rkllm.chat.acreate_chat_completion`."""
        from rkllm.chat import acreate_chat_completion

        return await acreate_chat_completion(self, messages, stream=stream, **options)

    @overload
    def create_completion(self, prompt: str | Sequence[int], *,
                          stream: Literal[False] = False, **options: Any) -> Completion: ...

    @overload
    def create_completion(self, prompt: str | Sequence[int], *, stream: Literal[True],
                          **options: Any) -> Iterator[CompletionChunk]: ...

    @overload
    def create_completion(self, prompt: str | Sequence[int], *, stream: bool,
                          **options: Any) -> Completion | Iterator[CompletionChunk]: ...

    def create_completion(self, prompt: str | Sequence[int], *, stream: bool = False,
                          **options: Any) -> Completion | Iterator[CompletionChunk]:
        """OpenAI-shaped text completion; see :func:`rkllm.chat.create_completion`."""
        from rkllm.chat import create_completion

        return create_completion(self, prompt, stream=stream, **options)

    @overload
    def __call__(self, prompt: str | Sequence[int], *, stream: Literal[False] = False,
                 **options: Any) -> Completion: ...

    @overload
    def __call__(self, prompt: str | Sequence[int], *, stream: Literal[True],
                 **options: Any) -> Iterator[CompletionChunk]: ...

    @overload
    def __call__(self, prompt: str | Sequence[int], *, stream: bool,
                 **options: Any) -> Completion | Iterator[CompletionChunk]: ...

    def __call__(self, prompt: str | Sequence[int], *, stream: bool = False,
                 **options: Any) -> Completion | Iterator[CompletionChunk]:
        """``llm(prompt, ...)`` is :meth:`create_completion`, as in llama-cpp-python."""
        return self.create_completion(prompt, stream=stream, **options)

    def __enter__(self) -> LLM:
        return self


def _match_file(repo_id: str, pattern: str, revision: str | None) -> str:
    """The one file of ``repo_id`` that the glob ``pattern`` matches: among the cached files
    first, else in the repository's listing."""
    from rkllm.errors import ModelNotFoundError
    from rkllm.hub import cached_model_files, list_remote

    cached = cached_model_files(repo_id, revision)
    names = [p.split(os.sep + "snapshots" + os.sep, 1)[-1].split(os.sep, 1)[-1] for p in cached]
    hits = fnmatch.filter(names, pattern)
    if len(hits) != 1:
        siblings = list_remote(repo_id, revision=revision)[1]
        names = [s.rfilename for s in siblings]
        hits = fnmatch.filter(names, pattern)
    if len(hits) != 1:
        raise ModelNotFoundError(
            f"{pattern!r} matches {len(hits)} files of {repo_id}"
            f"{': ' + ', '.join(hits) if hits else ''}; name one file")
    return hits[0]
