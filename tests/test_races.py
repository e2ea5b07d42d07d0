"""Races, thousands of iterations against the simulated runtime: break at random points,
close() from another thread, garbage collection of live streams (reference cycles too),
asyncio cancellation and break, real SIGINT and KeyboardInterrupt injected at every line of
the call path, interpreter exit mid-run, many models and threads at once.

After every iteration the model must take a new request at once (never stuck busy) and answer
it exactly as a fresh model does. Every test runs in a child interpreter (a crash or hang
fails that test, with the child's output, and not the whole pytest run).
Test names carry the number of the finding they guard (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from reliability_support import (
    PROMPT,
    REF_TOKENS,
    assert_usable,
    iterations,
    load,
    reference,
    run_child,
    sim_environment,
)

import rkllm

# 0.1 ms per token and no end of text: a run of LONG tokens lasts about 20 ms, so random
# delays and break points land in the middle of it
RACE_ENV = {"RKLLM_SIM_TOKEN_US": "100", "RKLLM_SIM_IGNORE_EOS": "1"}
LONG = 200
ENDLESS = 10**6  # a run that would last minutes: an exit that waits for it is a hang


@pytest.fixture(scope="module", autouse=True)
def race_env() -> Iterator[None]:
    with sim_environment(RACE_ENV):
        yield


def _read(stream: Any, k: int) -> int:
    """Reads up to k + 1 pieces, then leaves the loop; returns how many were read."""
    n = 0
    for _ in stream:
        n += 1
        if n > k:
            break
    return n


# Cases run in a child interpreter each (a crash or hang there fails its test, not pytest);
# a case gets a fresh model and the reference answer.
CASES: dict[str, Callable[[rkllm.LLM, str], None]] = {}


def case(fn: Callable[[rkllm.LLM, str], None]) -> Callable[[rkllm.LLM, str], None]:
    CASES[fn.__name__] = fn
    return fn


def run_case(name: str) -> None:
    """The child's side of :func:`in_child`."""
    ref = reference()
    with load() as llm:
        CASES[name](llm, ref)
    print("ok")


def in_child(name: str) -> None:
    run_child("import sys, test_races as t; t.run_case(sys.argv[1])", timeout=240,
              env=RACE_ENV, args=(name,))


# ---- break, drop, read_nowait ------------------------------------------------------------

@case
def break_at_random_points(llm: rkllm.LLM, ref: str) -> None:
    rng = random.Random(1)
    for i in range(iterations(300)):
        k = rng.randrange(0, 40)
        stream = llm.generate(PROMPT, max_new_tokens=LONG, chunked=rng.random() < 0.3)
        how = rng.choice(["break", "break", "close", "drop-unread", "abort"])
        if how == "break":
            _read(stream, k)
        elif how == "close":
            for _ in range(k + 1):
                next(stream)
            stream.close()
        elif how == "abort":
            _read(stream, k)
            stream.abort()
        del stream
        assert_usable(llm, ref, f"{how} after {k + 1} pieces (iteration {i})")


@pytest.mark.timeout(300)
def test_break_at_random_points_leaves_model_ready(race_env: None) -> None:
    in_child("break_at_random_points")


@case
def drop_after_read_nowait(llm: rkllm.LLM, ref: str) -> None:
    rng = random.Random(9)
    for i in range(iterations(300)):
        stream = llm.generate(PROMPT, max_new_tokens=LONG)
        for _ in range(rng.randrange(1, 4)):
            stream.read_nowait()
            time.sleep(rng.random() * 0.002)
        del stream
        assert_usable(llm, ref, f"dropping a stream read with read_nowait (iteration {i})")


@pytest.mark.timeout(300)
def test_finding9_dropping_stream_after_read_nowait_ends_run(race_env: None) -> None:
    in_child("drop_after_read_nowait")


# ---- close() from another thread ---------------------------------------------------------

