"""Many boards, one endpoint: three `rkllm serve` processes behind LiteLLM's real Router.

The router is built from the tested example config (examples/fleet/litellm_config.yaml, via
examples/fleet/router.py). Each "board" is `rkllm serve` on the simulator at a board's pace on
its own 127.0.0.1 port, with an API key. Skipped with a message when LiteLLM is not installed
(`pip install -e '.[fleet]'`; .ci/run installs it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_support import ServeProcess  # noqa: E402

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: no download at import
pytest.importorskip("litellm", reason="LiteLLM is not installed (pip install -e '.[fleet]'; "
                                      ".ci/run installs it)")

ROOT = Path(__file__).resolve().parents[1]
KEY = "fleet-key"
PACE = {"RKLLM_SIM_TOKEN_US": "20000"}       # 20 ms a token, as a small model on a board
MAX_TOKENS = 12
PROMPTS = [f"Tell me about {w}." for w in
           ("the sea", "rivers", "bread", "trains", "the moon", "gardens", "music", "snow")]
N_REQUESTS = 48

pytestmark = pytest.mark.timeout(300)


def load_router_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fleet_router", ROOT / "examples" / "fleet" / "router.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Fleet:
    """Three boards and the example router over them."""

    def __init__(self, tmp: Path, extra: list[str] | None = None) -> None:
        self.stack = ExitStack()
        self.boards = [
            self.stack.enter_context(ServeProcess(
                ["demo", "--name", f"board{i}", "--api-key", KEY, *(extra or [])],
                tmp / f"board{i}", env=PACE))
            for i in (1, 2, 3)]
        self.by_name = {f"board{i}": b for i, b in zip((1, 2, 3), self.boards)}

    def router(self, monkeypatch: pytest.MonkeyPatch) -> Any:
        for i, board in enumerate(self.boards, 1):
            monkeypatch.setenv(f"BOARD{i}_URL", board.url + "/v1")
        monkeypatch.setenv("RKLLM_API_KEY", KEY)
        return load_router_example().make_router()

    def close(self) -> None:
        self.stack.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    for i in (1, 2, 3):
        (tmp_path / f"board{i}").mkdir()
    f = Fleet(tmp_path)
    yield f
    f.close()


def reference_answers(board: ServeProcess) -> dict[str, str]:
    """Each prompt's answer from one board directly (the simulator is deterministic)."""
    answers = {}
    for prompt in PROMPTS:
        r = httpx.post(board.url + "/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": "demo", "max_tokens": MAX_TOKENS,
                             "messages": [{"role": "user", "content": prompt}]})
        r.raise_for_status()
        answers[prompt] = r.json()["choices"][0]["message"]["content"]
    return answers


async def burst(router: Any, during: Any = None) -> list[dict[str, Any]]:
    """N_REQUESTS chat requests at once through the router; ``during`` runs 1 s in."""

    async def one(i: int) -> dict[str, Any]:
        prompt = PROMPTS[i % len(PROMPTS)]
        started = time.monotonic()
        reply = await router.acompletion(model="demo", max_tokens=MAX_TOKENS,
                                         messages=[{"role": "user", "content": prompt}])
        headers = reply._hidden_params["additional_headers"]
        return {"prompt": prompt, "text": reply.choices[0].message.content,
                "board": headers.get("llm_provider-x-rkllm-board"),
                "retries": headers.get("x-litellm-attempted-retries", 0),
                "started": started, "ended": time.monotonic()}

    tasks = []
    for i in range(N_REQUESTS):
        # all in flight together, arriving as clients do: a few ms apart, not in one instant
        # (LiteLLM counts a request as busy once it is dispatched; requests that choose in the
        # same event-loop turn all see the same counts)
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0.01)
    if during is not None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(during)
    return await asyncio.gather(*tasks)


def test_least_busy_spreads_a_burst_over_every_board(fleet: Fleet,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    expected = reference_answers(fleet.boards[0])
    results = asyncio.run(burst(fleet.router(monkeypatch)))
    assert all(r["text"] == expected[r["prompt"]] for r in results)
    served = Counter(r["board"] for r in results)
    assert set(served) == {"board1", "board2", "board3"}, served
    # least-busy: every board gets its share of the burst (16 each when perfectly even) ...
    assert min(served.values()) >= N_REQUESTS // 3 - 4, served
    # ... and none stands idle long while another still has work: the boards finish their last
    # answers within a few answers' time of each other
    per_answer = statistics.median(r["ended"] - r["started"] for r in results) / \
        (N_REQUESTS / 3)
    last = {b: max(r["ended"] for r in results if r["board"] == b) for b in served}
    assert max(last.values()) - min(last.values()) < 4 * per_answer + 0.5, (last, per_answer)


def test_a_killed_board_loses_no_request(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for i in (1, 2, 3):
        (tmp_path / f"board{i}").mkdir()
    # the two survivors take the killed board's share too: queues sized for that
    fleet = Fleet(tmp_path, ["--queue-size", "32"])
    try:
        expected = reference_answers(fleet.boards[0])
        victim = fleet.boards[2]
        results = asyncio.run(burst(fleet.router(monkeypatch),
                                    during=lambda: victim.signal(signal.SIGKILL)))
        assert len(results) == N_REQUESTS
        assert all(r["text"] == expected[r["prompt"]] for r in results)
        assert victim.proc.wait(10) == -signal.SIGKILL
        assert any(r["retries"] for r in results), "nothing was retried: the kill came too late"
    finally:
        fleet.close()


def test_a_drained_board_finishes_its_work_and_exits(fleet: Fleet,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    expected = reference_answers(fleet.boards[0])
    drained = fleet.boards[1]
    seen: dict[str, Any] = {}

    def drain() -> None:
        drained.signal(signal.SIGTERM)
        seen["health"] = httpx.get(drained.url + "/health", timeout=5)

    results = asyncio.run(burst(fleet.router(monkeypatch), during=drain))
    assert seen["health"].status_code == 503 and seen["health"].json()["status"] == "draining"
    assert len(results) == N_REQUESTS
    assert all(r["text"] == expected[r["prompt"]] for r in results)
    assert drained.proc.wait(30) == 0            # finished what it had, then exited cleanly
    # what it had accepted before the drain, it answered itself
    assert any(r["board"] == "board2" for r in results)
