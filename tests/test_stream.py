"""Streams: pieces, UTF-8 reassembly, how runs end, and every way of cancelling one."""

from __future__ import annotations

import gc
import selectors
import threading
import time

import pytest

import rkllm
from rkllm.errors import BusyError

PROMPTS = tuple(f"Question {i} about the café" for i in range(40))


def _texts(llm: rkllm.LLM) -> list[tuple[str, int, int]]:
    """(text, pieces, tokens) per prompt."""
    out = []
    for prompt in PROMPTS:
        stream = llm.generate(prompt, max_new_tokens=300)
        pieces = list(stream)
        assert all(pieces)
        out.append(("".join(pieces), len(pieces), stream.n_tokens))
    return out


def test_multibyte_text_split_mid_character(llm: rkllm.LLM,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _texts(llm)
    monkeypatch.setenv("RKLLM_SIM_RAW_TOKENS", "1")  # token bytes as they are, cut anywhere
    raw = _texts(llm)
    assert [t for t, _, _ in raw] == [t for t, _, _ in whole]
    text = "".join(t for t, _, _ in raw)
    assert any(ord(c) > 127 for c in text) and "\ufffd" not in text
    # some token ended inside a character: it gave no piece of its own
    assert any(n_pieces < n_tokens for _, n_pieces, n_tokens in raw)


def test_finish_reasons_and_perf(llm: rkllm.LLM) -> None:
    r = llm.complete("Tell me about the sea.", max_new_tokens=5)
    assert r.finish_reason == "length" and len(r.token_ids) == 5
    r = llm.complete("Tell me about the sea.", max_new_tokens=2000)
    assert r.finish_reason == "stop" and 0 < len(r.token_ids) < 2000
    assert r.perf.generate_tokens >= len(r.token_ids) - 1
    if llm.family >= "1.2.1":
        assert r.perf.source == "runtime" and r.perf.prefill_tokens
    else:
        assert r.perf.source == "rkllm-cffi" and r.perf.prefill_tokens is None


def _slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ms per token, no end-of-sequence: a run that lasts until it is stopped."""
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "2000")
    monkeypatch.setenv("RKLLM_SIM_IGNORE_EOS", "1")


def _assert_usable(llm: rkllm.LLM) -> None:
    assert not llm.is_running
    assert llm.complete("Tell me about the sea.", max_new_tokens=3).finish_reason == "length"


def test_break_aborts_and_leaves_the_model_usable(llm: rkllm.LLM,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)
    stream = llm.generate("Tell me about the sea.", max_new_tokens=5000)
    started = time.monotonic()
    for i, _ in enumerate(stream):
        if i == 2:
            break
    assert stream.finish_reason == "abort" and stream.done
    assert time.monotonic() - started < 2
    _assert_usable(llm)


def test_close_of_a_half_read_stream(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)
    stream = llm.generate("Tell me about the sea.", max_new_tokens=5000)
    assert next(stream)
    stream.close()
    assert stream.finish_reason == "abort"
    _assert_usable(llm)


def test_garbage_collection_of_a_half_read_stream(llm: rkllm.LLM,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)
    it = iter(llm.generate("Tell me about the sea.", max_new_tokens=5000))
    next(it)
    del it
    gc.collect()
    _assert_usable(llm)
    stream = llm.generate("Tell me about the sea.", max_new_tokens=5000)
    next(stream)
    del stream  # held by nothing else: ends at once
    _assert_usable(llm)


def test_unread_stream_keeps_the_model_until_dropped(llm: rkllm.LLM) -> None:
    stream = llm.generate("Tell me about the sea.", max_new_tokens=10)
    with pytest.raises(BusyError):
        llm.generate("again")
    del stream
    _assert_usable(llm)


def test_abort_from_another_thread(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)
    stream = llm.generate("Tell me about the sea.", max_new_tokens=5000)
    timer = threading.Timer(0.05, llm.abort)
    timer.start()
    n = sum(1 for _ in stream)
    timer.join()
    assert stream.finish_reason == "abort" and n < 5000
    _assert_usable(llm)


def test_keyboard_interrupt_while_prefilling(llm: rkllm.LLM,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C is simulated by raising from the signal-check point: the pull loop returns to
    Python every 50 ms, so an interrupt lands within that even while the runtime prefills."""
    monkeypatch.setenv("RKLLM_SIM_PREFILL_US", "30000")  # 30 ms per prompt token
    import _thread

    timer = threading.Timer(0.1, _thread.interrupt_main)
    started = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in llm.generate("Tell me about the sea and the sky and the mountains."):
            pass
    assert time.monotonic() - started < 0.5
    monkeypatch.delenv("RKLLM_SIM_PREFILL_US")
    _assert_usable(llm)


def test_event_fd_hook(llm: rkllm.LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    # slow enough that the reader waits for tokens even under emulation (qemu)
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "3000")
    expected = "".join(llm.generate("Where is the café?", max_new_tokens=40))
    stream = llm.generate("Where is the café?", max_new_tokens=40)
    sel = selectors.DefaultSelector()
    sel.register(stream.fileno(), selectors.EVENT_READ)
    got: list[str] = []
    wakeups = 0
    while True:
        pieces = stream.read_nowait()
        if pieces is None:
            break
        got.extend(pieces)
        if not pieces:
            assert sel.select(timeout=5), "the eventfd never became readable"
            wakeups += 1
    sel.close()
    assert "".join(got) == expected and stream.finish_reason in ("length", "stop")
    assert wakeups > 0
