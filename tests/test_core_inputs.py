"""Bad input to CoreLLM gets a clear exception naming the argument, before anything reaches
the runtime (issue 10 #1, #6, #12; issue 12 #2, #3): never a crash, a silently cut string, an
OverflowError/IndexError/AttributeError, or a buffer read as the wrong type."""

from __future__ import annotations

import array
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rkllm
from rkllm.core import DEFAULT_CONTEXT_CAP
from rkllm.errors import (
    ContextLengthError,
    GenerationError,
    ParamError,
    RuntimeNotFoundError,
)

PROMPT = "Tell me about the river."


@pytest.fixture
def small(family: str, demo_model: str, quiet_sim: None) -> Iterator[rkllm.LLM]:
    """The demo model with a small context (256 tokens)."""
    with rkllm.LLM(demo_model, runtime=f"sim:{family}", max_context_len=256) as llm:
        yield llm


def answer(llm: rkllm.LLM) -> str:
    return llm.complete(PROMPT, max_new_tokens=8).text


# ---- embeddings (issue 10 #1) ------------------------------------------------------------

def test_embedding_size_is_learned_once(small: rkllm.LLM) -> None:
    assert small.embedding_size == small.hidden_states(PROMPT).cols > 0


def test_embeddings_must_be_rows_of_the_embedding_size(small: rkllm.LLM) -> None:
    width = small.embedding_size
    good = array.array("f", [0.5] * (3 * width))
    assert small.complete(embeddings=good, n_embed_tokens=3, max_new_tokens=4).token_ids
    # as a list, a memoryview and a 2-D buffer too
    assert small.complete(embeddings=list(good), n_embed_tokens=3, max_new_tokens=4).token_ids
    assert small.complete(embeddings=memoryview(good), n_embed_tokens=3,
                          max_new_tokens=4).token_ids
    two_d = memoryview(good).cast("B").cast("f", [3, width])
    assert small.complete(embeddings=two_d, n_embed_tokens=3, max_new_tokens=4).token_ids
    # the crash: one float for 16000 rows; too few or too many floats for the rows
    for floats, rows in (([0.5], 200), (good[:-1], 3), (good, 2), (good, 4)):
        with pytest.raises(ParamError, match=r"embeddings has \d+ floats.*need exactly"):
            small.complete(embeddings=floats, n_embed_tokens=rows)
    with pytest.raises(ContextLengthError, match="max_context_len 256") as err:
        small.complete(embeddings=[0.5], n_embed_tokens=16000)
    assert err.value.n_tokens == 16000 and err.value.limit == 256
    assert answer(small)


@pytest.mark.parametrize("data", [
    memoryview(array.array("d", [0.5] * 256)),
    memoryview(array.array("i", [1] * 256)),
    array.array("d", [0.5] * 256),
    b"\0" * 1024,
    "0.5",
    [0.5, "x"],
    object(),
])
def test_embeddings_of_another_type_are_refused(small: rkllm.LLM, data: Any) -> None:
    with pytest.raises(TypeError, match="embeddings"):
        small.complete(embeddings=data, n_embed_tokens=1)


@pytest.mark.parametrize("rows", [0, -1, 2**31, 2**40, True, 1.0, "1", None])
def test_n_embed_tokens_is_a_positive_int(small: rkllm.LLM, rows: Any) -> None:
    with pytest.raises(ParamError, match="n_embed_tokens"):
        small.complete(embeddings=[0.5], n_embed_tokens=rows)


def test_numpy_float32_is_taken_float64_refused(small: rkllm.LLM) -> None:
    np = pytest.importorskip("numpy")
    width = small.embedding_size
    assert small.complete(embeddings=np.full((2, width), 0.5, np.float32), n_embed_tokens=2,
                          max_new_tokens=4).token_ids
    with pytest.raises(TypeError, match="float32"):
        small.complete(embeddings=np.full((2, width), 0.5), n_embed_tokens=2)
    # token ids as a numpy array (numpy's integers are ints by operator.index)
    ids = small.complete(PROMPT, max_new_tokens=4).token_ids
    assert small.complete(tokens=np.array(ids, np.int32), max_new_tokens=4).token_ids


