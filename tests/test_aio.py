"""rkllm.aio on every simulated family: same text as the blocking API, the loop stays free,
several models at once, and every way of stopping leaves the model usable."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import run_python

import rkllm
from rkllm import aio
from rkllm.errors import BusyError, ParamError

PROMPT = "Tell me about the river."


def _slow(monkeypatch: pytest.MonkeyPatch, us: int = 2000) -> None:
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", str(us))
    monkeypatch.setenv("RKLLM_SIM_IGNORE_EOS", "1")


async def _collect(stream: aio.AsyncStream) -> list[str]:
    return [piece async for piece in stream]


def test_same_pieces_as_generate(llm: rkllm.LLM) -> None:
    expected = list(llm.generate(PROMPT, max_new_tokens=40))
    stream = aio.agenerate(llm, PROMPT, max_new_tokens=40)
    assert asyncio.run(_collect(stream)) == expected
    assert stream.done and stream.finish_reason == "length" and stream.n_tokens == 40
    assert stream.perf is not None and stream.perf.generate_tokens >= 40
    chunks = asyncio.run(_collect(aio.agenerate(llm, PROMPT, max_new_tokens=40, chunked=True)))
    assert "".join(chunks) == "".join(expected) and len(chunks) <= len(expected)


def test_acomplete_equals_complete(llm: rkllm.LLM) -> None:
    sync = llm.complete(PROMPT)
    got = asyncio.run(aio.acomplete(llm, PROMPT))
    assert got.text == sync.text and got.token_ids == sync.token_ids
    assert got.finish_reason == sync.finish_reason == "stop"


def test_errors_come_at_once(llm: rkllm.LLM) -> None:
    with pytest.raises(ParamError):
        aio.agenerate(llm, PROMPT, max_new_tokens=0)
    with pytest.raises(ParamError):
        asyncio.run(aio.acomplete(llm, 42))  # type: ignore[arg-type]


def test_the_loop_stays_free(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch, 5000)

    async def main() -> tuple[int, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.ensure_future(ticker())
        pieces = await _collect(aio.agenerate(llm, PROMPT, max_new_tokens=40))
        stop.set()
        await task
        return ticks, len(pieces)

    ticks, n = asyncio.run(main())
    assert n == 40
    # 40 tokens at 5 ms each: a blocked loop would tick once or twice, a free one every ms
    assert ticks >= 40


def test_two_models_stream_concurrently(demo_model: str, quiet_sim: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch, 3000)
    with rkllm.LLM(demo_model, runtime="sim:1.3.0") as a, \
            rkllm.LLM(demo_model, runtime="sim:1.1.0") as b:
        expected = {"a": list(a.generate(PROMPT, max_new_tokens=30)),
                    "b": list(b.generate(PROMPT, max_new_tokens=30))}
        order: list[str] = []

        async def run(name: str, llm: rkllm.LLM) -> list[str]:
            out = []
            async for piece in aio.agenerate(llm, PROMPT, max_new_tokens=30):
                out.append(piece)
                order.append(name)
            return out

        async def main() -> list[list[str]]:
            return list(await asyncio.gather(run("a", a), run("b", b)))

        got_a, got_b = asyncio.run(main())
    assert got_a == expected["a"] and got_b == expected["b"]
    # interleaved, not one after the other
    assert order.index("b") < len(order) - order[::-1].index("a") - 1


def test_one_run_per_model(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)

    async def main() -> None:
        first = aio.agenerate(llm, PROMPT, max_new_tokens=50)
        with pytest.raises(BusyError):
            aio.agenerate(llm, PROMPT)
        await first.aclose()

    asyncio.run(main())
    assert not llm.is_running


def _works_again(llm: rkllm.LLM, expected: str) -> None:
    assert not llm.is_running
    assert asyncio.run(aio.acomplete(llm, PROMPT, max_new_tokens=10)).text == expected


def test_cancel_mid_stream(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = llm.complete(PROMPT, max_new_tokens=10).text
    _slow(monkeypatch, 20000)

    async def main() -> tuple[list[str], float]:
        got: list[str] = []

        async def consume() -> None:
            async for piece in aio.agenerate(llm, PROMPT, max_new_tokens=10000):
                got.append(piece)

        task = asyncio.ensure_future(consume())
        while len(got) < 3:
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got, time.monotonic() - t0

    got, took = asyncio.run(main())
    assert 3 <= len(got) < 100 and took < 0.5
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "0")
    monkeypatch.delenv("RKLLM_SIM_IGNORE_EOS")
    _works_again(llm, expected)


def test_cancel_while_waiting_with_a_timeout(llm: rkllm.LLM,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    expected = llm.complete(PROMPT, max_new_tokens=10).text
    _slow(monkeypatch, 20000)
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        asyncio.run(asyncio.wait_for(aio.acomplete(llm, PROMPT, max_new_tokens=10000), 0.1))
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "0")
    monkeypatch.delenv("RKLLM_SIM_IGNORE_EOS")
    _works_again(llm, expected)


@pytest.mark.parametrize("how", ["break", "aclose", "async with"])
def test_leaving_early(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    expected = llm.complete(PROMPT, max_new_tokens=10).text
    _slow(monkeypatch)

    async def main() -> str | None:
        if how == "break":
            async for _ in aio.agenerate(llm, PROMPT, max_new_tokens=10000):
                break
            return None
        stream = aio.agenerate(llm, PROMPT, max_new_tokens=10000)
        if how == "aclose":
            await stream.__anext__()
            await stream.aclose()
        else:
            async with stream:
                await stream.__anext__()
        assert stream.done
        return stream.finish_reason

    reason = asyncio.run(main())
    assert reason in (None, "abort")
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "0")
    monkeypatch.delenv("RKLLM_SIM_IGNORE_EOS")
    _works_again(llm, expected)


def test_abort_ends_the_loop(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)

    async def main() -> tuple[int, str | None]:
        stream = aio.agenerate(llm, PROMPT, max_new_tokens=10000)
        n = 0
        async for _ in stream:
            n += 1
            if n == 5:
                stream.abort()
        return n, stream.finish_reason

    n, reason = asyncio.run(main())
    assert 5 <= n < 100 and reason == "abort"


def test_close_from_another_task(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)

    async def main() -> None:
        stream = aio.agenerate(llm, PROMPT, max_new_tokens=10000)
        await stream.__anext__()
        asyncio.get_running_loop().call_later(0.02, llm.close)
        with pytest.raises(rkllm.ClosedError):
            async for _ in stream:
                pass

    asyncio.run(asyncio.wait_for(main(), 10))
    assert llm.closed


def test_import_rkllm_does_not_import_asyncio() -> None:
    out = run_python("import sys, rkllm; print('asyncio' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
