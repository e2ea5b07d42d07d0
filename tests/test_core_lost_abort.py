"""An abort the runtime loses (it came as rkllm_run was still setting its run up) is asked
again while that run goes on: the reader's loop ends, blocking or asyncio, instead of waiting
for a run nobody stops (RKLLM_SIM_START_DELAY_MS makes the simulator lose it every time)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rkllm

PROMPT = "Tell me about the sea."
# the runtime setting its run up is not observable: the abort is sent well inside its 300 ms
SETTING_UP = 0.1


@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_sim: None) -> Iterator[Path]:
    trace = tmp_path / "trace.jsonl"
    for name, value in {"RKLLM_SIM_START_DELAY_MS": "300", "RKLLM_SIM_IGNORE_EOS": "1",
                        "RKLLM_SIM_TOKEN_US": "1000", "RKLLM_SIM_TRACE": str(trace)}.items():
        monkeypatch.setenv(name, value)
    yield trace


def calls(trace: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, trace.read_text().splitlines()) if e["call"] == name]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("family", ["1.1.0", "1.3.0"])
@pytest.mark.parametrize("reader", ["blocking", "asyncio"])
def test_an_abort_lost_by_the_runtime_is_asked_again(traced: Path, family: str,
                                                     reader: str) -> None:
    with rkllm.LLM(rkllm.sim.demo_model_path(), runtime=f"sim:{family}",
                   max_context_len=4096) as llm:
        fresh = llm.complete(PROMPT, max_new_tokens=8).text
        if reader == "blocking":
            stream = llm.generate(PROMPT)
            time.sleep(SETTING_UP)
            stream.abort()  # the run is still being set up: this abort is lost
            pieces = list(stream)
            reason = stream.finish_reason
        else:
            async def read() -> tuple[list[str], str | None]:
                astream = llm.agenerate(PROMPT)
                time.sleep(SETTING_UP)
                astream.abort()
                got = [piece async for piece in astream]
                return got, astream.finish_reason

            pieces, reason = asyncio.run(read())
        assert reason == "abort" and not pieces
        (end,) = calls(traced, "run_end")[-1:]
        assert end["args"]["end"] == "abort"
        assert end["args"]["generate_tokens"] < 500  # stopped, not run to the context's end
        assert len(calls(traced, "rkllm_abort")) >= 2  # the lost one, then again
        assert llm.complete(PROMPT, max_new_tokens=8).text == fresh
