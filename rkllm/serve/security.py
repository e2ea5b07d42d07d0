"""Safe by default: loopback unless told, API key, bounded bodies (pure ASGI middleware).

- Binding an address other than loopback needs an API key, or ``--no-auth`` said explicitly
  (:func:`check_bind`).
- With a key, every route but the open ones (``/``, ``/health``, the chat page's files)
  needs ``Authorization: Bearer KEY`` (compared in constant time); 401 otherwise.
- A body larger than ``max_body`` is refused with 413 from its ``Content-Length`` before any
  of it is read, and a body without one (chunked) is counted as it arrives and cut off there.
Model references are checked in rkllm.serve.registry.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rkllm.errors import ParamError
from rkllm.serve.errors import APIError, error_bytes

OPEN_PATHS = ("/", "/health", "/favicon.ico")
OPEN_PREFIXES = ("/static/", "/ui/")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, no_auth: bool) -> None:
    if is_loopback(host) or api_key or no_auth:
        return
    raise ParamError(f"refusing to listen on {host} without an API key: anyone who can reach "
                     f"it could use the NPU. Give --api-key KEY (or RKLLM_API_KEY), or "
                     f"--no-auth if that is really what you want")


async def send_error(send: Send, path: str, err: APIError) -> None:
    body = error_bytes(path, err)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """API key and body size, before anything else runs."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body: int) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body

    def _authorised(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if self.key is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        headers = dict(scope["headers"])
        auth: bytes = headers.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else \
            headers.get(b"x-api-key", b"")
        return hmac.compare_digest(token, self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not self._authorised(scope):
            await send_error(send, path, APIError(
                401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                await send_error(send, path, APIError(400, "bad Content-Length header"))
                return
            if too_big:
                await send_error(send, path, _too_large(self.max_body))
                return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        return counted


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than the server accepts ({limit} bytes; "
                         f"--max-body raises it)", code="request_too_large")
