"""Completions documented as stateless are: whatever a request or a session installs in the
model (a system prompt in the chat template, function tools) is taken back, also when Ctrl-C
interrupts it at any line, so the next answer equals a fresh model's."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import rkllm
from rkllm.chat import ChatSession, create_chat_completion
from rkllm.errors import ParamError
from rkllm.params import family_key

Q = "Tell me about the river."
PLAIN = [{"role": "user", "content": Q}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
WITH_TOOLS = [{"role": "system", "content": "You are a pirate. You may call tools."},
              {"role": "user", "content": "Please call get_weather for Paris."}]
N = 6

# the files of the chat layer and the facade: Ctrl-C is injected at each of their lines
CHAT_FILES = tuple(str(p) for p in (Path(rkllm.__file__).parent / "chat").glob("*.py")) + \
    (str(Path(rkllm.__file__).parent / "llm.py"),)


def _answers(llm: rkllm.LLM) -> tuple[str, str | None]:
    """What the model answers now, plainly and as a chat completion."""
    chat = create_chat_completion(llm, PLAIN, max_tokens=N)
    return llm.complete(Q, max_new_tokens=N).text, chat["choices"][0]["message"]["content"]


@pytest.fixture
def new_family_llm(llm: rkllm.LLM, family: str) -> rkllm.LLM:
    if family_key(family) < (1, 2, 1):
        pytest.skip("function tools need runtime 1.2.1")
    return llm


def test_tools_and_system_prompt_do_not_outlive_a_request(new_family_llm: rkllm.LLM) -> None:
    llm = new_family_llm
    fresh = _answers(llm)
    called = create_chat_completion(llm, WITH_TOOLS, tools=TOOLS, max_tokens=40)
    assert called["choices"][0]["finish_reason"] == "tool_calls"
    assert _answers(llm) == fresh
    chunks = list(create_chat_completion(llm, WITH_TOOLS, tools=TOOLS, max_tokens=40,
                                         stream=True))
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert _answers(llm) == fresh
    # a stream dropped before it was read, and one closed part-way
    create_chat_completion(llm, WITH_TOOLS, tools=TOOLS, stream=True)
    gc.collect()
    assert _answers(llm) == fresh
    it = create_chat_completion(llm, WITH_TOOLS, tools=TOOLS, stream=True)
    next(it)
    it.close()
    assert _answers(llm) == fresh


def test_a_closed_or_dropped_session_leaves_nothing(new_family_llm: rkllm.LLM) -> None:
    llm = new_family_llm
    fresh = _answers(llm)
    with ChatSession(llm, "You are a pirate.", tools=TOOLS, max_new_tokens=N) as chat:
        assert "<tool_call>" in chat.send("call get_weather now", stream=False).text
        assert chat.send(Q, stream=False).text != fresh[0]
    assert _answers(llm) == fresh
    # never closed: what it installed is undone before the next run on the model
    chat = ChatSession(llm, "You are a pirate.", tools=TOOLS, max_new_tokens=N)
    chat.send(Q, stream=False)
    del chat
    gc.collect()
    assert _answers(llm) == fresh
    # an open session is left alone by other requests' clean-up
    with ChatSession(llm, "You are a pirate.", max_new_tokens=N) as chat:
        first = chat.send(Q, stream=False).text
        chat.reset()
        assert chat.send(Q, stream=False).text == first


@pytest.mark.parametrize("family", ["1.2.0", "1.3.0"])
@pytest.mark.parametrize("system", [None, "", "Be brief."])
def test_a_session_with_another_template_gives_back_the_models_own(llm: rkllm.LLM,
                                                                   system: str | None) -> None:
    # close() put back the session's template (template=), not the model's own
    fresh = _answers(llm)
    with ChatSession(llm, system, template="llama3", max_new_tokens=N) as chat:
        chat.send("", stream=False)
        chat.send(Q, stream=False)
    assert _answers(llm) == fresh


@pytest.mark.parametrize("tools", [
    "get_weather", [{"type": "function"}], [{"function": {"name": 3}}],
    [{"type": "function", "function": {"name": ""}}],
    [{"type": "retrieval", "function": {"name": "f"}}],
    [{"type": "function", "function": {"name": "f", "parameters": object()}}],
])
def test_malformed_tools_are_refused_before_anything_is_set(new_family_llm: rkllm.LLM,
                                                            tools: Any) -> None:
    llm = new_family_llm
    fresh = _answers(llm)
    with pytest.raises(ParamError, match="tools"):
        create_chat_completion(llm, WITH_TOOLS, tools=tools)
    with pytest.raises(ParamError, match="tools"):
        ChatSession(llm, tools=[*TOOLS, *tools] if isinstance(tools, list) else [tools])
    assert _answers(llm) == fresh


def test_tool_choice(new_family_llm: rkllm.LLM) -> None:
    llm = new_family_llm
    other = {"type": "function", "function": {"name": "get_time", "parameters": {}}}

    def call(**kw: Any) -> dict[str, Any]:
        return create_chat_completion(llm, WITH_TOOLS, tools=[other, *TOOLS], max_tokens=40,
                                      **kw)["choices"][0]

    auto = call(tool_choice="auto")
    assert auto["finish_reason"] == "tool_calls" == call()["finish_reason"]
    assert auto["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    none = call(tool_choice="none")  # the tools are not declared: a plain answer
    assert none["finish_reason"] != "tool_calls" and none["message"]["content"]
    assert "<tool_call>" not in none["message"]["content"]
    # named: only that function is declared, so no other can be called
    # (the simulated model calls a declared function the prompt names: here none)
    named = call(tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert "tool_calls" not in named["message"] and named["finish_reason"] != "tool_calls"
    picked = call(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert picked["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    for bad, error in [("required", "cannot force"), ({"type": "function"}, "tool_choice"),
                       ({"type": "function", "function": {"name": "nope"}}, "not in tools")]:
        with pytest.raises(ParamError, match=error):
            call(tool_choice=bad)
    with pytest.raises(ParamError, match="tool_choice needs tools"):
        create_chat_completion(llm, PLAIN, tool_choice="auto")


# ---- Ctrl-C at every line ----------------------------------------------------------------------

class _Inject:
    """A tracer that raises KeyboardInterrupt at the k-th line the chat layer executes."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.seen = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename not in CHAT_FILES:
            return None
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.seen += 1
            if self.seen == self.k:
                raise KeyboardInterrupt
        return self._line


