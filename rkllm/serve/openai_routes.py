"""OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import array
import asyncio
import base64
import math
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rkllm.serve import options as O
from rkllm.serve.engine import Answer, Job
from rkllm.serve.errors import APIError
from rkllm.serve.responses import SSE, Live, Out, first_with_keepalive, json_bytes, json_response

if TYPE_CHECKING:
    from rkllm.serve.server import Server

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty",
                   "repeat_penalty")
COMMON = {"model", "stream", "stream_options", "stop", "max_tokens", "seed", "user", "n",
          "logprobs", "store", "metadata", "service_tier", *SAMPLING_FIELDS}
CHAT_FIELDS = COMMON | {"messages", "tools", "tool_choice", "parallel_tool_calls",
                        "max_completion_tokens", "response_format", "logit_bias",
                        "top_logprobs"}
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "suffix", "best_of", "logit_bias"}


def _unsupported_values(body: Mapping[str, Any]) -> None:
    """Fields accepted only with the value that means 'off' (others would change the answer)."""
    if body.get("n", 1) not in (1, None):
        raise O.bad("n must be 1: one NPU answers one choice at a time", "n")
    for name in ("logprobs", "echo", "top_logprobs"):
        if body.get(name) not in (None, False, 0):
            raise O.bad(f"{name} is not supported (the runtime gives no token probabilities)",
                        name)
    if body.get("logit_bias"):
        raise O.bad("logit_bias is not supported by the RKLLM runtime", "logit_bias")
    if body.get("best_of") not in (None, 1):
        raise O.bad("best_of must be 1", "best_of")
    if body.get("suffix"):
        raise O.bad("suffix (fill-in-the-middle) is not supported", "suffix")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise O.bad("response_format other than {\"type\": \"text\"} is not supported "
                    "(the runtime cannot constrain its output to JSON)", "response_format")


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    bounds = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2),
              "frequency_penalty": (-2, 2), "repeat_penalty": (0, None)}
    out = {name: O.number(body, name, *bounds[name]) for name in bounds}
    out["top_k"] = O.number(body, "top_k", 0, None, integer=True)
    O.check_seed(body, out)
    return {k: v for k, v in out.items() if v is not None}


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = O.boolean(body, "stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise O.bad("stream_options must be an object", "stream_options")
    return stream, bool(so and so.get("include_usage"))


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length", "tool_calls") else "stop"


def _usage(answer: Answer) -> dict[str, Any]:
    """OpenAI's usage: the whole prompt, of which ``cached_tokens`` were not prefilled again
    (the kv cache or a saved prompt cache held them)."""
    cached, c = answer.cached_tokens, answer.completion_tokens
    p = answer.prompt_tokens + cached
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _tool_choice(body: Mapping[str, Any], tools: str | None) -> str | None:
    choice = body.get("tool_choice")
    if choice in (None, "auto"):
        return tools
    if choice == "none":
        return None
    raise O.bad(f"tool_choice {choice!r} is not supported: the runtime cannot force a tool "
                f"call (use \"auto\" or \"none\")", "tool_choice")


class OpenAIRoutes:
    def __init__(self, server: Server) -> None:
        self.server = server

    def routes(self) -> list[Route]:
        # the answering routes first: Starlette tries the routes in order
        return [Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"])]

    # ---- models ---------------------------------------------------------------------------
    def _model_entry(self, name: str, created: int) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "rkllm"}

    async def models(self, request: Request) -> Response:
        now = int(self.server.started)
        return json_response({"object": "list", "data": [
            self._model_entry(s.name, now) for s in self.server.registry.available()]})

    async def model(self, request: Request) -> Response:
        spec = self.server.registry.resolve(request.path_params["model"])
        return json_response(self._model_entry(spec.name, int(self.server.started)))

    # ---- chat -----------------------------------------------------------------------------
    async def chat(self, request: Request) -> Live:
        body = await O.read_json(request)
        O.refuse_unknown(body, CHAT_FIELDS, "/v1/chat/completions")
        _unsupported_values(body)
        if "messages" not in body:
            raise O.bad("messages is required", "messages")
        stream, include_usage = _stream_flags(body)
        sampling = _sampling(body)
        limit = O.number(body, "max_completion_tokens", 1, None, integer=True)
        if limit is None:
            limit = O.number(body, "max_tokens", 1, None, integer=True)
        tools = _tool_choice(body, O.tools_json(body.get("tools")))
        job = Job(messages=body["messages"], tools=tools, stop=O.stop_list(body.get("stop")))
        return self._answer(request, body, job, sampling, limit, stream, include_usage,
                            "chat.completion")

    async def completions(self, request: Request) -> Live:
        body = await O.read_json(request)
        O.refuse_unknown(body, COMPLETION_FIELDS, "/v1/completions")
        _unsupported_values(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise O.bad("prompt must be a string (one prompt per request)", "prompt")
        stream, include_usage = _stream_flags(body)
        sampling = _sampling(body)
        limit = O.number(body, "max_tokens", 1, None, integer=True)
        job = Job(prompt=prompt, stop=O.stop_list(body.get("stop")))
        return self._answer(request, body, job, sampling, 16 if limit is None else limit,
                            stream, include_usage, "text_completion")

    def _answer(self, request: Request, body: Mapping[str, Any], job: Job,
                sampling: dict[str, Any], limit: int | None, stream: bool,
                include_usage: bool, kind: str) -> Live:
        server = self.server
        spec = server.registry.resolve(body.get("model"))
        chat = kind == "chat.completion"
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "created": int(time.time()), "model": spec.name, "system_fingerprint": None}

        async def work(out: Out) -> None:
            async with server.scheduler.use(spec) as slot:
                assert slot.llm is not None
                job.options = O.run_options(slot.llm, sampling, spec.options, limit)
                if chat and spec.system is not None:
                    job.messages = _with_system(job.messages, spec.system)
                answer = Answer(slot, job, server.metrics)
                if stream:
                    await _stream(out, answer, meta, chat, include_usage,
                                  server.settings.keepalive_interval)
                    return
                await answer.run()
                if chat:
                    message: dict[str, Any] = {"role": "assistant",
                                               "content": answer.text or None}
                    if answer.tool_calls:
                        message["tool_calls"] = answer.tool_calls
                    elif message["content"] is None:
                        message["content"] = ""
                    choice: dict[str, Any] = {"index": 0, "message": message}
                else:
                    choice = {"index": 0, "text": answer.text}
                await out.json({**meta, "object": kind, "choices": [
                    {**choice, "logprobs": None, "finish_reason": _finish(answer.finish_reason)}],
                    "usage": _usage(answer)})

        return Live(request.scope["path"], work)

    # ---- embeddings -----------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Live:
        body = await O.read_json(request)
        O.refuse_unknown(body, {"model", "input", "encoding_format", "user", "dimensions"},
                         "/v1/embeddings")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or \
                not all(isinstance(t, str) and t for t in texts):
            raise O.bad("input must be a non-empty string or a list of non-empty strings "
                        "(token arrays are not supported)", "input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise O.bad("encoding_format must be \"float\" or \"base64\"", "encoding_format")
        if body.get("dimensions") is not None:
            raise O.bad("dimensions is not supported (the model's hidden size is fixed)",
                        "dimensions")
        spec = self.server.registry.resolve(body.get("model"))
        server = self.server

        async def work(out: Out) -> None:
            vectors, tokens = await embed(server, spec, texts)
            data = [{"object": "embedding", "index": i,
                     "embedding": _b64(v) if fmt == "base64" else v}
                    for i, v in enumerate(vectors)]
            await out.json({"object": "list", "data": data, "model": spec.name,
                            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

        return Live(request.scope["path"], work)


def _with_system(messages: Any, system: str) -> Any:
    """An alias's system prompt, unless the request brings its own."""
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) and \
            messages[0].get("role") in ("system", "developer"):
        return messages
    return [{"role": "system", "content": system}, *(messages or [])]


