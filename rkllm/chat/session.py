"""A conversation with memory: :class:`ChatSession` and its answers, :class:`Reply`.

Where the conversation lives:

- runtime 1.2.0 and later: in the runtime's kv cache (``keep_history``); each turn prefills
  only the new message. A system prompt, or earlier messages given up front, are put in the
  template's system part (``rkllm_set_chat_template``), which the runtime prefills when the
  kv cache is empty;
- runtime 1.1.x (no ``keep_history``, no template applied): the whole conversation is
  rendered through the model's chat template for every turn.

The conversation is the model's state: one session per model at a time, and no other
generation on that model in between (a run without ``keep_history`` empties the kv cache).
:meth:`ChatSession.close` gives the model back its own template and withdraws the session's
function tools, even when Ctrl-C interrupts it, so later runs answer as on a fresh model.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from rkllm import params as P
from rkllm.chat.messages import check_messages, check_tools
from rkllm.chat.state import CHANGED, Changes, forget, settle_model
from rkllm.chat.templates import TEMPLATES, ChatTemplate, detect_template, resolve_template
from rkllm.core import CoreLLM
from rkllm.errors import ParamError
from rkllm.stream import Perf, Stream

__all__ = ["ChatSession", "EndOfTurn", "Reply", "settle_model"]

class EndOfTurn:
    """Holds back the end-of-turn token (spelled out when skip_special_token is off) and
    drops it if nothing follows it."""

    def __init__(self, marker: str) -> None:
        self._marker = marker
        self._held: str | None = None

    def feed(self, piece: str) -> list[str]:
        out = [] if self._held is None else [self._held]
        self._held = None
        if self._marker and piece == self._marker:
            self._held = piece
        else:
            out.append(piece)
        return out


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
        turn_end = EndOfTurn(self._session.end_marker)
        try:
            for piece in it:
                for out in turn_end.feed(piece):
                    self._parts.append(out)
                    yield out
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
    definitions), declared with ``rkllm_set_function_tools`` and withdrawn by :meth:`close`.
    Other keyword arguments are run options for every turn (``max_new_tokens``,
    ``enable_thinking``, ...).
    """

    def __init__(self, llm: CoreLLM, system: str | None = None, *,
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
        if not isinstance(tool_response, str):
            raise ParamError(f"tool_response must be a str, got {type(tool_response).__name__}")
        self.llm = llm
        self.options = dict(options)
        self._system = system
        self._turns: list[dict[str, str]] = turns
        self._template: ChatTemplate | None = resolve_template(llm, template)
        self._tool_tag = tool_response
        self._tools = check_tools(tools, plain_ok=True)
        self._keep = P.family_key(llm.family) >= P.family_key("1.2.0")
        # what close() puts back: the model's own template, not this session's (template=)
        own = self._template if template is None else detect_template(llm) or self._template
        self._changes = Changes(own, tool_response, self._keep, self._holder())
        self.end_marker = self._template.turn_end.strip() if self._template else ""
        self._set_system_part: str | None = None  # what we put in the runtime's template
        self._synced = False  # the kv cache holds exactly system + history
        self._reply: Reply | None = None
        if not self._keep and self._template is None:
            raise ParamError(self._no_template("a chat on runtime " + llm.family))
        if any(t["role"] == "tool" for t in turns):
            P.require(llm.family, "role", "tool messages")
        if self._tools is not None:
            P.require(llm.family, "set_function_tools", "function tools")
        settle_model(llm)  # what an earlier request left behind
        try:
            self._declare_tools()
            if self._keep:
                llm.clear_kv_cache()
        except BaseException:
            self._undo_model_state()
            raise

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
        if self._keep and not self.llm.closed:
            self.llm.clear_kv_cache()

    def close(self) -> None:
        """Ends the session: forgets the conversation, gives the model back its own
        template and withdraws the session's tools. The model stays loaded."""
        self._changes.closing = True  # from here on, settle_model() may finish the job
        try:
            self.reset()
        finally:
            self._undo_model_state()

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what the session changes in the model --------------------------------------------
    def _undo_model_state(self) -> None:
        """Template and tools back to the model's own. Done again when Ctrl-C interrupts it:
        a request's prompt must never stay installed (later answers would silently change);
        a Ctrl-C at a worse moment leaves the job to settle_model()."""
        self._changes.closing = True
        try:
            self._changes.undo(self.llm)
        except KeyboardInterrupt:
            self._changes.undo(self.llm)
            raise
        self._set_system_part = None
        self._synced = False
        forget(self.llm, self._changes)

    def _holder(self) -> Callable[[], bool]:
        """Whether the session still holds what it changed: while it is referenced (a
        dropped session's changes are undone by the next call on the model)."""
        ref = weakref.ref(self)
        return lambda: ref() is not None

    def _mark(self) -> None:
        """Records, before a change to the model, that this session makes it."""
        self._changes.closing = False
        CHANGED[self.llm] = self._changes

    def _declare_tools(self) -> None:
        tools = self._tools
        if tools is not None:
            self._mark()
            self._changes.tools_changed = True
            self.llm.set_function_tools(self._system or "", json.dumps(tools, ensure_ascii=False),
                                        self._tool_tag)

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
            self._mark()
            self._changes.template_changed = True
            self._set_system_part = None  # unknown until the call returns
            self.llm.set_chat_template(wanted, t.prefix, t.postfix)
            self._set_system_part = wanted
        self.llm.clear_kv_cache()
        self._synced = True

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
        """Ends the current answer (recording it) and its run."""
        if self._reply is not None:
            self._reply.close()
        stream = self._changes.stream
        if stream is not None:
            stream.close()
            self._changes.stream = None

    def start(self, text: str, *, role: str = "user", **options: Any) -> Stream:
        """Sends a message and returns the run's raw :class:`rkllm.Stream` (for callers
        that read it their own way, e.g. in an event loop); :meth:`send` wraps it."""
        if not isinstance(text, str):
            raise ParamError(f"the message must be a str, got {type(text).__name__}")
        if role not in ("user", "tool"):
            raise ParamError(f"role must be 'user' or 'tool', got {role!r}")
        self._finish_reply()
        opts = {**self.options, **options}
        changes = self._changes
        # the run is recorded in the statement that starts it: close() must find it to end it
        if self._keep:
            if role == "tool":
                P.require(self.llm.family, "role", "tool messages")
            self._sync()
            try:
                changes.stream = self.llm.generate(text, keep_history=True,
                                                   role=role if role != "user" else None, **opts)
            except BaseException:
                self._synced = False
                raise
        else:
            changes.stream = self.llm.generate(self._prompt(text, role), **opts)
        gen = changes.stream
        self._turns.append({"role": role, "content": text})
        return gen

    def send(self, text: str, *, role: str = "user", stream: bool = True,
             **options: Any) -> Reply:
        """Sends a message and returns the model's :class:`Reply`: iterate it for the pieces
        as they come (``stream=True``), or get it already complete (``stream=False``). The
        message is in :attr:`history` at once, the answer when the reply ends. ``role``:
        "user", or "tool" for a function's result (1.2.1+). Options override the session's
        for this turn."""
        reply = self._reply = Reply(self, self.start(text, role=role, **options))
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
