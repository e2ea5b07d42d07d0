"""fork() in every state of a model (finding 5): none loaded, idle, mid-generation, closed.

The child then exits normally (finalisers run), closes, generates with the parent's handles or
loads a model of its own. None of it may hang: the parent waits with a timeout and kills a
hung child (the test fails). The parent's handles raise a clear ClosedError in the child and
never touch the runtime there (its threads do not exist in the child); a model loaded in the
child works; the parent carries on as if nothing happened.

Each case runs in a fresh interpreter, so that a hang or crash fails one test only.
"""

from __future__ import annotations

import pytest
from reliability_support import iterations, run_child

FORK_CHILD = """
import os, signal, sys, time, traceback
import rkllm
from reliability_support import PROMPT, REF_TOKENS, assert_usable, load, reference
state, action = sys.argv[1], sys.argv[2]
ref = reference()
llm = stream = None
if state == "mid-generation":
    # a board's pace: at full speed the first batch can hold the whole run, and reading it in
    # the child would then never reach the runtime
    os.environ["RKLLM_SIM_TOKEN_US"] = "2000"
if state != "no model":
    llm = load()
    if state == "mid-generation":
        stream = llm.generate(PROMPT, max_new_tokens=200)
        next(stream)
    elif state == "after close":
        llm.close()


def refused(call, what):
    try:
        call()
    except rkllm.ClosedError as exc:
        if state != "after close":
            assert "fork" in str(exc), f"{what} in the child: unclear error {exc}"
        return
    raise AssertionError(f"{what} in the child used the parent's handle without an error")


def in_child():
    if action == "close":
        if stream is not None:
            stream.close()
        llm.close()
        assert llm.closed
    elif action == "generate":
        if stream is not None:
            refused(lambda: [None for _ in stream], "reading the parent's stream")
        refused(lambda: llm.complete(PROMPT, max_new_tokens=REF_TOKENS), "complete")
        refused(lambda: llm.generate(PROMPT), "generate")
    elif action == "load":
        with load() as own:
            assert_usable(own, ref, "loading a model in a forked child")


pid = os.fork()
if pid == 0:
    try:
        in_child()
    except BaseException:
        traceback.print_exc()
        os._exit(3)
    sys.exit(0)  # a normal exit: the finalisers of the parent's objects run here

deadline = time.monotonic() + 20
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        sys.exit(f"the child ({action}) hung: killed after 20 s")
    time.sleep(0.01)
code = os.waitstatus_to_exitcode(status)
if code != 0:
    sys.exit(f"the child ({action}) ended with {code}")
# the parent carries on
if stream is not None:
    for _ in stream:
        pass
if llm is not None and state != "after close":
    assert_usable(llm, ref, f"fork ({state}) and the child's {action}")
    llm.close()
with load() as fresh:
    assert_usable(fresh, ref, f"fork ({state})")
print("ok")
"""

CASES = [("no model", "exit"), ("no model", "load")] + [
    (state, action) for state in ("idle", "mid-generation", "after close")
    for action in ("exit", "close", "generate", "load")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("state", "action"), CASES, ids=[f"{s}-{a}" for s, a in CASES])
def test_finding5_fork_in_every_state(state: str, action: str) -> None:
    for _ in range(iterations(1)):
        out = run_child(FORK_CHILD, timeout=60, args=(state, action))
        assert out.stdout.strip().endswith("ok"), out.stdout
