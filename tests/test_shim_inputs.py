"""The shim refuses a run whose buffers are shorter than what the runtime will read
(defence in depth: the C side checks independently of the Python checks above it)."""

from __future__ import annotations

import array
from collections.abc import Iterator

import pytest

import rkllm
from rkllm import _lowlevel as ll
from rkllm import sim
from rkllm.errors import ParamError


@pytest.fixture
def model(quiet_sim: None) -> Iterator[ll.Model]:
    llm = rkllm.LLM(sim.demo_model_path(), runtime="sim", max_context_len=16384)
    try:
        assert llm._model is not None
        yield llm._model
    finally:
        llm.close()


def _run(model: ll.Model, **kw: object) -> str:
    model.start(**kw)  # type: ignore[arg-type]
    parts = []
    done = False
    while not done:
        text, _, done = model.pull(1000)
        parts.append(text)
    model.end()
    return "".join(parts)


def test_far_fewer_floats_than_rows_is_refused(model: ll.Model) -> None:
    # issue 10: one float announced as 16000 rows made the runtime read ~8 MB past the end
    with pytest.raises(ParamError, match="n_embed_tokens"):
        model.start(input_type=ll.INPUT_EMBED, embed=[0.5], n_embed_tokens=16000)
    assert not model.is_running()


def test_rows_must_be_whole_when_the_width_is_unknown(model: ll.Model) -> None:
    with pytest.raises(ParamError, match="whole rows"):
        model.start(input_type=ll.INPUT_EMBED, embed=[0.5] * 3, n_embed_tokens=2)


def test_width_given_by_the_caller_is_checked(model: ll.Model) -> None:
    with pytest.raises(ParamError, match="embedding size 128"):
        model.start(input_type=ll.INPUT_EMBED, embed=[0.5] * 128, n_embed_tokens=2,
                    embed_size=128)


def test_width_learned_from_the_hidden_states_is_checked(model: ll.Model) -> None:
    _run(model, input_type=ll.INPUT_PROMPT, prompt="Hello", mode=ll.MODE_HIDDEN)
    got = model.array(ll.MODE_HIDDEN)
    assert got is not None
    width = got[2]
    with pytest.raises(ParamError, match=f"embedding size {width}"):
        model.start(input_type=ll.INPUT_EMBED, embed=[0.5] * (2 * width - 2),
                    n_embed_tokens=2)
    # the right amount still runs, and answers as before
    rows = array.array("f", [0.25] * (2 * width))
    first = _run(model, input_type=ll.INPUT_EMBED, embed=rows, n_embed_tokens=2)
    assert first == _run(model, input_type=ll.INPUT_EMBED, embed=rows, n_embed_tokens=2)


def test_image_rows_are_checked(model: ll.Model) -> None:
    with pytest.raises(ParamError, match="image embeddings"):
        model.start(input_type=ll.INPUT_MULTIMODAL, prompt="<image>What is it?",
                    image_embed=[0.5] * 100, n_image_tokens=64, n_image=1)


def test_token_ids_are_checked(model: ll.Model) -> None:
    with pytest.raises(ParamError, match="negative"):
        model.start(input_type=ll.INPUT_TOKEN, token_ids=[5, -1])
    with pytest.raises(ParamError, match="no token ids"):
        model.start(input_type=ll.INPUT_TOKEN, token_ids=[])


def test_missing_prompt_and_unknown_kinds(model: ll.Model) -> None:
    with pytest.raises(ParamError, match="prompt is NULL"):
        model.start(input_type=ll.INPUT_PROMPT)
    with pytest.raises(ParamError, match="input type"):
        model.start(input_type=9, prompt="x")
    with pytest.raises(ParamError, match="infer mode"):
        model.start(input_type=ll.INPUT_PROMPT, prompt="x", mode=7)


def test_public_api_refuses_the_issue_case(quiet_sim: None) -> None:
    llm = rkllm.LLM(sim.demo_model_path(), runtime="sim", max_context_len=16384)
    try:
        with pytest.raises(ParamError):
            llm.complete(embeddings=[0.5], n_embed_tokens=16000)
        assert llm.complete("Hello").text == rkllm.LLM(
            sim.demo_model_path(), runtime="sim", max_context_len=16384).complete("Hello").text
    finally:
        llm.close()
