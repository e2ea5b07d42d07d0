"""Errors in each API's own shape, decided by the route family of the request path.

OpenAI routes (``/v1/...``) answer ``{"error": {"message", "type", "param", "code"}}``;
everything else answers Ollama's ``{"error": "..."}``. Routes raise :class:`APIError`; the
app turns it (and framework errors: 404, 405, bad JSON, crashes) into one of these bodies.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rkllm.errors import (
    BusyError,
    GenerationError,
    IntegrityError,
    ModelLoadError,
    ModelNotFoundError,
    ParamError,
    RKLLMError,
)

# OpenAI's error "type" per HTTP status (what its clients map to exception classes)
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                409: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
                503: "server_error"}


class APIError(Exception):
    """A request that cannot be answered: HTTP ``status`` and a message naming the problem.
    ``param``/``code`` fill OpenAI's fields; ``headers`` go on the response
    (``Retry-After``)."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def is_openai(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def error_body(path: str, err: APIError) -> dict[str, Any]:
    if is_openai(path):
        return {"error": {"message": err.message,
                          "type": OPENAI_TYPES.get(err.status, "server_error"),
                          "param": err.param, "code": err.code}}
    return {"error": err.message}


def error_bytes(path: str, err: APIError) -> bytes:
    return json.dumps(error_body(path, err), ensure_ascii=False).encode()


# the package's names for request fields that OpenAI's API names otherwise
_REQUEST_NAMES = {"max_new_tokens": "max_tokens"}


def _param_named(message: str) -> str | None:
    """The parameter a package error names first ("top_p must be ...", "messages[2]: ...")
    as the request names it: OpenAI's ``param``."""
    m = re.match(r"([a-z][a-z_]*)(?:\[\d+\])?(?::| must | is | has )", message)
    return None if m is None else _REQUEST_NAMES.get(m.group(1), m.group(1))


def from_exception(exc: BaseException) -> APIError:
    """The package's exceptions -> an APIError with the right status."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ParamError):
        return APIError(400, str(exc), param=_param_named(str(exc)), code="invalid_value")
    if isinstance(exc, (ModelLoadError, IntegrityError)):
        return APIError(500, f"the model failed to load: {exc}", code="model_load_failed")
    if isinstance(exc, BusyError):  # the scheduler prevents it; a bug if seen
        return APIError(503, str(exc), code="busy", headers={"Retry-After": "1"})
    if isinstance(exc, GenerationError):
        return APIError(500, f"generation failed: {exc} (a prompt longer than the model's "
                             f"context fails this way)", code="generation_failed")
    if isinstance(exc, RKLLMError):
        return APIError(500, str(exc), code="runtime_error")
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
