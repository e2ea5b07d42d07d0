"""``rkllm serve``: the board as an OpenAI- and Ollama-compatible HTTP server.

    from rkllm.serve import Settings, create_app
    app = create_app(Settings(models=["demo"]))   # any ASGI server runs it (uvicorn)

Needs the ``server`` extra: ``pip install 'rkllm-cffi[server]'``; importing this package
does not (rkllm.serve.settings is plain Python), the app does. See docs/serve.md.
"""

from __future__ import annotations

from typing import Any

from rkllm.serve.settings import DEFAULT_PORT, Settings, load_config

MISSING = ("rkllm serve needs the server extra (Starlette/FastAPI and uvicorn): "
           "pip install 'rkllm-cffi[server]'")


def __getattr__(name: str) -> Any:
    if name in ("Server", "create_app"):
        try:
            from rkllm.serve import app
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in ("starlette", "uvicorn", "anyio"):
                raise ImportError(f"{MISSING} ({exc})") from exc
            raise
        return getattr(app, name)
    raise AttributeError(f"module 'rkllm.serve' has no attribute {name!r}")


__all__ = ["DEFAULT_PORT", "MISSING", "Server", "Settings", "create_app", "load_config"]
