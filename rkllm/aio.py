"""Async generation: the shim's eventfd in the event loop, no thread per token.

    import rkllm, rkllm.aio

    async def main() -> None:
        with rkllm.LLM("model.rkllm") as llm:
            async for piece in rkllm.aio.agenerate(llm, "Why is the sky blue?"):
                print(piece, end="", flush=True)
            result = await rkllm.aio.acomplete(llm, "Hi")

The runtime's thread only copies tokens into the shim's queue and signals an eventfd; the
loop watches that fd (``loop.add_reader``) and pulls whole batches without blocking. Several
models can stream concurrently in one loop. Cancelling the task, leaving the ``async for``
(``break``), ``aclose()`` or ``async with`` all abort the run and leave the model usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from typing import Any

from rkllm.core import CoreLLM as LLM
from rkllm.stream import Perf, Result, Stream

__all__ = ["AsyncStream", "acomplete", "agenerate"]


# Whose reader is registered on each (event loop, eventfd). A model's streams share its
# eventfd, so a stream finalised late (kept by a traceback, or in a cycle) must not remove the
# reader of a newer stream of the same model.
_readers: weakref.WeakValueDictionary[tuple[int, int], AsyncStream] = (
    weakref.WeakValueDictionary())


def _on_readable(ref: weakref.ReferenceType[AsyncStream], loop: asyncio.AbstractEventLoop,
                 fd: int) -> None:
    """The loop's reader callback. It holds its stream weakly: a registered reader must not
    keep an abandoned stream (``break`` out of ``async for``) alive, or its run never ends."""
    owner = _readers.get((id(loop), fd))
    if owner is None:
        loop.remove_reader(fd)  # nobody waits on this fd any more
        return
    if ref() is not owner:
        # a stale registration (an interrupt can leave one over the current stream's): the
        # fd's current stream gets its reader back
        loop.add_reader(fd, _on_readable, weakref.ref(owner), loop, fd)
    owner._on_readable()


class AsyncStream:
    """The pieces of one generation as an async iterator of ``str`` (see :func:`agenerate`).

    After the loop: :attr:`finish_reason`, :attr:`perf`, :attr:`n_tokens`, like
    :class:`rkllm.Stream`. Iterate it once, in one event loop.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._fd = stream.fileno()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._armed = False  # our reader is registered on the fd
        self._waiter: asyncio.Future[None] | None = None
        self._pending: deque[str] = deque()
        self._ended = False

    # ---- the eventfd ----------------------------------------------------------------------
    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            # nobody is waiting (the consumer is busy elsewhere): stop watching, or a
            # level-triggered fd would spin the loop until the next read
            self._disarm()
        elif not waiter.done():
            waiter.set_result(None)

    def _disarm(self) -> None:
        if self._armed and self._loop is not None:
            self._armed = False
            key = (id(self._loop), self._fd)
            if _readers.get(key) is self:
                del _readers[key]
                self._loop.remove_reader(self._fd)

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("this AsyncStream belongs to another event loop")
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        if not self._armed:
            loop.add_reader(self._fd, _on_readable, weakref.ref(self), loop, self._fd)
            _readers[(id(loop), self._fd)] = self
            self._armed = True
        try:
            await waiter
        finally:
            self._waiter = None

    # ---- iteration ------------------------------------------------------------------------
    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> str:
        pending = self._pending
        while not pending:
            if self._ended:
                raise StopAsyncIteration
            try:
                got = self._stream.read_nowait()
                if got is None:
                    self._finish()
                    raise StopAsyncIteration
                if got:
                    pending.extend(got)
                else:
                    await self._readable()
            except StopAsyncIteration:
                raise
            except BaseException:  # cancelled, Ctrl-C, a runtime error: end the run now
                self._cancel()
                raise
        return pending.popleft()

    def _finish(self) -> None:
        self._ended = True
        self._disarm()

    def _cancel(self) -> None:
        if self._ended:
            return
        # the run first (an interrupt must not leave it going with this stream marked
        # ended); the event loop must not stall on a runtime slow to stop: the model's next
        # call waits for it instead
        self._stream.cancel()
        self._finish()

    async def aclose(self) -> None:
        """Stops the run (if still going); the model is ready for the next one."""
        self._cancel()

    def abort(self) -> None:
        """Asks the runtime to stop; the loop then ends with finish_reason "abort"."""
        self._stream.abort()

    def close(self) -> None:
        """Ends the run from any thread, waiting for the runtime (``Stream.close``): the
        ``async for`` then ends normally with finish_reason "abort". In the loop's own
        thread prefer ``aclose()``, which does not wait."""
        self._stream.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cancel()

    def __del__(self) -> None:
        # ``break`` out of ``async for`` drops the iterator: end the run here
        with contextlib.suppress(Exception):  # e.g. its loop is already closed
            self._cancel()

    # ---- how it ended ---------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._ended

    @property
    def finish_reason(self) -> str | None:
        return self._stream.finish_reason

    @property
    def perf(self) -> Perf | None:
        return self._stream.perf

    @property
    def n_tokens(self) -> int:
        return self._stream.n_tokens


def agenerate(llm: LLM, prompt: str | None = None, *, chunked: bool = False,
              **options: Any) -> AsyncStream:
    """Starts a run on ``llm`` and returns its pieces as an :class:`AsyncStream`. Takes the
    same input and options as :meth:`rkllm.LLM.generate` (and raises the same errors, at
    once: BusyError if the model is already generating)."""
    return AsyncStream(llm.generate(prompt, chunked=chunked, **options))


async def acomplete(llm: LLM, prompt: str | None = None, **options: Any) -> Result:
    """Runs to the end without blocking the loop; returns what :meth:`rkllm.LLM.complete`
    returns (text, finish reason, token ids, perf)."""
    stream: Stream | None = None
    try:  # as CoreLLM.complete: an interrupt at any point after the start ends the run
        stream = llm.start(llm.make_request(prompt, **options), chunked=True, collect=True)
        async for _ in AsyncStream(stream):
            pass
        return stream.result()
    except BaseException:
        if stream is not None:
            stream.cancel()  # the loop must not stall on a runtime slow to stop
        raise
