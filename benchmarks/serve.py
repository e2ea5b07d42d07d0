#!/usr/bin/env python3
"""What `rkllm serve` adds over the in-process API, on the simulated runtime.

    python benchmarks/serve.py [--quick] [--only SECTION ...] [--json FILE]

Sections (issue 13):
  ttft      time to first token and per-token time, in-process (rkllm.aio) vs through the
            server's streaming OpenAI API, at full rate and at 30 ms/token, 1 and 8 clients
  turns     prompt tokens prefilled per turn over a 10-turn chat (the runtime's own count)
  system    a new conversation under a long system prompt: prefilled in full, the system
            prompt kept in the kv cache, from its saved prompt cache (--prompt-cache)
  abort     from a client dropping its stream to rkllm_abort (simulator trace), at 30 ms/token
  rss       the server's resident memory after 100 ... 10,000 requests (--quick: 1,000)
The server runs as a subprocess (`python -m rkllm.cli serve demo`) on 127.0.0.1.

The server's times are taken by a lean client: one keep-alive socket, the request written
raw, the chunked SSE stream read and split by hand; a token's time is when the bytes of its
event arrive. The in-process figure has no client at all, so a client library's own work
(httpx takes about 1 ms to build a request and parse a streamed response) would count as the
server's; the ttft rows also give the time through httpx, for comparison. The simulator's
call trace (RKLLM_SIM_TRACE: a file write per call) is on only where it is read (abort).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

FAMILY = "1.3.0"
MESSAGES = [{"role": "user", "content": "Tell me about the river and the old stone bridge."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLIENT = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=32))


class Server:
    def __init__(self, tmp: Path, token_us: int, ignore_eos: bool = True,
                 trace: bool = False, args: tuple[str, ...] = (),
                 env_extra: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.trace = tmp / f"trace-{self.port}.jsonl"
        env = {k: v for k, v in os.environ.items() if k != "RKLLM_SIM_TRACE"}
        env.update({"RKLLM_SIM_QUIET": "1", "RKLLM_SIM_IGNORE_EOS": "1",
                    "RKLLM_SIM_TOKEN_US": str(token_us)})
        if trace:
            env["RKLLM_SIM_TRACE"] = str(self.trace)
        if not ignore_eos:
            del env["RKLLM_SIM_IGNORE_EOS"]
        env.update(env_extra or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rkllm.cli", "serve", "demo", "--runtime", f"sim:{FAMILY}",
             "--port", str(self.port), "--queue-size", "64", *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                httpx.get(self.url + "/health", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("rkllm serve did not start")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _request(tokens: int) -> dict[str, Any]:
    return {"model": "demo", "messages": MESSAGES, "max_tokens": tokens, "stream": True,
            "temperature": 0}


def _is_token(event: bytes) -> bool:
    """An SSE event carrying answer text (not the role chunk, not the final ones)."""
    return event.startswith(b"data: {") and b'"content":"' in event and \
        b'"content":""' not in event


class LeanClient:
    """HTTP/1.1 by hand on one keep-alive connection: no client library's parsing counted
    (see the module's docstring)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def stream_times(self, tokens: int) -> tuple[float, float]:
        """As :func:`httpx_stream_times`."""
        body = json.dumps(_request(tokens)).encode()
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                   % len(body)) + body
        stamps = []
        buf = events = b""
        head = None
        started = time.perf_counter()
        self.sock.sendall(request)
        while True:
            data = self.sock.recv(1 << 16)
            now = time.perf_counter()
            if not data:
                raise RuntimeError("the server closed the connection")
            buf += data
            if head is None:
                if b"\r\n\r\n" not in buf:
                    continue
                head, buf = buf.split(b"\r\n\r\n", 1)
                if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
                    raise RuntimeError(f"unexpected answer: {head!r}")
            ended = False
            while (eol := buf.find(b"\r\n")) >= 0:  # whole chunks: size, data, CRLF
                size = int(buf[:eol], 16)
                if len(buf) < eol + size + 4:
                    break
                events += buf[eol + 2:eol + 2 + size]
                buf = buf[eol + size + 4:]
                if size == 0:
                    ended = True
                    break
            *complete, events = events.split(b"\n\n")
            stamps += [now for event in complete if _is_token(event)]
            if ended:
                return stamps[0] - started, stamps[-1] - stamps[0]