def _values(node: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in a parsed JSON document."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + \
            [x for v in node.values() for x in _values(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _values(v, key)]
    return []


def test_image_size_reaches_the_runtime_as_given(small: rkllm.LLM, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's width and height, not the embedding width, go in the run's input."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RKLLM_SIM_TRACE", str(trace))
    floats = array.array("f", [0.25] * (4 * small.embedding_size))
    small.complete("<image>What is in the picture?", image_embeddings=floats,
                   n_image_tokens=4, image_size=(640, 480), max_new_tokens=2)
    runs = [json.loads(line) for line in trace.read_text().splitlines()
            if '"call":"rkllm_run"' in line]
    sized = rkllm.params.family_key(small.family) >= (1, 2, 1)  # the ABI has them from 1.2.1
    assert _values(runs[-1], "image_width") == ([640] if sized else [])
    assert _values(runs[-1], "image_height") == ([480] if sized else [])


def test_image_embeddings_are_checked(small: rkllm.LLM) -> None:
    width = small.embedding_size
    many = rkllm.params.family_key(small.family) >= (1, 2, 1)
    images = 2 if many else 1
    floats = array.array("f", [0.25] * (images * 4 * width))
    prompt = "<image>What is in the picture?"
    result = small.complete(prompt, image_embeddings=floats, n_image_tokens=4, n_images=images,
                            image_size=(32, 32), max_new_tokens=4)
    assert result.token_ids
    with pytest.raises(ParamError, match="image_embeddings has"):
        small.complete(prompt, image_embeddings=floats[:-1], n_image_tokens=4, n_images=images)
    with pytest.raises(ParamError, match="image_embeddings has"):
        small.complete(prompt, image_embeddings=[0.5], n_image_tokens=100)
    for bad in (-1, 0, 2**40):
        with pytest.raises(ParamError, match="n_image_tokens"):
            small.complete(prompt, image_embeddings=floats, n_image_tokens=bad)
        with pytest.raises(ParamError, match="n_images"):
            small.complete(prompt, image_embeddings=floats, n_image_tokens=4, n_images=bad)
    for size in ((1,), (1, 2, 3), 5, (-1, 2), (1.5, 2)):
        with pytest.raises(ParamError, match="image_size"):
            small.complete(prompt, image_embeddings=floats, n_image_tokens=4, image_size=size)
    with pytest.raises(TypeError, match="image_embeddings"):
        small.complete(prompt, image_embeddings=memoryview(array.array("d", [0.5] * 8)),
                       n_image_tokens=4)
    assert answer(small)


# ---- strings handed to C (issue 10 #6) -------------------------------------------------------

BAD_TEXT = [("\x00", "NUL"), ("a\x00b", "NUL"), ("a\udc80b", "surrogate"),
            ("\ud800", "surrogate"), ("x\udcff", "surrogate")]


@pytest.mark.parametrize(("text", "problem"), BAD_TEXT)
def test_every_string_follows_one_rule(small: rkllm.LLM, tmp_path: Path, text: str,
                                       problem: str) -> None:
    with pytest.raises(ParamError, match=f"prompt contains .*{problem}"):
        small.complete("0" + text + "0")
    with pytest.raises(ParamError, match=f"save_prompt_cache contains .*{problem}"):
        small.complete(PROMPT, save_prompt_cache=str(tmp_path / f"a{text}b"))
    assert not list(tmp_path.iterdir())  # nothing written under a cut name
    if small.family >= "1.2.0":
        with pytest.raises(ParamError, match=f"system_prompt contains .*{problem}"):
            small.set_chat_template(text, "", "")
        with pytest.raises(ParamError, match=f"prompt_postfix contains .*{problem}"):
            small.set_chat_template("", "", text)
    if small.family >= "1.2.1":
        with pytest.raises(ParamError, match=f"role contains .*{problem}"):
            small.complete(PROMPT, role=text)
        with pytest.raises(ParamError, match=f"tools contains .*{problem}"):
            small.set_function_tools("sys", text)
    with pytest.raises(ParamError, match=f"path contains .*{problem}"):
        small.load_prompt_cache(text)
    assert answer(small)


def test_model_and_runtime_paths_follow_the_rule(demo_model: str, sim_lib: str,
                                                 quiet_sim: None) -> None:
    with pytest.raises(ParamError, match="model contains a NUL"):
        rkllm.LLM(demo_model + "\x00junk", runtime="sim")
    with pytest.raises(ParamError, match="runtime contains a NUL"):
        rkllm.LLM(demo_model, runtime=sim_lib + "\x00junk")
    with pytest.raises(ParamError, match="runtime contains a lone surrogate"):
        rkllm.LLM(demo_model, runtime=sim_lib + "\udc80")
    with pytest.raises(ParamError, match="img_start contains a NUL"):
        rkllm.LLM(demo_model, runtime="sim:1.2.0", img_start="<a\x00>")


# ---- exception types (issue 10 #12) ------------------------------------------------------

@pytest.mark.parametrize(("options", "name"), [
    ({"tokens": [2**31]}, r"tokens\[0\]"),
    ({"tokens": [1, -1]}, r"tokens\[1\]"),
    ({"tokens": [1, 10**6]}, r"tokens\[1\] must be an int >= 0 and <= 2633"),  # vocabulary
    ({"tokens": [True]}, r"tokens\[0\] must be an int"),
    ({"tokens": "abc"}, "tokens must be a sequence"),
    ({"tokens": []}, "non-empty"),
    ({"max_new_tokens": 2**40}, "max_new_tokens must be an int >= 1 and <= 2147483647"),
    ({"max_new_tokens": 1.5}, "max_new_tokens must be an int"),
    ({"keep_history": "no"}, "keep_history must be a bool"),
    ({"keep_history": 1e-50}, "keep_history must be a bool"),
    ({"keep_history": 1}, "keep_history must be a bool"),
    ({"n_embed_tokens": 3}, "n_embed_tokens goes with embeddings"),
    ({"stop": ["x"]}, "unknown parameter 'stop'"),
])
def test_bad_run_options(small: rkllm.LLM, options: dict[str, Any], name: str) -> None:
    prompt = None if "tokens" in options else PROMPT
    with pytest.raises(ParamError, match=name):
        small.complete(prompt, **options)
    assert answer(small)


def test_type_errors_are_type_errors(small: rkllm.LLM) -> None:
    for options in ({"keep_history": "no"}, {"max_new_tokens": "5"}, {"tokens": [1.0]}):
        with pytest.raises(TypeError):
            small.generate(None if "tokens" in options else PROMPT, **options)
    with pytest.raises(TypeError, match="prompt must be a str"):
        small.generate(b"bytes")  # type: ignore[arg-type]
    for flag in (5, "yes", None):
        with pytest.raises(TypeError, match="chunked must be a bool"):
            small.generate(PROMPT, chunked=flag)  # type: ignore[arg-type]


def test_kv_cache_positions_are_checked(small: rkllm.LLM) -> None:
    if small.family < "1.2.1":
        pytest.skip("kv-cache ranges are 1.2.1+")
    for bad in (2**40, -1, True, "3", [1, 2]):
        with pytest.raises(ParamError, match="end_pos"):
            small.clear_kv_cache(start_pos=0, end_pos=bad)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="keep_system_prompt must be a bool"):
        small.clear_kv_cache("yes")  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="both start_pos and end_pos"):
        small.clear_kv_cache(start_pos=0)
    with pytest.raises(ParamError, match="must not be after"):
        small.clear_kv_cache(start_pos=5, end_pos=2)
    small.clear_kv_cache(start_pos=0, end_pos=0)
    # past what the kv cache holds: the runtime refuses it, so we do first
    small.complete(PROMPT, max_new_tokens=2, keep_history=True)
    held = small.kv_cache_size()[0]
    with pytest.raises(ParamError, match=rf"end_pos\[0\] must be between 0 and {held}"):
        small.clear_kv_cache(start_pos=0, end_pos=held + 1)
    small.clear_kv_cache(start_pos=0, end_pos=held)
    assert small.kv_cache_size()[0] == 0


