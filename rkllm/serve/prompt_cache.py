"""Saved prompt caches of system parts (``rkllm serve --prompt-cache DIR``).

A system part (system prompt and tools) seen before, but no longer the one the kv cache starts
with, is loaded from a file the runtime saved instead of being prefilled again. The runtime
saves the cache of everything a run prefilled, so the file comes from a short run of its own
the first time a system part is seen: the system part, then the template's user prefix alone
(how every later prompt starts), one generated token. The answer's run then keeps the system
part in the kv cache (``clear_kv_cache(keep_system_prompt=1)``).

The runtime reuses a loaded cache for a run whose tokens start with the cache's; the simulator
does exactly that, and says how many tokens it reused. The real runtime's rule is not
published, which is why the server uses saved caches only when told to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllm.errors import RKLLMError

if TYPE_CHECKING:
    from rkllm.aio import AsyncStream
    from rkllm.chat import ChatTemplate
    from rkllm.llm import LLM
    from rkllm.stream import Perf

log = logging.getLogger("rkllm.serve")

SUFFIX = ".rkpc"
LIMIT = 32  # files per model: the least recently used go first


class CacheFiles:
    """The saved prompt caches of one loaded model: ``<key>-<tokens>.rkpc`` in a folder of
    its own (the model file, its size and time, the runtime family and context size)."""

    def __init__(self, root: str | os.PathLike[str], llm: LLM) -> None:
        st = os.stat(llm.model_path)
        ident = json.dumps([os.path.realpath(llm.model_path), st.st_size, st.st_mtime_ns,
                            llm.family, llm.params.get("max_context_len")])
        self.dir = Path(root) / hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(settings: Any, template: ChatTemplate) -> str:
        text = json.dumps([settings, template.prefix, template.postfix])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def find(self, key: str) -> tuple[Path, int] | None:
        """The file for ``key`` and the tokens it holds (marked as just used), or None."""
        for path in self.dir.glob(f"{key}-*{SUFFIX}"):
            try:
                tokens = int(path.name[len(key) + 1:-len(SUFFIX)])
                os.utime(path)
            except (ValueError, OSError):
                continue
            return path, tokens
        return None

    def temp(self, key: str) -> Path:
        return self.dir / f"{key}.{os.getpid()}.tmp"

    def keep(self, temp: Path, key: str, tokens: int) -> None:
        temp.replace(self.dir / f"{key}-{tokens}{SUFFIX}")
        files = sorted(self.dir.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        for old in files[:max(0, len(files) - LIMIT)]:
            old.unlink(missing_ok=True)

    @staticmethod
    def drop(path: Path) -> None:
        log.warning("prompt cache %s cannot be used; it is removed", path.name)
        path.unlink(missing_ok=True)


class PrimedStream:
    """An answer's stream that first saves its system part's prompt cache (see the module):
    iterated, closed and read afterwards as the :class:`rkllm.aio.AsyncStream` it wraps."""

    def __init__(self, llm: LLM, template: ChatTemplate, files: CacheFiles, key: str,
                 part: str, answer: Callable[[], AsyncStream]) -> None:
        self._llm, self._template, self._files, self._key = llm, template, files, key
        self._part = part
        self._answer = answer  # starts the answer's run
        self._stream: AsyncStream | None = None
        self._priming: AsyncStream | None = None
        self.kept_tokens = 0  # the system part's tokens, kept for the answer once saved

    def __aiter__(self) -> PrimedStream:
        return self

    async def __anext__(self) -> str:
        if self._stream is None:
            await self._prime()
            self._stream = self._answer()
        return await self._stream.__anext__()

    async def _prime(self) -> None:
        llm, t = self._llm, self._template
        temp = self._files.temp(self._key)
        ok = False
        llm.set_chat_template(self._part, "", "")
        try:
            self._priming = llm.agenerate(t.prefix, chunked=True, keep_history=True,
                                          max_new_tokens=1, save_prompt_cache=str(temp))
            async for _ in self._priming:
                pass
            ok = self._priming.finish_reason in ("stop", "length") and temp.is_file()
        except RKLLMError as exc:
            log.warning("saving the prompt cache failed: %s", exc)
        except BaseException:  # cancelled (the client left): no file, nothing known
            temp.unlink(missing_ok=True)
            raise
        finally:
            if self._priming is not None:
                await self._priming.aclose()
                self._priming = None
            llm.set_chat_template(self._part, t.prefix, t.postfix)
        llm.clear_kv_cache(keep_system_prompt=ok)
        if ok:
            self.kept_tokens = int(llm.kv_cache_size()[0])
            self._files.keep(temp, self._key, self.kept_tokens)
        else:
            temp.unlink(missing_ok=True)

    async def aclose(self) -> None:
        if self._priming is not None:
            await self._priming.aclose()
        if self._stream is not None:
            await self._stream.aclose()

    @property
    def finish_reason(self) -> str | None:
        return None if self._stream is None else self._stream.finish_reason

    @property
    def perf(self) -> Perf | None:
        return None if self._stream is None else self._stream.perf

    @property
    def n_tokens(self) -> int:
        return 0 if self._stream is None else self._stream.n_tokens
