"""A thinking model's reasoning apart from its answer (Ollama's ``think``): the text between
``<think>`` and ``</think>`` at the start of an answer, split off as the pieces stream."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ThinkSplitter:
    """``feed(piece)`` -> (thinking, content) of the text seen so far, holding back what may
    be the start of a tag; ``flush()`` at the end. Reasoning is only what opens the answer
    (leading whitespace aside); a ``<think>`` later on is content. The newlines that follow
    each tag are dropped (the way models write them), wherever the pieces break."""

    def __init__(self) -> None:
        self._buf = ""
        self._state = "start"  # start -> thinking -> content, or start -> content
        self._lead = False     # dropping the newlines after a tag

    def feed(self, piece: str) -> tuple[str, str]:
        self._buf += piece
        thinking = ""
        if self._state == "start":
            head = self._buf.lstrip()
            if head.startswith(OPEN):
                self._state, self._buf, self._lead = "thinking", head[len(OPEN):], True
            elif OPEN.startswith(head):
                return "", ""  # the tag may still come
            else:
                self._state = "content"
        if self._lead:
            self._buf = self._buf.lstrip("\n")
            self._lead = not self._buf
        if self._state == "thinking":
            end = self._buf.find(CLOSE)
            if end < 0:
                keep = _partial(self._buf, CLOSE)
                cut = len(self._buf) - keep
                thinking, self._buf = self._buf[:cut], self._buf[cut:]
                return thinking, ""
            thinking, self._buf = self._buf[:end], self._buf[end + len(CLOSE):].lstrip("\n")
            self._state, self._lead = "content", not self._buf
        content, self._buf = self._buf, ""
        return thinking, content

    def flush(self) -> tuple[str, str]:
        """What was held back: reasoning if the tag never closed, else content."""
        rest, self._buf = self._buf, ""
        return (rest, "") if self._state == "thinking" else ("", rest)


def _partial(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` may begin ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
