"""Throughput of 1, 2 and 3 boards behind LiteLLM's Router, at a board's pace.

    python benchmarks/fleet.py [--quick] [--json FILE]

Each board is `rkllm serve` on the simulator (RKLLM_SIM_TOKEN_US, default 20 ms a token) on its
own 127.0.0.1 port; the router is the one of examples/fleet/ (least-busy, retries). A burst of
requests (default 48; 12 with --quick) goes through the router for each fleet size: requests per
minute, p50/p99 latency and the scaling over one board. Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from serve_support import ServeProcess  # noqa: E402

KEY = "bench-key"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def burst(router: Any, n: int, max_tokens: int) -> list[float]:
    async def one(i: int) -> float:
        started = time.monotonic()
        await router.acompletion(model="demo", max_tokens=max_tokens,
                                 messages=[{"role": "user", "content": f"Question {i}?"}])
        return time.monotonic() - started

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0.01)  # clients arrive a few ms apart
    return list(await asyncio.gather(*tasks))


def measure(n_boards: int, n_requests: int, max_tokens: int, token_us: int) -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fleet_router",
                                                  ROOT / "examples" / "fleet" / "router.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        boards = []
        for i in range(1, 4):
            d = Path(tmp) / f"board{i}"
            d.mkdir()
            if i <= n_boards:
                boards.append(stack.enter_context(ServeProcess(
                    ["demo", "--name", f"board{i}", "--api-key", KEY, "--queue-size", "64"], d,
                    env={"RKLLM_SIM_TOKEN_US": str(token_us), "RKLLM_SIM_IGNORE_EOS": "1"})))
        # the example config names three boards: unused slots point at the first board's
        # URL only when fewer are measured, so that the router still sees n_boards servers
        os.environ["RKLLM_API_KEY"] = KEY
        for i in range(1, 4):
            os.environ[f"BOARD{i}_URL"] = boards[min(i, n_boards) - 1].url + "/v1"
        router = example.make_router()
        if n_boards < 3:  # drop the duplicate deployments
            seen: set[str] = set()
            keep = []
            for d in router.model_list:
                base = d["litellm_params"]["api_base"]
                if base not in seen:
                    seen.add(base)
                    keep.append(d)
            router.set_model_list(keep)
        started = time.monotonic()
        latencies = asyncio.run(burst(router, n_requests, max_tokens))
        took = time.monotonic() - started
    return {"boards": n_boards, "requests": n_requests, "seconds": round(took, 2),
            "requests_per_minute": round(60 * n_requests / took, 1),
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(percentile(latencies, 99), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 requests per fleet size")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--token-us", type=int, default=20000)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    n = args.requests or (12 if args.quick else 48)
    rows = [measure(k, n, args.max_tokens, args.token_us) for k in (1, 2, 3)]
    base = rows[0]["requests_per_minute"]
    print(f"{'boards':>6} {'req/min':>8} {'scaling':>8} {'p50 s':>7} {'p99 s':>7}")
    for row in rows:
        row["scaling"] = round(row["requests_per_minute"] / base, 2)
        print(f"{row['boards']:>6} {row['requests_per_minute']:>8} {row['scaling']:>7}x "
              f"{row['p50_s']:>7} {row['p99_s']:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