def _interrupt_everywhere(llm: rkllm.LLM, request: Callable[[], object], *,
                          keep: bool = True) -> int:
    """Runs ``request`` once per line it executes, with Ctrl-C injected at that line; after
    each, the model must answer as a fresh one (``keep``: while the KeyboardInterrupt is
    still referenced). Returns the number of lines tried."""
    fresh = _answers(llm)
    k = 0
    while True:
        k += 1
        inject = _Inject(k)
        kept: KeyboardInterrupt | None = None
        sys.settrace(inject)
        try:
            request()
        except KeyboardInterrupt as exc:
            # kept while the model is checked, as a caller's handler may: its traceback holds
            # the request's frames (and objects) alive, so "dropped" cannot be what ends it
            kept = exc if keep else KeyboardInterrupt()
        finally:
            sys.settrace(None)
        assert not llm.is_running, f"the model is still running after Ctrl-C at line {k}"
        assert _answers(llm) == fresh, f"Ctrl-C at line event {k} changed later answers"
        interrupted, kept = kept is not None, None
        if not interrupted and inject.seen < k:  # (one raised in a __del__ is ignored)
            return k - 1


def _drain(it: Iterator[Any]) -> None:
    for _ in it:
        pass


# a Ctrl-C injected into a __del__ is printed and ignored by Python: not a failure here
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("family", ["1.3.0"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_ctrl_c_at_every_line_leaves_no_trace(llm: rkllm.LLM, stream: bool) -> None:
    def request() -> None:
        out = create_chat_completion(llm, WITH_TOOLS, tools=TOOLS, max_tokens=N, stream=stream,
                                     stop=["zzz"])
        if stream:
            _drain(out)  # type: ignore[arg-type]

    assert _interrupt_everywhere(llm, request) > 100


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("family", ["1.2.0"])
def test_ctrl_c_in_a_system_prompt_request_leaves_no_trace(llm: rkllm.LLM) -> None:
    def request() -> None:
        _drain(create_chat_completion(llm, [{"role": "system", "content": "Be a pirate."},
                                            *PLAIN], max_tokens=N, stream=True))

    assert _interrupt_everywhere(llm, request) > 100


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("family", ["1.2.1"])
def test_ctrl_c_in_a_session_leaves_no_trace(llm: rkllm.LLM) -> None:
    def request() -> None:
        with ChatSession(llm, "You are a pirate.", tools=TOOLS, max_new_tokens=N) as chat:
            chat.send("call get_weather now", stream=False)
            _drain(iter(chat.send(Q)))

    # a session its user still holds (here through the kept traceback, when Ctrl-C cut its
    # close() short) keeps its state until it is closed or dropped
    assert _interrupt_everywhere(llm, request, keep=False) > 100
