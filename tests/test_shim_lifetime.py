"""Who owns the model's memory, and fork(): a stream ended after the garbage collector freed
its model, and a model used in a child process after fork(), never crash or hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import rkllm
from rkllm import sim
from rkllm.errors import ClosedError

CYCLE = """
import gc, os, rkllm
from rkllm import sim
os.environ["RKLLM_SIM_QUIET"] = "1"
for i in range(int(os.environ.get("ROUNDS", "20"))):
    llm = rkllm.LLM(sim.demo_model_path(), runtime="sim")
    s = llm.generate("Hello")
    next(s)
    box = [llm, s]
    box.append(box)
    del llm, s, box
    gc.collect()
fresh = rkllm.LLM(sim.demo_model_path(), runtime="sim")
print(fresh.complete("Hello").text)
"""


def _script(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Runs a Python script in its own process group, killed whole if it hangs."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the script hung")
    return proc.returncode, out, err


def test_stream_and_model_in_a_collected_cycle(quiet_sim: None) -> None:
    # issue 10: the model's finaliser could free it before the stream's end ran
    rc, out, err = _script(CYCLE, env={"ROUNDS": "30"})
    assert rc == 0, err[-3000:]
    reference = rkllm.LLM(sim.demo_model_path(), runtime="sim")
    try:
        assert out.strip() == reference.complete("Hello").text.strip()
    finally:
        reference.close()


EXIT_CHILD = """
import os, sys, rkllm
from rkllm import sim
llm = rkllm.LLM(sim.demo_model_path(), runtime="sim")
stream = llm.generate("Hello", max_new_tokens=2000) if sys.argv[1] == "generating" else None
if stream is not None:
    next(stream)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal interpreter exit: the finalisers free the parent's model
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("state", ["idle", "generating"])
def test_child_exits_normally_after_fork(quiet_sim: None, state: str) -> None:
    rc, out, err = _script(EXIT_CHILD, state, env={"RKLLM_SIM_TOKEN_US": "2000"})
    assert rc == 0, err[-3000:]
    assert out.strip() == "child 0"


def _in_child(action: str, llm: rkllm.LLM, stream: object | None) -> int:
    """What the child does with the parent's model; its exit code says what happened."""
    try:
        if action == "exit":
            return 0
        if action == "close":
            llm.close()
            return 0
        if action == "generate":
            try:
                llm.complete("Hello")
            except ClosedError as exc:
                return 0 if "fork" in str(exc) or "closed" in str(exc) else 3
            return 4
        if action == "pull":
            assert stream is not None
            try:
                while True:
                    next(stream)  # type: ignore[call-overload]
            except ClosedError as exc:
                return 0 if "before fork()" in str(exc) else 3
            except StopIteration:
                return 4
        if action == "reload":
            fresh = rkllm.LLM(sim.demo_model_path(), runtime="sim")
            text = fresh.complete("Hello").text
            fresh.close()
            return 0 if text else 5
    except BaseException:  # noqa: BLE001 - report, never run the parent's code in the child
        import traceback

        traceback.print_exc()
        return 6
    return 7


def _fork_and_wait(action: str, llm: rkllm.LLM, stream: object | None) -> int:
    pid = os.fork()
    if pid == 0:
        code = _in_child(action, llm, stream)
        os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the child ({action}) hung")


@pytest.mark.parametrize("action", ["exit", "close", "generate", "reload"])
@pytest.mark.parametrize("state", ["idle", "generating"])
def test_fork_with_a_loaded_model(quiet_sim: None, monkeypatch: pytest.MonkeyPatch,
                                  state: str, action: str) -> None:
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "2000")  # a run still going when we fork
    llm = rkllm.LLM(sim.demo_model_path(), runtime="sim")
    try:
        stream = None
        if state == "generating":
            stream = llm.generate("Hello", max_new_tokens=2000)
            next(stream)
        code = _fork_and_wait(action, llm, stream)
        assert code == 0
        # the parent's model is untouched by what the child did
        if stream is not None:
            stream.close()  # type: ignore[attr-defined]
        monkeypatch.delenv("RKLLM_SIM_TOKEN_US")
        assert llm.complete("Hello", max_new_tokens=8).text
    finally:
        llm.close()


def test_fork_mid_generation_child_pulls(quiet_sim: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "2000")
    llm = rkllm.LLM(sim.demo_model_path(), runtime="sim")
    try:
        stream = llm.generate("Hello", max_new_tokens=2000)
        next(stream)
        assert _fork_and_wait("pull", llm, stream) == 0
        stream.close()
    finally:
        llm.close()
