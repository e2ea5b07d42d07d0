#!/usr/bin/env python3
"""rkllm-cffi benchmarks: what the binding costs per token, next to a pure-C consumer and the
usual ctypes patterns, all driving the same simulated runtime (family 1.2.1) at zero delay.

    python benchmarks/run.py [--quick] [--json FILE] [--only SECTION,...]

Everything runs in this one process, interleaved (every repetition runs every design, in a
rotating order), and is reported as min / median and as a ratio to the C consumer's median.
Sections (issue 7): full (per-token overhead at full rate), stall (the runtime thread inside the
callback, alone and with a busy Python thread), paced (latency at a board's pace), memory,
startup, growth. asyncio rows appear in full/paced when ``rkllm.LLM`` has ``agenerate``.
See benchmarks/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cside  # noqa: E402  (after the sys.path insert above)
import peers  # noqa: E402

FAMILY = "1.2.1"
PROMPT = "Tell me about the river and the old stone bridge."
CONTEXT = 4096  # what the vendor's own examples pass
LONG_CONTEXT = 65536  # for the 100 kB prompts (section 6b), on a copy of the demo model
TOP_K = 1  # greedy, as in the vendor's examples: the simulator's cheapest path, so the
#            binding's own cost stands out (the C consumer and the ctypes peers use it too)


@dataclass
class Plan:
    reps: int
    full_tokens: int
    stall_tokens: int
    busy_tokens: int
    paced: list[tuple[int, int]]  # (µs per token, tokens per run)
    paced_reps: int
    mem_tokens: int
    growth_tokens: list[int]
    growth_prompts: list[int]
    growth_prompt_tokens: int
    import_reps: int
    ttft_reps: int


FULL = Plan(reps=7, full_tokens=200_000, stall_tokens=200_000, busy_tokens=5_000,
            paced=[(100, 5_000), (33_000, 100)], paced_reps=5, mem_tokens=1_000_000,
            growth_tokens=[1_000, 10_000, 100_000, 1_000_000],
            growth_prompts=[10, 100, 1_000, 10_000, 100_000], growth_prompt_tokens=10_000,
            import_reps=7, ttft_reps=15)
QUICK = Plan(reps=2, full_tokens=20_000, stall_tokens=20_000, busy_tokens=500,
             paced=[(100, 500), (33_000, 8)], paced_reps=1, mem_tokens=100_000,
             growth_tokens=[1_000, 10_000, 100_000], growth_prompts=[10, 1_000, 100_000],
             growth_prompt_tokens=2_000, import_reps=3, ttft_reps=5)

SECTIONS = ("full", "stall", "paced", "memory", "startup", "growth")


# ----------------------------------------------------------------------------------------
# The designs. Each opens its own handle on a runtime library and offers:
#   full(prompt)  -> characters received (consumes everything, as cheaply as the design allows)
#   timed(prompt) -> [(ns when the consumer held it, cumulative UTF-8 bytes)] per piece
# ----------------------------------------------------------------------------------------


def _timed_pieces(pieces: Iterator[str]) -> list[tuple[int, int]]:
    clock = time.perf_counter_ns  # CLOCK_MONOTONIC, the tap's clock
    got: list[tuple[int, str]] = []
    append = got.append
    for piece in pieces:
        append((clock(), piece))
    out, total = [], 0
    for t, piece in got:
        total += len(piece.encode())
        out.append((t, total))
    return out


async def _atimed_pieces(pieces: Any) -> list[tuple[int, int]]:
    clock = time.perf_counter_ns
    got: list[tuple[int, str]] = []
    append = got.append
    async for piece in pieces:
        append((clock(), piece))
    out, total = [], 0
    for t, piece in got:
        total += len(piece.encode())
        out.append((t, total))
    return out


async def _acount(pieces: Any) -> int:
    n = 0
    async for piece in pieces:
        n += len(piece)
    return n


class Design:
    key = ""
    label = ""
    group = "peer"  # "c", "rkllm" or "peer"

    def open(self, env: Env, lib: str, max_new: int, context: int = CONTEXT) -> None:
        raise NotImplementedError

    def full(self, prompt: str) -> int:
        raise NotImplementedError

    def timed(self, prompt: str) -> list[tuple[int, int]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CSync(Design):
    key, label, group = "c", "pure C: callback copies into a buffer (the limit)", "c"

    def open(self, env: Env, lib: str, max_new: int, context: int = CONTEXT) -> None:
        self.c = cside.CConsumer(env.consumer_so, lib, env.model_for(context), max_new, context, threaded=False)

    def full(self, prompt: str) -> int:
        st, _ = self.c.run(prompt)
        self.last = st
        return int(st.bytes)

    def close(self) -> None:
        self.c.close()


class CThreaded(Design):
    key, label, group = "c_thread", "pure C: callback -> mutex/condvar -> consumer thread", "c"

    def open(self, env: Env, lib: str, max_new: int, context: int = CONTEXT) -> None:
        self.c = cside.CConsumer(env.consumer_so, lib, env.model_for(context), max_new, context, threaded=True)
        self.max_new = max_new

    def full(self, prompt: str) -> int:
        st, _ = self.c.run(prompt)
        self.last = st
        return int(st.bytes)

    def timed(self, prompt: str) -> list[tuple[int, int]]:
        st, recs = self.c.run(prompt, record=self.max_new * 2 + 16)
        self.last = st
        return recs

    def close(self) -> None:
        self.c.close()


class RkllmGenerate(Design):
    key, label, group = "rkllm", "rkllm-cffi generate(): one str per token", "rkllm"

    def open(self, env: Env, lib: str, max_new: int, context: int = CONTEXT) -> None:
        self.llm = env.open_llm(lib, max_new, context)
        self.max_new = max_new

    def full(self, prompt: str) -> int:
        n = 0
        for piece in self.llm.generate(prompt, max_new_tokens=self.max_new):
            n += len(piece)
        return n

    def timed(self, prompt: str) -> list[tuple[int, int]]:
        return _timed_pieces(self.llm.generate(prompt, max_new_tokens=self.max_new))

    def close(self) -> None:
        self.llm.close()


class RkllmChunks(RkllmGenerate):
    key, label = "rkllm_chunks", "rkllm-cffi chunked form: one str per batch"

    def _chunks(self, prompt: str) -> Iterator[str]:
        return CHUNKED_FORM(self.llm, prompt, self.max_new)  # type: ignore[misc]

    def full(self, prompt: str) -> int:
        n = 0
        for chunk in self._chunks(prompt):
            n += len(chunk)
        return n

    def timed(self, prompt: str) -> list[tuple[int, int]]:
        return _timed_pieces(self._chunks(prompt))


class RkllmAsync(RkllmGenerate):
    key, label = "rkllm_async", "rkllm-cffi agenerate() (asyncio)"

    def open(self, env: Env, lib: str, max_new: int, context: int = CONTEXT) -> None:
        super().open(env, lib, max_new, context)
        self.loop = asyncio.new_event_loop()

    def full(self, prompt: str) -> int:
        return self.loop.run_until_complete(_acount(self.llm.agenerate(prompt, max_new_tokens=self.max_new)))

    def timed(self, prompt: str) -> list[tuple[int, int]]:
        return self.loop.run_until_complete(
            _atimed_pieces(self.llm.agenerate(prompt, max_new_tokens=self.max_new)))

    def close(self) -> None:
        super().close()
        self.loop.close()


class _CtypesDesign(Design):
    pattern: type

    def open(self, env: Env, lib: str, max_new: int, context: int = CONTEXT) -> None:
        self.p = self.pattern(lib, env.model_for(context), max_new, context)

    def full(self, prompt: str) -> int:
        n = 0
        for piece in self.p.pieces(prompt):
            n += len(piece)
        return n

    def timed(self, prompt: str) -> list[tuple[int, int]]:
        return _timed_pieces(self.p.pieces(prompt))

    def close(self) -> None:
        self.p.close()


class Vendor(_CtypesDesign):
    key, label, pattern = "vendor", "ctypes, vendor example: list + 5 ms poll", peers.VendorPattern


class CtypesQueue(_CtypesDesign):
    key, label, pattern = "queue", "ctypes into queue.Queue", peers.QueuePattern


class CtypesAsyncio(Design):
    key, label = "asyncio_ctypes", "asyncio via ctypes call_soon_threadsafe"

    def open(self, env: Env, lib: str, max_new: int, context: int = CONTEXT) -> None:
        self.p = peers.AsyncioCtypesPattern(lib, env.model_for(context), max_new, context)
        self.loop = asyncio.new_event_loop()

    def full(self, prompt: str) -> int:
        return self.loop.run_until_complete(_acount(self.p.apieces(prompt)))

    def timed(self, prompt: str) -> list[tuple[int, int]]:
        return self.loop.run_until_complete(_atimed_pieces(self.p.apieces(prompt)))

    def close(self) -> None:
        self.p.close()
        self.loop.close()


CHUNKED_FORM: Callable[[Any, str, int], Iterator[str]] | None = None


def detect_rkllm() -> tuple[Any, list[str]]:
    """Import rkllm; find its chunked form and agenerate. Returns (module or None, notes)."""
    global CHUNKED_FORM
    notes = []
    try:
        import rkllm
    except (ImportError, OSError) as e:  # the package is not built in this environment
        return None, [f"rkllm not importable: {e}"]
    llm_cls = getattr(rkllm, "LLM", None)
    if llm_cls is None:
        return None, ["rkllm.LLM does not exist yet"]
    import inspect

    if "chunked" in inspect.signature(llm_cls.generate).parameters:
        CHUNKED_FORM = lambda llm, p, n: llm.generate(p, max_new_tokens=n, chunked=True)  # noqa: E731
        notes.append("chunked form: LLM.generate(..., chunked=True)")
    else:
        notes.append("no chunked form found on rkllm.LLM")
    if not hasattr(llm_cls, "agenerate"):
        notes.append("rkllm.LLM.agenerate does not exist yet: asyncio rows pending")
    return rkllm, notes


# ----------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------


@dataclass
class Env:
    lib: str  # the simulated runtime
    tap: cside.Tap
    consumer_so: str
    model: str
    rkllm: Any
    long_model: str | None = None  # a copy of the demo model with a context for 100 kB prompts

    def model_for(self, context: int) -> str:
        return self.model if context <= CONTEXT or not self.long_model else self.long_model

    def open_llm(self, lib: str, max_new: int, context: int = CONTEXT) -> Any:
        return self.rkllm.LLM(self.model_for(context), runtime=lib, max_context_len=context,
                              max_new_tokens=max_new, top_k=TOP_K)

    def designs(self, sync_only: bool = False) -> list[type[Design]]:
        out: list[type[Design]] = [CSync, CThreaded]
        if self.rkllm is not None:
            out.append(RkllmGenerate)
            if CHUNKED_FORM is not None:
                out.append(RkllmChunks)
            if not sync_only and hasattr(self.rkllm.LLM, "agenerate"):
                out.append(RkllmAsync)
        out += [Vendor, CtypesQueue]
        if not sync_only:
            out.append(CtypesAsyncio)
        return out


def find_runtime(args: argparse.Namespace) -> tuple[str, str]:
    if args.lib and args.model:
        return args.lib, args.model
    import rkllm.sim  # type: ignore[import-not-found]

    return args.lib or rkllm.sim.library_path(FAMILY), args.model or rkllm.sim.demo_model_path()


def long_context_model(out_dir: str) -> str | None:
    """The demo model again, allowing LONG_CONTEXT tokens (made with the simulator's model tool)."""
    tool = os.path.join(os.path.dirname(HERE), "csrc", "sim", "make_model.py")
    out = os.path.join(out_dir, "long-context.rkllm")
    if not os.path.isfile(tool):
        return None
    subprocess.run([sys.executable, tool, "-o", out, "--max-context-len", str(LONG_CONTEXT)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def machine() -> dict[str, Any]:
    info = {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(), "cores": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("Hypervisor vendor:"):
                info["hypervisor"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        info["cpu"] = platform.processor()
    return info


# ----------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(p / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def summary(vals: list[float]) -> dict[str, float]:
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def rotate(seq: list[Any], k: int) -> list[Any]:
    k %= len(seq)
    return seq[k:] + seq[:k]


def fmt_ns(ns: float) -> str:
    if math.isnan(ns):
        return "-"
    a = abs(ns)
    if a >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if a >= 1e4:
        return f"{ns / 1e3:,.1f} µs"
    if a >= 1e3:
        return f"{ns / 1e3:,.2f} µs"
    return f"{ns:,.0f} ns"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n== {title}")
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    sys.stdout.flush()


def set_pace(us: int) -> None:
    """Per-token delay of the simulated runtime (it reads the variable at each run)."""
    if us:
        os.environ["RKLLM_SIM_TOKEN_US"] = str(us)
    else:
        os.environ.pop("RKLLM_SIM_TOKEN_US", None)


# ----------------------------------------------------------------------------------------
# 1 (and 4): per-token overhead at full rate
# ----------------------------------------------------------------------------------------


def reference_tokens(env: Env, lib: str, max_new: int, prompt: str = PROMPT,
                     context: int = CONTEXT) -> tuple[int, int]:
    """(tokens, text bytes) the runtime produces for this run, counted by the C consumer."""
    c = cside.CConsumer(env.consumer_so, lib, env.model_for(context), max_new, context)
    try:
        st, _ = c.run(prompt)
        return int(st.tokens), int(st.bytes)
    finally:
        c.close()


def section_full(env: Env, plan: Plan) -> dict[str, Any]:
    n = plan.full_tokens
    tokens, nbytes = reference_tokens(env, env.lib, n)
    designs = [d() for d in env.designs()]
    for d in designs:
        d.open(env, env.lib, n)
    times: dict[str, list[float]] = {d.key: [] for d in designs}
    cpu: dict[str, list[float]] = {d.key: [] for d in designs}
    chars: dict[str, int] = {}
    for rep in range(plan.reps):
        for d in rotate(designs, rep):
            gc.collect()
            c0, t0 = time.process_time_ns(), time.perf_counter_ns()
            got = d.full(PROMPT)
            t1, c1 = time.perf_counter_ns(), time.process_time_ns()
            times[d.key].append((t1 - t0) / tokens)
            cpu[d.key].append((c1 - c0) / tokens)
            chars.setdefault(d.key, got)
    for d in designs:
        d.close()
    c_med = statistics.median(times["c"])
    c_cpu = statistics.median(cpu["c"])
    rows, out = [], {"tokens": tokens, "bytes": nbytes, "reps": plan.reps, "designs": {}}
    for d in designs:
        s = summary(times[d.key])
        res = {"label": d.label, "group": d.group, "ns_per_token": s,
               "tokens_per_s": 1e9 / s["median"], "x_c_median": s["median"] / c_med,
               "x_c_min": s["min"] / min(times["c"]), "added_ns_per_token": s["median"] - c_med,
               "cpu_ns_per_token": statistics.median(cpu[d.key]),
               "added_cpu_ns_per_token": statistics.median(cpu[d.key]) - c_cpu, "chars": chars[d.key]}
        out["designs"][d.key] = res
        rows.append([d.label, fmt_ns(s["min"]), fmt_ns(s["median"]), f"{res['tokens_per_s']:,.0f}",
                     f"{res['x_c_median']:,.2f}", fmt_ns(res["added_ns_per_token"]),
                     fmt_ns(res["cpu_ns_per_token"]), fmt_ns(res["added_cpu_ns_per_token"])])
    table(f"1. per-token overhead at full rate ({tokens:,} tokens, {plan.reps} interleaved reps)",
          ["design", "min/token", "median/token", "tokens/s", "x C", "added", "CPU/token", "added CPU"],
          rows)
    ref = {k: v for k, v in chars.items() if k not in ("c", "c_thread")}
    if len(set(ref.values())) > 1:
        print(f"   note: the Python designs received different amounts of text: {ref}")
    return out


# ----------------------------------------------------------------------------------------
# 2: runtime-thread stall inside the callback
# ----------------------------------------------------------------------------------------


def stall_stats(env: Env) -> dict[str, float]:
    recs = env.tap.records()
    durs = sorted(d for (_, d, _, s) in recs if s in (peers.RUN_NORMAL, peers.RUN_WAITING))
    count, total, mx = env.tap.totals()
    return {"callbacks": count, "mean_ns": total / count if count else float("nan"),
            "p99_ns": pct(durs, 99), "max_ns": mx, "median_ns": pct(durs, 50),
            "over_100us": sum(1 for d in durs if d > 100_000)}


def section_stall(env: Env, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for busy, n in ((False, plan.stall_tokens), (True, plan.busy_tokens)):
        designs = [d() for d in env.designs(sync_only=True) if d is not CSync or not busy]
        for d in designs:
            d.open(env, env.tap.path, n)
        runs: dict[str, list[dict[str, float]]] = {d.key: [] for d in designs}
        spins: list[int] = []
        for rep in range(plan.reps if not busy else max(1, plan.reps - 2)):
            for d in rotate(designs, rep):
                gc.collect()
                env.tap.reset(n + 16)
                stop = None
                if busy:
                    _, stop = peers.busy_python_thread()
                t0 = time.perf_counter_ns()
                d.full(PROMPT)
                wall = time.perf_counter_ns() - t0
                if stop:
                    spins.append(stop())
                st = stall_stats(env)
                st["wall_ns_per_token"] = wall / max(1, st["callbacks"])
                runs[d.key].append(st)
        for d in designs:
            d.close()
        rows, res = [], {}
        for d in designs:
            r = runs[d.key]
            agg = {"label": d.label, "tokens": n, "reps": len(r),
                   "mean_ns": statistics.median(x["mean_ns"] for x in r),
                   "p99_ns": statistics.median(x["p99_ns"] for x in r),
                   "max_ns": max(x["max_ns"] for x in r),
                   "over_100us": sum(x["over_100us"] for x in r),
                   "wall_ns_per_token": statistics.median(x["wall_ns_per_token"] for x in r)}
            res[d.key] = agg
            rows.append([d.label, fmt_ns(agg["mean_ns"]), fmt_ns(agg["p99_ns"]), fmt_ns(agg["max_ns"]),
                         f"{agg['over_100us']:,} / {n * len(r):,}", fmt_ns(agg["wall_ns_per_token"])])
        what = "with a CPU-bound Python thread" if busy else "alone"
        table(f"2. runtime thread inside the result callback, {what} ({n:,} tokens; mean/p99 median "
              f"of reps, max of all)", ["design", "mean", "p99", "max", "> 100 µs", "wall/token"], rows)
        out["busy" if busy else "alone"] = res
    return out


# ----------------------------------------------------------------------------------------
# 3 (and 4): latency at a board's pace
# ----------------------------------------------------------------------------------------


def latencies(env: Env, received: list[tuple[int, int]]) -> list[int]:
    """For each token the tap saw: when its last byte was held by the consumer minus when the
    runtime entered the callback with it."""
    recs = [(e, b) for (e, _, b, s) in env.tap.records() if s == peers.RUN_NORMAL]
    out, j = [], 0
    for entry, cum in recs:
        while j < len(received) and received[j][1] < cum:
            j += 1
        if j == len(received):
            break
        out.append(received[j][0] - entry)
    return out


def section_paced(env: Env, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for us, n in plan.paced:
        designs = [d() for d in env.designs() if d is not CSync]
        for d in designs:
            d.open(env, env.tap.path, n)
        lat: dict[str, list[int]] = {d.key: [] for d in designs}
        p50s: dict[str, list[float]] = {d.key: [] for d in designs}
        cpu: dict[str, list[float]] = {d.key: [] for d in designs}
        set_pace(us)
        try:
            for rep in range(plan.paced_reps):
                for d in rotate(designs, rep):
                    gc.collect()
                    env.tap.reset(n + 16)
                    c0 = time.process_time_ns()
                    received = d.timed(PROMPT)
                    c1 = time.process_time_ns()
                    ls = latencies(env, received)
                    lat[d.key] += ls
                    p50s[d.key].append(pct(sorted(ls), 50))
                    cpu[d.key].append((c1 - c0) / max(1, len(ls)))
        finally:
            set_pace(0)
            for d in designs:
                d.close()
        rows, res = [], {}
        for d in designs:
            ls = sorted(lat[d.key])
            r = {"label": d.label, "tokens": len(ls), "p50_ns": pct(ls, 50), "p99_ns": pct(ls, 99),
                 "max_ns": ls[-1] if ls else float("nan"), "p50_min_ns": min(p50s[d.key]),
                 "cpu_ns_per_token": statistics.median(cpu[d.key])}
            res[d.key] = r
            rows.append([d.label, fmt_ns(r["p50_min_ns"]), fmt_ns(r["p50_ns"]), fmt_ns(r["p99_ns"]),
                         fmt_ns(r["max_ns"]), fmt_ns(r["cpu_ns_per_token"])])
        pace = f"{us} µs" if us < 1000 else f"{us / 1000:g} ms"
        table(f"3. latency at one token every {pace}: runtime's callback -> consumer holding the text "
              f"({n} tokens x {plan.paced_reps} reps)",
              ["design", "p50 (best rep)", "p50", "p99", "max", "process CPU/token"], rows)
        out[str(us)] = res
    return out


# ----------------------------------------------------------------------------------------
# 5: memory and start-up
# ----------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def section_memory(env: Env, plan: Plan) -> dict[str, Any]:
    if env.rkllm is None:
        return {"skipped": "rkllm not available"}
    n = plan.mem_tokens
    step = n // 20
    llm = env.open_llm(env.lib, n)
    res: dict[str, Any] = {}
    forms: list[tuple[str, Callable[[], Iterator[str]]]] = [
        ("rkllm", lambda: llm.generate(PROMPT, max_new_tokens=n))]
    if CHUNKED_FORM is not None:
        forms.append(("rkllm_chunks", lambda: CHUNKED_FORM(llm, PROMPT, n)))  # type: ignore[misc]
    rows = []
    try:
        for key, make in forms:
            for _ in range(2):  # the first run warms allocator pools; the second one is measured
                gc.collect()
                samples = [rss_bytes()]
                every = step if key == "rkllm" else 4  # pieces are tokens, or batches
                for k, _piece in enumerate(make(), 1):
                    if k % every == 0:
                        samples.append(rss_bytes())
                samples.append(rss_bytes())
            tenth = samples[max(1, len(samples) // 10)]
            r = {"start_mib": samples[0] / 2**20, "after_10pct_mib": tenth / 2**20,
                 "end_mib": samples[-1] / 2**20, "peak_mib": max(samples) / 2**20,
                 "growth_after_10pct_kib": (samples[-1] - tenth) / 1024, "tokens": n}
            res[key] = r
            rows.append([key, f"{r['start_mib']:.1f} MiB", f"{r['after_10pct_mib']:.1f} MiB",
                         f"{r['end_mib']:.1f} MiB", f"{r['peak_mib']:.1f} MiB",
                         f"{r['growth_after_10pct_kib']:+,.0f} KiB"])
    finally:
        llm.close()
    table(f"5a. RSS while generating {n:,} tokens (second run)",
          ["form", "start", "at 10%", "end", "peak", "growth 10%->end"], rows)
    return res


IMPORT_PROBE = """
import sys, time
t = time.perf_counter()
import rkllm
dt = time.perf_counter() - t
heavy = [m for m in ("huggingface_hub", "numpy", "rkllm.cli", "requests", "asyncio") if m in sys.modules]
print(dt, ",".join(heavy))
"""


def section_startup(env: Env, plan: Plan) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if env.rkllm is None:
        return {"skipped": "rkllm not available"}
    imports, heavy = [], ""
    base = []
    for _ in range(plan.import_reps):
        p = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True)
        dt, heavy = p.stdout.split(" ", 1)
        imports.append(float(dt) * 1e9)
        t0 = time.perf_counter_ns()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base.append(time.perf_counter_ns() - t0)
    res["import_ns"] = summary(imports)
    res["heavy_modules_loaded"] = [m for m in heavy.strip().split(",") if m]
    res["python_startup_ns"] = summary(base)

    # opening a model and the first token: the binding next to the C consumer
    n = 16
    c = cside.CConsumer(env.consumer_so, env.lib, env.model, n, CONTEXT, threaded=True)
    llm = env.open_llm(env.lib, n)
    opens_c, opens_py, first_c, first_py = [], [], [], []
    try:
        for _ in range(plan.ttft_reps):
            t0 = time.perf_counter_ns()
            c2 = cside.CConsumer(env.consumer_so, env.lib, env.model, n, CONTEXT)
            opens_c.append(time.perf_counter_ns() - t0)
            c2.close()
            t0 = time.perf_counter_ns()
            llm2 = env.open_llm(env.lib, n)
            opens_py.append(time.perf_counter_ns() - t0)
            llm2.close()
            st, _ = c.run(PROMPT)
            first_c.append(st.first_ns)
            t0 = time.perf_counter_ns()
            for _piece in llm.generate(PROMPT, max_new_tokens=n):
                first_py.append(time.perf_counter_ns() - t0)
                break
            # breaking out of the loop cancels the run; the next run waits for that to finish
    finally:
        c.close()
        llm.close()
    res["open_c_ns"], res["open_rkllm_ns"] = summary(opens_c), summary(opens_py)
    res["first_token_c_ns"], res["first_token_rkllm_ns"] = summary(first_c), summary(first_py)
    res["first_token_added_ns"] = res["first_token_rkllm_ns"]["median"] - res["first_token_c_ns"]["median"]
    res["open_added_ns"] = res["open_rkllm_ns"]["median"] - res["open_c_ns"]["median"]
    rows = [
        ["import rkllm (fresh process)", fmt_ns(res["import_ns"]["min"]), fmt_ns(res["import_ns"]["median"]),
         "heavy modules: " + (", ".join(res["heavy_modules_loaded"]) or "none")],
        ["python -c pass (whole process)", fmt_ns(res["python_startup_ns"]["min"]),
         fmt_ns(res["python_startup_ns"]["median"]), ""],
        ["open model: C rkllm_init", fmt_ns(res["open_c_ns"]["min"]), fmt_ns(res["open_c_ns"]["median"]), ""],
        ["open model: rkllm.LLM(...)", fmt_ns(res["open_rkllm_ns"]["min"]), fmt_ns(res["open_rkllm_ns"]["median"]),
         f"added {fmt_ns(res['open_added_ns'])}"],
        ["first token: C consumer thread", fmt_ns(res["first_token_c_ns"]["min"]),
         fmt_ns(res["first_token_c_ns"]["median"]), ""],
        ["first token: generate()", fmt_ns(res["first_token_rkllm_ns"]["min"]),
         fmt_ns(res["first_token_rkllm_ns"]["median"]), f"added {fmt_ns(res['first_token_added_ns'])}"],
    ]
    table("5b. start-up", ["what", "min", "median", ""], rows)
    return res


# ----------------------------------------------------------------------------------------
# 6: cost growth
# ----------------------------------------------------------------------------------------


def section_growth(env: Env, plan: Plan) -> dict[str, Any]:
    res: dict[str, Any] = {"tokens": {}, "prompts": {}}
    kinds = [CSync] + ([RkllmGenerate] if env.rkllm is not None else []) + \
        ([RkllmChunks] if env.rkllm is not None and CHUNKED_FORM is not None else [])
    rows = []
    for n in plan.growth_tokens:
        tokens, _ = reference_tokens(env, env.lib, n)
        reps = max(2, min(plan.reps, int(2_000_000 / n)))
        designs = [k() for k in kinds]
        for d in designs:
            d.open(env, env.lib, n)
        per: dict[str, list[float]] = {d.key: [] for d in designs}
        for rep in range(reps):
            for d in rotate(designs, rep):
                gc.collect()
                t0 = time.perf_counter_ns()
                d.full(PROMPT)
                per[d.key].append((time.perf_counter_ns() - t0) / tokens)
        for d in designs:
            d.close()
        res["tokens"][str(n)] = {k: summary(v) for k, v in per.items()}
        rows.append([f"{n:,} tokens"] + [fmt_ns(statistics.median(per[d.key])) for d in designs])
    table("6a. per-token cost (median) by run length", ["run"] + [k.key for k in kinds], rows)

    rows = []
    for size in plan.growth_prompts:
        prompt = ("the river runs under the old bridge. " * (size // 37 + 1))[:size]
        n = plan.growth_prompt_tokens
        designs = [k() for k in kinds]
        per = {d.key: [] for d in designs}
        try:
            for d in designs:
                d.open(env, env.lib, n, LONG_CONTEXT)
            tokens, _ = reference_tokens(env, env.lib, n, prompt, LONG_CONTEXT)
            for rep in range(max(2, plan.reps - 2)):
                for d in rotate(designs, rep):
                    gc.collect()
                    t0 = time.perf_counter_ns()
                    d.full(prompt)
                    per[d.key].append((time.perf_counter_ns() - t0) / tokens)
        except Exception as e:  # noqa: BLE001  (any failure of one size is reported, not fatal)
            res["prompts"][str(size)] = {"error": str(e)}
            rows.append([f"{size:,} B prompt", f"error: {e}"] + [""] * (len(designs) - 1))
            continue
        finally:
            for d in designs:
                if hasattr(d, "c") or hasattr(d, "llm"):
                    d.close()
        res["prompts"][str(size)] = {k: summary(v) for k, v in per.items()}
        rows.append([f"{size:,} B prompt"] + [fmt_ns(statistics.median(per[d.key])) for d in designs])
    table(f"6b. per-token cost (median, prefill included) by prompt size ({plan.growth_prompt_tokens:,} "
          f"tokens, max_context_len {LONG_CONTEXT:,})", ["prompt"] + [k.key for k in kinds], rows)
    return res


# ----------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None
    note: str = ""


def judge(r: dict[str, Any]) -> list[Target]:
    out: list[Target] = []
    full = r.get("full", {}).get("designs", {})
    if "rkllm" in full:
        best = min((k for k in ("rkllm", "rkllm_chunks") if k in full),
                   key=lambda k: full[k]["ns_per_token"]["median"])
        x = full[best]["x_c_median"]
        out.append(Target("full rate vs pure C", "<= 2x", f"{x:.2f}x ({best}, median)", x <= 2))
        per = full["rkllm"]["ns_per_token"]["median"]
        out.append(Target("one str per token (generate)", "<= 1 µs/token", fmt_ns(per), per <= 1000))
        if "vendor" in full:
            v = full["vendor"]["ns_per_token"]["median"] / full[best]["ns_per_token"]["median"]
            out.append(Target("vs vendor ctypes pattern", ">= 100x faster", f"{v:,.0f}x ({best})", v >= 100))
            v1 = full["vendor"]["ns_per_token"]["median"] / per
            out.append(Target("vs vendor ctypes pattern, generate()", ">= 100x faster", f"{v1:,.0f}x", v1 >= 100))
            va, ra = full["vendor"]["added_ns_per_token"], full[best]["added_ns_per_token"]
            out.append(Target("vs vendor, cost added over C", "(informative)",
                              f"{va / ra:,.0f}x ({fmt_ns(va)} vs {fmt_ns(ra)})" if ra > 0 else "-", None))
    for when in ("alone", "busy"):
        s = r.get("stall", {}).get(when, {}).get("rkllm")
        if s:
            ok = s["mean_ns"] <= 1000 and s["max_ns"] <= 100_000
            floor = r["stall"][when].get("c") or r["stall"][when].get("c_thread") or {}
            out.append(Target(f"callback stall ({when})", "mean <= 1 µs, max <= 100 µs",
                              f"mean {fmt_ns(s['mean_ns'])}, max {fmt_ns(s['max_ns'])} "
                              f"({s['over_100us']} > 100 µs; C max {fmt_ns(floor.get('max_ns', float('nan')))})",
                              ok))
    for us, rows in r.get("paced", {}).items():
        s = rows.get("rkllm")
        if s:
            out.append(Target(f"paced latency p50 at {us} µs/token", "<= 20 µs", fmt_ns(s["p50_ns"]),
                              s["p50_ns"] <= 20_000))
    mem = r.get("memory", {})
    for key in ("rkllm", "rkllm_chunks"):
        if key in mem:
            g = mem[key]["growth_after_10pct_kib"]
            out.append(Target(f"RSS flat over {mem[key]['tokens']:,} tokens ({key})", "growth <= 1 MiB",
                              f"{g:+,.0f} KiB", g <= 1024))
    st = r.get("startup", {})
    if "import_ns" in st:
        med = st["import_ns"]["median"]
        heavy = [m for m in st["heavy_modules_loaded"] if m != "asyncio"]
        out.append(Target("import rkllm", "< 50 ms, no heavy imports",
                          f"{fmt_ns(med)}; heavy: {', '.join(heavy) or 'none'}", med < 50e6 and not heavy))
    return out


# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (~1-2 minutes)")
    ap.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    ap.add_argument("--only", metavar="SECTIONS", help="comma-separated subset of: " + ",".join(SECTIONS))
    ap.add_argument("--lib", help="runtime library (default: the package's 1.2.1 simulator)")
    ap.add_argument("--model", help="model file (default: the package's demo model)")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    only = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    started = time.monotonic()
    rk, notes = detect_rkllm()
    lib, model = find_runtime(args)
    consumer_so, tap_so = cside.build()
    set_pace(0)
    os.environ.pop("RKLLM_SIM_PREFILL_US", None)
    os.environ["RKLLM_SIM_IGNORE_EOS"] = "1"  # runs last exactly max_new_tokens tokens
    os.environ["RKLLM_SIM_QUIET"] = "1"
    env = Env(lib=lib, tap=cside.Tap(tap_so, lib), consumer_so=consumer_so, model=model, rkllm=rk,
              long_model=long_context_model(os.path.dirname(consumer_so)))
    info = machine()
    print(f"rkllm-cffi benchmarks ({'quick' if args.quick else 'full'}) on {info.get('cpu')}, "
          f"{info['cores']} cores, Python {info['python']}")
    print(f"runtime: {lib}\nmodel:   {model}")
    for note in notes:
        print(f"note: {note}")

    results: dict[str, Any] = {"machine": info, "mode": "quick" if args.quick else "full",
                               "plan": asdict(plan), "notes": notes, "runtime": lib}
    runners = {"full": section_full, "stall": section_stall, "paced": section_paced,
               "memory": section_memory, "startup": section_startup, "growth": section_growth}
    for name in SECTIONS:
        if name in only:
            t0 = time.monotonic()
            results[name] = runners[name](env, plan)
            results.setdefault("section_seconds", {})[name] = round(time.monotonic() - t0, 1)
    targets = judge(results)
    table("targets (issue 7)", ["target", "goal", "measured", "met"],
          [[t.name, t.goal, t.measured, {True: "yes", False: "NO", None: "-"}[t.met]] for t in targets])
    results["targets"] = [asdict(t) for t in targets]
    results["seconds"] = round(time.monotonic() - started, 1)
    print(f"\ntotal {results['seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