# ---- what the runtime refuses at run time, refused first --------------------------------------

def _refused(call: Any, match: str) -> None:
    with pytest.raises(ParamError, match=match):
        call()


def test_run_inputs_the_runtime_refuses(small: rkllm.LLM, tmp_path: Path) -> None:
    family = rkllm.params.family_key(small.family)
    _refused(lambda: small.complete(PROMPT, save_prompt_cache=""),
             "save_prompt_cache must be a file path")
    if family >= (1, 2, 1):
        for role in ("system", "assistant", "User", ""):
            with pytest.raises(ParamError, match=f"role must be one of 'user', 'tool', got "
                                                 f"{role!r}"):
                small.complete(PROMPT, role=role)
        assert small.complete(PROMPT, role="tool", max_new_tokens=2).text is not None
    if family >= (1, 3, 0):
        _refused(lambda: small.complete(PROMPT, top_p=0.0), "top_p must be between")
        _refused(lambda: small.complete(PROMPT, repeat_penalty=1e-50), "float32")
        _refused(lambda: small.complete(PROMPT, mirostat=1, mirostat_eta=0.0), "mirostat_eta")
    # an empty prompt: refused where nothing goes around it (1.1.0, or an empty template)
    if family < (1, 2, 0):
        _refused(lambda: small.complete(""), "prompt is empty")
    else:
        assert small.complete("", max_new_tokens=2).token_ids
        small.set_chat_template("", "", "")
        _refused(lambda: small.complete(""), "prompt is empty")
        small.set_chat_template("", "User: ", "\n")
        assert small.complete("", max_new_tokens=2).token_ids
    assert answer(small)


def test_function_tools_must_be_a_json_list(small: rkllm.LLM) -> None:
    if small.family < "1.2.1":
        pytest.skip("function tools are 1.2.1+")
    for tools, match in (("not json", "not valid JSON"), ("5", "got int"), ('"x"', "got str")):
        with pytest.raises(ParamError, match=f"tools .*{match}"):
            small.set_function_tools("system", tools)
    small.set_function_tools("system", "[]")
    assert answer(small)


