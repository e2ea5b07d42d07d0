"""Output helpers shared by every verb: TTY-aware colour, sizes, tables, error lines."""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Sequence
from typing import IO

from rkllm.errors import RKLLMError
from rkllm.machine import human_size as human_size  # the verbs use it from here


def use_colour(stream: IO[str]) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def paint(text: str, colour: str, stream: IO[str] | None = None) -> str:
    """``text`` in ``colour`` when ``stream`` (default: the current sys.stdout) is a terminal."""
    codes = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "bold": "1", "dim": "2"}
    if not use_colour(stream or sys.stdout):
        return text
    return f"\033[{codes[colour]}m{text}\033[0m"


def table(rows: Sequence[Sequence[str]], headers: Sequence[str],
          stream: IO[str] | None = None) -> None:
    stream = stream or sys.stdout
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    print("  ".join(paint(h.ljust(w), "bold", stream) for h, w in zip(headers, widths)).rstrip(),
          file=stream)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=stream)


class UsageError(Exception):
    """The command line asks for something impossible (exit code 2, like argparse's errors)."""


# exceptions that mean a bug in rkllm-cffi, not something the user can fix: printed with their
# type and how to see where they happened. Everything else (bad input, a missing file, no
# network, an RKLLMError) is printed as "rkllm: error: what happened and what to do".
BUG_ERRORS = (AttributeError, NameError, AssertionError, NotImplementedError, RecursionError,
              ArithmeticError, LookupError, TypeError)


def fail(exc: BaseException, code: int = 1) -> int:
    """Print an exception as one readable line on stderr and return ``code``."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, BUG_ERRORS) and not isinstance(exc, RKLLMError):
        label = f"rkllm: internal error ({type(exc).__name__})"
        msg += " [rkllm --debug ... shows where]"
    else:
        label = "rkllm: error"
    print(f"{paint(label, 'red', sys.stderr)}: {msg}", file=sys.stderr)
    return code


def cells(text: str) -> int:
    """Terminal columns ``text`` takes: wide (East Asian) characters two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


class WordWrap:
    """Streamed text to a terminal ``width`` columns wide, broken between words: each word is
    held until it ends, then goes on the current line if it fits, else on the next one (a word
    longer than a line is broken at the edge). Spaces at a break are dropped."""

    def __init__(self, stream: IO[str], width: int) -> None:
        self.stream = stream
        self.width = max(width, 2)
        self.column = 0
        self.word = ""
        self.space = ""

    def write(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self._put_word()
                self.stream.write("\n")
                self.column, self.space = 0, ""
            elif ch.isspace():
                self._put_word()
                self.space += " " * (8 - (self.column + len(self.space)) % 8) if ch == "\t" \
                    else ch
            else:
                self.word += ch
                if cells(self.word) >= self.width:
                    self._put_word()

    def flush(self) -> None:
        """Flushes what is written (a word still arriving is held back)."""
        self.stream.flush()

    def end(self) -> None:
        """The text is complete (or stopped): writes the word held so far."""
        self._put_word()
        self.stream.flush()

    def _put_word(self) -> None:
        if not self.word:
            return
        need = cells(self.space) + cells(self.word)
        if self.column > 0 and self.column + need > self.width:
            self.stream.write("\n")
            self.column, self.space = 0, ""
            need = cells(self.word)
        self.stream.write(self.space + self.word)
        self.column += need
        self.word = self.space = ""
