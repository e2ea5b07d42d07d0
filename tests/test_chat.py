"""Chat sessions and OpenAI-shaped completions on every simulated family.

Families differ in where the conversation lives: 1.1.0 renders it whole each turn through
the model's template; 1.2.0+ keeps it in the runtime's kv cache (1.2.1+ can report its size).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import rkllm
from rkllm.chat import (
    ChatSession,
    ChatTemplate,
    check_messages,
    create_chat_completion,
    detect_template,
)
from rkllm.errors import ParamError
from rkllm.params import family_key

Q1 = "Tell me about the river."
Q2 = "And what about the mountain?"
N = 24  # tokens per answer: enough to differ, quick


def _kv(llm: rkllm.LLM) -> int | None:
    return llm.kv_cache_size()[0] if family_key(llm.family) >= (1, 2, 1) else None


def _answer(llm: rkllm.LLM, *turns: str, **kw: Any) -> str:
    """The last answer of a fresh session that is sent ``turns`` in order."""
    with ChatSession(llm, max_new_tokens=N, **kw) as chat:
        text = ""
        for turn in turns:
            text = chat.send(turn, stream=False).text
        return text


def test_where_the_history_lives(llm: rkllm.LLM, family: str) -> None:
    chat = ChatSession(llm)
    assert chat.uses_kv_cache == (family != "1.1.0")
    assert chat.template is not None and chat.template.name == "chatml"


def test_memory_changes_the_answer_and_reset_forgets(llm: rkllm.LLM) -> None:
    alone = _answer(llm, Q2)
    chat = ChatSession(llm, max_new_tokens=N)
    first = "".join(chat.send(Q1))
    kv1 = _kv(llm)
    second = "".join(chat.send(Q2))
    kv2 = _kv(llm)
    assert first and second
    assert second != alone  # the first turn is remembered
    assert chat.history == [{"role": "user", "content": Q1},
                            {"role": "assistant", "content": first},
                            {"role": "user", "content": Q2},
                            {"role": "assistant", "content": second}]
    if kv1 is not None and kv2 is not None:
        # both turns are held (an answer cut at max_new_tokens is re-prefilled through the
        # template's system block, which the kv-cache size may not count)
        assert kv1 > 0 and kv2 > 0
    chat.reset()
    assert chat.history == []
    if kv1 is not None:
        assert _kv(llm) == 0
    assert chat.send(Q2, stream=False).text == alone


def test_answers_are_reproducible(llm: rkllm.LLM) -> None:
    assert _answer(llm, Q1, Q2) == _answer(llm, Q1, Q2)


def test_system_prompt(llm: rkllm.LLM) -> None:
    plain = llm.complete(Q1, max_new_tokens=N).text
    default = _answer(llm, Q1)
    pirate = _answer(llm, Q1, system="You are a pirate. Answer like one.")
    assert pirate != default
    assert ChatSession(llm, system="S").history == [{"role": "system", "content": "S"}]
    # the session gave the model its own template back
    assert llm.complete(Q1, max_new_tokens=N).text == plain


def test_changing_the_system_prompt_keeps_the_conversation(llm: rkllm.LLM) -> None:
    chat = ChatSession(llm, max_new_tokens=N)
    first = chat.send(Q1, stream=False).text
    chat.system = "Be brief."
    second = chat.send(Q2, stream=False).text
    assert chat.history[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in chat.history] == ["system", "user", "assistant", "user",
                                                 "assistant"]
    # the same as a session that had this system prompt and first exchange from the start
    with ChatSession(llm, "Be brief.", max_new_tokens=N, messages=[
            {"role": "user", "content": Q1}, {"role": "assistant", "content": first}]) as again:
        assert again.send(Q2, stream=False).text == second


def test_breaking_out_keeps_the_partial_answer(llm: rkllm.LLM) -> None:
    chat = ChatSession(llm)
    got = []
    for piece in chat.send(Q1):
        got.append(piece)
        if len(got) == 3:
            break
    assert not llm.is_running
    assert chat.history[-1] == {"role": "assistant", "content": "".join(got)}
    assert chat.send(Q2, max_new_tokens=5, stream=False).finish_reason == "length"
    assert len(chat.history) == 4


def test_a_new_message_ends_an_unread_reply(llm: rkllm.LLM) -> None:
    chat = ChatSession(llm, max_new_tokens=N)
    unread = chat.send(Q1)
    reply = chat.send(Q2, stream=False)
    assert unread.done and reply.text
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]


def test_end_of_turn_token_is_not_part_of_the_answer(family: str, demo_model: str,
                                                     quiet_sim: None) -> None:
    answers = {}
    for skip in (False, True):
        with rkllm.LLM(demo_model, runtime=f"sim:{family}", skip_special_token=skip) as llm:
            if not skip:  # the simulated runtime spells it out
                assert llm.complete(Q1).text.endswith("<|im_end|>")
            chat = ChatSession(llm)
            reply = chat.send(Q1, stream=False)
            assert reply.finish_reason == "stop"
            assert chat.history[-1]["content"] == reply.text
            answers[skip] = reply.text
    assert answers[False] == answers[True] and not answers[False].endswith(">")


def test_template_detection_and_choice(llm: rkllm.LLM, family: str) -> None:
    t = detect_template(llm)
    assert t is not None and t.render_system(None) == \
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert t.render_turns([{"role": "user", "content": "a"},
                           {"role": "assistant", "content": "b"}]) == \
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>"
    with pytest.raises(ParamError, match="unknown chat template 'nope'"):
        ChatSession(llm, template="nope")
    if family == "1.1.0":  # the template is what the runtime is given: another one, another text
        other = ChatTemplate("[S]", "\n", "[U]", "\n[A]", "\n", "", "plain")
        assert _answer(llm, Q1, template=other) != _answer(llm, Q1)


def test_tool_calls_and_tool_results(llm: rkllm.LLM, family: str) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You may call tools."},
        {"role": "user", "content": "Please call get_weather for Paris."}]
    if family_key(family) < (1, 2, 1):
        with pytest.raises(ParamError, match="1.2.1"):
            create_chat_completion(llm, messages, tools=tools)
        with pytest.raises(ParamError, match="1.2.1"):
            ChatSession(llm).send("42", role="tool")
        return
    out = create_chat_completion(llm, messages, tools=tools, max_tokens=40)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {}
    assert choice["message"]["content"] is None
    chunks = list(create_chat_completion(llm, messages, tools=tools, max_tokens=40,
                                         stream=True))
    streamed = [c["choices"][0]["delta"] for c in chunks]
    assert any("tool_calls" in d for d in streamed)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # the function's result goes back as a tool message and gets a plain answer
    messages += [choice["message"], {"role": "tool", "tool_call_id": call["id"],
                                     "content": json.dumps({"celsius": 21})}]
    after = create_chat_completion(llm, messages, tools=tools, max_tokens=N)
    assert after["choices"][0]["message"]["content"]
    assert "tool_calls" not in after["choices"][0]["message"]
    # a session: a tool turn changes what comes next
    chat = ChatSession(llm, tools=tools, max_new_tokens=N)
    assert "<tool_call>" in chat.send("call get_weather now", stream=False).text
    answer = chat.send(json.dumps({"celsius": 21}), role="tool", stream=False).text
    assert chat.history[-2]["role"] == "tool" and answer


# ---- OpenAI shapes ---------------------------------------------------------------------------

CONVERSATION = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": Q1}]


def test_completion_shape(llm: rkllm.LLM, family: str) -> None:
    out = create_chat_completion(llm, CONVERSATION, max_tokens=N)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage"}
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["model"] == "demo" and isinstance(out["created"], int)
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == _answer(llm, Q1, system="You are terse.")
    usage = out["usage"]
    if family_key(family) >= (1, 2, 1):
        assert usage is not None and usage["completion_tokens"] == N
        assert usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + N
    else:  # the runtime does not count prompt tokens; no made-up number (OpenAI: optional)
        assert usage is None
    if family_key(family) >= (1, 2, 0):
        assert _kv(llm) in (None, 0)  # stateless: nothing left in the kv cache


def test_stream_chunks(llm: rkllm.LLM) -> None:
    whole = create_chat_completion(llm, CONVERSATION, max_tokens=N)
    chunks = list(create_chat_completion(llm, CONVERSATION, max_tokens=N, stream=True))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[-1] == {} and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len(deltas) == N + 2  # one chunk per token
    assert "".join(d.get("content", "") for d in deltas) == \
        whole["choices"][0]["message"]["content"]


def test_history_in_messages_is_used(llm: rkllm.LLM) -> None:
    first = _answer(llm, Q1)
    convo = [{"role": "user", "content": Q1}, {"role": "assistant", "content": first},
             {"role": "user", "content": Q2}]
    with_history = create_chat_completion(llm, convo, max_tokens=N)
    alone = create_chat_completion(llm, convo[-1:], max_tokens=N)
    assert with_history["choices"][0]["message"]["content"] != \
        alone["choices"][0]["message"]["content"]
    assert alone["choices"][0]["message"]["content"] == _answer(llm, Q2)


def test_per_request_sampling(llm: rkllm.LLM, family: str) -> None:
    loaded = llm.params["temperature"]
    same = create_chat_completion(llm, CONVERSATION, max_tokens=N, temperature=loaded)
    assert same["choices"][0]["message"]["content"] == \
        create_chat_completion(llm, CONVERSATION, max_tokens=N)["choices"][0]["message"]["content"]
    if family == "1.3.0":
        greedy = create_chat_completion(llm, CONVERSATION, max_tokens=N, top_k=1)
        hot = create_chat_completion(llm, CONVERSATION, max_tokens=N, top_k=50,
                                     temperature=5.0)
        assert greedy["choices"][0]["message"]["content"] != \
            hot["choices"][0]["message"]["content"]
    else:
        with pytest.raises(ParamError, match="per request needs RKLLM runtime 1.3.0"):
            create_chat_completion(llm, CONVERSATION, temperature=loaded + 0.5)


@pytest.mark.parametrize(("messages", "error"), [
    ("hello", "must be a list"),
    ([], "must end with a user"),
    (["hello"], r"messages\[0\] must be a dict"),
    ([{"content": "hi"}], r"messages\[0\]: role must be one of"),
    ([{"role": "robot", "content": "hi"}], "got 'robot'"),
    ([{"role": "user"}], "has no 'content'"),
    ([{"role": "user", "content": 42}], "content must be a str"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
     "only text content parts"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
      {"role": "user", "content": "c"}], "system message may only come first"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     "must end with a user"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"function": {}}]},
      {"role": "user", "content": "a"}], "needs function.name"),
])
def test_bad_messages(llm: rkllm.LLM, messages: Any, error: str) -> None:
    with pytest.raises(ParamError, match=error):
        create_chat_completion(llm, messages)
    assert not llm.is_running


def test_bad_arguments(llm: rkllm.LLM) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ParamError, match="max_new_tokens must be an int >= 1"):
        create_chat_completion(llm, msgs, max_tokens=0)
    with pytest.raises(ParamError, match="tools must be a list"):
        create_chat_completion(llm, msgs, tools="get_weather")  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="unknown parameter 'stopp'"):
        create_chat_completion(llm, msgs, stopp=["\n"])
    with pytest.raises(ParamError, match="role must be 'user' or 'tool'"):
        ChatSession(llm).send("hi", role="assistant")
    with pytest.raises(ParamError, match="either as system= or in messages"):
        ChatSession(llm, "a", messages=[{"role": "system", "content": "b"}])
    # the model is fine afterwards
    assert create_chat_completion(llm, msgs, max_tokens=3)["choices"][0]["finish_reason"] == \
        "length"


def test_content_parts_and_developer_role() -> None:
    assert check_messages([{"role": "developer", "content": "be nice"},
                           {"role": "user", "content": [{"type": "text", "text": "a"},
                                                        {"type": "text", "text": "b"}]}]) == \
        [{"role": "system", "content": "be nice"}, {"role": "user", "content": "ab"}]