def httpx_stream_times(url: str, tokens: int) -> tuple[float, float]:
    """(time to first token, time from it to the last) of one streamed chat answer
    (the simulator ignores end-of-text here, so it has exactly ``tokens`` tokens)."""
    stamps = []
    started = time.perf_counter()
    with CLIENT.stream("POST", url + "/v1/chat/completions", json=_request(tokens)) as r:
        for line in r.iter_lines():
            if _is_token(line.encode()):
                stamps.append(time.perf_counter())
    return stamps[0] - started, stamps[-1] - stamps[0]


@contextlib.contextmanager
def in_process(token_us: int) -> Iterator[Callable[[int], tuple[float, float]]]:
    """The baseline: ``once(tokens)`` times one ``agenerate`` on a model in this process
    (as :func:`httpx_stream_times`)."""
    os.environ["RKLLM_SIM_TOKEN_US"] = str(token_us)
    os.environ["RKLLM_SIM_IGNORE_EOS"] = "1"
    import rkllm

    with rkllm.LLM(rkllm.sim.demo_model_path(), runtime=f"sim:{FAMILY}", max_context_len=4096,
                   skip_special_token=True, top_k=1) as llm:
        async def timed(tokens: int) -> tuple[float, float]:
            stamps = []
            started = time.perf_counter()
            async for _ in llm.agenerate(MESSAGES[0]["content"], max_new_tokens=tokens):
                stamps.append(time.perf_counter())
            return stamps[0] - started, stamps[-1] - stamps[0]

        yield lambda tokens: asyncio.run(timed(tokens))


def concurrent(port: int, clients: int, tokens: int) -> list[tuple[float, float]]:
    results: list[tuple[float, float]] = []

    def one() -> None:
        client = LeanClient(port)
        try:
            results.append(client.stream_times(tokens))
        finally:
            client.close()

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 3)


GAP = 0.01  # seconds between two timed runs
# At full rate the time to first token is timed on short answers: a long one keeps the
# simulated runtime's thread busy on one of this machine's 2 cores and the server's loop on
# the other, so the client waits for a core to read its first token (about 0.4 ms more with
# 2000 tokens than with 8, measured); the in-process consumer is the loop itself.
TTFT_TOKENS = 8


