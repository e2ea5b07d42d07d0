"""One NPU, many clients: a FIFO queue per model, loading, unloading, draining.

Each model has a :class:`Slot` with a fair ``asyncio.Lock`` (waiters are served in arrival
order) and a bound on the requests waiting for it; a full queue or a wait past the limit is
refused with 503 and ``Retry-After``, never a hang. Up to ``max_loaded`` models stay loaded;
an idle one is unloaded after its ``keep_alive``, and when another model must be loaded the
least recently used idle one goes first. Loading and unloading run in a worker thread (they
block for seconds on a board); generation itself stays on the event loop (rkllm.aio).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from rkllm.serve.errors import APIError
from rkllm.serve.registry import ModelSpec
from rkllm.serve.settings import Settings

if TYPE_CHECKING:
    from rkllm.llm import LLM
    from rkllm.serve.metrics import Metrics


class Slot:
    """A model the server knows: loaded or not, its queue, what its kv cache holds."""

    def __init__(self, spec: ModelSpec, prompt_cache_dir: str | None = None) -> None:
        self.spec = spec
        self.prompt_cache_dir = prompt_cache_dir  # saved prompt caches (None: not used)
        self.llm: LLM | None = None
        self.loading = False
        self.lock = asyncio.Lock()   # FIFO: asyncio hands the lock to the oldest waiter
        self.waiting = 0
        self.running = False
        self.last_used = 0.0
        self.keep_alive: float = 0.0
        self.expires_at: float | None = None  # wall-clock time of the planned unload
        self.loaded_at = 0.0
        self.load_seconds = 0.0  # time the current request spent loading the model
        self._timer: asyncio.TimerHandle | None = None
        self.load_task: asyncio.Future[None] | None = None
        self.conversation: Any = None  # rkllm.serve.conversation.Conversation, per load

    @property
    def idle(self) -> bool:
        return self.llm is not None and not self.lock.locked() and self.waiting == 0


def busy(message: str, retry_after: int = 1) -> APIError:
    return APIError(503, message, code="server_busy", headers={"Retry-After": str(retry_after)})


def _runtime_for(spec: ModelSpec, settings: Settings) -> str | None:
    """The runtime to load ``spec`` on: as told; the simulator for the demo model; else the
    usual search with the simulator as the fallback of a machine without a runtime."""
    import rkllm
    from rkllm.errors import RuntimeNotFoundError
    from rkllm.hub import demo_model_path

    if settings.runtime:
        return settings.runtime
    if os.environ.get("RKLLM_LIBRARY"):
        return None
    if spec.path == demo_model_path():
        return "sim"
    try:
        rkllm.load_runtime(None)
        return None
    except RuntimeNotFoundError:
        print("rkllm serve: no RKLLM runtime (librkllmrt.so) on this machine; using the "
              "simulated runtime (no NPU)", file=sys.stderr, flush=True)
        return "sim"


DEFAULT_CONTEXT = 4096


def _context_len(path: str) -> int:
    """A conversation needs room: DEFAULT_CONTEXT tokens, or the model's own limit when it is
    smaller (the runtime's default, 512, is too short for a chat; a model's "params" in the
    config set it explicitly)."""
    from rkllm.modelfile import inspect_model

    try:
        limit = inspect_model(path).facts.get("max_context_len")
    except Exception:  # noqa: BLE001 - the loader reports an unreadable file itself
        return DEFAULT_CONTEXT
    value = limit.value if limit is not None else None
    return min(DEFAULT_CONTEXT, value) if isinstance(value, int) and value > 0 \
        else DEFAULT_CONTEXT


class Scheduler:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.slots: dict[str, Slot] = {}
        self.draining = False
        self.stopping = False  # past the grace period: queued requests are refused too
        self._load_lock = asyncio.Lock()
        self._freed = asyncio.Event()  # set whenever a slot is released (eviction waits)

    # ---- what is going on -----------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return sum(s.waiting for s in self.slots.values())

    @property
    def running(self) -> int:
        return sum(1 for s in self.slots.values() if s.running)

    @property
    def loading(self) -> bool:
        return any(s.loading for s in self.slots.values())

    def loaded(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.llm is not None]

    def slot(self, spec: ModelSpec) -> Slot:
        slot = self.slots.get(spec.name)
        if slot is None or slot.spec != spec:
            if slot is not None and slot.llm is not None:  # same name, new file: drop the old
                self._schedule_unload(slot, 0)
            slot = self.slots[spec.name] = Slot(spec, self.settings.prompt_cache_dir)
        return slot

    # ---- a request's turn -----------------------------------------------------------------
    @asynccontextmanager
    async def use(self, spec: ModelSpec, keep_alive: float | None = None
                  ) -> AsyncIterator[Slot]:
        """Waits for ``spec``'s turn (FIFO), loads it if needed, and holds it."""
        if self.draining:
            raise busy("this server is draining (shutting down); send the request elsewhere",
                       5)
        slot = self.slot(spec)
        if slot.lock.locked() and slot.waiting >= self.settings.queue_size:
            self.metrics.inc("rkllm_rejected_requests_total", model=spec.name, reason="full")
            raise busy(f"the queue for {spec.name} is full ({slot.waiting} requests waiting); "
                       f"retry later")
        slot.waiting += 1
        started = time.monotonic()
        try:
            if slot.lock.locked() or slot.waiting > 1:
                await asyncio.wait_for(slot.lock.acquire(), self.settings.queue_timeout)
            else:  # free, nobody before us: taken at once (wait_for would start a task)
                await slot.lock.acquire()
        except TimeoutError:
            self.metrics.inc("rkllm_rejected_requests_total", model=spec.name, reason="timeout")
            raise busy(f"waited {self.settings.queue_timeout:g}s for {spec.name} without "
                       f"getting a turn; retry later") from None
        finally:
            slot.waiting -= 1
        if self.stopping:
            slot.lock.release()
            raise busy("this server is shutting down; send the request elsewhere", 5)
        try:
            self.metrics.observe("rkllm_queue_wait_seconds", time.monotonic() - started,
                                 model=spec.name)
            self._cancel_unload(slot)
            slot.load_seconds = 0.0
            if slot.llm is None:
                begun = time.monotonic()
                await self._load(slot, started)
                slot.load_seconds = time.monotonic() - begun
            slot.running = True
            yield slot
        finally:
            slot.running = False
            slot.last_used = time.monotonic()
            keep = keep_alive if keep_alive is not None else (
                spec.keep_alive if spec.keep_alive is not None else self.settings.keep_alive)
            if slot.llm is not None:
                self._schedule_unload(slot, keep)
            slot.lock.release()
            self._freed.set()

    # ---- loading and unloading ------------------------------------------------------------
    async def _load(self, slot: Slot, started: float) -> None:
        async with self._load_lock:
            while len(self.loaded()) >= max(1, self.settings.max_loaded):
                victims = sorted((s for s in self.loaded() if s.idle), key=lambda s: s.last_used)
                if victims:
                    await self.unload(victims[0], "evicted")
                    continue
                left = self.settings.queue_timeout - (time.monotonic() - started)
                if left <= 0:
                    raise busy(f"every loaded model is busy; {slot.spec.name} cannot be "
                               f"loaded now (max_loaded={self.settings.max_loaded})")
                self._freed.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), left)
            if slot.load_task is None:
                slot.load_task = asyncio.ensure_future(self._open_into(slot))
                slot.load_task.add_done_callback(lambda t: t.cancelled() or t.exception())
            # a request that gives up while its model loads leaves the load running: the
            # model is kept (never leaked half-loaded) for the next request
            await asyncio.shield(slot.load_task)

    async def _open_into(self, slot: Slot) -> None:
        slot.loading = True
        try:
            slot.llm = await asyncio.to_thread(self._open, slot.spec)
        finally:
            slot.loading = False
            slot.load_task = None
        slot.loaded_at = time.time()
        slot.conversation = None
        self.metrics.inc("rkllm_model_loads_total", model=slot.spec.name)
        if not slot.lock.locked():  # its request went away: idle from now on
            self._schedule_unload(slot, self.settings.keep_alive)

    def _open(self, spec: ModelSpec) -> LLM:
        from rkllm.llm import LLM

        params = {"skip_special_token": True,  # special tokens never leak
                  "max_context_len": _context_len(spec.path), **spec.params}
        return LLM(spec.path, runtime=_runtime_for(spec, self.settings), params=params)

    async def unload(self, slot: Slot, reason: str) -> None:
        self._cancel_unload(slot)
        llm, slot.llm, slot.conversation = slot.llm, None, None
        slot.expires_at = None
        if llm is not None:
            await asyncio.to_thread(llm.close)
            self.metrics.inc("rkllm_model_unloads_total", model=slot.spec.name, reason=reason)

    def _schedule_unload(self, slot: Slot, seconds: float) -> None:
        self._cancel_unload(slot)
        slot.keep_alive = seconds
        if seconds < 0:
            return  # kept until evicted or the server stops
        slot.expires_at = time.time() + seconds
        loop = asyncio.get_running_loop()
        slot._timer = loop.call_later(seconds, lambda: loop.create_task(self._expire(slot)))

    def _cancel_unload(self, slot: Slot) -> None:
        if slot._timer is not None:
            slot._timer.cancel()
            slot._timer = None
        slot.expires_at = None

    async def _expire(self, slot: Slot) -> None:
        slot._timer = None
        if slot.idle:
            await self.unload(slot, "keep_alive")

    # ---- draining and stopping ------------------------------------------------------------
    async def drain(self, grace: float) -> bool:
        """Refuses new requests, lets running and queued ones finish for up to ``grace``
        seconds, then aborts what is left. True if nothing had to be aborted."""
        self.draining = True
        deadline = time.monotonic() + grace
        while any(s.lock.locked() or s.waiting for s in self.slots.values()):
            if time.monotonic() >= deadline:
                self.abort_all()
                return False
            self._freed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), max(0.01, deadline - time.monotonic()))
        return True

    def abort_all(self) -> None:
        self.stopping = True
        for s in self.slots.values():
            if s.running and s.llm is not None:
                with suppress(Exception):
                    s.llm.abort()

    async def close(self) -> None:
        for s in list(self.slots.values()):
            await self.unload(s, "shutdown")
