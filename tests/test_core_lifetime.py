"""Who owns a run, and how it ends (issue 10 #4, #8, #9, #10; issue 11 #4): a stream keeps
its model alive; every way of letting go of a stream ends its run; a failed start never
ends someone else's run; close() racing a run gives ClosedError."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import rkllm
from rkllm import _lowlevel as ll
from rkllm.errors import BusyError, ClosedError
from rkllm.request import RunRequest
from rkllm.stream import Stream

PROMPT = "Tell me about the river."


@pytest.fixture
def model(demo_model: str, quiet_sim: None) -> Iterator[rkllm.LLM]:
    with rkllm.LLM(demo_model, runtime="sim:1.2.1", max_context_len=1024) as llm:
        yield llm


def reference(llm: rkllm.LLM) -> str:
    return llm.complete(PROMPT, max_new_tokens=20).text


def test_run_request_fields_are_the_compiled_interfaces() -> None:
    names = {f.name for f in dataclasses.fields(RunRequest)}
    counts = {"n_token_ids", "n_embed_floats", "n_image_floats", "has_sampling"}
    # every field reaches C (none misspelt) and every C field but the counts can be set;
    # embed_size: the shim's buffer checks add it to rkshim_run_args (a shim without it
    # checks nothing, so the request's value is simply not sent)
    assert names | counts == set(ll.RUN_FIELDS) | {"embed_size"}
    assert "top_k" in ll.SAMPLING_FIELDS and "max_context_len" in ll.PARAM_FIELDS
    assert {s.name for s in rkllm.params.SAMPLING_PARAMS} == set(ll.SAMPLING_FIELDS)
    # the params schema has one entry per field of the shim's rkshim_param
    assert {s.name for s in rkllm.params.MODEL_PARAMS} == {*ll.PARAM_FIELDS,
                                                          *ll.PARAM_STR_FIELDS}


def test_a_stream_keeps_its_model_alive(demo_model: str, quiet_sim: None) -> None:
    llm = rkllm.LLM(demo_model, runtime="sim:1.2.1", max_context_len=1024)
    expected = reference(llm)
    stream = llm.generate(PROMPT, max_new_tokens=20)
    first = next(stream)
    del llm
    gc.collect()
    assert first + "".join(stream) == expected


def test_gc_of_a_cycle_holding_model_and_stream() -> None:
    """The issue's use-after-free: the model's finaliser must not run before the stream's
    (in a child process, so a crash is reported as such)."""
    code = """
import gc, rkllm, rkllm.sim
for i in range(300):
    llm = rkllm.LLM(rkllm.sim.demo_model_path(), runtime="sim:1.2.1", max_context_len=512)
    s = llm.generate("Tell me about the sea.")
    next(s)
    box = [llm, s]
    box.append(box)
    del llm, s, box
    gc.collect()
print("survived")
"""
    env = dict(os.environ, RKLLM_SIM_QUIET="1", RKLLM_SIM_TOKEN_US="20")
    out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "survived" in out.stdout, out.stderr[-2000:]


def test_a_stream_collected_in_a_cycle_ends_its_run(demo_model: str, quiet_sim: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "2000")  # the run is still going when collected
    model = rkllm.LLM(demo_model, runtime="sim:1.2.1", max_context_len=1024)
    for read in ("next", "read_nowait"):
        stream = model.generate(PROMPT, max_new_tokens=200)
        next(stream) if read == "next" else stream.read_nowait()
        box: list[Any] = [stream]
        box.append(box)
        del stream, box
        gc.collect()  # weak references die before finalisers run: the run still ends
        assert not model.is_running
    model.close()


def test_dropping_a_stream_after_read_nowait_ends_the_run(model: rkllm.LLM) -> None:
    expected = reference(model)
    for _ in range(200):
        stream = model.generate(PROMPT, max_new_tokens=200)
        stream.read_nowait()
        del stream
        assert reference(model) == expected  # never BusyError


def test_a_stream_never_read_ends_when_dropped(model: rkllm.LLM) -> None:
    expected = reference(model)
    stream = model.generate(PROMPT, max_new_tokens=200)
    it = iter(stream)  # a generator never started: its finally never runs
    del stream, it
    assert reference(model) == expected


def test_a_failed_start_does_not_end_the_running_one(model: rkllm.LLM) -> None:
    expected = model.complete(PROMPT, max_new_tokens=200)
    first = model.generate(PROMPT, max_new_tokens=200)
    for _ in range(5):
        with pytest.raises(BusyError):
            model.generate(PROMPT)
        with pytest.raises(BusyError):
            model.complete(PROMPT)
        gc.collect()
    assert "".join(first) == expected.text
    assert first.finish_reason == expected.finish_reason


def test_stream_del_after_an_interrupted_init(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with pytest.raises(AttributeError):
        Stream(None, None)  # type: ignore[arg-type]  # fails before it has a run
    gc.collect()
    assert seen == []


def test_break_out_of_async_for_ends_the_run(model: rkllm.LLM) -> None:
    expected = reference(model)

    async def main() -> None:
        for _ in range(300):
            async for _piece in model.agenerate(PROMPT, max_new_tokens=200):
                break
            # no gc, no sleep: the loop's reader must not keep the stream alive
            assert (await model.acomplete(PROMPT, max_new_tokens=20)).text == expected
    asyncio.run(main())


def test_dropping_an_async_stream_removes_its_reader(model: rkllm.LLM) -> None:
    from rkllm.aio import AsyncStream

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stream = model.generate(PROMPT, max_new_tokens=200)
        fd = stream.fileno()
        astream = AsyncStream(stream)
        await astream.__anext__()
        del stream, astream  # no gc: reference counting alone must end it
        assert not model.is_running
        assert not loop.remove_reader(fd)  # nothing left registered on the fd
        assert (await model.acomplete(PROMPT, max_new_tokens=20)).text
    asyncio.run(main())


def test_complete_racing_close_raises_closed_error(demo_model: str, quiet_sim: None) -> None:
    """close() from another thread at a random point of complete(): the answer, or
    ClosedError; never AssertionError (the issue's: close between the run's end and its
    outcome)."""
    rng = random.Random(1)
    outcomes: dict[str, int] = {}
    for _ in range(400):
        llm = rkllm.LLM(demo_model, runtime="sim:1.2.1", max_context_len=1024)
        timer = threading.Timer(rng.random() * 0.002, llm.close)
        timer.start()
        try:
            reason = llm.complete(PROMPT, max_new_tokens=20).finish_reason
        except ClosedError:
            reason = "closed"
        outcomes[reason] = outcomes.get(reason, 0) + 1
        timer.join()
        llm.close()
    assert outcomes.get("closed") and set(outcomes) <= {"closed", "length", "stop", "abort"}


def test_result_of_a_run_cut_by_close(model: rkllm.LLM) -> None:
    stream = model.start(model.make_request(PROMPT, max_new_tokens=200), chunked=True,
                         collect=True)
    next(stream)
    model.close()
    with pytest.raises(ClosedError):
        list(stream)
        stream.result()
