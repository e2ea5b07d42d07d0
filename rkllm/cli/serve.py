"""``rkllm serve [MODEL ...]``: the OpenAI- and Ollama-compatible server (rkllm.serve).

Listens on 127.0.0.1:8080 unless told otherwise; another address needs ``--api-key`` (or
RKLLM_API_KEY), or ``--no-auth`` said explicitly. SIGINT / SIGTERM drain: /health says
"draining" at once, running and queued answers get ``--grace`` seconds, then the rest is
aborted and the process exits 0; a second signal aborts at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any


def register(sub: Any) -> None:
    from rkllm.serve.settings import DEFAULT_PORT, DEFAULT_QUEUE_SIZE

    p = sub.add_parser(
        "serve", help="serve models over HTTP (OpenAI and Ollama APIs)",
        description="Serve models over HTTP with OpenAI's API (/v1/...) and Ollama's "
                    "(/api/...). MODEL: a .rkllm path, REPO[:FILE] or 'demo'; requests may "
                    "also name cached models and the config file's aliases. See docs/serve.md.")
    p.add_argument("models", metavar="MODEL", nargs="*", help="models to serve (loaded at start)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; Ollama's clients expect 11434)")
    p.add_argument("--config", metavar="FILE", help="JSON (or TOML) file: aliases, limits")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: RKLLM_API_KEY)")
    p.add_argument("--no-auth", action="store_true",
                   help="allow a non-loopback address without an API key")
    p.add_argument("--no-ui", action="store_true", help="no chat page at /")
    p.add_argument("--name", help="this board's name (X-Rkllm-Board header, metrics label)")
    p.add_argument("--runtime", metavar="LIB", help="the runtime, as for `rkllm run`")
    p.add_argument("--max-loaded", type=int, default=None, help="models loaded at once (1)")
    p.add_argument("--queue-size", type=int, default=None,
                   help=f"requests that may wait per model ({DEFAULT_QUEUE_SIZE})")
    p.add_argument("--queue-timeout", type=float, default=None,
                   help="seconds a request may wait for its turn (600)")
    p.add_argument("--keep-alive", default=None,
                   help="idle time before a model is unloaded: 300, 5m, -1 = never (5m)")
    p.add_argument("--grace", type=float, default=None,
                   help="seconds answers get to finish on SIGTERM (10)")
    p.add_argument("--max-body", type=int, default=None, help="largest request body in bytes")
    p.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                   help="a folder whose .rkllm files requests may name by path")
    p.add_argument("--read-only", action="store_true",
                   help="switch off pull, delete, load/unload and drain routes")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="allow browser requests from ORIGIN (CORS is off by default)")
    p.add_argument("--prompt-cache", metavar="DIR", default=None,
                   help="save the runtime's prompt caches of system prompts here, and start "
                        "conversations from them (1.2.1+; off by default: see docs/serve.md)")
    p.add_argument("--verbose", action="store_true", help="timings in the request log")
    p.set_defaults(func=cmd_serve)


def settings_from(args: argparse.Namespace) -> Any:
    from rkllm.serve.settings import Settings, load_config, parse_duration

    settings = Settings()
    if args.config:
        load_config(args.config, settings)
    settings.models = list(args.models)
    settings.host, settings.port = args.host, args.port
    settings.api_key = args.api_key or os.environ.get("RKLLM_API_KEY") or None
    settings.no_auth = args.no_auth
    settings.ui = not args.no_ui
    settings.verbose = args.verbose
    settings.runtime = args.runtime
    settings.read_only = settings.read_only or args.read_only
    settings.name = args.name or settings.name
    for opt in ("max_loaded", "queue_size", "queue_timeout", "grace", "max_body"):
        if getattr(args, opt) is not None:
            setattr(settings, opt, getattr(args, opt))
    if args.keep_alive is not None:
        settings.keep_alive = parse_duration(args.keep_alive)
    settings.allowed_dirs += [os.path.realpath(os.path.expanduser(d)) for d in args.allow_dir]
    settings.cors_origins += args.cors
    if args.prompt_cache:
        settings.prompt_cache_dir = os.path.expanduser(args.prompt_cache)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from rkllm.serve import MISSING

    try:
        import uvicorn

        from rkllm.serve import Server, create_app
    except ImportError as exc:
        print(f"rkllm: {MISSING if MISSING not in str(exc) else ''}{exc}", file=sys.stderr)
        return 1
    from rkllm.serve.security import check_bind

    settings = settings_from(args)
    check_bind(settings.host, settings.api_key, settings.no_auth)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if settings.verbose:  # a timing line per answer (rkllm.serve.engine)
        logging.getLogger("rkllm.serve").setLevel(logging.DEBUG)
    server = Server(settings)
    app = create_app(settings, server)
    # loop/http "auto": uvloop and httptools where installed (the server extra): ~0.2 ms
    # less time to first token than asyncio's loop and h11; the access log is our own
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            timeout_graceful_shutdown=1, lifespan="on", loop="auto",
                            http="auto", access_log=False)
    runner = _Draining(config, server)
    runner.run()
    return 0 if runner.started else 1


class _Draining:
    """uvicorn.Server whose first SIGINT/SIGTERM drains (still answering /health) and whose
    second aborts at once."""

    def __init__(self, config: Any, server: Any) -> None:
        import uvicorn

        outer = self
        self.server = server
        self.signals = 0

        class Runner(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                outer.on_signal(self)

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                if self.started:
                    outer.announce()
                    self._drained = asyncio.ensure_future(outer.exit_when_drained(self))

        self.runner = Runner(config)

    @property
    def started(self) -> bool:
        return bool(self.runner.started)

    def announce(self) -> None:
        s = self.server.settings
        names = ", ".join(spec.name for spec in self.server.registry.served) or \
            "none named (requests may use cached models and 'demo')"
        key = "API key required" if s.api_key else "no API key"
        print(f"rkllm serve: listening on http://{s.host}:{s.port} (OpenAI API at /v1, Ollama "
              f"API at /api; {key}); models: {names}", file=sys.stderr, flush=True)

    async def exit_when_drained(self, runner: Any) -> None:
        """A drain (signal or POST /admin/drain) ends the process once it is over."""
        await self.server.stopped.wait()
        runner.should_exit = True

    def on_signal(self, runner: Any) -> None:
        self.signals += 1
        if self.signals > 1 or not runner.started:
            print("rkllm serve: stopping now", file=sys.stderr, flush=True)
            self.server.scheduler.abort_all()
            runner.should_exit = True
            return
        print(f"rkllm serve: draining (up to {self.server.settings.grace:g}s; a second "
              f"signal stops at once)", file=sys.stderr, flush=True)
        asyncio.get_event_loop().call_soon_threadsafe(self.server.start_drain)

    def run(self) -> None:
        self.runner.run()
