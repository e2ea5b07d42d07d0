"""RKLLM_SIM_TRACE as a client's witness (docs/simulator.md, "Tracing"): every run writes a
run_end line with the tokens it prefilled and how it ended, and every rkllm_abort its own
line, so a test can count what a server prefilled per turn and see its aborts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import rkllm

pytestmark = pytest.mark.timeout(60)

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
PREFIX = "<|im_start|>user\n"
POSTFIX = "<|im_end|>\n<|im_start|>assistant\n"
TURNS = ["Hello!", "Tell me about the sea.", "And the river?"]


def _open() -> rkllm.LLM:
    llm = rkllm.LLM(rkllm.sim.demo_model_path(), runtime="sim:1.3.0", max_context_len=4096,
                    skip_special_token=False)
    llm.set_chat_template(SYSTEM, PREFIX, POSTFIX)
    return llm


def _lines(trace: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()]


def test_prefill_per_turn_is_the_new_turn_only(quiet_sim: None, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RKLLM_SIM_TRACE", str(trace))
    with _open() as llm:
        answers = [llm.complete(t, keep_history=True) for t in TURNS]
    runs = [r["args"] for r in _lines(trace) if r["call"] == "run_end"]
    assert [r["end"] for r in runs] == ["finish"] * len(TURNS)
    assert [r["prefill_tokens"] for r in runs] == [a.perf.prefill_tokens for a in answers]
    assert [r["generate_tokens"] for r in runs] == [len(a.token_ids) for a in answers]
    # one prefill of the whole conversation costs what the turns prefilled and generated
    trace.unlink()
    whole = "".join(PREFIX + t + POSTFIX + a.text for t, a in zip(TURNS, answers[:-1]))
    with _open() as llm:
        llm.set_chat_template(SYSTEM, "", "")
        assert llm.complete(whole + PREFIX + TURNS[-1] + POSTFIX).text == answers[-1].text
    (full,) = [r["args"] for r in _lines(trace) if r["call"] == "run_end"]
    assert full["prefill_tokens"] == sum(r["prefill_tokens"] for r in runs) + \
        sum(r["generate_tokens"] for r in runs[:-1])
    assert runs[1]["prefill_tokens"] < full["prefill_tokens"] // 2


def test_abort_is_traced(quiet_sim: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RKLLM_SIM_TRACE", str(trace))
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "1000")
    monkeypatch.setenv("RKLLM_SIM_IGNORE_EOS", "1")
    with _open() as llm:
        stream = llm.generate(TURNS[1])
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()
        handle = next(r["args"]["handle"] for r in _lines(trace) if r["call"] == "rkllm_init")
    lines = _lines(trace)
    (end,) = [r for r in lines if r["call"] == "run_end"]
    assert end["args"]["handle"] == handle and end["args"]["end"] == "abort"
    assert end["args"]["generate_tokens"] >= 3
    aborts = [r for r in lines if r["call"] == "rkllm_abort"]
    assert aborts and all(r["args"]["handle"] == handle and r["rc"] == 0 for r in aborts)
