"""One answer on a held model: start it, filter what the client sees, account for it.

Both APIs go through :class:`Answer`: pieces come from ``rkllm.aio`` (the shim's eventfd, no
thread per token); special tokens are dropped, stop sequences end the run (aborting it), and
with tools the text that may be a ``<tool_call>`` is held back until it can be parsed.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rkllm.chat import parse_tool_calls
from rkllm.serve.conversation import Conversation, Held, recorded_answer

if TYPE_CHECKING:
    from rkllm.aio import AsyncStream
    from rkllm.serve.metrics import Metrics
    from rkllm.serve.prompt_cache import PrimedStream
    from rkllm.serve.scheduler import Slot
    from rkllm.stream import Perf

log = logging.getLogger("rkllm.serve")
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜]{1,40}｜>")
TOOL_OPEN = "<tool_call>"


@dataclass
class Job:
    """What a route asks for: a conversation (``messages``) or a plain ``prompt``."""

    messages: list[Any] | None = None
    prompt: str | None = None
    tools: str | None = None          # JSON list, declared with set_function_tools
    options: dict[str, Any] = field(default_factory=dict)  # run options (rkllm.LLM.generate)
    stop: Sequence[str] = ()


class StopScanner:
    """Cuts the text at the first stop sequence; holds back a tail that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        buf = self.buf + piece
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.buf = ""
            return buf[:cut], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.buf = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def conversation_of(slot: Slot) -> Conversation:
    if slot.conversation is None:
        assert slot.llm is not None
        slot.conversation = Conversation(slot.llm, slot.spec.template, slot.prompt_cache_dir)
    conv: Conversation = slot.conversation
    return conv


class Answer:
    """The answer to a :class:`Job` on a held slot: ``async for delta in answer.deltas()``
    yields the text the client sees, one piece per batch the runtime delivered (one token at
    a board's pace, several when the client is slower than the runtime); afterwards :attr:`text`, :attr:`tool_calls`,
    :attr:`finish_reason`, :attr:`perf`, token counts."""

    def __init__(self, slot: Slot, job: Job, metrics: Metrics) -> None:
        self.slot = slot
        self.job = job
        self.metrics = metrics
        self.model = slot.spec.name
        self.conv = conversation_of(slot)
        self.text = ""
        self.tool_calls: list[dict[str, Any]] = []
        self.finish_reason = "stop"
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self._stop_hit = False
        self._request: Held | None = None
        self._stream: AsyncStream | PrimedStream
        self.reused = False
        self._saved_tokens = 0
        if job.messages is not None:
            started = self.conv.start(job.messages, job.tools, job.options)
            self._stream, self._request = started.stream, started.request
            self.reused = started.reused
            self._saved_tokens = started.saved_tokens
            if started.saved_tokens:
                metrics.inc("rkllm_prefill_tokens_saved_total", started.saved_tokens,
                            model=self.model)
        else:
            self.conv.fresh()
            assert slot.llm is not None
            self._stream = slot.llm.agenerate(job.prompt, chunked=True, **job.options)

    async def deltas(self) -> AsyncIterator[str]:
        stream = self._stream
        stops = StopScanner(self.job.stop) if self.job.stop else None
        marker = self.conv.end_marker
        tools = self.job.tools is not None
        held = ""  # with tools: text that may be the start of a tool call
        clean = True
        try:
            async for piece in stream:
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                if "<" in piece:  # a special token spelled out is never shown
                    if marker:
                        piece = piece.replace(marker, "")
                    piece = _SPECIAL.sub("", piece)
                if stops is not None:
                    piece, hit = stops.feed(piece)
                    if hit:
                        self._stop_hit = True
                        await stream.aclose()
                if tools:
                    held += piece
                    start = held.lstrip()
                    if start.startswith(TOOL_OPEN) or TOOL_OPEN.startswith(start):
                        if self._stop_hit:
                            break
                        continue
                    piece, held = held, ""
                if piece:
                    self.text += piece
                    yield piece
                if self._stop_hit:
                    break
            if stops is not None and not self._stop_hit:
                tail = stops.flush()
                if tools:
                    held += tail
                elif tail:
                    self.text += tail
                    yield tail
            if held:
                content, calls = parse_tool_calls(held)
                if calls:
                    self.tool_calls = calls
                    if content:
                        self.text += content
                        yield content
                else:
                    self.text += held
                    yield held
        except BaseException:
            clean = False
            raise
        finally:
            await stream.aclose()
            self._ended(clean)

    def _ended(self, clean: bool) -> None:
        reason = "stop" if self._stop_hit else (self._stream.finish_reason or "abort")
        self.finish_reason = "tool_calls" if self.tool_calls else reason
        if not clean or reason == "abort":
            self.metrics.inc("rkllm_aborted_runs_total", model=self.model,
                             reason="disconnect" if not clean else "abort")
        if self._request is not None:
            natural = clean and not self._stop_hit and self._stream.finish_reason == "stop"
            prefilled = self.first_token_at is not None or \
                self._stream.finish_reason in ("stop", "length")
            self.conv.answered(self._request, recorded_answer(
                self.text or None, self.tool_calls) if natural else None, prefilled)
        perf = self.perf
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s, first token %s, %d token(s), prefill %s token(s)%s, %s", self.model,
                      self.finish_reason, "-" if self.ttft is None else f"{1000 * self.ttft:.1f}ms",
                      self.completion_tokens, "?" if perf is None else perf.prefill_tokens,
                      " (conversation kept)" if self.reused else "",
                      f"{perf.generate_tokens_per_s:.1f} tokens/s"
                      if perf is not None and perf.generate_tokens_per_s else "")
        if self.first_token_at is not None:
            self.metrics.observe("rkllm_time_to_first_token_seconds",
                                 self.first_token_at - self.started, model=self.model)
        if perf is not None:
            self.metrics.inc("rkllm_generated_tokens_total", perf.generate_tokens,
                             model=self.model)
            if perf.prefill_tokens:
                self.metrics.inc("rkllm_prefill_tokens_total", perf.prefill_tokens,
                                 model=self.model)
            rate = perf.generate_tokens_per_s
            if rate:
                self.metrics.observe("rkllm_tokens_per_second", rate, model=self.model)

    async def run(self) -> Answer:
        async for _ in self.deltas():
            pass
        return self

    @property
    def perf(self) -> Perf | None:
        return self._stream.perf

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens not prefilled again: what the kv cache (or a saved prompt cache)
        held, or the system part kept after the short run that saved its prompt cache."""
        return self._saved_tokens + getattr(self._stream, "kept_tokens", 0)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens this run prefilled (the runtime's count; the cached ones aside)."""
        perf = self.perf
        return perf.prefill_tokens or 0 if perf is not None else 0

    @property
    def completion_tokens(self) -> int:
        return self._stream.n_tokens

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started
