"""Chat: conversations with memory, and OpenAI-shaped completions at this edge only.

    import rkllm
    from rkllm.chat import ChatSession, create_chat_completion

    with rkllm.LLM("model.rkllm") as llm:
        chat = ChatSession(llm, system="You answer in one sentence.")
        for piece in chat.send("Name a river."):
            print(piece, end="", flush=True)
        print(chat.send("How long is it?", stream=False).text)
        chat.history      # [{"role": "system", ...}, {"role": "user", ...}, ...]
        chat.reset()      # forget the conversation (and the kv cache)

        create_chat_completion(llm, [{"role": "user", "content": "Hi"}], max_tokens=64)

Where the conversation lives:

- runtime 1.2.0 and later: in the runtime's kv cache (``keep_history``); each turn prefills
  only the new message. A system prompt, or earlier messages given up front, are put in the
  template's system part (``rkllm_set_chat_template``), which the runtime prefills when the
  kv cache is empty;
- runtime 1.1.x (no ``keep_history``, no template applied): the whole conversation is
  rendered through the model's chat template for every turn.

The conversation is the model's state: one session per model at a time, and no other
generation on that model in between (a run without ``keep_history`` empties the kv cache).
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from rkllm import params as P
from rkllm.core import CoreLLM as LLM
from rkllm.errors import ParamError, RKLLMError
from rkllm.stream import Perf, Stream

__all__ = [
    "TEMPLATES",
    "ChatSession",
    "ChatTemplate",
    "Reply",
    "check_messages",
    "create_chat_completion",
    "detect_template",
]

ROLES = ("system", "user", "assistant", "tool")


# ---- chat templates ------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatTemplate:
    """How a model's conversation is written out: a system block
    (``system_prefix + text + system_postfix``; ``default_system`` when none is given), a user
    turn (``prefix + text + postfix``), and the end of an answer (``turn_end``)."""

    system_prefix: str
    system_postfix: str
    prefix: str
    postfix: str
    turn_end: str
    default_system: str = ""
    name: str = "custom"

    def render_system(self, system: str | None) -> str:
        text = self.default_system if system is None else system
        return f"{self.system_prefix}{text}{self.system_postfix}" if text else ""

    def render_turns(self, turns: Sequence[Mapping[str, str]],
                     tool_tag: str = "tool_response") -> str:
        """User, tool and assistant turns (no system), each answer closed by ``turn_end``."""
        out = []
        for turn in turns:
            if turn["role"] == "assistant":
                out.append(f"{turn['content']}{self.turn_end}")
            elif turn["role"] == "tool":
                out.append(f"{self.prefix}<{tool_tag}>\n{turn['content']}\n</{tool_tag}>"
                           f"{self.postfix}")
            else:
                out.append(f"{self.prefix}{turn['content']}{self.postfix}")
        return "".join(out)


#: Well-known templates, by the style name rkllm.modelfile reports for real model files.
TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("<|im_start|>system\n", "<|im_end|>\n", "<|im_start|>user\n",
                           "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n",
                           "You are a helpful assistant.", "chatml"),
    "llama3": ChatTemplate("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>",
                           "<|start_header_id|>user<|end_header_id|>\n\n",
                           "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                           "<|eot_id|>", "", "llama3"),
    "deepseek": ChatTemplate("", "", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>",
                             "", "deepseek"),
}


def _from_parts(system_prompt: str, prefix: str, postfix: str) -> ChatTemplate:
    """A template from the three parts a model file carries (the runtime's own form)."""
    for known in TEMPLATES.values():
        if (known.prefix, known.postfix) == (prefix, postfix) and \
                system_prompt.startswith(known.system_prefix) and \
                system_prompt.endswith(known.system_postfix):
            inner = system_prompt[len(known.system_prefix):
                                  len(system_prompt) - len(known.system_postfix)]
            return ChatTemplate(known.system_prefix, known.system_postfix, prefix, postfix,
                                known.turn_end, inner if system_prompt else "", known.name)
    # unknown style: the system prompt is kept as it is; an answer ends where the postfix's
    # own closing text ends (the part before the prefix's opening marker, if it has one)
    opening = prefix.split("user")[0] if "user" in prefix else ""
    cut = postfix.find(opening) if opening else -1
    return ChatTemplate("", "", prefix, postfix, postfix[:cut] if cut > 0 else "",
                        system_prompt, "model")


def detect_template(llm: LLM) -> ChatTemplate | None:
    """The chat template of the loaded model file, when it tells (None otherwise)."""
    from rkllm.modelfile import inspect_model

    try:
        fact = inspect_model(llm.model_path).facts.get("chat_template")
    except RKLLMError:  # an unreadable file is the loader's business, not the template's
        return None
    if fact is None:
        return None
    value = fact.value
    if isinstance(value, dict):
        return _from_parts(value.get("system_prompt", ""), value.get("prompt_prefix", ""),
                           value.get("prompt_postfix", ""))
    style = str(value).split(" ")[0]
    return TEMPLATES.get(style)


def _template(llm: LLM, template: ChatTemplate | str | None) -> ChatTemplate | None:
    if isinstance(template, ChatTemplate):
        return template
    if isinstance(template, str):
        if template not in TEMPLATES:
            raise ParamError(f"unknown chat template {template!r}; known: "
                             f"{', '.join(TEMPLATES)} (or pass a ChatTemplate)")
        return TEMPLATES[template]
    if template is not None:
        raise ParamError(f"template must be a ChatTemplate or a name, got "
                         f"{type(template).__name__}")
    return detect_template(llm)


# ---- messages ------------------------------------------------------------------------------

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _content(i: int, message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant" and message.get("tool_calls"):
        return ""
    if isinstance(content, list):  # OpenAI content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ParamError(f"messages[{i}]: only text content parts are supported, "
                                 f"got {kind!r}")
            texts.append(part["text"])
        return "".join(texts)
    raise ParamError(f"messages[{i}]: content must be a str (or a list of text parts), got "
                     f"{type(content).__name__}")


def _tool_calls_text(i: int, calls: Any) -> str:
    """An assistant message's tool_calls written back as the model writes them."""
    if not isinstance(calls, list):
        raise ParamError(f"messages[{i}]: tool_calls must be a list")
    out = []
    for call in calls:
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
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ParamError(f"messages[{i}] must be a dict with 'role' and 'content', got "
                             f"{type(message).__name__}")
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise ParamError(f"messages[{i}]: role must be one of {', '.join(ROLES)}, got "
                             f"{role!r}")
        if "content" not in message:
            raise ParamError(f"messages[{i}] has no 'content'")
        content = _content(i, message)
        if role == "assistant" and message.get("tool_calls"):
            calls = _tool_calls_text(i, message["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        if role == "system" and any(m["role"] != "system" for m in out):
            raise ParamError(f"messages[{i}]: a system message may only come first")
        out.append({"role": str(role), "content": content})
    return out


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


# ---- a session -----------------------------------------------------------------------------

class Reply:
    """One answer of a :class:`ChatSession`. Iterate it for the pieces as they come (once);
    :attr:`text` is what has arrived so far. When it ends (all read, ``break``,
    :meth:`close`, Ctrl-C) the answer is recorded in the session's history, as far as it
    got. After the end: :attr:`finish_reason`, :attr:`perf`, :attr:`n_tokens`."""

    def __init__(self, session: ChatSession, stream: Stream) -> None:
        self._session = session
        self._stream = stream
        self._parts: list[str] = []
        self._iterated = False
        self._ended = False

    def __iter__(self) -> Iterator[str]:
        if self._iterated:
            raise RuntimeError("a Reply can be iterated only once")
        self._iterated = True
        return self._pieces()

    def _pieces(self) -> Iterator[str]:
        it = iter(self._stream)
        failed = False
        # the end-of-turn token, when the runtime spells it out (skip_special_token off), is
        # held back and dropped if nothing follows it
        marker = self._session._end_marker
        held = None
        try:
            for piece in it:
                if held is not None:
                    self._parts.append(held)
                    yield held
                    held = None
                if marker and piece == marker:
                    held = piece
                    continue
                self._parts.append(piece)
                yield piece
        except (GeneratorExit, KeyboardInterrupt):
            raise  # stopped early: the answer so far is kept (the kv cache has it too)
        except BaseException:
            failed = True  # the run failed: the turn is dropped
            raise
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            self._end(not failed)

    def _end(self, record: bool) -> None:
        if not self._ended:
            self._ended = True
            self._stream.close()
            self._session._reply_ended(self, record)

    def close(self) -> None:
        """Stops the answer (if still coming) and records what arrived."""
        self._iterated = True
        self._end(True)

    def wait(self) -> Reply:
        """Reads the rest of the answer; returns self."""
        if not self._iterated:
            for _ in self:
                pass
        return self

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def done(self) -> bool:
        return self._ended

    @property
    def finish_reason(self) -> str | None:
        """"stop", "length" or "abort" once ended."""
        return self._stream.finish_reason

    @property
    def perf(self) -> Perf | None:
        return self._stream.perf

    @property
    def n_tokens(self) -> int:
        return self._stream.n_tokens

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<rkllm.chat.Reply {self.text[:40]!r}{'...' if len(self.text) > 40 else ''}>"


class ChatSession:
    """A conversation with a loaded model.

    ``system``: the system prompt (None: the model's own). ``messages``: earlier turns to
    continue from (OpenAI-style dicts; a leading system message counts as ``system``).
    ``template``: a :class:`ChatTemplate` or a name in :data:`TEMPLATES` (default: read from
    the model file); needed on 1.1.x, and on 1.2.0+ for a system prompt or earlier
    messages. ``tools``: function tools (1.2.1+; the OpenAI ``tools`` list or plain function
    definitions), declared with ``rkllm_set_function_tools``. Other keyword arguments are
    run options for every turn (``max_new_tokens``, ``enable_thinking``, ...).
    """

    def __init__(self, llm: LLM, system: str | None = None, *,
                 messages: Sequence[Mapping[str, Any]] | None = None,
                 template: ChatTemplate | str | None = None,
                 tools: Sequence[Any] | str | None = None, tool_response: str = "tool_response",
                 **options: Any) -> None:
        if system is not None and not isinstance(system, str):
            raise ParamError(f"system must be a str, got {type(system).__name__}")
        turns = check_messages(list(messages or []))
        if turns and turns[0]["role"] == "system":
            if system is not None:
                raise ParamError("give the system prompt either as system= or in messages")
            system = turns.pop(0)["content"]
        self.llm = llm
        self.options = dict(options)
        self._system = system
        self._turns: list[dict[str, str]] = turns
        self._template_arg = template
        self._template: ChatTemplate | None = _template(llm, template)
        self._tool_tag = tool_response
        self._tools = tools
        self._keep = P.family_key(llm.family) >= P.family_key("1.2.0")
        self._end_marker = self._template.turn_end.strip() if self._template else ""
        self._set_system_part: str | None = None  # what we put in the runtime's template
        self._synced = False  # the kv cache holds exactly system + history
        self._reply: Reply | None = None
        if not self._keep and self._template is None:
            raise ParamError(self._no_template("a chat on runtime " + llm.family))
        if any(t["role"] == "tool" for t in turns):
            P.require(llm.family, "role", "tool messages")
        self._declare_tools()
        if self._keep:
            llm.clear_kv_cache()

    def _no_template(self, what: str) -> str:
        return (f"{what} needs the model's chat template, and {self.llm.model_path} does not "
                f"tell it: pass template= (one of {', '.join(TEMPLATES)}, or a "
                "rkllm.chat.ChatTemplate)")

    # ---- the conversation -----------------------------------------------------------------
    @property
    def system(self) -> str | None:
        return self._system

    @system.setter
    def system(self, text: str | None) -> None:
        """A new system prompt; the conversation so far is kept (and prefilled again)."""
        if text is not None and not isinstance(text, str):
            raise ParamError(f"system must be a str, got {type(text).__name__}")
        self._finish_reply()
        self._system = text
        self._synced = False
        self._declare_tools()

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation as OpenAI-style messages (the system prompt first, if set)."""
        head = [] if self._system is None else [{"role": "system", "content": self._system}]
        return head + [dict(t) for t in self._turns]

    @property
    def template(self) -> ChatTemplate | None:
        return self._template

    @property
    def uses_kv_cache(self) -> bool:
        """True where the runtime keeps the conversation (1.2.0+), False where every turn
        renders it whole (1.1.x)."""
        return self._keep

    def reset(self) -> None:
        """Forgets the conversation (the system prompt stays) and empties the kv cache."""
        self._finish_reply()
        self._turns.clear()
        self._synced = False
        if self._keep:
            self.llm.clear_kv_cache()

    def close(self) -> None:
        """Ends the session: forgets the conversation and gives the model back its own
        template. The model stays loaded."""
        self.reset()
        if self._keep and self._set_system_part is not None and self._template is not None \
                and not self.llm.closed:
            t = self._template
            self.llm.set_chat_template(t.render_system(None), t.prefix, t.postfix)
            self._set_system_part = None

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- a turn ---------------------------------------------------------------------------
    def _sync(self) -> None:
        """Makes the kv cache hold the system prompt and the history before a turn."""
        if self._synced:
            return
        t = self._template
        wanted: str | None = None
        # with tools the system prompt went to rkllm_set_function_tools
        if self._turns or (self._system is not None and self._tools is None):
            if t is None:
                raise ParamError(self._no_template(
                    "a system prompt" if not self._turns else "continuing a conversation"))
            system = "" if self._tools is not None else t.render_system(self._system)
            wanted = system + t.render_turns(self._turns, self._tool_tag)
        elif self._set_system_part is not None and t is not None:
            wanted = t.render_system(None)  # back to the model's own
        if wanted is not None and wanted != self._set_system_part:
            assert t is not None
            self.llm.set_chat_template(wanted, t.prefix, t.postfix)
            self._set_system_part = wanted
        self.llm.clear_kv_cache()
        self._synced = True

    def _declare_tools(self) -> None:
        tools = self._tools
        if tools is not None:
            P.require(self.llm.family, "set_function_tools", "function tools")
            self.llm.set_function_tools(
                self._system or "", tools if isinstance(tools, str)
                else json.dumps(list(tools), ensure_ascii=False), self._tool_tag)

    def _prompt(self, text: str, role: str) -> str:
        """The whole conversation written out (1.1.x, where the runtime keeps nothing)."""
        t = self._template
        assert t is not None
        if role == "tool":
            raise ParamError(f"tool messages need RKLLM runtime 1.2.1 or later; the loaded "
                             f"runtime is family {self.llm.family}")
        return (t.render_system(self._system) + t.render_turns(self._turns, self._tool_tag)
                + t.prefix + text + t.postfix)

    def _finish_reply(self) -> None:
        if self._reply is not None:
            self._reply.close()

    def send(self, text: str, *, role: str = "user", stream: bool = True,
             **options: Any) -> Reply:
        """Sends a message and returns the model's :class:`Reply`: iterate it for the pieces
        as they come (``stream=True``), or get it already complete (``stream=False``). The
        message is in :attr:`history` at once, the answer when the reply ends. ``role``:
        "user", or "tool" for a function's result (1.2.1+). Options override the session's
        for this turn."""
        if not isinstance(text, str):
            raise ParamError(f"the message must be a str, got {type(text).__name__}")
        if role not in ("user", "tool"):
            raise ParamError(f"role must be 'user' or 'tool', got {role!r}")
        self._finish_reply()
        opts = {**self.options, **options}
        if self._keep:
            if role == "tool":
                P.require(self.llm.family, "role", "tool messages")
            self._sync()
            try:
                gen = self.llm.generate(text, keep_history=True,
                                        role=role if role != "user" else None, **opts)
            except BaseException:
                self._synced = False
                raise
        else:
            gen = self.llm.generate(self._prompt(text, role), **opts)
        self._turns.append({"role": role, "content": text})
        reply = self._reply = Reply(self, gen)
        if not stream:
            reply.wait()
        return reply

    def _reply_ended(self, reply: Reply, record: bool) -> None:
        if reply is not self._reply:
            return
        self._reply = None
        if record:
            self._turns.append({"role": "assistant", "content": reply.text})
            # a run stopped from outside (Ctrl-C, or a token limit before 1.3.0, where the
            # runtime has no per-run limit) may have put more tokens in the kv cache than
            # arrived: prefill the conversation as recorded before the next turn
            cut = reply.finish_reason == "abort" or (
                reply.finish_reason == "length" and
                P.family_key(self.llm.family) < P.family_key(P.RUN_FEATURES["sampling"]))
            if cut and self._keep and self._template is not None:
                self._synced = False
        else:  # the run failed: drop the turn; the kv cache is rebuilt before the next one
            if self._turns and self._turns[-1]["role"] != "assistant":
                self._turns.pop()
            self._synced = False

    def __repr__(self) -> str:
        return f"<rkllm.chat.ChatSession {len(self._turns)} turn(s) on {self.llm!r}>"


# ---- OpenAI-shaped completions -------------------------------------------------------------

_SAMPLING = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty")


def _sampling(llm: LLM, given: Mapping[str, Any]) -> dict[str, Any]:
    """Per-request sampling: passed on in 1.3.0; before, only the values the model was
    loaded with are accepted (the runtime fixes them at load time)."""
    wanted = {k: v for k, v in given.items() if v is not None}
    if not wanted or P.family_key(llm.family) >= P.family_key(P.RUN_FEATURES["sampling"]):
        return wanted
    for name, value in wanted.items():
        loaded = llm.params.get(name)
        same = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            loaded is not None and math.isclose(float(value), float(loaded), rel_tol=1e-6,
                                                abs_tol=1e-6)
        if not same:
            raise ParamError(
                f"{name}={value!r} per request needs RKLLM runtime "
                f"{P.RUN_FEATURES['sampling']} or later; this runtime (family {llm.family}) "
                f"fixes it when the model is loaded ({name}={loaded!r}): load the model with "
                f"the value you want")
    return {}


def _functions(tools: Sequence[Any] | None) -> list[Any] | None:
    if tools is None:
        return None
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise ParamError("tools must be a list of {'type': 'function', 'function': {...}}")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ParamError(f"tools[{i}] must be {{'type': 'function', 'function': "
                             f"{{'name': ..., ...}}}}")
    return list(tools)


def _split_messages(messages: Any) -> tuple[str | None, list[dict[str, str]], str, str]:
    msgs = check_messages(messages)
    system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
    if not msgs or msgs[-1]["role"] not in ("user", "tool"):
        raise ParamError("messages must end with a user (or tool) message")
    last = [msgs.pop()]
    if last[0]["role"] == "tool":  # consecutive tool results go in as one JSON list
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


def _usage(reply: Reply) -> dict[str, int | None]:
    perf = reply.perf
    prompt = perf.prefill_tokens if perf is not None else None
    completion = reply.n_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": None if prompt is None else prompt + completion}


def _model_name(llm: LLM, model: str | None) -> str:
    if model:
        return model
    import os

    name = os.path.basename(llm.model_path)
    return name.removesuffix(".rkllm")


@overload
def create_chat_completion(llm: LLM, messages: Sequence[Mapping[str, Any]], *,
                           stream: Literal[False] = False, max_tokens: int | None = None,
                           temperature: float | None = None, top_p: float | None = None,
                           top_k: int | None = None, frequency_penalty: float | None = None,
                           presence_penalty: float | None = None,
                           tools: Sequence[Any] | None = None, model: str | None = None,
                           template: ChatTemplate | str | None = None,
                           **options: Any) -> dict[str, Any]: ...


@overload
def create_chat_completion(llm: LLM, messages: Sequence[Mapping[str, Any]], *,
                           stream: Literal[True], max_tokens: int | None = None,
                           temperature: float | None = None, top_p: float | None = None,
                           top_k: int | None = None, frequency_penalty: float | None = None,
                           presence_penalty: float | None = None,
                           tools: Sequence[Any] | None = None, model: str | None = None,
                           template: ChatTemplate | str | None = None,
                           **options: Any) -> Iterator[dict[str, Any]]: ...


def create_chat_completion(llm: LLM, messages: Sequence[Mapping[str, Any]], *,
                           stream: bool = False, max_tokens: int | None = None,
                           temperature: float | None = None, top_p: float | None = None,
                           top_k: int | None = None, frequency_penalty: float | None = None,
                           presence_penalty: float | None = None,
                           tools: Sequence[Any] | None = None, model: str | None = None,
                           template: ChatTemplate | str | None = None,
                           **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """Answers an OpenAI-style conversation, like llama-cpp-python's
    ``Llama.create_chat_completion``: a ``chat.completion`` dict, or with ``stream=True`` an
    iterator of ``chat.completion.chunk`` dicts. Stateless: the model's kv cache is empty
    before and after. ``usage.prompt_tokens`` is None where the runtime does not count
    prompt tokens (before 1.2.1). Per-request sampling needs runtime 1.3.0 (before, only the
    values the model was loaded with are accepted). Other keyword arguments are run options
    (``enable_thinking``, ...)."""
    if not isinstance(stream, bool):
        raise ParamError("stream must be a bool")
    system, history, role, content = _split_messages(messages)
    sampling = _sampling(llm, {"temperature": temperature, "top_p": top_p, "top_k": top_k,
                               "frequency_penalty": frequency_penalty,
                               "presence_penalty": presence_penalty})
    functions = _functions(tools)
    if max_tokens is not None:
        options["max_new_tokens"] = max_tokens
    session = ChatSession(llm, system, messages=history, template=template, tools=functions)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": _model_name(llm, model)}
    try:
        reply = session.send(content, role=role, stream=stream, **sampling, **options)
    except BaseException:
        session.close()
        raise
    if stream:
        return _chunks(session, reply, meta, functions is not None)
    try:
        text, calls = parse_tool_calls(reply.text) if functions else (reply.text, [])
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return {**meta,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if calls else reply.finish_reason}],
                "usage": _usage(reply)}
    finally:
        session.close()


def _chunks(session: ChatSession, reply: Reply, meta: Mapping[str, Any],
            tools: bool) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**meta, "object": "chat.completion.chunk",  # same id, created, model
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    try:
        yield chunk({"role": "assistant", "content": ""})
        held = ""  # with tools: text that may be the start of a tool call
        for piece in reply:
            if not tools:
                yield chunk({"content": piece})
                continue
            held += piece
            start = held.lstrip()
            if start.startswith("<tool_call>") or "<tool_call>".startswith(start):
                continue
            yield chunk({"content": held})
            held = ""
        calls = parse_tool_calls(held)[1] if held else []
        if calls:
            yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
        elif held:
            yield chunk({"content": held})
        yield chunk({}, "tool_calls" if calls else reply.finish_reason)
    finally:
        reply.close()
        session.close()
