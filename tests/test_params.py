"""Parameter validation (rkllm.params), before any native call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rkllm
from rkllm import params as P
from rkllm.core import DEFAULT_CONTEXT_CAP
from rkllm.errors import ParamError

DEFAULTS = {"max_context_len": 512, "top_k": 40, "enabled_cpus_mask": 0, "n_batch": 1}


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ParamError) as err:
        P.validate("1.2.1", {"temprature": 0.5}, DEFAULTS)
    assert "'temprature'" in str(err.value) and "temperature" in str(err.value)


def test_unknown_name_without_neighbours() -> None:
    with pytest.raises(ParamError, match="unknown parameter 'zzz'$"):
        P.validate("1.2.1", {"zzz": 1}, DEFAULTS)


@pytest.mark.parametrize("name,value,kind", [
    ("top_k", "4", "an int"), ("top_k", 4.0, "an int"), ("top_k", True, "an int"),
    ("top_p", "0.5", "a number"), ("skip_special_token", 1, "a bool"),
])
def test_wrong_type(name: str, value: object, kind: str) -> None:
    with pytest.raises(ParamError, match=f"{name} must be {kind}"):
        P.validate("1.2.1", {name: value}, DEFAULTS)


@pytest.mark.parametrize("name,value,allowed", [
    ("top_p", 1.5, "between 0.0 and 1.0"), ("max_context_len", 0, "between 1 and"),
    ("n_batch", 101, "between 1 and 100"), ("mirostat", 3, "between 0 and 2"),
    ("max_new_tokens", -2, "between -1 and"),
])
def test_out_of_range_names_the_range(name: str, value: object, allowed: str) -> None:
    with pytest.raises(ParamError, match=allowed):
        P.validate("1.2.1", {name: value}, DEFAULTS)


def test_values_are_merged_over_defaults() -> None:
    v = P.validate("1.2.1", {"top_k": 1, "temperature": 1, "skip_special_token": True},
                   DEFAULTS)
    assert v["top_k"] == 1 and v["temperature"] == 1.0 and v["skip_special_token"] == 1
    assert v["max_context_len"] == 512


def test_cpu_mask_against_the_core_count() -> None:
    v = P.validate("1.2.1", {"enabled_cpus_mask": [2, 3]}, DEFAULTS, cores=4)
    assert v["enabled_cpus_mask"] == 0b1100
    with pytest.raises(ParamError) as err:
        P.validate("1.2.1", {"enabled_cpus_mask": 0xF0}, DEFAULTS, cores=4)
    assert "[4, 5, 6, 7]" in str(err.value) and "4 core(s)" in str(err.value)
    assert P.validate("1.2.1", {"enabled_cpus_mask": 0xF0}, DEFAULTS, cores=8)[
        "enabled_cpus_mask"] == 0xF0
    with pytest.raises(ParamError, match="not a CPU core number"):
        P.validate("1.2.1", {"enabled_cpus_mask": ["4"]}, DEFAULTS, cores=8)


def test_nested_extend_param() -> None:
    v = P.validate("1.2.1", {"extend_param": {"n_batch": 2, "embed_flash": True}}, DEFAULTS)
    assert v["n_batch"] == 2 and v["embed_flash"] == 1
    with pytest.raises(ParamError, match="extend_param.top_k"):
        P.validate("1.2.1", {"extend_param": {"top_k": 2}}, DEFAULTS)
    with pytest.raises(ParamError, match="extend_param must be a dict"):
        P.validate("1.2.1", {"extend_param": 3}, DEFAULTS)


@pytest.mark.parametrize("family,name,value,message", [
    ("1.2.0", "n_batch", 2, "needs RKLLM runtime 1.2.1"),
    ("1.1.0", "enabled_cpus_mask", 1, "needs RKLLM runtime 1.2.0"),
    ("1.2.1", "ignore_eos_token", True, "needs RKLLM runtime 1.3.0"),
    ("1.3.0", "img_start", "<img>", "removed in RKLLM 1.3.0"),
])
def test_param_of_another_release(family: str, name: str, value: object, message: str) -> None:
    with pytest.raises(ParamError, match=message):
        P.validate(family, {name: value}, DEFAULTS)


@pytest.mark.parametrize("name", ["model_path", "is_async"])
def test_managed_names(name: str) -> None:
    with pytest.raises(ParamError, match="cannot be set"):
        P.validate("1.2.1", {name: 1}, DEFAULTS)


def test_param_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        P.validate("1.2.1", {"top_k": -1}, DEFAULTS)


def test_every_family_schema_is_consistent() -> None:
    for family in P.FAMILIES:
        names = P.schema(family)
        assert "max_context_len" in names and "top_k" in names
        assert ("n_batch" in names) == (family >= "1.2.1")
        assert ("img_start" in names) == (family < "1.3.0")
        assert P.describe(family)


# ---- through LLM: defaults from the runtime, nothing called on a bad param -----------------

def test_llm_defaults_come_from_the_runtime(family: str, demo_model: str,
                                            quiet_sim: None) -> None:
    rt = rkllm.load_runtime(f"sim:{family}")
    with rkllm.LLM(demo_model, runtime=f"sim:{family}", top_k=1) as llm:
        expected = rt.default_params()
        expected["top_k"] = 1
        # the context: what the model file allows (16384), capped (issue 12 #2)
        expected["max_context_len"] = DEFAULT_CONTEXT_CAP
        assert llm.params == expected


def test_bad_param_makes_no_native_call(family: str, demo_model: str, quiet_sim: None,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("RKLLM_SIM_TRACE", str(trace))
    with pytest.raises(ParamError):
        rkllm.LLM(demo_model, runtime=f"sim:{family}", top_p=2.0)
    def calls() -> list[str]:
        if not trace.exists():
            return []
        return [json.loads(line)["call"] for line in trace.read_text().splitlines()]
    assert "rkllm_init" not in calls()
    rkllm.LLM(demo_model, runtime=f"sim:{family}", top_p=0.5).close()
    assert "rkllm_init" in calls()  # the trace does see a valid load


def test_params_as_dict_and_keywords(demo_model: str, quiet_sim: None) -> None:
    with rkllm.LLM(demo_model, runtime="sim:1.2.1", params={"top_k": 2},
                   extend_param={"n_batch": 1}) as llm:
        assert llm.params["top_k"] == 2
    with pytest.raises(ParamError, match="both"):
        rkllm.LLM(demo_model, runtime="sim:1.2.1", params={"top_k": 2}, top_k=3)


def test_cpu_mask_naming_missing_cores(demo_model: str, quiet_sim: None) -> None:
    with pytest.raises(ParamError, match="names CPU core"):
        rkllm.LLM(demo_model, runtime="sim:1.2.1", enabled_cpus_mask=[P.cpu_count() + 1])