def _close_race(rng: random.Random, use_generate: bool) -> tuple[str, float]:
    """One model, a thread generating in a loop (runs of random length), close() from here at
    a random time. Returns how the worker ended ("closed" or the repr of another exception)
    and how long close() took."""
    model = load()
    limit = rng.choice((1, 4, LONG))
    ended: list[str] = []

    def work() -> None:
        try:
            while True:
                if use_generate:
                    for _ in model.generate(PROMPT, max_new_tokens=limit):
                        pass
                else:
                    model.complete(PROMPT, max_new_tokens=limit)
        except rkllm.ClosedError:
            ended.append("closed")
        except BaseException as exc:  # noqa: BLE001 - the finding is which type arrives
            ended.append(repr(exc))

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    time.sleep(rng.random() * rng.choice((0.001, 0.005, 0.03)))
    started = time.monotonic()
    model.close()
    took = time.monotonic() - started
    worker.join(30)
    if worker.is_alive():
        return "worker still running 30 s after close()", took
    return ended[0], took


@case
def close_from_another_thread(llm: rkllm.LLM, ref: str) -> None:
    rng = random.Random(10)
    for i in range(iterations(400)):
        how, _ = _close_race(rng, use_generate=bool(i % 2))
        assert how == "closed", (f"iteration {i} ({'generate' if i % 2 else 'complete'}): "
                                 f"the call racing close() ended with {how}, not ClosedError")
    assert_usable(llm, ref, "the close() races of other models")


@pytest.mark.timeout(300)
def test_finding10_close_from_another_thread_raises_closed_error(race_env: None) -> None:
    in_child("close_from_another_thread")


# ---- garbage collection (finding 4) ------------------------------------------------------

GC_CHILD = """
import gc, random, sys
from reliability_support import PROMPT, assert_usable, load, reference
LONG = 200
ref = reference()
rng = random.Random(4)
for i in range(int(sys.argv[1])):
    how = ("model+stream cycle", "stream cycle", "model dropped first")[i % 3]
    llm = load()
    s = llm.generate(PROMPT, max_new_tokens=LONG)
    for _ in range(rng.randrange(1, 5)):
        next(s)
    if how == "model+stream cycle":  # finding 4's reproduction
        box = [llm, s]
        box.append(box)
        del llm, s, box
        gc.collect()
    elif how == "stream cycle":
        s.me = s
        del s
        gc.collect()
        assert_usable(llm, ref, f"collecting a live stream in a cycle (iteration {i})")
        llm.close()
    else:
        del llm
        gc.collect()
        try:
            for _ in s:
                pass
        except Exception as exc:
            import rkllm
            assert isinstance(exc, rkllm.RKLLMError), f"iteration {i}: {exc!r}"
        del s
        gc.collect()
    with load() as fresh:
        assert_usable(fresh, ref, f"{how} (iteration {i})")
print("ok")
"""


@pytest.mark.timeout(300)
def test_finding4_gc_of_live_stream_in_reference_cycle(race_env: None) -> None:
    run_child(GC_CHILD, timeout=240, env=RACE_ENV, args=(str(iterations(150)),))


# ---- asyncio (finding 8) -----------------------------------------------------------------

async def _assert_usable_async(llm: rkllm.LLM, ref: str, context: str) -> None:
    try:
        got = (await llm.acomplete(PROMPT, max_new_tokens=REF_TOKENS)).text
    except rkllm.BusyError as exc:
        raise AssertionError(f"model stuck busy after {context}: {exc}") from None
    assert got == ref, f"answer changed after {context}: {got!r}"


@case
def break_out_of_async_for(llm: rkllm.LLM, ref: str) -> None:
    rng = random.Random(8)

    async def main() -> None:
        for i in range(iterations(300)):
            k = rng.randrange(0, 20)
            n = 0
            async for _ in llm.agenerate(PROMPT, max_new_tokens=LONG):
                n += 1
                if n > k:
                    break
            await _assert_usable_async(llm, ref, f"break after {n} pieces (iteration {i})")

    asyncio.run(main())


@pytest.mark.timeout(300)
def test_finding8_break_out_of_async_for_ends_run(race_env: None) -> None:
    in_child("break_out_of_async_for")