def section_ttft(tmp: Path, quick: bool) -> list[dict[str, Any]]:
    """In-process and server runs alternate, so that both see the same machine load, each
    :data:`GAP` after the last one ended (no run pays for the end of the one before it: the
    server's request log line, say, or the test process's own cleanup)."""
    rows = []
    for token_us, tokens in ((0, 2000 if not quick else 500), (30000, 20 if not quick else 8)):
        reps = 10 if quick else 30
        first_tokens = TTFT_TOKENS if token_us == 0 else tokens
        srv = Server(tmp, token_us)
        client = LeanClient(srv.port)
        local, one, through_httpx = [], [], []  # (first token, rest) of first_tokens runs
        local_long, one_long = [], []           # the same with `tokens` (per-token times)
        try:
            with in_process(token_us) as once:
                for _ in range(3):  # warm-up
                    once(4)
                    client.stream_times(4)
                    httpx_stream_times(srv.url, 4)
                for _ in range(reps):  # each run starts after the other's tail is over
                    plan = [(local, once, first_tokens), (one, client.stream_times, first_tokens),
                            (through_httpx, functools.partial(httpx_stream_times, srv.url),
                             first_tokens)]
                    if first_tokens != tokens:
                        plan += [(local_long, once, tokens), (one_long, client.stream_times,
                                                              tokens)]
                    for runs, run, n in plan:
                        time.sleep(GAP)
                        runs.append(run(n))
            eight = concurrent(srv.port, 8, tokens)
        finally:
            client.close()
            srv.stop()
        local_long, one_long = local_long or local, one_long or one
        base_ttft = ms([t for t, _ in local])

        def per_token_us(runs: list[tuple[float, float]], tokens: int = tokens) -> float:
            return round(1e6 * statistics.median(rest for _, rest in runs) / tokens, 2)

        base_tok = per_token_us(local_long)
        rows.append({
            "token_us": token_us, "tokens": tokens, "ttft_tokens": first_tokens, "reps": reps,
            "in_process_ttft_ms": base_ttft, "in_process_per_token_us": base_tok,
            "server_1_ttft_ms": ms([t for t, _ in one]),
            "server_1_per_token_us": per_token_us(one_long),
            "added_ttft_ms_1_client": round(ms([t for t, _ in one]) - base_ttft, 3),
            "added_per_token_us_1_client": round(per_token_us(one_long) - base_tok, 2),
            "server_1_ttft_ms_httpx": ms([t for t, _ in through_httpx]),
            "server_8_ttft_ms_p50": ms([t for t, _ in eight]),
            "added_per_token_us_8_clients": round(per_token_us(eight) - base_tok, 2)})
    return rows


def section_turns(tmp: Path) -> list[int]:
    """Answers end by themselves (one cut by max_tokens is not kept in the kv cache)."""
    srv = Server(tmp, 0, ignore_eos=False)
    try:
        messages: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
        counts = []
        for turn in range(10):
            messages.append({"role": "user", "content": f"Tell me more, part {turn}"})
            got = CLIENT.post(srv.url + "/v1/chat/completions", json={
                "model": "demo", "messages": messages}).json()
            usage = got["usage"]
            counts.append(usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"])
            messages.append({"role": "assistant",
                             "content": got["choices"][0]["message"]["content"]})
        return counts
    finally:
        srv.stop()


def section_abort(tmp: Path, reps: int) -> dict[str, float]:
    srv = Server(tmp, 30000, trace=True)
    delays, spent = [], []
    try:
        for _ in range(reps):
            got = 0
            begun = time.time()
            with httpx.Client(timeout=60) as own:  # its own connection, closed below
                with own.stream("POST", srv.url + "/v1/chat/completions", json={
                        "model": "demo", "messages": MESSAGES, "max_tokens": 100000,
                        "stream": True}) as r:
                    for line in r.iter_lines():
                        if '"content":"' in line and '"content":""' not in line:
                            got += 1
                        if got == 5:
                            break
                    closed = time.time()
                    r.close()
            for _ in range(600):  # the first rkllm_abort of this request
                aborts = [e["time"] for e in map(json.loads, srv.trace.read_text().splitlines())
                          if e["call"] == "rkllm_abort" and e["time"] > begun]
                if aborts:
                    delays.append(min(aborts) - closed)
                    break
                time.sleep(0.005)
            spent.append(got)
    finally:
        srv.stop()
    return {"abort_after_close_ms_p50": ms(delays), "abort_after_close_ms_max":
            round(1000 * max(delays), 3), "token_ms": 30.0}


def section_rss(tmp: Path, total: int) -> list[dict[str, int]]:
    srv = Server(tmp, 0)
    marks = [m for m in (100, 1000, 3000, 10000) if m <= total]
    rows = []
    done = 0
    try:
        for mark in marks:
            while done < mark:
                CLIENT.post(srv.url + "/v1/chat/completions", json={
                    "model": "demo", "messages": MESSAGES, "max_tokens": 4})
                done += 1
            rows.append({"requests": done, "rss_kb": srv.rss_kb()})
    finally:
        srv.stop()
    return rows


def section_system(tmp: Path) -> list[dict[str, Any]]:
    """A new conversation under a long system prompt, at a board's prefill pace (1 ms a
    token): prompt tokens prefilled (the runtime's count) and the time to a one-token answer,
    prefilled in full, with the system prompt kept in the kv cache (the same one as the last
    conversation), and from its saved prompt cache (--prompt-cache, after another system
    prompt took the kv cache); plus the first sight with --prompt-cache (the short run that
    saves the cache, then the answer)."""
    system = " ".join(["You are the house assistant: you know every room, light and heater "
                       "of the house, and you answer in one short sentence."] * 12)
    other = "You are a pirate."
    pace = {"RKLLM_SIM_PREFILL_US": "1000"}

    def one(srv: Server, sys_prompt: str, user: str) -> tuple[int, float]:
        started = time.perf_counter()
        got = CLIENT.post(srv.url + "/v1/chat/completions", json={
            "model": "demo", "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "system", "content": sys_prompt},
                         {"role": "user", "content": user}]}).json()
        usage = got["usage"]
        prefilled = usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"]
        return int(prefilled), round(1000 * (time.perf_counter() - started), 1)

    rows = []
    srv = Server(tmp, 0, ignore_eos=False, env_extra=pace)
    try:
        one(srv, other, "Ahoy?")
        full = one(srv, system, "Which lights are on?")
        kept = one(srv, system, "Is the heating on?")
    finally:
        srv.stop()
    cached = Server(tmp, 0, ignore_eos=False, env_extra=pace,
                    args=("--prompt-cache", str(tmp / "prompt-cache")))
    try:
        first = one(cached, system, "Which lights are on?")
        one(cached, other, "Ahoy?")
        loaded = one(cached, system, "Is the heating on?")
    finally:
        cached.stop()
    for how, (tokens, ms_) in (("prefilled in full", full), ("system prompt kept", kept),
                               ("from its saved prompt cache", loaded),
                               ("first sight with --prompt-cache", first)):
        rows.append({"start": how, "prompt_tokens_prefilled": tokens, "answer_ms": ms_})
    return rows


