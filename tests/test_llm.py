"""The LLM API on every simulated family: options per release, concurrency, close, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rkllm
from rkllm.errors import (
    BusyError,
    ClosedError,
    ModelLoadError,
    ParamError,
    RuntimeNotFoundError,
    UnsupportedRuntimeError,
)

PROMPT = "Tell me about the sea."


def _slow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "2000")
    monkeypatch.setenv("RKLLM_SIM_IGNORE_EOS", "1")


def test_properties(llm: rkllm.LLM, family: str) -> None:
    assert llm.family == family and llm.is_simulator and llm.release
    assert llm.params["max_context_len"] == 4096 and not llm.closed
    assert "simulated" in repr(llm)


def test_context_manager_closes(family: str, demo_model: str, quiet_sim: None) -> None:
    with rkllm.LLM(demo_model, runtime=f"sim:{family}") as llm:
        pass
    assert llm.closed


def test_every_call_after_close_raises(llm: rkllm.LLM) -> None:
    llm.close()
    llm.close()
    for call in (lambda: llm.generate(PROMPT), lambda: llm.complete(PROMPT),
                 lambda: llm.abort(), lambda: llm.release_prompt_cache(),
                 lambda: llm.hidden_states(PROMPT)):
        with pytest.raises(ClosedError):
            call()


def test_missing_model_file(quiet_sim: None) -> None:
    with pytest.raises(ModelLoadError, match="no such model file"):
        rkllm.LLM("/nonexistent/model.rkllm", runtime="sim")


def test_model_of_another_format(tmp_path: Path, family: str, quiet_sim: None) -> None:
    bad = tmp_path / "x.rkllm"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError) as err:
        rkllm.LLM(str(bad), runtime=f"sim:{family}")
    assert err.value.runtime_message


def test_unknown_runtime_path(demo_model: str) -> None:
    with pytest.raises(RuntimeNotFoundError, match="no such file"):
        rkllm.LLM(demo_model, runtime="/nonexistent/librkllmrt.so")


def test_wrong_release_override(demo_model: str, quiet_sim: None,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_ABI", "1.1.0")
    with pytest.raises(UnsupportedRuntimeError, match="RKLLM_ABI=1.1.0"):
        rkllm.LLM(demo_model, runtime="sim:1.3.0")
    with pytest.raises(UnsupportedRuntimeError):
        rkllm.LLM(demo_model, runtime="sim:1.2.1", abi="1.3.0")


def test_rkllm_library_sim(demo_model: str, quiet_sim: None,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_LIBRARY", "sim:1.2.0")
    with rkllm.LLM(demo_model) as llm:
        assert llm.family == "1.2.0" and llm.is_simulator


def test_input_forms(llm: rkllm.LLM) -> None:
    assert llm.complete(tokens=[1, 2, 3, 4], max_new_tokens=5).token_ids
    with pytest.raises(ParamError, match="exactly one input"):
        llm.generate()
    with pytest.raises(ParamError, match="exactly one input"):
        llm.generate(PROMPT, tokens=[1])
    with pytest.raises(ParamError, match="must be a str"):
        llm.generate(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="max_new_tokens"):
        llm.generate(PROMPT, max_new_tokens=0)


def test_embedding_input(llm: rkllm.LLM) -> None:
    hidden = llm.hidden_states(PROMPT)
    rows = 3
    floats = hidden.data[: rows * hidden.cols]
    result = llm.complete(embeddings=floats, n_embed_tokens=rows, max_new_tokens=5)
    assert result.token_ids


def test_hidden_states_shape(llm: rkllm.LLM) -> None:
    t = llm.hidden_states(PROMPT)
    assert t.rows >= 1 and t.cols >= 1 and len(t.data) == t.rows * t.cols
    assert t.view().shape == (t.rows, t.cols) and len(t.row(-1)) == t.cols


def test_logits_where_the_release_has_them(llm: rkllm.LLM) -> None:
    if llm.family == "1.1.0":
        with pytest.raises(ParamError, match="needs RKLLM runtime 1.2.0"):
            llm.logits(PROMPT)
        return
    t = llm.logits(PROMPT)
    assert t.rows >= 1 and t.cols > 100 and len(t.data) == t.rows * t.cols


def test_options_of_later_releases(llm: rkllm.LLM) -> None:
    fam = llm.family
    checks = [("keep_history", True, "1.2.0"), ("role", "user", "1.2.1"),
              ("enable_thinking", True, "1.2.1"), ("temperature", 0.5, "1.3.0")]
    for name, value, since in checks:
        if fam >= since:
            assert llm.complete(PROMPT, max_new_tokens=3, **{name: value}).token_ids
            llm.clear_kv_cache() if fam >= "1.2.0" else None
        else:
            with pytest.raises(ParamError, match=f"needs RKLLM runtime {since}"):
                llm.generate(PROMPT, **{name: value})
    with pytest.raises(ParamError, match="unknown parameter 'tempreature'.*temperature"):
        llm.generate(PROMPT, tempreature=0.5)


def test_per_run_sampling_changes_the_output(demo_model: str, quiet_sim: None) -> None:
    with rkllm.LLM(demo_model, runtime="sim:1.3.0", max_context_len=4096) as llm:
        texts = {llm.complete(PROMPT, max_new_tokens=30, temperature=t, top_k=50).text
                 for t in (0.1, 1.5)}
        assert len(texts) == 2


def test_keep_history_and_kv_cache(llm: rkllm.LLM) -> None:
    if llm.family < "1.2.0":
        with pytest.raises(ParamError):
            llm.clear_kv_cache()
        return
    first = llm.complete(PROMPT, max_new_tokens=10, keep_history=True).text
    if llm.family >= "1.2.1":
        assert llm.kv_cache_size()[0] > 0
    second = llm.complete(PROMPT, max_new_tokens=10, keep_history=True).text
    llm.clear_kv_cache()
    if llm.family >= "1.2.1":
        assert llm.kv_cache_size() == [0]
    assert llm.complete(PROMPT, max_new_tokens=10, keep_history=True).text == first
    assert second != first  # the second turn saw the first


def test_chat_template_and_tools(llm: rkllm.LLM) -> None:
    fam = llm.family
    if fam >= "1.2.0":
        llm.set_chat_template("<|sys|>You are terse.", "<|user|>", "<|assistant|>")
        assert llm.complete(PROMPT, max_new_tokens=5).token_ids
    else:
        with pytest.raises(ParamError, match="1.2.0"):
            llm.set_chat_template("s", "p", "q")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    if fam >= "1.2.1":
        llm.set_function_tools("You can call tools.", tools)
    else:
        with pytest.raises(ParamError, match="1.2.1"):
            llm.set_function_tools("s", tools)


def test_prompt_cache_round_trip(llm: rkllm.LLM, tmp_path: Path) -> None:
    cache = tmp_path / "prompt.cache"
    llm.complete(PROMPT, max_new_tokens=3, save_prompt_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    llm.load_prompt_cache(cache)
    assert llm.complete(PROMPT, max_new_tokens=3).token_ids
    llm.release_prompt_cache()
    with pytest.raises(ModelLoadError):
        llm.load_prompt_cache(tmp_path / "missing.cache")


def test_lora_adapter(llm: rkllm.LLM, tmp_path: Path) -> None:
    from conftest import ROOT

    adapter = tmp_path / "sea.rkllm"
    subprocess.run([sys.executable, str(ROOT / "csrc" / "sim" / "make_model.py"), "--lora",
                    "--boost", "sea", "-o", str(adapter)], check=True, capture_output=True)
    with pytest.raises(ParamError, match="no LoRA adapter named 'sea'"):
        llm.generate(PROMPT, lora="sea")
    assert llm.load_lora(adapter) == "sea"
    plain = llm.complete(PROMPT, max_new_tokens=30).text
    assert llm.complete(PROMPT, max_new_tokens=30, lora="sea").text != plain


def test_second_generation_from_another_thread_is_busy(llm: rkllm.LLM,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)
    stream = llm.generate(PROMPT, max_new_tokens=200)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            llm.generate(PROMPT)
        except BaseException as exc:
            errors.append(exc)
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], BusyError)
    with pytest.raises(BusyError):
        llm.clear_kv_cache() if llm.family >= "1.2.0" else llm.release_prompt_cache()
    stream.close()
    assert llm.complete(PROMPT, max_new_tokens=3).finish_reason == "length"


def test_close_from_another_thread_while_generating(llm: rkllm.LLM,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _slow(monkeypatch)
    got: list[str] = []
    timer = threading.Timer(0.05, llm.close)
    started = time.monotonic()
    timer.start()
    with pytest.raises(ClosedError):
        for piece in llm.generate(PROMPT, max_new_tokens=100000):
            got.append(piece)
    timer.join()
    assert got and time.monotonic() - started < 2
    assert llm.closed
    with pytest.raises(ClosedError):
        llm.generate(PROMPT)


def test_close_races(family: str, demo_model: str, quiet_sim: None,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """close() at random points of a run, from another thread: never a crash or a hang."""
    monkeypatch.setenv("RKLLM_SIM_TOKEN_US", "200")
    monkeypatch.setenv("RKLLM_SIM_IGNORE_EOS", "1")
    for i in range(15):
        llm = rkllm.LLM(demo_model, runtime=f"sim:{family}", max_context_len=4096)
        timer = threading.Timer(0.002 * i, llm.close)
        timer.start()
        try:
            for _ in llm.generate(PROMPT, max_new_tokens=300):
                pass
        except ClosedError:
            pass
        timer.join()
        llm.close()
        assert llm.closed


def test_models_side_by_side(demo_model: str, quiet_sim: None) -> None:
    families = ("1.1.0", "1.2.1", "1.3.0", "1.3.0")
    llms = [rkllm.LLM(demo_model, runtime=f"sim:{f}", max_context_len=4096) for f in families]
    try:
        alone = [m.complete(PROMPT, max_new_tokens=50).text for m in llms]
        together: list[str] = [""] * len(llms)

        def work(i: int) -> None:
            together[i] = "".join(llms[i].generate(PROMPT, max_new_tokens=50))
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(llms))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert together == alone
    finally:
        for m in llms:
            m.close()


CHILD = """
import sys, rkllm, rkllm.sim
llm = rkllm.LLM(rkllm.sim.demo_model_path(), runtime="sim:{family}", max_context_len=4096)
try:
    for i, piece in enumerate(llm.generate("Tell me about the sea.", max_new_tokens=100000)):
        if i == 0:
            print("started", flush=True)