@case
def asyncio_cancellation(llm: rkllm.LLM, ref: str) -> None:
    rng = random.Random(18)

    async def consume() -> None:
        async for _ in llm.agenerate(PROMPT, max_new_tokens=LONG):
            pass

    async def main() -> None:
        for i in range(iterations(300)):
            delay = rng.random() * 0.02
            if i % 2:
                task = asyncio.ensure_future(consume())
                await asyncio.sleep(delay)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                how = "task.cancel()"
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(llm.acomplete(PROMPT, max_new_tokens=LONG), delay)
                how = "wait_for timeout on acomplete"
            await _assert_usable_async(llm, ref, f"{how} after {delay * 1000:.1f} ms "
                                                 f"(iteration {i})")

    asyncio.run(main())


@pytest.mark.timeout(300)
def test_asyncio_cancellation_at_random_times(race_env: None) -> None:
    in_child("asyncio_cancellation")


# ---- Ctrl-C (finding 3) ------------------------------------------------------------------

SIGINT_CHILD = """
import json, os, random, signal, sys, threading
import rkllm
from reliability_support import PROMPT, REF_TOKENS, load, reference
LONG = 200
ref = reference()
llm = load()
rng = random.Random(3)
main = threading.main_thread().ident
counts = {"runs": 0, "interrupted": 0, "stuck": 0, "changed": 0, "other": []}

def send(how):
    if how == "pthread_kill":
        signal.pthread_kill(main, signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT)

for i in range(int(sys.argv[1])):
    counts["runs"] += 1
    # short and long runs, early and late signals: the windows that break are narrow (around
    # the start and the end of a run), so the signal must land everywhere
    limit = rng.choice((1, 2, 8, LONG))
    timer = threading.Timer(rng.random() * rng.choice((0.001, 0.004, 0.02)), send,
                            (("pthread_kill", "kill")[i % 2],))
    try:
        timer.start()
        if i % 4 < 2:
            llm.complete(PROMPT, max_new_tokens=limit)
        else:
            for _ in llm.generate(PROMPT, max_new_tokens=limit):
                pass
        timer.join()
        for _ in range(10000):  # the handler runs at the interpreter's next check
            pass
    except KeyboardInterrupt:
        counts["interrupted"] += 1
        timer.join()
    except BaseException as exc:
        counts["other"].append(repr(exc))
        timer.join()
    try:
        got = llm.complete(PROMPT, max_new_tokens=REF_TOKENS).text
        if got != ref:
            counts["changed"] += 1
    except rkllm.BusyError:
        counts["stuck"] += 1
        llm.close()
        llm = load()
print(json.dumps(counts))
"""


@pytest.mark.timeout(300)
def test_finding3_real_sigint_never_leaves_model_busy(race_env: None) -> None:
    n = iterations(800)
    out = run_child(SIGINT_CHILD, timeout=240, env=RACE_ENV, args=(str(n),))
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["interrupted"] > n // 10, f"SIGINT seldom landed in a call: {counts}"
    assert counts["other"] == [], f"Ctrl-C surfaced as another exception: {counts}"
    assert (counts["stuck"], counts["changed"]) == (0, 0), (
        f"after Ctrl-C: {counts['stuck']} of {counts['interrupted']} interrupted runs left the "
        f"model stuck busy, {counts['changed']} changed its next answer")


_PACKAGE = os.path.dirname(os.path.abspath(rkllm.__file__))


def _in_finaliser(frame: Any) -> bool:
    """Whether ``frame`` runs (directly or a few calls down) in one of the package's
    finalisers."""
    for _ in range(8):
        if frame is None:
            return False
        if frame.f_code.co_name == "__del__" and frame.f_code.co_filename.startswith(_PACKAGE):
            return True
        frame = frame.f_back
    return False


