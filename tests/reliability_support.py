"""What the reliability suites (test_races, test_properties, test_fork, test_faults_py) share:
how hard to push, the reference answer of a fresh model, the "model still usable" check, and
running risky code in a child interpreter so that a crash or hang fails one test, not pytest.

``RKLLM_STRESS=1`` multiplies every iteration count by 20 (``RKLLM_STRESS=N``, N > 1: by N);
docs/reliability.md gives the figures of such a run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

import rkllm


def _scale() -> int:
    value = os.environ.get("RKLLM_STRESS", "").strip()
    if not value or value == "0":
        return 1
    return 20 if value == "1" else max(1, int(value))


SCALE = _scale()
PROMPT = "Tell me about the sea."
REF_TOKENS = 24
# Every environment variable of the simulator that changes timing or text: the suites set
# their own values and nothing else may leak in from the caller's shell.
SIM_ENV_NAMES = ("RKLLM_SIM_TOKEN_US", "RKLLM_SIM_PREFILL_US", "RKLLM_SIM_RAW_TOKENS",
                 "RKLLM_SIM_IGNORE_EOS", "RKLLM_SIM_SEED", "RKLLM_SIM_MAX_CONTEXT",
                 "RKLLM_SIM_TRACE", "RKLLM_LIBRARY", "RKLLM_ABI")


def iterations(n: int) -> int:
    return n * SCALE


def demo() -> str:
    return rkllm.sim.demo_model_path()


def load(**params: Any) -> rkllm.LLM:
    """The demo model on the simulated runtime (the default family)."""
    return rkllm.LLM(demo(), runtime="sim", **params)


def reference() -> str:
    """The answer of a fresh model to PROMPT under the current environment (a suite computes
    it once, in a module fixture, after setting its environment)."""
    with load() as llm:
        text = llm.complete(PROMPT, max_new_tokens=REF_TOKENS).text
    assert text, "the demo model gave an empty reference answer"
    return text


def assert_usable(llm: rkllm.LLM, ref: str, context: str = "") -> None:
    """The model takes a new request at once (never stuck busy) and answers it exactly as a
    fresh model does (nothing left behind by an earlier call)."""
    where = f" after {context}" if context else ""
    try:
        got = llm.complete(PROMPT, max_new_tokens=REF_TOKENS).text
    except rkllm.BusyError as exc:
        raise AssertionError(f"model stuck busy{where}: {exc}") from None
    assert got == ref, f"answer changed{where}: {got!r} != reference {ref!r}"
    assert not llm.is_running, f"model still running after a finished request{where}"


@contextlib.contextmanager
def sim_environment(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """A suite's environment (for a module fixture): a quiet simulator, nothing inherited
    from the caller's shell, and ``extra``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RKLLM_SIM_QUIET", "1")
        for name in SIM_ENV_NAMES:
            mp.delenv(name, raising=False)
        for name, value in (extra or {}).items():
            mp.setenv(name, value)
        yield


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SIM_ENV_NAMES}
    env["RKLLM_SIM_QUIET"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a crash prints every thread's stack
    env.update(extra or {})
    return env


def run_child(code: str, *, timeout: float, env: Mapping[str, str] | None = None,
              args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter (the tests directory importable) and fails the
    test, with the child's output, if it crashed, hung (killed after ``timeout`` s) or exited
    non-zero."""
    full_env = child_env(env)
    here = os.path.dirname(os.path.abspath(__file__))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, full_env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env,
                            start_new_session=True)
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"child hung (killed after {timeout:.0f} s)\nstdout:\n{out[-3000:]}\n"
                    f"stderr:\n{err[-6000:]}")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if proc.returncode != 0:
        how = (f"killed by signal {signal.Signals(-proc.returncode).name}"
               if proc.returncode < 0 else f"exit code {proc.returncode}")
        pytest.fail(f"child {how} after {time.monotonic() - started:.1f} s\nstdout:\n"
                    f"{out[-3000:]}\nstderr:\n{err[-6000:]}")
    return result
