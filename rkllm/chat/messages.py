"""OpenAI-style messages and function tools: checking them, and tool calls in and out of text.

Messages may be dicts or the ``openai`` package's typed objects (anything with pydantic's
``model_dump``, e.g. a ``ChatCompletionMessage`` taken from an earlier answer).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from rkllm.errors import ParamError
from rkllm.request import check_text

__all__ = ["ROLES", "check_messages", "check_tool_choice", "check_tools", "parse_tool_calls",
           "split_messages", "tool_calls_text"]

ROLES = ("system", "user", "assistant", "tool")

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _as_mapping(value: Any) -> Any:
    """A pydantic object (the openai package's types) as a plain dict; others unchanged."""
    dump = getattr(value, "model_dump", None)
    if not isinstance(value, Mapping) and callable(dump):
        return dump()
    return value


def _content(i: int, message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant" and message.get("tool_calls"):
        return ""
    if isinstance(content, list):  # OpenAI content parts: text only
        texts = []
        for part in map(_as_mapping, content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ParamError(f"messages[{i}]: only text content parts are supported, "
                                 f"got {kind!r}")
            texts.append(part["text"])
        return "".join(texts)
    raise ParamError(f"messages[{i}]: content must be a str (or a list of text parts), got "
                     f"{type(content).__name__}")


def tool_calls_text(i: int, calls: Any) -> str:
    """An assistant message's tool_calls written back as the model writes them."""
    if not isinstance(calls, list):
        raise ParamError(f"messages[{i}]: tool_calls must be a list")
    out = []
    for call in map(_as_mapping, calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ParamError(f"messages[{i}]: each tool call needs function.name")
        args = fn.get("arguments", "{}")
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise ParamError(f"messages[{i}]: tool call arguments are not JSON: "
                             f"{args!r}") from None
        out.append("<tool_call>\n" + json.dumps({"name": fn["name"], "arguments": parsed},
                                                ensure_ascii=False) + "\n</tool_call>")
    return "\n".join(out)


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Validates an OpenAI-style message list and returns it as plain
    ``{"role", "content"}`` dicts (text content parts joined, an assistant's ``tool_calls``
    written as the model writes them). System messages may only come first."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ParamError(f"messages must be a list of {{'role', 'content'}} dicts, got "
                         f"{type(messages).__name__}")
    out: list[dict[str, str]] = []
    for i, message in enumerate(map(_as_mapping, messages)):
        if not isinstance(message, Mapping):
            raise ParamError(f"messages[{i}] must be a dict with 'role' and 'content', got "
                             f"{type(message).__name__}")
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise ParamError(f"messages[{i}]: role must be one of {', '.join(ROLES)}, got "
                             f"{role!r}")
        calls = message.get("tool_calls") if role == "assistant" else None
        if "content" not in message and not calls:
            raise ParamError(f"messages[{i}] has no 'content'")
        # checked here, before any rendering: C would cut a NUL, a lone surrogate is no text
        content = check_text(_content(i, message), f"messages[{i}].content")
        if calls:
            text = check_text(tool_calls_text(i, calls), f"messages[{i}].tool_calls")
            content = f"{content}\n{text}" if content else text
        if role == "system" and any(m["role"] != "system" for m in out):
            raise ParamError(f"messages[{i}]: a system message may only come first")
        out.append({"role": str(role), "content": content})
    return out


def split_messages(messages: Any) -> tuple[str | None, list[dict[str, str]], str, str]:
    """Checked messages as (system prompt, earlier turns, role of the last turn, its text).
    Consecutive trailing tool results go in as one JSON list (as the vendor's server does)."""
    msgs = check_messages(messages)
    system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
    if not msgs or msgs[-1]["role"] not in ("user", "tool"):
        raise ParamError("messages must end with a user (or tool) message")
    last = [msgs.pop()]
    if last[0]["role"] == "tool":
        while msgs and msgs[-1]["role"] == "tool":
            last.insert(0, msgs.pop())
    if len(last) == 1:
        content = last[0]["content"]
    else:
        values = []
        for m in last:
            try:
                values.append(json.loads(m["content"]))
            except ValueError:
                values.append(m["content"])
        content = json.dumps(values, ensure_ascii=False)
    return system, msgs, last[0]["role"], content


def check_tools(tools: Any, *, plain_ok: bool = False) -> list[Any] | None:
    """The OpenAI ``tools`` list, checked whole before anything is declared to the runtime
    (``plain_ok``: bare function definitions ``{"name": ...}`` too, or a JSON string)."""
    if tools is None:
        return None
    if plain_ok and isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise ParamError("tools given as a str must be a JSON list") from None
        tools = tools if isinstance(tools, list) else [tools]
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise ParamError("tools must be a list of {'type': 'function', 'function': {...}}")
    out = []
    for i, tool in enumerate(map(_as_mapping, tools)):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if fn is None and plain_ok and isinstance(tool, Mapping) and "type" not in tool:
            fn = tool
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or \
                not fn["name"] or (fn is not tool and tool.get("type", "function") != "function"):
            raise ParamError(f"tools[{i}] must be {{'type': 'function', 'function': "
                             f"{{'name': ..., ...}}}}")
        try:
            json.dumps(tool)
        except (TypeError, ValueError) as exc:
            raise ParamError(f"tools[{i}] is not JSON-serialisable: {exc}") from None
        out.append(tool)
    return out


def check_tool_choice(tool_choice: Any, tools: list[Any] | None) -> list[Any] | None:
    """The tools to declare for ``tool_choice``: all of them ("auto"), none ("none"), or only
    the named function (the runtime cannot force a call: it can call no other)."""
    if tool_choice is None or tool_choice == "auto":
        return tools
    if tool_choice == "none":
        return None
    choice = _as_mapping(tool_choice)
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str) or choice.get("type") != "function":
        raise ParamError("tool_choice must be 'auto', 'none' or {'type': 'function', "
                         f"'function': {{'name': ...}}}}, got {tool_choice!r} (the runtime "
                         "cannot force a call, so 'required' is not supported)")
    named = [t for t in tools or [] if _as_mapping(t)["function"]["name"] == name]
    if not named:
        raise ParamError(f"tool_choice names {name!r}, which is not in tools")
    return named


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Splits an answer into its plain text (None if there is none) and OpenAI-shaped
    ``tool_calls`` (``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks)."""
    calls: list[dict[str, Any]] = []
    for body in _TOOL_CALL.findall(text):
        try:
            call = json.loads(body)
        except ValueError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        args = call.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"],
                                   "arguments": args if isinstance(args, str)
                                   else json.dumps(args, ensure_ascii=False)}})
    if not calls:
        return text, []
    rest = re.sub(r"<\|[^|>]*\|>", "", _TOOL_CALL.sub("", text)).strip()  # e.g. <|im_end|>
    return rest or None, calls
