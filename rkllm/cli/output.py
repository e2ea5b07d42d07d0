"""Output helpers shared by every verb: TTY-aware colour, sizes, tables, error lines."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import IO

from rkllm.errors import RKLLMError


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


def human_size(n: int | float) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


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


def fail(exc: BaseException) -> int:
    """Print an exception as one readable line on stderr and return the exit code."""
    name = "error" if isinstance(exc, RKLLMError) else type(exc).__name__
    msg = str(exc) or type(exc).__name__
    print(f"{paint('rkllm: ' + name, 'red', sys.stderr)}: {msg}", file=sys.stderr)
    return 1
