"""What the server is told: command-line options and the ``--config`` file, in one dataclass.

The config file (JSON, or TOML on Python 3.11+) names models the way an Ollama Modelfile does::

    {
      "models": {
        "assistant": {"model": "demo", "system": "You answer briefly.",
                      "options": {"temperature": 0.2}, "params": {"max_context_len": 4096},
                      "template": "chatml", "keep_alive": "10m"}
      },
      "allowed_dirs": ["/srv/models"],
      "max_loaded": 2, "queue_size": 16, "queue_timeout": 600, "keep_alive": "5m",
      "sse_keepalive": 5, "prompt_cache": "~/.cache/rkllm/prompt-cache"
    }

``params`` are load-time parameters (``rkllm.LLM(**params)``); ``options`` are per-request
defaults (``temperature``, ``top_p``, ``top_k``, ``max_tokens``, penalties) a request may override.
``prompt_cache`` (``--prompt-cache DIR``) is where the runtime's saved prompt caches of system
prompts go (rkllm.serve.prompt_cache); without it none are saved.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from rkllm.errors import ParamError

DEFAULT_PORT = 8080
DEFAULT_KEEP_ALIVE = 300.0
DEFAULT_QUEUE_SIZE = 16


@dataclass(frozen=True)
class Alias:
    """A model name from the config file: a reference plus its settings."""

    name: str
    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    keep_alive: float | None = None


@dataclass
class Settings:
    models: list[str] = field(default_factory=list)   # references given on the command line
    aliases: dict[str, Alias] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    no_auth: bool = False
    ui: bool = True
    verbose: bool = False
    name: str | None = None           # this board's name (fleet): header and metrics label
    runtime: str | None = None        # as `rkllm run --runtime`
    allowed_dirs: list[str] = field(default_factory=list)
    read_only: bool = False           # no pull / delete / load-unload routes
    max_loaded: int = 1
    queue_size: int = DEFAULT_QUEUE_SIZE   # waiting requests per model (the running one aside)
    queue_timeout: float = 600.0      # seconds a request may wait for its turn
    keep_alive: float = DEFAULT_KEEP_ALIVE  # idle seconds before a model is unloaded (<0: never)
    grace: float = 10.0               # seconds running + queued answers get on SIGTERM
    max_body: int = 4 * 1024 * 1024   # bytes of a request body
    keepalive_interval: float = 5.0   # seconds of silence before an SSE comment
    cors_origins: list[str] = field(default_factory=list)
    default_params: dict[str, Any] = field(default_factory=dict)  # load params for every model
    prompt_cache_dir: str | None = None  # saved prompt caches of system prompts (None: off)


def parse_duration(value: Any, what: str = "keep_alive") -> float:
    """Ollama's durations: seconds as a number, or "5m", "1h", "30s", "-1" (never)."""
    if isinstance(value, bool):
        raise ParamError(f"{what} must be a duration, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
        if m:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
            return float(m.group(1)) * scale
    raise ParamError(f"{what} must be a number of seconds or a duration like '5m', "
                     f"got {value!r}")


_TOP_KEYS = {"models", "allowed_dirs", "max_loaded", "queue_size", "queue_timeout",
             "keep_alive", "grace", "max_body", "cors_origins", "name", "read_only",
             "params", "sse_keepalive", "prompt_cache"}
_ALIAS_KEYS = {"model", "system", "options", "params", "template", "keep_alive"}


def _read(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".toml"):
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ParamError(f"{path}: TOML config files need Python 3.11+; use JSON") from None
        return tomllib.loads(data.decode())
    try:
        loaded = json.loads(data)
    except ValueError as exc:
        raise ParamError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise ParamError(f"{path}: the config must be an object")
    return loaded


def load_config(path: str, settings: Settings) -> Settings:
    """Applies the config file at ``path`` to ``settings`` (command-line values set later win)."""
    cfg = _read(path)
    unknown = set(cfg) - _TOP_KEYS
    if unknown:
        raise ParamError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_TOP_KEYS))})")
    for name, body in (cfg.get("models") or {}).items():
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise ParamError(f"{path}: models.{name} needs a \"model\" reference")
        bad = set(body) - _ALIAS_KEYS
        if bad:
            raise ParamError(f"{path}: models.{name}: unknown key(s) {', '.join(sorted(bad))}")
        keep = body.get("keep_alive")
        settings.aliases[name] = Alias(
            name, body["model"], body.get("system"), dict(body.get("options") or {}),
            dict(body.get("params") or {}), body.get("template"),
            None if keep is None else parse_duration(keep))
    for key in ("max_loaded", "queue_size", "max_body", "name", "read_only"):
        if key in cfg:
            setattr(settings, key, cfg[key])
    for key in ("queue_timeout", "grace"):
        if key in cfg:
            setattr(settings, key, parse_duration(cfg[key], key))
    if "sse_keepalive" in cfg:
        settings.keepalive_interval = parse_duration(cfg["sse_keepalive"], "sse_keepalive")
    if "keep_alive" in cfg:
        settings.keep_alive = parse_duration(cfg["keep_alive"])
    settings.allowed_dirs += [os.path.realpath(os.path.expanduser(d))
                              for d in cfg.get("allowed_dirs") or []]
    settings.cors_origins += list(cfg.get("cors_origins") or [])
    settings.default_params.update(cfg.get("params") or {})
    if cfg.get("prompt_cache"):
        settings.prompt_cache_dir = os.path.expanduser(str(cfg["prompt_cache"]))
    return settings
