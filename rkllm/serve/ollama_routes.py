"""Ollama's API: /, /api/version, tags, ps, show, chat, generate, embed, pull, delete.

Streaming answers are NDJSON (one JSON object a line, ``done: true`` last), durations are in
nanoseconds, and errors are ``{"error": "..."}``, as Ollama's clients expect.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rkllm import params as P
from rkllm.serve import options as O
from rkllm.serve.engine import Answer, Job
from rkllm.serve.errors import APIError
from rkllm.serve.registry import ModelSpec
from rkllm.serve.responses import NDJSON, Live, Out, json_bytes, json_response
from rkllm.serve.settings import parse_duration
from rkllm.serve.thinking import ThinkSplitter

if TYPE_CHECKING:
    from rkllm.serve.server import Server

API_VERSION = "0.6.0"  # the Ollama API level implemented (what clients check features by)
# options that set resources of Ollama's own engine and cannot change an answer here
IGNORED_OPTIONS = {"num_thread", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "num_batch",
                   "low_vram", "f16_kv", "numa", "vocab_only", "num_keep"}
SAMPLING_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                    "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
                    "frequency_penalty": "frequency_penalty", "mirostat": "mirostat",
                    "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _details(spec: ModelSpec) -> dict[str, Any]:
    return {"parent_model": "", "format": "rkllm", "family": "rkllm", "families": ["rkllm"],
            "parameter_size": "", "quantization_level": ""}


def _digest(spec: ModelSpec) -> str:
    real = os.path.realpath(spec.path)
    name = os.path.basename(real)
    return name if len(name) == 64 else f"{os.path.getsize(real):x}-{os.stat(real).st_mtime_ns:x}"


def _model_name(body: Mapping[str, Any]) -> Any:
    return body.get("model", body.get("name"))


def _keep_alive(body: Mapping[str, Any]) -> float | None:
    value = body.get("keep_alive")
    try:
        return None if value is None else parse_duration(value)
    except ValueError as exc:
        raise O.bad(str(exc), "keep_alive") from None


def _sampling(body: Mapping[str, Any]) -> tuple[dict[str, Any], int | None, list[str]]:
    """Ollama's ``options`` -> (sampling, max tokens, stop sequences)."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise O.bad("options must be an object", "options")
    known = set(SAMPLING_OPTIONS) | IGNORED_OPTIONS | {"num_predict", "stop", "seed", "num_ctx"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise O.bad(f"unsupported option(s): {', '.join(unknown)} (the RKLLM runtime has no "
                    f"such setting per request)", unknown[0])
    sampling = {name: O.number(opts, key, 0) for key, name in SAMPLING_OPTIONS.items()}
    sampling["top_k"] = O.number(opts, "top_k", 0, integer=True)
    sampling["mirostat"] = O.number(opts, "mirostat", 0, 2, integer=True)
    sampling = {k: v for k, v in sampling.items() if v is not None}
    O.check_seed(opts, sampling)
    predict = O.number(opts, "num_predict", -2, integer=True)
    return sampling, predict if predict and predict > 0 else None, O.stop_list(opts.get("stop"))


def _think(body: Mapping[str, Any]) -> bool | None:
    """Ollama's ``think``: true or false (the runtime's ``enable_thinking``), or absent."""
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return value
    raise O.bad(f"think must be true or false, got {json.dumps(value)} (levels such as "
                f"\"high\" are not supported: the runtime only switches thinking on or off)",
                "think")


def _refuse(body: Mapping[str, Any]) -> None:
    if body.get("format") not in (None, ""):
        raise O.bad("format (JSON mode / structured output) is not supported: the RKLLM "
                    "runtime cannot constrain its output", "format")
    for name in ("images", "context", "suffix", "template"):
        if body.get(name):
            raise O.bad(f"{name} is not supported by this server", name)
    if body.get("raw"):
        raise O.bad("raw prompts are not supported: the runtime applies the model's chat "
                    "template itself", "raw")


def _messages(raw: Any) -> list[Any]:
    """Ollama messages (tool call arguments as objects, ``images``) -> OpenAI-style."""
    if not isinstance(raw, list):
        raise O.bad("messages must be a list", "messages")
    out = []
    for i, m in enumerate(raw):
        if isinstance(m, dict) and m.get("images"):
            raise O.bad(f"messages[{i}]: images are not supported", "messages")
        if isinstance(m, dict):
            m = {k: v for k, v in m.items() if k in ("role", "content", "tool_calls")}
        out.append(m)
    return out


def _ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        fn = c["function"]
        try:
            args = json.loads(fn["arguments"])
        except ValueError:
            args = {}
        out.append({"function": {"name": fn["name"], "arguments": args}})
    return out


def _joined(*parts: tuple[str, str]) -> tuple[str, str]:
    return "".join(t for t, _ in parts), "".join(c for _, c in parts)


def _timings(answer: Answer, load_ns: int) -> dict[str, Any]:
    perf = answer.perf
    return {"total_duration": int((time.monotonic() - answer.started) * 1e9) + load_ns,
            "load_duration": load_ns, "prompt_eval_count": answer.prompt_tokens,
            "prompt_eval_duration": int(perf.prefill_ms * 1e6) if perf else 0,
            "eval_count": answer.completion_tokens,
            "eval_duration": int(perf.generate_ms * 1e6) if perf else 0}


class OllamaRoutes:
    def __init__(self, server: Server) -> None:
        self.server = server

    def routes(self) -> list[Route]:
        # the answering routes first: Starlette tries the routes in order
        return [Route("/api/chat", self.chat, methods=["POST"]),
                Route("/api/generate", self.generate, methods=["POST"]),
                Route("/api/version", self.version, methods=["GET"]),
                Route("/api/tags", self.tags, methods=["GET"]),
                Route("/api/ps", self.ps, methods=["GET"]),
                Route("/api/show", self.show, methods=["POST"]),
                Route("/api/embed", self.embed, methods=["POST"]),
                Route("/api/embeddings", self.embeddings, methods=["POST"]),
                Route("/api/pull", self.pull, methods=["POST"]),
                Route("/api/delete", self.delete, methods=["DELETE", "POST"])]

    def _writable(self) -> None:
        if self.server.settings.read_only:
            raise APIError(403, "state-changing routes (pull, delete, load, unload) are "
                                "switched off on this server (--read-only)")

    # ---- what is there --------------------------------------------------------------------
    async def version(self, request: Request) -> Response:
        return json_response({"version": API_VERSION})

    def _entry(self, spec: ModelSpec) -> dict[str, Any]:
        size = os.path.getsize(spec.path) if os.path.exists(spec.path) else 0
        mtime = os.path.getmtime(spec.path) if os.path.exists(spec.path) else 0.0
        return {"name": spec.name, "model": spec.name, "modified_at": _iso(mtime),
                "size": size, "digest": _digest(spec), "details": _details(spec)}

    async def tags(self, request: Request) -> Response:
        specs = await asyncio.to_thread(self.server.registry.available)
        return json_response({"models": [self._entry(s) for s in specs]})

    async def ps(self, request: Request) -> Response:
        models = []
        for slot in self.server.scheduler.loaded():
            entry = self._entry(slot.spec)
            expires = slot.expires_at or (time.time() + 10 * 365 * 86400)
            llm = slot.llm
            models.append({**entry, "expires_at": _iso(expires), "size_vram": entry["size"],
                           "context_length": int(llm.params.get("max_context_len") or 0)
                           if llm is not None else 0})
        return json_response({"models": models})

    async def show(self, request: Request) -> Response:
        body = await O.read_json(request)
        spec = self.server.registry.resolve(_model_name(body))
        from rkllm.modelfile import inspect_model

        info = await asyncio.to_thread(inspect_model, spec.path)
        facts = {f"rkllm.{k}": v.value for k, v in info.facts.items()
                 if isinstance(v.value, (str, int, float, bool))}
        params = "\n".join(f"{k} {v}" for k, v in spec.options.items())
        template = facts.get("rkllm.chat_template", "")
        return json_response({
            "modelfile": f"FROM {spec.path}\n", "parameters": params,
            "template": template if isinstance(template, str) else "",
            "details": _details(spec), "model_info": facts, "license": "",
            "modified_at": self._entry(spec)["modified_at"],
            "capabilities": ["completion", "tools", "embedding"]})

    # ---- answers --------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response | Live:
        body = await O.read_json(request)
        _refuse(body)
        messages = _messages(body.get("messages", []))
        tools = O.tools_json(body.get("tools"))
        return await self._answer(request, body, Job(messages=messages, tools=tools), "chat")

    async def generate(self, request: Request) -> Response | Live:
        body = await O.read_json(request)
        _refuse(body)
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise O.bad("prompt must be a string", "prompt")
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise O.bad("system must be a string", "system")
        messages: list[Any] = [{"role": "system", "content": system}] if system else []
        if prompt:
            messages.append({"role": "user", "content": prompt})
        return await self._answer(request, body, Job(messages=messages), "generate")

    async def _load_or_unload(self, request: Request, spec: ModelSpec, keep: float | None,
                              kind: str) -> Response:
        """An empty chat/generate request: Ollama's way to load (or, keep_alive 0, unload)."""
        self._writable()
        server = self.server
        if keep == 0:
            slot = server.scheduler.slots.get(spec.name)
            if slot is not None and slot.llm is not None:
                async with server.scheduler.use(spec, keep_alive=-1) as held:
                    await server.scheduler.unload(held, "request")
            reason = "unload"
        else:
            async with server.scheduler.use(spec, keep_alive=keep):
                pass
            reason = "load"
        base = {"model": spec.name, "created_at": _now(), "done": True, "done_reason": reason}
        if kind == "chat":
            return json_response({**base, "message": {"role": "assistant", "content": ""}})
        return json_response({**base, "response": ""})

    async def _answer(self, request: Request, body: Mapping[str, Any], job: Job,
                      kind: str) -> Response | Live:
        server = self.server
        spec = server.registry.resolve(_model_name(body))
        keep = _keep_alive(body)
        if not job.messages:
            return await self._load_or_unload(request, spec, keep, kind)
        sampling, limit, job.stop = _sampling(body)
        stream = O.boolean(body, "stream", True)
        think = _think(body)
        splitter = ThinkSplitter() if think else None  # reasoning apart, as Ollama gives it

        def line(text: str | None = None, thinking: str = "", **extra: Any) -> dict[str, Any]:
            data: dict[str, Any] = {"model": spec.name, "created_at": _now()}
            if kind == "chat":
                data["message"] = {"role": "assistant", "content": text or "", **(
                    {"thinking": thinking} if thinking else {}), **(
                    {"tool_calls": extra.pop("tool_calls")} if "tool_calls" in extra else {})}
            else:
                data["response"] = text or ""
                if thinking:
                    data["thinking"] = thinking
            return {**data, "done": False, **extra}

        async def work(out: Out) -> None:
            async with server.scheduler.use(spec, keep_alive=keep) as slot:
                load_ns = int(slot.load_seconds * 1e9)
                assert slot.llm is not None
                job.options = O.run_options(slot.llm, sampling, spec.options, limit)
                if think:
                    P.require(slot.llm.family, "enable_thinking", "think")
                if think is not None and P.family_key(slot.llm.family) >= \
                        P.family_key(P.RUN_FEATURES["enable_thinking"]):
                    job.options["enable_thinking"] = think  # false before 1.2.1: nothing to do
                if spec.system is not None and kind == "chat" and job.messages and \
                        job.messages[0].get("role") != "system":
                    job.messages = [{"role": "system", "content": spec.system}, *job.messages]
                answer = Answer(slot, job, server.metrics)
                thinking, text = "", None
                if stream:
                    await out.start(NDJSON)
                    async for piece in answer.deltas():
                        thought, piece = splitter.feed(piece) if splitter else ("", piece)
                        if piece or thought:
                            await out.write(json_bytes(line(piece, thought)) + b"\n")
                    if splitter:
                        thinking, text = splitter.flush()
                else:
                    await answer.run()
                    thinking, text = ("", answer.text) if splitter is None else \
                        _joined(splitter.feed(answer.text), splitter.flush())
                extra: dict[str, Any] = {}
                if answer.tool_calls:
                    extra["tool_calls"] = _ollama_calls(answer.tool_calls)
                reason = answer.finish_reason if answer.finish_reason != "tool_calls" else "stop"
                final = line(text, thinking, **extra)
                final.update(done=True, done_reason=reason, **_timings(answer, load_ns))
                if stream:
                    await out.end(json_bytes(final) + b"\n")
                else:
                    await out.json(final)

        return Live(request.scope["path"], work)

    # ---- embeddings -----------------------------------------------------------------------
    async def embed(self, request: Request) -> Live:
        body = await O.read_json(request)
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or \
                not all(isinstance(t, str) and t for t in texts):
            raise O.bad("input must be a non-empty string or list of strings", "input")
        return self._embed(request, body, texts, legacy=False)

    async def embeddings(self, request: Request) -> Live:
        body = await O.read_json(request)
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise O.bad("prompt must be a non-empty string", "prompt")
        return self._embed(request, body, [body["prompt"]], legacy=True)

    def _embed(self, request: Request, body: Mapping[str, Any], texts: list[str],
               legacy: bool) -> Live:
        from rkllm.serve.openai_routes import embed

        server = self.server
        spec = server.registry.resolve(_model_name(body))

        async def work(out: Out) -> None:
            started = time.monotonic()
            vectors, tokens = await embed(server, spec, texts)
            if legacy:
                await out.json({"embedding": vectors[0]})
                return
            await out.json({"model": spec.name, "embeddings": vectors,
                            "total_duration": int((time.monotonic() - started) * 1e9),
                            "load_duration": 0, "prompt_eval_count": tokens})

        return Live(request.scope["path"], work)

    # ---- the model cache ------------------------------------------------------------------
    async def pull(self, request: Request) -> Response | Live:
        self._writable()
        body = await O.read_json(request)
        from rkllm.serve.pull import pull_work

        return Live(request.scope["path"], pull_work(self.server, _model_name(body),
                                                O.boolean(body, "stream", True)))

    async def delete(self, request: Request) -> Response:
        self._writable()
        body = await O.read_json(request)
        name = _model_name(body)
        from rkllm.hub import parse_ref
        from rkllm.model_cache import remove

        if not isinstance(name, str) or parse_ref(name.removesuffix(":latest")) is None:
            raise APIError(400, f"model {name!r}: only models in the Hugging Face cache "
                                f"(REPO or REPO:FILE) can be deleted")
        ref = name.removesuffix(":latest")
        try:
            removed = await asyncio.to_thread(remove, ref)
        except Exception as exc:
            from rkllm.errors import ModelNotFoundError

            if isinstance(exc, ModelNotFoundError):
                raise APIError(404, f"model '{ref}' not found") from None
            raise
        gone = {os.path.realpath(m.path) for m in removed}
        scheduler = self.server.scheduler
        for slot in list(scheduler.slots.values()):
            if os.path.realpath(slot.spec.path) in gone or not os.path.exists(slot.spec.path):
                if slot.llm is not None:  # its file is gone: unload it after its turn
                    async with scheduler.use(slot.spec, keep_alive=-1) as held:
                        await scheduler.unload(held, "deleted")
                scheduler.slots.pop(slot.spec.name, None)
        return Response(status_code=200)
