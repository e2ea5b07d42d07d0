"""Parameter validation (rkllm.params), before any native call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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
    ("temperature", 10**400, "between 0.0 and 100.0, got 1000"),  # beyond any float
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


# ---- what the runtime refuses, refused first (the simulator's checks: sim_check_sampling,
# rkllm_init, and the 1.3.0 per-run sampling) --------------------------------------------------

MODEL_DEFAULTS = {**DEFAULTS, "top_p": 0.9, "temperature": 0.8, "repeat_penalty": 1.1,
                  "frequency_penalty": 0.0, "presence_penalty": 0.0, "mirostat": 0,
                  "mirostat_tau": 5.0, "mirostat_eta": 0.1}


@pytest.mark.parametrize("name,value,message", [
    ("top_p", 0.0, r"top_p must be between 0.0 and 1.0 \(0.0 excluded\), got 0.0"),
    ("top_p", -0.0, "top_p must be between"),
    ("top_p", 1e-50, r"got 1e-50 \(0.0 as the runtime's float32\)"),
    ("repeat_penalty", 0, r"repeat_penalty must be between 0.0 and 100.0 \(0.0 excluded\)"),
    ("repeat_penalty", 1e-46, "float32"),
])
def test_a_value_the_runtime_takes_as_zero_is_refused(name: str, value: float,
                                                      message: str) -> None:
    with pytest.raises(ParamError, match=message):
        P.validate("1.2.1", {name: value}, MODEL_DEFAULTS)
    assert P.validate("1.2.1", {name: 1e-30}, MODEL_DEFAULTS)[name] == 1e-30  # > 0 as float32


def test_mirostat_needs_tau_and_eta_above_zero() -> None:
    for name in ("mirostat_tau", "mirostat_eta"):
        with pytest.raises(ParamError, match=f"{name} must be .* when mirostat is 2, got 0.0"):
            P.validate("1.1.0", {"mirostat": 2, name: 0.0}, MODEL_DEFAULTS)
        assert P.validate("1.1.0", {"mirostat": 0, name: 0.0}, MODEL_DEFAULTS)[name] == 0.0
    # per run (1.3.0): the model's zero tau counts once a run turns mirostat on
    model = P.validate("1.3.0", {"mirostat_tau": 0.0}, MODEL_DEFAULTS)
    with pytest.raises(ParamError, match="mirostat_tau"):
        P.validate_sampling("1.3.0", {"mirostat": 1}, model)
    with pytest.raises(ParamError, match="top_p must be between"):
        P.validate_sampling("1.3.0", {"top_p": 0.0}, model)
    assert P.validate_sampling("1.3.0", {"mirostat": 1, "mirostat_tau": 3.0}, model)


def test_describe_says_an_excluded_bound() -> None:
    rows = {name: rng for name, _, rng, _ in P.describe("1.3.0")}
    assert rows["top_p"] == "0..1 (not 0)" and rows["temperature"] == "0..100"


def test_max_context_len_within_the_model_files_limit(demo_model: str, quiet_sim: None) -> None:
    with pytest.raises(ParamError, match="max_context_len must be between 1 and 16384 .*"
                                         "got 16385"):
        rkllm.LLM(demo_model, runtime="sim", max_context_len=16385)


FLOAT = st.one_of(st.floats(), st.integers(-3, 3), st.integers(), st.sampled_from(
    [0.0, -0.0, 1e-50, -1e-50, 1e-45, 1e-38, 0.5, 1.0, 1.0000001, 2.0, 100.0, 100.5]))
INT = st.one_of(st.integers(-3, 3), st.sampled_from([-2**31, 2**31 - 1, 2**31, 40, 100, 101]))
SAMPLING = st.fixed_dictionaries({}, optional={
    s.name: FLOAT if s.kind == "float" else INT for s in P.SAMPLING_PARAMS})
INIT = st.fixed_dictionaries({}, optional={
    "max_context_len": st.sampled_from([0, 64, 16384, 16385]), "n_keep": INT,
    "max_new_tokens": INT, "n_batch": st.sampled_from([0, 1, 2, 100, 101])})


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(family=st.sampled_from(P.FAMILIES), init=INIT, sampling=SAMPLING, run=SAMPLING)
@example(family="1.3.0", init={}, sampling={"top_p": 0.0}, run={})
@example(family="1.3.0", init={}, sampling={}, run={"repeat_penalty": 0.0})
@example(family="1.1.0", init={}, sampling={"mirostat": 1, "mirostat_eta": 1e-50}, run={})
@example(family="1.3.0", init={}, sampling={"mirostat_tau": 0.0}, run={"mirostat": 2})
def test_what_python_accepts_the_simulator_takes(demo_model: str, quiet_sim: None,
                                                 family: str, init: dict[str, Any],
                                                 sampling: dict[str, Any],
                                                 run: dict[str, Any]) -> None:
    """Any parameters Python accepts, the simulator (the strict model of the runtime) takes:
    rkllm_init and a short run succeed; whatever it would refuse, Python refuses first with
    a ParamError naming the parameter (never the runtime's ModelLoadError or
    GenerationError)."""
    given_params = {k: v for k, v in {**init, **sampling}.items() if k in P.schema(family)}
    per_run = run if family == "1.3.0" else {}
    try:
        llm = rkllm.LLM(demo_model, runtime=f"sim:{family}", **given_params)
    except ParamError as exc:
        assert any(name in str(exc) for name in given_params), exc
        return
    with llm:
        try:
            result = llm.complete("Hello", max_new_tokens=2, **per_run)
        except ParamError as exc:  # a model value may be the one a run's mirostat makes bad
            assert any(name in str(exc) for name in (*per_run, *given_params)), exc
            return
        assert result.finish_reason in ("stop", "length")