def test_image_prompt_needs_the_placeholder_and_keeps_its_size(small: rkllm.LLM) -> None:
    floats = [0.25] * (4 * small.embedding_size)
    _refused(lambda: small.complete("What is in the picture?", image_embeddings=floats,
                                    n_image_tokens=4), "must contain <image>")
    request = small.make_request("<image>Describe.", image_embeddings=floats, n_image_tokens=4,
                                 image_size=(640, 480))
    # the width was once replaced by the embedding size
    assert (request.image_width, request.image_height) == (640, 480)
    assert request.embed_size == small.embedding_size


def test_lora_scale_and_name(small: rkllm.LLM, tmp_path: Path) -> None:
    from conftest import ROOT

    adapter = str(tmp_path / "sea.rkllm")
    subprocess.run([sys.executable, str(ROOT / "csrc" / "sim" / "make_model.py"), "--lora",
                    "--boost", "sea", "-o", adapter], check=True, capture_output=True)
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ParamError, match="scale must be a finite number"):
            small.load_lora(adapter, name="a", scale=scale)
    name = small.load_lora(adapter, name="a")
    _refused(lambda: small.load_lora(adapter, name=name), "'a' is already loaded")
    assert small.complete(PROMPT, lora="a", max_new_tokens=2).token_ids


def test_cross_attention_inputs(small: rkllm.LLM, demo_model: str, quiet_sim: None) -> None:
    if small.family < "1.2.1":
        pytest.skip("cross attention is 1.2.1+")
    _refused(lambda: small.set_cross_attn_params([0.5] * 8, [0.5] * 8, [1.0], [0]),
             "use_cross_attn=True")
    with rkllm.LLM(demo_model, runtime=f"sim:{small.family}", use_cross_attn=True,
                   max_context_len=256) as llm:
        _refused(lambda: llm.complete(PROMPT), "call set_cross_attn_params")
        for pos in ([2**31], [-2**31 - 1], ["1"], [True]):
            with pytest.raises(ParamError, match=r"encoder_pos\[0\]"):
                llm.set_cross_attn_params([0.5] * 8, [0.5] * 8, [1.0], pos)
        _refused(lambda: llm.set_cross_attn_params([0.5] * 257, [0.5] * 257, [1.0] * 257,
                                                    list(range(257))), "at most max_context_len")
        llm.set_cross_attn_params([0.5] * 8, [0.5] * 8, [1.0], [0])
        assert llm.complete(PROMPT, max_new_tokens=2).token_ids


def test_constructor_arguments(demo_model: str, quiet_sim: None) -> None:
    with pytest.raises(TypeError, match="abi must be a str"):
        rkllm.LLM(demo_model, runtime="sim", abi=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="runtime must be"):
        rkllm.LLM(demo_model, runtime=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a path"):
        rkllm.LLM(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="check_model must be a bool"):
        rkllm.LLM(demo_model, runtime="sim", check_model="no")  # type: ignore[arg-type]


# ---- context length (issue 12 #2, #3) ------------------------------------------------------

def test_default_context_is_the_model_files_capped(family: str, demo_model: str,
                                                   quiet_sim: None) -> None:
    from rkllm.modelfile import inspect_model

    in_file = inspect_model(demo_model).value("max_context_len")
    assert in_file == 16384  # the demo model's; the runtime's own default is 512
    with rkllm.LLM(demo_model, runtime=f"sim:{family}") as llm:
        assert llm.context_length == llm.params["max_context_len"] == DEFAULT_CONTEXT_CAP
        assert llm.complete("word " * 1500, max_new_tokens=2).text  # > 512 tokens fits now
    with rkllm.LLM(demo_model, runtime=f"sim:{family}", max_context_len=1000) as llm:
        assert llm.context_length == 1000


def test_prompt_longer_than_the_context(small: rkllm.LLM) -> None:
    with pytest.raises(ContextLengthError, match=r"about \d+ tokens .* context holds 256") as e:
        small.complete("hello world " * 300)
    assert isinstance(e.value, GenerationError) and e.value.estimated
    assert e.value.limit == 256 and e.value.n_tokens > 256
    with pytest.raises(ContextLengthError):  # the same while streaming
        list(small.generate("hello world " * 300))
    with pytest.raises(ContextLengthError, match="the tokens input is 300 tokens"):
        small.complete(tokens=[1] * 300)
    assert answer(small)


def test_no_runtime_suggests_the_simulator(demo_model: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RKLLM_LIBRARY", raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    missing = os.path.join(str(tmp_path), "librkllmrt.so")
    with pytest.raises(RuntimeNotFoundError, match='runtime="sim"'):
        rkllm.LLM(demo_model, runtime=missing)
