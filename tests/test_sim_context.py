"""The simulated model behaves as a real one does: its next token depends only on the tokens
in its context (kv cache plus new input), not on how that context was built. So a
conversation prefilled turn by turn with ``keep_history`` answers token for token like one
prefill of the whole conversation, and a prompt cache changes what is prefilled, never the
answer. (A server that keeps conversations in the kv cache relies on this.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rkllm

pytestmark = pytest.mark.timeout(120)

# the demo model's own chat template (csrc/sim/make_model.py), set explicitly so the test
# knows the exact text each turn adds to the context
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
PREFIX = "<|im_start|>user\n"
POSTFIX = "<|im_end|>\n<|im_start|>assistant\n"

CONVERSATIONS = [
    ["Tell me about the sea.", "And the river?", "What about bread and the old bridge?"],
    ["Hello!", "Write a story about a city in the rain.", "Why?", "Thanks, tell me more about cats."],
    ["Explain how a kettle works.", "Tell me about the mountains and the snow, in detail please."],
    ["Describe the weather today.", "Is it good for the harbour?", "And tomorrow?", "Say it again.",
     "Summary please."],
]
FAMILIES = ("1.2.0", "1.2.1", "1.3.0")


def _open(family: str, top_k: int = 1) -> rkllm.LLM:
    return rkllm.LLM(rkllm.sim.demo_model_path(), runtime=f"sim:{family}", max_context_len=4096,
                     skip_special_token=False, top_k=top_k)


@pytest.fixture(autouse=True)
def _quiet(quiet_sim: None) -> None:
    pass


def _turn_by_turn(family: str, turns: list[str], top_k: int) -> list[rkllm.stream.Result]:
    with _open(family, top_k) as llm:
        llm.set_chat_template(SYSTEM, PREFIX, POSTFIX)
        return [llm.complete(t, keep_history=True) for t in turns]


def _whole_conversation(family: str, turns: list[str], answers: list[str],
                        top_k: int) -> rkllm.stream.Result:
    """The conversation up to turns[-1], prefilled at once on a fresh model: the same text,
    with the template's parts written out in the prompt."""
    text = "".join(PREFIX + t + POSTFIX + a for t, a in zip(turns, answers)) + PREFIX + turns[-1] + POSTFIX
    with _open(family, top_k) as llm:
        llm.set_chat_template(SYSTEM, "", "")
        return llm.complete(text)


@pytest.mark.parametrize("top_k", [1, 40], ids=["greedy", "sampled"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("turns", CONVERSATIONS, ids=[f"conversation{i}" for i in range(len(CONVERSATIONS))])
def test_turn_by_turn_equals_one_prefill(family: str, turns: list[str], top_k: int) -> None:
    kept = _turn_by_turn(family, turns, top_k)
    for i in range(1, len(turns)):
        whole = _whole_conversation(family, turns[: i + 1], [r.text for r in kept[:i]], top_k)
        assert whole.token_ids == kept[i].token_ids, f"turn {i + 1} differs"
        assert whole.text == kept[i].text
    # and the history matters: a later turn alone answers differently
    with _open(family, top_k) as llm:
        llm.set_chat_template(SYSTEM, PREFIX, POSTFIX)
        alone = [llm.complete(t).text for t in turns[1:]]
    assert alone != [r.text for r in kept[1:]]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_context_same_answer_after_clearing(family: str) -> None:
    """Clearing the kv cache and building the same context again gives the same answers."""
    turns = CONVERSATIONS[0]
    with _open(family) as llm:
        llm.set_chat_template(SYSTEM, PREFIX, POSTFIX)
        first = [llm.complete(t, keep_history=True).text for t in turns]
        llm.clear_kv_cache()
        again = [llm.complete(t, keep_history=True).text for t in turns]
    assert first == again


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_cache_changes_prefill_not_answers(family: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "conversation.cache"
    turns = CONVERSATIONS[1]
    with _open(family) as llm:
        llm.set_chat_template(SYSTEM, PREFIX, POSTFIX)
        saved = [llm.complete(turns[0], keep_history=True, save_prompt_cache=cache)]
        saved += [llm.complete(t, keep_history=True) for t in turns[1:]]
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RKLLM_SIM_TRACE", str(trace))
    with _open(family) as llm:
        llm.set_chat_template(SYSTEM, PREFIX, POSTFIX)
        llm.load_prompt_cache(cache)
        loaded = [llm.complete(t, keep_history=True) for t in turns]
    assert [r.token_ids for r in loaded] == [r.token_ids for r in saved]
    # the first turn came from the cache: nothing of it was prefilled again
    runs = [json.loads(line)["args"] for line in trace.read_text().splitlines()
            if json.loads(line)["call"] == "run_end"]
    assert len(runs) == len(turns)
    assert runs[0]["cached_tokens"] > 10 and runs[0]["prefill_tokens"] == 0
    assert all(r["cached_tokens"] == 0 and r["prefill_tokens"] > 0 for r in runs[1:])
