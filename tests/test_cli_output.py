"""The CLI's word wrapper on its own: the cases a model's answer rarely shows (long words,
wide characters, tabs, line breaks, pieces cut anywhere). The REPL's use of it on a terminal
is tested in test_cli_chat.py."""

from __future__ import annotations

import io

import pytest

from rkllm.cli.output import WordWrap, cells


def wrap(text: str, width: int, piece: int) -> str:
    out = io.StringIO()
    w = WordWrap(out, width)
    for i in range(0, len(text), piece):
        w.write(text[i:i + piece])
        w.flush()
    w.end()
    return out.getvalue()


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_lines_break_between_words_however_the_text_arrives(piece: int) -> None:
    text = "The sea is a vast body of salt water that covers most of the Earth.\nIt is deep."
    assert wrap(text, 20, piece) == ("The sea is a vast\nbody of salt water\nthat covers most of"
                                     "\nthe Earth.\nIt is deep.")


def test_a_word_longer_than_a_line_is_broken_at_the_edge() -> None:
    assert wrap("see Supercalifragilisticexpialidocious now", 10, 2) == \
        "see\nSupercalif\nragilistic\nexpialidoc\nious now"


def test_wide_characters_take_two_columns() -> None:
    assert cells("海は広い") == 8 and cells("e\u0301") == 1
    lines = wrap("海は 広い 大きい 月が のぼるし 日が しずむ", 12, 1).split("\n")
    assert lines == ["海は 広い", "大きい 月が", "のぼるし", "日が しずむ"]
    assert all(cells(line) <= 12 for line in lines)


def test_spaces_at_a_break_are_dropped_and_tabs_take_their_columns() -> None:
    assert wrap("aaaa    bbbb", 8, 1) == "aaaa\nbbbb"
    assert wrap("a\tb", 20, 1) == "a       b"
    assert wrap("a\tbbbbbbbbbbbbbbbb", 12, 1) == "a\nbbbbbbbbbbbb\nbbbb"


def test_an_error_is_one_line_and_a_bug_says_how_to_see_where(
        capsys: pytest.CaptureFixture[str]) -> None:
    from rkllm.cli.output import fail
    from rkllm.errors import ParamError

    cases = [
        (ParamError("top_p must be between 0 and 1, got 3"), "rkllm: error: top_p must be"),
        (FileNotFoundError(2, "No such file or directory", "x.rkllm"), "rkllm: error: [Errno 2]"),
        (pytest.importorskip("httpx").ConnectError("[Errno -2] Name or service not known"), "rkllm: error: [Errno -2]"),
        (AttributeError("'NoneType' object has no attribute 'x'"),
         "rkllm: internal error (AttributeError): 'NoneType'"),
    ]
    for exc, start in cases:
        assert fail(exc) == 1
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1, err
        assert ("--debug" in err) == isinstance(exc, AttributeError)
