"""Soak test: stream >= 1M tokens and load/close a model >= 1,000 times on the simulated
runtime, and check that memory (RSS), open file descriptors and threads stay flat.

    python benchmarks/soak.py                 # 1,000,000 tokens, 1,000 load/close cycles
    python benchmarks/soak.py --quick         # a CI-sized run (50,000 tokens, 100 cycles)
    python benchmarks/soak.py --json out.json

Each phase is measured after a warm-up (first loads fill caches that are then reused), in
the middle and at the end; the run fails (exit 1) if the end exceeds the warm-up sample by
more than the tolerance (--rss-mb, --fds, --threads). The streaming phase mixes every way a
run is consumed: per-token pieces, chunks, complete(), break, abort and a dropped stream.
Output: one JSON document (stdout, or --json FILE) and a summary on stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("RKLLM_SIM_QUIET", "1")
os.environ["RKLLM_SIM_IGNORE_EOS"] = "1"  # runs as long as asked: the token count is exact
for _name in ("RKLLM_SIM_TOKEN_US", "RKLLM_SIM_PREFILL_US", "RKLLM_SIM_TRACE"):
    os.environ.pop(_name, None)

import rkllm  # noqa: E402  (after the simulator's environment is set)

PROMPT = "Tell me about the sea."
RUN_TOKENS = 5000  # tokens per run in the streaming phase


def sample() -> dict[str, float]:
    """RSS (MB), open fds and threads (the kernel's count: the runtime's threads too)."""
    gc.collect()
    status = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    return {"rss_mb": round(int(status["VmRSS"][0]) / 1024, 2),
            "fds": len(os.listdir("/proc/self/fd")),
            "threads": int(status["Threads"][0]),
            "python_threads": threading.active_count()}


def load() -> rkllm.LLM:
    return rkllm.LLM(rkllm.sim.demo_model_path(), runtime="sim")


def cycle(i: int) -> int:
    """One load, a short answer, close: one cycle."""
    with load() as llm:
        llm.complete(PROMPT, max_new_tokens=8)
    return 1


def stream_once(llm: rkllm.LLM, i: int) -> int:
    """One run, consumed in the i-th of six ways; returns the tokens it produced."""
    how = i % 6
    if how == 0:
        return sum(1 for _ in llm.generate(PROMPT, max_new_tokens=RUN_TOKENS))
    if how == 1:
        stream = llm.generate(PROMPT, max_new_tokens=RUN_TOKENS, chunked=True)
        for _ in stream:
            pass
        return stream.n_tokens
    if how == 2:
        return len(llm.complete(PROMPT, max_new_tokens=RUN_TOKENS).token_ids)
    stream = llm.generate(PROMPT, max_new_tokens=RUN_TOKENS)
    n = 0
    for _ in stream:
        n += 1
        if n >= RUN_TOKENS // 2:
            if how == 3:
                break
            if how == 4:
                stream.abort()
            else:
                del stream  # dropped mid-run: the garbage collector ends it
                return n
    return n


def phase(name: str, total: int, step: Callable[[int], int]) -> dict[str, Any]:
    """Runs ``step(i)`` until it has returned ``total`` units in all, sampling after a
    warm-up of 5%, at the middle and at the end."""
    done, i = 0, 0
    warm, middle = max(1, total // 20), total // 2
    samples: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    while done < total:
        done += step(i)
        i += 1
        if "start" not in samples and done >= warm:
            samples["start"] = sample()
        if "middle" not in samples and done >= middle:
            samples["middle"] = sample()
    samples["end"] = sample()
    return {"phase": name, "units": done, "steps": i,
            "seconds": round(time.perf_counter() - started, 2), "samples": samples}


def growth(result: dict[str, Any]) -> dict[str, float]:
    s = result["samples"]
    return {k: round(s["end"][k] - s["start"][k], 2) for k in ("rss_mb", "fds", "threads")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="50,000 tokens and 100 cycles")
    parser.add_argument("--rss-mb", type=float, default=8.0,
                        help="allowed RSS growth after the warm-up (default 8 MB)")
    parser.add_argument("--fds", type=int, default=0, help="allowed fd growth (default 0)")
    parser.add_argument("--threads", type=int, default=0,
                        help="allowed thread growth (default 0)")
    parser.add_argument("--json", metavar="FILE", help="write the JSON here (default stdout)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.cycles = 50_000, 100

    cycles = phase("load/close cycles", args.cycles, cycle)
    with load() as llm:
        tokens = phase("tokens streamed", args.tokens, lambda i: stream_once(llm, i))
    tolerance = {"rss_mb": args.rss_mb, "fds": args.fds, "threads": args.threads}
    failures = [f"{r['phase']}: {key} grew by {g[key]} (allowed {tolerance[key]})"
                for r in (cycles, tokens) for g in [growth(r)] for key in tolerance
                if g[key] > tolerance[key]]
    report = {
        "runtime": "sim", "release": release(),
        "python": sys.version.split()[0], "tokens": tokens["units"], "cycles": cycles["units"],
        "tokens_per_s": round(tokens["units"] / max(tokens["seconds"], 1e-9)),
        "phases": [cycles, tokens], "growth": {"cycles": growth(cycles),
                                               "tokens": growth(tokens)},
        "tolerance": tolerance, "ok": not failures, "failures": failures,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    for r in (cycles, tokens):
        print(f"soak: {r['phase']}: {r['units']:,} in {r['seconds']} s; growth after warm-up "
              f"{growth(r)}", file=sys.stderr)
    print("soak: " + ("FLAT" if not failures else "GREW: " + "; ".join(failures)),
          file=sys.stderr)
    return 0 if not failures else 1


def release() -> str:
    with load() as llm:
        return llm.release or llm.family


if __name__ == "__main__":
    sys.exit(main())
