"""What every route shares: the settings, metrics, model registry and scheduler, the
server's status and its draining (no web framework here: rkllm.serve.app wires the routes)."""

from __future__ import annotations

import asyncio
import time

from rkllm.serve.metrics import Metrics
from rkllm.serve.registry import Registry
from rkllm.serve.scheduler import Scheduler
from rkllm.serve.settings import Settings


class Server:
    """Everything the routes share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.name)
        self.registry = Registry(settings)
        self.scheduler = Scheduler(settings, self.metrics)
        self.started = time.time()
        self.drain_task: asyncio.Task[bool] | None = None
        self.stopped = asyncio.Event()  # set when a drain has finished (the CLI then exits)
        m, s = self.metrics, self.scheduler
        m.gauge("rkllm_queue_depth", "requests waiting for their model",
                lambda: {"": float(s.queue_depth)}, label="")
        m.gauge("rkllm_running", "answers being generated now",
                lambda: {"": float(s.running)}, label="")
        m.gauge("rkllm_models_loaded", "models loaded now",
                lambda: {"": float(len(s.loaded()))}, label="")
        m.gauge("rkllm_draining", "1 while the server drains",
                lambda: {"": float(s.draining)}, label="")

    def status(self) -> str:
        s = self.scheduler
        if s.draining:
            return "draining"
        if s.loading:
            return "loading"
        return "busy" if s.running or s.queue_depth else "ready"

    def start_drain(self) -> asyncio.Task[bool]:
        if self.drain_task is None:
            async def drain() -> bool:
                clean = await self.scheduler.drain(self.settings.grace)
                self.stopped.set()
                return clean
            self.drain_task = asyncio.get_running_loop().create_task(drain())
        return self.drain_task