def _b64(vector: list[float]) -> str:
    return base64.b64encode(array.array("f", vector).tobytes()).decode()


async def embed(server: Server, spec: Any, texts: list[str]) -> tuple[list[list[float]], int]:
    """Mean of the last hidden layer over the text's tokens, scaled to unit length (the
    runtime's GET_LAST_HIDDEN_LAYER mode); also the number of tokens read."""
    vectors: list[list[float]] = []
    tokens = 0
    async with server.scheduler.use(spec) as slot:
        from rkllm.serve.engine import conversation_of

        llm = slot.llm
        assert llm is not None
        conversation_of(slot).fresh()  # the run replaces what the kv cache held
        for text in texts:
            # one blocking run per text, in a worker thread (not one per token)
            tensor = await asyncio.to_thread(llm.hidden_states, text)
            rows, cols = tensor.shape
            data = tensor.data
            mean = [math.fsum(data[r * cols + c] for r in range(rows)) / rows
                    for c in range(cols)]
            norm = math.sqrt(math.fsum(x * x for x in mean)) or 1.0
            vectors.append([x / norm for x in mean])
            tokens += rows
    return vectors, tokens


async def _stream(out: Out, answer: Answer, meta: dict[str, Any], chat: bool,
                  include_usage: bool, keepalive: float) -> None:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any] | None, **extra: Any) -> bytes:
        data = {**meta, "object": kind, "choices": [choice] if choice else [], **extra}
        return b"data: " + json_bytes(data) + b"\n\n"

    # a piece's event is the same bytes event() makes, with the constant parts encoded once
    head = b"data: " + json_bytes({**meta, "object": kind})[:-1] + \
        (b',"choices":[{"index":0,"delta":{"content":' if chat else
         b',"choices":[{"index":0,"text":')
    tail = (b'}' if chat else b'') + b',"logprobs":null,"finish_reason":null}]}\n\n'

    def piece(text: str) -> bytes:
        return head + json_bytes(text) + tail

    await out.start(SSE)  # the headers go while the runtime prefills
    # the role chunk leaves in one write with the first piece (one send less before it)
    opening = event({"index": 0, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None}) if chat else b""

    async def idle() -> None:
        await out.write(b": keep-alive\n\n")

    async for text in first_with_keepalive(answer.deltas(), keepalive, idle):
        await out.write(opening + piece(text) if opening else piece(text))
        opening = b""
    finish = _finish(answer.finish_reason)
    if chat and answer.tool_calls:
        opening += event({"index": 0, "delta": {"tool_calls": [
            {"index": i, **c} for i, c in enumerate(answer.tool_calls)]},
            "logprobs": None, "finish_reason": None})
    last: dict[str, Any] = ({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
                            if chat else {"index": 0, "text": "", "logprobs": None,
                                          "finish_reason": finish})
    await out.write(opening + event(last))
    if include_usage:
        await out.write(event(None, usage=_usage(answer)))
    await out.end(b"data: [DONE]\n\n")


__all__ = ["OpenAIRoutes", "APIError", "embed"]
