"""Multi-turn without re-prefill: what each model's kv cache holds, and how a request starts.

The server remembers, per loaded model, the conversation its kv cache holds (system prompt,
tools, every turn including the answers exactly as the client received them). A chat request
whose messages are that conversation plus new user (or tool) messages sends only the new
ones (``keep_history``); any other request clears the cache and prefills in full: the system
part and earlier turns go through the runtime's chat template (``set_chat_template``), which
the runtime prefills when the cache is empty. On 1.1.x, where the runtime keeps nothing, the
whole conversation is rendered through the template for every request.

The kept conversation is forgotten whenever the cache may hold something else than what the
client saw (an answer cut by a stop sequence, a token limit, a disconnect, an error), so the
next request prefills in full and the answer is the same either way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rkllm import params as P
from rkllm.chat import TEMPLATES, ChatTemplate, check_messages, detect_template
from rkllm.serve.errors import APIError

if TYPE_CHECKING:
    from rkllm.aio import AsyncStream
    from rkllm.llm import LLM

TOOL_TAG = "tool_response"

Turns = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Held:
    """A conversation as the kv cache holds it."""

    system: str | None
    tools: str | None
    turns: Turns


@dataclass
class Started:
    """A run just started: its stream, and how it was started."""

    stream: AsyncStream
    reused: bool          # only the new messages were sent
    saved_tokens: int     # prompt tokens not prefilled again
    request: Held         # the conversation up to (and including) the new messages


def split(messages: Any) -> tuple[str | None, list[dict[str, str]], list[dict[str, str]]]:
    """(system, earlier turns, new turn(s)): the new turn is the last user message, or the
    trailing run of tool results."""
    msgs = check_messages(messages)
    system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
    if not msgs or msgs[-1]["role"] not in ("user", "tool"):
        raise APIError(400, "messages must end with a user (or tool) message",
                       param="messages", code="invalid_value")
    new = [msgs.pop()]
    if new[0]["role"] == "tool":
        while msgs and msgs[-1]["role"] == "tool":
            new.insert(0, msgs.pop())
    return system, msgs, new


def _new_input(new: Sequence[Mapping[str, str]]) -> tuple[str, str]:
    """(role, text) of the new turn; several tool results go in as one JSON list."""
    if len(new) == 1:
        return new[0]["role"], new[0]["content"]
    values = []
    for m in new:
        try:
            values.append(json.loads(m["content"]))
        except ValueError:
            values.append(m["content"])
    return "tool", json.dumps(values, ensure_ascii=False)


def _turns(msgs: Sequence[Mapping[str, str]]) -> Turns:
    return tuple((m["role"], m["content"]) for m in msgs)


class Conversation:
    """The kv-cache state of one loaded model (made when the model is loaded)."""

    def __init__(self, llm: LLM, template: str | None = None) -> None:
        self.llm = llm
        self.keep = P.family_key(llm.family) >= P.family_key("1.2.0")
        if template is not None and template not in TEMPLATES:
            raise APIError(500, f"unknown chat template {template!r} in the config; known: "
                                f"{', '.join(TEMPLATES)}", code="bad_config")
        self.template: ChatTemplate | None = (TEMPLATES[template] if template
                                              else detect_template(llm))
        self.held: Held | None = None
        self._system_part: str | None = None   # what set_chat_template was given
        self._tools_declared: str | None = None

    @property
    def end_marker(self) -> str:
        return self.template.turn_end.strip() if self.template else ""

    def _need_template(self, what: str) -> ChatTemplate:
        if self.template is None:
            raise APIError(400, f"{what} needs the model's chat template, and "
                                f"{self.llm.model_path} does not tell it: give the model a "
                                f"\"template\" ({', '.join(TEMPLATES)}) in the server's config",
                           code="no_chat_template")
        return self.template

    def fresh(self) -> None:
        """Before a run outside any conversation (a plain prompt, embeddings): the model's
        own template, no tools, an empty kv cache (a run starts from what the cache holds)."""
        self.held = None
        if self.keep:
            self._prepare(None, [], None)
            self.llm.clear_kv_cache()

    def start(self, messages: Any, tools: str | None, options: dict[str, Any]) -> Started:
        """Starts the answer to ``messages`` (OpenAI-style) with ``tools`` (a JSON list)."""
        system, history, new = split(messages)
        role, text = _new_input(new)
        request = Held(system, tools, _turns(history) + _turns(new))
        if tools is not None:
            P.require(self.llm.family, "set_function_tools", "tools")
        if role == "tool" or any(m["role"] == "tool" for m in history):
            P.require(self.llm.family, "role", "tool messages")
        run_role = None if role == "user" else role
        held = self.held
        self.held = None  # until this answer has ended well
        if not self.keep:
            prompt = self._render_all(system, history, text)
            return Started(self.llm.agenerate(prompt, chunked=True, **options), False, 0, request)
        if held is not None and (held.system, held.tools) == (system, tools) \
                and held.turns == _turns(history):
            saved = self._cached_tokens()
            stream = self.llm.agenerate(text, chunked=True, keep_history=True, role=run_role,
                                         **options)
            return Started(stream, True, saved, request)
        self._prepare(system, history, tools)
        self.llm.clear_kv_cache()
        stream = self.llm.agenerate(text, chunked=True, keep_history=True, role=run_role,
                                         **options)
        return Started(stream, False, 0, request)

    def _render_all(self, system: str | None, history: list[dict[str, str]], text: str) -> str:
        if system is None and not history and self.template is None:
            return text
        t = self._need_template("a chat on runtime " + self.llm.family)
        return (t.render_system(system) + t.render_turns(history, TOOL_TAG) + t.prefix + text
                + t.postfix)

    def _prepare(self, system: str | None, history: list[dict[str, str]],
                 tools: str | None) -> None:
        """Puts the system part (and earlier turns) in the runtime's template, and the tools."""
        llm = self.llm
        if tools != self._tools_declared:
            # no tools: an empty list takes back the ones an earlier request declared
            llm.set_function_tools(system or "", tools if tools is not None else "[]",
                                   TOOL_TAG)
            self._tools_declared = tools
        wanted: str | None = None
        if history or (system is not None and tools is None):
            t = self._need_template("a system prompt" if not history
                                    else "continuing a conversation")
            wanted = ("" if tools is not None else t.render_system(system)) + \
                t.render_turns(history, TOOL_TAG)
        elif self._system_part is not None and self.template is not None:
            wanted = self.template.render_system(None)  # back to the model's own
        if wanted is not None and wanted != self._system_part:
            assert self.template is not None
            llm.set_chat_template(wanted, self.template.prefix, self.template.postfix)
            self._system_part = wanted

    def _cached_tokens(self) -> int:
        if P.family_key(self.llm.family) >= P.family_key(P.RUN_FEATURES["kv_cache_size"]):
            return int(self.llm.kv_cache_size()[0])
        return 0

    def answered(self, request: Held, answer: str | None) -> None:
        """After a run: ``answer`` is the assistant message as the client received it
        (content, with tool calls written as the model writes them), or None when the kv
        cache may hold something else (the conversation is then forgotten)."""
        if answer is None or not self.keep:
            self.held = None
            return
        self.held = Held(request.system, request.tools,
                         request.turns + (("assistant", answer),))


def recorded_answer(content: str | None, tool_calls: list[dict[str, Any]]) -> str:
    """The assistant message the client will send back, as check_messages renders it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return check_messages([message])[0]["content"]
