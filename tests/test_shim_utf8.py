"""The shim's UTF-8 repair: a run the runtime ends inside a character shows U+FFFD, the same
per token and in the whole text (issue: the replacement was pushed with 0 code points, so
per-token pieces dropped it)."""

from __future__ import annotations

import pytest

import rkllm
from rkllm import _lowlevel as ll
from rkllm import sim

PROMPTS = ("The weather", "emoji", "Tokyo", "Hello")


def _first_partial_token(llm: rkllm.LLM) -> tuple[str, int] | None:
    """(prompt, index) of the first generated token that completes no character."""
    model = llm._model
    assert model is not None
    for prompt in PROMPTS:
        model.start(input_type=ll.INPUT_PROMPT, prompt=prompt, max_new_tokens=400)
        index = 0
        found = None
        done = False
        while not done:
            _, ends, done = model.pull(1000)
            prev = 0  # offsets count from the start of each batch
            for end in ends:
                if end == prev and found is None:
                    found = index
                prev = end
                index += 1
        model.end()
        if found is not None:
            return prompt, found
    return None


@pytest.mark.parametrize("family", ["1.2.0", "1.3.0"])
def test_run_ended_inside_a_character_gives_a_replacement_piece(
        family: str, quiet_sim: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_SIM_RAW_TOKENS", "1")  # partial characters reach the shim
    probe = rkllm.LLM(sim.demo_model_path(), runtime=f"sim:{family}")
    try:
        found = _first_partial_token(probe)
    finally:
        probe.close()
    assert found is not None, "no token ends inside a character for any prompt"
    prompt, index = found
    # the runtime itself stops right after that token (the model's max_new_tokens)
    llm = rkllm.LLM(sim.demo_model_path(), runtime=f"sim:{family}", max_new_tokens=index + 1)
    try:
        pieces = list(llm.generate(prompt))
        whole = llm.complete(prompt)
    finally:
        llm.close()
    assert whole.text.endswith("\ufffd")
    assert pieces[-1] == "\ufffd"
    assert "".join(pieces) == whole.text
