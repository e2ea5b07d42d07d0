"""Ollama's ``think``: the reasoning at the start of an answer split off as pieces stream
(rkllm.serve.thinking), whatever the pieces' boundaries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rkllm.serve.thinking import ThinkSplitter


def split_all(pieces: list[str]) -> tuple[str, str]:
    s = ThinkSplitter()
    thinking = content = ""
    for piece in pieces:
        t, c = s.feed(piece)
        thinking, content = thinking + t, content + c
    t, c = s.flush()
    return thinking + t, content + c


CASES = {
    "<think>\nLet me see.\n</think>\n\nThe answer.": ("Let me see.\n", "The answer."),
    "  <think>a</think>b": ("a", "b"),
    "<think>\n\n</think>\n\nNo thought.": ("", "No thought."),
    "Plain answer with <think> inside": ("", "Plain answer with <think> inside"),
    "<think>never closed": ("never closed", ""),
    "<thi": ("", "<thi"),
    "": ("", ""),
    "<think>x</think>y <think>z</think>": ("x", "y <think>z</think>"),
}


def test_known_answers_split_in_one_piece_and_char_by_char() -> None:
    for text, expected in CASES.items():
        assert split_all([text]) == expected, text
        assert split_all(list(text)) == expected, text


@given(st.sampled_from(sorted(CASES)), st.lists(st.integers(0, 60), max_size=8))
def test_any_piece_boundaries_give_the_same_split(text: str, cuts: list[int]) -> None:
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    assert split_all(pieces) == CASES[text]