SECTIONS = ("ttft", "turns", "system", "abort", "rss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run (< 1 min)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS,
                        metavar="SECTION", help=f"run only these ({', '.join(SECTIONS)})")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if "ttft" in args.only:
            report["ttft"] = section_ttft(tmp, args.quick)
        if "turns" in args.only:
            report["turns"] = section_turns(tmp)
        if "system" in args.only:
            report["system"] = section_system(tmp)
        if "abort" in args.only:
            report["abort"] = section_abort(tmp, 3 if args.quick else 10)
        if "rss" in args.only:
            report["rss"] = section_rss(tmp, 1000 if args.quick else 10000)
    for row in report.get("ttft", []):
        print(f"{row['token_us'] / 1000:g} ms/token: TTFT in-process "
              f"{row['in_process_ttft_ms']} ms, server {row['server_1_ttft_ms']} ms (added "
              f"{row['added_ttft_ms_1_client']} ms; through httpx "
              f"{row['server_1_ttft_ms_httpx']} ms); per token added "
              f"{row['added_per_token_us_1_client']} µs (1 client), "
              f"{row['added_per_token_us_8_clients']} µs (8 clients; TTFT p50 "
              f"{row['server_8_ttft_ms_p50']} ms with the queue)")
    if "turns" in report:
        print("prompt tokens prefilled per turn:", report["turns"])
    for row in report.get("system", []):
        print(f"new conversation, {row['start']}: {row['prompt_tokens_prefilled']} prompt "
              f"tokens prefilled, {row['answer_ms']} ms to a one-token answer (1 ms/token)")
    if "abort" in report:
        print(f"abort after disconnect: p50 {report['abort']['abort_after_close_ms_p50']} ms, "
              f"max {report['abort']['abort_after_close_ms_max']} ms (one token = 30 ms)")
    if "rss" in report:
        print("server RSS:", ", ".join(f"{r['rss_kb'] // 1024} MB after {r['requests']}"
                                       for r in report["rss"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
