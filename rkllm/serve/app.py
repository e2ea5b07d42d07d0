"""The ASGI application: ``create_app(settings)`` wires routes, middleware and the scheduler.

Layers: security.Guard (key, body size) -> access log + metrics + board header -> Starlette
routes (openai_routes, ollama_routes, and here: /health, /metrics, /admin/drain, /).
Every error leaves in the API's own shape (rkllm.serve.errors); no framework default body.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rkllm.serve.errors import APIError, from_exception
from rkllm.serve.responses import error_response, json_response
from rkllm.serve.server import Server
from rkllm.serve.settings import Settings

log = logging.getLogger("rkllm.serve")
STATIC = os.path.join(os.path.dirname(__file__), "static")
KNOWN_ROUTES = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                "/api/chat", "/api/generate", "/api/tags", "/api/ps", "/api/show",
                "/api/embed", "/api/embeddings", "/api/pull", "/api/delete", "/api/version",
                "/health", "/metrics", "/admin/drain", "/")


class AccessLog:
    """One log line and one metrics sample per request; the board's name on every answer."""

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server
        self.board = (server.settings.name or "").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        first_byte: float | None = None

        async def sending(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.board:
                    message["headers"] = [*message.get("headers", []),
                                          (b"x-rkllm-board", self.board)]
            elif first_byte is None:
                first_byte = time.monotonic()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"]
            route = path if path in KNOWN_ROUTES else (
                "/v1/models/{model}" if path.startswith("/v1/models/") else "other")
            took = time.monotonic() - started
            m = self.server.metrics
            m.inc("rkllm_requests_total", route=route, method=scope["method"],
                  status=str(status))
            m.observe("rkllm_request_duration_seconds", took, route=route)
            if self.server.settings.verbose or route not in ("/health", "/metrics"):
                extra = f" first byte {1000 * (first_byte - started):.1f}ms" \
                    if self.server.settings.verbose and first_byte is not None else ""
                log.info("%s %s %s %d %.1fms%s", (scope.get("client") or ("-",))[0],
                         scope["method"], path, status, 1000 * took, extra)


# ---- routes of the server itself ----------------------------------------------------------

def _server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


async def health(request: Request) -> Response:
    server = _server(request)
    s = server.scheduler
    status = server.status()
    body = {"status": status, "queue_depth": s.queue_depth, "running": s.running,
            "name": server.settings.name,
            "models": [{"name": slot.spec.name, "loaded": slot.llm is not None,
                        "loading": slot.loading, "running": slot.running,
                        "waiting": slot.waiting} for slot in s.slots.values()]}
    return json_response(body, 503 if status == "draining" else 200)


async def metrics(request: Request) -> Response:
    return PlainTextResponse(_server(request).metrics.render(),
                             media_type="text/plain; version=0.0.4")


async def admin_drain(request: Request) -> Response:
    server = _server(request)
    if server.settings.read_only:
        raise APIError(403, "state-changing routes are switched off (--read-only)")
    server.start_drain()
    return json_response({"status": "draining", "queue_depth": server.scheduler.queue_depth})


async def root(request: Request) -> Response:
    """Ollama's "is it running" answer, or the chat page for a browser."""
    server = _server(request)
    page = os.path.join(STATIC, "index.html")
    wants_html = "text/html" in request.headers.get("accept", "")
    if server.settings.ui and wants_html and os.path.isfile(page):
        return FileResponse(page, media_type="text/html")
    return PlainTextResponse("Ollama is running")


# ---- errors -------------------------------------------------------------------------------

async def _api_error(request: Request, exc: Exception) -> Response:
    return error_response(request.url.path, from_exception(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: f"no route {request.url.path}",
                405: f"method {request.method} is not allowed on {request.url.path}"}
    err = APIError(exc.status_code, messages.get(exc.status_code, str(exc.detail)),
                   headers=dict(exc.headers or {}))
    return error_response(request.url.path, err)


async def _crash(request: Request, exc: Exception) -> Response:
    log.error("request failed", exc_info=exc)
    return error_response(request.url.path, from_exception(exc))


# ---- the app ------------------------------------------------------------------------------

ANSWERING = ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate")
Endpoint = Callable[[Request], Awaitable[Response]]


class Answering:
    """The routes that answer (POST to ANSWERING) go straight to their endpoint: Starlette's
    router, its exception layers and their wrappers around every write are code an idle
    board runs cold before the first token (about 0.1 ms). Same endpoints, same errors (the
    handlers Starlette would call); everything else goes on to Starlette."""

    def __init__(self, app: ASGIApp, endpoints: dict[str, Endpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) \
            if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - as Starlette's exception handlers do
            response = await (_api_error if isinstance(exc, APIError) else _crash)(request, exc)
        await response(scope, receive, send)


def create_app(settings: Settings, server: Server | None = None) -> ASGIApp:
    """The ASGI app for ``settings`` (models named on the command line are loaded at
    start-up, the first ``max_loaded`` of them)."""
    from rkllm.serve.ollama_routes import OllamaRoutes
    from rkllm.serve.openai_routes import OpenAIRoutes

    srv = server or Server(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for spec in srv.registry.resolve_startup()[:max(0, settings.max_loaded)]:
            async with srv.scheduler.use(spec):
                pass
        try:
            yield
        finally:
            srv.scheduler.abort_all()
            await srv.scheduler.close()

    routes = [*OpenAIRoutes(srv).routes(), *OllamaRoutes(srv).routes(),
              Route("/", root, methods=["GET", "HEAD"]),
              Route("/health", health, methods=["GET", "HEAD"]),
              Route("/metrics", metrics, methods=["GET"]),
              Route("/admin/drain", admin_drain, methods=["POST"])]
    handlers: dict[Any, Any] = {APIError: _api_error, HTTPException: _http_error,
                                Exception: _crash}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.server = srv
    asgi: ASGIApp = Answering(app, {r.path: r.endpoint for r in routes
                                    if isinstance(r, Route) and r.path in ANSWERING})
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        asgi = CORSMiddleware(asgi, allow_origins=settings.cors_origins, allow_methods=["*"],
                              allow_headers=["*"])
    from rkllm.serve.security import Guard

    asgi = Guard(asgi, settings.api_key, settings.max_body)
    return AccessLog(asgi, srv)
