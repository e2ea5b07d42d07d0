"""`rkllm serve` started for real, as a subprocess on a free 127.0.0.1 port, for the tests.

    with ServeProcess(["demo"], tmp_path, env={"RKLLM_SIM_TOKEN_US": "20000"}) as srv:
        httpx.get(srv.url + "/health")
        srv.trace()   # the simulator's RKLLM_SIM_TRACE lines (dicts)

The simulator writes its trace to ``tmp/trace.jsonl``; the server's stderr goes to
``tmp/serve.log`` (shown when start-up fails).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    def __init__(self, args: list[str], tmp: Path, *, env: dict[str, str] | None = None,
                 wait: bool = True) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.trace_path = tmp / "trace.jsonl"
        self.log_path = tmp / "serve.log"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RKLLM_SIM_", "RKLLM_API_KEY"))
                    and k not in ("RKLLM_LIBRARY", "RKLLM_ABI")}
        full_env.update({"RKLLM_SIM_QUIET": "1", "RKLLM_SIM_TRACE": str(self.trace_path),
                         "HF_HUB_DISABLE_TELEMETRY": "1"})
        full_env.setdefault("HF_HOME", str(tmp / "hf"))
        full_env.update(env or {})
        self.env = full_env
        self.args = args
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rkllm.cli", "serve", *args, "--port", str(self.port)],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rkllm serve exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            try:
                httpx.get(self.url + "/health", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"rkllm serve did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def trace(self, call: str | None = None) -> list[dict[str, Any]]:
        if not self.trace_path.exists():
            return []
        lines = [json.loads(line) for line in self.trace_path.read_text().splitlines()
                 if line.strip()]
        return [e for e in lines if call is None or e["call"] == call]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
