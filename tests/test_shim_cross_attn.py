"""rkllm_set_cross_attn_params (1.2.1+) through the shim: validated, kept, and refused by
name on older families."""

from __future__ import annotations

import pytest

import rkllm
from rkllm import sim
from rkllm.errors import ParamError

N = 4  # encoder tokens


def _load(family: str) -> rkllm.LLM:
    return rkllm.LLM(sim.demo_model_path(), runtime=f"sim:{family}", use_cross_attn=True)


@pytest.mark.parametrize("family", ["1.2.1", "1.3.0"])
def test_cross_attention_changes_the_answer(family: str, quiet_sim: None) -> None:
    llm = _load(family)
    try:
        with pytest.raises(ParamError, match="set_cross_attn_params"):  # needed first
            llm.complete("Hello", max_new_tokens=16)
        cache = [0.5] * (N * 8)
        llm.set_cross_attn_params(cache, cache, [1.0] * N, list(range(N)))
        first = llm.complete("Hello", max_new_tokens=16).text
        assert first == llm.complete("Hello", max_new_tokens=16).text
        llm.set_cross_attn_params(cache, cache, [0.0, 1.0, 0.0, 1.0], [3, 1, 2, 0])
        assert llm.complete("Hello", max_new_tokens=16).text != first
    finally:
        llm.close()


def test_lengths_are_checked_by_the_shim(quiet_sim: None) -> None:
    llm = _load("1.3.0")
    try:
        cache = [0.5] * (N * 8)
        with pytest.raises(ParamError, match="encoder_mask and encoder_pos"):
            llm.set_cross_attn_params(cache, cache, [1.0] * N, list(range(N - 1)))
        with pytest.raises(ParamError, match="same, non-zero length"):
            llm.set_cross_attn_params(cache, cache[:-1], [1.0] * N, list(range(N)))
        with pytest.raises(ParamError, match="multiple of num_tokens"):
            llm.set_cross_attn_params(cache[:5], cache[:5], [1.0] * N, list(range(N)))
        with pytest.raises(ParamError, match="num_tokens must be >= 1"):
            llm.set_cross_attn_params(cache, cache, [], [])
    finally:
        llm.close()


@pytest.mark.parametrize("family", ["1.1.0", "1.2.0"])
def test_older_families_name_the_release(family: str, quiet_sim: None) -> None:
    llm = rkllm.LLM(sim.demo_model_path(), runtime=f"sim:{family}")
    try:
        with pytest.raises(ParamError, match="new in 1.2.1"):
            llm.set_cross_attn_params([0.5] * 8, [0.5] * 8, [1.0], [0])
        assert llm.complete("Hello", max_new_tokens=4).text
    finally:
        llm.close()
