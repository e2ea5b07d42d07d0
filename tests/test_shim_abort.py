"""Stopping a run sends rkllm_abort once: the simulator's abort blocks until the run has
stopped (as a real runtime's may), and sending it again after it returned made a `break`
wait twice its latency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rkllm
from rkllm import sim


@pytest.mark.parametrize("how", ["break", "abort", "close"])
def test_one_abort_per_stopped_run(how: str, quiet_sim: None, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RKLLM_SIM_TRACE", str(trace))
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "3000")
    llm = rkllm.LLM(sim.demo_model_path(), runtime="sim")
    rounds = 12
    try:
        for _ in range(rounds):
            stream = llm.generate("Hello", max_new_tokens=5000)
            next(stream)
            if how == "abort":
                llm.abort()
                assert stream.finish_reason is None
                for _ in stream:
                    pass
                assert stream.finish_reason == "abort"
            else:
                stream.close()
        if how == "close":
            llm.close()
    finally:
        llm.close()
    calls = [json.loads(line)["call"] for line in trace.read_text().splitlines()]
    assert calls.count("rkllm_run") == rounds
    assert calls.count("rkllm_abort") == rounds