except KeyboardInterrupt:
    ok = llm.complete("Tell me about the sea.", max_new_tokens=2).finish_reason
    print("interrupted", ok, flush=True)
    sys.exit(130)
"""


def test_sigint_to_a_child_that_is_generating(family: str) -> None:
    env = dict(os.environ, RKLLM_SIM_QUIET="1", RKLLM_SIM_TOKEN_US="5000",
               RKLLM_SIM_IGNORE_EOS="1")
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(family=family)],
                             stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=20)
    assert child.returncode == 130 and "interrupted length" in out
    assert time.monotonic() - sent < 5  # includes the second, short generation and exit


STRESS = """
import os, random, threading, time, rkllm, rkllm.sim
from rkllm.errors import ClosedError
end = time.time() + {seconds}
def worker(seed):
    r = random.Random(seed)
    while time.time() < end:
        llm = rkllm.LLM(rkllm.sim.demo_model_path(), runtime="sim:" + r.choice(
            ["1.1.0", "1.2.0", "1.2.1", "1.3.0"]), max_context_len=4096)
        def abort():
            try:
                llm.abort()
            except ClosedError:
                pass
        timers = [threading.Timer(r.random() * 0.02, f) for f in (llm.close, abort)
                  if r.random() < 0.5]
        for t in timers:
            t.start()
        for _ in range(r.randint(1, 4)):
            try:
                for piece in llm.generate("Tell me about the sea.", chunked=r.random() < 0.5,
                                          max_new_tokens=r.randint(1, 400)):
                    if r.random() < 0.01:
                        break
            except ClosedError:
                pass
        for t in timers:
            t.cancel()
            t.join()
        llm.close()
threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("survived")
"""


def test_random_races_of_close_abort_and_generate() -> None:
    """Four threads load, generate, break, abort and close at random: no crash, no hang
    (in a child process, so a crash is reported as such)."""
    env = dict(os.environ, RKLLM_SIM_QUIET="1", RKLLM_SIM_IGNORE_EOS="1",
               RKLLM_SIM_TOKEN_US="50")
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", STRESS.format(seconds=4)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr[-3000:]
