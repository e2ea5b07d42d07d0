"""Responses that stay in touch with the client: a disconnect cancels the work at once.

A route returns :class:`Live` with a coroutine that writes through :class:`Out`. While it runs,
a watcher reads the connection; when the client goes away the coroutine is cancelled, which
aborts the run inside ``rkllm.aio`` within one token and releases the model for the next
request. Errors raised before anything was sent become an error response in the API's shape;
after a stream has started, one error event ends it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from rkllm.serve.errors import APIError, error_body, from_exception

log = logging.getLogger("rkllm.serve")
T = TypeVar("T")

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


# a stream's headers: proxies must neither cache nor buffer it
_HEADERS = {SSE: [(b"content-type", SSE.encode()), (b"cache-control", b"no-cache"),
                  (b"x-accel-buffering", b"no")]}


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(json_bytes(data), status, headers, media_type="application/json")


def error_response(path: str, err: APIError) -> Response:
    return json_response(error_body(path, err), err.status, err.headers)


class Out:
    """Where a :class:`Live` response writes."""

    def __init__(self, send: Send, path: str) -> None:
        self._send = send
        self.path = path
        self.started = False
        self.media_type = "application/json"

    async def start(self, media_type: str, status: int = 200,
                    headers: dict[str, str] | None = None) -> None:
        self.started = True
        self.media_type = media_type
        raw = list(_HEADERS.get(media_type) or [(b"content-type", media_type.encode())])
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def write(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def json(self, data: Any, status: int = 200) -> None:
        await self.start("application/json", status)
        await self.end(json_bytes(data))

    async def error(self, err: APIError) -> None:
        body = error_body(self.path, err)
        if not self.started:
            await self.start("application/json", err.status, err.headers)
            await self.end(json_bytes(body))
        elif self.media_type == SSE:
            await self.end(b"data: " + json_bytes(body) + b"\n\n")
        else:
            await self.end(json_bytes(body) + b"\n")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Live:
    """An ASGI response produced by ``work(out)``, cancelled when the client disconnects.

    ``work`` runs in the request's own task (no task to start, no loop turn before the run
    starts: the time to first token); a watcher task reads the connection and cancels it."""

    def __init__(self, path: str, work: Callable[[Out], Awaitable[None]],
                 on_disconnect: Callable[[], None] | None = None) -> None:
        self.path = path
        self.work = work
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        working = True
        gone = False

        async def watch() -> None:
            nonlocal gone
            await _disconnected(receive)
            if working:  # the cancellation lands inside _run (where the task waits)
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        watcher.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            await self._run(Out(send, self.path))
        except asyncio.CancelledError:
            if not gone:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+: ours, not the server's
            if uncancel is not None:
                uncancel()
        finally:
            working = False
            watcher.cancel()
        if gone and self.on_disconnect is not None:
            self.on_disconnect()

    async def _run(self, out: Out) -> None:
        try:
            await self.work(out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure gets the API's error shape
            err = from_exception(exc)
            if err.status >= 500 and not isinstance(exc, APIError):
                log.error("request failed", exc_info=exc)
            with suppress(OSError, RuntimeError):
                await out.error(err)


async def first_with_keepalive(items: AsyncIterator[T], interval: float,
                               idle: Callable[[], Awaitable[None]]) -> AsyncIterator[T]:
    """``items``, calling ``idle()`` every ``interval`` seconds until the first one arrives
    (an SSE comment while a long prompt is prefilled, so proxies keep the stream open).

    The first item is awaited in the caller's task (it is often there already: no task, no
    loop turn); only a prefill longer than ``interval`` starts a task for the comments, and
    it is stopped (never mid-write: a write is one call) before the first item goes out."""
    loop = asyncio.get_running_loop()
    pinger: asyncio.Task[None] | None = None

    def begin() -> None:
        nonlocal pinger
        pinger = loop.create_task(_every(interval, idle))

    timer = loop.call_later(interval, begin)
    it = items.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        return
    finally:
        timer.cancel()
        if pinger is not None:
            _stop(pinger)
    yield first
    async for value in it:
        yield value


async def _every(interval: float, call: Callable[[], Awaitable[None]]) -> None:
    while True:
        await call()
        await asyncio.sleep(interval)


def _stop(task: asyncio.Task[None]) -> None:
    """Cancels ``task``; a failure it already had is raised here."""
    failed = task.exception() if task.done() and not task.cancelled() else None
    task.cancel()
    if failed is not None:
        raise failed
