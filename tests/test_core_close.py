"""Stream.close() from another thread: the run is aborted, the reading thread's loop ends
normally (no exception, finish_reason "abort"), the model is usable at once and its next
answer is a fresh model's. Real threads on the real simulator; events, not sleeps, order
the threads. A reader that is between two pieces when its stream is closed (and a new run
started) must never read the new run's pieces.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from reliability_support import PROMPT, assert_usable, iterations, load, reference, sim_environment

import rkllm
import rkllm.aio

# 0.1 ms per token, no end of text: a run lasts until it is closed
ENV = {"RKLLM_SIM_TOKEN_US": "100", "RKLLM_SIM_IGNORE_EOS": "1"}
ENDLESS = 10**6


@pytest.fixture(scope="module")
def ref() -> Iterator[str]:
    with sim_environment(ENV):
        yield reference()


@pytest.fixture
def llm(ref: str) -> Iterator[rkllm.LLM]:
    with sim_environment(ENV), load() as model:
        yield model


def _reader(stream: rkllm.Stream, mode: str, first: threading.Event,
            outcome: list[str]) -> threading.Thread:
    """A thread reading ``stream`` to its end (a for loop, or next() calls); ``first`` is set
    once it has a piece; ``outcome`` gets "ok" or the exception's repr."""
    def read() -> None:
        try:
            if mode == "for":
                for _ in stream:
                    first.set()
            else:
                while True:
                    try:
                        next(stream)
                    except StopIteration:
                        break
                    first.set()
            outcome.append("ok")
        except BaseException as exc:  # noqa: BLE001 - which exception arrives is the test
            outcome.append(repr(exc))
        finally:
            first.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["for", "next"])
@pytest.mark.parametrize("chunked", [False, True])
def test_close_from_another_thread_ends_the_readers_loop_normally(
        llm: rkllm.LLM, ref: str, mode: str, chunked: bool) -> None:
    for i in range(iterations(40)):
        stream = llm.generate(PROMPT, max_new_tokens=ENDLESS, chunked=chunked)
        first, outcome = threading.Event(), []
        reader = _reader(stream, mode, first, outcome)
        first.wait()
        stream.close()  # while the reader is in its loop (pulling, or between pieces)
        # usable at once, before the reader has even been joined
        assert_usable(llm, ref, f"close() from another thread (iteration {i})")
        reader.join(30)
        assert not reader.is_alive(), "the reading thread did not end after close()"
        assert outcome == ["ok"], f"iteration {i}: the reader ended with {outcome}"
        assert stream.finish_reason == "abort" and stream.done


def _hold_each_piece(stream: rkllm.Stream, holding: threading.Event, resume: threading.Event,
                     pieces: list[str], outcome: list[str]) -> None:
    """Reads ``stream``, stopping at each piece until ``resume`` is set."""
    try:
        for piece in stream:
            pieces.append(piece)
            holding.set()
            resume.wait()
        outcome.append("ok")
    except BaseException as exc:  # noqa: BLE001 - which exception arrives is the test
        outcome.append(repr(exc))
    finally:
        holding.set()


@pytest.mark.timeout(120)
def test_a_reader_between_pieces_never_reads_the_next_run(llm: rkllm.LLM, ref: str) -> None:
    """The reader holds a piece while its stream is closed and a new run starts; when it
    goes on, it gets at most the rest of the batch it had already pulled (the old run's
    text), its loop ends, and the new run's text is whole (before the fix the old loop
    pulled the new run's pieces, or its reader got BusyError)."""
    longer = llm.complete(PROMPT, max_new_tokens=400).text  # the old run's text, as it goes
    for i in range(iterations(20)):
        stream = llm.generate(PROMPT, max_new_tokens=ENDLESS)
        holding, resume = threading.Event(), threading.Event()
        outcome: list[str] = []
        old: list[str] = []
        reader = threading.Thread(target=_hold_each_piece, daemon=True,
                                  args=(stream, holding, resume, old, outcome))
        reader.start()
        holding.wait()
        stream.close()
        new = llm.generate(PROMPT, max_new_tokens=24)
        resume.set()  # the old loop goes on while the new run streams
        text = "".join(new)
        reader.join(30)
        assert outcome == ["ok"], f"iteration {i}: the old loop ended with {outcome}"
        assert text == ref, f"iteration {i}: the new run lost pieces: {text!r}"
        assert longer.startswith("".join(old)) and len(old) < 400, (
            f"iteration {i}: the old loop read more than its own run: {old!r}")
        assert_usable(llm, ref)


@pytest.mark.timeout(60)
def test_close_before_the_loop_starts_gives_an_empty_loop(llm: rkllm.LLM, ref: str) -> None:
    stream = llm.generate(PROMPT, max_new_tokens=ENDLESS)
    stream.close()
    new = llm.generate(PROMPT, max_new_tokens=24)
    assert list(stream) == []  # never the new run's pieces
    assert "".join(new) == ref and stream.finish_reason == "abort"


def _close_after(stream: rkllm.Stream | rkllm.aio.AsyncStream, event: threading.Event) -> None:
    event.wait()
    stream.close()


@pytest.mark.timeout(120)
def test_async_stream_closed_from_another_thread(llm: rkllm.LLM,
                                                                 ref: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i in range(iterations(30)):
            stream = llm.generate(PROMPT, max_new_tokens=ENDLESS)
            pieces = rkllm.aio.AsyncStream(stream)
            first = threading.Event()
            closer = threading.Thread(target=_close_after,
                                      args=(stream if i % 2 else pieces, first))
            closer.start()
            outcome = "ok"
            try:
                async for _ in pieces:
                    first.set()
            except BaseException as exc:  # noqa: BLE001
                outcome = repr(exc)
            first.set()
            await loop.run_in_executor(None, closer.join)
            assert outcome == "ok", f"iteration {i}: the async loop ended with {outcome}"
            assert stream.finish_reason == "abort"
            assert stream.read_nowait() is None
            got = (await llm.acomplete(PROMPT, max_new_tokens=24)).text
            assert got == ref, f"iteration {i}: answer changed: {got!r}"

    asyncio.run(main())
