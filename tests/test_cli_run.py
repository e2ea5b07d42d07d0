"""``rkllm run`` as a user runs it: a subprocess, the demo model, the simulated runtime."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROMPT = "Tell me about the sea."


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_")}
    env.update(extra)
    return env


def _run(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rkllm.cli", "run", *args], input=stdin,
                          capture_output=True, text=True, env=_env(**env), timeout=60)


def test_demo_streams_an_answer() -> None:
    r = _run("demo", PROMPT)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 20 and r.stdout.endswith("\n")
    assert "simulated" in r.stderr  # it says it is not the NPU


@pytest.mark.parametrize("family", ["1.1.0", "1.3.0"])
def test_options_and_verbose_timings(family: str) -> None:
    r = _run("demo", PROMPT, "-n", "7", "--top-k", "1", "--temperature", "0.7",
             "--runtime", f"sim:{family}", "--verbose", RKLLM_SIM_QUIET="1")
    assert r.returncode == 0, r.stderr
    for label in ("total duration:", "load duration:", "prompt eval duration:",
                  "eval count:           7 token(s)", "eval rate:", "finish reason:        length"):
        assert label in r.stderr
    assert ("prompt eval rate:" in r.stderr) == (family >= "1.2.1")


def test_prompt_from_stdin_equals_the_argument() -> None:
    a = _run("demo", PROMPT, "-n", "15", "--top-k", "1", RKLLM_SIM_QUIET="1")
    b = _run("demo", "-n", "15", "--top-k", "1", stdin=PROMPT + "\n", RKLLM_SIM_QUIET="1")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


def test_prompt_words_may_follow_the_options() -> None:
    """As with `ollama run`: the prompt may be several words, before or after the options."""
    a = _run("demo", PROMPT, "-n", "15", "--top-k", "1", RKLLM_SIM_QUIET="1")
    b = _run("demo", "-n", "15", "--top-k", "1", *PROMPT.split(), RKLLM_SIM_QUIET="1")
    c = _run("demo", "Tell", "me", "-n", "15", "about", "--top-k", "1", "the", "sea.",
             RKLLM_SIM_QUIET="1")
    assert a.returncode == b.returncode == c.returncode == 0, b.stderr + c.stderr
    assert a.stdout == b.stdout == c.stdout
    r = _run("demo", "-n", "5", "--no-such-option", "x")
    assert r.returncode == 2 and "unrecognized arguments: --no-such-option" in r.stderr


@pytest.mark.parametrize("family", ["1.1.0", "1.3.0"])
def test_system_prompt_goes_through_the_chat_template(family: str, tmp_path: Path) -> None:
    """--system reaches the runtime inside the model's template: as its system part
    (rkllm_set_chat_template, 1.2.0+), or rendered into the prompt (1.1.x has no template)."""
    trace = tmp_path / "trace.jsonl"
    r = _run("--runtime", f"sim:{family}", "--system", "You are a pirate.", "demo", "Hello",
             "-n", "5", RKLLM_SIM_QUIET="1", RKLLM_SIM_TRACE=str(trace))
    assert r.returncode == 0, r.stderr
    calls = [json.loads(line) for line in trace.read_text().splitlines()]
    system_part = "<|im_start|>system\nYou are a pirate.<|im_end|>\n"
    if family == "1.1.0":
        prompt = next(c for c in calls if c["call"] == "rkllm_run")["args"]["rkllm_input"]
        assert prompt["prompt_input"].startswith(system_part + "<|im_start|>user\nHello")
    else:
        template = next(c for c in calls if c["call"] == "rkllm_set_chat_template")["args"]
        assert template["system_prompt"] == system_part


def test_simulator_is_the_default_without_a_runtime() -> None:
    if any(os.path.exists(p) for p in ("/usr/lib/librkllmrt.so", "/usr/local/lib/librkllmrt.so")):
        pytest.skip("a runtime is installed on this machine")
    from rkllm.sim import demo_model_path

    r = _run(demo_model_path(), PROMPT, "-n", "5", RKLLM_SIM_QUIET="1")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("using the simulated runtime") == 1


def test_bad_input_is_one_line() -> None:
    r = _run("demo", PROMPT, "--top-p", "3")
    assert r.returncode == 1 and "top_p must be between" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run("demo", PROMPT, "--runtime", "/nonexistent/librkllmrt.so")
    assert r.returncode == 1 and "no such file" in r.stderr


def test_ctrl_c_exits_130_promptly() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "rkllm.cli", "run", "demo", PROMPT, "-n", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(RKLLM_SIM_QUIET="1", RKLLM_SIM_TOKEN_US="5000", RKLLM_SIM_IGNORE_EOS="1"))
    assert child.stdout is not None
    assert child.stdout.read(1)  # it is streaming
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=20)
    assert child.returncode == 130 and "Traceback" not in err
    assert time.monotonic() - sent < 3


def test_special_tokens_hidden_unless_asked() -> None:
    hidden = _run("demo", PROMPT, RKLLM_SIM_QUIET="1")
    shown = _run("demo", PROMPT, "--show-special", RKLLM_SIM_QUIET="1")
    assert hidden.returncode == shown.returncode == 0
    assert "<|im_end|>" in shown.stdout and "<|im_end|>" not in hidden.stdout


def test_an_empty_prompt_on_standard_input_is_a_usage_error() -> None:
    for stdin in ("", "\n  \n"):
        r = _run("demo", stdin=stdin)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.startswith("rkllm: error: no prompt: give it after the model")
        assert len(r.stderr.splitlines()) == 1


def test_a_vendor_release_that_cannot_run_here_suggests_no_arch_option(tmp_path: Path) -> None:
    """`run` has no --arch: the hint of `rkllm runtime pull` must not leak into it."""
    r = _run("--runtime", "1.3.0", "demo", PROMPT, XDG_CACHE_HOME=str(tmp_path))  # empty cache
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--arch" not in r.stderr and len(r.stderr.splitlines()) == 1
    if platform.machine().lower().startswith(("arm", "aarch")):
        assert "rkllm runtime pull 1.3.0" in r.stderr
    else:  # Rockchip ships no runtime for this machine: the simulated one is the way
        assert "sim:1.3.0" in r.stderr


def _context_used(trace: Path) -> int:
    calls = [json.loads(line) for line in trace.read_text().splitlines()]
    init = next(c for c in calls if c["call"] == "rkllm_init")
    return int(init["args"]["param"]["max_context_len"])


@pytest.mark.parametrize("verbose_first", [True, False])
def test_verbose_says_which_context_length_and_why(verbose_first: bool, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    args = ["--verbose", "run", "demo"] if verbose_first else ["run", "demo", "--verbose"]
    r = subprocess.run([sys.executable, "-m", "rkllm.cli", *args, PROMPT, "-n", "3"],
                       capture_output=True, text=True, timeout=60,
                       env=_env(RKLLM_SIM_QUIET="1", RKLLM_SIM_TRACE=str(trace)))
    assert r.returncode == 0, r.stderr
    m = re.search(r"^max_context_len: (\d+) tokens \((.*)\)$", r.stderr, re.M)
    assert m, r.stderr
    used = int(m.group(1))
    assert used == _context_used(trace)  # what the runtime was given
    # the demo model's file allows 16384: the default is that, or a documented cap below it
    assert m.group(2) == ("from the model file" if used == 16384
                          else "the default; the model file allows 16384")
    trace.unlink()
    r = _run("demo", PROMPT, "-n", "3", "--max-context-len", "1000", "--verbose",
             RKLLM_SIM_QUIET="1", RKLLM_SIM_TRACE=str(trace))
    assert "max_context_len: 1000 tokens (from --max-context-len)" in r.stderr
    assert _context_used(trace) == 1000
    assert "max_context_len" not in _run("demo", PROMPT, "-n", "3", RKLLM_SIM_QUIET="1").stderr


@pytest.mark.parametrize("verb", ["run", "chat"])
def test_a_prompt_longer_than_the_context_says_what_to_do(verb: str) -> None:
    from rkllm import errors

    if not hasattr(errors, "ContextLengthError"):
        pytest.skip("needs rkllm.errors.ContextLengthError (the core's check of the context)")
    long_prompt = "word " * 200
    args = [sys.executable, "-m", "rkllm.cli", verb, "demo", "--max-context-len", "64"]
    r = subprocess.run(args + ([long_prompt] if verb == "run" else []), timeout=60,
                       input="" if verb == "run" else long_prompt + "\n",
                       capture_output=True, text=True, env=_env(RKLLM_SIM_QUIET="1"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("rkllm: error:")]
    assert len(lines) == 1 and "64" in lines[0], r.stderr
    assert "--max-context-len up to 16384 (the model file's limit) gives more room" in lines[0]
    assert ("/clear starts the conversation over" in lines[0]) == (verb == "chat")