class _Injector:
    """A sys.settrace hook that raises KeyboardInterrupt at the ``at``-th line the package
    executes (``at=0``: never; it then only counts the lines).

    ``finalisers=False`` leaves out the lines of the package's finalisers: under asyncio the
    garbage collector runs them in the middle of asyncio's own code (building the next event
    loop, in selectors), and CPython 3.11 does not survive a trace function raising there (a
    segfault in selectors.py, "'traceback' object is not callable", "issubclass() arg 1 must
    be a class", a half-built _UnixSelectorEventLoop): artefacts of the injection, not of the
    package. A real Ctrl-C is not delivered through the trace machinery."""

    def __init__(self, at: int, finalisers: bool = True) -> None:
        self.at = at
        self.finalisers = finalisers
        self.count = 0
        self.where = ""

    def calls(self, frame: Any, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(_PACKAGE):
            return None
        if not self.finalisers and _in_finaliser(frame):
            return None
        return self.lines

    def lines(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
            if self.count == self.at:
                self.where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
                # the last line the child printed tells where a crash came from
                print(f"Ctrl-C at {self.where}", file=sys.stderr, flush=True)
                raise KeyboardInterrupt
        return self.lines


def _traced(call: Callable[[rkllm.LLM], object], llm: rkllm.LLM, at: int,
            finalisers: bool = True) -> tuple[_Injector, str | None]:
    """Runs ``call`` with an interrupt at line ``at``: (the injector, repr of what came out
    instead of KeyboardInterrupt, if anything). Only the repr is kept: an exception keeps its
    traceback, whose frames keep the interrupted stream reachable, so the model rightly
    still counts it as a live owner (BusyError), as after any exception kept alive."""
    injector = _Injector(at, finalisers)
    sys.settrace(injector.calls)
    try:
        call(llm)
        return injector, None
    except KeyboardInterrupt:
        return injector, None
    except BaseException as exc:  # noqa: BLE001 - the caller reports it
        return injector, repr(exc)
    finally:
        sys.settrace(None)


def _interrupt_every_line(llm: rkllm.LLM, ref: str, call: Callable[[rkllm.LLM], object],
                          finalisers: bool = True) -> None:
    """Raises KeyboardInterrupt at each line of ``call`` in turn; each time the interrupt must
    come out as KeyboardInterrupt and leave the model as a fresh one."""
    total = _traced(call, llm, 0, finalisers)[0].count
    assert total > 20, f"the trace saw only {total} lines of the package"
    failures = []
    model = llm
    # what finalisers raised ("Exception ignored"), as text: like Python's default hook,
    # keep neither the exception nor its frames (they would keep the stream alive)
    ignored: list[str] = []
    hook = sys.unraisablehook
    for at in range(1, total + 1):
        del ignored[:]
        sys.unraisablehook = lambda u: (
            None if isinstance(u.exc_value, KeyboardInterrupt) else ignored.append(
                repr(u.exc_value)))
        try:
            injector, surfaced = _traced(call, model, at, finalisers)
        finally:
            sys.unraisablehook = hook
        if surfaced is not None:
            failures.append(f"at {injector.where}: Ctrl-C surfaced as {surfaced}")
        # the injected interrupt itself may land in a finaliser; nothing else may come out
        failures += [f"at {injector.where}: a finaliser raised {e}" for e in ignored]
        try:
            assert_usable(model, ref, f"Ctrl-C at {injector.where}")
        except AssertionError as err:
            failures.append(str(err))
            if model is not llm:
                model.close()
            model = load()  # a model left busy for good: go on with a fresh one
    if model is not llm:
        model.close()
    assert not failures, (f"{len(failures)} of {total} interrupt points broke the model:\n"
                          + "\n".join(failures[:40]))


def _complete(llm: rkllm.LLM) -> None:
    llm.complete(PROMPT, max_new_tokens=REF_TOKENS)


def _generate(llm: rkllm.LLM) -> None:
    for _ in llm.generate(PROMPT, max_new_tokens=REF_TOKENS):
        pass


def _acomplete(llm: rkllm.LLM) -> None:
    asyncio.run(llm.acomplete(PROMPT, max_new_tokens=REF_TOKENS))


CHAT = [{"role": "system", "content": "You answer like a pirate."},
        {"role": "user", "content": "Name a river."},
        {"role": "assistant", "content": "The Nile."},
        {"role": "user", "content": "And another?"}]


def _chat(llm: rkllm.LLM) -> None:
    llm.create_chat_completion(CHAT, max_tokens=8)


def _chat_stream(llm: rkllm.LLM) -> None:
    for _ in llm.create_chat_completion(CHAT, max_tokens=8, stream=True):
        pass


for _name, _call in {"complete": _complete, "generate": _generate, "acomplete": _acomplete,
                     "chat_completion": _chat, "chat_completion_stream": _chat_stream}.items():
    CASES[f"every_line_{_name}"] = functools.partial(_interrupt_every_line, call=_call,
                                                     finalisers=_name != "acomplete")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("call", ["complete", "generate", "acomplete"])
def test_finding3_keyboard_interrupt_at_every_line(race_env: None, call: str) -> None:
    in_child(f"every_line_{call}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("call", ["chat_completion", "chat_completion_stream"])
def test_finding3_keyboard_interrupt_in_chat_completion_leaves_no_template(
        race_env: None, call: str) -> None:
    in_child(f"every_line_{call}")


# ---- interpreter exit mid-run ------------------------------------------------------------

EXIT_CHILD = """
import asyncio, gc, sys, threading, time
from reliability_support import PROMPT, load
ENDLESS = 10**6
how = sys.argv[1]
llm = load()
if how == "live stream":
    s = llm.generate(PROMPT, max_new_tokens=ENDLESS)
    next(s)
elif how == "thread in complete":
    threading.Thread(target=llm.complete, args=(PROMPT,), kwargs={"max_new_tokens": ENDLESS},
                     daemon=True).start()
    time.sleep(0.05)
elif how == "model+stream cycle":
    s = llm.generate(PROMPT, max_new_tokens=ENDLESS)
    next(s)
    box = [llm, s]
    box.append(box)
    del llm, s, box
elif how == "async for":
    async def main():
        agen = llm.agenerate(PROMPT, max_new_tokens=ENDLESS)
        await agen.__anext__()
        sys.exit(0)
    asyncio.run(main())
elif how == "eight models":
    streams = []
    for _ in range(8):
        m = load()
        streams.append(m.generate(PROMPT, max_new_tokens=ENDLESS))
        next(streams[-1])
sys.exit(0)
"""

EXIT_CASES = ("live stream", "thread in complete", "model+stream cycle", "async for",
              "eight models")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", EXIT_CASES)
def test_interpreter_exit_mid_run_is_prompt_and_clean(race_env: None, how: str) -> None:
    for _ in range(iterations(3)):
        out = run_child(EXIT_CHILD, timeout=30, env=RACE_ENV, args=(how,))
        assert "Fatal Python error" not in out.stderr and "Traceback" not in out.stderr, \
            out.stderr[-3000:]


# ---- many models, many threads -----------------------------------------------------------

def _in_threads(n: int, work: Callable[[int], None], timeout: float) -> None:
    errors: list[str] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {exc!r}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"threads {stuck} still running after {timeout} s"
    assert not errors, "\n".join(errors[:20])


@case
def eight_models(llm: rkllm.LLM, ref: str) -> None:
    def work(i: int) -> None:
        rng = random.Random(100 + i)
        with load() as model:
            for j in range(iterations(40)):
                if rng.random() < 0.5:
                    _read(model.generate(PROMPT, max_new_tokens=LONG), rng.randrange(0, 30))
                assert_usable(model, ref, f"model {i}, iteration {j}")

    _in_threads(8, work, timeout=200)
    assert_usable(llm, ref, "eight other models in threads")


@pytest.mark.timeout(300)
def test_eight_models_in_eight_threads(race_env: None) -> None:
    in_child("eight_models")


@case
def two_threads_one_model(llm: rkllm.LLM, ref: str) -> None:
    def work(i: int) -> None:
        rng = random.Random(200 + i)
        for _ in range(iterations(300)):
            try:
                if rng.random() < 0.5:
                    got = llm.complete(PROMPT, max_new_tokens=REF_TOKENS).text
                    assert got == ref, f"answer changed under concurrency: {got!r}"
                else:
                    _read(llm.generate(PROMPT, max_new_tokens=LONG), rng.randrange(0, 20))
            except rkllm.BusyError:
                time.sleep(rng.random() * 0.001)

    _in_threads(2, work, timeout=240)
    assert_usable(llm, ref, "two threads racing on one model")


@pytest.mark.timeout(300)
def test_two_threads_on_one_model_get_busy_or_the_answer(race_env: None) -> None:
    in_child("two_threads_one_model")
