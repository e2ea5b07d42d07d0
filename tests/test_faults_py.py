"""Faults under load: a broken runtime library (finding 2), and the simulator's injected
faults (docs/simulator.md, "Fault injection") at random points, many times over, combined
with break / close / abort at random times, under both callback threads of the simulator.

Every fault must become a documented exception or a bounded wait, never a crash, hang or
stuck model; after each, the model (or a fresh one, where the runtime's handle is gone)
answers exactly like a fresh model. Each case runs in a child interpreter that prints its
counts (the figures in docs/reliability.md): a crash or hang fails that case only.
The single-shot behaviour of each fault is tests/test_sim_faults.py's; this is the churn.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    PROMPT,
    assert_usable,
    iterations,
    load,
    reference,
    run_child,
)

import rkllm

CALLBACK_THREADS = ("caller", "worker")
FAULT_VARS = ("RKLLM_SIM_FAULT", "RKLLM_SIM_STALL_MS", "RKLLM_SIM_ABORT_DELAY_MS")
LONG = 200


# ---- a broken runtime library (finding 2) --------------------------------------------------

LIBRARY_CHILD = """
import sys, rkllm
try:
    rkllm.LLM(rkllm.sim.demo_model_path(), runtime=sys.argv[1])
except rkllm.RKLLMError as exc:
    print(type(exc).__name__, exc)
else:
    sys.exit("a broken runtime library was loaded")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [0, 64, 4096, "half", "all but 1"])
def test_finding2_truncated_runtime_library_is_refused(tmp_path: Path, size: Any) -> None:
    lib = Path(rkllm.sim.library_path()).read_bytes()
    n = {"half": len(lib) // 2, "all but 1": len(lib) - 1}.get(size, size)
    broken = tmp_path / "librkllmrt.so"
    broken.write_bytes(lib[:n])
    out = run_child(LIBRARY_CHILD, timeout=60, args=(str(broken),))
    assert "Error" in out.stdout, out.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fifo", "directory", "/dev/zero", "/dev/null"])
def test_finding2_fifo_or_device_as_runtime_fails_without_hanging(tmp_path: Path,
                                                                  kind: str) -> None:
    path = tmp_path / "librkllmrt.so"
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes it: opening it for reading blocks forever
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path(kind)
    out = run_child(LIBRARY_CHILD, timeout=60, args=(str(path),))
    assert "Error" in out.stdout, out.stdout


# ---- injected faults at random points ------------------------------------------------------

def _set_faults(fault: str | None, stall_ms: int = 0, abort_delay_ms: int = 0) -> None:
    """Only between runs: the simulator reads these at every rkllm_run."""
    values = {"RKLLM_SIM_FAULT": fault, "RKLLM_SIM_STALL_MS": str(stall_ms or ""),
              "RKLLM_SIM_ABORT_DELAY_MS": str(abort_delay_ms or "")}
    for name, value in values.items():
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)


def _consume(llm: rkllm.LLM, how: str, k: int, delay: float) -> int:
    """One run, ended the ``how`` way after ``k`` pieces (or ``delay`` s for close/abort from
    another thread); returns the pieces read. Raises what the run raises."""
    stream = llm.generate(PROMPT, max_new_tokens=LONG)
    if how in ("thread-abort", "thread-close"):
        # abort() of the stream and close() of the model are the calls documented as safe
        # from another thread
        timer = threading.Timer(delay, stream.abort if how == "thread-abort" else llm.close)
        timer.start()
        try:
            return sum(1 for _ in stream)
        except rkllm.ClosedError:
            assert how == "thread-close", "ClosedError without a close()"
            return 0
        finally:
            timer.join()
    n = 0
    for _ in stream:
        n += 1
        if how != "read all" and n > k:
            if how == "abort":
                stream.abort()
            else:
                break
    stream.close()
    return n


def fault_loop(kind: str, n: int) -> None:
    """Runs in a child: n runs with ``kind`` faults at random points and random endings.
    Prints JSON counts; exits non-zero (via an assertion) at the first wrong outcome."""
    rng = random.Random(f"{kind}-{os.environ.get('RKLLM_SIM_CALLBACK_THREAD')}")
    _set_faults(None)
    ref = reference()
    llm = load()
    counts: dict[str, int] = {"runs": 0, "faults": 0, "generation_errors": 0}
    for i in range(n):
        how = rng.choice(["read all", "break", "abort", "thread-abort", "thread-close"])
        k, delay = rng.randrange(0, 30), rng.random() * 0.01
        if kind == "run errors":
            fault = rng.choice(["prefill_error", f"error_after:{rng.randrange(0, 40)}"])
            _set_faults(fault)
        elif kind == "no finish":
            fault = "no_finish"
            _set_faults(fault)
        elif kind == "late callback":
            fault, how = "late_callback", rng.choice(["abort", "break", "thread-abort"])
            _set_faults(fault)
        else:  # slow runtime: a stall before the first token, a slow abort
            fault = "stall/slow abort"
            _set_faults(None, rng.randrange(0, 30), rng.randrange(0, 30))
        counts["runs"] += 1
        counts["faults"] += 1
        try:
            _consume(llm, how, k, delay)
        except rkllm.GenerationError:
            counts["generation_errors"] += 1
            assert kind in ("run errors", "no finish"), f"{fault}: unexpected GenerationError"
        _set_faults(None)
        context = f"{fault}, ended by {how} (iteration {i})"
        if how == "thread-close":
            llm = load()
        if kind == "late callback":
            # the late callback comes 50 ms after the abort: the next run must not show it
            assert_usable(llm, ref, context)
            threading.Event().wait(0.06)
        assert_usable(llm, ref, context)
    if kind == "run errors":
        assert counts["generation_errors"] > n // 4, f"the faults did not take: {counts}"
    llm.close()
    print(json.dumps(counts))


FAULT_CHILD = "import sys, test_faults_py as t; t.fault_loop(sys.argv[1], int(sys.argv[2]))"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("thread", CALLBACK_THREADS)
@pytest.mark.parametrize("kind", ["run errors", "no finish", "late callback",
                                  "stall/slow abort"])
def test_injected_faults_at_random_points(kind: str, thread: str) -> None:
    n = iterations(60 if kind == "late callback" else 150)
    out = run_child(FAULT_CHILD, timeout=240, env={"RKLLM_SIM_CALLBACK_THREAD": thread},
                    args=(kind, str(n)))
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["runs"] == n, counts

