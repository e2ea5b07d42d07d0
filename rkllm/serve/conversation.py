"""Multi-turn without re-prefill: what each model's kv cache holds, and how a request starts.

The server remembers, per loaded model, what its kv cache holds: the system part it starts
with (system prompt and tools, as given to ``set_chat_template`` / ``set_function_tools``), and
the conversation after it (every turn, the answers exactly as the client received them).

- A chat request whose messages are that conversation plus new user (or tool) messages sends
  only the new ones (``keep_history``).
- Any other request with the same system part clears the cache but keeps the system part
  (``clear_kv_cache(keep_system_prompt=1)``, the runtime's own prompt cache for it), and sends
  its earlier turns and the new one in one run.
- A system part seen before whose prompt cache the runtime saved (``--prompt-cache DIR``,
  rkllm.serve.prompt_cache) is loaded from its file instead of being prefilled again.
- Anything else clears the cache and prefills in full.

A run's text is the turns written out by the chat template, less the first prefix and the last
postfix that the runtime adds around every run's text; so the runtime prefills the same text
whichever way a conversation was built, and the answer is the same. On 1.1.x, where the runtime
keeps nothing, the whole conversation is rendered through the template for every request.

Only what is known is kept: the conversation is forgotten whenever the cache may hold something
else than what the client saw (an answer cut by a stop sequence, a token limit, a disconnect,
an error); the system part is trusted only after a run that got past its prefill (a token came,
or the run ended by itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllm import params as P
from rkllm.chat import TEMPLATES, ChatTemplate, check_messages, detect_template
from rkllm.errors import RKLLMError
from rkllm.serve.errors import APIError
from rkllm.serve.prompt_cache import CacheFiles, PrimedStream

if TYPE_CHECKING:
    from rkllm.aio import AsyncStream
    from rkllm.llm import LLM

TOOL_TAG = "tool_response"

Turns = tuple[tuple[str, str], ...]
#: what the runtime was given: set_chat_template's system part (None: the model file's own,
#: untouched), and set_function_tools' (system prompt, tools list) (None: no tools)
Settings = tuple[str | None, tuple[str, str] | None]


@dataclass(frozen=True)
class Held:
    """A conversation as the kv cache holds it."""

    system: str | None
    tools: str | None
    turns: Turns


@dataclass
class Started:
    """A run just started: its stream, and how it was started."""

    stream: AsyncStream | PrimedStream
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


def _turns(msgs: Sequence[Mapping[str, str]]) -> Turns:
    return tuple((m["role"], m["content"]) for m in msgs)


class Conversation:
    """The kv-cache state of one loaded model (made when the model is loaded)."""

    def __init__(self, llm: LLM, template: str | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.llm = llm
        self.keep = P.family_key(llm.family) >= P.family_key("1.2.0")
        # saved prompt caches: their size is read from the kv cache (1.2.1+)
        self.files = CacheFiles(cache_dir, llm) if cache_dir and P.family_key(llm.family) >= \
            P.family_key(P.RUN_FEATURES["kv_cache_size"]) else None
        self._loaded = False  # a saved prompt cache is loaded in the runtime
        if template is not None and template not in TEMPLATES:
            raise APIError(500, f"unknown chat template {template!r} in the config; known: "
                                f"{', '.join(TEMPLATES)}", code="bad_config")
        self.template: ChatTemplate | None = (TEMPLATES[template] if template
                                              else detect_template(llm))
        self.held: Held | None = None
        self._settings: Settings = (None, None)    # what the runtime was last given
        self._kv_system: Settings | None = None    # the system part the kv cache starts with
        self._run_settings: Settings | None = None  # the settings of the run under way

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
        self._run_settings = None
        self._release()
        if self.keep:
            self._apply(self._settings_for(None, [], None))
            self.llm.clear_kv_cache()
            self._kv_system = None

    def start(self, messages: Any, tools: str | None, options: dict[str, Any]) -> Started:
        """Starts the answer to ``messages`` (OpenAI-style) with ``tools`` (a JSON list)."""
        system, history, new = split(messages)
        request = Held(system, tools, _turns(history) + _turns(new))
        if tools is not None:
            P.require(self.llm.family, "set_function_tools", "tools")
        held = self.held
        self.held = None  # until this answer has ended well
        self._run_settings = None
        self._release()
        if not self.keep:
            prompt = self._render_all(system, history, new)
            return Started(self.llm.agenerate(prompt, chunked=True, **options), False, 0, request)
        if held is not None and (held.system, held.tools) == (system, tools) \
                and held.turns == _turns(history):
            return self._run(self._fold(new), True, self._cached_tokens(), request, options)
        # earlier turns go in the run's text when they begin with a user (or tool) turn, so
        # that the system part stays the same across conversations
        in_text = not history or history[0]["role"] != "assistant"
        wanted = self._settings_for(system, [] if in_text else history, tools)
        if wanted == self._kv_system == self._settings:
            self.llm.clear_kv_cache(keep_system_prompt=True)
            saved = self._cached_tokens()
        else:
            self._apply(wanted)
            self.llm.clear_kv_cache()
            saved = 0
        self._kv_system = None  # until this run is past its prefill
        text = self._fold(history + new if in_text else new)
        if saved == 0 and in_text and self.files is not None and self.template is not None \
                and wanted[0] is not None:
            key = CacheFiles.key(wanted, self.template)
            found = self.files.find(key)
            if found is None:
                self._run_settings = self._settings
                primed = PrimedStream(self.llm, self.template, self.files, key, wanted[0],
                                      lambda: self._stream(text, options))
                return Started(primed, False, 0, request)
            try:
                self.llm.load_prompt_cache(found[0])
                self._loaded, saved = True, found[1]
            except RKLLMError:
                self.files.drop(found[0])
        return self._run(text, False, saved, request, options)

    def _release(self) -> None:
        if self._loaded:
            self._loaded = False
            self.llm.release_prompt_cache()

    def _stream(self, text: str, options: dict[str, Any]) -> AsyncStream:
        return self.llm.agenerate(text, chunked=True, keep_history=True, **options)

    def _run(self, text: str, reused: bool, saved: int, request: Held,
             options: dict[str, Any]) -> Started:
        stream = self._stream(text, options)
        self._run_settings = self._settings
        return Started(stream, reused, saved, request)

    def _fold(self, turns: Sequence[Mapping[str, str]]) -> str:
        """One run's text for ``turns`` (user or tool first and last): the template writes
        them out, less the prefix and the postfix the runtime adds around a run's text."""
        if len(turns) == 1 and turns[0]["role"] == "user":
            return turns[0]["content"]
        t = self._need_template("continuing a conversation" if len(turns) > 1
                                else "a tool message")
        text = t.render_turns(turns, TOOL_TAG)
        return text[len(t.prefix):len(text) - len(t.postfix)]

    def _render_all(self, system: str | None, history: list[dict[str, str]],
                    new: list[dict[str, str]]) -> str:
        if system is None and not history and len(new) == 1 and new[0]["role"] == "user" \
                and self.template is None:
            return new[0]["content"]
        t = self._need_template("a chat on runtime " + self.llm.family)
        return t.render_system(system) + t.render_turns(history + new, TOOL_TAG)

    def _settings_for(self, system: str | None, history: list[dict[str, str]],
                      tools: str | None) -> Settings:
        """What the runtime must be given for a conversation that starts with ``system``,
        ``history`` (turns kept in the system part) and ``tools``."""
        declared = None if tools is None else (system or "", tools)
        if history or (system is not None and tools is None):
            t = self._need_template("a system prompt" if not history
                                    else "continuing a conversation")
            # with tools, set_function_tools carries the system prompt
            return ("" if tools is not None else t.render_system(system)) + \
                t.render_turns(history, TOOL_TAG), declared
        if self._settings[0] is not None and self.template is not None:
            return self.template.render_system(None), declared  # back to the model's own
        return self._settings[0], declared

    def _apply(self, wanted: Settings) -> None:
        """Gives the runtime the system part and the tools of ``wanted`` where they changed."""
        part, tools = wanted
        if tools != self._settings[1]:
            # no tools: an empty list takes back the ones an earlier request declared
            self.llm.set_function_tools(*(tools or ("", "[]")), TOOL_TAG)
        if part is not None and part != self._settings[0]:
            assert self.template is not None
            self.llm.set_chat_template(part, self.template.prefix, self.template.postfix)
        self._settings = wanted

    def _cached_tokens(self) -> int:
        if P.family_key(self.llm.family) >= P.family_key(P.RUN_FEATURES["kv_cache_size"]):
            return int(self.llm.kv_cache_size()[0])
        return 0

    def answered(self, request: Held, answer: str | None, prefilled: bool) -> None:
        """After a run: ``answer`` is the assistant message as the client received it
        (content, with tool calls written as the model writes them), or None when the kv
        cache may hold something else (the conversation is then forgotten); ``prefilled``:
        the run got past its prefill, so the cache starts with the run's system part."""
        self._kv_system = self._run_settings if prefilled else None
        self._run_settings = None
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
