"""What chat changes in a model (the system part of its chat template, its function tools),
and how it is taken back, even after Ctrl-C cut a clean-up short."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rkllm.chat.templates import ChatTemplate
    from rkllm.core import CoreLLM
    from rkllm.stream import Stream

__all__ = ["CHANGED", "NO_TOOLS", "Changes", "forget", "settle_model"]

#: What withdraws declared function tools: an empty list (tool-calling chat templates write
#: the tools block only ``if tools``; the simulator does the same).
NO_TOOLS = "[]"


class Changes:
    """What a session changed in its model, marked BEFORE each change so that a change cut
    short (Ctrl-C) is undone too. ``held()`` tells whether its owner (an open session, a
    request still running) still holds the changes; once not, settle_model() undoes them."""

    def __init__(self, template: ChatTemplate | None, tool_tag: str, keep: bool,
                 held: Callable[[], bool]) -> None:
        self.held = held
        self.template = template  # the model's own (what undo puts back)
        self.tool_tag = tool_tag
        self.keep = keep  # the runtime keeps the conversation in its kv cache (1.2.0+)
        self.template_changed = False
        self.tools_changed = False
        self.closing = False
        self.stream: Stream | None = None  # the session's current run

    def undo(self, llm: CoreLLM) -> None:
        """Ends the run, then puts back the model's own template and no tools; idempotent."""
        if self.stream is not None:  # the model is free only once the run has ended
            self.stream.close()
            self.stream = None
        if llm.closed:
            self.template_changed = self.tools_changed = False
            return
        if self.template_changed and self.template is not None:
            t = self.template
            llm.set_chat_template(t.render_system(None), t.prefix, t.postfix)
            self.template_changed = False
        if self.tools_changed:
            llm.set_function_tools("", NO_TOOLS, self.tool_tag)
            self.tools_changed = False
        if self.keep:
            llm.clear_kv_cache()


# model -> what the session that changed it last changed: the "dirty" mark, set before the
# first change and dropped only once all is undone, so an entry outlives a session that was
# dropped, or a clean-up that Ctrl-C cut short, until settle_model() (the next call) undoes it
CHANGED: weakref.WeakKeyDictionary[CoreLLM, Changes] = weakref.WeakKeyDictionary()


def settle_model(llm: CoreLLM) -> None:
    """Undoes what a closed or dropped session, or an ended request, left in ``llm`` (its
    run, template, tools, kv cache), so that the next run answers as on a fresh model. A
    session still open, or a request still running, is left alone."""
    changes = CHANGED.get(llm)
    if changes is not None and (changes.closing or not changes.held()):
        changes.undo(llm)
        forget(llm, changes)


def forget(llm: CoreLLM, changes: Changes) -> None:
    """Drops the mark once ``changes`` are all undone (not another session's newer mark)."""
    if CHANGED.get(llm) is changes:
        del CHANGED[llm]
